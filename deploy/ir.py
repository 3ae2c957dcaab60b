"""The integer network (IR): what the converter writes, the numpy reference executes and the C export
compiles. Both executors produce byte-identical outputs for every input.

The converter (``deploy/build.py``) turns a trained AdaptQNet run into an ``IntegerNetwork``.
Everything in this module is generic: it knows nothing about PyTorch and imports only numpy.

Values and buffers
------------------
A network has one float32 input image of shape (C, H, W) and one float32 output vector (the logits,
the output buffer's elements in channel-major order). In between, every tensor lives in one or more
**buffers**. A buffer holds a contiguous range of channels ``[b0, b1)`` of one tensor in one
**format**:

=====================  =====================  ==================================================
format                 element / real value   storage
=====================  =====================  ==================================================
``int`` (8/4/2 bits,   code ``q``,            k-bit two's complement (signed) or unsigned,
signed or not)         value ``scale·q``      packed LSB-first: element i occupies bits
                                              ``(i·k) mod 8 ...`` of byte ``floor(i·k/8)``
``fp16``               IEEE binary16          2 bytes, little endian
``fp32``               IEEE binary32          4 bytes, little endian
=====================  =====================  ==================================================

Int formats carry ``levels`` L: codes lie in ``[0, L]`` (unsigned) or ``[-L, L]`` (signed); PACT
uses L = 2^k − 1 unsigned and 2^(k−1) − 1 signed (signed INT2 codes are −1, 0, 1). Element order in a
buffer is channels-last (HWC) over the buffer's own channels: element ``(y·W + x)·C_b + (c − b0)``,
so a pointwise layer is a matrix product over contiguous pixels and a depthwise layer runs across
channels. A buffer's size is ``ceil(elements · bits / 8)`` bytes. The numpy reference holds buffers as
arrays and never sees this order; it is the C export's (and any executor's that shares the arena).

A tensor read in several formats (a layer split over two cores whose parts read its input at
different precisions; a depthwise layer split by channels) has several buffers; each consumer part
reads one buffer that covers the channels it needs.

Operators (executed in list order, on one core)
-----------------------------------------------
1. ``Quantize`` (the first op, and only there): reads the network input (float32) and writes each of
   its output buffers from the input channels ``[b0, b1)`` of that buffer: ``int``:
   ``q = clamp(rne(clamp(x, lo_r, hi_r)·inv_scale), lo, hi)`` with float32 constants
   ``lo_r, hi_r, inv_scale`` and integer codes ``lo, hi`` (a ``FloatToInt``, which validation
   requires to satisfy ``max(|lo_r|, |hi_r|)·inv_scale < 2^24`` so that ``rne`` is exact); ``fp16``:
   round to half; ``fp32``: copy.
2. ``ConvPart`` (convolution, depthwise, pointwise, or linear = 1×1 conv on a 1×1 map): the output
   channels ``layer_channels = [c0, c1)`` of one layer at one compute kind (``int``, ``fp16``,
   ``fp32``). The part is a self-contained grouped convolution: its weights have shape
   (out, in/groups, kh, kw), it reads ``groups·in/groups`` channels of its input buffer starting at
   ``input.offset``, with stride and zero padding (applied on both sides). A depthwise part has
   groups = its channel count and reads only its own channels.

   * int compute: the input buffer is ``int``; weights are integer codes at ``weight_bits`` on a
     ``weight_grid``: ``dorefa`` codes ``u ∈ [0, L_w]``, L_w = 2^k − 1, effective weight
     ``2u − L_w``; ``symmetric`` codes ``w ∈ [−(2^(k−1) − 1), 2^(k−1) − 1]``, effective weight ``w``.
     Stored packed like int buffers (dorefa unsigned, symmetric two's complement) in the order
     [out][in/groups][kh][kw]. The int32 accumulator over the receptive field (padding contributes
     nothing) is ``acc = 2·Σq·u − L_w·Σq`` (dorefa) or ``Σq·w`` (symmetric). Validation proves
     from the weights and the input levels that |acc| and both dorefa sums stay below 2^31.
   * fp16 / fp32 compute: the input buffer is fp16 / fp32 (read as float32); weights are stored as
     half / float32 and used as float32. ``acc = 0.0f; for ky: for kx: for ci: acc += x·w`` in
     float32 in exactly that order, each product and each sum rounded to float32 (no fused
     multiply-add). Padding positions may be skipped or added: with finite weights they add ±0,
     which changes nothing (acc starts at +0 and can never become −0).
   * Epilogue, per output channel c; the case decides which one, and validation rejects the other:

     - ``FixedPointEpilogue`` (int compute, int output buffer, residual absent or all int): the
       requantisation TensorFlow Lite and CMSIS-NN define for int8, in 32-bit integers:
       ``y = mbqm(acc·2^p_c + B_c, M_c, s_c)``, ``q = clamp(y, lo_c, hi_c)``, with ``B_c``, ``M_c``
       int32, ``s_c`` in −31..30 (``mbqm`` below) and the accumulator pre-shift ``p_c`` in 0..30
       (TFLite's is 0; the converter's "fine" arithmetic raises it where rounding the bias into the
       accumulator would cost accuracy, see ``requantizer``). The activation must already be folded into ``lo_c, hi_c``.
       With a residual it is TFLite's int8 ADD fused behind the conv: ``t = clamp(y, t_lo_c,
       t_hi_c)`` (the conv's own int8 output) and
       ``q = clamp(mbqm(mbqm(t·2^L, Mt_c, st_c) + mbqm(q_res·2^L, Mr_c, sr_c), Mo_c, so_c), lo_c, hi_c)``
       with every s ≤ 0 (TFLite's ``MultiplyByQuantizedMultiplierSmallerThanOneExp``). With t an int8
       tensor (t in [−128, 127], L = 20) this is bit for bit a TFLite int8 CONV followed by its ADD;
       the converter may instead keep t as int16 (L = 15, TFLite's int16 ADD), which rounds the
       conv's output 256 times finer than an int8 graph can. A
       part with a residual and a fixed-point output has no activation (a clamp before the add cannot
       be folded into one after it). All zero points are 0 in the IR's code space (an unsigned code u
       is TFLite's int8 ``u − 128`` with zero point −128). Validation proves that ``acc·2^p_c + B_c``,
       shifted left by max(s_c, 0), stays below 2^30 in magnitude (TFLite needs int32; the C kernels
       double it and take ``srdhm`` as one rounding high multiply).

       ``mbqm(x, M, s) = rdbpot(srdhm(x·2^max(s, 0), M), max(−s, 0))`` (TFLite's
       ``MultiplyByQuantizedMultiplier``, gemmlowp's roundings): ``srdhm(a, b)`` is
       ``(a·b + n) / 2^31`` in int64 truncated toward zero with ``n = 2^30`` if a·b ≥ 0 else
       ``1 − 2^30`` (saturating to 2^31 − 1 when a = b = −2^31), and ``rdbpot(x, e)`` is ``x / 2^e``
       rounded half away from zero: ``(x >> e) + ((x & (2^e − 1)) > ((2^e − 1) >> 1) + (x < 0))``
       with an arithmetic shift.
     - ``FloatEpilogue`` (every other case): ``z = acc_f·A_c + C_c`` in float32 (``acc_f`` =
       (float)acc for int compute, the float accumulator otherwise); ``z = clamp(z, act_lo, act_hi)``
       if the part has an activation; ``z = z + r`` if a residual, ``r`` the residual element's real
       value as float32 (int: ``(float)q_res · scale`` with the buffer format's float32 scale; fp16 /
       fp32: the value); then ``z`` is stored like Quantize stores (``to_int`` for int buffers).

   ``outputs`` lists where the part's channels go: (buffer, first channel in that buffer, the range
   ``[o0, o1)`` of the part's own output channels, epilogue). A channel may go to several buffers
   (copies at different formats); every part channel goes somewhere. ``residual`` is a list of
   channel slices covering the part's output channels in order.
3. ``GlobalAvgPool``: one input buffer → one 1×1 output buffer, same channel count, same format.
   int: ``q = rne(Σq / (H·W))`` in exact integer arithmetic; float: ``s = 0.0f; s += x`` over the
   positions in row-major order, then ``s / (float)(H·W)`` (one float32 division), stored in the
   format.
4. The output is one fp32 buffer, written by the last layer's parts.

Every channel of every buffer is written exactly once, before it is read; every buffer but the
output is read.

Rounding and special values
---------------------------
``rne`` is round half to even. ``clamp(x, lo, hi)`` is ``lo if not x >= lo else (hi if x > hi else
x)``: a NaN becomes ``lo``. Float→half is IEEE round-to-nearest-even with subnormals and overflow to
±inf. NaN payloads and signs differ between CPUs (x86 makes negative NaNs, ARM positive ones), so
every store canonicalises NaN: fp32 ``0x7FC00000``, fp16 ``0x7E00``; int stores map NaN to ``lo``
through the clamp. With these rules the outputs are byte-identical on every IEEE-754 machine that
evaluates float expressions in float32 (``FLT_EVAL_METHOD == 0``) without contraction
(``-ffp-contract=off``). No rounding relies on libm or a rounding mode.

Fixed-point helper
------------------
``requantizer(A, C, R, lo=, hi=, acc_bound=, arithmetic=)`` turns real per-channel multipliers (output code =
``A_c·acc + C_c (+ R_c·q_res)``) into a ``FixedPointEpilogue``; its docstring gives the error bound.
``quantize_multiplier`` is TFLite's ``QuantizeMultiplier``; ``mbqm`` the function above in numpy.

Memory
------
All buffers live in one static byte arena (``deploy/arena.py`` plans it). A buffer is alive from the
first op that writes it to the last op that reads it (the output until the last op). ``offset`` of
every buffer (4-byte aligned) and ``arena_bytes`` are part of the IR once planned (``None`` before).

JSON
----
``to_json`` / ``from_json`` with schema ``adaptqnet/integer_network/2``: numpy arrays are objects
``{"dtype", "shape", "data"}`` with ``data`` the base64 of the little-endian bytes; int weights are
stored packed (``"packed_bits"``, ``"signed"``), as in the C export. ±inf float scalars (activation
bounds) are the strings ``"inf"`` / ``"-inf"``. ``to_json(from_json(s)) == s``.
"""
from __future__ import annotations

