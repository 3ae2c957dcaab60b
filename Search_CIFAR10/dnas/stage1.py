"""Stage 1 end to end: inputs → search → derive → fine-tune → summary, plots.

The script ``dnas_search_cifar10_mbv2.py`` only parses arguments and calls ``run_stage1``. Stage 2
reuses the pieces here (argument groups, the search/fine-tune drivers, the run directory layout).

Run directory:
  args.json         resolved arguments           log.csv        one row per epoch (search, finetune)
  alphas.json       π history per layer          mapping.json   the derived precision per layer
  split.json        data split (seed, indices)   summary.json   accuracies, hardware figures, times
  supernet.pt       the searched supernet        final.pt       the fine-tuned network (chosen on val)
  checkpoint_last.pt  atomic, resumable          *.png          plots
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import time
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from models import build_from_spec, formats, list_models
from models.files import CheckpointError, load_checkpoint
from models.layers import ALPHA_INITS
from models.mapping import check_layer_names_match, mapping_document, precision_histogram
from models.network import (allowed_precisions, arch_parameters, calibrate_activation_clips, derive_fixed_network,
                            derive_mapping, mixed_layers, set_gumbel, set_mode, set_temperature, weight_parameters)
from models.precisions import INT_PRECISIONS, PRECISION_ORDER, PRECISIONS
from models.registry import check_same_model
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.dnas.derive import enforce_budgets
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.dnas.search import (TEMP_SCHEDULES, SearchSettings, alpha_entropy, alpha_snapshot,
                                        apply_progressive, fault_point, progressive_min_bits, run_search_epoch,
                                        set_requires_grad, temperature_at)
from Search_CIFAR10.training.loop import evaluate, train_one_epoch
from Search_CIFAR10.training.run_dir import RunFiles, rng_state, set_rng_state
from Search_CIFAR10.training.runtime import barrier, broadcast_buffers
from tensor_analysis.cli import non_negative_float, non_negative_int, positive_float, positive_int
from tensor_analysis.lut import lut_latency_ms

OP_KINDS = ("conv", "dwconv", "pwconv", "linear")


# ----------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------
def add_search_args(parser: argparse.ArgumentParser, stage: int = 1) -> None:
    """Argument groups shared by stage 1 and stage 2 (data and runtime groups come from their modules)."""
    g = parser.add_argument_group("search schedule")
    g.add_argument("--epochs", type=positive_int, default=10, help="search epochs (default %(default)s)")
    g.add_argument("--warmup_epochs", type=non_negative_int, default=1,
                   help="first epochs train the shared weights only, α frozen (default %(default)s)")
    g.add_argument("--batch_size", type=positive_int, default=64, help="batch size of both splits (default %(default)s)")
    g.add_argument("--temp_schedule", choices=TEMP_SCHEDULES, default="exponential",
                   help="temperature annealing per epoch (default %(default)s)")
    # Stage 1 anneals from 1 to 0.1 (the seed: 5 → 0.5). π = softmax(α/T): at T = 5 the int8-biased start
    # is almost uniform and stays so, the supernet is then an average of all precisions and its argmax
    # network is a different one. Measured on digits (MobileNetV2 w0.35, 32 px, λ = 0): 5 → 0.5 ended at
    # α entropy 1.51 nats (lr_alpha 0.01, 6 + 3 epochs) / 1.36 (lr_alpha 0.1, 4 + 2) and derived networks
    # at 50.2 % / 89.2 % validation before fine-tuning (supernets 98.8 / 98.5 %); 1 → 0.1 with
    # lr_alpha 0.05 (4 + 2) ended at 0.28 nats and 97.2 % (supernet 99.4 %).
    # Stage 2 keeps the seed's values (its mixture is exact and was validated with them).
    temps = (1.0, 0.1) if stage == 1 else (5.0, 0.5)
    g.add_argument("--temp_start", type=positive_float, default=temps[0],
                   help="temperature at the first epoch; π = softmax(α / T) (default %(default)s)")
    g.add_argument("--temp_end", type=positive_float, default=temps[1],
                   help="temperature at the last epoch; low enough that π ends nearly one-hot, so the supernet "
                        "is close to the network derived from it (default %(default)s)")
    g.add_argument("--gumbel", action="store_true", help="sample π with Gumbel-softmax during training steps")
    if stage == 1:  # stage 2's α is over dual-core options, and its mixture is always exact
        g.add_argument("--alpha_init", choices=ALPHA_INITS, default="int8_biased",
                       help="initial logits: the seed's int8-biased values or uniform (default %(default)s)")
        g.add_argument("--search_mode", choices=("composite", "exact"), default="composite",
                       help="composite: mix quantized weights and inputs, one conv per layer (fast); "
                            "exact: one conv per precision (for checking) (default %(default)s)")
    g.add_argument("--lr_weights", type=positive_float, default=0.01, help="weight learning rate (default %(default)s)")
    g.add_argument("--weight_optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="optimizer of the weights (SGD with momentum 0.9, cosine schedule) (default %(default)s)")
    g.add_argument("--weight_decay", type=non_negative_float, default=4e-5,
                   help="weight decay of conv/linear weights (not BN, bias, clips) (default %(default)s)")
    # Adam moves each logit by about lr per step whatever the gradient's size, so lr × (α steps) bounds
    # how far α can leave its initial values: 0.01 over a short search (digits: ~20 α steps per epoch)
    # cannot cross the int8-biased start's gaps, and the argmax is then decided by drift.
    g.add_argument("--lr_alpha", type=positive_float, default=0.05,
                   help="α learning rate (Adam: roughly the most a logit moves per step) (default %(default)s)")
    g.add_argument("--alpha_optimizer", choices=("adam", "sgd"), default="adam", help="optimizer of α (default %(default)s)")
    g.add_argument("--alpha_weight_decay", type=non_negative_float, default=1e-3, help="α weight decay (default %(default)s)")
    g.add_argument("--grad_clip", type=non_negative_float, default=5.0,
                   help="clip the weights' gradient norm; 0 disables (default %(default)s)")
    if stage == 1:
        g.add_argument("--progressive", type=non_negative_int, nargs="?", const=-1, default=0, metavar="EPOCHS",
                       help="progressive precision reduction: lower bits unlock over the first EPOCHS search "
                            "epochs (FP16 → INT8 → INT4 → INT2); without a value, half the search epochs")
    g.add_argument("--protect", action="append", default=None, metavar="PATTERN=MIN",
                   help="critical-layer protection: layers matched by PATTERN keep at least precision MIN "
                        "(a layer-name glob like 'features.0.*', an op kind conv|dwconv|pwconv|linear, "
                        "'first' or 'last'); repeatable, e.g. --protect first=int8 --protect dwconv=int8")

    h = parser.add_argument_group("hardware objective")
    h.add_argument("--hardware_weight", type=non_negative_float, default=0.5,
                   help="λ: weight of the hardware term relative to cross-entropy (0 = accuracy only) "
                        "(default %(default)s)")
    h.add_argument("--latency_target_ms", type=positive_float, default=None,
                   help="predicted-latency target; only latency above it is penalised (default: none, "
                        "then all latency is penalised relative to the all-INT8 network)")
    h.add_argument("--memory_budget_kb", type=positive_float, default=None,
                   help="peak-RAM budget in KB; only the excess is penalised (default: none; the memory "
                        "filter has already removed options that overflow the analysis threshold)")

    f = parser.add_argument_group("derivation and fine-tuning")
    f.add_argument("--finetune_epochs", type=non_negative_int, default=5,
                   help="QAT fine-tuning epochs of the derived network (default %(default)s)")
    f.add_argument("--finetune_lr", type=positive_float, default=0.005, help="fine-tuning learning rate (default %(default)s)")

    r = parser.add_argument_group("run")
    r.add_argument("--output_dir", default=None, help="run directory (default: runs/dnas/<name>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --output_dir from its checkpoint_last.pt, with its saved arguments")
    r.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    r.add_argument("--compile", choices=("auto", "on", "off"), default=None,
                   help="fuse the element-wise precision mixture with torch.compile: auto (where a C "
                        "compiler works; the first steps then pay a one-time compilation), on, off "
                        "(default: $ADAPTQNET_COMPILE, else auto)")


def parse_protect(rules: Optional[Sequence[str]]) -> List[Tuple[str, str]]:
    if rules is None:
        return []
    parsed = []
    for rule in rules:
        if "=" not in rule:
            raise ValueError(f"--protect: expected PATTERN=MIN (e.g. dwconv=int8), got {rule!r}")
        pattern, minimum = rule.split("=", 1)
        if minimum not in PRECISIONS:
            raise ValueError(f"--protect {rule}: unknown precision {minimum!r}; expected one of {', '.join(PRECISION_ORDER)}")
        parsed.append((pattern, minimum))
    return parsed


def apply_constraints(allowed: Dict[str, List[str]], op_kinds: Mapping[str, str], int_only: bool,
                      protect: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
    """Allowed precisions per layer after --int_only and --protect (removed options do not exist in α)."""
    names = list(allowed)
    out = {}
    for i, name in enumerate(names):
        options = list(allowed[name])
        if int_only:
            kept = [p for p in options if p in INT_PRECISIONS]
            if not kept:
                raise ValueError(f"--int_only: layer {name} allows no integer precision ({', '.join(options)})")
            options = kept
        for pattern, minimum in protect:
            hit = ((pattern == "first" and i == 0) or (pattern == "last" and i == len(names) - 1)
                   or pattern == op_kinds.get(name) or fnmatch.fnmatchcase(name, pattern))
            if hit:
                kept = [p for p in options if PRECISIONS[p].bits >= PRECISIONS[minimum].bits]
                if not kept:
                    warnings.warn(f"--protect {pattern}={minimum}: layer {name} allows only "
                                  f"{', '.join(options)}; keeping its highest, {options[0]}")
                    kept = options[:1]
                options = kept
        out[name] = options
    return out


# ----------------------------------------------------------------------------------------------------
# Inputs: everything is checked before any training starts
# ----------------------------------------------------------------------------------------------------
SPEC_MATCH_KEYS = ("type", "width_mult", "input_size", "strides", "num_classes")


def check_analysis_matches(analysis: Mapping, spec: Mapping, path: str, source: str) -> None:
    a_spec = analysis.get("model", {})
    diffs = [f"{k} {a_spec.get(k)!r} (model: {spec.get(k)!r})" for k in SPEC_MATCH_KEYS
             if k in a_spec and a_spec.get(k) != spec.get(k)]
    if diffs:
        raise ValueError(f"{path}: analysis was made for another model or input size than {source}: "
                         f"{'; '.join(diffs)}")


def load_pretrained_into(model: nn.Module, ckpt: Mapping, path: str) -> None:
    """Copy a pretraining checkpoint's weights; the search-only tensors (α, clips) keep their init."""
    check_same_model(model.spec, ckpt["spec"], f"--pretrained {path}", keys=None, error=CheckpointError)
    state = ckpt["model"]
    own = model.state_dict()
    search_only = (".alpha", ".act_clip")
    missing = [k for k in own if k not in state and not k.endswith(search_only)]
    if missing:
        raise CheckpointError(f"--pretrained {path}: checkpoint lacks {', '.join(missing[:5])}")
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith(search_only) and k in own},
                          strict=False)


