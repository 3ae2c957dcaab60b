"""The final precision of every layer, with its live RAM and latency."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple

from matplotlib.patches import Patch

from .common import (NEUTRAL_COLOR, PRECISION_COLORS, PRIMARY_COLOR, SECONDARY_COLOR, UNIT_HATCHES, check_precision,
                     dict_item, new_figure, non_empty_list, number, precision_legend, required_number, save,
                     tick_fontsize)


def precision_segments(precision: Any, where: str = "precision") -> List[Tuple[Optional[str], str, float]]:
    """``[(unit or None, precision, channel fraction)]`` for a precision name or a dual-core entry.

    Dual-core entries are ``{"units": {unit: {"precision": p, "channels": [start, end]}}}`` (the bare
    ``{unit: {...}}`` form is accepted too); fractions are each unit's share of the channels.
    """
    if isinstance(precision, str):
        return [(None, check_precision(precision, where), 1.0)]
    if isinstance(precision, Mapping):
        units = precision.get("units", precision)
        if isinstance(units, Mapping) and units and all(isinstance(v, Mapping) for v in units.values()):
            widths = []
            for unit, spec in units.items():
                unit_where = f"{where}, unit {unit!r}"
                p = check_precision(spec.get("precision"), unit_where)
                channels = spec.get("channels")
                if not isinstance(channels, (list, tuple)) or len(channels) != 2:
                    raise ValueError(f"{unit_where}: expected 'channels': [start, end], got {channels!r}")
                start = required_number(channels[0], f"{unit_where} channel start", minimum=0)
                end = required_number(channels[1], f"{unit_where} channel end", minimum=start)
                widths.append((str(unit), p, end - start))
            total = sum(w for _, _, w in widths)
            if total <= 0:
                raise ValueError(f"{where}: the units' channel ranges are all empty")
            return [(unit, p, w / total) for unit, p, w in widths if w > 0]
    raise ValueError(f"{where}: expected a precision name or a dual-core object "
                     "{'units': {unit: {'precision': ..., 'channels': [start, end]}}}, "
                     f"got {precision!r}")


def plot_precision_map(layers: Sequence[Mapping], path, memory_budget_kb: Optional[float] = None,
                       latency_target_ms: Optional[float] = None, title: Optional[str] = None) -> str:
    """Precision per layer as a coloured strip over the network, with RAM and latency per layer below.

    Each layer: ``{"name", "op", "precision", "live_kb", "latency_ms", "macs"}`` in execution order;
    ``precision`` may be a dual-core object (the bar is then split by channel share, one hatch per unit).
    The RAM panel marks ``memory_budget_kb`` and hatches the layers over it; the latency panel adds the
    cumulative latency against ``latency_target_ms`` (a whole-network target).
    """
    layers = non_empty_list(layers, "layers", "per-layer dicts")
    names, ops, segments, live, latency, macs = [], [], [], [], [], []
    for i, layer in enumerate(layers):
        layer = dict_item(layer, f"layers[{i}]")
        name = layer.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"layers[{i}]: expected a non-empty 'name'")
        names.append(name)
        ops.append(str(layer.get("op") or ""))
        if "precision" not in layer:
            raise ValueError(f"layers[{i}] ({name}): missing 'precision'")
        segments.append(precision_segments(layer["precision"], f"layers[{i}] ({name}) precision"))
        live.append(number(layer.get("live_kb")))
        latency.append(number(layer.get("latency_ms")))
        macs.append(number(layer.get("macs")))
    for budget, flag in ((memory_budget_kb, "memory_budget_kb"), (latency_target_ms, "latency_target_ms")):
        if budget is not None:
            required_number(budget, flag, minimum=0)

    n = len(layers)
    xs = list(range(n))
    fig = new_figure(max(7.0, min(30.0, 1.6 + 0.2 * n)), 7.5)
    ax_strip, ax_ram, ax_lat = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [0.7, 1.5, 1.5]})

    units_seen: List[str] = []
    for x, layer_segments in zip(xs, segments):
        bottom = 0.0
        for unit, precision, fraction in layer_segments:
            if unit is not None and unit not in units_seen:
                units_seen.append(unit)
            hatch = UNIT_HATCHES[units_seen.index(unit) % len(UNIT_HATCHES)] if unit is not None else ""
            ax_strip.bar(x, fraction, bottom=bottom, width=0.86, color=PRECISION_COLORS[precision],
                         hatch=hatch, edgecolor="white", linewidth=0.4)
            bottom += fraction
    ax_strip.set_ylim(0, 1)
    ax_strip.set_yticks([])
    ax_strip.set_ylabel("precision" + ("\n(channel split)" if units_seen else ""), fontsize=8)
    handles = precision_legend([p for s in segments for _, p, _ in s])
    handles += [Patch(facecolor="white", edgecolor=NEUTRAL_COLOR, hatch=UNIT_HATCHES[k % len(UNIT_HATCHES)],
                      label=f"unit {u}") for k, u in enumerate(units_seen)]
    ax_strip.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(handles),
                    fontsize=7, frameon=False, borderaxespad=0)

    ram_x = [x for x, v in zip(xs, live) if v is not None]
    ram_v = [v for v in live if v is not None]
    if ram_v:
        over = [memory_budget_kb is not None and v > memory_budget_kb for v in ram_v]
        ax_ram.bar(ram_x, ram_v, width=0.86, color=NEUTRAL_COLOR,
                   hatch=["xxx" if o else "" for o in over],
                   edgecolor=[PRIMARY_COLOR if o else NEUTRAL_COLOR for o in over], linewidth=0.6)
        peak = max(ram_v)
        ax_ram.set_title(f"peak {peak:.1f} KB at {names[ram_x[ram_v.index(peak)]]}", fontsize=8, loc="right")
    else:
        ax_ram.text(0.5, 0.5, "no RAM figures", transform=ax_ram.transAxes, ha="center", va="center")
    if memory_budget_kb is not None:
        ax_ram.axhline(memory_budget_kb, color=PRIMARY_COLOR, linestyle="--", linewidth=1,
                       label=f"budget {memory_budget_kb:g} KB")
        ax_ram.legend(fontsize=7, loc="upper right", frameon=False)
    ax_ram.set_ylabel("live RAM (KB)", fontsize=8)

    lat_x = [x for x, v in zip(xs, latency) if v is not None]
    lat_v = [v for v in latency if v is not None]
    if lat_v:
        ax_lat.bar(lat_x, lat_v, width=0.86, color=NEUTRAL_COLOR)
        ax_cum = ax_lat.twinx()
        cumulative, running = [], 0.0
        for v in lat_v:
            running += v
            cumulative.append(running)
        ax_cum.plot(lat_x, cumulative, color=SECONDARY_COLOR, linewidth=1.4, label="cumulative")
        if latency_target_ms is not None:
            ax_cum.axhline(latency_target_ms, color=SECONDARY_COLOR, linestyle="--", linewidth=1,
                           label=f"target {latency_target_ms:g} ms")
        ax_cum.set_ylim(0, max(cumulative + [latency_target_ms or 0]) * 1.08 or 1)
        ax_cum.set_ylabel("cumulative (ms)", fontsize=8, color=SECONDARY_COLOR)
        ax_cum.tick_params(labelsize=7, colors=SECONDARY_COLOR, axis="y")
        ax_cum.legend(fontsize=7, loc="upper left", frameon=False)
        ax_lat.set_title(f"total {running:.3g} ms", fontsize=8, loc="right")
    else:
        ax_lat.text(0.5, 0.5, "no latency figures", transform=ax_lat.transAxes, ha="center", va="center")
    ax_lat.set_ylabel("latency (ms)", fontsize=8)

    for ax in (ax_ram, ax_lat):
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", color="#DDDDDD", linewidth=0.5)
        ax.set_axisbelow(True)
    ax_lat.set_xlim(-0.6, n - 0.4)
    ax_lat.set_xticks(xs)
    ax_lat.set_xticklabels([f"{name} ({op})" if op else name for name, op in zip(names, ops)],
                           rotation=90, fontsize=tick_fontsize(n))

    facts = [f"{n} layers"]
    known_macs = [m for m in macs if m is not None]
    if known_macs:
        facts.append(f"{sum(known_macs) / 1e6:.3g} MMAC")
    if memory_budget_kb is not None:
        facts.append(f"RAM budget {memory_budget_kb:g} KB")
    if latency_target_ms is not None:
        facts.append(f"latency target {latency_target_ms:g} ms")
    fig.suptitle(f"{title or 'Precision per layer'}\n{' · '.join(facts)}", fontsize=10)
    return save(fig, path)


# ----------------------------------------------------------------------------------------------------
# Training curves from log.csv
