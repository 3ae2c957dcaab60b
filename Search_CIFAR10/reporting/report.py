"""The AdaptQNet report: one page that answers which precision each layer gets on an MCU, what it costs
and what accuracy it keeps, built from any set of run directories.

    build_report(["runs/demo"], "runs/demo/report.md")    # also writes report.html and report_files/

Inputs are the files the tools write (docs/file_formats.md): each run directory's ``summary.json``
(``adaptqnet/summary/1``; ``"stage": 2`` for a dual-core run), ``args.json``, ``alphas.json`` and its
PNGs, and the memory filter's ``analysis.json`` that a stage-1 run names in ``args.tensor_analysis_json``.
A folder that is not itself a run is searched for runs below it.

The runs play these roles (found from the files, nothing is configured):

* **stage 2**: a summary with ``"stage": 2``; its ``stage1.dir`` names its stage-1 run.
* **uniform reference**: a stage-1 run in which every layer had exactly one allowed precision (its
  alphas.json), e.g. the search script with ``--int_only --protect '*=int8'``: plain INT8 QAT.
* **stage 1** (the main result): the run a stage-2 run started from; else the first searched run with
  a latency target; else the first searched run. ``main=`` picks another.
* every searched stage-1 run is a point of the accuracy/latency plot (a λ sweep); runs for another
  model, dataset or hardware profile than the main one are listed but not compared.

FP32 figures come from the main run: its ``fp32_test`` accuracy (the pretrained network, evaluated on
the same test split) and ``hardware.references.fp32``; all-INT8 hardware figures from
``hardware.references.int8``. What no given run measured is left out with a note.

Outputs: ``report.md`` (figures in ``<stem>_files/``, linked relatively) and ``report.html``, the same
content with every figure embedded as base64, so the one file can be mailed or archived.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models.files import atomic_write, read_json, write_text_atomic
from models.precisions import PRECISION_ORDER

from .deployment_profile import DEFAULT_KERNEL_PROFILE, layer_comparison
from .document import Document, Figure
from .figures import (pareto_front, plot_alpha_evolution, plot_pareto, plot_precision_map, plot_training_curves,
                      read_log_csv)
from .run_table import format_value, summary_row
from .runs import Run, collect, comparable, number, section


def choose_main(runs: Sequence[Run], main: Optional[str] = None) -> Optional[Run]:
    stage1 = [r for r in runs if r.kind == "stage1"]
    if main is not None:
        want = os.path.realpath(main)
        for r in runs:
            if os.path.realpath(r.dir) == want:
                if r.kind == "stage2":
                    raise ValueError(f"--main {main}: a stage-2 run; name its stage-1 run")
                return r
        raise ValueError(f"--main {main}: not one of the runs given")
    for r in runs:
        if r.kind == "stage2":
            s1 = section(r.summary, "stage1").get("dir")
            for c in stage1:
                if isinstance(s1, str) and os.path.realpath(c.dir) == os.path.realpath(s1):
                    return c
    targeted = [r for r in stage1 if r.latency_target_ms is not None]
    return (targeted or stage1 or [None])[0]


# ----------------------------------------------------------------------------------------------------
# The memory filter's effect
# ----------------------------------------------------------------------------------------------------
def memory_filter_effect(analysis: Any) -> Dict[str, Any]:
    """Which options the memory filter removed: ``{"threshold_kb", "precisions", "uniform_peak_kb":
    {p: KB}, "restricted": [{"name", "op", "live_kb": {p: KB}, "removed": [...], "allowed": [...]}],
    "removed_by_precision": {p: [layer names]}}`` from an analysis.json object or its path."""
    where = analysis if isinstance(analysis, str) else "analysis"
    if isinstance(analysis, str):
        # only the per-layer options and totals are read: no need to rebuild the operator graph
        analysis = read_json(analysis, "analysis file")
    if not isinstance(analysis, Mapping) or not isinstance(analysis.get("layers"), list):
        raise ValueError(f"{where}: expected an analysis.json object with 'layers'")
    candidates = [p for p in analysis.get("precisions", PRECISION_ORDER)]
    restricted, by_precision = [], {p: [] for p in candidates}
    for layer in analysis["layers"]:
        allowed = list(layer.get("allowed_precisions", candidates))
        removed = [p for p in candidates if p not in allowed]
        if removed:
            live = {p: b["live"] / 1024.0 for p, b in section(layer, "bytes").items()
                    if isinstance(b, Mapping) and number(b.get("live")) is not None}
            restricted.append({"name": layer.get("name"), "op": layer.get("op"), "live_kb": live,
                               "removed": removed, "allowed": allowed})
            for p in removed:
                by_precision[p].append(layer.get("name"))
    peaks = section(section(analysis, "totals"), "peak_ram_bytes")
    return {"threshold_kb": number(analysis.get("memory_threshold_kb")), "precisions": candidates,
            "uniform_peak_kb": {p: v / 1024.0 for p, v in peaks.items() if number(v) is not None},
            "restricted": restricted, "removed_by_precision": {p: n for p, n in by_precision.items() if n}}


# ----------------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------------
def fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def histogram_text(histogram: Any) -> str:
    if not isinstance(histogram, Mapping) or not histogram:
        return "–"
    keys = [p for p in PRECISION_ORDER if p in histogram] + [k for k in histogram if k not in PRECISION_ORDER]
    return ", ".join(f"{k} {histogram[k]}" for k in keys)


def precisions_text(row: Mapping[str, Any]) -> str:
    """The precision column of the headline table: uniform rows say so, searched ones count layers."""
    if not row.get("histogram"):
        return "all " + row["key"] if row["key"] in PRECISION_ORDER else "–"
    text = histogram_text(row["histogram"])
    return text + (f", {row['split_layers']} split over two cores" if row.get("split_layers") else "")


def test_split_size(run: Run) -> Optional[int]:
    """Images in the run's test split (split.json), to read accuracy differences against."""
    path = run.file("split.json")
    if not os.path.isfile(path):
        return None
    try:
        split = read_json(path, "data split")
    except ValueError:
        return None
    indices = split.get("test_indices") if isinstance(split, Mapping) else None
    return len(indices) if isinstance(indices, list) and indices else None


