"""Stage 1: search each layer's precision under an MCU's latency and RAM budgets, derive, fine-tune.

The script ``dnas_search_cifar10_mbv2.py`` only parses arguments and calls ``run_stage1``: every input
(the analysis, the latency table, the pretrained checkpoint) is read and checked here before the first
training step, then the run driver (``driver.run_search``) searches, derives, repairs, fine-tunes and
writes the run directory (docs/file_formats.md §7).
"""
from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn

from models import build_from_spec, formats, list_models
from models.files import CheckpointError, load_checkpoint
from models.mapping import check_layer_names_match, precision_histogram
from models.network import (allowed_precisions, calibrate_activation_clips, derive_fixed_network, mixed_layers,
                            restrict_precisions, set_gumbel, set_mode)
from models.quantizers import DEFAULT_WEIGHT_GRID, WEIGHT_GRIDS
from models.registry import architecture_spec, check_same_model, spec_differences, spec_weight_grid
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.dnas.arguments import add_search_args, apply_constraints, parse_protect
from Search_CIFAR10.dnas.driver import (PHASE, SearchStage, alpha_loader, alphas_document, open_run_dir,
                                        resolve_resume, run_search, search_settings)
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.reporting.figures import plot_precision_map, plot_run_dir
from Search_CIFAR10.training.data import add_data_args, build_loaders
from Search_CIFAR10.training.loop import evaluate
from Search_CIFAR10.training.run_dir import RunDir
from Search_CIFAR10.training.runtime import add_runtime_args, setup_runtime
from tensor_analysis.analysis_file import load_analysis_json
from tensor_analysis.cli import positive_float, positive_int
from tensor_analysis.flash import compression
from tensor_analysis.graph import as_analysis
from tensor_analysis.lut import build_lut, load_lut_json, lut_latency_ms
from tensor_analysis.prediction import predict_network
from tensor_analysis.profiles import load_profile
from models.mapping import is_single_unit, load_mapping
from models.precisions import get_precision


# ----------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------
def add_stage1_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inputs")
    g.add_argument("--tensor_analysis_json", "--analysis", dest="tensor_analysis_json", default=None,
                   help="analysis.json from tensor_analysis/tensor_memory_filter.py: layers and the precisions "
                        "each may use under the RAM threshold (required, except with --resume)")
    g.add_argument("--latency_lut", default=None,
                   help="latency table (lut.json) from tensor_latency_predictor.py --lut, or measured numbers "
                        "in the same format (default: built from --hardware)")
    g.add_argument("--hardware", default="stm32h747",
                   help="hardware profile name or JSON path, used when --latency_lut is not given and for the "
                        "RAM/Flash report (default %(default)s)")
    g.add_argument("--clock_mhz", type=positive_float, default=None, help="override the profile's clock")
    g.add_argument("--pretrained", default=None,
                   help="FP32 checkpoint from the pretrain script (best.pt); without it the supernet trains "
                        "from scratch (with a warning)")
    g.add_argument("--model", default=None, choices=list_models(),
                   help="model when no --pretrained is given (default: the analysis file's model)")
    g.add_argument("--width_mult", type=positive_float, default=None,
                   help="width multiplier when no --pretrained is given (default: the analysis file's)")
    g.add_argument("--input_size", type=positive_int, default=None,
                   help="input resolution; must match the analysis file (default: the analysis file's)")
    g.add_argument("--int_only", action="store_true", help="allow only int8/int4/int2 in every layer")
    g.add_argument("--weight_grid", choices=WEIGHT_GRIDS, default=DEFAULT_WEIGHT_GRID,
                   help="integer weight grid: dorefa (the seed's odd levels 2u-(2^k-1), exported by the C export) "
                        "or symmetric (narrow-range signed -(2^(k-1)-1)..2^(k-1)-1 with a zero, INT2 ternary: what "
                        "stock int kernels and deploy/export_onnx.py take) (default %(default)s)")
    g.add_argument("--mapping", default=None, metavar="FILE|uniform:PRECISION",
                   help="do not search: fine-tune this mapping (a mapping.json, e.g. one you edited, or "
                        "uniform:int4 for every layer at one precision) and finish like a searched run; each "
                        "layer's precision must be one the analysis (and --int_only/--protect) allows")
    add_data_args(parser)
    add_search_args(parser)
    add_runtime_args(parser)


