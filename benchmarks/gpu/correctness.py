"""Correctness on the GPU: the kernel harness's checks (nernfast.testing.kernel_harness: error vs a
float64 result for the same parameters, at most 2 x the error of the PyTorch reference doing the
same arithmetic + one unit in the last place; fp32: 1e-5; ReLU masks equal to the reference's but at
kinks, whose rows carry no gradient), first on small shapes over encodings,
first-layer forms, paths, widths 64-1536, K 1-7, num_blocks 3-8, fp32/tf32/fp16/bf16 and both
coordinate kinds, then on every benchmark network whole (forward) and on its 4096-row subset
(backward), in tf32 and bf16."""
from __future__ import annotations

import traceback

import torch

from nernfast.ops import predict as P
from nernfast.testing import kernel_harness as H
from nernfast.testing.kernel_harness import Case

from .common import BACKEND, Recorder, device
from .networks import Network

SMALL = [Case("basic", "table", "fused", "bf16", 5, 140, 3, 1000),
         Case("basic", "table", "fused", "tf32", 5, 320, 3, 1000),
         Case("basic", "direct", "fused", "fp32", 4, 64, 5, 777),
         Case("ffn", "direct", "fused", "fp16", 3, 96, 7, 1000),
         Case("basic", "table", "fused", "fp16", 8, 512, 3, 999),
         Case("basic", "table", "layered", "bf16", 5, 680, 3, 1000),
         Case("basic", "direct", "layered", "tf32", 8, 1536, 1, 333),
         Case("ffn", "direct", "layered", "bf16", 3, 1024, 3, 1000),
         # raw integer coordinates (normalisation 'none', the default), the default sizes first
         Case("basic", "table", "fused", "bf16", 5, 140, 3, 1000, "int"),
         Case("basic", "table", "fused", "tf32", 5, 140, 3, 1000, "int"),
         Case("ffn", "direct", "layered", "fp16", 3, 680, 3, 1000, "int")]
SMOKE_SMALL = [Case("basic", "table", "fused", "fp32", 5, 40, 3, 37),
               Case("ffn", "direct", "layered", "fp16", 3, 32, 5, 21),
               Case("basic", "direct", "fused", "bf16", 4, 32, 3, 19),
               Case("basic", "table", "fused", "bf16", 5, 40, 3, 37, "int")]


def run_small(c: Case, seed: int) -> list[dict]:
    return H.run_case(c, seed, device())


def small_correctness(rec: Recorder, cases: list[Case]) -> int:
    """Every check of every small case into ``small_correctness``; returns the failures."""
    failures = 0
    for i, c in enumerate(cases):
        try:
            res = run_small(c, 1000 + i)
        except Exception:
            res = [{"check": str(c), "ok": False, "error": traceback.format_exc()[-2000:]}]
        for r in res:
            rec.add("small_correctness", r)
        bad = [r for r in res if not r["ok"]]
        failures += len(bad)
        worst = max(res, key=lambda r: r.get("err", 1) / (r.get("tol") or 1))
        rec.log(f"  {'ok  ' if not bad else 'FAIL'} {c}: {len(res)} checks, worst {worst['check']} "
                f"err {worst.get('err', float('nan')):.3g} tol {worst.get('tol', float('nan')):.3g}"
                + (f"\n{bad[0].get('error', bad[0])}" if bad else ""))
    return failures


def full_size_checks(rec: Recorder, net: Network, prec: str) -> None:
    """Whole network forward and the 4096-row backward, through the default dispatch."""
    pred = net.predictor(prec)
    dtype = H.DTYPES[prec]
    first = "table" if P._use_table("auto", net.enc, torch.device(device()).type, dtype) else "direct"
    ref, _, truth, _ = H.expected(prec, first, net.enc, pred, net.coords)
    with H.precision(prec), torch.no_grad():
        ours = P.predict_rows(pred, net.enc, net.coords, backend=BACKEND)
    r = H.measure(f"{net.name} {prec} whole-network forward", ours, ref, truth, prec)
    rec.add("full_correctness", r)
    rec.log(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']}: err {r['err']:.3g} (reference {r['ref_err']:.3g}, "
            f"tol {r['tol']:.3g})")
    del truth, ref, ours
    sub = net.coords[net.idx]
    g = torch.randn(sub.shape[0], net.kk, device=device()).to(dtype)
    records, _ = H.check_rows(f"{net.name} {prec} ({sub.shape[0]} rows)", prec, first, "auto", net.enc, pred, sub, g)
    for r in records[1:]:  # the subset's forward is the whole network's, checked above
        rec.add("full_correctness", r)
    bad = [r for r in records[1:] if not r["ok"]]
    worst = bad[0] if bad else max(records[1:], key=lambda r: r["err"] / (r["tol"] or 1))
    rec.log(f"  {'ok  ' if worst['ok'] else 'FAIL'} {net.name} {prec} backward, worst: {worst['check']} "
            f"err {worst['err']:.3g} (tol {worst['tol']:.3g}); ReLU masks differ on {records[1]['rows']} rows")
