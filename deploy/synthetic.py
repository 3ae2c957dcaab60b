"""Synthetic integer networks: seeded random graphs that exercise every case of the IR (for the tests)
and a MobileNetV2-shaped network (for timing and size figures of the C export without a trained run).

A network is first planned layer by layer (geometry, how each layer is split into parts, each part's
compute kind and input format); the buffers then follow from what the consumers read: one buffer per
(tensor, format), covering the channels its readers need. Building runs the numpy reference op by op
on calibration images and sets each part's per-channel multipliers from its real accumulators, so that
activations spread over the formats' ranges instead of saturating or vanishing.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from deploy.arena import plan_arena
from deploy.ir import (FP16, FP32, Buffer, ChannelSlice, ConvPart, FloatEpilogue, FloatToInt, Format, GlobalAvgPool,
                       IntegerNetwork, PartOutput, Quantize, QuantizeOutput, accumulator_bounds, int_format,
                       requantizer)
from deploy.reference import Execution

RELU6 = (0.0, 6.0)
SIGNED_RANGE = 4.0
NONNEG_RANGE = 6.0
INPUT_TENSOR = "input"
LOGITS_TENSOR = "logits"


@dataclass
class PartPlan:
    channels: Tuple[int, int]
    compute: str
    input_format: Format
    weight_bits: int = 0
    weight_grid: str = ""
    residual_format: Optional[Format] = None


@dataclass
class LayerPlan:
    name: str
    input: str
    output: str
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    activation: bool
    parts: List[PartPlan]
    residual: Optional[str] = None


@dataclass
class PoolPlan:
    name: str
    input: str
    output: str
    formats: List[Format]


@dataclass
class _Tensor:
    channels: int
    height: int
    width: int
    nonneg: bool
    buffers: Dict[Format, Buffer] = field(default_factory=dict)


def value_format(nonneg: bool, kind: str, bits: int = 0, signed: bool = False) -> Format:
    """The format of a tensor whose values lie in [0, 6] (nonneg) or about [-4, 4]."""
    if kind == "fp16":
        return FP16
    if kind == "fp32":
        return FP32
    levels = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return int_format(bits, signed, (NONNEG_RANGE if nonneg else SIGNED_RANGE) / levels, levels)


def to_int_for(fmt: Format) -> FloatToInt:
    """Round to the format's codes over its whole range."""
    lo, hi = fmt.code_range
    return FloatToInt(lo * fmt.scale, hi * fmt.scale, 1.0 / fmt.scale, lo, hi)


def random_images(seed: int, shape: Sequence[int], count: int, special_values: bool = False) -> np.ndarray:
    """float32 images ~ N(0, 1.2²); with ``special_values`` some pixels are ±inf, NaN, ±0, subnormal or
    beyond the half range, to check that every executor stores them identically."""
    rng = np.random.default_rng(seed)
    images = (rng.standard_normal((count, *shape)) * 1.2).astype(np.float32)
    if special_values:
        specials = np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-40, -3e-39, 7e4, -1e30, 65519.0, 2.5, -0.5],
                            dtype=np.float32)
        flat = images.reshape(count, -1)
        for i in range(count):
            where = rng.choice(flat.shape[1], size=min(flat.shape[1], 6), replace=False)
            flat[i, where] = rng.choice(specials, size=where.size)
    return images


