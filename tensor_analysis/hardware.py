"""Hardware profiles and the latency model (DESIGN.md §4).

A profile (``tensor_analysis/hardware/<name>.json``) describes an MCU: its processing units (cores, or a
core cluster) with their clocks and kernel costs, RAM and Flash, the dual-core synchronisation costs,
and a ``sources`` table citing where each number comes from (REFERENCES.md).

Latency of one layer on one unit (cycles, divided by the unit's clock):

    overhead
    + MACs    · cycles_per_mac[op][p] · lane_padding(vector length, simd_lanes[p])
    + outputs · cycles_per_output[p]          (epilogue: requantise / bias / activation / store)
    + staged  · cycles_per_im2col[p]          (input staging: im2col copy, int8→int16 widening,
                                               INT4/INT2 unpacking, FP16→FP32 conversion)

``staged`` = H_out·W_out·(C_in/groups)·k_h·k_w for conv / pointwise (the im2col columns), the input
elements for depthwise, the input features for linear. Narrow layers come out slower per MAC by
construction: the epilogue is amortised over C_in/groups·k² MACs, the staging over C_out, and a
vector length that is not a multiple of the SIMD width wastes lanes (the vector is the im2col column
C_in/groups·k_h·k_w, or the input channels for engines that vectorise over channels (``simd_over``),
or the channels of a depthwise conv). That is the per-layer
efficiency the published figures show (REFERENCES.md: narrow layers run at worse cycles/MAC), without
one global constant.

Element-wise activations fused into an operator (hard-swish, hard-sigmoid, sigmoid, SiLU:
``Operator.activations``) add ``outputs · activation_cycles[kind][p]`` to it, at the operator's own
precision: an integer layer's epilogue has the requantised code in hand and looks the activation up in
a table, a float layer computes it (exp and a division for the sigmoids). ReLU / ReLU6 are the
requantisation's clamp and cost nothing. A profile without ``activation_cycles`` (or without a kind)
costs it as ``elementwise_cycles.other``.

Non-layer operators (residual adds, SE multiplications, pooling) cost ``overhead + elements ·
elementwise_cycles[kind]`` (plus their fused activations at INT8) on the primary unit; they are not
searched and form the LUT's ``fixed_ms``.

Dual-core: a layer's output channels are split between two units, each at its own precision. Each
unit pays its own overhead and stages the whole input (a depthwise unit: its channel slice). The layer
takes ``max(t_A, t_B) · (1 + contention) + sync``, where ``sync`` is the profile's fixed hand-over
cost plus cache maintenance per byte the second unit reads and writes; a layer run whole on a
secondary unit pays ``t_B + sync``.

``clock_mhz`` overrides always name the primary (first) unit's clock; the other units keep their
ratio to it (on the STM32H747 the M4 runs from the bus clock, half the M7's).
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models.base import PRECISION_ORDER, check_layer_names_match, get_precision

from .analysis import (ACTIVATION_KINDS, LAYER_OPS, NetworkAnalysis, Operator, Part, as_analysis, dual_option_key,
                       precision_bits, tensor_bytes)

PROFILE_SCHEMA = "adaptqnet/hardware/1"
LUT_SCHEMA = "adaptqnet/lut/1"
PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hardware")
ELEMENTWISE_KINDS = ("add", "mul", "pool", "concat", "other")
DEFAULT_SPLITS = ("0.25", "0.5", "0.75", "balanced")


@dataclass
class Unit:
    name: str
    core: str
    clock_mhz: float
    native: Tuple[str, ...]
    overhead_cycles: float
    cycles_per_mac: Dict[str, Dict[str, float]]
    cycles_per_output: Dict[str, float]
    cycles_per_im2col: Dict[str, float]
    simd_lanes: Dict[str, int]
    elementwise_cycles: Dict[str, float]
    # cycles per element of each fused activation, per precision of the operator it is fused into
    activation_cycles: Dict[str, Dict[str, float]] = field(default_factory=dict)
    emulated: Dict[str, str] = field(default_factory=dict)
    # what the SIMD lanes run over in conv / pointwise / linear: the im2col column ("reduction":
    # C_in/groups·k_h·k_w, CMSIS-NN and PULP-NN) or the input channels ("channels", ESP-NN)
    simd_over: str = "reduction"


@dataclass
class HardwareProfile:
    name: str
    label: str
    ram_kb: Optional[float]
    flash_kb: Optional[float]
    units: Dict[str, Unit]
    dual: Optional[Dict[str, Any]]
    sources: Dict[str, str]
    raw: Dict[str, Any]
    path: str

    @property
    def primary(self) -> str:
        return next(iter(self.units))

    def unit(self, name: Optional[str]) -> Unit:
        if name is None:
            return self.units[self.primary]
        try:
            return self.units[name]
        except KeyError:
            raise ValueError(f"hardware {self.name}: unknown unit {name!r}; its units: "
                             f"{', '.join(self.units)}") from None

    def clocks(self, clock_mhz: Optional[float] = None) -> Dict[str, float]:
        """Each unit's clock; ``clock_mhz`` sets the primary's and scales the others with it."""
        if clock_mhz is None:
            return {n: u.clock_mhz for n, u in self.units.items()}
        if not clock_mhz > 0:
            raise ValueError(f"clock must be > 0 MHz, got {clock_mhz}")
        scale = clock_mhz / self.units[self.primary].clock_mhz
        return {n: u.clock_mhz * scale for n, u in self.units.items()}

    @property
    def dual_units(self) -> Tuple[str, str]:
        if not self.dual:
            raise ValueError(f"hardware {self.name} has one processing unit; dual-core needs a profile "
                             f"with a 'dual' section (known dual-core profiles: "
                             f"{', '.join(p for p in list_profiles() if _is_dual(p)) or 'none'})")
        a, b = self.dual["units"]
        return a, b


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------
def list_profiles() -> List[str]:
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(PROFILE_DIR, "*.json")))


def _is_dual(name: str) -> bool:
    try:
        with open(os.path.join(PROFILE_DIR, f"{name}.json")) as f:
            return bool(json.load(f).get("dual"))
    except (OSError, ValueError):
        return False


def _number(v: Any, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{where}: expected a {'positive' if positive else 'non-negative'} number, got {v!r}")
    return float(v)


def _per_precision(d: Any, where: str) -> Dict[str, float]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected an object {{precision: number}}")
    missing = [p for p in PRECISION_ORDER if p not in d]
    if missing:
        raise ValueError(f"{where}: missing precisions {', '.join(missing)} (every unit must cost all of "
                         f"{', '.join(PRECISION_ORDER)}; emulated ones included)")
    for p in d:
        get_precision(p, where)
    return {p: _number(d[p], f"{where}.{p}") for p in PRECISION_ORDER}


def _activation_costs(v: Any, where: str) -> Dict[str, float]:
    """One number for every precision, or an object {precision: cycles}."""
    if isinstance(v, Mapping):
        return _per_precision(v, where)
    c = _number(v, where)
    return {p: c for p in PRECISION_ORDER}


def parse_profile(d: Any, where: str) -> HardwareProfile:
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: not a hardware profile (expected a JSON object)")
    if d.get("schema") != PROFILE_SCHEMA:
        raise ValueError(f"{where}: unknown schema {d.get('schema')!r}; expected {PROFILE_SCHEMA!r}")
    units_raw = d.get("units")
    if not isinstance(units_raw, Mapping) or not units_raw:
        raise ValueError(f"{where}: 'units' must be a non-empty object {{unit name: unit}}")
    units = {}
    for name, u in units_raw.items():
        w = f"{where}: units.{name}"
        if not isinstance(u, Mapping):
            raise ValueError(f"{w}: expected an object")
        cpm = u.get("cycles_per_mac")
        if not isinstance(cpm, Mapping):
            raise ValueError(f"{w}.cycles_per_mac: expected an object {{op: {{precision: cycles}}}}")
        missing_ops = [o for o in LAYER_OPS if o not in cpm]
        if missing_ops:
            raise ValueError(f"{w}.cycles_per_mac: missing op kinds {', '.join(missing_ops)}")
        lanes = u.get("simd_lanes", {p: 1 for p in PRECISION_ORDER})
        ew = u.get("elementwise_cycles", {})
        if not isinstance(ew, Mapping):
            raise ValueError(f"{w}.elementwise_cycles: expected an object")
        acts = u.get("activation_cycles", {})
        if not isinstance(acts, Mapping):
            raise ValueError(f"{w}.activation_cycles: expected an object {{activation: cycles or {{precision: cycles}}}}")
        unknown = [k for k in acts if k not in ACTIVATION_KINDS]
        if unknown:
            raise ValueError(f"{w}.activation_cycles: unknown activation {', '.join(map(repr, unknown))}; "
                             f"expected {', '.join(ACTIVATION_KINDS)}")
        units[name] = Unit(
            name=name, core=str(u.get("core", name)),
            clock_mhz=_number(u.get("clock_mhz"), f"{w}.clock_mhz", positive=True),
            native=tuple(u.get("native", ())),
            overhead_cycles=_number(u.get("overhead_cycles", 0), f"{w}.overhead_cycles"),
            cycles_per_mac={o: _per_precision(cpm[o], f"{w}.cycles_per_mac.{o}") for o in LAYER_OPS},
            cycles_per_output=_per_precision(u.get("cycles_per_output"), f"{w}.cycles_per_output"),
            cycles_per_im2col=_per_precision(u.get("cycles_per_im2col"), f"{w}.cycles_per_im2col"),
            simd_lanes={p: max(1, int(v)) for p, v in _per_precision(lanes, f"{w}.simd_lanes").items()},
            elementwise_cycles={k: _number(ew.get(k, ew.get("other", 0)), f"{w}.elementwise_cycles.{k}")
                                for k in ELEMENTWISE_KINDS},
            activation_cycles={k: _activation_costs(acts.get(k, ew.get("other", 0)), f"{w}.activation_cycles.{k}")
                               for k in ACTIVATION_KINDS},
            emulated=dict(u.get("emulated", {})),
            simd_over=str(u.get("simd_over", "reduction")))
        if units[name].simd_over not in ("reduction", "channels"):
            raise ValueError(f"{w}.simd_over: expected 'reduction' or 'channels', got {units[name].simd_over!r}")
    dual = d.get("dual")
    if dual:
        du = dual.get("units")
        if not isinstance(du, list) or len(du) != 2 or any(x not in units for x in du):
            raise ValueError(f"{where}: dual.units must name two of the units ({', '.join(units)})")
        if du[0] != next(iter(units)):
            raise ValueError(f"{where}: dual.units must start with the primary unit {next(iter(units))!r}")
        for k in ("sync_cycles", "coherence_cycles_per_byte", "contention"):
            _number(dual.get(k, 0), f"{where}: dual.{k}")
    for k in ("ram_kb", "flash_kb"):
        if d.get(k) is not None:
            _number(d[k], f"{where}: {k}", positive=True)
    return HardwareProfile(name=str(d.get("name", os.path.splitext(os.path.basename(where))[0])),
                           label=str(d.get("label", "")), ram_kb=d.get("ram_kb"), flash_kb=d.get("flash_kb"),
                           units=units, dual=dict(dual) if dual else None, sources=dict(d.get("sources", {})),
                           raw=dict(d), path=where)


def load_profile(name_or_path) -> HardwareProfile:
    """A shipped profile by name (``stm32h747``) or any profile JSON by path."""
    if isinstance(name_or_path, HardwareProfile):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".json") or os.sep in text:
        path = text
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: hardware profile not found")
    else:
        path = os.path.join(PROFILE_DIR, f"{text}.json")
        if not os.path.isfile(path):
            raise ValueError(f"unknown hardware profile {text!r}; known profiles: {', '.join(list_profiles())} "
                             f"(or give the path of a profile .json)")
    try:
        with open(path) as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return parse_profile(d, path)


# ----------------------------------------------------------------------------------------------------
# Per-layer latency
# ----------------------------------------------------------------------------------------------------
def _as_operator(layer) -> Operator:
    if isinstance(layer, Operator):
        return layer
    if isinstance(layer, Mapping):  # an analysis.json layers[] entry
        return Operator(index=-1, name=layer["name"], op=layer["op"], is_layer=True, inputs=[], output=-1,
                        in_shape=tuple(layer["in_shape"]), out_shape=tuple(layer["out_shape"]),
                        macs=int(layer["macs"]), kernel=tuple(layer.get("kernel", (1, 1))),
                        stride=tuple(layer.get("stride", (1, 1))), groups=int(layer.get("groups", 1)),
                        activations=list(layer.get("activations", [])))
    raise ValueError(f"expected a layer (Operator or analysis.json layer entry), got {type(layer).__name__}")


def lane_padding(channels: int, lanes: int) -> float:
    """Work done / useful work when ``channels`` values are processed ``lanes`` at a time."""
    if lanes <= 1 or channels <= 0:
        return 1.0
    return math.ceil(channels / lanes) * lanes / channels


def layer_cycles(layer, precision: str, unit: Unit, fraction: float = 1.0) -> float:
    """Cycles of ``layer`` (or its ``fraction`` of output channels) at ``precision`` on ``unit``."""
    op = _as_operator(layer)
    get_precision(precision, f"layer {op.name}")
    cin, hin, win = op.in_shape
    cout, hout, wout = op.out_shape
    if op.op == "dwconv":
        vector_channels = max(1, int(round(cout * fraction)))
        staged = op.in_elements * fraction
    else:
        vector_channels = max(1, cin // max(1, op.groups))
        if unit.simd_over == "reduction":
            vector_channels *= op.kernel[0] * op.kernel[1]
        if op.op == "linear":
            staged = cin * hin * win
        else:
            staged = hout * wout * (cin // max(1, op.groups)) * op.kernel[0] * op.kernel[1]
    return (unit.overhead_cycles
            + op.macs * fraction * unit.cycles_per_mac[op.op][precision]
            * lane_padding(vector_channels, unit.simd_lanes[precision])
            + op.out_elements * fraction * (unit.cycles_per_output[precision]
                                            + activation_cycles_per_element(op, precision, unit))
            + staged * unit.cycles_per_im2col[precision])


def activation_cycles_per_element(op: Operator, precision: str, unit: Unit) -> float:
    """Cycles per output element of the activations fused into ``op`` (0 for none, ReLU, ReLU6)."""
    return sum(unit.activation_cycles[a][precision] for a in op.activations if a in unit.activation_cycles)


def layer_latency_ms(layer, precision: str, profile, unit: Optional[str] = None,
                     clock_mhz: Optional[float] = None, fraction: float = 1.0) -> float:
    """Milliseconds of one layer at ``precision`` on ``unit`` (default: the primary unit).
    ``clock_mhz`` is the primary unit's clock (see module docstring)."""
    prof = load_profile(profile)
    u = prof.unit(unit)
    clock = prof.clocks(clock_mhz)[u.name]
    return layer_cycles(layer, precision, u, fraction) / (clock * 1e3)


