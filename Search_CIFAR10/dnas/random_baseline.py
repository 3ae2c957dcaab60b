"""The random-search baseline: what the same budgets and the same compute buy without the search.

N mappings are drawn uniformly from the precisions each layer may use, keeping only those inside the RAM
budget and the latency target (rejection sampling, seeded), each passed through the derivation's rule for
dominated layers as a searched network is (unless --keep_dominated). Each is fine-tuned exactly as a searched
run's derived network is (same epochs, final.pt chosen on validation), the candidate with the best
validation accuracy is chosen, and only that one is measured on the test split. N defaults to the
number of fine-tuning runs that cost as much training as one DNAS run with the same flags
(``dnas_epoch_equivalents``).

Run directory: the chosen candidate's files as a stage-1 run has them (mapping.json, final.pt,
summary.json with ``"source": "random"`` and the draw statistics, plots) plus ``candidates/<k>/``, one
fine-tuning run per candidate (resumable: a finished candidate is not run again).
"""
from __future__ import annotations

import copy
import os
import random
import shutil
import time
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from data.splits import derive_seed
from models import formats
from models.files import load_checkpoint, read_json
from models.mapping import mapping_document
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.dnas.derive import replace_dominated
from Search_CIFAR10.dnas.driver import run_search
from Search_CIFAR10.dnas.hardware_cost import HardwareCost
from Search_CIFAR10.dnas.stage1 import prepare_stage1, stage1_search, write_run_plots
from Search_CIFAR10.training.loop import evaluate
from Search_CIFAR10.training.run_dir import LAST, RunDir

MAX_DRAWS = 200_000
CANDIDATE = formats.RANDOM_CANDIDATE_SOURCE


def dnas_epoch_equivalents(epochs: int, warmup_epochs: int, finetune_epochs: int) -> int:
    """Training passes over the train split of one DNAS run: a warm-up epoch trains the weights once, a
    search epoch also takes an α step (forward + backward on a validation batch) after every weight
    step, and each fine-tuning epoch is one pass."""
    warmup = min(warmup_epochs, epochs)
    return warmup + 2 * (epochs - warmup) + finetune_epochs


def best_reachable(hw: HardwareCost) -> Tuple[float, float]:
    """(lowest peak RAM in bytes, lowest latency in ms) any allowed mapping reaches, each on its own:
    every layer at its least-memory option, and every layer at its fastest."""
    return hw.mapping_peak_ram_bytes(hw.smallest_choice()), hw.mapping_latency_ms(hw.cheapest_choice())


def draw_mappings(hw: HardwareCost, count: int, seed: int, memory_budget_kb: Optional[float] = None,
                  latency_target_ms: Optional[float] = None, max_draws: int = MAX_DRAWS,
                  replace_dominated_layers: bool = False) -> Tuple[List[Dict[str, str]], int]:
    """``count`` distinct mappings drawn uniformly from each layer's allowed precisions among those inside
    both budgets, and how many draws that took. ValueError when the budgets admit no mapping (the best
    reachable figure given), or when ``max_draws`` draws found none (the acceptance rate given).
    ``replace_dominated_layers`` passes each accepted draw through the derivation's ``replace_dominated``,
    as a searched network is, so both reach fine-tuning by the same rules."""
    budget = None if memory_budget_kb is None else memory_budget_kb * 1024.0
    ram, latency = best_reachable(hw)
    if budget is not None and ram > budget:
        raise ValueError(f"--memory_budget_kb {memory_budget_kb:g}: no allowed mapping fits; the least peak RAM "
                         f"reachable is {ram / 1024.0:.1f} KB")
    if latency_target_ms is not None and latency > latency_target_ms:
        raise ValueError(f"--latency_target_ms {latency_target_ms:g}: no allowed mapping meets it; the fastest "
                         f"reachable is {latency:.2f} ms")
    rng = random.Random(seed)
    found: List[Dict[str, str]] = []
    draws = 0
    while len(found) < count and draws < max_draws:
        mapping = {n: rng.choice(hw.option_labels[n]) for n in hw.layer_names}
        draws += 1
        if latency_target_ms is not None and hw.mapping_latency_ms(mapping) > latency_target_ms:
            continue
        if budget is not None and hw.mapping_peak_ram_bytes(mapping) > budget:
            continue
        if replace_dominated_layers:
            mapping, _ = replace_dominated(mapping, hw, memory_budget_kb)
        if mapping not in found:
            found.append(mapping)
    if not found:
        raise ValueError(f"no mapping drawn inside the budgets in {draws} uniform draws (acceptance rate below "
                         f"1/{draws}); widen --memory_budget_kb / --latency_target_ms")
    return found, draws


