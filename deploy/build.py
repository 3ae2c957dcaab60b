"""A trained AdaptQNet run → the integer network (``deploy/ir.py``) that the numpy reference and the C
export execute, plus the test images, their labels and PyTorch's logits for them.

``load_run(run_dir)`` reads a finished search run (stage 1, stage 2 or a uniform run): ``final.pt``,
``mapping.json``, the analysis the run was searched with, ``split.json`` / ``args.json``.
``build_integer_network(run)`` converts its network; ``compare_with_pytorch`` runs the reference and
PyTorch (eval mode) on the test split. The conversion, layer by layer (docs/design.md §3.6):

* **Integer layers** (int8/4/2): the int32 accumulator is ``Σ q·(2u − L_w)`` over the input codes q
  (PACT) and the DoReFa weight codes u exactly as training rounded them (``models.quantizers.
  weight_codes``), so a weight is never re-rounded; on the symmetric grid (``--weight_grid
  symmetric``) it is ``Σ q·c`` with the signed codes c and L_w becomes M = 2^(k−1) − 1. Its real value
  is ``acc · step_in · s_c / L_w`` (``s_c`` the channel's least-squares scale, ``models.quantizers.
  weight_scale``); BatchNorm folds into that per-channel multiplier and a bias:
  ``y_c = A_c·acc + C_c``. Written to an int buffer, the part requantises in fixed point
  (``ir.requantizer``) with the consumer's PACT grid and the activation folded into the clamp.
* **Float layers**: fp16 layers hold weights and the tensors they read as IEEE half and accumulate in
  float32; fp32 layers are plain float. BatchNorm is the epilogue's scale and offset (the weights stay
  as trained). Where a float value meets an int consumer (or an int accumulator a float one), the
  epilogue converts: ``FloatEpilogue`` with PACT's own float32 constants.
* **Storage**: every tensor is held in the format(s) the memory model counts
  (``tensor_analysis.memory``): its layer readers' read formats (a split layer: one copy per distinct
  precision, a depthwise split its channel slices); a tensor only a pool reads takes the pooled
  vector's format; the logits are float32.
* **Residual adds** run in the epilogue of the layer before them (the add fused in the graph): the skip
  operand is the block input's widest stored copy, which is what training adds (``stored_input``).
* **Global pool**: an int pool of the classifier's input codes (round half to even), or a sequential
  float32 sum; the classifier then reads it. **Logits**: float32, through a float epilogue.
* **Split layers** (stage 2): one ``ConvPart`` per part, run one after the other on one core; each
  writes its output channels, so the result equals unsplit execution.

MobileNetV1, MobileNetV2 and EfficientNet-Lite0 convert. Networks with operators the IR cannot express
(hard-swish, SiLU, sigmoid and the squeeze-excitation multiply of MobileNetV3 / EfficientNet-B0, ...)
are refused with one line naming the first such operator.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from data.loader import DeviceLoader
from data.splits import load_splits
from deploy.arena import plan_arena
from deploy.ir import (FP16, FP32, Buffer, ChannelSlice, ConvPart, FloatEpilogue, FloatToInt, Format, GlobalAvgPool,
                       IntegerNetwork, PartOutput, Quantize, QuantizeOutput, accumulator_bounds, code_bounds, int_format,
                       requantizer)
from deploy import reference
from models.dual import build_dual_network
from models.files import load_checkpoint, read_json
from models.layers import MIXED_LAYER_TYPES
from models.mapping import Part, check_final_matches, load_mapping
from models.mixture import get_compile, set_compile
from models.network import mixed_layers
from models.precisions import PRECISIONS
from models.quantizers import grid_divisor, weight_codes, weight_scale
from models.registry import check_same_grid, check_same_model, spec_weight_grid
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.graph import NetworkAnalysis, Operator, analyze_network, as_analysis
from tensor_analysis.storage import StoredCopy, layer_readers, layer_reads, skip_copy, storage_copies

# Operators of the traced graph the IR has no op for, by the name a user knows them by.
UNSUPPORTED_OPERATORS = {"mul": "the squeeze-excitation multiply", "concat": "concatenation",
                         "hswish": "hard-swish", "hsigmoid": "hard-sigmoid", "sigmoid": "sigmoid", "silu": "SiLU"}
# Modules that may follow a layer inside its block: folded (BatchNorm), clamps, or nothing at inference.
ACTIVATION_BOUNDS = {nn.ReLU: (0.0, math.inf), nn.ReLU6: (0.0, 6.0)}
INFERENCE_IDENTITIES = (nn.Dropout, nn.Identity)
TEST_BATCH = 256


class UnsupportedNetwork(ValueError):
    """The network holds an operator the integer network cannot express yet."""


# ----------------------------------------------------------------------------------------------------
# The run directory
# ----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A finished run, loaded: the PyTorch network in eval mode and what it was searched with."""
    run_dir: str
    spec: Dict[str, Any]
    mapping: Dict[str, Any]
    model: nn.Module
    analysis: NetworkAnalysis
    analysis_path: str
    args: Dict[str, Any]
    hardware: str
    split: Dict[str, Any]


