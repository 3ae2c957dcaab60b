"""Shapes, MACs, parameters and memory of a network, operator by operator (DESIGN.md §4-5).

One traced forward pass on the ``meta`` device (no data, no arithmetic) records every operator in
execution order and the activation tensors between them:

* *layers*: the searchable mixed-precision conv / depthwise / pointwise / linear layers, named by their
  module path (``features.3.conv.1.0``);
* the other operators that own a buffer on an MCU: residual adds, SE multiplications, pooling,
  concatenations. BatchNorm, activations, dropout and reshapes are fused into the operator before them
  (they run in its epilogue or are views), so they own no buffer.

Activations that cost arithmetic per element (hard-swish, hard-sigmoid, sigmoid, SiLU: see
``ACTIVATION_FUNCTIONS``) are still fused, but recorded on the operator whose output they transform
(``Operator.activations``) so the latency model can charge them per output element. ReLU / ReLU6 are
the clamp of the requantisation and cost nothing extra. Fusing assumes an engine that runs the
activation in the producer's epilogue (X-CUBE-AI / TinyEngine class); TFLM runs HARD_SWISH and
LOGISTIC as operators of their own, with a second buffer, which this model does not count.
Stochastic depth is the identity at inference (a view here), so it adds no operator.

Memory model (the bytes a runtime's arena must hold while an operator runs):

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
expansion conv of ``features.2``: 112·112·16 + 112·112·96) — the figures in REFERENCES.md "Peak RAM".
"KB" is 1024 bytes throughout, as in MCUNet and X-CUBE-AI's KiB.

Storage precision of an activation under a precision mapping: a layer's precision applies to its
weights and to its *input* activation (DESIGN.md §2), so the producer writes a tensor in the format
its consumer reads; a tensor read by several layers (a block input feeding both the expansion conv and
the residual add) is stored at the widest of them; operators that are not layers (adds, pooling)
pass their consumers' format through. A tensor nobody reads (the logits) keeps its producer's format.
In the per-layer tables (the memory filter's view) every tensor the operator touches is at the layer's
own precision.

Flash of a layer: packed weights (``ceil(n·bits/8)``) plus per-output-channel storage: an FP32 bias for
float layers (BatchNorm folded), an INT32 bias and an FP32 requantisation scale for integer layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from models import build_from_spec
from models.base import (MIXED_LAYER_TYPES, PRECISION_ORDER, PRECISIONS, canonical_precisions, check_layer_names_match,
                         get_precision)

SCHEMA = "adaptqnet/analysis/1"
MAPPING_SCHEMA = "adaptqnet/mapping/1"
KB = 1024
LAYER_OPS = ("conv", "dwconv", "pwconv", "linear")
# per-output-channel bytes besides the weights (see module docstring)
FLOAT_CHANNEL_BYTES = 4
INT_CHANNEL_BYTES = 8


def precision_bits(name: str) -> int:
    return get_precision(name).bits


def tensor_bytes(elements: float, bits_or_factor: float, factor: bool = False) -> int:
    """Bytes of ``elements`` values at ``bits`` (or ``factor`` bytes per element), sub-byte packed."""
    per = bits_or_factor if factor else bits_or_factor / 8.0
    return int(math.ceil(elements * per - 1e-9))


# ----------------------------------------------------------------------------------------------------
# Graph records
# ----------------------------------------------------------------------------------------------------
@dataclass
class Tensor:
    id: int
    shape: Tuple[int, ...]          # without the batch dimension: (C, H, W) or (F,)
    producer: int                   # operator index, -1 for the network input
    consumers: List[int] = field(default_factory=list)

    @property
    def elements(self) -> int:
        return int(math.prod(self.shape))


@dataclass
class Operator:
    index: int
    name: str
    op: str                          # conv|dwconv|pwconv|linear, or add|mul|pool|concat|<function>
    is_layer: bool                   # a searchable mixed-precision layer
    inputs: List[int]                # activation tensor ids
    output: int
    in_shape: Tuple[int, int, int]   # (C, H, W) of the first input; linear: (F, 1, 1)
    out_shape: Tuple[int, int, int]
    macs: int = 0
    weight_elements: int = 0
    bias_elements: int = 0
    kernel: Tuple[int, int] = (1, 1)
    stride: Tuple[int, int] = (1, 1)
    groups: int = 1
    # element-wise activations fused into this operator's epilogue, in order (ACTIVATION_KINDS)
    activations: List[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.weight_elements + self.bias_elements

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def in_channels(self) -> int:
        return self.in_shape[0]

    @property
    def out_elements(self) -> int:
        return int(math.prod(self.out_shape))

    @property
    def in_elements(self) -> int:
        return int(math.prod(self.in_shape))

    @property
    def reduction(self) -> int:
        """MACs per output value (Cin/groups · kh · kw)."""
        return max(1, self.macs // max(1, self.out_elements))

    def weight_bytes(self, precision: str, fraction: float = 1.0) -> int:
        return tensor_bytes(self.weight_elements * fraction, precision_bits(precision))

    def flash_bytes(self, precision: str, fraction: float = 1.0) -> int:
        per_channel = FLOAT_CHANNEL_BYTES if PRECISIONS[precision].is_float else INT_CHANNEL_BYTES
        channels = int(round(self.out_channels * fraction))
        return self.weight_bytes(precision, fraction) + per_channel * channels

    def to_json(self) -> Dict[str, Any]:
        d = {"index": self.index, "name": self.name, "op": self.op, "layer": self.is_layer,
             "inputs": list(self.inputs), "output": self.output,
             "in_shape": list(self.in_shape), "out_shape": list(self.out_shape), "macs": self.macs,
             "elements": self.out_elements}
        if self.weight_elements or self.op in LAYER_OPS:
            d.update(weight_elements=self.weight_elements, bias_elements=self.bias_elements,
                     kernel=list(self.kernel), stride=list(self.stride), groups=self.groups)
        if self.activations:
            d["activations"] = list(self.activations)
        return d


def _shape3(shape: Sequence[int]) -> Tuple[int, int, int]:
    s = tuple(int(v) for v in shape)
    if len(s) == 3:
        return s
    if len(s) == 1:
        return (s[0], 1, 1)
    if len(s) == 2:
        return (s[0], s[1], 1)
    return (int(math.prod(s)), 1, 1)


# ----------------------------------------------------------------------------------------------------
# Tracing
# ----------------------------------------------------------------------------------------------------
_POOL_FUNCS = {"adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "adaptive_max_pool2d", "mean", "amax"}
_ADD_FUNCS = {"add", "__add__", "__radd__", "__iadd__", "add_", "sub", "__sub__", "__rsub__", "__isub__"}
_MUL_FUNCS = {"mul", "__mul__", "__rmul__", "__imul__", "mul_"}
_CONCAT_FUNCS = {"cat", "concat", "concatenate", "stack"}
# torch function name -> activation kind; hardware profiles cost each kind per element
ACTIVATION_FUNCTIONS = {"hardswish": "hswish", "hardsigmoid": "hsigmoid", "sigmoid": "sigmoid", "silu": "silu"}
ACTIVATION_KINDS = tuple(ACTIVATION_FUNCTIONS.values())


def _func_name(func) -> str:
    return getattr(func, "__name__", None) or str(func)


def _tensors_in(obj) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors_in(o)]
    return []


class _Tracer(TorchFunctionMode):
    """Records the operators of one forward pass, following activation tensors by identity."""

    def __init__(self, module_stack: List[Tuple[str, nn.Module]]):
        super().__init__()
        self.stack = module_stack
        self.tensors: Dict[int, Tensor] = {}   # our tensor id -> record
        self.node_of: Dict[int, int] = {}      # python id(torch tensor) -> our tensor id
        self.keep: List[torch.Tensor] = []     # keeps ids unique for the whole pass
        self.ops: List[Operator] = []
        self.op_names: Dict[str, int] = {}

    def new_tensor(self, t: torch.Tensor, producer: int) -> int:
        tid = len(self.tensors)
        self.tensors[tid] = Tensor(tid, tuple(int(v) for v in t.shape[1:]), producer)
        self.node_of[id(t)] = tid
        self.keep.append(t)
        return tid

    def _unique(self, name: str) -> str:
        n = self.op_names.get(name, 0)
        self.op_names[name] = n + 1
        return name if n == 0 else f"{name}#{n}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        acts = []
        for t in _tensors_in(args) + _tensors_in(kwargs):
            tid = self.node_of.get(id(t))
            if tid is not None and tid not in acts:
                acts.append(tid)
        if not acts:
            return out  # weight / parameter arithmetic (quantizers), not on the activation path
        name = _func_name(func)
        module_name, module = self.stack[-1] if self.stack else ("", None)
        if name in ("conv2d", "linear") and isinstance(module, (nn.Conv2d, nn.Linear)):
            self._record_compute(module_name, module, acts[0], out)
            return out
        if len(acts) >= 2:
            kind = ("add" if name in _ADD_FUNCS else "mul" if name in _MUL_FUNCS
                    else "concat" if name in _CONCAT_FUNCS else name.strip("_"))
            self._record_other(kind, module_name, acts, out)
            return out
        src = self.tensors[acts[0]]
        activation = ACTIVATION_FUNCTIONS.get(name.strip("_"))
        if activation and src.producer < 0:
            # nothing to fuse into (an activation of the network input): an operator of its own
            self._record_other(activation, module_name, acts, out)
            return out
        if out.numel() == src.elements and name not in _POOL_FUNCS:
            # fused element-wise (BN, activation, dropout, PACT) or a view: same buffer
            if activation:
                self.ops[src.producer].activations.append(activation)
            self.node_of[id(out)] = acts[0]
            self.keep.append(out)
            return out
        kind = "pool" if name in _POOL_FUNCS else name.strip("_")
        self._record_other(kind, module_name, acts, out)
        return out

    def _add_op(self, op: Operator, inputs: List[int], out: torch.Tensor) -> None:
        for tid in inputs:
            self.tensors[tid].consumers.append(op.index)
        op.output = self.new_tensor(out, op.index)
        self.ops.append(op)

    def _record_compute(self, module_name: str, m: nn.Module, inp: int, out: torch.Tensor) -> None:
        in_shape = _shape3(self.tensors[inp].shape)
        out_shape = _shape3(out.shape[1:])
        out_elements = int(math.prod(out_shape))
        if isinstance(m, nn.Conv2d):
            kind = getattr(m, "op_kind", None) or (
                "dwconv" if m.groups > 1 and m.groups == m.in_channels else
                "pwconv" if tuple(m.kernel_size) == (1, 1) else "conv")
            macs = out_elements * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            kernel, stride, groups = tuple(m.kernel_size), tuple(m.stride), m.groups
        else:
            kind, macs, kernel, stride, groups = "linear", out_elements * m.in_features, (1, 1), (1, 1), 1
        op = Operator(index=len(self.ops), name=self._unique(module_name), op=kind,
                      is_layer=isinstance(m, MIXED_LAYER_TYPES), inputs=[inp], output=-1,
                      in_shape=in_shape, out_shape=out_shape, macs=int(macs),
                      weight_elements=m.weight.numel(),
                      bias_elements=m.bias.numel() if m.bias is not None else 0,
                      kernel=kernel, stride=stride, groups=groups)
        self._add_op(op, [inp], out)

    def _record_other(self, kind: str, module_name: str, acts: List[int], out: torch.Tensor) -> None:
        prefix = f"{module_name}." if module_name else ""
        op = Operator(index=len(self.ops), name=self._unique(f"{prefix}{kind}"), op=kind, is_layer=False,
                      inputs=list(acts), output=-1, in_shape=_shape3(self.tensors[acts[0]].shape),
                      out_shape=_shape3(out.shape[1:]))
        self._add_op(op, acts, out)


def trace_model(model: nn.Module, input_shape: Sequence[int], device="meta"):
    """Operators and tensors of one forward pass of ``model`` on a (1, *input_shape) input."""
    stack: List[Tuple[str, nn.Module]] = []
    hooks = []
    def enter(mod, inp, _name):
        stack.append((_name, mod))

    def leave(mod, inp, out):
        stack.pop()  # returning None keeps the module's output

    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, inp, _n=name: enter(mod, inp, _n)))
        hooks.append(m.register_forward_hook(leave))
    # trace every mixed layer at one fixed precision (its first allowed one): one conv per layer
    saved = []
    for _, m in model.named_modules():
        if isinstance(m, MIXED_LAYER_TYPES):
            saved.append((m, m.mode, m.fixed_precision))
            m.mode, m.fixed_precision = "fixed", m.precisions[0]
    was_training = model.training
    model.eval()
    tracer = _Tracer(stack)
    try:
        x = torch.zeros((1, *input_shape), device=device)
        with torch.no_grad():
            input_id = tracer.new_tensor(x, -1)
            with tracer:
                y = model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode, fixed in saved:
            m.mode, m.fixed_precision = mode, fixed
        model.train(was_training)
    outputs = sorted({tracer.node_of[id(t)] for t in _tensors_in(y) if id(t) in tracer.node_of})
    if not tracer.ops:
        raise ValueError("the model ran no conv or linear layer on its input")
    return tracer.ops, [tracer.tensors[i] for i in range(len(tracer.tensors))], input_id, outputs


# ----------------------------------------------------------------------------------------------------
# Mapping entries (single- and dual-core)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    """One processing unit's share of a layer: its precision and output-channel range [c0, c1)."""
    unit: Optional[str]   # None: the profile's primary unit
    precision: str
    c0: int
    c1: int


