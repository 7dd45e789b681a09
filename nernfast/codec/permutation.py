"""The plan's permutation in (nearly) the fewest bits it needs, exactly.

Each layer's permutation (chain position -> kernel, within the layer) is stored in one of three modes:

- ``identity``: nothing (permutation ``none``);
- ``blocked``: every chain block of ``c_in`` positions maps into one filter (``infilter`` chains do):
  a filter order (one permutation of ``c_out``) and one channel order per filter (``c_out``
  permutations of ``c_in``);
- ``flat``: one permutation of the layer's ``c_out * c_in`` kernels (``crossfilter``).

A permutation of n items is written as its Lehmer code (digit i = rank of item i among those not
yet used, uniform over n - i values) and all digits of all layers go through one ANS stream
(constriction) with uniform models: log2(n!) bits per permutation plus a few bytes, against
n * 32 for int32 and n * ceil(log2 n) for the smallest integer type. Digits that carry no
information are not coded: the last one (one value left) and the first one when every
permutation of that size starts at 0 (greedy chains start at item 0). Permutations longer than
``LEHMER_MAX`` (only ``flat`` layers of very wide convs) are coded item by item, uniform over n
values (log2 n bits each), which keeps decoding O(n) per item.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

LEHMER_MAX = 4096
_PAIRS = 1 << 24  # comparisons per block when computing Lehmer codes (bounds memory)


def lehmer_encode(p: np.ndarray) -> np.ndarray:
    """(B, n) permutations of 0..n-1 -> (B, n) digits, digit i in [0, n - i)."""
    b, n = p.shape
    out = np.empty_like(p)
    step = max(1, _PAIRS // max(n * n, 1))
    earlier = np.tri(n, n, -1, dtype=bool)  # [i, j]: j < i
    for s in range(0, b, step):
        blk = p[s:s + step]
        smaller = blk[:, None, :] < blk[:, :, None]  # [., i, j]: p_j < p_i
        out[s:s + step] = blk - (smaller & earlier).sum(-1)
    return out


def lehmer_decode(d: np.ndarray) -> np.ndarray:
    """Inverse of ``lehmer_encode``: n vectorised steps over the batch."""
    b, n = d.shape
    avail = np.ones((b, n), dtype=bool)
    rows = np.arange(b)
    out = np.empty((b, n), dtype=np.int64)
    for i in range(n):
        pick = np.argmax(np.cumsum(avail, axis=1) > d[:, i:i + 1], axis=1)
        out[:, i] = pick
        avail[rows, pick] = False
    return out


def _is_perm(p: np.ndarray) -> bool:
    return np.array_equal(np.sort(p, axis=-1), np.broadcast_to(np.arange(p.shape[-1]), p.shape))


def split_layers(perm: np.ndarray, shapes: Sequence[Sequence[int]]) -> tuple[list[str], list[list[np.ndarray]]]:
    """Per layer: the mode and its sub-permutations (each (B, n))."""
    modes, subs, off = [], [], 0
    for shape in shapes:
        c_out, c_in = int(shape[0]), int(shape[1])
        q = perm[off:off + c_out * c_in] - off
        off += c_out * c_in
        if np.array_equal(q, np.arange(q.size)):
            modes.append("identity")
            subs.append([])
            continue
        blocks = q.reshape(c_out, c_in)
        filt = blocks // c_in
        if (filt == filt[:, :1]).all() and _is_perm(filt[:, 0]):
            modes.append("blocked")
            subs.append([filt[:, 0][None], blocks % c_in])
        else:
            modes.append("flat")
            subs.append([q[None]])
    return modes, subs


def _sub_shapes(modes: Sequence[str], shapes: Sequence[Sequence[int]]) -> list[list[tuple[int, int]]]:
    out = []
    for mode, shape in zip(modes, shapes):
        c_out, c_in = int(shape[0]), int(shape[1])
        out.append({"identity": [], "blocked": [(1, c_out), (c_out, c_in)], "flat": [(1, c_out * c_in)]}[mode])
    return out


def _digits(p: np.ndarray) -> np.ndarray:
    return lehmer_encode(p) if p.shape[1] <= LEHMER_MAX else p


def _sizes(n: int, rows: int, skip_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(columns coded, alphabet size of each) for ``rows`` permutations of n items."""
    if n > LEHMER_MAX:
        cols = np.arange(n)
        return cols, np.full(n, n)
    cols = np.arange(1 if skip_first else 0, n - 1)
    return cols, n - cols


