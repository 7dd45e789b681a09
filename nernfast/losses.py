"""NeRN's objectives: weight reconstruction, feature-map distillation and logit distillation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

RECON_LOSSES = ("l2", "mse")
KD_LOSSES = ("kl", "stable_kl")


def reconstruction_loss(pred: Sequence[torch.Tensor], target: Sequence[torch.Tensor], kind: str = "l2") -> torch.Tensor:
    """``l2`` (NeRN's L2Loss): sqrt(sum_l ||W_l - What_l||^2 / sum_l numel(W_l));
    ``mse``: mean over layers of each layer's MSE."""
    if kind == "l2":
        sq = sum(((p - t) ** 2).sum() for p, t in zip(pred, target))
        return torch.sqrt(sq / sum(t.numel() for t in target))
    if kind == "mse":
        return torch.stack([F.mse_loss(p, t) for p, t in zip(pred, target)]).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECON_LOSSES}")


def feature_map_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], eps: float = 1e-3) -> torch.Tensor:
    """sum_l (1/B) sum_b || F/(||F||+eps) - Fhat/(||Fhat||+eps) ||^2 over per-sample flattened maps."""
    if len(student) != len(teacher):
        raise ValueError(f"feature-map loss needs matching layers, got {len(student)} and {len(teacher)}")
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        s, t = s.flatten(1), t.flatten(1)
        s = s / (s.norm(dim=1, keepdim=True) + eps)
        t = t / (t.norm(dim=1, keepdim=True) + eps)
        total = total + ((t - s) ** 2).sum(1).mean()
    return total


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "kl",
            temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(z_teacher / T) || softmax(z_student / T)) * T^2, batch mean.

    ``stable_kl`` is the reference's StableKLDivLoss: log(softmax(z_student) + 1e-4) instead of
    log_softmax, which bounds the gradient when the student puts ~0 mass on a class."""
    t = temperature
    p_teacher = F.softmax(teacher_logits.float() / t, dim=1)
    if kind == "kl":
        log_q = F.log_softmax(student_logits.float() / t, dim=1)
    elif kind == "stable_kl":
        log_q = torch.log(F.softmax(student_logits.float() / t, dim=1) + 1e-4)
    else:
        raise ValueError(f"unknown KD loss {kind!r}; choose one of {KD_LOSSES}")
    return F.kl_div(log_q, p_teacher, reduction="batchmean") * t * t