def fixed_operator_ms(op: Operator, profile: HardwareProfile, clock_mhz: Optional[float] = None,
                      unit: Optional[str] = None) -> float:
    """A non-searched operator (add, pool, ...) on ``unit`` (default: the primary unit). Compute
    operators outside the search (plain convolutions) run at INT8."""
    u = profile.unit(unit)
    clock = profile.clocks(clock_mhz)[u.name]
    if op.op in LAYER_OPS:
        return layer_cycles(op, "int8", u) / (clock * 1e3)
    if op.op in ACTIVATION_KINDS:  # an activation with no producer to fuse into
        per_element = u.activation_cycles[op.op]["int8"]
        elements = op.out_elements
    else:
        kind = op.op if op.op in ELEMENTWISE_KINDS else "other"
        per_element = u.elementwise_cycles[kind]
        elements = op.in_elements if kind == "pool" else op.out_elements
    fused = op.out_elements * activation_cycles_per_element(op, "int8", u)
    return (u.overhead_cycles + elements * per_element + fused) / (clock * 1e3)


# ----------------------------------------------------------------------------------------------------
# Dual-core
# ----------------------------------------------------------------------------------------------------
def sync_ms(analysis: NetworkAnalysis, op: Operator, parts: Sequence[Part], profile: HardwareProfile,
            clock_mhz: Optional[float] = None) -> float:
    """Hand-over cost when a secondary unit takes part in a layer: fixed synchronisation plus cache
    maintenance over the bytes it reads (its input) and writes (its output slice)."""
    if not profile.dual:
        return 0.0
    primary = profile.primary
    clock = profile.clocks(clock_mhz)[primary]
    moved = 0
    in_e = analysis.tensors[op.inputs[0]].elements if op.inputs else op.in_elements
    for p in parts:
        if p.unit in (None, primary):
            continue
        frac = (p.c1 - p.c0) / op.out_channels
        bits = precision_bits(p.precision)
        moved += tensor_bytes(in_e * (frac if op.op == "dwconv" else 1.0), bits)
        moved += tensor_bytes(op.out_elements * frac, bits)
    if moved == 0:
        return 0.0
    cycles = profile.dual.get("sync_cycles", 0) + moved * profile.dual.get("coherence_cycles_per_byte", 0)
    return cycles / (clock * 1e3)


