"""Test accuracy against predicted latency, with the Pareto front."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from matplotlib.figure import Figure

from models.precisions import PRECISION_ORDER

from .common import (NEUTRAL_COLOR, PARETO_KINDS, PRECISION_COLORS, PRIMARY_COLOR, SECONDARY_COLOR, dict_item,
                     new_figure, non_empty_list, required_number, save)


def _pareto_points(points: Sequence[Mapping]) -> List[Dict[str, Any]]:
    points = non_empty_list(points, "points", "{'label', 'latency_ms', 'accuracy', 'kind'} dicts")
    checked = []
    for i, point in enumerate(points):
        point = dict_item(point, f"points[{i}]")
        label = str(point.get("label") if point.get("label") is not None else f"point {i}")
        kind = point.get("kind", "search")
        if kind not in PARETO_KINDS:
            raise ValueError(f"points[{i}] ({label}): unknown kind {kind!r}; expected one of "
                             f"{', '.join(PARETO_KINDS)}")
        checked.append({**point, "label": label, "kind": kind,
                        "latency_ms": required_number(point.get("latency_ms"),
                                                       f"points[{i}] ({label}) latency_ms", minimum=0),
                        "accuracy": required_number(point.get("accuracy"), f"points[{i}] ({label}) accuracy")})
    return checked


def pareto_front(points: Sequence[Mapping]) -> List[Dict[str, Any]]:
    """The points no other point beats on both axes (higher accuracy, lower latency), by latency."""
    front, best = [], -math.inf
    for point in sorted(_pareto_points(points), key=lambda p: (p["latency_ms"], -p["accuracy"])):
        if point["accuracy"] > best:
            front.append(point)
            best = point["accuracy"]
    return front


def _label_precision(label: str) -> Optional[str]:
    words = label.lower().replace("-", " ").replace("_", " ").split()
    return next((p for p in PRECISION_ORDER if p in words), None)


def plot_pareto(points: Sequence[Mapping], path, title: Optional[str] = None) -> str:
    """Accuracy vs predicted latency: search results (circles), uniform-precision references (squares
    in the precision's colour when the label names one), stage-2 results (triangles), and the Pareto
    front as a step line."""
    checked = _pareto_points(points)
    front = pareto_front(checked)
    fig = new_figure(7.5, 5.2)
    ax = fig.subplots()
    for kind, marker, default_color in (("uniform", "s", NEUTRAL_COLOR), ("search", "o", PRIMARY_COLOR),
                                        ("stage2", "^", SECONDARY_COLOR), ("random", "D", SECONDARY_COLOR)):
        group = [p for p in checked if p["kind"] == kind]
        if not group:
            continue
        colors = [PRECISION_COLORS.get(_label_precision(p["label"]) or "", default_color)
                  if kind == "uniform" else default_color for p in group]
        ax.scatter([p["latency_ms"] for p in group], [p["accuracy"] for p in group], marker=marker, s=46,
                   c=colors, edgecolors=PRIMARY_COLOR, linewidths=0.6, zorder=3, label=kind)
    right = max(p["latency_ms"] for p in checked)
    xs = [p["latency_ms"] for p in front] + [right]
    ys = [p["accuracy"] for p in front] + [front[-1]["accuracy"]]
    ax.step(xs, ys, where="post", color=PRIMARY_COLOR, linestyle="--", linewidth=1, alpha=0.7,
            zorder=2, label="Pareto front")
    ax.scatter([p["latency_ms"] for p in front], [p["accuracy"] for p in front], s=130,
               facecolors="none", edgecolors=PRIMARY_COLOR, linewidths=0.8, zorder=2)
    accuracy_is_percent = any(p["accuracy"] > 1 for p in checked)
    ax.set_xlabel("predicted latency (ms)", fontsize=9)
    ax.set_ylabel("accuracy (%)" if accuracy_is_percent else "accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(color="#DDDDDD", linewidth=0.5)
    ax.legend(fontsize=8, frameon=True, framealpha=0.85, edgecolor="none", loc="best")  # off the markers
    ax.set_title(title or "Accuracy vs predicted latency", fontsize=10)
    _place_labels(fig, ax, checked)
    return save(fig, path)


# label positions tried in turn, in points from the marker: right/left of it, then further up and down
LABEL_OFFSETS = ((5, 3), (5, -10), (-5, 3), (-5, -10), (5, 14), (5, -21), (-5, 14), (-5, -21), (5, 25), (5, -32))


def _place_labels(fig: Figure, ax, points: Sequence[Mapping], fontsize: float = 7) -> None:
    """Label every point at the first offset where the text covers no marker and no label placed before
    (sweeps put several networks at nearly the same latency); the first offset when none is free."""
    fig.canvas.draw()  # the constrained layout settles the axes before positions are measured
    renderer = fig.canvas.get_renderer()
    centres = [ax.transData.transform((p["latency_ms"], p["accuracy"])) for p in points]
    half = 5 * fig.dpi / 72.0
    taken = [(x - half, y - half, x + half, y + half) for x, y in centres]

    def free(box) -> bool:
        return all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in taken)

    order = sorted(range(len(points)), key=lambda i: (points[i]["latency_ms"], -points[i]["accuracy"]))
    for i in order:
        p = points[i]
        text = ax.annotate(p["label"], (p["latency_ms"], p["accuracy"]), xytext=LABEL_OFFSETS[0],
                           textcoords="offset points", fontsize=fontsize, zorder=4)
        for dx, dy in LABEL_OFFSETS:
            text.set_position((dx, dy))
            text.set_horizontalalignment("left" if dx > 0 else "right")
            bb = text.get_window_extent(renderer)
            if free((bb.x0, bb.y0, bb.x1, bb.y1)):
                break
        else:
            text.set_position(LABEL_OFFSETS[0])
            text.set_horizontalalignment("left")
            bb = text.get_window_extent(renderer)
        taken.append((bb.x0, bb.y0, bb.x1, bb.y1))
