"""Plots of a search run: π per layer, the final precision map, training curves, the accuracy/latency
Pareto front and the dual-core timeline.

Every function takes plain Python data (what log.csv, alphas.json and the per-layer reports hold, never a
model) and an output path, writes one PNG atomically (a reader never sees half an image and a failed plot
leaves the previous one intact) and returns the path. Bad input raises ValueError naming the argument.

Each precision has one colour everywhere (``PRECISION_COLORS``), taken from the Okabe–Ito palette, whose
colours stay distinguishable under the common colour-vision deficiencies (M. Okabe and K. Ito, "Color
Universal Design (CUD): how to make figures and presentations that are friendly to colorblind people",
2008, https://jfly.uni-koeln.de/color/). Metric lines use the palette's black and reddish purple, which
no precision uses, so a curve never reads as a precision.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, not pyplot: no global figure
registry to leak memory in long runs, and no display needed (nohup, headless servers).
"""
from __future__ import annotations

import csv
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from models.base import PRECISION_ORDER
from Search_CIFAR10.dnas.utils.checkpoint import atomic_write, read_json

DPI = 120

# Okabe–Ito: cool colours for the float formats, green for INT8 (the deployable default), warm colours
# for the low-bit formats.
PRECISION_COLORS: Dict[str, str] = {
    "fp32": "#0072B2",  # blue
    "fp16": "#56B4E9",  # sky blue
    "int8": "#009E73",  # bluish green
    "int4": "#E69F00",  # orange
    "int2": "#D55E00",  # vermillion
}
PRIMARY_COLOR = "#000000"    # first metric line (train, expected, search points)
SECONDARY_COLOR = "#CC79A7"  # second metric line (val, argmax, stage-2 points)
NEUTRAL_COLOR = "#8C8C8C"    # per-layer RAM / latency bars, references without a precision
IDLE_COLOR = "#EDEDED"       # a processing unit doing nothing

PARETO_KINDS = ("search", "uniform", "stage2")
ALPHAS_SCHEMA_PREFIX = "adaptqnet/alphas/"

# Hatches tell the units of a dual-core layer apart inside one colour-coded bar.
_UNIT_HATCHES = ("", "////", "....", "xxxx")
_PHASE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def precision_color(name: str) -> str:
    """The fixed colour of a precision name (``ValueError`` for an unknown name)."""
    _check_precision(name, "precision")
    return PRECISION_COLORS[name]


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def _check_precision(name: Any, where: str) -> str:
    if name not in PRECISION_COLORS:
        raise ValueError(f"{where}: unknown precision {name!r}; expected one of {', '.join(PRECISION_ORDER)}")
    return name


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for anything empty, non-numeric or NaN (csv cells arrive as strings)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _required_number(value: Any, where: str, minimum: Optional[float] = None) -> float:
    x = _number(value)
    if x is None:
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{where}: expected a number >= {minimum:g}, got {x:g}")
    return x


def _non_empty_list(value: Any, argument: str, what: str) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{argument}: expected a non-empty list of {what}, got "
                         f"{'an empty list' if isinstance(value, (list, tuple)) else type(value).__name__}")
    return list(value)


def _dict_item(item: Any, where: str) -> Mapping:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(item).__name__}")
    return item