def _run_file(run_dir: str, name: str) -> str:
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: not a finished run directory, {name} is missing")
    return path


def _recorded_path(run_dir: str, value: Any) -> Optional[str]:
    """A path recorded in args.json: as written, else relative to the run directory."""
    if not value:
        return None
    for candidate in (value, os.path.join(run_dir, value)):
        if os.path.isfile(candidate):
            return candidate
    return None


def _analysis_path(run_dir: str, args: Mapping[str, Any]) -> str:
    """The analysis the run was searched with: its copy in the run directory, else the file args.json
    names (stage 1, then stage 2), else stage 2's own dual-core analysis."""
    for candidate in (os.path.join(run_dir, "analysis.json"),
                      _recorded_path(run_dir, args.get("tensor_analysis_json")),
                      _recorded_path(run_dir, args.get("dual_analysis_json")),
                      os.path.join(run_dir, "analysis_dual.json")):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{run_dir}: no analysis.json, and the analysis args.json names "
                            f"({args.get('tensor_analysis_json') or args.get('dual_analysis_json')}) is not found")


def _check_mapping_matches_checkpoint(run_dir: str, checkpoint: Mapping[str, Any], mapping: Mapping[str, Any],
                                      summary: Mapping[str, Any]) -> None:
    """What a checkpoint or summary.json records of the mapping must be mapping.json's."""
    where = f"{run_dir}: mapping.json disagrees with final.pt"
    check_final_matches(checkpoint, mapping, os.path.join(run_dir, "mapping.json"))
    recorded = checkpoint.get("mapping")
    if isinstance(recorded, Mapping):
        differ = sorted(n for n in set(recorded) | set(mapping) if recorded.get(n) != mapping.get(n))
        if differ:
            raise ValueError(f"{where} at layer {differ[0]} ({mapping.get(differ[0])!r} vs "
                             f"{recorded.get(differ[0])!r})" + (f" and {len(differ) - 1} more" if len(differ) > 1 else ""))
    for row in summary.get("layers", []) if isinstance(summary, Mapping) else []:
        name, precision = row.get("name"), row.get("precision")
        entry = mapping.get(name)
        if isinstance(entry, str) and isinstance(precision, str) and ":" not in precision and entry != precision:
            raise ValueError(f"{where}: summary.json has layer {name} at {precision}, mapping.json at {entry}")


