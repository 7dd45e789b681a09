"""One training phase: objective + optimiser + schedule + data source + stopping rule.

The predictor kept at the end of a phase is the best one by the phase's selection rule, measured at
evaluation points on the validation split (``val_acc``), on a fixed noise batch (``noise_kd``, for
data-free phases) or simply the last (``last``). The test split is never used here.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict
from typing import Any, Callable

import torch
import torch.nn as nn

from ..batching import sample_rows
from ..config import PhaseConfig
from ..losses import kd_loss
from ..nern import NeRN
from ..optim import build_optimizer, build_schedule
from .objectives import ReconTarget, data_loss
from .streams import DatasetStream, NoiseStream


class PhaseDiverged(RuntimeError):
    pass


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def evaluate_val(ctx: Any, nern: NeRN, split: str = "val") -> tuple[float, float]:
    """Materialise into the context's evaluation model and measure (accuracy, loss) on ``split``."""
    from ..eval import accuracy
    nern.materialize_(ctx.eval_model)
    loader = ctx.bundle.loader(split, ctx.cfg.eval.batch_size, shuffle=False, augment=False)
    return accuracy(ctx.eval_model, loader, ctx.device)


def run_phase(ctx: Any, nern: NeRN, target: ReconTarget, phase: PhaseConfig, stage: str, shell: nn.Module,
              distill: nn.Module | None, seed: int, resume: dict[str, Any] | None = None,
              save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``nern`` in place; returns the phase's result (the kept predictor is loaded into ``nern``)."""
    dev = ctx.device
    data_phase = phase.data != "none" and (phase.kd_weight or phase.fmd_weight)
    if phase.data == "none" and (phase.kd_weight or phase.fmd_weight):
        raise ValueError(f"phase {phase.name}: distillation weights need data ('dataset' or 'noise'), got data=none")
    if data_phase and distill is None:
        raise ValueError(f"phase {phase.name}: distillation needs a network to distil from")
    opt = build_optimizer(nern.predictor.parameters(), phase.optimizer, phase.lr, phase.weight_decay)
    sched = build_schedule(opt, phase.schedule, phase.steps, phase.lr_warmup_steps)
    gen = torch.Generator().manual_seed(seed)
    stream: DatasetStream | NoiseStream | None = None
    if phase.data == "dataset":
        stream = DatasetStream(ctx.bundle, phase.batch_size, seed, phase.augment, rank=ctx.rank, world=ctx.world)
    elif phase.data == "noise":
        shape = (ctx.bundle.in_channels, ctx.bundle.image_size, ctx.bundle.image_size)
        stream = NoiseStream(shape, phase.batch_size, phase.noise_low, phase.noise_high, seed, ctx.rank, ctx.world)
    noise_val = None
    if phase.select == "noise_kd":
        g = torch.Generator().manual_seed(seed + 7919)
        shape = (256, ctx.bundle.in_channels, ctx.bundle.image_size, ctx.bundle.image_size)
        x = (torch.rand(shape, generator=g) * (phase.noise_high - phase.noise_low) + phase.noise_low).to(dev)
        with torch.no_grad():
            noise_val = (x, distill(x))
    step_model = None
    if data_phase and ctx.world > 1:
        step_model = nn.parallel.DistributedDataParallel(_DataStep(nern), broadcast_buffers=False)
    autocast_dtype = torch.bfloat16 if ctx.cfg.precision == "bf16" else None

    step = 0

    def score() -> tuple[tuple[float, ...], dict[str, float]]:
        with torch.no_grad():
            err, drift = target.refresh(nern.rows())
        info = {"recon_l2": err["l2"], "recon_mse": err["mse"], "l2_scale_drift": drift}
        if phase.select == "last":  # touches no data at all
            return (float(step),), info
        if phase.select == "noise_kd":
            nern.materialize_(ctx.eval_model)
            with torch.no_grad():
                kd = float(kd_loss(ctx.eval_model(noise_val[0]), noise_val[1], phase.kd_loss))
            info["noise_kd"] = kd
            s = (-kd,)
        else:
            acc, loss = evaluate_val(ctx, nern)
            info.update(val_acc=acc, val_loss=loss)
            # Ties in accuracy (a small validation set) go to the phase's own objective.
            s = (acc, -err["l2"] if phase.data == "none" else -loss)
        return s, info

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    if resume is not None:
        nern.predictor.load_state_dict(resume["predictor"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        gen.set_state(resume["gen"])
        if stream is not None:
            stream.load_state_dict(resume["stream"])
        target.sq_error = resume["sq_error"]
        step, history, best = resume["step"], resume["history"], resume["best"]
    else:
        s, info = score()
        best = {"score": s, "step": 0, "predictor": _clone_state(nern.predictor), "info": info}
        history.append({"stage": stage, "step": 0, **info})
        ctx.logger.log({"stage": stage, "step": 0, **info})

    def snapshot() -> dict[str, Any]:
        return {"stage": stage, "step": step, "predictor": _clone_state(nern.predictor),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "gen": gen.get_state(),
                "stream": stream.state_dict() if stream is not None else None, "sq_error": target.sq_error,
                "history": history, "best": best}

    pbar = ctx.logger.progress(phase.steps, initial=step, desc=stage)
    t0, s0 = time.perf_counter(), step
    diverged = None
    while step < phase.steps:
        idx = sample_rows(phase.weights_batch_method, nern.plan.num_rows, phase.weights_batch_size, gen, target.norms)
        if data_phase and step >= phase.warmup_steps:
            x, _ = stream.next()
            x = x.to(dev, non_blocking=True)
            if ctx.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            args = (idx, shell, x, target, distill, phase.recon_loss, phase.recon_weight, phase.fmd_weight,
                    phase.kd_weight, phase.kd_loss, phase.temperature, autocast_dtype)
            loss, parts = step_model(*args) if step_model is not None else data_loss(nern, *args)
        else:
            loss = target.fast_loss(nern, idx, phase.recon_loss) * phase.recon_weight
            parts = {"loss": float(loss.detach())}
        if not math.isfinite(parts["loss"]):
            diverged = f"{stage}: loss became {parts['loss']} at step {step}; kept the best predictor so far " \
                       f"(step {best['step']}). Lower the learning rate (--set {phase_key(ctx, phase)}.lr=...)."
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        pbar.update(1)
        if step % 10 == 0 or step == phase.steps:
            rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
            pbar.set_postfix(loss=f"{parts['loss']:.4g}", acc=f"{best['info'].get('val_acc', float('nan')):.3f}",
                             it_s=f"{rate:.1f}")
        if step % phase.eval_every == 0 or step == phase.steps:
            s, info = score()
            rec = {"stage": stage, "step": step, "lr": sched.get_last_lr()[0], **parts, **info}
            history.append(rec)
            ctx.logger.log(rec)
            if s > best["score"] or phase.select == "last":
                best = {"score": s, "step": step, "predictor": _clone_state(nern.predictor), "info": info}
            elif phase.patience and (step - best["step"]) >= phase.patience * phase.eval_every:
                ctx.logger.info(f"{stage}: no improvement for {phase.patience} evaluations, stopping at step {step}")
                break
        if save is not None and (step % phase.checkpoint_every == 0) and step < phase.steps:
            save(snapshot())
    pbar.close()
    if diverged:
        ctx.logger.info(diverged)
    nern.predictor.load_state_dict(best["predictor"])
    with torch.no_grad():
        err = target.error(nern.rows())
    return {"stage": stage, "phase": asdict(phase), "steps_run": step, "best_step": best["step"],
            "selected_by": phase.select, "score": best["score"], **best["info"],
            "recon_l2": err["l2"], "recon_mse": err["mse"], "diverged": diverged, "history": history}


def phase_key(ctx: Any, phase: PhaseConfig) -> str:
    return "phase2" if phase is ctx.cfg.phase2 else "phase1"


class _DataStep(nn.Module):
    """Wraps the data-driven step so DistributedDataParallel all-reduces the predictor's gradients."""

    def __init__(self, nern: NeRN):
        super().__init__()
        self.nern = nern

    def forward(self, *args: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return data_loss(self.nern, *args)


def copy_frozen(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
