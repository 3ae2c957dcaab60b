"""A λ sweep seen on several MCUs: every stage-1 network's test accuracy against its predicted latency on
each hardware profile, with uniform-precision networks as reference points.

A run's latency in its own summary.json is for the profile it was searched on. Networks that did not
look at the hardware (λ = 0 without budgets, uniform references, the FP32 network) are the same network
on every MCU, so they are predicted on each profile from their mapping.json here instead of being
trained again per profile. A network searched for one profile is also predicted on the others (the
table shows it; the plot of a profile holds only the networks searched for it or for no profile).

Inputs are the runs' own files: summary.json (accuracy, model spec, λ, profile, budgets) and
mapping.json. The model is re-analysed from its spec (tensor_analysis.graph.analyze_network), the
table for a profile is built the way the search builds it (tensor_analysis.lut.build_lut).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from models.files import read_json, write_json_atomic, write_text_atomic
from models.mapping import check_layer_names_match, load_mapping
from models.registry import spec_differences
from tensor_analysis.cli import OutputKind, text_kind
from tensor_analysis.graph import analyze_network
from tensor_analysis.lut import build_lut, lut_latency_ms
from tensor_analysis.memory import peak_ram_bytes
from tensor_analysis.profiles import load_profile

from .figures import plot_pareto
from .runs import COMPARE_KEYS, collect

MAPPING = "mapping.json"
FP32_LABEL = "all-fp32 (pretrained)"
SWEEP_MD_OUTPUT = text_kind("a sweep table (plot_sweep.py)", "# λ sweep:")


def _is_sweep_json(path: str) -> bool:
    try:
        doc = read_json(path)
    except ValueError:
        return False
    return isinstance(doc, dict) and {"profiles", "networks"} <= set(doc)


SWEEP_JSON_OUTPUT = OutputKind("a sweep (plot_sweep.py)", _is_sweep_json)


@dataclass
class SweepNetwork:
    label: str
    kind: str                                  # "search" | "uniform" | "random"
    accuracy: float
    mapping: Dict[str, Any]
    searched_on: Optional[str] = None          # profile name; None = chosen without hardware
    hardware_weight: Optional[float] = None
    run_dir: Optional[str] = None
    latency_ms: Dict[str, float] = field(default_factory=dict)     # per profile
    peak_ram_kb: Optional[float] = None


def hardware_agnostic(run) -> bool:
    """λ = 0 and neither budget: the search never saw the hardware profile."""
    return run.hardware_weight == 0 and run.latency_target_ms is None and run.memory_budget_kb is None


def _run_label(run, method: Optional[str] = None) -> str:
    lam = run.hardware_weight
    label = method or (f"λ={lam:g}" if lam is not None else run.name)
    if run.latency_target_ms is not None:
        label += f", target {run.latency_target_ms:g} ms"
    if run.memory_budget_kb is not None:
        label += f", RAM {run.memory_budget_kb:g} KB"
    seed = run.args.get("seed")
    if isinstance(seed, int) and seed != 0:  # repeats of one setting stay apart in the table and plot
        label += f", seed {seed}"
    return label


def sweep_networks(paths: Sequence[str]) -> Tuple[List[SweepNetwork], Dict[str, Any], List[str]]:
    """The networks of the stage-1 runs under ``paths`` (stage-2 runs are left out: their latency needs
    the dual-core table). Returns (networks, the model spec they share, warnings). The FP32 network
    comes first when a run measured its test accuracy."""
    found = collect(paths)
    notes = [f"{path}: {why} (skipped)" for path, why in found.problems]
    runs = [r for r in found.runs if r.kind in ("stage1", "uniform", "random")]
    if not runs:
        raise ValueError(f"--runs {' '.join(paths)}: no stage-1 run (summary.json of dnas_search_cifar10_mbv2.py) "
                         f"found")
    spec = dict(runs[0].model)
    dataset = runs[0].args.get("dataset")
    layer_names = analyze_network(spec).layer_names
    networks: List[SweepNetwork] = []
    for run in runs:
        if spec_differences(spec, run.model, COMPARE_KEYS) or run.args.get("dataset") != dataset:
            notes.append(f"{run.dir}: another model or dataset than {runs[0].dir} (skipped)")
            continue
        accuracy = run.accuracy.get("test")
        if not isinstance(accuracy, (int, float)):
            notes.append(f"{run.dir}: no test accuracy in summary.json (skipped)")
            continue
        path = run.file(MAPPING)
        if not os.path.isfile(path):
            notes.append(f"{run.dir}: no {MAPPING} (skipped)")
            continue
        _, mapping = load_mapping(path)
        check_layer_names_match(layer_names, mapping, path)
        if run.kind == "uniform":
            networks.append(SweepNetwork(f"all-{run.uniform_precision}", "uniform", float(accuracy), mapping,
                                         run_dir=run.dir))
        elif run.kind == "random":
            networks.append(SweepNetwork(_run_label(run, "random"), "random", float(accuracy), mapping,
                                         run.hardware.get("profile"), None, run.dir))
        else:
            networks.append(SweepNetwork(_run_label(run), "search", float(accuracy), mapping,
                                         None if hardware_agnostic(run) else run.hardware.get("profile"),
                                         run.hardware_weight, run.dir))
    if not networks:
        raise ValueError(f"--runs {' '.join(paths)}: no finished stage-1 run with a test accuracy and {MAPPING}")
    fp32 = next((r.accuracy.get("fp32_test") for r in runs if isinstance(r.accuracy.get("fp32_test"), (int, float))),
                None)
    if fp32 is not None:
        networks.insert(0, SweepNetwork(FP32_LABEL, "uniform", float(fp32), {n: "fp32" for n in layer_names}))
    return networks, spec, notes


def predict_sweep(networks: Sequence[SweepNetwork], spec: Mapping[str, Any], profiles: Sequence[str]) -> List[str]:
    """Fill every network's latency on each profile (the table the search would build) and its peak RAM.
    Returns the profiles' names."""
    analysis = analyze_network(spec)
    for net in networks:
        analysis.check_mapping(net.mapping, where=net.run_dir or net.label)
        net.peak_ram_kb = peak_ram_bytes(analysis, net.mapping) / 1024.0
    names = []
    for name in profiles:
        profile = load_profile(name)
        lut = build_lut(analysis, profile)
        for net in networks:
            net.latency_ms[profile.name] = lut_latency_ms(lut, net.mapping)
        names.append(profile.name)
    return names


