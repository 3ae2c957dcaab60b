"""analysis.json: a network's graph, per-layer memory at each precision, and the precisions each
layer may use under an activation-RAM threshold (docs/file_formats.md). Written by
tensor_memory_filter.py, read by the search, the latency predictor and the reports.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence

from models import formats
from models.files import read_json
from models.precisions import PRECISION_ORDER, canonical_precisions, get_precision

from .flash import flash_bytes
from .graph import LAYER_OPS, NetworkAnalysis
from .memory import KB, layer_bytes, mapping_live_bytes, operator_bytes, uniform_size
from .profiles import _number


def analysis_document(a: NetworkAnalysis, memory_threshold_kb: float,
                      precisions: Sequence[str] = PRECISION_ORDER, inplace_depthwise: bool = False,
                      allow_infeasible: bool = False) -> Dict[str, Any]:
    """analysis.json (docs/file_formats.md): per layer and precision the bytes, and the precisions whose
    operator fits ``memory_threshold_kb`` (``live_inplace`` instead of ``live`` with
    ``inplace_depthwise``). Operators that fit at no precision are listed in ``infeasible``; with
    ``allow_infeasible`` such a layer keeps its least-memory precision (marked ``"infeasible":
    true``) so a search can still run, otherwise its allowed list is empty."""
    if memory_threshold_kb is None or not memory_threshold_kb >= 0:
        raise ValueError(f"memory threshold must be >= 0 KB, got {memory_threshold_kb}")
    precisions = list(canonical_precisions(precisions, "precisions"))
    threshold = memory_threshold_kb * KB
    key = "live_inplace" if inplace_depthwise else "live"
    layers, infeasible = [], []
    for op in a.layers:
        per = {p: layer_bytes(a, op, p) for p in precisions}
        allowed = [p for p in precisions if per[p][key] <= threshold]
        need = min(per[p][key] for p in precisions)
        entry = {"name": op.name, "op": op.op, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
                 "kernel": list(op.kernel), "stride": list(op.stride), "groups": op.groups,
                 "macs": op.macs, "params": op.params, "stage": a.stage_of(op),
                 "activations": list(op.activations), "fused": list(op.fused),
                 "bytes": per, "allowed_precisions": allowed, "min_live_bytes": need}
        if not allowed:
            cheapest = min(precisions, key=lambda p: (per[p][key], precisions.index(p)))
            infeasible.append({"name": op.name, "min_live_bytes": need, "min_live_kb": round(need / KB, 2),
                               "at": cheapest})
            if allow_infeasible:
                entry["allowed_precisions"] = [cheapest]
                entry["infeasible"] = True
        layers.append(entry)
    # operators that are not searched (adds, pooling): checked at the cheapest precision listed
    lowest = precisions[-1]
    size = uniform_size(a, lowest)
    for op in a.operators:
        if op.is_layer:
            continue
        need = operator_bytes(a, op, size, inplace_depthwise)["live"]
        if need > threshold:
            infeasible.append({"name": op.name, "min_live_bytes": need, "min_live_kb": round(need / KB, 2),
                               "at": lowest})
    return {
        "schema": formats.ANALYSIS,
        "model": a.spec,
        "memory_threshold_kb": memory_threshold_kb,
        "memory_model": "inplace_depthwise" if inplace_depthwise else "layerwise",
        "allow_infeasible": bool(allow_infeasible),
        "kb_bytes": KB,
        "precisions": precisions,
        "layers": layers,
        "infeasible": infeasible,
        "operators": [o.to_json() for o in a.operators],
        "tensors": [{"id": t.id, "shape": list(t.shape), "producer": t.producer, "consumers": t.consumers}
                    for t in a.tensors.values()],
        "input_tensor": a.input_id,
        "output_tensors": a.output_ids,
        "totals": totals(a, precisions),
    }

def totals(a: NetworkAnalysis, precisions: Sequence[str] = PRECISION_ORDER) -> Dict[str, Any]:
    """MACs, parameters, and peak RAM (both memory models) and Flash of each uniform network."""
    peak, peak_in, where, where_in, flash = {}, {}, {}, {}, {}
    for p in precisions:
        uniform = {n: p for n in a.layer_names}
        op, peak[p] = max(mapping_live_bytes(a, uniform), key=lambda x: x[1])
        where[p] = op.name
        op, peak_in[p] = max(mapping_live_bytes(a, uniform, inplace_depthwise=True), key=lambda x: x[1])
        where_in[p] = op.name
        flash[p] = flash_bytes(a, uniform)
    return {"macs": a.macs, "params": a.model_params, "layer_params": a.layer_params,
            "layers": len(a.layers), "operators": len(a.operators),
            "peak_ram_bytes": peak, "peak_operator": where, "peak_ram_bytes_inplace": peak_in,
            "peak_operator_inplace": where_in, "flash_bytes": flash}



def _count(value: Any, where: str) -> None:
    """A byte or element count: a non-negative integer (a float that is one, as JSON may write it, too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0 and value == int(value)):
        raise ValueError(f"{where}: expected a non-negative whole number, got {value!r}")


