"""Run infrastructure shared by pretraining and both search stages: where a run executes (runtime),
its data on the device (data), the training and evaluation loops (loop), its run directory and
checkpoints (run_dir), and its per-epoch log and progress bars (log)."""
