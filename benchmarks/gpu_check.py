#!/usr/bin/env python3
"""GPU check for nernfast's fused predictor kernels (issue 5): build -> small correctness ->
full-size correctness -> timings, for a machine with a GPU but none of our setup.

    python3 benchmarks/gpu_check.py OUT_DIR              # on the GPU machine, from anywhere
    python3 benchmarks/gpu_check.py OUT_DIR --cpu-smoke  # CI: the same logic on tiny shapes, Triton interpreter

It uses the machine's own python3 and torch (no network): installs the package with
``pip install --no-build-isolation --no-deps -e .`` (NERNFAST_NO_EXT=1 unless --with-ext: the
kernels do not need the C++ extension and its build would eat the budget), re-executes itself so the
editable install is importable, and writes results as it goes: OUT_DIR/log.txt (everything),
OUT_DIR/results.json (every record, rewritten after each) and OUT_DIR/table.md (the summary).
Budget: under 5 minutes. Kernel compilation (every autotuning candidate of every kernel the run
uses) is done first by parallel worker processes (``--_warm``) that run each case once and leave the
binaries in Triton's on-disk cache; ``--budget S`` stops starting new timing items after S seconds.

Correctness (every check: error vs a float64 result for the same parameters, bounded by
2 x the error of the PyTorch reference in the same precision + a floor of one unit in the last place
(fp32: 1e-5)): small shapes over encodings, first-layer forms, paths, widths 64-1536, K 1-7,
num_blocks 3-8 and fp32/tf32/fp16/bf16; then every benchmark case whole (forward) and on a
4096-row subset (backward), in tf32 and bf16.

Timings (``triton.testing.do_bench``, median and 20/80 % quantiles, ms) per case and precision:
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
torch.profiler. The issue's targets are evaluated at the end.
"""
from __future__ import annotations

import os
import sys

CPU_SMOKE = "--cpu-smoke" in sys.argv
if CPU_SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
T0 = time.time()

# name, architecture, classes, hidden, permutation ("none" for ResNet-18: its greedy chains take
# minutes on the CPU and do not change the work)
CASES = [("resnet20-h140", "resnet20", 10, 140, "infilter"), ("resnet56-h320", "resnet56", 10, 320, "infilter"),
         ("resnet56-h680", "resnet56", 10, 680, "infilter"), ("resnet18-h1024", "resnet18", 1000, 1024, "none")]
SMOKE_CASES = [("resnet20-h24-slice", "resnet20", 10, 24, "infilter")]
SMOKE_ROWS = 80       # rows of the smoke case's plan actually used (the interpreter is slow)
GRAD_ROWS = 4096      # rows carrying gradient (paper D.2, CIFAR)
BACKEND = "triton"    # the kernels, also on the smoke run's CPU tensors (interpreter)
TIMED_PRECISIONS = ("tf32", "bf16")
FLOOR = {"fp32": 1e-5, "tf32": 2.0**-10, "fp16": 2.0**-10, "bf16": 2.0**-7}


@dataclass(frozen=True)
class Small:
    enc: str
    first: str
    path: str
    prec: str
    blocks: int
    hidden: int
    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.enc}-{self.first}-{self.path}-{self.prec}-nb{self.blocks}-H{self.hidden}-K{self.k}-n{self.n}"


SMALL = [Small("basic", "table", "fused", "bf16", 5, 140, 3, 1000),
         Small("basic", "table", "fused", "tf32", 5, 320, 3, 1000),
         Small("basic", "direct", "fused", "fp32", 4, 64, 5, 777),
         Small("ffn", "direct", "fused", "fp16", 3, 96, 7, 1000),
         Small("basic", "table", "fused", "fp16", 8, 512, 3, 999),
         Small("basic", "table", "layered", "bf16", 5, 680, 3, 1000),
         Small("basic", "direct", "layered", "tf32", 8, 1536, 1, 333),
         Small("ffn", "direct", "layered", "bf16", 3, 1024, 3, 1000)]
SMOKE_SMALL = [Small("basic", "table", "fused", "fp32", 5, 40, 3, 37),
               Small("ffn", "direct", "layered", "fp16", 3, 32, 5, 21),
               Small("basic", "direct", "fused", "bf16", 4, 32, 3, 19)]


