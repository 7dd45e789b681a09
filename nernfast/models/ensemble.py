"""An ensemble of trained classifiers as one ``nn.Module`` (a teacher for distillation).

Its output is the log of the mean softmax probability over members (and, with ``flip``, over each
input and its mirror image): the logits of the ensemble's predictive distribution, so
cross-entropy on it is the ensemble's NLL and ``softmax`` of it (what the KD loss takes at
temperature 1) is the mean of the probabilities.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module], flip: bool = False):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.flip = flip

    def forward(self, x: torch.Tensor, known: tuple[nn.Module, torch.Tensor] | None = None) -> torch.Tensor:
        """``known``: (a member, its logits on ``x``) that the caller computed already -- e.g. the original's
        forward for feature-map distillation when the teacher is the original with its mirror images -- so that
        member is not run on ``x`` again."""
        views = (x, x.flip(-1)) if self.flip else (x,)

        def logits(m: nn.Module, v: torch.Tensor) -> torch.Tensor:
            return known[1] if known is not None and m is known[0] and v is x else m(v)
        logp = torch.stack([logits(m, v).float().log_softmax(1) for m in self.members for v in views])
        return torch.logsumexp(logp, 0) - math.log(len(logp))
