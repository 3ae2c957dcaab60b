"""The integer network (``deploy/ir.py``) as an ONNX QDQ model: what stock tools (onnxruntime, Netron, the
vendors' converters) read, written with the ``onnx`` helpers (``torch.onnx`` refuses fake-quant ranges
other than 8-bit).

It is the same folded graph the C export compiles (``deploy/build.py``): BatchNorm already in each
layer's per-channel multiplier and bias, residual adds in the epilogue of the layer before them, one
tensor per IR buffer. How the IR's pieces become ONNX:

* **int buffers** (PACT codes at 8/4/2 bits) are ``QuantizeLinear`` outputs in **int8 containers** with
  the buffer's scale: signed codes with zero point 0, unsigned ones (0..2^k − 1, up to 255) with zero
  point −128 so they fit int8. A Clip to the codes the IR allows comes first, since at 4 and 2 bits
  QuantizeLinear would only saturate at the container's range. Readers dequantize.
* **int layers** read ``DequantizeLinear(weights)`` stored at their **real bit width** (INT8, INT4, INT2;
  signed, zero point 0, per-output-channel scale on axis 0) and carry the layer's bias as a float
  Conv bias. Only the symmetric grid fits: its codes −M..M (M = 2^(k−1) − 1) are a k-bit signed type's.
  The per-channel scale is the layer's whole real multiplier divided by the input's step, so the Conv
  output is the epilogue's ``A·acc + C``; a negative multiplier (a BatchNorm with negative gain) flips
  the channel's codes instead, because some converters take only positive scales.
* **fp16 layers** hold float16 weights and tensors, ``Cast`` to float32 where they are computed (the
  IR accumulates half inputs in float32); **fp32 layers** are plain.
* DoReFa-grid layers are refused (``NotExportable``): their odd levels 2u − (2^k − 1) have no zero and
  need k + 1 signed bits, so a k-bit QDQ type cannot hold them; the C export runs them.

The opset is 21 (INT4 in Q/DQ) or 25 when an INT2 layer is present (INT2 came with opset 25). ONNX
Runtime requantises in float, not in the IR's fixed point, so its codes may land one LSB from the
reference's at a rounding boundary (the int pool's exact ties among them, which the IR sends to even);
run it with graph optimisation disabled (``ort_session``), since its
optimiser rewrites DequantizeLinear → MatMul into ``MatMulNBits`` and changes the numbers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploy.ir import Buffer, ConvPart, FixedPointEpilogue, GlobalAvgPool, IntegerNetwork, Quantize, code_bounds

OPSET = 21             # INT4/UINT4 in QuantizeLinear / DequantizeLinear
OPSET_INT2 = 25        # INT2/UINT2
IR_VERSION = {OPSET: 10, OPSET_INT2: 11}
WEIGHT_TYPES = {8: TensorProto.INT8, 4: TensorProto.INT4, 2: TensorProto.INT2}
PRODUCER = "adaptqnet"
INPUT, OUTPUT = "input", "logits"
BATCH = "N"


class NotExportable(ValueError):
    """The integer network holds something an ONNX QDQ model cannot store exactly."""


def check_exportable(network: IntegerNetwork) -> None:
    """NotExportable naming the first integer layer whose weights are not on the symmetric grid."""
    for op in network.ops:
        if isinstance(op, ConvPart) and op.compute == "int" and op.weight_grid != "symmetric":
            raise NotExportable(
                f"layer {op.layer}: its int{op.weight_bits} weights are on the {op.weight_grid} grid (odd levels "
                f"2u-(2^k-1), no zero: k+1 signed bits), which no {op.weight_bits}-bit ONNX QDQ type holds; train "
                f"with --weight_grid symmetric, or export it with deploy/export_c.py")


def opset_for(network: IntegerNetwork) -> int:
    return OPSET_INT2 if any(isinstance(op, ConvPart) and op.compute == "int" and op.weight_bits == 2
                             for op in network.ops) else OPSET


def zero_point(fmt) -> int:
    """The int8 container's zero point: unsigned PACT codes 0..255 only fit int8 shifted by 128."""
    return 0 if fmt.signed else -128


