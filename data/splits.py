"""The train / validation / test splits of every supported dataset, as uint8 tensors (docs/design.md §9).

The official train part trains the weights; the official test part is split by a fixed, recorded
``split_seed`` into validation (60%: 6,000 of CIFAR's 10,000; architecture logits and model selection)
and test (40%: reported once, never used to choose anything). ``save_split_info`` writes the seed and
indices next to a run's outputs.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import torch

from models import formats
from models.files import write_json_atomic

from .datasets import (CIFAR_LAYOUTS, DatasetError, RawDataset, download_cifar, download_svhn, load_cifar_raw,
                       load_digits_raw, load_image_folder_raw, load_svhn_raw)

DEFAULT_DATA_DIR = os.path.dirname(os.path.abspath(__file__))
DATASETS = ("digits", "cifar10", "cifar100", "svhn", "imagefolder")
VAL_FRACTION = 0.6  # of the official test part; CIFAR: 6,000 validation / 4,000 test


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
    # the images that choose checkpoints (final.pt, best.pt); with a selection fraction they are held out
    # of the validation split, so the validation images that train α never also pick the network
    select_x: Optional[torch.Tensor] = None
    select_y: Optional[torch.Tensor] = None
    select_indices: Optional[List[int]] = None
    selection_fraction: float = 0.0
    rotate_deg: float = 0.0
    classes: List[str] = field(default_factory=list)
    train_indices: Optional[List[int]] = None  # set when --limit_train subsampled the train part
    holdout_seed: Optional[int] = None          # datasets without an official test part: how it was
    holdout_indices: Optional[List[int]] = None  # held out of the full dataset
    source: str = ""

    def __post_init__(self):
        if self.select_x is None:  # no held-out selection part: validation chooses, as it trains α
            self.select_x, self.select_y, self.select_indices = self.val_x, self.val_y, list(self.val_indices)

    def to(self, device) -> "DataSplits":
        return replace(self, **{k: getattr(self, k).to(device) for k in
                                ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "select_x", "select_y")})

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
                image_size: int = 32, selection_fraction: float = 0.0) -> DataSplits:
    """Read a dataset and split its official test part into validation and test by ``split_seed``.

    ``limit_train`` / ``limit_eval`` keep a seeded subset of train / of each of validation and test
    (quick tests and demos); the recorded indices are the ones kept. ``image_size`` is the size
    ImageFolder images are decoded to (the other datasets have a fixed native size).
    ``selection_fraction`` holds that share of the validation images out as the selection split
    (``select_*``): a search trains α on the rest and chooses its checkpoint on these.
    """
    if not 0.0 <= selection_fraction < 1.0:
        raise DatasetError(f"--selection_fraction: expected a fraction in [0, 1), got {selection_fraction}")
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
    selection = {}
    if selection_fraction > 0:
        n_select = int(round(len(val_idx) * selection_fraction))
        if not 1 <= n_select < len(val_idx):
            raise DatasetError(f"--selection_fraction {selection_fraction:g}: {len(val_idx)} validation images "
                               f"leave no image for α or none for the choice")
        order = torch.randperm(len(val_idx), generator=torch.Generator().manual_seed(derive_seed(split_seed, 4)))
        chosen = set(order[:n_select].tolist())
        select_idx = [v for i, v in enumerate(val_idx) if i in chosen]
        val_idx = [v for i, v in enumerate(val_idx) if i not in chosen]
        selection = dict(select_x=raw.test_x[select_idx].contiguous(), select_y=raw.test_y[select_idx].contiguous(),
                         select_indices=select_idx, selection_fraction=float(selection_fraction))
    return DataSplits(
        name=raw.name, num_classes=raw.num_classes,
        train_x=train_x.contiguous(), train_y=train_y.contiguous(),
        val_x=raw.test_x[val_idx].contiguous(), val_y=raw.test_y[val_idx].contiguous(),
        test_x=raw.test_x[test_idx].contiguous(), test_y=raw.test_y[test_idx].contiguous(),
        mean=mean, std=std, flip=raw.flip, rotate_deg=raw.rotate_deg, split_seed=int(split_seed),
        val_indices=val_idx, test_indices=test_idx, classes=list(raw.classes), train_indices=train_idx,
        holdout_seed=raw.holdout_seed, holdout_indices=raw.holdout_indices, source=raw.source, **selection)


def split_info(splits: DataSplits) -> dict:
    """Everything needed to rebuild the same split (also stored inside checkpoints)."""
    return {
        "schema": formats.SPLIT,
        "dataset": splits.name,
        "num_classes": splits.num_classes,
        "split_seed": splits.split_seed,
        "val_fraction": VAL_FRACTION,
        "sizes": {"train": int(len(splits.train_y)), "val": int(len(splits.val_y)),
                  "select": int(len(splits.select_y)), "test": int(len(splits.test_y))},
        "selection_fraction": splits.selection_fraction,
        "image_size": splits.image_size,
        "mean": list(splits.mean), "std": list(splits.std),
        "val_indices": list(splits.val_indices),
        "test_indices": list(splits.test_indices),
        "selection_indices": list(splits.select_indices),
        "train_indices": None if splits.train_indices is None else list(splits.train_indices),
        "holdout_seed": splits.holdout_seed,
        "holdout_indices": None if splits.holdout_indices is None else list(splits.holdout_indices),
        "note": ("val_indices (α), selection_indices (the choice of checkpoints; the validation images "
                 "themselves without a selection fraction) and test_indices index the official test part"
                 + (" (for datasets without one: the images at holdout_indices of the full dataset, "
                    "held out by holdout_seed)" if splits.holdout_seed is not None else "")),
    }


def save_split_info(splits: DataSplits, path: str) -> None:
    """Write split.json (atomically): dataset, seed, sizes and the validation/test indices."""
    write_json_atomic(split_info(splits), path)
