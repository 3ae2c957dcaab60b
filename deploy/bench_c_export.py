"""Time the C export on a MobileNetV2-shaped synthetic network (no trained run needed).

    PYTHONPATH=. python deploy/bench_c_export.py --precision int8 --images 200 --targets host m7

Builds ``synthetic.mobilenetv2_network``, runs the numpy reference on N random images, exports the C
folder and, per target, builds it and runs the harness, printing seconds per image of each executor
and, with the ARM toolchain, the sizes. The QEMU figure is emulation speed, not the chip's latency:
QEMU is not cycle-accurate.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from deploy import c_export, reference, synthetic
from deploy.arena import peak_live_bytes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="int8", choices=["int8", "fp16", "fp32", "mixed"])
    parser.add_argument("--width_mult", type=float, default=0.35)
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="*", default=["host"], choices=["host", "m7"])
    parser.add_argument("--output_dir", default=None, help="where to write the C folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be >= 1")

    net = synthetic.mobilenetv2_network(args.width_mult, args.input_size, precision=args.precision, seed=args.seed)
    print(f"network: MobileNetV2 w{args.width_mult} {args.input_size}px {args.precision}, "
          f"{synthetic.multiply_accumulates(net) / 1e6:.2f} M MACs/image, {len(net.ops)} ops, "
          f"arena {net.arena_bytes} B (peak of live bytes {peak_live_bytes(net)} B)")
    images = synthetic.random_images(args.seed + 1, net.input_shape, args.images)
    labels = np.zeros(args.images, dtype=np.int64)
    start = time.monotonic()
    expected = reference.run(net, images)
    print(f"numpy reference: {(time.monotonic() - start) / args.images:.4f} s/image (batch of {args.images})")
    with tempfile.TemporaryDirectory() as scratch:
        folder = c_export.write_c_project(net, args.output_dir or os.path.join(scratch, "c"), images, labels, expected)
        failed = False
        for target in args.targets:
            result = c_export.run_harness(folder, target, timeout=3600)
            where = "C on the host" if target == "host" else "C on QEMU mps2-an500 (emulation, not latency)"
            print(f"{where}: build {result.build_seconds:.1f} s, run {result.run_seconds:.1f} s = "
                  f"{result.run_seconds / args.images:.4f} s/image, bit-exact {result.bit_exact}/{result.count}")
            failed |= not result.passed
            if not result.passed:
                print((result.output + result.errors)[-2000:], file=sys.stderr)
        if "m7" in args.targets and not failed:
            for key, value in c_export.read_sizes(folder).items():
                print(f"{key}: {value}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