def _candidate(inputs, k: int, labels: Mapping[str, str], folder: str) -> dict:
    """Fine-tune candidate ``k`` in ``folder`` (or read it when finished, continue it when interrupted)."""
    if os.path.isfile(os.path.join(folder, "summary.json")):
        return read_json(os.path.join(folder, "summary.json"), "candidate summary")
    last = os.path.join(folder, LAST)
    resume = load_checkpoint(last) if os.path.isfile(last) else None
    torch.manual_seed(derive_seed(inputs.args.seed, k))
    # a given mapping leaves the supernet as it is (derivation fine-tunes a copy), so candidates share it
    stage = stage1_search(inputs, inputs.model, dict(labels), plots=False, source=CANDIDATE)
    return run_search(stage, inputs.args, inputs.loaders, inputs.runtime, RunDir(folder, inputs.runtime.is_main),
                      resume, measure_test=False)


def default_output_dir(args) -> str:
    stem = os.path.splitext(os.path.basename(args.tensor_analysis_json))[0]
    return os.path.join(REPO_ROOT, "runs", "random", f"{stem}_seed{args.seed}")


def run_random_search(args) -> dict:
    if args.mapping:
        raise ValueError("--mapping: a random search draws its own mappings; fine-tune a given one with "
                         "dnas_search_cifar10_mbv2.py --mapping")
    started = time.time()
    inputs = prepare_stage1(args, default_output_dir)
    args, run, hw = inputs.args, inputs.run, inputs.hw
    budget_epochs = dnas_epoch_equivalents(args.epochs, args.warmup_epochs, args.finetune_epochs)
    count = args.candidates or max(1, budget_epochs // max(args.finetune_epochs, 1))
    drawn, draws = draw_mappings(hw, count, args.seed, args.memory_budget_kb, args.latency_target_ms,
                                 replace_dominated_layers=not args.keep_dominated)
    # what --resume needs to continue: the arguments (the draws repeat from the seed) and the FP32 reference
    run.checkpoint(LAST, {"args": vars(args), "fp32_acc": inputs.fp32_acc, "phase": "random"})
    if inputs.runtime.is_main:
        print(f"random search: {len(drawn)} mapping(s) inside the budgets from {draws} draws; each fine-tuned "
              f"{args.finetune_epochs} epoch(s) (one DNAS run with these flags: {budget_epochs} epoch "
              f"equivalents)", flush=True)
    results = []
    for k, labels in enumerate(drawn):
        summary = _candidate(inputs, k, labels, run.path(os.path.join("candidates", f"{k:02d}")))
        results.append(summary)
        if inputs.runtime.is_main:
            print(f"candidate {k + 1}/{len(drawn)}: validation {summary['accuracy']['finetuned_val']:.2f}%, "
                  f"{summary['hardware']['latency_ms']:.2f} ms, {summary['hardware']['peak_ram_kb']:.1f} KB",
                  flush=True)
    chosen = max(range(len(drawn)), key=lambda k: results[k]["accuracy"]["finetuned_val"])
    chosen_dir = run.path(os.path.join("candidates", f"{chosen:02d}"))
    net = stage1_search(inputs, inputs.model, drawn[chosen]).rebuild(drawn[chosen])
    net = inputs.runtime.prepare_model(net)
    net.load_state_dict(load_checkpoint(os.path.join(chosen_dir, "final.pt"))["model"])
    test = evaluate(net, inputs.loaders[3], inputs.runtime, show_progress=False)["acc"]
    summary = copy.deepcopy(results[chosen])
    summary["accuracy"]["test"] = test
    summary["source"] = "random"
    summary["random_search"] = {
        "candidates": len(drawn), "draws": draws, "acceptance_rate": len(drawn) / draws,
        "chosen": chosen, "candidate_val": [r["accuracy"]["finetuned_val"] for r in results],
        "dnas_epoch_equivalents": budget_epochs, "epoch_equivalents": len(drawn) * args.finetune_epochs,
        "wall_time_s": time.time() - started}
    summary["time_s"] = {"search": 0.0, "finetune": sum(float(r["time_s"]["finetune"]) for r in results)}
    if inputs.runtime.is_main:
        shutil.copyfile(os.path.join(chosen_dir, "final.pt"), run.path("final.pt"))
        run.json("mapping.json", mapping_document(inputs.model.spec, drawn[chosen], {"hardware": inputs.profile.name,
                                                                                    "source": "random"}))
        run.json("summary.json", summary)
        write_run_plots(run, summary, args)
        print(f"done: chose candidate {chosen + 1} on validation ({summary['accuracy']['finetuned_val']:.2f}%), "
              f"test {test:.2f}%, {summary['hardware']['latency_ms']:.2f} ms, "
              f"{summary['hardware']['peak_ram_kb']:.1f} KB", flush=True)
    inputs.runtime.cleanup()
    return summary