class _Builder:
    def __init__(self, input_shape: Tuple[int, int, int], rng: np.random.Generator, arithmetic: str = "fine"):
        self.input_shape = input_shape
        self.rng = rng
        self.arithmetic = arithmetic
        c, h, w = input_shape
        self.tensors: Dict[str, _Tensor] = {INPUT_TENSOR: _Tensor(c, h, w, nonneg=False)}
        self.steps: List[object] = []
        self.reads: Dict[str, List[Tuple[Format, int, int]]] = {}

    # -- planning ------------------------------------------------------------------------------------------
    def _require(self, tensor: str, fmt: Format, first: int, end: int) -> None:
        self.reads.setdefault(tensor, []).append((fmt, first, end))

    def layer(self, plan: LayerPlan) -> None:
        src = self.tensors[plan.input]
        kh = plan.kernel
        out_h = (src.height + 2 * plan.padding - kh) // plan.stride + 1
        out_w = (src.width + 2 * plan.padding - kh) // plan.stride + 1
        self.tensors[plan.output] = _Tensor(plan.out_channels, out_h, out_w, nonneg=plan.activation)
        for part in plan.parts:
            c0, c1 = part.channels
            first, count, _ = _part_grouping(plan, src.channels, part)
            self._require(plan.input, part.input_format, first, first + count)
            if plan.residual is not None:
                self._require(plan.residual, part.residual_format, c0, c1)
        self.steps.append(plan)

    def pool(self, plan: PoolPlan) -> None:
        src = self.tensors[plan.input]
        self.tensors[plan.output] = _Tensor(src.channels, 1, 1, nonneg=src.nonneg)
        for fmt in plan.formats:
            self._require(plan.input, fmt, 0, src.channels)
        self.steps.append(plan)

    # -- building ------------------------------------------------------------------------------------------
    def _make_buffers(self, output_tensor: str) -> List[Buffer]:
        buffers = []
        pooled = {p.output: p for p in self.steps if isinstance(p, PoolPlan)}
        for name, tensor in self.tensors.items():
            if name == output_tensor:
                tensor.buffers[FP32] = Buffer(LOGITS_TENSOR, name, (0, tensor.channels), tensor.height, tensor.width,
                                              FP32)
                buffers.append(tensor.buffers[FP32])
                continue
            by_format: Dict[Format, Tuple[int, int]] = {}
            for fmt, first, end in self.reads.get(name, []):
                lo, hi = by_format.get(fmt, (first, end))
                by_format[fmt] = (min(lo, first), max(hi, end))
            if name in pooled:
                missing = [f for f in by_format if f not in pooled[name].formats]
                if missing:
                    raise ValueError(f"synthetic: {name} is pooled at {pooled[name].formats}, read at {missing}")
                by_format = {f: (0, tensor.channels) for f in pooled[name].formats}
            names = set()
            for fmt, (first, end) in by_format.items():
                label = f"{name}.{_format_tag(fmt)}"
                label = label if label not in names else f"{label}.{len(names)}"
                names.add(label)
                buf = Buffer(label, name, (first, end), tensor.height, tensor.width, fmt)
                tensor.buffers[fmt] = buf
                buffers.append(buf)
        return buffers

    def build(self, calibration: np.ndarray, output_tensor: str, metadata: Dict) -> IntegerNetwork:
        buffers = self._make_buffers(output_tensor)
        state = Execution({b.name: b for b in buffers}, calibration)
        image = self.tensors[INPUT_TENSOR]
        quantize = Quantize("quantize", [QuantizeOutput(b.name, to_int_for(f) if f.is_int else None)
                                         for f, b in image.buffers.items()])
        ops: List[object] = [quantize]
        state.run(quantize)
        for step in self.steps:
            if isinstance(step, PoolPlan):
                for fmt in step.formats:
                    op = GlobalAvgPool(f"{step.name}.{_format_tag(fmt)}", self.tensors[step.input].buffers[fmt].name,
                                       self.tensors[step.output].buffers[fmt].name)
                    state.run(op)
                    ops.append(op)
                continue
            for index, part in enumerate(step.parts):
                op = self._conv_part(step, index, part, state, is_logits=step.output == output_tensor)
                state.run(op)
                ops.append(op)
        net = IntegerNetwork(self.input_shape, buffers, ops, self.tensors[output_tensor].buffers[FP32].name,
                             metadata=metadata)
        return plan_arena(net.validate()).validate()

    def _weights(self, plan: LayerPlan, part: PartPlan, shape: Tuple[int, ...]) -> np.ndarray:
        rng = self.rng
        if part.compute == "int":
            top = 2 ** part.weight_bits - 1
            if part.weight_grid == "dorefa":
                return rng.integers(0, top + 1, size=shape)
            half = 2 ** (part.weight_bits - 1) - 1
            return rng.integers(-half, half + 1, size=shape)
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape) / np.sqrt(fan_in)
        return w.astype(np.float16 if part.compute == "fp16" else np.float32)

    def _conv_part(self, plan: LayerPlan, index: int, part: PartPlan, state: Execution, is_logits: bool) -> ConvPart:
        src = self.tensors[plan.input]
        dst = self.tensors[plan.output]
        c0, c1 = part.channels
        first_input, in_count, groups = _part_grouping(plan, src.channels, part)
        in_buf = src.buffers[part.input_format]
        weights = self._weights(plan, part, (c1 - c0, in_count // groups, plan.kernel, plan.kernel))
        residual = []
        if plan.residual is not None:
            rb = self.tensors[plan.residual].buffers[part.residual_format]
            residual = [ChannelSlice(rb.name, c0 - rb.channels[0], c1 - c0)]
        conv = ConvPart(
            name=f"{plan.name}.p{index}", compute=part.compute,
            input=ChannelSlice(in_buf.name, first_input - in_buf.channels[0], in_count),
            weights=weights, outputs=[], stride=(plan.stride, plan.stride), padding=(plan.padding, plan.padding),
            groups=groups, weight_bits=part.weight_bits, weight_grid=part.weight_grid,
            activation=RELU6 if plan.activation else None, residual=residual, layer=plan.name,
            layer_channels=(c0, c1))
        acc = state.accumulator(conv).astype(np.float64)
        std = acc.std(axis=(0, 2, 3))
        mean = acc.mean(axis=(0, 2, 3))
        # output spread (std) and per-channel offset range: logits, ReLU6 outputs, signed outputs
        target, offsets = ((3.0, (-1.0, 1.0)) if is_logits else
                           (2.0, (0.0, 2.0)) if plan.activation else (1.5, (-0.5, 0.5)))
        A = np.where(std > 0, target / np.where(std > 0, std, 1.0), 1.0)
        C = -mean * A + self.rng.uniform(*offsets, size=A.size)
        res_scale = None
        if residual:
            fmt = part.residual_format
            res_scale = fmt.scale if fmt.is_int else None
        for fmt, buf in dst.buffers.items():
            first, end = max(c0, buf.channels[0]), min(c1, buf.channels[1])
            if first >= end:
                continue
            o0, o1 = first - c0, end - c0
            fixed = part.compute == "int" and fmt.is_int and (not residual or part.residual_format.is_int)
            if fixed:
                lo, hi = fmt.code_range
                if plan.activation:
                    lo, hi = max(lo, 0), min(hi, int(np.floor(RELU6[1] / fmt.scale + 0.5)))
                R = None if res_scale is None else np.full(o1 - o0, res_scale / fmt.scale)
                bound = accumulator_bounds(weights, part.weight_bits, part.weight_grid, in_buf.format.levels)
                epilogue = requantizer(A[o0:o1] / fmt.scale, C[o0:o1] / fmt.scale, R, lo=lo, hi=hi,
                                       acc_bound=bound[o0:o1],
                                       residual_levels=part.residual_format.levels if residual else 255,
                                       arithmetic=self.arithmetic)
            else:
                epilogue = FloatEpilogue(A[o0:o1], C[o0:o1], to_int_for(fmt) if fmt.is_int else None)
            conv.outputs.append(PartOutput(buf.name, first - buf.channels[0], (o0, o1), epilogue))
        return conv


def _part_grouping(plan: LayerPlan, in_channels: int, part: PartPlan) -> Tuple[int, int, int]:
    """(first input channel, input channels, groups) of a part: a part of a grouped layer covers whole
    groups, or lies inside one group (then it is an ordinary conv over that group's inputs)."""
    c0, c1 = part.channels
    out_per_group = plan.out_channels // plan.groups
    in_per_group = in_channels // plan.groups
    g0, g1 = c0 // out_per_group, (c1 - 1) // out_per_group
    if g0 == g1:
        return g0 * in_per_group, in_per_group, 1
    if (c0 % out_per_group, c1 % out_per_group) != (0, 0):
        raise ValueError(f"synthetic: part {part.channels} of {plan.name} splits a group")
    return g0 * in_per_group, (g1 + 1 - g0) * in_per_group, g1 + 1 - g0


def _format_tag(fmt: Format) -> str:
    if not fmt.is_int:
        return fmt.kind
    return f"{'s' if fmt.signed else 'u'}int{fmt.bits}"


# -- random graphs -----------------------------------------------------------------------------------------------
INT_INPUT_FORMATS = [(bits, signed) for bits in (8, 4, 2) for signed in (False, True)]
INT_WEIGHT_FORMATS = [(bits, grid) for bits in (8, 4, 2) for grid in ("dorefa", "symmetric")]


class _Choices:
    """Cycles through the 36 (input format × weight format) int combinations in one fixed shuffled order;
    graph ``seed`` starts ``seed·8`` combinations in and has at least eight int parts, so five consecutive
    seeds cover every combination (tests/test_deploy_ir.py checks it)."""

    COMPUTES = ["int", "fp16", "int", "fp32", "int"]

    def __init__(self, rng: np.random.Generator, seed: int):
        self.rng = rng
        combos = list(itertools.product(INT_INPUT_FORMATS, INT_WEIGHT_FORMATS))
        order = np.random.default_rng(0).permutation(len(combos))
        shuffled = [combos[i] for i in order]
        start = (seed * 8) % len(shuffled)
        self.int_combos = itertools.cycle(shuffled[start:] + shuffled[:start])
        self.computes = itertools.cycle(self.COMPUTES[seed % 5:] + self.COMPUTES[:seed % 5])
        residuals = [("int", 8), ("fp16", 0), ("int", 4), ("fp32", 0), ("int", 2)]
        self.residuals = itertools.cycle(residuals[seed % 5:] + residuals[:seed % 5])

    def part(self, channels: Tuple[int, int], nonneg_input: bool, residual: bool) -> PartPlan:
        compute = next(self.computes)
        if compute == "int":
            (bits, signed), (w_bits, grid) = next(self.int_combos)
            plan = PartPlan(channels, "int", value_format(nonneg_input, "int", bits, signed), w_bits, grid)
        else:
            plan = PartPlan(channels, compute, value_format(nonneg_input, compute))
        if residual:
            kind, bits = next(self.residuals)
            plan.residual_format = value_format(False, kind, bits, True)
        return plan

    def split(self, channels: int, unit: int, max_parts: int) -> List[Tuple[int, int]]:
        groups = channels // unit
        parts = int(self.rng.integers(1, min(max_parts, groups) + 1))
        cuts = sorted(self.rng.choice(np.arange(1, groups), size=parts - 1, replace=False)) if parts > 1 else []
        bounds = [0] + [int(c) * unit for c in cuts] + [channels]
        return list(zip(bounds[:-1], bounds[1:]))


def random_network(seed: int, input_shape: Tuple[int, int, int] = (3, 8, 8), num_classes: int = 5,
                   calibration_images: int = 8) -> IntegerNetwork:
    """A small MobileNet-like graph with random splits, precisions and formats: stem 3×3 conv, an
    inverted-residual block with a residual, a stride-2 block, a grouped 3×3 conv, a pointwise conv,
    global average pools and a linear classifier."""
    rng = np.random.default_rng(seed)
    choose = _Choices(rng, seed)
    b = _Builder(tuple(input_shape), rng)

    def conv(name, src, dst, cout, kernel, stride, padding, groups, act, residual=None, max_parts=3):
        unit = cout // groups if groups > 1 else 1
        nonneg = b.tensors[src].nonneg
        parts = [choose.part(ch, nonneg, residual is not None) for ch in choose.split(cout, unit, max_parts)]
        b.layer(LayerPlan(name, src, dst, cout, kernel, stride, padding, groups, act, parts, residual))

    stem_stride = int(rng.choice([1, 2]))
    c = int(rng.choice([6, 8]))
    conv("stem", INPUT_TENSOR, "t1", c, 3, stem_stride, 1, 1, True)
    conv("b1.expand", "t1", "t2", 2 * c, 1, 1, 0, 1, True)
    conv("b1.dw", "t2", "t3", 2 * c, 3, 1, 1, 2 * c, True, max_parts=3)
    conv("b1.project", "t3", "t4", c, 1, 1, 0, 1, False, residual="t1")
    conv("b2.expand", "t4", "t5", 2 * c, 1, 1, 0, 1, True)
    conv("b2.dw", "t5", "t6", 2 * c, 3, 2, 1, 2 * c, True)
    conv("b2.project", "t6", "t7", 8, 1, 1, 0, 1, False)
    conv("grouped", "t7", "t8", 8, 3, 1, 1, 2, bool(rng.integers(0, 2)))
    conv("head", "t8", "t9", 12, 1, 1, 0, 1, True)
    linear_parts = [choose.part(ch, True, False) for ch in choose.split(num_classes, 1, 2)]
    b.pool(PoolPlan("pool", "t9", "pooled", list(dict.fromkeys(p.input_format for p in linear_parts))))
    b.layer(LayerPlan("classifier", "pooled", "logits", num_classes, 1, 1, 0, 1, False, linear_parts))
    calibration = random_images(seed + 1000, input_shape, calibration_images)
    return b.build(calibration, "logits", {"generator": "deploy.synthetic.random_network", "seed": seed})


# -- one layer per network: the kernel tests ---------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCase:
    """One layer between the image and a read-out: its shape and its formats. ``splits`` cut the layer
    into parts at those output channels (each part then reads its own slice of a shared buffer: channel
    offsets off a byte, for sub-byte inputs); ``output`` is the format the read-out reads the layer at."""
    name: str
    input_shape: Tuple[int, int, int]
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    compute: str
    input_format: Tuple[int, bool]          # (bits, signed) for int compute
    weights: Tuple[int, str] = (0, "")      # (bits, grid) for int compute
    output: Tuple[str, int, bool] = ("int", 8, True)
    residual: Optional[Tuple[str, int]] = None  # (kind, bits) of the skip, read from the image
    activation: bool = False
    splits: Tuple[int, ...] = ()
    arithmetic: str = "fine"


def kernel_case_network(case: KernelCase, seed: int = 0, calibration_images: int = 8) -> IntegerNetwork:
    """``case``'s layer reading the image, then a read-out layer that maps every element of the layer's
    output buffer, through int8 weights drawn at random (exact integer sums), to 12 float32 logits: a
    wrong code anywhere changes the logits."""
    rng = np.random.default_rng(seed)
    b = _Builder(tuple(case.input_shape), rng, case.arithmetic)
    bits, signed = case.input_format

    def fmt_of(kind: str, k: int = 0, is_signed: bool = False, nonneg: bool = False) -> Format:
        return value_format(nonneg, kind, k, is_signed)

    in_fmt = fmt_of("int", bits, signed) if case.compute == "int" else fmt_of(case.compute)
    cuts = [0, *case.splits, case.out_channels]
    parts = [PartPlan((c0, c1), case.compute, in_fmt, *case.weights) for c0, c1 in zip(cuts[:-1], cuts[1:])]
    if case.residual is not None:
        kind, r_bits = case.residual
        for part in parts:
            part.residual_format = fmt_of(kind, r_bits, True)
    b.layer(LayerPlan(case.name, INPUT_TENSOR, "y", case.out_channels, case.kernel, case.stride, case.padding,
                      case.groups, case.activation, parts, INPUT_TENSOR if case.residual else None))
    kind, o_bits, o_signed = case.output
    out_fmt = fmt_of(kind, o_bits, o_signed, nonneg=case.activation)
    y = b.tensors["y"]
    readout = PartPlan((0, 12), kind, out_fmt, *((8, "symmetric") if kind == "int" else (0, "")))
    if y.height != y.width:
        raise ValueError(f"kernel case {case.name}: the read-out needs a square output, got {y.height}x{y.width}")
    b.layer(LayerPlan("readout", "y", "logits", 12, y.height, 1, 0, 1, False, [readout]))
    calibration = random_images(seed + 1000, case.input_shape, calibration_images)
    return b.build(calibration, "logits", {"generator": "deploy.synthetic.kernel_case_network", "case": case.name})


# -- MobileNetV2 shape -------------------------------------------------------------------------------------------
def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


MOBILENETV2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1)]