import base64
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from deploy import arena

SCHEMA = "adaptqnet/integer_network/2"
FORMAT_KINDS = ("int", "fp16", "fp32")
INT_BITS = (8, 4, 2)
WEIGHT_GRIDS = ("dorefa", "symmetric")
MIN_SHIFT, MAX_SHIFT = -31, 30
ACCUMULATOR_LIMIT = 2 ** 31
# What mbqm is given, acc·2^p + B shifted left, stays below 2^30 in magnitude, so that an executor may
# double it and take srdhm as one rounding high multiply (the C kernels' SMMULR).
REQUANT_INPUT_LIMIT = 2 ** 30
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1
# TFLite's ADD shifts both operands left before scaling them (left_shift in add.cc): 20 bits for int8
# operands, 15 for int16; keyed by the bits of the conv output ahead of a fused add.
ADD_LEFT_SHIFT = {8: 20, 16: 15}
# rne() truncates through int32; below 2^24 every float32 has an exact integer part and fraction.
RNE_LIMIT = 2 ** 24
CANONICAL_NAN_FP32 = 0x7FC00000
CANONICAL_NAN_FP16 = 0x7E00


# -- scalar coercion --------------------------------------------------------------------------------
def float32_value(x: float) -> float:
    """x rounded to the nearest float32, as a Python float (exact in JSON and in C hex literals)."""
    return float(np.float32(x))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# -- formats -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Format:
    """How a buffer stores its elements. Build int formats with ``int_format``; ``FP16``/``FP32``."""
    kind: str
    bits: int = 0
    signed: bool = False
    levels: int = 0
    scale: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "scale", float32_value(self.scale))

    @property
    def is_int(self) -> bool:
        return self.kind == "int"

    @property
    def element_bits(self) -> int:
        return {"int": self.bits, "fp16": 16, "fp32": 32}[self.kind]

    @property
    def code_range(self) -> Tuple[int, int]:
        """Smallest and largest int code."""
        return (-self.levels, self.levels) if self.signed else (0, self.levels)

    def check(self, where: str) -> None:
        _require(self.kind in FORMAT_KINDS, f"{where}: format kind {self.kind!r}, expected one of {FORMAT_KINDS}")
        if not self.is_int:
            _require((self.bits, self.signed, self.levels, self.scale) == (0, False, 0, 0.0),
                     f"{where}: a {self.kind} format takes no bits/signed/levels/scale")
            return
        _require(self.bits in INT_BITS, f"{where}: int bits {self.bits}, expected one of {INT_BITS}")
        most = 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1
        _require(1 <= self.levels <= most,
                 f"{where}: levels {self.levels} outside 1..{most} for a {'signed' if self.signed else 'unsigned'} "
                 f"{self.bits}-bit format")
        _require(math.isfinite(self.scale) and self.scale > 0, f"{where}: scale {self.scale} must be finite and > 0")


def int_format(bits: int, signed: bool, scale: float, levels: Optional[int] = None) -> Format:
    """An int format; ``levels`` defaults to PACT's (2^k − 1 unsigned, 2^(k−1) − 1 signed)."""
    if levels is None:
        levels = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    return Format("int", int(bits), bool(signed), int(levels), scale)


FP16 = Format("fp16")
FP32 = Format("fp32")


@dataclass
class Buffer:
    """Channels ``channels = (b0, b1)`` of tensor ``tensor`` at ``height × width`` in ``format``."""
    name: str
    tensor: str
    channels: Tuple[int, int]
    height: int
    width: int
    format: Format
    offset: Optional[int] = None

    def __post_init__(self):
        self.channels = (int(self.channels[0]), int(self.channels[1]))

    @property
    def num_channels(self) -> int:
        return self.channels[1] - self.channels[0]

    @property
    def elements(self) -> int:
        return self.num_channels * self.height * self.width

    @property
    def size_bytes(self) -> int:
        return (self.elements * self.format.element_bits + 7) // 8


@dataclass(frozen=True)
class FloatToInt:
    """Float → int code: ``clamp(rne(clamp(x, lo_r, hi_r)·inv_scale), lo, hi)``."""
    lo_r: float
    hi_r: float
    inv_scale: float
    lo: int
    hi: int

    def __post_init__(self):
        for name in ("lo_r", "hi_r", "inv_scale"):
            object.__setattr__(self, name, float32_value(getattr(self, name)))
        object.__setattr__(self, "lo", int(self.lo))
        object.__setattr__(self, "hi", int(self.hi))

    def check(self, fmt: Format, where: str) -> None:
        _require(fmt.is_int, f"{where}: to_int given for a {fmt.kind} buffer")
        _require(math.isfinite(self.lo_r) and math.isfinite(self.hi_r) and self.lo_r <= self.hi_r,
                 f"{where}: to_int needs finite lo_r <= hi_r, got {self.lo_r}, {self.hi_r}")
        _require(math.isfinite(self.inv_scale) and self.inv_scale > 0,
                 f"{where}: to_int inv_scale {self.inv_scale} must be finite and > 0")
        _require(max(abs(self.lo_r), abs(self.hi_r)) * self.inv_scale < RNE_LIMIT - 1,
                 f"{where}: to_int max(|lo_r|, |hi_r|)·inv_scale must stay below 2^24")
        code_lo, code_hi = fmt.code_range
        _require(code_lo <= self.lo <= self.hi <= code_hi,
                 f"{where}: to_int codes [{self.lo}, {self.hi}] outside the format's [{code_lo}, {code_hi}]")


# -- arrays --------------------------------------------------------------------------------------------
def _checked_int_array(values: Any, dtype: Any, where: str) -> np.ndarray:
    a = np.asarray(values)
    if a.dtype.kind == "f":
        _require(bool(np.all(np.isfinite(a))) and bool(np.all(a == np.round(a))), f"{where}: expected integers")
        a = a.astype(np.int64)
    _require(a.dtype.kind in "iub", f"{where}: expected an integer array, got {a.dtype}")
    info = np.iinfo(dtype)
    if a.size:
        _require(int(a.min()) >= info.min and int(a.max()) <= info.max,
                 f"{where}: values outside {np.dtype(dtype).name}")
    return a.astype(dtype)


def _float32_array(values: Any, where: str) -> np.ndarray:
    a = np.asarray(values)
    _require(a.dtype.kind in "fiu", f"{where}: expected a numeric array, got {a.dtype}")
    return a.astype(np.float32)


