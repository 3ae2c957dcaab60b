"""The memory model: the bytes a runtime's activation arena must hold while each operator runs.

* **layer-wise (TFLM)**: no operator runs in place, so while operator *i* runs, every tensor produced
  at or before *i* and still needed at or after *i* is alive: its inputs, its output, and anything kept
  for a later consumer (the block input a residual add needs). tflite-micro memory_management.md.
* **in-place depthwise (TinyEngine)**: a depthwise conv whose input is not needed later overwrites its
  input channel by channel, so it needs max(input, output) plus one output channel instead of
  input + output (MCUNet, Lin et al. 2020: "N+1 channels instead of 2N"). The squeeze-excitation
  multiply ``x · s`` is a 1×1 depthwise product with per-channel weights ``s``, so under the same
  model it overwrites ``x`` when ``x`` is not needed later: inputs + kept, no separate output.
* Per-kernel scratch buffers (CMSIS-NN im2col, depthwise scratch) are not counted; they are small next
  to the activations and engine-specific.

With these definitions MobileNetV2-1.0-224 at INT8 needs 1,505,280 B = 1470 KiB (the depthwise conv
of ``features.2``: 112·112·96 + 56·56·96 bytes) layer-wise, and 1,404,928 B = 1372 KiB in place (the
expansion conv of ``features.2``: 112·112·16 + 112·112·96) — the published figures in docs/hardware.md.
"KB" is 1024 bytes throughout, as in MCUNet and X-CUBE-AI's KiB.

Storage precision of an activation under a precision mapping (docs/design.md §6.4): a layer's
precision applies to its weights and to its *input* activation (docs/design.md §2), so the producer
writes a tensor in the format its consumer reads. A tensor read by layers is stored at the widest of
their read formats, and whatever else reads it (a residual add fused into a layer, a pool) reads that
copy; a tensor only other operators read (the last feature map, read by the pool) takes the format
their outputs are stored in (the pooled vector's: the classifier's input format). A layer split over
two units reads one copy per distinct precision (a depthwise split: each part its channel slice). The
network's output is float32 logits: 4 bytes per element. In the per-layer tables (the memory filter's
view) every other tensor the operator touches is at the layer's own precision.

A residual add is fused into the layer that produces its branch (graph.fuse_residual_adds): that
layer holds its input, the skip tensor (kept alive for it) and the add's output; the pre-add tensor
never exists.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from models.mapping import Part, entry_parts
from models.precisions import precision_bits, tensor_bytes

from .flash import layer_flash_bytes, weight_bytes
from .graph import NetworkAnalysis, Operator, as_analysis

KB = 1024
OUTPUT_BYTES_PER_ELEMENT = 4.0  # the network's output: float32 logits


def layer_input_factor(op: "Operator", parts: Sequence[Part]) -> float:
    """Bytes per element at which a layer reads its input: its precision; split over units, each
    unit's copy (a depthwise conv reads only its channel slice)."""
    if len(parts) == 1:
        return precision_bits(parts[0].precision) / 8.0
    if op.op == "dwconv":
        return sum(precision_bits(p.precision) / 8.0 * (p.c1 - p.c0) / op.out_channels for p in parts)
    return sum(precision_bits(pr) / 8.0 for pr in {p.precision for p in parts})


def _inplace_ok(a: NetworkAnalysis, op: Operator) -> bool:
    return op.op == "dwconv" and a.last_use[op.inputs[0]] == op.index


def _inplace_scaled_input(a: NetworkAnalysis, op: Operator) -> Optional[int]:
    """The tensor a channel-scaling multiply (squeeze-excitation ``x · s``) overwrites in place: an
    input of the output's shape that nobody reads later (module docstring)."""
    if op.op != "mul":
        return None
    out_shape = a.tensors[op.output].shape
    for t in op.inputs:
        if a.tensors[t].shape == out_shape and a.last_use[t] == op.index:
            return t
    return None


