"""Timings (``triton.testing.do_bench``: median and 20/80 % quantiles, ms) per network and precision:

  fused-fwd   ``predict_rows`` on CUDA (the default path): whole network, no grad, written
              straight into the flat conv-weight buffer (``out=``)
  fused-bwd   forward saving activations + backward on a 4096-row subset (and the backward alone)
  torch       the plain PyTorch path (tables + embedding_bag + cuBLAS), same precision
  reference   the reference algorithm (benchmarks/reference_baseline.py ``ReferenceNeRN.materialize``:
              precomputed 240-wide encodings, MLP in chunks of 4096 rows, split, crop, per-layer
              swap), fp32 without tf32, as the public code runs
  floor       the single-pass matmul floor: the same MLP as one chain of torch matmuls on the
              precomputed encoding, same precision
  alt-*       the other forms (direct first layer, the other path) to place the switch points

TFLOP/s count the FLOPs each path executes (table paths skip the first layer's per-row product;
padding is not counted), "% peak" divides by the card's measured dense-matmul rate in the same
precision (torch.matmul 8192^3), launches are CUDA kernels (and memsets/copies) per call seen by
torch.profiler. ``evaluate_targets`` states the issue's targets at the end; ``write_table`` writes
OUT/table.md.
"""
from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn.functional as F

from nernfast.testing.kernel_harness import DTYPES, precision

from . import common
from .common import BACKEND, BENCH, TIMED_PRECISIONS, Recorder, bench, device, launches, sync
from .networks import NETWORKS, Network

def fused_calls(case: Network, prec: str, first_layer="auto", path="auto"):
    from nernfast.ops.predict import predict_rows
    pred = case.predictor(prec)
    buf = torch.empty(case.n * case.kk, device=device(), dtype=DTYPES[prec])
    out = buf.view(case.n, case.kk)
    sub = case.coords[case.idx]
    g = torch.randn(sub.shape[0], case.kk, device=device(), dtype=DTYPES[prec])
    params = list(pred.parameters())

    def fwd():
        with torch.no_grad():
            predict_rows(pred, case.enc, case.coords, out=out, first_layer=first_layer, path=path, backend=BACKEND)

    def fwd_bwd():
        for p in params:
            p.grad = None
        predict_rows(pred, case.enc, sub, first_layer=first_layer, path=path, backend=BACKEND).backward(g)
    return pred, fwd, fwd_bwd, out


def warm_case(spec, prec: str, smoke: bool) -> None:
    """Run every kernel variant the main run will time, once (compiles all autotuning candidates)."""
    case = Network(spec, smoke)
    with precision(prec):
        _, fwd, fwd_bwd, _ = fused_calls(case, prec)
        fwd()
        fwd_bwd()
        for first, path in alternates(case):
            _, fwd, _, _ = fused_calls(case, prec, first, path)
            fwd()
    sync()


def alternates(case: Network) -> list[tuple[str, str]]:
    if case.pred.hidden <= 512:
        return [("direct", "fused"), ("table", "layered")]
    return [("direct", "layered")]


def matmul_rate(prec: str) -> float:
    """Dense torch.matmul TFLOP/s on this device in ``prec``."""
    n = 256 if common.CPU_SMOKE else 8192
    a = torch.randn(n, n, device=device()).to(DTYPES[prec])
    b = torch.randn(n, n, device=device()).to(DTYPES[prec])
    with precision(prec):
        ms = bench(lambda: a @ b)[0]
    return 2 * n ** 3 / ms / 1e9


def floor_fn(case: Network, prec: str):
    """The same MLP as one chain of torch matmuls on the precomputed encoding (all rows, one pass)."""
    pred = case.predictor(prec)
    x = case.enc(case.coords).to(DTYPES[prec])
    lins = [(l.weight, l.bias) for l in pred.linears()]

    def run():
        with torch.no_grad():
            h = x
            for w, b in lins[:-1]:
                h = torch.relu(F.linear(h, w, b))
            return F.linear(h, *lins[-1])
    return run


def reference_fn(case: Network):
    """benchmarks/reference_baseline.py's materialisation, fp32 as the public code runs it."""
    sys.path.insert(0, str(BENCH))
    try:
        from reference_baseline import ReferenceNeRN, encoding_matrix
    except ImportError:  # not expected: the benchmarks' reference lives there
        ReferenceNeRN = None
    if common.CPU_SMOKE or ReferenceNeRN is None:
        # The smoke case predicts a slice of the plan: time the reference's chunked MLP on it.
        enc = case.enc(case.coords).float()
        pred = copy.deepcopy(case.pred)
        return lambda: torch.cat([pred(c) for c in enc.split(4096)])
    ref = ReferenceNeRN(case.model, copy.deepcopy(case.pred), case.plan, encoding_matrix(case.enc, case.coords),
                        weights_batch_size=4096)
    return ref.materialize




