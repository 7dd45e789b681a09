"""The scatter/gather ops (torch.ops.nernfast.*, csrc/scatter.cpp) against the plain-PyTorch reference.

The ops only move bits, so every comparison is exact (atol = rtol = 0) in every dtype. Op outputs are
poisoned with NaN first (NERNFAST_POISON=1, or a NaN-filled buffer for the in-place op), so an element
a kernel forgets to write shows up. Op-specific tests are skipped when the extension is not built;
the dispatching entry points are tested either way (they fall back to the reference).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nernfast import _ext
from nernfast.ops.scatter import (chain_index, flat_to_rows, flat_to_rows_reference, flat_views, layout_tensors,
                                  rows_to_flat, rows_to_flat_reference, write_layers_reference, write_rows_)
from nernfast.plan import LayerSpec, WeightPlan

needs_ext = pytest.mark.skipif(not _ext.available(), reason="nernfast._C not built: op-specific test "
                               "(the reference path is tested by the other tests)")

# (K, kernel sizes of the layers): 1x1 / 3x3 / 5x5 / 7x7 targets, mixed and uniform, K > every k_l,
# and even sizes (the crop then rounds its offset down, like the reference).
LAYOUTS = {
    "3x3+1x1": (3, [3, 1, 3, 1, 3]),
    "5x5": (5, [5, 3, 1, 5]),
    "7x7": (7, [7, 5, 3, 1, 7]),
    "uniform3": (3, [3, 3, 3]),
    "K5-smaller-only": (5, [3, 1]),
    "even": (4, [4, 2, 3, 1]),
}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def make_plan(K: int, ks: list[int], seed: int = 0, permuted: bool = True) -> WeightPlan:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, k in enumerate(ks):
        c_out, c_in = torch.randint(1, 9, (2,), generator=g).tolist()
        layers.append(LayerSpec(f"conv{i}", (c_out, c_in, k, k)))
    starts = torch.tensor([0] + [l.rows for l in layers]).cumsum(0)
    # A permutation within each layer (chain position -> destination row), like build_plan's.
    perm = torch.cat([(torch.randperm(l.rows, generator=g) if permuted else torch.arange(l.rows)) + s
                      for l, s in zip(layers, starts)])
    return WeightPlan(layers, K, "local", "crossfilter" if permuted else "none", perm)


def make_index(plan: WeightPlan, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    if mode == "chain":  # rows given in chain order: a full permutation
        return chain_index(plan, "cpu")
    return torch.randperm(plan.num_rows)[: max(1, plan.num_rows // 3)]  # a subset, any order


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bitwise equality (NaN == NaN); on failure name the first differing positions and values."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        f"{what}: {actual.shape}/{actual.dtype} vs {expected.shape}/{expected.dtype}"
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    if not bool(same.all()):
        bad = (~same).nonzero()[:5]
        vals = [(tuple(i.tolist()), actual[tuple(i)].item(), expected[tuple(i)].item()) for i in bad]
        pytest.fail(f"{what}: {int((~same).sum())} elements differ; first (index, op, reference): {vals}")


def op_args(plan: WeightPlan, device="cpu"):
    lay = layout_tensors(plan, device)
    return lay.row_offsets, lay.buf_offsets, lay.kernel_sizes


class OpLog(TorchDispatchMode):
    """Records the nernfast ops dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "nernfast":
            self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


# ---- the ops against the reference ------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("index_mode", ["none", "chain", "subset"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scatter_and_gather_match_reference(layout, dtype, index_mode, monkeypatch):
    monkeypatch.setenv("NERNFAST_POISON", "1")
    K, ks = LAYOUTS[layout]
    plan = make_plan(K, ks, seed=len(ks))
    index = make_index(plan, index_mode)
    m = plan.num_rows if index is None else index.numel()
    rows = torch.randn(m, K * K, dtype=torch.float64).to(dtype)
    flat = torch.ops.nernfast.scatter_rows(rows, *op_args(plan), index, plan.numel)
    assert_same(flat, rows_to_flat_reference(rows, plan, index), "scatter_rows")

    src = torch.randn(plan.numel, dtype=torch.float64).to(dtype)
    got = torch.ops.nernfast.gather_rows(src, *op_args(plan), index, m, K)
    assert_same(got, flat_to_rows_reference(src, plan, index), "gather_rows")


