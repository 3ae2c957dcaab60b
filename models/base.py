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

import os
import sys
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
    """PACT (Choi et al. 2018): clip to [0, a] (or [-a, a] when ``signed``) and round to nearest on
    2^k-1 (signed: 2^(k-1)-1 per side) uniform levels.

    Straight-through gradients as in the PACT paper (eq. 3-4): to x, 1 for lo < x < a (lo = 0, or -a
    when signed) and 0 elsewhere; to ``clip``, 1 where x >= a (and -1 where x <= -a when signed). At
    x = a the gradient goes to the clip alone, so ReLU6 outputs saturated at 6 = a train the clip.
    """
    _check_int_bits(bits, "quantize_activation_pact")
    clip = torch.as_tensor(clip, dtype=x.dtype, device=x.device).reshape(1)
    return _QuantMix.apply(x, None, _positive_clip(clip), ("int",), (bits,), bool(signed))


# ----------------------------------------------------------------------------------------------------
# The element-wise mixture Σ_p π_p Q_p(x) over an activation, as one autograd node
# ----------------------------------------------------------------------------------------------------
# Why a custom autograd function: composed from autograd ops, the five quantizers take ~40 passes
# over the activation forward and more backward (torch.minimum's backward alone runs where/eq/gt/
# masked_fill), and keep a dozen activation-sized tensors alive. Here the forward saves only x and the
# backward recomputes what it needs. The math is written once, in plain tensor ops, and runs in one
# of two forms:
# * eager: π and the per-precision scalars arrive as Python floats, so each op is one vectorised
#   kernel with scalar operands (tensor-bounded clamp and torch.where are several times slower on
#   CPU) and partial results accumulate in place;
# * compiled: they arrive as tensors (no host sync; one graph for any values) and torch.compile fuses
#   each direction into a loop or two over the tensor.
# The helpers pick the form from the operand type. The static structure of a mixture is ``kinds``,
# one of "fp32" / "fp16" / "int" per precision; bit widths and signedness are runtime values, so all
# layers with the same kinds share one compiled graph.
_CLIP_EPS = 1e-8


def _positive_clip(clip: torch.Tensor) -> torch.Tensor:
    # a clip driven negative by an optimiser step must not flip the range
    return clip.abs() + _CLIP_EPS


def _is_eager(v) -> bool:
    return isinstance(v, float)


def _grad_inside(grad, x, lo, hi):
    """grad where lo < x < hi, else 0: the straight-through pass of a clamp."""
    if _is_eager(hi):
        return torch.ops.aten.hardtanh_backward(grad, x, lo, hi)
    return torch.where((x > lo) & (x < hi), grad, torch.zeros_like(grad))


def _clip_side(x, neg):
    """+1 where x > 0, -1 where x < 0 for a signed range (neg = 1), 0 there otherwise."""
    if _is_eager(neg):
        return torch.sign(x) if neg else (x > 0).to(x.dtype)
    return (x > 0).to(x.dtype) - neg * (x < 0).to(x.dtype)


def _dot(u, v):
    # torch.dot is one pass with no temporary; inside a compiled graph the product-sum fuses instead
    return (u * v).sum() if torch.compiler.is_compiling() else torch.dot(u, v)


def _accumulate(out, term, coef):
    """out + coef·term (coef None: 1), reusing out's storage; a first term is scaled in place, so it
    must be a fresh tensor."""
    if out is None:
        return term if coef is None else term.mul_(coef)
    if coef is None:
        return out.add_(term)
    if _is_eager(coef):
        return out.add_(term, alpha=coef)
    return out.add_(term * coef)


def _half_round_trip(x):
    return x.to(torch.float16).to(x.dtype)


def _pact_index(x, qp):
    """round(clamp(x, lo, a)·scale): x's index on a PACT grid (qp = lo, a, scale, step)."""
    lo, a, scale, _ = qp
    return torch.clamp(x, lo, a).mul_(scale).round_()


def _mix_forward_math(x, probs, qparams, neg, kinds: Tuple[str, ...]):
    """Σ_p π_p Q_p(x). ``probs`` None: a single precision at weight 1. ``qparams``: one (lo, a,
    scale = L/a, step = a/L) row per integer precision; ``neg`` 1 for a signed range, else 0."""
    out = None
    ci = 0
    for i, kind in enumerate(kinds):
        pi = None if probs is None else probs[i]
        if kind == "fp32":
            if out is None:  # x is the caller's tensor: never scale it in place
                out = x.clone() if pi is None else x * pi
            else:
                out = _accumulate(out, x, pi)
        elif kind == "fp16":
            out = _accumulate(out, _half_round_trip(x), pi)
        else:
            qp = qparams[ci]
            ci += 1
            step = qp[3]
            out = _accumulate(out, _pact_index(x, qp), step if pi is None else pi * step)
    return out


