"""An ensemble of trained classifiers as one ``nn.Module`` (a teacher for distillation).

Its output is the log of the members' mean softmax probability: the logits of the ensemble's
predictive distribution, so cross-entropy on it is the ensemble's NLL and ``softmax`` of it (what
the KD loss takes at temperature 1) is the mean of the members' probabilities.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([m(x).float().log_softmax(1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))