def _rel(path: str, start: str) -> str:
    try:
        return os.path.relpath(path, start)
    except ValueError:   # another drive (Windows)
        return path


def budget_of(main: Run) -> Tuple[Optional[float], Optional[Dict[str, Any]], Optional[str]]:
    """(RAM budget in KB, the memory filter's effect, the analysis path): the search's
    --memory_budget_kb, else the analysis file's threshold. The analysis is the run's own copy (runs of
    older versions: the path args.json records)."""
    path = main.file("analysis.json")
    effect, path = None, path if os.path.isfile(path) else main.args.get("tensor_analysis_json")
    if isinstance(path, str) and os.path.isfile(path):
        try:
            effect = memory_filter_effect(path)
        except (ValueError, OSError):
            effect = None
    budget = main.memory_budget_kb
    if budget is None and effect is not None:
        budget = effect["threshold_kb"]
    return budget, effect, path if effect is not None else None


# ----------------------------------------------------------------------------------------------------
# Building the report
# ----------------------------------------------------------------------------------------------------
@dataclass
class Report:
    document: Document
    title: str
    main: Run
    stage2: Optional[Run]
    uniform: Dict[str, Run]
    sweep: List[Run]
    points: List[Dict[str, Any]]
    result_rows: List[Dict[str, Any]]
    skipped: List[Tuple[str, str]]      # (summary.json, why it was left out)


def _png(path: str) -> Optional[bytes]:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(b"\x89PNG"):
            return data
    return None