@needs_ext
@pytest.mark.parametrize("index_mode", ["none", "chain", "subset"])
@pytest.mark.parametrize("layout", ["3x3+1x1", "7x7", "even"])
def test_scatter_into_writes_exactly_the_named_rows(layout, index_mode):
    K, ks = LAYOUTS[layout]
    plan = make_plan(K, ks, seed=1)
    index = make_index(plan, index_mode)
    m = plan.num_rows if index is None else index.numel()
    rows = torch.randn(m, K * K)
    flat = torch.full((plan.numel,), float("nan"))
    torch.ops.nernfast.scatter_rows_into(rows, *op_args(plan), index, flat)
    written = rows_to_flat_reference(torch.ones_like(rows), plan, index) != 0
    expected = torch.where(written, rows_to_flat_reference(rows, plan, index), torch.tensor(float("nan")))
    assert_same(flat, expected, "scatter_rows_into")
    if index is None:
        assert not flat.isnan().any()


@needs_ext
def test_large_layer_multithreaded_runs():
    """A layout big enough for at::parallel_for to split inside layers (chunks start mid-layer)."""
    plan = make_plan(3, [3, 1, 3, 1], seed=2)
    big = [LayerSpec("a", (256, 96, 3, 3)), LayerSpec("b", (128, 256, 1, 1)), LayerSpec("c", (64, 128, 3, 3))]
    plan = WeightPlan(big, 3, "local", "none", torch.arange(sum(l.rows for l in big)))
    rows = torch.randn(plan.num_rows, 9)
    assert_same(torch.ops.nernfast.scatter_rows(rows, *op_args(plan), None, plan.numel),
                rows_to_flat_reference(rows, plan), "scatter_rows (large)")
    flat = torch.randn(plan.numel)
    assert_same(torch.ops.nernfast.gather_rows(flat, *op_args(plan), None, plan.num_rows, 3),
                flat_to_rows_reference(flat, plan), "gather_rows (large)")


# ---- autograd ---------------------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("index_mode", ["none", "subset"])
def test_gradcheck_float64(index_mode):
    plan = make_plan(5, [5, 1, 3], seed=3)
    index = make_index(plan, index_mode)
    m = plan.num_rows if index is None else index.numel()
    args = op_args(plan)
    rows = torch.randn(m, 25, dtype=torch.float64, requires_grad=True)
    flat = torch.randn(plan.numel, dtype=torch.float64, requires_grad=True)
    scatter = lambda r: torch.ops.nernfast.scatter_rows(r, *args, index, plan.numel)  # noqa: E731
    gather = lambda f: torch.ops.nernfast.gather_rows(f, *args, index, m, 5)  # noqa: E731
    assert torch.autograd.gradcheck(scatter, (rows,))
    assert torch.autograd.gradcheck(gather, (flat,))
    assert torch.autograd.gradgradcheck(scatter, (rows,))
    assert torch.autograd.gradgradcheck(gather, (flat,))


@needs_ext
def test_backward_of_scatter_is_gather_and_matches_reference():
    plan = make_plan(3, [3, 1, 3], seed=4)
    rows = torch.randn(plan.num_rows, 9, requires_grad=True)
    upstream = torch.randn(plan.numel)
    (torch.ops.nernfast.scatter_rows(rows, *op_args(plan), None, plan.numel) * upstream).sum().backward()
    ref_rows = rows.detach().clone().requires_grad_()
    (rows_to_flat_reference(ref_rows, plan) * upstream).sum().backward()
    assert_same(rows.grad, ref_rows.grad, "d scatter / d rows")


@needs_ext
def test_opcheck_schema_autograd_and_fake_registrations():
    plan = make_plan(3, [3, 1], seed=5)
    args = op_args(plan)
    rows = torch.randn(plan.num_rows, 9, requires_grad=True)
    flat = torch.randn(plan.numel, requires_grad=True)
    torch.library.opcheck(torch.ops.nernfast.scatter_rows.default, (rows, *args, None, plan.numel))
    torch.library.opcheck(torch.ops.nernfast.gather_rows.default, (flat, *args, None, plan.num_rows, 3))
    torch.library.opcheck(torch.ops.nernfast.scatter_rows_into.default,
                          (rows.detach(), *args, None, flat.detach().clone()))