@dataclass
class ResidualAdd:
    """TFLite's int8 ADD fused behind a conv's requantisation; per output channel (module docstring)."""
    t_lo: np.ndarray
    t_hi: np.ndarray
    t_multiplier: np.ndarray
    t_shift: np.ndarray
    skip_multiplier: np.ndarray
    skip_shift: np.ndarray
    output_multiplier: np.ndarray
    output_shift: np.ndarray
    left_shift: int = ADD_LEFT_SHIFT[8]

    FIELDS = ("t_lo", "t_hi", "t_multiplier", "t_shift", "skip_multiplier", "skip_shift", "output_multiplier",
              "output_shift")

    def __post_init__(self):
        for name in self.FIELDS:
            setattr(self, name, _checked_int_array(getattr(self, name), np.int32, f"ResidualAdd.{name}"))
        self.left_shift = int(self.left_shift)

    @property
    def t_bits(self) -> int:
        """The width of the conv output ahead of the add: 8 or 16 (None for an unknown left shift)."""
        return next((b for b, shift in ADD_LEFT_SHIFT.items() if shift == self.left_shift), None)

    def t_step(self) -> np.ndarray:
        """The step of that output, in output codes, per channel."""
        return (real_multiplier(self.t_multiplier, self.t_shift)
                * real_multiplier(self.output_multiplier, self.output_shift) * 2.0 ** self.left_shift)


@dataclass
class FixedPointEpilogue:
    """Per-channel int32 constants; see the module docstring. ``requantizer`` builds one."""
    multiplier: np.ndarray
    shift: np.ndarray
    bias: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    residual: Optional[ResidualAdd] = None
    acc_shift: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.acc_shift is None:
            self.acc_shift = np.zeros(np.shape(self.multiplier), dtype=np.int32)
        for name in ("multiplier", "shift", "bias", "lo", "hi", "acc_shift"):
            setattr(self, name, _checked_int_array(getattr(self, name), np.int32, f"FixedPointEpilogue.{name}"))

    kind = "fixed_point"

    def affine(self) -> Tuple[np.ndarray, np.ndarray]:
        """The real ``(A, C)`` of ``q ≈ A·acc + C`` this epilogue computes (float64, per channel)."""
        a = real_multiplier(self.multiplier, self.shift) * np.exp2(self.acc_shift.astype(np.float64))
        if self.residual is not None:
            a = a * self.residual.t_step()
        return a, a * self.bias.astype(np.float64) * np.exp2(-self.acc_shift.astype(np.float64))


@dataclass
class FloatEpilogue:
    """``z = acc_f·scale + offset`` (float32, per channel); ``to_int`` is required for int buffers."""
    scale: np.ndarray
    offset: np.ndarray
    to_int: Optional[FloatToInt] = None

    def __post_init__(self):
        self.scale = _float32_array(self.scale, "FloatEpilogue.scale")
        self.offset = _float32_array(self.offset, "FloatEpilogue.offset")

    kind = "float"


Epilogue = Union[FixedPointEpilogue, FloatEpilogue]


@dataclass(frozen=True)
class ChannelSlice:
    """``channels`` channels of buffer ``buffer`` from its channel ``offset`` (0 = its first)."""
    buffer: str
    offset: int
    channels: int


@dataclass
class PartOutput:
    """The part's channels ``part_channels = (o0, o1)`` go to ``buffer`` from its ``channel_offset``."""
    buffer: str
    channel_offset: int
    part_channels: Tuple[int, int]
    epilogue: Epilogue

    def __post_init__(self):
        self.part_channels = (int(self.part_channels[0]), int(self.part_channels[1]))


# -- operators --------------------------------------------------------------------------------------------
@dataclass
class QuantizeOutput:
    buffer: str
    to_int: Optional[FloatToInt] = None


@dataclass
class Quantize:
    name: str
    outputs: List[QuantizeOutput]

    def reads(self) -> List[str]:
        return []

    def writes(self) -> List[str]:
        return [o.buffer for o in self.outputs]


@dataclass
class ConvPart:
    """One part of a conv / depthwise / pointwise / linear layer; see the module docstring."""
    name: str
    compute: str
    input: ChannelSlice
    weights: np.ndarray
    outputs: List[PartOutput]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    groups: int = 1
    weight_bits: int = 0
    weight_grid: str = ""
    activation: Optional[Tuple[float, float]] = None
    residual: List[ChannelSlice] = field(default_factory=list)
    layer: str = ""
    layer_channels: Optional[Tuple[int, int]] = None

    def __post_init__(self):
        w = np.asarray(self.weights)
        if self.compute == "int":
            w = _checked_int_array(w, np.int16, f"conv {self.name!r} weights")
        elif self.compute == "fp16":
            w = w if w.dtype == np.float16 else w.astype(np.float16)
        elif self.compute == "fp32":
            w = w.astype(np.float32)
        self.weights = w
        self.stride = (int(self.stride[0]), int(self.stride[1]))
        self.padding = (int(self.padding[0]), int(self.padding[1]))
        self.groups = int(self.groups)
        if self.activation is not None:
            self.activation = (float32_value(self.activation[0]), float32_value(self.activation[1]))
        if not self.layer:
            self.layer = self.name
        if self.layer_channels is None:
            self.layer_channels = (0, int(w.shape[0]) if w.ndim == 4 else 0)
        self.layer_channels = (int(self.layer_channels[0]), int(self.layer_channels[1]))

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @property
    def in_channels(self) -> int:
        return self.groups * int(self.weights.shape[1])

    @property
    def kernel(self) -> Tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])

    @property
    def reduction_size(self) -> int:
        """Inputs per output element: (in/groups)·kh·kw."""
        return int(np.prod(self.weights.shape[1:]))

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1

    def effective_weights(self) -> np.ndarray:
        """Weights as the accumulator uses them: int64 (dorefa 2u − L_w) or float32."""
        if self.compute != "int":
            return self.weights.astype(np.float32)
        return effective_int_weights(self.weights, self.weight_bits, self.weight_grid)

    def reads(self) -> List[str]:
        return [self.input.buffer] + [s.buffer for s in self.residual]

    def writes(self) -> List[str]:
        return [o.buffer for o in self.outputs]


@dataclass
class GlobalAvgPool:
    name: str
    input: str
    output: str

    def reads(self) -> List[str]:
        return [self.input]

    def writes(self) -> List[str]:
        return [self.output]


Op = Union[Quantize, ConvPart, GlobalAvgPool]


def effective_int_weights(codes: np.ndarray, bits: int, grid: str) -> np.ndarray:
    """Int weight codes as the accumulator uses them (int64): dorefa 2u − L_w, symmetric as they are."""
    w = np.asarray(codes).astype(np.int64)
    return 2 * w - (2 ** bits - 1) if grid == "dorefa" else w


def accumulator_bounds(codes: np.ndarray, bits: int, grid: str, input_levels: int) -> np.ndarray:
    """Per output channel, the largest |acc| any input of ``input_levels`` can produce (int64)."""
    eff = np.abs(effective_int_weights(codes, bits, grid)).reshape(np.shape(codes)[0], -1)
    return int(input_levels) * eff.sum(axis=1)


def op_label(index: int, op: Op) -> str:
    """How errors name an op: ``ops[3] (conv 'b1.dw.p0')``."""
    kind = {Quantize: "quantize", ConvPart: "conv", GlobalAvgPool: "global_avg_pool"}.get(type(op), type(op).__name__)
    return f"ops[{index}] ({kind} {getattr(op, 'name', '?')!r})"


# -- the network ----------------------------------------------------------------------------------------------
@dataclass
class IntegerNetwork:
    input_shape: Tuple[int, int, int]
    buffers: List[Buffer]
    ops: List[Op]
    output: str
    arena_bytes: Optional[int] = None
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.input_shape = tuple(int(v) for v in self.input_shape)

    def buffer(self, name: str) -> Buffer:
        for b in self.buffers:
            if b.name == name:
                return b
        raise ValueError(f"network: no buffer named {name!r}")

    @property
    def buffer_map(self) -> Dict[str, Buffer]:
        return {b.name: b for b in self.buffers}

    @property
    def num_outputs(self) -> int:
        return self.buffer(self.output).elements

    def validate(self) -> "IntegerNetwork":
        """Raise ValueError, naming the op/buffer/field, on anything the executors cannot run exactly."""
        _validate(self)
        return self

    def to_json(self) -> str:
        try:
            return json.dumps(_network_to_dict(self), indent=1, allow_nan=False) + "\n"
        except TypeError as e:
            raise ValueError(f"network.metadata: must hold plain JSON values ({e})") from None

    @staticmethod
    def from_json(text: str) -> "IntegerNetwork":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"integer network JSON: not valid JSON ({e})") from None
        return _network_from_dict(data).validate()

    def save(self, path: str) -> None:
        """Write ``to_json()`` to ``path`` atomically (temporary file in the same folder, then rename)."""
        text = self.to_json()
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @staticmethod
    def load(path: str) -> "IntegerNetwork":
        with open(path) as f:
            text = f.read()
        try:
            return IntegerNetwork.from_json(text)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# -- numeric helpers shared by the reference, the converter and the tests -------------------------------------
