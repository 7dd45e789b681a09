"""Similarity permutations ("smoothness") of the kernels of one layer.

A permutation ``perm`` of a layer with ``c_out * c_in`` kernels maps *chain position* ``j`` to the
kernel it predicts: the predictor sees the coordinates ``(l, j // c_in, j % c_in)`` and its output
is the kernel at flat index ``perm[j]`` (``filter * c_in + channel``). Only coordinates are permuted;
the weights never move.

- ``crossfilter``: one greedy nearest-neighbour chain (cosine similarity, starting at kernel 0) over
  all kernels of the layer.
- ``infilter``: a chain over each filter's channels, then a chain over the filters on their
  channel-permuted flattened kernels.
Chains of up to ``LONG_CHAIN`` items run batched in torch (float64): ``n`` steps of one
matrix-vector product each, never an all-pairs matrix. Longer chains (crossfilter on big layers: an
ImageNet 512x512 layer has 262 144 kernels) run an exact pruned search in O(n) memory: kernels in
leaves with cone bounds, so each step scans only the leaves that could hold the most similar
unvisited kernel (see ``_long_greedy_chain``). Both give the plain greedy chain's order (ties to the
lowest index). Measured on the 2-core CI machine under load (process CPU time): ResNet-56 infilter
0.45 s, crossfilter 5.2 s; one 512x512 layer infilter 3 s, crossfilter ~95 s (random-init and
clustered kernels alike; the brute-force scan would take ~36 min). Results are cached on disk.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

PERMUTATIONS = ("none", "crossfilter", "infilter")


# Chains longer than this run the pruned exact search below instead of the brute-force scan.
LONG_CHAIN = 8192
_LEAF = 32  # kernels per leaf of the pruned search
_FIRST = 4  # leaves with the highest bounds scanned first, for a good first similarity to prune with


def _unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    """float64 rows scaled to unit norm; all-zero rows stay exactly zero (similarity 0 to everything)."""
    v = vectors.to(torch.float64)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def greedy_chain(vectors: torch.Tensor) -> torch.Tensor:
    """Greedy nearest-neighbour chains by cosine similarity, one per batch entry.

    vectors: (B, n, d). Returns (B, n) int64: each chain starts at item 0 and always moves to the
    most similar unvisited item (first index on ties). All-zero vectors have similarity 0 to all.
    Short chains run batched (one matrix-vector product per step over all items); chains longer
    than ``LONG_CHAIN`` run the exact pruned search of ``_long_greedy_chain``.
    """
    v = _unit_rows(vectors)
    b, n, _ = v.shape
    if n > LONG_CHAIN:
        return torch.stack([torch.from_numpy(_long_greedy_chain(v[i].numpy())) for i in range(b)])
    order = torch.empty(b, n, dtype=torch.long)
    visited = torch.zeros(b, n, dtype=torch.bool)
    rows = torch.arange(b)
    cur = torch.zeros(b, dtype=torch.long)
    order[:, 0] = cur
    visited[rows, cur] = True
    for step in range(1, n):
        sims = torch.einsum("bnd,bd->bn", v, v[rows, cur])
        sims.masked_fill_(visited, float("-inf"))
        cur = sims.argmax(dim=1)
        order[:, step] = cur
        visited[rows, cur] = True
    return order


def _balanced_leaves(x: np.ndarray, idx: np.ndarray, leaf: int) -> list[np.ndarray]:
    """Split ``idx`` (rows of x) into groups of at most ``leaf`` by recursive median cuts along each
    group's principal direction (a few power iterations, seeded). Each group is sorted ascending."""
    rng = np.random.default_rng(0)
    out, stack = [], [idx]
    while stack:
        part = stack.pop()
        if part.size <= leaf:
            out.append(np.sort(part))
            continue
        c = x[part]
        c = c - c.mean(0)
        w = rng.standard_normal(x.shape[1])
        for _ in range(6):
            w = c.T @ (c @ w)
            norm = np.linalg.norm(w)
            if norm == 0.0:
                break
            w /= norm
        half = part.size // 2
        cut = np.argpartition(c @ w, half)
        stack += [part[cut[half:]], part[cut[:half]]]
    return out


