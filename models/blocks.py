"""Building blocks and helpers shared by the registered networks, laid out like torchvision's so that
module paths (and state_dict keys) are torchvision's.

Each block knows whether its output can be negative, so the next mixed-precision layer gets the right
PACT form (docs/design.md §2): ReLU and ReLU6 outputs are unsigned; hard-swish (min −0.375) and SiLU
(min ≈ −0.278) outputs, linear projections and residual sums are signed.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from .layers import MIXED_LAYER_TYPES, MixedPrecisionConv2d, MixedPrecisionMixin
from .precisions import PRECISION_ORDER, PRECISIONS

# Whether an activation's output can be negative.
ACTIVATION_SIGNED = {nn.ReLU: False, nn.ReLU6: False, nn.Hardswish: True, nn.SiLU: True}


def activation_signed(activation: Optional[Type[nn.Module]]) -> bool:
    """No activation (a linear projection) leaves the output signed."""
    if activation is None:
        return True
    try:
        return ACTIVATION_SIGNED[activation]
    except KeyError:
        raise ValueError(f"activation {activation.__name__} has no known output sign; "
                         f"expected one of {', '.join(a.__name__ for a in ACTIVATION_SIGNED)}") from None


class ConvNormAct(nn.Sequential):
    """conv → norm → activation (none for a linear projection), keys 0.*, 1.* like torchvision's
    Conv2dNormActivation. ``output_signed`` tells the next layer which PACT form it needs."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 activation: Optional[Type[nn.Module]] = nn.ReLU6, signed_input: bool = True,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform"):
        padding = (kernel_size - 1) // 2
        layers = [
            MixedPrecisionConv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False,
                                 precisions=precisions, signed_input=signed_input, alpha_init=alpha_init),
            norm_layer(oup),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = oup
        self.output_signed = activation_signed(activation)


