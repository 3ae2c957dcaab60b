"""The operator graph of a network: shapes, MACs and parameters, operator by operator.

One traced forward pass on the ``meta`` device (no data, no arithmetic) records every operator in
execution order and the activation tensors between them:

* *layers*: the searchable mixed-precision conv / depthwise / pointwise / linear layers, named by their
  module path (``features.3.conv.1.0``);
* the other operators that own a buffer on an MCU: residual adds, SE multiplications, pooling,
  concatenations. BatchNorm, activations, dropout and reshapes are fused into the operator before them
  (they run in its epilogue or are views), so they own no buffer.

A residual add whose one operand is a layer's output that nothing else reads is fused into that layer
(``fuse_residual_adds``): the layer adds the skip tensor in its epilogue, as the integer network does
(deploy/), so the pre-add tensor never exists. The layer then reads the skip tensor
(``Operator.residual``, one of its consumers), writes the add's output, and records ``"add"`` in
``Operator.fused`` so the latency model charges the add's element-wise work to it.

Activations that cost arithmetic per element (hard-swish, hard-sigmoid, sigmoid, SiLU: see
``ACTIVATION_FUNCTIONS``) are still fused, but recorded on the operator whose output they transform
(``Operator.activations``) so the latency model can charge them per output element. ReLU / ReLU6 are
the clamp of the requantisation and cost nothing extra. Fusing assumes an engine that runs the
activation in the producer's epilogue (X-CUBE-AI / TinyEngine class); TFLM runs HARD_SWISH and
LOGISTIC as operators of their own, with a second buffer, which this model does not count.
Stochastic depth is the identity at inference (a view here), so it adds no operator.

What the graph costs in memory, Flash and time: ``memory``, ``flash``, ``latency``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from models.layers import MIXED_LAYER_TYPES
from models.mapping import Part, check_layer_names_match, entry_parts
from models.registry import build_from_spec

LAYER_OPS = ("conv", "dwconv", "pwconv", "linear")


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
    # a fused residual add: the skip tensor read in the epilogue (not an input: kept alive for it)
    residual: Optional[int] = None
    # kinds of the operators fused into this one (["add"]), charged by the latency model
    fused: List[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return self.weight_elements + self.bias_elements

    def quantizes(self, tid: int) -> bool:
        """Whether this operator is a layer that reads tensor ``tid`` through its input quantizer (a
        residual add reads its skip operand without one): such readers decide how a tensor is stored."""
        return self.is_layer and self.inputs[0] == tid

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
        if self.residual is not None:
            d["residual"] = self.residual
        if self.fused:
            d["fused"] = list(self.fused)
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


def fuse_residual_adds(operators: List[Operator], tensors: List[Tensor], output_ids: Sequence[int]
                       ) -> Tuple[List[Operator], List[Tensor]]:
    """Fold every two-operand add whose one operand is a layer's output read by nothing else into that
    layer (module docstring); the operators are renumbered. A graph with nothing to fold (or already
    folded) comes back unchanged."""
    by_id = {t.id: t for t in tensors}
    removed_ops, removed_tensors = set(), set()
    for add in operators:
        if add.op != "add" or len(add.inputs) != 2:
            continue
        candidates = [t for t in add.inputs
                      if by_id[t].producer >= 0 and operators[by_id[t].producer].is_layer
                      and by_id[t].consumers == [add.index] and t not in output_ids
                      and operators[by_id[t].producer].residual is None]
        if not candidates:
            continue
        branch = max(candidates, key=lambda t: by_id[t].producer)  # the later one: the block's last layer
        skip = next(t for t in add.inputs if t != branch)
        layer = operators[by_id[branch].producer]
        layer.output = add.output
        layer.residual = skip
        layer.fused.append("add")
        layer.activations.extend(add.activations)
        by_id[add.output].producer = layer.index
        by_id[skip].consumers = [layer.index if c == add.index else c for c in by_id[skip].consumers]
        removed_ops.add(add.index)
        removed_tensors.add(branch)
    if not removed_ops:
        return operators, tensors
    kept = [o for o in operators if o.index not in removed_ops]
    new_index = {o.index: i for i, o in enumerate(kept)}
    for o in kept:
        o.index = new_index[o.index]
    tensors = [t for t in tensors if t.id not in removed_tensors]
    for t in tensors:
        t.producer = new_index.get(t.producer, t.producer)
        t.consumers = [new_index[c] for c in t.consumers]
    return kept, tensors


# ----------------------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------------------
class NetworkAnalysis:
    """Operators (execution order) and tensors of one network, and when each tensor is last read.
    Residual adds are fused into the layers before them (``fuse_residual_adds``), also when the graph
    comes from an analysis.json written before that rule."""

    def __init__(self, spec: Mapping, operators: List[Operator], tensors: List[Tensor], input_id: int,
                 output_ids: List[int], model_params: Optional[int] = None):
        operators, tensors = fuse_residual_adds(operators, tensors, output_ids)
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
        self.last_use: Dict[int, int] = {}
        for t in self.tensors.values():
            last = max(t.consumers) if t.consumers else t.producer
            if t.id in self.output_ids:
                last = n  # the result is read after the last operator
            self.last_use[t.id] = last

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
        return [t for t, last in self.last_use.items()
                if self.tensors[t].producer <= index <= last]

    def check_mapping(self, mapping: Mapping[str, Any], where: str = "mapping") -> Dict[str, List[Part]]:
        """Names must match the layers exactly; returns each layer's Parts."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: expected an object {{layer name: precision}}, got {type(mapping).__name__}")
        check_layer_names_match(self.layer_names, mapping, where,
                                f"the model ({self.spec.get('type', 'model')}, {len(self.layer_names)} layers)")
        return {n: entry_parts(n, self._by_name[n].out_channels, mapping[n], where) for n in self.layer_names}


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
                                groups=int(o.get("groups", 1)), activations=list(o.get("activations", [])),
                                residual=o.get("residual"), fused=list(o.get("fused", []))))
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


def as_analysis(obj: Union[NetworkAnalysis, Mapping]) -> NetworkAnalysis:
    """A NetworkAnalysis from itself or an analysis.json object (read a file with
    ``analysis_file.load_analysis_json``)."""
    if isinstance(obj, NetworkAnalysis):
        return obj
    if isinstance(obj, Mapping):
        return NetworkAnalysis.from_json(obj)
    raise ValueError(f"expected a NetworkAnalysis or an analysis.json object, got {type(obj).__name__}")