def clamp(x: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
    """``lo if not x >= lo else (hi if x > hi else x)``: NaN → lo, as the C kernels do."""
    return np.where(~(x >= lo), lo, np.where(x > hi, hi, x)).astype(np.result_type(x, lo, hi))


def round_half_even(x: np.ndarray) -> np.ndarray:
    """float32 → int64, ties to even, written as the C kernel computes it (truncate, then compare the
    exact fraction); needs |x| < 2^24, which validation guarantees wherever the IR rounds."""
    x = np.asarray(x, dtype=np.float32)
    i = np.trunc(x).astype(np.int64)
    frac = x - i.astype(np.float32)
    odd = (i & 1) == 1
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    down = (frac < -0.5) | ((frac == -0.5) & odd)
    return i + up - down


def float_to_half_bits(x: np.ndarray) -> np.ndarray:
    """float32 → IEEE binary16 bits (uint16), round to nearest even, subnormals, overflow to ±inf, any
    NaN → 0x7E00. Bit manipulation only, mirrored line by line in ``adaptq_float_to_half``."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.int64)
    sign = (bits >> 16) & 0x8000
    mag = bits & 0x7FFFFFFF
    out = np.zeros_like(bits)
    normal = (mag >= 0x38800000) & (mag < 0x477FF000)
    # Re-bias the exponent (127 → 15) and round the 13 dropped mantissa bits to nearest even; a carry
    # into the exponent is the correct result.
    m = mag - 0x38000000
    out = np.where(normal, (m + 0xFFF + ((m >> 13) & 1)) >> 13, out)
    # Half subnormals: the value in units of 2^-24 is mant·2^(e−126), a right shift by 126 − e.
    sub = (mag >= 0x33000000) & (mag < 0x38800000)
    e = np.where(sub, mag >> 23, 126)
    mant = (mag & 0x7FFFFF) | 0x800000
    shift = 126 - e
    q = mant >> shift
    rem = mant & ((np.int64(1) << shift) - 1)
    half = np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), 0)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    out = np.where(sub, q, out)
    out = np.where(mag >= 0x477FF000, 0x7C00, out)
    out = out | sign
    out = np.where(mag > 0x7F800000, CANONICAL_NAN_FP16, out)
    return out.astype(np.uint16)


def half_bits_to_float(h: np.ndarray) -> np.ndarray:
    """IEEE binary16 bits → float32 (exact)."""
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float32)


def round_to_half(x: np.ndarray) -> np.ndarray:
    """float32 → the nearest half, as float32 (what an fp16 store keeps)."""
    return half_bits_to_float(float_to_half_bits(x))


def canonical_float32(x: np.ndarray) -> np.ndarray:
    """float32 with every NaN replaced by 0x7FC00000 (what an fp32 store keeps)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.isnan(x), np.uint32(CANONICAL_NAN_FP32).view(np.float32), x)


def code_bounds(lo_r: float, hi_r: float, inv_step: float, code_lo: int, code_hi: int) -> Tuple[int, int]:
    """The codes the real clamp bounds [lo_r, hi_r] round to, inside [code_lo, code_hi]: round half to
    even of bound·(1/step) in float32, as PACT computes a code. A clip lands a hair below a code
    (254.9999997 → 255), which a floor would lose; ``hi`` is never below ``lo``."""
    def code(v: float) -> int:
        return int(np.round(np.float32(v) * np.float32(inv_step)))
    lo = min(max(code(lo_r), code_lo), code_hi)
    return lo, min(max(code(hi_r), lo), code_hi)


def float_to_codes(x: np.ndarray, to_int: FloatToInt) -> np.ndarray:
    """float32 → int codes (int64) with a FloatToInt's constants."""
    x = np.asarray(x, dtype=np.float32)
    y = clamp(x, np.float32(to_int.lo_r), np.float32(to_int.hi_r)) * np.float32(to_int.inv_scale)
    return clamp(round_half_even(y), to_int.lo, to_int.hi)


