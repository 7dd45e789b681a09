"""The fused Triton predictor kernels (nernfast.kernels.fused_mlp) against the PyTorch reference.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by tests/conftest.py
before any kernel is defined) on tiny shapes; with a GPU the same tests run compiled on CUDA.

Random inputs from ``session_seed()`` (nernfast.testing.seed): a fixed seed by default,
``NERNFAST_TEST_SEED=<seed>`` to replay one, ``NERNFAST_TEST_SEED=random`` for a fresh one.

Tolerances are bounded by the reference's own error: with ``truth`` the float64 result (encoding
included) for the same parameters, inputs and upstream gradient, each check requires
    err(kernel) <= 2 * err(reference) + floor(dtype) * scale,
errors as max |x - truth| and scale = max |truth| (per output, per parameter gradient). The
reference does the arithmetic the kernel does: operands in the compute dtype, fp32 accumulation.
The kernels sum in another order (and the table path sums three tables instead of one 240-term
product), hence the factor 2; the floor covers a reference that is exact by luck on a tiny shape:
fp32 1e-5 (~2^-17, far below any useful regression), fp16 2^-10 and bf16 2^-7 (one unit in the
last place of the dtype). The encoding counts as part of the computation: with raw integer
coordinates its fp32 arguments reach ~10^3 (ulp ~10^-4), and the kernel's FFN argument sums its
three terms in another order than the module's matmul, so a truth built on the module's fp32
encoding would charge that difference to the kernel alone.

Why the reference must round where the kernel rounds: a ReLU whose pre-activation lies within
rounding distance of 0 may switch on in one computation and off in another, and one such flip
moves a weight gradient by that row's whole contribution (O(1), not O(rounding)); a computation
with rounding points the reference lacks flips *other* ReLUs, so the max error stops being
comparable (heavy-tailed). The interpreter cannot do bf16 arithmetic, so there bf16 inputs take the
fp32 compute path on the bf16 values (result rounded to bf16; ``fused_mlp``'s detour): the
reference then is the fp32 composition on the same values (with the table first layer, on the
encoding rounded to bf16, as ``first_layer_table`` rounds it), rounded to bf16 at the end, and
only a GPU run proves the native bf16 path.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch

from nernfast.encoding import BasicEncoding, FFNEncoding
from nernfast.ops.predict import predict_rows, predict_rows_reference
from nernfast.predictor import Predictor
from nernfast.testing.seed import session_seed

fm = pytest.importorskip("nernfast.kernels.fused_mlp")

INTERPRETED = fm.INTERPRET
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
if DEVICE == "cpu" and not INTERPRETED:  # pragma: no cover - a setup error, not a kernel bug
    raise RuntimeError("no GPU and the kernels are not interpreted: TRITON_INTERPRET=1 must be set before "
                       "nernfast.kernels is imported (tests/conftest.py does this)")

SEED = session_seed()
FLOOR = {torch.float32: 1e-5, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


@dataclass(frozen=True)
class Case:
    enc: str        # basic | ffn
    first: str      # direct | table
    path: str       # fused | layered
    dtype: torch.dtype
    blocks: int
    hidden: int
    k: int
    n: int
    coords: str = "unit"  # unit: normalised to [0, 1) | int: raw integer indices (normalization 'none', the default)

    def __str__(self) -> str:
        return (f"{self.enc}-{self.first}-{self.path}-{str(self.dtype)[6:]}-nb{self.blocks}-H{self.hidden}"
                f"-K{self.k}-n{self.n}" + ("-int" if self.coords == "int" else ""))


CASES = [
    Case("basic", "direct", "fused", torch.float32, 3, 48, 3, 37),
    Case("basic", "table", "fused", torch.float32, 4, 64, 3, 37),
    Case("basic", "table", "layered", torch.float32, 5, 48, 5, 67),   # 67 rows: split-K weight gradients
    Case("basic", "direct", "layered", torch.float16, 3, 64, 3, 37),
    Case("basic", "table", "fused", torch.float16, 5, 32, 7, 19),
    Case("ffn", "direct", "fused", torch.float32, 4, 32, 1, 37),
    Case("ffn", "direct", "layered", torch.float16, 3, 48, 3, 37),
    Case("ffn", "direct", "fused", torch.float16, 8, 32, 3, 21),
    Case("basic", "table", "fused", torch.bfloat16, 3, 48, 3, 37),
    Case("basic", "direct", "layered", torch.bfloat16, 4, 32, 5, 37),
    Case("basic", "direct", "fused", torch.float32, 8, 32, 3, 1),
    # Raw integer coordinates. First the defaults (basic encoding L=40, H140, 5 blocks, K3, what
    # first_layer/path "auto" pick on CUDA: tables, fused), in fp32 and bf16.
    Case("basic", "table", "fused", torch.float32, 5, 140, 3, 37, "int"),
    Case("basic", "table", "fused", torch.bfloat16, 5, 140, 3, 37, "int"),
    Case("basic", "direct", "layered", torch.float16, 4, 48, 3, 37, "int"),
    Case("basic", "direct", "fused", torch.bfloat16, 3, 32, 5, 37, "int"),
    Case("ffn", "direct", "fused", torch.float32, 3, 32, 3, 37, "int"),
]


def make(case: Case):
    enc = BasicEncoding() if case.enc == "basic" else FFNEncoding(24, seed=SEED % 1000)
    pred = Predictor(enc.out_features, case.hidden, case.k, case.blocks)
    with torch.no_grad():  # biases away from zero so the bias paths matter
        for lin in pred.linears():
            lin.bias.uniform_(-0.5, 0.5)
    # Coordinates as a plan makes them, few distinct values per coordinate: (layer, filter, channel)
    # indices as they are (normalization 'none') or divided by a count ('local').
    n, counts = case.n, (20, 64, 48) if case.coords == "int" else (5, 16, 12)
    coords = torch.stack([torch.randint(0, c, (n,)) for c in counts], 1).float()
    if case.coords == "unit":
        coords = coords / torch.tensor(counts)
    return enc.to(DEVICE), pred.to(DEVICE, case.dtype), coords.to(DEVICE)


def max_err(a: torch.Tensor, truth: torch.Tensor) -> float:
    return (a.double() - truth).abs().max().item()


def check(name: str, ours: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.shape == truth.shape and ours.dtype == ref.dtype, (name, ours.shape, ours.dtype, ref.dtype)
    assert torch.isfinite(ours).all(), f"{name}: non-finite values (seed {SEED})"
    scale = truth.abs().max().item()
    e_ours, e_ref = max_err(ours, truth), max_err(ref, truth)
    tol = 2 * e_ref + FLOOR[dtype] * scale
    if e_ours > tol:
        d = (ours.double() - truth).abs()
        i = tuple(int(j) for j in (d == d.max()).nonzero()[0])
        raise AssertionError(f"{name}: error {e_ours:.3g} > tol {tol:.3g} (reference error {e_ref:.3g}, scale "
                             f"{scale:.3g}); worst at {i}: ours {ours[i].item():.6g}, reference {ref[i].item():.6g}, "
                             f"float64 {truth[i].item():.6g} (replay with NERNFAST_TEST_SEED={SEED})")


def run_all(pred, enc, coords, g, fn):
    out = fn(pred, enc, coords)
    grads = torch.autograd.grad(out, list(pred.parameters()), g.to(out.dtype))
    return out.detach(), grads


def emulated(case: Case) -> bool:
    """True where the kernel does not compute in ``case.dtype`` itself: bf16 under the interpreter."""
    return INTERPRETED and case.dtype == torch.bfloat16


def expected(case: Case, enc, pred, coords, g):
    """(reference rows, reference grads, float64 rows, float64 grads) for the kernel's arithmetic.

    Natively the reference is ``predict_rows_reference`` in the compute dtype; for the interpreter's
    bf16 detour it is the fp32 composition on the bf16 values, on the encoding the kernel sees (the
    table path rounds it to bf16), rounded to bf16 at the end (see the module doc).
    """
    x = enc(coords)
    if emulated(case):
        if case.first == "table":
            x = x.to(case.dtype).float()
        p32 = copy.deepcopy(pred).float()
        ref = p32(x)
        ref_g = [t.to(case.dtype) for t in torch.autograd.grad(ref, list(p32.parameters()), g.float())]
        ref = ref.detach().to(case.dtype)
    else:
        ref, ref_g = run_all(pred, enc, coords, g, predict_rows_reference)
    p64 = copy.deepcopy(pred).double()
    truth = p64(copy.deepcopy(enc).double()(coords.double()))
    truth_g = torch.autograd.grad(truth, list(p64.parameters()), g.double())
    return ref, ref_g, truth.detach(), truth_g


def check_case(case: Case) -> None:
    enc, pred, coords = make(case)
    g = torch.randn(case.n, case.k ** 2, device=DEVICE).to(case.dtype)
    names = [n for n, _ in pred.named_parameters()]
    ref, ref_g, truth, truth_g = expected(case, enc, pred, coords, g)
    ours, ours_g = run_all(pred, enc, coords, g, lambda p, e, c: predict_rows(
        p, e, c, backend="triton", first_layer=case.first, path=case.path))
    check(f"{case} forward", ours, ref, truth, case.dtype)
    for name, a, b, t in zip(names, ours_g, ref_g, truth_g):
        assert a.dtype == case.dtype, (name, a.dtype)
        check(f"{case} grad {name}", a, b, t, case.dtype)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_backward_matches_reference(case: Case):
    check_case(case)


def _drop_hidden_biases(monkeypatch):
    real = fm.pack_weights

    def pack(*a, **k):
        pk = real(*a, **k)
        pk.bm.zero_()
        return pk
    monkeypatch.setattr(fm, "pack_weights", pack)


def _mask_from_wrong_row(monkeypatch):
    real = fm.linear

    def linear(*a, mask=None, **k):
        return real(*a, mask=None if mask is None else mask.roll(1, 0), **k)
    monkeypatch.setattr(fm, "linear", linear)


def _bias_grad_off_by_4_percent(monkeypatch):
    real = fm.mlp_backward

    def backward(*a, **k):
        d_first, d_b0, mids, d_wf, d_bf = real(*a, **k)
        return d_first, d_b0, mids, d_wf, d_bf * 1.04
    monkeypatch.setattr(fm, "mlp_backward", backward)


@pytest.mark.parametrize("case", [CASES[8], CASES[4]], ids=str)
@pytest.mark.parametrize("bug", [_drop_hidden_biases, _mask_from_wrong_row, _bias_grad_off_by_4_percent],
                         ids=lambda f: f.__name__.strip("_"))
def test_check_catches_a_broken_kernel(case: Case, bug, monkeypatch):
    """The bound is not vacuous: a dropped bias, a ReLU mask taken from the wrong row, or a final
    bias gradient 4 % off fails it, in bf16 (the loosest floor) as in fp16."""
    bug(monkeypatch)
    with pytest.raises(AssertionError, match="error .* > tol"):
        check_case(case)


def _layer_outputs(pred: Predictor, x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    for lin in pred.layers:
        x = torch.relu(lin(x))
        outs.append(x)
    return outs


@pytest.mark.parametrize("path,first", [("fused", "direct"), ("layered", "table")])
def test_every_output_and_saved_activation_is_written(path: str, first: str):
    """Poisoned buffers: out and the saved activations start as NaN; every element the backward reads
    (each activation's first H columns, rounded up to 16, the padding being zero) must be written."""
    case = Case("basic", first, path, torch.float32, 5, 40, 3, 37)
    enc, pred, coords = make(case)
    lins = pred.linears()
    mids = [(l.weight.detach(), l.bias.detach()) for l in lins[1:-1]]
    wf, bf = lins[-1].weight.detach(), lins[-1].bias.detach()
    if first == "table":
        from nernfast.ops.tables import coordinate_index, first_layer_table
        index = coordinate_index(coords)
        table = first_layer_table(enc, lins[0].weight, lins[0].bias, index).detach()
        spec = fm.make_spec(fm.ENC_TABLE, 1, table, wf, 3, "ieee", path)
        pk = fm.pack_weights(spec, None, None, mids, wf, bf)
        x, w0 = index.idx32, fm.pad_table(table, spec)
    else:
        w0 = lins[0].weight.detach()
        spec = fm.make_spec(fm.ENC_BASIC, enc.levels, w0, wf, 3, "ieee", path)
        pk = fm.pack_weights(spec, w0, lins[0].bias.detach(), mids, wf, bf)
        x, w0 = coords, pk.first
    out = torch.full((case.n, 9), float("nan"), device=DEVICE)
    acts = torch.full((4, case.n, spec.width), float("nan"), device=DEVICE)
    launch = fm.fused_forward if path == "fused" else fm.layered_forward
    with torch.no_grad():
        launch(x, w0, pk, enc.freqs, spec, out, acts)
        want = _layer_outputs(pred, enc(coords))
        want_out = predict_rows_reference(pred, enc, coords)
    hs = 48  # H = 40 rounded up to 16
    assert torch.isfinite(out).all() and torch.isfinite(acts[:, :, :hs]).all(), f"unwritten elements (seed {SEED})"
    assert (acts[:, :, case.hidden:hs] == 0).all(), "padding columns of the activations must be zero"
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-4)
    for l in range(4):
        torch.testing.assert_close(acts[l, :, :case.hidden], want[l], atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"activation {l}: {m}")


