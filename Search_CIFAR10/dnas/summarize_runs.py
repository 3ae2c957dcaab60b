"""Print one aligned table of every run under a folder (each run's summary.json), optionally as CSV
and Markdown files too.

    python summarize_runs.py ../../runs/dnas_batch
    python summarize_runs.py ../../runs/dnas_batch --csv table.csv --markdown table.md

A summary.json that cannot be read is named on stderr and skipped; the exit status is non-zero only
when no run could be read.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from Search_CIFAR10.reporting.run_table import (COLUMNS, collect_runs, format_table, write_csv,  # noqa: E402
                                                 write_markdown)
from Search_CIFAR10.reporting.runs import run_files  # noqa: E402
from tensor_analysis.cli import Parser, add_overwrite_arg, check_outputs, run_cli, text_kind  # noqa: E402

CSV_OUTPUT = text_kind("a run table (summarize_runs.py --csv)", ",".join(key for key, _ in COLUMNS[:3]))
MARKDOWN_OUTPUT = text_kind("a run table (summarize_runs.py --markdown)",
                            "| " + " | ".join(header for _, header in COLUMNS[:3]) + " |")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description=__doc__.split("\n\n")[0],
        epilog="Missing values show as '-'. Columns: run folder, dataset, hardware profile, input size, "
               "λ (--hardware_weight), int_only, test accuracy, validation accuracy (fine-tuned), "
               "predicted latency, peak RAM, Flash, compression, search and fine-tune time.")
    parser.add_argument("folder", metavar="DIR", help="folder searched recursively for summary.json files")
    parser.add_argument("--csv", metavar="FILE", default=None,
                        help="also write the table as CSV (raw numbers, times in seconds)")
    parser.add_argument("--markdown", metavar="FILE", default=None,
                        help="also write the table as a Markdown table")
    add_overwrite_arg(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_outputs([("--csv", args.csv, CSV_OUTPUT), ("--markdown", args.markdown, MARKDOWN_OUTPUT)],
                  run_files([args.folder]), args.overwrite)
    rows, problems = collect_runs(args.folder)
    for path, problem in problems:
        print(f"warning: {path}: {problem} (skipped)", file=sys.stderr)
    if not rows:
        if problems:
            raise ValueError(f"{args.folder}: none of the {len(problems)} summary.json files could be read")
        raise ValueError(f"{args.folder}: no summary.json found")
    print(format_table(rows), end="")
    print(f"{len(rows)} run(s){f', {len(problems)} skipped' if problems else ''}")
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    if args.markdown:
        write_markdown(rows, args.markdown)
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    run_cli(main)
