#!/usr/bin/env python3
"""Stage 1: hardware-aware mixed-precision DNAS search, derivation and QAT fine-tuning.

Example (from this folder):
  python dnas_search_cifar10_mbv2.py \
      --tensor_analysis_json ../tensor_analysis_result/mobilenetv2_w0.35_s32_512kb.json \
      --pretrained ../../runs/pretrain/digits_mobilenetv2_w0.35_s32/best.pt --input_size 32
  nohup python dnas_search_cifar10_mbv2.py ... --int_only > search.log 2>&1 &

Everything is written to --output_dir (see Search_CIFAR10/dnas/utils/stage1.py for the file list).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.dnas.stage1 import add_stage1_args, run_stage1  # noqa: E402
from tensor_analysis.cli import Parser, run_cli  # noqa: E402


def main(argv=None):
    parser = Parser(
        description="Stage 1 of AdaptQNet: search per-layer precisions (fp32/fp16/int8/int4/int2) under an "
                    "MCU's latency and RAM budgets, derive the argmax network and fine-tune it.")
    add_stage1_args(parser)
    run_stage1(parser.parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
