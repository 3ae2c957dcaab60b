"""Test-session set-up and the helpers test files share.

* One CPU thread: tests run tiny tensors, where threads buy nothing, and on a shared, loaded machine
  OpenMP's spin-waiting between threads makes each op up to ~100x slower (a width-0.1 MobileNetV2
  step: 0.2 s on one thread, 17 s on two while other jobs run).
* Eager quantizers: torch.compile costs seconds per graph on first use, so tests use the eager path
  unless ADAPTQNET_COMPILE is set or a test turns compilation on itself (tests/test_quantizers.py
  does, to check that the fused path computes the same numbers).
* No internet: every URL goes to a proxy that refuses at once (nothing listens on port 9), so a test
  that forgets ``--dataset digits`` fails in a second instead of downloading CIFAR-10 (170 MB).
Subprocesses started by tests inherit these settings through the environment.

Tests that start interpreters or other processes (the command-line tools as a user runs them) get them
from the ``run_process`` / ``spawn_process`` fixtures (``run_python`` / ``spawn_python`` for Python) and
are marked ``integration`` by that alone, so ``make test-fast`` (``-m "not integration"``) leaves them
out.
"""
import os
import re
import subprocess
import sys

os.environ.setdefault("ADAPTQNET_COMPILE", "off")
os.environ.setdefault("OMP_NUM_THREADS", "1")
for _proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[_proxy] = "http://127.0.0.1:9"
os.environ.pop("no_proxy", None)
os.environ.pop("NO_PROXY", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCESS_FIXTURES = {"run_process", "spawn_process"}


def _env(env=None, pythonpath=True):
    """The test session's environment (one thread, eager quantizers), the repository on PYTHONPATH
    unless ``pythonpath`` is False (a script must also run without it), plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**base, **({"PYTHONPATH": REPO} if pythonpath else {}), **(env or {})}


@pytest.fixture(scope="session")
def run_process():
    """``run(cmd, cwd=REPO, env=None, timeout=300, pythonpath=True)``: a finished process (text output)."""
    def run(cmd, cwd=REPO, env=None, timeout=300, pythonpath=True):
        return subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(env, pythonpath), capture_output=True,
                              text=True, timeout=timeout)
    return run


@pytest.fixture(scope="session")
def spawn_process():
    """``spawn(cmd, cwd=REPO, env=None, pythonpath=True, **popen)``: a running process (a test that
    interrupts it, or runs several at once)."""
    def spawn(cmd, cwd=REPO, env=None, pythonpath=True, **popen):
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=_env(env, pythonpath), text=True, **popen)
    return spawn


@pytest.fixture(scope="session")
def run_python(run_process):
    """``run_process`` of ``python argv...``: a project script or ``-c`` code in a fresh interpreter."""
    return lambda argv, **kw: run_process([sys.executable, *argv], **kw)


@pytest.fixture(scope="session")
def spawn_python(spawn_process):
    return lambda argv, **kw: spawn_process([sys.executable, *argv], **kw)


def is_warning(line: str) -> bool:
    """Python warnings (and the source line they quote), our tools' "warning: ..." lines, torch's C++ logs."""
    return (line.startswith("warning:") or "Warning:" in line or line.startswith("  warnings.warn")
            or re.match(r"^[WI]\d{4} ", line) is not None)


@pytest.fixture(scope="session")
def error_line():
    """The one "error: ..." line a command-line tool prints for bad input, besides warnings (failing the
    test when it prints more, a traceback, or exits 0)."""
    def one(result):
        assert result.returncode != 0, f"exit 0 for bad input:\n{result.stdout[-2000:]}"
        lines = [line for line in result.stderr.strip().splitlines() if line.strip() and not is_warning(line)]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, \
            result.stderr[-3000:]
        return lines[0]
    return one


@pytest.fixture
def run_main(capsys):
    """``run_main(main, argv)``: a tool's entry point through run_cli, as its ``__main__`` runs it, in this
    process (no interpreter to start): (exit code, stderr lines)."""
    from tensor_analysis.cli import run_cli

    def run(main, argv):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [str(a) for a in argv])
        return exit_info.value.code, capsys.readouterr().err.strip().splitlines()
    return run


class TinyRuns:
    """A MobileNetV2 of width 0.1 at 16 px on digits: its analysis (a.json) and latency table (lut.json), a
    pretraining run (pre/) and a stage-1 run (runs/s1/), one epoch each, and the flags that made them."""

    SIZE = ["--model_type", "mobilenetv2", "--width_mult", "0.1", "--input_size", "16"]
    DATA = ["--dataset", "digits", "--limit_train", "32", "--limit_eval", "32", "--batch_size", "16",
            "--device", "cpu", "--threads", "1"]
    SEARCH = DATA + ["--epochs", "1", "--warmup_epochs", "0", "--finetune_epochs", "0", "--compile", "off"]
    PRETRAIN = DATA + ["--width_mult", "0.1", "--input_size", "16", "--epochs", "1", "--warmup_epochs", "0"]

    def __init__(self, root):
        self.root = root

    def stage1_argv(self, *extra, pretrained=None):
        return ["--tensor_analysis_json", self.root / "a.json", "--latency_lut", self.root / "lut.json",
                "--pretrained", pretrained or self.root / "pre" / "best.pt", *self.SEARCH, *extra]

    def stage2_argv(self, *extra):
        return ["--stage1_dir", self.root / "runs" / "s1", "--layers", "all", *self.SEARCH, *extra]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """TinyRuns, made once per test process, in-process with the tools' own entry points."""
    import argparse
    from Search_CIFAR10.dnas.stage1 import add_stage1_args, run_stage1
    from Search_CIFAR10.pretrain.trainer import build_parser, run_pretrain
    from tensor_analysis import tensor_latency_predictor, tensor_memory_filter
    runs = TinyRuns(tmp_path_factory.mktemp("tiny_runs"))
    tensor_memory_filter.main(TinyRuns.SIZE + ["--memory_threshold", "1024", "--quiet", "--output_file",
                                               str(runs.root / "a.json")])
    tensor_latency_predictor.main(["--analysis", str(runs.root / "a.json"), "--quiet", "--lut",
                                   str(runs.root / "lut.json")])
    run_pretrain(build_parser().parse_args(TinyRuns.PRETRAIN + ["--output_dir", str(runs.root / "pre")]))
    parser = argparse.ArgumentParser()
    add_stage1_args(parser)
    run_stage1(parser.parse_args([str(a) for a in runs.stage1_argv("--output_dir", runs.root / "runs" / "s1")]))
    return runs


def pytest_collection_modifyitems(config, items):
    for item in items:
        if PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