# ---- output ------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def log(self, msg: str) -> None:
        line = f"[{time.time() - T0:6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.out / "log.txt", "a") as f:
            f.write(line + "\n")

    def add(self, section: str, record) -> None:
        self.data.setdefault(section, []).append(record)
        self.flush()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


# ---- build -------------------------------------------------------------------------------------------
def install(rec: Recorder, with_ext: bool) -> bool:
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    if not with_ext:
        env["NERNFAST_NO_EXT"] = "1"
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
    for attempt in ("as asked", "without the C++ extension"):
        rec.log(f"build: {' '.join(cmd)} ({attempt}; NERNFAST_NO_EXT={env.get('NERNFAST_NO_EXT', '0')})")
        t = time.time()
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
            ok, tail = r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            ok, tail = False, "timed out"
        rec.log(f"build: {'ok' if ok else 'FAILED'} in {time.time() - t:.0f}s\n{tail if not ok else ''}")
        rec.set("build", {"ok": ok, "seconds": round(time.time() - t, 1), "ext": env.get("NERNFAST_NO_EXT") != "1"})
        if ok or env.get("NERNFAST_NO_EXT") == "1":
            return ok
        env["NERNFAST_NO_EXT"] = "1"
    return False


# ---- helpers -----------------------------------------------------------------------------------------
def setup_torch():
    global torch, F, triton, do_bench
    import torch
    import torch.nn.functional as F
    import triton
    from triton.testing import do_bench
    return torch


class precision:
    """Context: fp32 matmuls in tf32 (PyTorch and, through predict_rows, the kernels) or not."""
    def __init__(self, prec: str):
        self.mode = "high" if prec == "tf32" else "highest"

    def __enter__(self):
        self.old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.mode)

    def __exit__(self, *a):
        torch.set_float32_matmul_precision(self.old)


def dtype_of(prec: str):
    return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[prec]


def device() -> str:
    return "cpu" if CPU_SMOKE else "cuda"


def sync() -> None:
    if not CPU_SMOKE:
        torch.cuda.synchronize()


def bench(fn, reps_ms: int = 60) -> tuple[float, float, float]:
    """(median, p20, p80) ms."""
    if CPU_SMOKE:
        ts = []
        for _ in range(2):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        return ts[0], ts[0], ts[-1]
    r = do_bench(fn, warmup=10, rep=reps_ms, quantiles=[0.5, 0.2, 0.8])
    return tuple(float(x) for x in r)


def launches(fn) -> int | None:
    """CUDA kernels/memsets/copies issued by one call (torch.profiler), None if unavailable."""
    if CPU_SMOKE:
        return None
    try:
        from torch.profiler import ProfilerActivity, profile
        fn()
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    except Exception:  # profiler/CUPTI missing: the count is optional
        return None


def err_check(name: str, ours, ref, truth, prec: str) -> dict:
    scale = truth.abs().max().item() or 1.0
    e_ours = (ours.double() - truth).abs().max().item()
    e_ref = (ref.double() - truth).abs().max().item()
    tol = 2 * e_ref + FLOOR[prec] * scale
    finite = bool(torch.isfinite(ours).all())
    return {"check": name, "ok": finite and e_ours <= tol, "err": e_ours, "ref_err": e_ref, "tol": tol, "scale": scale}


def f64_rows(pred, x, chunk=65536):
    """float64 predictor output on an fp32 encoding matrix (chunked)."""
    p64 = copy.deepcopy(pred).double()
    with torch.no_grad():
        return torch.cat([p64(c.double()) for c in x.split(chunk)])


# ---- small correctness --------------------------------------------------------------------------------
def make_small(c: Small, seed: int):
    from nernfast.encoding import BasicEncoding, FFNEncoding
    from nernfast.predictor import Predictor
    torch.manual_seed(seed)
    enc = BasicEncoding() if c.enc == "basic" else FFNEncoding(60, seed=seed)
    pred = Predictor(enc.out_features, c.hidden, c.k, c.blocks)
    with torch.no_grad():
        for lin in pred.linears():
            lin.bias.uniform_(-0.5, 0.5)
    coords = torch.stack([torch.randint(0, 7, (c.n,)) / 7, torch.randint(0, 64, (c.n,)) / 64,
                          torch.randint(0, 48, (c.n,)) / 48], 1).float()
    return enc.to(device()), pred.to(device(), dtype_of(c.prec)), coords.to(device())


