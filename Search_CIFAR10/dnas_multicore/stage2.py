"""Stage 2 end to end: a stage-1 run → open some layers over two processing units → search → derive →
fine-tune → summary, plots.

The script ``dnas_cifar10_search_multicore_mbv2.py`` only parses arguments and calls ``run_stage2``.
Searching, checkpointing and fine-tuning are the run driver's (Search_CIFAR10/dnas/driver.py), as in
stage 1; what is new here is which layers are opened, their options, and their costs:

* a layer *opened* for stage 2 gets one α logit per option: the whole layer on the primary unit at any
  precision it may use (the stage-1 choices), the whole layer on the secondary unit, and every split
  of its output channels between the two units that the dual-core memory filter allows (analysis
  module option keys, e.g. ``m7:int8[0:48]+m4:int8[48:96]``);
* the hardware term uses each option's latency from the dual-core LUT (max of the units' times,
  contention and synchronisation included) and its live bytes from the dual-core analysis;
* the other layers stay at their stage-1 precision on the primary unit.

Run directory: stage 1's files (driver.py), with analysis.json holding the dual-core analysis (the
options used), plus dual_timeline.png (per-layer timeline of both units). mapping.json stores split
layers as dual-core objects ({"split", "units": {unit: {"precision", "channels"}}}).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from data.splits import split_info
from models import build_from_spec, formats
from models.dual import (DUAL_LAYER_TYPES, build_dual_network, derive_dual_network, dual_layers, label_entries,
                         open_dual_layers, option_parts)
from models.files import CheckpointError, load_checkpoint, read_json
from models.mapping import check_final_matches, check_layer_names_match, load_mapping, option_label
from models.network import calibrate_activation_clips, mixed_layers, restrict_precisions
from models.precisions import PRECISION_ORDER, PRECISIONS, canonical_precisions
from models.registry import check_same_grid, check_same_model, spec_differences
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.dnas.arguments import add_search_args, apply_constraints, parse_protect
from Search_CIFAR10.dnas.driver import (SearchStage, alpha_loader, open_run_dir, resolve_resume, run_search,
                                        search_settings)
from Search_CIFAR10.dnas.hardware_cost import REFERENCE_PRECISION, HardwareCost
from Search_CIFAR10.dnas.stage1 import build_summary
from Search_CIFAR10.reporting.figures import plot_dual_core_timeline, plot_precision_map, plot_run_dir
from Search_CIFAR10.training.data import add_data_args, build_loaders
from Search_CIFAR10.training.run_dir import RunDir
from Search_CIFAR10.training.runtime import add_runtime_args, setup_runtime
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.cli import non_negative_float, positive_int, positive_mhz
from tensor_analysis.dual import DEFAULT_SPLITS, dual_analysis_json, parse_splits
from tensor_analysis.graph import as_analysis
from tensor_analysis.lut import build_lut, load_lut_json, lut_entry_ms, lut_latency_ms
from tensor_analysis.prediction import dual_speedup, predict_network
from tensor_analysis.profiles import load_profile

STAGE1_FILES = ("args.json", "mapping.json", "summary.json", "final.pt", "supernet.pt")
SELECT_MODES = ("latency", "entropy")
DATA_KEYS = ("dataset", "data_dir", "split_seed", "limit_train", "limit_eval", "selection_fraction")
# stage 2 starts from a fine-tuned network: no weight-only warm-up, gentler weight updates and a shorter
# schedule than stage 1; α moves faster (there are ~100 options per layer, not 5); a heavier hardware
# term, since a split at one precision changes latency and nothing else (docs/experiments.md §3)
STAGE2_DEFAULTS = dict(epochs=6, warmup_epochs=0, lr_weights=0.002, finetune_epochs=3, finetune_lr=0.002,
                       lr_alpha=0.05, hardware_weight=2.0)


# ----------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------
def add_stage2_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inputs")
    g.add_argument("--stage1_dir", default=None,
                   help="run directory of a finished stage-1 search (args.json, mapping.json, summary.json, "
                        "final.pt, supernet.pt; alphas.json for --select entropy); required except with --resume. "
                        "Its weight grid (stage 1's --weight_grid, in its model spec) carries over. The data flags "
                        "and --memory_budget_kb default to that run's values (whatever the data group below says): "
                        "both stages must see the same validation and test images")
    g.add_argument("--start_from", choices=("final", "supernet"), default="final",
                   help="stage-1 weights to start from: the fine-tuned network (final.pt) or the searched "
                        "supernet fixed at the stage-1 mapping (default %(default)s)")
    g.add_argument("--dual_analysis_json", default=None,
                   help="analysis_dual.json from tensor_analysis/tensor_memory_filter_dualcore.py: the dual-core "
                        "options each layer may use (default: computed for --hardware at stage 1's memory threshold)")
    g.add_argument("--latency_lut", default=None,
                   help="latency table with dual-core options (tensor_latency_predictor.py --lut on a two-unit "
                        "profile), or measured numbers in that format (default: built from --hardware)")
    g.add_argument("--hardware", default=None,
                   help="hardware profile with two processing units, name or JSON path (default: stage 1's)")
    g.add_argument("--clock_mhz", type=positive_mhz, default=None,
                   help="override the first unit's clock (default: stage 1's)")
    g.add_argument("--splits", default=None,
                   help="split ratios for the computed dual analysis / LUT, e.g. 0.25,0.5,0.75,balanced "
                        "(default: the dual analysis file's, else the analysis module's default)")

    s = parser.add_argument_group("layers to open")
    s.add_argument("--topk", type=positive_int, default=12,
                   help="open the K layers ranked first by --select (default %(default)s)")
    s.add_argument("--layers", default=None,
                   help="'all', or comma-separated layer names to open (overrides --topk/--select)")
    s.add_argument("--select", choices=SELECT_MODES, default="latency",
                   help="rank layers by their share of stage 1's predicted latency (where a second unit "
                        "saves most) or by the entropy of stage 1's final π (the least decided layers) "
                        "(default %(default)s)")
    s.add_argument("--dual_precisions", default=None,
                   help="comma-separated precisions a part may use (default: each layer's stage-1 allowed "
                        "precisions, narrowed by --protect); the stage-1 choice always stays an option")
    s.add_argument("--stage1_bias", type=non_negative_float, default=1.0,
                   help="initial α advantage of options in proportion to their channels at the stage-1 "
                        "precision, so the search starts near the stage-1 network (default %(default)s)")

    add_data_args(parser)
    # data flags default to the stage-1 run's (the same validation/test split is what makes the
    # accuracies comparable); only paths and limits may differ
    parser.set_defaults(**{k: None for k in DATA_KEYS})
    add_search_args(parser, stage=2)
    parser.set_defaults(**STAGE2_DEFAULTS)
    add_runtime_args(parser)


# ----------------------------------------------------------------------------------------------------
# The stage-1 run
# ----------------------------------------------------------------------------------------------------
class Stage1Run:
    """The files of a stage-1 run directory, checked before anything is trained."""

    def __init__(self, run_dir: str, start_from: str = "final"):
        if not run_dir:
            raise ValueError("--stage1_dir is required (the run directory of a stage-1 search)")
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"--stage1_dir {run_dir}: directory not found")
        missing = [f for f in STAGE1_FILES if not os.path.isfile(os.path.join(run_dir, f))]
        if missing:
            raise ValueError(f"--stage1_dir {run_dir}: not a finished stage-1 run, missing {', '.join(missing)} "
                             f"(run Search_CIFAR10/dnas/dnas_search_cifar10_mbv2.py to the end first)")
        self.dir = run_dir
        self.args = read_json(self.path("args.json"), "stage-1 arguments")
        self.summary = read_json(self.path("summary.json"), "stage-1 summary")
        final = load_checkpoint(self.path("final.pt"))
        supernet = load_checkpoint(self.path("supernet.pt"))
        for name, ckpt in (("final.pt", final), ("supernet.pt", supernet)):
            if not all(k in ckpt for k in ("spec", "model")):
                raise CheckpointError(f"{self.path(name)}: not a stage-1 checkpoint (needs spec, model)")
        if isinstance(self.summary, dict) and self.summary.get("stage", 1) != 1:
            raise ValueError(f"--stage1_dir {run_dir}: this is a stage-{self.summary.get('stage')} run, "
                             f"expected a stage-1 run")
        self.spec = dict(final["spec"])
        check_same_model(self.spec, supernet["spec"], f"{self.path('supernet.pt')}", keys=None, error=CheckpointError)
        spec, self.mapping = load_mapping(self.path("mapping.json"))
        check_final_matches(final, self.mapping, self.path("mapping.json"))
        if spec is not None and spec_differences(self.spec, spec):
            raise ValueError(f"{self.path('mapping.json')}: does not belong to final.pt's network (model "
                             f"{'; '.join(spec_differences(self.spec, spec))})")
        if spec is not None:
            check_same_grid(self.spec, spec, self.path("mapping.json"))
        self.final, self.supernet = final, supernet
        self.allowed: Dict[str, List[str]] = {n: list(v) for n, v in supernet.get("allowed", {}).items()} or \
            {n: [p] for n, p in self.mapping.items()}
        self.start_from = start_from

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def find_input(self, path: Optional[str]) -> Optional[str]:
        """A path recorded in args.json: as written, else relative to the run directory or its script."""
        if not path:
            return None
        for candidate in (path, os.path.join(self.dir, path),
                          os.path.join(REPO_ROOT, "Search_CIFAR10", "dnas", path)):
            if os.path.isfile(candidate):
                return candidate
        return None

    def clips(self) -> Dict[str, Dict[str, float]]:
        """The supernet's PACT clip of every integer precision a layer searched: where a stage-2 option
        uses a precision the fine-tuned layer no longer has, its clip starts there."""
        state = self.supernet["model"]
        out = {}
        for name, allowed in self.supernet.get("allowed", {}).items():
            ints = [p for p in allowed if not PRECISIONS[p].is_float]
            clip = state.get(f"{name}.act_clip")
            if clip is not None and clip.numel() == len(ints):
                out[name] = {p: float(clip[i]) for i, p in enumerate(ints)}
        return out

    def build_network(self) -> nn.Module:
        """The stage-1 network at its mapping, with the weights of --start_from."""
        model = build_from_spec(self.spec, precisions={n: [p] for n, p in self.mapping.items()})
        if self.start_from == "final":
            model.load_state_dict(self.final["model"])
        else:
            supernet = build_from_spec(self.spec, precisions=self.supernet["allowed"])
            supernet.load_state_dict(self.supernet["model"])
            restrict_precisions(supernet, {n: [p] for n, p in self.mapping.items()}, where=self.path("supernet.pt"))
            model.load_state_dict(supernet.state_dict())
        return model

    def final_alpha_entropy(self) -> Dict[str, float]:
        """Entropy of each layer's π at the end of the stage-1 search (alphas.json)."""
        path = self.path("alphas.json")
        if not os.path.isfile(path):
            raise ValueError(f"--select entropy: {path} not found (the stage-1 π history)")
        doc = read_json(path, "stage-1 alphas")
        history = doc.get("history") if isinstance(doc, dict) else None
        if not history:
            raise ValueError(f"--select entropy: {path} has no history")
        out = {}
        for name, probs in history[-1].get("probs", {}).items():
            out[name] = -sum(p * math.log(p) for p in probs if p > 0)
        return out


