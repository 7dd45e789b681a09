"""The GPU check's command line and the order of a run: install -> small correctness -> whole-network
correctness -> timings (kernel compilation first, by parallel worker processes)."""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import common
from .common import REPO, SCRIPT, TIMED_PRECISIONS, Recorder
from .install import ensure_importable, install, reexec_installed


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="gpu_check.py", description="GPU check for nernfast's fused predictor kernels")
    ap.add_argument("out_dir")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 (CI)")
    ap.add_argument("--skip-install", action="store_true")
    ap.add_argument("--with-ext", action="store_true", help="build the C++ extension too (slower)")
    ap.add_argument("--no-warm", action="store_true", help="compile in the main process (no worker pool)")
    ap.add_argument("--budget", type=float, default=270.0, help="no new timing items after this many seconds")
    ap.add_argument("--cases", default="", help="comma-separated subset of the network names")
    ap.add_argument("--cpu-tables", type=int, default=0, metavar="ROUNDS",
                    help="only measure the CPU table shortcut (ResNet-56/H320, fp32 and bf16), ROUNDS rounds")
    ap.add_argument("--sm90-report", action="store_true",
                    help="no GPU needed: compile every config for sm_90, report registers/spills/shared memory")
    ap.add_argument("--_warm", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def warm_worker(job: str) -> int:
    """--_warm JOB: compile by running (small cases or one network in one precision), then exit."""
    ensure_importable()
    from .correctness import SMALL, run_small
    from .networks import find
    from .timing import warm_case
    kind, _, arg = job.partition(":")
    if kind == "small":
        for i in map(int, arg.split(",")):
            run_small(SMALL[i], 0)
    else:
        name, prec = arg.split("/")
        warm_case(find(name), prec, False)
    return 0


def start_workers(rec: Recorder, out: Path, n_small: int, nets: list) -> list:
    jobs = [f"small:{','.join(str(i) for i in range(n_small) if i % 3 == j)}" for j in range(3)]
    jobs += [f"case:{c[0]}/{p}" for c in nets for p in TIMED_PRECISIONS]
    workers = [(j, subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--_warm", j],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)) for j in jobs]
    rec.log(f"compiling in {len(workers)} worker processes: {jobs}")
    return workers


def wait_worker(rec: Recorder, job: str, w, timeout: float) -> None:
    try:
        outp, _ = w.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        w.kill()
        rec.log(f"warm worker {job} still compiling after {timeout:.0f}s: killed (the main run compiles the rest)")
        return
    if w.returncode:
        rec.log(f"warm worker {job} failed (rc {w.returncode}):\n{outp[-3000:]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out_dir).resolve()
    if args._warm is not None:
        return warm_worker(args._warm)
    if args.sm90_report:
        ensure_importable()
        from .sm90 import sm90_report
        return sm90_report(out)
    if args.cpu_tables:
        common.CPU_SMOKE = True  # CPU tensors, CPU timers
        ensure_importable()
        from .cpu_tables import cpu_tables
        return cpu_tables(out, args.cpu_tables)

    rec = Recorder(out)
    rec.log(f"gpu_check start: {' '.join(sys.argv)} (repo {REPO})")
    if not (args.skip_install or common.CPU_SMOKE):
        if not install(rec, args.with_ext):
            rec.log("build failed: continuing from the source tree")
        reexec_installed()

    nernfast = ensure_importable(rec)
    import torch
    import triton
    from nernfast.kernels import fused_mlp as fm
    from .correctness import SMALL, SMOKE_SMALL, full_size_checks, small_correctness
    from .networks import Network, chosen
    from .timing import autotune_choices, evaluate_targets, matmul_rate, timings, write_table
    smoke = common.CPU_SMOKE
    if not smoke and not torch.cuda.is_available():
        rec.log("no CUDA device visible to torch: use --cpu-smoke on machines without a GPU")
        return 2
    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "device": "cpu (Triton interpreter)" if smoke else torch.cuda.get_device_name(),
           "cuda": torch.version.cuda, "interpreter": fm.INTERPRET, "cpu_smoke": smoke,
           "fused_max_hidden": fm.FUSED_MAX_HIDDEN, "nernfast": str(Path(nernfast.__file__).parent)}
    rec.set("env", env)
    rec.log(f"env: {env}")
    nets = chosen(args.cases)
    small = SMOKE_SMALL if smoke else SMALL
    workers = [] if smoke or args.no_warm else start_workers(rec, out, len(SMALL), nets)

    failures = 0
    try:
        for j, w in workers[:3]:  # small correctness needs the small-case workers only
            wait_worker(rec, j, w, 200)
        rec.log("== small correctness")
        failures += small_correctness(rec, small)

        rec.log("== building the benchmark networks")
        built = {}
        for spec in nets:
            t = time.time()
            built[spec[0]] = Network(spec, smoke)
            rec.log(f"  {spec[0]}: {built[spec[0]].n} rows, {built[spec[0]].pred.num_parameters()} predictor "
                    f"parameters ({time.time() - t:.1f}s)")
        for j, w in workers[3:]:
            wait_worker(rec, j, w, max(10.0, 200 - (time.time() - common.T0)))
        if workers:
            rec.log("compile workers done")

        rec.log("== full-size correctness")
        for name, net in built.items():
            for prec in TIMED_PRECISIONS:
                try:
                    full_size_checks(rec, net, prec)
                except Exception:
                    failures += 1
                    rec.log(f"  FAIL {name} {prec}: {traceback.format_exc()[-2000:]}")
        failures += sum(1 for r in rec.data.get("full_correctness", []) if not r["ok"])

        rec.log("== timings")
        rates = {p: matmul_rate(p) for p in TIMED_PRECISIONS + ("fp32",)}
        rec.set("matmul_rate_tflops", rates)
        rec.log(f"  dense matmul rate: {', '.join(f'{k} {v:.1f} TFLOP/s' for k, v in rates.items())}")
        for name, net in built.items():
            rec.log(f"-- {name} ({net.n} rows, H{net.pred.hidden})")
            try:
                timings(rec, net, rates, args.budget)
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
    rec.log(f"done in {time.time() - common.T0:.0f}s: {failures} failed checks; results in {out}")
    return 1 if failures else 0
