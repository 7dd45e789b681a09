"""The predictor's weight average (PhaseConfig.ema_decay): its arithmetic, and a phase run with it."""
from __future__ import annotations

from typing import Iterator

import pytest
import torch
import torch.nn as nn

from nernfast.training.averaging import WeightAverage


def _walk(module: nn.Module, steps: int, seed: int = 0) -> Iterator[list[torch.Tensor]]:
    """Move the module's parameters randomly ``steps`` times, yielding them after each move."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g))
        yield [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("decay,steps", [(0.9, 1), (0.9, 7), (0.998, 30)])
def test_average_is_the_bias_corrected_decay_weighted_mean(decay, steps):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    avg = WeightAverage(net, decay)
    start = [p.detach().clone() for p in net.parameters()]
    seen = []
    for w in _walk(net, steps):
        avg.update()
        seen.append(w)
    weights = torch.tensor([decay ** (steps - 1 - t) for t in range(steps)], dtype=torch.float64)
    weights /= weights.sum()  # the starting weights take no share
    for i, a in enumerate(avg.averaged()):
        expect = sum(float(c) * s[i].double() for c, s in zip(weights, seen)).float()
        torch.testing.assert_close(a, expect, rtol=1e-5, atol=1e-5)
        assert not torch.equal(a, start[i])


def test_no_update_yet_averages_to_the_parameters():
    net = nn.Linear(3, 2)
    avg = WeightAverage(net, 0.99)
    for a, p in zip(avg.averaged(), net.parameters()):
        assert torch.equal(a, p.detach())


def test_swapped_computes_with_the_average_and_restores_the_parameters():
    net = nn.Linear(3, 2)
    avg = WeightAverage(net, 0.5)
    for _ in _walk(net, 4):
        avg.update()
    own = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(5, 3)
    with avg.swapped():
        inside = net(x)
        for p, a in zip(net.parameters(), avg.averaged()):
            assert torch.equal(p.detach(), a)
    torch.testing.assert_close(inside, x @ avg.averaged()[0].T + avg.averaged()[1])
    for p, o in zip(net.parameters(), own):
        assert torch.equal(p.detach(), o)
    with pytest.raises(RuntimeError), avg.swapped():  # restored on an error inside too
        raise RuntimeError("inside")
    for p, o in zip(net.parameters(), own):
        assert torch.equal(p.detach(), o)


def test_state_round_trip_and_mismatch():
    net = nn.Linear(3, 2)
    avg = WeightAverage(net, 0.9)
    for _ in _walk(net, 3):
        avg.update()
    other = WeightAverage(nn.Linear(3, 2), 0.9)
    other.load_state_dict(avg.state_dict())
    for a, b in zip(avg.averaged(), other.averaged()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="decay 0.9.*does not match"):
        WeightAverage(nn.Linear(3, 2), 0.99).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="must be in"):
        WeightAverage(net, 1.0)
