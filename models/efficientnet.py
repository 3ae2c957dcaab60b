"""EfficientNet-B0 (Tan & Le 2019) and EfficientNet-Lite0 built from mixed-precision layers.

The module tree mirrors torchvision's ``efficientnet_b0`` exactly: ``features.2.1.block.2.fc1`` is the
squeeze-excitation reduce conv of stage 2's second block, ``classifier.1`` the Linear layer, and a
torchvision state_dict loads with no renaming. Every conv (squeeze-excitation convs included) and the
classifier are mixed-precision layers.

EfficientNet-Lite0 is B0 with the three changes of TensorFlow's EfficientNet-Lite, made for integer
accelerators and MCU toolchains (github.com/tensorflow/tpu, models/official/efficientnet/lite/README.md
and efficientnet_lite_builder.py; blog.tensorflow.org/2020/03/higher-accuracy-on-vision-models-with-
efficientnet-lite.html): no squeeze-excitation, ReLU6 instead of swish, and a stem (32) and head (1280)
that width scaling leaves fixed. torchvision has no Lite model, so it keeps B0's module tree minus the
SE modules, and B0's BatchNorm and stochastic-depth settings.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Union

import torch
import torch.nn as nn
from torchvision.ops import StochasticDepth

from .blocks import (ConvNormAct, SqueezeExcitation, check_model_args, first_mixed_layer, global_pool_as_read,
                     init_like_torchvision, inverted_residual_layers, make_divisible, resolve_strides,
                     run_with_stored_input, stride_presets)
from .layers import MixedPrecisionLinear
from .network import name_layers
from .precisions import PRECISION_ORDER
from .registry import register_model

# expansion ratio, kernel, stride of the first repeat, output channels, repeats: the paper's Table 1
# (stages 2-8).
B0_SETTING = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
STEM_CHANNELS = 32
HEAD_EXPANSION = 4  # B0's head: 4 × 320 = 1280 channels
LITE_HEAD_CHANNELS = 1280
# Stem stride followed by the first-repeat stride of each of the 7 stages (the same as MobileNetV2's).
STRIDE_PRESETS = stride_presets((2,) + tuple(row[2] for row in B0_SETTING))
# variant → (activation, squeeze-excitation, fixed stem and head)
VARIANTS = {"b0": (nn.SiLU, True, False), "lite0": (nn.ReLU6, False, True)}


class MBConv(nn.Module):
    """[1×1 expand] → k×k depthwise → [squeeze-excitation] → 1×1 linear projection (+ input, with
    stochastic depth on the branch: torchvision's StochasticDepth, the identity in eval mode)."""

    def __init__(self, inp, oup, expand_ratio, kernel, stride, stochastic_depth_prob, activation, use_se,
                 signed_input, precisions, alpha_init):
        super().__init__()
        kw = dict(precisions=precisions, alpha_init=alpha_init)
        self.use_res_connect = stride == 1 and inp == oup
        expanded = make_divisible(inp * expand_ratio, 8)
        # EfficientNet squeezes to a quarter of the block's *input* channels, with a SiLU inside
        squeeze = (lambda signed: SqueezeExcitation(expanded, max(1, inp // 4), nn.SiLU, nn.Sigmoid,
                                                    signed_input=signed, **kw)) if use_se else None
        self.block = nn.Sequential(*inverted_residual_layers(inp, expanded, oup, kernel, stride, activation,
                                                             signed_input, squeeze, **kw))
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_res_connect:
            return self.block(x)
        result, skip = run_with_stored_input(self.block, x)  # the skip adds x as the block stores it
        return self.stochastic_depth(result) + skip


class EfficientNet(nn.Module):
    def __init__(self, variant: str = "b0", num_classes: int = 1000, width_mult: float = 1.0,
                 input_size: int = 224, strides: Union[str, Sequence[int]] = "auto", dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2, precisions: Sequence[str] = PRECISION_ORDER,
                 alpha_init: str = "uniform"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"EfficientNet variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        check_model_args(width_mult, num_classes, input_size)
        if not 0.0 <= stochastic_depth_prob <= 1.0:
            raise ValueError(f"stochastic_depth_prob must be in [0, 1], got {stochastic_depth_prob}")
        activation, use_se, fixed_stem_head = VARIANTS[variant]
        self.variant = variant
        self.strides = resolve_strides(strides, input_size, len(B0_SETTING), STRIDE_PRESETS)
        kw = dict(precisions=precisions, alpha_init=alpha_init)

        def scaled(c):
            return make_divisible(c * width_mult, 8)

        input_channel = STEM_CHANNELS if fixed_stem_head else scaled(STEM_CHANNELS)
        # The image is normalised, hence signed.
        stem = ConvNormAct(3, input_channel, 3, self.strides[0], activation=activation, signed_input=True, **kw)
        features: List[nn.Module] = [stem]
        signed = stem.output_signed
        total_blocks = sum(row[4] for row in B0_SETTING)
        block_id = 0
        for stage, (expand_ratio, kernel, stride, out, repeats) in enumerate(B0_SETTING):
            blocks: List[nn.Module] = []
            for i in range(repeats):
                # the drop probability grows linearly with depth, as in torchvision
                sd_prob = stochastic_depth_prob * block_id / total_blocks
                block = MBConv(input_channel, scaled(out), expand_ratio, kernel,
                               self.strides[stage + 1] if i == 0 else 1, sd_prob, activation, use_se, signed, **kw)
                blocks.append(block)
                input_channel = block.out_channels
                signed = True  # a linear projection or a residual sum
                block_id += 1
            features.append(nn.Sequential(*blocks))
        head_channels = LITE_HEAD_CHANNELS if fixed_stem_head else HEAD_EXPANSION * input_channel
        head = ConvNormAct(input_channel, head_channels, 1, activation=activation, signed_input=signed, **kw)
        features.append(head)
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # torchvision's module tree; forward pools with global_pool_as_read
        self.last_channel = head_channels
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            MixedPrecisionLinear(head_channels, num_classes, signed_input=head.output_signed, **kw),
        )
        init_like_torchvision(self, lambda m: nn.init.uniform_(m.weight, -1.0 / math.sqrt(m.out_features),
                                                               1.0 / math.sqrt(m.out_features)))
        name_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = global_pool_as_read(x, first_mixed_layer(self.classifier))
        return self.classifier(x)


@register_model("efficientnet_b0", torchvision_name="efficientnet_b0")
def efficientnet_b0(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                    strides="auto", dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                    precisions=PRECISION_ORDER, alpha_init: str = "uniform") -> nn.Module:
    return EfficientNet("b0", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                        strides=strides, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob,
                        precisions=precisions, alpha_init=alpha_init)


@register_model("efficientnet_lite0")
def efficientnet_lite0(num_classes: int = 10, width_mult: float = 1.0, input_size: int = 32,
                       strides="auto", dropout: float = 0.2, stochastic_depth_prob: float = 0.2,
                       precisions=PRECISION_ORDER, alpha_init: str = "uniform") -> nn.Module:
    return EfficientNet("lite0", num_classes=num_classes, width_mult=width_mult, input_size=input_size,
                        strides=strides, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob,
                        precisions=precisions, alpha_init=alpha_init)
