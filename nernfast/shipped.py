"""Pretrained originals and teacher members shipped with nernfast (``nernfast/pretrained/``).

Pinned numerics (:mod:`nernfast.numerics`) make pretraining repeat bit for bit on one kind of CPU,
not across vendors: MKL and oneDNN choose code paths by vendor and cache sizes below what the pins
reach (measured: the digits ResNet-20 trained on the AMD EPYC and the Intel Xeon machines of this
kind reach the same 98.89 % test accuracy with test losses 0.0387 and 0.0279; five ``MKL_CBWR``
settings on the Xeon gave four other networks, none the EPYC's). So the networks every result is
measured against ship with the package: ``ensure_pretrained`` copies a shipped checkpoint into the
cache instead of training when one has the cache entry's name (model, dataset, seed, epochs and the
digest of recipe + pinned numerics) and the SHA-256 the manifest records. ``NERNFAST_SHIPPED=0``
trains it here instead; ``python -m nernfast.pretrain`` always trains.

``python -m nernfast.shipped CKPT [CKPT ...]`` adds cache checkpoints to the shipped set.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = "manifest.json"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    p = (directory or SHIPPED_DIR) / MANIFEST
    return json.loads(p.read_text())["files"] if p.is_file() else {}


def enabled() -> bool:
    return os.environ.get("NERNFAST_SHIPPED", "1") != "0"


def install(dest: Path, directory: Path | None = None) -> bool:
    """Copy the shipped checkpoint named like ``dest`` to ``dest`` (atomically). False when none is
    shipped, shipping is off, or the file does not match its recorded SHA-256 (said in one line)."""
    directory = directory or SHIPPED_DIR
    entry, src = manifest(directory).get(dest.name), directory / dest.name
    if not enabled() or entry is None or not src.is_file():
        return False
    if sha256(src) != entry["sha256"]:
        print(f"warning: the shipped {src} does not match its SHA-256 in {directory / MANIFEST}; "
              f"training it instead (reinstall nernfast to repair it)", file=sys.stderr)
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(src, partial)
    os.replace(partial, dest)
    print(f"pretrained: using the shipped {dest.name} (test accuracy {100 * entry['test_accuracy']:.2f} %, "
          f"trained with pinned numerics on {entry['cpu']}); NERNFAST_SHIPPED=0 trains it here", file=sys.stderr)
    return True


def add(paths: list[str], directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Copy cache checkpoints into the shipped set and record them in the manifest."""
    from .checkpoints import read_checkpoint
    directory = directory or SHIPPED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    files = manifest(directory)
    for p in map(Path, paths):
        ck = read_checkpoint(p)
        if not (isinstance(ck, dict) and "state_dict" in ck and "test_accuracy" in ck.get("metrics", {})):
            raise ValueError(f"{p} is not a pretrained checkpoint written by nernfast.pretrain")
        shutil.copyfile(p, directory / p.name)
        num = ck.get("numerics", {})
        files[p.name] = {"sha256": sha256(p), "bytes": p.stat().st_size, "model": ck["model"],
                         "dataset": ck["dataset"], "seed": ck["seed"],
                         "test_accuracy": ck["metrics"]["test_accuracy"], "test_loss": ck["metrics"]["test_loss"],
                         "val_accuracy": ck["metrics"]["val_accuracy"], "val_loss": ck["metrics"]["val_loss"],
                         "cpu": num.get("cpu"), "pinned": num.get("pinned"), "torch": num.get("torch")}
    tmp = directory / (MANIFEST + ".partial")
    tmp.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return files


if __name__ == "__main__":
    for name, e in add(sys.argv[1:]).items():
        print(f"{name}: {e['bytes']} bytes, test {100 * e['test_accuracy']:.2f} %, {e['cpu']}")
