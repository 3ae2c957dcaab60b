"""Published measurements the hardware profiles are checked against (docs/hardware.md §5 and its sources).

``calibration`` sets were used to choose profile numbers; ``held_out`` ones were not, so they show how
well the model generalises.
"""
from __future__ import annotations

from typing import Any, Dict, List

# STM32H747I-DISCO, Cortex-M7 @400 MHz, X-CUBE-AI 10, INT8 (STMicroelectronics/stm32ai-modelzoo,
# image_classification/mobilenetv1 README; docs/hardware.md §5.2). The 0.25-96 model is the
# 5-class Flowers one (7.5 M MACs); the others are the 1000-class ImageNet models.
STM32H747_MOBILENETV1: List[Dict[str, Any]] = [
    {"name": "MobileNetV1 1.0-224", "spec": {"type": "mobilenetv1", "width_mult": 1.0, "input_size": 224,
                                              "num_classes": 1000}, "mmacs": 568.7, "ms": 1641.84},
    {"name": "MobileNetV1 0.5-224", "spec": {"type": "mobilenetv1", "width_mult": 0.5, "input_size": 224,
                                              "num_classes": 1000}, "mmacs": 149.5, "ms": 504.37},
    {"name": "MobileNetV1 0.25-224", "spec": {"type": "mobilenetv1", "width_mult": 0.25, "input_size": 224,
                                               "num_classes": 1000}, "mmacs": 41.0, "ms": 166.75},
    {"name": "MobileNetV1 0.25-96", "spec": {"type": "mobilenetv1", "width_mult": 0.25, "input_size": 96,
                                              "num_classes": 5}, "mmacs": 7.5, "ms": 29.94},
]
STM32H747_CLOCK_MHZ = 400

# Same board and tool (stm32ai-modelzoo image_classification/mobilenetv2 README, 'Reference MCU
# inference time'): held out, not used to set any number.
STM32H747_MOBILENETV2_HELD_OUT: List[Dict[str, Any]] = [
    {"name": "MobileNetV2 0.35-128 (ImageNet)", "spec": {"type": "mobilenetv2", "width_mult": 0.35,
                                                         "input_size": 128, "num_classes": 1000}, "ms": 116.13},
    {"name": "MobileNetV2 0.35-224 (ImageNet)", "spec": {"type": "mobilenetv2", "width_mult": 0.35,
                                                         "input_size": 224, "num_classes": 1000}, "ms": 313.92},
    {"name": "MobileNetV2 1.0-224 (ImageNet)", "spec": {"type": "mobilenetv2", "width_mult": 1.0,
                                                        "input_size": 224, "num_classes": 1000}, "ms": 1106.64},
    {"name": "MobileNetV2 1.4-224 (ImageNet)", "spec": {"type": "mobilenetv2", "width_mult": 1.4,
                                                        "input_size": 224, "num_classes": 1000}, "ms": 2010.66},
    {"name": "MobileNetV2 0.35-128 (Flowers)", "spec": {"type": "mobilenetv2", "width_mult": 0.35,
                                                        "input_size": 128, "num_classes": 5}, "ms": 94.34},
    {"name": "MobileNetV2 0.35-224 (Flowers)", "spec": {"type": "mobilenetv2", "width_mult": 0.35,
                                                        "input_size": 224, "num_classes": 5}, "ms": 290.75},
]

# ESP32-S3 @240 MHz, ESP-NN INT8 kernels, cycles per MAC (espressif/esp-nn README; docs/hardware.md §5
# 'Per-kernel, INT8'). Shapes: (op, Cin, Cout, H=W input, kernel, stride); the FC's shape is not
# published beyond its 795 MACs (taken as 53 inputs x 15 outputs).
ESP32S3_KERNELS: List[Dict[str, Any]] = [
    {"name": "1x1 conv 64->64 at 10x10", "op": "pwconv", "cin": 64, "cout": 64, "hw": 10, "k": 1, "cyc_per_mac": 1.13},
    {"name": "1x1 conv 16->16 at 8x8", "op": "pwconv", "cin": 16, "cout": 16, "hw": 8, "k": 1, "cyc_per_mac": 2.66},
    {"name": "3x3 conv, 3 input channels (16 out at 32x32 assumed)", "op": "conv", "cin": 3, "cout": 16, "hw": 32,
     "k": 3, "cyc_per_mac": 5.8},
    {"name": "depthwise 3x3 on 18x18x16", "op": "dwconv", "cin": 16, "cout": 16, "hw": 18, "k": 3, "cyc_per_mac": 5.2},
    {"name": "FC of 795 MACs (4,439 cycles)", "op": "linear", "cin": 53, "cout": 15, "hw": 1, "k": 1,
     "cyc_per_mac": 4439 / 795},
]

# Measured speed-up of one CNN split over the two cores of one chip (docs/hardware.md §5.4).
ESP32S3_DUAL_SPEEDUP = {"spec": {"type": "mobilenetv2", "width_mult": 1.0, "input_size": 224, "num_classes": 1000},
                        "single_ms": 1309.5, "dual_ms": 867.0, "speedup": 1309.5 / 867.0,
                        "source": "ESP-DL, MobileNetV2-1.0-224 INT8 (docs/hardware.md §5.4)"}
# STM32H747: no published split; docs/hardware.md §5 estimates a balanced M7+M4 split gains <= 1.31x
# before synchronisation costs.
STM32H747_DUAL_MAX_SPEEDUP = 1.31