def timings(rec: Recorder, case: Network, rates: dict, budget: float) -> None:
    from nernfast.ops.predict import TABLE_ON_CUDA
    t_ref = None
    over = lambda: time.time() - common.T0 > budget  # noqa: E731

    def row(path, prec, ms, flops, n_launch, note=""):
        med, p20, p80 = ms
        tf = flops / med / 1e9
        r = {"case": case.name, "path": path, "precision": prec, "ms": med, "p20": p20, "p80": p80,
             "tflops": tf, "peak_frac": tf / rates[prec] if rates.get(prec) else None, "launches": n_launch,
             "speedup_vs_reference": (t_ref / med) if t_ref else None, "note": note}
        rec.add("timings", r)
        rec.log(f"  {path:<22} {prec:<5} {med:9.3f} ms [{p20:.3f}, {p80:.3f}]  {tf:7.2f} TFLOP/s"
                + (f"  {100 * r['peak_frac']:5.1f}% peak" if r["peak_frac"] else "")
                + (f"  {r['speedup_vs_reference']:6.1f}x ref" if t_ref else "")
                + (f"  launches {n_launch}" if n_launch is not None else "") + (f"  ({note})" if note else ""))

    if over():
        rec.log(f"  timings of {case.name} skipped: time budget ({budget:.0f}s) used")
        return
    with precision("fp32"):
        fn = reference_fn(case)
        ms = bench(fn, reps_ms=200)
        t_ref = ms[0]
        row("reference", "fp32", ms, case.flops(False), launches(fn), "precomputed encodings, chunks of 4096")
    table = TABLE_ON_CUDA and case.enc.coordinate_blocks
    for prec in TIMED_PRECISIONS:
        if over():
            rec.log(f"  {case.name} {prec}: skipped (time budget)")
            continue
        with precision(prec):
            pred, fwd, fwd_bwd, _ = fused_calls(case, prec)
            from nernfast.kernels.fused_mlp import choose_path
            path = choose_path(case.pred.hidden)
            row(f"fused-fwd ({path})", prec, bench(fwd), case.flops(table), launches(fwd),
                "tables" if table else "direct")
            sub_rows = case.idx.numel()
            fl_bwd = 3 * case.flops(table) * sub_rows / case.n
            row("fused-fwd+bwd 4096", prec, bench(fwd_bwd), fl_bwd, launches(fwd_bwd), "forward saving + backward")
            from nernfast.ops.predict import predict_rows
            tpred = case.predictor(prec)

            def torch_fwd():
                with torch.no_grad():
                    predict_rows(tpred, case.enc, case.coords, backend="torch")
            row("torch", prec, bench(torch_fwd), case.flops(table), launches(torch_fwd))
            fl = floor_fn(case, prec)
            row("floor", prec, bench(fl), case.flops(False), launches(fl), "precomputed encoding, one pass")
    for prec in TIMED_PRECISIONS[:1] if common.CPU_SMOKE else TIMED_PRECISIONS:
        for first, path in alternates(case):
            if over():
                continue
            with precision(prec):
                _, fwd, _, _ = fused_calls(case, prec, first, path)
                row(f"alt-fwd {first}/{path}", prec, bench(fwd), case.flops(first == "table"), launches(fwd))


def autotune_choices() -> dict:
    from nernfast.kernels import fused_mlp as fm
    from nernfast.kernels import linear as lk
    out = {}
    tuners = [(f"fused P={p}", fm._fused_tuned(p)) for p in (16, 32, 64, 128, 256, 512)] + [("linear", lk._tuned())]
    for name, t in tuners:
        for key, cfg in getattr(t, "cache", {}).items():
            out[f"{name} {key}"] = str(cfg)
    return out


def write_table(rec: Recorder) -> None:
    rows = rec.data.get("timings", [])
    rates = rec.data.get("matmul_rate_tflops", {})
    lines = [f"Card: {rec.data.get('env', {}).get('device')}; torch {rec.data.get('env', {}).get('torch')}, "
             f"triton {rec.data.get('env', {}).get('triton')}.",
             "Measured dense matmul rate (torch.matmul 8192^3): "
             + ", ".join(f"{k} {v:.0f} TFLOP/s" for k, v in rates.items()) + ".", "",
             "| case | path | precision | median ms [p20, p80] | TFLOP/s | % of matmul rate | launches | vs reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pf = f"{100 * r['peak_frac']:.1f}" if r.get("peak_frac") else "-"
        sp = f"{r['speedup_vs_reference']:.1f}x" if r.get("speedup_vs_reference") else "-"
        lines.append(f"| {r['case']} | {r['path']} | {r['precision']} | {r['ms']:.3f} [{r['p20']:.3f}, {r['p80']:.3f}] "
                     f"| {r['tflops']:.2f} | {pf} | {r['launches'] if r['launches'] is not None else '-'} | {sp} |")
    targets = rec.data.get("targets")
    if targets:
        lines += ["", "Targets:"] + [f"- {t}" for t in targets]
    (rec.out / "table.md").write_text("\n".join(lines) + "\n")


def evaluate_targets(rec: Recorder) -> list[str]:
    rows = rec.data.get("timings", [])
    get = lambda case, pfx, prec: next((r for r in rows if r["case"] == case and r["path"].startswith(pfx)  # noqa: E731
                                        and r["precision"] == prec), None)
    out = []
    for case, *_ in NETWORKS:
        for prec in TIMED_PRECISIONS:
            f, fl = get(case, "fused-fwd (", prec), get(case, "floor", prec)
            if not f:
                continue
            hidden = int(case.split("-h")[1])
            if case in ("resnet20-h140", "resnet56-h320") and f.get("speedup_vs_reference"):
                s = f["speedup_vs_reference"]
                out.append(f"{case} {prec}: {s:.1f}x the fp32 reference ({'met' if s >= 10 else 'NOT met'}: >= 10x)")
            if fl:
                out.append(f"{case} {prec}: fused {f['ms']:.3f} ms vs floor {fl['ms']:.3f} ms "
                           f"({'met' if f['ms'] < fl['ms'] else 'NOT met'}: faster than the floor)")
            if hidden >= 320 and f.get("peak_frac") is not None:
                out.append(f"{case} {prec}: {100 * f['peak_frac']:.0f}% of the matmul rate "
                           f"({'met' if f['peak_frac'] >= 0.6 else 'NOT met'}: >= 60%)")
    return out

