"""MobileNetV3-Small and -Large (Howard et al. 2019) built from mixed-precision layers.

The module tree mirrors torchvision's ``mobilenet_v3_small`` / ``mobilenet_v3_large`` exactly:
``features.4.block.2.fc1`` is block 4's squeeze-excitation reduce conv, ``classifier.3`` the last
Linear, and a torchvision state_dict loads with no renaming. Every conv (squeeze-excitation convs
included) and both classifier Linear layers are mixed-precision layers.
"""
from __future__ import annotations

from functools import partial
from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .blocks import (ConvNormAct, SqueezeExcitation, check_model_args, first_mixed_layer, global_pool_as_read,
                     init_like_torchvision, inverted_residual_layers, make_divisible, resolve_strides,
                     run_with_stored_input, stride_presets)
from .layers import MixedPrecisionLinear
from .network import name_layers
from .precisions import PRECISION_ORDER
from .registry import register_model

# kernel, expanded channels, output channels, squeeze-excitation, activation (RE = ReLU, HS = hard-swish),
# stride: the paper's Tables 1 (Large) and 2 (Small), one row per block.
LARGE_SETTING = [
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
]
SMALL_SETTING = [
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
]
# setting, hidden width of the classifier (before width scaling)
VARIANTS = {"large": (LARGE_SETTING, 1280), "small": (SMALL_SETTING, 1024)}
STEM_CHANNELS = 16
HEAD_EXPANSION = 6  # the last 1x1 conv widens the last block's output 6×
ACTIVATIONS = {"RE": nn.ReLU, "HS": nn.Hardswish}
# Stem stride followed by each block's stride: one entry per table row.
STRIDE_PRESETS = {name: stride_presets((2,) + tuple(row[5] for row in setting))
                  for name, (setting, _) in VARIANTS.items()}
# torchvision's BatchNorm for MobileNetV3 (TF's defaults)
norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


class InvertedResidual(nn.Module):
    """[1×1 expand] → k×k depthwise → [squeeze-excitation] → 1×1 linear projection (+ input)."""

    def __init__(self, inp, kernel, expanded, oup, use_se, activation, stride, signed_input,
                 precisions, alpha_init):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == oup
        squeeze = (lambda signed: SqueezeExcitation(expanded, make_divisible(expanded // 4, 8), nn.ReLU,
                                                    nn.Hardsigmoid, signed_input=signed, precisions=precisions,
                                                    alpha_init=alpha_init)) if use_se else None
        self.block = nn.Sequential(*inverted_residual_layers(
            inp, expanded, oup, kernel, stride, activation, signed_input, squeeze,
            norm_layer=norm_layer, precisions=precisions, alpha_init=alpha_init))
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.block(x)
        result, skip = run_with_stored_input(self.block, x)  # the skip adds x as the block stores it
        return result + skip


class MobileNetV3(nn.Module):
    def __init__(self, variant: str = "large", num_classes: int = 1000, width_mult: float = 1.0,
                 input_size: int = 224, strides: Union[str, Sequence[int]] = "auto", dropout: float = 0.2,
                 precisions: Sequence[str] = PRECISION_ORDER, alpha_init: str = "uniform"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MobileNetV3 variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        check_model_args(width_mult, num_classes, input_size)
        setting, hidden = VARIANTS[variant]
        self.variant = variant
        self.strides = resolve_strides(strides, input_size, len(setting), STRIDE_PRESETS[variant])
        kw = dict(precisions=precisions, alpha_init=alpha_init)

        def scaled(c):
            return make_divisible(c * width_mult, 8)

        input_channel = scaled(STEM_CHANNELS)
        # The image is normalised, hence signed.
        stem = ConvNormAct(3, input_channel, 3, self.strides[0], activation=nn.Hardswish, signed_input=True,
                           norm_layer=norm_layer, **kw)
        features: List[nn.Module] = [stem]
        signed = stem.output_signed
        for i, (kernel, expanded, out, use_se, act, _) in enumerate(setting):
            block = InvertedResidual(input_channel, kernel, scaled(expanded), scaled(out), use_se, ACTIVATIONS[act],
                                     self.strides[i + 1], signed, **kw)
            features.append(block)
            input_channel = block.out_channels
            signed = True  # a linear projection or a residual sum
        head_channels = HEAD_EXPANSION * input_channel
        features.append(ConvNormAct(input_channel, head_channels, 1, activation=nn.Hardswish, signed_input=signed,
                                    norm_layer=norm_layer, **kw))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # torchvision's module tree; forward pools with global_pool_as_read
        self.last_channel = scaled(hidden)
        # Both Linear inputs are (pooled) hard-swish outputs, which can be negative.
        self.classifier = nn.Sequential(
            MixedPrecisionLinear(head_channels, self.last_channel, signed_input=True, **kw),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout),
            MixedPrecisionLinear(self.last_channel, num_classes, signed_input=True, **kw),
        )
        init_like_torchvision(self, lambda m: nn.init.normal_(m.weight, 0, 0.01))
        name_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = global_pool_as_read(x, first_mixed_layer(self.classifier))
        return self.classifier(x)


@register_model("mobilenetv3_small", torchvision_name="mobilenet_v3_small")
def mobilenetv3_small(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                      strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                      alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV3("small", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)


@register_model("mobilenetv3_large", torchvision_name="mobilenet_v3_large")
def mobilenetv3_large(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                      strides="auto", dropout: float = 0.2, precisions=PRECISION_ORDER,
                      alpha_init: str = "uniform") -> nn.Module:
    return MobileNetV3("large", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                       strides=strides, dropout=dropout, precisions=precisions, alpha_init=alpha_init)
