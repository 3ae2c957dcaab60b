"""The element-wise mixture Σ_p π_p Q_p(x) over a layer's input, as one autograd node, and the policy
deciding whether it runs through torch.compile.
"""
from __future__ import annotations

import os
import shutil
import sys
import warnings
from typing import Dict, Optional, Sequence, Tuple

import torch

from .precisions import PRECISIONS


def pact_levels(bits: int, signed: bool) -> int:
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


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


def positive_clip(clip: torch.Tensor) -> torch.Tensor:
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

    Why 'auto': compiled, a composite search step costs little more than a fixed-INT8 QAT step
    (benchmarks/search_step.py; figures in docs/experiments.md §4). The price is compilation on first
    use (seconds per process, less once inductor's on-disk cache is warm), which is why the tests
    run 'off'."""
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


def pact_qparams(clips: torch.Tensor, bits: Tuple[int, ...], signed: bool) -> torch.Tensor:
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


class QuantMix(torch.autograd.Function):
    """Σ_p π_p Q_p(x) with straight-through gradients to x, π and the clips; saves only x. The output
    and x's gradient keep x's memory layout."""

    @staticmethod
    def forward(ctx, x, probs, clips, kinds, bits, signed):
        x = _dense(x)
        qparams = pact_qparams(clips.detach(), bits, signed)
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
    return QuantMix.apply(x, probs, positive_clip(clips), kinds, bits, bool(signed))


def quantize_input_at(x: torch.Tensor, precision: str, clip: Optional[torch.Tensor], signed: bool) -> torch.Tensor:
    """Q_p(x) for one precision through the same node (fp32: x itself; fp16 ignores ``clip``)."""
    if precision == "fp32":
        return x
    kinds, bits = _kinds_and_bits([precision])
    clips = x.new_zeros(0) if clip is None or not bits else positive_clip(clip.reshape(1))
    return QuantMix.apply(x, None, clips, kinds, bits, bool(signed))
