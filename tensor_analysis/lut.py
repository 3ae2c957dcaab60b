"""lut.json: milliseconds per layer × precision (× dual-core option) on one profile, the table the
search optimises (docs/file_formats.md). A user may replace it with measured numbers in the same
format. Written by tensor_latency_predictor.py --lut.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from models import formats
from models.files import read_json
from models.mapping import Part, check_layer_names_match, dual_option_key, is_single_unit
from models.precisions import PRECISION_ORDER, get_precision

from .dual import DEFAULT_SPLITS, dual_options
from .graph import as_analysis
from .latency import fixed_operator_ms, layer_latency_ms, parts_latency
from .profiles import _number, load_profile


def build_lut(analysis, profile, clock_mhz: Optional[float] = None, dual: bool = False,
              precisions: Sequence[str] = PRECISION_ORDER, splits: Sequence[str] = DEFAULT_SPLITS,
              allowed: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Any]:
    """lut.json: ms per layer × precision on the primary unit, the fixed (not searched) operators'
    total, and with ``dual`` every dual-core option's ms (see dual_options) with each unit's busy time.
    ``allowed`` (e.g. from an analysis.json) limits the dual options' precisions per layer."""
    a = as_analysis(analysis)
    prof = load_profile(profile)
    clocks = prof.clocks(clock_mhz)
    primary = prof.primary
    layers = {op.name: {p: round(layer_latency_ms(op, p, prof, None, clock_mhz), 6) for p in precisions}
              for op in a.layers}
    fixed_ops = {op.name: round(fixed_operator_ms(op, prof, clock_mhz), 6) for op in a.operators if not op.is_layer}
    lut = {"schema": formats.LUT, "hardware": prof.name, "label": prof.label, "model": a.spec, "unit": primary,
           "clock_mhz": clocks, "precisions": list(precisions), "layers": layers,
           "fixed_ms": round(sum(fixed_ops.values()), 6), "fixed_ops": fixed_ops}
    if dual:
        ua, ub = prof.dual_units
        opts: Dict[str, Dict[str, Any]] = {}
        for op in a.layers:
            precs = [p for p in precisions if allowed is None or p in allowed.get(op.name, precisions)]
            entry = {}
            for parts in dual_options(a, op, precs, prof, splits, clock_mhz):
                ms, busy = parts_latency(a, op, parts, prof, clock_mhz)
                entry[dual_option_key(parts)] = {"ms": round(ms, 6),
                                                 "units_ms": {k: round(v, 6) for k, v in busy.items()}}
            opts[op.name] = entry
        lut["dual"] = {"units": [ua, ub], "splits": list(splits),
                       "sync": {k: prof.dual.get(k, 0) for k in ("sync_cycles", "coherence_cycles_per_byte",
                                                                 "contention")},
                       "options": opts}
    return lut


def validate_lut(d: Any, where: str, analysis=None) -> Dict[str, Any]:
    """Every millisecond finite and >= 0 (dual-core options and their units' busy times too), and not
    all of them 0: a table the search would optimise into nonsense is refused where it is read."""
    formats.check_schema(d, formats.LUT, where, "latency table")
    layers = d.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError(f"{where}: 'layers' must be a non-empty object {{layer: {{precision: ms}}}}")
    for name, row in layers.items():
        if not isinstance(row, Mapping) or not row:
            raise ValueError(f"{where}: layer {name}: expected {{precision: ms}}")
        for p, v in row.items():
            get_precision(p, f"{where}: layer {name}")
            _number(v, f"{where}: layer {name}: {p}")
    if not any(v > 0 for row in layers.values() for v in row.values()):
        raise ValueError(f"{where}: every latency in 'layers' is 0 ms, so the search would have no latency to "
                         f"trade; give measured or predicted milliseconds")
    _number(d.get("fixed_ms", 0), f"{where}: fixed_ms")
    if "dual" in d:
        options = d["dual"].get("options") if isinstance(d["dual"], Mapping) else None
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}: 'dual' must hold 'options' {{layer: {{option: {{'ms', 'units_ms'}}}}}}")
        for name, row in options.items():
            if not isinstance(row, Mapping):
                raise ValueError(f"{where}: dual.options.{name}: expected {{option: {{'ms': ..., 'units_ms': ...}}}}")
            for key, option in row.items():
                at = f"{where}: dual.options.{name}.{key}"
                if not isinstance(option, Mapping) or "ms" not in option:
                    raise ValueError(f"{at}: expected {{'ms': number, 'units_ms': {{unit: number}}}}")
                _number(option["ms"], f"{at}.ms")
                units = option.get("units_ms", {})
                if not isinstance(units, Mapping):
                    raise ValueError(f"{at}.units_ms: expected {{unit: ms}}")
                for unit, ms in units.items():
                    _number(ms, f"{at}.units_ms.{unit}")
    if analysis is not None:
        check_layer_names_match(as_analysis(analysis).layer_names, layers, where)
    return dict(d)


def load_lut_json(path: str, analysis=None) -> Dict[str, Any]:
    """Read and validate a lut.json; with ``analysis``, its layer names must match (missing / unknown
    names listed)."""
    return validate_lut(read_json(path, "latency table"), path, analysis)


def lut_latency_ms(lut: Mapping, mapping: Mapping[str, object]) -> float:
    """Latency of a mapping by the table: what the search optimised, and what a user's measured table
    says. Dual-core entries (option keys or mapping.json objects) come from the table's dual section."""
    return float(lut.get("fixed_ms", 0.0)) + sum(lut_entry_ms(lut, n, e) for n, e in mapping.items())


def lut_entry_ms(lut: Mapping, name: str, entry) -> float:
    """One layer's milliseconds: a precision from ``layers``, a dual-core option from ``dual.options``."""
    if is_single_unit(entry):
        return float(lut["layers"][name][entry])
    if isinstance(entry, Mapping):  # the mapping.json object: {"units": {unit: {precision, channels}}}
        parts = sorted((Part(u, s["precision"], *s["channels"]) for u, s in entry["units"].items()),
                       key=lambda p: p.c0)
        entry = dual_option_key(parts)
    options = lut.get("dual", {}).get("options", {}).get(name, {})
    if entry not in options:
        raise ValueError(f"latency table has no dual-core option {entry!r} for layer {name}"
                         + ("" if "dual" in lut else " (the table has no dual-core section)"))
    return float(options[entry]["ms"])
