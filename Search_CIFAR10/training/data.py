"""Datasets as uint8 tensors on the device, split and batched the same way for every training script.

Splits (DESIGN.md §6): the official train part trains the weights; the official test part is split by
a fixed, recorded ``split_seed`` into validation (60%: 6,000 of CIFAR's 10,000; architecture logits and
model selection) and test (40%: reported once, never used to choose anything). ``save_split_info``
writes the seed and indices next to a run's outputs.

Batches come from :class:`DeviceLoader`: the whole split lives on the device as one uint8 tensor; each
batch is gathered, resized to the model's input size, augmented (random translation = crop with zero
padding, small rotation where it fits, horizontal flip where it makes sense, colour jitter) and
normalised with whole-batch tensor ops. There is no per-image Python and no worker process.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from data.datasets import (CIFAR_LAYOUTS, DatasetError, RawDataset, download_cifar, download_svhn, load_cifar_raw,
                           load_digits_raw, load_image_folder_raw, load_svhn_raw)
from models import formats
from models.files import write_json_atomic
from Search_CIFAR10 import REPO_ROOT
from tensor_analysis.cli import non_negative_int, positive_int

DEFAULT_DATA_DIR = os.path.join(REPO_ROOT, "data")

DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder")
VAL_FRACTION = 0.6  # of the official test part; CIFAR: 6,000 validation / 4,000 test

__all__ = ["DATASETS", "DatasetError", "DataSplits", "load_splits", "DeviceLoader", "add_data_args",
           "build_loaders", "save_split_info", "split_info", "derive_seed", "download_dataset", "DEFAULT_DATA_DIR"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, ...): distinct tuples give unrelated streams."""
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class DataSplits:
    """Train / validation / test images (uint8 N x 3 x H x W) and labels (int64), plus what a run needs
    to normalise, augment and reproduce them."""
    name: str
    num_classes: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple
    std: tuple
    flip: bool
    split_seed: int
    val_indices: List[int]    # indices into the official test part
    test_indices: List[int]
    rotate_deg: float = 0.0
    classes: List[str] = field(default_factory=list)
    train_indices: Optional[List[int]] = None  # set when --limit_train subsampled the train part
    holdout_seed: Optional[int] = None          # datasets without an official test part: how it was
    holdout_indices: Optional[List[int]] = None  # held out of the full dataset
    source: str = ""

    def to(self, device) -> "DataSplits":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")})

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def _channel_stats(images: torch.Tensor, chunk: int = 4096) -> Tuple[tuple, tuple]:
    """Per-channel mean and std on the [0, 1] scale, in chunks so a 50k-image set needs no float copy."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    # a constant channel (blank images) would divide by ~0; 1 leaves it centred but unscaled
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def _subsample(n: int, limit: Optional[int], seed: int) -> Optional[List[int]]:
    if limit is None or limit >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:limit].tolist())


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"--dataset: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")


def download_dataset(name: str, data_dir: Optional[str] = None) -> None:
    """Fetch a downloadable dataset (CIFAR-10/100, SVHN) unless its files are there; others: no-op."""
    _check_name(name)
    data_dir = data_dir or DEFAULT_DATA_DIR
    if name in CIFAR_LAYOUTS:
        download_cifar(name, data_dir)
    elif name == "svhn":
        download_svhn(data_dir)


def _read_raw(name: str, data_dir: Optional[str], download: bool, image_size: int) -> RawDataset:
    _check_name(name)
    if download:
        download_dataset(name, data_dir)
    if name == "digits":
        return load_digits_raw()
    if name == "imagefolder":
        if not data_dir:
            raise DatasetError("--dataset imagefolder needs --data_dir DIR (DIR/<class>/<images>)")
        return load_image_folder_raw(data_dir, image_size)
    data_dir = data_dir or DEFAULT_DATA_DIR
    if name in CIFAR_LAYOUTS:
        return load_cifar_raw(name, data_dir)
    return load_svhn_raw(data_dir)


def load_splits(name: str, data_dir: Optional[str] = None, download: bool = False, split_seed: int = 0,
                limit_train: Optional[int] = None, limit_eval: Optional[int] = None,
                image_size: int = 32) -> DataSplits:
    """Read a dataset and split its official test part into validation and test by ``split_seed``.

    ``limit_train`` / ``limit_eval`` keep a seeded subset of train / of each of validation and test
    (quick tests and demos); the recorded indices are the ones kept. ``image_size`` is the size
    ImageFolder images are decoded to (the other datasets have a fixed native size).
    """
    for flag, v in (("--limit_train", limit_train), ("--limit_eval", limit_eval)):
        if v is not None and v <= 0:
            raise DatasetError(f"{flag}: expected a positive number of images, got {v}")
    raw = _read_raw(name, data_dir, download, image_size)
    n_test = len(raw.test_y)
    if n_test < 2:
        raise DatasetError(f"{raw.source or name}: the test part has {n_test} image(s); "
                           f"at least 2 are needed to split validation from test")
    g = torch.Generator().manual_seed(int(split_seed))
    perm = torch.randperm(n_test, generator=g)
    n_val = min(n_test - 1, max(1, int(round(n_test * VAL_FRACTION))))
    val_idx, test_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    # the limits draw from their own seeds so a subset never changes which images are val vs test
    keep = _subsample(len(val_idx), limit_eval, derive_seed(split_seed, 1))
    if keep is not None:
        val_idx = [val_idx[i] for i in keep]
    keep = _subsample(len(test_idx), limit_eval, derive_seed(split_seed, 2))
    if keep is not None:
        test_idx = [test_idx[i] for i in keep]
    train_idx = _subsample(len(raw.train_y), limit_train, derive_seed(split_seed, 3))
    train_x, train_y = raw.train_x, raw.train_y
    if train_idx is not None:
        train_x, train_y = train_x[train_idx], train_y[train_idx]
    mean, std = _channel_stats(raw.train_x)  # the full train part: limits must not shift the statistics
    return DataSplits(
        name=raw.name, num_classes=raw.num_classes,
        train_x=train_x.contiguous(), train_y=train_y.contiguous(),
        val_x=raw.test_x[val_idx].contiguous(), val_y=raw.test_y[val_idx].contiguous(),
        test_x=raw.test_x[test_idx].contiguous(), test_y=raw.test_y[test_idx].contiguous(),
        mean=mean, std=std, flip=raw.flip, rotate_deg=raw.rotate_deg, split_seed=int(split_seed),
        val_indices=val_idx, test_indices=test_idx, classes=list(raw.classes), train_indices=train_idx,
        holdout_seed=raw.holdout_seed, holdout_indices=raw.holdout_indices, source=raw.source)


def split_info(splits: DataSplits) -> dict:
    """Everything needed to rebuild the same split (also stored inside checkpoints)."""
    return {
        "schema": formats.SPLIT,
        "dataset": splits.name,
        "num_classes": splits.num_classes,
        "split_seed": splits.split_seed,
        "val_fraction": VAL_FRACTION,
        "sizes": {"train": int(len(splits.train_y)), "val": int(len(splits.val_y)),
                  "test": int(len(splits.test_y))},
        "image_size": splits.image_size,
        "mean": list(splits.mean), "std": list(splits.std),
        "val_indices": list(splits.val_indices),
        "test_indices": list(splits.test_indices),
        "train_indices": None if splits.train_indices is None else list(splits.train_indices),
        "holdout_seed": splits.holdout_seed,
        "holdout_indices": None if splits.holdout_indices is None else list(splits.holdout_indices),
        "note": ("val_indices and test_indices index the official test part"
                 + (" (for datasets without one: the images at holdout_indices of the full dataset, "
                    "held out by holdout_seed)" if splits.holdout_seed is not None else "")),
    }


def save_split_info(splits: DataSplits, path: str) -> None:
    """Write split.json (atomically): dataset, seed, sizes and the validation/test indices."""
    write_json_atomic(split_info(splits), path)


# --------------------------------------------------------------------------------------------------
# Batches on the device
# --------------------------------------------------------------------------------------------------
class DeviceLoader:
    """Batches from uint8 tensors already on the device, augmented on whole batches.

    Order: the permutation of an epoch is drawn from (seed, epoch), the same on every rank, and each
    rank takes every ``world_size``-th index (DistributedSampler's scheme; a shuffled training loader
    repeats a few indices so all ranks run the same number of steps). Augmentation draws from
    (seed, epoch, rank). Both come from private generators, so batches depend on nothing but these
    numbers: not on the global RNG, not on how many epochs ran in this process (exact resume).

    ``rotate_deg``, ``pad_fraction`` (translation up to this fraction of the side, zero fill, i.e.
    random crop with padding: 4 px at 32 px) and ``jitter`` (brightness/contrast/saturation factors in
    1 ± jitter) apply when ``augment`` is on.
    """

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float], shuffle: bool, augment: bool, flip: bool,
                 seed: int, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 rotate_deg: float = 0.0, pad_fraction: float = 0.125, jitter: float = 0.2,
                 even_shards: Optional[bool] = None, channels_last: bool = False):
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4 or images_u8.shape[1] != 3:
            raise ValueError(f"DeviceLoader: expected uint8 images N x 3 x H x W, got {images_u8.dtype} "
                             f"{tuple(images_u8.shape)}")
        if len(labels) != len(images_u8):
            raise ValueError(f"DeviceLoader: {len(labels)} labels for {len(images_u8)} images")
        if batch_size <= 0 or input_size <= 0:
            raise ValueError(f"DeviceLoader: batch_size and input_size must be positive, got "
                             f"{batch_size} and {input_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"DeviceLoader: rank {rank} outside world size {world_size}")
        self.images, self.labels = images_u8, labels
        self.device = images_u8.device
        self.batch_size, self.input_size = int(batch_size), int(input_size)
        self.shuffle, self.augment, self.flip = bool(shuffle), bool(augment), bool(flip)
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.rotate_deg, self.pad_fraction, self.jitter = float(rotate_deg), float(pad_fraction), float(jitter)
        # Training shards must be equal or DDP ranks would wait on each other forever; evaluation
        # shards must not repeat images or the accuracy would count some twice.
        self.even_shards = self.shuffle if even_shards is None else bool(even_shards)
        self.channels_last = bool(channels_last)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- which images, in which order -------------------------------------------------------------
    def _num_local(self) -> int:
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.even_shards:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self._num_local()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _generator(self, *parts: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(derive_seed(self.seed, *parts))
        return g

    def indices(self) -> torch.Tensor:
        """This rank's image indices for the current epoch, in batch order."""
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self._generator(self.epoch), device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self.world_size > 1:
            if self.even_shards:
                total = math.ceil(n / self.world_size) * self.world_size
                if total > n:
                    order = torch.cat([order, order[: total - n]])
            order = order[self.rank::self.world_size]
        return order

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        g = self._generator(self.epoch, self.rank, 1) if self.augment else None
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            y = self.labels.index_select(0, idx)
            yield self.transform(x, g), y

    # -- pixels ------------------------------------------------------------------------------------
    def transform(self, x_u8: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 batch → float32 normalised at ``input_size``; augmented when a generator is given."""
        x = x_u8.float().div_(255.0)
        size = self.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            shrinking = x.shape[-1] > size
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=shrinking)
        if generator is not None:
            x = self._augment(x, generator)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _uniform(self, generator, n, low, high):
        return torch.rand(n, generator=generator, device=self.device) * (high - low) + low

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        # One affine resample does translation, rotation and mirroring. With integer pixel shifts and
        # no rotation the sampling points fall on pixel centres, so it equals a crop of the zero-padded
        # image exactly (no interpolation blur).
        pad = int(round(self.pad_fraction * w))
        shift = torch.randint(-pad, pad + 1, (2, b), generator=g, device=self.device).float()
        angle = self._uniform(g, b, -self.rotate_deg, self.rotate_deg) * (math.pi / 180.0)
        mirror = torch.ones(b, device=self.device)
        if self.flip:
            mirror = torch.where(torch.rand(b, generator=g, device=self.device) < 0.5, -mirror, mirror)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([
            torch.stack([cos * mirror, -sin, shift[0] * (2.0 / w)], dim=1),
            torch.stack([sin * mirror, cos, shift[1] * (2.0 / h)], dim=1),
        ], dim=1)
        if pad or self.rotate_deg or self.flip:
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.jitter > 0:
            lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
            brightness = self._uniform(g, b, lo, hi).view(b, 1, 1, 1)
            contrast = self._uniform(g, b, lo, hi).view(b, 1, 1, 1)
            saturation = self._uniform(g, b, lo, hi).view(b, 1, 1, 1)
            x = (x * brightness).clamp_(0, 1)
            # ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = ((x - grey.mean(dim=(2, 3), keepdim=True)) * contrast
                 + grey.mean(dim=(2, 3), keepdim=True)).clamp_(0, 1)
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (grey + (x - grey) * saturation).clamp_(0, 1)
        return x


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def add_data_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("data")
    # not argparse choices: an unknown name then fails with DatasetError's one line, like a bad folder
    group.add_argument("--dataset", default="digits", metavar="{" + ",".join(DATASETS) + "}",
                       help="digits: scikit-learn's bundled 8x8 handwritten digits, offline, upscaled to "
                            "--input_size (default); cifar10/cifar100/svhn: torchvision's on-disk format "
                            "under --data_dir; imagefolder: your own images in --data_dir/<class>/*.png "
                            "(or --data_dir/train and --data_dir/test)")
    group.add_argument("--data_dir", default=None,
                       help=f"folder holding the dataset (default {DEFAULT_DATA_DIR}; for CIFAR-10 the "
                            f"folder that contains cifar-10-batches-py/)")
    group.add_argument("--download", action="store_true",
                       help="fetch CIFAR-10/100 or SVHN into --data_dir with torchvision's downloader "
                            "if missing (needs the internet)")
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


def build_loaders(args, batch_size: int, input_size: int, device, seed: int, rank: int = 0,
                  world_size: int = 1, channels_last: bool = False):
    """Load ``args``' dataset (see :func:`add_data_args`), move it to ``device`` and return
    ``(splits, train_loader, val_loader, test_loader)``. Train shuffles, augments and drops a final
    partial batch (a batch of one breaks BatchNorm); validation and test are plain and complete."""
    kwargs = dict(name=args.dataset, data_dir=args.data_dir, download=args.download,
                  split_seed=args.split_seed, limit_train=args.limit_train, limit_eval=args.limit_eval,
                  image_size=input_size)
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
    val = DeviceLoader(splits.val_x, splits.val_y, batch_size * 2, shuffle=False, augment=False, **common)
    test = DeviceLoader(splits.test_x, splits.test_y, batch_size * 2, shuffle=False, augment=False, **common)
    return splits, train, val, test