@needs_ext
def test_torch_compile_fullgraph_traces_the_ops():
    """One small compile of the public entry points: forward and backward of rows_to_flat ->
    elementwise -> flat_to_rows, with no graph break, and the graphs hold the nernfast ops.
    AOTAutograd runs with the fake kernels and the C++ autograd formulas; the graphs then run eagerly
    (inductor would add only C++ code generation for the elementwise part: ~50 s on 2 busy cores)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    plan = make_plan(3, [3, 1, 3], seed=6)
    traced: list[str] = []

    def keep_graph(gm, _inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm)

    def step(rows, scale):
        return flat_to_rows(rows_to_flat(rows, plan) * scale, plan).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=aot_autograd(fw_compiler=keep_graph,
                                                                        bw_compiler=keep_graph))
    rows = torch.randn(plan.num_rows, 9, requires_grad=True)
    scale = torch.randn(plan.numel)
    loss = compiled(rows, scale)
    loss.backward()
    ref_rows = rows.detach().clone().requires_grad_()
    ref = flat_to_rows_reference(rows_to_flat_reference(ref_rows, plan) * scale, plan).square().sum()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(rows.grad, ref_rows.grad)
    assert "nernfast.scatter_rows.default" in traced and "nernfast.gather_rows.default" in traced, traced


# ---- documented errors ------------------------------------------------------------------------------

def _bad_calls():
    plan = make_plan(3, [3, 1], seed=7)
    ro, bo, ks = op_args(plan)
    n, numel = plan.num_rows, plan.numel
    rows, flat = torch.randn(n, 9), torch.randn(numel)
    op = torch.ops.nernfast
    return [
        ("int rows", lambda: op.scatter_rows(rows.int(), ro, bo, ks, None, numel),
         r"rows must be float32, float64, float16 or bfloat16, got Int"),
        ("non-contiguous rows", lambda: op.scatter_rows(torch.randn(9, n).t(), ro, bo, ks, None, numel),
         r"rows must be contiguous.*call \.contiguous\(\)"),
        ("1-D rows", lambda: op.scatter_rows(rows.reshape(-1), ro, bo, ks, None, numel), r"rows must be 2-D"),
        ("8 columns", lambda: op.scatter_rows(torch.randn(n, 8), ro, bo, ks, None, numel),
         r"K\*K columns for an integer K"),
        ("int32 layout", lambda: op.scatter_rows(rows, ro.int(), bo, ks, None, numel),
         r"row_offsets must be int64, got Int"),
        ("wrong numel", lambda: op.scatter_rows(rows, ro, bo, ks, None, numel + 1),
         r"numel = \d+ but the layout's buf_offsets end at \d+"),
        ("missing rows", lambda: op.scatter_rows(rows[:-1], ro, bo, ks, None, numel),
         r"without index, rows must hold all \d+ destination rows"),
        ("index out of range", lambda: op.scatter_rows(rows[:2], ro, bo, ks, torch.tensor([0, n]), numel),
         r"index\[1\] = \d+ is not a destination row"),
        ("duplicate index", lambda: op.scatter_rows(rows[:2], ro, bo, ks, torch.tensor([3, 3]), numel),
         r"names destination row 3 twice"),
        ("index length", lambda: op.scatter_rows(rows[:2], ro, bo, ks, torch.tensor([0, 1, 2]), numel),
         r"index must have one entry per row"),
        ("kernel larger than K", lambda: op.scatter_rows(rows, ro, bo, torch.tensor([3, 5]), None, numel),
         r"kernel_sizes\[1\] = 5 is outside \[1, K = 3\]"),
        ("inconsistent offsets", lambda: op.scatter_rows(rows, ro, bo + torch.tensor([0, 1, 1]), ks, None, numel),
         r"buf_offsets give it"),
        ("flat 2-D", lambda: op.gather_rows(flat.view(1, -1), ro, bo, ks, None, n, 3), r"flat must be 1-D"),
        ("gather size", lambda: op.gather_rows(flat[:-1], ro, bo, ks, None, n, 3),
         r"flat has \d+ elements but the layout's buf_offsets end at"),
        ("into: dtype mismatch", lambda: op.scatter_rows_into(rows, ro, bo, ks, None, flat.double()),
         r"flat is Double but rows are Float"),
        ("into: under autograd", lambda: op.scatter_rows_into(rows.requires_grad_(), ro, bo, ks, None, flat),
         r"not differentiable: call it under torch.no_grad\(\)"),
    ]


@needs_ext
def test_bad_inputs_raise_documented_errors():
    for what, call, pattern in _bad_calls():
        with pytest.raises(RuntimeError, match=pattern):
            call()
            pytest.fail(f"{what}: no error")


# ---- dispatch: rows_to_flat / flat_to_rows / write_rows_ ------------------------------------------------

@pytest.mark.parametrize("layout", ["3x3+1x1", "uniform3"])
def test_dispatch_matches_reference_with_or_without_the_extension(layout):
    K, ks = LAYOUTS[layout]
    plan = make_plan(K, ks, seed=8)
    rows = torch.randn(plan.num_rows, K * K, requires_grad=True)
    flat = rows_to_flat(rows, plan)
    assert_same(flat.detach(), rows_to_flat_reference(rows.detach(), plan), "rows_to_flat")
    upstream = torch.randn(plan.numel)
    (flat * upstream).sum().backward()
    assert_same(rows.grad, flat_to_rows_reference(upstream, plan), "rows_to_flat backward")
    src = torch.randn(plan.numel)
    assert_same(flat_to_rows(src, plan), flat_to_rows_reference(src, plan), "flat_to_rows")
    for index in (None, chain_index(plan, "cpu")):
        given = rows.detach() if index is None else rows.detach()[index]  # chain order: given[c] = row perm[c]
        out = torch.full((plan.numel,), float("nan"))
        write_rows_(out, given, plan, index)
        assert_same(out, rows_to_flat_reference(rows.detach(), plan), f"write_rows_ (index={index is not None})")
    weights = [torch.empty(l.shape) for l in plan.layers]
    write_layers_reference(rows.detach(), plan, weights)
    assert_same(torch.cat([w.reshape(-1) for w in weights]), rows_to_flat_reference(rows.detach(), plan),
                "per-layer loop")


def test_uniform_plans_are_zero_copy():
    plan = make_plan(3, [3, 3], seed=9)
    rows = torch.randn(plan.num_rows, 9)
    with OpLog() as log:
        flat = rows_to_flat(rows, plan)
        back = flat_to_rows(flat, plan)
    assert flat.data_ptr() == rows.data_ptr() and back.data_ptr() == rows.data_ptr()
    assert log.ops == []
    assert [v.data_ptr() for v in flat_views(flat, plan)][0] == rows.data_ptr()


@needs_ext
def test_dispatch_uses_the_op_and_honours_force_reference(monkeypatch):
    plan = make_plan(3, [3, 1, 3], seed=10)
    rows = torch.randn(plan.num_rows, 9)
    out = torch.empty(plan.numel)
    with OpLog() as log:
        rows_to_flat(rows, plan)
        flat_to_rows(out, plan)
        write_rows_(out, rows, plan)
    assert log.ops == ["scatter_rows", "gather_rows", "scatter_rows_into"]
    monkeypatch.setenv("NERNFAST_REFERENCE", "1")
    with OpLog() as log:
        rows_to_flat(rows, plan)
        write_rows_(out, rows, plan)
    assert log.ops == []


@needs_ext
def test_layout_tensors_are_cached_per_plan_and_device():
    plan = make_plan(3, [3, 1], seed=11)
    attrs = set(vars(plan))
    a, b = layout_tensors(plan, "cpu"), layout_tensors(plan, torch.device("cpu"))
    rows_to_flat(torch.randn(plan.num_rows, 9), plan)
    assert all(x is y for x, y in zip(a, b)) and a is plan.layout("cpu")
    assert set(vars(plan)) == attrs, "the ops must not add attributes to the (immutable) plan"
    assert tuple(a.row_offsets.tolist()) == plan.row_offsets and tuple(a.buf_offsets.tolist()) == plan.buf_offsets


def test_rows_of_the_wrong_shape_name_the_plan():
    plan = make_plan(3, [3, 1], seed=12)
    with pytest.raises(ValueError, match=rf"rows must have shape \({plan.num_rows}, 9\)"):
        rows_to_flat(torch.randn(plan.num_rows, 25), plan)
