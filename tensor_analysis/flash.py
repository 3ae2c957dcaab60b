"""The Flash model: what a deployed network stores besides its activations, counted the way the C
export lays it out (deploy/c/adaptq.h, a 32-bit target), so that the prediction is what a build needs.

* Per layer part (a whole layer is one part): its packed weights, ``ceil(n·bits/8)`` bytes (fp16: 2,
  fp32: 4 bytes per weight; an integer layer other than depthwise pads each output channel's row to
  whole 32-bit words, the order its GEMM kernel reads), and a descriptor with its operator-table
  entry (``PART_BYTES``).
* Per stored copy of the part's output (one per format its readers read, ``storage``): an output
  descriptor and, per output channel, the epilogue's constants. An integer part writing an integer
  copy requantises in fixed point (TFLite's arithmetic): int32 multiplier, int8 shift, int32 bias
  (BatchNorm folded), int8 accumulator pre-shift, int16 clamp codes lo and hi; a fused residual add
  adds its descriptor and, per channel, int16 clamp codes of the conv's own output and three int32
  multipliers with their int8 shifts. Any other pairing (float arithmetic, a float copy, the float32
  logits) keeps a float32 scale and offset.
* Per stored copy of any tensor: a buffer descriptor; a fused residual reads its skip through a slice
  descriptor; the image quantizer and the pools add theirs.

The network's Flash is the sum; the per-layer view (``layer_flash_bytes``, the memory filter's tables)
counts one output copy at the layer's own precision. Why 14 bytes per integer channel and not the
9 of CMSIS-NN's int32 bias, multiplier and shift: the export keeps the clamp per channel (the
activation folded into it) and the accumulator pre-shift of its "fine" arithmetic.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

from models.mapping import Part
from models.precisions import PRECISIONS, precision_bits, tensor_bytes

from .graph import NetworkAnalysis, Operator, as_analysis
from .storage import StoredCopy, skip_copy, storage_copies

# sizeof the C descriptors on a 32-bit target (deploy/c/adaptq.h; tests/test_deploy_build.py checks
# the prediction against arm-none-eabi-size of real exports)
PART_BYTES = 60 + 8          # adaptq_conv + its adaptq_op entry
OUTPUT_BYTES = 68            # adaptq_output
RESIDUAL_ADD_BYTES = 36      # adaptq_residual_add, per output copy of a part with a fused residual
BUFFER_BYTES = 20            # adaptq_buffer
SLICE_BYTES = 6              # adaptq_slice of a fused residual's skip
QUANTIZE_BYTES = 8 + 8       # adaptq_quantize + its adaptq_op entry
QUANTIZE_OUTPUT_BYTES = 24   # adaptq_quantize_output, per stored copy of the image
POOL_BYTES = 4 + 8           # adaptq_pool + its adaptq_op entry, per pooled copy
FIXED_CHANNEL_BYTES = 4 + 1 + 4 + 1 + 2 + 2
RESIDUAL_CHANNEL_BYTES = 2 + 2 + 3 * (4 + 1)
FLOAT_CHANNEL_BYTES = 4 + 4
GEMM_WORD_BITS = 32


def _is_int(precision: str) -> bool:
    return not PRECISIONS[precision].is_float


def _fixed_point(precision: str, output_precision: str, residual: bool, residual_int: bool) -> bool:
    return _is_int(precision) and _is_int(output_precision) and (not residual or residual_int)


def channel_bytes(precision: str, output_precision: str, residual: bool, residual_int: bool = True) -> int:
    """Epilogue constants per output channel of a part at ``precision`` writing a copy at
    ``output_precision`` (module docstring)."""
    if _fixed_point(precision, output_precision, residual, residual_int):
        return FIXED_CHANNEL_BYTES + (RESIDUAL_CHANNEL_BYTES if residual else 0)
    return FLOAT_CHANNEL_BYTES


def output_bytes(precision: str, output_precision: str, residual: bool, residual_int: bool = True) -> int:
    """One output copy's descriptors (an output, and a residual add's where it is fused in fixed point)."""
    fused = residual and _fixed_point(precision, output_precision, residual, residual_int)
    return OUTPUT_BYTES + (RESIDUAL_ADD_BYTES if fused else 0)


def weight_bytes(op: Operator, precision: str, fraction: float = 1.0) -> int:
    """Packed weights of ``op`` (or its ``fraction`` of output channels) at ``precision``."""
    bits = precision_bits(precision)
    if _is_int(precision) and op.op != "dwconv":
        rows = int(round(op.out_channels * fraction))
        per_word = GEMM_WORD_BITS // bits
        row = -(-(op.weight_elements // op.out_channels) // per_word) * per_word
        return rows * row * bits // 8
    return tensor_bytes(op.weight_elements * fraction, bits)


def layer_flash_bytes(op: Operator, precision: str, fraction: float = 1.0,
                      output_precision: Optional[str] = None) -> int:
    """One part in the per-layer view: weights, descriptors, and one output copy at
    ``output_precision`` (default: the layer's own; the network output is 'fp32')."""
    channels = int(round(op.out_channels * fraction))
    residual = op.residual is not None
    per_channel = channel_bytes(precision, output_precision or precision, residual)
    return (weight_bytes(op, precision, fraction) + PART_BYTES + BUFFER_BYTES
            + output_bytes(precision, output_precision or precision, residual)
            + (SLICE_BYTES if residual else 0) + per_channel * channels)


def _part_bytes(op: Operator, part: Part, out_copies: Sequence[StoredCopy],
                skip_copies: Optional[Sequence[StoredCopy]]) -> int:
    total = weight_bytes(op, part.precision, (part.c1 - part.c0) / op.out_channels) + PART_BYTES
    residual = skip_copies is not None
    skips = {skip_copy(skip_copies, ch) for ch in range(part.c0, part.c1)} if residual else set()
    residual_int = residual and all(_is_int(c.precision) for c in skips)
    total += SLICE_BYTES * len(skips)
    for copy in out_copies:
        n = min(part.c1, copy.c1) - max(part.c0, copy.c0)
        if n > 0:
            total += (output_bytes(part.precision, copy.precision, residual, residual_int)
                      + n * channel_bytes(part.precision, copy.precision, residual, residual_int))
    return total


def flash_by_operator(analysis, mapping: Mapping[str, Any]) -> Dict[str, int]:
    """Flash bytes per operator under ``mapping`` (module docstring), in execution order: a layer's
    parts with the buffers of its output; a pool's descriptors and pooled buffers; the image
    quantizer and the image's buffers are counted with the first layer."""
    a: NetworkAnalysis = as_analysis(analysis)
    parts_of = a.check_mapping(mapping)
    copies = storage_copies(a, parts_of)
    out: Dict[str, int] = {}
    for op in a.operators:
        own = BUFFER_BYTES * len(copies[op.output])
        if op.is_layer:
            skip = copies[op.residual] if op.residual is not None else None
            own += sum(_part_bytes(op, p, copies[op.output], skip) for p in parts_of[op.name])
        elif op.op == "pool":
            own += POOL_BYTES * len(copies[op.output])
        if a.input_id in op.inputs:
            image = len(copies[a.input_id])
            own += QUANTIZE_BYTES + image * (QUANTIZE_OUTPUT_BYTES + BUFFER_BYTES)
        out[op.name] = own
    return out


def flash_bytes(analysis, mapping: Mapping[str, Any]) -> int:
    """The network's Flash under ``mapping`` (module docstring); ``analysis`` is a NetworkAnalysis or
    an analysis.json object."""
    return sum(flash_by_operator(analysis, mapping).values())


def compression(analysis, mapping: Mapping[str, Any]) -> Dict[str, Any]:
    """Model size and compression vs FP32; precision histograms per op kind and per stage.

    ``size_bytes`` is the deployed size (flash_bytes); ``weight_bytes`` counts the packed weights
    alone. Dual-core layers count each part's weights. Per-layer rows and groups count the layers'
    share (flash_by_operator), the operators outside layers are in the totals only.
    """
    a = as_analysis(analysis)
    parts_of = a.check_mapping(mapping)
    fp32 = {n: "fp32" for n in a.layer_names}
    per_op, fp32_per_op = flash_by_operator(a, mapping), flash_by_operator(a, fp32)
    size, fp32_size = sum(per_op.values()), sum(fp32_per_op.values())
    weights = fp32_weights = 0
    by_op: Dict[str, Dict[str, Any]] = {}
    by_stage: Dict[str, Dict[str, Any]] = {}
    by_precision: Dict[str, Dict[str, int]] = {}
    rows = []
    for op in a.layers:
        parts = parts_of[op.name]
        w = sum(weight_bytes(op, p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
        f, f32 = per_op[op.name], fp32_per_op[op.name]
        weights += w
        fp32_weights += weight_bytes(op, "fp32")
        label = parts[0].precision if len(parts) == 1 else "+".join(p.precision for p in parts)
        for group, key in ((by_op, op.op), (by_stage, a.stage_of(op))):
            g = group.setdefault(key, {"layers": 0, "params": 0, "bytes": 0, "fp32_bytes": 0, "precisions": {}})
            g["layers"] += 1
            g["params"] += op.params
            g["bytes"] += f
            g["fp32_bytes"] += f32
            g["precisions"][label] = g["precisions"].get(label, 0) + 1
        for p in parts:
            frac = (p.c1 - p.c0) / op.out_channels
            h = by_precision.setdefault(p.precision, {"layers": 0, "params": 0})
            h["layers"] += 1
            h["params"] += int(round(op.params * frac))
        rows.append({"name": op.name, "op": op.op, "stage": a.stage_of(op), "params": op.params,
                     "precision": label, "bytes": f, "fp32_bytes": f32, "ratio": f32 / f})
    for g in list(by_op.values()) + list(by_stage.values()):
        g["ratio"] = g["fp32_bytes"] / g["bytes"] if g["bytes"] else float("inf")
    return {"size_bytes": size, "fp32_size_bytes": fp32_size, "ratio": fp32_size / size,
            "weight_bytes": weights, "fp32_weight_bytes": fp32_weights,
            "weight_ratio": fp32_weights / weights if weights else float("inf"),
            "params": a.layer_params, "by_precision": by_precision, "by_op": by_op, "by_stage": by_stage,
            "layers": rows}
