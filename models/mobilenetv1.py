"""MobileNetV1 (Howard et al. 2017) built from mixed-precision layers.

ImageNet layout: a 3×3 stem and 13 depthwise-separable blocks (3×3 depthwise → 1×1 pointwise, each
followed by BN and ReLU6, as in Keras' ``MobileNet``, the network behind the published STM32 figures),
global average pooling and one classifier. It is here because most published MCU latencies are for
it: the hardware profiles are checked against them.

Layer names: ``features.0.0`` (stem), ``features.<i>.conv.0.0`` (block i's depthwise),
``features.<i>.conv.1.0`` (its pointwise), ``classifier.1``.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .blocks import (ConvNormAct, check_model_args, first_mixed_layer, global_pool_as_read, init_like_torchvision,
                     make_divisible, resolve_strides, stride_presets)
from .layers import MixedPrecisionLinear
from .network import name_layers
from .precisions import PRECISION_ORDER
from .registry import register_model

# (output channels, repeats, stride of the first repeat): the paper's Table 1 grouped into stages.
STAGES = [
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
]
STEM_CHANNELS = 32
# stem stride followed by each stage's first stride; the 'cifar' and 'seed' presets follow the same
# small-input rule as MobileNetV2 (stride 1 in the stem and the first stride-2 stage).
STRIDE_PRESETS = stride_presets((2,) + tuple(s for _, _, s in STAGES))


class DepthwiseSeparable(nn.Sequential):
    """3×3 depthwise → 1×1 pointwise; both inputs follow a ReLU6, hence unsigned."""

    def __init__(self, inp: int, oup: int, stride: int, precisions, alpha_init):
        super().__init__()
        kw = dict(precisions=precisions, alpha_init=alpha_init, signed_input=False)
        self.conv = nn.Sequential(
            ConvNormAct(inp, inp, kernel_size=3, stride=stride, groups=inp, **kw),
            ConvNormAct(inp, oup, kernel_size=1, **kw),
        )
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, input_size: int = 224,
                 strides: Union[str, Sequence[int]] = "auto", dropout: float = 0.2,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform",
                 round_nearest: int = 8):
        super().__init__()
        check_model_args(width_mult, num_classes, input_size)
        self.strides = resolve_strides(strides, input_size, len(STAGES), presets=STRIDE_PRESETS)
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        # For the published widths (0.25/0.5/0.75/1.0) this equals Keras' int(c·α).
        channels = make_divisible(STEM_CHANNELS * width_mult, round_nearest)
        # the normalised image is signed; every later input follows a ReLU6
        features: List[nn.Module] = [ConvNormAct(3, channels, stride=self.strides[0], signed_input=True, **kw)]
        for stage, (c, n, s) in enumerate(STAGES):
            out = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = self.strides[stage + 1] if i == 0 else 1
                features.append(DepthwiseSeparable(channels, out, stride, **kw))
                channels = out
        self.features = nn.Sequential(*features)
        self.last_channel = channels
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            MixedPrecisionLinear(channels, num_classes, signed_input=False, **kw),
        )
        init_like_torchvision(self, lambda m: nn.init.normal_(m.weight, 0, 0.01))
        name_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = global_pool_as_read(x, first_mixed_layer(self.classifier))
        return self.classifier(x)


@register_model("mobilenetv1")
def mobilenetv1(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)
