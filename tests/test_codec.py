"""The artefact's codes: quantisers vs their plain-PyTorch reference, the permutation code, the
format-2 container (round trips, checksum) and the lossless scheme's exactness."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nernfast.codec import permutation as pc
from nernfast.codec.container import ContainerError, part_sizes, read_container, write_container
from nernfast.codec.format2 import LOSSLESS, Scheme, _pack, _unpack, decode, encode
from nernfast.codec.quant import (EPS, FakeQuant, Quantized, dequantize, qrange, quantize, quantize_reference,
                                  torchao_available)


# ---- quantisers ----------------------------------------------------------------------------------
def _blockwise_truth(w: torch.Tensor, bits: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element by element, no padding tricks: the rule of nernfast.codec.quant's docstring."""
    qmin, qmax = qrange(bits)
    out, cols = w.shape
    nb = math.ceil(cols / g)
    q = torch.empty(out, cols, dtype=torch.int8)
    scale = torch.empty(out, nb, dtype=torch.float16)
    for r in range(out):
        for b in range(nb):
            blk = w[r, b * g:(b + 1) * g].float()
            s = max(min(float(blk.min()), 0.0) / qmin, max(float(blk.max()), 0.0) / qmax)
            scale[r, b] = torch.tensor(max(s, EPS), dtype=torch.float32).half()
            inv = 1.0 / scale[r, b].float()
            q[r, b * g:(b + 1) * g] = torch.clamp(torch.round(blk * inv), qmin, qmax).to(torch.int8)
    return q, scale


SHAPES = [((140, 240), 8, None), ((140, 140), 4, 64), ((9, 140), 4, 32), ((7, 5), 4, 2), ((3, 130), 4, 64),
          ((6, 42), 8, 16), ((11, 50), 6, 16), ((4, 33), 2, 8)]


@pytest.mark.parametrize("shape,bits,group", SHAPES)
def test_reference_quantiser_follows_the_rule(shape, bits, group):
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.1
    w[0] = 0.0                       # an all-zero row: the smallest scale, q = 0
    w[1, 0] = -1.0                   # a block whose negative end sets the scale
    qz = quantize_reference(w, bits, group)
    q, scale = _blockwise_truth(w, bits, qz.group)
    assert torch.equal(qz.q, q) and torch.equal(qz.scale, scale)
    qmin, qmax = qrange(bits)
    assert int(qz.q.min()) >= qmin and int(qz.q.max()) <= qmax
    # No clipping: every weight is within half a step of its dequantised value (+ fp16 scale rounding).
    step = qz.scale.float().repeat_interleave(qz.group, 1)[:, :shape[1]]
    err = (dequantize(qz) - w).abs()
    assert bool((err <= 0.5 * step * (1 + 2 ** -9) + 1e-12).all()), float((err / step).max())
    assert torch.equal(dequantize(qz)[0], torch.zeros(shape[1]))


@pytest.mark.skipif(not torchao_available(), reason="torchao not installed")
@pytest.mark.parametrize("shape,bits,group", SHAPES)
def test_torchao_quantiser_equals_the_reference_bit_for_bit(shape, bits, group):
    from nernfast.codec.quant import _quantize_torchao
    torch.manual_seed(1)
    w = torch.randn(shape) * 0.05
    w[:, :3] = 0.0
    a, b = _quantize_torchao(w, bits, group), quantize_reference(w, bits, group)
    diff = (a.q != b.q).nonzero()
    assert diff.numel() == 0, f"first differing (row, col): {diff[:5].tolist()}"
    assert torch.equal(a.scale, b.scale) and a.group == b.group
    assert torch.equal(dequantize(a), dequantize(b))


def test_dequantize_is_q_times_scale():
    qz = Quantized(torch.tensor([[1, -2, 3]], dtype=torch.int8), torch.tensor([[0.5, 2.0]], dtype=torch.float16), 4, 2)
    assert dequantize(qz).tolist() == [[0.5, -1.0, 6.0]]


