"""MobileNetV2 (Sandler et al. 2018) built from mixed-precision layers.

The module tree mirrors torchvision's ``mobilenet_v2`` exactly, so layer names are torchvision's module
paths (``features.3.conv.1.0`` is block 3's depthwise conv) and a torchvision state_dict loads with no
renaming. Every conv and the classifier is a mixed-precision layer.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .blocks import (ConvNormAct, check_model_args, first_mixed_layer, global_pool_as_read, init_like_torchvision,
                     make_divisible, resolve_strides, run_with_stored_input)
from .layers import MixedPrecisionConv2d, MixedPrecisionLinear
from .network import name_layers
from .precisions import PRECISION_ORDER
from .registry import register_model

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
class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, signed_input, precisions, alpha_init):
        super().__init__()
        self.stride = stride
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        layers: List[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(inp, hidden, kernel_size=1, signed_input=signed_input, **kw))
            signed_input = False  # after ReLU6
        layers += [
            ConvNormAct(hidden, hidden, stride=stride, groups=hidden, signed_input=signed_input, **kw),
            MixedPrecisionConv2d(hidden, oup, 1, 1, 0, bias=False, signed_input=False, **kw),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        if self.use_res_connect:
            out, skip = run_with_stored_input(self.conv, x)  # the skip adds x as the block stores it
            return skip + out
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, input_size: int = 224,
                 strides: Union[str, Sequence[int]] = "auto", dropout: float = 0.2,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform",
                 round_nearest: int = 8):
        super().__init__()
        check_model_args(width_mult, num_classes, input_size)
        self.strides = resolve_strides(strides, input_size, len(INVERTED_RESIDUAL_SETTING), STRIDE_PRESETS)
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        # The image is normalised, hence signed; every block input after the first is the output of a
        # linear bottleneck (or a residual sum) and is signed too.
        features: List[nn.Module] = [ConvNormAct(3, input_channel, stride=self.strides[0], signed_input=True, **kw)]
        signed = False  # the stem ends in ReLU6
        for stage, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = self.strides[stage + 1] if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, t, signed, **kw))
                input_channel = output_channel
                signed = True
        features.append(ConvNormAct(input_channel, self.last_channel, kernel_size=1, signed_input=signed, **kw))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            MixedPrecisionLinear(self.last_channel, num_classes, signed_input=False, **kw),
        )
        init_like_torchvision(self, lambda m: nn.init.normal_(m.weight, 0, 0.01))
        name_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = global_pool_as_read(x, first_mixed_layer(self.classifier))
        return self.classifier(x)


@register_model("mobilenetv2", torchvision_name="mobilenet_v2")
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)