def run_small(c: Small, seed: int) -> list[dict]:
    from nernfast.ops.predict import predict_rows, predict_rows_reference
    enc, pred, coords = make_small(c, seed)
    g = torch.randn(c.n, c.k ** 2, device=device()).to(dtype_of(c.prec))
    params = list(pred.parameters())
    with precision(c.prec):
        x = enc(coords)
        p64 = copy.deepcopy(pred).double()
        truth = p64(x.double())
        truth_g = torch.autograd.grad(truth, list(p64.parameters()), g.double())
        ref = predict_rows_reference(pred, enc, coords)
        ref_g = torch.autograd.grad(ref, params, g)
        ours = predict_rows(pred, enc, coords, backend="triton", first_layer=c.first, path=c.path)
        ours_g = torch.autograd.grad(ours, params, g)
    out = [err_check(f"{c} forward", ours.detach(), ref.detach(), truth.detach(), c.prec)]
    for (name, _), a, b, t in zip(pred.named_parameters(), ours_g, ref_g, truth_g):
        out.append(err_check(f"{c} grad {name}", a, b, t, c.prec))
    return out


# ---- benchmark cases ----------------------------------------------------------------------------------
class Case:
    def __init__(self, spec, smoke: bool = False):
        from nernfast.models import build_model
        from nernfast.nern import NeRN
        self.name, arch, classes, hidden, perm = spec
        torch.manual_seed(0)
        self.model = build_model(arch, classes)
        self.nern = NeRN.from_model(self.model, hidden=hidden, permutation=perm)
        self.model, self.nern = self.model.to(device()), self.nern.to(device())
        self.plan, self.pred, self.enc = self.nern.plan, self.nern.predictor, self.nern.encoding
        self.coords = self.nern.coords[:SMOKE_ROWS] if smoke else self.nern.coords
        self.n = self.coords.shape[0]
        g = torch.Generator().manual_seed(1)
        self.idx = torch.randperm(self.n, generator=g)[:min(GRAD_ROWS, self.n)].to(device())
        self.kk = self.plan.kernel_size ** 2

    def predictor(self, prec: str):
        return copy.deepcopy(self.pred).to(dtype_of(prec))

    def flops(self, table: bool) -> float:
        """FLOPs executed for all rows: per-row products (without the first layer for tables)."""
        p = self.pred
        per_row = p.flops_per_row() - (2 * p.in_features * p.hidden if table else 0)
        extra = 0
        if table:
            from nernfast.ops.tables import coordinate_index
            extra = 2 * coordinate_index(self.coords).num_entries * p.in_features * p.hidden
        return float(self.n * per_row + extra)


def fused_calls(case: Case, prec: str, first_layer="auto", path="auto"):
    from nernfast.ops.predict import predict_rows
    pred = case.predictor(prec)
    buf = torch.empty(case.n * case.kk, device=device(), dtype=dtype_of(prec))
    out = buf.view(case.n, case.kk)
    sub = case.coords[case.idx]
    g = torch.randn(sub.shape[0], case.kk, device=device(), dtype=dtype_of(prec))
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
    case = Case(spec, smoke)
    with precision(prec):
        _, fwd, fwd_bwd, _ = fused_calls(case, prec)
        fwd()
        fwd_bwd()
        for first, path in alternates(case):
            _, fwd, _, _ = fused_calls(case, prec, first, path)
            fwd()
    sync()


def alternates(case: Case) -> list[tuple[str, str]]:
    if case.pred.hidden <= 512:
        return [("direct", "fused"), ("table", "layered")]
    return [("direct", "layered")]