class _Leaves:
    """The unvisited non-zero unit vectors in leaves, each with a cone (centre direction, half
    angle phi) that contains its live members. For a unit query q at angle a from a centre, no
    member is more similar than cos(max(0, a - phi)): leaves whose bound is below the best
    similarity found so far need not be scanned. Exact; ties go to the lowest index."""

    def __init__(self, v: np.ndarray, idx: np.ndarray, leaf: int, pos: np.ndarray):
        groups = _balanced_leaves(v, idx, leaf)
        nc = len(groups)
        self.x = np.zeros((nc, leaf, v.shape[1]))
        self.orig = np.full((nc, leaf), np.iinfo(np.int64).max, dtype=np.int64)
        self.alive = np.zeros((nc, leaf), dtype=bool)
        for c, g in enumerate(groups):
            self.x[c, :g.size] = v[g]
            self.orig[c, :g.size] = g
            self.alive[c, :g.size] = True
            pos[g, 0] = c
            pos[g, 1] = np.arange(g.size)
        cen = self.x.sum(1)
        self.cen = cen / np.linalg.norm(cen, axis=1, keepdims=True).clip(1e-300)
        self.pc = np.einsum("csd,cd->cs", self.x, self.cen)  # cos(member, its centre)
        self.cos_phi = np.where(self.alive, self.pc, np.inf).min(1)
        self.live = np.isfinite(self.cos_phi)
        self.cos_phi[~self.live] = 1.0  # finite placeholders: empty leaves are masked by `live`
        self.sin_phi = np.sqrt(np.clip(1.0 - self.cos_phi ** 2, 0.0, None))
        self.size = self.count = idx.size
        self.pos = pos

    def remove(self, i: int) -> None:
        c, s = self.pos[i]
        self.alive[c, s] = False
        self.count -= 1
        cp = np.where(self.alive[c], self.pc[c], np.inf).min()
        if np.isfinite(cp):
            self.cos_phi[c] = cp
            self.sin_phi[c] = np.sqrt(max(0.0, 1.0 - cp * cp))
        else:
            self.live[c] = False

    def best(self, q: np.ndarray) -> tuple[float, int]:
        """(similarity, index) of the most similar live member to unit q; (-inf, -1) when empty."""
        ca = self.cen @ q
        bound = ca * self.cos_phi + np.sqrt(np.clip(1.0 - ca * ca, 0.0, None)) * self.sin_phi
        bound = np.where(ca >= self.cos_phi, 1.0, bound)
        bound[~self.live] = -np.inf
        top = np.argpartition(bound, bound.size - _FIRST)[-_FIRST:] if bound.size > _FIRST else np.arange(bound.size)
        first = np.where(self.alive[top], self.x[top] @ q, -np.inf).max()
        if first == -np.inf and not self.live.any():
            return -np.inf, -1
        cand = np.flatnonzero(bound >= first - 1e-9)  # margin: the bound's own rounding is ~1e-15
        sims = np.where(self.alive[cand], self.x[cand] @ q, -np.inf)
        best = sims.max()
        return float(best), int(self.orig[cand][sims == best].min())


