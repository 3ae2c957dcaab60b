"""The one run driver of both search stages: search → derive → repair → fine-tune → test once → summary.

A stage describes itself with a ``SearchStage`` (its supernet, hardware cost, how a choice becomes a
network, what its summary and plots say, what its checkpoints carry); ``run_search`` does the rest,
resumably. The run directory (docs/file_formats.md §7):

  args.json         resolved arguments           log.csv        one row per epoch (search, finetune)
  analysis.json     the analysis searched with   lut.json       the latency table searched with
  alphas.json       π history per layer          mapping.json   the derived precision per layer
  split.json        data split (seed, indices)   summary.json   accuracies, hardware figures, times
  supernet.pt       the searched supernet        final.pt       the fine-tuned network (chosen on val)
  checkpoint_last.pt  atomic, resumable          *.png          plots

The mapping is stored once, in mapping.json; final.pt records its digest, so a mapping edited after the
run is recognised as not belonging to the weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from data.loader import DeviceLoader
from data.splits import save_split_info
from models import formats
from models.files import load_checkpoint
from models.mapping import load_mapping, mapping_digest, mapping_document
from models.network import allowed_precisions, arch_parameters, derive_mapping, mixed_layers, set_temperature
from Search_CIFAR10.dnas.derive import (best_figures, budget_figures, budget_text, enforce_budgets, missed_budgets,
                                        replace_dominated)
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.dnas.search import (SearchSettings, alpha_entropy, alpha_snapshot, apply_progressive, fault_point,
                                        progressive_min_bits, run_search_epoch, set_requires_grad, temperature_at)
from Search_CIFAR10.training.log import format_epoch
from Search_CIFAR10.training.loop import build_optimizer, evaluate, param_groups, train_one_epoch
from Search_CIFAR10.training.run_dir import (BEST_VAL, EPOCH, LAST, LOG_ROWS, OPTIMIZER, RNG, SCHEDULER, RunDir,
                                             rng_state, set_rng_state)
from Search_CIFAR10.training.runtime import Runtime, barrier, broadcast_buffers

# what a search run's checkpoint holds besides the shared keys (training/run_dir.py)
ARCH_OPTIMIZER, PHASE, ALPHA_HISTORY = "arch_optimizer", "phase", "alpha_history"
# the columns the one line per epoch prints
EPOCH_LINE_KEYS = ("temperature", "train_loss", "train_acc", "val_acc", "hw_loss", "exp_latency_ms",
                   "argmax_latency_ms", "exp_peak_ram_kb", "argmax_peak_ram_kb", "alpha_entropy", "time_s")
# flags a resumed run takes from its command line; every other one comes from the run's args.json
RESUME_KEEP = ("resume", "output_dir", "device", "overwrite")
# flags naming files and folders a run reads: its run directory may be none of them and hold none of them
RUN_INPUTS = ("tensor_analysis_json", "latency_lut", "pretrained", "hardware", "stage1_dir", "dual_analysis_json",
              "data_dir")


@dataclass
class SearchStage:
    """What differs between stage 1 and stage 2; ``run_search`` does the rest."""

    model: nn.Module                                   # the supernet, on the device
    spec: Dict[str, Any]
    hw: HardwareCost
    settings: SearchSettings
    to_entries: Callable[[Mapping[str, str]], Dict[str, Any]]      # chosen α labels → mapping.json entries
    to_labels: Callable[[Mapping[str, Any]], Dict[str, str]]       # mapping.json entries → α labels
    derive: Callable[[nn.Module, Mapping[str, Any]], nn.Module]    # supernet + mapping → derived network
    rebuild: Callable[[Mapping[str, Any]], nn.Module]              # mapping → derived network (resume)
    summarize: Callable[[Mapping[str, Any], Mapping[str, float], Mapping[str, float]], dict]
    summary_text: Callable[[Mapping], str]
    write_plots: Callable[[RunDir, Mapping], None]
    alphas_document: Callable[[nn.Module, Sequence[dict]], dict]
    mapping_extra: Dict[str, Any] = field(default_factory=dict)    # recorded in mapping.json
    checkpoint_extra: Dict[str, Any] = field(default_factory=dict)  # recorded in every checkpoint
    final_extra: Dict[str, Any] = field(default_factory=dict)       # recorded in final.pt
    # α labels to fine-tune without searching (a user's mapping, a uniform network, a random draw)
    fixed: Optional[Dict[str, str]] = None
    source: Optional[str] = None    # summary.json's "source" (default: "search", or "mapping" when fixed)


# ----------------------------------------------------------------------------------------------------
# The pieces of a run
# ----------------------------------------------------------------------------------------------------
def resolve_resume(args) -> Tuple[argparse.Namespace, Optional[dict]]:
    """With --resume, the run continues with the arguments it was started with."""
    if not args.resume:
        return args, None
    if not args.output_dir:
        raise ValueError("--resume needs --output_dir (the run directory to continue)")
    if args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    if not os.path.isfile(os.path.join(args.output_dir, LAST)):
        raise ValueError(f"--resume: {args.output_dir} holds no {LAST}, so there is nothing to continue; start the "
                         f"run without --resume")
    ckpt = load_checkpoint(os.path.join(args.output_dir, LAST))
    if PHASE not in ckpt:
        raise ValueError(f"--resume: {os.path.join(args.output_dir, LAST)} is not a search's checkpoint (pretraining "
                         f"writes one of that name too); give the folder of the search to continue")
    saved = dict(ckpt.get("args", {}))
    for key in RESUME_KEEP:
        saved[key] = getattr(args, key)
    return argparse.Namespace(**{**vars(args), **saved}), ckpt


def alpha_loader(splits, args, runtime: Runtime, input_size: int) -> DeviceLoader:
    """Validation batches for the α steps: shuffled with their own seed, never augmented."""
    return DeviceLoader(splits.val_x, splits.val_y, args.batch_size, input_size, splits.mean, splits.std,
                        shuffle=True, augment=False, flip=splits.flip, seed=args.seed + 1, rank=runtime.rank,
                        drop_last=len(splits.val_y) // runtime.world_size >= args.batch_size,
                        world_size=runtime.world_size, rotate_deg=splits.rotate_deg,
                        channels_last=runtime.channels_last)


def open_run_dir(args, default_dir: str, runtime: Runtime, resume: Optional[Mapping], splits,
                 analysis: Mapping, lut: Mapping, hw: HardwareCost) -> RunDir:
    """The run directory, claimed (training/run_dir.py) once a new run is known to be possible: a
    budget no network of the allowed options meets stops it here, before anything is written or
    trained, unless --allow_unmet_budgets. A new run records its arguments and every input it searches
    with (the analysis, the latency table, the data split), so nothing later has to find them elsewhere."""
    if resume is None:
        missed = "; ".join(budget_text(*m, best=True) for m in missed_budgets(vars(args), best_figures(hw)))
        if missed and not args.allow_unmet_budgets:
            raise ValueError(f"{missed}: no network meets it, so nothing was trained; relax it, or pass "
                             f"--allow_unmet_budgets to search for the closest network anyway")
        if missed and runtime.is_main:
            print(f"warning: {missed}: no network meets it; searching anyway (--allow_unmet_budgets)",
                  file=sys.stderr, flush=True)
    run = RunDir.claim(args.output_dir or default_dir, runtime.is_main, resume=resume is not None,
                       overwrite=args.overwrite, inputs=[(f"--{k}", getattr(args, k, None)) for k in RUN_INPUTS])
    args.output_dir = run.dir
    if resume is None:
        run.json("args.json", vars(args))
        run.json("analysis.json", analysis, compact=True)
        run.json("lut.json", lut)
        if runtime.is_main:
            save_split_info(splits, run.path("split.json"))
    return run


def search_settings(args, progressive_epochs: int = 0) -> SearchSettings:
    return SearchSettings(
        epochs=args.epochs, warmup_epochs=args.warmup_epochs, temp_schedule=args.temp_schedule,
        temp_start=args.temp_start, temp_end=args.temp_end, hardware_weight=args.hardware_weight,
        latency_target_ms=args.latency_target_ms, memory_budget_kb=args.memory_budget_kb,
        grad_clip=args.grad_clip, progressive_epochs=progressive_epochs)


def build_optimizers(model: nn.Module, args, epochs: int):
    """The weights' optimizer (cosine schedule per epoch) and α's; α never gets weight decay's groups."""
    arch = {id(p) for p in arch_parameters(model)}
    named = [(n, p) for n, p in model.named_parameters() if id(p) not in arch]
    opt_w = build_optimizer(args.weight_optimizer, param_groups(named, args.weight_decay), args.lr_weights)
    sched_w = torch.optim.lr_scheduler.CosineAnnealingLR(opt_w, T_max=max(epochs, 1))
    alphas = arch_parameters(model)
    if args.alpha_optimizer == "adam":
        opt_a = torch.optim.Adam(alphas, lr=args.lr_alpha, betas=(0.5, 0.999), weight_decay=args.alpha_weight_decay)
    else:
        opt_a = torch.optim.SGD(alphas, lr=args.lr_alpha, momentum=0.9, weight_decay=args.alpha_weight_decay)
    return opt_w, sched_w, opt_a


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
    """alphas.json of a stage-1 search: each layer's precisions and π per epoch."""
    return {"schema": formats.ALPHAS, "layers": [n for n, _ in mixed_layers(model)],
            "precisions": allowed_precisions(model), "history": list(history)}