def matmul_rate(prec: str) -> float:
    """Dense torch.matmul TFLOP/s on this device in ``prec``."""
    n = 256 if CPU_SMOKE else 8192
    a = torch.randn(n, n, device=device()).to(dtype_of(prec))
    b = torch.randn(n, n, device=device()).to(dtype_of(prec))
    with precision(prec):
        ms = bench(lambda: a @ b)[0]
    return 2 * n ** 3 / ms / 1e9


def floor_fn(case: Case, prec: str):
    """The same MLP as one chain of torch matmuls on the precomputed encoding (all rows, one pass)."""
    pred = case.predictor(prec)
    x = case.enc(case.coords).to(dtype_of(prec))
    lins = [(l.weight, l.bias) for l in pred.linears()]

    def run():
        with torch.no_grad():
            h = x
            for w, b in lins[:-1]:
                h = torch.relu(F.linear(h, w, b))
            return F.linear(h, *lins[-1])
    return run


def reference_fn(case: Case):
    """benchmarks/reference_baseline.py's materialisation, fp32 as the public code runs it."""
    sys.path.insert(0, str(BENCH))
    try:
        from reference_baseline import ReferenceNeRN, encoding_matrix
    except ImportError:  # not expected: the benchmarks' reference lives there
        ReferenceNeRN = None
    if CPU_SMOKE or ReferenceNeRN is None:
        # The smoke case predicts a slice of the plan: time the reference's chunked MLP on it.
        enc = case.enc(case.coords).float()
        pred = copy.deepcopy(case.pred)
        return lambda: torch.cat([pred(c) for c in enc.split(4096)])
    ref = ReferenceNeRN(case.model, copy.deepcopy(case.pred), case.plan, encoding_matrix(case.enc, case.coords),
                        weights_batch_size=4096)
    return ref.materialize


