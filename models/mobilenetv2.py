"""MobileNetV2 (Sandler et al. 2018) built from mixed-precision layers.

The module tree mirrors torchvision's ``mobilenet_v2`` exactly, so layer names are torchvision's module
paths (``features.3.conv.1.0`` is block 3's depthwise conv) and a torchvision state_dict loads with no
renaming. Every conv and the classifier is a mixed-precision layer.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .blocks import check_model_args, init_like_torchvision
from .base import PRECISION_ORDER, MixedPrecisionConv2d, MixedPrecisionLinear, name_layers

# t (expansion), c (output channels), n (repeats), s (stride of the first repeat): the paper's Table 2.
INVERTED_RESIDUAL_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]

# Stem stride followed by the first-repeat stride of each of the 7 stages.
STRIDE_PRESETS = {
    "imagenet": (2, 1, 2, 2, 2, 1, 2, 1),
    # small inputs: stride 1 in the stem and the first stride-2 stage (the usual CIFAR adaptation)
    "cifar": (1, 1, 1, 2, 2, 1, 2, 1),
    # the seed artifact's variant: only the stem at stride 1
    "seed": (1, 1, 2, 2, 2, 1, 2, 1),
}
SMALL_INPUT_MAX = 64


def make_divisible(v: float, divisor: int = 8, min_value: int = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (as torchvision)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def stride_presets(imagenet: Sequence[int]) -> dict:
    """The three presets of STRIDE_PRESETS for another network, from its ImageNet strides (stem first):
    'cifar' also sets the stem and the first stride-2 stage to 1, 'seed' only the stem."""
    imagenet = tuple(imagenet)
    first_down = next(i for i, s in enumerate(imagenet[1:], start=1) if s == 2)
    cifar = tuple(1 if i in (0, first_down) else s for i, s in enumerate(imagenet))
    return {"imagenet": imagenet, "cifar": cifar, "seed": (1,) + imagenet[1:]}


def resolve_strides(strides: Union[str, Sequence[int]], input_size: int, n_stages: int,
                    presets: dict = STRIDE_PRESETS) -> tuple:
    """'auto' picks 'cifar' for inputs up to 64 px and 'imagenet' above. ``presets`` defaults to
    MobileNetV2's; other networks pass their own (see stride_presets)."""
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


class ConvBNAct(nn.Sequential):
    """conv → BN → ReLU6, laid out like torchvision's Conv2dNormActivation (keys 0.*, 1.*)."""

    def __init__(self, inp, oup, kernel_size=3, stride=1, groups=1, signed_input=False,
                 precisions=PRECISION_ORDER, alpha_init="uniform"):
        padding = (kernel_size - 1) // 2
        super().__init__(
            MixedPrecisionConv2d(inp, oup, kernel_size, stride, padding, groups=groups, bias=False,
                                 precisions=precisions, signed_input=signed_input, alpha_init=alpha_init),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = oup


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, signed_input, precisions, alpha_init):
        super().__init__()
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(inp, hidden, kernel_size=1, signed_input=signed_input, **kw))
            signed_input = False  # after ReLU6
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden, signed_input=signed_input, **kw),
            MixedPrecisionConv2d(hidden, oup, 1, 1, 0, bias=False, signed_input=False, **kw),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, input_size: int = 224,
                 strides: Union[str, Sequence[int]] = "auto", dropout: float = 0.2,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform",
                 round_nearest: int = 8):
        super().__init__()
        check_model_args(width_mult, num_classes, input_size)
        self.strides = resolve_strides(strides, input_size, len(INVERTED_RESIDUAL_SETTING))
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        # The image is normalised, hence signed; every block input after the first is the output of a
        # linear bottleneck (or a residual sum) and is signed too.
        features: List[nn.Module] = [ConvBNAct(3, input_channel, stride=self.strides[0], signed_input=True, **kw)]
        signed = False  # the stem ends in ReLU6
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = self.strides[stage + 1] if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, t, signed, **kw))
                input_channel = output_channel
                signed = True
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1, signed_input=signed, **kw))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            MixedPrecisionLinear(self.last_channel, num_classes, signed_input=False, **kw),
        )
        init_like_torchvision(self, lambda m: nn.init.normal_(m.weight, 0, 0.01))
        name_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        x = torch.flatten(x, 1)
        return self.classifier(x)