def build_optimizers(model: nn.Module, args, epochs: int):
    decay, no_decay = [], []
    for p in weight_parameters(model):
        (decay if p.dim() > 1 else no_decay).append(p)   # BN, biases and PACT clips are 1-D
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.weight_optimizer == "adamw":
        opt_w = torch.optim.AdamW(groups, lr=args.lr_weights)
    else:
        opt_w = torch.optim.SGD(groups, lr=args.lr_weights, momentum=0.9, nesterov=True)
    sched_w = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(epochs, 1))
    alphas = arch_parameters(model)
    if args.alpha_optimizer == "adam":
        opt_a = torch.optim.Adam(alphas, lr=args.lr_alpha, betas=(0.5, 0.999), weight_decay=args.alpha_weight_decay)
    else:
        opt_a = torch.optim.SGD(alphas, lr=args.lr_alpha, momentum=0.9, weight_decay=args.alpha_weight_decay)
    return opt_w, sched_w, opt_a


# ----------------------------------------------------------------------------------------------------
# Drivers shared by stage 1 and stage 2
# ----------------------------------------------------------------------------------------------------
def log_line(row: Mapping) -> str:
    parts = [f"[{row['phase']}] epoch {row['epoch']}"]
    for key, fmt in (("temperature", "T={:.3g}"), ("train_loss", "loss={:.3f}"), ("train_acc", "train={:.1f}%"),
                     ("val_acc", "val={:.1f}%"), ("hw_loss", "hw={:.3f}"), ("exp_latency_ms", "E[lat]={:.2f}ms"),
                     ("argmax_latency_ms", "argmax lat={:.2f}ms"), ("exp_peak_ram_kb", "E[RAM]={:.1f}KB"),
                     ("argmax_peak_ram_kb", "argmax RAM={:.1f}KB"), ("alpha_entropy", "H(π)={:.3f}"),
                     ("time_s", "{:.0f}s")):
        value = row.get(key)
        if value not in (None, ""):
            parts.append(fmt.format(value))
    return "  ".join(parts)