def _shape(value: Any, where: str) -> None:
    if not isinstance(value, list) or not value or any(
            isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise ValueError(f"{where}: expected a shape of positive integers, got {value!r}")


def _check_entry(entry: Mapping[str, Any], at: str, count_keys: Sequence[str]) -> None:
    """A layer's or operator's shapes and counts, where present."""
    for key in ("in_shape", "out_shape"):
        if key in entry:
            _shape(entry[key], f"{at}: {key}")
    for key in count_keys:
        if key in entry:
            _count(entry[key], f"{at}: {key}")


def _check_numbers(d: Mapping[str, Any], where: str) -> None:
    """Every count non-negative and whole, every shape positive, every millisecond finite and >= 0:
    the memory and latency figures the search trusts are checked where they are read."""
    _number(d.get("memory_threshold_kb", 0), f"{where}: memory_threshold_kb")
    for layer in d["layers"]:
        at = f"{where}: layer {layer['name']}"
        _check_entry(layer, at, ("macs", "params", "min_live_bytes"))
        per_precision = layer.get("bytes", {})
        if not isinstance(per_precision, Mapping):
            raise ValueError(f"{at}: 'bytes' must be an object {{precision: {{what: bytes}}}}")
        for p, counts in per_precision.items():
            if not isinstance(counts, Mapping):
                raise ValueError(f"{at}: bytes.{p}: expected {{what: bytes}}")
            for what, v in counts.items():
                _count(v, f"{at}: bytes.{p}.{what}")
        for key, option in (layer.get("dual_options") or {}).items():
            if not isinstance(option, Mapping):
                raise ValueError(f"{at}: dual_options.{key}: expected an object")
            _count(option.get("live", 0), f"{at}: dual_options.{key}.live")
            _number(option.get("ms", 0), f"{at}: dual_options.{key}.ms")
            for unit, sizes in (option.get("bytes") or {}).items():
                for v in sizes if isinstance(sizes, list) else [sizes]:
                    _count(v, f"{at}: dual_options.{key}.bytes.{unit}")
    for i, o in enumerate(d["operators"]):
        at = f"{where}: operators[{i}] ({o.get('name') if isinstance(o, Mapping) else o!r})"
        if not isinstance(o, Mapping):
            raise ValueError(f"{at}: expected an object")
        _check_entry(o, at, ("macs", "weight_elements", "bias_elements"))
    for i, t in enumerate(d["tensors"]):
        if not isinstance(t, Mapping) or "shape" not in t:
            raise ValueError(f"{where}: tensors[{i}]: expected an object with a 'shape'")
        _shape(t["shape"], f"{where}: tensors[{i}] ({t.get('id')}): shape")


def validate_analysis(d: Any, where: str) -> Dict[str, Any]:
    """Check an analysis.json object; ValueError naming ``where`` and the first problem found."""
    formats.check_schema(d, formats.ANALYSIS, where, "analysis file")
    for key in ("model", "precisions", "layers", "operators", "tensors", "input_tensor", "output_tensors"):
        if key not in d:
            raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(d["model"], Mapping) or "type" not in d["model"]:
        raise ValueError(f"{where}: 'model' must be a model spec with a 'type'")
    canonical_precisions(d["precisions"], f"{where}: precisions")
    if not isinstance(d["layers"], list) or not d["layers"]:
        raise ValueError(f"{where}: 'layers' must be a non-empty list")
    if not isinstance(d["operators"], list) or not isinstance(d["tensors"], list):
        raise ValueError(f"{where}: 'operators' and 'tensors' must be lists")
    op_names = {o.get("name") for o in d["operators"] if isinstance(o, Mapping) and o.get("layer")}
    for i, layer in enumerate(d["layers"]):
        if not isinstance(layer, Mapping) or "name" not in layer:
            raise ValueError(f"{where}: layers[{i}] has no 'name'")
        name = layer["name"]
        if layer.get("op") not in LAYER_OPS:
            raise ValueError(f"{where}: layer {name}: op {layer.get('op')!r} is not one of {', '.join(LAYER_OPS)}")
        if name not in op_names:
            raise ValueError(f"{where}: layer {name} is not among the operators")
        allowed = layer.get("allowed_precisions")
        if not isinstance(allowed, list):
            raise ValueError(f"{where}: layer {name}: 'allowed_precisions' must be a list")
        for p in allowed:
            get_precision(p, f"{where}: layer {name}")
    _check_numbers(d, where)
    try:
        NetworkAnalysis.from_json(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed operator graph ({exc.__class__.__name__}: {exc})") from None
    return dict(d)


def load_analysis_json(path: str) -> Dict[str, Any]:
    """Read and validate an analysis.json (or its dual-core variant)."""
    return validate_analysis(read_json(path, "analysis file"), path)


def allowed_precisions_of(analysis_json: Mapping[str, Any]) -> Dict[str, List[str]]:
    """{layer: allowed precisions}, the form build_model(precisions=...) takes."""
    return {l["name"]: list(l["allowed_precisions"]) for l in analysis_json["layers"]}
