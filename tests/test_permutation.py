"""Similarity permutations against a plain-Python greedy chain in float64 (the reference lives here)."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from nernfast import permutation as P
from nernfast.models import build_model
from nernfast.selection import select_layers


# ---- the reference: lists, floats, loops -----------------------------------------------------------
def chain_reference(vectors: list[list[float]]) -> list[int]:
    """Greedy nearest-neighbour chain on cosine similarity, starting at item 0, first index on ties.
    An all-zero vector has similarity 0 to everything."""
    unit = []
    for v in vectors:
        n = math.sqrt(sum(x * x for x in v))
        unit.append([x / n for x in v] if n > 0 else [0.0] * len(v))
    order, visited = [0], {0}
    while len(order) < len(unit):
        q = unit[order[-1]]
        best, best_i = -math.inf, -1
        for i, u in enumerate(unit):
            if i in visited:
                continue
            s = sum(a * b for a, b in zip(q, u))
            if s > best:
                best, best_i = s, i
        order.append(best_i)
        visited.add(best_i)
    return order


def crossfilter_reference(w: torch.Tensor) -> list[int]:
    c_out, c_in = w.shape[:2]
    return chain_reference(w.double().reshape(c_out * c_in, -1).tolist())


def infilter_reference(w: torch.Tensor) -> list[int]:
    c_out, c_in = w.shape[:2]
    kernels = w.double().reshape(c_out, c_in, -1)
    channel_orders = [chain_reference(kernels[o].tolist()) for o in range(c_out)]
    flattened = [[x for i in channel_orders[o] for x in kernels[o, i].tolist()] for o in range(c_out)]
    filter_order = chain_reference(flattened)
    return [o * c_in + i for o in filter_order for i in channel_orders[o]]


def first_difference(got, ref) -> str:
    got, ref = list(map(int, got)), list(map(int, ref))
    bad = [j for j, (a, b) in enumerate(zip(got, ref)) if a != b]
    return f"first differing chain positions {bad[:5]}: got {[got[j] for j in bad[:5]]}, want {[ref[j] for j in bad[:5]]}"


def assert_bijection(perm: torch.Tensor, n: int) -> None:
    assert perm.dtype == torch.long and perm.shape == (n,)
    assert torch.equal(torch.sort(perm).values, torch.arange(n)), "not a permutation of 0..n-1"


SHAPES = [(1, 1, 3, 3), (5, 3, 3, 3), (7, 11, 3, 3), (4, 9, 5, 5), (13, 6, 1, 1), (3, 17, 2, 2), (16, 16, 3, 3)]


# ---- small layers: exactly the reference -------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["crossfilter", "infilter"])
def test_matches_python_greedy_chain(shape, mode):
    w = torch.randn(shape)
    got = P.layer_permutation(w, mode)
    ref = crossfilter_reference(w) if mode == "crossfilter" else infilter_reference(w)
    assert_bijection(got, shape[0] * shape[1])
    assert got.tolist() == ref, first_difference(got, ref)


@pytest.mark.parametrize("mode", ["crossfilter", "infilter"])
def test_zero_kernels_no_nan_and_reference_order(mode):
    """Pruned models: all-zero kernels have similarity 0 to everything (ties -> first index)."""
    w = torch.randn(6, 7, 3, 3)
    w[torch.rand(6, 7) < 0.4] = 0
    w[2] = 0  # a whole filter pruned
    got = P.layer_permutation(w, mode)
    ref = crossfilter_reference(w) if mode == "crossfilter" else infilter_reference(w)
    assert_bijection(got, 42)
    assert got.tolist() == ref, first_difference(got, ref)
    zero = torch.zeros(4, 5, 3, 3)
    assert P.layer_permutation(zero, mode).tolist() == list(range(20))


def test_none_is_identity():
    assert P.layer_permutation(torch.randn(3, 5, 3, 3), "none").tolist() == list(range(15))
    with pytest.raises(ValueError, match="unknown permutation"):
        P.layer_permutation(torch.randn(3, 5, 3, 3), "sideways")


def test_infilter_keeps_filters_together():
    c_out, c_in = 9, 7
    perm = P.layer_permutation(torch.randn(c_out, c_in, 3, 3), "infilter").view(c_out, c_in)
    filters = perm // c_in
    assert (filters == filters[:, :1]).all(), "a chain block of c_in positions must be one filter"
    assert sorted(filters[:, 0].tolist()) == list(range(c_out))


def test_batched_chains_match_single_chains():
    v = torch.randn(5, 23, 9)
    batched = P.greedy_chain(v)
    for b in range(5):
        assert batched[b].tolist() == chain_reference(v[b].double().tolist())


# ---- long chains: the pruned exact search -----------------------------------------------------------
@pytest.mark.parametrize("n,d,leaf,zero_frac", [(3001, 9, 16, 0.0), (2500, 9, 8, 0.15), (1200, 25, 32, 0.05),
                                                (2000, 1, 16, 0.1), (1500, 4, 4, 0.0)])
def test_long_chain_equals_brute_force(n, d, leaf, zero_frac):
    """The pruned search (small leaves to force pruning) gives the brute-force scan's order."""
    x = torch.randn(1, n, d, dtype=torch.float64)
    x[0, torch.rand(n) < zero_frac] = 0
    ref = P.greedy_chain(x)[0]  # n <= LONG_CHAIN: brute force
    got = P._long_greedy_chain(P._unit_rows(x)[0].numpy(), leaf)
    assert got.tolist() == ref.tolist(), first_difference(got, ref)


