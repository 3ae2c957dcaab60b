"""Training and search on top of the models and the hardware analysis: pretraining (pretrain/), the
stage-1 precision search (dnas/), the stage-2 dual-core search (dnas_multicore/), the run
infrastructure they share (training/), and what users read afterwards (reporting/)."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
