"""Batches on the device: the whole split lives there as one uint8 tensor; each batch is gathered,
resized to the model's input size, augmented (random translation = crop with zero padding, small
rotation where it fits, horizontal flip where it makes sense, colour jitter) and normalised with
whole-batch tensor ops. There is no per-image Python and no worker process.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .splits import derive_seed


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
