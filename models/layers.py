"""Mixed-precision layers: one shared weight, a logit α per allowed precision (docs/design.md §3).

Semantics a user relies on:
* one precision per layer, applied to the layer's weights *and* its input activation;
* every precision quantizes the same shared weight tensor in the forward pass, so every precision's
  gradient reaches it;
* ``stored_input(x)`` is the input as the layer feeds it to its op: how a deployed network holds the
  tensor, and so what a residual add and a global pool read (docs/design.md §3.6).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mixture import mix_inputs, pact_levels, pact_qparams, positive_clip, quantize_input_at
from .precisions import PRECISION_ORDER, PRECISIONS, canonical_precisions
from .quantizers import DEFAULT_WEIGHT_GRID, quantize_fp16, quantize_weight_scaled

# The seed artifact's α initialisation (it favours int8 so the search starts near a deployable net).
SEED_ALPHA_BIAS = {"int8": 1.0, "int4": 0.5, "fp16": 0.3, "int2": 0.2, "fp32": 0.1}

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
        self.weight_grid = DEFAULT_WEIGHT_GRID  # models.quantizers.WEIGHT_GRIDS; set by the registry from the spec
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
        # both grids (DoReFa, symmetric) live on [-1, 1]; the least-squares scale returns them to the float
        # weight's range, so all precisions share the float weight's scale (BN statistics and the fp32 branch
        # stay meaningful) without giving a coarse grid more norm than the weight (docs/design.md §2.2)
        return quantize_weight_scaled(w, PRECISIONS[precision].bits, self.weight_per_channel, self.weight_grid)

    def quantize_input(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        return quantize_input_at(x, precision, self.clip_for(precision), self.signed_input)

    def input_grid(self, precision: str) -> Tuple[float, float, float, float]:
        """(lo, a, L/a, a/L) of the PACT grid this layer reads its input on at an integer precision:
        the float32 values the quantizer itself computes, so a deployed network reproduces its codes."""
        return tuple(self.input_grid_tensor(precision).tolist())

    def input_grid_tensor(self, precision: str) -> torch.Tensor:
        """``input_grid`` as a float32 tensor on the layer's device: what a forward pass uses, since
        reading the values out would wait for the device at every step."""
        bits = PRECISIONS[precision].bits
        clip = positive_clip(self.clip_for(precision).detach().reshape(1).float())
        return pact_qparams(clip, (bits,), self.signed_input)[0]

    def input_levels(self, precision: str) -> int:
        return pact_levels(PRECISIONS[precision].bits, self.signed_input)

    # -- the stored input (docs/design.md §3.6) ---------------------------------------------------------
    # A block that adds its input back (a residual) must add what its first layer reads, not the float
    # tensor: the deployed network holds only that. It asks the layer for the input of the forward pass
    # it is running (same π sample), through this sink; see models.blocks.run_with_stored_input.
    _stored_input_sink: Optional[Callable[[torch.Tensor], None]] = None

    def stored_input(self, x: torch.Tensor, probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x as this layer feeds it to its op: Q_p(x) when fixed, Σ_p π_p·Q_p(x) while searching (the
        composite input; for ``exact`` the mixture of what each precision's op reads). ``probs``: the π
        of the forward pass this belongs to (default: ``probs()``)."""
        if self.mode == "fixed":
            return self.quantize_input(x, self.fixed_precision)
        pi = self.probs() if probs is None else probs
        return mix_inputs(x, pi, self.act_clip, self.precisions, self.signed_input)

    def stored_precision(self) -> Optional[str]:
        """The one precision ``stored_input`` holds x at, or None while it is a mixture."""
        return self.fixed_precision if self.mode == "fixed" else None

    def _report_stored_input(self, xq: torch.Tensor) -> None:
        if self._stored_input_sink is not None:
            self._stored_input_sink(xq)

    def _forward_mixed(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fixed":
            p = self.fixed_precision
            xq = self.quantize_input(x, p)
            self._report_stored_input(xq)
            return self._op(xq, self.quantize_weight(p))
        pi = self.probs()
        if self.mode == "composite":
            w = None
            for i, p in enumerate(self.precisions):
                term = pi[i] * self.quantize_weight(p)
                w = term if w is None else w + term
            xq = mix_inputs(x, pi, self.act_clip, self.precisions, self.signed_input)
            self._report_stored_input(xq)
            return self._op(xq, w)
        if self.mode == "exact":
            if self._stored_input_sink is not None:
                self._report_stored_input(self.stored_input(x, pi))
            out = None
            for i, p in enumerate(self.precisions):
                term = pi[i] * self._op(self.quantize_input(x, p), self.quantize_weight(p))
                out = term if out is None else out + term
            return out
        raise ValueError(f"{self._where()}: unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", precisions={list(self.precisions)}, mode={self.mode}"
                + (f", fixed={self.fixed_precision}" if self.mode == "fixed" else "")
                + f", signed_input={self.signed_input}"
                + (f", weight_grid={self.weight_grid}" if self.weight_grid != DEFAULT_WEIGHT_GRID else ""))


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
