"""Resumable input streams for data-driven phases.

A stream's position is (epoch, batch); its order depends only on (seed, epoch), so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Any

import torch


class DatasetStream:
    """Endless batches from one split of a DataBundle (reshuffled per epoch)."""

    def __init__(self, bundle: Any, batch_size: int, seed: int, augment: bool, split: str = "train",
                 rank: int = 0, world: int = 1):
        self.bundle, self.batch_size, self.seed, self.augment, self.split = bundle, batch_size, seed, augment, split
        self.rank, self.world = rank, world
        self.epoch, self.batch = 0, 0
        self._it = None

    def _open(self) -> None:
        loader = self.bundle.loader(self.split, self.batch_size, shuffle=True, augment=self.augment,
                                    seed=self.seed * 100_003 + self.epoch, drop_last=True)
        self._it = iter(loader)
        for _ in range(self.batch):  # fast-forward after a resume
            next(self._it)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._open()
        try:
            x, y = next(self._it)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._open()
            x, y = next(self._it)
        self.batch += 1
        # Every rank draws the same global batch and keeps its slice (DDP: same global batch).
        return x[self.rank::self.world], y[self.rank::self.world]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, st: dict[str, int]) -> None:
        self.epoch, self.batch, self._it = st["epoch"], st["batch"], None


class NoiseStream:
    """Uniform-noise images U(low, high) in model-input space (data-free distillation, Appendix B)."""

    def __init__(self, shape: tuple[int, ...], batch_size: int, low: float, high: float, seed: int,
                 rank: int = 0, world: int = 1):
        self.shape, self.batch_size, self.low, self.high = tuple(shape), batch_size, low, high
        self.rank, self.world = rank, world
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, None]:
        x = torch.rand((self.batch_size,) + self.shape, generator=self.gen) * (self.high - self.low) + self.low
        return x[self.rank::self.world], None

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        self.gen.set_state(st["gen"])
