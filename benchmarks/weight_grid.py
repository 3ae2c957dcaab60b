#!/usr/bin/env python3
"""What does the symmetric weight grid cost? ``--weight_grid symmetric`` against ``dorefa`` on digits, for
uniform INT8, INT4 and INT2 QAT and one searched network, with the same seeds, pretraining and epochs.

For each seed: one FP32 pretraining; then, for each grid, uniform INT8 / INT4 / INT2 QAT (``--mapping
uniform:P``) and one DNAS search (λ = --hardware_weight, no budget), each fine-tuned for the same epochs,
its network chosen on a selection split, and tested once on the same test images.

    python benchmarks/weight_grid.py --output_dir runs/weight_grid --seeds 0 1 2
    python benchmarks/weight_grid.py --output_dir runs/weight_grid --table   # the table only

Runs two steps at a time, one thread each; finished steps are reused. The table (test accuracy, mean ±
standard deviation over the seeds) goes to <output_dir>/weight_grid.md.
"""
import os
import sys
from typing import List

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from benchmarks import search_quality  # noqa: E402
from benchmarks.search_quality import experiment_parser, mean_std, selected  # noqa: E402
from models.files import read_json, write_text_atomic  # noqa: E402
from models.quantizers import WEIGHT_GRIDS  # noqa: E402
from Search_CIFAR10.demo import Runner, Step  # noqa: E402
from tensor_analysis.cli import positive_float, run_cli  # noqa: E402

PROFILE = "stm32h747"
UNIFORM = ("int8", "int4", "int2")
NETWORKS = [(f"uniform_{p}", f"all-{p.upper()} (QAT)") for p in UNIFORM] + [("dnas", "DNAS search")]


class Plan(search_quality.Plan):
    """search_quality's runs, on one profile, for both weight grids."""

    def lut(self, profile: str) -> str:
        return self.path("lut.json")

    def run_dir(self, network: str, grid: str, seed: int) -> str:
        return self.path(network, grid, f"seed{seed}")

    def run_flags(self, seed: int, grid: str) -> List[str]:
        return super().run_flags(seed, PROFILE) + ["--hardware_weight", f"{self.args.hardware_weight:g}",
                                                   "--weight_grid", grid]

    def steps(self) -> List[Step]:
        steps = [self.filter_step(), self.lut_step(PROFILE)]
        for seed in self.args.seeds:
            steps.append(self.pretrain_step(seed))
            for grid in WEIGHT_GRIDS:
                for network, title in NETWORKS:
                    extra = ["--mapping", f"uniform:{network.split('_')[1]}"] if network != "dnas" else []
                    steps.append(self._stage1(
                        f"{network}_{grid}_s{seed}", f"{title}, {grid} grid, seed {seed}",
                        self.run_dir(network, grid, seed),
                        lambda seed=seed, grid=grid, extra=extra: self.run_flags(seed, grid) + extra,
                        (f"pretrain_s{seed}", "filter", f"lut_{PROFILE}")))
        return steps


def table(plan: Plan) -> str:
    a = plan.args

    def summaries(network, grid):
        paths = [os.path.join(plan.run_dir(network, grid, s), "summary.json") for s in a.seeds]
        return [read_json(p, "run summary") for p in paths if os.path.isfile(p)]

    fp32 = [s["accuracy"]["fp32_test"] for s in summaries("uniform_int8", "dorefa") if "fp32_test" in s["accuracy"]]
    lines = [f"# Weight grid on digits: MobileNetV2 w{a.width_mult:g}, {a.input_size} px", "",
             f"Seeds {', '.join(map(str, a.seeds))}; pretraining {a.pretrain_epochs} epochs, search {a.search_epochs}, "
             f"fine-tuning {a.finetune_epochs}; test accuracy (%), mean ± standard deviation over the seeds. "
             f"FP32 (pretrained): {mean_std(fp32)}.", "",
             "| network | dorefa | symmetric | symmetric − dorefa (paired) | runs |", "|---|--:|--:|--:|--:|"]
    for network, title in NETWORKS:
        by_grid = {g: {s["args"]["seed"]: s for s in summaries(network, g)} for g in WEIGHT_GRIDS}
        acc = {g: [s["accuracy"]["test"] for s in by_grid[g].values()] for g in WEIGHT_GRIDS}
        seeds = sorted(set(by_grid["dorefa"]) & set(by_grid["symmetric"]))
        paired = [by_grid["symmetric"][s]["accuracy"]["test"] - by_grid["dorefa"][s]["accuracy"]["test"] for s in seeds]
        label = title
        if network == "dnas" and seeds:
            hist = {g: "; ".join(", ".join(f"{p} {c}" for p, c in by_grid[g][s]["precision_histogram"].items())
                                 for s in seeds) for g in WEIGHT_GRIDS}
            label += f" (dorefa: {hist['dorefa']} / symmetric: {hist['symmetric']})"
        lines.append(f"| {label} | {mean_std(acc['dorefa'])} | {mean_std(acc['symmetric'])} | {mean_std(paired)} | "
                     f"{len(seeds)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = experiment_parser(__doc__, "weight_grid", "where every run and the table go",
                          "pretrain, uniform_int4, dnas, ...", "only write the table of finished runs")
    p.add_argument("--hardware_weight", type=positive_float, default=0.5, help="λ of the DNAS runs")
    args = p.parse_args(argv)
    plan = Plan(args)
    if not args.table and not Runner(selected(plan.steps(), args.steps), args.jobs).run():
        return 1
    text = table(plan)
    write_text_atomic(text, plan.path("weight_grid.md"))
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
