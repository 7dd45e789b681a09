"""Quantisation-aware distillation: a short fine-tune of the predictor through the quantiser.

Every predictor ``nn.Linear`` weight is parametrized with the scheme's quantiser (``Scheme.fake_quant``:
the artefact's own, straight-through gradient), so the network the loss sees is exactly the one the
compact artefact decodes to. The objective is the decoupled recipe's phase 2: KD from the fp32
artefact's own network (it needs no original, only the data) or from the run's teacher (``distill``),
plus a small reconstruction term toward the fp32 predictor's weights, run by the trainer's phase
loop (``run_phase``) and kept by validation accuracy, with step 0 (plain post-training quantisation)
a candidate: the fine-tune never selects a predictor worse on validation than PTQ. The test split is
not read here.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..codec.format2 import Scheme
from ..nern import NeRN


@contextmanager
def fake_quantized(nern: NeRN, scheme: Scheme) -> Iterator[NeRN]:
    """Inside: every predictor linear computes with its quantised weight. On exit the latent fp32
    weights stay (quantising them again gives exactly the weights seen inside)."""
    lins = nern.predictor.linears()
    for i, lin in enumerate(lins):
        parametrize.register_parametrization(lin, "weight", scheme.fake_quant(i))
    try:
        yield nern
    finally:
        for lin in lins:
            if parametrize.is_parametrized(lin, "weight"):
                parametrize.remove_parametrizations(lin, "weight", leave_parametrized=False)


def finetune(nern: NeRN, model: nn.Module, bundle: Any, scheme: Scheme, steps: int, lr: float,
             seed: int = 0, device: str | torch.device = "cpu", progress: bool = False,
             batch_size: int = 128, eval_every: int = 50, student: nn.Module | None = None,
             distill: nn.Module | None = None, fmd_weight: float = 0.0, ema_decay: float = 0.0) -> dict[str, Any]:
    """Fine-tune ``nern`` (in place) for its form under ``scheme``; ``model`` holds the fp32 artefact's
    BN/FC (the teacher's), ``student`` the BN/FC the quantised network computes with (default:
    ``model``'s; e.g. re-estimated BN statistics), ``distill`` the frozen KD source (default: the fp32
    artefact's network, ``model`` with ``nern``'s fp32 weights), ``fmd_weight`` the weight of the
    feature-map term toward the KD source's block outputs (as in phase 2), ``ema_decay`` > 0 keeps the
    average of the latent weights (as ``PhaseConfig.ema_decay``). Returns the phase result (history, kept
    step, validation accuracy of the kept predictor; with the average, ``raw_best``: the raw weights' kept
    step and validation scores)."""
    from ..config import PhaseConfig, RunConfig
    from ..training.context import Context
    from ..training.logger import RunLogger
    from ..models import copy_frozen
    from ..training.objectives import PhaseNets, ReconTarget

    device = torch.device(device)
    nern.to(device)
    student = model if student is None else student
    teacher = copy_frozen(model).to(device)
    nern.materialize_(teacher)
    with torch.no_grad():
        target = ReconTarget(nern.plan, [w.detach() for w in nern.layer_weights()], device)
    phase = PhaseConfig(name="qat", steps=steps, optimizer="adam", lr=lr, lr_warmup_steps=min(50, steps // 5),
                        weight_decay=0.0, schedule="cosine", recon_loss="l2", recon_weight=0.1, kd_weight=1.0,
                        fmd_weight=fmd_weight, ema_decay=ema_decay,
                        kd_loss="kl", data="dataset", distill_from="original", batch_size=batch_size,
                        eval_every=max(1, min(eval_every, steps)), select="val_acc", checkpoint_every=steps + 1)
    with tempfile.TemporaryDirectory(prefix="nernfast-qat-") as tmp:
        cfg = RunConfig(device=str(device))
        logger = RunLogger(Path(tmp), progress=progress)
        ctx = Context(cfg, device, bundle, teacher, "fp32 artefact", None, None, {}, Path(tmp), logger)
        source = teacher if distill is None else distill.to(device)  # frozen by the caller
        nets = PhaseNets(target, copy_frozen(student).to(device), source,
                         features=None if distill is None else teacher)  # L_fmd: the fp32 network's maps
        try:
            with fake_quantized(nern, scheme):
                result = _run(ctx, nern, phase, nets, copy_frozen(student).to(device), seed)
        finally:
            logger.close()
    return result


def _run(ctx: Any, nern: NeRN, phase: Any, nets: Any, eval_model: nn.Module, seed: int) -> dict:
    """The one call into the trainer's phase loop (kept here alone: its signature is the trainer's)."""
    from ..training.phase import run_phase
    result = run_phase(ctx, nern, phase, nets, eval_model, "qat", seed)
    if "raw_best" in result:
        result["raw_best"].pop("predictor")  # only its scores are reported; the average is kept
    return result