def load_run(run_dir: str, hardware: Optional[str] = None) -> Run:
    """Read and cross-check a finished run directory; ValueError / FileNotFoundError with one line."""
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"--run_dir {run_dir}: directory not found")
    final_path = _run_file(run_dir, "final.pt")
    mapping_path = _run_file(run_dir, "mapping.json")
    args = read_json(_run_file(run_dir, "args.json"), "run arguments")
    split = read_json(_run_file(run_dir, "split.json"), "split file")
    summary_path = os.path.join(run_dir, "summary.json")
    summary = read_json(summary_path, "run summary") if os.path.isfile(summary_path) else {}
    checkpoint = load_checkpoint(final_path)
    if "spec" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{final_path}: not a network checkpoint (no 'spec' / 'model')")
    spec = dict(checkpoint["spec"])
    mapping_spec, mapping = load_mapping(mapping_path)
    if mapping_spec is not None:
        check_same_model(spec, mapping_spec, mapping_path)
        check_same_grid(spec, mapping_spec, mapping_path)
    if isinstance(summary.get("weight_grid"), str) and summary["weight_grid"] != spec_weight_grid(spec):
        raise ValueError(f"{summary_path}: says weight grid {summary['weight_grid']!r}, final.pt's network uses "
                         f"{spec_weight_grid(spec)!r}")
    _check_mapping_matches_checkpoint(run_dir, checkpoint, mapping, summary)
    try:
        model = build_dual_network(spec, mapping)
    except ValueError as exc:
        raise ValueError(f"{mapping_path}: {exc}") from None
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise ValueError(f"{run_dir}: mapping.json disagrees with final.pt ({first})") from None
    model.eval()
    analysis_path = _analysis_path(run_dir, args)
    analysis_doc = load_analysis_json(analysis_path)
    check_same_model(spec, analysis_doc["model"], analysis_path)
    hardware = (hardware or args.get("hardware")
                or (summary.get("hardware") or {}).get("profile") or "stm32h747")
    return Run(os.path.abspath(run_dir), spec, dict(mapping), model, as_analysis(analysis_doc), analysis_path,
               dict(args), str(hardware), dict(split))


def load_test_images(run: Run, data_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The run's test split as the model sees it (float32 N×3×H×W, normalised and resized exactly as
    the evaluation loader does) and its labels."""
    args, split = run.args, run.split
    size = int(run.spec.get("input_size", 32))
    recorded = list(split.get("test_indices") or [])
    # a stage-2 run may leave --limit_eval to stage 1 (None in its args.json); split.json's sizes say it
    limits = [args.get("limit_eval"), max(len(split.get("val_indices") or []), len(recorded)) or None]
    for limit in dict.fromkeys(limits):
        splits = load_splits(args.get("dataset") or split.get("dataset"), data_dir or args.get("data_dir"),
                             split_seed=int(args.get("split_seed", split.get("split_seed", 0)) or 0),
                             limit_eval=limit, image_size=size)
        if not recorded or list(splits.test_indices) == recorded:
            break
    else:
        raise ValueError(f"{run.run_dir}: split.json's test images differ from the ones its dataset and split "
                         f"seed give now")
    loader = DeviceLoader(splits.test_x, splits.test_y, TEST_BATCH, size, splits.mean, splits.std, shuffle=False,
                          augment=False, flip=splits.flip, seed=0)
    images = torch.cat([x for x, _ in loader]).numpy().astype(np.float32)
    return images, splits.test_y.numpy().astype(np.int64)


def pytorch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """The model's float32 logits in eval mode, with the quantizers' eager path (the reference for
    the agreement figures must not depend on a compiler being present)."""
    previous = get_compile()
    set_compile("off")
    try:
        model.eval()
        with torch.no_grad():
            out = [model(torch.from_numpy(images[i:i + TEST_BATCH])) for i in range(0, len(images), TEST_BATCH)]
    finally:
        set_compile(previous)
    return torch.cat(out).numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Held:
    """How a tensor copy is stored: its IR format and, for int, the PACT grid that produced its codes
    (float32 clamp bounds and 1/step, as the quantizer computes them)."""
    format: Format
    lo: float = 0.0
    hi: float = 0.0
    inv_step: float = 0.0

    @property
    def bits(self) -> int:
        return self.format.element_bits

    def to_int(self) -> Optional[FloatToInt]:
        if not self.format.is_int:
            return None
        code_lo, code_hi = self.format.code_range
        return FloatToInt(self.lo, self.hi, self.inv_step, code_lo, code_hi)

    def tag(self) -> str:
        f = self.format
        return f.kind if not f.is_int else f"{'s' if f.signed else 'u'}{f.bits}"


HELD_FP32 = Held(FP32)
HELD_FP16 = Held(FP16)


def read_held(layer, precision: str) -> Held:
    """The format ``layer`` reads its input in at ``precision``."""
    if precision == "fp32":
        return HELD_FP32
    if precision == "fp16":
        return HELD_FP16
    lo, a, inv_step, step = layer.input_grid(precision)
    return Held(int_format(PRECISIONS[precision].bits, layer.signed_input, step, layer.input_levels(precision)),
                lo, a, inv_step)


@dataclass
class Copy:
    """One stored copy of a tensor: channels [c0, c1) in ``held``'s format, as buffer ``buffer``."""
    held: Held
    c0: int
    c1: int
    buffer: str = ""