def one_hot_snapshot(model: nn.Module, labels: Mapping[str, str]) -> dict:
    """alphas.json's history entry of a network that was not searched: π one-hot at each layer's label."""
    return {"epoch": 0, "temperature": 1.0,
            "probs": {n: [1.0 if p == labels[n] else 0.0 for p in layer.precisions] for n, layer in mixed_layers(model)}}


def search_loop(stage: SearchStage, args, loaders, runtime: Runtime, run: RunDir, resume: Optional[Mapping]
                ) -> List[dict]:
    """Run (or continue) the search epochs; returns the log rows. Checkpoints after every epoch."""
    model, settings, hw = stage.model, stage.settings, stage.hw
    train_loader, alpha_batches, val_loader = loaders
    opt_w, sched_w, opt_a = build_optimizers(model, args, settings.epochs)
    rows, history, start = [], [], 0
    if resume is not None and resume.get(PHASE) == "search":
        model.load_state_dict(resume["model"])
        opt_w.load_state_dict(resume[OPTIMIZER])
        opt_a.load_state_dict(resume[ARCH_OPTIMIZER])
        sched_w.load_state_dict(resume[SCHEDULER])
        rows, history, start = list(resume[LOG_ROWS]), list(resume[ALPHA_HISTORY]), int(resume[EPOCH])
        set_rng_state(resume[RNG])
    for epoch in range(start, settings.epochs):
        t0 = time.time()
        temperature = temperature_at(epoch, settings.epochs, settings.temp_start, settings.temp_end,
                                     settings.temp_schedule)
        set_temperature(model, temperature)
        apply_progressive(model, progressive_min_bits(epoch, settings.progressive_epochs))
        lrs = (opt_w.param_groups[0]["lr"], opt_a.param_groups[0]["lr"])
        stats = run_search_epoch(model, epoch, settings, train_loader, alpha_batches, hw, opt_w, opt_a, runtime,
                                 desc=f"search {epoch + 1}/{settings.epochs}")
        sched_w.step()
        broadcast_buffers(model)
        val = evaluate(model, val_loader, runtime, show_progress=False)
        row = search_epoch_row(model, epoch, temperature, stats, val, hw, time.time() - t0, lrs)
        rows.append(row)
        history.append(alpha_snapshot(model, epoch, temperature))
        run.log(rows)
        run.json("alphas.json", stage.alphas_document(model, history))
        run.checkpoint(LAST, {
            **stage.checkpoint_extra, PHASE: "search", EPOCH: epoch + 1, "model": model.state_dict(),
            OPTIMIZER: opt_w.state_dict(), ARCH_OPTIMIZER: opt_a.state_dict(), SCHEDULER: sched_w.state_dict(),
            LOG_ROWS: rows, ALPHA_HISTORY: history, RNG: rng_state()})
        if runtime.is_main:
            print(format_epoch(row, settings.epochs, EPOCH_LINE_KEYS), flush=True)
    apply_progressive(model, 0)
    return rows


