"""Table 3's KD student: the original's architecture from random initialisation, trained with the
KD loss only, through ``nernfast.pretrain.train_classifier`` (its recipe, schedule and selection)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from .grid import Job
from .runs import Env, default_teacher, evaluate


def train_kd_student(job: Job, env: Env, bundle) -> dict[str, Any]:
    """A student of the original's architecture, from scratch, with KL(teacher || student) only
    (the paper's L_kd, T = 1), on the original's pretraining schedule (SGD, step decay) with its
    epochs scaled by ``env.kd_epochs_mult``; the epoch with the best validation accuracy is kept,
    as for the original."""
    import torch
    from ..checkpoints import load_model_checkpoint
    from ..losses import kd_loss
    from ..models import build_model
    from ..pretrain import DEFAULT_TEACHER, ensure_pretrained, recipe_for, resolve_device, train_classifier
    device = resolve_device(env.device)
    tname = DEFAULT_TEACHER.get(env.dataset, "resnet56")
    original = load_model_checkpoint(ensure_pretrained(env.model, env.dataset, data_root=env.data_root),
                                     build_model(env.model, bundle.num_classes, bundle.in_channels))
    teacher = default_teacher(env, bundle, original)[0].to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    recipe = recipe_for(env.dataset, env.model)
    recipe = replace(recipe, epochs=max(1, round(recipe.epochs * env.kd_epochs_mult)))

    def kd(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(logits, t, "kl")
    torch.manual_seed(job.seed)
    student = build_model(env.model, bundle.num_classes, bundle.in_channels)
    res = train_classifier(student, bundle, recipe, seed=job.seed, device=device, progress=False, loss_fn=kd)
    student.eval()
    return {"teacher": tname, "epochs": recipe.epochs, "steps": res["steps"], "history": res["history"],
            "params": sum(p.numel() for p in student.parameters()), "eval": evaluate(student, bundle, env)}