def default_output_dir(args) -> str:
    stem = os.path.splitext(os.path.basename(args.tensor_analysis_json))[0]
    if args.mapping:
        tag = f"{stem}_" + (args.mapping.replace(":", "_") if args.mapping.startswith(UNIFORM) else
                            "mapping_" + os.path.splitext(os.path.basename(args.mapping))[0])
    else:
        tag = f"{stem}_lam{args.hardware_weight:g}" + ("_intonly" if args.int_only else "")
    return os.path.join(REPO_ROOT, "runs", "dnas", tag)


# ----------------------------------------------------------------------------------------------------
# Inputs: everything is checked before any training starts
# ----------------------------------------------------------------------------------------------------
def check_analysis_matches(analysis: Mapping, spec: Mapping, path: str, source: str) -> None:
    diffs = spec_differences(spec, analysis.get("model", {}))
    if diffs:
        raise ValueError(f"{path}: analysis was made for another model or input size than {source}: "
                         f"{'; '.join(diffs)}")


def check_pretraining_checkpoint(ckpt: Mapping, path: str) -> None:
    """--pretrained must be what pretraining writes; a search's own checkpoints (whose layers hold other
    precisions, so other tensor shapes) are named for what they are."""
    if ckpt.get("schema") == formats.PRETRAIN_CHECKPOINT and "spec" in ckpt and "model" in ckpt:
        return
    what = ("a search's resumable checkpoint (checkpoint_last.pt)" if PHASE in ckpt
            else "a search's fine-tuned network (final.pt)" if "mapping_sha256" in ckpt
            else "a search's supernet (supernet.pt)" if "allowed" in ckpt
            else f"not a pretraining checkpoint (schema {ckpt.get('schema')!r})")
    raise CheckpointError(f"--pretrained {path}: {what}; expected the FP32 network of Search_CIFAR10/pretrain/"
                          f"pretrain_cifar10_mobilenetv2.py (its best.pt, schema {formats.PRETRAIN_CHECKPOINT!r})")


def load_pretrained_into(model: nn.Module, ckpt: Mapping, path: str) -> None:
    """Copy a pretraining checkpoint's weights; the search-only tensors (α, clips) keep their init."""
    # the FP32 network has no weight grid: the search chooses it
    check_same_model(architecture_spec(model.spec), ckpt["spec"], f"--pretrained {path}", keys=None,
                     error=CheckpointError)
    state = ckpt["model"]
    own = model.state_dict()
    search_only = (".alpha", ".act_clip")
    missing = [k for k in own if k not in state and not k.endswith(search_only)]
    if missing:
        raise CheckpointError(f"--pretrained {path}: checkpoint lacks {', '.join(missing[:5])}")
    reshaped = [f"{k} {tuple(state[k].shape)} (the model's {tuple(v.shape)})" for k, v in own.items()
                if k in state and not k.endswith(search_only) and getattr(state[k], "shape", None) != v.shape]
    if reshaped:
        raise CheckpointError(f"--pretrained {path}: tensors of another shape: {', '.join(reshaped[:3])}"
                              + (f" and {len(reshaped) - 3} more" if len(reshaped) > 3 else ""))
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(search_only) and k in own},
                          strict=False)


