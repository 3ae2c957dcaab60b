"""Test accuracy vs predicted latency of a λ sweep on one or more MCUs, with uniform-precision references.

    python plot_sweep.py --runs ../../runs/digits_stage1 --hardware stm32h747 artifact \\
        --output_dir ../../runs/digits_stage1/sweep

Writes sweep.md (one table: each network's accuracy and its latency on every profile), sweep.json and
sweep_<profile>.png. Networks chosen without the hardware (λ = 0 without budgets, uniform references,
the pretrained FP32 network) are predicted on every profile; a network searched for one profile appears
on the others only in the table, in parentheses.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.reporting.runs import run_files  # noqa: E402
from Search_CIFAR10.reporting.sweep import SWEEP_JSON_OUTPUT, SWEEP_MD_OUTPUT, write_sweep  # noqa: E402
from tensor_analysis.cli import Parser, add_overwrite_arg, check_output_folder, check_outputs, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                        help="stage-1 run directories and/or folders searched recursively for them (summary.json "
                             "+ mapping.json); uniform references are runs with one precision per layer")
    parser.add_argument("--hardware", nargs="+", default=["stm32h747"], metavar="PROFILE",
                        help="hardware profile names or JSON paths to predict every network on "
                             "(default: %(default)s)")
    parser.add_argument("--output_dir", required=True, metavar="DIR", help="where sweep.md, sweep.json and the PNGs go")
    add_overwrite_arg(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_output_folder("--output_dir", args.output_dir)
    check_outputs([("--output_dir", os.path.join(args.output_dir, "sweep.md"), SWEEP_MD_OUTPUT),
                   ("--output_dir", os.path.join(args.output_dir, "sweep.json"), SWEEP_JSON_OUTPUT)],
                  run_files(args.runs), args.overwrite)
    result = write_sweep(args.runs, args.hardware, args.output_dir)
    for note in result["notes"]:
        print(f"warning: {note}", file=sys.stderr)
    print(result["table"], end="")
    print(f"wrote {result['markdown']}, sweep.json and {', '.join(os.path.basename(p) for p in result['plots'].values())}")
    return 0


if __name__ == "__main__":
    run_cli(main)