# ----------------------------------------------------------------------------------------------------
# Hardware inputs
# ----------------------------------------------------------------------------------------------------
def resolve_hardware(args, run: Stage1Run):
    """(profile, clock) with two units; a one-unit profile is refused here, before anything runs."""
    name = args.hardware or run.args.get("hardware") or "stm32h747"
    profile = load_profile(name)
    profile.dual_units  # one-unit profiles fail with the list of dual-core ones
    clock = args.clock_mhz if args.clock_mhz is not None else run.args.get("clock_mhz")
    return profile, clock


def stage1_analysis(run: Stage1Run) -> dict:
    """The analysis stage 1 searched with: its copy in the run directory (runs of older versions: the
    path args.json records)."""
    path = run.path("analysis.json")
    if not os.path.isfile(path):
        recorded = run.args.get("tensor_analysis_json")
        path = run.find_input(recorded)
        if path is None:
            raise ValueError(f"stage 1's analysis file {recorded!r} (from {run.path('args.json')}) is not found; "
                             f"give --dual_analysis_json (tensor_memory_filter_dualcore.py)")
    return load_analysis_json(path)


def resolve_dual_analysis(args, run: Stage1Run, profile, clock) -> dict:
    """The dual-core analysis: read (--dual_analysis_json) or computed at stage 1's memory threshold."""
    if args.dual_analysis_json:
        d = load_analysis_json(args.dual_analysis_json)
        where = args.dual_analysis_json
        if not all("allowed_dual_options" in layer for layer in d["layers"]) or "dual" not in d:
            raise ValueError(f"--dual_analysis_json {where}: not a dual-core analysis (no allowed_dual_options); "
                             f"write one with tensor_analysis/tensor_memory_filter_dualcore.py")
    else:
        base = stage1_analysis(run)
        splits = parse_splits(args.splits) if args.splits else list(DEFAULT_SPLITS)
        d = dual_analysis_json(as_analysis(base), profile, base["memory_threshold_kb"], base["precisions"], splits,
                               base.get("memory_model") == "inplace_depthwise", clock)
        where = "the computed dual-core analysis"
    diffs = spec_differences(run.spec, d["model"])
    if diffs:
        raise ValueError(f"{where}: made for another model than the stage-1 run: {'; '.join(diffs)}")
    units = list(d["dual"].get("units", []))
    if units != list(profile.dual_units):
        raise ValueError(f"{where}: options are for units {units} ({d['dual'].get('hardware')}), but hardware "
                         f"{profile.name} has {list(profile.dual_units)}; pass the matching --hardware")
    return d


