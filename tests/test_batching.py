"""Weight mini-batch sampling (NeRN's weights_batch_method) and the subset-gradient trick."""
from __future__ import annotations

import pytest
import torch

from nernfast.batching import sample_rows, with_subset_gradient


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_all_and_oversized_batches_mean_every_row():
    assert sample_rows("all", 100, 10, gen()) is None
    assert sample_rows("random_batch", 100, 100, gen()) is None
    assert sample_rows("random_batch", 100, 1000, gen()) is None


def test_random_batch_is_uniform_without_replacement():
    counts = torch.zeros(50)
    for s in range(400):
        idx = sample_rows("random_batch", 50, 20, gen(s))
        assert idx.dtype == torch.long and idx.shape == (20,) and idx.unique().numel() == 20
        assert 0 <= idx.min() and idx.max() < 50
        counts += torch.bincount(idx, minlength=50)
    # each row is drawn with probability 20/50: 160 of 400 draws expected, std ~ 10
    assert (counts - 160).abs().max() < 50
    assert torch.equal(sample_rows("random_batch", 50, 20, gen(3)), sample_rows("random_batch", 50, 20, gen(3)))


def test_random_weighted_batch_mixes_uniform_and_norm_weighted_draws():
    n, b = 40, 400  # b > n: the weighted draws (with replacement) are easy to tell apart
    norms = torch.zeros(n)
    support = torch.tensor([3, 11, 20, 37])
    norms[support] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    weighted, counts = 0, torch.zeros(n)
    calls = 1000
    for s in range(calls):
        idx = sample_rows("random_weighted_batch", n, b, gen(s), norms)
        if idx.numel() == n:  # the uniform branch: a permutation of all rows (b >= n)
            assert torch.equal(idx.sort().values, torch.arange(n))
            continue
        weighted += 1
        assert idx.shape == (b,)
        assert torch.isin(idx, support).all(), "a row with zero norm was drawn"
        counts += torch.bincount(idx, minlength=n)
    assert abs(weighted / calls - 0.2) < 0.05  # probability 0.2 of the weighted branch
    freq = counts[support] / counts.sum()
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01, rtol=0)


def test_weighted_branch_needs_norms_and_survives_all_zero_norms():
    # find a seed that takes the weighted branch
    seed = next(s for s in range(100) if torch.rand((), generator=gen(s)).item() >= 0.8)
    with pytest.raises(ValueError, match="norms"):
        sample_rows("random_weighted_batch", 10, 30, gen(seed), None)
    idx = sample_rows("random_weighted_batch", 10, 30, gen(seed), torch.zeros(10))
    assert idx.shape == (30,) and idx.max() < 10
    with pytest.raises(ValueError, match="unknown weights batch method"):
        sample_rows("importance", 10, 3, gen())


def test_with_subset_gradient_values_and_duplicates():
    w = torch.randn(3, 4, requires_grad=True)
    coords = torch.randn(12, 3)
    full = (coords @ w).detach()
    idx = torch.tensor([2, 7, 2, 11])
    out = with_subset_gradient(full, idx, coords[idx] @ w)
    assert torch.equal(out, full)  # values untouched, exactly
    G = torch.randn(12, 4)
    (out * G).sum().backward()
    want = coords[[2]].T @ G[[2]] * 2 + coords[[7]].T @ G[[7]] + coords[[11]].T @ G[[11]]
    torch.testing.assert_close(w.grad, want)
