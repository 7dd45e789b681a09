"""``predict_rows`` dispatch and the first-layer table shortcut (nernfast.ops.predict / .tables).

CPU tensors take the PyTorch path (tables for the basic encoding), CUDA tensors the Triton kernels,
``NERNFAST_REFERENCE=1`` the reference. The table path is exact up to summation order, so fp32 is
compared at 1e-5 relative to the output scale. Inputs from ``session_seed()`` (fixed by default,
``NERNFAST_TEST_SEED=<seed>`` or ``=random`` to vary them).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nernfast.encoding import BasicEncoding, FFNEncoding, PositionalEncoding
from nernfast.models import build_model
from nernfast.nern import NeRN
from nernfast.ops import predict as P
from nernfast.ops.predict import predict_rows, predict_rows_reference
from nernfast.ops.tables import coordinate_index, first_layer_table
from nernfast.predictor import Predictor
from nernfast.testing.seed import session_seed

SEED = session_seed()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


@pytest.fixture(scope="module", params=["none", "local"], ids=["int-coords", "local-coords"])
def nern(request):
    torch.manual_seed(SEED)
    # ResNet-20, in-filter permutation; normalisation 'none' (the default: raw integer layer/filter/
    # channel indices) and 'local' (index / count, per layer).
    return NeRN.from_model(build_model("resnet20"), hidden=24, num_blocks=4, normalization=request.param)


def close(a: torch.Tensor, b: torch.Tensor, rel: float, what: str = "") -> None:
    scale = b.abs().max().item()
    err = (a.double() - b.double()).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} * scale {scale:.3g} (seed {SEED})"


def test_coordinate_index_is_exact_and_cached(nern):
    coords = nern.coords
    index = coordinate_index(coords)
    assert coordinate_index(coords) is index
    offset = 0
    for c, v in enumerate(index.values):
        assert torch.equal(v[index.idx[:, c] - offset], coords[:, c]), f"coordinate {c} not reproduced"
        offset += v.numel()
    # Few distinct values per coordinate (either normalisation), far fewer than rows.
    assert index.sizes[0] == len(nern.plan.layers) and index.num_entries < 200 < nern.plan.num_rows
    other = coords.clone()
    assert coordinate_index(other) is not index
    other[0, 1] = 0.123
    assert coordinate_index(other).values[1].eq(0.123).any(), "in-place change not seen by the cache"


def test_tables_reproduce_first_layer(nern):
    enc, lin = nern.encoding, nern.predictor.layers[0]
    coords = nern.coords[torch.randperm(nern.plan.num_rows)[:500]]
    index = coordinate_index(coords)
    tab = first_layer_table(enc, lin.weight, lin.bias, index)
    got = tab[index.idx].sum(1)
    want = enc(coords).double() @ lin.weight.double().T + lin.bias.double()
    close(got, want, 1e-6, "T[i0] + T[i1] + T[i2] vs the float64 first layer")


def test_cpu_takes_torch_path_with_tables(nern, monkeypatch):
    def no_triton(*a, **k):
        raise AssertionError("CPU tensors must not take the Triton path")
    monkeypatch.setattr(P, "_predict_triton", no_triton)
    calls = []
    real_table = P.first_layer_table
    monkeypatch.setattr(P, "first_layer_table", lambda *a, **k: calls.append(1) or real_table(*a, **k))
    idx = torch.randperm(nern.plan.num_rows)[:300]
    coords = nern.coords[idx]
    with torch.no_grad():
        full = predict_rows(nern.predictor, nern.encoding, nern.coords)
        ref = predict_rows_reference(nern.predictor, nern.encoding, nern.coords)
        chunked = predict_rows(nern.predictor, nern.encoding, nern.coords, chunk=4097)
    assert calls, "the basic encoding on the CPU should use the table shortcut (TABLE_ON_CPU)"
    close(full, ref, 1e-5, "table path vs reference, whole ResNet-20")
    close(chunked, full, 1e-6, "chunked vs unchunked")
    # gradients of a subset, through every predictor parameter
    g = torch.randn(300, 9)
    params = list(nern.predictor.parameters())
    ours = torch.autograd.grad(predict_rows(nern.predictor, nern.encoding, coords), params, g)
    want = torch.autograd.grad(predict_rows_reference(nern.predictor, nern.encoding, coords), params, g)
    for (name, _), a, b in zip(nern.predictor.named_parameters(), ours, want):
        close(a, b, 1e-5, f"grad {name}")


@pytest.mark.parametrize("first_layer", ["table", "direct"])
def test_triton_backend_on_plan_coordinates(nern, first_layer):
    """The kernels through the dispatcher on a plan's own coordinates (a row subset: the interpreter
    is slow), forward and every parameter gradient, against the reference."""
    coords = nern.coords[torch.randperm(nern.plan.num_rows)[:40]]
    params = list(nern.predictor.parameters())
    g = torch.randn(40, 9)
    ours = predict_rows(nern.predictor, nern.encoding, coords, backend="triton", first_layer=first_layer)
    ref = predict_rows_reference(nern.predictor, nern.encoding, coords)
    close(ours, ref, 1e-5, f"triton {first_layer} rows")
    for (name, _), a, b in zip(nern.predictor.named_parameters(), torch.autograd.grad(ours, params, g),
                               torch.autograd.grad(ref, params, g)):
        close(a, b, 1e-5, f"triton {first_layer} grad {name}")


def test_backend_choice(monkeypatch):
    assert P.choose_backend("cpu") == "torch"
    assert P.choose_backend("cuda") == ("triton" if P.triton_available() else "torch")
    assert P.choose_backend("cpu", "triton") == "triton"
    monkeypatch.setattr(P, "triton_available", lambda: False)
    assert P.choose_backend("cuda") == "torch", "a missing triton must fall back, not fail"


def test_reference_switch(nern, monkeypatch):
    def no_fast(*a, **k):
        raise AssertionError("NERNFAST_REFERENCE=1 must force the reference")
    monkeypatch.setattr(P, "_predict_torch", no_fast)
    monkeypatch.setattr(P, "_predict_triton", no_fast)
    monkeypatch.setenv("NERNFAST_REFERENCE", "1")
    with torch.no_grad():
        out = predict_rows(nern.predictor, nern.encoding, nern.coords[:50], backend="triton")
        assert torch.equal(out, predict_rows_reference(nern.predictor, nern.encoding, nern.coords[:50]))


def test_nern_rows_subset_gradient_matches_reference(nern, monkeypatch):
    idx = torch.randint(0, nern.plan.num_rows, (257,))  # with duplicates, like the weighted batch
    params = list(nern.predictor.parameters())

    def run():
        rows = nern.rows(idx)
        g = torch.linspace(-1, 1, rows.numel()).view_as(rows)
        return rows.detach(), torch.autograd.grad(rows, params, g)
    rows, grads = run()
    monkeypatch.setenv("NERNFAST_REFERENCE", "1")
    rows_ref, grads_ref = run()
    close(rows, rows_ref, 1e-5, "rows")
    for (name, _), a, b in zip(nern.predictor.named_parameters(), grads, grads_ref):
        close(a, b, 1e-5, f"grad {name}")


def test_first_layer_choice():
    ffn, basic = FFNEncoding(16), BasicEncoding(levels=8)
    pred = Predictor(ffn.out_features, 16, 3, 3)
    coords = torch.rand(11, 3)
    with pytest.raises(ValueError, match="basic encoding"):
        predict_rows(pred, ffn, coords, first_layer="table")
    with pytest.raises(ValueError, match="first_layer"):
        predict_rows(pred, ffn, coords, first_layer="tables")
    with pytest.raises(ValueError, match="backend"):
        predict_rows(pred, ffn, coords, backend="cuda")
    assert not P._use_table("auto", ffn, "cpu", torch.float32)
    assert P._use_table("auto", basic, "cpu", torch.float32) == P.TABLE_ON_CPU[torch.float32]
    assert P._use_table("direct", basic, "cpu", torch.float32) is False
    with torch.no_grad():
        close(predict_rows(pred, ffn, coords), predict_rows_reference(pred, ffn, coords), 1e-6, "ffn")


def test_unsupported_modules_fall_back_to_reference():
    enc = BasicEncoding(levels=4)
    seq = nn.Sequential(nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 9))
    coords = torch.rand(5, 3)
    with torch.no_grad():
        assert torch.equal(predict_rows(seq, enc, coords, backend="triton"), seq(enc(coords)))


@pytest.mark.parametrize("mode", ["bf16-weights", "autocast-bf16"])
def test_low_precision_cpu(nern, mode):
    """Tables are summed in fp32, so the table path is at least as accurate as the bf16 reference."""
    pred = nern.predictor
    coords = nern.coords[:2000]
    with torch.no_grad():
        x64 = nern.encoding(coords).double()
        p64 = type(pred)(pred.in_features, pred.hidden, pred.kernel_size, pred.num_blocks).double()
        p64.load_state_dict(pred.state_dict())
        if mode == "bf16-weights":
            p = type(pred)(pred.in_features, pred.hidden, pred.kernel_size, pred.num_blocks).to(torch.bfloat16)
            p.load_state_dict(pred.state_dict())
            p64.load_state_dict({k: v.double() for k, v in p.state_dict().items()})
            ref = predict_rows_reference(p, nern.encoding, coords)
            ours = predict_rows(p, nern.encoding, coords)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ref = predict_rows_reference(pred, nern.encoding, coords)
                ours = predict_rows(pred, nern.encoding, coords)
        truth = p64(x64)
    assert ours.dtype == ref.dtype == torch.bfloat16
    e_ref = (ref.double() - truth).abs().max().item()
    e_ours = (ours.double() - truth).abs().max().item()
    assert e_ours <= 2 * e_ref + 2**-8 * truth.abs().max().item(), (e_ours, e_ref, SEED)


class _Octaves(PositionalEncoding):
    """An encoding the ops have never heard of: per-coordinate blocks (sin/cos at powers of 2), no
    Triton form. It must reach the table shortcut (CPU and Triton) through the interface alone."""
    coordinate_blocks = True

    def __init__(self, levels: int = 5):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(levels, dtype=torch.float32), persistent=False)

    @property
    def out_features(self) -> int:
        return 6 * self.freqs.numel()

    def encode_coordinate(self, values: torch.Tensor) -> torch.Tensor:
        x = values.float()[:, None] * self.freqs
        return torch.cat((torch.sin(x), torch.cos(x)), 1)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encode_coordinate(coords[:, c]) for c in range(3)], 1)


def test_a_new_encoding_needs_only_the_interface(monkeypatch):
    enc = _Octaves()
    pred = Predictor(enc.out_features, 16, 3, 3)
    coords = torch.randint(0, 9, (30, 3)).float()
    params = list(pred.parameters())
    g = torch.randn(30, 9)
    ref = predict_rows_reference(pred, enc, coords)
    ref_g = torch.autograd.grad(ref, params, g)
    calls = []
    real_table = P.first_layer_table
    monkeypatch.setattr(P, "first_layer_table", lambda *a, **k: calls.append(1) or real_table(*a, **k))
    for backend, first in (("torch", "auto"), ("triton", "table"), ("triton", "direct")):
        calls.clear()
        ours = predict_rows(pred, enc, coords, backend=backend, first_layer=first)
        close(ours, ref, 1e-5, f"{backend}/{first} rows")
        for a, b in zip(torch.autograd.grad(ours, params, g), ref_g):
            close(a, b, 1e-5, f"{backend}/{first} grad")
        assert bool(calls) == (first != "direct"), (backend, first, "tables used" if calls else "no tables")