def clamp_codes(to_int, channels: int) -> Tuple[np.ndarray, np.ndarray]:
    """The codes a FloatToInt's clamp bounds round to (``ir.code_bounds``), one per channel."""
    lo, hi = code_bounds(to_int.lo_r, to_int.hi_r, to_int.inv_scale, to_int.lo, to_int.hi)
    return np.full(channels, lo, np.int64), np.full(channels, hi, np.int64)


class _Graph:
    """Nodes and initializers, with the network's buffers as ONNX tensors."""

    def __init__(self, network: IntegerNetwork):
        self.net = network
        self.buffers: Dict[str, Buffer] = network.buffer_map
        self.nodes: List[onnx.NodeProto] = []
        self.initializers: List[onnx.TensorProto] = []
        self.pieces: Dict[str, List[Tuple[int, str]]] = {}   # buffer → (first channel, stored tensor)
        self.stored: Dict[str, str] = {}                     # buffer → its whole stored tensor
        self.reals: Dict[str, str] = {}                      # buffer → its float32 value
        self.format_constants: Dict[str, Tuple[str, str]] = {}  # one (scale, zero point) per int format
        self._names: Dict[str, int] = {}

    # -- naming and constants ----------------------------------------------------------------------
    def name(self, base: str) -> str:
        base = base.replace(" ", "_")
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}__{n}"

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: Sequence[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def scale_zp(self, fmt) -> Tuple[str, str]:
        key = f"{fmt.bits}{'s' if fmt.signed else 'u'}_{fmt.scale!r}"
        if key not in self.format_constants:
            self.format_constants[key] = (self.const(f"scale_{key}", np.float32(fmt.scale)),
                                          self.const(f"zp_{key}", np.int8(zero_point(fmt))))
        return self.format_constants[key]

    # -- channel slices --------------------------------------------------------------------------------
    def slice(self, tensor: str, first: int, count: int, total: int, base: str) -> str:
        if first == 0 and count == total:
            return tensor
        return self.node("Slice", [tensor, self.const("starts", np.array([first], np.int64)),
                                   self.const("ends", np.array([first + count], np.int64)),
                                   self.const("axes", np.array([1], np.int64))], base)

    # -- buffers ---------------------------------------------------------------------------------------
    def store(self, buffer: str, z: str, channel_offset: int, lo: np.ndarray, hi: np.ndarray, base: str) -> None:
        """Write the float32 values ``z`` into the buffer's channels from ``channel_offset``: quantized
        to the codes [lo, hi] (per channel) for int buffers, rounded to half for fp16."""
        fmt = self.buffers[buffer].format
        if fmt.is_int:
            lo_r, hi_r = np.float32(lo * fmt.scale), np.float32(hi * fmt.scale)
            if np.all(lo_r == lo_r[0]) and np.all(hi_r == hi_r[0]):
                z = self.node("Clip", [z, self.const("lo", lo_r[0]), self.const("hi", hi_r[0])], f"{base}.clip")
            else:
                shape = (1, -1, 1, 1)
                z = self.node("Max", [z, self.const("lo", lo_r.reshape(shape))], f"{base}.lo")
                z = self.node("Min", [z, self.const("hi", hi_r.reshape(shape))], f"{base}.hi")
            scale, zp = self.scale_zp(fmt)
            z = self.node("QuantizeLinear", [z, scale, zp], f"{base}.q")
        elif fmt.kind == "fp16":
            z = self.node("Cast", [z], f"{base}.half", to=TensorProto.FLOAT16)
        self.pieces.setdefault(buffer, []).append((channel_offset, z))

    def stored_tensor(self, buffer: str) -> str:
        """The buffer's whole stored tensor (int8 codes, float16 or float32), its pieces joined."""
        if buffer not in self.stored:
            pieces = sorted(self.pieces[buffer])
            self.stored[buffer] = pieces[0][1] if len(pieces) == 1 else self.node(
                "Concat", [t for _, t in pieces], f"{buffer}.concat", axis=1)
        return self.stored[buffer]

    def real(self, buffer: str) -> str:
        """The buffer's float32 values (int: dequantized codes; fp16: widened)."""
        if buffer not in self.reals:
            fmt, stored = self.buffers[buffer].format, self.stored_tensor(buffer)
            if fmt.is_int:
                scale, zp = self.scale_zp(fmt)
                self.reals[buffer] = self.node("DequantizeLinear", [stored, scale, zp], f"{buffer}.dq")
            elif fmt.kind == "fp16":
                self.reals[buffer] = self.node("Cast", [stored], f"{buffer}.float", to=TensorProto.FLOAT)
            else:
                self.reals[buffer] = stored
        return self.reals[buffer]

    def code_range(self, buffer: str, channels: int) -> Tuple[np.ndarray, np.ndarray]:
        lo, hi = self.buffers[buffer].format.code_range if self.buffers[buffer].format.is_int else (0, 0)
        return np.full(channels, lo, np.int64), np.full(channels, hi, np.int64)

    # -- ops ---------------------------------------------------------------------------------------------
    def quantize(self, op: Quantize) -> None:
        for out in op.outputs:
            b = self.buffers[out.buffer]
            x = self.slice(INPUT, b.channels[0], b.num_channels, self.net.input_shape[0], f"{b.name}.in")
            lo, hi = self.code_range(b.name, b.num_channels)
            if out.to_int is not None:
                lo, hi = clamp_codes(out.to_int, b.num_channels)
            self.store(b.name, x, 0, lo, hi, b.name)

    def _multipliers(self, part: ConvPart) -> Tuple[np.ndarray, np.ndarray]:
        """Per part channel the real y = A·acc + C the epilogues compute (the first output a channel goes
        to decides; copies in other formats differ only by their constants' rounding)."""
        A = np.full(part.out_channels, np.nan)
        C = np.zeros(part.out_channels)
        for out in part.outputs:
            o0, o1 = out.part_channels
            ep = out.epilogue
            if isinstance(ep, FixedPointEpilogue):
                a, c = (v * self.buffers[out.buffer].format.scale for v in ep.affine())
            else:
                a, c = ep.scale.astype(np.float64), ep.offset.astype(np.float64)
            todo = np.isnan(A[o0:o1])
            A[o0:o1][todo], C[o0:o1][todo] = a[todo], c[todo]
        return A, C

    def conv(self, part: ConvPart) -> None:
        src = self.buffers[part.input.buffer]
        x = self.slice(self.real(src.name), part.input.offset, part.input.channels, src.num_channels,
                       f"{part.name}.x")
        A, C = self._multipliers(part)
        attrs = dict(strides=list(part.stride), pads=[part.padding[0], part.padding[1]] * 2, group=part.groups,
                     kernel_shape=list(part.kernel))
        if part.compute == "int":
            # acc·A = Σ (q·step)(c·A/step): A folds into the weights' per-channel scale
            step = src.format.scale
            sign = np.where(A < 0, -1, 1)
            codes = part.weights.astype(np.int8) * sign.reshape(-1, 1, 1, 1).astype(np.int8)
            scale = np.abs(A) / step
            codes[scale == 0] = 0
            scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
            w = self.name(f"{part.name}.w_int{part.weight_bits}")
            self.initializers.append(helper.make_tensor(w, WEIGHT_TYPES[part.weight_bits], codes.shape,
                                                        codes.flatten().tolist()))
            self.initializers[-1].doc_string = (f"{part.weight_bits}-bit symmetric weight codes of {part.layer} "
                                                f"channels {list(part.layer_channels)}")
            zp = self.name(f"{part.name}.w_zp")
            self.initializers.append(helper.make_tensor(zp, WEIGHT_TYPES[part.weight_bits], [part.out_channels],
                                                        [0] * part.out_channels))
            wf = self.node("DequantizeLinear", [w, self.const(f"{part.name}.w_scale", scale), zp],
                           f"{part.name}.w", axis=0)
            y = self.node("Conv", [x, wf, self.const(f"{part.name}.bias", C.astype(np.float32))],
                          f"{part.name}.conv", **attrs)
        else:
            w = self.const(f"{part.name}.w_{part.compute}", part.weights)
            if part.compute == "fp16":
                w = self.node("Cast", [w], f"{part.name}.w", to=TensorProto.FLOAT)
            y = self.node("Conv", [x, w], f"{part.name}.conv", **attrs)
            y = self.node("Mul", [y, self.const(f"{part.name}.a", A.astype(np.float32).reshape(1, -1, 1, 1))],
                          f"{part.name}.scale")
            y = self.node("Add", [y, self.const(f"{part.name}.c", C.astype(np.float32).reshape(1, -1, 1, 1))],
                          f"{part.name}.offset")
        if part.activation is not None:
            y = self.node("Clip", [y, self.const("act_lo", np.float32(part.activation[0])),
                                   self.const("act_hi", np.float32(part.activation[1]))], f"{part.name}.act")
        skip = None
        if part.residual:
            skips = [self.slice(self.real(s.buffer), s.offset, s.channels, self.buffers[s.buffer].num_channels,
                                f"{part.name}.skip") for s in part.residual]
            skip = skips[0] if len(skips) == 1 else self.node("Concat", skips, f"{part.name}.skip", axis=1)
        for out in part.outputs:
            o0, o1 = out.part_channels
            z = self.slice(y, o0, o1 - o0, part.out_channels, f"{part.name}.out")
            ep = out.epilogue
            if skip is not None:
                if isinstance(ep, FixedPointEpilogue):
                    z = self.add_input(z, ep, self.buffers[out.buffer].format.scale, f"{part.name}>{out.buffer}")
                z = self.node("Add", [z, self.slice(skip, o0, o1 - o0, part.out_channels, f"{part.name}.skip")],
                              f"{part.name}.add")
            if isinstance(ep, FixedPointEpilogue):
                lo, hi = ep.lo.astype(np.int64), ep.hi.astype(np.int64)
            elif ep.to_int is not None:
                lo, hi = clamp_codes(ep.to_int, o1 - o0)
            else:
                lo, hi = self.code_range(out.buffer, o1 - o0)
            self.store(out.buffer, z, out.channel_offset, lo, hi, f"{part.name}>{out.buffer}")

    def add_input(self, z: str, ep: FixedPointEpilogue, out_scale: float, base: str) -> str:
        """The conv's own output ahead of a fused residual add, quantized as the IR holds it (int8 or
        int16, zero point 0, its step), as a TFLite graph's CONV output is before its ADD."""
        step = np.float32(ep.residual.t_step()[0] * out_scale)
        zp_type = np.int8 if ep.residual.t_bits == 8 else np.int16
        scale, zp = self.const(f"{base}.t_scale", step), self.const(f"{base}.t_zp", zp_type(0))
        t = self.node("QuantizeLinear", [z, scale, zp], f"{base}.t")
        return self.node("DequantizeLinear", [t, scale, zp], f"{base}.t_dq")

    def pool(self, op: GlobalAvgPool) -> None:
        y = self.node("GlobalAveragePool", [self.real(op.input)], f"{op.name}.pool")
        b = self.buffers[op.output]
        self.store(op.output, y, 0, *self.code_range(op.output, b.num_channels), op.name)


@dataclass
class OnnxExport:
    """The model and what it holds."""
    model: onnx.ModelProto
    opset: int
    weight_layers: Dict[str, int]          # 'int8', 'int4', 'int2', 'fp16', 'fp32' → parts
    buffer_outputs: Dict[str, str]         # with debug_outputs: buffer → the output holding what it stores

    def summary(self) -> str:
        held = ", ".join(f"{k} {v}" for k, v in self.weight_layers.items() if v)
        return f"opset {self.opset}, {len(self.model.graph.node)} nodes, layer parts: {held}"


def to_onnx(network: IntegerNetwork, metadata: Optional[Dict[str, Any]] = None,
            debug_outputs: bool = False) -> OnnxExport:
    """The QDQ model of ``network`` (see the module docstring), checked with ``onnx.checker``.
    ``debug_outputs`` adds every buffer's stored tensor (int8 codes, float16, float32) as an output, for tests."""
    check_exportable(network)
    network.validate()
    g = _Graph(network)
    for op in network.ops:
        if isinstance(op, Quantize):
            g.quantize(op)
        elif isinstance(op, ConvPart):
            g.conv(op)
        elif isinstance(op, GlobalAvgPool):
            g.pool(op)
        else:
            raise NotExportable(f"{type(op).__name__} {getattr(op, 'name', '')}: no ONNX form")
    logits = g.node("Flatten", [g.real(network.output)], OUTPUT, axis=1)
    c, h, w = network.input_shape
    classes = network.buffer(network.output).elements
    outputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, [BATCH, classes])]
    buffer_outputs = {}
    if debug_outputs:
        elem = {"int": TensorProto.INT8, "fp16": TensorProto.FLOAT16, "fp32": TensorProto.FLOAT}
        for b in network.buffers:
            if b.name != network.output:
                buffer_outputs[b.name] = g.stored_tensor(b.name)
                outputs.append(helper.make_tensor_value_info(buffer_outputs[b.name], elem[b.format.kind],
                                                             [BATCH, b.num_channels, b.height, b.width]))
    graph = helper.make_graph(g.nodes, "adaptqnet", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                   [BATCH, c, h, w])],
                              outputs, g.initializers)
    opset = opset_for(network)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=PRODUCER)
    model.ir_version = IR_VERSION[opset]
    model.doc_string = ("AdaptQNet integer network as ONNX QDQ: symmetric per-channel weights at their own bit "
                        "width, PACT activations in int8 containers, fp16 layers via Cast")
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.checker.check_model(model, full_check=True)
    counts = {k: 0 for k in ("int8", "int4", "int2", "fp16", "fp32")}
    for op in network.ops:
        if isinstance(op, ConvPart):
            counts[f"int{op.weight_bits}" if op.compute == "int" else op.compute] += 1
    return OnnxExport(model, opset, counts, buffer_outputs)


def ort_session(model: onnx.ModelProto):
    """An onnxruntime CPU session with graph optimisation off: its fusions change the numbers."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_ort(session, images: np.ndarray, batch: int = 256, outputs: Optional[Sequence[str]] = None) -> List[np.ndarray]:
    """``outputs`` (default: the logits) for float32 images (N, C, H, W), in batches."""
    names = list(outputs) if outputs else [OUTPUT]
    runs = [session.run(names, {INPUT: np.ascontiguousarray(images[i:i + batch], dtype=np.float32)})
            for i in range(0, len(images), batch)]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(names))]


def weight_codes_in(model: onnx.ModelProto) -> Dict[str, Tuple[int, np.ndarray]]:
    """Every integer weight initializer of an exported model: name → (bits, codes as int64)."""
    bits_of = {v: k for k, v in WEIGHT_TYPES.items()}
    found = {}
    for t in model.graph.initializer:
        if t.data_type in bits_of and ".w_int" in t.name:
            found[t.name] = (bits_of[t.data_type], numpy_helper.to_array(t).astype(np.int64))
    return found
