"""Per-epoch logs and progress bars that behave both at a terminal and under ``nohup``.

* :func:`write_log_csv` writes ``log.csv``, one row per epoch, for pretraining and both search stages;
  the rows live in the run's checkpoint, so a resumed run continues them exactly.
* :func:`format_epoch` makes the one readable line per epoch printed to stdout.
* :func:`progress` is tqdm at a terminal and silent otherwise (under nohup a bar would fill the log
  with carriage-return updates; the per-epoch line is the progress there).
"""
from __future__ import annotations

import csv
import io
import math
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from tqdm import tqdm

from models.files import write_text_atomic


def interactive() -> bool:
    """True when stdout and stderr are terminals (not nohup, not a pipe, not pytest's capture)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable, desc: str = "", total: Optional[int] = None, enabled: Optional[bool] = None,
             leave: bool = False):
    """A tqdm bar over ``iterable`` when ``enabled`` (default: when interactive); the iterable otherwise.
    Pass ``enabled=False`` on ranks other than 0."""
    if enabled is None:
        enabled = interactive()
    if not enabled:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.2f}"
    return str(value)


def format_epoch(row: Dict[str, Any], total_epochs: Optional[int] = None,
                 keys: Optional[Iterable[str]] = None) -> str:
    """'[search] epoch 3/30 | lr 0.05 | train_loss 0.41 | ...' from a log row (``keys``: which columns,
    default all, in the row's order; missing and empty values are left out)."""
    wanted = list(row) if keys is None else list(keys)
    head = (f"[{row['phase']}] " if row.get("phase") else "") + f"epoch {row.get('epoch')}" + (
        f"/{total_epochs}" if total_epochs else "")
    parts = [head] + [f"{k} {_fmt(row[k])}" for k in wanted
                      if k not in ("epoch", "phase") and row.get(k) not in (None, "")]
    return " | ".join(parts)


def log_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """log.csv: one row per epoch; the columns are the union of every row's keys in first-seen order,
    floats to 6 significant digits, missing values empty."""
    names: List[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def write_log_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite the whole file atomically (a few hundred rows at most): a run killed mid-write leaves
    the previous file, and a resumed run, which passes the rows its checkpoint holds, drops the rows
    of the epochs it is about to redo."""
    write_text_atomic(log_csv_text(rows), path)