def test_out_buffer_and_empty_input():
    case = Case("ffn", "direct", "fused", torch.float32, 3, 32, 3, 37)
    enc, pred, coords = make(case)
    flat = torch.full((case.n * 9 + 5,), float("nan"), device=DEVICE)  # e.g. a slice of a larger buffer
    with torch.no_grad():
        got = predict_rows(pred, enc, coords, backend="triton", out=flat[:case.n * 9].view(case.n, 9))
        want = predict_rows_reference(pred, enc, coords)
    assert got.data_ptr() == flat.data_ptr()
    torch.testing.assert_close(flat[:case.n * 9].view(case.n, 9), want, atol=1e-5, rtol=1e-4)
    assert torch.isnan(flat[case.n * 9:]).all(), "wrote past the end of out"
    empty = predict_rows(pred, enc, coords[:0], backend="triton")
    assert empty.shape == (0, 9)
    with pytest.raises(ValueError, match="no-grad"):
        predict_rows(pred, enc, coords, backend="triton", out=torch.empty(case.n, 9, device=DEVICE))
    with torch.no_grad(), pytest.raises(ValueError, match="contiguous"):
        predict_rows(pred, enc, coords, backend="triton", out=torch.empty(9, case.n, device=DEVICE).t())


def test_path_switch_and_limits():
    assert fm.choose_path(fm.FUSED_MAX_HIDDEN) == "fused"
    assert fm.choose_path(fm.FUSED_MAX_HIDDEN + 1) == "layered"
    with pytest.raises(ValueError, match="hidden <="):
        fm.choose_path(fm.FUSED_MAX_HIDDEN + 1, "fused")
    enc = BasicEncoding().to(DEVICE)
    pred = Predictor(enc.out_features, 16, 9, 3).to(DEVICE)  # K*K = 81 > 64
    with pytest.raises(ValueError, match="K\\*K"):
        predict_rows(pred, enc, torch.zeros(3, 3, device=DEVICE), backend="triton")
