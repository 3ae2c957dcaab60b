#!/usr/bin/env python3
"""Does the search earn its keep? DNAS against a random search with the same budgets and compute, and
against every uniform precision, on digits, in a regime where precision matters: RAM budgets below the
all-INT4 peak, where INT2 is the only uniform precision that fits.

For each seed: an FP32 pretraining; uniform INT8 / INT4 / INT2 QAT (``--mapping uniform:P``); a λ = 0
search (no hardware: which precisions does accuracy alone pick?); and, on each profile and each RAM
budget, one DNAS run and one random search (``random_search.py``, the compute of one DNAS run), both
from the memory filter's analysis at that budget. Every run fine-tunes for the same epochs, chooses its
network on a selection split held out of the α images (``--selection_fraction``) and is tested once on
the same test images. The budgets are fractions of the way from the all-INT2 to the all-INT4 peak of the
analysed network.

    python benchmarks/search_quality.py --output_dir runs/search_quality --seeds 0 1 2
    python benchmarks/search_quality.py --output_dir runs/search_quality --table   # the tables only

Runs two steps at a time, one thread each; finished steps are reused and interrupted ones continue from
their checkpoints. The tables go to <output_dir>/search_quality.md, the per-profile plots of every
network to <output_dir>/sweep/ (plot_sweep.py).
"""
import os
import statistics
import subprocess
import sys
from typing import Dict, List, Mapping, Sequence

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models.files import read_json, write_text_atomic  # noqa: E402
from models.layers import SEED_ALPHA_BIAS  # noqa: E402
from models.precisions import PRECISIONS  # noqa: E402
from Search_CIFAR10 import REPO_ROOT  # noqa: E402
from Search_CIFAR10.demo import PRETRAIN, STAGE1, Runner, Step  # noqa: E402
from Search_CIFAR10.reporting.runs import collect  # noqa: E402
from tensor_analysis.cli import Parser, non_negative_int, positive_float, positive_int, run_cli  # noqa: E402
from tensor_analysis.lut import lut_latency_ms  # noqa: E402

RANDOM = "Search_CIFAR10/dnas/random_search.py"
MEMORY_FILTER = "tensor_analysis/tensor_memory_filter.py"
LATENCY = "tensor_analysis/tensor_latency_predictor.py"
SWEEP = "Search_CIFAR10/dnas/plot_sweep.py"
PROFILES = ("stm32h747", "artifact")
BUDGET_FRACTIONS = (0.5, 0.25)     # of the way from the all-INT2 to the all-INT4 peak
UNIFORM = ("int8", "int4", "int2")