def finetune_loop(net, args, loaders, runtime: Runtime, run: RunDir, resume: Optional[Mapping], rows: List[dict],
                  checkpoint_extra: Mapping, final_extra: Mapping, derived_val: float) -> Tuple[List[dict], float]:
    """QAT fine-tuning of a fixed network; final.pt holds the weights with the best validation accuracy,
    the derived network before fine-tuning included (``finetune_epoch`` -1, its validation accuracy
    ``derived_val`` as the caller measured it), so fine-tuning is kept only where it helps on validation."""
    train_loader, val_loader = loaders
    ft_args = argparse.Namespace(**{**vars(args), "lr_weights": args.finetune_lr})
    opt, sched, _ = build_optimizers(net, ft_args, max(args.finetune_epochs, 1))
    start, best = 0, -1.0
    if resume is not None and resume.get(PHASE) == "finetune":
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume[OPTIMIZER])
        sched.load_state_dict(resume[SCHEDULER])
        start, best, rows = int(resume[EPOCH]), float(resume[BEST_VAL]), list(resume[LOG_ROWS])
        set_rng_state(resume[RNG])

    # the derived network has nothing left to search: freeze α so DDP sees only trained parameters
    set_requires_grad(arch_parameters(net), False)
    trained = runtime.wrap(net)

    def save_final(val_acc, epoch):
        run.checkpoint("final.pt", {**final_extra, "model": net.state_dict(), "val_acc": val_acc,
                                    "finetune_epoch": epoch})

    if resume is None or resume.get(PHASE) != "finetune":
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
        run.log(rows)
        run.checkpoint(LAST, {
            **checkpoint_extra, PHASE: "finetune", EPOCH: epoch + 1, "model": net.state_dict(),
            OPTIMIZER: opt.state_dict(), SCHEDULER: sched.state_dict(), BEST_VAL: best, LOG_ROWS: rows,
            RNG: rng_state()})
        if runtime.is_main:
            print(format_epoch(row, args.finetune_epochs, EPOCH_LINE_KEYS), flush=True)
    return rows, best


