"""``python -m nernfast.report``: run the documented grid of recipes and render ``docs/results.md``.

The grid (defaults: the embedded digits dataset, ResNet-20, predictor sizes 100 / 140 / 280, i.e.
CR 0.21 / 0.35 / 1.14, three seeds), every run going through the trainer's Python API
(``nernfast.train.run`` with ``nernfast.config.resolve(recipe, sets=[...])``):

Table 1  progressive reconstruction at the largest size: independent chains (one per seed) of
         ``recon_only`` runs, round r+1 reconstructing round r's artefact (``original=<artefact>``);
         round 1 of chain s is the Table 2 recon-only run of seed s.
Table 2  ``recon_only``, ``baseline`` and ``decoupled`` at every size and seed. Decoupled starts
         from the recon-only artefact of the same size and seed (``init_from``, phase 1 of length 0),
         so "decoupled - recon-only" is exactly the effect of phase 2, as in the paper.
Table 3  with the dataset's default teacher: NeRN's baseline distilling from the teacher
         (``phase1.distill_from=teacher``, no feature-map term), ``teacher_decoupled`` (again from
         the recon-only artefact) and a student of the original's architecture trained from scratch
         with the KD loss from the same teacher (the original's pretraining schedule).

Scales multiply every phase's steps, warm-up, evaluation and checkpoint intervals:

=====  ==========  =====  ======  =======================================================
scale  steps x     seeds  rounds  meant for
=====  ==========  =====  ======  =======================================================
smoke  0.02        1      2       checking the pipeline end to end (minutes)
small  0.1         3      3       a quick look (~15 min on 2 cores); too short to reach the
                                   recipes' results
medium 0.5         3      3       the committed report: ~35 min on an idle 2-core CPU with
                                   ``--seeds-t3 1 --jobs 2``
full   1           3      3       the recipes' own lengths (~1.5 h on 2 cores; a GPU)
=====  ==========  =====  ======  =======================================================

Every finished run leaves ``RAW/jobs/<id>.json`` (config, stage summaries, sizes, the final
evaluation and the per-image outcome on the test set, for paired comparisons); a rerun skips the
finished ones, so an interrupted grid continues where it stopped. ``--render-only`` rebuilds the
report from the raw JSON alone, byte for byte the same each time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"mult": 0.02, "seeds": 1, "rounds": 2, "kd_epochs_mult": 0.05},
    "small": {"mult": 0.1, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
    "medium": {"mult": 0.5, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
    "full": {"mult": 1.0, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
}
DEFAULT_SIZES = (100, 140, 280)
TWO_PHASE = ("decoupled", "teacher_decoupled", "noise_decoupled")
METHOD_LABEL = {"recon": "Recon-only", "baseline": "Baseline", "decoupled": "Decoupled (ours)",
                "gbaseline": "Baseline w/ teacher KD", "tdecoupled": "Decoupled w/ teacher (ours)",
                "kdstudent": "KD student from scratch", "original": "Original", "teacher": "Teacher"}


# ---------------------------------------------------------------------------------------------- grid
@dataclass
class Job:
    id: str
    kind: str                          # original | teacher | train | kdstudent
    table: int = 0
    method: str = ""
    recipe: str | None = None
    hidden: int | None = None
    seed: int = 0
    chain: int | None = None
    round: int | None = None
    sets: list[str] = field(default_factory=list)
    init_from_job: str | None = None   # predictor starts from this job's artefact
    original_job: str | None = None    # the network to reconstruct is this job's artefact
    deps: list[str] = field(default_factory=list)


def grid(sizes: list[int], seeds: int, rounds: int, prog_hidden: int, tables: set[int],
         seeds_t3: int | None = None) -> list[Job]:
    seeds_t3 = seeds if seeds_t3 is None else seeds_t3
    jobs: list[Job] = [Job("original", "original")]
    if 3 in tables:
        jobs.append(Job("teacher", "teacher", table=3))

    def recon(h: int, s: int) -> str:
        jid = f"recon-h{h}-s{s}"
        if not any(j.id == jid for j in jobs):
            jobs.append(Job(jid, "train", 2, "recon", "recon_only", h, s))
        return jid

    for s in range(seeds):
        t3 = 3 in tables and s < seeds_t3
        if 2 in tables or t3:
            for h in sizes:
                r = recon(h, s)
                if 2 in tables:
                    jobs.append(Job(f"baseline-h{h}-s{s}", "train", 2, "baseline", "baseline", h, s))
                    jobs.append(Job(f"decoupled-h{h}-s{s}", "train", 2, "decoupled", "decoupled", h, s,
                                    init_from_job=r, deps=[r]))
                if t3:
                    jobs.append(Job(f"gbaseline-h{h}-s{s}", "train", 3, "gbaseline", "baseline", h, s,
                                    sets=["phase1.distill_from=teacher", "phase1.fmd_weight=0"]))
                    jobs.append(Job(f"tdecoupled-h{h}-s{s}", "train", 3, "tdecoupled", "teacher_decoupled", h, s,
                                    init_from_job=r, deps=[r]))
        if 1 in tables:
            prev = recon(prog_hidden, s)
            for r in range(2, rounds + 1):
                jid = f"prog-c{s}-r{r}"
                jobs.append(Job(jid, "train", 1, "progressive", "recon_only", prog_hidden, s + 1000 * (r - 1),
                                chain=s, round=r, original_job=prev, deps=[prev]))
                prev = jid
        if t3:
            jobs.append(Job(f"kdstudent-s{s}", "kdstudent", 3, "kdstudent", seed=s))
    # Round 1 of every chain is the recon-only run of that seed.
    for j in jobs:
        if j.id.startswith(f"recon-h{prog_hidden}-") and 1 in tables:
            j.chain, j.round = j.seed, 1
    return jobs


def job_order(j: Job) -> tuple:
    """Cheap, informative runs first, seed by seed, so a truncated grid still fills every table."""
    rank = {"original": 0, "teacher": 1, "recon": 2, "decoupled": 3, "baseline": 4, "tdecoupled": 5,
            "progressive": 6, "gbaseline": 7, "kdstudent": 8}
    return (-1 if j.kind in ("original", "teacher") else j.seed % 1000, rank.get(j.method or j.kind, 9),
            j.round or 0, j.hidden or 0)


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Env:
    dataset: str
    model: str
    data_root: str | None
    config: str | None
    scale: str
    mult: float
    kd_epochs_mult: float
    raw_dir: str
    work_dir: str
    device: str
    threads: int
    robustness: bool


def scaled_sets(recipe: str, mult: float, config: str | None, zero_phase1: bool = False) -> list[str]:
    """``--set`` overrides that multiply a recipe's phase lengths by ``mult``."""
    from .config import resolve
    base = resolve(recipe, config)
    sets = []
    for ph in ("phase1", "phase2") if recipe in TWO_PHASE else ("phase1",):
        p = getattr(base, ph)
        steps = 0 if (ph == "phase1" and zero_phase1) else max(1, round(p.steps * mult))
        sets += [f"{ph}.steps={steps}", f"{ph}.warmup_steps={min(steps, round(p.warmup_steps * mult))}",
                 f"{ph}.lr_warmup_steps={min(steps, round(p.lr_warmup_steps * mult))}",
                 f"{ph}.eval_every={max(1, round(p.eval_every * mult))}",
                 f"{ph}.checkpoint_every={max(1, round(p.checkpoint_every * mult))}"]
    return sets