# ----------------------------------------------------------------------------------------------------
# The layers of the PyTorch network
# ----------------------------------------------------------------------------------------------------
@dataclass
class LayerEpilogue:
    """What follows a layer before its consumers read it: a folded BatchNorm and a clamp."""
    norm: Optional[nn.BatchNorm2d] = None
    activation: Optional[Tuple[float, float]] = None


def _epilogue_modules(model: nn.Module, name: str) -> LayerEpilogue:
    """BatchNorm and activation after layer ``name``: its later siblings in the Sequential that holds it
    (every registered network builds conv → norm → activation that way)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    found = LayerEpilogue()
    if not isinstance(parent, nn.Sequential):
        return found
    siblings = list(parent.named_children())
    index = [n for n, _ in siblings].index(child)
    for sibling_name, m in siblings[index + 1:]:
        where = f"{parent_name}.{sibling_name}" if parent_name else sibling_name
        if isinstance(m, nn.BatchNorm2d) and found.norm is None and found.activation is None:
            found.norm = m
        elif type(m) in ACTIVATION_BOUNDS and found.activation is None:
            found.activation = ACTIVATION_BOUNDS[type(m)]
        elif isinstance(m, INFERENCE_IDENTITIES):
            continue
        elif isinstance(m, (nn.Hardswish, nn.SiLU, nn.Sigmoid, nn.Hardsigmoid)):
            raise UnsupportedNetwork(f"layer {name} is followed by {type(m).__name__} ({where}), which the integer "
                                     f"network cannot express yet")
        else:
            break
    return found


def _affine(layer, epilogue: LayerEpilogue, scale_in: np.ndarray, c0: int, c1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per output channel [c0, c1): y = A·acc + C in float64, acc in units of ``scale_in`` (per channel),
    with the layer's bias and the BatchNorm folded in."""
    A = np.asarray(scale_in, dtype=np.float64)
    bias = layer.bias.detach().double().numpy()[c0:c1] if layer.bias is not None else np.zeros(c1 - c0)
    bn = epilogue.norm
    if bn is None:
        return A, bias
    gain = (bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)).numpy()[c0:c1]
    mean = bn.running_mean.detach().double().numpy()[c0:c1]
    return A * gain, (bias - mean) * gain + bn.bias.detach().double().numpy()[c0:c1]


def _int_weights(layer, precision: str, c0: int, c1: int) -> Tuple[np.ndarray, np.ndarray]:
    """Weight codes (out, in/groups, kh, kw) on the layer's grid of output channels [c0, c1) and each
    channel's scale s_c."""
    bits = PRECISIONS[precision].bits
    with torch.no_grad():
        w = layer.weight.detach().float()
        codes = weight_codes(w, bits, layer.weight_per_channel, layer.weight_grid)
        scale = weight_scale(w, bits, layer.weight_per_channel, layer.weight_grid).reshape(-1)
    if scale.numel() == 1:
        scale = scale.expand(w.shape[0])
    codes = codes[c0:c1].numpy().astype(np.int64)
    if codes.ndim == 2:  # a linear layer: a 1×1 convolution on a 1×1 map
        codes = codes.reshape(*codes.shape, 1, 1)
    return codes, scale[c0:c1].double().numpy()


def _float_weights(layer, precision: str, c0: int, c1: int) -> np.ndarray:
    w = layer.weight.detach().float()[c0:c1].numpy()
    w = w if w.ndim == 4 else w.reshape(*w.shape, 1, 1)
    return w.astype(np.float16) if precision == "fp16" else w.astype(np.float32)


def _geometry(layer) -> Tuple[Tuple[int, int], Tuple[int, int], bool]:
    """(stride, padding, depthwise) of a conv or linear layer."""
    if isinstance(layer, nn.Conv2d):
        if tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros":
            raise UnsupportedNetwork(f"layer {layer.layer_name}: dilation or non-zero padding is not supported yet")
        if isinstance(layer.padding, str):
            raise UnsupportedNetwork(f"layer {layer.layer_name}: padding={layer.padding!r} is not supported yet")
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
        if layer.groups > 1 and not depthwise:
            raise UnsupportedNetwork(f"layer {layer.layer_name}: grouped convolution (groups={layer.groups}) is "
                                     f"not supported yet")
        return tuple(layer.stride), tuple(layer.padding), depthwise
    return (1, 1), (0, 0), False


