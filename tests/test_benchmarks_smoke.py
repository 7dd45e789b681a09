"""The throughput suite in reduced form, so it cannot rot: every case and variant of
benchmarks/bench_*.py (via benchmarks/run_bench.py, in a subprocess) on the smoke shape
(ResNet-20 with a 16-wide predictor), an image batch of 4, one thread and one timed round each,
without the profiled memory round; then the results file's schema. The memory probe is checked on its own.
Timings are never asserted on.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def test_suite_runs_and_writes_results(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(BENCH / "run_bench.py"), "--shapes", "resnet20-h16", "--rounds", "1", "--batch", "4",
           "--threads", "1", "--no-memory", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"run_bench failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    res = json.loads(out.read_text())
    assert {"machine", "torch", "device", "results", "variants", "targets"} <= res.keys()
    assert res["device"] == "cpu" and res["torch"] == torch.__version__

    sys.path.insert(0, str(BENCH))
    import cases
    want = {("materialize/resnet20-h16", v) for v in cases.MATERIALIZE_VARIANTS}
    want |= {(f"step-{k}/resnet20-h16", v) for k in cases.STEP_KINDS for v in cases.step_variants(k, "resnet20-h16")}
    assert ("step-joint/resnet20-h16", "fast-bf16-cl") in want
    got = {(v["case"], v["variant"]) for v in res["variants"]}
    assert got == want, f"missing {sorted(want - got)}, unexpected {sorted(got - want)}"
    for v in res["variants"]:
        assert v["rounds"] == 1 and v["median_ms"] > 0 and v["q20_ms"] <= v["median_ms"] <= v["q80_ms"]

    keys = {"name", "baseline", "candidate", "baseline_ms", "candidate_ms", "speedup"}
    names = {(r["name"], r["baseline"], r["candidate"]) for r in res["results"]}
    assert ("materialize/resnet20-h16", "reference", "fast") in names
    for kind in cases.STEP_KINDS:
        assert (f"step-{kind}/resnet20-h16", "reference", "fast") in names
        assert (f"step-{kind}/resnet20-h16", "reference", "reference-frozen") in names
    for r in res["results"]:
        assert keys <= r.keys()
        assert abs(r["speedup"] - r["baseline_ms"] / r["candidate_ms"]) <= 1e-2 * r["speedup"]
    assert "vs ref" in proc.stdout and "step-joint/resnet20-h16" in proc.stdout  # the printed table


def test_peak_memory_probe():
    sys.path.insert(0, str(BENCH))
    import cases

    def work():
        a = torch.ones(4, 2**20)  # 16 MiB
        b = a * 2                 # +16 MiB at the peak
        del a
        return b.sum()
    peak = cases.peak_memory_mb(work)
    assert 31.5 <= peak <= 33.0, peak
