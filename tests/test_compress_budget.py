"""``--max-bytes``: the finest entropy-coded steps whose whole file fits a byte budget."""
from __future__ import annotations

import math

import pytest
import torch

from nernfast import NeRN, build_model
from nernfast.artefact import artefact_bytes
from nernfast.codec.format2 import Scheme
from nernfast.compress.budget import FINEST, BudgetError, fit_steps, scaled


def modelled_size(scheme: Scheme) -> int:
    """A file of 1 000 fixed bytes plus 8 000 weights at -log2(step) + 8 bits each (steps per layer)."""
    steps = scheme.layer_steps or (scheme.step,)
    return 1000 + sum(round(8000 / len(steps) * max(0.0, 8 - math.log2(s)) / 8) for s in steps)


@pytest.mark.parametrize("scheme", [Scheme("ans", step=0.04), Scheme("ans", step=0.04, layer_steps=(0.08, 0.02, 0.05))],
                         ids=["shared", "per-layer"])
@pytest.mark.parametrize("budget", [9000, 12_345, 15_000])
def test_fit_is_the_finest_factor_that_fits(scheme, budget):
    factor, n = fit_steps(modelled_size, scheme, budget)
    fitted = scaled(scheme, factor)
    assert n == modelled_size(fitted) <= budget
    assert modelled_size(scaled(scheme, factor * 0.995)) > budget  # 0.5 % finer no longer fits
    if scheme.layer_steps:  # one factor for all: the allocation's ratios stay
        ratios = [a / b for a, b in zip(fitted.layer_steps, scheme.layer_steps)]
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-12) == pytest.approx(factor)


def test_fit_limits_and_refusals():
    s = Scheme("ans", step=0.04)
    assert fit_steps(modelled_size, s, 10**9) == (FINEST, modelled_size(scaled(s, FINEST)))  # a loose budget
    factor, _ = fit_steps(modelled_size, s, 13_000, lowest=3.0)  # fits at 3.0 (12 060 bytes): never finer
    assert factor == 3.0
    with pytest.raises(BudgetError, match="coarsest"):
        fit_steps(modelled_size, s, 900)  # the fixed bytes alone exceed it
    with pytest.raises(BudgetError, match="--step"):
        fit_steps(modelled_size, Scheme("int8"), 12_000)
    with pytest.raises(BudgetError, match="positive"):
        fit_steps(modelled_size, s, 0)


def test_fit_on_real_encodings_of_a_predictor():
    """On the encoder itself (sizes are not strictly monotone in the step): the returned factor fits and a
    slightly finer one does not."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1).eval()
    nern = NeRN.from_model(model, hidden=32, num_blocks=3)

    def size(scheme: Scheme) -> int:
        return len(artefact_bytes(nern, model, scheme=scheme))

    s = Scheme("ans", step=0.05, rest="fp16")
    budget = size(s) + 1500  # room for finer steps than 0.05
    factor, n = fit_steps(size, s, budget)
    assert factor < 1 and n == size(scaled(s, factor)) <= budget
    assert size(scaled(s, factor * 0.98)) > budget