# ---- main run -----------------------------------------------------------------------------------------
def full_size_checks(rec: Recorder, case: Case, prec: str) -> None:
    from nernfast.ops.predict import predict_rows, predict_rows_reference
    pred = case.predictor(prec)
    with precision(prec), torch.no_grad():
        x = case.enc(case.coords)
        truth = f64_rows(pred, x)
        ref = predict_rows_reference(pred, case.enc, case.coords, chunk=65536)
        ours = predict_rows(pred, case.enc, case.coords, backend=BACKEND)
    r = err_check(f"{case.name} {prec} whole-network forward", ours, ref, truth, prec)
    rec.add("full_correctness", r)
    rec.log(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']}: err {r['err']:.3g} (reference {r['ref_err']:.3g}, tol {r['tol']:.3g})")
    del truth, ref, ours
    sub = case.coords[case.idx]
    g = torch.randn(sub.shape[0], case.kk, device=device()).to(dtype_of(prec))
    params = list(pred.parameters())
    with precision(prec):
        xs = case.enc(sub)
        p64 = copy.deepcopy(pred).double()
        truth_g = torch.autograd.grad(p64(xs.double()), list(p64.parameters()), g.double())
        ref_g = torch.autograd.grad(predict_rows_reference(pred, case.enc, sub), params, g)
        ours_g = torch.autograd.grad(predict_rows(pred, case.enc, sub, backend=BACKEND), params, g)
    worst = None
    for (name, _), a, b, t in zip(pred.named_parameters(), ours_g, ref_g, truth_g):
        r = err_check(f"{case.name} {prec} grad {name} ({sub.shape[0]} rows)", a, b, t, prec)
        rec.add("full_correctness", r)
        if worst is None or not r["ok"] or r["err"] / r["tol"] > worst["err"] / worst["tol"]:
            worst = r if (worst is None or worst["ok"]) else worst
    rec.log(f"  {'ok  ' if worst['ok'] else 'FAIL'} {case.name} {prec} backward, worst: {worst['check']} "
            f"err {worst['err']:.3g} (tol {worst['tol']:.3g})")


def timings(rec: Recorder, case: Case, rates: dict, budget: float) -> None:
    from nernfast.ops.predict import TABLE_ON_CUDA
    t_ref = None
    over = lambda: time.time() - T0 > budget  # noqa: E731

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
    table = TABLE_ON_CUDA and case.enc.__class__.__name__ == "BasicEncoding"
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
    for prec in TIMED_PRECISIONS[:1] if CPU_SMOKE else TIMED_PRECISIONS:
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
    for case, *_ in CASES:
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


def ensure_importable(rec: Recorder):
    """nernfast from the install, or (no pip / failed build) straight from the source tree."""
    try:
        import nernfast.kernels.fused_mlp  # noqa: F401
    except ImportError:
        rec.log("nernfast not installed: importing it from the source tree (kernels/ as nernfast.kernels)")
        sys.path.insert(0, str(REPO))
        import importlib
        import kernels
        sys.modules["nernfast.kernels"] = kernels
        for m in ("encoding", "linear", "fused_mlp"):
            sys.modules[f"nernfast.kernels.{m}"] = importlib.import_module(f"kernels.{m}")
    import nernfast
    return nernfast


def wait_worker(rec: Recorder, job: str, w, timeout: float) -> None:
    try:
        outp, _ = w.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        w.kill()
        rec.log(f"warm worker {job} still compiling after {timeout:.0f}s: killed (the main run compiles the rest)")
        return
    if w.returncode:
        rec.log(f"warm worker {job} failed (rc {w.returncode}):\n{outp[-3000:]}")


def cpu_tables(out: Path, rounds: int) -> int:
    """--cpu-tables: does the first-layer table shortcut pay on this CPU? ResNet-56 / H320, whole
    network, no grad: ``predict_rows`` (PyTorch path, tables) vs ``predict_rows_reference``, fp32 and
    bf16 weights, interleaved rounds (paired ratios are robust to load drifting on a shared machine)."""
    from nernfast.ops.predict import predict_rows, predict_rows_reference
    rec = Recorder(out)
    load0 = os.getloadavg()
    case = Case(("resnet56-h320", "resnet56", 10, 320, "infilter"))
    rec.log(f"cpu-tables: {case.n} rows, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} CPUs, load average {load0}")
    results = {}
    for prec in ("fp32", "bf16"):
        pred = case.predictor(prec)
        fns = {"reference": lambda: predict_rows_reference(pred, case.enc, case.coords),
               "tables": lambda: predict_rows(pred, case.enc, case.coords, first_layer="table", backend="torch"),
               "direct": lambda: predict_rows(pred, case.enc, case.coords, first_layer="direct", backend="torch")}
        times = {k: [] for k in fns}
        with torch.no_grad():
            for f in fns.values():
                f()
            for _ in range(rounds):
                for k, f in fns.items():
                    t = time.perf_counter()
                    f()
                    times[k].append((time.perf_counter() - t) * 1e3)
        med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        ratio = med([r / t for r, t in zip(times["reference"], times["tables"])])
        results[prec] = {k: {"median_ms": med(v), "min_ms": min(v), "all_ms": v} for k, v in times.items()}
        results[prec]["paired_speedup_tables_vs_reference"] = ratio
        rec.log(f"  {prec}: reference {med(times['reference']):.0f} ms (min {min(times['reference']):.0f}), "
                f"tables {med(times['tables']):.0f} ms (min {min(times['tables']):.0f}), direct (=reference "
                f"through the dispatcher) {med(times['direct']):.0f} ms; paired speed-up of tables {ratio:.2f}x")
    results["load_average_start_end"] = [load0, os.getloadavg()]
    rec.set("cpu_tables", results)
    return 0


def sm90_report(out: Path) -> int:
    """--sm90-report: without a GPU, compile every autotuning candidate of the fused kernel (and the
    per-layer GEMM) for sm_90 and report registers, local-memory spills (STACK) and shared memory,
    from ptxas/cuobjdump as bundled with Triton. Uses Triton internals (a stand-in driver giving the
    target); a development aid, not part of the GPU run."""
    import tempfile
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver as drv

    class Target:  # the only driver calls a warm-up compile makes
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
    drv.set_active(Target())
    from nernfast.kernels import fused_mlp as fm
    from nernfast.kernels import linear as lk
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rec = Recorder(out)

    # Part 1: every launcher path (forward and backward, all forms, paths and dtypes) compiles; the
    # launches themselves are no-ops (no GPU), autotuning off (its first config compiles).
    import triton.compiler.compiler as tcc
    from nernfast.encoding import BasicEncoding, FFNEncoding
    from nernfast.ops.predict import predict_rows
    from nernfast.predictor import Predictor
    run, meta = tcc.CompiledKernel.run, tcc.CompiledKernel.launch_metadata
    tcc.CompiledKernel.run = property(lambda self: (lambda *a, **k: None))
    tcc.CompiledKernel.launch_metadata = lambda self, *a: None
    split_k, lk.AUTOTUNE = fm._split_k, False
    fm._split_k = lambda m, n, k, d: 4
    for enc_name, first in (("basic", "table"), ("basic", "direct"), ("ffn", "direct")):
        for hidden, path in ((140, "fused"), (680, "layered")):
            for prec in ("bf16", "fp32", "fp16"):
                for blocks in (3, 4):
                    enc = BasicEncoding() if enc_name == "basic" else FFNEncoding(120)
                    pred = Predictor(enc.out_features, hidden, 3, blocks).to(dtype_of(prec))
                    coords = torch.rand(300, 3)
                    name = f"{enc_name}/{first}/{path}/H{hidden}/{prec}/nb{blocks}"
                    try:
                        with torch.no_grad():
                            predict_rows(pred, enc, coords, backend="triton", first_layer=first, path=path)
                        predict_rows(pred, enc, coords, backend="triton", first_layer=first, path=path).float().sum().backward()
                        rec.add("sm90_compile", {"variant": name, "ok": True})
                        rec.log(f"  compiles: {name} (forward, forward saving, backward)")
                    except Exception as e:
                        rec.add("sm90_compile", {"variant": name, "ok": False, "error": repr(e)[:2000]})
                        rec.log(f"  FAILS: {name}: {e!r}"[:2000])
    tcc.CompiledKernel.run, tcc.CompiledKernel.launch_metadata = run, meta
    fm._split_k, lk.AUTOTUNE = split_k, True

    # Part 2: registers / spills / shared memory of every autotuning candidate.

    def usage(k) -> str:
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        r = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        line = next((x for x in r.splitlines() if "REG:" in x), "")
        return " ".join(w for w in line.split() if w.split(":")[0] in ("REG", "STACK"))

    n, nmid, kk = 94256, 3, 9
    for prec in ("bf16", "tf32"):
        dt = dtype_of(prec)
        for hidden in (140, 320):
            for mode in (fm.ENC_TABLE, fm.ENC_BASIC):
                wf = torch.zeros(kk, hidden, dtype=dt)
                first = torch.zeros(185, hidden) if mode == fm.ENC_TABLE else torch.zeros(hidden, 240, dtype=dt)
                spec = fm.make_spec(mode, 40, first, wf, nmid, "tf32" if prec == "tf32" else "ieee", "fused")
                mids = [(torch.zeros(hidden, hidden, dtype=dt), torch.zeros(hidden, dtype=dt))] * nmid
                pk = fm.pack_weights(spec, None if mode == fm.ENC_TABLE else first,
                                     None if mode == fm.ENC_TABLE else torch.zeros(hidden, dtype=dt), mids, wf,
                                     torch.zeros(kk, dtype=dt))
                tab = fm.pad_table(first, spec) if mode == fm.ENC_TABLE else pk.first
                x = torch.zeros(n, 3, dtype=torch.int32 if mode == fm.ENC_TABLE else torch.float32)
                o = torch.zeros(n, kk, dtype=dt)
                args = (x, tab, pk.b0 if pk.b0 is not None else tab, pk.wm, pk.bm, pk.wf, pk.bf, torch.zeros(40), o, o,
                        n, hidden, spec.in_features, kk, nmid, 40)
                flags = dict(MODE=mode, SAVE=False, ODD=True, DT=spec.dt, DOT_PREC=spec.dot_precision, HP=spec.width,
                             FP=spec.in_padded, KP=spec.out_padded)
                for c in fm._fused_configs(spec.width):
                    t = time.time()
                    try:
                        k = fm._fused_mlp_fwd_kernel.warmup(*args, grid=(1,), num_warps=c.num_warps,
                                                            num_stages=c.num_stages, **flags, **c.kwargs)
                        r = {"kernel": "fused", "prec": prec, "hidden": hidden, "mode": "table" if mode == 2 else "direct",
                             "config": f"{c.kwargs} w{c.num_warps} s{c.num_stages}", "smem_kb": k.metadata.shared // 1024,
                             "usage": usage(k), "compile_s": round(time.time() - t, 1)}
                    except Exception as e:
                        r = {"kernel": "fused", "prec": prec, "hidden": hidden, "config": str(c), "error": repr(e)[:300]}
                    rec.add("sm90_report", r)
                    rec.log(f"  {r}")
        p_, m_ = 688, n
        a = torch.zeros(m_, p_, dtype=dt)
        w = torch.zeros(p_, p_, dtype=dt)
        for c in lk._configs():
            try:
                k = lk._linear_kernel.warmup(a, w.t(), a, w[0], a, x, torch.zeros(40), m_, p_, p_, 40, 0, p_,
                                             *a.stride(), *w.t().stride(), *a.stride(), 0, 0, 0, grid=(1,),
                                             num_warps=c.num_warps, num_stages=c.num_stages, A_ENC=False, B_ENC=False,
                                             ENC_MODE=0, HAS_BIAS=True, RELU=True, HAS_MASK=False, DT=lk.triton_dtype(dt),
                                             DOT_PREC="tf32" if prec == "tf32" else "ieee", **c.kwargs)
                r = {"kernel": "linear bias+relu", "prec": prec, "hidden": 680, "config": f"{c.kwargs} w{c.num_warps} "
                     f"s{c.num_stages}", "smem_kb": k.metadata.shared // 1024, "usage": usage(k)}
            except Exception as e:
                r = {"kernel": "linear", "prec": prec, "config": str(c), "error": repr(e)[:300]}
            rec.add("sm90_report", r)
            rec.log(f"  {r}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 (CI)")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--with-ext", action="store_true", help="build the C++ extension too (slower)")
    ap.add_argument("--no-warm", action="store_true", help="compile in the main process (no worker pool)")
    ap.add_argument("--budget", type=float, default=270.0, help="no new timing items after this many seconds")
    ap.add_argument("--cases", default="", help="comma-separated subset of the case names")
    ap.add_argument("--cpu-tables", type=int, default=0, metavar="ROUNDS",
                    help="only measure the CPU table shortcut (ResNet-56/H320, fp32 and bf16), ROUNDS rounds")
    ap.add_argument("--sm90-report", action="store_true",
                    help="no GPU needed: compile every config for sm_90, report registers/spills/shared memory")
    ap.add_argument("--_warm", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out = Path(args.out_dir).resolve()
    global T0
    T0 = float(os.environ.get("NERNFAST_GPU_CHECK_T0", T0))

    if args._warm is not None:  # worker: compile by running, then exit
        setup_torch()
        kind, _, arg = args._warm.partition(":")
        if kind == "small":
            for i in map(int, arg.split(",")):
                run_small(SMALL[i], 0)
        else:
            name, prec = arg.split("/")
            warm_case(next(c for c in CASES if c[0] == name), prec, False)
        return 0

    if args.sm90_report:
        setup_torch()
        return sm90_report(out)
    if args.cpu_tables:
        setup_torch()
        global CPU_SMOKE
        CPU_SMOKE = True  # CPU tensors, CPU timers
        return cpu_tables(out, args.cpu_tables)

    rec = Recorder(out)
    rec.log(f"gpu_check start: {' '.join(sys.argv)} (repo {REPO})")
    if not (args.skip_install or CPU_SMOKE):
        ok = install(rec, args.with_ext)
        if not ok:
            rec.log("build failed: continuing from the source tree")
        # The editable install's import hook is read at interpreter start-up: run again.
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--skip-install"]
        os.environ["NERNFAST_GPU_CHECK_T0"] = str(T0)
        os.execv(sys.executable, argv)

    setup_torch()
    nernfast = ensure_importable(rec)
    from nernfast.kernels import fused_mlp as fm
    if not CPU_SMOKE and not torch.cuda.is_available():
        rec.log("no CUDA device visible to torch: use --cpu-smoke on machines without a GPU")
        return 2
    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "device": "cpu (Triton interpreter)" if CPU_SMOKE else torch.cuda.get_device_name(),
           "cuda": torch.version.cuda, "interpreter": fm.INTERPRET, "cpu_smoke": CPU_SMOKE,
           "fused_max_hidden": fm.FUSED_MAX_HIDDEN, "nernfast": str(Path(nernfast.__file__).parent)}
    rec.set("env", env)
    rec.log(f"env: {env}")
    cases = SMOKE_CASES if CPU_SMOKE else [c for c in CASES if not args.cases or c[0] in args.cases.split(",")]
    small = SMOKE_SMALL if CPU_SMOKE else SMALL

    workers = []
    if not (CPU_SMOKE or args.no_warm):
        jobs = [f"small:{','.join(str(i) for i in range(len(SMALL)) if i % 3 == j)}" for j in range(3)]
        jobs += [f"case:{c[0]}/{p}" for c in cases for p in TIMED_PRECISIONS]
        for j in jobs:
            workers.append((j, subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(out), "--_warm", j],
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        rec.log(f"compiling in {len(workers)} worker processes: {jobs}")

    failures = 0
    try:
        # Small correctness needs the small-case workers only.
        for j, w in workers[:3]:
            wait_worker(rec, j, w, 200)
        rec.log("== small correctness")
        for i, c in enumerate(small):
            try:
                res = run_small(c, 1000 + i)
            except Exception:
                res = [{"check": str(c), "ok": False, "error": traceback.format_exc()[-2000:]}]
            for r in res:
                rec.add("small_correctness", r)
            bad = [r for r in res if not r["ok"]]
            failures += len(bad)
            worst = max(res, key=lambda r: r.get("err", 1) / r.get("tol", 1))
            rec.log(f"  {'ok  ' if not bad else 'FAIL'} {c}: {len(res)} checks, worst {worst['check']} "
                    f"err {worst.get('err', float('nan')):.3g} tol {worst.get('tol', float('nan')):.3g}"
                    + (f"\n{bad[0].get('error', bad[0])}" if bad else ""))

        rec.log("== building the benchmark cases")
        built = {}
        for spec in cases:
            t = time.time()
            built[spec[0]] = Case(spec, CPU_SMOKE)
            rec.log(f"  {spec[0]}: {built[spec[0]].n} rows, {built[spec[0]].pred.num_parameters()} predictor "
                    f"parameters ({time.time() - t:.1f}s)")
        for j, w in workers[3:]:
            wait_worker(rec, j, w, max(10.0, 200 - (time.time() - T0)))
        if workers:
            rec.log("compile workers done")

        rec.log("== full-size correctness")
        for name, case in built.items():
            for prec in TIMED_PRECISIONS:
                try:
                    full_size_checks(rec, case, prec)
                except Exception:
                    failures += 1
                    rec.log(f"  FAIL {name} {prec}: {traceback.format_exc()[-2000:]}")
        failures += sum(1 for r in rec.data.get("full_correctness", []) if not r["ok"])

        rec.log("== timings")
        rates = {p: matmul_rate(p) for p in TIMED_PRECISIONS + ("fp32",)}
        rec.set("matmul_rate_tflops", rates)
        rec.log(f"  dense matmul rate: {', '.join(f'{k} {v:.1f} TFLOP/s' for k, v in rates.items())}")
        for name, case in built.items():
            rec.log(f"-- {name} ({case.n} rows, H{case.pred.hidden})")
            try:
                timings(rec, case, rates, args.budget)
            except Exception:
                failures += 1
                rec.log(f"  timing error: {traceback.format_exc()[-2000:]}")
            write_table(rec)
        rec.set("autotune", autotune_choices())
        rec.set("targets", evaluate_targets(rec))
        write_table(rec)
        for t in rec.data["targets"]:
            rec.log(f"target: {t}")
    finally:
        for _, w in workers:
            if w.poll() is None:
                w.kill()
    rec.set("failures", failures)
    rec.log(f"done in {time.time() - T0:.0f}s: {failures} failed checks; results in {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
