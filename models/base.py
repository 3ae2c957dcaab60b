"""Precisions, quantizers and mixed-precision layers.

Quantize functions are plain functions (Brevitas style) so they can be tested and reused on their own;
the layers only decide *which* of them to apply and how to mix them (DESIGN.md §2-3).

Semantics a user relies on:
* one precision per layer, applied to the layer's weights *and* its input activation;
* every precision quantizes the same shared weight tensor in the forward pass, so every precision's
  gradient reaches it;
* round to nearest with straight-through gradients, never floor;
* inputs that can be negative use signed (symmetric) PACT instead of being clamped at zero.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------
# Precisions
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    name: str
    bits: int
    is_float: bool

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8.0


PRECISIONS: Dict[str, Precision] = {
    "fp32": Precision("fp32", 32, True),
    "fp16": Precision("fp16", 16, True),
    "int8": Precision("int8", 8, False),
    "int4": Precision("int4", 4, False),
    "int2": Precision("int2", 2, False),
}
# Highest to lowest: the order α vectors, cost vectors and reports use.
PRECISION_ORDER: Tuple[str, ...] = ("fp32", "fp16", "int8", "int4", "int2")
INT_PRECISIONS: Tuple[str, ...] = ("int8", "int4", "int2")

# Integer widths the quantizers implement; MCU kernels exist for 2..8 bits.
SUPPORTED_INT_BITS = range(2, 9)

# The seed artifact's α initialisation (it favours int8 so the search starts near a deployable net).
SEED_ALPHA_BIAS = {"int8": 1.0, "int4": 0.5, "fp16": 0.3, "int2": 0.2, "fp32": 0.1}


def get_precision(name: str, where: str = "precision") -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"{where}: unknown precision {name!r}; expected one of {', '.join(PRECISION_ORDER)}"
        ) from None


def canonical_precisions(names: Iterable[str], where: str = "layer") -> Tuple[str, ...]:
    """Validate names and return them, deduplicated, in PRECISION_ORDER."""
    names = list(names)
    if not names:
        raise ValueError(f"{where}: the allowed precision list is empty; "
                         f"expected a non-empty subset of {', '.join(PRECISION_ORDER)}")
    for n in names:
        get_precision(n, where)
    return tuple(p for p in PRECISION_ORDER if p in names)


def _check_int_bits(bits: int, where: str) -> None:
    if not isinstance(bits, int) or bits not in SUPPORTED_INT_BITS:
        raise ValueError(f"{where}: unsupported bit width {bits!r}; expected an integer in "
                         f"{SUPPORTED_INT_BITS.start}..{SUPPORTED_INT_BITS.stop - 1}")


# ----------------------------------------------------------------------------------------------------
# Quantizers (pure functions, straight-through estimators)
# ----------------------------------------------------------------------------------------------------
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest; gradient passes through unchanged."""
    return x + (torch.round(x) - x).detach()