def resolve_lut(args, net_analysis, dual_analysis: Mapping, profile, clock) -> dict:
    if args.latency_lut:
        lut = load_lut_json(args.latency_lut, net_analysis)
        if "dual" not in lut:
            raise ValueError(f"--latency_lut {args.latency_lut}: no dual-core options; write the table with "
                             f"tensor_latency_predictor.py --lut on a two-unit profile")
        if list(lut["dual"].get("units", [])) != list(profile.dual_units):
            raise ValueError(f"--latency_lut {args.latency_lut}: options are for units {lut['dual'].get('units')}, "
                             f"hardware {profile.name} has {list(profile.dual_units)}")
        return lut
    return build_lut(net_analysis, profile, clock, dual=True, precisions=list(PRECISION_ORDER),
                     splits=dual_analysis["dual"].get("splits"))


# ----------------------------------------------------------------------------------------------------
# Which layers, which options
# ----------------------------------------------------------------------------------------------------
def rank_layers(run: Stage1Run, lut: Mapping, select: str) -> List[str]:
    """Layer names, best candidates first: by stage-1 latency share or by final α entropy."""
    names = list(run.mapping)
    if select == "latency":
        score = {n: lut_entry_ms(lut, n, run.mapping[n]) for n in names}
    else:
        entropy = run.final_alpha_entropy()
        score = {n: entropy.get(n, 0.0) for n in names}
    return sorted(names, key=lambda n: (-score[n], names.index(n)))


