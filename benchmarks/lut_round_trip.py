#!/usr/bin/env python3
"""The profile → LUT → search round trip on a finished stage-1 run: search again on measured latencies.

    python benchmarks/lut_round_trip.py --run_dir runs/demo/search/stage1 \\
        --export_dir runs/demo/deploy/stage1_c --work_dir runs/demo/round_trip

Steps, each a user-facing tool run as a command (printed before it runs; --dry_run only prints them):

  1. benchmarks/m7_kernels.py: the run's network shape (MobileNetV2, its width and input size, the
     project's layer names, synthetic DoReFa weights) exported at every precision the search may choose
     (--precisions, default every precision the run's analysis allows somewhere) and profiled on QEMU's
     Cortex-M7 (instructions per op) → WORK/kernels/<precision>/profile.json;
  2. tensor_analysis/profile_to_lut.py: those profiles (and --export_dir's own profile.json, the run's
     real network, when it has one) over the run's lut.json → WORK/measured_lut.json, with instructions
     turned into ms at --cycles_per_instruction and the table's clock (an assumption it records);
  3. a stage-1 search with --latency_lut WORK/measured_lut.json and the run's own flags (epochs, budget,
     λ, seed); its latency target keeps the run's ratio to the all-INT8 latency, now on the measured
     table → WORK/search/;
  4. the comparison: what each search chose, and the latency of both networks on both tables →
     WORK/round_trip.json and the lines printed last.

Steps whose output exists are reused. QEMU counts instructions, not cycles: the measured table's ms
are instructions × cycles per instruction / clock, not a measurement of time.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models.files import read_json, write_json_atomic  # noqa: E402
from models.precisions import PRECISION_ORDER  # noqa: E402
from tensor_analysis.cli import Parser, positive_float, positive_int, run_cli  # noqa: E402
from tensor_analysis.lut import lut_latency_ms  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
M7_KERNELS = "benchmarks/m7_kernels.py"
PROFILE_TO_LUT = "tensor_analysis/profile_to_lut.py"
STAGE1 = "Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py"
# the run's flags that the new search takes over unchanged (args.json key → flag)
CARRIED = ("hardware", "pretrained", "dataset", "data_dir", "epochs", "warmup_epochs", "finetune_epochs",
           "memory_budget_kb", "hardware_weight", "weight_grid", "seed", "batch_size")


def read_run(run_dir: str) -> Dict[str, Any]:
    """What the round trip needs of a finished stage-1 run: args, summary, mapping, lut, analysis."""
    files = {k: os.path.join(run_dir, f) for k, f in (("args", "args.json"), ("summary", "summary.json"),
                                                        ("mapping", "mapping.json"), ("lut", "lut.json"),
                                                        ("analysis", "analysis.json"))}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"--run_dir {run_dir}: not a finished stage-1 run (missing {', '.join(missing)})")
    run = {k: read_json(v, k) for k, v in files.items() if k != "analysis"}
    run["files"] = files
    return run


def mapping_of(doc: Mapping[str, Any]) -> Dict[str, str]:
    """{layer: precision} of a mapping.json (schema'd or the seed's bare object)."""
    if not isinstance(doc, Mapping):
        return {}
    layers = doc["layers"] if isinstance(doc.get("layers"), Mapping) else doc   # adaptqnet/mapping/1, or bare
    return {k: v for k, v in layers.items() if isinstance(v, str) and k != "schema"}


def search_precisions(analysis_path: str) -> List[str]:
    """Every precision some layer of the analysis may use (what the search can choose)."""
    doc = read_json(analysis_path, "analysis file")
    seen = {p for layer in doc.get("layers", []) for p in layer.get("allowed_precisions", [])}
    return [p for p in PRECISION_ORDER if p in seen]


def all_int8_ms(lut: Mapping[str, Any]) -> float:
    return lut_latency_ms(lut, {name: "int8" for name in lut["layers"]})


def histogram(mapping: Mapping[str, str]) -> Dict[str, int]:
    counts = {p: sum(1 for v in mapping.values() if v == p) for p in PRECISION_ORDER}
    return {p: n for p, n in counts.items() if n}


def comparison(predicted_run: Mapping[str, Any], measured_run: Mapping[str, Any],
               measured_lut: Mapping[str, Any]) -> Dict[str, Any]:
    """Both searches' choices, and each network's latency on the predicted and on the measured table."""
    tables = {"predicted": predicted_run["lut"], "measured": measured_lut}
    out: Dict[str, Any] = {"tables": {"predicted": predicted_run["files"]["lut"]},
                           "all_int8_ms": {k: all_int8_ms(t) for k, t in tables.items()}, "networks": {}}
    for key, run in (("searched_on_predicted", predicted_run), ("searched_on_measured", measured_run)):
        mapping = mapping_of(run["mapping"])
        out["networks"][key] = {
            "run_dir": os.path.dirname(run["files"]["summary"]),
            "histogram": histogram(mapping),
            "latency_target_ms": run["args"].get("latency_target_ms"),
            "latency_ms": {k: lut_latency_ms(t, mapping) for k, t in tables.items()},
            "test_acc": (run["summary"].get("accuracy") or {}).get("test"),
        }
    a, b = (mapping_of(r["mapping"]) for r in (predicted_run, measured_run))
    out["layers_that_differ"] = sorted(n for n in a if a.get(n) != b.get(n))
    m = measured_lut.get("measured") or {}
    out["measured"] = {k: m.get(k) for k in ("counter", "cycles_per_instruction", "clock_mhz", "entries")}
    return out


def summary_lines(c: Mapping[str, Any]) -> List[str]:
    m = c["measured"]
    lines = [f"measured table: {m['entries']} entries ({m['counter']} × {m['cycles_per_instruction']} cycles per "
             f"instruction at {m['clock_mhz']} MHz); all-INT8: predicted {c['all_int8_ms']['predicted']:.2f} ms, "
             f"measured {c['all_int8_ms']['measured']:.2f} ms",
             f"{'network':24s} {'precisions (layers)':32s} {'target ms':>9s} {'on predicted':>12s} "
             f"{'on measured':>11s} {'test acc':>8s}"]
    for key, n in c["networks"].items():
        hist = ", ".join(f"{p} {k}" for p, k in n["histogram"].items())
        acc = "-" if n["test_acc"] is None else f"{n['test_acc']:.2f}"
        target = "-" if n["latency_target_ms"] is None else f"{n['latency_target_ms']:g}"
        lines.append(f"{key:24s} {hist:32s} {target:>9s} {n['latency_ms']['predicted']:>12.2f} "
                     f"{n['latency_ms']['measured']:>11.2f} {acc:>8s}")
    lines.append(f"{len(c['layers_that_differ'])} layer(s) chose differently")
    return lines


class Steps:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, argv: List[str], done: Optional[str] = None) -> None:
        line = "python " + " ".join(shlex.quote(os.path.relpath(a, REPO) if os.path.isabs(a) and a.startswith(REPO)
                                                else a) for a in argv)
        if done and os.path.exists(done):
            print(f"$ {line}\n  (reused: {done} exists)", flush=True)
            return
        print(f"$ {line}", flush=True)
        if self.dry_run:
            return
        env = dict(os.environ, PYTHONPATH=REPO + (os.pathsep + os.environ["PYTHONPATH"]
                                                  if os.environ.get("PYTHONPATH") else ""))
        result = subprocess.run([sys.executable] + argv, cwd=REPO, env=env)
        if result.returncode != 0:
            raise ValueError(f"{argv[0]} failed (exit {result.returncode}); its output is above")


def build_parser() -> Parser:
    p = Parser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--run_dir", required=True, help="a finished stage-1 run (the demo's: runs/demo/search/stage1)")
    p.add_argument("--work_dir", required=True, help="where the profiles, the measured table and the new search go")
    p.add_argument("--export_dir", default=None,
                   help="the run's C export; its profile.json (export_c.py --profile) joins the kernels' profiles")
    p.add_argument("--precisions", nargs="+", choices=PRECISION_ORDER, default=None,
                   help="uniform networks to profile (default: every precision the run's analysis allows somewhere)")
    p.add_argument("--images", type=positive_int, default=2, help="images per profile")
    p.add_argument("--cycles_per_instruction", type=positive_float, default=None,
                   help="profile_to_lut.py's conversion of instructions (default its own, 1.0)")
    p.add_argument("--epochs", type=positive_int, default=None, help="search epochs (default: the run's)")
    p.add_argument("--finetune_epochs", type=positive_int, default=None, help="fine-tuning epochs (default: the run's)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads of the search")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run_dir, work = os.path.abspath(args.run_dir), os.path.abspath(args.work_dir)
    run = read_run(run_dir)
    spec = run["summary"].get("model") or {}
    if spec.get("type") != "mobilenetv2":
        raise ValueError(f"--run_dir {run_dir}: a {spec.get('type')} run; m7_kernels.py builds MobileNetV2 only")
    precisions = args.precisions or search_precisions(run["files"]["analysis"])
    steps = Steps(args.dry_run)
    kernels = os.path.join(work, "kernels")
    profiles = [os.path.join(kernels, p, "profile.json") for p in precisions]
    steps.run([M7_KERNELS, "--precisions", *precisions, "--work_dir", kernels, "--images", str(args.images),
               "--width_mult", f"{spec['width_mult']:g}", "--input_size", str(spec["input_size"]), "--baseline", ""],
              done=profiles[-1] if all(os.path.isfile(f) for f in profiles) else None)
    own = os.path.join(args.export_dir, "profile.json") if args.export_dir else None
    if own and os.path.isfile(own):
        profiles.append(os.path.abspath(own))
    elif own:
        print(f"note: {own} not found (export with --profile to add the run's own network)", flush=True)
    measured_path = os.path.join(work, "measured_lut.json")
    steps.run([PROFILE_TO_LUT, *[x for f in profiles for x in ("--profile", f)], "--base_lut", run["files"]["lut"],
               "--output_lut", measured_path]
              + (["--cycles_per_instruction", f"{args.cycles_per_instruction:g}"] if args.cycles_per_instruction
                 else []), done=measured_path)
    search_dir = os.path.join(work, "search")
    a = run["args"]
    target_flags: List[str] = []
    if a.get("latency_target_ms") and not args.dry_run:
        slack = float(a["latency_target_ms"]) / all_int8_ms(run["lut"])
        target = round(slack * all_int8_ms(read_json(measured_path, "latency table")), 3)
        print(f"latency target: the run's {a['latency_target_ms']:g} ms is {slack:.3f} × its all-INT8 latency; on the "
              f"measured table that is {target:g} ms", flush=True)
        target_flags = ["--latency_target_ms", f"{target:g}"]
    elif a.get("latency_target_ms"):
        target_flags = ["--latency_target_ms", "<ratio x all-INT8 on the measured table>"]
    overrides = {"epochs": args.epochs, "finetune_epochs": args.finetune_epochs}
    carried = []
    for key in CARRIED:
        value = overrides.get(key) or a.get(key)
        if value is not None and value is not False:
            carried += [f"--{key}", f"{value:g}" if isinstance(value, float) else str(value)]
    steps.run([STAGE1, "--tensor_analysis_json", run["files"]["analysis"], "--latency_lut", measured_path,
               *carried, *target_flags, "--threads", str(args.threads), "--output_dir", search_dir],
              done=os.path.join(search_dir, "summary.json"))
    if args.dry_run:
        return 0
    measured_run = read_run(search_dir)
    result = comparison(run, measured_run, read_json(measured_path, "latency table"))
    result["tables"]["measured"] = measured_path
    result["profiles"] = profiles
    write_json_atomic(result, os.path.join(work, "round_trip.json"))
    print("\n".join(summary_lines(result)))
    print(f"wrote {os.path.join(work, 'round_trip.json')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
