"""The Flash model: what a deployed network stores besides its activations.

Flash of a layer: packed weights (``ceil(n·bits/8)``) plus per-output-channel storage: an FP32 bias for
float layers (BatchNorm folded), an INT32 bias and an FP32 requantisation scale for integer layers.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

from models.precisions import PRECISIONS, precision_bits, tensor_bytes

from .graph import Operator, as_analysis

# per-output-channel bytes besides the weights (see module docstring)
FLOAT_CHANNEL_BYTES = 4
INT_CHANNEL_BYTES = 8


def weight_bytes(op: Operator, precision: str, fraction: float = 1.0) -> int:
    """Packed weights of ``op`` (or its ``fraction`` of output channels) at ``precision``."""
    return tensor_bytes(op.weight_elements * fraction, precision_bits(precision))


def layer_flash_bytes(op: Operator, precision: str, fraction: float = 1.0) -> int:
    """Packed weights plus the per-output-channel bias / requantisation storage."""
    per_channel = FLOAT_CHANNEL_BYTES if PRECISIONS[precision].is_float else INT_CHANNEL_BYTES
    channels = int(round(op.out_channels * fraction))
    return weight_bytes(op, precision, fraction) + per_channel * channels


def flash_bytes(analysis, mapping: Mapping[str, Any]) -> int:
    """Σ over layers of packed weights + per-channel bias/scale, each part at its precision;
    ``analysis`` is a NetworkAnalysis or an analysis.json object."""
    a = as_analysis(analysis)
    parts_of = a.check_mapping(mapping)
    total = 0
    for op in a.layers:
        for p in parts_of[op.name]:
            total += layer_flash_bytes(op, p.precision, (p.c1 - p.c0) / op.out_channels)
    return total


def compression(analysis, mapping: Mapping[str, Any]) -> Dict[str, Any]:
    """Model size and compression vs FP32; precision histograms per op kind and per stage.

    ``size_bytes`` is the deployed size (packed weights + per-channel bias/scale, as flash_bytes);
    ``weight_bytes`` counts the packed weights alone. Dual-core layers count each part's weights.
    """
    a = as_analysis(analysis)
    parts_of = a.check_mapping(mapping)
    fp32 = {n: "fp32" for n in a.layer_names}
    size, fp32_size = flash_bytes(a, mapping), flash_bytes(a, fp32)
    weights = fp32_weights = 0
    by_op: Dict[str, Dict[str, Any]] = {}
    by_stage: Dict[str, Dict[str, Any]] = {}
    by_precision: Dict[str, Dict[str, int]] = {}
    rows = []
    for op in a.layers:
        parts = parts_of[op.name]
        w = sum(weight_bytes(op, p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
        f = sum(layer_flash_bytes(op, p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
        weights += w
        fp32_weights += weight_bytes(op, "fp32")
        label = parts[0].precision if len(parts) == 1 else "+".join(p.precision for p in parts)
        for group, key in ((by_op, op.op), (by_stage, a.stage_of(op))):
            g = group.setdefault(key, {"layers": 0, "params": 0, "bytes": 0, "fp32_bytes": 0, "precisions": {}})
            g["layers"] += 1
            g["params"] += op.params
            g["bytes"] += f
            g["fp32_bytes"] += layer_flash_bytes(op, "fp32")
            g["precisions"][label] = g["precisions"].get(label, 0) + 1
        for p in parts:
            frac = (p.c1 - p.c0) / op.out_channels
            h = by_precision.setdefault(p.precision, {"layers": 0, "params": 0})
            h["layers"] += 1
            h["params"] += int(round(op.params * frac))
        rows.append({"name": op.name, "op": op.op, "stage": a.stage_of(op), "params": op.params,
                     "precision": label, "bytes": f, "fp32_bytes": layer_flash_bytes(op, "fp32"),
                     "ratio": layer_flash_bytes(op, "fp32") / f})
    for g in list(by_op.values()) + list(by_stage.values()):
        g["ratio"] = g["fp32_bytes"] / g["bytes"] if g["bytes"] else float("inf")
    return {"size_bytes": size, "fp32_size_bytes": fp32_size, "ratio": fp32_size / size,
            "weight_bytes": weights, "fp32_weight_bytes": fp32_weights,
            "weight_ratio": fp32_weights / weights if weights else float("inf"),
            "params": a.layer_params, "by_precision": by_precision, "by_op": by_op, "by_stage": by_stage,
            "layers": rows}