def _plot_to_bytes(plot, *args, **kwargs) -> bytes:
    """Draw with one of visualization_utils' functions into memory (they write files atomically)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "figure.png")
        plot(*args, path, **kwargs)
        with open(path, "rb") as f:
            return f.read()


def result_rows(main: Run, stage2: Optional[Run], uniform: Mapping[str, Run], fp32_fallback: Optional[float],
                budget: Optional[float]) -> List[Dict[str, Any]]:
    """The rows of the headline table: FP32, all-INT8, stage 1, stage 2 (what exists)."""
    refs = section(main.hardware, "references")
    fp32_flash = number(section(refs, "fp32").get("flash_kb"))
    rows = []
    for precision, label in (("fp32", "FP32 (pretrained)"), ("int8", "all-INT8")):
        ref = section(refs, precision)
        if not ref:
            continue
        run = uniform.get(precision)
        if precision == "fp32":
            acc = number(main.accuracy.get("fp32_test"))
            acc = fp32_fallback if acc is None else acc
            source = main.args.get("pretrained") or "pretrained checkpoint"
        else:
            acc = number(run.accuracy.get("test")) if run is not None else None
            source = run.dir if run is not None else None
        flash = number(ref.get("flash_kb"))
        rows.append({"label": label + (" (QAT)" if precision == "int8" and run is not None else ""),
                     "key": precision, "test": acc, "latency_ms": number(ref.get("latency_ms")),
                     "peak_ram_kb": number(ref.get("peak_ram_kb")), "flash_kb": flash,
                     "compression": (fp32_flash / flash) if fp32_flash and flash else None,
                     "histogram": None, "source": source})
    for run, label, key in ((main, "stage 1: mixed precision", "stage1"),
                            (stage2, "stage 2: mixed precision, dual-core", "stage2")):
        if run is None:
            continue
        hw = run.hardware
        rows.append({"label": label, "key": key, "test": number(run.accuracy.get("test")),
                     "latency_ms": number(hw.get("latency_ms")), "peak_ram_kb": number(hw.get("peak_ram_kb")),
                     "flash_kb": number(hw.get("flash_kb")), "compression": number(hw.get("compression")),
                     "histogram": run.summary.get("precision_histogram"),
                     "split_layers": len(section(section(run.summary, "dual"), "split_layers")),
                     "source": run.dir})
    for row in rows:
        ram = row["peak_ram_kb"]
        row["fits"] = None if (budget is None or ram is None) else ram <= budget + 1e-9
    return rows


def pareto_points(main: Run, sweep: Sequence[Run], uniform: Mapping[str, Run], stage2: Optional[Run],
                  fp32_acc: Optional[float]) -> List[Dict[str, Any]]:
    points = []
    fp32 = section(section(main.hardware, "references"), "fp32")
    if fp32_acc is not None and number(fp32.get("latency_ms")) is not None:
        points.append({"label": "all-fp32 (pretrained)", "kind": "uniform", "accuracy": fp32_acc,
                       "latency_ms": number(fp32["latency_ms"]), "peak_ram_kb": number(fp32.get("peak_ram_kb")),
                       "run": None, "lambda": None, "target": None})
    for precision, run in uniform.items():
        acc, lat = number(run.accuracy.get("test")), number(run.hardware.get("latency_ms"))
        if acc is not None and lat is not None:
            points.append({"label": f"all-{precision}", "kind": "uniform", "accuracy": acc, "latency_ms": lat,
                           "peak_ram_kb": number(run.hardware.get("peak_ram_kb")), "run": run, "lambda": None,
                           "target": None})
    for run in sweep:
        acc, lat = number(run.accuracy.get("test")), number(run.hardware.get("latency_ms"))
        if acc is None or lat is None:
            continue
        lam, target = run.hardware_weight, run.latency_target_ms
        label = f"λ={lam:g}" if lam is not None else run.name
        if target is not None:
            label += f", target {target:g} ms"
        if run is main:
            label = "stage 1" + (f" (target {target:g} ms)" if target is not None
                                 else f" (λ={lam:g})" if lam is not None else "")
        points.append({"label": label, "kind": "search", "accuracy": acc, "latency_ms": lat,
                       "peak_ram_kb": number(run.hardware.get("peak_ram_kb")), "run": run, "lambda": lam,
                       "target": target})
    if stage2 is not None:
        acc, lat = number(stage2.accuracy.get("test")), number(stage2.hardware.get("latency_ms"))
        if acc is not None and lat is not None:
            points.append({"label": "stage 2 (dual-core)", "kind": "stage2", "accuracy": acc, "latency_ms": lat,
                           "peak_ram_kb": number(stage2.hardware.get("peak_ram_kb")), "run": stage2,
                           "lambda": stage2.hardware_weight, "target": stage2.latency_target_ms})
    return points


@dataclass
class Context:
    """What the report's sections read: the runs in their roles and the figures derived from them."""
    found: Any
    main: Run
    stage2: Optional[Run]
    uniform: Dict[str, Run]
    sweep: List[Run]
    foreign: List[Run]
    fp32_acc: Optional[float]
    budget: Optional[float]
    effect: Optional[Dict[str, Any]]
    analysis_path: Optional[str]
    rows: List[Dict[str, Any]]
    points: List[Dict[str, Any]]
    out_dir: str
    # the kernel cost-model profile the Deployment section predicts profiled exports with
    kernel_profile: Optional[str] = DEFAULT_KERNEL_PROFILE
    cycles_per_instruction: Optional[float] = None    # None: the kernel profile's own, else 1.0
    clock_mhz: Optional[float] = None

    @property
    def network(self) -> str:
        return f"{self.main.model.get('type', '?')} on {self.main.hardware.get('profile', '?')}"


def gather(paths: Sequence[str], main: Optional[str], out_dir: str) -> Context:
    """The runs under ``paths`` in their roles (module docstring)."""
    found = collect(paths)
    the_main = choose_main(found.runs, main)
    if the_main is None:
        raise ValueError(f"--runs {' '.join(paths)}: no stage-1 search run found (a folder with the summary.json "
                         f"of dnas_search_cifar10_mbv2.py)")
    others = [r for r in found.runs if r is not the_main]
    foreign = [r for r in others if not comparable(r, the_main)]
    same = [r for r in others if comparable(r, the_main)]
    stage2_runs = [r for r in same if r.kind == "stage2"]
    stage2 = next((r for r in stage2_runs if os.path.realpath(str(section(r.summary, "stage1").get("dir", "")))
                   == os.path.realpath(the_main.dir)), stage2_runs[0] if stage2_runs else None)
    uniform: Dict[str, Run] = {}
    for r in same:
        if r.kind == "uniform" and r.uniform_precision not in uniform:
            uniform[r.uniform_precision] = r
    sweep = [the_main] + [r for r in same if r.kind == "stage1"]
    fp32_acc = number(the_main.accuracy.get("fp32_test"))
    if fp32_acc is None:
        for pre in found.pretrain:
            if section(pre.summary, "spec").get("type") == the_main.model.get("type"):
                fp32_acc = number(pre.summary.get("test_acc"))
                break
    budget, effect, analysis_path = budget_of(the_main)
    return Context(found, the_main, stage2, uniform, sweep, foreign, fp32_acc, budget, effect, analysis_path,
                   result_rows(the_main, stage2, uniform, fp32_acc, budget),
                   pareto_points(the_main, sweep, uniform, stage2, fp32_acc), out_dir)