def test_quantize_refuses_non_finite_weights():
    with pytest.raises(ValueError, match="non-finite"):
        quantize(torch.tensor([[float("nan"), 1.0]]), 8)


def test_fake_quant_forward_is_the_quantiser_and_gradient_passes_through():
    w = torch.randn(5, 70, requires_grad=True)
    fq = FakeQuant(4, 32)
    y = fq(w)
    assert torch.equal(y.detach(), dequantize(quantize_reference(w.detach(), 4, 32)))
    y.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


# ---- permutation ---------------------------------------------------------------------------------
def test_lehmer_round_trip_and_range():
    rng = np.random.default_rng(0)
    p = np.stack([rng.permutation(37) for _ in range(11)])
    d = pc.lehmer_encode(p)
    assert (d >= 0).all() and (d < 37 - np.arange(37)).all()
    assert np.array_equal(pc.lehmer_decode(d), p)


def _infilter_like(shapes, rng):
    """A global plan permutation with the infilter structure (filter order + channel orders per filter)."""
    out, off = [], 0
    for c_out, c_in in shapes:
        fo = np.concatenate([[0], 1 + rng.permutation(c_out - 1)]) if c_out > 1 else np.zeros(1, int)
        ch = np.stack([np.concatenate([[0], 1 + rng.permutation(c_in - 1)]) if c_in > 1 else np.zeros(1, int)
                       for _ in range(c_out)])
        out.append((fo[:, None] * c_in + ch).reshape(-1) + off)
        off += c_out * c_in
    return np.concatenate(out)


def _log2_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(2)


def test_permutation_code_is_exact_and_near_log2_factorial():
    rng = np.random.default_rng(0)
    shapes = [(16, 1), (16, 16), (32, 16), (64, 64), (5, 3)]
    perm = _infilter_like(shapes, rng)
    data, meta = pc.encode_permutation(perm, [(a, b, 3, 3) for a, b in shapes])
    assert meta["modes"] == ["blocked"] * len(shapes)
    assert np.array_equal(pc.decode_permutation(data, meta, [(a, b, 3, 3) for a, b in shapes]), perm)
    # chains start at 0: log2((n-1)!) per permutation of n
    bound = sum(_log2_factorial(a - 1) + a * _log2_factorial(b - 1) for a, b in shapes) / 8
    assert len(data) <= bound + 8, (len(data), bound)


def test_permutation_modes_flat_identity_and_long_chains(monkeypatch):
    rng = np.random.default_rng(1)
    shapes = [(4, 4, 3, 3), (6, 5, 3, 3), (3, 2, 1, 1)]
    perm = np.concatenate([np.arange(16), 16 + rng.permutation(30), 46 + np.arange(6)])
    data, meta = pc.encode_permutation(perm, shapes)
    assert meta["modes"] == ["identity", "flat", "identity"]
    assert np.array_equal(pc.decode_permutation(data, meta, shapes), perm)
    monkeypatch.setattr(pc, "LEHMER_MAX", 8)  # the item-by-item code of very long chains
    data2, meta2 = pc.encode_permutation(perm, shapes)
    assert np.array_equal(pc.decode_permutation(data2, meta2, shapes), perm)
    assert pc.encode_permutation(np.arange(16), shapes[:1])[0] == b""


# ---- container and format 2 ----------------------------------------------------------------------
def test_container_is_safetensors_and_detects_every_flipped_byte(tmp_path):
    from safetensors import safe_open
    parts = {"meta": b"m" * 5, "predictor": bytes(range(40))}
    data = write_container(parts)
    assert read_container(data, "x") == parts
    assert sum(part_sizes(data).values()) == len(data)
    (tmp_path / "c.safetensors").write_bytes(data)
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as f:
        assert bytes(f.get_tensor("predictor").numpy()) == parts["predictor"]
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x10
        with pytest.raises(ContainerError):
            read_container(bytes(bad), "x")
    with pytest.raises(ContainerError, match=rf"truncated \({len(data) - 10} of {len(data)} bytes\)"):
        read_container(data[:-10], "x")
    with pytest.raises(ContainerError, match="corrupt"):  # cut inside the header: its end is unknown
        read_container(data[:50], "x")


