"""The fused Triton predictor kernels (nernfast.kernels.fused_mlp) against the PyTorch reference.

On a machine without a GPU the kernels run under ``TRITON_INTERPRET=1`` (set by tests/conftest.py
before any kernel is defined) on tiny shapes; with a GPU the same tests run compiled on CUDA.

Random inputs from ``session_seed()`` (nernfast.testing.seed): a fixed seed by default,
``NERNFAST_TEST_SEED=<seed>`` to replay one, ``NERNFAST_TEST_SEED=random`` for a fresh one.

The cases, their inputs, the reference, the float64 truth and the bound
(err(kernel) <= 2 * err(reference) + floor * scale, the reference doing the kernel's arithmetic)
live in nernfast.testing.kernel_harness, shared with benchmarks/gpu_check.py; its doc says why.
"""
from __future__ import annotations

import pytest
import torch

from nernfast.encoding import BasicEncoding
from nernfast.ops.predict import predict_rows, predict_rows_reference
from nernfast.predictor import Predictor
from nernfast.testing import kernel_harness as H
from nernfast.testing.kernel_harness import Case
from nernfast.testing.seed import session_seed

fm = pytest.importorskip("nernfast.kernels.fused_mlp")

INTERPRETED = fm.INTERPRET
DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
if DEVICE == "cpu" and not INTERPRETED:  # pragma: no cover - a setup error, not a kernel bug
    raise RuntimeError("no GPU and the kernels are not interpreted: TRITON_INTERPRET=1 must be set before "
                       "nernfast.kernels is imported (tests/conftest.py does this)")

SEED = session_seed()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(SEED)


CASES = [
    Case("basic", "direct", "fused", "fp32", 3, 48, 3, 37),
    Case("basic", "table", "fused", "fp32", 4, 64, 3, 37),
    Case("basic", "table", "layered", "fp32", 5, 48, 5, 67),   # 67 rows: split-K weight gradients
    Case("basic", "direct", "layered", "fp16", 3, 64, 3, 37),
    Case("basic", "table", "fused", "fp16", 5, 32, 7, 19),
    Case("ffn", "direct", "fused", "fp32", 4, 32, 1, 37),
    Case("ffn", "direct", "layered", "fp16", 3, 48, 3, 37),
    Case("ffn", "direct", "fused", "fp16", 8, 32, 3, 21),
    Case("basic", "table", "fused", "bf16", 3, 48, 3, 37),
    Case("basic", "direct", "layered", "bf16", 4, 32, 5, 37),
    Case("basic", "direct", "fused", "fp32", 8, 32, 3, 1),
    # Raw integer coordinates. First the defaults (basic encoding L=40, H140, 5 blocks, K3, what
    # first_layer/path "auto" pick on CUDA: tables, fused), in fp32 and bf16.
    Case("basic", "table", "fused", "fp32", 5, 140, 3, 19, "int"),
    Case("basic", "table", "fused", "bf16", 5, 140, 3, 19, "int"),
    Case("basic", "direct", "layered", "fp16", 4, 48, 3, 37, "int"),
    Case("basic", "direct", "fused", "bf16", 3, 32, 5, 37, "int"),
    Case("ffn", "direct", "fused", "fp32", 3, 32, 3, 37, "int"),
]


def make(case: Case):
    return H.make(case, SEED, DEVICE)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_backward_matches_reference(case: Case):
    H.check_case(case, SEED, DEVICE)


@pytest.mark.parametrize("case", [CASES[8], CASES[4]], ids=str)
@pytest.mark.parametrize("bug", sorted(H.BUGS))
def test_check_catches_a_broken_kernel(case: Case, bug: str, monkeypatch):
    """The bound is not vacuous: a dropped bias, a ReLU mask taken from the wrong row, or a final
    bias gradient 4 % off fails it, in bf16 (the loosest floor) as in fp16."""
    H.BUGS[bug](monkeypatch)
    with pytest.raises(AssertionError, match="error .* > tol"):
        H.check_case(case, SEED, DEVICE)


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
    case = Case("basic", first, path, "fp32", 5, 40, 3, 37)
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
    case = Case("ffn", "direct", "fused", "fp32", 3, 32, 3, 37)
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


