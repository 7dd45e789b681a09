"""pytest-benchmark set-up for the throughput suite (see benchmarks/run_bench.py and RESULTS.md).

Options (all optional; ``make bench`` uses the defaults):
  --bench-shapes   comma-separated shapes (default: cases.DEFAULT_SHAPES; resnet20-h16 is the smoke shape)
  --bench-kinds    comma-separated step kinds (default: all of cases.STEP_KINDS)
  --bench-rounds   timed rounds per case (default: per shape, ROUNDS below)
  --bench-batch    image batch (default 128)
  --bench-device   cpu (default) or cuda / cuda:N
  --bench-threads  torch CPU threads (default: torch's default, one per core). On a CPU shared with
                   other busy processes, 2 OpenMP threads spend most of their time waiting for each
                   other (a ResNet-20 step took 0.3-8 s instead of 0.06 s at load 11 on 2 cores); 1
                   thread keeps the timings stable there.
  --bench-memory / --no-bench-memory   one extra profiled round per case for its peak memory (default on)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases  # noqa: E402

# Timed rounds per case (after one warm-up round). Chosen so `make bench` stays under 10 minutes
# on the 2-core CI machine (ResNet-56 steps take 1-5 s each); the table flags medians of < 5 rounds.
ROUNDS = {"resnet20-h16": 1, "resnet20-h140": 5, "resnet56-h320": 3, "resnet56-h680": 2}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("nernfast benchmarks")
    g.addoption("--bench-shapes", default=",".join(cases.DEFAULT_SHAPES), help="comma-separated shapes")
    g.addoption("--bench-kinds", default=",".join(cases.STEP_KINDS), help="comma-separated step kinds")
    g.addoption("--bench-rounds", type=int, default=None, help="timed rounds per case (default: per shape)")
    g.addoption("--bench-batch", type=int, default=cases.BATCH, help="image batch")
    g.addoption("--bench-device", default="cpu", help="cpu or cuda[:N]")
    g.addoption("--bench-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g.addoption("--bench-memory", action=argparse.BooleanOptionalAction, default=True,
                help="measure each case's peak memory in one extra profiled round")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nernfast_bench(kind, shape): a case of the nernfast throughput suite")
    threads = config.getoption("bench_threads", None)
    if threads:
        import torch
        torch.set_num_threads(threads)


def _csv(config: pytest.Config, name: str, valid) -> list[str]:
    items = [s for s in config.getoption(name).split(",") if s]
    bad = [s for s in items if s not in valid]
    if bad:
        raise pytest.UsageError(f"--{name.replace('_', '-')}: unknown {bad}; choose from {list(valid)}")
    return items


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the cases selected by --bench-shapes / --bench-kinds (other files' tests untouched)."""
    shapes = set(_csv(config, "bench_shapes", cases.SHAPES))
    kinds = set(_csv(config, "bench_kinds", cases.STEP_KINDS)) | {"materialize"}
    keep, drop = [], []
    for it in items:
        m = it.get_closest_marker("nernfast_bench")
        ok = m is None or (m.kwargs["shape"] in shapes and m.kwargs["kind"] in kinds)
        (keep if ok else drop).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class _Setups:
    """One shape's Setup at a time (ResNet-56 set-ups hold a few hundred MB)."""

    def __init__(self, batch: int, device: str):
        self.batch, self.device, self.key, self.setup = batch, device, None, None

    def get(self, shape: str) -> cases.Setup:
        if self.key != shape:
            self.setup = None
            self.setup, self.key = cases.Setup(shape, batch=self.batch, device=self.device), shape
        return self.setup


@pytest.fixture(scope="session")
def setups(request: pytest.FixtureRequest) -> _Setups:
    device = request.config.getoption("bench_device")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            pytest.exit("--bench-device cuda: no CUDA device here", returncode=2)
    return _Setups(request.config.getoption("bench_batch"), device)


@pytest.fixture
def run_case(request: pytest.FixtureRequest, benchmark):
    """``run_case(group, variant, shape, fn)``: one warm-up round ``fn(0)`` -- profiled for the case's
    peak memory unless --no-bench-memory -- then the timed rounds ``fn(1)``, ``fn(2)``, ... (the round
    index picks the rows carrying gradient: the same sequence for every variant)."""
    cfg = request.config

    def run(group: str, variant: str, shape: str, fn) -> None:
        rounds = cfg.getoption("bench_rounds") or ROUNDS[shape]
        device = cfg.getoption("bench_device")
        benchmark.group = group
        benchmark.extra_info.update(case=group, variant=variant, shape=shape, device=device,
                                    batch=cfg.getoption("bench_batch"))
        if cfg.getoption("bench_memory"):
            # The warm-up step's peak: it also holds one-time allocations (optimiser state, cached
            # tables), which are small next to the activations of a batch-128 step.
            benchmark.extra_info["peak_mb"] = round(cases.peak_memory_mb(lambda: fn(0), device), 2)
        else:
            fn(0)
        counter = iter(range(1, 10**6))
        benchmark.pedantic(fn, setup=lambda: ((next(counter),), {}), rounds=rounds, warmup_rounds=0,
                           iterations=1)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        data = sorted(getattr(stats, "data", []) or [])
        if data:  # the 20/80 quantiles (pytest-benchmark reports quartiles)
            benchmark.extra_info.update(q20=_quantile(data, 0.2), q80=_quantile(data, 0.8),
                                        median=_quantile(data, 0.5), rounds=len(data))
    return run


def _quantile(sorted_data: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted data."""
    if len(sorted_data) == 1:
        return sorted_data[0]
    pos = q * (len(sorted_data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_data) - 1)
    return sorted_data[lo] + (sorted_data[hi] - sorted_data[lo]) * (pos - lo)
