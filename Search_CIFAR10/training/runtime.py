"""Where and how a training script runs: device, mixed precision, memory format, DistributedDataParallel.

One :class:`Runtime` object answers every such question for pretraining, stage 1 and stage 2:

    parser = argparse.ArgumentParser(); add_runtime_args(parser)
    args = parser.parse_args()
    rt = setup_runtime(args)            # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    model = rt.prepare_model(model)     # to the device, channels-last on CUDA
    ddp_model = rt.wrap(model)          # DistributedDataParallel when world_size > 1, else model
    with rt.autocast(): loss = ...      # bf16/fp16 autocast on CUDA with --amp, no-op otherwise
    scaler = rt.grad_scaler()           # active only for fp16
    if rt.is_main: write files
    rt.cleanup()

Single process is the default; under ``torchrun --nproc_per_node N`` the same script uses DDP with
NCCL on GPUs (one GPU per local rank) and Gloo on CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from models.mixture import set_compile
from tensor_analysis.cli import non_negative_int

AMP_CHOICES = ("bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def add_runtime_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("device")
    group.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto: CUDA when available, else CPU (default auto)")
    group.add_argument("--amp", nargs="?", const="bf16", default=None, choices=AMP_CHOICES,
                       help="mixed-precision autocast on CUDA: --amp or --amp bf16 (bfloat16), --amp fp16 "
                            "(float16 with loss scaling); ignored on CPU")
    group.add_argument("--threads", type=non_negative_int, default=0,
                       help="CPU threads for torch (0: torch's default)")
    return group


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch on this machine")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                         f"use --nproc_per_node <= {torch.cuda.device_count()}")
    return torch.device("cuda", local_rank)


def dist_env() -> tuple:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """Loss scaling is needed for fp16 only (bf16 has float32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module, **ddp_kwargs) -> nn.Module:
        """DistributedDataParallel around ``model`` when distributed; ``model`` itself otherwise."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.is_cuda else None
        return DDP(model, device_ids=ids, output_device=ids[0] if ids else None, **ddp_kwargs)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "off")
        where = str(self.device) + (f" x {self.world_size} ranks ({dist.get_backend()})" if self.distributed else "")
        return f"{where}, amp {amp}, channels_last {'on' if self.channels_last else 'off'}"

    def cleanup(self) -> None:
        cleanup_distributed()


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> tuple:
    """Join the process group torchrun describes (NCCL for CUDA, Gloo for CPU). Returns
    (rank, world_size, local_rank); a no-op returning (0, 1, 0) outside torchrun."""
    rank, world, local = dist_env()
    if world <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size(), local


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def setup_runtime(args: Optional[argparse.Namespace] = None, device: str = None, amp: Optional[str] = None,
                  threads: int = 0) -> Runtime:
    """Resolve --device/--amp/--threads (from ``args`` or keywords) and join torchrun's process group."""
    if args is not None:
        device = getattr(args, "device", device)
        amp = getattr(args, "amp", amp)
        threads = getattr(args, "threads", threads)
    if amp is not None and amp not in AMP_CHOICES:
        raise ValueError(f"--amp: expected one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if threads:
        torch.set_num_threads(int(threads))
    compile_mode = getattr(args, "compile", None) if args is not None else None
    if compile_mode is not None:  # --compile given: it overrides $ADAPTQNET_COMPILE
        set_compile(compile_mode)
    _, world, local = dist_env()
    dev = resolve_device(device or "auto", local if world > 1 else 0)
    rank, world, local = init_distributed(dev.type)
    amp_dtype = None
    if amp is not None:
        if dev.type == "cuda":
            if amp == "bf16" and not torch.cuda.is_bf16_supported():
                raise ValueError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")
            amp_dtype = _AMP_DTYPES[amp]
        elif rank == 0:
            print(f"note: --amp {amp} is ignored on {dev.type} (autocast is used on CUDA only)", file=sys.stderr)
    if dev.type == "cuda":
        # input shapes are fixed for a whole run, so cuDNN's one-off kernel search pays for itself
        torch.backends.cudnn.benchmark = True
    return Runtime(device=dev, amp_dtype=amp_dtype, channels_last=dev.type == "cuda",
                   rank=rank, world_size=world, local_rank=local)


# --------------------------------------------------------------------------------------------------
# Collectives (each is the identity in a single process)
# --------------------------------------------------------------------------------------------------
def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: Union[torch.Tensor, Sequence[float]], device=None) -> torch.Tensor:
    """Sum across ranks; accepts a tensor or a list of numbers (returned as a float64 tensor)."""
    t = values if isinstance(values, torch.Tensor) else torch.tensor(list(values), dtype=torch.float64,
                                                                     device=device)
    if _active():
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            t = t.cuda()
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(values: Union[torch.Tensor, Sequence[float]], device=None) -> torch.Tensor:
    t = all_reduce_sum(values, device)
    return t / (dist.get_world_size() if _active() else 1)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank. Each rank's BN sees
    only its shard, so the statistics drift apart; after this every rank evaluates and saves the same
    network."""
    if not _active():
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=src)


def barrier() -> None:
    if _active():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model