class Plan:
    def __init__(self, args):
        self.args = args
        self.root = os.path.abspath(args.output_dir)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def analysis(self) -> str:
        return self.path("analysis.json")

    def budget_analysis(self, k: int) -> str:
        """The memory filter at budget ``k``: what a user searching under that budget starts from."""
        return self.path(f"analysis_budget{k}.json")

    def lut(self, profile: str) -> str:
        return self.path(f"lut_{profile}.json")

    def budgets_kb(self) -> List[float]:
        peaks = read_json(self.analysis, "analysis")["totals"]["peak_ram_bytes"]
        low, high = peaks["int2"] / 1024, peaks["int4"] / 1024
        return [round(low + f * (high - low), 1) for f in BUDGET_FRACTIONS]

    def model_flags(self) -> List[str]:
        return ["--model_type", "mobilenetv2", "--width_mult", f"{self.args.width_mult:g}",
                "--input_size", str(self.args.input_size)]

    def run_flags(self, seed: int, profile: str = PROFILES[0], analysis: str = None) -> List[str]:
        a = self.args
        return ["--tensor_analysis_json", analysis or self.analysis, "--latency_lut", self.lut(profile),
                "--hardware", profile,
                "--pretrained", self.path("pretrain", f"seed{seed}", "best.pt"), "--dataset", "digits",
                "--seed", str(seed), "--epochs", str(a.search_epochs), "--warmup_epochs", "1",
                "--finetune_epochs", str(a.finetune_epochs), "--selection_fraction", f"{a.selection_fraction:g}",
                "--threads", "1"]

    def filter_step(self) -> Step:
        return Step("filter", "memory filter at a threshold every precision fits (the budgets are the searches')",
                    lambda: [MEMORY_FILTER] + self.model_flags() + ["--memory_threshold", "4096", "--quiet",
                                                                    "--output_file", self.analysis],
                    self.analysis)

    def lut_step(self, profile: str) -> Step:
        return Step(f"lut_{profile}", f"latency table on {profile}",
                    lambda: [LATENCY, "--analysis", self.analysis, "--precision", "int8", "--hardware", profile,
                             "--quiet", "--no_dual", "--lut", self.lut(profile)],
                    self.lut(profile), needs=("filter",))

    def pretrain_step(self, seed: int) -> Step:
        a, out = self.args, self.path("pretrain", f"seed{seed}")
        return Step(f"pretrain_s{seed}", f"FP32 pretraining, seed {seed}",
                    lambda: [PRETRAIN, "--dataset", "digits", "--model", "mobilenetv2", "--width_mult",
                             f"{a.width_mult:g}", "--input_size", str(a.input_size), "--epochs", str(a.pretrain_epochs),
                             "--seed", str(seed), "--output_dir", out, "--resume", "--threads", "1"],
                    os.path.join(out, "summary.json"))

    def steps(self) -> List[Step]:
        a, p = self.args, self.path
        steps = [self.filter_step()]
        for k in range(len(BUDGET_FRACTIONS)):
            steps.append(Step(f"filter_b{k}", f"memory filter at RAM budget {k}",
                              lambda k=k: [MEMORY_FILTER] + self.model_flags() + [
                                  "--memory_threshold", f"{self.budgets_kb()[k]:g}", "--quiet",
                                  "--output_file", self.budget_analysis(k)],
                              self.budget_analysis(k), needs=("filter",)))
        steps += [self.lut_step(profile) for profile in PROFILES]
        for seed in a.seeds:
            steps.append(self.pretrain_step(seed))
            needs = (f"pretrain_s{seed}", "filter", f"lut_{PROFILES[0]}")
            for precision in UNIFORM:
                steps.append(self._stage1(f"uniform_{precision}_s{seed}", f"all-{precision} QAT, seed {seed}",
                                          p("uniform", precision, f"seed{seed}"),
                                          lambda seed=seed, precision=precision: self.run_flags(seed) + [
                                              "--mapping", f"uniform:{precision}"], needs))
            steps.append(self._stage1(f"lam0_s{seed}", f"λ = 0 search (accuracy alone), seed {seed}",
                                      p("lam0", f"seed{seed}"),
                                      lambda seed=seed: self.run_flags(seed) + ["--hardware_weight", "0"], needs))
            for profile in PROFILES:
                for k in range(len(BUDGET_FRACTIONS)):
                    needs_p = (f"pretrain_s{seed}", f"filter_b{k}", f"lut_{profile}")

                    def flags(seed=seed, profile=profile, k=k):
                        return self.run_flags(seed, profile, self.budget_analysis(k)) + [
                            "--memory_budget_kb", f"{self.budgets_kb()[k]:g}"]
                    steps.append(self._stage1(
                        f"dnas_{profile}_b{k}_s{seed}", f"DNAS on {profile}, budget {k}, seed {seed}",
                        p("dnas", profile, f"budget{k}", f"seed{seed}"), flags, needs_p))
                    out = p("random", profile, f"budget{k}", f"seed{seed}")
                    steps.append(Step(
                        f"random_{profile}_b{k}_s{seed}", f"random search on {profile}, budget {k}, seed {seed}",
                        lambda out=out, flags=flags: [RANDOM] + flags() + ["--output_dir", out]
                        + (["--resume"] if os.path.isfile(os.path.join(out, "checkpoint_last.pt")) else []),
                        os.path.join(out, "summary.json"), needs=needs_p))
        return steps

    @staticmethod
    def _stage1(name, title, out, flags, needs) -> Step:
        return Step(name, title, lambda: [STAGE1] + flags() + ["--output_dir", out], os.path.join(out, "summary.json"),
                    needs=needs, resume_file=os.path.join(out, "checkpoint_last.pt"),
                    resume_argv=lambda: [STAGE1, "--resume", "--output_dir", out])


# ----------------------------------------------------------------------------------------------------
# The tables
# ----------------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float], digits: int = 2) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (one run)"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def dominated_layers(mapping: Mapping[str, str], allowed: Mapping[str, Sequence[str]], lut: Mapping
                     ) -> Dict[str, List[str]]:
    """{layer: the precisions it may use that are both finer and no slower (by the table) than the one it
    ended at}, for the layers that have any: a dominated choice."""
    out = {}
    for name, p in mapping.items():
        ms = lut["layers"][name]
        better = [q for q in allowed[name] if PRECISIONS[q].bits > PRECISIONS[p].bits and ms[q] <= ms[p]]
        if better:
            out[name] = better
    return out