def search_epoch_row(model, epoch, temperature, train_stats, val_stats, hw: HardwareCost, elapsed, lrs) -> dict:
    with torch.no_grad():
        exp_lat = float(hw.expected_latency_ms(model))
        exp_ram = float(hw.expected_peak_ram_bytes(model)) / 1024.0
    choice = derive_mapping(model)
    return {"epoch": epoch, "phase": "search", "temperature": temperature,
            "train_loss": train_stats["train_loss"], "train_acc": train_stats["train_acc"],
            "val_loss": val_stats["loss"], "val_acc": val_stats["acc"], "hw_loss": train_stats.get("hw_loss", ""),
            "exp_latency_ms": exp_lat, "exp_peak_ram_kb": exp_ram,
            "argmax_latency_ms": hw.mapping_latency_ms(choice),
            "argmax_peak_ram_kb": hw.mapping_peak_ram_bytes(choice) / 1024.0,
            "alpha_entropy": alpha_entropy(model), "lr_weights": lrs[0], "lr_alpha": lrs[1], "time_s": elapsed}



def alphas_document(model: nn.Module, history: Sequence[dict]) -> dict:
    return {"schema": formats.ALPHAS, "layers": [n for n, _ in mixed_layers(model)],
            "precisions": allowed_precisions(model), "history": list(history)}


