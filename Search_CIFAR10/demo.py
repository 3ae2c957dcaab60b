"""The demo pipeline (``make demo``): every step of AdaptQNet, on the offline default, as the commands a
user would type.

Default: scikit-learn's digits, MobileNetV2 width 0.35 at 32 px, the STM32H747 profile and a 128 KB
activation-RAM budget. For that network the all-FP32 peak is 416 KB and the all-INT8 peak 104 KB, so
the memory filter removes FP32 (and, in the two widest depthwise layers, FP16) from some layers while
INT8 fits everywhere. Steps, each one of the user-facing command-line tools with its real flags:

  pretrain    FP32 pretraining                               → pretrain/best.pt
  filter      memory filter at the RAM budget                → analysis/<model>_<budget>kb.json
  dual        dual-core memory filter (M7 + M4)              → analysis/<model>_<budget>kb_dual_<hw>.json
  lut         latency table (+ the all-INT8 prediction)      → analysis/lut_<hw>.json
  stage1      stage-1 search, latency target = 1.10 × all-INT8, derive, fine-tune → search/stage1/
  int8        uniform INT8 reference: the same script restricted to int8 (plain QAT) → search/int8/
  sweep_*     short stage-1 runs over λ without a target (the accuracy/latency trade-off) → search/lam*/
  stage2      dual-core search on the stage-1 result         → stage2/
  export      the stage-1 network as integer C, built and run on the host (gcc) and, when the ARM
              toolchain is installed, on a Cortex-M7 under QEMU, then profiled there (instructions
              per layer, profile.json); bit-exact check → deploy/stage1_c/
  summary     one table of the stage-1 runs (summarize_runs.py)
  report      report.md + report.html (make_report.py)

A step is done when its final output exists; re-running skips finished steps, continues interrupted
searches from their checkpoints (``--resume``), and runs the rest. Independent steps run side by side
(``--jobs``, default 2 on a machine with 2+ cores), each with ``--threads 1``: on a small CPU two
single-threaded processes get more done than one process with two threads, and a thread count above
the free cores slows PyTorch down many times over on a busy machine.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from models.files import read_json
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.reporting.report import memory_filter_effect
from tensor_analysis.lut import lut_latency_ms

PRETRAIN = "Search_CIFAR10/pretrain/pretrain_cifar10_mobilenetv2.py"
MEMORY_FILTER = "tensor_analysis/tensor_memory_filter.py"
DUAL_FILTER = "tensor_analysis/tensor_memory_filter_dualcore.py"
LATENCY = "tensor_analysis/tensor_latency_predictor.py"
STAGE1 = "Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py"
STAGE2 = "Search_CIFAR10/dnas_multicore/dnas_cifar10_search_multicore_mbv2.py"
SUMMARIZE = "Search_CIFAR10/dnas/summarize_runs.py"
REPORT = "Search_CIFAR10/make_report.py"
EXPORT_C = "deploy/export_c.py"


@dataclass
class DemoConfig:
    """What the demo runs. The epoch counts are sized so that the whole demo fits in minutes on two CPU
    cores (docs/experiments.md §6); they are far below what a real search wants."""

    output_dir: str = os.path.join(REPO_ROOT, "runs", "demo")
    dataset: str = "digits"
    model: str = "mobilenetv2"
    width_mult: float = 0.35
    input_size: int = 32
    hardware: str = "stm32h747"
    memory_budget_kb: float = 128.0
    latency_slack: float = 1.10          # stage 1's latency target = this × the all-INT8 latency
    pretrain_epochs: int = 6
    search_epochs: int = 3
    search_warmup_epochs: int = 1
    finetune_epochs: int = 2
    int8_finetune_epochs: int = 2
    sweep_lambdas: Sequence[float] = (0.0, 1.0, 5.0)
    sweep_epochs: int = 2
    sweep_finetune_epochs: int = 1
    stage2_epochs: int = 2
    stage2_finetune_epochs: int = 1
    stage2_topk: int = 4
    # stage 2 mixes every option of an opened layer exactly (one convolution per distinct precision);
    # int8 parts only keep that to a handful of options per layer instead of ~100 (docs/experiments.md §3)
    stage2_precisions: str = "int8"
    # None: the searches' own default ($ADAPTQNET_COMPILE, else auto; docs/experiments.md §4)
    compile: Optional[str] = None
    threads: int = 1
    jobs: int = 2
    seed: int = 0                        # --seed of pretraining and every search (benchmarks/demo_seeds.py)

    def path(self, *parts: str) -> str:
        return os.path.join(self.output_dir, *parts)

    @property
    def model_tag(self) -> str:
        # the memory filter's own naming: <model>_w<width>_s<size>_<threshold>kb.json
        return f"{self.model}_w{self.width_mult}_s{self.input_size}"

    @property
    def budget_tag(self) -> str:
        return f"{self.memory_budget_kb:g}kb"

    @property
    def analysis_file(self) -> str:
        return self.path("analysis", f"{self.model_tag}_{self.budget_tag}.json")

    @property
    def dual_file(self) -> str:
        return self.path("analysis", f"{self.model_tag}_{self.budget_tag}_dual_{self.hardware}.json")

    @property
    def lut_file(self) -> str:
        return self.path("analysis", f"lut_{self.hardware}.json")

    @property
    def int8_prediction_file(self) -> str:
        return self.path("analysis", f"prediction_int8_{self.hardware}.json")


@dataclass
class Step:
    """One command of the pipeline. ``argv`` is built when the step starts (a flag may depend on an
    earlier step's output); ``resume_argv`` continues an interrupted run when ``resume_file`` exists."""

    name: str
    title: str
    argv: Callable[[], List[str]]
    done_file: str
    needs: Sequence[str] = ()
    resume_file: Optional[str] = None
    resume_argv: Optional[Callable[[], List[str]]] = None
    after: Optional[Callable[[], None]] = None
    always: bool = False                 # run even when done_file exists (cheap summaries)
    log: List[str] = field(default_factory=list)


def _model_flags(cfg: DemoConfig) -> List[str]:
    return ["--model_type", cfg.model, "--width_mult", f"{cfg.width_mult:g}", "--input_size", str(cfg.input_size)]


def _run_flags(cfg: DemoConfig) -> List[str]:
    return ["--threads", str(cfg.threads)] + (["--compile", cfg.compile] if cfg.compile else []) + _seed_flags(cfg)


def _seed_flags(cfg: DemoConfig) -> List[str]:
    return ["--seed", str(cfg.seed)] if cfg.seed else []


def all_int8_latency_ms(lut_path: str) -> float:
    """The all-INT8 network's latency by the table: the reference the latency target scales."""
    lut = read_json(lut_path, "latency table")
    return lut_latency_ms(lut, {name: "int8" for name in lut["layers"]})


def latency_target_ms(cfg: DemoConfig) -> float:
    return round(cfg.latency_slack * all_int8_latency_ms(cfg.lut_file), 3)


def search_flags(cfg: DemoConfig, out: str, epochs: int, warmup: int, finetune: int) -> List[str]:
    return [STAGE1, "--tensor_analysis_json", cfg.analysis_file, "--latency_lut", cfg.lut_file,
            "--hardware", cfg.hardware, "--pretrained", cfg.path("pretrain", "best.pt"),
            "--dataset", cfg.dataset, "--epochs", str(epochs), "--warmup_epochs", str(warmup),
            "--finetune_epochs", str(finetune), "--memory_budget_kb", f"{cfg.memory_budget_kb:g}",
            "--output_dir", out] + _run_flags(cfg)


def lambda_tag(value: float) -> str:
    return f"lam{value:g}"


def plan(cfg: DemoConfig) -> List[Step]:
    """The pipeline's steps in the order they are started (when their inputs exist)."""
    p = cfg.path
    steps = [
        Step("pretrain", "FP32 pretraining: the network every search starts from",
             lambda: [PRETRAIN, "--dataset", cfg.dataset, "--model", cfg.model, "--width_mult", f"{cfg.width_mult:g}",
                      "--input_size", str(cfg.input_size), "--epochs", str(cfg.pretrain_epochs),
                      "--warmup_epochs", "1", "--output_dir", p("pretrain"), "--resume", "--threads", str(cfg.threads)]
             + _seed_flags(cfg),
             p("pretrain", "summary.json")),
        Step("filter", f"memory filter: precisions each layer may use within {cfg.memory_budget_kb:g} KB of "
                       f"activation RAM",
             lambda: [MEMORY_FILTER] + _model_flags(cfg) + ["--memory_threshold", f"{cfg.memory_budget_kb:g}",
                                                            "--output_file", cfg.analysis_file],
             cfg.analysis_file, after=lambda: print_filter_effect(cfg)),
        Step("dual", f"dual-core memory filter: ways to split each layer over the {cfg.hardware}'s two cores",
             lambda: [DUAL_FILTER] + _model_flags(cfg) + ["--memory_threshold", f"{cfg.memory_budget_kb:g}",
                                                          "--hardware", cfg.hardware, "--quiet",
                                                          "--output_file", cfg.dual_file],
             cfg.dual_file),
        Step("lut", f"latency table of every layer × precision (× dual-core split) on {cfg.hardware}; "
                    "totals of the all-INT8 network",
             lambda: [LATENCY, "--analysis", cfg.analysis_file, "--precision", "int8", "--hardware", cfg.hardware,
                      "--quiet", "--output_file", cfg.int8_prediction_file, "--lut", cfg.lut_file],
             cfg.lut_file, needs=("filter",), after=lambda: print_latency_target(cfg)),
        Step("stage1", "stage-1 search with a latency target, then derive + QAT fine-tune",
             lambda: search_flags(cfg, p("search", "stage1"), cfg.search_epochs, cfg.search_warmup_epochs,
                                  cfg.finetune_epochs) + ["--latency_target_ms", f"{latency_target_ms(cfg):g}"],
             p("search", "stage1", "summary.json"), needs=("pretrain", "filter", "lut"),
             resume_file=p("search", "stage1", "checkpoint_last.pt"),
             resume_argv=lambda: [STAGE1, "--resume", "--output_dir", p("search", "stage1")]),
        Step("stage2", f"stage 2: split the {cfg.stage2_topk} costliest layers over the two cores, fine-tune",
             lambda: [STAGE2, "--stage1_dir", p("search", "stage1"), "--hardware", cfg.hardware,
                      "--dual_analysis_json", cfg.dual_file, "--latency_lut", cfg.lut_file,
                      "--topk", str(cfg.stage2_topk), "--dual_precisions", cfg.stage2_precisions,
                      "--epochs", str(cfg.stage2_epochs), "--warmup_epochs", "0",
                      "--finetune_epochs", str(cfg.stage2_finetune_epochs), "--output_dir", p("stage2")]
             + _run_flags(cfg),
             p("stage2", "summary.json"), needs=("stage1", "dual", "lut"),
             resume_file=p("stage2", "checkpoint_last.pt"),
             resume_argv=lambda: [STAGE2, "--resume", "--output_dir", p("stage2")]),
        Step("int8", "uniform INT8 reference: the search script with int8 as every layer's only option (plain QAT)",
             lambda: search_flags(cfg, p("search", "int8"), 1, 1, cfg.int8_finetune_epochs)
             + ["--int_only", "--protect", "*=int8"],
             p("search", "int8", "summary.json"), needs=("pretrain", "filter", "lut"),
             resume_file=p("search", "int8", "checkpoint_last.pt"),
             resume_argv=lambda: [STAGE1, "--resume", "--output_dir", p("search", "int8")]),
    ]
    for lam in cfg.sweep_lambdas:
        out = p("search", lambda_tag(lam))
        steps.append(Step(
            f"sweep_{lambda_tag(lam)}", f"λ sweep: short stage-1 run at λ = {lam:g}, no latency target",
            lambda out=out, lam=lam: search_flags(cfg, out, cfg.sweep_epochs, 0, cfg.sweep_finetune_epochs)
            + ["--hardware_weight", f"{lam:g}"],
            os.path.join(out, "summary.json"), needs=("pretrain", "filter", "lut"),
            resume_file=os.path.join(out, "checkpoint_last.pt"),
            resume_argv=lambda out=out: [STAGE1, "--resume", "--output_dir", out]))
    searches = [s.name for s in steps if s.name not in ("pretrain", "filter", "dual", "lut")]
    steps.append(Step(
        "export", "integer C export of the stage-1 network, built and run on the host"
                  + (" and on a Cortex-M7 (QEMU), then profiled there (instructions per layer)"
                     if m7_toolchain_installed() else
                     " (no ARM toolchain: the Cortex-M7 build and its profile are skipped, README 'Deployment')"),
        lambda: [EXPORT_C, "--run_dir", p("search", "stage1"), "--output_dir", p("deploy", "stage1_c"),
                 "--run", "host"] + (["--run", "m7", "--profile"] if m7_toolchain_installed() else []),
        p("deploy", "stage1_c", "deployment.json"), needs=("stage1",), after=lambda: print_profile_status(cfg)))
    steps += [
        Step("summary", "one table of the stage-1 runs",
             lambda: [SUMMARIZE, p("search"), "--markdown", p("search", "runs.md")],
             p("search", "runs.md"), needs=tuple(searches), always=True),
        Step("report", "the report: report.md and a self-contained report.html",
             lambda: [REPORT, "--runs", cfg.output_dir, "--output", p("report.md")],
             p("report.html"), needs=tuple(searches) + ("export",), always=True),
    ]
    return steps


# ----------------------------------------------------------------------------------------------------
# What the demo says between steps
# ----------------------------------------------------------------------------------------------------
def m7_toolchain_installed() -> bool:
    """The Cortex-M7 cross-compiler and the emulator the export's m7 target needs."""
    return all(shutil.which(tool) for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"))


def print_profile_status(cfg: DemoConfig) -> None:
    """Where the export's profile is (deployment.json's ``profile``), or that it was skipped."""
    path = cfg.path("deploy", "stage1_c", "deployment.json")
    record = read_json(path, "deployment record") if os.path.isfile(path) else {}
    profile = record.get("profile") if isinstance(record, dict) else None
    if isinstance(profile, dict) and profile.get("file"):
        print(f"  profile: {os.path.join(os.path.dirname(path), profile['file'])} ({profile.get('count'):,} "
              f"{profile.get('counter')} per image on {profile.get('target')}; the report compares them per layer)",
              flush=True)
    else:
        print("  profile skipped: " + ("no ARM toolchain (arm-none-eabi-gcc, qemu-system-arm)"
                                       if not m7_toolchain_installed() else
                                       "this export was made without --profile (delete deployment.json to redo it)"),
              flush=True)


def print_filter_effect(cfg: DemoConfig) -> None:
    effect = memory_filter_effect(cfg.analysis_file)
    peaks = effect["uniform_peak_kb"]
    print(f"  budget {cfg.memory_budget_kb:g} KB: all-FP32 peak {peaks.get('fp32', float('nan')):.1f} KB, "
          f"all-INT8 peak {peaks.get('int8', float('nan')):.1f} KB", flush=True)
    if not effect["restricted"]:
        print("  the memory filter removed no option at this budget", flush=True)
    for precision, names in effect["removed_by_precision"].items():
        print(f"  {precision} removed from {len(names)} layer(s): {', '.join(names)}", flush=True)


def print_latency_target(cfg: DemoConfig) -> None:
    int8 = all_int8_latency_ms(cfg.lut_file)
    print(f"  all-INT8 latency by the table {int8:.2f} ms → stage-1 latency target "
          f"{cfg.latency_slack:g} × {int8:.2f} = {latency_target_ms(cfg):g} ms", flush=True)


# ----------------------------------------------------------------------------------------------------
# Running the steps
# ----------------------------------------------------------------------------------------------------
def display(argv: Sequence[str]) -> str:
    """The command as a user would type it from the repository root."""
    def rel(a: str) -> str:
        if os.path.isabs(a) and (a == REPO_ROOT or a.startswith(REPO_ROOT + os.sep)):
            return os.path.relpath(a, REPO_ROOT)
        return a
    return "python " + " ".join(shlex.quote(rel(a)) for a in argv)


class Runner:
    """Starts steps when their inputs exist, at most ``jobs`` at once; each child's output is streamed
    line by line with its step name in front."""

    def __init__(self, steps: List[Step], jobs: int, python: str = sys.executable, out=sys.stdout):
        self.steps = {s.name: s for s in steps}
        self.order = [s.name for s in steps]
        self.jobs = max(1, jobs)
        self.python = python
        self.out = out
        self.lock = threading.Lock()
        self.done: Dict[str, str] = {}        # name → "ran" / "reused"
        self.times: Dict[str, float] = {}
        self.running: Dict[str, tuple] = {}   # name → (Popen, reader thread, start time)
        self.failed: Optional[str] = None

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        width = max(len(n) for n in self.order)
        for raw in iter(proc.stdout.readline, b""):
            # tqdm redraws with carriage returns; keep the last state of the line
            line = raw.decode("utf-8", "replace").rstrip("\n").split("\r")[-1].rstrip()
            if line:
                self.say(f"[{name:<{width}}] {line}")

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _start(self, step: Step) -> None:
        resuming = step.resume_file and step.resume_argv and os.path.isfile(step.resume_file)
        argv = (step.resume_argv if resuming else step.argv)()
        run_dir = os.path.dirname(step.resume_file) if step.resume_file else None
        if not resuming and run_dir and os.path.isdir(run_dir) and os.listdir(run_dir):
            # a run that stopped before its first checkpoint: nothing to continue, so its files are replaced
            argv = argv + ["--overwrite"]
        self.say(f"\n==> [{step.name}] {step.title}" + (" (continuing the interrupted run)" if resuming else ""))
        self.say(f"$ {display(argv)}")
        proc = subprocess.Popen([self.python] + argv, cwd=REPO_ROOT, env=self._env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        reader = threading.Thread(target=self._pump, args=(step.name, proc), daemon=True)
        reader.start()
        self.running[step.name] = (proc, reader, time.time())

    def _ready(self, step: Step) -> bool:
        return all(n in self.done or n not in self.steps for n in step.needs)

    def _reap(self) -> None:
        for name, (proc, reader, t0) in list(self.running.items()):
            if proc.poll() is None:
                continue
            reader.join()
            del self.running[name]
            self.times[name] = time.time() - t0
            step = self.steps[name]
            if proc.returncode != 0 or not os.path.exists(step.done_file):
                self.failed = name
                self.say(f"<== [{name}] FAILED (exit {proc.returncode}) after {self.times[name]:.0f} s")
                continue
            self.say(f"<== [{name}] done in {self.times[name]:.0f} s")
            if step.after:
                with self.lock:
                    step.after()
            self.done[name] = "ran"

    def stop(self) -> None:
        for name, (proc, reader, _) in list(self.running.items()):
            if proc.poll() is None:
                self.say(f"stopping [{name}] (pid {proc.pid}); it continues from its checkpoint next time")
                proc.terminate()
        for name, (proc, reader, _) in list(self.running.items()):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
        self.running.clear()

    def run(self) -> bool:
        for name in self.order:
            step = self.steps[name]
            if not step.always and os.path.exists(step.done_file):
                self.done[name] = "reused"
                self.say(f"==> [{name}] already done ({os.path.relpath(step.done_file, REPO_ROOT)} exists)")
                if step.after:
                    step.after()
        try:
            while self.failed is None:
                pending = [self.steps[n] for n in self.order if n not in self.done and n not in self.running]
                if not pending and not self.running:
                    return True
                for step in pending:
                    if len(self.running) >= self.jobs:
                        break
                    if self._ready(step):
                        self._start(step)
                if not self.running:
                    missing = [n for s in pending for n in s.needs if n not in self.done]
                    raise RuntimeError(f"demo plan: nothing can start; waiting on {', '.join(missing)}")
                time.sleep(0.2)
                self._reap()
        except BaseException:  # Ctrl-C, SIGTERM (tensor_analysis.cli.Terminated), a bug: the steps stop with us
            self.stop()
            raise
        self.stop()
        return False


def clear_outputs(cfg: DemoConfig) -> None:
    """--fresh: remove the demo's own folder (only that)."""
    if os.path.isdir(cfg.output_dir):
        print(f"--fresh: removing {cfg.output_dir}", flush=True)
        shutil.rmtree(cfg.output_dir)


def run_demo(cfg: DemoConfig, fresh: bool = False) -> int:
    if fresh:
        clear_outputs(cfg)
    os.makedirs(cfg.output_dir, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"AdaptQNet demo → {cfg.output_dir}\n"
          f"{cfg.model} width {cfg.width_mult:g} at {cfg.input_size} px on {cfg.dataset}, hardware profile "
          f"{cfg.hardware}, activation-RAM budget {cfg.memory_budget_kb:g} KB\n"
          f"commands run from {REPO_ROOT} with PYTHONPATH set to it; python = {sys.executable}\n"
          f"{cfg.jobs} step(s) at once, --threads {cfg.threads} each; CPU cores {os.cpu_count()}, "
          f"load average {load:.2f}", flush=True)
    t0 = time.time()
    runner = Runner(plan(cfg), cfg.jobs)
    ok = runner.run()
    elapsed = time.time() - t0
    ran = [n for n, how in runner.done.items() if how == "ran"]
    print(f"\n{'finished' if ok else 'stopped'} in {elapsed / 60:.1f} min ({len(ran)} step(s) run, "
          f"{len(runner.done) - len(ran)} reused)", flush=True)
    if not ok:
        print(f"error: step {runner.failed} failed; its output is above. Fix it and run again: finished "
              f"steps are kept", file=sys.stderr)
        return 1
    print(f"report: {cfg.path('report.html')} (open it in a browser) and {cfg.path('report.md')}")
    print(f"the accuracies come from one seed ({cfg.seed}) and move by 2-3 points from seed to seed, more than "
          f"the networks differ: docs/experiments.md §6 (benchmarks/demo_seeds.py)")
    return 0
