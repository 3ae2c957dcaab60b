#!/usr/bin/env python3
"""Random-search baseline: N mappings drawn uniformly inside the RAM budget and latency target, each
fine-tuned like a searched network, one chosen on validation, tested once. By default N gives the same
training compute as one DNAS run with the same --epochs / --warmup_epochs / --finetune_epochs.

Example (from this folder):
  python random_search.py --tensor_analysis_json ../tensor_analysis_result/mobilenetv2_w0.35_s32_128kb.json \\
      --pretrained ../../runs/pretrain/digits_mobilenetv2_w0.35_s32/best.pt --dataset digits \\
      --memory_budget_kb 48 --hardware artifact --epochs 4 --warmup_epochs 1 --finetune_epochs 2

Writes --output_dir (see Search_CIFAR10/dnas/random_baseline.py for the layout).
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.dnas.random_baseline import run_random_search  # noqa: E402
from Search_CIFAR10.dnas.stage1 import add_stage1_args  # noqa: E402
from tensor_analysis.cli import Parser, non_negative_int, run_cli  # noqa: E402


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_stage1_args(parser)
    parser.add_argument("--candidates", type=non_negative_int, default=0,
                        help="mappings to draw and fine-tune (0: as many as one DNAS run's compute with these "
                             "epoch flags buys)")
    run_random_search(parser.parse_args(argv))


if __name__ == "__main__":
    run_cli(main)