def _parse_option_key(key: str, layer: Operator, where: str) -> List[Part]:
    """"m7:int8[0:48]+m4:int4[48:96]" (see dual_option_key)."""
    parts = []
    for chunk in key.split("+"):
        try:
            unit, rest = chunk.split(":", 1)
            precision, rng = rest.rstrip("]").split("[")
            c0, c1 = (int(v) for v in rng.split(":"))
        except ValueError:
            raise ValueError(f"{where}: cannot read dual-core option {key!r}; expected "
                             f"'unit:precision[c0:c1]+unit:precision[c0:c1]'") from None
        parts.append(Part(unit, precision, c0, c1))
    return parts


def normalize_entry(layer: Operator, entry: Any, where: str = "mapping") -> List[Part]:
    """A mapping value as a list of Parts, validated against the layer.

    Accepted forms: ``"int8"`` (whole layer on the primary unit); a dual-core option key
    ``"m7:int8[0:48]+m4:int4[48:96]"``; or an object
    ``{"split": 0.5, "units": {"m7": {"precision": "int8", "channels": [0, 48]},
    "m4": {"precision": "int4", "channels": [48, 96]}}}`` (one unit listed = whole layer there).
    """
    where = f"{where}: layer {layer.name}"
    if isinstance(entry, str):
        if ":" in entry:
            parts = _parse_option_key(entry, layer, where)
        else:
            get_precision(entry, where)
            return [Part(None, entry, 0, layer.out_channels)]
    elif isinstance(entry, Mapping):
        units = entry.get("units")
        if not isinstance(units, Mapping) or not units:
            raise ValueError(f"{where}: a dual-core entry needs 'units': {{unit: {{'precision': ..., "
                             f"'channels': [c0, c1]}}}}, got {entry!r}")
        parts = []
        for unit, spec in units.items():
            if not isinstance(spec, Mapping) or "precision" not in spec:
                raise ValueError(f"{where}: unit {unit!r} needs a 'precision', got {spec!r}")
            ch = spec.get("channels", [0, layer.out_channels])
            if (not isinstance(ch, (list, tuple)) or len(ch) != 2
                    or not all(isinstance(c, int) and not isinstance(c, bool) for c in ch)):
                raise ValueError(f"{where}: unit {unit!r}: 'channels' must be [c0, c1] integers, got {ch!r}")
            parts.append(Part(str(unit), spec["precision"], ch[0], ch[1]))
    else:
        raise ValueError(f"{where}: expected a precision name or a dual-core object, got {entry!r}")
    for p in parts:
        get_precision(p.precision, where)
    ranges = sorted((p.c0, p.c1) for p in parts)
    pos = 0
    for c0, c1 in ranges:
        if c0 != pos or c1 <= c0:
            raise ValueError(f"{where}: channel ranges {[[a, b] for a, b in ranges]} must split "
                             f"[0, {layer.out_channels}) into contiguous, non-empty pieces")
        pos = c1
    if pos != layer.out_channels:
        raise ValueError(f"{where}: channel ranges {[[a, b] for a, b in ranges]} must cover all "
                         f"{layer.out_channels} output channels")
    if len({p.unit for p in parts}) != len(parts):
        raise ValueError(f"{where}: a unit appears twice")
    return sorted(parts, key=lambda p: p.c0)


