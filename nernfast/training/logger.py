"""Run output: progress bars (tqdm), JSONL metrics, TensorBoard when installed. Rank 0 only."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class RunLogger:
    """Writes nothing until the first record: a run that fails while loading its inputs leaves no files."""

    def __init__(self, out: Path, rank: int = 0, progress: bool = True):
        self.out, self.rank, self.enabled = out, rank, rank == 0
        self.show_progress = progress and self.enabled
        self.jsonl = None
        self.tb = None

    def _open(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            self.tb = SummaryWriter(str(self.out / "tb"))
        except Exception:
            self.tb = None

    def log(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.jsonl is None:
            self._open()
        self.jsonl.write(json.dumps(rec, default=float) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{rec.get('stage', 'run')}/{k}", v, rec.get("step", 0))

    def info(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg, file=sys.stderr)

    def status(self, msg: str) -> None:
        """A progress line (e.g. one per evaluation figure): shown with the progress bars only."""
        if self.show_progress:
            tqdm.write(msg, file=sys.stderr)

    def progress(self, total: int, initial: int = 0, desc: str = "") -> tqdm:
        return tqdm(total=total, initial=initial, desc=desc, disable=not self.show_progress, leave=False,
                    dynamic_ncols=True, mininterval=1.0)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