def parts_latency(analysis: NetworkAnalysis, op: Operator, parts: Sequence[Part], profile: HardwareProfile,
                  clock_mhz: Optional[float] = None) -> Tuple[float, Dict[str, float]]:
    """(layer ms, {unit: busy ms}) for a layer given as Parts (one part: single unit)."""
    clocks = profile.clocks(clock_mhz)
    busy: Dict[str, float] = {}
    for p in parts:
        u = profile.unit(p.unit)
        frac = (p.c1 - p.c0) / op.out_channels
        busy[u.name] = layer_cycles(op, p.precision, u, frac) / (clocks[u.name] * 1e3)
    if len(busy) == 1:
        only = next(iter(busy))
        return busy[only] + (sync_ms(analysis, op, parts, profile, clock_mhz) if only != profile.primary else 0.0), busy
    if not profile.dual:
        raise ValueError(f"hardware {profile.name}: layer {op.name} is split over units, but the profile "
                         f"has no 'dual' section")
    contention = 1.0 + float(profile.dual.get("contention", 0.0))
    busy = {k: v * contention for k, v in busy.items()}
    return max(busy.values()) + sync_ms(analysis, op, parts, profile, clock_mhz), busy


def _split_channels(c: int, ratio: float) -> Optional[int]:
    if c < 2:
        return None
    return min(c - 1, max(1, int(round(ratio * c))))