def dual_option_key(parts: Sequence[Part]) -> str:
    return "+".join(f"{p.unit}:{p.precision}[{p.c0}:{p.c1}]" for p in parts)


def dual_entry(parts: Sequence[Part], out_channels: int) -> Dict[str, Any]:
    """The object form of a mapping entry (what mapping.json stores for a dual-core layer)."""
    first = parts[0]
    return {"split": round((first.c1 - first.c0) / out_channels, 4),
            "units": {p.unit: {"precision": p.precision, "channels": [p.c0, p.c1]} for p in parts}}


# ----------------------------------------------------------------------------------------------------
# The analysis
# ----------------------------------------------------------------------------------------------------
def layer_input_factor(op: "Operator", parts: Sequence[Part]) -> float:
    """Bytes per element at which a layer reads its input: its precision; split over units, each
    unit's copy (a depthwise conv reads only its channel slice)."""
    if len(parts) == 1:
        return precision_bits(parts[0].precision) / 8.0
    if op.op == "dwconv":
        return sum(precision_bits(p.precision) / 8.0 * (p.c1 - p.c0) / op.out_channels for p in parts)
    return sum(precision_bits(pr) / 8.0 for pr in {p.precision for p in parts})


def layer_output_factor(op: "Operator", parts: Sequence[Part]) -> float:
    """Bytes per element of a layer's output when nothing reads it later (the network output)."""
    return sum(precision_bits(p.precision) / 8.0 * (p.c1 - p.c0) / op.out_channels for p in parts)


