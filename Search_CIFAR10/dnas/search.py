"""Stage-1 DNAS loop: alternating weight (train split) and α (validation split) steps.

DARTS first order: a weight step on a train batch with α frozen, then an α step on a validation batch
with the weights frozen (and BatchNorm statistics untouched, so validation data never leaks into the
network's weights or buffers), loss = CE + hardware term. The temperature is annealed per epoch.

Everything the loop needs from the outside (data, cost vectors, optimisers) is passed in, so stage 2
runs the same loop over dual-core options.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from models.network import arch_parameters, mixed_layers, weight_parameters
from models.precisions import PRECISIONS
from Search_CIFAR10.training.log import progress
from Search_CIFAR10.training.loop import TrainingDiverged
from Search_CIFAR10.training.runtime import all_reduce_sum

TEMP_SCHEDULES = ("exponential", "cosine", "linear")


def temperature_at(epoch: int, epochs: int, start: float, end: float, schedule: str) -> float:
    """Temperature for ``epoch`` (0-based) of ``epochs``: ``start`` at the first, ``end`` at the last."""
    if schedule not in TEMP_SCHEDULES:
        raise ValueError(f"--temp_schedule: unknown schedule {schedule!r}; expected one of {', '.join(TEMP_SCHEDULES)}")
    if epochs <= 1:
        return float(end)
    f = min(max(epoch / (epochs - 1), 0.0), 1.0)
    if schedule == "exponential":
        return float(start * (end / start) ** f)
    if schedule == "cosine":
        return float(end + 0.5 * (start - end) * (1 + math.cos(math.pi * f)))
    return float(start + (end - start) * f)


def progressive_min_bits(epoch: int, progressive_epochs: int) -> int:
    """Progressive precision reduction: FP16 first, then INT8, INT4, INT2 unlock over the first
    ``progressive_epochs`` epochs (the seed's convergence aid)."""
    if progressive_epochs <= 0:
        return 0
    thresholds = (16, 8, 4, 2)
    stage = min(int(len(thresholds) * epoch / progressive_epochs), len(thresholds))
    return 0 if stage >= len(thresholds) else thresholds[stage]


def apply_progressive(model: nn.Module, min_bits: int) -> None:
    """Lock precisions below ``min_bits`` (their π becomes 0); a layer always keeps its highest one."""
    for _, layer in mixed_layers(model):
        if min_bits <= 0:
            layer.active_mask = None
            continue
        mask = [PRECISIONS[p].bits >= min_bits for p in layer.precisions]
        if not any(mask):
            mask[0] = True
        layer.active_mask = None if all(mask) else torch.tensor(mask, device=layer.alpha.device)


def alpha_entropy(model: nn.Module) -> float:
    """Mean entropy of π over searchable layers, in nats (0 = decided)."""
    ents = []
    for _, layer in mixed_layers(model):
        if len(layer.alpha) > 1:
            p = layer.probs(sample=False).detach().clamp_min(1e-12)
            ents.append(float(-(p * p.log()).sum()))
    return sum(ents) / len(ents) if ents else 0.0


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module):
    """Forward in train mode (batch statistics) without updating running statistics."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append((m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom, nbt in saved:
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def set_requires_grad(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def fault_point(where: str, step: int) -> bool:
    """Fault injection for the resume/divergence tests. ADAPTQNET_FAULT=kill@<where>:<step> (e.g.
    kill@search:1:3) SIGKILLs the process there, mid-epoch, the way an OOM kill would;
    nan@<where>:<step> returns True so the caller poisons that step's loss."""
    spec = os.environ.get("ADAPTQNET_FAULT", "")
    kind, _, at = spec.partition("@")
    if at != f"{where}:{step}":
        return False
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return kind == "nan"


