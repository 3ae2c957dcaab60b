"""Issue 16's before/after table: every class of hostile use × every tool it touches, run against one
checkout of the project, with the exit code and the line each command ends with.

    python benchmarks/bad_input_table.py --checkout /path/to/checkout --json after.json
    python benchmarks/bad_input_table.py --compare before.json after.json     # one Markdown table

Every command runs as a user would run it, in a fresh interpreter, from that checkout's scripts (and its
``.venv`` when it has one), offline (every URL goes to a proxy that refuses), on tiny inputs made first
with the checkout's own tools (a MobileNetV2 of width 0.1 at 16 px, digits, one epoch). "The line" is
the command's last line on stderr, or on stdout when it exits 0 without a warning; a traceback is shown
as its length and last line. Files a case must not touch are hashed before and after: "[REPLACED: ...]"
marks what a command destroyed. The read-only cases need root (a read-only tmpfs is mounted); the seed's
README commands run in a copy of the checkout, never in it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

PRETRAIN = "Search_CIFAR10/pretrain/pretrain_cifar10_mobilenetv2.py"
FILTER = "tensor_analysis/tensor_memory_filter.py"
DUAL = "tensor_analysis/tensor_memory_filter_dualcore.py"
LATENCY = "tensor_analysis/tensor_latency_predictor.py"
COMPRESSION = "tensor_analysis/compression_calc.py"
MODEL_TABLE = "tensor_analysis/model_table.py"
GENERATE = "tensor_analysis/generate_results.py"
STAGE1 = "Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py"
STAGE2 = "Search_CIFAR10/dnas_multicore/dnas_cifar10_search_multicore_mbv2.py"
SUMMARIZE = "Search_CIFAR10/dnas/summarize_runs.py"
SWEEP = "Search_CIFAR10/dnas/plot_sweep.py"
REPORT = "Search_CIFAR10/make_report.py"
MODEL = ["--model_type", "mobilenetv2", "--width_mult", "0.1", "--input_size", "16"]
DATA = ["--dataset", "digits", "--batch_size", "16", "--limit_train", "32", "--limit_eval", "32", "--device", "cpu",
        "--threads", "1"]
SEARCH = DATA + ["--epochs", "1", "--warmup_epochs", "0", "--finetune_epochs", "0"]
PRE = DATA + ["--width_mult", "0.1", "--input_size", "16", "--epochs", "1", "--warmup_epochs", "0"]
CLASSES = {1: "finished work overwritten", 2: "impossible budgets", 3: "unvalidated values",
           4: "faults ending in tracebacks", 5: "silent omissions", 6: "the seed's README commands"}


@dataclass
class Case:
    klass: int
    tool: str
    what: str
    run: Callable[["Bench"], "Outcome"]


@dataclass
class Outcome:
    code: Optional[int]
    line: str
    damage: List[str] = field(default_factory=list)


class Bench:
    """One checkout, its interpreter, an offline environment and the inputs every case shares."""

    def __init__(self, checkout: str, work: str):
        self.checkout = os.path.abspath(checkout)
        venv = os.path.join(self.checkout, ".venv", "bin", "python")
        self.python = venv if os.path.exists(venv) else sys.executable
        self.work = work
        self.env = {**os.environ, "PYTHONPATH": self.checkout, "OMP_NUM_THREADS": "1", "ADAPTQNET_COMPILE": "off",
                    "PYTHONWARNINGS": "ignore", **{k: "http://127.0.0.1:9" for k in
                                                   ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}}
        self.env.pop("no_proxy", None)
        self.env.pop("NO_PROXY", None)

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def script(self, rel: str) -> str:
        return os.path.join(self.checkout, rel)

    def popen(self, argv: Sequence[str], cwd: Optional[str] = None, shell: bool = False, env=None):
        cmd = argv if shell else [self.python] + [str(a) for a in argv]
        return subprocess.Popen(cmd, cwd=cwd or self.work, env=env or self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, shell=shell, start_new_session=True,
                                executable="/bin/bash" if shell else None)

    def run(self, argv: Sequence[str], cwd: Optional[str] = None, timeout: float = 600, shell: bool = False,
            env=None) -> Outcome:
        proc = self.popen(argv, cwd, shell, env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Outcome(None, f"still running after {timeout:.0f} s (stopped): {last_line(out, err, 0)}")
        return Outcome(proc.returncode, last_line(out, err, proc.returncode))

    def tool(self, rel: str, *args, **kw) -> Outcome:
        return self.run([self.script(rel), *args], **kw)

    def copy_of(self, src: str, name: str) -> str:
        dst = self.path(name)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
        return dst


def last_line(out: str, err: str, code: Optional[int]) -> str:
    def keep(line: str) -> bool:
        return bool(line.strip()) and "Warning:" not in line and not line.startswith("  warnings.warn")
    errs = [line for line in err.splitlines() if keep(line)]
    if "Traceback (most recent call last)" in err:
        return f"Traceback ({len(err.splitlines())} lines): {errs[-1] if errs else ''}"
    warnings = [line for line in errs if line.startswith("warning:")]
    if code == 0:
        outs = [line for line in out.splitlines() if line.strip()]
        return warnings[-1] if warnings else (outs[-1] if outs else "(nothing printed)")
    return errs[-1] if errs else "(nothing on stderr)"


def digest(paths: Sequence[str]) -> Dict[str, str]:
    found = {}
    for root in paths:
        files = [root] if os.path.isfile(root) else [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        for f in files:
            if not os.path.basename(f).startswith("."):
                with open(f, "rb") as fh:
                    found[f] = hashlib.sha256(fh.read()).hexdigest()
    return found


def guarded(paths: Sequence[str], run: Callable[[], Outcome]) -> Outcome:
    """``run()`` with the files under ``paths`` hashed before and after."""
    before = digest(paths)
    outcome = run()
    after = digest(paths)
    changed = sorted(os.path.basename(f) for f in before if after.get(f) != before[f])
    outcome.damage = [f"REPLACED: {', '.join(changed)}"] if changed else []
    return outcome


# ----------------------------------------------------------------------------------------------------
# Shared inputs
# ----------------------------------------------------------------------------------------------------
def make_inputs(b: Bench) -> None:
    steps = [
        [b.script(FILTER), *MODEL, "--memory_threshold", "1024", "--quiet", "--output_file", b.path("analysis.json")],
        [b.script(DUAL), *MODEL, "--memory_threshold", "1024", "--quiet", "--output_file", b.path("dual.json")],
        [b.script(LATENCY), "--analysis", b.path("analysis.json"), "--precision", "int8", "--quiet",
         "--lut", b.path("lut.json")],
        [b.script(PRETRAIN), *PRE, "--output_dir", b.path("pre")],
        [b.script(STAGE1), "--tensor_analysis_json", b.path("analysis.json"), "--latency_lut", b.path("lut.json"),
         "--pretrained", b.path("pre", "best.pt"), *SEARCH, "--output_dir", b.path("runs", "s1")],
    ]
    for argv in steps:
        done = subprocess.run([b.python, *argv], cwd=b.work, env=b.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"making the inputs failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    with open(b.path("analysis.json")) as f:
        names = [layer["name"] for layer in json.load(f)["layers"]]
    first = names[0]
    text = "{" + ", ".join(f'"{n}": "int8"' for n in names) + f', "{first}": "fp32"' + "}"
    with open(b.path("dup_mapping.json"), "w") as f:
        f.write(text)
    with open(b.path("deep.json"), "w") as f:
        f.write("[" * 100000 + "]" * 100000)
    with open(b.path("a_file"), "w") as f:
        f.write("not a folder\n")
    os.makedirs(b.path("a_folder"), exist_ok=True)


def edited_json(b: Bench, src: str, name: str, edit: Callable[[dict], None]) -> str:
    with open(src) as f:
        doc = json.load(f)
    edit(doc)
    with open(b.path(name), "w") as f:
        json.dump(doc, f)
    return b.path(name)


def dual_lut(b: Bench, name: str, value) -> str:
    """lut.json with every dual-core option at ``value`` ms."""
    def edit(doc):
        for options in doc["dual"]["options"].values():
            for option in options.values():
                option["ms"] = value
    return edited_json(b, b.path("lut.json"), name, edit)


# ----------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------
def s1_args(b: Bench, *extra, pretrained: Optional[str] = None) -> List[str]:
    return [b.script(STAGE1), "--tensor_analysis_json", b.path("analysis.json"), "--latency_lut", b.path("lut.json"),
            "--pretrained", pretrained or b.path("pre", "best.pt"), *SEARCH, *extra]


def s2_args(b: Bench, stage1_dir: str, *extra) -> List[str]:
    return [b.script(STAGE2), "--stage1_dir", stage1_dir, "--layers", "all", *SEARCH, *extra]


def class1(b: Bench) -> List[Case]:
    def pretrain_finished(b):
        pre = b.copy_of(b.path("pre"), "c1_pre")
        return guarded([pre], lambda: b.tool(PRETRAIN, *PRE, "--output_dir", pre))

    def stage1_finished(b):
        run = b.copy_of(b.path("runs", "s1"), "c1_s1")
        return guarded([run], lambda: b.run(s1_args(b, "--output_dir", run)))

    def stage1_into_pretrain(b):
        pre = b.copy_of(b.path("pre"), "c1_pre_as_out")
        return guarded([pre], lambda: b.run(s1_args(b, "--output_dir", pre, pretrained=os.path.join(pre, "best.pt"))))

    def stage2_into_stage1(b):
        run = b.copy_of(b.path("runs", "s1"), "c1_s1_for_s2")
        return guarded([run], lambda: b.run(s2_args(b, run, "--output_dir", run)))

    def report_over_summary(b):
        runs = b.copy_of(b.path("runs"), "c1_runs_report")
        target = os.path.join(runs, "s1", "summary.json")
        return guarded([runs], lambda: b.tool(REPORT, "--runs", runs, "--output", target))

    def report_html_over_md(b):
        runs = b.copy_of(b.path("runs"), "c1_runs_html")
        out = b.path("c1_report")
        os.makedirs(out)
        outcome = b.tool(REPORT, "--runs", runs, "--output", os.path.join(out, "report.html"))
        head = ""
        if os.path.exists(os.path.join(out, "report.html")):
            with open(os.path.join(out, "report.html")) as f:
                head = f.read(200)
        if outcome.code == 0:
            outcome.damage = ["REPLACED: report.html holds " + ("HTML, the Markdown is gone" if "<html" in head.lower()
                                                                else "Markdown")]
        return outcome

    def lut_over_analysis(b):
        analysis = b.copy_of(b.path("analysis.json"), "c1_analysis.json")
        return guarded([analysis], lambda: b.tool(LATENCY, "--analysis", analysis, "--lut", analysis, "--quiet"))

    def compression_over_mapping(b):
        mapping = b.copy_of(b.path("runs", "s1", "mapping.json"), "c1_mapping.json")
        return guarded([mapping], lambda: b.tool(COMPRESSION, "--precision_mapping_file", mapping,
                                                 "--output_file", mapping))

    def filter_over_lut(b):
        lut = b.copy_of(b.path("lut.json"), "c1_lut.json")
        return guarded([lut], lambda: b.tool(FILTER, *MODEL, "--quiet", "--output_file", lut))

    def summarize_over_summary(b):
        runs = b.copy_of(b.path("runs"), "c1_runs_csv")
        return guarded([runs], lambda: b.tool(SUMMARIZE, runs, "--csv", os.path.join(runs, "s1", "summary.json")))

    def two_searches_one_folder(b):
        out = b.path("c1_race")
        argv = s1_args(b, "--output_dir", out)
        argv[argv.index("--epochs") + 1] = "3"
        first = b.popen(argv)
        time.sleep(2.0)
        second = b.popen(argv)
        o2, e2 = second.communicate(timeout=900)
        o1, e1 = first.communicate(timeout=900)
        return Outcome(second.returncode, f"first: exit {first.returncode}; second: exit {second.returncode}: "
                       f"{last_line(o2, e2, second.returncode)}")

    return [
        Case(1, "pretrain", "--output_dir holding a finished pretraining run", pretrain_finished),
        Case(1, "stage 1", "--output_dir holding a finished stage-1 run", stage1_finished),
        Case(1, "stage 1", "--output_dir = the pretraining folder its --pretrained is in", stage1_into_pretrain),
        Case(1, "stage 2", "--output_dir = its own --stage1_dir", stage2_into_stage1),
        Case(1, "make_report", "--output <run>/summary.json", report_over_summary),
        Case(1, "make_report", "--output report.html", report_html_over_md),
        Case(1, "latency predictor", "--lut X with X = its --analysis", lut_over_analysis),
        Case(1, "compression_calc", "--output_file = its --precision_mapping_file", compression_over_mapping),
        Case(1, "memory filter", "--output_file = an existing latency table", filter_over_lut),
        Case(1, "summarize_runs", "--csv <run>/summary.json", summarize_over_summary),
        Case(1, "stage 1 ×2", "two searches started on one folder", two_searches_one_folder),
    ]


def class2(b: Bench) -> List[Case]:
    def s1(name, *extra):
        return lambda b: b.run(s1_args(b, "--output_dir", b.path(name), *extra))

    def s2(name, *extra):
        return lambda b: b.run(s2_args(b, b.path("runs", "s1"), "--output_dir", b.path(name), *extra))
    return [
        Case(2, "stage 1", "--memory_budget_kb 0.1 (below the least peak any mapping reaches)",
             s1("c2_ram", "--memory_budget_kb", "0.1")),
        Case(2, "stage 1", "--latency_target_ms 0.01 (below the fastest network)",
             s1("c2_latency", "--latency_target_ms", "0.01")),
        Case(2, "stage 1", "--memory_budget_kb 0.1 --allow_unmet_budgets",
             s1("c2_allowed", "--memory_budget_kb", "0.1", "--allow_unmet_budgets")),
        Case(2, "stage 2", "--latency_target_ms 0.01", s2("c2_s2", "--latency_target_ms", "0.01")),
    ]


def class3(b: Bench) -> List[Case]:
    def lut_with(name, value):
        def run(b):
            lut = dual_lut(b, name, value)
            return b.run(s2_args(b, b.path("runs", "s1"), "--latency_lut", lut, "--output_dir", b.path("c3_" + name)))
        return run

    def zero_lut(b):
        def edit(doc):
            for row in doc["layers"].values():
                for p in row:
                    row[p] = 0.0
            doc["fixed_ms"] = 0.0
        lut = edited_json(b, b.path("lut.json"), "c3_zero_lut.json", edit)
        return b.run(s1_args(b, "--latency_lut", lut, "--output_dir", b.path("c3_zero")))

    def negative_bytes(b):
        def edit(doc):
            for layer in doc["layers"]:
                for counts in layer["bytes"].values():
                    counts["live"] = -abs(counts["live"])
        analysis = edited_json(b, b.path("analysis.json"), "c3_negative.json", edit)
        return b.run([b.script(STAGE1), "--tensor_analysis_json", analysis, "--latency_lut", b.path("lut.json"),
                      "--pretrained", b.path("pre", "best.pt"), *SEARCH, "--memory_budget_kb", "1000",
                      "--output_dir", b.path("c3_negative")])

    def dup_mapping(rel, *extra):
        return lambda b: b.tool(rel, *MODEL, "--precision_mapping_file", b.path("dup_mapping.json"), *extra)

    def dup_profile(b):
        with open(os.path.join(b.checkout, "tensor_analysis", "hardware", "stm32h747.json")) as f:
            text = f.read()
        text = text.replace('"ram_kb":', '"ram_kb": 1, "ram_kb":', 1)
        with open(b.path("c3_dup_profile.json"), "w") as f:
            f.write(text)
        return b.tool(LATENCY, *MODEL, "--precision", "int8", "--hardware", b.path("c3_dup_profile.json"), "--quiet")

    def negative_profile(b):
        def edit(doc):
            unit = next(iter(doc["units"].values()))
            unit["overhead_cycles"] = -3000
        profile = edited_json(b, os.path.join(b.checkout, "tensor_analysis", "hardware", "stm32h747.json"),
                              "c3_negative_profile.json", edit)
        return b.tool(LATENCY, *MODEL, "--precision", "int8", "--hardware", profile, "--quiet")

    def empty_class(b):
        from PIL import Image
        root = b.path("c3_images")
        for cls in ("cat", "dog"):
            os.makedirs(os.path.join(root, cls))
            for i in range(6):
                Image.new("RGB", (12, 12), (i * 30, 80, 0)).save(os.path.join(root, cls, f"{i}.png"))
        os.makedirs(os.path.join(root, "empty_class"))
        return b.tool(PRETRAIN, "--dataset", "imagefolder", "--data_dir", root, "--width_mult", "0.1", "--input_size",
                      "16", "--epochs", "1", "--batch_size", "4", "--warmup_epochs", "0", "--threads", "1",
                      "--output_dir", b.path("c3_images_run"))

    return [
        Case(3, "stage 2", "LUT: dual-core option latencies negative", lut_with("negative", -5.0)),
        Case(3, "stage 2", "LUT: dual-core option latencies NaN", lut_with("nan", float("nan"))),
        Case(3, "stage 1", "LUT: every latency 0", zero_lut),
        Case(3, "stage 1", "analysis: negative byte counts", negative_bytes),
        Case(3, "latency predictor", "mapping naming one layer twice", dup_mapping(LATENCY, "--quiet")),
        Case(3, "compression_calc", "mapping naming one layer twice", dup_mapping(COMPRESSION)),
        Case(3, "latency predictor", "hardware profile naming a key twice", dup_profile),
        Case(3, "latency predictor", "hardware profile with a negative cycle count", negative_profile),
        Case(3, "pretrain", "ImageFolder with an empty class folder", empty_class),
        Case(3, "model_table", "--width_mult inf", lambda b: b.tool(MODEL_TABLE, "--width_mult", "inf")),
        Case(3, "pretrain", "--width_mult inf",
             lambda b: b.tool(PRETRAIN, *PRE, "--width_mult", "inf", "--output_dir", b.path("c3_inf"))),
        Case(3, "pretrain", "--input_size 100000", huge_input),
    ]


def huge_input(b: Bench) -> Outcome:
    out = b.path("c3_huge")
    outcome = b.tool(PRETRAIN, "--dataset", "digits", "--input_size", "100000", "--threads", "1", "--output_dir", out)
    if os.path.isdir(out) and os.listdir(out):
        outcome.damage = [f"WROTE {', '.join(sorted(os.listdir(out)))} first"]
    return outcome


def class4(b: Bench, read_only: Optional[str]) -> List[Case]:
    def ro(argv_of: Callable[[Bench, str], List[str]]):
        def run(b):
            if read_only is None:
                return Outcome(None, "not measured: no read-only file system could be mounted (needs root)")
            return b.run(argv_of(b, read_only))
        return run

    runs = lambda b: b.path("runs")  # noqa: E731
    cases = [
        ("memory filter", lambda b, r: [b.script(FILTER), *MODEL, "--quiet", "--output_file", f"{r}/a.json"]),
        ("dual-core filter", lambda b, r: [b.script(DUAL), *MODEL, "--quiet", "--output_file", f"{r}/d.json"]),
        ("latency predictor", lambda b, r: [b.script(LATENCY), *MODEL, "--quiet", "--lut", f"{r}/lut.json"]),
        ("compression_calc", lambda b, r: [b.script(COMPRESSION), *MODEL, "--output_file", f"{r}/c.json"]),
        ("model_table", lambda b, r: [b.script(MODEL_TABLE), "--sizes", "32", "--models", "mobilenetv2",
                                      "--output_file", f"{r}/t.md"]),
        ("generate_results", lambda b, r: [b.script(GENERATE), "--output_dir", f"{r}/results"]),
        ("pretrain", lambda b, r: [b.script(PRETRAIN), *PRE, "--output_dir", f"{r}/pre"]),
        ("stage 1", lambda b, r: s1_args(b, "--output_dir", f"{r}/s1")),
        ("stage 2", lambda b, r: s2_args(b, b.path("runs", "s1"), "--output_dir", f"{r}/s2")),
        ("summarize_runs", lambda b, r: [b.script(SUMMARIZE), runs(b), "--csv", f"{r}/t.csv"]),
        ("plot_sweep", lambda b, r: [b.script(SWEEP), "--runs", runs(b), "--output_dir", f"{r}/sweep"]),
        ("make_report", lambda b, r: [b.script(REPORT), "--runs", runs(b), "--output", f"{r}/report.md"]),
    ]
    out = [Case(4, tool, "read-only file system", ro(args)) for tool, args in cases]
    out += [
        Case(4, "memory filter", "--output_file below a file",
             lambda b: b.tool(FILTER, *MODEL, "--quiet", "--output_file", b.path("a_file", "x.json"))),
        Case(4, "pretrain", "--output_dir below a file",
             lambda b: b.tool(PRETRAIN, *PRE, "--output_dir", b.path("a_file", "pre"))),
        Case(4, "make_report", "--output below a file",
             lambda b: b.tool(REPORT, "--runs", b.path("runs"), "--output", b.path("a_file", "r.md"))),
        Case(4, "memory filter", "--output_file an existing folder",
             lambda b: b.tool(FILTER, *MODEL, "--quiet", "--output_file", b.path("a_folder"))),
        Case(4, "compression_calc", "--output_file an existing folder",
             lambda b: b.tool(COMPRESSION, *MODEL, "--output_file", b.path("a_folder"))),
        Case(4, "summarize_runs", "--csv an existing folder",
             lambda b: b.tool(SUMMARIZE, b.path("runs"), "--csv", b.path("a_folder"))),
        Case(4, "stage 1", "deeply nested analysis JSON (200 KB)",
             lambda b: b.run([b.script(STAGE1), "--tensor_analysis_json", b.path("deep.json"), *SEARCH,
                              "--output_dir", b.path("c4_deep")])),
        Case(4, "latency predictor", "deeply nested mapping JSON",
             lambda b: b.tool(LATENCY, *MODEL, "--precision_mapping_file", b.path("deep.json"))),
        Case(4, "summarize_runs", "a folder where one summary.json is deeply nested", summarize_deep),
        Case(4, "stage 1", "--pretrained a stage-1 final.pt",
             lambda b: b.run(s1_args(b, "--output_dir", b.path("c4_final"),
                                     pretrained=b.path("runs", "s1", "final.pt")))),
        Case(4, "stage 1", "--pretrained a stage-1 supernet.pt",
             lambda b: b.run(s1_args(b, "--output_dir", b.path("c4_super"),
                                     pretrained=b.path("runs", "s1", "supernet.pt")))),
        Case(4, "stage 1", "--pretrained a pickle that would run code", malicious_pretrained),
    ]
    return out


def summarize_deep(b: Bench) -> Outcome:
    runs = b.copy_of(b.path("runs"), "c4_runs_deep")
    os.makedirs(os.path.join(runs, "deep"))
    shutil.copy(b.path("deep.json"), os.path.join(runs, "deep", "summary.json"))
    return b.tool(SUMMARIZE, runs)


def malicious_pretrained(b: Bench) -> Outcome:
    code = ("import torch, os\nclass Evil:\n    def __reduce__(self):\n        return (os.system, ('touch "
            f"{b.path('PWNED')}',))\ntorch.save({{'schema': 'adaptqnet/pretrain/1', 'x': Evil()}}, "
            f"'{b.path('evil.pt')}')\n")
    subprocess.run([b.python, "-c", code], env=b.env, check=True)
    outcome = b.run([b.script(STAGE1), "--tensor_analysis_json", b.path("analysis.json"), "--pretrained",
                     b.path("evil.pt"), *SEARCH, "--output_dir", b.path("c4_evil")])
    if os.path.exists(b.path("PWNED")):
        outcome.damage = ["THE PICKLE RAN"]
    return outcome


def class5(b: Bench) -> List[Case]:
    def report_skips(b):
        runs = b.copy_of(b.path("runs"), "c5_runs")
        os.makedirs(os.path.join(runs, "broken"))
        with open(os.path.join(runs, "broken", "summary.json"), "w") as f:
            f.write("[1, 2")
        return b.tool(REPORT, "--runs", runs, "--output", b.path("c5_report.md"))

    def sweep_blame(b):
        runs = b.path("c5_sweep")
        os.makedirs(runs)
        shutil.copytree(b.path("runs", "s1"), os.path.join(runs, "a_first"))
        path = os.path.join(runs, "a_first", "mapping.json")
        with open(path) as f:
            doc = json.load(f)
        doc["layers"].pop(next(iter(doc["layers"])))
        with open(path, "w") as f:
            json.dump(doc, f)
        return b.tool(SWEEP, "--runs", runs, "--output_dir", b.path("c5_sweep_out"))

    def sigterm(argv_of: Callable[[Bench, str], List[str]], name: str):
        def run(b):
            out = b.path(name)
            proc = b.popen(argv_of(b, out))
            deadline = time.time() + 600
            while not os.path.exists(os.path.join(out, "checkpoint_last.pt")) and proc.poll() is None \
                    and time.time() < deadline:
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            o, e = proc.communicate(timeout=120)
            return Outcome(proc.returncode, last_line(o, e, proc.returncode) if (o + e).strip()
                           else "(nothing printed)")
        return run

    def long_pretrain(b, out):
        argv = [b.script(PRETRAIN), *PRE, "--output_dir", out]
        argv[argv.index("--epochs") + 1] = "30"
        return argv

    def long_search(b, out):
        argv = s1_args(b, "--output_dir", out)
        argv[argv.index("--epochs") + 1] = "30"
        return argv

    return [
        Case(5, "make_report", "a folder where one run's summary.json is unreadable", report_skips),
        Case(5, "plot_sweep", "the first run's mapping.json misses a layer", sweep_blame),
        Case(5, "pretrain", "SIGTERM after the first checkpoint", sigterm(long_pretrain, "c5_term_pre")),
        Case(5, "stage 1", "SIGTERM after the first checkpoint", sigterm(long_search, "c5_term_s1")),
        Case(5, "stage 1", "--resume where there is no checkpoint",
             lambda b: b.run([b.script(STAGE1), "--resume", "--output_dir", b.path("c5_nothing")])),
        Case(5, "stage 2", "--resume where there is no checkpoint",
             lambda b: b.run([b.script(STAGE2), "--resume", "--output_dir", b.path("c5_nothing2")])),
    ]


def seed_copy(b: Bench) -> str:
    """The checkout's files (tracked and new, not ignored) in a folder of their own."""
    dst = b.path("seed_copy")
    if os.path.isdir(dst):
        return dst
    listed = subprocess.run(["git", "-C", b.checkout, "ls-files", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in listed:
        src = os.path.join(b.checkout, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))
    os.makedirs(b.path("bin"), exist_ok=True)
    shim = b.path("bin", "python")
    if not os.path.exists(shim):
        # a wrapper, not a symlink: a venv's interpreter finds its packages from the path it is started by
        with open(shim, "w") as f:
            f.write(f'#!/bin/sh\nexec "{b.python}" "$@"\n')
        os.chmod(shim, 0o755)
    return dst


def class6(b: Bench) -> List[Case]:
    def shell(folder: str, command: str, log: Optional[str] = None, timeout: float = 600):
        def run(b):
            root = seed_copy(b)
            env = {**b.env, "PYTHONPATH": root, "PATH": b.path("bin") + os.pathsep + os.environ["PATH"]}
            text = command.replace("<root>", root)
            outcome = b.run(f"cd {os.path.join(root, folder)} && {text}" + ("\nwait" if log else ""), shell=True,
                            env=env, timeout=timeout)
            if log:
                with open(os.path.join(root, folder, log)) as f:
                    content = f.read()
                outcome.line = last_line("", content, 1) if outcome.code is not None else outcome.line
                outcome.code = None if outcome.code is None else (1 if "error" in outcome.line or "Traceback"
                                                                  in outcome.line else 0)
                outcome.line = f"(log) {outcome.line}"
            return outcome
        return run

    search = ("nohup env PYTHONPATH=<root> python dnas_search_cifar10_mbv2.py --tensor_analysis_json "
              "../tensor_analysis_result/mbv2_cifar10_tensor_analysis_results.json --input_size 32{extra} "
              "> {log} 2>&1 &")
    return [
        Case(6, "pretrain", "python pretrain_cifar10_mobilenetv2.py --batch_size 256",
             shell("Search_CIFAR10/pretrain", "python pretrain_cifar10_mobilenetv2.py --batch_size 256")),
        Case(6, "stage 1", "nohup ... --tensor_analysis_json ...mbv2_cifar10_tensor_analysis_results.json",
             shell("Search_CIFAR10/dnas", search.format(extra="", log="mbv2_mixed_32x32_dnas_search.log"),
                   log="mbv2_mixed_32x32_dnas_search.log")),
        Case(6, "stage 1", "the same with --int_only",
             shell("Search_CIFAR10/dnas", search.format(extra=" --int_only", log="mbv2_int_only_32x32_dnas_search.log"),
                   log="mbv2_int_only_32x32_dnas_search.log")),
        Case(6, "memory filter", "--model_type mobilenetv2 --memory_threshold 512 --input_size 112",
             shell("tensor_analysis", "python tensor_memory_filter.py --model_type mobilenetv2 --memory_threshold 512 "
                                      "--input_size 112")),
        Case(6, "latency predictor", "--input_size 112 --precision_mapping_file example_precision_mapping.json",
             shell("tensor_analysis", "python tensor_latency_predictor.py --model_type mobilenetv2 --input_size 112 "
                                      "--precision_mapping_file example_precision_mapping.json")),
        Case(6, "run_all_dnas.sh", "bash run_all_dnas.sh",
             shell("Search_CIFAR10/dnas", "bash run_all_dnas.sh", timeout=180)),
    ]


# ----------------------------------------------------------------------------------------------------
# Running and printing
# ----------------------------------------------------------------------------------------------------
def mount_read_only(folder: str) -> Optional[str]:
    os.makedirs(folder, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", folder], capture_output=True)
    return folder if done.returncode == 0 else None


def run_all(checkout: str, jobs: int, only: Optional[Sequence[int]]) -> List[dict]:
    work = tempfile.mkdtemp(prefix="bad_input_table_")
    b = Bench(checkout, work)
    print(f"inputs in {work} ...", file=sys.stderr, flush=True)
    make_inputs(b)
    read_only = mount_read_only(b.path("read_only"))
    cases = [c for group in (class1(b), class2(b), class3(b), class4(b, read_only), class5(b), class6(b))
             for c in group if not only or c.klass in only]
    results: List[dict] = []

    def one(case: Case) -> dict:
        t0 = time.time()
        try:
            outcome = case.run(b)
        except Exception as exc:  # the table reports a case that could not be run, and goes on
            outcome = Outcome(None, f"case failed to run: {exc.__class__.__name__}: {exc}")
        row = {"class": case.klass, "tool": case.tool, "case": case.what, "exit": outcome.code,
               "line": outcome.line + (f" [{'; '.join(outcome.damage)}]" if outcome.damage else ""),
               "seconds": round(time.time() - t0, 1)}
        print(f"[{row['class']}] {row['tool']}: {row['case']}: exit {row['exit']}: {row['line'][:200]}",
              file=sys.stderr, flush=True)
        return row

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(one, cases))
    finally:
        if read_only:
            subprocess.run(["umount", read_only], capture_output=True)
    return results


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: Sequence[dict], before: Optional[Sequence[dict]] = None) -> str:
    out = []
    key = lambda r: (r["class"], r["tool"], r["case"])  # noqa: E731
    then = {key(r): r for r in before or []}
    for klass, title in CLASSES.items():
        mine = [r for r in rows if r["class"] == klass]
        if not mine:
            continue
        out += [f"\n**{klass}. {title}**\n"]
        if before is not None:
            out += ["| tool | case | before: exit | before: the line | after: exit | after: the line |",
                    "|---|---|--:|---|--:|---|"]
            for r in mine:
                old = then.get(key(r), {"exit": "–", "line": "(not run)"})
                out.append(f"| {cell(r['tool'])} | {cell(r['case'])} | {old['exit']} | {cell(old['line'])} | "
                           f"{r['exit']} | {cell(r['line'])} |")
        else:
            out += ["| tool | case | exit | the line |", "|---|---|--:|---|"]
            out += [f"| {cell(r['tool'])} | {cell(r['case'])} | {r['exit']} | {cell(r['line'])} |" for r in mine]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="the checkout whose tools are run (default: this one)")
    p.add_argument("--json", default=None, help="also write the rows as JSON (for --compare)")
    p.add_argument("--jobs", type=int, default=2, help="cases run at once")
    p.add_argument("--classes", default=None, help="comma-separated class numbers to run (default: all)")
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), default=None,
                   help="print one before/after table from two --json files instead of running anything")
    args = p.parse_args(argv)
    if args.compare:
        loaded = []
        for path in args.compare:
            with open(path) as f:
                loaded.append(json.load(f))
        print(markdown(loaded[1], loaded[0]), end="")
        return 0
    only = [int(c) for c in args.classes.split(",")] if args.classes else None
    rows = run_all(args.checkout, max(1, args.jobs), only)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(markdown(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