# ---- the custom ops: schema, fake kernels, autograd registration, torch.compile -----------------------
def _op_args(first: str, save: bool = True):
    """Arguments of torch.ops.nernfast.fused_mlp for a small fp32 case, as predict_rows builds them."""
    enc, pred, coords = make(Case("basic", first, "fused", "fp32", 3, 32, 3, 21, "int"))
    lins = pred.linears()
    mids = [(l.weight, l.bias) for l in lins[1:-1]]
    wf, bf = lins[-1].weight, lins[-1].bias
    if first == "table":
        from nernfast.ops.tables import coordinate_index, first_layer_table
        index = coordinate_index(coords)
        x, w0, b0, mode, levels = index.idx32, first_layer_table(enc, lins[0].weight, lins[0].bias, index), None, \
            fm.ENC_TABLE, 1
        freq = w0.detach()
    else:
        ke = enc.kernel_encoding()
        x, w0, b0, mode, levels, freq = coords, lins[0].weight, lins[0].bias, fm.ENC_MODES[ke.kind], ke.size, ke.params
    spec = fm.make_spec(mode, levels, w0, wf, len(mids), "ieee", "fused")
    pk = fm.pack_weights(spec, w0, b0, mids, wf, bf)
    return (x, freq, w0, b0, wf, bf, [t for wb in mids for t in wb], pk.first, pk.b0, pk.wm, pk.bm, pk.wf, pk.bf,
            mode, levels, "ieee", "fused", save), spec


@pytest.mark.parametrize("first", ["direct", "table"])
def test_opcheck_schema_fake_and_autograd_registrations(first: str):
    args, spec = _op_args(first)
    torch.library.opcheck(torch.ops.nernfast.fused_mlp.default, args)
    rows, acts = torch.ops.nernfast.fused_mlp(*args)
    x, freq, w0, wf, pk = args[0], args[1], args[2], args[4], args[7:13]
    g = torch.randn_like(rows)
    torch.library.opcheck(torch.ops.nernfast.fused_mlp_backward.default,
                          (g, x, freq, acts.detach(), pk[2], pk[4], spec.mode, spec.levels, spec.in_features,
                           spec.hidden, w0.shape[0], "ieee", "fused"))
    out = torch.full_like(rows, float("nan")).detach()
    torch.library.opcheck(torch.ops.nernfast.fused_mlp_into.default,
                          (x, freq, w0.detach(), wf.detach(), *[t if t is None else t.detach() for t in pk], spec.nmid,
                           spec.mode, spec.levels, "ieee", "fused", out))


def test_torch_compile_fullgraph_traces_the_op():
    """predict_rows on the Triton backend, forward and backward, compiled with fullgraph=True (no graph
    break); the graphs hold the custom ops (AOTAutograd with the fake kernels; the graphs then run
    eagerly). The table first layer is not traced: its coordinate index is a data-dependent cache."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    enc, pred, coords = make(Case("basic", "direct", "fused", "fp32", 3, 32, 3, 21, "int"))
    traced: list[str] = []

    def keep_graph(gm, _inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm)

    def step(c):
        return predict_rows(pred, enc, c, backend="triton", first_layer="direct").square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=aot_autograd(fw_compiler=keep_graph, bw_compiler=keep_graph))
    params = list(pred.parameters())
    ours = torch.autograd.grad(compiled(coords), params)
    ref = torch.autograd.grad(predict_rows_reference(pred, enc, coords).square().sum(), params)
    for (name, _), a, b in zip(pred.named_parameters(), ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    assert "nernfast.fused_mlp.default" in traced and "nernfast.fused_mlp_backward.default" in traced, traced