def layer_options(name: str, layer: nn.Module, dual_entry_json: Mapping, stage1_precision: str,
                  allowed: Sequence[str], part_precisions: Optional[Sequence[str]]) -> List[str]:
    """One layer's options: whole on the primary unit at each allowed precision, then the dual-core
    options the memory filter allows, whose parts all use allowed precisions."""
    ok = [p for p in allowed if part_precisions is None or p in part_precisions]
    single = [p for p in canonical_precisions(ok or [stage1_precision]) if p in dual_entry_json["allowed_precisions"]]
    options = list(dict.fromkeys([stage1_precision] + single))
    for key in dual_entry_json.get("allowed_dual_options", []):
        parts = option_parts(layer, key, "dual analysis", name)
        if all(p.precision in ok for p in parts):
            options.append(option_label(parts))
    return options


def select_layers(args, run: Stage1Run, model: nn.Module, dual_analysis: Mapping, lut: Mapping
                  ) -> Dict[str, List[str]]:
    """{layer: options} for the layers stage 2 opens (only layers with a dual-core option count)."""
    entries = {e["name"]: e for e in dual_analysis["layers"]}
    layers = dict(mixed_layers(model))
    part_precisions = None
    if args.dual_precisions:
        part_precisions = list(canonical_precisions([p.strip() for p in args.dual_precisions.split(",") if p.strip()],
                                                    "--dual_precisions"))
    if args.layers and args.layers.strip() != "all":
        wanted = [n.strip() for n in args.layers.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in layers]
        if unknown:
            raise ValueError(f"--layers: unknown layers {', '.join(unknown)}; layers are module paths such as "
                             f"{next(iter(layers))}")
    else:
        wanted = rank_layers(run, lut, args.select)
    # stage 1's allowed lists already carry its --int_only/--protect; stage 2's --protect narrows them
    allowed = apply_constraints({n: run.allowed.get(n, [run.mapping[n]]) for n in layers},
                                {n: l.op_kind for n, l in layers.items()}, False, parse_protect(args.protect))
    limit = None if args.layers else args.topk
    chosen: Dict[str, List[str]] = {}
    for name in wanted:
        options = layer_options(name, layers[name], entries[name], run.mapping[name], allowed[name],
                                part_precisions)
        if any(":" in o for o in options):
            chosen[name] = options
        if limit is not None and len(chosen) >= limit:
            break
    if not chosen:
        raise ValueError("no layer has a dual-core option that fits the memory threshold and the allowed "
                         "precisions; raise the threshold (tensor_memory_filter_dualcore.py) or widen --dual_precisions")
    return {n: chosen[n] for n in layers if n in chosen}  # execution order