def correct_vector(model, bundle, device: str) -> str:
    """Per test image (in order): '1' if classified correctly."""
    import torch
    model.eval()
    out = []
    with torch.no_grad():
        for x, y in bundle.loader("test", 512, shuffle=False, augment=False):
            out += ["1" if c else "0" for c in (model(x.to(device)).argmax(1).cpu() == y).tolist()]
    return "".join(out)


def evaluate(model, bundle, env: Env) -> dict[str, Any]:
    """The final figures of one model: accuracy, OOD, FGSM (headline eps), I-FGSM, per-image outcome."""
    from .eval import attack_defaults, evaluate_model
    d = attack_defaults(bundle.name)
    res = evaluate_model(model, bundle, env.device, "test", 512, fgsm_eps=[d["fgsm_eps"][0]],
                         ood=env.robustness, attacks=env.robustness)
    keep = {k: res.get(k) for k in ("accuracy", "loss", "num_examples", "fgsm_accuracy", "ifgsm_accuracy",
                                     "ood_accuracy", "seconds")}
    keep["ood_source"] = (res.get("ood") or {}).get("source")
    keep["settings"] = {k: v for k, v in res.get("settings", {}).items() if k in ("fgsm_eps", "ifgsm_eps",
                                                                                   "ifgsm_steps", "ifgsm_alpha")}
    keep["correct"] = correct_vector(model, bundle, env.device)
    return keep


def _artefact(env: Env, jid: str) -> str:
    return str(Path(env.work_dir) / jid / "nern.safetensors")


def _decoded_checkpoint(env: Env, jid: str) -> str:
    """A job's decoded network as a plain checkpoint, the input of the next progressive round (the
    trainer reads a checkpoint naming its model; an artefact of a run that itself started from an
    artefact does not name its architecture)."""
    from .analysis.weights import load_weights
    from .checkpoints import save_checkpoint_atomic
    path = Path(env.work_dir) / jid / "decoded.pt"
    if not path.exists():
        ld = load_weights(_artefact(env, jid), model=env.model)
        first = next(m for m in ld.model.modules() if hasattr(m, "in_channels"))
        last = [m for m in ld.model.modules() if hasattr(m, "out_features")][-1]
        save_checkpoint_atomic({"model": env.model, "num_classes": last.out_features, "in_channels": first.in_channels,
                                "dataset": env.dataset, "source": _artefact(env, jid),
                                "state_dict": ld.model.state_dict()}, path)
    return str(path)


def _stage_summary(stages: list[dict]) -> list[dict]:
    keys = ("stage", "steps_run", "best_step", "selected_by", "val_acc", "val_loss", "test_acc", "recon_l2",
            "recon_mse", "diverged")
    return [{k: s.get(k) for k in keys} for s in stages]


def run_job(job: Job, env: Env) -> dict[str, Any]:
    """Run one job and write its raw JSON; returns the record."""
    import torch
    torch.set_num_threads(env.threads)
    t0 = time.time()
    from .data import get_dataset
    bundle = get_dataset(env.dataset, env.data_root, seed=0)
    rec: dict[str, Any] = {"job": asdict(job)}
    if job.kind in ("original", "teacher"):
        from .checkpoints import load_model_checkpoint
        from .models import build_model
        from .pretrain import DEFAULT_TEACHER, ensure_pretrained
        name = env.model if job.kind == "original" else DEFAULT_TEACHER.get(env.dataset, "resnet56")
        path = ensure_pretrained(name, env.dataset, data_root=env.data_root)
        model = load_model_checkpoint(path, build_model(name, bundle.num_classes, bundle.in_channels)).eval()
        rec.update(model=name, checkpoint=str(path), params=sum(p.numel() for p in model.parameters()),
                   eval=evaluate(model, bundle, env))
    elif job.kind == "kdstudent":
        rec.update(train_kd_student(job, env, bundle))
    else:
        rec.update(train_nern(job, env, bundle))
    rec["wall_seconds"] = round(time.time() - t0, 1)
    write_json(Path(env.raw_dir) / "jobs" / f"{job.id}.json", rec)
    return rec


