"""Phase-1 results shared between runs that start from the same reconstruction.

decoupled, teacher_decoupled and noise_decoupled begin with the same reconstruction phase; with the
same original, predictor settings, phase-1 config and seed it ends with the same predictor (runs
repeat bit for bit on one machine: the resume test checks it). So the first run stores its phase-1
result under ``$NERNFAST_CACHE/phase1`` and the others reuse it; their results say so
(``shared_from`` in the stage). The key holds everything the result depends on: the original's
weights, the dataset and its validation split, ``cfg.nern``, ``cfg.phase1``, the seed, the
predictor initialisation, the precision settings and what decides the CPU numerics (torch
version, CPU capability, thread count), plus ``SHARED_VERSION`` for changes to the training code.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

# Bump when the phase code changes what a phase produces.
SHARED_VERSION = 1
# Phase options added after entries were made: at these values they leave phase 1 as it was, so they stay
# out of the key and the earlier entries still match.
_ADDED_AT_DEFAULT = {"bn_batch_stats": False}


def phase1_key(ctx: Any) -> str:
    from ..eval.cache import state_digest
    cfg = ctx.cfg
    phase1 = {k: v for k, v in asdict(cfg.phase1).items() if k not in _ADDED_AT_DEFAULT or v != _ADDED_AT_DEFAULT[k]}
    key = {"original": state_digest(ctx.original), "dataset": ctx.bundle.name, "source": str(ctx.bundle.source),
           "val": len(ctx.bundle.val), "nern": asdict(cfg.nern), "phase1": phase1, "seed": cfg.seed,
           "init_from": cfg.init_from, "precision": ctx.precision, "channels_last": ctx.channels_last,
           "device": str(ctx.device), "torch": str(torch.__version__),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "version": SHARED_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    from ..pretrain import cache_root
    return cache_root() / "phase1" / f"{key}.pt"


def load_shared(key: str) -> dict[str, Any] | None:
    p = _path(key)
    if not p.is_file():
        return None
    try:
        return torch.load(p, weights_only=False)  # our own file (written below)
    except Exception:  # noqa: BLE001 - a damaged entry: run the phase again and replace it
        return None


def store_shared(key: str, result: dict[str, Any]) -> None:
    p = _path(key)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    torch.save(result, tmp)
    os.replace(tmp, p)
