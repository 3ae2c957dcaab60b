"""Quantize functions (Brevitas style: plain functions, testable and reusable on their own; the layers
only decide which of them to apply and how to mix them). docs/design.md §2.

* round to nearest with straight-through gradients, never floor;
* DoReFa's weight grid (or, ``symmetric``, the narrow-range signed grid stock int kernels run), scaled
  per output channel by the least-squares fit to the float weight;
* inputs that can be negative use signed (symmetric) PACT instead of being clamped at zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .mixture import QuantMix, positive_clip
from .precisions import check_int_bits


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


# tanh(w) is computed again inside dorefa_scale on purpose: sharing it reorders the float sums of the
# gradient to w, which moves training trajectories (and every measured figure) by a rounding error.
def _dorefa_unit(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """tanh(w) mapped onto [0, 1] by the (per-channel) scale: what DoReFa rounds to L levels."""
    return torch.tanh(w) / (2 * dorefa_scale(w, per_channel)) + 0.5


def _symmetric_unit(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """tanh(w) / max|tanh(w)| on [−1, 1]: DoReFa's normalisation, kept so both grids see the same input."""
    return torch.tanh(w) / dorefa_scale(w, per_channel)


def symmetric_levels(bits: int) -> int:
    """M = 2^(k−1) − 1: the largest code of the narrow-range signed k-bit grid."""
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class _Grid:
    """One integer weight grid: the normalised weight it rounds, the number it rounds to (L or M: a
    code's divisor), and the grid value of a (rounded) code."""
    unit: Callable[[torch.Tensor, bool], torch.Tensor]
    levels: Callable[[int], int]
    value: Callable[[torch.Tensor, int], torch.Tensor]


_GRIDS = {
    "dorefa": _Grid(_dorefa_unit, lambda bits: 2 ** bits - 1, lambda u, levels: 2 * u / levels - 1),
    "symmetric": _Grid(_symmetric_unit, symmetric_levels, lambda c, levels: c / levels),
}


def _grid_values(w: torch.Tensor, bits: int, per_channel: bool, grid: str) -> torch.Tensor:
    g = _GRIDS[check_weight_grid(grid)]
    check_int_bits(bits, f"quantize_weight_{grid}")
    levels = g.levels(bits)
    return g.value(round_ste(levels * g.unit(w, per_channel)), levels)


def _grid_codes(w: torch.Tensor, bits: int, per_channel: bool, grid: str) -> torch.Tensor:
    """The same float32 operations as ``_grid_values`` up to the rounding, so the codes are exactly the
    ones training used (round_ste's value is the rounded value)."""
    g = _GRIDS[check_weight_grid(grid)]
    check_int_bits(bits, f"{grid}_codes")
    return torch.round(g.levels(bits) * g.unit(w, per_channel))