def add_figure(doc: Document, name: str, data: Optional[bytes], caption: str, missing: str) -> None:
    if data is None:
        doc.note(missing)
    else:
        doc.figure(Figure(name, data, caption))


def overview_section(doc: Document, c: Context) -> None:
    m, hw = c.main.model, c.main.hardware
    model_text = (f"{m.get('type', '?')} (width {m.get('width_mult', '?')}, {m.get('input_size', '?')} px, "
                  f"{m.get('num_classes', '?')} classes)")
    profile = hw.get("label") or hw.get("profile", "?")
    doc.text(f"**Network** {model_text}, trained on **{c.main.args.get('dataset', '?')}**. **Hardware** {profile}."
             + (f" **Activation-RAM budget** {c.budget:g} KB." if c.budget is not None else "")
             + (f" **Latency target** {c.main.latency_target_ms:g} ms." if c.main.latency_target_ms else ""))
    doc.text("Latency, peak RAM and Flash are the hardware model's predictions (tensor_analysis), not "
             "measurements on a board. Accuracies are on each run's held-out test split, measured once per "
             "run after every choice was made on the validation split.")


def result_section(doc: Document, c: Context) -> None:
    """The headline table (FP32, all-INT8, stage 1, stage 2) and what to read into it."""
    doc.heading(2, "Result")
    rows, budget = c.rows, c.budget
    fp32_row = next((r for r in rows if r["key"] == "fp32"), None)
    table = []
    for r in rows:
        delta = (r["test"] - fp32_row["test"]) if (fp32_row and fp32_row["test"] is not None
                                                  and r["test"] is not None and r is not fp32_row) else None
        ram = fmt(r["peak_ram_kb"], 1)
        if r["fits"] is not None:
            ram += " ✓" if r["fits"] else f" ✗ (+{r['peak_ram_kb'] - budget:.1f})"
        table.append([r["label"], fmt(r["test"]) if r["test"] is not None else "not measured",
                      "–" if delta is None else f"{delta:+.2f}", fmt(r["latency_ms"]), ram, fmt(r["flash_kb"], 1),
                      fmt(r["compression"], 2, "×"), precisions_text(r)])
    doc.table(["network", "test acc (%)", "Δ vs FP32", "latency (ms)",
               f"peak RAM (KB){f' vs {budget:g} KB' if budget is not None else ''}", "Flash (KB)", "compression",
               "precisions (layers)"],
              table, numeric=[False, True, True, True, True, True, True, False])
    notes = []
    s1 = next(r for r in rows if r["key"] == "stage1")
    int8 = next((r for r in rows if r["key"] == "int8"), None)
    target = c.main.latency_target_ms
    if target is not None and s1["latency_ms"] is not None:
        notes.append(f"Stage 1 {'meets' if s1['latency_ms'] <= target + 1e-9 else 'misses'} its latency target: "
                     f"{s1['latency_ms']:.2f} ms vs {target:g} ms"
                     + (f" ({target / int8['latency_ms']:.2f} × the all-INT8 {int8['latency_ms']:.2f} ms)"
                        if int8 and int8["latency_ms"] else "") + ".")
    if c.stage2 is not None:
        sp = number(c.stage2.summary.get("speedup_vs_stage1"))
        s2row = next(r for r in rows if r["key"] == "stage2")
        dual = section(c.stage2.summary, "dual")
        notes.append(f"Stage 2 splits {len(section(dual, 'split_layers'))} of {len(dual.get('opened_layers', []))} "
                     f"opened layers over {' + '.join(dual.get('units', []))}: {fmt(s2row['latency_ms'])} ms"
                     + (f", {sp:.3f}× stage 1" if sp else "") + ".")
    if fp32_row is not None and fp32_row["test"] is None:
        notes.append("FP32 accuracy: not measured (the stage-1 run had no --pretrained checkpoint).")
    missed = [flag for key, flag in (("meets_memory_budget", "--memory_budget_kb"),
                                     ("meets_latency_target", "--latency_target_ms")) if c.main.hardware.get(key) is False]
    repairs = c.main.summary.get("budget_repairs")
    if isinstance(repairs, list) and repairs:
        changes = ", ".join(f"`{r.get('layer')}` {r.get('from')}→{r.get('to')}" for r in repairs if isinstance(r, Mapping))
        notes.append(f"Stage 1's argmax network missed a budget; {len(repairs)} layer(s) were changed before "
                     f"fine-tuning " + ("to come closer, and it still misses it" if missed else "so that it meets it")
                     + f": {changes}.")
    if missed:
        said = c.main.hardware.get("unmet_budgets")
        notes.append("**Stage 1's network does not meet its budget**: "
                     + ("; ".join(map(str, said)) if isinstance(said, list) and said else ", ".join(missed))
                     + (" (the search ran with --allow_unmet_budgets)"
                        if c.main.hardware.get("allow_unmet_budgets") else "") + ".")
    replaced = c.main.summary.get("dominated_replaced")
    if isinstance(replaced, list) and replaced:
        changes = ", ".join(f"`{r.get('layer')}` {r.get('from')}→{r.get('to')}" for r in replaced
                            if isinstance(r, Mapping))
        notes.append(f"{len(replaced)} layer(s) of stage 1's argmax network sat at a precision another of their "
                     f"options beats on both bits and latency, and took that option before fine-tuning: {changes}.")
    n_test = test_split_size(c.main)
    if n_test:
        notes.append(f"The test split has {n_test} images: one image is {100.0 / n_test:.2f} percentage points, "
                     f"so differences of a few points between these networks are a handful of images.")
    doc.items(notes)
    if int8 is not None and int8["test"] is None:
        doc.note("All-INT8 accuracy is not measured: no uniform INT8 run was given. Its hardware figures are "
                 "predictions. To measure it, run the search script with `--int_only --protect '*=int8'` "
                 "(every layer's only option is int8: plain QAT) and pass that run too.")
    if c.stage2 is None:
        doc.note("No stage-2 run was given, so the dual-core rows and timeline are left out. Run "
                 "`Search_CIFAR10/dnas_multicore/dnas_cifar10_search_multicore_mbv2.py --stage1_dir "
                 f"{_rel(c.main.dir, c.out_dir)}` and pass its folder to --runs.")


