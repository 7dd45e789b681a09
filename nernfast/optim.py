"""Ranger (RAdam + Lookahead, optional gradient centralisation) on top of ``torch.optim.RAdam``,
and the optimiser/schedule factory used by the trainer."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

OPTIMIZERS = ("ranger", "radam", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


class Ranger(torch.optim.RAdam):
    """RAdam whose weights are pulled towards slow Lookahead weights every ``k`` steps.

    Defaults are the NeRN reference's: lr 5e-3, betas (0.5, 0.999), eps 1e-5, weight decay 1e-3
    (decoupled, as in Ranger), k = 6, alpha = 0.5, RAdam's rectification threshold 5 (torch's),
    no gradient centralisation. Lookahead (Zhang et al. 2019): the slow weights start at the
    weights *before* the first step; after every k-th step slow += alpha * (fast - slow), fast = slow.
    Gradient centralisation subtracts each output unit's mean gradient (tensors with dim > 1).
    The slow weights live in the optimiser state, so ``state_dict`` round-trips them.
    """

    def __init__(self, params: Iterable, lr: float = 5e-3, betas: tuple[float, float] = (0.5, 0.999),
                 eps: float = 1e-5, weight_decay: float = 1e-3, k: int = 6, alpha: float = 0.5,
                 gc: bool = False):
        if k < 1 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Lookahead needs k >= 1 and 0 <= alpha <= 1, got k={k}, alpha={alpha}")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled_weight_decay=True)
        # In the defaults too, so groups added later with add_param_group get them.
        self.defaults.update(lookahead_k=k, lookahead_alpha=alpha, gc=gc)
        for g in self.param_groups:
            g.setdefault("lookahead_k", k)
            g.setdefault("lookahead_alpha", alpha)
            g.setdefault("gc", gc)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:  # evaluate first so centralisation sees this step's gradients
            with torch.enable_grad():
                loss = closure()
        start = {}  # weights before their first step: where the slow weights begin
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if g["gc"] and p.grad.dim() > 1:
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
                if "slow" not in self.state[p]:
                    start[p] = p.detach().clone()
        super().step()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if p in start:
                    st["slow"] = start.pop(p)
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


def build_schedule(opt: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int = 0) -> LRScheduler:
    """``cosine`` (to 0 at ``total_steps``) or ``constant``, after ``warmup_steps`` of linear warm-up.

    The warm-up matters for distillation from a poor start: Adam's first updates are ~lr in every
    parameter at once, and a KD gradient that only says "less confident" then drives the whole
    frozen-BatchNorm network into dead ReLUs, where every gradient is exactly zero."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    w, n = max(0, warmup_steps), max(1, total_steps)

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        if kind == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - w, n - w) / max(1, n - w)))

    return LambdaLR(opt, factor)
