#!/usr/bin/env python3
"""Profile an exported network on the emulated Cortex-M7: instructions per op, per layer and in all.

    python deploy/export_c.py --run_dir runs/demo/search/stage1 --output_dir out/stage1_c
    python deploy/profile_m7.py --export_dir out/stage1_c --output_json out/stage1_c/profile.json

Builds the export's kernels with -DADAPTQ_PROFILE and its profile harness (make profile-m7), runs the
first --images embedded test images on QEMU's mps2-an500 under -icount shift=0, checks that they are
still bit-exact and that the timer counts instructions (a calibration loop of known length), and writes
the profile (schema adaptqnet/profile/1, docs/file_formats.md §13): per op and per layer its kind,
precision, MACs, count and count per MAC, and the whole adaptq_predict. QEMU counts instructions, not
cycles or time: tensor_analysis/measured_lut.py turns profiles into the search's lut.json with an
assumed cycles per instruction and clock.

On a real Cortex-M7, build `make -C OUT profile-m7-board` (DWT cycle counter; it cannot run on QEMU,
which has no DWT), run it with semihosting through the debug probe, save what it prints and pass it as
--board_output: the profile then counts cycles.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from deploy import profiling  # noqa: E402
from models import formats  # noqa: E402
from tensor_analysis.cli import Parser, add_overwrite_arg, check_outputs, json_kind, positive_int, run_cli  # noqa: E402

PROFILE_OUTPUT = json_kind(formats.PROFILE, "a profile (deploy/profile_m7.py)")


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--export_dir", required=True,
                   help="a C folder written by deploy/export_c.py (or c_export.write_c_project)")
    p.add_argument("--output_json", default=None,
                   help=f"where the profile goes (default: {profiling.PROFILE_FILE} in --export_dir)")
    p.add_argument("--images", type=positive_int, default=profiling.DEFAULT_IMAGES,
                   help="embedded test images to run (at most the export's); counts are per image")
    p.add_argument("--timeout", type=positive_int, default=600, help="seconds allowed for the build, and for the run")
    p.add_argument("--board_output", default=None,
                   help="instead of running QEMU, read this file: what the profile-m7-board build printed on a chip")
    add_overwrite_arg(p)
    return p


def report(doc) -> str:
    """Per layer and in all: kind, precision, MACs, count, count per MAC."""
    unit = doc["counter"]
    lines = [f"{'layer':24s} {'kind':8s} {'precision':9s} {'MACs':>10s} {unit:>13s} {'per MAC':>8s}"]
    for row in doc["layers"]:
        per_mac = "" if row["count_per_mac"] is None else f"{row['count_per_mac']:.2f}"
        lines.append(f"{row['layer']:24s} {row['kind']:8s} {row['precision']:9s} {row['macs']:>10,} "
                     f"{row['count']:>13,} {per_mac:>8s}")
    total = doc["total"]
    lines.append(f"adaptq_predict: {total['count']:,} {unit} per image ({total['ops_count']:,} in its ops), "
                 f"{total['macs']:,} MACs, {total['count_per_mac']:.2f} {unit} per MAC; "
                 f"{doc['images']} images, bit-exact {doc['bit_exact']}")
    if unit == "instructions":
        lines.append("(QEMU -icount shift=0 counts guest instructions, resolution 40: not cycles, not time)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    folder = args.export_dir
    output = args.output_json or os.path.join(folder, profiling.PROFILE_FILE)
    check_outputs([("--output_json", output, PROFILE_OUTPUT)], [("--board_output", args.board_output)],
                  args.overwrite)
    if not os.path.isdir(folder):
        raise ValueError(f"--export_dir {folder}: not a folder")
    if args.board_output and not os.path.isfile(args.board_output):
        raise ValueError(f"--board_output {args.board_output}: no such file")
    profiling.read_op_table(folder, f"--export_dir {folder}")  # an export of another version fails before any build
    if args.board_output:
        with open(args.board_output, errors="replace") as f:
            doc = profiling.profile_from_output(folder, f.read(), f"--board_output {args.board_output}")
        profiling.write_json(doc, output)
    else:
        print(f"make profile-m7 in {folder}: {args.images} image(s) on QEMU mps2-an500, -icount shift=0", flush=True)
        doc = profiling.run_profile(folder, timeout=args.timeout, images=args.images, output_json=output)
    print(report(doc))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