def memory_filter_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Memory filter")
    effect = c.effect
    if effect is None:
        doc.note("The stage-1 run's analysis file is not readable here, so the options the memory filter "
                 "removed are not shown.")
        return
    peaks = effect["uniform_peak_kb"]
    peak_text = ", ".join(f"all-{p} {peaks[p]:.1f} KB" for p in PRECISION_ORDER if p in peaks)
    doc.text(f"Threshold {fmt(effect['threshold_kb'], 0)} KB (`{_rel(c.analysis_path, c.out_dir)}`). Peak "
             f"activation RAM of uniform networks: {peak_text}. "
             + (f"The filter removed options from {len(effect['restricted'])} of "
                f"the layers; a removed precision is absent from that layer's α."
                if effect["restricted"] else "The filter removed no option at this threshold."))
    if effect["restricted"]:
        doc.table(["layer", "op", "live KB at fp32", "removed", "allowed"],
                  [[f"`{r['name']}`", r["op"] or "", fmt(r["live_kb"].get("fp32"), 1),
                    ", ".join(r["removed"]), ", ".join(r["allowed"])] for r in effect["restricted"]],
                  numeric=[False, False, True, False, False])


def precision_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Precision per layer")
    for run, tag, label in ((c.main, "stage1", "Stage 1"), (c.stage2, "stage2", "Stage 2")):
        if run is None:
            continue
        layers = run.summary.get("layers")
        data = None
        if isinstance(layers, list) and layers:
            data = _plot_to_bytes(plot_precision_map, layers, memory_budget_kb=c.budget,
                                  latency_target_ms=run.latency_target_ms, title=f"{label}: {c.network}")
        add_figure(doc, f"precision_map_{tag}.png", data,
                   f"{label}: precision of every layer (top), the RAM alive while it runs against the "
                   f"{'budget' if c.budget is not None else 'threshold'} (middle), its predicted latency (bottom).",
                   f"{label}: summary.json has no per-layer rows; no precision chart.")


