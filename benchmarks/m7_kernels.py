#!/usr/bin/env python3
"""Instructions of the C kernels on the emulated Cortex-M7, per layer kind × precision, against a record.

    python benchmarks/m7_kernels.py                      # compare with benchmarks/results/m7_kernels_baseline.json
    python benchmarks/m7_kernels.py --output_json benchmarks/results/m7_kernels_baseline.json   # a new record

Builds the MobileNetV2-shaped synthetic network (deploy.synthetic.mobilenetv2_network: random DoReFa
weights, layers named as the project's MobileNetV2) at each --precisions, exports it to C, profiles
--images images on QEMU's mps2-an500 (deploy/profiling.py: -icount shift=0, bit-exact checked) and
prints, per layer kind × precision and for the whole network: MACs, instructions per image,
instructions per MAC and the ratio to the record's instructions (below 1: fewer than then).
QEMU counts instructions, not cycles: a kernel change that trades instructions for stalls (or the
reverse) shows here only by its instructions. --output_json writes this run's record (per layer, per
kind × precision, totals) for later runs to compare with.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from deploy import c_export, profiling, synthetic  # noqa: E402
from models import formats  # noqa: E402
from models.files import read_json, write_json_atomic  # noqa: E402
from tensor_analysis.cli import (Parser, add_overwrite_arg, check_output_folder, check_outputs, json_kind,  # noqa: E402
                                 positive_float, positive_int, run_cli)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_BASELINE = os.path.join(REPO, "benchmarks", "results", "m7_kernels_baseline.json")
PRECISIONS = ("int8", "int4", "int2", "mixed")  # the record's; fp16 and fp32 run on request
CHOICES = PRECISIONS + ("fp16", "fp32")
RECORD = json_kind(formats.M7_KERNELS, "an m7_kernels record (benchmarks/m7_kernels.py --output_json)")
BUILD_FLAGS = "-std=c99 -O2 -ffp-contract=off -mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard -DADAPTQ_PROFILE"


def _per_mac(count: float, macs: int) -> Optional[float]:
    return round(count / macs, 3) if macs else None


def by_kind(ops: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per "kind precision" (one op's part of a layer each, so a split layer counts in both groups)."""
    groups: Dict[str, Dict[str, Any]] = {}
    for op in ops:
        g = groups.setdefault(f"{op['kind']} {op['precision']}", {"ops": 0, "macs": 0, "instructions": 0})
        g["ops"] += 1
        g["macs"] += op["macs"]
        g["instructions"] += op["count"]
    for g in groups.values():
        g["per_mac"] = _per_mac(g["instructions"], g["macs"])
    return dict(sorted(groups.items()))