def balanced_split(analysis: NetworkAnalysis, op: Operator, pa: str, pb: str, profile: HardwareProfile,
                   clock_mhz: Optional[float] = None) -> Optional[int]:
    """Output channels for the primary unit that equalise the two units' times (rounded, best of the
    neighbours)."""
    a, b = profile.dual_units
    c = op.out_channels
    if c < 2:
        return None
    clocks = profile.clocks(clock_mhz)
    ua, ub = profile.unit(a), profile.unit(b)
    # t(f) is affine in the fraction f: t0 + f·t1
    ta0 = layer_cycles(op, pa, ua, 0.0) / clocks[a]
    ta1 = layer_cycles(op, pa, ua, 1.0) / clocks[a] - ta0
    tb0 = layer_cycles(op, pb, ub, 0.0) / clocks[b]
    tb1 = layer_cycles(op, pb, ub, 1.0) / clocks[b] - tb0
    f = (tb0 + tb1 - ta0) / max(1e-12, ta1 + tb1)
    k0 = min(c - 1, max(1, int(round(f * c))))
    best = min((k for k in (k0 - 1, k0, k0 + 1) if 1 <= k <= c - 1),
               key=lambda k: max(ta0 + ta1 * k / c, tb0 + tb1 * (c - k) / c))
    return best