# -- bit packing --------------------------------------------------------------------------------------------
def pack_bits(codes: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Int codes → packed uint8, element i in bits ``(i·k) mod 8`` of byte ``floor(i·k/8)`` (LSB first);
    signed codes in two's complement."""
    _require(bits in (1, 2, 4, 8), f"pack_bits: bits {bits}, expected 1, 2, 4 or 8")
    flat = np.asarray(codes).reshape(-1).astype(np.int64)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    if flat.size:
        _require(int(flat.min()) >= lo and int(flat.max()) <= hi,
                 f"pack_bits: codes outside [{lo}, {hi}] for {'signed' if signed else 'unsigned'} {bits}-bit")
    per_byte = 8 // bits
    padded = np.zeros(-(-flat.size // per_byte) * per_byte, dtype=np.int64)
    padded[:flat.size] = flat & (2 ** bits - 1)
    lanes = padded.reshape(-1, per_byte) << (np.arange(per_byte, dtype=np.int64) * bits)
    return lanes.sum(axis=1).astype(np.uint8)


def unpack_bits(data: np.ndarray, bits: int, signed: bool, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: the first ``count`` codes as int64."""
    _require(bits in (1, 2, 4, 8), f"unpack_bits: bits {bits}, expected 1, 2, 4 or 8")
    data = np.asarray(data, dtype=np.uint8)
    per_byte = 8 // bits
    _require(data.size * per_byte >= count, f"unpack_bits: {data.size} bytes hold fewer than {count} codes")
    lanes = (data.astype(np.int64)[:, None] >> (np.arange(per_byte, dtype=np.int64) * bits)) & (2 ** bits - 1)
    codes = lanes.reshape(-1)[:count]
    if signed:
        codes = np.where(codes >= 2 ** (bits - 1), codes - 2 ** bits, codes)
    return codes


# -- fixed-point helpers ----------------------------------------------------------------------------------------
def quantize_multiplier(real: float) -> Tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ≈ M·2^(s − 31)`` with |M| in [2^30, 2^31) rounded half
    away from zero (0 gives (0, 0); an exponent below −31 underflows to (0, 0))."""
    if real == 0:
        return 0, 0
    q, s = math.frexp(real)
    m = int(math.copysign(math.floor(abs(q) * 2 ** 31 + 0.5), q))
    if abs(m) == 2 ** 31:
        m //= 2
        s += 1
    if s < MIN_SHIFT:
        return 0, 0
    _require(s <= MAX_SHIFT, f"quantize_multiplier: {real} needs a left shift above {MAX_SHIFT}")
    return m, s


def add_input_range(bits: int) -> Tuple[int, int]:
    """The codes of the conv output ahead of a fused add: int8 or int16."""
    return -2 ** (bits - 1), 2 ** (bits - 1) - 1


def real_multiplier(multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.asarray(multiplier, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)


def srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int64 arrays holding int32 values."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    t = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    q = np.where(t >= 0, t >> 31, -((-t) >> 31))
    return np.where((a == INT32_MIN) & (b == INT32_MIN), np.int64(INT32_MAX), q)


def rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + ((x & mask) > threshold)


def mbqm(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier (module docstring); int64 arrays of int32 values."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    return rdbpot(srdhm(np.asarray(x, dtype=np.int64) << left, multiplier), np.maximum(-shift, 0))


ARITHMETICS = ("fine", "tflite")
ADD_BITS = {"tflite": 8, "fine": 16}  # the conv output ahead of a fused residual add


def _requantize_channel(a: float, c: float, lo: int, hi: int, acc_bound: int,
                        p_max: int) -> Tuple[int, int, int, int, int, int]:
    """(M, s, B, p, lo, hi) of one channel, p as large as int32 and the multiplier's exponent allow,
    at most ``p_max``; a channel whose accumulator cannot move its result by half a code (A = 0, or
    |A|·acc_bound < 1/2) is the constant code of C."""
    room = math.frexp((REQUANT_INPUT_LIMIT - 1) / (acc_bound + (abs(c / a) if a else 0) + 1))[1] - 2
    if a == 0 or abs(a) * acc_bound < 0.5:
        code = min(max(int(np.rint(c)), lo), hi)
        return 0, 0, 0, max(0, min(room, p_max)), code, code
    p = max(0, min(room, math.frexp(abs(a))[1] - MIN_SHIFT - 1, p_max))
    m, s = quantize_multiplier(math.ldexp(a, -p))
    b = int(np.rint(math.ldexp(c / a, p)))
    total = (acc_bound << p) + abs(b)
    _require(total < REQUANT_INPUT_LIMIT and total << max(s, 0) < REQUANT_INPUT_LIMIT,
             f"requantizer: acc + bias (|bias| = {abs(b)}, |acc| up to {acc_bound}) shifted left by {max(s, 0)} "
             f"reaches 2^30 (A={a}, C={c}); the multipliers are too large for the fixed-point epilogue")
    return m, s, b, p, lo, hi


def _channel_rows(A, C, lo, hi, bound, fine: bool):
    """Every channel's constants; "fine" gives the channels one pre-shift, the smallest any of them
    allows, so that an executor loads it once per output (the C kernels do)."""
    def rows(p_max: int):
        return [_requantize_channel(float(A[c]), float(C[c]), int(lo[c]), int(hi[c]), int(bound[c]), p_max)
                for c in range(len(A))]
    if not len(A):
        return [np.zeros(0, np.int64)] * 6
    result = rows(min(r[3] for r in rows(MAX_SHIFT)) if fine else 0)
    return [np.asarray(v, dtype=np.int64) for v in zip(*result)]


def requantizer(A: Sequence[float], C: Sequence[float], R: Optional[Sequence[float]] = None, *,
                lo: Any, hi: Any, acc_bound: Any = REQUANT_INPUT_LIMIT // 4,
                residual_levels: Any = 255, arithmetic: str = "tflite") -> FixedPointEpilogue:
    """Real per-channel multipliers → the fixed-point epilogue that computes
    ``clamp(round(A_c·acc + C_c (+ R_c·q_res)), lo_c, hi_c)`` in int32 arithmetic.

    ``acc_bound`` (per channel, default 2^28) is the largest |acc| the layer can produce
    (validation's bound from the weights and the input levels); ``residual_levels`` the largest
    |q_res|. ``arithmetic``:

    * ``"tflite"``: what TFLite and CMSIS-NN compute for int8: ``M_c, s_c = quantize_multiplier(A_c)``,
      ``B_c = rne(C_c / A_c)`` in accumulator units, no pre-shift; a residual add behind an int8 ``t``.
    * ``"fine"``: the same operations, with the accumulator pre-shifted by as many bits ``p_c`` as
      int32 holds (so ``B_c`` is in units of 2^−p_c and rounding it costs nothing measurable), and an
      int16 ``t`` ahead of a residual add (TFLite's int16 ADD arithmetic). Same instructions, closer
      to the trained network; not what a stock int8 runtime computes.

    With a residual, ``t``'s step ``u`` (in output codes) is ``(max|lo, hi| + max R_c·levels_c) / T``
    over the output, T = 2^(bits − 1) − 1, so that every sum that lands inside the clamp comes from a t
    inside [−T, T]; the add's multipliers follow TFLite's add.cc (``twice_max = 2·max(u, R_c)``,
    ``u / twice_max``, ``R_c / twice_max``, ``twice_max / 2^L``).

    Error: M_c is within 2^−31 relative of A_c/2^p_c; B_c within 1/2 of its exact value, so ``y``
    differs from ``A_c·acc + C_c`` by at most ``|A_c|/2^(p_c+1) + |A_c·acc + C_c|·2^−30 + 1/2`` codes
    before the clamp (the last half from rounding). With a residual, ``t`` adds u/2 and each of the
    add's three roundings at most 2^−L of twice_max. A channel whose accumulator cannot change its
    result by half a code is the constant code of ``C_c``. A multiplier whose left shift would leave
    int32 raises ValueError.
    """
    _require(arithmetic in ARITHMETICS, f"requantizer: arithmetic {arithmetic!r}, expected one of {ARITHMETICS}")
    fine = arithmetic == "fine"
    A = np.asarray(A, dtype=np.float64).reshape(-1)
    n = A.size
    C = np.broadcast_to(np.asarray(C, dtype=np.float64), (n,))
    Rv = None if R is None else np.broadcast_to(np.asarray(R, dtype=np.float64), (n,))
    _require(bool(np.all(np.isfinite(A)) and np.all(np.isfinite(C)) and (Rv is None or np.all(np.isfinite(Rv)))),
             "requantizer: A, C and R must be finite")
    lo = np.broadcast_to(np.asarray(lo, dtype=np.int64), (n,))
    hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), (n,))
    bound = np.broadcast_to(np.asarray(acc_bound, dtype=np.int64), (n,))
    if Rv is None:
        m, s, b, p, l, h = _channel_rows(A, C, lo, hi, bound, fine)
        return FixedPointEpilogue(m, s, b, l, h, acc_shift=p)
    add_bits = ADD_BITS[arithmetic]
    levels = np.broadcast_to(np.asarray(residual_levels, dtype=np.float64), (n,))
    t_lo, t_hi = add_input_range(add_bits)
    u = (max(int(np.abs(lo).max()), int(np.abs(hi).max())) + float((np.abs(Rv) * levels).max())) / t_hi
    m, s, b, p, tl, th = _channel_rows(A / u, C / u, np.full(n, t_lo), np.full(n, t_hi), bound, fine)
    twice_max = 2 * np.maximum(u, np.abs(Rv))
    left_shift = ADD_LEFT_SHIFT[add_bits]
    add = [quantize_multiplier(v) for v in (u / twice_max).tolist()]
    skip = [quantize_multiplier(v) for v in (Rv / twice_max).tolist()]
    out = [quantize_multiplier(v) for v in (twice_max / 2 ** left_shift).tolist()]
    residual = ResidualAdd(tl, th, *(np.asarray(v) for v in zip(*add)), *(np.asarray(v) for v in zip(*skip)),
                           *(np.asarray(v) for v in zip(*out)), left_shift=left_shift)
    return FixedPointEpilogue(m, s, b, lo, hi, residual, acc_shift=p)


# -- validation -----------------------------------------------------------------------------------------------
def _validate(net: IntegerNetwork) -> None:
    _require(len(net.input_shape) == 3 and all(v >= 1 for v in net.input_shape),
             f"network.input_shape {net.input_shape}: expected (C, H, W), all >= 1")
    buffers: Dict[str, Buffer] = {}
    for i, b in enumerate(net.buffers):
        where = f"buffers[{i}] ({b.name!r})"
        _require(isinstance(b.name, str) and b.name != "", f"buffers[{i}]: name must be a non-empty string")
        _require(b.name not in buffers, f"{where}: duplicate buffer name")
        _require(0 <= b.channels[0] < b.channels[1], f"{where}: channels {b.channels}, expected 0 <= b0 < b1")
        _require(b.height >= 1 and b.width >= 1, f"{where}: height and width must be >= 1")
        b.format.check(where)
        buffers[b.name] = b
    _require(len(net.ops) >= 2, "network.ops: expected a Quantize op followed by at least one layer")
    _require(isinstance(net.ops[0], Quantize), "network.ops[0]: the first op must be Quantize")
    _require(net.output in buffers, f"network.output: no buffer named {net.output!r}")
    _require(buffers[net.output].format == FP32, f"network.output {net.output!r}: must be an fp32 buffer")

    written = {name: np.zeros(b.num_channels, dtype=bool) for name, b in buffers.items()}
    read = set()

    def buffer_of(name: str, where: str) -> Buffer:
        _require(name in buffers, f"{where}: no buffer named {name!r}")
        return buffers[name]

    def mark_read(name: str, first: int, count: int, where: str) -> None:
        b = buffers[name]
        _require(0 <= first and first + count <= b.num_channels,
                 f"{where}: reads channels [{first}, {first + count}) of buffer {name!r}, which has {b.num_channels}")
        _require(bool(written[name][first:first + count].all()),
                 f"{where}: reads channels of buffer {name!r} that no earlier op has written")
        read.add(name)

    def mark_written(name: str, first: int, count: int, where: str) -> None:
        b = buffers[name]
        _require(0 <= first and first + count <= b.num_channels,
                 f"{where}: writes channels [{first}, {first + count}) of buffer {name!r}, which has {b.num_channels}")
        _require(not written[name][first:first + count].any(),
                 f"{where}: writes channels of buffer {name!r} that another output already wrote")
        written[name][first:first + count] = True

    for index, op in enumerate(net.ops):
        where = op_label(index, op)
        _require(index == 0 or not isinstance(op, Quantize), f"{where}: Quantize may only be the first op")
        _require(not set(op.reads()) & set(op.writes()), f"{where}: reads and writes the same buffer")
        if isinstance(op, Quantize):
            _validate_quantize(op, net.input_shape, buffer_of, mark_written, where)
        elif isinstance(op, ConvPart):
            _validate_conv(op, buffer_of, mark_read, mark_written, where)
        elif isinstance(op, GlobalAvgPool):
            src, dst = buffer_of(op.input, where), buffer_of(op.output, where)
            mark_read(op.input, 0, src.num_channels, where)
            _require(dst.format == src.format,
                     f"{where}: output format {dst.format} differs from input format {src.format}")
            _require(dst.num_channels == src.num_channels and dst.height == 1 and dst.width == 1,
                     f"{where}: output buffer must have the input's {src.num_channels} channels at 1x1")
            _require(not src.format.is_int or src.height * src.width * src.format.levels < ACCUMULATOR_LIMIT,
                     f"{where}: the int sum over {src.height}x{src.width} positions may overflow int32")
            mark_written(op.output, 0, dst.num_channels, where)
        else:
            raise ValueError(f"network.ops[{index}]: unknown op type {type(op).__name__}")

    for name, mask in written.items():
        _require(bool(mask.all()), f"buffer {name!r}: channels {np.flatnonzero(~mask).tolist()[:8]} are never written")
        _require(name in read or name == net.output, f"buffer {name!r}: written but never read")
    _require(net.output not in read, f"network.output {net.output!r}: the output buffer may not be read by an op")
    _validate_layers(net)
    if net.arena_bytes is not None or any(b.offset is not None for b in net.buffers):
        arena.check_plan(net)


def _validate_quantize(op: Quantize, input_shape, buffer_of, mark_written, where: str) -> None:
    _require(len(op.outputs) >= 1, f"{where}: no outputs")
    c, h, w = input_shape
    for j, out in enumerate(op.outputs):
        at = f"{where}.outputs[{j}]"
        b = buffer_of(out.buffer, at)
        _require(b.height == h and b.width == w, f"{at}: buffer {b.name!r} is {b.height}x{b.width}, the input {h}x{w}")
        _require(b.channels[1] <= c, f"{at}: buffer {b.name!r} holds input channels {b.channels}, the input has {c}")
        _require((out.to_int is not None) == b.format.is_int,
                 f"{at}: to_int is required for int buffers and only for them")
        if out.to_int is not None:
            out.to_int.check(b.format, at)
        mark_written(out.buffer, 0, b.num_channels, at)


def _weight_code_range(bits: int, grid: str) -> Tuple[int, int]:
    return (0, 2 ** bits - 1) if grid == "dorefa" else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)


def _validate_conv(op: ConvPart, buffer_of, mark_read, mark_written, where: str) -> None:
    _require(op.compute in FORMAT_KINDS, f"{where}: compute {op.compute!r}, expected one of {FORMAT_KINDS}")
    w = op.weights
    _require(w.ndim == 4 and min(w.shape) >= 1, f"{where}: weights shape {w.shape}, expected (out, in/groups, kh, kw)")
    _require(op.groups >= 1 and op.out_channels % op.groups == 0,
             f"{where}: groups {op.groups} must divide the {op.out_channels} output channels")
    _require(min(op.stride) >= 1 and min(op.padding) >= 0, f"{where}: stride must be >= 1 and padding >= 0")
    _require(op.padding[0] < op.kernel[0] and op.padding[1] < op.kernel[1],
             f"{where}: padding {op.padding} must be smaller than the kernel {op.kernel}")
    src = buffer_of(op.input.buffer, f"{where}.input")
    _require(op.input.channels == op.in_channels,
             f"{where}.input: slice of {op.input.channels} channels, the weights need groups·in/groups = "
             f"{op.in_channels}")
    mark_read(op.input.buffer, op.input.offset, op.input.channels, f"{where}.input")
    _require(src.format.kind == op.compute,
             f"{where}: {op.compute} compute needs a {op.compute} input buffer, {src.name!r} is {src.format.kind}")
    out_h, out_w = op.output_size(src.height, src.width)
    _require(out_h >= 1 and out_w >= 1, f"{where}: a {src.height}x{src.width} input gives no output positions")

    if op.compute == "int":
        _require(op.weight_bits in INT_BITS, f"{where}: weight_bits {op.weight_bits}, expected one of {INT_BITS}")
        _require(op.weight_grid in WEIGHT_GRIDS,
                 f"{where}: weight_grid {op.weight_grid!r}, expected one of {WEIGHT_GRIDS}")
        lo, hi = _weight_code_range(op.weight_bits, op.weight_grid)
        _require(int(w.min()) >= lo and int(w.max()) <= hi,
                 f"{where}: {op.weight_grid} {op.weight_bits}-bit weight codes must lie in [{lo}, {hi}]")
        levels = src.format.levels
        k = op.reduction_size
        acc_bound = accumulator_bounds(w, op.weight_bits, op.weight_grid, levels)
        _require(int(acc_bound.max()) < ACCUMULATOR_LIMIT,
                 f"{where}: |acc| may reach 2^31 (fan-in {k}, input levels {levels})")
        if op.weight_grid == "dorefa":
            u_sum = w.astype(np.int64).reshape(op.out_channels, -1).sum(axis=1)
            _require(int(2 * levels * u_sum.max()) < ACCUMULATOR_LIMIT
                     and (2 ** op.weight_bits - 1) * k * levels < ACCUMULATOR_LIMIT,
                     f"{where}: the dorefa sums 2·Σq·u and L_w·Σq may reach 2^31 (fan-in {k})")
    else:
        _require((op.weight_bits, op.weight_grid) == (0, ""),
                 f"{where}: weight_bits/weight_grid are for int compute only")
        _require(bool(np.all(np.isfinite(w.astype(np.float32)))), f"{where}: weights must be finite")
        acc_bound = None

    if op.activation is not None:
        a_lo, a_hi = op.activation
        _require(not (math.isnan(a_lo) or math.isnan(a_hi)) and a_lo <= a_hi,
                 f"{where}: activation needs act_lo <= act_hi, got {op.activation}")

    res_levels = np.zeros(op.out_channels, dtype=np.int64)
    residual_all_int = True
    covered = 0
    for j, seg in enumerate(op.residual):
        at = f"{where}.residual[{j}]"
        rb = buffer_of(seg.buffer, at)
        _require(seg.channels >= 1, f"{at}: channels must be >= 1")
        _require((rb.height, rb.width) == (out_h, out_w),
                 f"{at}: residual buffer {rb.name!r} is {rb.height}x{rb.width}, the output {out_h}x{out_w}")
        mark_read(seg.buffer, seg.offset, seg.channels, at)
        _require(covered + seg.channels <= op.out_channels,
                 f"{at}: residual segments exceed the {op.out_channels} output channels")
        res_levels[covered:covered + seg.channels] = rb.format.levels
        residual_all_int &= rb.format.is_int
        covered += seg.channels
    _require(not op.residual or covered == op.out_channels,
             f"{where}: residual segments cover {covered} of the {op.out_channels} output channels")

    _require(len(op.outputs) >= 1, f"{where}: no outputs")
    part_covered = np.zeros(op.out_channels, dtype=bool)
    for j, out in enumerate(op.outputs):
        at = f"{where}.outputs[{j}]"
        ob = buffer_of(out.buffer, at)
        o0, o1 = out.part_channels
        _require(0 <= o0 < o1 <= op.out_channels,
                 f"{at}: part_channels {out.part_channels} outside [0, {op.out_channels})")
        _require((ob.height, ob.width) == (out_h, out_w),
                 f"{at}: buffer {ob.name!r} is {ob.height}x{ob.width}, the part computes {out_h}x{out_w}")
        part_covered[o0:o1] = True
        mark_written(out.buffer, out.channel_offset, o1 - o0, at)
        fixed = op.compute == "int" and ob.format.is_int and residual_all_int
        ep = out.epilogue
        n = o1 - o0
        if fixed:
            _require(isinstance(ep, FixedPointEpilogue),
                     f"{at}: int compute into int buffer {ob.name!r} needs a FixedPointEpilogue")
            _validate_fixed_point(op, ep, n, ob.format, acc_bound[o0:o1], res_levels[o0:o1], at)
        else:
            _require(isinstance(ep, FloatEpilogue),
                     f"{at}: {op.compute} compute into {ob.format.kind} buffer {ob.name!r} needs a FloatEpilogue")
            _require(ep.scale.shape == (n,) and ep.offset.shape == (n,), f"{at}: scale and offset need {n} values")
            _require(bool(np.all(np.isfinite(ep.scale)) and np.all(np.isfinite(ep.offset))),
                     f"{at}: scale and offset must be finite")
            _require((ep.to_int is not None) == ob.format.is_int,
                     f"{at}: to_int is required for int buffers and only for them")
            if ep.to_int is not None:
                ep.to_int.check(ob.format, at)
    _require(bool(part_covered.all()),
             f"{where}: output channels {np.flatnonzero(~part_covered).tolist()[:8]} go to no buffer")


def _validate_fixed_point(op: ConvPart, ep: FixedPointEpilogue, n: int, fmt: Format, acc_bound: np.ndarray,
                          res_levels: np.ndarray, at: str) -> None:
    arrays = [ep.multiplier, ep.shift, ep.bias, ep.lo, ep.hi]
    _require(all(a.shape == (n,) for a in arrays), f"{at}: fixed-point constants need {n} values each")
    _require((ep.residual is not None) == bool(op.residual),
             f"{at}: the residual add's constants are required with a residual and only then")
    _require(not (op.residual and op.activation is not None),
             f"{at}: an activation before the residual add cannot be folded into a fixed-point clamp")
    _require(bool(np.all((ep.shift >= MIN_SHIFT) & (ep.shift <= MAX_SHIFT))),
             f"{at}: shifts must lie in {MIN_SHIFT}..{MAX_SHIFT}")
    code_lo, code_hi = fmt.code_range
    _require(bool(np.all((code_lo <= ep.lo) & (ep.lo <= ep.hi) & (ep.hi <= code_hi))),
             f"{at}: clamp codes must satisfy {code_lo} <= lo <= hi <= {code_hi}")
    _require(ep.acc_shift.shape == (n,) and bool(np.all((ep.acc_shift >= 0) & (ep.acc_shift <= MAX_SHIFT))),
             f"{at}: acc_shift needs {n} values in 0..{MAX_SHIFT}")
    total = (acc_bound.astype(np.int64) << ep.acc_shift.astype(np.int64)) + np.abs(ep.bias.astype(np.int64))
    total = np.where(total < REQUANT_INPUT_LIMIT, total << np.maximum(ep.shift, 0).astype(np.int64), total)
    bad = np.flatnonzero(total >= REQUANT_INPUT_LIMIT)
    _require(bad.size == 0, f"{at}: channel {bad[0] if bad.size else 0}: acc·2^p + bias shifted left may reach 2^30")
    if ep.residual is None:
        return
    r = ep.residual
    _require(all(getattr(r, name).shape == (n,) for name in r.FIELDS), f"{at}: residual add constants need {n} values")
    for name in ("t_shift", "skip_shift", "output_shift"):
        _require(bool(np.all((getattr(r, name) >= MIN_SHIFT) & (getattr(r, name) <= 0))),
                 f"{at}: residual {name} must lie in {MIN_SHIFT}..0")
    bits = r.t_bits
    _require(bits is not None, f"{at}: residual left_shift {r.left_shift}, expected one of "
                               f"{tuple(ADD_LEFT_SHIFT.values())} (TFLite's int8 and int16 ADD)")
    t_lo, t_hi = add_input_range(bits)
    _require(bool(np.all((t_lo <= r.t_lo) & (r.t_lo <= r.t_hi) & (r.t_hi <= t_hi))),
             f"{at}: the conv output ahead of the residual add must be int{bits} codes (t_lo <= t_hi)")
    _require(bool(np.all((r.t_multiplier >= 0) & (r.skip_multiplier >= 0) & (r.output_multiplier >= 0))),
             f"{at}: the residual add's multipliers must be >= 0")
    _require(int(res_levels.max(initial=0)) << r.left_shift < ACCUMULATOR_LIMIT,
             f"{at}: residual codes shifted left by {r.left_shift} may leave int32")


def _validate_layers(net: IntegerNetwork) -> None:
    """Parts of one layer must share its geometry and partition its output channels."""
    layers: Dict[str, List[ConvPart]] = {}
    for op in net.ops:
        if isinstance(op, ConvPart):
            layers.setdefault(op.layer, []).append(op)
    for name, parts in layers.items():
        ranges = sorted(p.layer_channels for p in parts)
        for p in parts:
            _require(p.layer_channels[1] - p.layer_channels[0] == p.out_channels,
                     f"layer {name!r}: part {p.name!r} has layer_channels {p.layer_channels} but "
                     f"{p.out_channels} output channels")
            _require((p.kernel, p.stride, p.padding) == (parts[0].kernel, parts[0].stride, parts[0].padding),
                     f"layer {name!r}: parts {parts[0].name!r} and {p.name!r} differ in kernel, stride or padding")
        _require(ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])),
                 f"layer {name!r}: part channel ranges {ranges} do not partition [0, C_out)")


