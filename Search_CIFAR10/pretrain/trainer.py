"""FP32 pretraining of any registered model: the network the precision search starts from.

Every mixed-precision layer is fixed at fp32 (its α logits and PACT clips exist but are frozen and
untouched), so the model trains as an ordinary FP32 network with exactly the parameter names and
shapes the search's supernet has.

Checkpoint format (``checkpoint_last.pt``, every epoch; ``best.pt``, the epoch with the highest
validation accuracy). Both are dicts of plain tensors/numbers/strings and load with
``weights_only=True`` (``Search_CIFAR10.dnas.utils.checkpoint.load_checkpoint``):

    schema     "adaptqnet/pretrain/1"
    spec       model.spec: {"type": "mobilenetv2", "num_classes", "width_mult", "input_size", ...}
    model      state_dict of the model (fp32 weights; α and clips at their initial values)
    precision  "fp32"
    epoch      completed epochs
    val_acc    validation accuracy (%) after that epoch; best_val_acc / best_epoch so far
    split      the data split (dataset, seed, sizes, validation/test indices), as split.json
    args       the resolved command-line arguments
  checkpoint_last.pt only (what --resume needs):
    optimizer, scheduler, scaler state_dicts, rng (every RNG's state)

The search rebuilds the network with:

    ckpt = load_checkpoint(path)
    model = build_from_spec(ckpt["spec"])
    model.load_state_dict(ckpt["model"])

A run directory holds: args.json, split.json, log.csv (one row per epoch), curves.png,
checkpoint_last.pt, best.pt and, at the end, summary.json with the test accuracy of best.pt, measured
once.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

from data.splits import derive_seed, save_split_info, split_info
from models import PretrainedUnavailable, build_model, formats, list_models, load_imagenet_pretrained
from models.files import CheckpointError, load_checkpoint
from models.network import mixed_layers
from models.registry import check_same_model
from Search_CIFAR10 import REPO_ROOT
from Search_CIFAR10.reporting.figures import plot_training_curves
from Search_CIFAR10.training.data import add_data_args, build_loaders
from Search_CIFAR10.training.log import format_epoch
from Search_CIFAR10.training.loop import (OPTIMIZERS, build_optimizer, build_scheduler, evaluate, param_groups,
                                          train_one_epoch)
from Search_CIFAR10.training.run_dir import (BEST_VAL, EPOCH, LAST, LOG_ROWS, OPTIMIZER, RNG, SCHEDULER, RunDir,
                                             rng_state, set_rng_state)
from Search_CIFAR10.training.runtime import Runtime, add_runtime_args, barrier, broadcast_buffers, setup_runtime, unwrap
from tensor_analysis.cli import (DefaultsHelpFormatter, Parser, non_negative_float, non_negative_int, positive_float,
                                 positive_int)

# Per-optimizer defaults for batch 64 (docs/experiments.md §5).
DEFAULT_LR = {"sgd": 0.05, "adamw": 2e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}
BEST = "best.pt"
# Flags that shape the data order, the schedule or the network: a resumed run must use the same ones,
# or it would not continue the run it claims to continue.
RESUME_MUST_MATCH = ("dataset", "split_seed", "limit_train", "limit_eval", "epochs", "batch_size",
                     "warmup_epochs", "lr", "min_lr_ratio", "optimizer", "momentum", "weight_decay",
                     "label_smoothing", "seed")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        description="FP32 pretraining of a registered model (the starting point of the precision search). "
                    "Runs single-process, or under `torchrun --nproc_per_node N` with DistributedDataParallel.",
        formatter_class=DefaultsHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--model", default="mobilenetv2", help=f"registered model: {', '.join(list_models())}")
    m.add_argument("--width_mult", type=positive_float, default=0.35, help="channel width multiplier")
    m.add_argument("--input_size", type=positive_int, default=32,
                   help="image side in pixels the model sees (images are resized on the device)")
    m.add_argument("--strides", default=None,
                   help="MobileNetV2 stride preset: auto, cifar, imagenet or seed (default: the model's, auto)")
    m.add_argument("--dropout", type=non_negative_float, default=None,
                   help="dropout before the classifier (default: the model's, 0.2)")
    m.add_argument("--pretrained", default=None, choices=("imagenet",),
                   help="start from torchvision's ImageNet weights (width 1.0 only; needs the internet "
                        "once); the classifier is trained from scratch")
    add_data_args(p)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, default=15, help="training epochs (cosine schedule length)")
    t.add_argument("--batch_size", type=positive_int, default=64, help="per process")
    t.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="sgd: with Nesterov momentum; adamw: decoupled weight decay")
    t.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate (default {DEFAULT_LR['sgd']} for sgd, {DEFAULT_LR['adamw']} for adamw)")
    t.add_argument("--min_lr_ratio", type=non_negative_float, default=0.0,
                   help="final learning rate as a fraction of --lr (cosine schedule)")
    t.add_argument("--warmup_epochs", type=non_negative_float, default=2.0,
                   help="epochs of linear learning-rate warm-up (may be fractional; at most half of --epochs)")
    t.add_argument("--momentum", type=non_negative_float, default=0.9, help="sgd only")
    t.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help=f"on conv/linear weights only, never on BatchNorm or biases (default "
                        f"{DEFAULT_WEIGHT_DECAY['sgd']} for sgd, {DEFAULT_WEIGHT_DECAY['adamw']} for adamw)")
    t.add_argument("--label_smoothing", type=non_negative_float, default=0.1,
                   help="cross-entropy label smoothing on the training loss")
    t.add_argument("--grad_clip", type=non_negative_float, default=0.0, help="max gradient norm (0: off)")
    t.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the initial weights, data order, augmentation and dropout")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", default=None,
                   help="run folder (default runs/pretrain/<dataset>_<model>_w<width>_s<input_size> "
                        "under the repository)")
    o.add_argument("--resume", action="store_true",
                   help="continue from <output_dir>/checkpoint_last.pt (exactly: same weights as an "
                        "uninterrupted run on CPU); starts a new run if there is none")
    o.add_argument("--overwrite", action="store_true",
                   help="start a new run even if --output_dir holds files (a finished run's are replaced)")
    add_runtime_args(p)
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.weight_decay is None:
        args.weight_decay = DEFAULT_WEIGHT_DECAY[args.optimizer]
    if args.output_dir is None:
        args.output_dir = os.path.join(REPO_ROOT, "runs", "pretrain",
                                       f"{args.dataset}_{args.model}_w{args.width_mult:g}_s{args.input_size}")
    args.output_dir = os.path.abspath(args.output_dir)
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pass one")
    return args


def build_fp32_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The registered model with every layer fixed at fp32 and its search-only parameters frozen."""
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, width_mult=args.width_mult, input_size=args.input_size)
    if args.strides is not None:
        kwargs["strides"] = args.strides
    if args.dropout is not None:
        kwargs["dropout"] = args.dropout
    model = build_model(args.model, **kwargs)
    for _, layer in mixed_layers(model):
        layer.set_precision("fp32")
        # α and the PACT clips get no gradient in fp32 mode; frozen, DDP and the optimizer skip them
        layer.alpha.requires_grad_(False)
        layer.act_clip.requires_grad_(False)
    return model


