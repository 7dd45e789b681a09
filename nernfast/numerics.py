"""Pinned CPU numerics: the same pretraining command gives the same network on any machine of a kind.

Machines of one kind differ in instruction set (some have AVX-512 and AVX-512 BF16, some only
AVX2), and the CPU libraries pick their kernels by it: oneDNN's convolutions, ATen's vectorised
element-wise and reduction kernels and MKL's GEMMs then sum in different orders, and over a few
thousand SGD steps those last-bit differences grow into a different network (measured on the
2-core AMD EPYC box, ResNet-20 on Fashion-MNIST, 20 steps: the loss was 0.9601 with the native
AVX-512 kernels and 1.0289 with the AVX2 ones). Pinning every library to the AVX2 code path that
all these machines have, and the thread count to one (the libraries split reductions by thread),
makes the result repeat bit for bit on machines of one CPU vendor (AMD EPYC to AMD EPYC measured, AVX-512 BF16
to AVX2-only too: experiments/plain_original.py's adamw original, 10 epochs, the same prediction on each of the
10 000 Fashion-MNIST test images and the same weight spectrum to the last digit).
Not across vendors: MKL and oneDNN still choose code paths by vendor and cache sizes (the digits
original trained on the Intel Xeon machines of this kind differs from the AMD EPYC one: test loss
0.0279 vs 0.0387 at the same 98.89 %), so the networks results are measured against ship with the
package (:mod:`nernfast.shipped`):

==========================  =======  ==============================================================
variable                    value    what it pins
==========================  =======  ==============================================================
``ONEDNN_MAX_CPU_ISA``      AVX2     oneDNN (convolutions, batch norm) kernels
``ATEN_CPU_CAPABILITY``     avx2     ATen's vectorised CPU kernels
``MKL_CBWR``                AVX2     MKL's conditional numerical reproducibility branch (GEMMs)
``OMP_NUM_THREADS``         1        OpenMP threads (reduction splits)
``MKL_NUM_THREADS``         1        MKL threads
==========================  =======  ==============================================================

They are read when the libraries start, so they cannot be switched on inside a running process:
:func:`run_pinned` runs a command in a child process with them set. The cost, measured on the
same box (one thread, ResNet-20 training step, batch 128 of 28x28): 345 ms pinned vs 222 ms
native (1.55x); pinned runs were bit-identical to each other. Cached originals and teachers are
trained this way (:func:`nernfast.pretrain.ensure_pretrained`); everything else runs natively.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any, Sequence

PINNED_ENV: dict[str, str] = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def is_pinned(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in PINNED_ENV.items())


def pinned_env(base: dict[str, str] | None = None) -> dict[str, str]:
    return {**(os.environ if base is None else base), **PINNED_ENV}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX-512 BF16 or AMX). Without them
    oneDNN emulates bf16 with fp32 instructions, which is slower than plain fp32: never a default."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def resolve_precision(precision: str, device: Any) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16, else ``float32``; explicit values unchanged.

    The rule behind auto: bf16 where it is faster *and* its effect on the results was measured as
    within noise. Speed, measured on the AMD EPYC box with AVX-512 BF16 (one thread, CPU time): a
    reconstruction step (ResNet-20/H140, 4096 rows) 18 ms vs 33 ms in float32, a Fashion-MNIST
    distillation step 304 ms vs 409 ms (288 ms with channels_last). Effect: the precision check of
    docs/fashion-mnist.md (the same recipe and seed in float32 and bf16, compared on the 10 000
    test images). Without native bf16 oneDNN emulates it and it is slower, so auto never picks it;
    on CUDA auto stays float32 (the bf16 GPU paths have not been measured)."""
    import torch
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and native_bf16() else "float32"


def resolve_channels_last(channels_last: bool | None, precision: str, device: Any) -> bool:
    """``None`` -> channels_last exactly for bf16 on the CPU (where oneDNN's bf16 convolutions want it)."""
    import torch
    if channels_last is not None:
        return channels_last
    return precision == "bf16" and torch.device(device).type == "cpu"


def describe() -> dict[str, Any]:
    """What decided this process's CPU numerics (recorded with checkpoints and run results)."""
    import torch
    return {"pinned": is_pinned(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_name(), "native_bf16": native_bf16(), "threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "env": {k: os.environ.get(k) for k in PINNED_ENV}}


def run_pinned(args: Sequence[str]) -> int:
    """Run ``python args...`` in a child process with the pinned numerics; returns its exit code.
    Its output goes straight to this process's stdout/stderr (progress bars included)."""
    return subprocess.run([sys.executable, *args], env=pinned_env()).returncode
