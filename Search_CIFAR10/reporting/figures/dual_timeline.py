"""A dual-core network's timeline: each layer's busy time on each unit."""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

from matplotlib.patches import Patch

from .common import (IDLE_COLOR, PRECISION_COLORS, check_precision, dict_item, new_figure, non_empty_list,
                     precision_legend, required_number, save)


def plot_dual_core_timeline(layers: Sequence[Mapping], unit_names: Sequence[str], path) -> str:
    """Gantt chart of the processing units: one row per unit, each layer a bar (coloured by precision)
    from its start for the unit's busy time; idle time shows as the light background between bars.

    Each layer: ``{"name", "start_ms", "end_ms", "units": {unit: {"busy_ms", "precision"}}}``;
    ``end_ms`` defaults to the start plus the longest busy time.
    """
    unit_names = [str(u) for u in non_empty_list(unit_names, "unit_names", "unit names")]
    if len(set(unit_names)) != len(unit_names):
        raise ValueError(f"unit_names: names repeat in {unit_names}")
    layers = non_empty_list(layers, "layers", "per-layer timeline dicts")
    tolerance = 1e-6
    bars: Dict[str, List[Tuple[float, float, str, int]]] = {u: [] for u in unit_names}
    ends = []
    for i, layer in enumerate(layers):
        layer = dict_item(layer, f"layers[{i}]")
        where = f"layers[{i}] ({layer.get('name', '?')})"
        start = required_number(layer.get("start_ms"), f"{where} start_ms", minimum=0)
        units = layer.get("units")
        if not isinstance(units, Mapping) or not units:
            raise ValueError(f"{where}: expected 'units': {{unit: {{'busy_ms', 'precision'}}}} with at "
                             "least one unit")
        longest = 0.0
        for unit, spec in units.items():
            if unit not in bars:
                raise ValueError(f"{where}: unknown unit {unit!r}; expected one of {', '.join(unit_names)}")
            spec = dict_item(spec, f"{where} unit {unit!r}")
            busy = required_number(spec.get("busy_ms"), f"{where} unit {unit!r} busy_ms", minimum=0)
            precision = check_precision(spec.get("precision"), f"{where} unit {unit!r}")
            bars[unit].append((start, busy, precision, i))
            longest = max(longest, busy)
        end = layer.get("end_ms")
        end = start + longest if end is None else required_number(end, f"{where} end_ms", minimum=0)
        if end + tolerance < start + longest:
            raise ValueError(f"{where}: end_ms {end:g} is before start_ms + busy_ms ({start + longest:g})")
        ends.append(end)

    total = max(ends) or 1.0
    rows = len(unit_names)
    fig = new_figure(max(8.0, min(24.0, 6.0 + 0.12 * len(layers))), 1.5 + 0.9 * rows)
    ax = fig.subplots()
    y_of = {u: rows - 1 - k for k, u in enumerate(unit_names)}
    ax.barh(list(y_of.values()), [total] * rows, left=0, height=0.62, color=IDLE_COLOR, zorder=0)
    ax.vlines(ends, -0.5, rows - 0.5, colors="#BBBBBB", linewidth=0.4, zorder=1)
    tick_labels = []
    for unit in unit_names:
        unit_bars = bars[unit]
        if unit_bars:
            ax.barh([y_of[unit]] * len(unit_bars), [b for _, b, _, _ in unit_bars],
                    left=[s for s, _, _, _ in unit_bars], height=0.62,
                    color=[PRECISION_COLORS[p] for _, _, p, _ in unit_bars],
                    edgecolor="white", linewidth=0.4, zorder=2)
            for start, busy, _, index in unit_bars:
                if busy >= 0.025 * total:
                    ax.text(start + busy / 2, y_of[unit], str(index), ha="center", va="center",
                            fontsize=6, zorder=3)
        busy_total = sum(b for _, b, _, _ in unit_bars)
        tick_labels.append(f"{unit}\nbusy {busy_total:.3g} ms ({100 * busy_total / total:.0f}%)")
    ax.set_yticks([y_of[u] for u in unit_names])
    ax.set_yticklabels(tick_labels, fontsize=8)
    ax.set_ylim(-0.5, rows - 0.5)
    ax.set_xlim(0, total)
    ax.set_xlabel("time (ms); numbers are layer indices in execution order", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    handles = precision_legend([p for unit_bars in bars.values() for _, _, p, _ in unit_bars])
    handles.append(Patch(facecolor=IDLE_COLOR, label="idle"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(handles),
              fontsize=7, frameon=False, borderaxespad=0)
    fig.suptitle(f"Per-layer timeline of {', '.join(unit_names)} · {len(layers)} layers · "
                 f"{total:.3g} ms", fontsize=10)
    return save(fig, path)
