"""π of every searched layer over the search epochs (alphas.json)."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping

from models import formats
from models.precisions import PRECISION_ORDER

from .common import (PRECISION_COLORS, check_precision, dict_item, new_figure, non_empty_list, number, precision_legend,
                     required_number, save)


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
    if schema is not None and not str(schema).startswith(formats.kind_of(formats.ALPHAS)):
        raise ValueError(f"alphas_history: schema {schema!r} is not an alphas file "
                         f"(expected {formats.ALPHAS})")
    layers = non_empty_list(alphas_history.get("layers"), "alphas_history['layers']", "layer names")
    history = non_empty_list(alphas_history.get("history"), "alphas_history['history']",
                              "per-epoch entries")
    precisions = alphas_history.get("precisions")
    if not isinstance(precisions, Mapping):
        raise ValueError("alphas_history['precisions']: expected a dict {layer: [allowed precisions]}")

    layer_precisions: Dict[str, List[str]] = {}
    for name in layers:
        allowed = precisions.get(name)
        where = f"alphas_history['precisions'][{name!r}]"
        allowed = non_empty_list(allowed, where, "precision names")
        layer_precisions[name] = [check_precision(p, where) for p in allowed]

    entries = []
    for i, entry in enumerate(history):
        entry = dict_item(entry, f"alphas_history['history'][{i}]")
        epoch = required_number(entry.get("epoch"), f"alphas_history['history'][{i}]['epoch']")
        probs = entry.get("probs")
        if not isinstance(probs, Mapping):
            raise ValueError(f"alphas_history['history'][{i}]['probs']: expected a dict {{layer: [π]}}")
        entries.append((epoch, number(entry.get("temperature")), probs))
    entries.sort(key=lambda e: e[0])

    n = len(layers)
    columns = max(1, min(int(max_columns), n))
    rows = math.ceil(n / columns)
    width, height = 1.7 * columns + 0.6, 1.25 * rows + 1.2
    # fixed margins instead of constrained layout: solving the layout of ~50 axes costs seconds
    fig = new_figure(width, height, layout=None)
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
            columns_of_probs.append([required_number(v, where, minimum=0.0) for v in values])
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
    fig.legend(handles=precision_legend(all_precisions), loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.38 / height), ncol=len(PRECISION_ORDER), fontsize=8,
               frameon=False)
    return save(fig, path)
