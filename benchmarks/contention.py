"""A training step on a shared machine: what keeps torch's OpenMP threads from collapsing.

    python benchmarks/contention.py [--steps 30] [--json OUT.json]

Times one Fashion-MNIST distillation step (decoupled phase 2: ResNet-20, batch 128, the H140
predictor; synthetic weights and images of the real shapes, so no dataset or original is needed)
in a child process per setting, first on an idle machine, then beside one single-threaded busy
process (a NumPy matmul loop pinned nowhere, like another user's job). Settings: threads 1 or 2
(``torch.set_num_threads``), ``OMP_WAIT_POLICY`` active (libgomp's default: spin, then sleep) or
passive (sleep at once), and nernfast's ``--threads auto`` (one thread per CPU found idle at start).
Reports the median step and its ratio to the idle 2-thread (machine default) step. Run it on an
otherwise idle machine; it prints the load average before each measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import os, sys, time, statistics
import torch
threads = sys.argv[1]
from nernfast.cli import set_threads
n = set_threads(threads)
from nernfast.models import build_model, copy_frozen
from nernfast.nern import NeRN
from nernfast.config import resolve
from nernfast.training.objectives import ReconTarget, PhaseNets, data_loss
from nernfast.batching import sample_rows
torch.manual_seed(0)
orig = copy_frozen(build_model("resnet20", 10, 1))
nern = NeRN.from_model(orig, hidden=140, permutation="none")
target = ReconTarget(nern.plan, nern.plan.weights_of(orig), "cpu")
phase = resolve("decoupled", "fashion_mnist.yaml").phase2
nets = PhaseNets(target, copy_frozen(orig), orig)
opt = torch.optim.Adam(nern.predictor.parameters(), 1e-5)
x = torch.randn(128, 1, 28, 28)
g = torch.Generator().manual_seed(0)
ts = []
for i in range(int(sys.argv[2])):
    idx = sample_rows("random_weighted_batch", nern.plan.num_rows, 4096, g, target.norms)
    t0 = time.perf_counter()
    loss, _ = data_loss(nern, phase, nets, idx, x, None)
    opt.zero_grad(); loss.backward(); opt.step()
    ts.append(time.perf_counter() - t0)
print(n, statistics.median(ts[3:]))
"""

BUSY = "import numpy as np\na = np.random.rand(600, 600)\nwhile True:\n    a = (a @ a) / 600.0\n"


def measure(threads: str, policy: str | None, steps: int) -> tuple[int, float]:
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    else:
        env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run([sys.executable, "-c", CHILD, threads, str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[-2]), float(out[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    settings = [("2", None), ("2", "PASSIVE"), ("1", None), ("1", "PASSIVE"), ("auto", None), ("auto", "PASSIVE")]
    rows = []
    for busy in (False, True):
        hog = None
        if busy:
            hog = subprocess.Popen([sys.executable, "-c", BUSY], env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                      "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            time.sleep(2)
        try:
            for threads, policy in settings:
                load = os.getloadavg()[0]
                n, t = measure(threads, policy, a.steps)
                rows.append({"busy_neighbour": busy, "threads": threads, "resolved_threads": n,
                             "omp_wait_policy": policy or "default", "median_step_s": t, "load_avg_1m": load})
                print(f"busy={busy!s:5} threads={threads:>4} (-> {n}) OMP_WAIT_POLICY={policy or 'default':8} "
                      f"median step {1000 * t:7.1f} ms  (load {load:.2f})", flush=True)
        finally:
            if hog is not None:
                hog.kill()
    base = next(r["median_step_s"] for r in rows if not r["busy_neighbour"] and r["threads"] == "2"
                and r["omp_wait_policy"] == "default")
    for r in rows:
        r["ratio_to_idle_default"] = r["median_step_s"] / base
    print("\nratio to the idle machine-default step (2 threads, default wait policy):")
    for r in rows:
        print(f"  busy={r['busy_neighbour']!s:5} threads={r['threads']:>4} policy={r['omp_wait_policy']:8} "
              f"{r['ratio_to_idle_default']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
