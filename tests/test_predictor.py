"""The NeRN predictor MLP: sizes, forward against a loop, init, state_dict and key names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nernfast.models import build_model
from nernfast.nern import NeRN
from nernfast.predictor import Predictor


@pytest.mark.parametrize("name,hidden,params,predicted,cr", [
    ("resnet20", 140, 94_229, 267_696, 0.35),   # the paper's "Hidden 140 (CR 35%)"
    ("resnet20", 180, 142_749, 267_696, 0.53),  # "Hidden 180 (CR 53%)"
    ("resnet56", 320, 388_169, 848_304, 0.46),  # "Hidden 320 (CR 46%)"
    ("resnet56", 680, 1_559_249, 848_304, 1.84),
])
def test_parameter_counts_and_compression_ratio(name, hidden, params, predicted, cr, cache):
    nern = NeRN.from_model(build_model(name), hidden=hidden, permutation="none", cache_dir=cache)
    assert nern.num_parameters() == params == sum(p.numel() for p in nern.parameters())
    assert nern.plan.numel == predicted
    assert round(nern.compression_ratio(), 2) == cr
    rep = nern.size_report()
    assert rep["predictor_params"] == params and rep["predicted_params"] == predicted
    assert rep["predictor_mb"] == pytest.approx(params * 4 / 2**20)
    assert rep["permutation_bytes"] == 0


def test_size_report_counts_the_permutation(cache):
    nern = NeRN.from_model(build_model("resnet20"), hidden=16, permutation="infilter", cache_dir=cache)
    assert nern.size_report()["permutation_bytes"] == 29_744 * 4


def loop_reference(pred: Predictor, x: torch.Tensor) -> torch.Tensor:
    h = x
    for lin in pred.layers:
        h = F.relu(h @ lin.weight.T + lin.bias)
    return h @ pred.final_linear_layer.weight.T + pred.final_linear_layer.bias


@pytest.mark.parametrize("in_features,hidden,k,blocks", [(240, 140, 3, 5), (6, 7, 1, 2), (30, 33, 5, 3), (24, 9, 7, 6)])
def test_forward_and_shapes(in_features, hidden, k, blocks):
    pred = Predictor(in_features, hidden, k, blocks)
    assert len(pred.layers) == blocks - 1
    x = torch.randn(37, in_features)
    out = pred(x)
    assert out.shape == (37, k * k)
    torch.testing.assert_close(out, loop_reference(pred, x))
    torch.testing.assert_close(pred.hidden_from_first(pred.layers[0](x)), out)
    n = in_features * hidden + hidden + (blocks - 2) * (hidden * hidden + hidden) + hidden * k * k + k * k
    assert pred.num_parameters() == n
    assert pred.flops_per_row() == 2 * (in_features * hidden + (blocks - 2) * hidden * hidden + hidden * k * k)


def test_nern_key_names_and_state_dict_round_trip():
    pred = Predictor(240, 20, 3, 5)
    keys = list(pred.state_dict())
    assert keys == [f"layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")] + [
        "final_linear_layer.weight", "final_linear_layer.bias"]
    other = Predictor(240, 20, 3, 5)
    x = torch.randn(5, 240)
    assert not torch.equal(other(x), pred(x))
    other.load_state_dict(pred.state_dict())
    assert torch.equal(other(x), pred(x))


def test_nern_module_state_dict_round_trip(cache):
    model = build_model("resnet20")  # the plan (permutation) comes from the model, not the state_dict
    a = NeRN.from_model(model, hidden=24, cache_dir=cache)
    b = NeRN.from_model(model, hidden=24, cache_dir=cache)
    assert {k for k in a.state_dict() if k.startswith("predictor.")} == {f"predictor.{k}" for k in a.predictor.state_dict()}
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        assert torch.equal(a.predict(), b.predict())


def test_fmod_init():
    torch.manual_seed(1)
    pred = Predictor(240, 64, 3, 5, init="fmod")
    for lin in pred.linears():
        w = lin.weight * lin.in_features ** 0.5  # undo the fan-in scale
        assert w.abs().max() < 2  # folded into (-2, 2)
        assert 0.7 < w.std() < 1.0  # N(0,1) folded: std ~0.87
    assert not torch.equal(Predictor(240, 64, 3, 5, init="fmod").layers[0].weight, pred.layers[0].weight)
    with pytest.raises(ValueError, match="unknown init"):
        Predictor(240, 64, 3, 5, init="xavier")
    with pytest.raises(ValueError, match="num_blocks"):
        Predictor(240, 64, 3, 1)
