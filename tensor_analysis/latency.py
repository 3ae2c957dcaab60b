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


def _same_padding(n_in: int, n_out: int, k: int, s: int) -> int:
    """The padding per side of a conv that maps ``n_in`` to ``n_out`` (the shapes do not record it)."""
    return max(0, ((n_out - 1) * s + k - n_in + 1) // 2)


def border_positions(op: Operator) -> int:
    """Output positions whose receptive field is clipped by the padding (the kernels' border path)."""
    _, hin, win = op.in_shape
    _, hout, wout = op.out_shape
    inner = 1
    for n_in, n_out, k, s in ((hin, hout, op.kernel[0], op.stride[0]), (win, wout, op.kernel[1], op.stride[1])):
        pad = _same_padding(n_in, n_out, k, s)
        inner *= sum(1 for o in range(n_out) if o * s - pad >= 0 and o * s - pad + k <= n_in)
    return hout * wout - inner


def layer_terms(layer, precision: str, unit: Unit, fraction: float = 1.0,
                output_precisions: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """The quantities each cost of ``layer_cycles`` multiplies (docs/hardware.md §3), by term name:
    ``overhead_cycles`` (1), ``cycles_per_mac`` (MACs, lane-padded), ``cycles_per_remainder_mac``,
    ``cycles_per_output``, ``cycles_per_im2col`` (staged elements), ``cycles_per_position``,
    ``cycles_per_border_output``, ``cycles_per_weight``, ``epilogue:<format>`` (outputs written in that
    format; only with ``epilogue_cycles``), ``fused_add`` (outputs of fused residual adds; only with
    ``fused_add_cycles``); keys starting with ``_`` are not terms. A fitter builds its least squares
    from these."""
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
    lanes = unit.simd_lanes[precision]
    macs = op.macs * fraction
    outputs = op.out_elements * fraction
    terms = {"overhead_cycles": 1.0, "cycles_per_output": outputs, "cycles_per_im2col": staged}
    if "cycles_per_remainder_mac" in unit.per_op.get(op.op, {}) and lanes > 1:
        # the vector's last (vector mod lanes) values run one by one instead of padding a SIMD pass
        rest = vector_channels % lanes
        terms["cycles_per_mac"] = macs * (vector_channels - rest) / vector_channels
        terms["cycles_per_remainder_mac"] = macs * rest / vector_channels
    else:
        terms["_lane_padding"] = lane_padding(vector_channels, lanes)
        terms["cycles_per_mac"] = macs * terms["_lane_padding"]
    if unit.per_op.get(op.op):
        terms["cycles_per_position"] = float(hout * wout)
        terms["cycles_per_border_output"] = border_positions(op) * cout * fraction
        terms["cycles_per_weight"] = cout * fraction * (cin // max(1, op.groups)) * op.kernel[0] * op.kernel[1]
    if unit.epilogue_cycles:
        for f in (output_precisions or [precision]):
            get_precision(f, f"layer {op.name} output")
            terms[f"epilogue:{f}"] = terms.get(f"epilogue:{f}", 0.0) + outputs
    if unit.fused_add_cycles:
        terms["fused_add"] = outputs * sum(1 for kind in op.fused if kind == "add")
    return terms


def layer_cycles(layer, precision: str, unit: Unit, fraction: float = 1.0,
                 output_precisions: Optional[Sequence[str]] = None) -> float:
    """Cycles of ``layer`` (or its ``fraction`` of output channels) at ``precision`` on ``unit``.
    ``output_precisions``: the formats its output buffers are written in (default: one, at
    ``precision``); only a profile with ``epilogue_cycles`` tells them apart."""
    op = _as_operator(layer)
    terms = layer_terms(op, precision, unit, fraction, output_precisions)
    if "_lane_padding" in terms:  # the published profiles' expression, term for term
        mac_cycles = op.macs * fraction * unit.cycles_per_mac[op.op][precision] * terms["_lane_padding"]
    else:
        mac_cycles = terms["cycles_per_mac"] * unit.cycles_per_mac[op.op][precision]
    cycles = (unit.term(op.op, "overhead_cycles", precision)
              + mac_cycles
              + terms["cycles_per_output"] * (unit.term(op.op, "cycles_per_output", precision)
                                              + activation_cycles_per_element(op, precision, unit))
              + terms["cycles_per_im2col"] * unit.term(op.op, "cycles_per_im2col", precision))
    if unit.fused_add_cycles:
        cycles += terms["fused_add"] * unit.fused_add_cycles[precision]
        cycles += fraction * sum(unit.overhead_cycles + op.out_elements * unit.elementwise_cycles[kind]
                                 for kind in op.fused if kind != "add")
    else:
        cycles += fraction * fused_operator_cycles(op, unit)
    for name in ("cycles_per_remainder_mac", "cycles_per_position", "cycles_per_border_output", "cycles_per_weight"):
        if name in terms:
            cycles += terms[name] * unit.term(op.op, name, precision)
    for key, n in terms.items():
        if key.startswith("epilogue:"):
            cycles += n * unit.epilogue_cycles[precision][key.split(":", 1)[1]]
    return cycles


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