def operator_bytes(a: NetworkAnalysis, op: Operator, tensor_size: Callable[[int], int],
                   inplace_depthwise: bool = False) -> Dict[str, int]:
    """input / output / kept / live bytes of ``op`` with ``tensor_size(tensor_id) -> bytes``."""
    alive = a.alive(op.index)
    inputs = sum(tensor_size(t) for t in op.inputs)
    output = tensor_size(op.output)
    kept = sum(tensor_size(t) for t in alive if t not in op.inputs and t != op.output)
    live = inputs + output + kept
    if inplace_depthwise and _inplace_ok(a, op):
        live = kept + max(inputs, output) + int(math.ceil(output / max(1, op.out_channels)))
    elif inplace_depthwise:
        scaled = _inplace_scaled_input(a, op)
        if scaled is not None:
            live = kept + inputs - tensor_size(scaled) + max(tensor_size(scaled), output)
    return {"input": inputs, "output": output, "kept": kept, "live": live}


def _output_precision(a: NetworkAnalysis, op: Operator) -> Optional[str]:
    """'fp32' for the layer writing the network output (the float32 logits), else None."""
    return "fp32" if op.output in a.output_ids else None


def uniform_size(a: NetworkAnalysis, precision: str) -> Callable[[int], int]:
    """tensor id → bytes with every tensor at ``precision``, the network output at float32."""
    bits = precision_bits(precision)
    outputs = set(a.output_ids)
    return lambda t: (tensor_bytes(a.tensors[t].elements, OUTPUT_BYTES_PER_ELEMENT, factor=True) if t in outputs
                      else tensor_bytes(a.tensors[t].elements, bits))


def layer_bytes(a: NetworkAnalysis, op: Operator, precision: str) -> Dict[str, int]:
    """The memory filter's view of a layer: every tensor it touches at ``precision``."""
    size = uniform_size(a, precision)
    b = operator_bytes(a, op, size)
    b["live_inplace"] = operator_bytes(a, op, size, True)["live"]
    b["weights"] = weight_bytes(op, precision) if op.weight_elements else 0
    b["flash"] = layer_flash_bytes(op, precision, output_precision=_output_precision(a, op)) if op.weight_elements else 0
    return b


def dual_layer_bytes(a: NetworkAnalysis, op: Operator, parts: Sequence[Part], inplace_depthwise: bool = False
                     ) -> Dict[str, Any]:
    """Bytes of a layer split over units: each unit reads the whole input (a depthwise conv: its
    channel slice) in its own precision and writes its output slice; one input copy per distinct
    precision; tensors kept for later at the widest of the units' precisions."""
    n = op.out_channels
    in_e = a.tensors[op.inputs[0]].elements
    out_e = a.tensors[op.output].elements
    per_unit, outputs = {}, 0
    inputs_by_precision: Dict[str, int] = {}
    dw_inputs = 0
    for p in parts:
        frac = (p.c1 - p.c0) / n
        bits = precision_bits(p.precision)
        in_b = tensor_bytes(in_e * (frac if op.op == "dwconv" else 1.0), bits)
        out_b = tensor_bytes(out_e * frac, bits)
        outputs += out_b
        if op.op == "dwconv":
            dw_inputs += in_b
        else:
            inputs_by_precision[p.precision] = in_b
        per_unit[p.unit] = {"precision": p.precision, "channels": [p.c0, p.c1], "input": in_b,
                            "output": out_b,
                            "flash": layer_flash_bytes(op, p.precision, frac, _output_precision(a, op))}
    inputs = dw_inputs if op.op == "dwconv" else sum(inputs_by_precision.values())
    if op.output in a.output_ids:
        outputs = tensor_bytes(out_e, OUTPUT_BYTES_PER_ELEMENT, factor=True)
    widest = max(precision_bits(p.precision) for p in parts)
    kept = sum(tensor_bytes(a.tensors[t].elements, widest) for t in a.alive(op.index)
               if t not in op.inputs and t != op.output)
    live = inputs + outputs + kept
    if inplace_depthwise and _inplace_ok(a, op):
        live = kept + max(inputs, outputs) + int(math.ceil(outputs / max(1, n)))
    return {"units": per_unit, "input": inputs, "output": outputs, "kept": kept, "live": live,
            "flash": sum(u["flash"] for u in per_unit.values())}