def test_long_chain_exact_ties_go_to_the_lowest_index():
    """Scaled signed basis vectors: every similarity is exactly -1, 0 or 1 in any summation order."""
    g = torch.Generator().manual_seed(4)
    n = 1500
    x = torch.eye(9, dtype=torch.float64)[torch.randint(0, 9, (n,), generator=g)]
    x *= torch.randint(1, 4, (n, 1), generator=g) * (torch.randint(0, 2, (n, 1), generator=g) * 2 - 1)
    x[torch.rand(n, generator=g) < 0.05] = 0
    ref = chain_reference(x[:300].tolist())  # the plain Python chain on a prefix
    assert P.greedy_chain(x[None, :300])[0].tolist() == ref
    assert P._long_greedy_chain(P._unit_rows(x[None, :300])[0].numpy(), 8).tolist() == ref
    brute = P.greedy_chain(x[None])[0]
    got = P._long_greedy_chain(P._unit_rows(x[None])[0].numpy(), 8)
    assert got.tolist() == brute.tolist(), first_difference(got, brute)


def test_long_chain_of_zeros_and_a_few_kernels():
    v = np.zeros((700, 9))
    assert P._long_greedy_chain(v, 8).tolist() == list(range(700))
    v[[3, 650, 10]] = np.eye(9)[[0, 0, 1]]  # from kernel 0 (zero): lowest index first, then 3 -> 650
    got = P._long_greedy_chain(v, 8).tolist()
    assert got[:6] == [0, 1, 2, 3, 650, 4] and sorted(got) == list(range(700))


def test_large_layer_every_step_is_the_best_remaining():
    """A crossfilter layer long enough for the pruned search: every sampled step moves to a kernel
    within 1e-6 of the most similar one still unvisited (float64 check here)."""
    c_out, c_in = 96, 96  # 9216 kernels > LONG_CHAIN
    assert c_out * c_in > P.LONG_CHAIN
    w = torch.randn(c_out, c_in, 3, 3) * torch.rand(c_out, 1, 1, 1)
    w[torch.rand(c_out, c_in) < 0.02] = 0
    t0 = time.perf_counter()
    perm = P.layer_permutation(w, "crossfilter")
    print(f"\ncrossfilter {c_out}x{c_in} ({c_out * c_in} kernels): {time.perf_counter() - t0:.2f} s")
    n = c_out * c_in
    assert_bijection(perm, n)
    v = w.double().reshape(n, -1)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    steps = torch.cat([torch.arange(0, 200), torch.randint(0, n - 1, (300,)), torch.arange(n - 200, n - 1)])
    position = torch.empty(n, dtype=torch.long)
    position[perm] = torch.arange(n)
    sims = v[perm[steps]] @ v.T  # (steps, n): similarity of each sampled step's kernel to every kernel
    best_remaining = sims.masked_fill(position[None, :] <= steps[:, None], -math.inf).max(1).values
    chosen = (v[perm[steps]] * v[perm[steps + 1]]).sum(1)
    bad = (chosen < best_remaining - 1e-6).nonzero().flatten()
    assert bad.numel() == 0, (f"steps {steps[bad[:5]].tolist()}: chose {chosen[bad[:5]].tolist()}, "
                              f"best remaining {best_remaining[bad[:5]].tolist()}")


# ---- caching and whole models ------------------------------------------------------------------------
def test_disk_cache_hit_returns_the_same(tmp_path, monkeypatch):
    ws = [torch.randn(4, 3, 3, 3), torch.randn(6, 4, 3, 3)]
    first = P.compute_permutations(ws, "infilter", tmp_path)
    files = list(tmp_path.glob("perm-infilter-*.pt"))
    assert len(files) == 1

    def boom(*_a, **_k):
        raise AssertionError("cache miss: recomputed")

    monkeypatch.setattr(P, "layer_permutation", boom)
    again = P.compute_permutations(ws, "infilter", tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(AssertionError, match="cache miss"):  # other mode or other weights: other key
        P.compute_permutations(ws, "crossfilter", tmp_path)
    with pytest.raises(AssertionError, match="cache miss"):
        P.compute_permutations([ws[0], ws[1] + 1e-3], "infilter", tmp_path)
    monkeypatch.undo()
    files[0].write_bytes(b"torn")  # a corrupt cache file is recomputed and replaced
    assert all(torch.equal(a, b) for a, b in zip(first, P.compute_permutations(ws, "infilter", tmp_path)))
    assert all(torch.equal(a, b) for a, b in zip(first, P.compute_permutations(ws, "infilter", tmp_path)))


def test_resnet56_infilter_bijective_and_timed(tmp_path):
    weights = [m.weight.detach() for _, m in select_layers(build_model("resnet56"))]
    t0 = time.perf_counter()
    perms = P.compute_permutations(weights, "infilter", tmp_path)
    print(f"\nResNet-56 infilter permutations: {time.perf_counter() - t0:.2f} s")
    for w, p in zip(weights, perms):
        assert_bijection(p, w.shape[0] * w.shape[1])