def pareto_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Accuracy vs predicted latency")
    if len(c.points) < 2:
        doc.note("Fewer than two comparable runs with accuracy and latency: no accuracy/latency plot. A λ "
                 "sweep (several stage-1 runs with different --hardware_weight) fills it.")
        return
    plain = [{k: p[k] for k in ("label", "kind", "accuracy", "latency_ms")} for p in c.points]
    data = _plot_to_bytes(plot_pareto, plain, title=f"{c.network}: test accuracy vs latency")
    add_figure(doc, "pareto.png", data, "Each run's test accuracy against its predicted latency; squares are "
               "uniform-precision networks, circles stage-1 searches (λ = weight of the hardware term), the "
               "triangle stage 2; the dashed line is the Pareto front.", "")
    front = {(p["label"], p["latency_ms"], p["accuracy"]) for p in pareto_front(plain)}
    doc.table(["point", "λ", "target (ms)", "test acc (%)", "latency (ms)", "peak RAM (KB)", "on the front", "run"],
              [[p["label"], "–" if p["lambda"] is None else f"{p['lambda']:g}",
                "–" if p["target"] is None else f"{p['target']:g}", fmt(p["accuracy"]), fmt(p["latency_ms"]),
                fmt(p.get("peak_ram_kb"), 1), "yes" if (p["label"], p["latency_ms"], p["accuracy"]) in front else "",
                f"`{_rel(p['run'].dir, c.out_dir)}`" if p["run"] is not None else "pretrained checkpoint"]
               for p in sorted(c.points, key=lambda q: q["latency_ms"])],
              numeric=[False, True, True, True, True, True, False, False])


def dynamics_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Search dynamics (stage 1)")
    data = _png(c.main.file("alpha_evolution.png"))
    if data is None and c.main.alphas and c.main.alphas.get("history"):
        data = _plot_to_bytes(plot_alpha_evolution, c.main.alphas)
    add_figure(doc, "alpha_evolution.png", data, "π = softmax(α/T) of every layer over the search epochs, in "
               "execution order; the title of each panel is the precision it ended with.",
               "The stage-1 run has no alphas.json history: no α evolution.")
    data = _png(c.main.file("training_curves.png"))
    if data is None and os.path.isfile(c.main.file("log.csv")):
        log_rows = read_log_csv(c.main.file("log.csv"))
        data = _plot_to_bytes(plot_training_curves, log_rows) if log_rows else None
    add_figure(doc, "training_curves.png", data, "Stage 1 per epoch: losses, accuracies, temperature, expected "
               "and argmax latency / RAM (the fine-tuning epochs follow the search, shaded).",
               "The stage-1 run has no log.csv: no training curves.")


def dual_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Dual-core timeline (stage 2)")
    if c.stage2 is None:
        doc.note("No stage-2 run was given: no dual-core timeline.")
        return
    units = section(c.stage2.hardware, "units")
    if units:
        doc.table(["unit", "busy (ms)", "idle (ms)", "utilisation"],
                  [[u, fmt(number(v.get("busy_ms"))), fmt(number(v.get("idle_ms"))),
                    fmt(100 * (number(v.get("utilization")) or 0.0), 0, "%")]
                   for u, v in units.items() if isinstance(v, Mapping)], numeric=[False, True, True, True])
    split = section(section(c.stage2.summary, "dual"), "split_layers")
    if split:
        rows = []
        for name, entry in split.items():
            parts = section(entry, "units")
            rows.append([f"`{name}`", ", ".join(f"{u}: {section(parts, u).get('precision')} channels "
                                                f"{section(parts, u).get('channels')}" for u in parts)])
        doc.table(["layer", "split"], rows)
    add_figure(doc, "dual_timeline.png", _png(c.stage2.file("dual_timeline.png")),
               "Stage 2: what each processing unit does over one inference (coloured by precision; "
               "grey = idle; numbers are layer indices).", "The stage-2 run has no dual_timeline.png.")


def _bytes_vs(measured: Any, predicted: Any) -> str:
    m, p = number(measured), number(predicted)
    if p is None:
        return "–"
    if m is None:
        return f"not measured (predicted {p / 1024:.1f} KB)"
    return f"{m / 1024:.1f} KB vs {p / 1024:.1f} KB ({100 * (m - p) / p:+.1f}%)" if p else f"{m:.0f} B vs 0 B"