def network_record(doc: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    """One precision's figures, from its profile document."""
    total = doc["total"]
    return {
        "network": {k: doc["network"].get(k) for k in ("generator", "width_mult", "input_size", "precision", "seed")},
        "int_weight_grid": "dorefa",  # what the synthetic builder draws for every int layer
        "ops": len(doc["ops"]),
        "images": doc["images"],
        "total": {"macs": total["macs"], "instructions": total["count"], "ops_instructions": total["ops_count"],
                  "per_mac": _per_mac(total["count"], total["macs"])},
        "by_kind": by_kind(doc["ops"]),
        "layers": [{"layer": r["layer"], "kind": r["kind"], "precision": r["precision"], "macs": r["macs"],
                    "instructions": r["count"], "per_mac": _per_mac(r["count"], r["macs"])} for r in doc["layers"]],
        "seconds": round(seconds, 1),
    }


def _tool_version(command: List[str]) -> Optional[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.splitlines()[0].strip()
    except (OSError, IndexError, subprocess.SubprocessError):
        return None


def _kernels_sha256() -> str:
    with open(os.path.join(c_export.KERNEL_DIR, "adaptq.c"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _kernels_commit() -> Optional[str]:
    """The last commit that changed the kernels (adaptq.c), which the figures belong to."""
    return _tool_version(["git", "-C", REPO, "log", "-1", "--format=%h", "--", "deploy/c/adaptq.c"])


def profile_network(precision: str, args, folder: str) -> Dict[str, Any]:
    net = synthetic.mobilenetv2_network(args.width_mult, args.input_size, precision=precision, seed=args.seed,
                                        model_names=True)
    images = synthetic.random_images(args.seed + 1, net.input_shape, args.images)
    c_export.write_c_project(net, folder, images, [0] * args.images)
    return profiling.run_profile(folder, timeout=args.timeout, images=args.images,
                                 output_json=os.path.join(folder, profiling.PROFILE_FILE))


def _ratio(now: float, then: Optional[float]) -> str:
    return f"{now / then:.3f}" if then else "-"


def report(precision: str, record: Dict[str, Any], baseline: Optional[Dict[str, Any]]) -> str:
    """The table of one precision: per kind × precision, then the whole network."""
    old = (baseline or {}).get("networks", {}).get(precision)
    lines = []
    if old and old.get("network") != record["network"]:  # a ratio between two networks measures nothing
        lines.append(f"(the record's {precision} network is another one, {old.get('network')}: no ratios)")
        old = None
    old_kinds = (old or {}).get("by_kind", {})
    lines += [f"{'kind precision':22s} {'ops':>4s} {'MACs':>11s} {'instructions':>13s} {'per MAC':>8s} "
             f"{'vs record':>9s}"]
    for key, g in record["by_kind"].items():
        per_mac = "" if g["per_mac"] is None else f"{g['per_mac']:.2f}"
        lines.append(f"{key:22s} {g['ops']:>4d} {g['macs']:>11,} {g['instructions']:>13,} {per_mac:>8s} "
                     f"{_ratio(g['instructions'], old_kinds.get(key, {}).get('instructions')):>9s}")
    t, then = record["total"], (old or {}).get("total", {}).get("instructions")
    lines.append(f"{'network':22s} {record['ops']:>4d} {t['macs']:>11,} {t['instructions']:>13,} "
                 f"{t['per_mac']:>8.2f} {_ratio(t['instructions'], then):>9s}")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--precisions", nargs="+", choices=CHOICES, default=list(PRECISIONS),
                   help="networks to build: uniform int8 / int4 / int2 / fp16 / fp32, or mixed (each layer at random, "
                        "a third split); default the record's four")
    p.add_argument("--images", type=positive_int, default=2, help="random images profiled per network")
    p.add_argument("--width_mult", type=positive_float, default=0.35, help="MobileNetV2 width multiplier")
    p.add_argument("--input_size", type=positive_int, default=32, help="square input side in pixels")
    p.add_argument("--seed", type=int, default=0, help="weights, formats and images of the synthetic networks")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help="record to compare with (default benchmarks/results/m7_kernels_baseline.json; a missing "
                        "file: no comparison)")
    p.add_argument("--output_json", default=None, help="write this run's record here (a new baseline)")
    p.add_argument("--work_dir", default=None,
                   help="keep each export and its profile.json in WORK_DIR/<precision> (default: a temporary folder)")
    p.add_argument("--timeout", type=positive_int, default=900, help="seconds allowed per build and per QEMU run")
    add_overwrite_arg(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # a new record may replace the one it is compared with: that is how a baseline is renewed
    renews = bool(args.output_json and args.baseline) and os.path.realpath(args.output_json) == os.path.realpath(
        args.baseline)
    check_outputs([("--output_json", args.output_json, RECORD)], [] if renews else [("--baseline", args.baseline)],
                  args.overwrite)
    if args.work_dir:
        check_output_folder("--work_dir", args.work_dir)
    if not profiling.qemu_toolchain_available():
        raise ValueError("needs make, arm-none-eabi-gcc and qemu-system-arm (apt-get install gcc-arm-none-eabi "
                         "libnewlib-arm-none-eabi qemu-system-arm)")
    baseline = None
    if args.baseline and os.path.isfile(args.baseline):
        baseline = read_json(args.baseline, "m7_kernels record")
        formats.check_schema(baseline, formats.M7_KERNELS, args.baseline, "m7_kernels record")
        print(f"record: {args.baseline} ({baseline.get('date')}, kernels of commit {baseline.get('kernels_commit')})")
    else:
        print(f"record: none ({args.baseline} not found): no ratios")
    networks = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.work_dir or scratch
        for precision in args.precisions:
            start = time.monotonic()
            print(f"[{precision}] MobileNetV2 w{args.width_mult:g} {args.input_size}px: build, export, profile "
                  f"{args.images} image(s) on QEMU ...", flush=True)
            doc = profile_network(precision, args, os.path.join(root, precision))
            networks[precision] = network_record(doc, time.monotonic() - start)
            print(f"[{precision}] {networks[precision]['seconds']:.1f} s, bit-exact {doc['bit_exact']}")
            print(report(precision, networks[precision], baseline), flush=True)
    record = {"schema": formats.M7_KERNELS, "counter": "instructions",
              "target": "qemu-system-arm -M mps2-an500 -cpu cortex-m7 -icount shift=0",
              "date": datetime.date.today().isoformat(), "kernels_commit": _kernels_commit(),
              "adaptq_c_sha256": _kernels_sha256(),
              "compiler": _tool_version(["arm-none-eabi-gcc", "--version"]),
              "qemu": _tool_version(["qemu-system-arm", "--version"]), "flags": BUILD_FLAGS, "networks": networks}
    if args.output_json:
        write_json_atomic(record, args.output_json, compact=True)
        print(f"wrote {args.output_json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
