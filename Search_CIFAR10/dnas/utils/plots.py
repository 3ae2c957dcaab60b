"""Training curves as PNG files (matplotlib's Agg backend: no display needed, safe under nohup)."""
from __future__ import annotations

from typing import Any, List, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .checkpoint import atomic_write  # noqa: E402

# the usual pair: loss curves and accuracy curves side by side
LOSS_ACCURACY_PANELS = {"loss": ("train_loss", "val_loss"), "accuracy (%)": ("train_acc", "val_acc")}


def _number(v: Any):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def save_figure(fig, path: str) -> None:
    """Save as PNG atomically (temp file + rename) so a reader never sees half a picture; closes ``fig``."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str,
                panels: Mapping[str, Sequence[str]] = LOSS_ACCURACY_PANELS, x: str = "epoch",
                title: str = "") -> List[str]:
    """One panel per entry of ``panels`` (panel title → column names), each column a line over ``x``.
    Columns absent from every row are skipped; returns the columns drawn."""
    drawn: List[str] = []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.6), squeeze=False)
    for ax, (panel, columns) in zip(axes[0], panels.items()):
        for col in columns:
            pts = [(_number(r.get(x)), _number(r.get(col))) for r in rows]
            pts = [(a, b) for a, b in pts if a is not None and b is not None]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, markersize=3, label=col)
            drawn.append(col)
        ax.set_xlabel(x)
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return drawn
