"""The latency model: milliseconds of a layer, an operator or a split layer on a profile's units
(docs/design.md §4).

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
efficiency the published figures show (docs/hardware.md §5: narrow layers run at worse cycles/MAC), without
one global constant.

Element-wise activations fused into an operator (hard-swish, hard-sigmoid, sigmoid, SiLU:
``Operator.activations``) add ``outputs · activation_cycles[kind][p]`` to it, at the operator's own
precision: an integer layer's epilogue has the requantised code in hand and looks the activation up in
a table, a float layer computes it (exp and a division for the sigmoids). ReLU / ReLU6 are the
requantisation's clamp and cost nothing. A profile without ``activation_cycles`` (or without a kind)
costs it as ``elementwise_cycles.other``.

Non-layer operators (residual adds, SE multiplications, pooling) cost ``overhead + elements ·
elementwise_cycles[kind]`` (plus their fused activations at INT8) on the primary unit; they are not
searched and form the LUT's ``fixed_ms``. A residual add fused into a layer (graph.fuse_residual_adds)
costs the same, charged to that layer at every precision (a split layer's units each pay their share
of it), so fusing moves the add from ``fixed_ms`` into the layer rows and leaves totals unchanged.

Dual-core: a layer's output channels are split between two units, each at its own precision. Each
unit pays its own overhead and stages the whole input (a depthwise unit: its channel slice). The layer
takes ``max(t_A, t_B) · (1 + contention) + sync``, where ``sync`` is the profile's fixed hand-over
cost plus cache maintenance per byte the second unit reads and writes; a layer run whole on a
secondary unit pays ``t_B + sync``.

``clock_mhz`` is the primary unit's clock (profiles.HardwareProfile.clocks).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

from models.mapping import Part
from models.precisions import get_precision, precision_bits, tensor_bytes

from .graph import ACTIVATION_KINDS, LAYER_OPS, NetworkAnalysis, Operator
from .profiles import ELEMENTWISE_KINDS, HardwareProfile, Unit, load_profile


def _as_operator(layer) -> Operator:
    if isinstance(layer, Operator):
        return layer
    if isinstance(layer, Mapping):  # an analysis.json layers[] entry
        return Operator(index=-1, name=layer["name"], op=layer["op"], is_layer=True, inputs=[], output=-1,
                        in_shape=tuple(layer["in_shape"]), out_shape=tuple(layer["out_shape"]),
                        macs=int(layer["macs"]), kernel=tuple(layer.get("kernel", (1, 1))),
                        stride=tuple(layer.get("stride", (1, 1))), groups=int(layer.get("groups", 1)),
                        activations=list(layer.get("activations", [])), fused=list(layer.get("fused", [])))
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
            + staged * unit.cycles_per_im2col[precision]
            + fraction * fused_operator_cycles(op, unit))


def fused_operator_cycles(op: Operator, unit: Unit) -> float:
    """Cycles of the operators fused into ``op`` (a residual add), as they cost on their own."""
    return sum(unit.overhead_cycles + op.out_elements * unit.elementwise_cycles[kind] for kind in op.fused)


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
