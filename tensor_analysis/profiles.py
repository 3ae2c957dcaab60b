"""Hardware profiles: an MCU as the latency and memory models see it (docs/hardware.md).

A profile (``tensor_analysis/hardware/<name>.json``) describes an MCU: its processing units (cores, or a
core cluster) with their clocks and kernel costs, RAM and Flash, the dual-core synchronisation costs,
and a ``sources`` table citing where each number comes from.

``clock_mhz`` overrides always name the primary (first) unit's clock; the other units keep their
ratio to it (on the STM32H747 the M4 runs from the bus clock, half the M7's).
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from models import formats
from models.files import read_json
from models.precisions import PRECISION_ORDER, get_precision

from .graph import ACTIVATION_KINDS, LAYER_OPS

PROFILE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hardware")
ELEMENTWISE_KINDS = ("add", "mul", "pool", "concat", "other")
# optional per-op-kind kernel terms (``per_op[op][term][precision]``, docs/hardware.md §3): the first three
# override the unit-wide number for that op kind, the others are new terms (0 when absent)
PER_OP_TERMS = ("overhead_cycles", "cycles_per_output", "cycles_per_im2col", "cycles_per_position",
                "cycles_per_border_output", "cycles_per_weight", "cycles_per_remainder_mac")


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
    # optional terms of a profile fitted to one engine's kernels (docs/hardware.md §3); absent: {} and
    # every layer costs exactly as without them
    per_op: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    # per output element of each output buffer, by the layer's precision and the buffer's format
    epilogue_cycles: Dict[str, Dict[str, float]] = field(default_factory=dict)
    # per output element of a residual add fused into a layer, by the layer's precision (replaces
    # overhead + elementwise_cycles.add for it)
    fused_add_cycles: Dict[str, float] = field(default_factory=dict)

    def term(self, op: str, name: str, precision: str) -> float:
        """A per-op term (``per_op``), else the unit-wide one (0 for the terms that only exist per op)."""
        entry = self.per_op.get(op, {}).get(name)
        if entry is not None:
            return entry[precision]
        if name == "overhead_cycles":
            return self.overhead_cycles
        if name == "cycles_per_output":
            return self.cycles_per_output[precision]
        if name == "cycles_per_im2col":
            return self.cycles_per_im2col[precision]
        return 0.0


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


def _per_precision_objects(d: Mapping, where: str) -> Dict[str, Any]:
    missing = [p for p in PRECISION_ORDER if p not in d]
    if missing:
        raise ValueError(f"{where}: missing precisions {', '.join(missing)}")
    for p in d:
        get_precision(p, where)
    return {p: d[p] for p in PRECISION_ORDER}


def _per_op_terms(d: Any, where: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``per_op``: {op kind: {term: {precision: cycles}}}, every op kind and term optional."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected an object {{op: {{term: {{precision: cycles}}}}}}")
    out = {}
    for op, terms in d.items():
        if op not in LAYER_OPS:
            raise ValueError(f"{where}: unknown op kind {op!r}; expected {', '.join(LAYER_OPS)}")
        if not isinstance(terms, Mapping):
            raise ValueError(f"{where}.{op}: expected an object {{term: {{precision: cycles}}}}")
        unknown = [t for t in terms if t not in PER_OP_TERMS]
        if unknown:
            raise ValueError(f"{where}.{op}: unknown term {', '.join(map(repr, unknown))}; expected "
                             f"{', '.join(PER_OP_TERMS)}")
        out[op] = {t: _per_precision(v, f"{where}.{op}.{t}") for t, v in terms.items()}
    return out


def parse_profile(d: Any, where: str) -> HardwareProfile:
    formats.check_schema(d, formats.HARDWARE, where, "hardware profile")
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
        per_op = _per_op_terms(u.get("per_op", {}), f"{w}.per_op")
        epilogue = u.get("epilogue_cycles", {})
        if not isinstance(epilogue, Mapping):
            raise ValueError(f"{w}.epilogue_cycles: expected an object {{precision: {{output format: cycles}}}}")
        if epilogue:
            epilogue = {p: _per_precision(v, f"{w}.epilogue_cycles.{p}")
                        for p, v in _per_precision_objects(epilogue, f"{w}.epilogue_cycles").items()}
        fused_add = u.get("fused_add_cycles", {})
        fused_add = _per_precision(fused_add, f"{w}.fused_add_cycles") if fused_add else {}
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
            simd_over=str(u.get("simd_over", "reduction")),
            per_op=per_op, epilogue_cycles=dict(epilogue), fused_add_cycles=fused_add)
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
    return parse_profile(read_json(path, "hardware profile"), path)
