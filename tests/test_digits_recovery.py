"""The product's claim on real data, end to end: decoupled training gets a working model back.

A ResNet-20 trained on sklearn's digits is compressed by a predictor with a third of its parameters
(CR 0.35). Reconstruction alone cannot fit these barely-trained weights well at this size (phase 1
stays far below the original), and phase 2's distillation must then recover the accuracy. This is
the regime in which an earlier default silently failed: every recipe ended at chance, because the
encoding saw [0, 1]-scaled coordinates (nearly constant features) and Adam's first distillation
steps drove the frozen-BatchNorm network into dead ReLUs (exactly zero gradient). It runs the
shipped decoupled recipe with its phase 2 cut to 150 of its 600 steps (the shipped phase 1, whose
end state is what phase 2 must rescue; ~40 s on 2 cores): by step 150 the shipped runs are at
96-97 % validation accuracy on seeds 0-2. The assertions fail when phase 2 learns nothing
(``NERNFAST_TEST_PHASE2_LR=1e-12`` runs it with a negligible learning rate: phase 2 then ends where
phase 1 did).
"""
from __future__ import annotations

import os

import pytest

from nernfast.config import resolve
from nernfast.pretrain import pretrain
from nernfast.train import run


@pytest.fixture(scope="module")
def digits_original(tmp_path_factory):
    path = tmp_path_factory.mktemp("orig") / "resnet20_digits.pt"
    res = pretrain("resnet20", "digits", out=path, progress=False, seed=0)  # the default recipe (30 epochs)
    assert res["test_accuracy"] > 0.95  # the original itself must be good for the claim to mean anything
    return path, res["test_accuracy"]


def test_decoupled_recovers_the_original_accuracy_at_cr_below_one(digits_original, tmp_path):
    path, original_acc = digits_original
    sets = ["eval.ood=false", "eval.attacks=false", "phase2.steps=150", "phase2.lr_warmup_steps=50"]
    if "NERNFAST_TEST_PHASE2_LR" in os.environ:  # the check that this test can fail (module docstring)
        sets.append(f"phase2.lr={os.environ['NERNFAST_TEST_PHASE2_LR']}")
    cfg = resolve("decoupled", sets=sets, original=str(path), out=str(tmp_path / "run"), seed=0)
    res = run(cfg, progress=False)
    phase1, phase2 = res["stages"]
    assert res["sizes"]["compression_ratio"] < 0.4
    assert phase1["test_acc"] < original_acc - 0.2        # reconstruction alone does not get there ...
    assert phase2["test_acc"] > phase1["test_acc"] + 0.3  # ... distillation recovers most of the gap
    assert phase2["test_acc"] > 0.85
    assert phase2["test_acc"] > original_acc - 0.1
