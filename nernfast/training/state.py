"""Resumable run state: finished stages with their results, and the running stage's snapshot.

Written atomically (temp file + rename) to ``OUT/train_state.pt``; a killed run resumes with
``--resume`` at the last snapshot and, on the CPU with the same seed, ends with the same numbers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch


class RunState:
    def __init__(self, path: Path, resume: bool, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self.data: dict[str, Any] = {"done": {}, "current": None}
        if resume:
            if not path.exists():
                raise FileNotFoundError(f"--resume: no run state at {path}; start without --resume or pass the "
                                        f"--out directory of the run to continue")
            self.data = torch.load(path, weights_only=False)  # our own file, written by this class

    def write(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save(self.data, tmp)
        os.replace(tmp, self.path)

    def stage(self, name: str, run: Callable[[dict | None, Callable[[dict], None]], dict]) -> dict:
        """Run a stage unless it already finished; resume it from its snapshot if it was running."""
        if name in self.data["done"]:
            return self.data["done"][name]
        cur = self.data["current"]
        resume = cur if cur is not None and cur.get("stage") == name else None

        def save(snapshot: dict) -> None:
            self.data["current"] = snapshot
            self.write()

        result = run(resume, save)
        self.data["done"][name] = result
        self.data["current"] = None
        self.write()
        return result