def train_nern(job: Job, env: Env, bundle) -> dict[str, Any]:
    from .analysis.weights import conv_weights, load_weights, recon_l2
    from .artefact import load_nern
    from .config import resolve, to_dict
    from .models import build_model
    from .train import run
    sets = scaled_sets(job.recipe, env.mult, env.config, zero_phase1=job.init_from_job is not None)
    sets += list(job.sets) + [f"nern.hidden={job.hidden}", "eval.ood=false", "eval.attacks=false"]
    out = Path(env.work_dir) / job.id
    cfg = resolve(job.recipe, env.config, sets, model=env.model, dataset=env.dataset, data_root=env.data_root,
                  seed=job.seed, device=env.device, out=str(out),
                  original=_decoded_checkpoint(env, job.original_job) if job.original_job else None,
                  init_from=_artefact(env, job.init_from_job) if job.init_from_job else None)
    res = run(cfg, progress=False, overwrite=True)  # the grid owns its work dir: a rerun replaces the run
    net = build_model(env.model, bundle.num_classes, bundle.in_channels)
    nern, net, _ = load_nern(out / "nern.safetensors", model=net)
    nern.materialize_(net)
    net.eval()
    rec = {"config": to_dict(cfg), "sets": sets, "stages": _stage_summary(res["stages"]), "sizes": res["sizes"],
           "train_wall_seconds": res.get("wall_seconds"), "environment": res.get("environment"),
           "eval": evaluate(net, bundle, env)}
    # Distance to the true original (for progressive rounds the trainer's recon error is to the
    # previous round's network).
    from .pretrain import ensure_pretrained
    orig = load_weights(ensure_pretrained(env.model, env.dataset, data_root=env.data_root), model=env.model)
    names = list(nern.plan.names)
    rec["recon_l2_vs_original"] = recon_l2(conv_weights(net, names), conv_weights(orig.model, names))
    rec["recon_l2_vs_target"] = res["stages"][-1].get("recon_l2") if res["stages"] else None
    return rec


def train_kd_student(job: Job, env: Env, bundle) -> dict[str, Any]:
    """A student of the original's architecture, from scratch, with KL(teacher || student) only
    (the paper's L_kd, T = 1), on the original's pretraining schedule (SGD, step decay); the
    epoch with the best validation accuracy is kept, as for the original."""
    import torch
    import torch.nn.functional as F
    from .checkpoints import load_model_checkpoint
    from .eval import accuracy
    from .losses import kd_loss
    from .models import build_model
    from .pretrain import DEFAULT_TEACHER, RECIPES, _lr_factor, ensure_pretrained
    tname = DEFAULT_TEACHER.get(env.dataset, "resnet56")
    teacher = load_model_checkpoint(ensure_pretrained(tname, env.dataset, data_root=env.data_root),
                                    build_model(tname, bundle.num_classes, bundle.in_channels)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    recipe = RECIPES[env.dataset]
    epochs = max(1, round(recipe.epochs * env.kd_epochs_mult))
    torch.manual_seed(job.seed)
    student = build_model(env.model, bundle.num_classes, bundle.in_channels)
    opt = torch.optim.SGD(student.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    loader = bundle.loader("train", recipe.batch_size, shuffle=True, augment=True, seed=job.seed)
    spe = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spe, recipe, epochs))
    best, best_key, history = None, None, []
    for ep in range(epochs):
        student.train()
        for x, _ in loader:
            with torch.no_grad():
                t = teacher(x)
            loss = kd_loss(student(x), t, "kl")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        va, vl = accuracy(student, bundle.loader("val", 512, shuffle=False, augment=False))
        history.append({"epoch": ep + 1, "val_acc": va, "val_loss": vl, "last_kd": float(loss.detach())})
        if best_key is None or (va, -vl) > best_key:
            best_key, best = (va, -vl), {k: v.detach().clone() for k, v in student.state_dict().items()}
    student.load_state_dict(best)
    student.eval()
    del F
    return {"teacher": tname, "epochs": epochs, "steps": epochs * spe, "history": history,
            "params": sum(p.numel() for p in student.parameters()), "eval": evaluate(student, bundle, env)}


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


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


# ---------------------------------------------------------------------------------------------- environment
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


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nernfast.report", description=__doc__,
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