def dual_options(analysis: NetworkAnalysis, op: Operator, precisions: Sequence[str], profile: HardwareProfile,
                 splits: Sequence[str] = DEFAULT_SPLITS, clock_mhz: Optional[float] = None) -> List[List[Part]]:
    """Every dual-core option of a layer: for each precision pair, the output channels split at each
    ratio (fraction on the primary unit) or balanced by the units' speed; plus the whole layer on the
    secondary unit. The whole layer on the primary unit is the single-core choice, not listed here."""
    a, b = profile.dual_units
    c = op.out_channels
    options, seen = [], set()
    for pa in precisions:
        for pb in precisions:
            for s in splits:
                k = balanced_split(analysis, op, pa, pb, profile, clock_mhz) if s == "balanced" else \
                    _split_channels(c, float(s))
                if k is None:
                    continue
                parts = [Part(a, pa, 0, k), Part(b, pb, k, c)]
                key = dual_option_key(parts)
                if key not in seen:
                    seen.add(key)
                    options.append(parts)
    for pb in precisions:
        options.append([Part(b, pb, 0, c)])
    return options


def parse_splits(text: str) -> List[str]:
    """'0.25,0.5,0.75,balanced' → validated list."""
    out = []
    for item in (s.strip() for s in str(text).split(",")):
        if not item:
            continue
        if item == "balanced":
            out.append(item)
            continue
        try:
            v = float(item)
        except ValueError:
            raise ValueError(f"--splits: {item!r} is neither a ratio in (0, 1) nor 'balanced'") from None
        if not 0 < v < 1:
            raise ValueError(f"--splits: ratio {item} must lie strictly between 0 and 1")
        out.append(item)
    if not out:
        raise ValueError("--splits: expected at least one ratio or 'balanced'")
    return out