def encode_permutation(perm: np.ndarray, shapes: Sequence[Sequence[int]]) -> tuple[bytes, dict[str, Any]]:
    """(ANS stream, header entry) for the plan's global permutation; ``shapes`` = layer weight shapes."""
    import constriction
    modes, subs = split_layers(np.asarray(perm, dtype=np.int64), shapes)
    by_n: dict[int, list[np.ndarray]] = defaultdict(list)
    for parts in subs:
        for p in parts:
            by_n[p.shape[1]].append(p)
    symbols, sizes, starts_at_zero = [], [], {}
    for n in sorted(by_n):
        p = np.concatenate(by_n[n])
        if n < 2:
            continue
        zero = bool((p[:, 0] == 0).all())
        starts_at_zero[str(n)] = zero
        cols, size = _sizes(n, p.shape[0], zero)
        symbols.append(_digits(p)[:, cols].reshape(-1))
        sizes.append(np.tile(size, p.shape[0]))
    meta = {"codec": "lehmer-ans-uniform", "modes": modes, "starts_at_zero": starts_at_zero}
    if not symbols:
        return b"", meta
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.concatenate(symbols).astype(np.int32), constriction.stream.model.Uniform(),
                         np.concatenate(sizes).astype(np.int32))
    return coder.get_compressed().astype("<u4").tobytes(), meta


def decode_permutation(data: bytes, meta: dict[str, Any], shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """Inverse of ``encode_permutation``: the global permutation (int64)."""
    import constriction
    modes = meta["modes"]
    if len(modes) != len(shapes):
        raise ValueError(f"permutation header lists {len(modes)} layers, the plan has {len(shapes)}")
    layer_subs = _sub_shapes(modes, shapes)
    by_n: dict[int, int] = defaultdict(int)
    for subs in layer_subs:
        for rows, n in subs:
            by_n[n] += rows
    plan, total = [], []
    for n in sorted(by_n):
        if n < 2:
            continue
        cols, size = _sizes(n, by_n[n], meta["starts_at_zero"][str(n)])
        plan.append((n, cols))
        total.append(np.tile(size, by_n[n]))
    decoded: dict[int, np.ndarray] = {1: np.zeros((by_n.get(1, 0), 1), dtype=np.int64)}
    if total:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        flat = np.asarray(coder.decode(constriction.stream.model.Uniform(), np.concatenate(total).astype(np.int32)),
                          dtype=np.int64)
        pos = 0
        for n, cols in plan:
            rows = by_n[n]
            d = np.zeros((rows, n), dtype=np.int64)
            d[:, cols] = flat[pos:pos + rows * cols.size].reshape(rows, cols.size)
            pos += rows * cols.size
            decoded[n] = lehmer_decode(d) if n <= LEHMER_MAX else d
    taken: dict[int, int] = defaultdict(int)
    out, off = [], 0
    for mode, shape, subs in zip(modes, shapes, layer_subs):
        c_out, c_in = int(shape[0]), int(shape[1])
        got = []
        for rows, n in subs:
            got.append(decoded[n][taken[n]:taken[n] + rows])
            taken[n] += rows
        if mode == "identity":
            q = np.arange(c_out * c_in)
        elif mode == "blocked":
            q = (got[0][0][:, None] * c_in + got[1]).reshape(-1)
        else:
            q = got[0][0]
        out.append(q + off)
        off += c_out * c_in
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