def _mix_backward_math(x, probs, qparams, neg, kinds: Tuple[str, ...], grad,
                       need_x: bool, need_probs: bool, need_clips: bool):
    """Straight-through gradients of Σ_p π_p Q_p(x) with respect to x, π and the clips a:
    d/dx = Σ_float π_p + Σ_int π_p·[lo_p < x < a_p];  d/dπ_p = Σ grad·Q_p(x);
    d/da_p = π_p·(Σ_{x ≥ a_p} grad − Σ_{x ≤ −a_p} grad), the second sum for a signed range only."""
    grad_x = None
    grad_probs = []
    grad_clips = []
    float_pis = [1.0 if probs is None else probs[i] for i, k in enumerate(kinds) if k != "int"]
    if need_x and float_pis:
        # a lone float precision passes grad through untouched (no integer term adds into it)
        grad_x = grad if probs is None else grad * sum(float_pis[1:], float_pis[0])
    side = _clip_side(x, neg) if need_clips else None
    ci = 0
    for i, kind in enumerate(kinds):
        pi = None if probs is None else probs[i]
        if kind != "int":
            if need_probs:
                grad_probs.append(_dot(grad, x if kind == "fp32" else _half_round_trip(x)))
            continue
        qp = qparams[ci]
        ci += 1
        lo, a, _, step = qp
        if need_x or need_clips:
            inside = _grad_inside(grad, x, lo, a)
            if need_clips:
                # grad − inside is exact: grad beyond a bound (or at x ≤ 0 unsigned, where side is 0)
                beyond = _dot(grad - inside, side)
                grad_clips.append(beyond if pi is None else beyond * pi)
            if need_x:
                grad_x = _accumulate(grad_x, inside, pi)
        if need_probs:
            grad_probs.append(_dot(grad, _pact_index(x, qp)) * step)
    return (grad_x,
            torch.stack(grad_probs) if need_probs else None,
            torch.stack(grad_clips) if need_clips else None)


# -- how the math runs: torch.compile or eager --------------------------------------------------------
COMPILE_MODES = ("auto", "on", "off")
_compile_mode: Optional[str] = None  # None: read $ADAPTQNET_COMPILE on first use
_compiled: Dict[str, object] = {}
_compile_broken: Optional[str] = None  # why 'auto' gave up on compiling in this process


def _parse_compile_mode(value: str, where: str) -> str:
    v = str(value).strip().lower()
    v = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off", "": "auto"}.get(v, v)
    if v not in COMPILE_MODES:
        raise ValueError(f"{where}: unknown compile mode {value!r}; expected one of {', '.join(COMPILE_MODES)}")
    return v


def set_compile(mode: str) -> None:
    """How the activation quantizers run: 'auto' (torch.compile where the device has a compiler: a
    C++ compiler for CPU, Triton for CUDA; on failure, one warning and eager from then on), 'on'
    (compile; failures raise), 'off' (eager). Default: $ADAPTQNET_COMPILE, else 'auto'.

    Why 'auto': on the dev machine (CPU, benchmarks/search_step.py defaults) a composite search step
    costs 1.19x a fixed-INT8 QAT step compiled, against 1.83x eager, and compiled fixed INT8 is
    itself 1.24x faster than eager. The price is compilation on first use (about 10-30 s per
    process, less once inductor's on-disk cache is warm), which is why the tests run 'off'."""
    global _compile_mode, _compile_broken
    _compile_mode = _parse_compile_mode(mode, "set_compile")
    _compile_broken = None


def get_compile() -> str:
    global _compile_mode
    if _compile_mode is None:
        _compile_mode = _parse_compile_mode(os.environ.get("ADAPTQNET_COMPILE", "auto"), "$ADAPTQNET_COMPILE")
    return _compile_mode


def _compiler_present(device: torch.device) -> bool:
    if device.type == "cpu":
        if sys.platform == "win32":
            return False  # inductor's CPU backend wants MSVC set up by hand there
        import shutil
        return shutil.which(os.environ.get("CXX") or "g++") is not None  # inductor's default compiler
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
            return has_triton()
        except ImportError:
            return False
    return False


