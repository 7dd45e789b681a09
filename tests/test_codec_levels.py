"""The ``ans`` weight code (nernfast.codec.levels): uniform quantiser vs its definition, exact ANS
round trips of the levels, the scheme in the container, and its reason to exist (fewer bytes than
int8 at int8's error on heavy-tailed weights)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nernfast.codec.format2 import Scheme, decode, encode
from nernfast.codec.levels import (MAX_LEVEL, FakeQuantUniform, decode_levels, dequantize_uniform, encode_levels,
                                   quantize_uniform, uniform_step)
from nernfast.codec.quant import dequantize, quantize_reference


def _heavy_tailed(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Student-t weights (3 degrees of freedom): heavy-tailed as trained predictor weights are (fitted
    df 2.3-3.1 on the Fashion-MNIST H140 predictor, max |w| 5-14x the RMS)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((4, *shape), generator=g)
    return 0.05 * z[0] / (z[1:].pow(2).sum(0) / 3).sqrt()


@pytest.mark.parametrize("rel", [0.01, 0.04, 0.3])
@pytest.mark.parametrize("shape", [(9, 140), (140, 240), (1, 1), (3, 5)])
def test_uniform_quantiser_follows_its_rule(shape, rel):
    w = _heavy_tailed(shape, 0)
    lv = quantize_uniform(w, rel)
    step = torch.tensor(rel, dtype=torch.float32) * w.pow(2).mean().sqrt()
    assert lv.step.dtype == torch.float32 and torch.equal(lv.step, step)
    assert torch.equal(lv.q, torch.round(w / step).long())
    assert (dequantize_uniform(lv) - w).abs().max() <= step / 2 * (1 + 1e-6)


def test_uniform_quantiser_edge_cases():
    z = torch.zeros(4, 6)
    assert torch.equal(dequantize_uniform(quantize_uniform(z, 0.04)), z) and float(uniform_step(z, 0.04)) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        quantize_uniform(torch.tensor([[1.0, float("nan")]]), 0.04)
    with pytest.raises(ValueError, match="larger --step"):
        quantize_uniform(torch.tensor([[1.0, -1e-3, 0.0] * 10]), 1e-7)
    with pytest.raises(ValueError, match="> 0"):
        FakeQuantUniform(0.0)
    with pytest.raises(ValueError, match="out of range"):
        Scheme("ans", step=0)


@pytest.mark.parametrize("case", ["laplace", "constant", "negative", "wide", "two-values"])
def test_ans_levels_round_trip_exactly(case):
    g = torch.Generator().manual_seed(1)
    q = {"laplace": torch.round(_heavy_tailed((50, 70), 2) / 0.002),
         "constant": torch.full((7, 3), -5.0),
         "negative": -torch.randint(1, 300, (40, 40), generator=g).float(),
         "wide": torch.randint(-MAX_LEVEL, MAX_LEVEL, (2, 9), generator=g).float(),
         "two-values": torch.randint(0, 2, (1, 33), generator=g).float() * 7 - 3}[case].long()
    lo, counts, words = encode_levels(q)
    assert lo == int(q.min()) and counts.sum() == q.numel() and counts.dtype == np.int32
    back = decode_levels(lo, counts, words, list(q.shape))
    assert back.dtype == torch.int64 and torch.equal(back, q)


def test_ans_levels_refuse_a_histogram_that_does_not_match_the_shape():
    lo, counts, words = encode_levels(torch.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="histogram"):
        decode_levels(lo, counts, words, [3, 5])


def test_fake_quant_uniform_sees_the_decoded_weight_and_passes_the_gradient_straight_through():
    w = _heavy_tailed((6, 20), 3).requires_grad_()
    fq = FakeQuantUniform(0.05)
    y = fq(w)
    assert torch.equal(y.detach(), dequantize_uniform(quantize_uniform(w.detach(), 0.05)))
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    assert torch.equal(Scheme("ans", step=0.05).roundtrip(w), y.detach())


def _predictor_tensors(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"predictor.layers.0.weight": _heavy_tailed((140, 240), seed),
               "predictor.layers.0.bias": torch.randn(140, generator=g) * 0.05,
               "predictor.layers.1.weight": _heavy_tailed((140, 140), seed + 1),
               "predictor.layers.1.bias": torch.randn(140, generator=g) * 0.05,
               "predictor.final_linear_layer.weight": _heavy_tailed((9, 140), seed + 2),
               "predictor.final_linear_layer.bias": torch.randn(9, generator=g) * 0.05,
               "plan.perm": torch.tensor([0, 2, 1, 3, 5, 4, 6, 7]), "model.fc.weight": torch.randn(3, 4, generator=g)}
    meta = {"plan": {"layers": [["c1", [2, 2, 3, 3]], ["c2", [2, 2, 3, 3]]]}, "config": {}, "metrics": {}}
    return meta, tensors


def test_ans_scheme_decodes_to_its_quantiser_and_keeps_the_rest():
    meta, tensors = _predictor_tensors()
    scheme = Scheme("ans", step=0.04, rest="fp16")
    m2, t2 = decode(encode(meta, tensors, scheme), "x")
    for k, v in tensors.items():
        if k.startswith("predictor.") and k.endswith("weight"):
            assert t2[k].dtype == torch.float32 and torch.equal(t2[k], scheme.roundtrip(v)), k
        elif k.startswith("predictor."):
            assert torch.equal(t2[k], v), k  # biases fp32
    assert torch.equal(t2["model.fc.weight"], tensors["model.fc.weight"].half().float())
    assert m2["codec"]["scheme"]["weights"] == "ans" and m2["codec"]["scheme"]["step"] == 0.04


def test_ans_stores_heavy_tailed_weights_in_fewer_bytes_than_int8_at_int8s_error():
    meta, tensors = _predictor_tensors(5)
    int8, ans = Scheme("int8"), Scheme("ans", step=0.04)
    weights = [v for k, v in tensors.items() if k.startswith("predictor.") and k.endswith("weight")]
    err = {s.weights: sum(float((s.roundtrip(w) - w).pow(2).sum()) for w in weights) for s in (int8, ans)}
    nbytes = {s.weights: len(encode(meta, tensors, s)) for s in (int8, ans)}
    assert err["ans"] <= 1.1 * err["int8"], err
    assert nbytes["ans"] < 0.99 * nbytes["int8"], nbytes  # 9.6 % fewer on the Fashion-MNIST predictor
    assert torch.equal(dequantize(quantize_reference(weights[0], 8)), int8.roundtrip(weights[0]))


def test_ans_layer_steps_give_each_matrix_its_own_step():
    meta, tensors = _predictor_tensors(2)
    scheme = Scheme("ans", step=0.04, layer_steps=(0.02, 0.08, 0.3))
    _, t2 = decode(encode(meta, tensors, scheme), "x")
    keys = ["predictor.layers.0.weight", "predictor.layers.1.weight", "predictor.final_linear_layer.weight"]
    for i, k in enumerate(keys):
        assert torch.equal(t2[k], Scheme("ans", step=scheme.layer_steps[i]).roundtrip(tensors[k])), k
        assert torch.equal(t2[k], scheme.roundtrip(tensors[k], i))
    assert not torch.equal(t2[keys[0]], Scheme("ans", step=0.04).roundtrip(tensors[keys[0]]))
    with pytest.raises(ValueError, match="layer_steps lists 3"):
        scheme.step_of(3)
    with pytest.raises(ValueError, match="out of range"):
        Scheme("ans", layer_steps=(0.04, -1.0))