def search_loop(model, args, settings: SearchSettings, loaders, hw: HardwareCost, runtime, files: RunFiles,
                resume: Optional[Mapping], checkpoint_extra: Mapping, alphas_doc=None) -> List[dict]:
    """Run (or continue) the search epochs; returns the log rows. Checkpoints after every epoch.
    ``alphas_doc(model, history)`` writes alphas.json (default alphas_document; stage 2 has its own)."""
    train_loader, alpha_loader, val_loader = loaders
    opt_w, sched_w, opt_a = build_optimizers(model, args, settings.epochs)
    rows, history, start = [], [], 0
    if resume is not None and resume.get("phase") == "search":
        model.load_state_dict(resume["model"])
        opt_w.load_state_dict(resume["opt_w"])
        opt_a.load_state_dict(resume["opt_a"])
        sched_w.load_state_dict(resume["sched_w"])
        rows, history, start = list(resume["log_rows"]), list(resume["alpha_history"]), int(resume["epoch"])
        set_rng_state(resume["rng"])
    for epoch in range(start, settings.epochs):
        t0 = time.time()
        temperature = temperature_at(epoch, settings.epochs, settings.temp_start, settings.temp_end,
                                     settings.temp_schedule)
        set_temperature(model, temperature)
        apply_progressive(model, progressive_min_bits(epoch, settings.progressive_epochs))
        lrs = (opt_w.param_groups[0]["lr"], opt_a.param_groups[0]["lr"])
        stats = run_search_epoch(model, epoch, settings, train_loader, alpha_loader, hw, opt_w, opt_a, runtime,
                                 desc=f"search {epoch + 1}/{settings.epochs}")
        sched_w.step()
        broadcast_buffers(model)
        val = evaluate(model, val_loader, runtime, show_progress=False)
        row = search_epoch_row(model, epoch, temperature, stats, val, hw, time.time() - t0, lrs)
        rows.append(row)
        history.append(alpha_snapshot(model, epoch, temperature))
        files.log_csv(rows)
        files.json("alphas.json", (alphas_doc or alphas_document)(model, history))
        files.checkpoint("checkpoint_last.pt", {
            **checkpoint_extra, "phase": "search", "epoch": epoch + 1, "model": model.state_dict(),
            "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(), "sched_w": sched_w.state_dict(),
            "log_rows": rows, "alpha_history": history, "rng": rng_state()})
        if runtime.is_main:
            print(log_line(row), flush=True)
    apply_progressive(model, 0)
    return rows