MOBILENETV2_PRECISIONS = ("int8", "int4", "int2", "fp16", "fp32", "mixed")


def mobilenetv2_network(width_mult: float = 0.35, input_size: int = 32, num_classes: int = 10,
                        precision: str = "int8", seed: int = 0, calibration_images: int = 4,
                        model_names: bool = False) -> IntegerNetwork:
    """MobileNetV2's layer shapes (CIFAR strides: stem 1, stages 1,1,2,2,1,2,1) with random weights.

    ``precision``: ``int8`` (every layer int8 activations × int8 DoReFa weights, int8 residuals),
    ``int4`` / ``int2`` (likewise at 4 / 2 bits, residuals too, as a uniform network stores a block's
    input in its first layer's format), ``fp32``, ``fp16``, or ``mixed`` (each layer
    int8/int4/int2/fp16/fp32 at random, a third of them split in two parts).
    ``model_names``: name the layers as the project's MobileNetV2 does (``features.3.conv.1.0``, the
    names of its analysis and latency tables) and record its spec in the metadata's ``model``, so that
    a profile of this network fills that model's lut.json; the default names are short (``b3.dw``)."""
    if precision not in MOBILENETV2_PRECISIONS:
        raise ValueError(f"mobilenetv2_network: precision {precision!r}, expected {', '.join(MOBILENETV2_PRECISIONS)}")
    uniform_bits = {"int8": 8, "int4": 4, "int2": 2}.get(precision)
    rng = np.random.default_rng(seed)
    b = _Builder((3, input_size, input_size), rng)
    mixed_kinds = [("int", 8), ("int", 4), ("int", 2), ("fp16", 0), ("fp32", 0)]

    def part(channels, nonneg, residual):
        kind, bits = ("int", uniform_bits) if uniform_bits else (precision, 0)
        if precision == "mixed":
            kind, bits = mixed_kinds[int(rng.integers(len(mixed_kinds)))]
        fmt = value_format(nonneg, kind, bits, not nonneg)
        plan = PartPlan(channels, kind, fmt, bits if kind == "int" else 0, "dorefa" if kind == "int" else "")
        if residual:
            residual_bits = uniform_bits or 8
            plan.residual_format = value_format(False, kind, residual_bits if kind == "int" else 0, True)
        return plan

    def conv(name, src, dst, cout, kernel, stride, groups, act, residual=None):
        name = _mobilenetv2_model_name(name) if model_names else name
        nonneg = b.tensors[src].nonneg
        unit = cout // groups if groups > 1 else 1
        splits = [(0, cout)]
        if precision == "mixed" and rng.random() < 1 / 3 and cout // unit >= 2:
            cut = int(rng.integers(1, cout // unit)) * unit
            splits = [(0, cut), (cut, cout)]
        parts = [part(ch, nonneg, residual is not None) for ch in splits]
        b.layer(LayerPlan(name, src, dst, cout, kernel, stride, (kernel - 1) // 2, groups, act, parts, residual))

    channels = _make_divisible(32 * width_mult)
    conv("stem", INPUT_TENSOR, "f0", channels, 3, 1, 1, True)
    tensor, block = "f0", 0
    for t, c, n, s in MOBILENETV2_STAGES:
        out = _make_divisible(c * width_mult)
        for i in range(n):
            block += 1
            stride = s if i == 0 else 1
            hidden = int(round(channels * t))
            src = tensor
            if t != 1:
                conv(f"b{block}.expand", src, f"b{block}.e", hidden, 1, 1, 1, True)
                src = f"b{block}.e"
            conv(f"b{block}.dw", src, f"b{block}.d", hidden, 3, stride, hidden, True)
            residual = tensor if stride == 1 and channels == out else None
            conv(f"b{block}.project", f"b{block}.d", f"b{block}.out", out, 1, 1, 1, False, residual)
            tensor, channels = f"b{block}.out", out
    last = _make_divisible(1280 * max(1.0, width_mult))
    conv("head", tensor, "head", last, 1, 1, 1, True)
    linear = [part((0, num_classes), True, False)]
    b.pool(PoolPlan("pool", "head", "pooled", [linear[0].input_format]))
    classifier = _mobilenetv2_model_name("classifier") if model_names else "classifier"
    b.layer(LayerPlan(classifier, "pooled", "logits", num_classes, 1, 1, 0, 1, False, linear))
    calibration = random_images(seed + 1000, (3, input_size, input_size), calibration_images)
    metadata = {"generator": "deploy.synthetic.mobilenetv2_network", "width_mult": width_mult,
                "input_size": input_size, "precision": precision, "seed": seed}
    if model_names:
        metadata["model"] = {"type": "mobilenetv2", "input_size": input_size, "width_mult": width_mult,
                             "num_classes": num_classes, "strides": "cifar"}
    return b.build(calibration, "logits", metadata)


def _mobilenetv2_model_name(name: str) -> str:
    """The project's MobileNetV2 module path of a synthetic layer name: stem → features.0.0,
    b<k>.expand / .dw / .project → features.<k>.conv.0.0 / .1.0 / .2 (block 1, without an expansion:
    .dw → conv.0.0, .project → conv.1), head → features.18.0, classifier → classifier.1."""
    if name == "stem":
        return "features.0.0"
    if name == "head":
        return f"features.{sum(n for _, _, n, _ in MOBILENETV2_STAGES) + 1}.0"
    if name == "classifier":
        return "classifier.1"
    block, role = name[1:].split(".")
    if block == "1":  # MOBILENETV2_STAGES[0] has no expansion
        return {"dw": "features.1.conv.0.0", "project": "features.1.conv.1"}[role]
    return f"features.{block}.conv." + {"expand": "0.0", "dw": "1.0", "project": "2"}[role]


def multiply_accumulates(network: IntegerNetwork) -> int:
    """MACs of one image: Σ over conv parts of outputs × (in/groups)·kh·kw."""
    total = 0
    for op in network.ops:
        if isinstance(op, ConvPart):
            b = network.buffer(op.outputs[0].buffer)
            total += op.out_channels * b.height * b.width * op.reduction_size
    return total