class NetworkAnalysis:
    """Operators (execution order), tensors and the memory model of one network."""

    def __init__(self, spec: Mapping, operators: List[Operator], tensors: List[Tensor], input_id: int,
                 output_ids: List[int], model_params: Optional[int] = None):
        self.spec = dict(spec)
        self.operators = operators
        self.tensors = {t.id: t for t in tensors}
        self.input_id = input_id
        self.output_ids = list(output_ids)
        self.layers = [o for o in operators if o.is_layer]
        self._by_name = {o.name: o for o in self.layers}
        self.layer_params = sum(o.params for o in self.layers)
        self.model_params = self.layer_params if model_params is None else int(model_params)
        self.macs = sum(o.macs for o in operators)
        n = len(operators)
        self._last_use = {}
        for t in self.tensors.values():
            last = max(t.consumers) if t.consumers else t.producer
            if t.id in self.output_ids:
                last = n  # the result is read after the last operator
            self._last_use[t.id] = last

    # -- names -------------------------------------------------------------------------------------
    @property
    def layer_names(self) -> List[str]:
        return [o.name for o in self.layers]

    def layer(self, name: str) -> Operator:
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(f"unknown layer {name!r}") from None

    def stage_of(self, op: Operator) -> str:
        """Stage = the spatial resolution an operator produces (the head's vectors: 'head')."""
        c, h, w = op.out_shape
        return "head" if op.op == "linear" or (h, w) == (1, 1) else f"{h}x{w}"

    # -- liveness ----------------------------------------------------------------------------------
    def alive(self, index: int) -> List[int]:
        """Tensor ids alive while operator ``index`` runs (its inputs, output, and kept tensors)."""
        return [t for t, last in self._last_use.items()
                if self.tensors[t].producer <= index <= last]

    def _inplace_ok(self, op: Operator) -> bool:
        return op.op == "dwconv" and self._last_use[op.inputs[0]] == op.index

    def _inplace_scaled_input(self, op: Operator) -> Optional[int]:
        """The tensor a channel-scaling multiply (squeeze-excitation ``x · s``) overwrites in place:
        an input of the output's shape that nobody reads later (module docstring)."""
        if op.op != "mul":
            return None
        out_shape = self.tensors[op.output].shape
        for t in op.inputs:
            if self.tensors[t].shape == out_shape and self._last_use[t] == op.index:
                return t
        return None

    def operator_bytes(self, op: Operator, tensor_size, inplace_depthwise: bool = False) -> Dict[str, int]:
        """input / output / kept / live bytes of ``op`` with ``tensor_size(tensor_id) -> bytes``."""
        alive = self.alive(op.index)
        inputs = sum(tensor_size(t) for t in op.inputs)
        output = tensor_size(op.output)
        kept = sum(tensor_size(t) for t in alive if t not in op.inputs and t != op.output)
        live = inputs + output + kept
        if inplace_depthwise and self._inplace_ok(op):
            live = kept + max(inputs, output) + int(math.ceil(output / max(1, op.out_channels)))
        elif inplace_depthwise:
            scaled = self._inplace_scaled_input(op)
            if scaled is not None:
                live = kept + inputs - tensor_size(scaled) + max(tensor_size(scaled), output)
        return {"input": inputs, "output": output, "kept": kept, "live": live}

    def uniform_size(self, precision: str):
        bits = precision_bits(precision)
        return lambda t: tensor_bytes(self.tensors[t].elements, bits)

    def layer_bytes(self, op: Operator, precision: str) -> Dict[str, int]:
        """The memory filter's view of a layer: every tensor it touches at ``precision``."""
        size = self.uniform_size(precision)
        b = self.operator_bytes(op, size)
        b["live_inplace"] = self.operator_bytes(op, size, True)["live"]
        b["weights"] = op.weight_bytes(precision) if op.weight_elements else 0
        b["flash"] = op.flash_bytes(precision) if op.weight_elements else 0
        return b

    def dual_layer_bytes(self, op: Operator, parts: Sequence[Part], inplace_depthwise: bool = False
                         ) -> Dict[str, Any]:
        """Bytes of a layer split over units: each unit reads the whole input (a depthwise conv: its
        channel slice) in its own precision and writes its output slice; one input copy per distinct
        precision; tensors kept for later at the widest of the units' precisions."""
        n = op.out_channels
        in_e = self.tensors[op.inputs[0]].elements
        out_e = self.tensors[op.output].elements
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
                                "output": out_b, "flash": op.flash_bytes(p.precision, frac)}
        inputs = dw_inputs if op.op == "dwconv" else sum(inputs_by_precision.values())
        widest = max(precision_bits(p.precision) for p in parts)
        kept = sum(tensor_bytes(self.tensors[t].elements, widest) for t in self.alive(op.index)
                   if t not in op.inputs and t != op.output)
        live = inputs + outputs + kept
        if inplace_depthwise and self._inplace_ok(op):
            live = kept + max(inputs, outputs) + int(math.ceil(outputs / max(1, n)))
        return {"units": per_unit, "input": inputs, "output": outputs, "kept": kept, "live": live,
                "flash": sum(u["flash"] for u in per_unit.values())}

    # -- whole network under a mapping -------------------------------------------------------------
    def check_mapping(self, mapping: Mapping[str, Any], where: str = "mapping") -> Dict[str, List[Part]]:
        """Names must match the layers exactly; returns each layer's Parts."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: expected an object {{layer name: precision}}, got {type(mapping).__name__}")
        check_layer_names_match(self.layer_names, mapping, where,
                                f"the model ({self.spec.get('type', 'model')}, {len(self.layer_names)} layers)")
        return {n: normalize_entry(self._by_name[n], mapping[n], where) for n in self.layer_names}

    def storage_factors(self, parts_of: Mapping[str, Sequence[Part]]) -> Dict[int, float]:
        """Bytes per element of every tensor under a mapping (module docstring: storage precision)."""
        return self.resolve_storage_factors(
            lambda op: layer_input_factor(op, parts_of[op.name]),
            lambda op: layer_output_factor(op, parts_of[op.name]), max, 4.0)

    def resolve_storage_factors(self, input_factor, output_factor, combine, default):
        """Each tensor's bytes per element: the widest of what its consumers read (a layer reads at
        ``input_factor(op)``, any other operator passes on its output's factor); a tensor nobody
        reads is stored as its producer layer writes it (``output_factor(op)``), else ``default``.
        ``combine`` takes the list of consumer factors, so the same walk serves plain numbers and
        the search's differentiable expectations."""
        factor: Dict[int, Any] = {}
        # consumers come later than producers: resolve from the last tensor backwards
        for tid in sorted(self.tensors, key=lambda i: -self.tensors[i].producer):
            t = self.tensors[tid]
            vals = []
            for c in t.consumers:
                op = self.operators[c]
                vals.append(input_factor(op) if op.is_layer else factor[op.output])
            if vals:
                factor[tid] = combine(vals)
            elif t.producer >= 0 and self.operators[t.producer].is_layer:
                factor[tid] = output_factor(self.operators[t.producer])
            else:
                factor[tid] = default
        return factor

    def mapping_live_bytes(self, mapping: Mapping[str, Any], inplace_depthwise: bool = False,
                           where: str = "mapping") -> List[Tuple[Operator, int]]:
        parts_of = self.check_mapping(mapping, where)
        factor = self.storage_factors(parts_of)

        def size(t: int) -> int:
            return tensor_bytes(self.tensors[t].elements, factor[t], factor=True)
        return [(op, self.operator_bytes(op, size, inplace_depthwise)["live"]) for op in self.operators]

    # -- JSON --------------------------------------------------------------------------------------
    def to_json(self, memory_threshold_kb: float, precisions: Sequence[str] = PRECISION_ORDER,
                inplace_depthwise: bool = False, allow_infeasible: bool = False) -> Dict[str, Any]:
        """analysis.json (DESIGN.md §5): per layer and precision the bytes, and the precisions whose
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
        for op in self.layers:
            per = {p: self.layer_bytes(op, p) for p in precisions}
            allowed = [p for p in precisions if per[p][key] <= threshold]
            need = min(per[p][key] for p in precisions)
            entry = {"name": op.name, "op": op.op, "in_shape": list(op.in_shape), "out_shape": list(op.out_shape),
                     "kernel": list(op.kernel), "stride": list(op.stride), "groups": op.groups,
                     "macs": op.macs, "params": op.params, "stage": self.stage_of(op),
                     "activations": list(op.activations),
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
        size = self.uniform_size(lowest)
        for op in self.operators:
            if op.is_layer:
                continue
            need = self.operator_bytes(op, size, inplace_depthwise)["live"]
            if need > threshold:
                infeasible.append({"name": op.name, "min_live_bytes": need, "min_live_kb": round(need / KB, 2),
                                   "at": lowest})
        return {
            "schema": SCHEMA,
            "model": self.spec,
            "memory_threshold_kb": memory_threshold_kb,
            "memory_model": "inplace_depthwise" if inplace_depthwise else "layerwise",
            "allow_infeasible": bool(allow_infeasible),
            "kb_bytes": KB,
            "precisions": precisions,
            "layers": layers,
            "infeasible": infeasible,
            "operators": [o.to_json() for o in self.operators],
            "tensors": [{"id": t.id, "shape": list(t.shape), "producer": t.producer, "consumers": t.consumers}
                        for t in self.tensors.values()],
            "input_tensor": self.input_id,
            "output_tensors": self.output_ids,
            "totals": self.totals(precisions),
        }

    def totals(self, precisions: Sequence[str] = PRECISION_ORDER) -> Dict[str, Any]:
        peak, peak_in, where, where_in, flash = {}, {}, {}, {}, {}
        for p in precisions:
            uniform = {n: p for n in self.layer_names}
            op, peak[p] = max(self.mapping_live_bytes(uniform), key=lambda x: x[1])
            where[p] = op.name
            op, peak_in[p] = max(self.mapping_live_bytes(uniform, inplace_depthwise=True), key=lambda x: x[1])
            where_in[p] = op.name
            flash[p] = flash_bytes(self, uniform)
        return {"macs": self.macs, "params": self.model_params, "layer_params": self.layer_params,
                "layers": len(self.layers), "operators": len(self.operators),
                "peak_ram_bytes": peak, "peak_operator": where, "peak_ram_bytes_inplace": peak_in,
                "peak_operator_inplace": where_in, "flash_bytes": flash}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NetworkAnalysis":
        ops = []
        for o in d["operators"]:
            ops.append(Operator(index=o["index"], name=o["name"], op=o["op"], is_layer=bool(o["layer"]),
                                inputs=list(o["inputs"]), output=o["output"], in_shape=tuple(o["in_shape"]),
                                out_shape=tuple(o["out_shape"]), macs=int(o.get("macs", 0)),
                                weight_elements=int(o.get("weight_elements", 0)),
                                bias_elements=int(o.get("bias_elements", 0)),
                                kernel=tuple(o.get("kernel", (1, 1))), stride=tuple(o.get("stride", (1, 1))),
                                groups=int(o.get("groups", 1)), activations=list(o.get("activations", []))))
        tensors = [Tensor(t["id"], tuple(t["shape"]), t["producer"], list(t["consumers"])) for t in d["tensors"]]
        return cls(d["model"], ops, tensors, d["input_tensor"], d["output_tensors"],
                   d.get("totals", {}).get("params"))


def analyze_model(model: nn.Module, input_shape: Sequence[int], spec: Optional[Mapping] = None) -> NetworkAnalysis:
    """Analyse a built model on a (C, H, W) input (any device; the trace itself runs on ``meta``
    when the model's parameters are there)."""
    device = next(model.parameters()).device
    ops, tensors, input_id, outputs = trace_model(model, input_shape, device=device)
    search_only = {f"{n}.{s}" for n, m in model.named_modules() if isinstance(m, MIXED_LAYER_TYPES)
                   for s in ("alpha", "act_clip")}
    model_params = sum(p.numel() for n, p in model.named_parameters() if n not in search_only)
    if spec is None:
        spec = getattr(model, "spec", None) or {"type": model.__class__.__name__,
                                               "input_size": int(input_shape[-1])}
    return NetworkAnalysis(spec, ops, tensors, input_id, outputs, model_params)


def analyze_network(spec: Mapping) -> NetworkAnalysis:
    """Analyse a registered model from its spec (``model.spec`` / ``{"type": ..., "input_size": ...}``).
    The model is built and traced on the ``meta`` device: no memory, no arithmetic."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"model spec must be an object with a 'type', got {spec!r}")
    with torch.device("meta"):
        model = build_from_spec(spec)
    size = int(model.spec.get("input_size", spec.get("input_size", 224)))
    channels = int(spec.get("in_channels", 3))
    return analyze_model(model, (channels, size, size), spec=model.spec)


def as_analysis(obj: Union[NetworkAnalysis, Mapping, str]) -> NetworkAnalysis:
    """A NetworkAnalysis from itself, an analysis.json dict, or its path."""
    if isinstance(obj, NetworkAnalysis):
        return obj
    if isinstance(obj, str):
        obj = load_analysis_json(obj)
    if isinstance(obj, Mapping):
        return NetworkAnalysis.from_json(obj)
    raise ValueError(f"expected a NetworkAnalysis, an analysis.json object or its path, got {type(obj).__name__}")


# ----------------------------------------------------------------------------------------------------
# Whole-network figures under a mapping
# ----------------------------------------------------------------------------------------------------
def peak_ram_bytes(analysis, mapping: Mapping[str, Any], inplace_depthwise: bool = False) -> int:
    """Peak activation RAM of the network under ``mapping`` (module docstring for the model)."""
    a = as_analysis(analysis)
    return max(b for _, b in a.mapping_live_bytes(mapping, inplace_depthwise))


def flash_bytes(analysis, mapping: Mapping[str, Any]) -> int:
    """Σ over layers of packed weights + per-channel bias/scale, each part at its precision."""
    a = as_analysis(analysis)
    parts_of = a.check_mapping(mapping)
    total = 0
    for op in a.layers:
        for p in parts_of[op.name]:
            total += op.flash_bytes(p.precision, (p.c1 - p.c0) / op.out_channels)
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
        w = sum(op.weight_bytes(p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
        f = sum(op.flash_bytes(p.precision, (p.c1 - p.c0) / op.out_channels) for p in parts)
        weights += w
        fp32_weights += op.weight_bytes("fp32")
        label = parts[0].precision if len(parts) == 1 else "+".join(p.precision for p in parts)
        for group, key in ((by_op, op.op), (by_stage, a.stage_of(op))):
            g = group.setdefault(key, {"layers": 0, "params": 0, "bytes": 0, "fp32_bytes": 0, "precisions": {}})
            g["layers"] += 1
            g["params"] += op.params
            g["bytes"] += f
            g["fp32_bytes"] += op.flash_bytes("fp32")
            g["precisions"][label] = g["precisions"].get(label, 0) + 1
        for p in parts:
            frac = (p.c1 - p.c0) / op.out_channels
            h = by_precision.setdefault(p.precision, {"layers": 0, "params": 0})
            h["layers"] += 1
            h["params"] += int(round(op.params * frac))
        rows.append({"name": op.name, "op": op.op, "stage": a.stage_of(op), "params": op.params,
                     "precision": label, "bytes": f, "fp32_bytes": op.flash_bytes("fp32"),
                     "ratio": op.flash_bytes("fp32") / f})
    for g in list(by_op.values()) + list(by_stage.values()):
        g["ratio"] = g["fp32_bytes"] / g["bytes"] if g["bytes"] else float("inf")
    return {"size_bytes": size, "fp32_size_bytes": fp32_size, "ratio": fp32_size / size,
            "weight_bytes": weights, "fp32_weight_bytes": fp32_weights,
            "weight_ratio": fp32_weights / weights if weights else float("inf"),
            "params": a.layer_params, "by_precision": by_precision, "by_op": by_op, "by_stage": by_stage,
            "layers": rows}


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def _read_json(path: str, what: str) -> Any:
    from Search_CIFAR10.dnas.utils.checkpoint import read_json
    return read_json(path, what)


def validate_analysis(d: Any, where: str) -> Dict[str, Any]:
    """Check an analysis.json object; ValueError naming ``where`` and the first problem found."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: not an analysis file (expected a JSON object)")
    if d.get("schema") != SCHEMA:
        raise ValueError(f"{where}: unknown schema {d.get('schema')!r}; expected {SCHEMA!r} "
                         f"(written by tensor_memory_filter.py)")
    for key in ("model", "precisions", "layers", "operators", "tensors", "input_tensor", "output_tensors"):
        if key not in d:
            raise ValueError(f"{where}: missing field {key!r}")
    if not isinstance(d["model"], Mapping) or "type" not in d["model"]:
        raise ValueError(f"{where}: 'model' must be a model spec with a 'type'")
    canonical_precisions(d["precisions"], f"{where}: precisions")
    if not isinstance(d["layers"], list) or not d["layers"]:
        raise ValueError(f"{where}: 'layers' must be a non-empty list")
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
    try:
        NetworkAnalysis.from_json(d)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed operator graph ({exc.__class__.__name__}: {exc})") from None
    return dict(d)


