"""Similarity permutations ("smoothness") of the kernels of one layer.

A permutation ``perm`` of a layer with ``c_out * c_in`` kernels maps *chain position* ``j`` to the
kernel it predicts: the predictor sees the coordinates ``(l, j // c_in, j % c_in)`` and its output
is the kernel at flat index ``perm[j]`` (``filter * c_in + channel``). Only coordinates are permuted;
the weights never move.

- ``crossfilter``: one greedy nearest-neighbour chain (cosine similarity, starting at kernel 0) over
  all kernels of the layer.
- ``infilter``: a chain over each filter's channels, then a chain over the filters on their
  channel-permuted flattened kernels.
The chains run batched in torch: ``n`` steps of one matrix-vector product each, never an all-pairs
matrix, so a 512x512 layer (262 144 kernels) needs O(n) memory.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

PERMUTATIONS = ("none", "crossfilter", "infilter")


def greedy_chain(vectors: torch.Tensor) -> torch.Tensor:
    """Greedy nearest-neighbour chains by cosine similarity, one per batch entry.

    vectors: (B, n, d). Returns (B, n) int64: each chain starts at item 0 and always moves to the
    most similar unvisited item (first index on ties). All-zero vectors have similarity 0 to all.
    """
    v = vectors.to(torch.float64)
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    b, n, _ = v.shape
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


def layer_permutation(weight: torch.Tensor, mode: str) -> torch.Tensor:
    """Chain position -> flat kernel index for one conv weight (c_out, c_in, k, k)."""
    if mode == "none":
        return torch.arange(weight.shape[0] * weight.shape[1])
    if mode == "crossfilter":
        return crossfilter_permutation(weight.detach().cpu())
    if mode == "infilter":
        return infilter_permutation(weight.detach().cpu())
    raise ValueError(f"unknown permutation {mode!r}; choose one of {PERMUTATIONS}")


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