# ---------------------------------------------------------------------------------------------- analyses
def analysis_specs(settings: dict[str, Any], work_dir: str, out_dir: str, grid_n: int,
                   original: str | None = None) -> list[dict[str, Any]]:
    """The analyses the report shows, as ``python -m nernfast.analyze`` argument lists, on seed 0's
    artefacts: progressive chain 0 (Fig. 2/8, 9, 7) and the three methods at the smallest size
    (Fig. 4b, 6)."""
    sizes, rounds, ph = settings["sizes"], settings["rounds"], settings["progressive_hidden"]
    art = lambda jid: str(Path(work_dir) / jid / "nern.safetensors")  # noqa: E731
    chain = [art(f"recon-h{ph}-s0")] + [art(f"prog-c0-r{r}") for r in range(2, rounds + 1)]
    chain_labels = [f"round{r}" for r in range(1, len(chain) + 1)]
    h = min(sizes)
    methods = [art(f"{m}-h{h}-s0") for m in ("recon", "baseline", "decoupled")]
    specs = []
    if 1 in settings["tables"]:
        specs += [
            {"name": "lowfreq_progressive", "title": f"Low-frequency ratio, progressive rounds (hidden {ph}; Fig. 2 / 8)",
             "args": ["lowfreq", "--checkpoint", *chain, "--labels", *chain_labels]},
            {"name": "interpolate_progressive", "title": f"Interpolation original -> round r (hidden {ph}; Fig. 9)",
             "args": ["interpolate", "--checkpoint", *chain, "--labels", *chain_labels, "--points", "11"]},
            {"name": "landscape_progressive", "title": f"Loss landscape: original, round 1, round {rounds} (Fig. 7)",
             "args": ["landscape", "--checkpoint", chain[0], chain[-1], "--labels", "round1", f"round{rounds}",
                      "--grid", str(grid_n)]}]
    if 2 in settings["tables"]:
        specs += [
            {"name": "layerdiff_methods", "title": f"Per-layer distance to the original, hidden {h} (Fig. 4b)",
             "args": ["layerdiff", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled"]},
            {"name": "lowfreq_methods", "title": f"Low-frequency ratio of the three methods, hidden {h}",
             "args": ["lowfreq", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled"]},
            {"name": "landscape_methods", "title": f"Loss landscape through recon-only, baseline, decoupled, hidden {h} (Fig. 6)",
             "args": ["landscape", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled",
                      "--grid", str(grid_n)]}]
    for sp in specs:
        sp["args"] += ["--out", str(Path(out_dir) / sp["name"])]
        if original and not (sp["args"][0] == "landscape" and sp["name"] == "landscape_methods"):
            sp["args"] += ["--original", original]  # the true original, also for later rounds
    return specs


def summarize_analysis(res: dict[str, Any]) -> str:
    """One deterministic paragraph of the numbers behind an analysis plot."""
    w = res["what"]
    if w == "lowfreq":
        parts = [f"{l}: mean {s['mean']:+.4f} (first / middle / last third of the layers {s['first_third']:+.4f} / "
                 f"{s['middle_third']:+.4f} / {s['last_third']:+.4f}; {s['positive_layers']} of {s['layers']} layers "
                 "smoother than the original)" for l, s in res["summary"].items()]
        return "ratio(reconstructed) − ratio(original) per layer; " + "; ".join(parts) + "."
    if w == "layerdiff":
        rel = res["relative"]
        parts = []
        for l, d in rel.items():
            v = list(d.values())
            n = len(v)
            parts.append(f"{l}: recon L2 {res['recon_l2'][l]:.5f}, mean relative distance first / last third "
                         f"{sum(v[:n // 3]) / max(1, n // 3):.3f} / {sum(v[2 * n // 3:]) / max(1, n - 2 * n // 3):.3f}")
        return "; ".join(parts) + "."
    if w == "interpolate":
        parts = []
        for l, c in res["curves"].items():
            best = max(c, key=lambda r: (r["accuracy"], -r["alpha"]))
            keep = [r["alpha"] for r in c if r["accuracy"] >= c[0]["accuracy"] - 0.01]
            last = max(a for a in keep if all(r["accuracy"] >= c[0]["accuracy"] - 0.01 for r in c if r["alpha"] <= a))
            parts.append(f"{l}: accuracy {100 * c[0]['accuracy']:.2f} % at a=0, {100 * c[-1]['accuracy']:.2f} % at a=1, "
                         f"best {100 * best['accuracy']:.2f} % at a={best['alpha']:.1f}, within 1 point of a=0 up to "
                         f"a={last:.1f} (recon error {next(r['recon_l2'] for r in c if r['alpha'] == last):.5f}); "
                         f"recon error at a=1 {c[-1]['recon_l2']:.5f}")
        return f"{res['split']} split; " + "; ".join(parts) + "."
    parts = []
    for s, vals in res["at_points"].items():
        grid_min = min(min(row) for row in res["values"][s]["loss"])
        parts.append(f"{s} loss at " + ", ".join(f"{n} {v['loss']:.4f}" for n, v in zip(res["labels"], vals))
                     + f" (grid minimum {grid_min:.4f})")
    return f"{len(res['xs'])} x {len(res['ys'])} grid; " + "; ".join(parts) + "."


def run_analyses(raw: Path, work_dir: str, docs_dir: Path, grid_n: int, log: Callable[[str], None] = print) -> None:
    from . import analyze
    manifest = json.loads((raw / "grid.json").read_text())
    orig = raw / "jobs" / "original.json"
    original = json.loads(orig.read_text()).get("checkpoint") if orig.exists() else None
    for sp in analysis_specs(manifest["settings"], work_dir, str(docs_dir / "analysis"), grid_n, original):
        missing = [x for x in sp["args"] if x.endswith(".safetensors") and not Path(x).exists()]
        if missing:
            log(f"skip analysis {sp['name']}: missing {', '.join(missing)}")
            continue
        log(f"analysis {sp['name']}")
        t0 = time.time()
        a = analyze.build_parser().parse_args(sp["args"])
        command = "python -m nernfast.analyze " + " ".join(shlex.quote(x) for x in sp["args"])
        try:
            res = analyze.run(a, command)
        except (ValueError, OSError) as e:  # e.g. two identical solutions span no plane
            log(f"analysis {sp['name']} not drawn: {e}")
            write_json(raw / "analysis" / f"{sp['name']}.json",
                       {"title": sp["title"], "command": command, "summary": f"Not drawn: {e}.", "plots": []})
            continue
        write_json(raw / "analysis" / f"{sp['name']}.json",
                   {"title": sp["title"], "command": command, "summary": summarize_analysis(res),
                    "plots": [os.path.relpath(res["plot"], docs_dir)], "seconds": round(time.time() - t0, 1)})


# ---------------------------------------------------------------------------------------------- render
def load_raw(raw: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    manifest = json.loads((raw / "grid.json").read_text())
    recs = {p.stem: json.loads(p.read_text()) for p in sorted((raw / "jobs").glob("*.json"))}
    return manifest, recs


def render_from(raw: Path, out: Path, notes: Path | None = None, plots: bool = True) -> str:
    manifest, recs = load_raw(raw)
    analysis = {}
    adir = raw / "analysis"
    if adir.is_dir():
        analysis = {p.stem: json.loads(p.read_text()) for p in sorted(adir.glob("*.json"))}
    plot_files: list[str] = []
    if plots:
        from .analysis.report_plots import report_plots
        plot_files = report_plots(manifest, recs, out.parent / "plots")
    text = render(manifest, recs, analysis, notes.read_text() if notes and notes.exists() else None,
                  [os.path.relpath(p, out.parent) for p in plot_files])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text


def _pct(x: float | None, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}"


def _pp(x: float) -> str:
    """A difference in percentage points, signed."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:+.2f}"


def _ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def _dci(lo: float, hi: float) -> str:
    return "n/a" if math.isnan(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _num(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def render(manifest: dict[str, Any], recs: dict[str, dict[str, Any]], analysis: dict[str, Any] | None = None,
           notes: str | None = None, plot_files: list[str] | None = None) -> str:
    """The report as Markdown; a pure function of its arguments."""
    from .analysis import stats
    S = manifest["settings"]
    sizes, seeds, rounds, ph = S["sizes"], S["seeds"], S["rounds"], S["progressive_hidden"]
    L: list[str] = []
    orig = recs.get("original")
    n_test = orig["eval"]["num_examples"] if orig else None

    def metric(jid: str, key: str) -> float | None:
        r = recs.get(jid)
        return None if r is None else r["eval"].get(key)

    def group(ids: list[str], key: str) -> list[float]:
        return [v for v in (metric(i, key) for i in ids) if v is not None]

    def cell(ids: list[str], key: str, ci: bool = True) -> str:
        xs = group(ids, key)
        if not xs:
            return "-"
        m, sd = stats.mean_std(xs)
        s = f"{100 * m:.2f} ± {100 * sd:.2f}" if len(xs) > 1 else f"{100 * m:.2f}"
        if ci and len(xs) > 1:
            _, lo, hi = stats.t_interval(xs)
            s += f" {_ci(lo, hi)}"
        return s + ("" if len(xs) == len(ids) else f" (n={len(xs)})")

    def single(jid: str, key: str) -> str:
        r = recs.get(jid)
        if r is None or r["eval"].get(key) is None:
            return "-"
        v, n = r["eval"][key], r["eval"]["num_examples"]
        lo, hi = stats.wilson(round(v * n), n)
        return f"{100 * v:.2f} {_ci(lo, hi)}"

    def compare(a_ids: list[str], b_ids: list[str], key: str = "accuracy") -> tuple[str, str, str, str]:
        """(mean diff, 95 % CI, verdict, n) of a - b paired by seed; with one pair, paired by image."""
        pairs = [(recs[a], recs[b]) for a, b in zip(a_ids, b_ids) if a in recs and b in recs]
        if not pairs:
            return "-", "-", "not run", "0"
        if len(pairs) == 1 and key == "accuracy":
            ra, rb = pairs[0]
            ca, cb = ra["eval"]["correct"], rb["eval"]["correct"]
            if ca == cb:
                return _pp(0.0), "-", "identical on every test image", "1"
            m, lo, hi = stats.paired_diff([int(c) for c in ca], [int(c) for c in cb])
            return _pp(m), _dci(lo, hi), stats.verdict(lo, hi) + " (per image)", "1"
        if key == "accuracy":
            ca = [ra["eval"]["correct"] for ra, _ in pairs]
            cb = [rb["eval"]["correct"] for _, rb in pairs]
            if ca == cb:
                return _pp(0.0), "-", "identical on every test image", str(len(pairs))
            m, lo, hi = stats.combined_paired_diff([[int(c) for c in v] for v in ca], [[int(c) for c in v] for v in cb])
        else:  # no per-image outcomes kept: the seed interval, widened to an unpaired binomial one
            xa = [ra["eval"][key] for ra, _ in pairs]
            xb = [rb["eval"][key] for _, rb in pairs]
            m, lo, hi = stats.seed_paired_diff(xa, xb)
            n = pairs[0][0]["eval"]["num_examples"]
            pa, pb = sum(xa) / len(xa), sum(xb) / len(xb)
            h = stats.Z95 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
            lo, hi = (pa - pb - h, pa - pb + h) if math.isnan(lo) else (min(lo, pa - pb - h), max(hi, pa - pb + h))
        return _pp(m), _dci(lo, hi), stats.verdict(lo, hi), str(len(pairs))

    seeds_t3 = S.get("seeds_t3", seeds)

    def ids(method: str, h: int | None = None) -> list[str]:
        n = seeds_t3 if method in ("gbaseline", "tdecoupled", "kdstudent") else seeds
        return [f"{method}-h{h}-s{s}" if h is not None else f"{method}-s{s}" for s in range(n)]

    def chain_ids(r: int) -> list[str]:
        return [f"recon-h{ph}-s{c}" if r == 1 else f"prog-c{c}-r{r}" for c in range(seeds)]

    def kept(jids: list[str]) -> str:
        """The step each run kept (its last phase's best evaluation), per seed: step/steps."""
        out = []
        for i in jids:
            st = (recs.get(i) or {}).get("stages") or []
            if st:
                out.append(f"{st[-1].get('best_step')}/{st[-1].get('steps_run')}")
        return ", ".join(out) if out else "-"

    def orig_ids(k: int) -> list[str]:
        return ["original"] * k

    def cr(h: int) -> str:
        for s in range(seeds):
            for m in ("recon", "baseline", "decoupled", "gbaseline", "tdecoupled"):
                r = recs.get(f"{m}-h{h}-s{s}")
                if r:
                    return f"{r['sizes']['compression_ratio']:.2f}"
        return "?"

    done_ids = [j for j in manifest["job_ids"] if j in recs]
    L += ["# nernfast reproduction report", "",
          "Generated by `python -m nernfast.report` from the raw JSON in `docs/raw/` "
          "(`python -m nernfast.report --render-only` re-renders this file). Every number below was "
          "produced by the code in this repository; nothing is copied from the paper.", ""]
    L += ["## Setting", ""]
    L += [f"- Dataset **{S['dataset']}**, original **{S['model']}**, predictor sizes (hidden) "
          f"{', '.join(f'{h} (CR {cr(h)})' for h in sizes)}; CR = predictor parameters / predicted conv parameters.",
          f"- Scale **{S['scale']}**: every phase's steps x {S['mult']} of the recipe YAMLs "
          f"(`nernfast/configs/*.yaml`); {seeds} seed(s)"
          + (f" (Table 3: {S['seeds_t3']})" if S.get("seeds_t3", seeds) != seeds else "")
          + f"; {rounds} progressive round(s) at hidden {ph}. "
          "See `python -m nernfast.report --help` for what each scale means.",
          f"- Jobs finished: {len(done_ids)} of {len(manifest['job_ids'])}"
          + ("" if len(done_ids) == len(manifest["job_ids"]) else
             " (missing: " + ", ".join(j for j in manifest["job_ids"] if j not in recs) + ")") + "."]
    if n_test:
        L += [f"- Test set: {n_test} images, so one image is {100 / n_test:.2f} points of accuracy. "
              "Intervals are 95 %: Wilson for a single accuracy, Student t over seeds for means "
              "(`mean ± std [CI]`), and for differences of accuracy the wider of the t-interval of the per-seed "
              "paired differences (same seed index: training noise) and the paired per-image interval of the "
              "seed-averaged differences (same test images: test-set noise); with a single pair, the paired "
              "per-image interval; robustness differences (no per-image outcomes kept) the wider of the seed "
              "t-interval and an unpaired binomial interval. "
              "**within noise** = the interval contains 0."]
    L += ["- Robustness: OOD = the built-in corruption suite (8 corruptions x 5 severities of the test "
          "set; no digits-C exists), FGSM / I-FGSM in pixel space at the dataset's headline radius "
          + (_attack_desc(orig) if orig else "") + "." if S.get("robustness", True) else
          "- Robustness figures were not computed (`--no-robustness`)."]
    L += [""]

    # ---------------- Table 1
    if 1 in S["tables"]:
        L += ["## Table 1: progressive reconstruction (CR > 1)", "",
              f"Hidden {ph} (CR {cr(ph)}), recon-only objective; round r+1 reconstructs round r's network. "
              f"{seeds} independent chain(s) (chain s uses seed s + 1000 (r - 1)); the paper instead keeps the "
              "best of 3 seeds per round by validation accuracy. Recon. error is NeRN's L2 "
              "sqrt(sum ||W - W_hat||^2 / #weights) of the predicted convs.", ""]
        head = ["", "Original"] + [f"Round {r}" for r in range(1, rounds + 1)]
        L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        L.append("| Test accuracy % | " + single("original", "accuracy") + " | "
                 + " | ".join(cell(chain_ids(r), "accuracy") for r in range(1, rounds + 1)) + " |")
        L.append("| Δ vs original (pp) [95 % CI] | - | " + " | ".join(
            "{} {} {}".format(*compare(chain_ids(r), orig_ids(seeds))[:3]) for r in range(1, rounds + 1)) + " |")
        L.append("| Δ vs round 1 (pp) [95 % CI] | - | - | " + " | ".join(
            "{} {} {}".format(*compare(chain_ids(r), chain_ids(1))[:3]) for r in range(2, rounds + 1)) + " |")

        def rec_cell(r: int, key: str) -> str:
            xs = [recs[i][key] for i in chain_ids(r) if i in recs and recs[i].get(key) is not None]
            if not xs:
                return "-"
            m, sd = stats.mean_std(xs)
            return f"{m:.5f} ± {sd:.5f}" if len(xs) > 1 else f"{m:.5f}"
        L.append("| Recon. error vs original | - | " + " | ".join(rec_cell(r, "recon_l2_vs_original")
                                                               for r in range(1, rounds + 1)) + " |")
        L.append("| Recon. error vs its target | - | " + " | ".join(rec_cell(r, "recon_l2_vs_target")
                                                                 for r in range(1, rounds + 1)) + " |")
        if S.get("robustness", True):
            for key, name in (("ood_accuracy", "OOD %"), ("fgsm_accuracy", "FGSM %"), ("ifgsm_accuracy", "I-FGSM %")):
                L.append(f"| {name} | " + single("original", key) + " | "
                         + " | ".join(cell(chain_ids(r), key) for r in range(1, rounds + 1)) + " |")
        L.append("| Kept step / steps, per chain | - | " + " | ".join(kept(chain_ids(r)) for r in range(1, rounds + 1)) + " |")
        val = []
        for r in range(1, rounds + 1):
            xs = [recs[i]["stages"][-1]["val_acc"] for i in chain_ids(r) if i in recs]
            val.append(f"{100 * stats.mean_std(xs)[0]:.2f}" if xs else "-")
        L.append("| Val accuracy % (selection) | - | " + " | ".join(val) + " |")
        stops = _progressive_stops(recs, seeds, rounds, chain_ids)
        L += ["", f"The recipe's stop rule (stop when a round's validation accuracy does not improve) would have "
              f"kept round {stops} for the chain(s) in seed order.", ""]

    # ---------------- Table 2
    if 2 in S["tables"]:
        L += ["## Table 2: recon-only vs baseline vs decoupled", "",
              "Baseline = NeRN's joint loss (reconstruction warm-up, then + α·FMD + β·KD, α = β = 1e-4); "
              "decoupled = the recon-only predictor of the same size and seed, then a distillation-only "
              "phase (KD + λ·recon, λ = 0.1). Accuracies in %, mean ± std over seeds [95 % t-CI]. "
              "Recon. error: to the original, mean over seeds. Kept step: the evaluation point each run "
              "kept by its selection rule (validation accuracy; ties keep the earlier step), per seed; "
              "0 means the initial predictor was kept.", ""]
        cols = ["Hidden (CR)", "Method", "Accuracy", "OOD", "FGSM", "I-FGSM", "Recon. error", "Kept step / steps"]
        L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        if orig:
            L.append(f"| - | Original | {single('original', 'accuracy')} | {single('original', 'ood_accuracy')} | "
                     f"{single('original', 'fgsm_accuracy')} | {single('original', 'ifgsm_accuracy')} | 0 | - |")
        for h in sizes:
            for m in ("recon", "baseline", "decoupled"):
                ii = ids(m, h)
                errs = [recs[i]["recon_l2_vs_original"] for i in ii if i in recs]
                L.append(f"| {h} ({cr(h)}) | {METHOD_LABEL[m]} | {cell(ii, 'accuracy')} | {cell(ii, 'ood_accuracy', False)} | "
                         f"{cell(ii, 'fgsm_accuracy', False)} | {cell(ii, 'ifgsm_accuracy', False)} | "
                         f"{_num(stats.mean_std(errs)[0] if errs else None, '.5f')} | {kept(ii)} |")
        L += ["", "Paired differences of test accuracy (percentage points, same seeds, same test images):", "",
              "| Hidden (CR) | Comparison | Δ accuracy (pp) | 95 % CI | verdict | pairs |", "|---|---|---|---|---|---|"]
        for h in sizes:
            for a, b in (("decoupled", "baseline"), ("decoupled", "recon"), ("baseline", "recon"),
                         ("recon", "original"), ("decoupled", "original")):
                bi = orig_ids(seeds) if b == "original" else ids(b, h)
                d = compare(ids(a, h), bi)
                L.append(f"| {h} ({cr(h)}) | {METHOD_LABEL[a]} − {METHOD_LABEL[b]} | {d[0]} | {d[1]} | {d[2]} | {d[3]} |")
        L += [""]

    # ---------------- Table 3
    if 3 in S["tables"]:
        t = recs.get("teacher")
        L += ["## Table 3: distillation from a teacher", "",
              f"Teacher: {t['model'] if t else 'the dataset default'} ({single('teacher', 'accuracy')} %); its "
              "logits replace the original's in the KD term. The baseline with guidance has no feature-map "
              "term (the architectures differ), as in the paper. The KD student is the original's "
              "architecture trained from random initialisation with the KD loss only.", ""]
        cols = ["Hidden (CR)", "Method", "Accuracy", "OOD", "FGSM", "I-FGSM", "Kept step / steps"]
        L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for jid in ("original", "teacher"):
            if jid in recs:
                L.append(f"| - | {METHOD_LABEL[jid]} ({recs[jid]['model']}) | {single(jid, 'accuracy')} | "
                         f"{single(jid, 'ood_accuracy')} | {single(jid, 'fgsm_accuracy')} | {single(jid, 'ifgsm_accuracy')} | - |")
        ki = ids("kdstudent")
        epochs = [str(recs[i].get("epochs")) for i in ki if i in recs]
        L.append(f"| - | {METHOD_LABEL['kdstudent']} | {cell(ki, 'accuracy')} | {cell(ki, 'ood_accuracy', False)} | "
                 f"{cell(ki, 'fgsm_accuracy', False)} | {cell(ki, 'ifgsm_accuracy', False)} | "
                 f"{', '.join(epochs) or '-'} epochs |")
        for h in sizes:
            for m in ("gbaseline", "tdecoupled"):
                ii = ids(m, h)
                L.append(f"| {h} ({cr(h)}) | {METHOD_LABEL[m]} | {cell(ii, 'accuracy')} | {cell(ii, 'ood_accuracy', False)} | "
                         f"{cell(ii, 'fgsm_accuracy', False)} | {cell(ii, 'ifgsm_accuracy', False)} | {kept(ii)} |")
        L += ["", "| Hidden (CR) | Comparison | Δ accuracy (pp) | 95 % CI | verdict | pairs |", "|---|---|---|---|---|---|"]
        for h in sizes:
            for a, b in (("tdecoupled", "gbaseline"), ("tdecoupled", "decoupled"), ("tdecoupled", "original"),
                         ("tdecoupled", "kdstudent")):
                bi = orig_ids(seeds) if b == "original" else ids(b) if b == "kdstudent" else ids(b, h)
                d = compare(ids(a, h), bi)
                L.append(f"| {h} ({cr(h)}) | {METHOD_LABEL[a]} − {METHOD_LABEL[b]} | {d[0]} | {d[1]} | {d[2]} | {d[3]} |")
        L += [""]

    # ---------------- claims
    L += _claims(S, recs, compare, ids, chain_ids, orig_ids, cr)

    # ---------------- analyses
    if analysis:
        L += _analysis_section(analysis)
    if plot_files:
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plot_files] + [""]

    # ---------------- provenance
    L += ["## How this was produced", ""]
    for k, inv in enumerate(manifest.get("invocations", [])):
        m = inv.get("machine", {})
        L += [f"Invocation {k + 1}: `{inv['command']}`", "",
              f"- started {inv.get('start', '?')}, ended {inv.get('end', 'not recorded (interrupted)')}, "
              f"wall {inv.get('wall_seconds', '?')} s; {inv.get('jobs')} parallel run(s) x {inv.get('threads')} torch thread(s)",
              f"- git commit `{m.get('git_commit', '?')}`{' (tracked files modified)' if m.get('git_dirty') else ''}; "
              f"python {m.get('python')}, torch {m.get('torch')}; {m.get('platform')}",
              f"- machine: {m.get('cpu') or '?'}, {m.get('cpu_count')} logical CPU(s), CUDA {m.get('cuda')}; the CPU "
              "was shared with other work, so wall times are not benchmarks",
              f"- `uptime` at start: {m.get('uptime', '?')}"
              + (f"; at end: {inv['uptime_end']}" if inv.get("uptime_end") else ""), ""]
    walls = [r.get("wall_seconds") or 0 for r in recs.values()]
    L += [f"Sum of per-run wall times: {sum(walls) / 60:.1f} min over {len(recs)} runs.", ""]
    if notes:
        L += ["## Discussion", "", notes.strip(), ""]
    return "\n".join(L).rstrip() + "\n"


def _attack_desc(orig: dict[str, Any]) -> str:
    s = orig["eval"].get("settings") or {}
    if not s.get("fgsm_eps"):
        return ""
    return (f"(FGSM eps {s['fgsm_eps'][0]:.4g}; I-FGSM eps {s['ifgsm_eps']:.4g}, {s['ifgsm_steps']} steps of "
            f"{s['ifgsm_alpha']:.4g}; pixels in [0, 1])")


def _progressive_stops(recs, seeds, rounds, chain_ids) -> str:
    out = []
    for c in range(seeds):
        prev, kept = None, None
        for r in range(1, rounds + 1):
            rid = chain_ids(r)[c]
            if rid not in recs:
                break
            v = recs[rid]["stages"][-1]["val_acc"]
            if prev is not None and v <= prev:
                break
            prev, kept = v, r
        out.append("-" if kept is None else str(kept))
    return ", ".join(out)


def _claims(S, recs, compare, ids, chain_ids, orig_ids, cr) -> list[str]:
    """The paper's claims next to what these runs show (verdicts from the 95 % intervals)."""
    sizes, seeds, rounds, ph = S["sizes"], S["seeds"], S["rounds"], S["progressive_hidden"]
    rows = []

    def row(claim: str, where: str, d: tuple[str, str, str, str]) -> None:
        rows.append(f"| {claim} | {where} | {d[0]} {d[1]} | {d[2]} |")

    if 1 in S["tables"] or 2 in S["tables"]:
        row("Recon-only with a large predictor (CR > 1) matches or beats the original (§4.1: +0.1 to +0.3)",
            f"hidden {ph} (CR {cr(ph)})", compare(chain_ids(1), orig_ids(seeds)))
    if 1 in S["tables"] and rounds > 1:
        row("Further progressive rounds improve accuracy (§4.1: up to +0.6 over the original)",
            f"round {rounds} − round 1", compare(chain_ids(rounds), chain_ids(1)))
        row("... and the last round beats the original", f"round {rounds} − original",
            compare(chain_ids(rounds), orig_ids(seeds)))
        if S.get("robustness", True):
            row("Progressive rounds are more robust to FGSM than the original (§4.1)", f"round {rounds}, FGSM",
                compare(chain_ids(rounds), orig_ids(seeds), "fgsm_accuracy"))
    if 2 in S["tables"]:
        for h in sizes:
            if recs.get(f"recon-h{h}-s0") and recs[f"recon-h{h}-s0"]["sizes"]["compression_ratio"] < 1:
                row("Decoupled beats the baseline at CR < 1 (§4.2, Table 2)", f"hidden {h} (CR {cr(h)})",
                    compare(ids("decoupled", h), ids("baseline", h)))
        for h in sizes:
            if recs.get(f"recon-h{h}-s0") and recs[f"recon-h{h}-s0"]["sizes"]["compression_ratio"] < 1:
                row("Decoupled recovers the original with a predictor smaller than it (§4.2)",
                    f"hidden {h} (CR {cr(h)})", compare(ids("decoupled", h), orig_ids(seeds)))
    if 3 in S["tables"]:
        for h in sizes:
            row("With a teacher, decoupled beats the guided baseline (§4.3, Table 3)", f"hidden {h} (CR {cr(h)})",
                compare(ids("tdecoupled", h), ids("gbaseline", h)))
        for h in sizes:
            row("With a teacher, decoupled beats the original (§4.3)", f"hidden {h} (CR {cr(h)})",
                compare(ids("tdecoupled", h), orig_ids(seeds)))
        h = max(sizes)
        row("Teacher-decoupled NeRN beats a KD student trained from scratch (§4.3)", f"hidden {h} (CR {cr(h)})",
            compare(ids("tdecoupled", h), ids("kdstudent")))
    if not rows:
        return []
    return ["## The paper's claims against these runs", "",
            "Verdicts read off the 95 % intervals of the paired differences above (pp = percentage points). "
            "\"within noise\" means these runs can neither confirm nor refute the claim.", "",
            "| Claim (paper) | Here | Δ (pp) [95 % CI] | Verdict |", "|---|---|---|---|"] + rows + [""]


def _analysis_section(analysis: dict[str, Any]) -> list[str]:
    L = ["## Analyses", "", "Produced with `python -m nernfast.analyze` on this grid's artefacts "
         "(see `docs/analysis/`; numbers in `docs/raw/analysis/`).", ""]
    for name in sorted(analysis):
        a = analysis[name]
        L += [f"### {a.get('title', name)}", "", a.get("summary", ""), ""]
        if a.get("command"):
            L += [f"`{a['command']}`", ""]
        for p in a.get("plots", []):
            L += [f"![{Path(p).stem}]({p})", ""]
    return L


if __name__ == "__main__":
    sys.exit(main())
