"""Reading run directories: the one reader behind the report, the run table and the sweep.

A run directory holds ``summary.json`` (written when a run ends), ``args.json``, ``alphas.json`` and
the other files of docs/file_formats.md. Runs are read defensively: runs from older code, interrupted
runs and hand-edited files miss keys, so every value is looked up with a fallback, and whether a
summary is a complete search summary is a property of the run (``Run.problem``), not a reason to
stop reading the others. A file that is not JSON, or not a JSON object, is a problem of its own and
is reported by path.

Roles (found from the files, nothing is configured): ``stage2`` (a summary with ``"stage": 2``),
``random`` (the random-search baseline), ``uniform`` (every layer at one precision: a stage-1 run in
which every layer had one allowed precision, e.g. plain INT8 QAT, or ``--mapping uniform:P``),
``stage1`` (any other search or fine-tuned mapping), ``pretrain`` (a pretraining summary).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models import formats
from models.files import FileFormatError, read_json
from models.registry import spec_differences

SUMMARY = "summary.json"
DEPLOYMENT = "deployment.json"   # deploy/export_c.py's record of an integer export
# what must agree for two runs' accuracies and latencies to compare (strides: older summaries lack it)
COMPARE_KEYS = ("type", "width_mult", "input_size", "num_classes")


def section(mapping: Any, key: str) -> Mapping[str, Any]:
    """``mapping[key]`` when it is an object, else an empty one."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def number(value: Any) -> Optional[float]:
    """JSON numbers only (a bool is not a number); NaN and infinities count as missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Run:
    dir: str
    summary: Dict[str, Any]
    args: Dict[str, Any]
    alphas: Optional[Dict[str, Any]] = None
    kind: str = "stage1"                 # stage1 | stage2 | uniform | pretrain
    uniform_precision: Optional[str] = None
    problem: Optional[str] = None        # why this is not a complete search summary (None: it is)

    @property
    def name(self) -> str:
        return os.path.basename(os.path.normpath(self.dir))

    @property
    def accuracy(self) -> Mapping[str, Any]:
        return section(self.summary, "accuracy")

    @property
    def hardware(self) -> Mapping[str, Any]:
        return section(self.summary, "hardware")

    @property
    def model(self) -> Mapping[str, Any]:
        return section(self.summary, "model")

    @property
    def hardware_weight(self) -> Optional[float]:
        return number(self.args.get("hardware_weight"))

    @property
    def latency_target_ms(self) -> Optional[float]:
        return number(self.hardware.get("latency_target_ms", self.args.get("latency_target_ms")))

    @property
    def memory_budget_kb(self) -> Optional[float]:
        return number(self.hardware.get("memory_budget_kb", self.args.get("memory_budget_kb")))

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)


@dataclass
class RunSet:
    runs: List[Run]
    pretrain: List[Run] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)   # (path, why it was skipped)
    deployments: List[Tuple[str, Dict[str, Any]]] = field(default_factory=list)   # (path, deployment.json)


class RunReadError(ValueError):
    """A run's file cannot be read: ``why`` says what is wrong, the message names the file too."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _load_object(path: str) -> Dict[str, Any]:
    """A JSON object from ``path``; RunReadError otherwise."""
    try:
        value = read_json(path)
    except FileFormatError as exc:
        raise RunReadError(path, str(exc)[len(path) + 2:] if str(exc).startswith(path + ": ") else str(exc)) from None
    if not isinstance(value, Mapping):
        raise RunReadError(path, f"expected a JSON object, got {type(value).__name__}")
    return dict(value)


def _optional_object(path: str) -> Optional[Dict[str, Any]]:
    """A side file that adds to a run but never stops reading it."""
    if not os.path.isfile(path):
        return None
    try:
        return _load_object(path)
    except RunReadError:
        return None