def initial_alpha(layer: nn.Module, options: Sequence[str], stage1_precision: str, bias: float) -> List[float]:
    """α favouring options by their share of channels at the stage-1 precision (the stage-1 layer
    itself gets the full ``bias``)."""
    c = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    out = []
    for key in options:
        parts = option_parts(layer, key, "options")
        out.append(bias * sum(p.c1 - p.c0 for p in parts if p.precision == stage1_precision) / c)
    return out


# ----------------------------------------------------------------------------------------------------
# The hardware term over dual-core options
# ----------------------------------------------------------------------------------------------------
def dual_hardware_cost(model: nn.Module, lut: Mapping, dual_analysis: Mapping, net_analysis) -> HardwareCost:
    """HardwareCost whose cost vectors follow each layer's α: dual layers' options (latency from the
    LUT's dual section, live bytes from the dual analysis), fixed layers' one precision; RAM of the
    whole network from the analysis module's memory model (which reads dual-core entries)."""
    entries = {e["name"]: e for e in dual_analysis["layers"]}
    inplace = dual_analysis.get("memory_model") == "inplace_depthwise"
    key = "live_inplace" if inplace else "live"
    names, labels, latency, live = [], {}, {}, {}
    ref = float(lut.get("fixed_ms", 0.0))
    for name, layer in mixed_layers(model):
        opts = list(layer.option_keys) if isinstance(layer, DUAL_LAYER_TYPES) else [layer.fixed_precision]
        lat, mem = [], []
        for o in opts:
            lat.append(lut_entry_ms(lut, name, o))
            if ":" in o:
                mem.append(float(entries[name]["dual_options"][o]["live"]))
            else:
                mem.append(float(entries[name]["bytes"][o][key]))
        names.append(name)
        labels[name] = opts
        latency[name] = torch.tensor(lat)
        live[name] = torch.tensor(mem)
        row = lut["layers"][name]
        ref += float(row[REFERENCE_PRECISION]) if REFERENCE_PRECISION in row else float(min(row.values()))
    cost = HardwareCost(names, labels, latency, live, float(lut.get("fixed_ms", 0.0)), ref)
    return cost.attach_memory_model(net_analysis, inplace)


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def precision_shares(parts_list: Sequence, probs: Sequence[float], precisions: Sequence[str], channels: int
                     ) -> List[float]:
    """Expected fraction of a layer's channels at each precision under π over its options."""
    shares = [0.0] * len(precisions)
    for parts, pi in zip(parts_list, probs):
        for p in parts:
            shares[precisions.index(p.precision)] += float(pi) * (p.c1 - p.c0) / channels
    return [round(s, 6) for s in shares]


