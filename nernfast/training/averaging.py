"""An exponential moving average of a module's parameters (``PhaseConfig.ema_decay``).

The average starts at zero and is divided by ``1 - decay**t`` as Adam's moments are, so after t steps
it is the decay-weighted mean of the t weights seen, not pulled toward the starting weights (a plain
average started at them would still hold 2 % of them after 2 000 steps at decay 0.998). Unlike
``torch.optim.swa_utils.AveragedModel`` (a second module, started at the current weights) it keeps only
the running sums and swaps the average into the phase's own predictor for evaluation.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn


class WeightAverage:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay {decay}: must be in (0, 1)")
        self.decay = decay
        self.params = list(module.parameters())
        self.sums = [torch.zeros_like(p) for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters in (call after each optimiser step)."""
        self.updates += 1
        for s, p in zip(self.sums, self.params):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def averaged(self) -> list[torch.Tensor]:
        """The bias-corrected average, one tensor per parameter (the parameters themselves before any update)."""
        if self.updates == 0:
            return [p.detach().clone() for p in self.params]
        c = 1.0 - self.decay ** self.updates
        return [s / c for s in self.sums]

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside, the module's parameters hold the average; on exit, their own values again."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self.averaged()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "sums": [s.clone() for s in self.sums]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["decay"] != self.decay or len(state["sums"]) != len(self.sums):
            raise ValueError(f"weight average state (decay {state['decay']}, {len(state['sums'])} tensors) does not "
                             f"match this phase (decay {self.decay}, {len(self.sums)} tensors)")
        self.updates = state["updates"]
        with torch.no_grad():
            for s, v in zip(self.sums, state["sums"]):
                s.copy_(v)