# ----------------------------------------------------------------------------------------------------
# The converter
# ----------------------------------------------------------------------------------------------------
def check_supported(analysis: NetworkAnalysis) -> None:
    """UnsupportedNetwork naming the first operator the integer network cannot express."""
    for op in analysis.operators:
        for kind in op.activations:
            raise UnsupportedNetwork(f"{analysis.spec.get('type')}: {UNSUPPORTED_OPERATORS.get(kind, kind)} "
                                     f"({op.name}) cannot be exported to the integer network yet")
        if op.is_layer or op.op == "pool":
            continue
        what = UNSUPPORTED_OPERATORS.get(op.op) or (
            "a residual add that no layer can fuse" if op.op == "add" else f"operator {op.op!r}")
        raise UnsupportedNetwork(f"{analysis.spec.get('type')}: {what} ({op.name}) cannot be exported to the "
                                 f"integer network yet")


class _Converter:
    def __init__(self, model: nn.Module, mapping: Mapping[str, Any], graph: NetworkAnalysis, arithmetic: str):
        self.arithmetic = arithmetic
        self.model = model
        self.graph = graph
        self.layers = dict(mixed_layers(model))
        self.parts = graph.check_mapping(mapping)
        self.copies: Dict[int, List[Copy]] = {}
        self.buffers: List[Buffer] = []

    # -- what each tensor is stored as --------------------------------------------------------------
    def held(self, copy: StoredCopy) -> Held:
        return HELD_FP32 if copy.reader is None else read_held(self.layers[copy.reader], copy.precision)

    def resolve_storage(self) -> None:
        """The memory model's copies (tensor_analysis.storage) with their exact formats."""
        g = self.graph
        for tid, copies in storage_copies(g, self.parts).items():
            readers = layer_readers(g, tid)
            formats = {frozenset(self.held(c) for c in layer_reads(op, self.parts[op.name])) for op in readers}
            if len(formats) > 1:
                raise UnsupportedNetwork(f"layers {', '.join(op.name for op in readers)} read one tensor in "
                                         f"different formats, which the integer network cannot hold yet")
            self.copies[tid] = [Copy(self.held(c), c.c0, c.c1) for c in copies]
        for op in g.operators:
            if op.op == "pool" and len(self.copies[op.output]) > 1:
                reader = g.operators[g.tensors[op.output].consumers[0]].name
                raise UnsupportedNetwork(f"{op.name}: its reader {reader} is split over parts at different "
                                         f"precisions, so the pooled vector would need two roundings of one "
                                         f"sum; the integer network cannot express that yet")

    def make_buffers(self) -> None:
        g = self.graph
        for tid, copies in self.copies.items():
            t = g.tensors[tid]
            c, h, w = (tuple(t.shape) + (1, 1))[:3]
            label = "input" if t.producer < 0 else g.operators[t.producer].name
            for copy in copies:
                if tid in g.output_ids:
                    copy.buffer = "logits"
                else:
                    copy.buffer = f"{label}:{copy.held.tag()}" + (f"[{copy.c0}:{copy.c1}]" if (copy.c0, copy.c1) != (0, c)
                                                                  else "")
                self.buffers.append(Buffer(copy.buffer, label, (copy.c0, copy.c1), h, w, copy.held.format))

    # -- ops -----------------------------------------------------------------------------------------
    def quantize(self) -> Quantize:
        return Quantize("quantize", [QuantizeOutput(c.buffer, c.held.to_int()) for c in self.copies[self.graph.input_id]])

    def pools(self, op: Operator) -> List[GlobalAvgPool]:
        src, dst = self.copies[op.inputs[0]], self.copies[op.output]
        return [GlobalAvgPool(f"{op.name}:{d.held.tag()}", next(s.buffer for s in src if s.held == d.held), d.buffer)
                for d in dst]

    def _input_slice(self, op: Operator, part: Part, held: Held, depthwise: bool) -> ChannelSlice:
        lo, hi = (part.c0, part.c1) if depthwise else (0, op.in_channels)
        copy = next(c for c in self.copies[op.inputs[0]] if c.held == held and c.c0 <= lo and hi <= c.c1)
        return ChannelSlice(copy.buffer, lo - copy.c0, hi - lo)

    def _residual(self, op: Operator, part: Part) -> Tuple[List[ChannelSlice], np.ndarray, List[Held]]:
        """The skip operand for the part's channels: per channel the widest stored copy (what training
        adds); the slices, each channel's real step and its copy's format."""
        if op.residual is None:
            return [], np.zeros(0), []
        copies = self.copies[op.residual]
        slices: List[ChannelSlice] = []
        steps, helds = [], []
        for ch in range(part.c0, part.c1):
            copy = skip_copy(copies, ch)
            if slices and slices[-1].buffer == copy.buffer and helds[-1] == copy.held:
                slices[-1] = ChannelSlice(copy.buffer, slices[-1].offset, slices[-1].channels + 1)
            else:
                slices.append(ChannelSlice(copy.buffer, ch - copy.c0, 1))
            steps.append(copy.held.format.scale if copy.held.format.is_int else 0.0)
            helds.append(copy.held)
        return slices, np.asarray(steps, dtype=np.float64), helds

    def conv_parts(self, op: Operator) -> List[ConvPart]:
        layer = self.layers[op.name]
        stride, padding, depthwise = _geometry(layer)
        epilogue = _epilogue_modules(self.model, op.name)
        out_copies = self.copies[op.output]
        parts = []
        for index, part in enumerate(self.parts[op.name]):
            c0, c1 = part.c0, part.c1
            held_in = read_held(layer, part.precision)
            if PRECISIONS[part.precision].is_float:
                compute, weights, bits, grid = part.precision, _float_weights(layer, part.precision, c0, c1), 0, ""
                scale_in = np.ones(c1 - c0)
            else:
                compute, grid, bits = "int", layer.weight_grid, PRECISIONS[part.precision].bits
                weights, s = _int_weights(layer, part.precision, c0, c1)
                scale_in = float(held_in.format.scale) * s / grid_divisor(bits, grid)
            if depthwise:
                weights = weights.reshape(c1 - c0, 1, *weights.shape[2:])
            A, C = _affine(layer, epilogue, scale_in, c0, c1)
            acc_bound = (accumulator_bounds(weights, bits, grid, held_in.format.levels) if compute == "int"
                         else np.zeros(c1 - c0, dtype=np.int64))
            residual, res_steps, res_helds = self._residual(op, part)
            outputs = []
            for copy in out_copies:
                first, end = max(c0, copy.c0), min(c1, copy.c1)
                if first >= end:
                    continue
                o0, o1 = first - c0, end - c0
                res_levels = [h.format.levels for h in res_helds[o0:o1]]
                outputs.append(PartOutput(copy.buffer, first - copy.c0, (o0, o1),
                                          _epilogue(compute, copy.held, A[o0:o1], C[o0:o1], epilogue.activation,
                                                    res_steps[o0:o1] if residual else None,
                                                    all(h.format.is_int for h in res_helds), acc_bound[o0:o1],
                                                    res_levels, self.arithmetic)))
            unit = f"@{part.unit}" if part.unit else ""
            parts.append(ConvPart(
                name=f"{op.name}{unit}:{part.precision}[{c0}:{c1}]", compute=compute,
                input=self._input_slice(op, part, held_in, depthwise), weights=weights, outputs=outputs,
                stride=stride, padding=padding, groups=(c1 - c0) if depthwise else 1, weight_bits=bits,
                weight_grid=grid, activation=epilogue.activation, residual=residual, layer=op.name,
                layer_channels=(c0, c1)))
        return parts

    def network(self, metadata: Dict[str, Any]) -> IntegerNetwork:
        self.resolve_storage()
        self.make_buffers()
        ops: List[Any] = [self.quantize()]
        for op in self.graph.operators:
            ops += self.conv_parts(op) if op.is_layer else self.pools(op)
        g = self.graph
        output = self.copies[g.output_ids[0]][0].buffer
        net = IntegerNetwork(tuple(g.tensors[g.input_id].shape), self.buffers, ops, output, metadata=metadata)
        return plan_arena(net.validate()).validate()