def prepare_model(args, analysis: Mapping, num_classes: int, runtime) -> Tuple[nn.Module, Optional[dict]]:
    """Build the supernet the analysis describes, load the pretrained weights, restrict each layer to
    its allowed precisions. Every mismatch is reported before any training starts."""
    a_path = args.tensor_analysis_json
    a_spec = dict(analysis.get("model", {}))
    pretrained = None
    if args.pretrained:
        pretrained = load_checkpoint(args.pretrained)
        check_pretraining_checkpoint(pretrained, args.pretrained)
        spec = dict(pretrained["spec"])
    else:
        warnings.warn("no --pretrained checkpoint: the supernet trains from scratch")
        spec = {k: a_spec[k] for k in a_spec}
        spec["type"] = args.model or a_spec.get("type", "mobilenetv2")
        spec["num_classes"] = num_classes
        if args.width_mult is not None:
            spec["width_mult"] = args.width_mult
    if args.input_size is not None and args.input_size != spec.get("input_size"):
        raise ValueError(f"--input_size {args.input_size} does not match the model's input size "
                         f"{spec.get('input_size')} (from {'--pretrained' if pretrained else a_path})")
    if spec.get("num_classes") != num_classes:
        raise ValueError(f"the model has {spec.get('num_classes')} classes but --dataset {args.dataset} has {num_classes}")
    check_analysis_matches(analysis, spec, a_path,
                           f"--pretrained {args.pretrained}" if pretrained else "the command line")
    # args.json of a run started before --weight_grid existed has none: those runs were DoReFa
    model = build_from_spec(architecture_spec(spec), alpha_init=args.alpha_init,
                            weight_grid=getattr(args, "weight_grid", DEFAULT_WEIGHT_GRID))
    if pretrained is not None:
        load_pretrained_into(model, pretrained, args.pretrained)
    allowed = {entry["name"]: list(entry["allowed_precisions"]) for entry in analysis["layers"]}
    check_layer_names_match([n for n, _ in mixed_layers(model)], list(allowed), a_path)
    op_kinds = {entry["name"]: entry.get("op") for entry in analysis["layers"]}
    allowed = apply_constraints(allowed, op_kinds, args.int_only, parse_protect(args.protect))
    restrict_precisions(model, allowed, where=a_path)
    return model, pretrained


UNIFORM = "uniform:"


def resolve_mapping(text: str, model: nn.Module) -> Dict[str, str]:
    """--mapping: {layer: precision} from a mapping.json or ``uniform:PRECISION``, every precision one the
    layer allows (the memory filter's and --int_only/--protect's choices stand)."""
    layers = dict(mixed_layers(model))
    if text.startswith(UNIFORM):
        precision = text[len(UNIFORM):]
        get_precision(precision, "--mapping uniform")
        labels = {name: precision for name in layers}
    else:
        _, entries = load_mapping(text)
        check_layer_names_match(list(layers), entries, f"--mapping {text}")
        split = [n for n, e in entries.items() if not is_single_unit(e)]
        if split:
            raise ValueError(f"--mapping {text}: layers {', '.join(split[:5])} are split over two cores; stage 1 "
                             f"fine-tunes single-core mappings (give a stage-2 mapping to the stage-2 script)")
        labels = dict(entries)
    refused = [f"{n} {p} (allowed: {', '.join(layers[n].precisions)})" for n, p in labels.items()
               if p not in layers[n].precisions]
    if refused:
        raise ValueError(f"--mapping {text}: {len(refused)} layer(s) at a precision the analysis does not allow "
                         f"there: {'; '.join(refused[:5])}" + (" ..." if len(refused) > 5 else ""))
    return labels


def report_fixed_mapping(labels: Mapping[str, str], hw: HardwareCost, args) -> None:
    """What the hardware model says of a mapping that is fine-tuned as given (nothing repairs it)."""
    latency, ram_kb = hw.mapping_latency_ms(labels), hw.mapping_peak_ram_bytes(labels) / 1024.0
    target = f" (target {args.latency_target_ms:g} ms)" if args.latency_target_ms is not None else ""
    budget = f" (budget {args.memory_budget_kb:g} KB)" if args.memory_budget_kb is not None else ""
    print(f"--mapping {args.mapping}: predicted latency {latency:.2f} ms{target}, peak RAM {ram_kb:.1f} KB{budget}; "
          f"fine-tuning it without a search", flush=True)


def reference_fp32_accuracy(pretrained: Mapping, val_loader, test_loader, runtime) -> Dict[str, float]:
    """Accuracy of the pretrained network at FP32: the baseline every result is compared with."""
    ref = build_from_spec(pretrained["spec"])
    ref.load_state_dict(pretrained["model"])
    for _, layer in mixed_layers(ref):
        layer.set_precision("fp32")
    ref = runtime.prepare_model(ref)
    return {"fp32_val": evaluate(ref, val_loader, runtime)["acc"],
            "fp32_test": evaluate(ref, test_loader, runtime)["acc"]}


