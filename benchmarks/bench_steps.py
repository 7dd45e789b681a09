"""One training step of each kind, for the reference baseline and nernfast (see cases.py).

Within a case every variant starts from the same predictor, sees the same image batch and, in round
i, the same rows carrying gradient; each variant has its own predictor copy and optimiser.
"""
from __future__ import annotations

import pytest

import cases

PARAMS = [pytest.param(kind, shape, variant, id=f"{kind}-{shape}-{variant}",
                       marks=pytest.mark.nernfast_bench(kind=kind, shape=shape))
          for shape in cases.SHAPES for kind in cases.STEP_KINDS for variant in cases.step_variants(kind, shape)]


@pytest.mark.parametrize("kind,shape,variant", PARAMS)
def test_step(kind, shape, variant, setups, run_case):
    setup = setups.get(shape)
    run_case(f"step-{kind}/{shape}", variant, shape, cases.make_step(setup, kind, variant))
