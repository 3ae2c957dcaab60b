"""Atomic, resumable checkpoints shared by pretraining, stage 1 and stage 2.

A checkpoint is written to a temporary file in the same folder and renamed over the target, so a run
killed while saving leaves the previous checkpoint intact. Files load with ``weights_only=True``: no
code runs from a checkpoint, so everything stored is tensors, numbers, strings, lists and dicts.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any, Dict

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or belongs to another run/model."""


def atomic_write(path: str, write) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; results are meant to be shared like any file the user writes
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_atomic(obj: Dict[str, Any], path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def write_json_atomic(obj: Any, path: str) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()))


def write_text_atomic(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str, what: str = "JSON file") -> Any:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an AdaptQNet checkpoint (expected a dict)")
    return obj


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


def check_spec(expected: Dict[str, Any], found: Dict[str, Any], what: str) -> None:
    """Raise CheckpointError naming the fields where two model specs differ ("found" is the file's)."""
    keys = sorted(set(expected) | set(found))
    diffs = [f"{k} {found.get(k)!r} there, {expected.get(k)!r} here" for k in keys
             if expected.get(k) != found.get(k)]
    if diffs:
        raise CheckpointError(f"{what} was made for another model ({'; '.join(diffs)})")