def storage_factors(a: NetworkAnalysis, parts_of: Mapping[str, Sequence[Part]]) -> Dict[int, float]:
    """Bytes per element of every tensor under a mapping (module docstring: storage precision)."""
    return resolve_storage_factors(a, lambda op: layer_input_factor(op, parts_of[op.name]), max,
                                   OUTPUT_BYTES_PER_ELEMENT)


def resolve_storage_factors(a: NetworkAnalysis, input_factor, combine, output_factor):
    """Each tensor's bytes per element (module docstring): the widest of its layer readers'
    ``input_factor(op)``; without a layer reader, the widest of the factors its other readers' outputs
    are stored at (a fused residual read passes on the fusing layer's output); a tensor nobody reads
    (the network output) ``output_factor``. ``combine`` takes the list of factors, so the same walk
    serves plain numbers and the search's differentiable expectations."""
    factor: Dict[int, Any] = {}
    # consumers come later than producers: resolve from the last tensor backwards
    for tid in sorted(a.tensors, key=lambda i: -a.tensors[i].producer):
        t = a.tensors[tid]
        layer_reads, other_reads = [], []
        for c in t.consumers:
            op = a.operators[c]
            if op.quantizes(tid):
                layer_reads.append(input_factor(op))
            else:
                other_reads.append(factor[op.output])
        reads = layer_reads or other_reads
        factor[tid] = combine(reads) if reads else output_factor
    return factor


def mapping_live_bytes(a: NetworkAnalysis, mapping: Mapping[str, Any], inplace_depthwise: bool = False,
                       where: str = "mapping") -> List[Tuple[Operator, int]]:
    """Every operator's live bytes under ``mapping``, in execution order."""
    factor = storage_factors(a, a.check_mapping(mapping, where))

    def size(t: int) -> int:
        return tensor_bytes(a.tensors[t].elements, factor[t], factor=True)
    return [(op, operator_bytes(a, op, size, inplace_depthwise)["live"]) for op in a.operators]


def peak_ram_bytes(analysis, mapping: Mapping[str, Any], inplace_depthwise: bool = False) -> int:
    """Peak activation RAM of the network under ``mapping`` (module docstring for the model);
    ``analysis`` is a NetworkAnalysis or an analysis.json object."""
    return max(b for _, b in mapping_live_bytes(as_analysis(analysis), mapping, inplace_depthwise))


class ExpectedPeak:
    """Peak RAM as a differentiable function of π: the memory model above (every tensor alive while an
    operator runs, each stored at the widest precision its consumers read) with each layer's
    read width replaced by its expectation under π. At one-hot π it is exactly
    ``peak_ram_bytes`` of that mapping; a per-layer estimate is not, because a tensor is stored at
    its *consumer's* precision and residual inputs stay alive across blocks."""

    def __init__(self, analysis: NetworkAnalysis, option_labels: Mapping[str, Sequence[str]],
                 inplace_depthwise: bool = False):
        self.analysis = analysis
        self.inplace = inplace_depthwise
        self.read = {}
        for name, labels in option_labels.items():
            op = analysis.layer(name)
            parts = [entry_parts(name, op.out_channels, label) for label in labels]
            self.read[name] = torch.tensor([layer_input_factor(op, p) for p in parts])
        self.elements = {tid: float(t.elements) for tid, t in analysis.tensors.items()}

    def to(self, device) -> "ExpectedPeak":
        self.read = {k: v.to(device) for k, v in self.read.items()}
        return self

    def __call__(self, probs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        read = {n: (probs[n] * v).sum() for n, v in self.read.items()}
        default = torch.tensor(OUTPUT_BYTES_PER_ELEMENT, device=next(iter(read.values())).device)
        factor = resolve_storage_factors(
            self.analysis, lambda op: read[op.name],
            lambda vals: vals[0] if len(vals) == 1 else torch.stack(vals).max(), default)
        size = lambda t: self.elements[t] * factor[t]  # noqa: E731
        live = [operator_bytes(self.analysis, op, size, self.inplace)["live"] for op in self.analysis.operators]
        return torch.stack([torch.as_tensor(v, dtype=default.dtype, device=default.device) for v in live]).max()