def drifted(dominated: Mapping[str, List[str]], mapping: Mapping[str, str], alpha_init: str) -> List[str]:
    """The dominated layers whose α had to overtake a better precision's: one of the precisions that
    dominate the layer's choice started with the larger logit. (With a tie at the start, as between FP32
    and FP16 whose outputs barely differ, λ = 0 has no reason to move, and the start decides.)"""
    start = SEED_ALPHA_BIAS if alpha_init == "int8_biased" else {}
    return [n for n, better in dominated.items()
            if any(start.get(q, 0.0) > start.get(mapping[n], 0.0) for q in better)]


def tables(plan: Plan) -> str:
    found = collect([plan.root], flag="--output_dir")
    by_dir = {os.path.relpath(r.dir, plan.root): r for r in found.runs}
    luts = {prof: read_json(plan.lut(prof), "latency table") for prof in PROFILES}
    analysis = read_json(plan.analysis, "analysis")
    allowed = {entry["name"]: entry["allowed_precisions"] for entry in analysis["layers"]}
    budgets = plan.budgets_kb()
    seeds = plan.args.seeds

    def runs(*parts):
        return [by_dir[k] for k in (os.path.join(*parts, f"seed{s}") for s in seeds) if k in by_dir]

    def mapping_of(run):
        return read_json(run.file("mapping.json"), "mapping")["layers"]

    fp32 = [r.accuracy["fp32_test"] for r in runs("uniform", "int8") if "fp32_test" in r.accuracy]
    peaks = analysis["totals"]["peak_ram_bytes"]
    reference = runs("uniform", "int8")
    n_test = len(read_json(reference[0].file("split.json"), "split")["test_indices"]) if reference else "?"
    lines = [f"# Search quality on digits: MobileNetV2 w{plan.args.width_mult:g}, {plan.args.input_size} px",
             "", f"Seeds {', '.join(map(str, seeds))}; test accuracy mean ± standard deviation over the seeds "
             f"(the test split holds {n_test} images). "
             f"Latency: the hardware model's prediction; peak RAM: the memory model's. RAM budgets "
             f"{budgets[0]:g} and {budgets[1]:g} KB lie between the all-INT2 ({peaks['int2'] / 1024:.1f} KB) and "
             f"the all-INT4 ({peaks['int4'] / 1024:.1f} KB) peak.", ""]
    for profile in PROFILES:
        lut = luts[profile]
        lines += [f"## {profile}", "", "| network | budget (KB) | test acc (%) | latency (ms) | peak RAM (KB) | "
                  "fits | runs |", "|---|--:|--:|--:|--:|---|--:|"]
        names = list(allowed)
        lines.append(f"| FP32 (pretrained) | – | {mean_std(fp32)} | {lut_latency_ms(lut, {n: 'fp32' for n in names}):.2f}"
                     f" | {peaks['fp32'] / 1024:.1f} | no | {len(fp32)} |")
        for precision in UNIFORM:
            rs = runs("uniform", precision)
            ram = peaks[precision] / 1024
            fits = ", ".join(f"{b:g}" for b in budgets if ram <= b) or "none"
            lines.append(f"| all-{precision} (QAT) | – | {mean_std([r.accuracy['test'] for r in rs])} | "
                         f"{lut_latency_ms(lut, {n: precision for n in names}):.2f} | {ram:.1f} | {fits} | {len(rs)} |")
        for k, budget in enumerate(budgets):
            for method, label in (("random", "random search"), ("dnas", "DNAS")):
                rs = runs(method, profile, f"budget{k}")
                lat = [lut_latency_ms(lut, mapping_of(r)) for r in rs]
                ram = [r.hardware["peak_ram_kb"] for r in rs]
                fits = "yes" if ram and all(v <= budget + 1e-6 for v in ram) else ("no" if ram else "–")
                lines.append(f"| {label} | {budget:g} | {mean_std([r.accuracy['test'] for r in rs])} | "
                             f"{mean_std(lat)} | {mean_std(ram, 1)} | {fits} | {len(rs)} |")
        lines.append("")
    lines += ["## λ = 0: what accuracy alone picks", "",
              "A layer is *dominated* when it is at a precision both slower (by the profile's table) and coarser "
              "than another precision it may use; *drifted* counts those among them whose logit had to overtake "
              "the better precision's (it started ahead: the search moved away from it). *As searched*: the "
              "argmax of α, before derivation replaces dominated layers (on the profile the run searched for, "
              f"{PROFILES[0]}); *derived*: the network that is fine-tuned and tested.", "",
              f"| seed | test acc (%) | derived precisions | as searched: dominated (drifted) on {PROFILES[0]} | "
              "drifted moves | replaced | derived: dominated on " + " / ".join(PROFILES) + " |",
              "|--:|--:|---|--:|---|--:|--:|"]
    for r in runs("lam0"):
        derived = mapping_of(r)
        replaced = r.summary.get("dominated_replaced") or []
        searched = {**derived, **{c["layer"]: c["from"] for c in replaced}}
        hist = ", ".join(f"{p} {c}" for p, c in r.summary.get("precision_histogram", {}).items())
        dom = dominated_layers(searched, allowed, luts[PROFILES[0]])
        moved = drifted(dom, searched, r.args.get("alpha_init", "int8_biased"))
        moves = {}
        for n in moved:
            key = f"{max(dom[n], key=lambda q: SEED_ALPHA_BIAS.get(q, 0.0))}→{searched[n]}"
            moves[key] = moves.get(key, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(moves.items())) or "none"
        after = " / ".join(str(len(dominated_layers(derived, allowed, luts[prof]))) for prof in PROFILES)
        lines.append(f"| {r.args.get('seed')} | {r.accuracy['test']:.2f} | {hist} | {len(dom)} ({len(moved)}) | "
                     f"{detail} | {len(replaced)} | {after} |")
    return "\n".join(lines) + "\n"