def shown_on(net: SweepNetwork, profile: str) -> bool:
    return net.searched_on is None or net.searched_on == profile


def sweep_markdown(networks: Sequence[SweepNetwork], profiles: Sequence[str]) -> str:
    """One row per network: λ, the profile it was searched for, test accuracy and Δ vs FP32, peak RAM,
    and its predicted latency on each profile (in parentheses where it was searched for another)."""
    fp32 = next((n.accuracy for n in networks if n.label == FP32_LABEL), None)
    head = ["network", "searched for", "test acc (%)", "Δ vs FP32", "peak RAM (KB)"] + [f"{p} (ms)" for p in profiles]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|"]
    order = sorted(networks, key=lambda n: (n.kind != "uniform", n.searched_on or "", n.hardware_weight or 0.0))
    for n in order:
        delta = "–" if fp32 is None or n.label == FP32_LABEL else f"{n.accuracy - fp32:+.2f}"
        cells = [n.label, n.searched_on or ("–" if n.kind == "uniform" else "no hardware (λ=0)"),
                 f"{n.accuracy:.2f}", delta, f"{n.peak_ram_kb:.0f}"]
        for p in profiles:
            value = f"{n.latency_ms[p]:.2f}"
            cells.append(value if shown_on(n, p) else f"({value})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_points(networks: Sequence[SweepNetwork], profile: str) -> List[Dict[str, Any]]:
    return [{"label": n.label, "kind": n.kind, "accuracy": n.accuracy, "latency_ms": n.latency_ms[profile]}
            for n in networks if shown_on(n, profile)]


def write_sweep(paths: Sequence[str], profiles: Sequence[str], output_dir: str) -> Dict[str, Any]:
    """sweep.md (table), sweep.json (every number) and sweep_<profile>.png (accuracy vs latency) in
    ``output_dir``. Returns what was written and the warnings."""
    if not profiles:
        raise ValueError("--hardware: name at least one hardware profile")
    networks, spec, notes = sweep_networks(paths)
    names = predict_sweep(networks, spec, profiles)
    os.makedirs(output_dir, exist_ok=True)
    plots = {}
    for p in names:
        plots[p] = plot_pareto(plot_points(networks, p), os.path.join(output_dir, f"sweep_{p}.png"),
                               title=f"{spec.get('type')} w{spec.get('width_mult')} {spec.get('input_size')} px: "
                                     f"test accuracy vs predicted latency on {p}")
    table = sweep_markdown(networks, names)
    text = (f"# λ sweep: {spec.get('type')} width {spec.get('width_mult')}, {spec.get('input_size')} px\n\n"
            "Latencies are predictions of the hardware model. Networks searched for another profile are "
            "shown in parentheses and left out of that profile's plot.\n\n" + table
            + "".join(f"\n![{p}](sweep_{p}.png)\n" for p in names))
    md = os.path.join(output_dir, "sweep.md")
    write_text_atomic(text, md)
    data = {"model": spec, "profiles": names,
            "networks": [{"label": n.label, "kind": n.kind, "test_acc": n.accuracy, "searched_on": n.searched_on,
                          "hardware_weight": n.hardware_weight, "run_dir": n.run_dir, "peak_ram_kb": n.peak_ram_kb,
                          "latency_ms": n.latency_ms} for n in networks]}
    write_json_atomic(data, os.path.join(output_dir, "sweep.json"))
    return {"markdown": md, "plots": plots, "networks": networks, "notes": notes, "table": table}