def _long_greedy_chain(v: np.ndarray, leaf: int = _LEAF) -> np.ndarray:
    """The greedy chain of ``greedy_chain`` for one long list of unit-or-zero rows v (n, d) float64.

    Same order as the brute-force scan (ties aside: within rounding), in O(n) memory: the non-zero
    rows live in cone-bounded leaves (``_Leaves``), rebuilt over the unvisited rows whenever half
    of them are gone; all-zero rows (similarity exactly 0 to everything) are kept aside and
    visited lowest index first. From an all-zero row every similarity is 0, so the chain moves to
    the lowest unvisited index.
    """
    n = v.shape[0]
    order = np.empty(n, dtype=np.int64)
    nonzero = np.any(v != 0.0, axis=1)
    zeros = np.flatnonzero(~nonzero)
    unvisited = np.ones(n, dtype=bool)
    pos = np.zeros((n, 2), dtype=np.int64)
    leaves = _Leaves(v, np.flatnonzero(nonzero), leaf, pos)
    zp = lowest = 0  # zeros[:zp] visited; every index < lowest visited
    cur = 0
    for step in range(n):
        order[step] = cur
        unvisited[cur] = False
        if nonzero[cur]:
            leaves.remove(cur)
            if leaves.count > leaf and 2 * leaves.count < leaves.size:
                leaves = _Leaves(v, np.flatnonzero(unvisited & nonzero), leaf, pos)
        else:
            zp += 1
        if step == n - 1:
            break
        if not nonzero[cur]:
            while not unvisited[lowest]:
                lowest += 1
            cur = lowest
            continue
        sim, idx = leaves.best(v[cur])
        if zp < zeros.size and (sim < 0.0 or (sim == 0.0 and zeros[zp] < idx)):
            idx = int(zeros[zp])
        cur = idx
    return order


def crossfilter_permutation(weight: torch.Tensor) -> torch.Tensor:
    c_out, c_in = weight.shape[:2]
    return greedy_chain(weight.reshape(1, c_out * c_in, -1))[0]


def infilter_permutation(weight: torch.Tensor) -> torch.Tensor:
    c_out, c_in = weight.shape[:2]
    kernels = weight.reshape(c_out, c_in, -1)
    channel_order = greedy_chain(kernels)  # (c_out, c_in)
    reordered = torch.gather(kernels, 1, channel_order[..., None].expand_as(kernels))
    filter_order = greedy_chain(reordered.reshape(1, c_out, -1))[0]  # (c_out,)
    dest = filter_order[:, None] * c_in + channel_order[filter_order]
    return dest.reshape(-1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """The chains are thousands of tiny sequential ops: intra-op threads only add synchronisation,
    which costs 20x on a busy machine (measured: ResNet-56 infilter 1.3 s -> 26 s with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def layer_permutation(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Chain position -> flat kernel index for one conv weight (c_out, c_in, k, k)."""
    if mode == "none":
        return torch.arange(weight.shape[0] * weight.shape[1])
    if mode not in PERMUTATIONS:
        raise ValueError(f"unknown permutation {mode!r}; choose one of {PERMUTATIONS}")
    with _one_thread():
        if mode == "crossfilter":
            return crossfilter_permutation(weight.detach().cpu())
        return infilter_permutation(weight.detach().cpu())


def default_cache_dir() -> Path:
    return Path(os.environ.get("NERNFAST_CACHE", Path.home() / ".cache" / "nernfast"))


def compute_permutations(weights: list[torch.Tensor], mode: str,
                         cache_dir: str | Path | None = None) -> list[torch.Tensor]:
    """Per-layer permutations, cached on disk keyed by a hash of the weights and the mode."""
    if mode == "none":
        return [layer_permutation(w, mode) for w in weights]
    h = hashlib.sha256(mode.encode())
    for w in weights:
        t = w.detach().cpu().contiguous().to(torch.float32)
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    path = Path(cache_dir or default_cache_dir()) / f"perm-{mode}-{h.hexdigest()[:32]}.pt"
    if path.exists():
        try:
            perms = torch.load(path, weights_only=True)
            if len(perms) == len(weights):
                return perms
        except Exception:  # a torn or foreign cache file: recompute and overwrite
            pass
    perms = [layer_permutation(w, mode) for w in weights]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(perms, tmp)
    os.replace(tmp, path)
    return perms