def stage2_alphas_document(model: nn.Module, history: Sequence[dict]) -> dict:
    """alphas.json for stage 2: per opened layer its options and π over them (``option_probs``), and,
    in stage 1's format, the expected share of its channels at each precision (``probs``)."""
    layers = dual_layers(model)
    out_history = []
    for entry in history:
        probs, option_probs = {}, {}
        for name, layer in layers:
            pi = entry["probs"][name]
            c = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            option_probs[name] = list(pi)
            probs[name] = precision_shares(layer.option_parts, pi, layer.precisions, c)
        out_history.append({"epoch": entry["epoch"], "temperature": entry["temperature"], "probs": probs,
                            "option_probs": option_probs})
    return {"schema": formats.ALPHAS, "stage": 2, "layers": [n for n, _ in layers],
            "precisions": {n: list(l.precisions) for n, l in layers},
            "options": {n: list(l.option_keys) for n, l in layers}, "history": out_history}


def dual_timeline_layers(net_analysis, mapping: Mapping, prediction: Mapping) -> List[dict]:
    """plot_dual_core_timeline's input from predict_network: every layer from its start (the time of
    all operators before it), each unit's busy time and precision."""
    parts_of = net_analysis.check_mapping(mapping)
    rows, t = [], 0.0
    for r in prediction["operators"]:
        if r["layer"]:
            parts = parts_of[r["name"]]
            units = {}
            for p in parts:
                unit = p.unit or r["unit"]
                units[unit] = {"busy_ms": float(r["units_ms"][unit]), "precision": p.precision}
            rows.append({"name": r["name"], "start_ms": t, "end_ms": t + float(r["ms"]), "units": units})
        t += float(r["ms"])
    return rows


def build_stage2_summary(args, run: Stage1Run, spec, mapping, labels, opened, net_analysis, lut, profile, clock,
                         accuracy, times) -> dict:
    fp32_acc = {k: v for k, v in run.summary.get("accuracy", {}).items() if k.startswith("fp32")}
    ns = argparse.Namespace(**{**vars(args), "clock_mhz": clock})
    summary = build_summary(ns, spec, mapping, net_analysis, lut, profile, fp32_acc, accuracy, times)
    summary["stage"] = 2
    for row in summary["layers"]:
        row["precision"] = mapping[row["name"]]
    prediction = predict_network(net_analysis, mapping, profile, clock_mhz=clock)
    s1_latency = lut_latency_ms(lut, run.mapping)
    s2_latency = summary["hardware"]["latency_ms"]
    s1_acc = run.summary.get("accuracy", {})
    speedup = dual_speedup(net_analysis, mapping, profile, clock)
    summary["hardware"]["units"] = prediction["totals"]["units"]
    summary["stage1"] = {
        "dir": os.path.abspath(run.dir),
        "latency_ms": s1_latency,
        "latency_ms_profile": predict_network(net_analysis, run.mapping, profile, clock_mhz=clock)["totals"]["latency_ms"],
        "summary_latency_ms": run.summary.get("hardware", {}).get("latency_ms"),
        "accuracy": {k: s1_acc.get(k) for k in ("finetuned_val", "test")},
    }
    summary["speedup_vs_stage1"] = s1_latency / s2_latency if s2_latency else None
    summary["accuracy_change_vs_stage1"] = {
        k: (accuracy[a] - s1_acc[k]) if s1_acc.get(k) is not None else None
        for k, a in (("test", "test"), ("finetuned_val", "finetuned_val"))}
    split_layers = {n: e for n, e in mapping.items() if not isinstance(e, str)}
    summary["dual"] = {
        "units": list(profile.dual_units), "sync": {k: profile.dual.get(k, 0) for k in
                                                    ("sync_cycles", "coherence_cycles_per_byte", "contention")},
        "select": "layers" if args.layers else args.select, "opened_layers": list(opened),
        "options_per_layer": {n: len(o) for n, o in opened.items()},
        "split_layers": split_layers, "layers_on_second_unit_only": [
            n for n, e in split_layers.items() if len(e["units"]) == 1],
        "single_unit_latency_ms": speedup["single_unit_ms"], "best_single_unit": speedup["best_single_unit"],
        "speedup_vs_single_unit": speedup["speedup"],
        "option_of_layer": {n: labels[n] for n in opened},
    }
    return summary


