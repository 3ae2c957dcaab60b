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

from benchmarks.search_quality import LATENCY, MEMORY_FILTER, experiment_parser, mean_std, selected  # noqa: E402
from models.files import read_json, write_text_atomic  # noqa: E402
from models.quantizers import WEIGHT_GRIDS  # noqa: E402
from Search_CIFAR10.demo import PRETRAIN, STAGE1, Runner, Step  # noqa: E402
from tensor_analysis.cli import positive_float, run_cli  # noqa: E402

PROFILE = "stm32h747"
UNIFORM = ("int8", "int4", "int2")
NETWORKS = [(f"uniform_{p}", f"all-{p.upper()} (QAT)") for p in UNIFORM] + [("dnas", "DNAS search")]


class Plan:
    def __init__(self, args):
        self.args = args
        self.root = os.path.abspath(args.output_dir)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def run_dir(self, network: str, grid: str, seed: int) -> str:
        return self.path(network, grid, f"seed{seed}")

    def run_flags(self, seed: int, grid: str) -> List[str]:
        a = self.args
        return ["--tensor_analysis_json", self.path("analysis.json"), "--latency_lut", self.path("lut.json"),
                "--hardware", PROFILE, "--pretrained", self.path("pretrain", f"seed{seed}", "best.pt"),
                "--dataset", "digits", "--seed", str(seed), "--epochs", str(a.search_epochs), "--warmup_epochs", "1",
                "--finetune_epochs", str(a.finetune_epochs), "--selection_fraction", f"{a.selection_fraction:g}",
                "--hardware_weight", f"{a.hardware_weight:g}", "--weight_grid", grid, "--threads", "1"]

    def steps(self) -> List[Step]:
        a = self.args
        model = ["--model_type", "mobilenetv2", "--width_mult", f"{a.width_mult:g}", "--input_size", str(a.input_size)]
        steps = [Step("filter", "memory filter at a threshold every precision fits",
                      lambda: [MEMORY_FILTER] + model + ["--memory_threshold", "4096", "--quiet", "--output_file",
                                                         self.path("analysis.json")], self.path("analysis.json")),
                 Step("lut", f"latency table on {PROFILE}",
                      lambda: [LATENCY, "--analysis", self.path("analysis.json"), "--precision", "int8", "--hardware",
                               PROFILE, "--quiet", "--no_dual", "--lut", self.path("lut.json")],
                      self.path("lut.json"), needs=("filter",))]
        for seed in a.seeds:
            out = self.path("pretrain", f"seed{seed}")
            steps.append(Step(f"pretrain_s{seed}", f"FP32 pretraining, seed {seed}",
                              lambda out=out, seed=seed: [PRETRAIN, "--dataset", "digits", "--model", "mobilenetv2",
                                                          "--width_mult", f"{a.width_mult:g}", "--input_size",
                                                          str(a.input_size), "--epochs", str(a.pretrain_epochs),
                                                          "--seed", str(seed), "--output_dir", out, "--resume",
                                                          "--threads", "1"],
                              os.path.join(out, "summary.json")))
            for grid in WEIGHT_GRIDS:
                for network, title in NETWORKS:
                    extra = ["--mapping", f"uniform:{network.split('_')[1]}"] if network != "dnas" else []
                    out = self.run_dir(network, grid, seed)
                    steps.append(Step(
                        f"{network}_{grid}_s{seed}", f"{title}, {grid} grid, seed {seed}",
                        lambda seed=seed, grid=grid, extra=extra, out=out: [STAGE1] + self.run_flags(seed, grid)
                        + extra + ["--output_dir", out],
                        os.path.join(out, "summary.json"), needs=(f"pretrain_s{seed}", "filter", "lut"),
                        resume_file=os.path.join(out, "checkpoint_last.pt"),
                        resume_argv=lambda out=out: [STAGE1, "--resume", "--output_dir", out]))
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