# ----------------------------------------------------------------------------------------------------
# Look-up table and whole-network prediction
# ----------------------------------------------------------------------------------------------------
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
    lut = {"schema": LUT_SCHEMA, "hardware": prof.name, "label": prof.label, "model": a.spec, "unit": primary,
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
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: not a latency table (expected a JSON object)")
    if d.get("schema") != LUT_SCHEMA:
        raise ValueError(f"{where}: unknown schema {d.get('schema')!r}; expected {LUT_SCHEMA!r} "
                         f"(written by tensor_latency_predictor.py --lut)")
    layers = d.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError(f"{where}: 'layers' must be a non-empty object {{layer: {{precision: ms}}}}")
    for name, row in layers.items():
        if not isinstance(row, Mapping) or not row:
            raise ValueError(f"{where}: layer {name}: expected {{precision: ms}}")
        for p, v in row.items():
            get_precision(p, f"{where}: layer {name}")
            _number(v, f"{where}: layer {name}: {p}")
    _number(d.get("fixed_ms", 0), f"{where}: fixed_ms")
    if analysis is not None:
        check_layer_names_match(as_analysis(analysis).layer_names, layers, where)
    return dict(d)


def load_lut_json(path: str, analysis=None) -> Dict[str, Any]:
    """Read and validate a lut.json; with ``analysis``, its layer names must match (missing / unknown
    names listed)."""
    from .analysis import _read_json
    return validate_lut(_read_json(path, "latency table"), path, analysis)


def predict_network(analysis, mapping: Mapping[str, Any], profile, clock_mhz: Optional[float] = None,
                    unit: Optional[str] = None) -> Dict[str, Any]:
    """Per-layer ms, MMACs, live RAM and Flash under ``mapping``, and totals (latency, peak RAM both
    ways, Flash, fit against the profile's RAM/Flash, each unit's busy and idle time).

    Single-precision entries run on ``unit`` (default: the primary unit); dual-core entries name theirs.
    """
    a = as_analysis(analysis)
    prof = load_profile(profile)
    run_on = prof.unit(unit).name
    parts_of = a.check_mapping(mapping)
    for name, parts in parts_of.items():
        for p in parts:
            if p.unit is not None:
                prof.unit(p.unit)
    live = dict((op.name, b) for op, b in a.mapping_live_bytes(mapping))
    live_inplace = dict((op.name, b) for op, b in a.mapping_live_bytes(mapping, inplace_depthwise=True))
    busy_total = {n: 0.0 for n in prof.units}
    rows, total = [], 0.0
    for op in a.operators:
        if op.is_layer:
            given = parts_of[op.name]
            parts = [Part(p.unit if p.unit is not None else run_on, p.precision, p.c0, p.c1) for p in given]
            if len(given) == 1 and given[0].unit is None:
                # a plain precision: the whole network runs on one unit, no hand-over
                u = prof.unit(run_on)
                ms = layer_cycles(op, parts[0].precision, u) / (prof.clocks(clock_mhz)[run_on] * 1e3)
                busy = {run_on: ms}
            else:
                ms, busy = parts_latency(a, op, parts, prof, clock_mhz)
            label = parts[0].precision if len(parts) == 1 else dual_option_key(parts)
            flash = sum(op.flash_bytes(p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
            where = parts[0].unit if len(parts) == 1 else "+".join(p.unit for p in parts)
        else:
            ms = fixed_operator_ms(op, prof, clock_mhz, run_on)
            busy = {run_on: ms}
            label, flash, where = "-", 0, run_on
        for k, v in busy.items():
            busy_total[k] += v
        total += ms
        rows.append({"name": op.name, "op": op.op, "layer": op.is_layer, "precision": label, "unit": where,
                     "out_shape": list(op.out_shape), "macs": op.macs, "mmacs": op.macs / 1e6, "ms": ms,
                     "units_ms": busy, "live_bytes": live[op.name], "live_bytes_inplace": live_inplace[op.name],
                     "flash_bytes": flash})
    peak = max(live.values())
    peak_in = max(live_inplace.values())
    flash_total = sum(r["flash_bytes"] for r in rows)
    ram_limit = prof.ram_kb * 1024 if prof.ram_kb else None
    flash_limit = prof.flash_kb * 1024 if prof.flash_kb else None
    layers_ms = sum(r["ms"] for r in rows if r["layer"])
    return {
        "hardware": prof.name, "label": prof.label, "model": a.spec, "clock_mhz": prof.clocks(clock_mhz),
        "operators": rows,
        "totals": {
            "latency_ms": total, "layers_ms": layers_ms, "fixed_ms": total - layers_ms,
            "macs": a.macs, "mmacs": a.macs / 1e6,
            "peak_ram_bytes": peak, "peak_ram_bytes_inplace": peak_in, "flash_bytes": flash_total,
            "ram_limit_bytes": ram_limit, "flash_limit_bytes": flash_limit,
            "fits_ram": None if ram_limit is None else peak <= ram_limit,
            "fits_flash": None if flash_limit is None else flash_total <= flash_limit,
            "units": {n: {"busy_ms": b, "idle_ms": max(0.0, total - b),
                          "utilization": b / total if total else 0.0} for n, b in busy_total.items()},
        },
    }


# ----------------------------------------------------------------------------------------------------
# Dual-core speed-up: the same network on one unit
# ----------------------------------------------------------------------------------------------------
def single_unit_latency_ms(analysis, mapping: Mapping[str, Any], profile, unit: Optional[str] = None,
                           clock_mhz: Optional[float] = None) -> float:
    """Latency of ``mapping``'s network run entirely on ``unit``: every layer whole there, each run of
    neighbouring channels at one precision one kernel call (a layer split into int8 and int4 parts is
    two calls), no hand-over; the other operators on ``unit`` too. The arithmetic is the dual-core
    network's, so this is the single-unit network of equal accuracy."""
    a = as_analysis(analysis)
    prof = load_profile(profile)
    u = prof.unit(unit)
    clock = prof.clocks(clock_mhz)[u.name]
    parts_of = a.check_mapping(mapping)
    total = 0.0
    for op in a.operators:
        if not op.is_layer:
            total += fixed_operator_ms(op, prof, clock_mhz, u.name)
            continue
        runs: List[List[Any]] = []
        for p in parts_of[op.name]:
            if runs and runs[-1][0] == p.precision:
                runs[-1][1] += p.c1 - p.c0
            else:
                runs.append([p.precision, p.c1 - p.c0])
        total += sum(layer_cycles(op, prec, u, n / op.out_channels) for prec, n in runs) / (clock * 1e3)
    return total


def dual_speedup(analysis, mapping: Mapping[str, Any], profile, clock_mhz: Optional[float] = None) -> Dict[str, Any]:
    """Speed-up of a dual-core mapping over the best single-unit run of the same network
    (single_unit_latency_ms on each unit of the profile's dual pair)."""
    prof = load_profile(profile)
    dual_ms = predict_network(analysis, mapping, prof, clock_mhz)["totals"]["latency_ms"]
    units = prof.dual_units if prof.dual else (prof.primary,)
    single = {u: single_unit_latency_ms(analysis, mapping, prof, u, clock_mhz) for u in units}
    best = min(single, key=single.get)
    return {"latency_ms": dual_ms, "single_unit_ms": single, "best_single_unit": best,
            "speedup": single[best] / dual_ms if dual_ms else None}