def _epilogue(compute: str, held: Held, A: np.ndarray, C: np.ndarray, activation: Optional[Tuple[float, float]],
              residual_steps: Optional[np.ndarray], residual_int: bool, acc_bound: np.ndarray,
              residual_levels: List[int], arithmetic: str):
    """The epilogue writing y = A·acc + C (+ activation, + skip) into a copy of format ``held``."""
    fmt = held.format
    fixed = (compute == "int" and fmt.is_int and (residual_steps is None or residual_int)
             and not (activation is not None and residual_steps is not None))
    if not fixed:
        return FloatEpilogue(A.astype(np.float32), C.astype(np.float32), held.to_int())
    lo_r, hi_r = held.lo, held.hi
    if activation is not None:
        lo_r, hi_r = max(lo_r, activation[0]), min(hi_r, activation[1])
    lo, hi = code_bounds(lo_r, hi_r, held.inv_step, *fmt.code_range)
    R = None if residual_steps is None else residual_steps * held.inv_step
    return requantizer(A * held.inv_step, C * held.inv_step, R, lo=lo, hi=hi, acc_bound=acc_bound,
                       residual_levels=residual_levels if R is not None else 255, arithmetic=arithmetic)


def build_integer_network(run: Run, arithmetic: str = "fine") -> IntegerNetwork:
    """The run's network as an IntegerNetwork (validated, arena planned); UnsupportedNetwork naming the
    operator it cannot express. ``arithmetic`` (``ir.requantizer``): ``"fine"`` rounds sub-byte layers'
    biases and a projection's output ahead of its residual add finely; ``"tflite"`` computes every
    fixed-point layer exactly as a TFLite int8 graph does (CONV, then ADD), at some cost in agreement
    with the trained network."""
    graph = analyze_network(run.spec)
    check_supported(graph)
    for name, layer in run.model.named_modules():
        if isinstance(layer, MIXED_LAYER_TYPES) and layer.mode != "fixed" and not getattr(layer, "is_split_fixed", False):
            raise ValueError(f"{run.run_dir}: layer {name} is still searching ({layer.mode}); export a derived network")
    metadata = {"model": run.spec, "mapping": run.mapping, "run_dir": run.run_dir, "hardware": run.hardware,
                "analysis": run.analysis_path}
    metadata["arithmetic"] = arithmetic
    return _Converter(run.model, run.mapping, graph, arithmetic).network(metadata)


