"""How much the demo's accuracies move from seed to seed: the demo's own pretraining, stage-1 search and
all-INT8 reference (Search_CIFAR10/demo.py's plan, flags and epochs) for several seeds, then each test
accuracy's mean ± sample standard deviation and range over the seeds.

    python benchmarks/demo_seeds.py                       # seeds 0 1 2 into runs/demo_seeds/seed<N>/
    python benchmarks/demo_seeds.py --seeds 0 1 2 3 4 --jobs 2

``--seed`` sets the initial weights, the data order, the augmentation and dropout of every step; the data
split (--split_seed) stays the demo's, so every seed is tested on the same 216 digits. Steps that have
finished are reused, as in the demo. Prints one Markdown table and writes it, with every number, to
spread.json in the output folder.
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import sys
from typing import Dict, List

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models.files import read_json, write_json_atomic  # noqa: E402
from Search_CIFAR10 import REPO_ROOT  # noqa: E402
from Search_CIFAR10.demo import DemoConfig, Runner, plan  # noqa: E402
from tensor_analysis.cli import Parser, non_negative_int, positive_int, run_cli  # noqa: E402

STEPS = ("pretrain", "filter", "lut", "stage1", "int8")
# (label, the step's summary.json relative to a seed's folder, where its test accuracy is)
FIGURES = (("FP32, pretrained", ("pretrain", "summary.json"), ("test_acc",)),
           ("stage 1 (mixed precision)", ("search", "stage1", "summary.json"), ("accuracy", "test")),
           ("all-INT8, QAT", ("search", "int8", "summary.json"), ("accuracy", "test")))


def seed_steps(cfg: DemoConfig) -> list:
    """The demo's steps for one seed, renamed so that several seeds share one runner."""
    tag = f"seed{cfg.seed}_"
    return [dataclasses.replace(step, name=tag + step.name, needs=tuple(tag + n for n in step.needs))
            for step in plan(cfg) if step.name in STEPS]


def figure(doc: dict, keys) -> float:
    for key in keys:
        doc = doc[key]
    return float(doc)


def spread(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def main(argv=None) -> int:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], help="seeds to run")
    p.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "runs", "demo_seeds"),
                   help="one folder per seed (seed<N>/) and spread.json")
    p.add_argument("--jobs", type=positive_int, default=2, help="steps run at once, each with one thread")
    args = p.parse_args(argv)
    configs = [DemoConfig(output_dir=os.path.join(os.path.abspath(args.output_dir), f"seed{s}"), seed=s,
                          jobs=args.jobs) for s in args.seeds]
    for cfg in configs:
        os.makedirs(cfg.output_dir, exist_ok=True)
    runner = Runner([step for cfg in configs for step in seed_steps(cfg)], args.jobs)
    if not runner.run():
        raise ValueError(f"step {runner.failed} failed; its output is above (finished steps are kept)")
    rows = {label: [figure(read_json(cfg.path(*path)), keys) for cfg in configs] for label, path, keys in FIGURES}
    table = ["| network | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std | range |",
             "|---|" + "--:|" * (len(args.seeds) + 2)]
    for label, values in rows.items():
        s = spread(values)
        table.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {s['mean']:.2f} ± {s['std']:.2f} | {s['min']:.2f}–{s['max']:.2f} |")
    text = "\n".join(table)
    print(f"\ntest accuracy (%) of the demo's networks, {len(args.seeds)} seeds (std: sample standard deviation)\n")
    print(text)
    write_json_atomic({"seeds": args.seeds, "test_acc": rows, "spread": {k: spread(v) for k, v in rows.items()},
                       "table": text}, os.path.join(args.output_dir, "spread.json"))
    return 0


if __name__ == "__main__":
    run_cli(main)
