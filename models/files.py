"""Reading and writing the project's files: atomic writes, JSON with clear errors, checkpoints.

Every file is written to a temporary file beside its target and renamed over it, so a process killed
while writing leaves the previous file whole; a write that fails (a read-only file system, a parent
that is a file, a target that is a folder, a full disk) raises ``FileWriteError`` naming the target,
never the temporary file. JSON is read with the file named in every error, and refused when an object
repeats a key (json keeps the last value silently) or nests too deeply to read. Checkpoints load with
``weights_only=True``: no code runs from a checkpoint, so everything stored is tensors, numbers,
strings, lists and dicts.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import tempfile
from typing import Any, Callable, Dict, List, Tuple

import torch


class FileFormatError(ValueError):
    """A file is missing, unreadable, or not the kind of file expected."""


class CheckpointError(FileFormatError):
    """A checkpoint is missing, unreadable or belongs to another run/model."""


class FileWriteError(OSError):
    """A file or folder could not be written; the message names the user's path and why."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.errno = code


def file_ancestor(path: str) -> str:
    """The nearest ancestor of ``path`` that exists as something other than a folder ('' if none)."""
    folder = os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return ""
        folder = parent
    return folder if folder and not os.path.isdir(folder) else ""


def why_not_written(path: str, exc: OSError) -> str:
    """Why writing ``path`` failed, in words a user acts on (the temporary file never appears)."""
    blocker = file_ancestor(path)
    if blocker or exc.errno == errno.ENOTDIR:
        return f"{blocker or 'a parent'} is a file, not a folder"
    if os.path.isdir(path) or exc.errno == errno.EISDIR:
        return "is a folder; expected a file name"
    reasons = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded"}
    return f"cannot write ({reasons.get(exc.errno, exc.strerror or exc.__class__.__name__)})"


def write_error(path: str, exc: OSError) -> FileWriteError:
    return FileWriteError(f"{path}: {why_not_written(path, exc)}", exc.errno or 0)


def atomic_write(path: str, write: Callable) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp_" + os.path.basename(path), dir=folder)
    except OSError as exc:
        raise write_error(path, exc) from None
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
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileWriteError):
            raise write_error(path, exc) from None
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


def _refuse_repeated_keys(path: str) -> Callable[[List[Tuple[str, Any]]], Dict[str, Any]]:
    """json's object hook that refuses an object naming a key twice (json would keep the last value)."""
    def build(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        obj: Dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise FileFormatError(f"{path}: the key {key!r} appears twice in one object; json would keep "
                                      f"the last value silently, so say which one is meant")
            obj[key] = value
        return obj
    return build


def read_json(path: str, what: str = "JSON file") -> Any:
    if os.path.isdir(path):
        raise FileFormatError(f"{path}: is a folder; expected a {what}")
    if not os.path.isfile(path):
        raise FileFormatError(f"{path}: {what} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, object_pairs_hook=_refuse_repeated_keys(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise FileFormatError(f"{path}: JSON nested too deeply to read (no file of this project nests more than a "
                              f"few levels)") from None
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None


def save_checkpoint(obj: Dict[str, Any], path: str) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message opens with advice to load with weights_only=False, which would run the file's code
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        raise CheckpointError(f"{path}: not an AdaptQNet checkpoint: it stores objects other than tensors, numbers, "
                              f"strings, lists and dicts{f' ({found.group(1)})' if found else ''}, and such a file "
                              f"is never loaded (loading it could run code)") from None
    except Exception as exc:
        first = str(exc).split(". ")[0].splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not an AdaptQNet checkpoint (expected a dict)")
    return obj