# ----------------------------------------------------------------------------------------------------
# Agreement with PyTorch
# ----------------------------------------------------------------------------------------------------
@dataclass
class Agreement:
    """The reference against PyTorch on the same images."""
    images: int
    top1_agreement: float          # fraction of images whose argmax is the same
    disagreements: List[int]       # indices of the images whose argmax differs
    max_abs_logit_difference: float
    reference_accuracy: float
    pytorch_accuracy: float
    reference_logits: np.ndarray = field(repr=False)
    pytorch_logits: np.ndarray = field(repr=False)


def agreement_count(requested: Optional[int], available: int) -> int:
    """Test images an exporter compares with PyTorch: ``requested`` (None: all ``available``)."""
    return available if requested is None else min(requested, available)


def compare_with_pytorch(network: IntegerNetwork, model: nn.Module, images: np.ndarray, labels: np.ndarray,
                         batch: int = TEST_BATCH) -> Agreement:
    """Top-1 agreement and the largest |logit difference| of the numpy reference against the PyTorch
    model (eval mode) on ``images``."""
    ref = np.concatenate([reference.run(network, images[i:i + batch]) for i in range(0, len(images), batch)])
    torch_out = pytorch_logits(model, images)
    a, b = ref.argmax(1), torch_out.argmax(1)
    diff = np.abs(ref.astype(np.float64) - torch_out.astype(np.float64))
    return Agreement(len(images), float((a == b).mean()), np.flatnonzero(a != b).tolist(),
                     float(diff.max()) if diff.size else 0.0, float((a == labels).mean()), float((b == labels).mean()),
                     ref, torch_out)