def test_pack_round_trip_all_dtypes():
    arrays = [("a", torch.randn(3, 4)), ("b", torch.randn(5).half()), ("c", torch.randn(2, 2).bfloat16()),
              ("d", torch.tensor(7)), ("e", torch.zeros(0)), ("f", torch.arange(6, dtype=torch.int8).view(2, 3))]
    raw, rec = _pack(arrays)
    back = _unpack(raw, rec)
    for k, v in arrays:
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def _tensors(rng_seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(rng_seed)
    tensors = {"predictor.layers.0.weight": torch.randn(8, 12, generator=g), "predictor.layers.0.bias": torch.randn(8, generator=g),
               "predictor.final_linear_layer.weight": torch.randn(9, 8, generator=g),
               "predictor.final_linear_layer.bias": torch.randn(9, generator=g),
               "encoding.B": torch.randn(6, 3, generator=g), "plan.perm": torch.tensor([0, 2, 1, 3, 5, 4, 6, 7]),
               "model.bn.weight": torch.randn(4, generator=g), "model.bn.num_batches_tracked": torch.tensor(12),
               "model.fc.weight": torch.randn(3, 4, generator=g)}
    meta = {"plan": {"layers": [["c1", [2, 2, 3, 3]], ["c2", [2, 2, 3, 3]]]}, "config": {"k": "v"}, "metrics": {"a": 1.5}}
    return meta, tensors


def test_lossless_scheme_round_trips_every_part_exactly():
    meta, tensors = _tensors()
    m2, t2 = decode(encode(meta, tensors, LOSSLESS), "x")
    assert t2.keys() == tensors.keys()
    for k, v in tensors.items():
        assert t2[k].dtype == (torch.int64 if k == "plan.perm" else v.dtype) and torch.equal(t2[k], v), k
    assert m2["config"] == meta["config"] and m2["metrics"] == meta["metrics"] and m2["plan"] == meta["plan"]
    assert m2["format"] == "nernfast-artefact-2"


@pytest.mark.parametrize("weights,rest", [("int8", "fp16"), ("int4", "bf16"), ("int8", "fp32")])
def test_compact_schemes_decode_to_the_quantiser_and_stated_precision(weights, rest):
    meta, tensors = _tensors()
    scheme = Scheme(weights=weights, group=4, rest=rest)
    _, t2 = decode(encode(meta, tensors, scheme), "x")
    bits = 8 if weights == "int8" else 4
    for k in ("predictor.layers.0.weight", "predictor.final_linear_layer.weight"):
        assert torch.equal(t2[k], dequantize(quantize_reference(tensors[k], bits, 4)))
    assert torch.equal(t2["predictor.layers.0.bias"], tensors["predictor.layers.0.bias"])  # biases fp32
    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[rest]
    assert torch.equal(t2["model.fc.weight"], tensors["model.fc.weight"].to(cast).float())
    assert t2["model.fc.weight"].dtype == torch.float32
    assert torch.equal(t2["model.bn.num_batches_tracked"], tensors["model.bn.num_batches_tracked"])
    assert torch.equal(t2["plan.perm"], tensors["plan.perm"]) and torch.equal(t2["encoding.B"], tensors["encoding.B"])


@pytest.mark.skipif(not torchao_available(), reason="torchao not installed")
def test_quantising_with_torchao_prints_nothing():
    """torchao's import logs a torch pytree deprecation warning; nernfast.compress users should not see it."""
    import subprocess
    import sys
    code = "import torch; from nernfast.codec.quant import quantize; quantize(torch.randn(4, 64), 7, 64)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