def read_run(run_dir: str) -> Run:
    """The run in ``run_dir``; RunReadError when its summary.json is not a JSON object."""
    summary = _load_object(os.path.join(run_dir, SUMMARY))
    args = section(summary, "args") or _optional_object(os.path.join(run_dir, "args.json")) or {}
    alphas = _optional_object(os.path.join(run_dir, "alphas.json"))
    run = Run(os.path.abspath(run_dir), summary, dict(args), alphas)
    schema = str(summary.get("schema", ""))
    if schema.startswith(formats.kind_of(formats.PRETRAIN_SUMMARY)):
        run.kind, run.problem = "pretrain", "a pretraining summary"
        return run
    if not schema.startswith(formats.kind_of(formats.SUMMARY)):
        run.problem = f"not a search summary (schema {schema or 'missing'!r}; expected {formats.SUMMARY})"
    else:
        missing = [k for k in ("accuracy", "hardware") if not isinstance(summary.get(k), Mapping)]
        if missing:
            run.problem = f"'{missing[0]}' is missing or not an object"
    if summary.get("stage") == 2:
        run.kind = "stage2"
    elif summary.get("source") == "random":
        run.kind = "random"
    else:
        options = section(alphas or {}, "precisions")
        single = {tuple(v) for v in options.values() if isinstance(v, list)}
        histogram = section(summary, "precision_histogram")
        if options and all(isinstance(v, list) and len(v) == 1 for v in options.values()) and len(single) == 1:
            run.kind, run.uniform_precision = "uniform", next(iter(single))[0]
        elif summary.get("source") == "mapping" and len(histogram) == 1:  # --mapping uniform:P (or a file like it)
            run.kind, run.uniform_precision = "uniform", next(iter(histogram))
    return run


def find_files(root: str, names: Sequence[str]) -> Dict[str, List[str]]:
    """Every file called one of ``names`` under ``root`` (recursively, one walk), sorted by path."""
    root = os.fspath(root)
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: folder not found")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: expected a folder of runs")
    found: Dict[str, List[str]] = {name: [] for name in names}
    for folder, _, files in os.walk(root):
        for name in names:
            if name in files:
                found[name].append(os.path.join(folder, name))
    return {name: sorted(paths) for name, paths in found.items()}


def find_summaries(root: str) -> List[str]:
    """Every summary.json under ``root`` (recursively), sorted by path."""
    return find_files(root, (SUMMARY,))[SUMMARY]


def run_files(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """("a file of a run it reads", path) for every file in every run directory under ``paths``: what a
    tool that reads runs must never write over (tensor_analysis.cli.check_outputs)."""
    found = []
    for path in paths:
        summaries = [os.path.join(path, SUMMARY)] if os.path.isfile(os.path.join(path, SUMMARY)) else (
            find_summaries(path) if os.path.isdir(path) else [])
        for s in summaries:
            folder = os.path.dirname(s)
            found += [("a file of a run it reads", os.path.join(folder, f)) for f in sorted(os.listdir(folder))
                      if os.path.isfile(os.path.join(folder, f))]
    return found


def collect(paths: Sequence[str], flag: str = "--runs") -> RunSet:
    """The complete search runs in ``paths`` (each a run directory, or a folder searched recursively),
    the pretraining runs, and [(path, why)] for every summary left out. A run named directly must be
    a complete search or pretraining summary."""
    found = RunSet([])
    seen = set()
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{flag} {path}: not found")
        if not os.path.isdir(path):
            raise NotADirectoryError(f"{flag} {path}: expected a run directory or a folder of runs")
        named = os.path.isfile(os.path.join(path, SUMMARY))
        below = find_files(path, (SUMMARY, DEPLOYMENT))
        summaries = [os.path.join(path, SUMMARY)] if named else below[SUMMARY]
        if not summaries:
            raise ValueError(f"{flag} {path}: no {SUMMARY} in it or below it (is the run finished?)")
        for s in summaries:
            folder = os.path.dirname(s)
            if os.path.realpath(folder) in seen:
                continue
            seen.add(os.path.realpath(folder))
            try:
                run = read_run(folder)
            except RunReadError as exc:
                if named:
                    raise
                found.problems.append((s, exc.why))
                continue
            if run.summary.get("source") == formats.RANDOM_CANDIDATE_SOURCE:
                continue  # one of a random search's candidates: its run's own summary speaks for it
            if run.kind == "pretrain":
                found.pretrain.append(run)
            elif run.problem is None:
                found.runs.append(run)
            elif named:
                raise ValueError(f"{s}: {run.problem}")
            else:
                found.problems.append((s, run.problem))
        for where in below[DEPLOYMENT]:
            try:
                doc = read_json(where, "deployment record")
                formats.check_schema(doc, formats.DEPLOYMENT, where, "deployment record")
            except (OSError, ValueError) as exc:
                found.problems.append((where, str(exc).split(": ", 1)[-1]))
                continue
            found.deployments.append((where, doc))
    return found


def comparable(run: Run, main: Run) -> bool:
    """Same model, dataset and hardware profile: only then do accuracies and latencies compare."""
    return (not spec_differences(main.model, run.model, COMPARE_KEYS)
            and run.hardware.get("profile") == main.hardware.get("profile")
            and run.args.get("dataset") == main.args.get("dataset"))
