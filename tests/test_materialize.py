"""Materialisation (in place, and differentiable through functional_call) against per-layer loops."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from nernfast.batching import sample_rows
from nernfast.models import build_model
from nernfast.nern import NeRN


class Mixed(nn.Module):
    """K = 5 with 3x3, grouped, dilated and 1x1 convs (centre crops of 3 and 1), plus a kept non-square conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 7, 5, padding=2)
        self.b = nn.Conv2d(7, 6, 3, padding=2, dilation=2)
        self.g = nn.Conv2d(6, 9, 3, padding=1, groups=3)
        self.p = nn.Conv2d(9, 5, 1)
        self.t = nn.Conv2d(5, 4, (3, 1), padding=(1, 0))
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        for m in (self.a, self.b, self.g, self.p, self.t):
            x = torch.relu(m(x))
        return self.fc(self.bn(x).mean((2, 3)))


def reference_weights(nern: NeRN, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Layer by layer: encode this layer's coordinates, run the MLP, take the centre k x k, reshape."""
    plan, K = nern.plan, nern.plan.kernel_size
    pred = copy.deepcopy(nern.predictor).to(dtype)
    enc = copy.deepcopy(nern.encoding).to(dtype)
    out = {}
    with torch.no_grad():
        for i, l in enumerate(plan.layers):
            coords = plan.coords[plan.row_offsets[i]:plan.row_offsets[i + 1]].to(dtype)
            rows = pred(enc(coords)).view(-1, K, K)
            k = l.shape[2]
            lo = (K - k) // 2
            out[l.name] = rows[:, lo:lo + k, lo:lo + k].reshape(l.shape)
    return out


MODELS = {
    "resnet20": (lambda: build_model("resnet20"), {}),
    "resnet20b": (lambda: build_model("resnet20b"), {}),
    "mixed": (Mixed, {"smaller_kernels": True}),
}


def make(name, cache, hidden=24, **kw):
    fn, sel = MODELS[name]
    model = fn().eval()
    nern = NeRN.from_model(model, hidden=hidden, cache_dir=cache, **sel, **kw)
    return model, nern


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("permutation", ["none", "infilter"])
def test_materialize_equals_per_layer_loop(name, permutation, cache):
    model, nern = make(name, cache, permutation=permutation)
    kept = {k: v.clone() for k, v in model.state_dict().items() if k[:-7] not in nern.plan.names}
    nern.materialize_(model)
    mods = dict(model.named_modules())
    want64 = reference_weights(nern, torch.float64)
    want32 = reference_weights(nern, torch.float32)
    for l in nern.plan.layers:
        got = mods[l.name].weight
        assert got.shape == l.shape and got.grad_fn is None
        own = (want32[l.name].double() - want64[l.name]).abs().max().item()  # plain fp32 PyTorch's error
        err = (got.detach().double() - want64[l.name]).abs().max().item()
        assert err <= 4 * own + 1e-6, f"{l.name}: error {err:.3g} vs fp32 reference's {own:.3g}"
    if name == "resnet20b":  # the 1x1 shortcut is the centre of the 3x3 prediction
        sc = mods["layer2.0.shortcut.0"].weight
        assert sc.shape == (32, 16, 1, 1)
    for k, v in model.state_dict().items():  # BN, linear, kept convs untouched
        if k in kept:
            assert torch.equal(v, kept[k]), k
    assert all(p.grad is None for p in nern.parameters())


def test_materialize_twice_follows_the_predictor(cache):
    model, nern = make("resnet20b", cache)
    nern.materialize_(model)
    with torch.no_grad():
        for p in nern.predictor.parameters():
            p.mul_(1.5)
    nern.materialize_(model)
    want = reference_weights(nern)
    for l in nern.plan.layers:
        torch.testing.assert_close(dict(model.named_modules())[l.name].weight.detach(), want[l.name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_functional_call_matches_materialized_model(name, cache):
    model, nern = make(name, cache)
    model.train()  # batch statistics: an untrained predictor's network would be dead under eval-mode BN
    x = torch.randn(3, 3, 12, 12)
    weights = nern.weights("all")
    assert set(weights) == {f"{n}.weight" for n in nern.plan.names}
    params = {**dict(model.named_parameters()), **dict(model.named_buffers()), **weights}
    out = functional_call(model, params, (x,))
    nern.materialize_(model)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    (out * torch.randn_like(out)).sum().backward()
    for n, p in nern.predictor.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


def _grads(nern: NeRN, loss: torch.Tensor) -> list[torch.Tensor]:
    return torch.autograd.grad(loss, list(nern.predictor.parameters()))


def test_subset_gradient_flows_only_through_the_sampled_rows(cache):
    _, nern = make("resnet20b", cache, hidden=16)
    N, K2 = nern.plan.num_rows, nern.plan.kernel_size ** 2
    G = torch.randn(N, K2)
    idx = torch.tensor([5, 17, 5, 400, N - 1])  # row 5 drawn twice
    rows = nern.rows(idx)
    with torch.no_grad():
        full = nern.predictor(nern.encoding(nern.coords))
    torch.testing.assert_close(rows.detach(), full, rtol=1e-5, atol=1e-6)  # values: every row
    got = _grads(nern, (rows * G).sum())
    sub = nern.predictor(nern.encoding(nern.coords[idx]))
    want = _grads(nern, (sub * G[idx]).sum())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # duplicates count twice: grad = 2 * g(row 5) + g(17) + g(400) + g(N-1)
    one = [_grads(nern, (nern.predictor(nern.encoding(nern.coords[[i]])) * G[[i]]).sum()) for i in (5, 17, 400, N - 1)]
    for j, a in enumerate(got):
        torch.testing.assert_close(a, 2 * one[0][j] + one[1][j] + one[2][j] + one[3][j], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["all", "random_batch", "random_weighted_batch"])
def test_weights_methods_gradients(method, cache):
    """``NeRN.weights(method)``: the gradient is the one of exactly the rows sample_rows draws."""
    _, nern = make("resnet20", cache, hidden=16)  # uniform plan: rows are the flat buffer in order
    N, K2 = nern.plan.num_rows, nern.plan.kernel_size ** 2
    G = torch.randn(N, K2)
    norms = torch.rand(N)
    for seed in range(4):  # random_weighted_batch: both of its branches show up among these seeds
        w = nern.weights(method, batch_size=300, generator=torch.Generator().manual_seed(seed), norms=norms)
        flat = torch.cat([w[f"{n}.weight"].reshape(-1) for n in nern.plan.names]).view(N, K2)
        got = _grads(nern, (flat * G).sum())
        idx = sample_rows(method, N, 300, torch.Generator().manual_seed(seed), norms)
        rows = nern.coords if idx is None else nern.coords[idx]
        g = G if idx is None else G[idx]
        want = _grads(nern, (nern.predictor(nern.encoding(rows)) * g).sum())
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