def compile_enabled(device: Optional[torch.device] = None) -> bool:
    """Whether the activation quantizers run through torch.compile now (on ``device``, default CPU)."""
    mode = get_compile()
    if mode == "off" or (mode == "auto" and _compile_broken is not None):
        return False
    return mode == "on" or _compiler_present(torch.device("cpu" if device is None else device))


def _compiled_fn(name: str, fn):
    if name not in _compiled:
        import torch._dynamo
        cfg = torch._dynamo.config
        # one graph per kinds tuple and gradient set: a handful per network
        for key in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, key):
                setattr(cfg, key, max(getattr(cfg, key), 64))
        # emulate_precision_casts keeps the fp32→fp16→fp32 round trip that inductor would otherwise
        # fold away, which would make the fp16 term the identity; an inductor without it must not run
        import torch._inductor.config
        if not hasattr(torch._inductor.config, "emulate_precision_casts"):
            raise RuntimeError("this torch's inductor has no emulate_precision_casts, so it would drop "
                               "the fp16 rounding")
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True,
                                        options={"emulate_precision_casts": True})
    return _compiled[name]


# Smaller activations run eager: there per-op overhead dominates either way, and inductor specialises
# its CPU reductions at this size (need_use_acc_helper), so compiling them would double the graphs.
COMPILE_MIN_NUMEL = 4096


def _use_compiled(x: torch.Tensor) -> bool:
    return x.numel() > COMPILE_MIN_NUMEL and compile_enabled(x.device)


def _run_math(name: str, fn, x: torch.Tensor, probs, qparams, neg, *rest):
    global _compile_broken
    if torch.compiler.is_compiling():
        # traced by a caller's torch.compile (of a whole model, say): the tensor form joins their graph.
        # Their inductor would fold the fp16 round trips away (here and in quantize_fp16), so ask it
        # to keep them; it reads the setting when it lowers the graph, after this trace.
        inductor_config = sys.modules.get("torch._inductor.config")
        if inductor_config is not None and hasattr(inductor_config, "emulate_precision_casts"):
            inductor_config.emulate_precision_casts = True
        return fn(x, probs, qparams, neg, *rest)
    if _use_compiled(x):
        try:
            return _compiled_fn(name, fn)(x, probs, qparams, neg, *rest)
        except Exception as exc:  # no working compiler after all: fall back, once and loudly
            if get_compile() == "on":
                raise
            _compile_broken = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            import warnings
            warnings.warn(f"torch.compile of the activation quantizers failed ({_compile_broken}); "
                          f"using the eager path (ADAPTQNET_COMPILE=off skips the attempt)")
    # eager: every scalar of the layer crosses to the host in one transfer
    n_probs = 0 if probs is None else probs.numel()
    parts = [qparams.reshape(-1), neg.reshape(1)] + ([] if probs is None else [probs.reshape(-1)])
    values = torch.cat(parts).tolist()
    n_q = qparams.numel()
    rows = [values[i:i + 4] for i in range(0, n_q, 4)]
    eager_probs = None if probs is None else values[n_q + 1:n_q + 1 + n_probs]
    return fn(x, eager_probs, rows, values[n_q], *rest)


def _pact_qparams(clips: torch.Tensor, bits: Tuple[int, ...], signed: bool) -> torch.Tensor:
    """(K, 4) rows lo, a, L/a, a/L for the positive clips a, in float32 so that the eager and the
    compiled path see bit-identical scalars."""
    levels = torch.tensor([pact_levels(b, signed) for b in bits],
                          dtype=clips.dtype, device=clips.device)
    lo = -clips if signed else torch.zeros_like(clips)
    return torch.stack([lo, clips, levels / clips, clips / levels], dim=1)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """t itself when its elements fill its memory without gaps in a standard order (contiguous or
    channels_last, as the CUDA runtime uses), else a contiguous copy."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.contiguous()


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as 1-D in memory order, without a copy, detached: every layer then
    shares one compiled graph, and the compiled call sees no autograd views."""
    return t.as_strided((t.numel(),), (1,)).detach()


