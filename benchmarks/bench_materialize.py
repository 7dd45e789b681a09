"""Whole-network materialisation: every predicted conv weight written into a model, no autograd.

reference: the public NeRN algorithm (chunks of 4 096 rows from the precomputed encoding matrix,
split, reshape, crop, ``.data =`` swap); plain/fast/fast-bf16: ``NeRN.materialize_`` with
NERNFAST_REFERENCE=1 / nernfast's dispatch in float32 / ``dtype=torch.bfloat16``, all with the default chunk; floor-fp32/floor-bf16:
the predictor as one chain of matmuls on the precomputed encoding (the ceiling for any fp32/bf16
implementation that still runs the 240-wide first layer).
"""
from __future__ import annotations

import pytest

import cases

PARAMS = [pytest.param(shape, variant, id=f"{shape}-{variant}",
                       marks=pytest.mark.nernfast_bench(kind="materialize", shape=shape))
          for shape in cases.SHAPES for variant in cases.MATERIALIZE_VARIANTS]


@pytest.mark.parametrize("shape,variant", PARAMS)
def test_materialize(shape, variant, setups, run_case):
    setup = setups.get(shape)
    run_case(f"materialize/{shape}", variant, shape, cases.make_materialize(setup, variant))
