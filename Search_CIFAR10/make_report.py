#!/usr/bin/env python3
"""Build the AdaptQNet report (report.md + a self-contained report.html) from run directories.

    python Search_CIFAR10/make_report.py --runs runs/demo --output runs/demo/report.md
    python Search_CIFAR10/make_report.py --runs runs/dnas/my_run runs/dnas_multicore/my_run_stm32h747_latency8 \\
        runs/dnas_batch --output my_report.md

Each --runs entry is a run directory (its summary.json) or a folder searched for runs below it. The
roles (stage 1, stage 2, uniform references, λ sweep) are read from the runs' own files; see
Search_CIFAR10/reporting/report.py. Pieces no given run provides are left out with a note.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from Search_CIFAR10.reporting.deployment_profile import DEFAULT_CYCLES_PER_INSTRUCTION, DEFAULT_KERNEL_PROFILE  # noqa: E402,E501
from Search_CIFAR10.reporting.report import build_report  # noqa: E402
from Search_CIFAR10.reporting.runs import run_files  # noqa: E402
from tensor_analysis.cli import (Parser, add_overwrite_arg, check_outputs, positive_float, positive_mhz,  # noqa: E402
                                 run_cli, text_kind)

REPORT_MD = text_kind("an AdaptQNet report (make_report.py)", "# AdaptQNet report")
REPORT_HTML = text_kind("an AdaptQNet HTML report (make_report.py)", "<title>AdaptQNet report")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Writes OUTPUT (Markdown), its figures in <OUTPUT stem>_files/, and the HTML file "
                           "with every figure embedded.")
    parser.add_argument("--runs", nargs="+", required=True, metavar="DIR",
                        help="run directories and/or folders holding runs (searched recursively for summary.json)")
    parser.add_argument("--output", "--output_file", dest="output", required=True, metavar="FILE",
                        help="the Markdown report to write, e.g. runs/demo/report.md")
    parser.add_argument("--html", default=None, metavar="FILE",
                        help="the HTML report (default: OUTPUT with .html instead of its extension)")
    parser.add_argument("--main", default=None, metavar="DIR",
                        help="the stage-1 run the report is about (default: the run a stage-2 run started "
                             "from, else the first run with a latency target, else the first run)")
    parser.add_argument("--kernel_profile", default=DEFAULT_KERNEL_PROFILE, metavar="PROFILE",
                        help="hardware profile (name or .json path) modelling the exported C kernels: the Deployment "
                             "section's per-layer prediction for a profiled export ('none': no prediction; a "
                             "missing profile is left out with a note)")
    parser.add_argument("--cycles_per_instruction", type=positive_float, default=None,
                        help="converts the kernel profile's predicted time into QEMU-counted instructions (default: "
                             f"the cycles_per_instruction the kernel profile declares, else {DEFAULT_CYCLES_PER_INSTRUCTION:g})")
    parser.add_argument("--clock_mhz", type=positive_mhz, default=None,
                        help="clock of that conversion (default: the kernel profile's primary unit)")
    add_overwrite_arg(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    html_path = args.html or os.path.splitext(args.output)[0] + ".html"
    if not args.html and os.path.realpath(html_path) == os.path.realpath(args.output):
        raise ValueError(f"--output {args.output}: the HTML report would go to the same file; name the Markdown "
                         f"report .md (or give --html)")
    check_outputs([("--output", args.output, REPORT_MD), ("--html", html_path, REPORT_HTML)],
                  run_files(args.runs), args.overwrite)
    report = build_report(args.runs, args.output, main=args.main, output_html=args.html,
                          kernel_profile=None if args.kernel_profile == "none" else args.kernel_profile,
                          cycles_per_instruction=args.cycles_per_instruction, clock_mhz=args.clock_mhz)
    for path, why in report.skipped:
        print(f"warning: {path}: {why} (skipped)", file=sys.stderr)
    print(f"main run: {report.main.dir}")
    print(f"stage 2: {report.stage2.dir if report.stage2 else 'none given'}; uniform references: "
          f"{', '.join(sorted(report.uniform)) or 'none'}; accuracy/latency points: {len(report.points)}")
    print(f"wrote {args.output} and {html_path} ({len(report.document.figures)} figures)")
    return 0


if __name__ == "__main__":
    run_cli(main)
