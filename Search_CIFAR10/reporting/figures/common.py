"""What every figure shares: one colour per precision, input checks, atomic PNG writing."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from models.files import atomic_write
from models.precisions import PRECISION_ORDER

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

PARETO_KINDS = ("search", "uniform", "stage2", "random")

# Hatches tell the units of a dual-core layer apart inside one colour-coded bar.
UNIT_HATCHES = ("", "////", "....", "xxxx")
PHASE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def precision_color(name: str) -> str:
    """The fixed colour of a precision name (``ValueError`` for an unknown name)."""
    check_precision(name, "precision")
    return PRECISION_COLORS[name]


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def check_precision(name: Any, where: str) -> str:
    if name not in PRECISION_COLORS:
        raise ValueError(f"{where}: unknown precision {name!r}; expected one of {', '.join(PRECISION_ORDER)}")
    return name


def number(value: Any) -> Optional[float]:
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


def required_number(value: Any, where: str, minimum: Optional[float] = None) -> float:
    x = number(value)
    if x is None:
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    if minimum is not None and x < minimum:
        raise ValueError(f"{where}: expected a number >= {minimum:g}, got {x:g}")
    return x


def non_empty_list(value: Any, argument: str, what: str) -> list:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{argument}: expected a non-empty list of {what}, got "
                         f"{'an empty list' if isinstance(value, (list, tuple)) else type(value).__name__}")
    return list(value)


def dict_item(item: Any, where: str) -> Mapping:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(item).__name__}")
    return item


def new_figure(width: float, height: float, layout: Optional[str] = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path) -> str:
    path = os.fspath(path)
    if not path:
        raise ValueError("path: expected a file name for the PNG, got an empty string")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
    return path


def precision_legend(precisions: Sequence[str]) -> List[Patch]:
    present = [p for p in PRECISION_ORDER if p in set(precisions)]
    return [Patch(facecolor=PRECISION_COLORS[p], label=p) for p in present]


def tick_fontsize(count: int) -> float:
    return 7.5 if count <= 30 else 6.5 if count <= 60 else 5.5