def _new_figure(width: float, height: float, layout: Optional[str] = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> str:
    path = os.fspath(path)
    if not path:
        raise ValueError("path: expected a file name for the PNG, got an empty string")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return path


def _precision_legend(precisions: Sequence[str]) -> List[Patch]:
    present = [p for p in PRECISION_ORDER if p in set(precisions)]
    return [Patch(facecolor=PRECISION_COLORS[p], label=p) for p in present]


def _tick_fontsize(count: int) -> float:
    return 7.5 if count <= 30 else 6.5 if count <= 60 else 5.5


# ----------------------------------------------------------------------------------------------------
# π evolution
# ----------------------------------------------------------------------------------------------------
def plot_alpha_evolution(alphas_history: Mapping, path, max_columns: int = 8) -> str:
    """One small stacked-area plot of π per layer (x = epoch), in execution order, in a grid.

    ``alphas_history`` is the alphas.json object: ``{"schema": "adaptqnet/alphas/1", "layers": [...],
    "precisions": {name: [...]}, "history": [{"epoch", "temperature", "probs": {name: [...]}}]}``.
    A layer missing from an epoch's ``probs`` leaves a gap at that epoch.
    """
    if not isinstance(alphas_history, Mapping):
        raise ValueError("alphas_history: expected the alphas.json object (a dict with 'layers', "
                         f"'precisions' and 'history'), got {type(alphas_history).__name__}")
    schema = alphas_history.get("schema")
    if schema is not None and not str(schema).startswith(ALPHAS_SCHEMA_PREFIX):
        raise ValueError(f"alphas_history: schema {schema!r} is not an alphas file "
                         f"(expected {ALPHAS_SCHEMA_PREFIX}1)")
    layers = _non_empty_list(alphas_history.get("layers"), "alphas_history['layers']", "layer names")
    history = _non_empty_list(alphas_history.get("history"), "alphas_history['history']",
                              "per-epoch entries")
    precisions = alphas_history.get("precisions")
    if not isinstance(precisions, Mapping):
        raise ValueError("alphas_history['precisions']: expected a dict {layer: [allowed precisions]}")

    layer_precisions: Dict[str, List[str]] = {}
    for name in layers:
        allowed = precisions.get(name)
        where = f"alphas_history['precisions'][{name!r}]"
        allowed = _non_empty_list(allowed, where, "precision names")
        layer_precisions[name] = [_check_precision(p, where) for p in allowed]

    entries = []
    for i, entry in enumerate(history):
        entry = _dict_item(entry, f"alphas_history['history'][{i}]")
        epoch = _required_number(entry.get("epoch"), f"alphas_history['history'][{i}]['epoch']")
        probs = entry.get("probs")
        if not isinstance(probs, Mapping):
            raise ValueError(f"alphas_history['history'][{i}]['probs']: expected a dict {{layer: [π]}}")
        entries.append((epoch, _number(entry.get("temperature")), probs))
    entries.sort(key=lambda e: e[0])

    n = len(layers)
    columns = max(1, min(int(max_columns), n))
    rows = math.ceil(n / columns)
    width, height = 1.7 * columns + 0.6, 1.25 * rows + 1.2
    # fixed margins instead of constrained layout: solving the layout of ~50 axes costs seconds
    fig = _new_figure(width, height, layout=None)
    fig.subplots_adjust(left=0.45 / width, right=1 - 0.15 / width, bottom=0.45 / height,
                        top=1 - 0.8 / height, wspace=0.12, hspace=0.5)
    # no sharex/sharey: shared axes make every autoscale visit all ~50 siblings (quadratic, seconds);
    # fixed limits on each axis give the same picture
    axes = fig.subplots(rows, columns, squeeze=False)
    all_epochs = [e[0] for e in entries]
    single_epoch = len(set(all_epochs)) == 1
    x_limits = ((all_epochs[0] - 0.6, all_epochs[0] + 0.6) if single_epoch
                else (min(all_epochs), max(all_epochs)))
    for index, name in enumerate(layers):
        ax = axes[index // columns][index % columns]
        ax.set_autoscale_on(False)
        ax.set_xlim(*x_limits)
        ax.set_ylim(0, 1)
        allowed = layer_precisions[name]
        epochs, columns_of_probs = [], []
        for epoch, _, probs in entries:
            values = probs.get(name)
            if values is None:
                continue
            where = f"alphas_history: epoch {epoch:g}, layer {name!r}"
            if not isinstance(values, (list, tuple)) or len(values) != len(allowed):
                raise ValueError(f"{where}: expected {len(allowed)} probabilities aligned with "
                                 f"{allowed}, got {values!r}")
            epochs.append(epoch)
            columns_of_probs.append([_required_number(v, where, minimum=0.0) for v in values])
        colors = [PRECISION_COLORS[p] for p in allowed]
        if epochs:
            series = [list(s) for s in zip(*columns_of_probs)]
            if single_epoch:
                bottom = 0.0
                for values, color in zip(series, colors):
                    ax.bar(epochs[0], values[0], bottom=bottom, width=0.8, color=color)
                    bottom += values[0]
            else:
                ax.stackplot(epochs, series, colors=colors, linewidth=0)
            final = allowed[max(range(len(allowed)), key=lambda k: series[k][-1])]
            ax.set_title(f"{index}: {name} → {final}", fontsize=6.5, loc="left")
        else:
            ax.set_title(f"{index}: {name} (no data)", fontsize=6.5, loc="left")
        ax.tick_params(labelsize=6, length=2)
        ax.set_yticks([0, 0.5, 1])
        # tick labels only on the left column and on the lowest axis of each column
        ax.tick_params(labelleft=index % columns == 0, labelbottom=index + columns >= n)
        if index + columns >= n:
            ax.set_xlabel("epoch", fontsize=7)
    for index in range(n, rows * columns):
        axes[index // columns][index % columns].set_visible(False)

    temperatures = [t for _, t, _ in entries if t is not None]
    title = "π = softmax(α/T) per layer during the search"
    if temperatures:
        title += f"  (T {temperatures[0]:.3g} → {temperatures[-1]:.3g})"
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height, va="top")
    all_precisions = [p for ps in layer_precisions.values() for p in ps]
    fig.legend(handles=_precision_legend(all_precisions), loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.38 / height), ncol=len(PRECISION_ORDER), fontsize=8,
               frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# Final precision per layer, with RAM and latency
# ----------------------------------------------------------------------------------------------------
def precision_segments(precision: Any, where: str = "precision") -> List[Tuple[Optional[str], str, float]]:
    """``[(unit or None, precision, channel fraction)]`` for a precision name or a dual-core entry.

    Dual-core entries are ``{"units": {unit: {"precision": p, "channels": [start, end]}}}`` (the bare
    ``{unit: {...}}`` form is accepted too); fractions are each unit's share of the channels.
    """
    if isinstance(precision, str):
        return [(None, _check_precision(precision, where), 1.0)]
    if isinstance(precision, Mapping):
        units = precision.get("units", precision)
        if isinstance(units, Mapping) and units and all(isinstance(v, Mapping) for v in units.values()):
            widths = []
            for unit, spec in units.items():
                unit_where = f"{where}, unit {unit!r}"
                p = _check_precision(spec.get("precision"), unit_where)
                channels = spec.get("channels")
                if not isinstance(channels, (list, tuple)) or len(channels) != 2:
                    raise ValueError(f"{unit_where}: expected 'channels': [start, end], got {channels!r}")
                start = _required_number(channels[0], f"{unit_where} channel start", minimum=0)
                end = _required_number(channels[1], f"{unit_where} channel end", minimum=start)
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
    layers = _non_empty_list(layers, "layers", "per-layer dicts")
    names, ops, segments, live, latency, macs = [], [], [], [], [], []
    for i, layer in enumerate(layers):
        layer = _dict_item(layer, f"layers[{i}]")
        name = layer.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"layers[{i}]: expected a non-empty 'name'")
        names.append(name)
        ops.append(str(layer.get("op") or ""))
        if "precision" not in layer:
            raise ValueError(f"layers[{i}] ({name}): missing 'precision'")
        segments.append(precision_segments(layer["precision"], f"layers[{i}] ({name}) precision"))
        live.append(_number(layer.get("live_kb")))
        latency.append(_number(layer.get("latency_ms")))
        macs.append(_number(layer.get("macs")))
    for budget, flag in ((memory_budget_kb, "memory_budget_kb"), (latency_target_ms, "latency_target_ms")):
        if budget is not None:
            _required_number(budget, flag, minimum=0)

    n = len(layers)
    xs = list(range(n))
    fig = _new_figure(max(7.0, min(30.0, 1.6 + 0.2 * n)), 7.5)
    ax_strip, ax_ram, ax_lat = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [0.7, 1.5, 1.5]})

    units_seen: List[str] = []
    for x, layer_segments in zip(xs, segments):
        bottom = 0.0
        for unit, precision, fraction in layer_segments:
            if unit is not None and unit not in units_seen:
                units_seen.append(unit)
            hatch = _UNIT_HATCHES[units_seen.index(unit) % len(_UNIT_HATCHES)] if unit is not None else ""
            ax_strip.bar(x, fraction, bottom=bottom, width=0.86, color=PRECISION_COLORS[precision],
                         hatch=hatch, edgecolor="white", linewidth=0.4)
            bottom += fraction
    ax_strip.set_ylim(0, 1)
    ax_strip.set_yticks([])
    ax_strip.set_ylabel("precision" + ("\n(channel split)" if units_seen else ""), fontsize=8)
    handles = _precision_legend([p for s in segments for _, p, _ in s])
    handles += [Patch(facecolor="white", edgecolor=NEUTRAL_COLOR, hatch=_UNIT_HATCHES[k % len(_UNIT_HATCHES)],
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
                           rotation=90, fontsize=_tick_fontsize(n))

    facts = [f"{n} layers"]
    known_macs = [m for m in macs if m is not None]
    if known_macs:
        facts.append(f"{sum(known_macs) / 1e6:.3g} MMAC")
    if memory_budget_kb is not None:
        facts.append(f"RAM budget {memory_budget_kb:g} KB")
    if latency_target_ms is not None:
        facts.append(f"latency target {latency_target_ms:g} ms")
    fig.suptitle(f"{title or 'Precision per layer'}\n{' · '.join(facts)}", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# Training curves from log.csv
# ----------------------------------------------------------------------------------------------------
# (panel title, [(column, legend label)], log scale)
TRAINING_PANELS: Tuple[Tuple[str, Tuple[Tuple[str, str], ...], bool], ...] = (
    ("cross-entropy loss", (("train_loss", "train"), ("val_loss", "val")), False),
    ("hardware loss", (("hw_loss", "hardware loss"),), False),
    ("accuracy", (("train_acc", "train"), ("val_acc", "val")), False),
    ("temperature", (("temperature", "T"),), True),
    ("latency (ms)", (("exp_latency_ms", "expected"), ("argmax_latency_ms", "argmax")), False),
    ("peak RAM (KB)", (("exp_peak_ram_kb", "expected"), ("argmax_peak_ram_kb", "argmax")), False),
    ("α entropy", (("alpha_entropy", "mean over layers"),), False),
    ("learning rate", (("lr_weights", "weights"), ("lr_alpha", "α")), True),
    ("epoch time (s)", (("time_s", "wall time"),), False),
)


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
        epoch = _number(row.get("epoch"))
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
    log_rows = _non_empty_list(log_rows, "log_rows", "log.csv rows (dicts)")
    for i, row in enumerate(log_rows):
        _dict_item(row, f"log_rows[{i}]")
    phases, placed = _phase_positions(log_rows)

    panels = []
    for panel_title, series, log_scale in TRAINING_PANELS:
        drawn = []
        for column, label in series:
            points = [(phase, x, _number(row.get(column))) for phase, x, row in placed]
            points = [(phase, x, v) for phase, x, v in points if v is not None]
            if points:
                drawn.append((label, points))
        if drawn:
            positive = all(v > 0 for _, points in drawn for _, _, v in points)
            panels.append((panel_title, drawn, log_scale and positive))
    if not panels:
        columns = sorted({c for _, s, _ in TRAINING_PANELS for c, _ in s})
        raise ValueError(f"log_rows: no plottable values; expected numbers in some of {', '.join(columns)}")

    columns = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / columns)
    fig = _new_figure(5.2 * columns + 0.6, 2.5 * rows + 0.8)
    axes = fig.subplots(rows, columns, squeeze=False)
    x_all = [x for _, x, _ in placed]
    spans = {}
    for phase in phases[1:]:
        xs = [x for p, x, _ in placed if p == phase]
        spans[phase] = (min(xs) - 0.5, max(xs) + 0.5)
    style = {phase: _PHASE_STYLES[k % len(_PHASE_STYLES)] for k, phase in enumerate(phases)}
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
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# Accuracy vs latency
# ----------------------------------------------------------------------------------------------------
def _pareto_points(points: Sequence[Mapping]) -> List[Dict[str, Any]]:
    points = _non_empty_list(points, "points", "{'label', 'latency_ms', 'accuracy', 'kind'} dicts")
    checked = []
    for i, point in enumerate(points):
        point = _dict_item(point, f"points[{i}]")
        label = str(point.get("label") if point.get("label") is not None else f"point {i}")
        kind = point.get("kind", "search")
        if kind not in PARETO_KINDS:
            raise ValueError(f"points[{i}] ({label}): unknown kind {kind!r}; expected one of "
                             f"{', '.join(PARETO_KINDS)}")
        checked.append({**point, "label": label, "kind": kind,
                        "latency_ms": _required_number(point.get("latency_ms"),
                                                       f"points[{i}] ({label}) latency_ms", minimum=0),
                        "accuracy": _required_number(point.get("accuracy"), f"points[{i}] ({label}) accuracy")})
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
    fig = _new_figure(7.5, 5.2)
    ax = fig.subplots()
    for kind, marker, default_color in (("uniform", "s", NEUTRAL_COLOR), ("search", "o", PRIMARY_COLOR),
                                        ("stage2", "^", SECONDARY_COLOR)):
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
    return _save(fig, path)


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


# ----------------------------------------------------------------------------------------------------
# Dual-core timeline
# ----------------------------------------------------------------------------------------------------
def plot_dual_core_timeline(layers: Sequence[Mapping], unit_names: Sequence[str], path) -> str:
    """Gantt chart of the processing units: one row per unit, each layer a bar (coloured by precision)
    from its start for the unit's busy time; idle time shows as the light background between bars.

    Each layer: ``{"name", "start_ms", "end_ms", "units": {unit: {"busy_ms", "precision"}}}``;
    ``end_ms`` defaults to the start plus the longest busy time.
    """
    unit_names = [str(u) for u in _non_empty_list(unit_names, "unit_names", "unit names")]
    if len(set(unit_names)) != len(unit_names):
        raise ValueError(f"unit_names: names repeat in {unit_names}")
    layers = _non_empty_list(layers, "layers", "per-layer timeline dicts")
    tolerance = 1e-6
    bars: Dict[str, List[Tuple[float, float, str, int]]] = {u: [] for u in unit_names}
    ends = []
    for i, layer in enumerate(layers):
        layer = _dict_item(layer, f"layers[{i}]")
        where = f"layers[{i}] ({layer.get('name', '?')})"
        start = _required_number(layer.get("start_ms"), f"{where} start_ms", minimum=0)
        units = layer.get("units")
        if not isinstance(units, Mapping) or not units:
            raise ValueError(f"{where}: expected 'units': {{unit: {{'busy_ms', 'precision'}}}} with at "
                             "least one unit")
        longest = 0.0
        for unit, spec in units.items():
            if unit not in bars:
                raise ValueError(f"{where}: unknown unit {unit!r}; expected one of {', '.join(unit_names)}")
            spec = _dict_item(spec, f"{where} unit {unit!r}")
            busy = _required_number(spec.get("busy_ms"), f"{where} unit {unit!r} busy_ms", minimum=0)
            precision = _check_precision(spec.get("precision"), f"{where} unit {unit!r}")
            bars[unit].append((start, busy, precision, i))
            longest = max(longest, busy)
        end = layer.get("end_ms")
        end = start + longest if end is None else _required_number(end, f"{where} end_ms", minimum=0)
        if end + tolerance < start + longest:
            raise ValueError(f"{where}: end_ms {end:g} is before start_ms + busy_ms ({start + longest:g})")
        ends.append(end)

    total = max(ends) or 1.0
    rows = len(unit_names)
    fig = _new_figure(max(8.0, min(24.0, 6.0 + 0.12 * len(layers))), 1.5 + 0.9 * rows)
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
    handles = _precision_legend([p for unit_bars in bars.values() for _, _, p, _ in unit_bars])
    handles.append(Patch(facecolor=IDLE_COLOR, label="idle"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=len(handles),
              fontsize=7, frameon=False, borderaxespad=0)
    fig.suptitle(f"Per-layer timeline of {', '.join(unit_names)} · {len(layers)} layers · "
                 f"{total:.3g} ms", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# A run directory
# ----------------------------------------------------------------------------------------------------
def plot_run_dir(run_dir) -> List[str]:
    """(Re)draw the plots a run directory's own files allow: training_curves.png from log.csv and
    alpha_evolution.png from alphas.json. Returns the paths written (usable while a run is going on)."""
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    written = []
    log_path = os.path.join(run_dir, "log.csv")
    if os.path.isfile(log_path):
        rows = read_log_csv(log_path)
        if rows:
            written.append(plot_training_curves(rows, os.path.join(run_dir, "training_curves.png")))
    alphas_path = os.path.join(run_dir, "alphas.json")
    if os.path.isfile(alphas_path):
        alphas = read_json(alphas_path, "alphas.json")
        if isinstance(alphas, Mapping) and alphas.get("history"):
            written.append(plot_alpha_evolution(alphas, os.path.join(run_dir, "alpha_evolution.png")))
    return written
