"""A run directory: its files, written atomically by rank 0 only, and the state a resumed run restores.

Checkpoints are written with ``models.files.save_checkpoint`` (temporary file + rename), so a run
killed while saving leaves the previous checkpoint whole; they hold tensors, numbers, strings, lists
and dicts only, so they load with ``weights_only=True``. ``rng_state`` captures every random number
generator a training step draws from, so a resumed run repeats the interrupted one exactly.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import torch

from models.files import save_checkpoint, write_json_atomic

from .log import write_log_csv

# Checkpoint keys every training script writes (pretraining and both search stages), so one resume
# routine and one reader serve them all.
LAST = "checkpoint_last.pt"        # every epoch; what --resume continues
EPOCH, OPTIMIZER, SCHEDULER, RNG, LOG_ROWS, BEST_VAL = ("epoch", "optimizer", "scheduler", "rng", "log_rows",
                                                       "best_val_acc")


class RunDir:
    """One run's folder and its atomic writers; only rank 0 writes (the others' calls do nothing)."""

    def __init__(self, path: str, is_main: bool = True):
        self.dir = path
        self.is_main = is_main
        if is_main:
            os.makedirs(path, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def json(self, name: str, obj, compact: bool = False) -> None:
        if self.is_main:
            write_json_atomic(obj, self.path(name), compact=compact)

    def checkpoint(self, name: str, obj) -> None:
        if self.is_main:
            save_checkpoint(obj, self.path(name))

    def log(self, rows: Sequence[Mapping]) -> None:
        """log.csv from every epoch's row so far (the rows a checkpoint carries)."""
        if self.is_main:
            write_log_csv(self.path("log.csv"), rows)


def rng_state() -> Dict[str, Any]:
    """Every RNG a training step draws from, as tensors/lists so weights_only loading accepts it."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    gauss = py[-1]
    random.setstate((state["python_version"], tuple(int(v) for v in py[:-1]), None if gauss == -1 else gauss))
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