def deployment_section(doc: Document, c: Context) -> None:
    """The integer C exports (deploy/export_c.py's deployment.json) of the runs in the report."""
    doc.heading(2, "Deployment (integer C)")
    if not c.found.deployments:
        doc.note("No integer export was given: `python deploy/export_c.py --run_dir RUN --output_dir OUT --run host` "
                 "writes the C program and the deployment.json this section reads.")
        return
    roles = {os.path.realpath(c.main.dir): "stage 1 (main)"}
    if c.stage2 is not None:
        roles[os.path.realpath(c.stage2.dir)] = "stage 2"
    rows = []
    for path, d in c.found.deployments:
        run_dir = str(d.get("run_dir", ""))
        targets = section(d, "targets")
        exact = "; ".join(f"{t}: {'yes' if section(targets, t).get('passed') else 'NO'} "
                          f"({section(targets, t).get('bit_exact')}/{section(targets, t).get('images')})"
                          for t in targets) or "not built"
        first = next((section(targets, t) for t in targets if number(section(targets, t).get("images"))), {})
        c_acc = (fmt(100 * first["correct"] / first["images"], 2, "%") + f" ({first['images']} images)"
                 if number(first.get("correct")) is not None else "–")
        a = section(d, "agreement")
        agree = (f"{fmt(100 * (number(a.get('top1_agreement')) or 0), 2, '%')} of {a.get('images')}, "
                 f"largest logit difference {number(a.get('max_abs_logit_difference')) or 0:.3g}" if a else "not measured")
        sizes = [row for row in d.get("sizes", []) if isinstance(row, Mapping)]
        flash = next((r for r in sizes if str(r.get("what", "")).startswith("Flash")), {})
        arena = next((r for r in sizes if str(r.get("what", "")).startswith("RAM")), {})
        rows.append([f"`{_rel(os.path.dirname(path), c.out_dir)}`",
                     roles.get(os.path.realpath(run_dir), f"`{_rel(run_dir, c.out_dir)}`"), exact, c_acc, agree,
                     _bytes_vs(flash.get("measured_bytes"), flash.get("predicted_bytes")),
                     _bytes_vs(arena.get("measured_bytes"), arena.get("predicted_bytes"))])
    doc.table(["C folder", "network", "bit-exact with the numpy reference", "C program test acc",
               "reference vs PyTorch top-1", "model Flash: measured vs predicted", "arena vs predicted peak RAM"], rows)
    doc.text("Bit-exact: the C program's float32 logits equal the numpy reference's byte for byte on the embedded "
             "test images (host: gcc; m7: arm-none-eabi-gcc for a Cortex-M7, run on QEMU's mps2-an500, which "
             "checks correctness and sizes, not speed). Flash measured with arm-none-eabi-size; the arena is the "
             "planned static buffer. Predictions: the analysis the run was searched with (tensor_analysis).")
    profiled = False
    for path, d in c.found.deployments:
        comparison = layer_comparison(path, d, c.kernel_profile, c.cycles_per_instruction, c.clock_mhz)
        if comparison is not None:
            profiled = True
            profile_table(doc, c, path, comparison)
    if not profiled:
        doc.note("No export here was profiled on the target, so there is no per-layer table of measured "
                 "instructions: `python deploy/export_c.py ... --run m7 --profile` (or `deploy/profile_m7.py "
                 "--export_dir OUT`) writes the profile.json that deployment.json then names.")


def _count(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:,.0f}"


def profile_table(doc: Document, c: Context, deployment_path: str, comp: Mapping[str, Any]) -> None:
    """One profiled export: per layer measured (instructions on QEMU) vs the search's table vs a kernel
    cost model (deployment_profile.layer_comparison)."""
    folder = _rel(os.path.dirname(deployment_path), c.out_dir)
    doc.heading(3, f"Measured per layer: {folder}")
    counter = comp.get("counter", "instructions")
    rows, totals = comp["rows"], comp.get("totals") or {}
    if not rows:
        doc.note("; ".join(comp.get("notes", [])) or "The profile has no rows.")
        return
    kernel = comp.get("kernel_profile")
    cpi, clock = comp.get("cycles_per_instruction"), comp.get("clock_mhz")
    convert = (f"at {cpi:g} cycles per instruction and {clock:g} MHz" if counter == "instructions" and clock
               else f"at {clock:g} MHz" if clock else "")
    headers = ["layer", "kind", "precision", "MACs", f"measured {counter}", f"{counter} / MAC",
               "search's latency (ms, lut.json)"]
    numeric = [False, False, False, True, True, True, True]
    if kernel:
        headers += [f"predicted by {kernel} (ms)", f"predicted {counter} ({convert})", "measured / predicted"]
        numeric += [True, True, True]
    table = []
    for r in rows:
        line = [f"`{r['layer']}`", r["kind"], r["precision"], f"{r['macs']:,}" if r["macs"] else "–",
                _count(r["count"]), fmt(r["count_per_mac"]), fmt(r["search_ms"], 3)]
        if kernel:
            line += [fmt(r["predicted_ms"], 3), _count(r["predicted_count"]), fmt(r["ratio"], 2, "×")]
        table.append(line)
    per_mac = totals["count"] / totals["macs"] if totals.get("macs") else None
    line = ["**total**", "", "", f"{totals['macs']:,}", f"**{_count(totals['count'])}**", fmt(per_mac),
            fmt(totals.get("search_ms"), 2)]
    if kernel:
        line += [fmt(totals.get("predicted_ms"), 2), f"**{_count(totals.get('predicted_count'))}**",
                 f"**{fmt(totals.get('ratio'), 2, '×')}**"]
    table.append(line)
    doc.table(headers, table, numeric=numeric)
    what = ("QEMU's mps2-an500 under `-icount shift=0` counts guest instructions (resolution 40), not cycles "
            "and not time: it models no pipeline, caches or Flash wait states" if counter == "instructions"
            else "the chip's DWT counts cycles")
    whole = totals.get("whole_count")
    doc.text(f"Per image, over {comp.get('images')} embedded test image(s) (`{_rel(comp['profile'], c.out_dir)}`); "
             f"{what}. The rows are the profile's ops grouped by layer (the input's quantize and the pool are ops "
             f"of their own; the search's table charges the pool as a fixed operator and has no quantize row)"
             + (f"; the whole `adaptq_predict`, profiling hooks included, ran {_count(whole)} {counter}" if whole
                else "") + ". The search's latency is the run's own lut.json entry at the layer's precision: "
             "what stage 1 optimised."
             + (f" The prediction is the kernel cost-model profile `{kernel}` (tensor_analysis), in ms at its "
                f"clock, converted to {counter} {convert}; that conversion is an assumption, not a measurement."
                if kernel else ""))
    for note in comp.get("notes", []):
        doc.note(note[0].upper() + note[1:] + ".")


