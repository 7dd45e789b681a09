"""Evaluations that are not recomputed: a network's full evaluation cached by what determines it.

The key hashes the network's state (every tensor of its ``state_dict``: names, dtypes, shapes and
bytes, so a checkpoint and the same weights decoded from an artefact share an entry), the data it
is scored on (dataset, source, split size), the evaluation settings and ``EVAL_VERSION``. Entries
are JSON files under ``$NERNFAST_CACHE/eval`` written atomically; the trainer uses this for the
original and the teacher, which stay the same from run to run while the final model changes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

# Bump when the evaluation code changes its figures.
EVAL_VERSION = 2  # 2: per-image outcomes ("correct")


def state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_dir() -> Path:
    from ..pretrain import cache_root
    return cache_root() / "eval"


def evaluate_cached(model: nn.Module, bundle: Any, log: Optional[Callable[[str], None]] = None,
                    **settings: Any) -> dict:
    """``evaluate_model(model, bundle, **settings)``, read from the cache when this network was
    evaluated on this data with these settings before. The result says ``cached`` (the entry)."""
    from .metrics import evaluate_model
    device = settings.pop("device", "cpu")
    split = settings.get("split", "test")
    key = {"model": state_digest(model), "dataset": bundle.name, "source": str(bundle.source),
           "examples": len(bundle.split(split)), "settings": {k: str(v) for k, v in sorted(settings.items())},
           "version": EVAL_VERSION}
    path = cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if path.is_file():
        try:
            res = json.loads(path.read_text())
            if log is not None:
                log(f"accuracy {100 * res['accuracy']:.2f} % (cached evaluation {path})")
            return {**res, "cached": str(path)}
        except (ValueError, KeyError):  # a damaged entry: evaluate again and replace it
            pass
    # Through JSON either way, so a fresh result and a cached one look the same (string keys).
    res = json.loads(json.dumps(evaluate_model(model, bundle, device=device, log=log, **settings), default=float))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(res))
    os.replace(tmp, path)
    return {**res, "cached": None}
