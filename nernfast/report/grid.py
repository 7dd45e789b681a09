"""The grid: which runs the report needs (``Job``), in which order, and the ``--set`` overrides that
scale a recipe's phase lengths."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"mult": 0.02, "seeds": 1, "rounds": 2, "kd_epochs_mult": 0.05},
    "small": {"mult": 0.1, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
    "medium": {"mult": 0.5, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
    "full": {"mult": 1.0, "seeds": 3, "rounds": 3, "kd_epochs_mult": 1.0},
}
DEFAULT_SIZES = (100, 140, 280)


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


def scaled_sets(recipe: str, mult: float, config: str | None, zero_phase1: bool = False) -> list[str]:
    """``--set`` overrides that multiply a recipe's phase lengths by ``mult``."""
    from ..config import recipe_phases, resolve
    base = resolve(recipe, config)
    sets = []
    for ph in recipe_phases(recipe):
        p = getattr(base, ph)
        steps = 0 if (ph == "phase1" and zero_phase1) else max(1, round(p.steps * mult))
        sets += [f"{ph}.steps={steps}", f"{ph}.warmup_steps={min(steps, round(p.warmup_steps * mult))}",
                 f"{ph}.lr_warmup_steps={min(steps, round(p.lr_warmup_steps * mult))}",
                 f"{ph}.eval_every={max(1, round(p.eval_every * mult))}",
                 f"{ph}.checkpoint_every={max(1, round(p.checkpoint_every * mult))}"]
    return sets

