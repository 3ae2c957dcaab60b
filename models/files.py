"""Reading and writing the project's files: atomic writes, JSON with clear errors, checkpoints.

Every file is written to a temporary file beside its target and renamed over it, so a process killed
while writing leaves the previous file whole. JSON is read with the file named in every error.
Checkpoints load with ``weights_only=True``: no code runs from a checkpoint, so everything stored is
tensors, numbers, strings, lists and dicts.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict

import torch


class FileFormatError(ValueError):
    """A file is missing, unreadable, or not the kind of file expected."""


class CheckpointError(FileFormatError):
    """A checkpoint is missing, unreadable or belongs to another run/model."""


def atomic_write(path: str, write: Callable) -> None:
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


def write_text_atomic(text: str, path: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def compact_json(obj: Any, indent: int = 0, width: int = 110) -> str:
    """JSON with small objects and lists on one line: readable, a fraction of indent=2's size."""
    flat = json.dumps(obj)
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{compact_json(v, indent + 2, width)}" for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def write_json_atomic(obj: Any, path: str, compact: bool = False) -> None:
    """``compact``: small objects and lists on one line (the large analysis and LUT files)."""
    text = compact_json(obj) if compact else json.dumps(obj, indent=2, sort_keys=False)
    write_text_atomic(text + "\n", path)


def read_json(path: str, what: str = "JSON file") -> Any:
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not valid JSON ({exc})") from None


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


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
