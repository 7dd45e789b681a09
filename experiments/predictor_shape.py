"""Predictor shapes of equal size (CR 0.35) on Fashion-MNIST: which one reconstructs the shipped original best?

    python experiments/predictor_shape.py            # train the missing variants, then print the table
    python experiments/predictor_shape.py --table    # the table from docs/predictor-shape/raw only
    python experiments/predictor_shape.py --only l20-h156

Why: the basic encoding (nernfast.encoding) feeds sin/cos of pi * base**j * p for levels j = 0..39 (base 0.76),
where a kernel coordinate p is a layer, filter or channel index below 64. From level ~20 on the wavelength is over
a thousand indices, so those features are nearly affine in p and repeat each other, yet they take half of the
first layer's 240 inputs (a third of the paper's predictor's 94 229 parameters is that layer). Each variant spends
the same budget (within 1 %) on fewer levels and wider or deeper hidden layers. l16-h160 won, and is
fashion_mnist.yaml's shape since session 23 (l40-h140, the paper's, was the default before).

What is measured is decoupled's phase 1 as the shipped config runs it (20 000 fast reconstruction steps, Adam 1e-3
cosine, seed 0), run as ``recon_only`` with ``phase1.steps=20000``: the reconstruction error of the kept step and
the validation accuracy with BN statistics re-estimated for it (what phase 2 starts from), and the test accuracy
(reported only). One thread per run on a pinned core (``NERNFAST_EXPERIMENT_CORE``, as
experiments/fashion_mnist.py); ``--jobs 2`` runs two at a time on cores 0 and 1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from nernfast.checkpoints import write_text_atomic
from nernfast.config import resolve

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "predictor-shape" / "raw"
RUNS = ROOT / "runs" / "predictor-shape"
PHASE1_STEPS = resolve("decoupled", "fashion_mnist.yaml").phase1.steps  # decoupled's phase 1 as shipped


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    levels: int
    num_blocks: int

    def args(self) -> list[str]:
        return ["--config", "fashion_mnist.yaml", "--recipe", "recon_only", "--seed", "0", "--no-progress",
                "--eval", "quick", "--overwrite", "--out", str(RUNS / self.name), "--hidden", str(self.hidden),
                "--set", f"nern.levels={self.levels}", "--set", f"nern.num_blocks={self.num_blocks}",
                "--set", f"phase1.steps={PHASE1_STEPS}"]


# parameters: 6L*H + H (first layer) + (B-2)(H^2 + H) + 9H + 9; the shipped shape's 94 249 within 1 %
SHAPES = [Shape("l40-h140", 140, 40, 5),    # 94 229: the paper's (the default before session 23)
          Shape("l20-h156", 156, 20, 5),    # 93 765
          Shape("l16-h160", 160, 16, 5),    # 94 249: fashion_mnist.yaml's
          Shape("l20-b6-h137", 137, 20, 6)]  # 93 443


def train(shape: Shape, core: int) -> None:
    if (RAW / f"{shape.name}.json").exists():
        return
    out = RUNS / shape.name
    out.parent.mkdir(parents=True, exist_ok=True)
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    cmd = pin + [sys.executable, "-m", "nernfast.train", *shape.args()]
    print(f"{shape.name}: python -m nernfast.train {' '.join(shape.args())}", flush=True)
    with open(RUNS / f"{shape.name}.log", "w") as log:
        code = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{shape.name} failed (exit {code}); see {RUNS / f'{shape.name}.log'}")
    res = json.loads((out / "results.json").read_text())
    for stage in res["stages"]:
        stage["history"] = [h for h in stage["history"] if "val_acc" in h]  # evaluations only
    res["final"].pop("correct", None)
    res["shape"] = {"name": shape.name, "hidden": shape.hidden, "levels": shape.levels,
                    "num_blocks": shape.num_blocks, "command": "python -m nernfast.train " + " ".join(shape.args())}
    RAW.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RAW / f"{shape.name}.json", json.dumps(res, indent=1, default=float))


def table() -> str:
    rows = ["| shape | hidden | levels | linears | predictor parameters | CR | L2 at the last step | kept step: L2, val % "
            "(BN re-est.) | test % | wall, min |", "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in SHAPES:
        f = RAW / f"{shape.name}.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        s = r["stages"][0]
        rows.append(f"| {shape.name} | {shape.hidden} | {shape.levels} | {shape.num_blocks} | "
                    f"{r['sizes']['predictor_params']:,} | {r['sizes']['compression_ratio']:.3f} | "
                    f"{s['history'][-1]['recon_l2']:.5f} | {s['best_step']}: {s['recon_l2']:.5f}, {100 * s['val_acc']:.2f} | "
                    f"{100 * r['final']['accuracy']:.2f} | {r['wall_seconds'] / 60:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", action="store_true", help="only print the table from the raw files")
    p.add_argument("--only", nargs="*", help="train only these shapes")
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="runs at a time (one pinned core each)")
    a = p.parse_args(argv)
    if not a.table:
        todo = [s for s in SHAPES if not a.only or s.name in a.only]
        cores = [int(os.environ.get("NERNFAST_EXPERIMENT_CORE", "0"))] if a.jobs == 1 else [0, 1]
        def lane(i: int) -> None:  # every len(cores)-th shape, one after the other, on core cores[i]
            for shape in todo[i::len(cores)]:
                train(shape, cores[i])
        with ThreadPoolExecutor(len(cores)) as pool:
            list(pool.map(lane, range(len(cores))))
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
