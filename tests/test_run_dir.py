"""Run directories (Search_CIFAR10/training/run_dir.py): a folder that holds files is never written over
without --resume / --overwrite, a run never writes into a folder holding its own inputs, one process at
a time writes a run, and a run that is stopped says where its checkpoint is."""
import fcntl
import os
import signal
import time

import pytest

from Search_CIFAR10.training.run_dir import LOCK, RunDir, lock_holder, resume_hint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(REPO, "Search_CIFAR10", "pretrain", "pretrain_cifar10_mobilenetv2.py")


def test_a_new_folder_is_created_and_locked_by_this_process(tmp_path):
    run = RunDir.claim(str(tmp_path / "run"))
    assert os.path.isdir(run.dir)
    assert (tmp_path / "run" / LOCK).read_text().strip() == str(os.getpid())
    RunDir.claim(str(tmp_path / "run"), resume=True)  # this process may open its own run again


def test_a_folder_holding_files_is_refused_unless_resumed_or_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("summary.json", "checkpoint_last.pt", "mapping.json"):
        (run / name).write_text("earlier results\n")
    with pytest.raises(ValueError, match=rf"--output_dir {run} already holds a finished run \(checkpoint_last.pt, "
                                         r"mapping.json, summary.json\); pass --resume to continue it, --overwrite"):
        RunDir.claim(str(run))
    assert not (run / LOCK).exists(), "a refused claim writes nothing into the folder"
    assert all((run / n).read_text() == "earlier results\n" for n in os.listdir(run))
    RunDir.claim(str(run), resume=True)
    assert (run / "summary.json").exists()
    RunDir.claim(str(run), overwrite=True)
    # --overwrite: what marks the folder as a finished or resumable run goes first; the rest is replaced later
    assert sorted(os.listdir(run)) == [LOCK, "mapping.json"]


def test_a_run_never_writes_into_a_folder_holding_its_inputs(tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "best.pt").write_bytes(b"weights")
    for out in (pre, pre / ".." / "pre"):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=rf"--output_dir .*pre: holds --pretrained {pre}/best.pt, which "
                                                 r"this run reads; write the run to another --output_dir"):
                RunDir.claim(str(out), overwrite=overwrite, inputs=[("--pretrained", str(pre / "best.pt"))])
    with pytest.raises(ValueError, match=r"--output_dir .*pre: is --stage1_dir"):
        RunDir.claim(str(pre), overwrite=True, inputs=[("--stage1_dir", str(pre))])
    RunDir.claim(str(pre / "stage2"), inputs=[("--stage1_dir", str(pre))])  # below an input is fine
    assert (pre / "best.pt").read_bytes() == b"weights"


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=r"--output_dir .*a_file: is a file; expected a folder"):
        RunDir.claim(str(tmp_path / "a_file"))
    with pytest.raises(ValueError, match=rf"--output_dir .*a_file/run: {tmp_path}/a_file is a file, not a folder"):
        RunDir.claim(str(tmp_path / "a_file" / "run"))


def test_a_locked_folder_names_the_process_writing_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text("4242\n")
    fd = os.open(run / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: as another process holds it
    try:
        assert lock_holder(str(run)) == "4242"
        for resume in (False, True):
            with pytest.raises(ValueError, match=rf"--output_dir {run}: another process \(PID 4242\) is writing a "
                                                 r"run there; wait for it to end"):
                RunDir.claim(str(run), resume=resume)
    finally:
        os.close(fd)
    assert lock_holder(str(run)) is None  # a lock file left by a process that has ended holds nothing
    RunDir.claim(str(run))


def test_another_process_holds_the_lock_until_it_ends(tmp_path, spawn_python):
    run = tmp_path / "run"
    holder = spawn_python(["-c", "import sys, time; from Search_CIFAR10.training.run_dir import RunDir; "
                                 f"RunDir.claim({str(run)!r}); print('claimed', flush=True); time.sleep(120)"])
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(ValueError, match=rf"another process \(PID {holder.pid}\) is writing a run there"):
            RunDir.claim(str(run), resume=True)
    finally:
        holder.kill()
        holder.wait()
    RunDir.claim(str(run), resume=True)


def test_the_interrupt_line_says_how_to_continue(tmp_path):
    run = str(tmp_path / "run")
    assert resume_hint(run, "--output_dir") == f"no checkpoint was written yet; start again with --overwrite " \
                                               f"--output_dir {run}"
    os.makedirs(run)
    open(os.path.join(run, "checkpoint_last.pt"), "wb").close()
    assert resume_hint(run, "--output_dir") == f"the last checkpoint is kept: resume with --resume --output_dir {run}"


def test_sigterm_stops_a_training_run_with_one_line_and_resume_finishes_it(tmp_path, spawn_python, run_python):
    out = tmp_path / "pre"
    argv = [PRETRAIN, "--dataset", "digits", "--limit_train", "48", "--limit_eval", "16", "--width_mult", "0.1",
            "--input_size", "16", "--batch_size", "16", "--epochs", "3", "--warmup_epochs", "0", "--threads", "1",
            "--output_dir", str(out)]
    proc = spawn_python(argv)
    deadline = time.time() + 240
    while not (out / "checkpoint_last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run ended before SIGTERM arrived (a very fast machine)")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 143, err
    assert lines[-1] == f"terminated; the last checkpoint is kept: resume with --resume --output_dir {out}", err
    assert "Traceback" not in err
    done = run_python(argv + ["--resume"], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize("script", ["Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py",
                                    "Search_CIFAR10/dnas_multicore/dnas_cifar10_search_multicore_mbv2.py"])
def test_resume_without_a_checkpoint_says_to_start_without_it(tmp_path, run_main, script):
    import importlib.util
    spec = importlib.util.spec_from_file_location("script_under_test", os.path.join(REPO, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code, err = run_main(module.main, ["--resume", "--output_dir", tmp_path / "never_started"])
    assert code == 2 and err == [f"error: --resume: {tmp_path}/never_started holds no checkpoint_last.pt, so there "
                                 f"is nothing to continue; start the run without --resume"]


def test_resume_of_a_pretraining_folder_says_it_holds_no_search(tiny_runs, run_main):
    from Search_CIFAR10.dnas.dnas_search_cifar10_mbv2 import main
    code, err = run_main(main, ["--resume", "--output_dir", tiny_runs.root / "pre"])
    assert code == 2 and err == [f"error: --resume: {tiny_runs.root}/pre/checkpoint_last.pt is not a search's "
                                 f"checkpoint (pretraining writes one of that name too); give the folder of the "
                                 f"search to continue"]
