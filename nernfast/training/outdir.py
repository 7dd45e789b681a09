"""The run directory ``--out``: checked before any work, so a mistake costs nothing and loses nothing.

``check_out`` only reads: it refuses a path that is a file, a directory that cannot be written, an
existing run without ``--resume`` or ``--overwrite``, and a ``--resume`` whose config differs from
the saved one (naming the keys; ``out`` itself is not compared, so a moved run resumes).
``start_out`` runs once the inputs have loaded: it removes the replaced run's files
(``--overwrite``) and writes ``config.yaml``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints import write_text_atomic
from ..config import ConfigError, RunConfig, from_dict, to_dict

RUN_FILES = ("config.yaml", "metrics.jsonl", "results.json", "nern.safetensors", "train_state.pt")
STATE = "train_state.pt"


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(saved: dict[str, Any], cfg: RunConfig) -> list[str]:
    """``key (saved X, now Y)`` for every key but ``out`` whose value differs."""
    try:
        old = _flat(to_dict(from_dict(saved)))  # keys added since the run was saved take their defaults
    except ConfigError as e:
        return [f"the saved config no longer loads ({e})"]
    now = _flat(to_dict(cfg))
    return [f"{k} (saved {old.get(k)!r}, now {now[k]!r})" for k in now if k != "out" and old.get(k) != now[k]]


def _writable(d: Path, out: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write in {d} ({e.strerror or e}); make it writable or pass "
                          "another --out") from None


def check_out(out: Path, cfg: RunConfig, resume: bool, overwrite: bool) -> None:
    """Raise a ConfigError naming the problem and the fix; reads only."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass only one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory; pass a directory for the run's outputs")
    existing = [f for f in RUN_FILES if (out / f).exists()] if out.is_dir() else []
    if resume:
        if STATE not in existing:
            raise ConfigError(f"--resume: no run state ({STATE}) in {out}; start without --resume, or pass the "
                              "--out of the run to continue")
        if "config.yaml" in existing:
            diff = config_differences(yaml.safe_load((out / "config.yaml").read_text()) or {}, cfg)
            if diff:
                raise ConfigError(f"--resume: the config differs from the one saved in {out / 'config.yaml'}: "
                                  + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
                                  + "; resume with the same settings or start a new --out")
    elif existing and not overwrite:
        raise ConfigError(f"--out {out} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                          "--overwrite to replace it, or another --out")
    d = out
    while not d.exists():  # the directory that would be created in
        d = d.parent
    if not d.is_dir():
        raise ConfigError(f"--out {out}: {d} is a file, not a directory; pass another --out")
    _writable(d, out)
    if resume and (out / "metrics.jsonl").exists():
        try:
            open(out / "metrics.jsonl", "ab").close()  # appended to; opening writes nothing
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot append to metrics.jsonl ({e.strerror or e}); make it writable "
                              "or start a new --out") from None


def start_out(out: Path, cfg: RunConfig, overwrite: bool) -> None:
    """Make the directory, remove the replaced run's files (``overwrite``), write config.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / "tb", ignore_errors=True)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
