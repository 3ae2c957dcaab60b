#!/usr/bin/env python3
"""Stage 2: dual-core enhancement search. Starts from a finished stage-1 run and lets the layers that
matter most run on two processing units at once (e.g. STM32H747's Cortex-M7 + Cortex-M4, or the two
ESP32-S3 cores), each part of a layer's output channels at its own precision; derives, fine-tunes and
reports the result against stage 1.

Example (from this folder):
  python dnas_cifar10_search_multicore_mbv2.py --stage1_dir ../../runs/dnas/<stage-1 run> \\
      --hardware stm32h747 --topk 12
  python dnas_cifar10_search_multicore_mbv2.py --stage1_dir RUN --hardware esp32s3 --layers all \\
      --dual_analysis_json ../tensor_analysis_result/<model>_dual_esp32s3.json

Everything is written to --output_dir (see Search_CIFAR10/dnas_multicore/stage2.py for the file list).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.dnas_multicore.stage2 import add_stage2_args, run_stage2  # noqa: E402
from tensor_analysis.cli import Parser, run_cli  # noqa: E402


def main(argv=None):
    parser = Parser(
        description="Stage 2 of AdaptQNet: search, for the layers of a stage-1 network that cost most, how to "
                    "split their output channels between two processing units (each part at its own "
                    "precision) or keep them whole on one unit; derive, fine-tune, and compare with stage 1.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_stage2_args(parser)
    run_stage2(parser.parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
