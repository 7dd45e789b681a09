"""Everything a run needs besides the predictor: data, the original, the teacher, output, logging."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .. import numerics
from ..analysis.lowfreq import spectrum_check, spectrum_warning
from ..analysis.weights import conv_weights
from ..config import RunConfig, recipe_phases
from ..data import DataBundle
from ..models import build_model, copy_frozen
from ..selection import select_layers
from .logger import RunLogger


@dataclass
class Context:
    cfg: RunConfig
    device: torch.device
    bundle: DataBundle
    original: nn.Module                  # frozen, on ``device``
    original_source: str
    teacher: nn.Module | None            # frozen, on ``device``; None when no phase distils from it
    teacher_source: str | None
    architecture: dict[str, Any]         # what the artefact records to rebuild the model
    out: Path
    logger: RunLogger
    rank: int = 0
    world: int = 1
    teacher_check: dict[str, Any] | None = None   # nernfast.teachers.compare_teacher, when there is a teacher
    original_check: dict[str, Any] | None = None  # nernfast.analysis.lowfreq.spectrum_check of its conv weights
    precision: str = "float32"           # cfg.precision resolved for this device (nernfast.numerics)
    channels_last: bool = False          # cfg.channels_last resolved likewise


def needs_teacher(cfg: RunConfig) -> bool:
    phases = [getattr(cfg, key) for key in recipe_phases(cfg.recipe)]
    return any(p.distill_from == "teacher" and (p.kd_weight or p.fmd_weight) for p in phases)


@dataclass
class Network:
    """A trained network loaded for a run."""
    model: nn.Module
    source: str                           # where it came from, for the results
    architecture: dict[str, Any] | None   # recorded by a nernfast artefact; None for checkpoints


def load_network(name: str, path: str | None, bundle: DataBundle, cfg: RunConfig, device: torch.device,
                 trust_pickle: bool = False, progress: bool = False) -> Network:
    """A trained network: from a checkpoint or nernfast artefact at ``path`` (read once), else
    pretrained here (cached). ``trust_pickle``: see nernfast.checkpoints."""
    from ..checkpoints import file_format, load_model_checkpoint
    from ..pretrain import ensure_pretrained
    if path is None:
        path = str(ensure_pretrained(name, cfg.dataset, data_root=cfg.data_root, device=str(device),
                                     epochs=cfg.pretrain_epochs, progress=progress))
    if not Path(path).exists():
        raise FileNotFoundError(f"checkpoint {path} not found; pass an existing file, or omit it to pretrain {name} here")
    if file_format(path) == "artefact":
        from ..artefact import load_nern
        nern, model, meta = load_nern(path, device=device)
        nern.materialize_(model)
        arch = meta.get("architecture") or {}
        return Network(model.eval(), f"nernfast artefact {path} ({arch.get('name', 'custom model')})", arch)
    model = build_model(name, bundle.num_classes, bundle.in_channels)
    return Network(load_model_checkpoint(path, model, trust_pickle), path, None)


def load_teacher(cfg: RunConfig, original: nn.Module, bundle: DataBundle, device: torch.device,
                 trust_pickle: bool = False, progress: bool = False) -> tuple[nn.Module, str]:
    """The teacher ``cfg`` names (``cfg.teacher``, else the dataset's default) around ``original``:
    frozen, on ``device``, with a line saying what it is."""
    from ..pretrain import DEFAULT_TEACHER
    from ..teachers import build_ensemble, build_teacher, parse_teacher
    t, source = build_teacher(
        parse_teacher(cfg.teacher or DEFAULT_TEACHER.get(cfg.dataset, "resnet56")), original, cfg.dataset,
        load=lambda name, path: load_network(name, path, bundle, cfg, device, trust_pickle, progress),
        ensemble=lambda name, k: build_ensemble(name, k, bundle, cfg.dataset, cfg.data_root, str(device),
                                                cfg.pretrain_epochs, progress))
    return copy_frozen(t).to(device), source


def build_context(cfg: RunConfig, out: Path, progress: bool = True, trust_pickle: bool = False) -> Context:
    """Load the data and the networks (nothing is written to ``out`` here)."""
    from ..cli import check_device
    from ..data import get_dataset
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    device = check_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    bundle = get_dataset(cfg.dataset, cfg.data_root, seed=0)
    logger = RunLogger(out, rank, progress)
    orig = load_network(cfg.model, cfg.original, bundle, cfg, device, trust_pickle, progress)
    original = copy_frozen(orig.model).to(device)
    teacher, tsrc, check = None, None, None
    if needs_teacher(cfg):
        from ..teachers import compare_teacher, teacher_warning
        teacher, tsrc = load_teacher(cfg, original, bundle, device, trust_pickle, progress)
        # The premise of teacher-guided training, checked before any work (module doc of nernfast.teachers).
        check = compare_teacher(teacher, original, bundle, device, cfg.eval.batch_size)
        warning = teacher_warning(check)
        if warning and rank == 0:
            logger.info(warning)
    # How much of the original is structure rather than its random init: a near-random one cannot be reconstructed.
    original_check = check_original(original, cfg)
    warning = spectrum_warning(original_check)
    if warning and rank == 0:
        logger.info(warning)
    precision = numerics.resolve_precision(cfg.precision, device)
    channels_last = numerics.resolve_channels_last(cfg.channels_last, precision, device)
    if channels_last:
        original = original.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    # A decoded artefact keeps the architecture it was built from.
    arch = orig.architecture if orig.architecture is not None else \
        {"name": cfg.model, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels}
    return Context(cfg, device, bundle, original, orig.source, teacher, tsrc, arch, out, logger, rank, world, check,
                   original_check, precision, channels_last)


def check_original(original: nn.Module, cfg: RunConfig) -> dict[str, Any]:
    """spectrum_check of the conv weights the predictor will reconstruct (the run's layer selection)."""
    n = cfg.nern
    names = [name for name, _ in select_layers(original, n.include, n.exclude, n.smaller_kernels)]
    return spectrum_check(conv_weights(original, names))
