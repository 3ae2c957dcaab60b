"""Per-epoch logs and progress bars that behave both at a terminal and under ``nohup``.

* :class:`EpochLogger` keeps ``log.csv``: one row per epoch, the whole file rewritten atomically on each
  append (a few hundred rows at most), so a run killed mid-write leaves the previous file, and a
  resumed run drops rows from epochs it is about to redo.
* :func:`format_epoch` makes the one readable line per epoch printed to stdout.
* :func:`progress` is tqdm at a terminal and silent otherwise (under nohup a bar would fill the log
  with carriage-return updates; the per-epoch line is the progress there).
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

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


def format_epoch(row: Dict[str, Any], total_epochs: Optional[int] = None) -> str:
    """'epoch 3/30 | lr 0.05 | train_loss 0.41 | ...' from a log row (keys in the row's order)."""
    parts = []
    for k, v in row.items():
        if k == "epoch":
            parts.insert(0, f"epoch {v}" + (f"/{total_epochs}" if total_epochs else ""))
        else:
            parts.append(f"{k} {_fmt(v)}")
    return " | ".join(parts)


class EpochLogger:
    """log.csv with one row per epoch. Columns are the union of every row's keys, in first-seen order."""

    def __init__(self, path: str, resume_after_epoch: Optional[int] = None):
        """With ``resume_after_epoch``, keep the existing rows up to that epoch (the ones the resumed
        checkpoint covers) and drop later ones; without it, start a new file."""
        self.path = path
        self.rows: List[Dict[str, Any]] = []
        if resume_after_epoch is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        if int(row.get("epoch", "")) <= resume_after_epoch:
                            self.rows.append(row)
                    except ValueError:
                        continue  # a foreign or damaged line: not ours to keep
        self._write()

    def fieldnames(self) -> List[str]:
        names: List[str] = []
        for row in self.rows:
            names.extend(k for k in row if k not in names)
        return names

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fieldnames(), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
        write_text_atomic(buf.getvalue(), self.path)

    def log(self, row: Dict[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write()