def _unflat(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return flat.as_strided(like.size(), like.stride(), 0)


class _QuantMix(torch.autograd.Function):
    """Σ_p π_p Q_p(x) with straight-through gradients to x, π and the clips; saves only x. The output
    and x's gradient keep x's memory layout."""

    @staticmethod
    def forward(ctx, x, probs, clips, kinds, bits, signed):
        x = _dense(x)
        qparams = _pact_qparams(clips.detach(), bits, signed)
        neg = torch.tensor(1.0 if signed else 0.0, dtype=x.dtype, device=x.device)
        probs_d = None if probs is None else probs.detach()
        out = _run_math("forward", _mix_forward_math, _flat(x), probs_d, qparams, neg, kinds)
        ctx.save_for_backward(x, probs, qparams, neg)
        ctx.kinds = kinds
        return _unflat(out, x)

    @staticmethod
    def backward(ctx, grad):
        x, probs, qparams, neg = ctx.saved_tensors
        need_x, need_probs, need_clips = ctx.needs_input_grad[:3]
        need_probs = need_probs and probs is not None
        need_clips = need_clips and qparams.numel() > 0
        if _use_compiled(x) or torch.compiler.is_compiling():
            need_x = True  # computing it anyway costs less than compiling a second graph for the stem
        if grad.stride() != x.stride():  # the flat views must walk both in the same element order
            grad = torch.empty_like(x).copy_(grad)
        gx, gp, gc = _run_math("backward", _mix_backward_math, _flat(x),
                               None if probs is None else probs.detach(), qparams, neg, ctx.kinds,
                               _flat(grad), need_x, need_probs, need_clips)
        gx = _unflat(gx, x) if ctx.needs_input_grad[0] else None
        return gx, gp, gc, None, None, None


def _kinds_and_bits(precisions: Sequence[str]) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    kinds = tuple(p if PRECISIONS[p].is_float else "int" for p in precisions)
    bits = tuple(PRECISIONS[p].bits for p in precisions if not PRECISIONS[p].is_float)
    return kinds, bits


def mix_inputs(x: torch.Tensor, probs: torch.Tensor, clips: torch.Tensor, precisions: Sequence[str],
               signed: bool) -> torch.Tensor:
    """Σ_p π_p Q_p(x) for a layer input: ``probs`` in ``precisions`` order, ``clips`` the raw PACT
    clips, one per integer precision in that order. One autograd node; compiled when
    ``compile_enabled()``."""
    kinds, bits = _kinds_and_bits(precisions)
    return _QuantMix.apply(x, probs, _positive_clip(clips), kinds, bits, bool(signed))


def quantize_input_at(x: torch.Tensor, precision: str, clip: Optional[torch.Tensor], signed: bool) -> torch.Tensor:
    """Q_p(x) for one precision through the same node (fp32: x itself; fp16 ignores ``clip``)."""
    if precision == "fp32":
        return x
    kinds, bits = _kinds_and_bits([precision])
    clips = x.new_zeros(0) if clip is None or not bits else _positive_clip(clip.reshape(1))
    return _QuantMix.apply(x, None, clips, kinds, bits, bool(signed))


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
        # progressive search: a bool mask over α entries; locked entries get π = 0 (None = all open)
        self.active_mask: Optional[torch.Tensor] = None

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
        if self.active_mask is not None:
            logits = logits.masked_fill(~self.active_mask, float("-inf"))
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
        return quantize_input_at(x, precision, self.clip_for(precision), self.signed_input)

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


def check_layer_names_match(expected: Sequence[str], given: Iterable[str], where: str,
                            what: str = "the model") -> None:
    """The one error for a file or table whose layer names differ from the model's: every missing and
    unknown name is listed (the first 10 of each, then how many more), so the user sees what to fix."""
    given = list(given)
    given_set, expected_set = set(given), set(expected)
    missing = [n for n in expected if n not in given_set]
    unknown = [n for n in given if n not in expected_set]
    if not (missing or unknown):
        return

    def listed(names: List[str]) -> str:
        return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    parts = ([f"missing layers: {listed(missing)}"] if missing else []) + (
        [f"unknown layers: {listed(unknown)}"] if unknown else [])
    raise ValueError(f"{where}: layer names do not match {what}: {'; '.join(parts)}")


def apply_mapping(model: nn.Module, mapping: Dict[str, str], where: str = "mapping") -> None:
    """Fix every layer at the precision named in ``mapping``; names must match the model exactly."""
    layers = dict(mixed_layers(model))
    check_layer_names_match(list(layers), mapping, where)
    for name, layer in layers.items():
        layer.set_precision(mapping[name])


def restrict_precisions(model: nn.Module, allowed: Dict[str, Sequence[str]], where: str = "allowed") -> None:
    """Rebuild each layer's α and clips for a new allowed list, keeping the shared weight and the
    clips and logits of precisions that stay. Precisions not allowed then no longer exist."""
    layers = dict(mixed_layers(model))
    check_layer_names_match(list(layers), allowed, where)
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
