"""The grid's scheduler: every job whose raw JSON is missing, in a process pool, dependencies first;
one failed run skips its dependants and nothing else."""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable

from .grid import Job, job_order
from .runs import Env, run_job


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_grid(jobs: list[Job], env: Env, workers: int, log: Callable[[str], None] = print) -> None:
    """Run every job whose raw JSON is missing, ``workers`` at a time, dependencies first."""
    raw = Path(env.raw_dir) / "jobs"
    done = {p.stem for p in raw.glob("*.json")}
    pending = sorted([j for j in jobs if j.id not in done], key=job_order)
    failed: set[str] = set()
    log(f"{len(done & {j.id for j in jobs})} of {len(jobs)} jobs already done; {len(pending)} to run")
    import multiprocessing as mp
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(env.threads,)) as ex:
        running: dict[Any, tuple[Job, float]] = {}
        while pending or running:
            for j in list(pending):
                if len(running) >= workers:
                    break
                if any(d in failed for d in j.deps):
                    failed.add(j.id)
                    pending.remove(j)
                    log(f"skip {j.id}: a dependency failed")
                    continue
                if all(d in done for d in j.deps):
                    pending.remove(j)
                    running[ex.submit(run_job, j, env)] = (j, time.time())
                    log(f"start {j.id}")
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                j, t0 = running.pop(f)
                try:
                    rec = f.result()
                    done.add(j.id)
                    acc = rec.get("eval", {}).get("accuracy")
                    log(f"done  {j.id} in {time.time() - t0:.0f} s (test acc {100 * acc:.2f} %)")
                except Exception as e:  # one failed run must not take the grid down
                    failed.add(j.id)
                    log(f"FAIL  {j.id}: {type(e).__name__}: {e}")
    if failed:
        log(f"{len(failed)} job(s) failed or skipped: {', '.join(sorted(failed))}")

