"""Training pieces every stage shares: optimizer groups, the warm-up + cosine schedule, one training
epoch and evaluation (both DDP-aware through :mod:`.runtime`)."""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from Search_CIFAR10.training.log import progress
from Search_CIFAR10.training.runtime import Runtime, all_reduce_sum

OPTIMIZERS = ("sgd", "adamw")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last checkpoint is kept."""


def param_groups(params: Iterable[tuple], weight_decay: float) -> List[Dict]:
    """Two groups from ``named_parameters()``: conv/linear weights with decay; BatchNorm parameters and
    biases (1-D tensors) without it, since shrinking them only fights the normalisation. Frozen
    parameters are left out."""
    decay, no_decay = [], []
    for _, p in params:
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(name: str, groups: List[Dict], lr: float, momentum: float = 0.9,
                    nesterov: bool = True) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {name!r}")


class WarmupCosine:
    """LR multiplier per step: linear from ~0 to 1 over ``warmup_steps`` (at most half the run, so a
    short run still anneals), then cosine down to ``min_ratio``. A plain object (not a lambda) so
    LambdaLR stores its fields in the checkpoint."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0):
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps // 2))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress_ = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress_))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_ratio))


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, runtime: Runtime,
                    criterion: Callable, scheduler=None, scaler=None, grad_clip: float = 0.0,
                    desc: str = "train", on_step: Optional[Callable[[int], None]] = None,
                    show_progress: Optional[bool] = None) -> Dict[str, float]:
    """One pass over ``loader``. Returns loss, accuracy (%) and images/s summed over all ranks.

    ``on_step(step)`` is called after every optimizer step (progress hooks, tests that interrupt a run).
    Raises :class:`TrainingDiverged` if the loss is not finite (checked once per epoch, so the GPU never
    waits on the CPU in between)."""
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    enabled = runtime.is_main if show_progress is None else show_progress
    bar = progress(loader, desc=desc, total=len(loader), enabled=None if enabled else False)
    for step, (x, y) in enumerate(bar):
        with runtime.autocast():
            logits = model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if on_step is not None:
            on_step(step)
    seconds = time.perf_counter() - start
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                         torch.tensor(float(seen), dtype=torch.float64, device=device)]))
    loss_total, correct_total, seen_total = (float(v) for v in totals)
    if not math.isfinite(loss_total):
        raise TrainingDiverged(f"{desc}: the training loss is {loss_total} (diverged); the last checkpoint "
                               f"is kept; lower --lr or set --grad_clip")
    seen_total = max(seen_total, 1.0)
    return {"loss": loss_total / seen_total, "acc": 100.0 * correct_total / seen_total,
            "images": seen_total, "seconds": seconds, "images_per_s": seen_total / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, runtime: Runtime, desc: str = "eval",
             show_progress: Optional[bool] = None) -> Dict[str, float]:
    """Cross-entropy (no label smoothing) and top-1 accuracy (%) over the whole split, across ranks.
    Pass the unwrapped model under DDP (evaluation needs no gradient synchronisation)."""
    was_training = model.training
    model.eval()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    enabled = runtime.is_main if show_progress is None else show_progress
    for x, y in progress(loader, desc=desc, total=len(loader), enabled=None if enabled else False):
        with runtime.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    model.train(was_training)
    totals = all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                         torch.tensor(float(seen), dtype=torch.float64, device=device)]))
    loss_total, correct_total, seen_total = (float(v) for v in totals)
    seen_total = max(seen_total, 1.0)
    return {"loss": loss_total / seen_total, "acc": 100.0 * correct_total / seen_total, "images": seen_total}
