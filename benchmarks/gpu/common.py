"""What every part of the GPU check shares: paths, the run's clock, the CPU-smoke switch, the
recorder (log.txt, results.json, written as the run goes) and device/timer helpers."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
# The run's clock survives the re-exec after the install (main passes it on).
T0 = float(os.environ.get("NERNFAST_GPU_CHECK_T0", time.time()))
# Tiny shapes on CPU tensors under the Triton interpreter; --cpu-tables sets it too (CPU tensors and
# timers). Read it as ``common.CPU_SMOKE`` (it can change after import).
CPU_SMOKE = "--cpu-smoke" in sys.argv
BACKEND = "triton"    # the kernels, also on the smoke run's CPU tensors (interpreter)
TIMED_PRECISIONS = ("tf32", "bf16")


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
    from triton.testing import do_bench
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
