"""FGSM and I-FGSM (Goodfellow et al. 2014; Kurakin et al. 2016) in pixel space.

Models take normalised inputs; the attacks perturb pixels in [0, 1] and reach the model through
:class:`Normalized`. Batches from a :class:`~nernfast.data.DataBundle` loader are normalised, so
they are first mapped back to pixels (``x * std + mean``, clamped to [0, 1]).

* FGSM: ``x' = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))``.
* I-FGSM (basic iterative method, no random start): ``steps`` FGSM steps of size ``alpha``
  (default ``eps / 4``, so 10 steps can travel 2.5 eps), each followed by projection onto the
  L-inf ball of radius ``eps`` around ``x`` and clipping to [0, 1].

Only the input gets gradients (``torch.autograd.grad``); model parameters are left untouched and
the model is evaluated in eval mode (BatchNorm running statistics).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .threads import cpu_threads_for_side, threads_for_batches


class Normalized(nn.Module):
    """``model((x - mean) / std)``: a pixel-space ([0, 1]) view of a model that takes normalised inputs."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)

    def to_pixels(self, x_normalised: torch.Tensor) -> torch.Tensor:
        return (x_normalised * self.std + self.mean).clamp(0.0, 1.0)


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    return g


def fgsm(pixel_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One FGSM step on pixels ``x`` in [0, 1]."""
    if eps == 0:
        return x.detach().clone()
    with cpu_threads_for_side(x.shape[-1], x.device):
        return (x + eps * _input_grad(pixel_model, x, y).sign()).clamp(0.0, 1.0).detach()


def ifgsm(pixel_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
          alpha: Optional[float] = None) -> torch.Tensor:
    """I-FGSM on pixels ``x`` in [0, 1]; ``alpha`` defaults to ``eps / 4``."""
    if eps == 0 or steps < 1:
        return x.detach().clone()
    alpha = eps / 4 if alpha is None else alpha
    x0, xa = x.detach(), x.detach().clone()
    with cpu_threads_for_side(x.shape[-1], x.device):
        for _ in range(steps):
            xa = xa + alpha * _input_grad(pixel_model, xa, y).sign()
            xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0.0, 1.0).detach()
    return xa


def _attack_accuracy(attack, model: nn.Module, loader: Iterable, mean, std, device, max_batches) -> float:
    was_training = model.training
    model.eval()
    pm = Normalized(model, mean, std).to(device)
    correct = total = 0
    try:
        with threads_for_batches(loader, device) as batches:
            for i, (x, y) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                xa = attack(pm, pm.to_pixels(x), y)
                with torch.no_grad():
                    correct += (pm(xa).argmax(1) == y).sum().item()
                total += len(y)
    finally:
        model.train(was_training)
    return correct / max(total, 1)


def fgsm_accuracy(model: nn.Module, loader: Iterable, eps: float, mean: Sequence[float], std: Sequence[float],
                  device: str | torch.device = "cpu", max_batches: Optional[int] = None) -> float:
    """Top-1 accuracy of ``model`` (normalised inputs) on FGSM examples of radius ``eps`` (pixels);
    ``loader`` yields normalised batches."""
    return _attack_accuracy(lambda pm, x, y: fgsm(pm, x, y, eps), model, loader, mean, std, device, max_batches)


def ifgsm_accuracy(model: nn.Module, loader: Iterable, eps: float, mean: Sequence[float], std: Sequence[float],
                   steps: int = 10, alpha: Optional[float] = None, device: str | torch.device = "cpu",
                   max_batches: Optional[int] = None) -> float:
    """Top-1 accuracy on I-FGSM examples (``steps`` steps of ``alpha``, default ``eps / 4``)."""
    return _attack_accuracy(lambda pm, x, y: ifgsm(pm, x, y, eps, steps, alpha), model, loader, mean, std, device,
                            max_batches)
