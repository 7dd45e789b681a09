"""Plotting helpers: matplotlib with the Agg backend (no display), deterministic PNG files."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterable, Sequence


def plt():
    """matplotlib.pyplot on the Agg backend (imported lazily: matplotlib is only needed for plots)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot
    return pyplot


def save(fig, path: str | Path) -> str:
    """Write a PNG without a timestamp or version in its metadata, close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt().close(fig)
    return str(path)


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    return str(path)


def write_json(path: str | Path, obj: Any) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n")
    return str(path)


def short_layer(name: str) -> str:
    """'layer2.1.conv1' -> 'l2.1.c1' for axis labels."""
    return name.replace("layer", "l").replace("conv", "c").replace("shortcut", "sc").replace("downsample", "ds")


def grouped_bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]], ylabel: str) -> None:
    """One group of bars per entry of ``groups``, one bar per series."""
    import numpy as np
    n = max(len(series), 1)
    x = np.arange(len(groups))
    w = 0.8 / n
    for i, (label, ys) in enumerate(series.items()):
        ax.bar(x + (i - (n - 1) / 2) * w, ys, w, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([short_layer(g) for g in groups], rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.axhline(0, color="black", lw=0.5)
    if len(series) > 1:
        ax.legend(fontsize=8)