# -- JSON -------------------------------------------------------------------------------------------------------
_ARRAY_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32")


def _encode_array(a: np.ndarray, packed_bits: Optional[int] = None, signed: bool = False) -> Dict[str, Any]:
    a = np.asarray(a)
    if packed_bits is not None:
        raw = pack_bits(a, packed_bits, signed)
        return {"dtype": a.dtype.name, "shape": list(a.shape), "packed_bits": packed_bits, "signed": signed,
                "data": base64.b64encode(raw.tobytes()).decode("ascii")}
    _require(a.dtype.name in _ARRAY_DTYPES, f"JSON: cannot store arrays of {a.dtype}")
    raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(raw).decode("ascii")}


def _decode_array(d: Any, where: str) -> np.ndarray:
    _require(isinstance(d, dict) and {"dtype", "shape", "data"} <= set(d), f"{where}: expected an array object")
    _require(d["dtype"] in _ARRAY_DTYPES, f"{where}: dtype {d['dtype']!r}, expected one of {_ARRAY_DTYPES}")
    shape = tuple(int(v) for v in d["shape"])
    count = int(np.prod(shape)) if shape else 1
    try:
        raw = base64.b64decode(d["data"], validate=True)
    except (ValueError, TypeError):
        raise ValueError(f"{where}: data is not base64") from None
    if "packed_bits" in d:
        bits = int(d["packed_bits"])
        _require(bits in (1, 2, 4, 8), f"{where}: packed_bits {bits}, expected 1, 2, 4 or 8")
        _require(len(raw) == -(-count * bits // 8), f"{where}: {len(raw)} bytes do not hold {count} {bits}-bit codes")
        codes = unpack_bits(np.frombuffer(raw, dtype=np.uint8), bits, bool(d["signed"]), count)
        return codes.astype(d["dtype"]).reshape(shape)
    dtype = np.dtype(d["dtype"]).newbyteorder("<")
    _require(len(raw) == count * dtype.itemsize, f"{where}: {len(raw)} bytes do not hold {count} {d['dtype']} values")
    return np.frombuffer(raw, dtype=dtype).astype(d["dtype"]).reshape(shape)


def _encode_scalar(x: float) -> Union[float, str]:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _decode_scalar(x: Any, where: str) -> float:
    if x in ("inf", "-inf"):
        return float(x)
    _require(isinstance(x, (int, float)) and not isinstance(x, bool), f"{where}: expected a number")
    return float(x)


def _format_to_dict(f: Format) -> Dict[str, Any]:
    if not f.is_int:
        return {"kind": f.kind}
    return {"kind": "int", "bits": f.bits, "signed": f.signed, "levels": f.levels, "scale": f.scale}


def _to_int_to_dict(t: Optional[FloatToInt]) -> Optional[Dict[str, Any]]:
    if t is None:
        return None
    return {"lo_r": t.lo_r, "hi_r": t.hi_r, "inv_scale": t.inv_scale, "lo": t.lo, "hi": t.hi}


def _slice_to_dict(s: ChannelSlice) -> Dict[str, Any]:
    return {"buffer": s.buffer, "offset": s.offset, "channels": s.channels}


def _epilogue_to_dict(e: Epilogue) -> Dict[str, Any]:
    if isinstance(e, FixedPointEpilogue):
        d = {"kind": e.kind, "multiplier": _encode_array(e.multiplier), "shift": _encode_array(e.shift),
             "bias": _encode_array(e.bias), "acc_shift": _encode_array(e.acc_shift), "lo": _encode_array(e.lo),
             "hi": _encode_array(e.hi)}
        if e.residual is not None:
            d["residual"] = {name: _encode_array(getattr(e.residual, name)) for name in e.residual.FIELDS}
            d["residual"]["left_shift"] = e.residual.left_shift
        return d
    return {"kind": e.kind, "scale": _encode_array(e.scale), "offset": _encode_array(e.offset),
            "to_int": _to_int_to_dict(e.to_int)}


def _op_to_dict(op: Op) -> Dict[str, Any]:
    if isinstance(op, Quantize):
        return {"op": "quantize", "name": op.name,
                "outputs": [{"buffer": o.buffer, "to_int": _to_int_to_dict(o.to_int)} for o in op.outputs]}
    if isinstance(op, GlobalAvgPool):
        return {"op": "global_avg_pool", "name": op.name, "input": op.input, "output": op.output}
    packed = op.weight_bits if op.compute == "int" else None
    return {
        "op": "conv", "name": op.name, "layer": op.layer, "layer_channels": list(op.layer_channels),
        "compute": op.compute, "input": _slice_to_dict(op.input),
        "weights": _encode_array(op.weights, packed, op.weight_grid == "symmetric"),
        "weight_bits": op.weight_bits, "weight_grid": op.weight_grid,
        "stride": list(op.stride), "padding": list(op.padding), "groups": op.groups,
        "activation": None if op.activation is None else [_encode_scalar(v) for v in op.activation],
        "residual": [_slice_to_dict(s) for s in op.residual],
        "outputs": [{"buffer": o.buffer, "channel_offset": o.channel_offset, "part_channels": list(o.part_channels),
                     "epilogue": _epilogue_to_dict(o.epilogue)} for o in op.outputs],
    }


def _network_to_dict(net: IntegerNetwork) -> Dict[str, Any]:
    return {
        "schema": SCHEMA,
        "input_shape": list(net.input_shape),
        "output": net.output,
        "arena_bytes": net.arena_bytes,
        "metadata": net.metadata,
        "buffers": [{"name": b.name, "tensor": b.tensor, "channels": list(b.channels), "height": b.height,
                     "width": b.width, "format": _format_to_dict(b.format), "offset": b.offset} for b in net.buffers],
        "ops": [_op_to_dict(op) for op in net.ops],
    }


def _get(d: Any, key: str, where: str) -> Any:
    _require(isinstance(d, dict), f"{where}: expected an object")
    _require(key in d, f"{where}: missing field {key!r}")
    return d[key]


def _format_from_dict(d: Any, where: str) -> Format:
    kind = _get(d, "kind", where)
    if kind != "int":
        return Format(kind)
    return Format("int", int(_get(d, "bits", where)), bool(_get(d, "signed", where)), int(_get(d, "levels", where)),
                  _decode_scalar(_get(d, "scale", where), f"{where}.scale"))


def _to_int_from_dict(d: Any, where: str) -> Optional[FloatToInt]:
    if d is None:
        return None
    return FloatToInt(*(_decode_scalar(_get(d, k, where), f"{where}.{k}") for k in ("lo_r", "hi_r", "inv_scale")),
                      int(_get(d, "lo", where)), int(_get(d, "hi", where)))


def _slice_from_dict(d: Any, where: str) -> ChannelSlice:
    return ChannelSlice(str(_get(d, "buffer", where)), int(_get(d, "offset", where)), int(_get(d, "channels", where)))


def _epilogue_from_dict(d: Any, where: str) -> Epilogue:
    kind = _get(d, "kind", where)
    arr = lambda key: _decode_array(_get(d, key, where), f"{where}.{key}")  # noqa: E731
    if kind == "fixed_point":
        res = None
        if d.get("residual") is not None:
            r = d["residual"]
            res = ResidualAdd(*(_decode_array(_get(r, name, f"{where}.residual"), f"{where}.residual.{name}")
                                for name in ResidualAdd.FIELDS), left_shift=int(_get(r, "left_shift", f"{where}.residual")))
        return FixedPointEpilogue(arr("multiplier"), arr("shift"), arr("bias"), arr("lo"), arr("hi"), res,
                                  arr("acc_shift"))
    _require(kind == "float", f"{where}.kind: {kind!r}, expected 'fixed_point' or 'float'")
    return FloatEpilogue(arr("scale"), arr("offset"), _to_int_from_dict(_get(d, "to_int", where), f"{where}.to_int"))


def _op_from_dict(d: Any, where: str) -> Op:
    kind = _get(d, "op", where)
    name = str(_get(d, "name", where))
    if kind == "quantize":
        outs = _get(d, "outputs", where)
        return Quantize(name, [QuantizeOutput(str(_get(o, "buffer", f"{where}.outputs[{j}]")),
                                              _to_int_from_dict(_get(o, "to_int", f"{where}.outputs[{j}]"),
                                                                f"{where}.outputs[{j}].to_int"))
                               for j, o in enumerate(outs)])
    if kind == "global_avg_pool":
        return GlobalAvgPool(name, str(_get(d, "input", where)), str(_get(d, "output", where)))
    _require(kind == "conv", f"{where}.op: {kind!r}, expected 'quantize', 'conv' or 'global_avg_pool'")
    act = _get(d, "activation", where)
    outputs = []
    for j, o in enumerate(_get(d, "outputs", where)):
        at = f"{where}.outputs[{j}]"
        outputs.append(PartOutput(str(_get(o, "buffer", at)), int(_get(o, "channel_offset", at)),
                                  tuple(_get(o, "part_channels", at)),
                                  _epilogue_from_dict(_get(o, "epilogue", at), f"{at}.epilogue")))
    return ConvPart(
        name=name, compute=str(_get(d, "compute", where)),
        input=_slice_from_dict(_get(d, "input", where), f"{where}.input"),
        weights=_decode_array(_get(d, "weights", where), f"{where}.weights"),
        outputs=outputs, stride=tuple(_get(d, "stride", where)), padding=tuple(_get(d, "padding", where)),
        groups=int(_get(d, "groups", where)), weight_bits=int(_get(d, "weight_bits", where)),
        weight_grid=str(_get(d, "weight_grid", where)),
        activation=None if act is None else tuple(_decode_scalar(v, f"{where}.activation") for v in act),
        residual=[_slice_from_dict(s, f"{where}.residual[{j}]") for j, s in enumerate(_get(d, "residual", where))],
        layer=str(_get(d, "layer", where)), layer_channels=tuple(_get(d, "layer_channels", where)))


def _network_from_dict(d: Any) -> IntegerNetwork:
    where = "integer network JSON"
    schema = _get(d, "schema", where)
    _require(schema == SCHEMA, f"{where}: schema {schema!r}, expected {SCHEMA!r}")
    buffers = []
    for i, b in enumerate(_get(d, "buffers", where)):
        at = f"{where}.buffers[{i}]"
        offset = _get(b, "offset", at)
        buffers.append(Buffer(str(_get(b, "name", at)), str(_get(b, "tensor", at)), tuple(_get(b, "channels", at)),
                              int(_get(b, "height", at)), int(_get(b, "width", at)),
                              _format_from_dict(_get(b, "format", at), f"{at}.format"),
                              None if offset is None else int(offset)))
    ops = [_op_from_dict(o, f"{where}.ops[{i}]") for i, o in enumerate(_get(d, "ops", where))]
    arena_bytes = _get(d, "arena_bytes", where)
    metadata = _get(d, "metadata", where)
    _require(isinstance(metadata, dict), f"{where}.metadata: expected an object")
    return IntegerNetwork(tuple(_get(d, "input_shape", where)), buffers, ops, str(_get(d, "output", where)),
                          None if arena_bytes is None else int(arena_bytes), metadata)