def quantize_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to IEEE half precision and back; straight-through gradient."""
    return x + (x.half().float() - x).detach()


def dorefa_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """max|tanh(w)| (per output channel or per tensor), shaped to broadcast against w."""
    t = torch.tanh(w).abs()
    if per_channel and w.dim() > 1:
        m = t.flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    else:
        m = t.amax()
    return m.clamp_min(1e-8)


def quantize_weight_dorefa(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """DoReFa weights (Zhou et al. 2016, eq. 9) on the grid {2i/(2^k-1) - 1}, i = 0..2^k-1.

    ``per_channel`` normalises tanh(w) by each output channel's maximum instead of the tensor's, as
    per-channel int kernels (CMSIS-NN, TFLM) do; the grid itself is unchanged.
    """
    _check_int_bits(bits, "quantize_weight_dorefa")
    levels = 2 ** bits - 1
    t = torch.tanh(w)
    t = t / (2 * dorefa_scale(w, per_channel)) + 0.5
    return 2 * round_ste(levels * t) / levels - 1


def pact_levels(bits: int, signed: bool) -> int:
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def quantize_activation_pact(x: torch.Tensor, clip: torch.Tensor, bits: int,
                             signed: bool = False) -> torch.Tensor:
    """PACT (Choi et al. 2018): clip to [0, a] (or [-a, a] when ``signed``) and round onto
    2^k-1 (signed: 2^(k-1)-1 per side) uniform levels.

    Gradients: to x, 1 inside the clip range and 0 outside; to ``clip``, 1 where x >= a (and -1 where
    x <= -a when signed), 0 inside, as in the PACT paper.
    """
    _check_int_bits(bits, "quantize_activation_pact")
    levels = pact_levels(bits, signed)
    clip = clip.abs() + 1e-8  # a clip driven negative by an optimiser step must not flip the range
    y = torch.minimum(x, clip)
    y = torch.maximum(y, -clip) if signed else torch.clamp_min(y, 0.0)
    step = clip / levels
    q = torch.round(y / step) * step
    return y + (q - y).detach()


# ----------------------------------------------------------------------------------------------------
# The element-wise mixture over precisions, optionally compiled
# ----------------------------------------------------------------------------------------------------
def _quantize_input_one(x, precision: str, clip, signed: bool):
    if precision == "fp32":
        return x
    if precision == "fp16":
        return quantize_fp16(x)
    return quantize_activation_pact(x, clip, PRECISIONS[precision].bits, signed)


def _mix_inputs_eager(x: torch.Tensor, probs: torch.Tensor, clips: torch.Tensor,
                      precisions: Tuple[str, ...], signed: bool) -> torch.Tensor:
    """Σ_p π_p Q_p(x). clips holds one entry per integer precision, in `precisions` order."""
    out = None
    ci = 0
    for i, p in enumerate(precisions):
        clip = None
        if not PRECISIONS[p].is_float:
            clip = clips[ci]
            ci += 1
        term = probs[i] * _quantize_input_one(x, p, clip, signed)
        out = term if out is None else out + term
    return out


_COMPILED_MIX = None
_COMPILE_FAILED = False


def compile_enabled() -> bool:
    """ADAPTQNET_COMPILE=1 fuses the mixture with torch.compile (one pass over the activation instead
    of ~25 eager ones); 0 or unset keeps the plain path, which runs everywhere."""
    return os.environ.get("ADAPTQNET_COMPILE", "0") not in ("0", "", "false", "no")


def mix_inputs(x, probs, clips, precisions, signed):
    global _COMPILED_MIX, _COMPILE_FAILED
    if len(precisions) == 1 or not compile_enabled() or _COMPILE_FAILED:
        return _mix_inputs_eager(x, probs, clips, precisions, signed)
    try:
        if _COMPILED_MIX is None:
            import torch._dynamo
            # one graph per (allowed set, signedness): a network has a handful of those
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            _COMPILED_MIX = torch.compile(_mix_inputs_eager, dynamic=True)
        return _COMPILED_MIX(x, probs, clips, precisions, signed)
    except Exception as exc:  # no compiler, unsupported platform: fall back once, loudly
        _COMPILE_FAILED = True
        import warnings
        warnings.warn(f"torch.compile of the precision mixture failed ({exc.__class__.__name__}: "
                      f"{exc}); using the eager path")
        return _mix_inputs_eager(x, probs, clips, precisions, signed)


# ----------------------------------------------------------------------------------------------------
# Mixed-precision layers
# ----------------------------------------------------------------------------------------------------
MODES = ("composite", "exact", "fixed")
ALPHA_INITS = ("uniform", "int8_biased")


class MixedPrecisionMixin:
    """Search state shared by the conv and linear layers.

    Holds: the allowed precisions (only those exist in α), logits ``alpha``, one learnable PACT clip
    per allowed integer precision (``act_clip``), the temperature, Gumbel switch and mode.
    """

    def _init_mixed(self, precisions: Sequence[str], signed_input: bool, alpha_init: str,
                    clip_init: float, name: str) -> None:
        self.layer_name = name
        self.precisions = canonical_precisions(precisions, self._where())
        if alpha_init not in ALPHA_INITS:
            raise ValueError(f"{self._where()}: unknown alpha_init {alpha_init!r}; "
                             f"expected one of {', '.join(ALPHA_INITS)}")
        self.signed_input = bool(signed_input)
        init = [SEED_ALPHA_BIAS[p] if alpha_init == "int8_biased" else 0.0 for p in self.precisions]
        self.alpha = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        n_int = sum(not PRECISIONS[p].is_float for p in self.precisions)
        self.act_clip = nn.Parameter(torch.full((n_int,), float(clip_init)))
        self.temperature = 1.0
        self.gumbel = False
        self.mode = "composite" if len(self.precisions) > 1 else "fixed"
        self.fixed_precision: Optional[str] = self.precisions[0] if len(self.precisions) == 1 else None
        self.weight_per_channel = True

    def _where(self) -> str:
        return f"layer {getattr(self, 'layer_name', '') or self.__class__.__name__}"

    # -- precision selection ---------------------------------------------------------------------
    def probs(self, sample: Optional[bool] = None) -> torch.Tensor:
        """π = softmax(α / T), or a Gumbel-softmax sample while training with ``gumbel`` on."""
        logits = self.alpha
        if sample is None:
            sample = self.gumbel and self.training
        if sample:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits - torch.log(-torch.log(u))
        return F.softmax(logits / self.temperature, dim=0)

    def expected_cost(self, costs: torch.Tensor) -> torch.Tensor:
        """Σ_p π_p c_p for a cost vector in this layer's precision order; differentiable in α."""
        costs = torch.as_tensor(costs, dtype=self.alpha.dtype, device=self.alpha.device)
        if costs.shape != self.alpha.shape:
            raise ValueError(f"{self._where()}: cost vector has {costs.numel()} entries, "
                             f"expected {len(self.precisions)} for {list(self.precisions)}")
        return (self.probs(sample=False) * costs).sum()

    def derive(self) -> str:
        return self.precisions[int(torch.argmax(self.alpha.detach()))]

    def set_precision(self, name: str) -> None:
        """Fix this layer at one of its allowed precisions."""
        if name not in self.precisions:
            raise ValueError(f"{self._where()}: precision {name!r} is not allowed here; "
                             f"allowed: {', '.join(self.precisions)}")
        self.mode = "fixed"
        self.fixed_precision = name

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"{self._where()}: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "fixed" and self.fixed_precision is None:
            self.fixed_precision = self.derive()
        self.mode = mode

    def clip_for(self, precision: str) -> Optional[torch.Tensor]:
        if PRECISIONS[precision].is_float:
            return None
        ints = [p for p in self.precisions if not PRECISIONS[p].is_float]
        return self.act_clip[ints.index(precision)]

    # -- quantization of this layer's tensors ----------------------------------------------------
    def quantize_weight(self, precision: str) -> torch.Tensor:
        w = self.weight
        if precision == "fp32":
            return w
        if precision == "fp16":
            return quantize_fp16(w)
        bits = PRECISIONS[precision].bits
        # DoReFa lives on [-1, 1]; scaling by max|tanh w| returns it to the float weight's range so all
        # precisions share one scale (BN statistics and the fp32 branch stay meaningful). On an MCU this
        # scale folds into the per-channel requantisation multiplier.
        return quantize_weight_dorefa(w, bits, self.weight_per_channel) * dorefa_scale(w, self.weight_per_channel)

    def quantize_input(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        return _quantize_input_one(x, precision, self.clip_for(precision), self.signed_input)

    def _forward_mixed(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            p = self.fixed_precision
            return self._op(self.quantize_input(x, p), self.quantize_weight(p))
        pi = self.probs()
        if self.mode == "composite":
            w = None
            for i, p in enumerate(self.precisions):
                term = pi[i] * self.quantize_weight(p)
                w = term if w is None else w + term
            xq = mix_inputs(x, pi, self.act_clip, self.precisions, self.signed_input)
            return self._op(xq, w)
        if self.mode == "exact":
            out = None
            for i, p in enumerate(self.precisions):
                term = pi[i] * self._op(self.quantize_input(x, p), self.quantize_weight(p))
                out = term if out is None else out + term
            return out
        raise ValueError(f"{self._where()}: unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", precisions={list(self.precisions)}, mode={self.mode}"
                + (f", fixed={self.fixed_precision}" if self.mode == "fixed" else "")
                + f", signed_input={self.signed_input}")


class MixedPrecisionConv2d(MixedPrecisionMixin, nn.Conv2d):
    """nn.Conv2d (dense, depthwise or grouped) whose weight and input take one of several precisions.

    Parameters keep nn.Conv2d's names (``weight``, ``bias``) so torchvision state_dicts load directly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False,
                 precisions: Sequence[str] = PRECISION_ORDER, signed_input: bool = True,
                 alpha_init: str = "uniform", clip_init: float = 6.0, name: str = ""):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                           dilation=dilation, groups=groups, bias=bias)
        self._init_mixed(precisions, signed_input, alpha_init, clip_init, name)

    @property
    def op_kind(self) -> str:
        if self.groups > 1 and self.groups == self.in_channels:
            return "dwconv"
        if self.kernel_size == (1, 1):
            return "pwconv"
        return "conv"

    def _op(self, x, w):
        return self._conv_forward(x, w, self.bias)

    def forward(self, x):
        return self._forward_mixed(x)


class MixedPrecisionLinear(MixedPrecisionMixin, nn.Linear):
    """nn.Linear with a searchable precision for its weight and input (bias stays int32/float)."""

    op_kind = "linear"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 precisions: Sequence[str] = PRECISION_ORDER, signed_input: bool = False,
                 alpha_init: str = "uniform", clip_init: float = 6.0, name: str = ""):
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        self._init_mixed(precisions, signed_input, alpha_init, clip_init, name)

    def _op(self, x, w):
        return F.linear(x, w, self.bias)

    def forward(self, x):
        return self._forward_mixed(x)


MIXED_LAYER_TYPES = (MixedPrecisionConv2d, MixedPrecisionLinear)


# ----------------------------------------------------------------------------------------------------
# Whole-network helpers
# ----------------------------------------------------------------------------------------------------
def mixed_layers(model: nn.Module) -> Iterator[Tuple[str, MixedPrecisionMixin]]:
    """(module path, layer) for every mixed-precision layer, in registration (= execution) order."""
    for name, m in model.named_modules():
        if isinstance(m, MIXED_LAYER_TYPES):
            yield name, m


def name_layers(model: nn.Module) -> None:
    """Give each mixed layer its module path, so errors and reports name it the way users see it."""
    for name, m in mixed_layers(model):
        m.layer_name = name


def set_temperature(model: nn.Module, temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for _, m in mixed_layers(model):
        m.temperature = float(temperature)


def set_mode(model: nn.Module, mode: str) -> None:
    for _, m in mixed_layers(model):
        m.set_mode(mode if len(m.precisions) > 1 else "fixed")


def set_gumbel(model: nn.Module, enabled: bool) -> None:
    for _, m in mixed_layers(model):
        m.gumbel = bool(enabled)


def arch_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The logits α of every layer (optimised on the validation split)."""
    return [m.alpha for _, m in mixed_layers(model)]


def weight_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Everything except α: weights, BN, PACT clips (optimised on the train split)."""
    arch = {id(p) for p in arch_parameters(model)}
    return [p for p in model.parameters() if id(p) not in arch]


def derive_mapping(model: nn.Module) -> Dict[str, str]:
    """Argmax precision per layer."""
    return {name: m.derive() for name, m in mixed_layers(model)}


def current_mapping(model: nn.Module) -> Dict[str, str]:
    """The precision each layer runs at now (fixed layers) or would be derived to (searching ones)."""
    return {name: (m.fixed_precision if m.mode == "fixed" else m.derive()) for name, m in mixed_layers(model)}


def apply_mapping(model: nn.Module, mapping: Dict[str, str], where: str = "mapping") -> None:
    """Fix every layer at the precision named in ``mapping``; names must match the model exactly."""
    layers = dict(mixed_layers(model))
    missing = [n for n in layers if n not in mapping]
    unknown = [n for n in mapping if n not in layers]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing layers: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown layers: {', '.join(unknown)}")
        raise ValueError(f"{where}: layer names do not match the model ({'; '.join(parts)})")
    for name, layer in layers.items():
        layer.set_precision(mapping[name])


def restrict_precisions(model: nn.Module, allowed: Dict[str, Sequence[str]], where: str = "allowed") -> None:
    """Rebuild each layer's α and clips for a new allowed list, keeping the shared weight and the
    clips and logits of precisions that stay. Precisions not allowed then no longer exist."""
    layers = dict(mixed_layers(model))
    missing = [n for n in layers if n not in allowed]
    unknown = [n for n in allowed if n not in layers]
    if missing or unknown:
        raise ValueError(f"{where}: layer names do not match the model (missing: {missing}, unknown: {unknown})")
    for name, layer in layers.items():
        new = canonical_precisions(allowed[name], f"{where}: layer {name}")
        old_alpha = {p: layer.alpha.data[i] for i, p in enumerate(layer.precisions)}
        old_ints = [p for p in layer.precisions if not PRECISIONS[p].is_float]
        old_clip = {p: layer.act_clip.data[i] for i, p in enumerate(old_ints)}
        default_clip = float(layer.act_clip.data.mean()) if old_ints else 6.0
        dev = layer.alpha.device
        layer.precisions = new
        layer.alpha = nn.Parameter(torch.tensor([float(old_alpha.get(p, 0.0)) for p in new], device=dev))
        new_ints = [p for p in new if not PRECISIONS[p].is_float]
        layer.act_clip = nn.Parameter(torch.tensor([float(old_clip.get(p, default_clip)) for p in new_ints],
                                                   device=dev))
        if len(new) == 1:
            layer.mode, layer.fixed_precision = "fixed", new[0]
        elif layer.mode == "fixed" and layer.fixed_precision not in new:
            layer.mode, layer.fixed_precision = "composite", None


def allowed_precisions(model: nn.Module) -> Dict[str, List[str]]:
    return {name: list(m.precisions) for name, m in mixed_layers(model)}


@torch.no_grad()
def calibrate_activation_clips(model: nn.Module, batch: torch.Tensor, percentile: float = 99.9) -> Dict[str, float]:
    """Set every layer's PACT clips from the inputs it sees on ``batch`` (|x| percentile), so a
    pretrained FP32 network starts its quantized search from sensible ranges instead of a constant."""
    seen: Dict[str, float] = {}
    hooks = []
    for name, m in mixed_layers(model):
        def hook(mod, inputs, _name=name):
            x = inputs[0].detach().abs().flatten().float()
            if x.numel() > 1_000_000:
                x = x[torch.randint(0, x.numel(), (1_000_000,), device=x.device)]
            seen[_name] = float(torch.quantile(x, percentile / 100.0))
        hooks.append(m.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for name, m in mixed_layers(model):
        if name in seen and m.act_clip.numel():
            m.act_clip.data.fill_(max(seen[name], 1e-3))
    return seen
