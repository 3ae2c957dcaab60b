"""Training curves from log.csv: losses, accuracy, temperature, hardware figures, learning rates."""
from __future__ import annotations

import csv
import math
import os
from typing import Dict, List, Mapping, Sequence, Tuple

from matplotlib.lines import Line2D

from .common import (IDLE_COLOR, PHASE_STYLES, PRIMARY_COLOR, SECONDARY_COLOR, dict_item, new_figure, non_empty_list,
                     number, save)

# (panel title, [(column, legend label)], log scale)
TRAINING_PANELS: Tuple[Tuple[str, Tuple[Tuple[str, str], ...], bool], ...] = (
    ("cross-entropy loss", (("train_loss", "train"), ("val_loss", "val")), False),
    ("hardware loss", (("hw_loss", "hardware loss"),), False),
    ("accuracy", (("train_acc", "train"), ("val_acc", "val")), False),
    ("temperature", (("temperature", "T"),), True),
    ("latency (ms)", (("exp_latency_ms", "expected"), ("argmax_latency_ms", "argmax")), False),
    ("peak RAM (KB)", (("exp_peak_ram_kb", "expected"), ("argmax_peak_ram_kb", "argmax")), False),
    ("α entropy", (("alpha_entropy", "mean over layers"),), False),
    ("learning rate", (("lr", "lr"), ("lr_weights", "weights"), ("lr_alpha", "α")), True),
    ("epoch time (s)", (("time_s", "wall time"),), False),
)


def plotted_columns(log_rows: Sequence[Mapping]) -> List[str]:
    """The log columns a curve is drawn for (a number in at least one row), in panel order."""
    return [column for _, series, _ in TRAINING_PANELS for column, _ in series
            if any(number(row.get(column)) is not None for row in log_rows)]


def read_log_csv(path) -> List[Dict[str, str]]:
    """The rows of a run's log.csv (cells as strings, as ``plot_training_curves`` accepts them)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: log.csv not found")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _phase_positions(rows: Sequence[Mapping]) -> Tuple[List[str], List[Tuple[str, float, Mapping]]]:
    """Order the phases as they first appear and place every row on one epoch axis.

    A later phase whose epochs restart (fine-tune epoch 0 after search epoch 9) is shifted to follow
    the earlier ones; a repeated (phase, epoch) row, as a resumed run can leave, keeps its last copy.
    """
    phases: List[str] = []
    by_phase: Dict[str, Dict[float, Mapping]] = {}
    for index, row in enumerate(rows):
        phase = str(row.get("phase") or "").strip()
        epoch = number(row.get("epoch"))
        if phase not in by_phase:
            phases.append(phase)
            by_phase[phase] = {}
        by_phase[phase][float(index) if epoch is None else epoch] = row
    placed: List[Tuple[str, float, Mapping]] = []
    end = None
    for phase in phases:
        epochs = sorted(by_phase[phase])
        shift = 0.0
        if end is not None and epochs[0] <= end:
            shift = end + 1 - epochs[0]
        for epoch in epochs:
            placed.append((phase, epoch + shift, by_phase[phase][epoch]))
        end = epochs[-1] + shift
    return phases, placed


def plot_training_curves(log_rows: Sequence[Mapping], path) -> str:
    """Losses, accuracy, temperature, expected/argmax latency and RAM, α entropy and learning rates
    per epoch from log.csv rows; one line style per phase (search, finetune), later phases shaded.
    Columns that are absent or empty in every row are left out."""
    log_rows = non_empty_list(log_rows, "log_rows", "log.csv rows (dicts)")
    for i, row in enumerate(log_rows):
        dict_item(row, f"log_rows[{i}]")
    phases, placed = _phase_positions(log_rows)

    columns_drawn = set(plotted_columns(log_rows))
    panels = []
    for panel_title, series, log_scale in TRAINING_PANELS:
        drawn = []
        for column, label in series:
            if column not in columns_drawn:
                continue
            points = [(phase, x, number(row.get(column))) for phase, x, row in placed]
            drawn.append((label, [(phase, x, v) for phase, x, v in points if v is not None]))
        if drawn:
            positive = all(v > 0 for _, points in drawn for _, _, v in points)
            panels.append((panel_title, drawn, log_scale and positive))
    if not panels:
        columns = sorted({c for _, s, _ in TRAINING_PANELS for c, _ in s})
        raise ValueError(f"log_rows: no plottable values; expected numbers in some of {', '.join(columns)}")

    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(5.2 * columns + 0.6, 2.5 * rows + 0.8)
    axes = fig.subplots(rows, columns, squeeze=False)
    x_all = [x for _, x, _ in placed]
    spans = {}
    for phase in phases[1:]:
        xs = [x for p, x, _ in placed if p == phase]
        spans[phase] = (min(xs) - 0.5, max(xs) + 0.5)
    style = {phase: PHASE_STYLES[k % len(PHASE_STYLES)] for k, phase in enumerate(phases)}
    colors = (PRIMARY_COLOR, SECONDARY_COLOR)

    for k, (panel_title, drawn, log_scale) in enumerate(panels):
        ax = axes[k // columns][k % columns]
        for start, stop in spans.values():
            ax.axvspan(start, stop, color=IDLE_COLOR, zorder=0, linewidth=0)
        for s, (label, points) in enumerate(drawn):
            labelled = False
            for phase in phases:
                xs = [x for p, x, _ in points if p == phase]
                ys = [v for p, _, v in points if p == phase]
                if xs:
                    linestyle, marker = style[phase]
                    ax.plot(xs, ys, color=colors[s % len(colors)], linestyle=linestyle, marker=marker,
                            markersize=3, linewidth=1.3, label=None if labelled else label)
                    labelled = True
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=9, loc="left")
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(color="#DDDDDD", linewidth=0.5)
        ax.set_xlim(min(x_all) - 0.5, max(x_all) + 0.5)
        if len(drawn) > 1:
            ax.legend(fontsize=7, frameon=False)
    for k in range(len(panels), rows * columns):
        axes[k // columns][k % columns].set_visible(False)

    title = "Training curves"
    if len(phases) > 1 or phases[0]:
        handles = [Line2D([], [], color=PRIMARY_COLOR, linestyle=style[p][0], marker=style[p][1],
                          markersize=3, label=p or "(no phase)") for p in phases]
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
        if len(phases) > 1:
            title += " (later phases shaded; their epochs follow the earlier ones)"
    fig.suptitle(title, fontsize=10)
    return save(fig, path)