def load_analysis_json(path: str) -> Dict[str, Any]:
    """Read and validate an analysis.json (or its dual-core variant)."""
    return validate_analysis(_read_json(path, "analysis file"), path)


def allowed_precisions_of(analysis_json: Mapping[str, Any]) -> Dict[str, List[str]]:
    """{layer: allowed precisions}, the form build_model(precisions=...) takes."""
    return {l["name"]: list(l["allowed_precisions"]) for l in analysis_json["layers"]}


def mapping_json(analysis, layers: Mapping[str, Any], **extra) -> Dict[str, Any]:
    """A mapping.json object (DESIGN.md §5) for ``layers``, validated against the analysis."""
    a = as_analysis(analysis)
    a.check_mapping(layers)
    return {"schema": MAPPING_SCHEMA, "model": a.spec, "layers": {n: layers[n] for n in a.layer_names}, **extra}


def read_mapping(d: Any, where: str) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """(model spec or None, {layer: entry}) from a mapping.json object or a bare {layer: precision}
    object (the seed's format)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if "schema" in d:
        if d["schema"] != MAPPING_SCHEMA:
            raise ValueError(f"{where}: unknown schema {d['schema']!r}; expected {MAPPING_SCHEMA!r}")
        if not isinstance(d.get("layers"), Mapping):
            raise ValueError(f"{where}: 'layers' must be an object {{layer name: precision}}")
        return (dict(d["model"]) if isinstance(d.get("model"), Mapping) else None), dict(d["layers"])
    return None, dict(d)


def load_mapping_json(path: str, analysis=None) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """Read a mapping file; with ``analysis``, check names (missing / unknown listed) and values."""
    spec, layers = read_mapping(_read_json(path, "precision mapping file"), path)
    if analysis is not None:
        as_analysis(analysis).check_mapping(layers, where=path)
    return spec, layers