def runs_section(doc: Document, c: Context) -> None:
    doc.heading(2, "Runs")
    keys = ("hardware_weight", "int_only", "test_acc", "val_acc", "latency_ms", "peak_ram_kb", "flash_kb",
            "compression", "search_time_s", "finetune_time_s")
    role = {id(c.main): "stage 1 (main)"}
    if c.stage2 is not None:
        role[id(c.stage2)] = "stage 2"
    for r in c.uniform.values():
        role[id(r)] = f"uniform {r.uniform_precision}"
    rows = []
    for r in c.found.runs:
        row = summary_row(r.summary, _rel(r.dir, c.out_dir), r.args)
        kind = role.get(id(r), "λ sweep" if r in c.sweep else ("not compared" if r in c.foreign else r.kind))
        rows.append([f"`{row['run']}`", kind] + [format_value(k, row.get(k)) for k in keys])
    doc.table(["run", "role", "λ", "int_only", "test acc", "val acc", "latency ms", "peak RAM KB", "Flash KB",
               "compression", "search time", "finetune time"], rows, numeric=[False, False] + [True] * len(keys))
    if c.foreign:
        doc.note("Not compared (another model, dataset or hardware profile than the main run): "
                 + ", ".join(f"`{_rel(r.dir, c.out_dir)}`" for r in c.foreign) + ".")
    if c.found.problems:
        doc.note("Skipped: " + "; ".join(f"`{_rel(p, c.out_dir)}` ({why})" for p, why in c.found.problems) + ".")
    pretrained = c.main.args.get("pretrained")
    doc.text("Reproduce: each run's exact arguments are in its `args.json`"
             + (f"; FP32 checkpoint `{_rel(pretrained, c.out_dir)}`" if isinstance(pretrained, str) else "") + ".")


SECTIONS = (overview_section, result_section, memory_filter_section, precision_section, pareto_section,
            dynamics_section, dual_section, deployment_section, runs_section)


def build_report(paths: Sequence[str], output_md: str, main: Optional[str] = None,
                 output_html: Optional[str] = None, kernel_profile: Optional[str] = DEFAULT_KERNEL_PROFILE,
                 cycles_per_instruction: Optional[float] = None,
                 clock_mhz: Optional[float] = None) -> Report:
    """Read the runs under ``paths``, write ``output_md``, its figures folder and ``output_html``
    (default: ``output_md`` with .html). Returns what was written, for callers and tests.
    ``kernel_profile`` (a hardware profile name or path; None: none) predicts profiled exports per layer,
    converted to instructions at ``cycles_per_instruction`` (default: the one it declares, else 1.0) and
    ``clock_mhz`` (default: its clock)."""
    if not output_md:
        raise ValueError("--output: expected a file name for the Markdown report")
    if os.path.isdir(output_md):
        raise IsADirectoryError(f"--output {output_md}: is a folder; expected a file name such as report.md")
    stem = os.path.splitext(output_md)[0]
    output_html = output_html or stem + ".html"
    assets_name = os.path.basename(stem) + "_files"
    out_dir = os.path.dirname(os.path.abspath(output_md))
    c = gather(paths, main, out_dir)
    c.kernel_profile, c.cycles_per_instruction, c.clock_mhz = kernel_profile, cycles_per_instruction, clock_mhz
    title = f"AdaptQNet report: {c.network}"
    doc = Document()
    doc.heading(1, title)
    for add_section in SECTIONS:
        add_section(doc, c)
    assets = os.path.join(out_dir, assets_name)
    for fig in doc.figures:
        atomic_write(os.path.join(assets, fig.file), lambda f, d=fig.data: f.write(d))
    write_text_atomic(doc.markdown(assets_name), output_md)
    write_text_atomic(doc.html(title), output_html)
    return Report(doc, title, c.main, c.stage2, c.uniform, c.sweep, c.points, c.rows, c.found.problems)