def finetune_loop(net, args, loaders, runtime, files: RunFiles, resume: Optional[Mapping], rows: List[dict],
                  checkpoint_extra: Mapping, final_extra: Mapping, derived_val: float) -> Tuple[List[dict], float]:
    """QAT fine-tuning of a fixed network; final.pt holds the weights with the best validation accuracy,
    the derived network before fine-tuning included (``finetune_epoch`` -1, its validation accuracy
    ``derived_val`` as the caller measured it), so fine-tuning is kept only where it helps on validation."""
    train_loader, val_loader = loaders
    ft_args = argparse.Namespace(**{**vars(args), "lr_weights": args.finetune_lr})
    opt, sched, _ = build_optimizers(net, ft_args, max(args.finetune_epochs, 1))
    start, best = 0, -1.0
    if resume is not None and resume.get("phase") == "finetune":
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt_w"])
        sched.load_state_dict(resume["sched_w"])
        start, best, rows = int(resume["epoch"]), float(resume["best_val"]), list(resume["log_rows"])
        set_rng_state(resume["rng"])

    # the derived network has nothing left to search: freeze α so DDP sees only trained parameters
    set_requires_grad(arch_parameters(net), False)
    trained = runtime.wrap(net)

    def save_final(val_acc, epoch):
        files.checkpoint("final.pt", {**final_extra, "model": net.state_dict(), "val_acc": val_acc,
                                      "finetune_epoch": epoch})

    if resume is None or resume.get("phase") != "finetune":
        best = derived_val
        save_final(best, -1)
    for epoch in range(start, args.finetune_epochs):
        t0 = time.time()
        lr = opt.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        stats = train_one_epoch(trained, train_loader, opt, runtime, nn.functional.cross_entropy,
                                grad_clip=args.grad_clip, desc=f"finetune {epoch + 1}/{args.finetune_epochs}",
                                on_step=lambda step, _e=epoch: fault_point(f"finetune:{_e}", step))
        sched.step()
        broadcast_buffers(net)
        val = evaluate(net, val_loader, runtime, show_progress=False)
        if val["acc"] > best:
            best = val["acc"]
            save_final(best, epoch)
        row = {"epoch": epoch, "phase": "finetune", "train_loss": stats["loss"], "train_acc": stats["acc"],
               "val_loss": val["loss"], "val_acc": val["acc"], "lr_weights": lr, "time_s": time.time() - t0}
        rows.append(row)
        files.log_csv(rows)
        files.checkpoint("checkpoint_last.pt", {
            **checkpoint_extra, "phase": "finetune", "epoch": epoch + 1, "model": net.state_dict(),
            "opt_w": opt.state_dict(), "sched_w": sched.state_dict(), "best_val": best, "log_rows": rows,
            "rng": rng_state()})
        if runtime.is_main:
            print(log_line(row), flush=True)
    return rows, best