def _jsonable_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def _check_resume(ckpt: Dict[str, Any], path: str, model: nn.Module, args: argparse.Namespace) -> None:
    if ckpt.get("schema") != formats.PRETRAIN_CHECKPOINT or "spec" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a pretraining checkpoint (schema {ckpt.get('schema')!r}, "
                              f"expected {formats.PRETRAIN_CHECKPOINT!r})")
    check_same_model(model.spec, ckpt["spec"], f"--resume: {path}", keys=None, error=CheckpointError)
    saved = ckpt.get("args", {})
    diffs = [f"--{k} {saved.get(k)!r} (now {getattr(args, k)!r})" for k in RESUME_MUST_MATCH
             if k in saved and saved.get(k) != getattr(args, k)]
    if diffs:
        raise CheckpointError(f"--resume: {path} was made with {', '.join(diffs)}; resume with the same "
                              f"settings or choose another --output_dir")


def _start(args, rt: Runtime, run: RunDir, model: nn.Module) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from (--resume with one present), else None: a new run, from
    ImageNet weights with --pretrained imagenet."""
    last_path = run.path(LAST)
    if args.resume and os.path.isfile(last_path):
        ckpt = load_checkpoint(last_path)
        _check_resume(ckpt, last_path, model, args)
        return ckpt
    if args.resume and rt.is_main:
        print(f"note: no {LAST} in {run.dir}; starting a new run", flush=True)
    if args.pretrained == "imagenet" and rt.is_main:
        try:
            skipped = load_imagenet_pretrained(model)
        except PretrainedUnavailable as exc:
            raise ValueError(f"--pretrained imagenet: {exc}") from None
        print(f"loaded ImageNet weights (trained from scratch: {', '.join(skipped) or 'nothing'})", flush=True)
    return None


def _test_best(model: nn.Module, run: RunDir, test_loader, rt: Runtime, splits, args, train_seconds: float
               ) -> Dict[str, Any]:
    """Test accuracy: once, on the network chosen by validation accuracy (best.pt)."""
    barrier()
    best = load_checkpoint(run.path(BEST), map_location=rt.device)
    model.load_state_dict(best["model"])
    test = evaluate(model, test_loader, rt, desc="test")
    summary = {"schema": formats.PRETRAIN_SUMMARY, "spec": model.spec, "dataset": splits.name,
               "best_epoch": int(best["epoch"]), "best_val_acc": float(best["val_acc"]),
               "test_acc": test["acc"], "test_loss": test["loss"], "test_images": int(test["images"]),
               "epochs": args.epochs, "train_seconds_this_session": round(train_seconds, 2),
               "device": rt.describe(), "checkpoint": run.path(BEST), "split": run.path("split.json")}
    run.json("summary.json", summary)
    if rt.is_main:
        print(f"test accuracy {test['acc']:.2f}% ({int(test['images'])} images) with {BEST} from epoch "
              f"{summary['best_epoch']} (val {summary['best_val_acc']:.2f}%)", flush=True)
    return summary


def run_pretrain(args: argparse.Namespace, on_step: Optional[Callable[[int, int, nn.Module], None]] = None,
                 runtime: Optional[Runtime] = None) -> Dict[str, Any]:
    """Train, select on validation, test once. Returns the summary (also written to summary.json) with
    the trained ``model`` (best.pt's weights) added under the key "model".

    ``on_step(epoch, step, model)`` runs after every optimizer step, with the unwrapped model (progress
    hooks; tests use it to interrupt a run or to inspect each rank's weights)."""
    args = resolve_args(args)
    rt = runtime or setup_runtime(args)
    out = args.output_dir
    if rt.distributed and args.limit_train is not None and args.limit_train < rt.world_size:
        raise ValueError(f"--limit_train {args.limit_train} is smaller than the {rt.world_size} processes")

    splits, train_loader, val_loader, test_loader = build_loaders(
        args, args.batch_size, args.input_size, rt.device, args.seed, rt.rank, rt.world_size,
        channels_last=rt.channels_last)
    if len(train_loader) == 0:
        raise ValueError(f"--batch_size {args.batch_size}: the training split has no full batch")

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    model = build_fp32_model(args, splits.num_classes)
    run = RunDir.claim(out, rt.is_main, resume=args.resume, overwrite=args.overwrite,
                       inputs=[("--data_dir", args.data_dir)])
    ckpt = _start(args, rt, run, model)

    model = rt.prepare_model(model)
    optimizer = build_optimizer(args.optimizer, param_groups(model.named_parameters(), args.weight_decay),
                                args.lr, momentum=args.momentum)
    steps_per_epoch = len(train_loader)
    scheduler = build_scheduler(optimizer, args.epochs * steps_per_epoch,
                                int(round(args.warmup_epochs * steps_per_epoch)), args.min_lr_ratio)
    scaler = rt.grad_scaler()
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    start_epoch, best_val, best_epoch, rows = 0, -1.0, 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt[OPTIMIZER])
        scheduler.load_state_dict(ckpt[SCHEDULER])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt[RNG])
        start_epoch, best_val, best_epoch = int(ckpt[EPOCH]), float(ckpt[BEST_VAL]), int(ckpt["best_epoch"])
        rows = list(ckpt.get(LOG_ROWS, []))

    ddp_model = rt.wrap(model)
    meta = {"schema": formats.PRETRAIN_CHECKPOINT, "spec": model.spec, "precision": "fp32",
            "split": split_info(splits), "args": _jsonable_args(args)}
    run.json("args.json", _jsonable_args(args))
    if rt.is_main:
        save_split_info(splits, run.path("split.json"))
        run.log(rows)
        print(f"pretrain {args.model} w{args.width_mult:g} s{args.input_size} on {splits.name}: "
              f"{len(splits.train_y)} train / {len(splits.val_y)} val / {len(splits.test_y)} test images, "
              f"{rt.describe()}, epochs {start_epoch + 1}..{args.epochs} -> {out}", flush=True)

    train_seconds = 0.0
    for epoch in range(start_epoch, args.epochs):
        # Dropout draws from the global RNG; seeding it per (seed, epoch, rank) makes every rank's stream
        # a function of where the run is, so a resumed epoch repeats the interrupted one exactly.
        torch.manual_seed(derive_seed(args.seed, epoch, rt.rank, 2))
        train_loader.set_epoch(epoch)
        step_hook = (lambda step, _e=epoch: on_step(_e, step, model)) if on_step else None
        stats = train_one_epoch(ddp_model, train_loader, optimizer, rt, criterion, scheduler=scheduler,
                                scaler=scaler, grad_clip=args.grad_clip,
                                desc=f"epoch {epoch + 1}/{args.epochs}", on_step=step_hook)
        train_seconds += stats["seconds"]
        broadcast_buffers(model)
        val = evaluate(model, val_loader, rt, desc="val")
        improved = val["acc"] > best_val
        if improved:
            best_val, best_epoch = val["acc"], epoch + 1
        rows.append({"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                     "train_loss": stats["loss"], "train_acc": stats["acc"],
                     "val_loss": val["loss"], "val_acc": val["acc"], "best_val_acc": best_val,
                     "time_s": stats["seconds"], "train_images_per_s": stats["images_per_s"]})
        state = {**meta, "model": model.state_dict(), EPOCH: epoch + 1, "val_acc": val["acc"],
                 BEST_VAL: best_val, "best_epoch": best_epoch}
        if improved:
            run.checkpoint(BEST, state)
        run.checkpoint(LAST, {**state, OPTIMIZER: optimizer.state_dict(), SCHEDULER: scheduler.state_dict(),
                              "scaler": scaler.state_dict(), RNG: rng_state(), LOG_ROWS: rows})
        if rt.is_main:
            run.log(rows)
            print(format_epoch(rows[-1], args.epochs), flush=True)
            plot_training_curves(rows, run.path("curves.png"))

    summary = _test_best(model, run, test_loader, rt, splits, args, train_seconds)
    return {**summary, "model": unwrap(model)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    runtime = setup_runtime(args)
    try:
        run_pretrain(args, runtime=runtime)
    finally:
        runtime.cleanup()
    return 0
