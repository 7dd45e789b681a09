"""Decode time: ``nernfast.load`` of a compact artefact vs the fp32 artefact it came from, one thread.

    python benchmarks/decode_time.py FP32.safetensors COMPACT.safetensors [--repeats 7]

Alternates the two files (so load drifts hit both alike), one warm-up each, and prints the median
and 20/80 % quantiles of the wall time, their ratio, and the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import nernfast


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("fp32")
    p.add_argument("compact")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {a.fp32: [], a.compact: []}
    for f in times:
        nernfast.load(f)  # warm-up: imports, permutation-free caches, allocator
    for _ in range(a.repeats):
        for f in times:
            t0 = time.perf_counter()
            nernfast.load(f)
            times[f].append(time.perf_counter() - t0)
    for f, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        print(f"{f}: {os.path.getsize(f):,} bytes, load median {1000 * statistics.median(ts):.1f} ms "
              f"(20/80 %: {1000 * q[0]:.1f}/{1000 * q[-1]:.1f} ms)")
    ratio = statistics.median(times[a.compact]) / statistics.median(times[a.fp32])
    print(f"compact / fp32 decode time: {ratio:.2f}x; load average {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after (1 thread)")


if __name__ == "__main__":
    main()
