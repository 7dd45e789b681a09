"""The reconstruction-only shortcut (predict only the gradient rows) against autograd on the full
reference computation for the same sampled rows."""
from __future__ import annotations

import pytest
import torch

from nernfast import NeRN, build_model
from nernfast.batching import sample_rows
from nernfast.losses import reconstruction_loss
from nernfast.training.objectives import ReconTarget


def grads(nern):
    return torch.cat([p.grad.reshape(-1).clone() for p in nern.predictor.parameters()])


@pytest.mark.parametrize("kind", ["mse", "l2"])
@pytest.mark.parametrize("model_name,method", [("resnet20", "random_weighted_batch"), ("resnet20b", "random_batch"),
                                                ("resnet20", "all")])
def test_fast_recon_gradient_equals_reference(kind, model_name, method, tmp_path):
    torch.manual_seed(0)
    model = build_model(model_name, 10, 3)
    nern = NeRN.from_model(model, hidden=24, num_blocks=3, cache_dir=tmp_path).double()
    target = ReconTarget(nern.plan, nern.plan.weights_of(model), "cpu", torch.float64)
    g = torch.Generator().manual_seed(3)
    idx = sample_rows(method, nern.plan.num_rows, 700, g, target.norms)
    with torch.no_grad():
        target.refresh(nern.rows())  # the L2 scale is exact right after a refresh

    nern.predictor.zero_grad()
    ref = reconstruction_loss(nern.layer_weights(idx), target.weights, kind)
    ref.backward()
    g_ref = grads(nern)

    nern.predictor.zero_grad()
    target.fast_loss(nern, idx, kind).backward()
    g_fast = grads(nern)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-12)


def test_l2_scale_drift_is_reported():
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 3)
    nern = NeRN.from_model(model, hidden=16, num_blocks=3, permutation="none")
    target = ReconTarget(nern.plan, nern.plan.weights_of(model), "cpu")
    with torch.no_grad():
        err, drift = target.refresh(nern.rows())
        err2, drift2 = target.refresh(nern.rows())
    assert drift2 == pytest.approx(1.0)
    assert err["l2"] == pytest.approx(err2["l2"])
