"""``python -m nernfast.report``: the command line (the package docstring is its --help text)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .analyses import run_analyses
from .grid import DEFAULT_SIZES, SCALES, grid, job_order
from .render import render_from
from .runs import Env, write_json
from .scheduler import run_grid


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    import torch
    cpu = ""
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                    if l.startswith("model name")), "")
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": cpu, "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
            "git_commit": _sh(["git", "rev-parse", "HEAD"]), "git_dirty": bool(_sh(["git", "status", "--porcelain",
                                                                                   "--untracked-files=no"])),
            "uptime": _sh(["uptime"])}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nernfast.report", description=sys.modules[__package__].__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--model", default="resnet20", help="the original's architecture")
    p.add_argument("--config", default=None, help="a YAML config applied to every run (e.g. cifar10_resnet20.yaml)")
    p.add_argument("--scale", choices=tuple(SCALES), default="small")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="predictor hidden widths")
    p.add_argument("--seeds", type=int, default=None, help="default per scale")
    p.add_argument("--seeds-t3", type=int, default=None, help="seeds of the Table 3 runs (default: --seeds)")
    p.add_argument("--rounds", type=int, default=None, help="progressive rounds (default per scale)")
    p.add_argument("--progressive-hidden", type=int, default=None, help="default: the largest size")
    p.add_argument("--tables", default="1,2,3")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-robustness", action="store_true", help="skip OOD and attacks in the final evaluations")
    p.add_argument("--raw-dir", default="docs/raw", help="raw JSON (committed)")
    p.add_argument("--work-dir", default=None, help="run directories with artefacts (default runs/report/<scale>)")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--notes", default="docs/results_notes.md", help="hand-written discussion appended if present")
    p.add_argument("--render-only", action="store_true", help="re-render the report from RAW only")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    p.add_argument("--analyses", action="store_true", help="after the grid (or alone with --analyses-only): run "
                   "the analyses on seed 0's artefacts into DOCS/analysis/")
    p.add_argument("--analyses-only", action="store_true", help="run only the analyses, then render")
    p.add_argument("--landscape-grid", type=int, default=9, help="grid points per axis of the landscapes")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    raw = Path(a.raw_dir)
    if a.render_only:
        text = render_from(raw, Path(a.out), Path(a.notes), plots=not a.no_plots)
        print(f"wrote {a.out} ({len(text.splitlines())} lines)")
        return 0
    sc = SCALES[a.scale]
    sizes = [int(s) for s in a.sizes.split(",") if s]
    seeds = a.seeds or sc["seeds"]
    rounds = a.rounds or sc["rounds"]
    tables = {int(t) for t in a.tables.split(",") if t}
    seeds_t3 = min(seeds, a.seeds_t3 or seeds)
    jobs = grid(sizes, seeds, rounds, a.progressive_hidden or max(sizes), tables, seeds_t3)
    if a.dry_run:
        for j in sorted(jobs, key=job_order):
            print(j.id, j.recipe or j.kind, f"deps={j.deps}" if j.deps else "")
        return 0
    threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    env = Env(a.dataset, a.model, a.data_root, a.config, a.scale, sc["mult"], sc["kd_epochs_mult"], str(raw),
              a.work_dir or f"runs/report/{a.scale}", a.device, threads, not a.no_robustness)
    manifest_path = raw / "grid.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    settings = {"dataset": a.dataset, "model": a.model, "config": a.config, "scale": a.scale, "mult": sc["mult"],
                "kd_epochs_mult": sc["kd_epochs_mult"], "sizes": sizes, "seeds": seeds, "seeds_t3": seeds_t3, "rounds": rounds,
                "progressive_hidden": a.progressive_hidden or max(sizes), "tables": sorted(tables),
                "robustness": not a.no_robustness}
    if manifest.get("settings") and manifest["settings"] != settings:
        print(f"error: {manifest_path} holds a grid with other settings ({manifest['settings']}); "
              "use another --raw-dir or remove it", file=sys.stderr)
        return 2
    inv = {"command": "python -m nernfast.report " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                         else sys.argv[1:])),
           "jobs": a.jobs, "threads": threads, "start": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "machine": machine_info()}
    manifest = {"settings": settings, "job_ids": [j.id for j in jobs],
                "invocations": manifest.get("invocations", []) + [inv]}
    write_json(manifest_path, manifest)

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    t0 = time.time()
    if not a.analyses_only:
        run_grid(jobs, env, a.jobs, log)
    if a.analyses or a.analyses_only:
        import torch
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        run_analyses(raw, env.work_dir, Path(a.out).parent, a.landscape_grid, log)
    inv.update(end=time.strftime("%Y-%m-%d %H:%M:%S %Z"), wall_seconds=round(time.time() - t0, 1),
               uptime_end=_sh(["uptime"]))
    write_json(manifest_path, manifest)
    text = render_from(raw, Path(a.out), Path(a.notes), plots=not a.no_plots)
    log(f"wrote {a.out} ({len(text.splitlines())} lines)")
    return 0

