#!/usr/bin/env python3
"""Time the integer export of a run directory: the export (conversion, reference outputs, C files), the
host build and its run over the embedded test images, and the Cortex-M7 build and its QEMU run.

    python benchmarks/deploy_export.py --run_dir runs/demo/search/stage1 --images 200

Prints one line per step and the summary lines the project tracks:

    export_s: X.X   host_build_s: X.X   host_run_s: X.X   m7_build_s: X.X   qemu_run_s: X.X

The reference-vs-PyTorch comparison on the test split is not part of the export timing (it is a check,
timed on its own line with --agreement). QEMU is not cycle-accurate: its time says how long the check
takes, not how fast the chip is.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import torch  # noqa: E402

from deploy import c_export  # noqa: E402
from deploy.export_c import export_run  # noqa: E402
from tensor_analysis.cli import Parser, positive_int, run_cli  # noqa: E402


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run_dir", required=True, help="a finished search run (see deploy/export_c.py --help)")
    p.add_argument("--images", type=positive_int, default=200, help="test images embedded and run")
    p.add_argument("--output_dir", default=None, help="where the C folder goes (default: a temporary folder)")
    p.add_argument("--agreement", action="store_true",
                   help="also time the reference-vs-PyTorch comparison on the whole test split")
    p.add_argument("--no_m7", action="store_true", help="skip the Cortex-M7 build and QEMU run")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.output_dir or os.path.join(scratch, "c")
        start = time.monotonic()
        result = export_run(args.run_dir, out, images=args.images, agreement_images=None if args.agreement else 0,
                            measure_sizes=False)
        export_s = time.monotonic() - start - result.seconds.get("agreement", 0.0)
        print(f"export ({result.images} images, {len(result.network.ops)} ops): {export_s:.1f} s")
        if args.agreement:
            a = result.agreement
            print(f"agreement on {a.images} test images: {result.seconds['agreement']:.1f} s "
                  f"(top-1 {100 * a.top1_agreement:.2f}%, largest |logit difference| {a.max_abs_logit_difference:.3g})")
        figures = {"export_s": export_s}
        targets = ["host"] + ([] if args.no_m7 or not c_export.m7_toolchain_available() else ["m7"])
        for target in targets:
            h = c_export.run_harness(out, target)
            if not h.passed:
                raise ValueError(f"{target}: the harness failed (exit {h.returncode}): "
                                 f"{(h.output + h.errors).strip().splitlines()[-1:]}")
            print(f"{target}: build {h.build_seconds:.1f} s, run {h.run_seconds:.1f} s, bit-exact: {h.bit_exact}/{h.count}")
            figures[f"{target}_build_s"] = h.build_seconds
            figures["host_run_s" if target == "host" else "qemu_run_s"] = h.run_seconds
        if "m7" not in targets:
            print("m7: skipped (--no_m7, or no arm-none-eabi-gcc / qemu-system-arm)")
        print("   ".join(f"{k}: {v:.1f}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
