"""Ranger (RAdam + Lookahead, optional gradient centralisation) on top of ``torch.optim.RAdam``,
and the optimiser/schedule factory used by the trainer."""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

OPTIMIZERS = ("ranger", "radam", "adam", "adamw")


class Ranger(torch.optim.RAdam):
    """RAdam whose weights are pulled towards slow Lookahead weights every ``k`` steps.

    Defaults are the NeRN reference's: lr 5e-3, betas (0.5, 0.999), eps 1e-5, weight decay 1e-3,
    k = 6, alpha = 0.5, RAdam's rectification threshold 5 (torch's), no gradient centralisation.
    The slow weights live in the optimiser state, so ``state_dict`` round-trips them.
    """

    def __init__(self, params: Iterable, lr: float = 5e-3, betas: tuple[float, float] = (0.5, 0.999),
                 eps: float = 1e-5, weight_decay: float = 1e-3, k: int = 6, alpha: float = 0.5,
                 gc: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True)
        for g in self.param_groups:
            g.setdefault("lookahead_k", k)
            g.setdefault("lookahead_alpha", alpha)
            g.setdefault("gc", gc)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for g in self.param_groups:
            if g["gc"]:
                for p in g["params"]:
                    if p.grad is not None and p.grad.dim() > 1:
                        p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        loss = super().step(closure)
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if "slow" not in st:
                    st["slow"] = p.detach().clone()
                    st["la_step"] = 0
                st["la_step"] += 1
                if st["la_step"] % g["lookahead_k"] == 0:
                    st["slow"].add_(p - st["slow"], alpha=g["lookahead_alpha"])
                    p.copy_(st["slow"])
        return loss


def build_optimizer(params: Iterable, name: str = "ranger", lr: float = 5e-3, weight_decay: float = 1e-3,
                    betas: tuple[float, float] | None = None, eps: float | None = None,
                    gc: bool = False) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "ranger":
        return Ranger(params, lr=lr, betas=betas or (0.5, 0.999), eps=eps or 1e-5, weight_decay=weight_decay, gc=gc)
    kw = dict(lr=lr, weight_decay=weight_decay, betas=betas or (0.9, 0.999), eps=eps or 1e-8)
    if name == "radam":
        return torch.optim.RAdam(params, decoupled_weight_decay=True, **kw)
    if name == "adam":
        return torch.optim.Adam(params, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params, **kw)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def cosine_schedule(opt: torch.optim.Optimizer, total_steps: int, min_lr_ratio: float = 0.0) -> LRScheduler:
    base = opt.param_groups[0]["lr"]
    return CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=base * min_lr_ratio)
