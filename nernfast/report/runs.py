"""One job of the grid: pretrain/evaluate the original or the teacher, train a NeRN through the
trainer's Python API, or a KD student; each leaves ``RAW/jobs/<id>.json``."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .grid import Job, scaled_sets


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
    from ..eval import attack_defaults, evaluate_model
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
    from ..analysis.weights import load_weights
    from ..checkpoints import save_checkpoint_atomic
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
    from ..data import get_dataset
    bundle = get_dataset(env.dataset, env.data_root, seed=0)
    rec: dict[str, Any] = {"job": asdict(job)}
    if job.kind in ("original", "teacher"):
        from ..checkpoints import load_model_checkpoint
        from ..models import build_model
        from ..pretrain import DEFAULT_TEACHER, ensure_pretrained
        path = ensure_pretrained(env.model, env.dataset, data_root=env.data_root)
        model = load_model_checkpoint(path, build_model(env.model, bundle.num_classes, bundle.in_channels)).eval()
        name, source = env.model, str(path)
        if job.kind == "teacher":
            name = DEFAULT_TEACHER.get(env.dataset, "resnet56")
            model, source = default_teacher(env, bundle, model)
        rec.update(model=name, checkpoint=source, params=sum(p.numel() for p in model.parameters()),
                   eval=evaluate(model.eval(), bundle, env))
    elif job.kind == "kdstudent":
        from .kd_student import train_kd_student
        rec.update(train_kd_student(job, env, bundle))
    else:
        rec.update(train_nern(job, env, bundle))
    rec["wall_seconds"] = round(time.time() - t0, 1)
    write_json(Path(env.raw_dir) / "jobs" / f"{job.id}.json", rec)
    return rec


def default_teacher(env: Env, bundle, original: "torch.nn.Module") -> tuple["torch.nn.Module", str]:
    """The dataset's default teacher (nernfast.pretrain.DEFAULT_TEACHER: one network, an ensemble
    ``NAMExK`` or ``original+flip``), built as the trainer builds it; returns (network, source)."""
    from types import SimpleNamespace

    from ..checkpoints import load_model_checkpoint
    from ..models import build_model
    from ..pretrain import DEFAULT_TEACHER, ensure_pretrained
    from ..teachers import build_ensemble, build_teacher, parse_teacher

    def load(name: str, path: str | None):
        path = path or ensure_pretrained(name, env.dataset, data_root=env.data_root)
        net = load_model_checkpoint(path, build_model(name, bundle.num_classes, bundle.in_channels))
        return SimpleNamespace(model=net, source=str(path))
    return build_teacher(parse_teacher(DEFAULT_TEACHER.get(env.dataset, "resnet56")), original, env.dataset, load,
                         lambda name, k: build_ensemble(name, k, bundle, env.dataset, env.data_root, env.device))


def train_nern(job: Job, env: Env, bundle) -> dict[str, Any]:
    from ..analysis.weights import conv_weights, load_weights, recon_l2
    from ..artefact import load_nern
    from ..config import resolve, to_dict
    from ..models import build_model
    from ..train import run
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
    from ..pretrain import ensure_pretrained
    orig = load_weights(ensure_pretrained(env.model, env.dataset, data_root=env.data_root), model=env.model)
    names = list(nern.plan.names)
    rec["recon_l2_vs_original"] = recon_l2(conv_weights(net, names), conv_weights(orig.model, names))
    rec["recon_l2_vs_target"] = res["stages"][-1].get("recon_l2") if res["stages"] else None
    return rec


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)

