"""--cpu-tables: does the first-layer table shortcut pay on this CPU (the measurement behind
``nernfast.ops.predict.TABLE_ON_CPU``)?"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from .common import Recorder
from .networks import Network, find


def cpu_tables(out: Path, rounds: int) -> int:
    """--cpu-tables: does the first-layer table shortcut pay on this CPU? ResNet-56 / H320, whole
    network, no grad: ``predict_rows`` (PyTorch path, tables) vs ``predict_rows_reference``, fp32 and
    bf16 weights, interleaved rounds (paired ratios are robust to load drifting on a shared machine)."""
    from nernfast.ops.predict import predict_rows, predict_rows_reference
    rec = Recorder(out)
    load0 = os.getloadavg()
    case = Network(find("resnet56-h320"))
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

