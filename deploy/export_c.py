#!/usr/bin/env python3
"""Export a finished AdaptQNet run to integer C99 that checks itself bit for bit.

    python deploy/export_c.py --run_dir runs/demo/search/stage1 --output_dir out/stage1_c
    make -C out/stage1_c run-host      # gcc build, runs the embedded test images: "bit-exact: K/N"
    make -C out/stage1_c run-m7        # Cortex-M7 build on QEMU's mps2-an500, same check

It converts the run's network (final.pt + mapping.json, stage 1, stage 2 or a uniform run) to the
integer network (deploy/build.py), measures the numpy reference against PyTorch (eval mode) on the
run's whole test split (top-1 agreement, largest |logit difference|), writes the C folder with the
first --images test images and the reference's outputs for them, and prints the model's Flash and RAM
next to what the analysis the run was searched with predicts (Flash measured with arm-none-eabi-size
when the toolchain is there). A network whose arena exceeds the profile's RAM is still exported, with
a warning that gives both figures. The output folder is replaced as a whole or not at all; what was
measured (agreement, sizes, each --run target's bit-exact count) goes to its deployment.json, which
the report reads. --profile also counts the instructions of every op on the emulated Cortex-M7
(deploy/profile_m7.py's run_profile) into profile.json in the folder, which deployment.json names.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deploy import c_export, profiling, reference  # noqa: E402
from deploy.build import (Agreement, Run, agreement_count, build_integer_network, compare_with_pytorch,  # noqa: E402
                          load_run, load_test_images)
from deploy.ir import ARITHMETICS, IntegerNetwork  # noqa: E402
from models import formats  # noqa: E402
from models.files import write_json_atomic  # noqa: E402
from tensor_analysis.cli import Parser, non_negative_int, positive_int, run_cli  # noqa: E402
from tensor_analysis.flash import flash_bytes  # noqa: E402
from tensor_analysis.memory import KB, peak_ram_bytes  # noqa: E402
from tensor_analysis.profiles import load_profile  # noqa: E402

TARGETS = ("host", "m7")
DEPLOYMENT_FILE = c_export.DEPLOYMENT_FILE
SIZE_TOLERANCE = 0.05  # measured vs predicted: the bound the tests hold the Flash and RAM models to


@dataclass
class SizeRow:
    what: str
    measured: Optional[int]
    predicted: int

    @property
    def difference(self) -> Optional[float]:
        return None if self.measured is None else (self.measured - self.predicted) / self.predicted


@dataclass
class ExportResult:
    """What ``export_run`` did: the network, the agreement, the sizes and, per target run, the harness."""
    run: Run
    network: IntegerNetwork
    output_dir: str
    images: int
    agreement: Optional[Agreement]
    sizes: List[SizeRow]
    ram_limit_bytes: Optional[int]
    harness: Dict[str, c_export.HarnessResult] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)
    profile: Optional[Dict[str, Any]] = None   # the profile.json document, when --profile ran

    @property
    def ram_warning(self) -> Optional[str]:
        arena = self.network.arena_bytes
        if self.ram_limit_bytes is None or arena <= self.ram_limit_bytes:
            return None
        return (f"the arena needs {arena} bytes ({arena / KB:.1f} KB), more than the {self.run.hardware} profile's "
                f"RAM of {self.ram_limit_bytes} bytes ({self.ram_limit_bytes / KB:.1f} KB)")


DEFAULT_IMAGES = 200


def export_run(run_dir: str, output_dir: str, images: Optional[int] = None, hardware: Optional[str] = None,
               agreement_images: Optional[int] = None, data_dir: Optional[str] = None, measure_sizes: bool = True,
               targets: Sequence[str] = (), arithmetic: str = "fine", profile: bool = False,
               profile_images: int = profiling.DEFAULT_IMAGES) -> ExportResult:
    """Convert, compare, write the C folder, measure its sizes and run ``targets`` (see module
    docstring). ``images``: None embeds DEFAULT_IMAGES, or the whole test split if it is smaller.
    ``agreement_images``: None compares on the whole test split, 0 skips the comparison.
    ``arithmetic``: the fixed-point rounding (``build.build_integer_network``). ``profile``: also
    profile ``profile_images`` embedded images on QEMU (``profiling.run_profile``) into profile.json."""
    if profile and not profiling.qemu_toolchain_available():
        raise ValueError("--profile needs make, arm-none-eabi-gcc and qemu-system-arm (apt-get install "
                         "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    seconds: Dict[str, float] = {}
    start = time.monotonic()
    c_export.check_replaceable(os.path.abspath(output_dir))
    run = load_run(run_dir, hardware)
    hardware_profile = load_profile(run.hardware)
    network = build_integer_network(run, arithmetic)
    test_x, test_y = load_test_images(run, data_dir)
    if images is None:
        images = min(DEFAULT_IMAGES, len(test_x))
    elif images > len(test_x):
        raise ValueError(f"--images {images}: the run's test split has only {len(test_x)} images")
    seconds["convert"] = time.monotonic() - start
    agreement = None
    if agreement_images != 0:
        n = agreement_count(agreement_images, len(test_x))
        t = time.monotonic()
        agreement = compare_with_pytorch(network, run.model, test_x[:n], test_y[:n])
        seconds["agreement"] = time.monotonic() - t
    t = time.monotonic()
    expected = None  # write_c_project runs the reference
    if agreement is not None:  # what the comparison already ran is not run again
        expected = agreement.reference_logits[:images]
        if len(expected) < images:
            expected = np.concatenate([expected, reference.run(network, test_x[len(expected):images])])
    folder = c_export.write_c_project(network, output_dir, test_x[:images], test_y[:images], expected)
    seconds["write"] = time.monotonic() - t
    seconds["export"] = time.monotonic() - start
    mapping = run.mapping
    measured = None
    if measure_sizes and c_export.m7_toolchain_available():
        t = time.monotonic()
        measured = c_export.read_sizes(folder)
        seconds["sizes"] = time.monotonic() - t
    sizes = [SizeRow("Flash: model (weights + constants)", measured and measured["model_flash_bytes"],
                     flash_bytes(run.analysis, mapping)),
             SizeRow("RAM: activation arena", network.arena_bytes, peak_ram_bytes(run.analysis, mapping))]
    result = ExportResult(run, network, folder, images, agreement, sizes,
                          int(hardware_profile.ram_kb * KB) if hardware_profile.ram_kb else None, seconds=seconds)
    for target in targets:
        result.harness[target] = c_export.run_harness(folder, target)
    if profile:
        t = time.monotonic()
        result.profile = profiling.run_profile(folder, images=min(profile_images, images),
                                               output_json=os.path.join(folder, profiling.PROFILE_FILE))
        seconds["profile"] = time.monotonic() - t
    write_json_atomic(deployment_record(result), os.path.join(folder, DEPLOYMENT_FILE))
    return result


def deployment_record(result: ExportResult) -> Dict[str, Any]:
    """``deployment.json``: what the export measured, for the report (docs/file_formats.md)."""
    a = result.agreement
    return {
        "schema": formats.DEPLOYMENT,
        "run_dir": result.run.run_dir,
        "model": result.run.spec.get("type"),
        "hardware": result.run.hardware,
        "images": result.images,
        "agreement": None if a is None else {
            "images": a.images, "top1_agreement": a.top1_agreement,
            "max_abs_logit_difference": a.max_abs_logit_difference,
            "reference_accuracy": a.reference_accuracy, "pytorch_accuracy": a.pytorch_accuracy},
        "sizes": [{"what": row.what, "measured_bytes": row.measured, "predicted_bytes": row.predicted}
                  for row in result.sizes],
        "ram_limit_bytes": result.ram_limit_bytes,
        "targets": {target: {"passed": h.passed, "bit_exact": h.bit_exact, "images": h.count, "correct": h.correct,
                             "build_seconds": h.build_seconds, "run_seconds": h.run_seconds}
                    for target, h in result.harness.items()},
        "profile": profile_record(result.profile),
    }


def profile_record(doc: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """deployment.json's ``profile``: where the export's profile is (relative to the C folder) and its
    totals; None when the export was not profiled."""
    if doc is None:
        return None
    total = doc["total"]
    return {"file": profiling.PROFILE_FILE, "target": doc["target"], "counter": doc["counter"],
            "images": doc["images"], "count": total["count"], "macs": total["macs"]}


def report(result: ExportResult) -> str:
    """The lines export_c.py prints."""
    run, net = result.run, result.network
    lines = [f"exported {run.run_dir} ({run.spec.get('type')}, {len(net.ops)} ops) to {result.output_dir}: "
             f"{result.images} test images embedded"]
    a = result.agreement
    if a is not None:
        lines.append(f"reference vs PyTorch (eval) on {a.images} test images: top-1 agreement "
                     f"{100 * a.top1_agreement:.2f}% ({a.images - len(a.disagreements)}/{a.images}), largest |logit "
                     f"difference| {a.max_abs_logit_difference:.3g}; accuracy reference {100 * a.reference_accuracy:.2f}%, "
                     f"PyTorch {100 * a.pytorch_accuracy:.2f}%")
    lines.append(f"{'':38s} {'measured':>12s} {'predicted':>12s} {'difference':>10s}")
    for row in result.sizes:
        measured = "n/a" if row.measured is None else f"{row.measured:,}"
        diff = "" if row.difference is None else f"{100 * row.difference:+.1f}%"
        lines.append(f"{row.what:38s} {measured:>12s} {row.predicted:>12,} {diff:>10s}")
    lines.append("(predicted: the run's analysis, tensor_analysis.flash / memory (layer-wise); measured: "
                 "arm-none-eabi-size of the M7 build, the planned arena)")
    for target, h in result.harness.items():
        lines.append(f"{target}: build {h.build_seconds:.1f} s, run {h.run_seconds:.1f} s, "
                     f"bit-exact: {h.bit_exact}/{h.count}" if h.bit_exact is not None else
                     f"{target}: failed (exit {h.returncode}): {(h.errors or h.output).strip().splitlines()[-1:]}")
    if result.profile is not None:
        total = result.profile["total"]
        lines.append(f"profile ({result.profile['target']}): {total['count']:,} {result.profile['counter']} per image, "
                     f"{total['count_per_mac']:.2f} per MAC, {len(result.profile['layers'])} rows -> "
                     f"{os.path.join(result.output_dir, profiling.PROFILE_FILE)}"
                     + (" (QEMU counts instructions: not cycles, not time)"
                        if result.profile["counter"] == "instructions" else ""))
    lines.append(f"next: make -C {result.output_dir} run-host   (and run-m7 for the Cortex-M7 build on QEMU)")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run_dir", required=True,
                   help="a finished search run: final.pt, mapping.json, args.json, split.json and the analysis it "
                        "was searched with (analysis.json, or the file args.json names)")
    p.add_argument("--output_dir", required=True,
                   help="the C folder to write; an existing export there is replaced as a whole, a folder holding "
                        "other files is refused")
    p.add_argument("--images", type=positive_int, default=None,
                   help=f"test images embedded in the harness, the first ones of the run's test split (default "
                        f"{DEFAULT_IMAGES}, or the whole split if it is smaller)")
    p.add_argument("--hardware", default=None,
                   help="hardware profile (name or JSON path) whose RAM the arena is checked against (default: the "
                        "run's)")
    p.add_argument("--agreement_images", type=non_negative_int, default=None,
                   help="test images on which the reference is compared with PyTorch (default: the whole test "
                        "split; 0: skip)")
    p.add_argument("--data_dir", default=None, help="where the run's dataset lives, if not where args.json says")
    p.add_argument("--no_sizes", action="store_true",
                   help="do not build the M7 objects to measure the model's Flash (it is measured when "
                        "arm-none-eabi-gcc is installed)")
    p.add_argument("--run", action="append", choices=TARGETS, default=[], metavar="{host,m7}",
                   help="after writing, build and run this target's harness (repeatable); the exit status is "
                        "non-zero unless every image is bit-exact")
    p.add_argument("--arithmetic", choices=ARITHMETICS, default="fine",
                   help="fixed-point rounding of the integer layers: 'fine' (default) pre-shifts accumulators so "
                        "that biases round finely and rounds a projection's output ahead of its residual add to "
                        "int16; 'tflite' computes what a TFLite int8 graph (CMSIS-NN, TFLite Micro) computes, bit "
                        "for bit, a little further from the trained network. Same kernels, same speed")
    p.add_argument("--profile", action="store_true",
                   help="after the --run targets, count the instructions of every op on QEMU's Cortex-M7 "
                        "(deploy/profile_m7.py) into profile.json in the folder; deployment.json names it. Needs "
                        "make, arm-none-eabi-gcc and qemu-system-arm")
    p.add_argument("--profile_images", type=positive_int, default=profiling.DEFAULT_IMAGES,
                   help="embedded test images the profile runs (counts are per image)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    result = export_run(args.run_dir, args.output_dir, images=args.images, hardware=args.hardware,
                        agreement_images=args.agreement_images, data_dir=args.data_dir,
                        measure_sizes=not args.no_sizes, targets=args.run, arithmetic=args.arithmetic,
                        profile=args.profile, profile_images=args.profile_images)
    print(report(result))
    if result.ram_warning:
        print(f"warning: {result.ram_warning}", file=sys.stderr)
    return 0 if all(h.passed for h in result.harness.values()) else 1


if __name__ == "__main__":
    run_cli(main)