class SqueezeExcitation(nn.Module):
    """x · σ(fc2(δ(fc1(avgpool(x))))) (Hu et al. 2018), with torchvision's attribute names.

    ``signed_input`` is the sign of x; the pooled vector fc1 sees has the same sign. The scale is in
    [0, 1] (sigmoid / hard-sigmoid), so the output keeps x's sign.
    """

    def __init__(self, channels: int, squeeze_channels: int, activation: Type[nn.Module] = nn.ReLU,
                 scale_activation: Type[nn.Module] = nn.Sigmoid, signed_input: bool = True,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform"):
        super().__init__()
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = MixedPrecisionConv2d(channels, squeeze_channels, 1, bias=True, signed_input=signed_input, **kw)
        self.fc2 = MixedPrecisionConv2d(squeeze_channels, channels, 1, bias=True,
                                        signed_input=activation_signed(activation), **kw)
        self.activation = activation(inplace=True)
        self.scale_activation = scale_activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.avgpool(x)
        scale = self.activation(self.fc1(scale))
        scale = self.scale_activation(self.fc2(scale))
        return scale * x


def inverted_residual_layers(inp: int, expanded: int, oup: int, kernel: int, stride: int,
                             activation: Optional[Type[nn.Module]], signed_input: bool,
                             squeeze: Optional[Callable[[bool], nn.Module]] = None, **conv_kw) -> List[nn.Module]:
    """The body shared by MobileNetV3's and EfficientNet's blocks: [1×1 expansion, only when it widens]
    → k×k depthwise → [``squeeze(signed_input)``: the model's squeeze-excitation] → 1×1 linear
    projection. Each quantized input is signed unless the activation before it is non-negative."""
    signed = signed_input
    layers: List[nn.Module] = []
    if expanded != inp:
        layers.append(ConvNormAct(inp, expanded, 1, activation=activation, signed_input=signed, **conv_kw))
        signed = activation_signed(activation)
    layers.append(ConvNormAct(expanded, expanded, kernel, stride, groups=expanded, activation=activation,
                              signed_input=signed, **conv_kw))
    signed = activation_signed(activation)
    if squeeze is not None:
        layers.append(squeeze(signed))
    layers.append(ConvNormAct(expanded, oup, 1, activation=None, signed_input=signed, **conv_kw))
    return layers


def check_model_args(width_mult: float, num_classes: int, input_size: int) -> None:
    """The arguments every registered model shares, checked with one clear message each."""
    for name, value in (("width_mult", width_mult), ("num_classes", num_classes), ("input_size", input_size)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")


def init_like_torchvision(model: nn.Module, linear_init: Callable[[nn.Linear], None]) -> None:
    """torchvision's initialisation for its mobile networks (they differ only in the Linear layers),
    so an untrained model behaves like theirs."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            linear_init(m)
            nn.init.zeros_(m.bias)


SMALL_INPUT_MAX = 64


def make_divisible(v: float, divisor: int = 8, min_value: int = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (as torchvision)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stride_presets(imagenet: Sequence[int]) -> dict:
    """The three stride presets of a network from its ImageNet strides (stem first):
    'cifar' also sets the stem and the first stride-2 stage to 1, 'seed' only the stem."""
    imagenet = tuple(imagenet)
    first_down = next(i for i, s in enumerate(imagenet[1:], start=1) if s == 2)
    cifar = tuple(1 if i in (0, first_down) else s for i, s in enumerate(imagenet))
    return {"imagenet": imagenet, "cifar": cifar, "seed": (1,) + imagenet[1:]}


def resolve_strides(strides: Union[str, Sequence[int]], input_size: int, n_stages: int, presets: dict) -> tuple:
    """'auto' picks 'cifar' for inputs up to 64 px and 'imagenet' above; ``presets`` are the network's
    (see stride_presets)."""
    if isinstance(strides, str):
        key = strides
        if key == "auto":
            key = "cifar" if input_size <= SMALL_INPUT_MAX else "imagenet"
        if key not in presets:
            raise ValueError(f"strides: unknown preset {strides!r}; expected auto, "
                             f"{', '.join(presets)} or {n_stages + 1} integers")
        return tuple(presets[key])
    strides = tuple(int(s) for s in strides)
    if len(strides) != n_stages + 1 or any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides: expected {n_stages + 1} values of 1 or 2 (stem + {n_stages} stages), "
                         f"got {strides}")
    return strides


# ----------------------------------------------------------------------------------------------------
# What a residual add and the global pool read (docs/design.md §3.6)
# ----------------------------------------------------------------------------------------------------
def first_mixed_layer(module: nn.Module) -> MixedPrecisionMixin:
    """The first mixed-precision layer inside ``module`` (registration order is execution order in
    every registered network). Looked up at each call, because stage 2 replaces layers in place."""
    for m in module.modules():
        if isinstance(m, MIXED_LAYER_TYPES):
            return m
    raise ValueError(f"{type(module).__name__} holds no mixed-precision layer")


def run_with_stored_input(body: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(body(x), x as body's first layer holds it for its op): the two operands of a residual add.

    A deployed network stores the block input once, in the format its first layer reads, so the skip
    path adds that, not the float x. The layer reports the tensor it computed in this very forward
    pass (the same π sample while searching), so the skip and the branch see the same input."""
    layer = first_mixed_layer(body)
    seen: List[torch.Tensor] = []
    layer._stored_input_sink = seen.append
    try:
        out = body(x)
    finally:
        layer._stored_input_sink = None
    if len(seen) != 1:
        raise RuntimeError(f"{type(body).__name__}: its first layer ran {len(seen)} times, expected once")
    return out, seen[0]


def global_pool_as_read(x: torch.Tensor, reader: MixedPrecisionMixin) -> torch.Tensor:
    """(N, C, H, W) → (N, C): the mean over positions of x as ``reader`` (the classifier) holds it.

    A deployed network stores the last feature map in the classifier's input format and pools that:
    an int pool rounds Σcodes/(H·W) half to even onto the same grid, so with the reader fixed at an
    integer precision the mean is snapped exactly there (straight-through gradient), and the reader's
    own quantizer then keeps it unchanged. Floats and search mixtures pool the stored values."""
    stored = reader.stored_input(x)
    precision = reader.stored_precision()
    if precision is None or PRECISIONS[precision].is_float:
        return stored.mean(dim=(2, 3))
    _, _, inv_step, step = reader.input_grid_tensor(precision)
    # codes are exact integers and their mean is the correctly rounded Σq/(H·W), so rounding it is
    # round-half-even of the exact quotient; one reduction keeps the graph tracer's single pool
    y = stored * inv_step
    codes = y + (torch.round(y) - y).detach()
    mean = codes.mean(dim=(2, 3))
    return (mean + (torch.round(mean) - mean).detach()) * step