def selected(steps: List[Step], prefixes: Sequence[str] = None) -> List[Step]:
    """The steps named by ``prefixes`` and everything they need (all steps without prefixes)."""
    if not prefixes:
        return steps
    by_name = {s.name: s for s in steps}
    wanted = {s.name for s in steps if s.name.startswith(tuple(prefixes))}
    frontier = list(wanted)
    while frontier:
        for need in by_name[frontier.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                frontier.append(need)
    return [s for s in steps if s.name in wanted]


def experiment_parser(doc: str, output_dir: str, output_help: str, steps_help: str, table_help: str) -> Parser:
    """The flags every multi-seed experiment of benchmarks/ shares (this one and weight_grid.py)."""
    p = Parser(description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1])
    p.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "runs", output_dir), help=output_help)
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], help="seeds of every run")
    p.add_argument("--width_mult", type=positive_float, default=0.35, help="MobileNetV2 width")
    p.add_argument("--input_size", type=positive_int, default=32, help="input side in pixels")
    p.add_argument("--pretrain_epochs", type=positive_int, default=20, help="FP32 pretraining epochs")
    p.add_argument("--search_epochs", type=positive_int, default=4, help="search epochs (the first a warm-up)")
    p.add_argument("--finetune_epochs", type=positive_int, default=2, help="fine-tuning epochs of every run")
    p.add_argument("--selection_fraction", type=positive_float, default=0.5,
                   help="validation images held out of the α steps to choose every run's network")
    p.add_argument("--jobs", type=positive_int, default=2, help="runs at once, one thread each")
    p.add_argument("--steps", nargs="+", default=None, metavar="PREFIX",
                   help=f"run only the steps whose names start with these ({steps_help}) and what they need")
    p.add_argument("--table", action="store_true", help=table_help)
    return p


def main(argv=None) -> int:
    p = experiment_parser(__doc__, "search_quality", "where every run, the tables and the plots go",
                          "pretrain, uniform, lam0, dnas, random, ...", "only write the tables and plots of finished runs")
    args = p.parse_args(argv)
    plan = Plan(args)
    if not args.table and not Runner(selected(plan.steps(), args.steps), args.jobs).run():
        return 1
    text = tables(plan)
    write_text_atomic(text, plan.path("search_quality.md"))
    print(text)
    subprocess.run([sys.executable, os.path.join(REPO_ROOT, SWEEP), "--runs", plan.root, "--hardware", *PROFILES,
                    "--output_dir", plan.path("sweep")], check=False,
                   env={**os.environ, "PYTHONPATH": REPO_ROOT})
    return 0


if __name__ == "__main__":
    run_cli(main)