# ----------------------------------------------------------------------------------------------------
# Stage 1
# ----------------------------------------------------------------------------------------------------
def default_output_dir(args) -> str:
    stem = os.path.splitext(os.path.basename(args.tensor_analysis_json))[0]
    tag = f"{stem}_lam{args.hardware_weight:g}" + ("_intonly" if args.int_only else "")
    return os.path.join(REPO_ROOT, "runs", "dnas", tag)


RESUME_KEEP = ("resume", "output_dir", "device")


def resolve_resume(args) -> Tuple[argparse.Namespace, Optional[dict]]:
    """With --resume, the run continues with the arguments it was started with."""
    if not args.resume:
        return args, None
    if not args.output_dir:
        raise ValueError("--resume needs --output_dir (the run directory to continue)")
    ckpt = load_checkpoint(os.path.join(args.output_dir, "checkpoint_last.pt"))
    saved = dict(ckpt.get("args", {}))
    for key in RESUME_KEEP:
        saved[key] = getattr(args, key)
    return argparse.Namespace(**{**vars(args), **saved}), ckpt


def add_stage1_args(parser: argparse.ArgumentParser) -> None:
    from Search_CIFAR10.training.data import add_data_args
    from Search_CIFAR10.training.runtime import add_runtime_args
    g = parser.add_argument_group("inputs")
    g.add_argument("--tensor_analysis_json", default=None,
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
    add_data_args(parser)
    add_search_args(parser)
    add_runtime_args(parser)


def prepare_model(args, analysis: Mapping, num_classes: int, runtime) -> Tuple[nn.Module, Optional[dict]]:
    """Build the supernet the analysis describes, load the pretrained weights, restrict each layer to
    its allowed precisions. Every mismatch is reported before any training starts."""
    a_path = args.tensor_analysis_json
    a_spec = dict(analysis.get("model", {}))
    pretrained = None
    if args.pretrained:
        pretrained = load_checkpoint(args.pretrained)
        if "spec" not in pretrained or "model" not in pretrained:
            raise CheckpointError(f"--pretrained {args.pretrained}: not a pretraining checkpoint (no spec/model)")
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
    model = build_from_spec(spec, alpha_init=args.alpha_init)
    if pretrained is not None:
        load_pretrained_into(model, pretrained, args.pretrained)
    allowed = {entry["name"]: list(entry["allowed_precisions"]) for entry in analysis["layers"]}
    check_layer_names_match([n for n, _ in mixed_layers(model)], list(allowed), a_path)
    op_kinds = {entry["name"]: entry.get("op") for entry in analysis["layers"]}
    allowed = apply_constraints(allowed, op_kinds, args.int_only, parse_protect(args.protect))
    from models.network import restrict_precisions
    restrict_precisions(model, allowed, where=a_path)
    return model, pretrained


def run_stage1(args) -> dict:
    from data.loader import DeviceLoader
    from data.splits import save_split_info
    from Search_CIFAR10.training.data import build_loaders
    from Search_CIFAR10.training.runtime import setup_runtime
    from tensor_analysis.analysis_file import load_analysis_json
    from tensor_analysis.graph import as_analysis
    from tensor_analysis.lut import build_lut, load_lut_json
    from tensor_analysis.profiles import load_profile

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
    files = RunFiles(args.output_dir or default_output_dir(args), runtime.is_main)
    args.output_dir = files.dir
    if resume is None:
        files.json("args.json", vars(args))
        files.json("lut.json", lut)
        if runtime.is_main:
            save_split_info(splits, files.path("split.json"))
    model = runtime.prepare_model(model)
    hw.to(runtime.device)
    alpha_loader = DeviceLoader(splits.val_x, splits.val_y, args.batch_size, model.spec["input_size"],
                                splits.mean, splits.std, shuffle=True, augment=False, flip=splits.flip,
                                seed=args.seed + 1, rank=runtime.rank,
                                drop_last=len(splits.val_y) // runtime.world_size >= args.batch_size,
                                world_size=runtime.world_size, rotate_deg=splits.rotate_deg,
                                channels_last=runtime.channels_last)
    set_mode(model, args.search_mode)
    set_gumbel(model, args.gumbel)
    if pretrained is not None and resume is None:
        calibrate_activation_clips(model, next(iter(train_loader))[0])
    if resume is not None and "fp32_acc" in resume:
        fp32_acc = dict(resume["fp32_acc"])
    else:
        fp32_acc = reference_fp32_accuracy(pretrained, val_loader, test_loader, runtime) if pretrained else {}

    settings = SearchSettings(
        epochs=args.epochs, warmup_epochs=args.warmup_epochs, temp_schedule=args.temp_schedule,
        temp_start=args.temp_start, temp_end=args.temp_end, hardware_weight=args.hardware_weight,
        latency_target_ms=args.latency_target_ms, memory_budget_kb=args.memory_budget_kb,
        grad_clip=args.grad_clip,
        progressive_epochs=(max(args.epochs // 2, 1) if args.progressive == -1 else args.progressive))
    extra = {"args": vars(args), "spec": model.spec, "allowed": allowed_precisions(model), "fp32_acc": fp32_acc}
    if resume is None or resume["phase"] == "search":
        rows = search_loop(model, args, settings, (train_loader, alpha_loader, val_loader), hw, runtime, files,
                           resume, extra)
        searched = derive_mapping(model)
        mapping, repairs = enforce_budgets(searched, hw, args.memory_budget_kb, args.latency_target_ms)
        if repairs and runtime.is_main:
            print(f"budget repair: {len(repairs)} layer change(s) so the derived network meets "
                  f"--memory_budget_kb / --latency_target_ms: "
                  + ", ".join(f"{c['layer']} {c['from']}→{c['to']}" for c in repairs), flush=True)
        supernet_val = rows[-1]["val_acc"]
        files.checkpoint("supernet.pt", {**extra, "model": model.state_dict(), "mapping": mapping})
        net = derive_fixed_network(model, mapping)
        derived_val = evaluate(net, val_loader, runtime, show_progress=False)["acc"]
        resume = None
    else:
        mapping, searched, repairs = dict(resume["mapping"]), dict(resume["searched"]), list(resume["repairs"])
        supernet_val, derived_val = resume["supernet_val"], resume["derived_val"]
        net = runtime.prepare_model(build_from_spec(resume["spec"], precisions={n: [p] for n, p in mapping.items()}))
        rows = list(resume["log_rows"])
    files.json("mapping.json", mapping_document(model.spec, mapping, {"hardware": profile.name}))
    ft_extra = {**extra, "mapping": mapping, "searched": searched, "repairs": repairs,
                "supernet_val": supernet_val, "derived_val": derived_val}
    final_extra = {"spec": model.spec, "allowed": {n: [p] for n, p in mapping.items()}, "mapping": mapping}
    summary = finetune_and_finish(
        net, args, (train_loader, val_loader, test_loader), runtime, files, resume, rows, hw, mapping, repairs,
        ft_extra, final_extra,
        lambda accuracy, times: build_summary(args, model.spec, mapping, net_analysis, lut, profile, fp32_acc,
                                              accuracy, times))
    if runtime.is_main:
        write_run_plots(files, rows, summary, args)
        print(summary_text(summary), flush=True)
    runtime.cleanup()
    return summary


def finetune_and_finish(net, args, loaders, runtime, files: RunFiles, resume: Optional[Mapping], rows: List[dict],
                        hw: HardwareCost, choice, repairs, ft_extra: Mapping, final_extra: Mapping, summarize) -> dict:
    """The end of a run (both stages), after derivation: fine-tune the derived network (unless a resumed
    run is past that), load the network chosen on validation, measure the test split (its only use),
    write summary.json (``summarize(accuracy, times)`` plus the budget checks) and mark the run done.
    ``ft_extra`` carries the run's checkpoint state, including ``supernet_val`` and ``derived_val``."""
    train_loader, val_loader, test_loader = loaders
    if resume is None or resume["phase"] == "finetune":
        rows, best_val = finetune_loop(net, args, (train_loader, val_loader), runtime, files, resume, rows,
                                       ft_extra, final_extra, ft_extra["derived_val"])
    else:
        best_val = resume["best_val"]
    checkpoint_extra = {**ft_extra, "best_val": best_val}
    barrier()
    final = load_checkpoint(files.path("final.pt"))
    net.load_state_dict(final["model"])
    test = evaluate(net, test_loader, runtime, show_progress=False)
    times = {phase: sum(float(r["time_s"]) for r in rows if r["phase"] == phase) for phase in ("search", "finetune")}
    summary = summarize({"supernet_val": ft_extra["supernet_val"], "derived_val_before_finetune":
                         ft_extra["derived_val"], "finetuned_val": best_val, "test": test["acc"]}, times)
    summary["budget_repairs"] = repairs
    # -1: no fine-tuning epoch beat the derived network on validation, so final.pt is the derived network
    summary["finetune_epoch_chosen"] = final.get("finetune_epoch")
    if args.memory_budget_kb is not None:
        summary["hardware"]["meets_memory_budget"] = hw.mapping_peak_ram_bytes(choice) <= args.memory_budget_kb * 1024
    if args.latency_target_ms is not None:
        summary["hardware"]["meets_latency_target"] = hw.mapping_latency_ms(choice) <= args.latency_target_ms
    files.json("summary.json", summary)
    files.checkpoint("checkpoint_last.pt", {**checkpoint_extra, "phase": "done", "epoch": 0, "log_rows": rows})
    return summary


def build_summary(args, spec, mapping, net_analysis, lut, profile, fp32_acc, accuracy, times) -> dict:
    """summary.json: accuracies, the predicted hardware figures of the result and of uniform
    references, the precision histogram, per-layer rows for reports, and wall times."""
    from tensor_analysis.flash import compression
    from tensor_analysis.prediction import predict_network
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
    return (f"done: {fp32}final test {acc['test']:.2f}% (val {acc['finetuned_val']:.2f}%)  "
            f"latency {hwd['latency_ms']:.2f} ms  peak RAM {hwd['peak_ram_kb']:.1f} KB  "
            f"Flash {hwd['flash_kb']:.1f} KB  compression {hwd['compression']:.2f}x  "
            f"precisions {summary['precision_histogram']}")


def write_run_plots(files: RunFiles, rows, summary: Mapping, args) -> None:
    from Search_CIFAR10.reporting.figures.precision_map import plot_precision_map
    from Search_CIFAR10.reporting.figures.run_figures import plot_run_dir
    plot_run_dir(files.dir)
    plot_precision_map(summary["layers"], files.path("precision_map.png"),
                       memory_budget_kb=args.memory_budget_kb, latency_target_ms=args.latency_target_ms,
                       title=f"{summary['model']['type']} on {summary['hardware']['profile']}")


def reference_fp32_accuracy(pretrained: Mapping, val_loader, test_loader, runtime) -> Dict[str, float]:
    """Accuracy of the pretrained network at FP32: the baseline every result is compared with."""
    ref = build_from_spec(pretrained["spec"])
    ref.load_state_dict(pretrained["model"])
    for _, layer in mixed_layers(ref):
        layer.set_precision("fp32")
    ref = runtime.prepare_model(ref)
    return {"fp32_val": evaluate(ref, val_loader, runtime)["acc"],
            "fp32_test": evaluate(ref, test_loader, runtime)["acc"]}