def check_finite(loss: torch.Tensor, epoch: int, step: int, what: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDiverged(f"{what} loss is {float(loss.detach())} at epoch {epoch}, step {step}; "
                            f"stopping (the last good checkpoint is kept). Try a lower learning rate "
                            f"or --grad_clip.")


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Mean of each gradient over ranks (the search steps weights and α separately, so it cannot use
    DistributedDataParallel's hooks, which expect one backward per parameter set)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


@dataclass
class SearchSettings:
    epochs: int = 10
    warmup_epochs: int = 1
    temp_schedule: str = "exponential"
    temp_start: float = 1.0
    temp_end: float = 0.1
    hardware_weight: float = 0.5
    latency_target_ms: Optional[float] = None
    memory_budget_kb: Optional[float] = None
    grad_clip: float = 5.0
    progressive_epochs: int = 0


def alpha_snapshot(model: nn.Module, epoch: int, temperature: float) -> dict:
    return {"epoch": epoch, "temperature": temperature,
            "probs": {n: [round(float(v), 6) for v in l.probs(sample=False).detach().cpu()]
                      for n, l in mixed_layers(model)}}


def weight_step(model, x, y, opt_w, settings: SearchSettings, runtime, poison: bool = False):
    """One step of the shared weights, BN and PACT clips on a train batch; α is frozen (no gradient
    is even computed for it). Returns (loss, logits), detached."""
    set_requires_grad(arch_parameters(model), False)
    weights = weight_parameters(model)
    try:
        with runtime.autocast():
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        if poison:
            loss = loss * float("nan")
        opt_w.zero_grad(set_to_none=True)
        if torch.isfinite(loss.detach()):
            loss.backward()
            average_gradients(weights)
            if settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(weights, settings.grad_clip)
            opt_w.step()
    finally:
        set_requires_grad(arch_parameters(model), True)
    return loss.detach(), out.detach()


def alpha_step(model, x, y, hw_cost, opt_a, settings: SearchSettings, runtime):
    """One step of α on a validation batch: weights frozen, BN statistics untouched, loss = CE + the
    hardware term. Returns (cross-entropy, hardware loss), detached."""
    set_requires_grad(weight_parameters(model), False)
    alphas = arch_parameters(model)
    set_requires_grad(alphas, True)
    try:
        with frozen_bn_stats(model), runtime.autocast():
            out = model(x)
        ce = F.cross_entropy(out.float(), y)
        hw, _ = hw_cost.loss(model, settings.hardware_weight, settings.latency_target_ms, settings.memory_budget_kb)
        total = ce + hw
        opt_a.zero_grad(set_to_none=True)
        if torch.isfinite(total.detach()):
            total.backward()
            average_gradients(alphas)
            opt_a.step()
    finally:
        set_requires_grad(model.parameters(), True)
    return ce.detach(), hw.detach()


def run_search_epoch(model, epoch, settings: SearchSettings, train_loader, alpha_loader, hw_cost, opt_w, opt_a,
                     runtime, desc: str = "search") -> Dict[str, float]:
    """One search epoch: a weight step on each ``train_loader`` batch; after warm-up each is followed
    by an α step on the next ``alpha_loader`` batch (cycled)."""
    search_alpha = epoch >= settings.warmup_epochs
    train_loader.set_epoch(epoch)
    if search_alpha:
        alpha_loader.set_epoch(epoch)
        alpha_iter = _cycle(alpha_loader, epoch)
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    seen = torch.zeros((), dtype=torch.float64, device=device)
    hw_sum, ce_sum, alpha_steps = 0.0, 0.0, 0
    batches = progress(train_loader, desc=desc, total=len(train_loader), enabled=None if runtime.is_main else False)
    for step, (x, y) in enumerate(batches):
        loss, out = weight_step(model, x, y, opt_w, settings, runtime, poison=fault_point(f"search:{epoch}", step))
        check_finite(loss, epoch, step, "weight-step")
        loss_sum += loss.double() * y.numel()
        correct += (out.argmax(1) == y).sum().double()
        seen += y.numel()
        if search_alpha:
            xv, yv = next(alpha_iter)
            ce, hw = alpha_step(model, xv, yv, hw_cost, opt_a, settings, runtime)
            check_finite(ce + hw, epoch, step, "alpha-step")
            ce_sum += float(ce)
            hw_sum += float(hw)
            alpha_steps += 1
    totals = all_reduce_sum(torch.stack([loss_sum, correct, seen]))
    n = max(float(totals[2]), 1.0)
    result = {"train_loss": float(totals[0]) / n, "train_acc": 100.0 * float(totals[1]) / n}
    if alpha_steps:
        result["hw_loss"] = hw_sum / alpha_steps
        result["alpha_ce"] = ce_sum / alpha_steps
    return result


def _cycle(loader, epoch: int) -> Iterator:
    """Endless batches from ``loader``; each pass reshuffles with a new sub-epoch seed."""
    if len(loader) == 0:
        raise ValueError("the validation split yields no batch for the α steps; lower --batch_size")
    k = 0
    while True:
        for batch in loader:
            yield batch
        k += 1
        loader.set_epoch(epoch * 1000 + k)
