"""Per-layer entropy-coded steps (nernfast.compress.allocate): the water-filling rule and the
measured allocation end to end on a tiny predictor."""
from __future__ import annotations

import math

import pytest
import torch

from nernfast import NeRN, build_model
from nernfast.compress.allocate import FLOOR, allocate_steps, water_fill
from nernfast.data import get_dataset


def _bits(numels, steps):
    return sum(n * math.log2(s) for n, s in zip(numels, steps))


@pytest.mark.parametrize("numels,costs", [([33600, 19600, 19600, 19600, 1260], [0.17, 0.62, 1.04, 0.27, 0.10]),
                                           ([10, 1000], [5.0, 0.01]), ([7, 7, 7], [1.0, 1.0, 1.0])])
def test_water_fill_keeps_the_bytes_of_the_shared_step_and_lowers_the_modelled_loss(numels, costs):
    rel = 0.035
    steps = water_fill(numels, costs, rel)
    assert _bits(numels, steps) == pytest.approx(_bits(numels, [rel] * len(numels)))
    c = [max(x, FLOOR * max(costs)) for x in costs]
    loss = lambda st: sum(ci * s * s for ci, s in zip(c, st))  # noqa: E731
    assert loss(steps) <= loss([rel] * len(numels)) * (1 + 1e-12)
    # a layer that costs more per weight gets the finer step
    per_weight = [ci / n for ci, n in zip(c, numels)]
    order = sorted(range(len(numels)), key=lambda i: per_weight[i])
    assert all(steps[a] >= steps[b] * (1 - 1e-12) for a, b in zip(order, order[1:]))


def test_water_fill_edge_cases():
    assert water_fill([5, 9], [0.0, 0.0], 0.04) == [0.04, 0.04]  # nothing measured: the shared step
    steps = water_fill([100, 100], [1.0, -0.2], 0.04)  # a negative (noise) cost is floored, not inverted
    assert steps[1] == pytest.approx(steps[0] * math.sqrt(1 / FLOOR))


def test_allocate_steps_measures_every_layer(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1).eval()
    nern = NeRN.from_model(model, hidden=12, num_blocks=3, cache_dir=tmp_path)
    bundle = get_dataset("digits", None, seed=0)
    before = [lin.weight.clone() for lin in nern.predictor.linears()]
    scheme, info = allocate_steps(nern, model, bundle, 0.05, torch.device("cpu"), bn_batches=2)
    assert scheme.weights == "ans" and len(scheme.layer_steps) == len(nern.predictor.linears()) == 3
    assert len(info["val_loss_increase"]) == 3 and info["probe_step"] == 0.1
    assert info["layer_steps"] == list(scheme.layer_steps)
    assert _bits(info["weights"], scheme.layer_steps) == pytest.approx(_bits(info["weights"], [0.05] * 3))
    # the probes quantise copies: the predictor itself is unchanged
    assert all(torch.equal(w, lin.weight) for w, lin in zip(before, nern.predictor.linears()))