def stage2_summary_text(summary: Mapping) -> str:
    acc, hwd, s1 = summary["accuracy"], summary["hardware"], summary["stage1"]
    d = summary["dual"]
    return (f"done: stage 2 test {acc['test']:.2f}% (stage 1 {s1['accuracy']['test']:.2f}%)  "
            f"latency {hwd['latency_ms']:.3f} ms vs stage 1 {s1['latency_ms']:.3f} ms "
            f"(speed-up {summary['speedup_vs_stage1']:.3f}x; {d['speedup_vs_single_unit']:.3f}x over the "
            f"same network on {d['best_single_unit']} alone)  split layers {len(d['split_layers'])}/"
            f"{len(d['opened_layers'])} opened  peak RAM {hwd['peak_ram_kb']:.1f} KB")


def write_stage2_plots(run: RunDir, summary: Mapping, prediction_layers, args) -> None:
    plot_run_dir(run.dir)
    title = f"stage 2: {summary['model']['type']} on {summary['hardware']['profile']}"
    plot_precision_map(summary["layers"], run.path("precision_map.png"), memory_budget_kb=args.memory_budget_kb,
                       latency_target_ms=args.latency_target_ms, title=title)
    plot_dual_core_timeline(prediction_layers, summary["dual"]["units"], run.path("dual_timeline.png"))


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def merge_stage1_args(args, run: Stage1Run) -> None:
    """Data flags default to stage 1's; the dataset and split seed must be stage 1's (the same
    validation/test split is what makes the accuracies comparable)."""
    for key in DATA_KEYS:
        mine, theirs = getattr(args, key, None), run.args.get(key)
        if mine is None:
            setattr(args, key, theirs)
        elif key in ("dataset", "split_seed", "selection_fraction") and theirs is not None and mine != theirs:
            raise ValueError(f"--{key} {mine}: the stage-1 run used {theirs}; stage 2 must use the same data split")
    if args.memory_budget_kb is None:
        args.memory_budget_kb = run.args.get("memory_budget_kb")


def default_output_dir(args, profile) -> str:
    base = os.path.basename(os.path.normpath(args.stage1_dir))
    sel = "all" if args.layers == "all" else ("layers" if args.layers else f"{args.select}{args.topk}")
    return os.path.join(REPO_ROOT, "runs", "dnas_multicore", f"{base}_{profile.name}_{sel}")


