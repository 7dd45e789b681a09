#!/usr/bin/env python3
"""GPU check for nernfast's fused predictor kernels (issue 5): build -> small correctness ->
full-size correctness -> timings, for a machine with a GPU but none of our setup.

    python3 benchmarks/gpu_check.py OUT_DIR                  # on the GPU machine, from anywhere
    python3 benchmarks/gpu_check.py OUT_DIR --cpu-smoke      # CI: the same logic on tiny shapes, Triton interpreter
    python3 benchmarks/gpu_check.py OUT_DIR --sm90-report    # no GPU: compile for sm_90, registers/spills/smem
    python3 benchmarks/gpu_check.py OUT_DIR --cpu-tables N   # does the table shortcut pay on this CPU?

It uses the machine's own python3 and torch (no network): installs the package with
``pip install --no-build-isolation --no-deps -e .`` (NERNFAST_NO_EXT=1 unless --with-ext),
re-executes itself so the editable install is importable, and writes results as it goes:
OUT_DIR/log.txt (everything), OUT_DIR/results.json (every record, rewritten after each) and
OUT_DIR/table.md (the summary). Budget: under 5 minutes. Kernel compilation (every autotuning
candidate of every kernel the run uses) is done first by parallel worker processes (``--_warm``)
that run each case once and leave the binaries in Triton's on-disk cache; ``--budget S`` stops
starting new timing items after S seconds.

The parts live in benchmarks/gpu/ (one module per job, listed in its __init__); the correctness
bound is the kernel tests' own (nernfast.testing.kernel_harness).
"""
from __future__ import annotations

import os
import sys

if "--cpu-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

from gpu.main import main  # noqa: E402  (benchmarks/, this script's folder, is on sys.path)

if __name__ == "__main__":
    sys.exit(main())
