"""Everything a run needs besides the predictor: data, the original, the teacher, output, logging."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import RunConfig
from ..models import build_model
from .logger import RunLogger
from .phase import copy_frozen


@dataclass
class Context:
    cfg: RunConfig
    device: torch.device
    bundle: Any
    original: nn.Module
    original_source: str
    teacher: nn.Module | None
    teacher_source: str | None
    architecture: dict[str, Any]
    out: Path
    logger: RunLogger
    rank: int = 0
    world: int = 1
    eval_model: nn.Module | None = None
    teacher_check: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def needs_teacher(cfg: RunConfig) -> bool:
    phases = [cfg.phase1] + ([cfg.phase2] if cfg.recipe in ("decoupled", "teacher_decoupled", "noise_decoupled") else [])
    return any(p.distill_from == "teacher" and (p.kd_weight or p.fmd_weight) for p in phases)


def load_network(name: str, path: str | None, bundle: Any, cfg: RunConfig, device: torch.device,
                 progress: bool = False) -> tuple[nn.Module, str]:
    """A trained network: from a checkpoint or nernfast artefact at ``path``, else pretrained here (cached)."""
    from ..artefact import is_artefact, load as load_artefact
    from ..checkpoints import load_model_checkpoint
    from ..pretrain import ensure_pretrained
    if path is None:
        path = str(ensure_pretrained(name, cfg.dataset, data_root=cfg.data_root, device=str(device),
                                     epochs=cfg.pretrain_epochs, progress=progress))
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} not found; pass an existing file, or omit it to pretrain {name} here")
    if is_artefact(path):
        from ..artefact import read_artefact
        arch = read_artefact(path)[0].get("architecture") or {}
        return load_artefact(path, device=device), f"nernfast artefact {path} ({arch.get('name', 'custom model')})"
    model = build_model(name, bundle.num_classes, bundle.in_channels)
    return load_model_checkpoint(path, model), path


def build_context(cfg: RunConfig, out: Path, progress: bool = True) -> Context:
    from ..data import get_dataset
    from ..pretrain import DEFAULT_TEACHER
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    bundle = get_dataset(cfg.dataset, cfg.data_root, seed=0)
    logger = RunLogger(out, rank, progress)
    original, osrc = load_network(cfg.model, cfg.original, bundle, cfg, device, progress)
    original = copy_frozen(original).to(device)
    teacher, tsrc, check = None, None, None
    if needs_teacher(cfg):
        from ..teachers import build_ensemble, compare_teacher, parse_teacher, teacher_warning
        spec = parse_teacher(cfg.teacher or DEFAULT_TEACHER.get(cfg.dataset, "resnet56"))
        if spec.members:
            teacher, tsrc = build_ensemble(spec.name, spec.members, bundle, cfg.dataset, cfg.data_root, str(device),
                                           cfg.pretrain_epochs, progress)
        else:
            teacher, tsrc = load_network(spec.name, spec.path, bundle, cfg, device, progress)
        teacher = copy_frozen(teacher).to(device)
        check = compare_teacher(teacher, original, bundle, device, cfg.eval.batch_size)
        warning = teacher_warning(check)
        if warning and rank == 0:
            logger.info(warning)
    if cfg.channels_last:
        original = original.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    arch = {"name": cfg.model, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels}
    if cfg.original and Path(cfg.original).exists():
        from ..artefact import is_artefact, read_artefact
        if is_artefact(cfg.original):  # a decoded artefact keeps the architecture it was built from
            arch = read_artefact(cfg.original)[0].get("architecture") or {}
    return Context(cfg, device, bundle, original, osrc, teacher, tsrc, arch, out, logger, rank, world,
                   teacher_check=check)