def print_repairs(repairs: Sequence[Mapping], runtime: Runtime) -> None:
    if repairs and runtime.is_main:
        print(f"budget repair: {len(repairs)} layer change(s) so the derived network meets "
              f"--memory_budget_kb / --latency_target_ms: "
              + ", ".join(f"{c['layer']} {c['from']}→{c['to']}" for c in repairs), flush=True)


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def run_search(stage: SearchStage, args, loaders, runtime: Runtime, run: RunDir, resume: Optional[Mapping],
               measure_test: bool = True) -> dict:
    """Search (or continue a search), derive the argmax network, repair it into the budgets, fine-tune
    it, choose final.pt on validation, measure the test split once and write summary.json.
    ``measure_test`` False leaves the test split alone (a candidate that another run chooses among)."""
    train_loader, alpha_batches, val_loader, test_loader = loaders
    if runtime.amp_dtype == torch.float16:
        # the alternating weight and α steps have no loss scaling, and fp16 gradients underflow without it
        raise ValueError("--amp fp16: the searches do not scale their losses; use --amp bf16 (float32's range)")
    if resume is None or resume[PHASE] == "search":
        if stage.fixed is None:
            rows = search_loop(stage, args, (train_loader, alpha_batches, val_loader), runtime, run, resume)
            searched = derive_mapping(stage.model)
            chosen, repairs = enforce_budgets(searched, stage.hw, args.memory_budget_kb, args.latency_target_ms)
            print_repairs(repairs, runtime)
            dominated = []
            if not getattr(args, "keep_dominated", False):
                chosen, dominated = replace_dominated(chosen, stage.hw, args.memory_budget_kb)
                if dominated and runtime.is_main:
                    print(f"{len(dominated)} layer(s) at a precision another of their options beats on bits and "
                          "latency take that option: " + ", ".join(f"{c['layer']} {c['from']}→{c['to']}"
                                                                    for c in dominated), flush=True)
            supernet_val = rows[-1]["val_acc"]
        else:  # nothing to search: the given mapping is fine-tuned as a searched one would be
            rows, searched, chosen, repairs, supernet_val = [], dict(stage.fixed), dict(stage.fixed), [], None
            dominated = []
            run.json("alphas.json", stage.alphas_document(stage.model, [one_hot_snapshot(stage.model, chosen)]))
        mapping = stage.to_entries(chosen)
        run.checkpoint("supernet.pt", {**stage.checkpoint_extra, "model": stage.model.state_dict()})
        net = stage.derive(stage.model, mapping)
        derived_val = evaluate(net, val_loader, runtime, show_progress=False)["acc"]
        run.json("mapping.json", mapping_document(stage.spec, mapping, stage.mapping_extra))
        resume = None
    else:
        _, mapping = load_mapping(run.path("mapping.json"))
        chosen = stage.to_labels(mapping)
        searched, repairs = dict(resume["searched"]), list(resume["repairs"])
        dominated = list(resume.get("dominated", []))
        supernet_val, derived_val = resume["supernet_val"], resume["derived_val"]
        net = runtime.prepare_model(stage.rebuild(mapping))
        rows = list(resume[LOG_ROWS])
    ft_extra = {**stage.checkpoint_extra, "searched": searched, "repairs": repairs, "dominated": dominated, "supernet_val": supernet_val,
                "derived_val": derived_val}
    final_extra = {**stage.final_extra, "spec": stage.spec, "mapping_sha256": mapping_digest(mapping)}
    if resume is None or resume[PHASE] == "finetune":
        rows, best_val = finetune_loop(net, args, (train_loader, val_loader), runtime, run, resume, rows,
                                       ft_extra, final_extra, derived_val)
    else:
        best_val = resume[BEST_VAL]
    barrier()
    final = load_checkpoint(run.path("final.pt"))
    net.load_state_dict(final["model"])
    test = evaluate(net, test_loader, runtime, show_progress=False) if measure_test else {"acc": None}
    times = {phase: sum(float(r["time_s"]) for r in rows if r["phase"] == phase) for phase in ("search", "finetune")}
    accuracy = {"supernet_val": supernet_val, "derived_val_before_finetune": derived_val, "finetuned_val": best_val,
                "test": test["acc"]}
    summary = stage.summarize(mapping, {k: v for k, v in accuracy.items() if v is not None}, times)
    summary["source"] = stage.source or ("search" if stage.fixed is None else "mapping")
    summary["budget_repairs"] = repairs
    summary["dominated_replaced"] = dominated
    # -1: no fine-tuning epoch beat the derived network on validation, so final.pt is the derived network
    summary["finetune_epoch_chosen"] = final.get("finetune_epoch")
    if args.memory_budget_kb is not None:
        summary["hardware"]["meets_memory_budget"] = \
            stage.hw.mapping_peak_ram_bytes(chosen) <= args.memory_budget_kb * 1024
    if args.latency_target_ms is not None:
        summary["hardware"]["meets_latency_target"] = stage.hw.mapping_latency_ms(chosen) <= args.latency_target_ms
    unmet = [budget_text(*m) for m in missed_budgets(vars(args), budget_figures(stage.hw, chosen))]
    summary["hardware"]["unmet_budgets"] = unmet
    summary["hardware"]["allow_unmet_budgets"] = bool(args.allow_unmet_budgets)
    run.json("summary.json", summary)
    run.checkpoint(LAST, {**ft_extra, BEST_VAL: best_val, PHASE: "done", EPOCH: 0, LOG_ROWS: rows})
    if runtime.is_main:
        stage.write_plots(run, summary)
        print(stage.summary_text(summary), flush=True)
        if unmet:
            print(f"warning: THE RESULT MISSES ITS BUDGET: {'; '.join(unmet)} (summary.json: "
                  f"hardware.unmet_budgets)", file=sys.stderr, flush=True)
    return summary
