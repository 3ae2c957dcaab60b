"""The data flags of the training scripts, and the loaders they build (datasets, splits and the device
loader themselves live in the top-level ``data`` package).

``python -m Search_CIFAR10.training.data [data flags]`` only makes sure the dataset is on disk (it is
downloaded when missing, as the training scripts do) and ends; a batch of runs calls it once first, so
its runs neither download the same files at once nor each fail offline (run_all_dnas.sh)."""
from __future__ import annotations

import argparse
import math
import os

import torch

from data.loader import DeviceLoader
from data.splits import DATASETS, DEFAULT_DATA_DIR, download_dataset, load_splits
from tensor_analysis.cli import Parser, run_cli

DEFAULT_DATASET = "cifar10"
from tensor_analysis.cli import non_negative_int, positive_int


def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("data")
    # not argparse choices: an unknown name then fails with DatasetError's one line, like a bad folder
    group.add_argument("--dataset", default=DEFAULT_DATASET, metavar="{" + ",".join(DATASETS) + "}",
                       help="cifar10 (default, the seed's)/cifar100/svhn: torchvision's on-disk format under "
                            "--data_dir, downloaded there when missing; digits: scikit-learn's bundled 8x8 "
                            "handwritten digits, offline, upscaled to --input_size; imagefolder: your own images "
                            "in --data_dir/<class>/*.png (or --data_dir/train and --data_dir/test)")
    group.add_argument("--data_dir", default=None,
                       help=f"folder holding the dataset (default {DEFAULT_DATA_DIR}; for CIFAR-10 the "
                            f"folder that contains cifar-10-batches-py/)")
    # the seed's scripts fetched CIFAR-10 when it was missing; so do these (--no_download to forbid it)
    group.add_argument("--download", dest="download", action="store_true", default=True,
                       help="fetch CIFAR-10/100 or SVHN into --data_dir with torchvision's downloader when "
                            "missing (the default; needs the internet)")
    group.add_argument("--no_download", dest="download", action="store_false",
                       help="never download: a missing dataset is an error")
    group.add_argument("--split_seed", type=non_negative_int, default=0,
                       help="seed that splits the official test set into validation (60%%) and test "
                            "(40%%); recorded in split.json (default 0)")
    group.add_argument("--limit_train", type=positive_int, default=None,
                       help="keep only this many training images (seeded subset; quick tests)")
    group.add_argument("--limit_eval", type=positive_int, default=None,
                       help="keep only this many validation and this many test images (seeded subset)")
    return group


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def device_memory_bytes(device) -> int:
    """All the memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _size_text(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def check_batch_fits(input_size: int, batch_size: int, device) -> None:
    """Refuse, before anything is loaded or written, an input size whose batches alone (float32, the
    evaluation batches hold 2 × --batch_size images) exceed the device's memory."""
    need = 2 * batch_size * 3 * input_size * input_size * 4
    have = device_memory_bytes(device)
    if need > have:
        raise ValueError(f"--input_size {input_size}: one evaluation batch of {2 * batch_size} images at "
                         f"{input_size}x{input_size} px takes {_size_text(need)} as float32, more than the "
                         f"{_size_text(have)} of memory on {torch.device(device).type}; lower --input_size "
                         f"(or --batch_size)")


def build_loaders(args, batch_size: int, input_size: int, device, seed: int, rank: int = 0,
                  world_size: int = 1, channels_last: bool = False):
    """Load ``args``' dataset (see :func:`add_data_args`), move it to ``device`` and return
    ``(splits, train_loader, val_loader, test_loader)``. Train shuffles, augments and drops a final
    partial batch (a batch of one breaks BatchNorm); validation and test are plain and complete."""
    check_batch_fits(input_size, batch_size, device)
    kwargs = dict(name=args.dataset, data_dir=args.data_dir, download=args.download,
                  split_seed=args.split_seed, limit_train=args.limit_train, limit_eval=args.limit_eval,
                  image_size=input_size, selection_fraction=getattr(args, "selection_fraction", None) or 0.0)
    if args.download and world_size > 1 and _distributed_ready():
        # one rank downloads; the others wait and then read the finished files
        if rank == 0:
            download_dataset(args.dataset, args.data_dir)
        torch.distributed.barrier()
        kwargs["download"] = False
    splits = load_splits(**kwargs).to(device)
    common = dict(input_size=input_size, mean=splits.mean, std=splits.std, flip=splits.flip, seed=seed,
                  rank=rank, world_size=world_size, rotate_deg=splits.rotate_deg,
                  channels_last=channels_last)
    per_rank = math.ceil(len(splits.train_y) / world_size)
    train = DeviceLoader(splits.train_x, splits.train_y, batch_size, shuffle=True, augment=True,
                         drop_last=per_rank >= batch_size, **common)
    # "val" chooses checkpoints: the selection split (the validation split itself without a selection fraction)
    val = DeviceLoader(splits.select_x, splits.select_y, batch_size * 2, shuffle=False, augment=False, **common)
    test = DeviceLoader(splits.test_x, splits.test_y, batch_size * 2, shuffle=False, augment=False, **common)
    return splits, train, val, test


def fetch_main(argv=None) -> int:
    parser = Parser(description="Make sure the dataset the data flags name is on disk (download it when missing).")
    add_data_args(parser)
    args, _ = parser.parse_known_args(argv)  # the other flags of a training command line are not ours
    if args.download:
        download_dataset(args.dataset, args.data_dir)
    return 0


if __name__ == "__main__":
    run_cli(fetch_main)
