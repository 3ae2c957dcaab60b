#!/usr/bin/env python3
"""Export and profile the one-layer networks that check the adaptq_m7 cost model on shapes it was not
fitted on (docs/hardware.md §4.7).

    python benchmarks/kernel_heldout_cases.py /tmp/cost_h
    python benchmarks/fit_kernel_profile.py --extra_dir /tmp/cost_h/* --check_only tensor_analysis/hardware/adaptq_m7.json

Each case (deploy.synthetic.kernel_case_network) is exported to C in DIR/<case>, with its network.json,
and profiled on QEMU (deploy/profile_m7.py: instructions, not cycles). Needs the ARM toolchain.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402

from deploy import c_export, synthetic  # noqa: E402
from deploy.synthetic import KernelCase  # noqa: E402

PROFILER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "profile_m7.py")
CASES = [
    KernelCase("pw_u8_40x6x6_24", (40, 6, 6), 24, 1, 1, 0, 1, "int", (8, False), (8, "dorefa"), ("int", 8, False),
               activation=True),
    KernelCase("dw_u4_24x12x12", (24, 12, 12), 24, 3, 1, 1, 24, "int", (4, False), (4, "dorefa"), ("int", 4, False),
               activation=True),
    KernelCase("dw_u2_32x8x8_s2", (32, 8, 8), 32, 3, 2, 1, 32, "int", (2, False), (2, "dorefa"), ("int", 2, False),
               activation=True),
    KernelCase("conv3_s8_3x16x16_8", (3, 16, 16), 8, 3, 1, 1, 1, "int", (8, True), (8, "dorefa"), ("int", 8, False),
               activation=True),
    KernelCase("fp32_pw_32x8x8_40", (32, 8, 8), 40, 1, 1, 0, 1, "fp32", (0, False), output=("fp32", 0, False),
               activation=True),
    KernelCase("fp16_dw_40x6x6", (40, 6, 6), 40, 3, 1, 1, 40, "fp16", (0, False), output=("fp16", 0, False),
               activation=True),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("output_dir", help="folder for the exports, one subfolder per case")
    args = parser.parse_args(argv)
    if not c_export.m7_toolchain_available():
        print("error: kernel_heldout_cases.py needs arm-none-eabi-gcc and qemu-system-arm", file=sys.stderr)
        return 2
    failed = 0
    for i, case in enumerate(CASES):
        net = synthetic.kernel_case_network(case, seed=i)
        images = synthetic.random_images(300 + i, net.input_shape, 2)
        folder = os.path.join(args.output_dir, case.name)
        c_export.write_c_project(net, folder, images, np.zeros(2, int))
        net.save(os.path.join(folder, "network.json"))
        r = subprocess.run([sys.executable, PROFILER, "--export_dir", folder, "--output_json",
                            os.path.join(folder, "profile.json")], capture_output=True, text=True)
        print(f"[{i + 1}/{len(CASES)}] {case.name}: " + ("profiled" if r.returncode == 0 else "FAILED"), flush=True)
        if r.returncode:
            print(r.stderr[-1000:], file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