# ----------------------------------------------------------------------------------------------------
# What a stage-1 run reports
# ----------------------------------------------------------------------------------------------------
def build_summary(args, spec, mapping, net_analysis, lut, profile, fp32_acc, accuracy, times) -> dict:
    """summary.json: accuracies, the predicted hardware figures of the result and of uniform
    references, the precision histogram, per-layer rows for reports, and wall times."""
    prediction = predict_network(net_analysis, mapping, profile, clock_mhz=args.clock_mhz)
    totals = prediction["totals"]
    comp = compression(net_analysis, mapping)
    references = {}
    for p in ("fp32", "int8"):
        uniform = {n: p for n in mapping}
        ref = predict_network(net_analysis, uniform, profile, clock_mhz=args.clock_mhz)["totals"]
        references[p] = {"latency_ms": lut_latency_ms(lut, uniform),
                         "peak_ram_kb": ref["peak_ram_bytes"] / 1024.0, "flash_kb": ref["flash_bytes"] / 1024.0}
    layer_rows = [{"name": r["name"], "op": r["op"], "precision": r["precision"], "live_kb": r["live_bytes"] / 1024.0,
                   "latency_ms": r["ms"], "macs": r["macs"]} for r in prediction["operators"] if r["layer"]]
    return {
        "schema": formats.SUMMARY,
        "stage": 1,
        "model": dict(spec),
        "weight_grid": spec_weight_grid(spec),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))},
        "accuracy": {**fp32_acc, **accuracy},
        "hardware": {
            "profile": profile.name, "label": profile.label,
            "latency_ms": lut_latency_ms(lut, mapping),
            "latency_ms_profile": totals["latency_ms"],
            "peak_ram_kb": totals["peak_ram_bytes"] / 1024.0,
            "peak_ram_kb_inplace": totals["peak_ram_bytes_inplace"] / 1024.0,
            "flash_kb": totals["flash_bytes"] / 1024.0,
            "compression": comp.get("ratio"),
            "latency_target_ms": args.latency_target_ms, "memory_budget_kb": args.memory_budget_kb,
            "references": references,
        },
        "precision_histogram": precision_histogram(mapping),
        "layers": layer_rows,
        "time_s": times,
    }


def summary_text(summary: Mapping) -> str:
    acc, hwd = summary["accuracy"], summary["hardware"]
    fp32 = f"FP32 test {acc['fp32_test']:.2f}%  " if "fp32_test" in acc else ""
    test = f"final test {acc['test']:.2f}% " if "test" in acc else "final "
    return (f"done: {fp32}{test}(val {acc['finetuned_val']:.2f}%)  "
            f"latency {hwd['latency_ms']:.2f} ms  peak RAM {hwd['peak_ram_kb']:.1f} KB  "
            f"Flash {hwd['flash_kb']:.1f} KB  compression {hwd['compression']:.2f}x  "
            f"precisions {summary['precision_histogram']}")


def write_run_plots(run: RunDir, summary: Mapping, args) -> None:
    plot_run_dir(run.dir)
    plot_precision_map(summary["layers"], run.path("precision_map.png"),
                       memory_budget_kb=args.memory_budget_kb, latency_target_ms=args.latency_target_ms,
                       title=f"{summary['model']['type']} on {summary['hardware']['profile']}")


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
@dataclass
class Stage1Inputs:
    """Everything a stage-1 run reads and prepares before its first training step."""
    args: argparse.Namespace
    resume: Optional[dict]
    analysis: dict
    net_analysis: Any
    profile: Any
    lut: dict
    runtime: Any
    splits: Any
    loaders: Tuple[Any, Any, Any, Any]      # train, α (validation), selection, test
    model: nn.Module                        # the supernet, calibrated, on the device
    hw: HardwareCost
    run: RunDir
    fp32_acc: Dict[str, float]
    fixed: Optional[Dict[str, str]]         # --mapping's labels


