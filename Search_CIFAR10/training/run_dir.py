"""A run directory: claimed and locked by one process, its files written atomically by rank 0 only,
and the state a resumed run restores.

``RunDir.claim`` is how every training script (pretraining, both search stages) opens its folder:

* a folder that already holds files is refused unless the run continues it (``--resume``) or replaces
  it (``--overwrite``), so finished work is never written over without asking;
* a folder that is, or holds, one of the run's own inputs (the pretrained checkpoint, the stage-1 run)
  is refused even with ``--overwrite``: the run would destroy what it reads;
* the folder is locked (``flock`` on ``.lock`` inside it, which records the holder's PID) for as long
  as the process lives, so a second run started on it stops at once with one line naming that PID
  instead of racing the first one's files.

Checkpoints are written with ``models.files.save_checkpoint`` (temporary file + rename), so a run
killed while saving leaves the previous checkpoint whole; they hold tensors, numbers, strings, lists
and dicts only, so they load with ``weights_only=True``. ``rng_state`` captures every random number
generator a training step draws from, so a resumed run repeats the interrupted one exactly.
"""
from __future__ import annotations

import fcntl
import os
import random
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from models.files import save_checkpoint, write_error, write_json_atomic
from tensor_analysis.cli import check_output_folder, note_on_interrupt

from .log import write_log_csv

# Checkpoint keys every training script writes (pretraining and both search stages), so one resume
# routine and one reader serve them all.
LAST = "checkpoint_last.pt"        # every epoch; what --resume continues
EPOCH, OPTIMIZER, SCHEDULER, RNG, LOG_ROWS, BEST_VAL = ("epoch", "optimizer", "scheduler", "rng", "log_rows",
                                                       "best_val_acc")
LOCK = ".lock"
# what marks a folder as a finished run, and what --resume continues: --overwrite removes both first, so
# the folder never shows the old run as finished (or resumable) while the new one writes its files
RUN_STATE = ("summary.json", LAST)

_held_locks: Dict[str, int] = {}   # real path → the open lock file, kept open (and locked) until exit


class RunDir:
    """One run's folder and its atomic writers; only rank 0 writes (the others' calls do nothing)."""

    def __init__(self, path: str, is_main: bool = True):
        self.dir = path
        self.is_main = is_main
        if is_main:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise write_error(path, exc) from None

    @classmethod
    def claim(cls, path: str, is_main: bool = True, resume: bool = False, overwrite: bool = False,
              inputs: Sequence[Tuple[str, Optional[str]]] = (), flag: str = "--output_dir") -> "RunDir":
        """The run directory ``path``, refused or locked as the module docstring says. ``inputs``:
        (flag, path) of every file or folder the run reads. Only rank 0 claims (it alone writes)."""
        if is_main:
            claim_folder(path, resume, overwrite, inputs, flag)
            note_on_interrupt(lambda: resume_hint(path, flag))
        return cls(path, is_main)

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


def _contents(path: str) -> list:
    """What a folder holds besides hidden entries (its lock, temporary files of interrupted writes)."""
    return sorted(e for e in os.listdir(path) if not e.startswith("."))


def _refuse_occupied(path: str, flag: str) -> None:
    held = _contents(path)
    if not held:
        return
    what = ("a finished run" if "summary.json" in held else "a run" if LAST in held else "files")
    raise ValueError(f"{flag} {path} already holds {what} ({', '.join(held[:4])}{', ...' if len(held) > 4 else ''});"
                     f" pass --resume to continue it, --overwrite to replace it, or choose another {flag}")


def claim_folder(path: str, resume: bool, overwrite: bool, inputs: Sequence[Tuple[str, Optional[str]]],
                 flag: str) -> None:
    real = os.path.realpath(path)
    for input_flag, input_path in inputs:
        if input_path and os.path.exists(input_path):
            used = os.path.realpath(input_path)
            if used == real or used.startswith(real + os.sep):
                raise ValueError(f"{flag} {path}: {'is' if used == real else 'holds'} {input_flag} {input_path}, "
                                 f"which this run reads; write the run to another {flag}")
    check_output_folder(flag, path)
    if real not in _held_locks:
        holder = lock_holder(path)
        if holder is not None:
            raise _in_use(path, flag, holder)
    if os.path.isdir(path) and not (resume or overwrite):
        _refuse_occupied(path, flag)  # before anything is written into a folder that is not ours
    if real not in _held_locks:
        _held_locks[real] = lock_folder(path, flag)
    if not (resume or overwrite):
        _refuse_occupied(path, flag)  # again, now that no other process can write it
    if overwrite:
        for name in RUN_STATE:
            if os.path.isfile(os.path.join(path, name)):
                os.remove(os.path.join(path, name))


def _in_use(path: str, flag: str, holder: str) -> ValueError:
    return ValueError(f"{flag} {path}: another process (PID {holder}) is writing a run there; wait for it to end, "
                      f"or choose another {flag}")


def _pid_in(fd: int) -> str:
    """The PID a lock file holds (what its holder wrote), or "unknown"."""
    return os.read(fd, 64).decode(errors="replace").strip() or "unknown"


def lock_holder(path: str) -> Optional[str]:
    """The PID recorded by the process that holds ``path``'s lock now, or None (nobody does)."""
    lock_path = os.path.join(path, LOCK)
    if not os.path.isfile(lock_path):
        return None
    fd = os.open(lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _pid_in(fd)
    finally:
        os.close(fd)
    return None


def lock_folder(path: str, flag: str) -> int:
    """An open descriptor of ``path``/.lock holding an exclusive flock, with this process's PID in it."""
    lock_path = os.path.join(path, LOCK)
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _pid_in(fd)
        os.close(fd)
        raise _in_use(path, flag, holder) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def resume_hint(path: str, flag: str) -> str:
    """What an interrupted run says about its folder (tensor_analysis.cli.note_on_interrupt)."""
    if os.path.isfile(os.path.join(path, LAST)):
        return f"the last checkpoint is kept: resume with --resume {flag} {path}"
    return f"no checkpoint was written yet; start again with --overwrite {flag} {path}"


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