def quantize_weight_dorefa(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """DoReFa weights (Zhou et al. 2016, eq. 9) on the grid {2i/(2^k-1) - 1}, i = 0..2^k-1.

    ``per_channel`` normalises tanh(w) by each output channel's maximum instead of the tensor's, as
    per-channel int kernels (CMSIS-NN, TFLM) do; the grid itself is unchanged.
    """
    return _grid_values(w, bits, per_channel, "dorefa")


def dorefa_codes(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """The integer codes u in {0..L} (L = 2^k − 1) of ``quantize_weight_dorefa``: the quantized weight
    is (2u − L)/L, times ``weight_scale`` in the layers."""
    return _grid_codes(w, bits, per_channel, "dorefa")


def least_squares_scale(w: torch.Tensor, grid: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """⟨w, q⟩ / ⟨q, q⟩ (per output channel, or per tensor), shaped to broadcast against w: the scale that
    brings the grid values ``q`` closest to ``w`` in L2. Scaled so, a quantized weight never has more
    norm than the float weight (‖s·q‖ = ‖w‖·cos∠(w, q)), at every bit width; the gradient reaches ``w``
    through the numerator, the grid is held fixed."""
    q = grid.detach()
    dims = tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else tuple(range(w.dim()))
    return (w * q).sum(dim=dims, keepdim=True) / (q * q).sum(dim=dims, keepdim=True).clamp_min(1e-12)


# The integer weight grids a layer can round to (docs/design.md §2.2). ``dorefa``: the odd integers
# 2u − L (L = 2^k − 1), no zero, so a k-bit DoReFa layer needs k+1 signed bits on a stock kernel.
# ``symmetric``: the narrow-range signed integers −M..M (M = 2^(k−1) − 1) that int8/int4 kernels
# (CMSIS-NN, TFLite, ONNX QDQ) take as they are; INT2 is ternary {−1, 0, 1}.
WEIGHT_GRIDS = ("dorefa", "symmetric")
DEFAULT_WEIGHT_GRID = "dorefa"


def check_weight_grid(grid: str, where: str = "weight_grid") -> str:
    if grid not in WEIGHT_GRIDS:
        raise ValueError(f"{where}: unknown weight grid {grid!r}; expected one of {', '.join(WEIGHT_GRIDS)}")
    return grid


def quantize_weight_symmetric(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """DoReFa's normalised weight rounded to {−M..M}/M (M = 2^(k−1) − 1): a grid with a zero and no
    −2^(k−1), which symmetric int kernels need; straight-through gradient."""
    return _grid_values(w, bits, per_channel, "symmetric")


def symmetric_codes(w: torch.Tensor, bits: int, per_channel: bool = True) -> torch.Tensor:
    """The signed codes c in {−M..M} of ``quantize_weight_symmetric`` (weight c/M)."""
    return _grid_codes(w, bits, per_channel, "symmetric")


def quantize_weight_grid(w: torch.Tensor, bits: int, per_channel: bool = True,
                         grid: str = DEFAULT_WEIGHT_GRID) -> torch.Tensor:
    """The unscaled grid value of each weight on ``grid`` (in [−1, 1])."""
    return _grid_values(w, bits, per_channel, grid)


def weight_codes(w: torch.Tensor, bits: int, per_channel: bool = True,
                 grid: str = DEFAULT_WEIGHT_GRID) -> torch.Tensor:
    """The integer codes of ``quantize_weight_grid``: DoReFa's u in {0..L} (weight (2u − L)/L) or the
    symmetric c in {−M..M} (weight c/M)."""
    return _grid_codes(w, bits, per_channel, grid)


def grid_divisor(bits: int, grid: str = DEFAULT_WEIGHT_GRID) -> int:
    """What the integer weight (2u − L, or c) is divided by to give the grid value: L or M."""
    return _GRIDS[check_weight_grid(grid)].levels(bits)


def quantize_weight_scaled(w: torch.Tensor, bits: int, per_channel: bool = True,
                           grid: str = DEFAULT_WEIGHT_GRID) -> torch.Tensor:
    """A layer's k-bit weights: the grid point of each weight (DoReFa or symmetric) times the
    least-squares scale of its output channel (``least_squares_scale``). On an MCU the scale folds into
    the per-channel requantisation multiplier."""
    q = quantize_weight_grid(w, bits, per_channel, grid)
    return q * least_squares_scale(w, q, per_channel)


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool = True,
                 grid: str = DEFAULT_WEIGHT_GRID) -> torch.Tensor:
    """The per-channel multiplier s of ``quantize_weight_scaled``: its weights are s·(2u − L)/L (DoReFa)
    or s·c/M (symmetric) with the codes of ``weight_codes``. What an integer kernel folds into its
    requantisation."""
    return least_squares_scale(w, quantize_weight_grid(w, bits, per_channel, grid), per_channel)


def quantize_activation_pact(x: torch.Tensor, clip: torch.Tensor, bits: int,
                             signed: bool = False) -> torch.Tensor:
    """PACT (Choi et al. 2018): clip to [0, a] (or [-a, a] when ``signed``) and round to nearest on
    2^k-1 (signed: 2^(k-1)-1 per side) uniform levels.

    Straight-through gradients as in the PACT paper (eq. 3-4): to x, 1 for lo < x < a (lo = 0, or -a
    when signed) and 0 elsewhere; to ``clip``, 1 where x >= a (and -1 where x <= -a when signed). At
    x = a the gradient goes to the clip alone, so ReLU6 outputs saturated at 6 = a train the clip.
    """
    check_int_bits(bits, "quantize_activation_pact")
    clip = torch.as_tensor(clip, dtype=x.dtype, device=x.device).reshape(1)
    return QuantMix.apply(x, None, positive_clip(clip), ("int",), (bits,), bool(signed))