def prepare_stage1(args, default_dir) -> Stage1Inputs:
    """Read and check every input, load the data, build the supernet and open the run directory
    (``default_dir(args)`` unless --output_dir)."""
    args, resume = resolve_resume(args)
    if not args.tensor_analysis_json:
        raise ValueError("--tensor_analysis_json is required (an analysis.json from tensor_memory_filter.py)")
    # every input is read and checked before the first training step
    analysis = load_analysis_json(args.tensor_analysis_json)
    net_analysis = as_analysis(analysis)
    profile = load_profile(args.hardware)
    lut = (load_lut_json(args.latency_lut, net_analysis) if args.latency_lut
           else build_lut(net_analysis, profile, clock_mhz=args.clock_mhz))
    runtime = setup_runtime(args)
    torch.manual_seed(args.seed)
    splits, train_loader, val_loader, test_loader = build_loaders(
        args, args.batch_size, analysis["model"]["input_size"], runtime.device, args.seed,
        runtime.rank, runtime.world_size, channels_last=runtime.channels_last)
    model, pretrained = prepare_model(args, analysis, splits.num_classes, runtime)
    hw = HardwareCost.from_lut(model, lut, analysis, net_analysis)
    fixed = resolve_mapping(args.mapping, model) if getattr(args, "mapping", None) else None
    if fixed is not None and runtime.is_main:
        report_fixed_mapping(fixed, hw, args)
    run = open_run_dir(args, default_dir(args), runtime, resume, splits, analysis, lut, hw)
    model = runtime.prepare_model(model)
    hw.to(runtime.device)
    alpha_batches = alpha_loader(splits, args, runtime, model.spec["input_size"])
    set_mode(model, args.search_mode)
    set_gumbel(model, args.gumbel)
    if pretrained is not None and resume is None:
        calibrate_activation_clips(model, next(iter(train_loader))[0])
    if resume is not None and "fp32_acc" in resume:
        fp32_acc = dict(resume["fp32_acc"])
    else:
        fp32_acc = reference_fp32_accuracy(pretrained, val_loader, test_loader, runtime) if pretrained else {}
    return Stage1Inputs(args, resume, analysis, net_analysis, profile, lut, runtime, splits,
                        (train_loader, alpha_batches, val_loader, test_loader), model, hw, run, fp32_acc, fixed)


def stage1_search(inputs: Stage1Inputs, model: nn.Module, fixed: Optional[Dict[str, str]],
                  plots: bool = True, source: Optional[str] = None) -> SearchStage:
    """The run driver's description of a stage-1 run of ``model`` (a search, or ``fixed`` fine-tuned)."""
    args, spec = inputs.args, dict(model.spec)
    progressive = max(args.epochs // 2, 1) if args.progressive == -1 else args.progressive
    return SearchStage(
        model=model, spec=spec, hw=inputs.hw, settings=search_settings(args, progressive),
        to_entries=dict, to_labels=dict,
        derive=derive_fixed_network,
        rebuild=lambda mapping: build_from_spec(spec, precisions={n: [p] for n, p in mapping.items()}),
        summarize=lambda mapping, accuracy, times: build_summary(args, spec, mapping, inputs.net_analysis,
                                                                 inputs.lut, inputs.profile, inputs.fp32_acc,
                                                                 accuracy, times),
        summary_text=summary_text,
        write_plots=(lambda run_dir, summary: write_run_plots(run_dir, summary, args)) if plots else (
            lambda run_dir, summary: None),
        alphas_document=alphas_document, mapping_extra={"hardware": inputs.profile.name},
        checkpoint_extra={"args": vars(args), "spec": spec, "allowed": allowed_precisions(model),
                          "fp32_acc": inputs.fp32_acc}, fixed=fixed, source=source)


def run_stage1(args) -> dict:
    inputs = prepare_stage1(args, default_output_dir)
    summary = run_search(stage1_search(inputs, inputs.model, inputs.fixed), inputs.args, inputs.loaders,
                         inputs.runtime, inputs.run, inputs.resume)
    inputs.runtime.cleanup()
    return summary