def run_stage2(args) -> dict:
    args, resume = resolve_resume(args)
    # every input is read and checked before the first training step
    run = Stage1Run(args.stage1_dir, args.start_from)
    profile, clock = resolve_hardware(args, run)
    merge_stage1_args(args, run)
    dual_analysis = resolve_dual_analysis(args, run, profile, clock)
    net_analysis = as_analysis(dual_analysis)
    lut = resolve_lut(args, net_analysis, dual_analysis, profile, clock)
    model = run.build_network()
    check_layer_names_match([n for n, _ in mixed_layers(model)], [e["name"] for e in dual_analysis["layers"]],
                            "the dual-core analysis")
    if resume is not None:
        opened = {n: list(v) for n, v in resume["dual_options"].items()}
    else:
        opened = select_layers(args, run, model, dual_analysis, lut)
    layers = dict(mixed_layers(model))
    alpha = {n: initial_alpha(layers[n], o, run.mapping[n], args.stage1_bias) for n, o in opened.items()}
    open_dual_layers(model, opened, alpha, run.clips())
    model.spec = dict(run.spec)
    hw = dual_hardware_cost(model, lut, dual_analysis, net_analysis)

    runtime = setup_runtime(args)
    torch.manual_seed(args.seed)
    splits, train_loader, val_loader, test_loader = build_loaders(
        args, args.batch_size, run.spec["input_size"], runtime.device, args.seed, runtime.rank,
        runtime.world_size, channels_last=runtime.channels_last)
    if splits.num_classes != run.spec.get("num_classes"):
        raise ValueError(f"--dataset {args.dataset}: {splits.num_classes} classes, the stage-1 network has "
                         f"{run.spec.get('num_classes')}")
    s1_split = run.path("split.json")
    if os.path.isfile(s1_split):
        theirs, mine = read_json(s1_split, "stage-1 split"), split_info(splits)
        compared = ("dataset", "split_seed", "val_indices", "test_indices") + (
            ("selection_indices",) if "selection_indices" in theirs else ())  # older splits lack it
        if any(theirs.get(k) != mine.get(k) for k in compared):
            raise ValueError(f"{s1_split}: the data split differs from stage 1's (dataset, seed or --limit_eval); "
                             f"stage 2 must evaluate on the same validation/test images")
    out = open_run_dir(args, default_output_dir(args, profile), runtime, resume, splits, dual_analysis, lut, hw)
    model = runtime.prepare_model(model)
    hw.to(runtime.device)
    if resume is None:
        guessed = {n: l.guessed_clips for n, l in dual_layers(model) if l.guessed_clips}
        if guessed:  # precisions no stage-1 clip exists for: measure the inputs once
            seen = calibrate_activation_clips(copy.deepcopy(model), next(iter(train_loader))[0])
            for n, l in dual_layers(model):
                for p in guessed.get(n, []):
                    l.act_clip.data[[q for q in l.precisions if not PRECISIONS[q].is_float].index(p)] = max(seen[n], 1e-3)
    alpha_batches = alpha_loader(splits, args, runtime, run.spec["input_size"])
    fp32_acc = {k: v for k, v in run.summary.get("accuracy", {}).items() if k.startswith("fp32")}
    if resume is None:
        model.train()

    def labels_of(mapping: Mapping[str, object]) -> Dict[str, str]:
        supernet_layers = dict(mixed_layers(model))
        return {n: option_label(option_parts(supernet_layers[n], e, "mapping", n)) for n, e in mapping.items()}

    def summarize(mapping, accuracy, times):
        return build_stage2_summary(args, run, run.spec, mapping, labels_of(mapping), opened, net_analysis, lut,
                                    profile, clock, accuracy, times)

    def write_plots(run_dir: RunDir, summary: Mapping) -> None:
        mapping = {row["name"]: row["precision"] for row in summary["layers"]}
        prediction = predict_network(net_analysis, mapping, profile, clock_mhz=clock)
        write_stage2_plots(run_dir, summary, dual_timeline_layers(net_analysis, mapping, prediction), args)

    stage = SearchStage(
        model=model, spec=dict(run.spec), hw=hw, settings=search_settings(args),
        to_entries=lambda chosen: label_entries(model, chosen), to_labels=labels_of,
        derive=derive_dual_network, rebuild=lambda mapping: build_dual_network(run.spec, mapping),
        summarize=summarize, summary_text=stage2_summary_text, write_plots=write_plots,
        alphas_document=stage2_alphas_document,
        mapping_extra={"hardware": profile.name, "stage": 2, "units": list(profile.dual_units)},
        checkpoint_extra={"args": vars(args), "spec": run.spec, "stage": 2, "dual_options": opened,
                          "fp32_acc": fp32_acc},
        final_extra={"stage": 2})
    summary = run_search(stage, args, (train_loader, alpha_batches, val_loader, test_loader), runtime, out, resume)
    runtime.cleanup()
    return summary


def load_stage2_network(path: str) -> nn.Module:
    """The fine-tuned stage-2 network from its final.pt and the mapping.json beside it (dual-core
    layers rebuilt from the mapping)."""
    ckpt = load_checkpoint(path)
    if not all(k in ckpt for k in ("spec", "model")):
        raise CheckpointError(f"{path}: not a stage-2 checkpoint (needs spec, model)")
    mapping_path = os.path.join(os.path.dirname(path), "mapping.json")
    _, mapping = load_mapping(mapping_path)
    check_final_matches(ckpt, mapping, mapping_path)
    net = build_dual_network(ckpt["spec"], mapping)
    net.load_state_dict(ckpt["model"])
    return net
