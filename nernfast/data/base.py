"""Dataset containers and loaders.

In-memory datasets (digits, the MNIST family, CIFAR, STL-10) keep their raw images in one tensor
and are batched by :class:`TensorLoader`, which slices, adapts, augments and normalises whole
batches with tensor ops — no per-item Python work. ImageFolder datasets (ImageNet) go through a
``torch.utils.data.DataLoader``. Either way a loader yields ``(normalised images, int64 labels)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .adapt import adapt_images, folder_transform


class DatasetError(RuntimeError):
    """A dataset is missing, malformed or misconfigured; the message says what was expected where."""


def missing_error(name: str, expected: Sequence[str], looked_in: Sequence[Path], hint: str = "") -> DatasetError:
    dirs = "\n".join(f"  - {p}" for p in looked_in)
    msg = (f"dataset {name!r} not found: expected {', '.join(expected)}\nlooked in:\n{dirs}")
    if hint:
        msg += f"\n{hint}"
    return DatasetError(msg)


# ----------------------------------------------------------------------------------------------
# Batch augmentation in pixel space ([0, 1]); each takes and returns (B, C, H, W).

@dataclass(frozen=True)
class Augment:
    """Training augmentation of an in-memory dataset: random translation by up to ``pad`` pixels
    (zero padding + random crop, as torchvision's RandomCrop(size, padding=pad)), optional
    horizontal flips with probability 1/2, and optionally a small random affine warp (rotation up
    to ``rotate`` degrees, scale in 1 +- ``scale``, sub-pixel shift up to ``shift`` pixels;
    bilinear, zero fill) for tiny images where whole-pixel crops are too coarse."""
    pad: int = 0
    hflip: bool = False
    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.rotate or self.scale or self.shift:
            x = random_affine(x, self.rotate, self.scale, self.shift, gen)
        if self.pad:
            x = random_crop(x, self.pad, gen)
        if self.hflip:
            x = random_hflip(x, gen)
        return x


def random_affine(x: torch.Tensor, rotate: float, scale: float, shift: float, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=gen) * 2 - 1
    ang = u[:, 0] * rotate * torch.pi / 180
    s = 1 + u[:, 1] * scale
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * shift * 2 / w], 1),
                         torch.stack([sin, cos, u[:, 3] * shift * 2 / h], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)).to(x.device)
    cols = (ox[:, None] + torch.arange(w)).to(x.device)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


# ----------------------------------------------------------------------------------------------

class _Normaliser:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class TensorImageDataset(Dataset):
    """A view (``indices``) into raw images held in memory.

    ``images``: (N, C, H, W) uint8 or float tensor; pixel value = ``images / scale`` in [0, 1].
    Items are ``(normalised image, int label)``; :meth:`pixels` gives adapted [0, 1] batches.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, scale: float,
                 mean: Sequence[float], std: Sequence[float], in_channels: int, image_size: int):
        self.images, self.labels, self.indices = images, labels.long(), indices.long()
        self.scale, self.in_channels, self.image_size = float(scale), in_channels, image_size
        self.normalize = _Normaliser(mean, std)

    def __len__(self) -> int:
        return len(self.indices)

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.images[self.indices[idx]].float().div_(self.scale)
        return adapt_images(x, self.in_channels, self.image_size)

    def targets(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.labels[self.indices if idx is None else self.indices[idx]]

    def __getitem__(self, i: int):
        x = self.normalize(self.pixels(torch.tensor([int(i)])))[0]
        return x, int(self.labels[self.indices[int(i)]])


class TensorLoader:
    """Batches a :class:`TensorImageDataset` with tensor ops. Each pass over the loader draws a new
    order from its own generator (seeded once), so epochs differ but runs repeat exactly."""

    def __init__(self, dataset: TensorImageDataset, batch_size: int, shuffle: bool = False,
                 augment: Optional[Callable] = None, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.augment, self.drop_last = augment, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.dataset.pixels(idx)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            yield self.dataset.normalize(x), self.dataset.targets(idx)


class FolderDataset(Dataset):
    """(path, label) samples read with PIL; items are ``(normalised image, int label)``."""

    def __init__(self, samples: Sequence[tuple[str, int]], mean: Sequence[float], std: Sequence[float],
                 in_channels: int, image_size: int, train_transform: bool = False):
        self.samples = list(samples)
        self.mean, self.std, self.in_channels, self.image_size = mean, std, in_channels, image_size
        self.train_transform = train_transform
        self.transform = folder_transform(image_size, in_channels, train_transform)
        self.normalize = _Normaliser(mean, std)

    def with_augment(self, augment: bool) -> "FolderDataset":
        if augment == self.train_transform:
            return self
        return FolderDataset(self.samples, self.mean, self.std, self.in_channels, self.image_size, augment)

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self, idx=None) -> torch.Tensor:
        t = torch.tensor([s[1] for s in self.samples], dtype=torch.long)
        return t if idx is None else t[idx]

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            x = self.transform(img.convert("RGB"))
        return self.normalize(x[None])[0], label


# ----------------------------------------------------------------------------------------------

@dataclass
class DataBundle:
    """A dataset ready for a model: train / val (carved from train, seeded) / test splits.

    ``mean``/``std`` are per model-input channel: normalised = (pixel - mean) / std with pixels in
    [0, 1]. Model selection uses ``val``; ``test`` is only reported.
    """
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Optional[Augment] = None     # training augmentation of in-memory datasets
    classes: Optional[list[str]] = None
    source: str = ""                      # where the data was read from
    info: dict = field(default_factory=dict)

    def split(self, split: str) -> Dataset:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, split)

    def loader(self, split: str, batch_size: int, shuffle: Optional[bool] = None, augment: Optional[bool] = None,
               seed: int = 0, drop_last: bool = False, num_workers: Optional[int] = None):
        """Batches of ``(normalised x, y)``. ``shuffle`` and ``augment`` default to True for the
        train split only; ``seed`` fixes the order and the augmentation draws."""
        ds = self.split(split)
        shuffle = (split == "train") if shuffle is None else shuffle
        augment = (split == "train") if augment is None else augment
        if isinstance(ds, TensorImageDataset):
            return TensorLoader(ds, batch_size, shuffle, self.augment if augment else None, seed, drop_last)
        if isinstance(ds, FolderDataset):
            ds = ds.with_augment(augment)
        if num_workers is None:
            num_workers = min(8, os.cpu_count() or 1)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
                          generator=torch.Generator().manual_seed(seed), persistent_workers=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return _Normaliser(self.mean, self.std)(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return x * s + m
