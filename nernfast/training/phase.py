"""One training phase: objective + optimiser + schedule + data source + stopping rule.

The predictor kept at the end of a phase is the best one by the phase's selection rule, measured at
evaluation points on the validation split (``val_acc``), on a fixed noise batch (``noise_kd``, for
data-free phases), by the full reconstruction error (``recon_l2``: for a phase whose network is not
used as it stands, e.g. when the next phase re-estimates its BatchNorm statistics) or simply the last
(``last``). With ``ema_decay`` the phase keeps an exponential moving average of the predictor's weights
(nernfast.training.averaging): evaluations score and keep the average, and record the raw weights'
validation scores beside it (``raw_val_acc``, ``raw_val_loss``); the steps themselves, and so the raw
trajectory, are those of the same phase without it. With ``bn_batch_stats`` the rebuilt network trains
as networks are trained, its BN layers normalising with each batch's statistics; their running statistics
(updated by momentum, on the augmented batches) are what evaluations use, and the kept step's are kept
with its predictor (``bn_buffers`` of the result); under DDP each process normalises with its own shard's
statistics (no SyncBatchNorm) and rank 0's are the ones kept. With ``own_bn`` (a run whose kept network
gets BN statistics re-estimated for it afterwards) a validation-scored phase scores every evaluation with
statistics re-estimated for the weights being scored, on the same training batches each time: the step
kept is the best network as it will be delivered, and its statistics go with it (``own_bn_buffers``).
The test split is never used here.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..batching import sample_rows
from ..bn_stats import load_buffers, recalibrated
from ..config import PhaseConfig
from ..losses import kd_loss
from ..nern import NeRN
from ..optim import build_optimizer, build_schedule
from .averaging import WeightAverage
from .context import Context
from .objectives import PhaseNets, data_loss
from .streams import DatasetStream, NoiseStream

Snapshot = dict[str, Any]


class PhaseDiverged(RuntimeError):
    """A phase's loss became NaN/Inf: the recipe stopped there, the run's outputs hold the best
    predictor kept so far, and ``nernfast.train`` exits with ``nernfast.cli.EXIT_DIVERGED``."""

    def __init__(self, message: str, results: dict[str, Any] | None = None):
        super().__init__(message)
        self.results = results  # what the run wrote (results.json)


@dataclass(frozen=True)
class OwnStatistics:
    """How a phase re-estimates BN statistics for each network it scores (nernfast.bn_stats.recalibrated)."""
    batches: int
    batch_size: int
    seed: int                            # the same training batches at every evaluation


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def evaluate_val(ctx: Context, nern: NeRN, model: nn.Module, split: str = "val") -> tuple[float, float]:
    """Materialise ``nern`` into ``model`` and measure (accuracy, loss) on ``split``."""
    from ..eval import accuracy
    nern.materialize_(model)
    loader = ctx.bundle.loader(split, ctx.cfg.eval.batch_size, shuffle=False, augment=False)
    return accuracy(model, loader, ctx.device)


def phase_key(ctx: Context, phase: PhaseConfig) -> str:
    return "phase2" if phase is ctx.cfg.phase2 else "phase1"


class _DataStep(nn.Module):
    """Wraps the data-driven step so DistributedDataParallel all-reduces the predictor's gradients."""

    def __init__(self, nern: NeRN):
        super().__init__()
        self.nern = nern

    def forward(self, *args: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return data_loss(self.nern, *args)


class _PhaseLoop:
    """The state of one running phase: optimiser, schedule, RNG, input stream, history, best."""

    def __init__(self, ctx: Context, nern: NeRN, phase: PhaseConfig, nets: PhaseNets, eval_model: nn.Module,
                 stage: str, seed: int, own_bn: OwnStatistics | None = None):
        self.ctx, self.nern, self.phase, self.nets, self.eval_model, self.stage = ctx, nern, phase, nets, eval_model, stage
        # Only a validation score reads the statistics; the other rules leave re-estimation to the run's end.
        self.own_bn = own_bn if phase.select == "val_acc" else None
        self.judged_bn: dict[str, torch.Tensor] | None = None  # the statistics the last judged weights were scored with
        self.raw_judged_bn: dict[str, torch.Tensor] | None = None  # with a weight average: the raw weights' ones
        self.data_phase = phase.data != "none" and bool(phase.kd_weight or phase.fmd_weight)
        if phase.data == "none" and (phase.kd_weight or phase.fmd_weight):
            raise ValueError(f"phase {phase.name}: distillation weights need data ('dataset' or 'noise'), got data=none")
        if self.data_phase and nets.distill is None:
            raise ValueError(f"phase {phase.name}: distillation needs a network to distil from")
        self.opt = build_optimizer(nern.predictor.parameters(), phase.optimizer, phase.lr, phase.weight_decay)
        self.sched = build_schedule(self.opt, phase.schedule, phase.steps, phase.lr_warmup_steps)
        self.gen = torch.Generator().manual_seed(seed)
        bundle = ctx.bundle
        self.stream: DatasetStream | NoiseStream | None = None
        if phase.data == "dataset":
            self.stream = DatasetStream(bundle, phase.batch_size, seed, phase.augment, rank=ctx.rank, world=ctx.world)
        elif phase.data == "noise":
            shape = (bundle.in_channels, bundle.image_size, bundle.image_size)
            self.stream = NoiseStream(shape, phase.batch_size, phase.noise_low, phase.noise_high, seed, ctx.rank, ctx.world)
        self.noise_val = None
        if phase.select == "noise_kd":
            g = torch.Generator().manual_seed(seed + 7919)
            shape = (256, bundle.in_channels, bundle.image_size, bundle.image_size)
            x = (torch.rand(shape, generator=g) * (phase.noise_high - phase.noise_low) + phase.noise_low).to(ctx.device)
            with torch.no_grad():
                self.noise_val = (x, nets.distill(x))
        self.step_model = None
        if self.data_phase and ctx.world > 1:
            self.step_model = nn.parallel.DistributedDataParallel(_DataStep(nern), broadcast_buffers=False)
        self.autocast_dtype = torch.bfloat16 if ctx.precision == "bf16" else None
        self.weights_batch_size = min(phase.weights_batch_size, nern.plan.num_rows)
        if self.weights_batch_size < phase.weights_batch_size:
            ctx.logger.info(f"{stage}: weights_batch_size {phase.weights_batch_size} is more than the "
                            f"{nern.plan.num_rows} predicted rows; using {self.weights_batch_size}")
        self.average = WeightAverage(nern.predictor, phase.ema_decay) if phase.ema_decay else None
        if phase.bn_batch_stats:
            nets.shell.train()  # functional_call swaps in the predicted weights; the buffers are the shell's own
        self.step = 0
        self.wall = 0.0                  # seconds spent in this phase before the current process's part
        self.t_start = time.perf_counter()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.best_raw: dict[str, Any] | None = None  # with a weight average: what the phase without it keeps

    def score(self) -> tuple[tuple[float, ...], dict[str, float], tuple[float, ...] | None]:
        """The selection score of the weights this phase would keep now, what was measured, and (with a
        weight average) the raw weights' own score."""
        with torch.no_grad():  # the raw weights set the l2 loss's scale: the steps see them, not the average
            err, drift = self.nets.target.refresh(self.nern.rows())
        if self.phase.bn_batch_stats:  # evaluate with the statistics the steps have gathered so far
            load_buffers(self.eval_model, dict(self.nets.shell.named_buffers()))
        info = {"recon_l2": err["l2"], "recon_mse": err["mse"], "l2_scale_drift": drift}
        if self.average is None:
            s, measured = self._judge(err)
            return s, {**info, **measured}, None
        raw_s, raw = self._judge(err)
        self.raw_judged_bn = self.judged_bn
        with self.average.swapped():
            s, measured = self._judge(self.nets.target.error(self.nern.rows()))
        return s, {**info, **{f"raw_{k}": v for k, v in raw.items()}, **measured}, raw_s

    def bn_buffers(self) -> dict[str, torch.Tensor] | None:
        """A copy of the student's BN running statistics when the steps move them, else None."""
        if not self.phase.bn_batch_stats:
            return None
        return {k: v.detach().clone() for k, v in self.nets.shell.named_buffers()}

    def kept_state(self) -> dict[str, torch.Tensor]:
        """A copy of the predictor this phase keeps when it scores best now (the average, if any)."""
        if self.average is None:
            return _clone_state(self.nern.predictor)
        with self.average.swapped():
            return _clone_state(self.nern.predictor)

    def _judge(self, err: dict[str, float]) -> tuple[tuple[float, ...], dict[str, float]]:
        """Score the predictor's current weights (``err``: their reconstruction error) by the phase's rule."""
        phase, nern = self.phase, self.nern
        info: dict[str, float] = {}
        if phase.select == "last":  # touches no data at all
            return (float(self.step),), info
        if phase.select == "noise_kd":
            nern.materialize_(self.eval_model)
            with torch.no_grad():
                kd = float(kd_loss(self.eval_model(self.noise_val[0]), self.noise_val[1], phase.kd_loss))
            info["noise_kd"] = kd
            return (-kd,), info
        if self.own_bn is not None:
            self.judged_bn = self.own_statistics()
        acc, loss = evaluate_val(self.ctx, nern, self.eval_model)
        info.update(val_acc=acc, val_loss=loss)
        if phase.select == "recon_l2":  # validation still measured and reported, not used
            return (-err["l2"],), info
        # Ties in accuracy (a small validation set) go to the phase's own objective.
        return (acc, -err["l2"] if phase.data == "none" else -loss), info

    def own_statistics(self) -> dict[str, torch.Tensor]:
        """BN statistics re-estimated for the predictor's current network, loaded into the evaluation model."""
        o = self.own_bn
        net = recalibrated(self.nern, self.eval_model, self.ctx.bundle, o.batches, self.ctx.device, o.seed,
                           o.batch_size)
        buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
        load_buffers(self.eval_model, buffers)
        return buffers

    def start(self, resume: Snapshot | None) -> None:
        if resume is not None:
            self.nern.predictor.load_state_dict(resume["predictor"])
            self.opt.load_state_dict(resume["optimizer"])
            self.sched.load_state_dict(resume["scheduler"])
            self.gen.set_state(resume["gen"])
            if self.stream is not None:
                self.stream.load_state_dict(resume["stream"])
            self.nets.target.sq_error = resume["sq_error"]
            if resume.get("bn_buffers") is not None:
                load_buffers(self.nets.shell, resume["bn_buffers"])
            if self.average is not None:
                self.average.load_state_dict(resume["average"])
            self.step, self.history, self.best = resume["step"], resume["history"], resume["best"]
            self.best_raw = resume.get("best_raw")
            self.wall = resume.get("wall_s", 0.0)
            return
        s, info, raw_s = self.score()
        self.best = {"score": s, "step": 0, "predictor": self.kept_state(), "info": info,
                     "bn_buffers": self.bn_buffers(), "own_bn": self.judged_bn}
        if raw_s is not None:
            self.best_raw = {"score": raw_s, "step": 0, "predictor": _clone_state(self.nern.predictor), "info": info,
                             "own_bn": self.raw_judged_bn}
        self.history.append({"stage": self.stage, "step": 0, **info})
        self.ctx.logger.log({"stage": self.stage, "step": 0, **info})

    def snapshot(self) -> Snapshot:
        return {"stage": self.stage, "step": self.step, "predictor": _clone_state(self.nern.predictor),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "gen": self.gen.get_state(),
                "stream": self.stream.state_dict() if self.stream is not None else None,
                "sq_error": self.nets.target.sq_error, "history": self.history, "best": self.best,
                "average": self.average.state_dict() if self.average is not None else None, "best_raw": self.best_raw,
                "bn_buffers": self.bn_buffers(),
                "wall_s": self.elapsed()}

    def elapsed(self) -> float:
        """Wall seconds of this phase so far (steps and evaluations; resumed runs included)."""
        return self.wall + time.perf_counter() - self.t_start

    def loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        """This step's loss on a fresh weight batch (and image batch in data-driven steps)."""
        phase, nern, target = self.phase, self.nern, self.nets.target
        idx = sample_rows(phase.weights_batch_method, nern.plan.num_rows, self.weights_batch_size, self.gen, target.norms)
        if self.data_phase and self.step >= phase.warmup_steps:
            x, _ = self.stream.next()
            x = x.to(self.ctx.device, non_blocking=True)
            if self.ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            args = (phase, self.nets, idx, x, self.autocast_dtype)
            return self.step_model(*args) if self.step_model is not None else data_loss(nern, *args)
        # bf16 predictor compute (fp32 master weights and loss) when the run's precision asks for it.
        with torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = target.fast_loss(nern, idx, phase.recon_loss) * phase.recon_weight
        return loss, {"loss": float(loss.detach())}

    def uses_l2_scale(self) -> bool:
        """Whether the coming steps read the scale: only the fast path's l2 loss does (data steps compute
        the reconstruction loss on the full weights, mse has no scale)."""
        fast = not self.data_phase or self.step < self.phase.warmup_steps
        return bool(self.phase.l2_scale_every) and self.phase.recon_loss == "l2" and fast

    def refresh_scale(self) -> None:
        """Re-measure the l2 loss's scale between evaluations: the gradient of the linearised l2 loss is
        divided by the full error measured last, so a rare re-measurement scales it in one jump (2.2-3.0x
        at the first evaluation of a Fashion-MNIST reconstruction phase) that Adam's slow second moment
        (beta2 0.999) passes on as a larger step for ~1 000 steps; frequent ones keep each change small."""
        with torch.no_grad():
            self.nets.target.refresh(self.nern.rows())

    def evaluate(self, parts: dict[str, float]) -> bool:
        """Score at an evaluation point and keep the best; True when the patience ran out."""
        phase, step = self.phase, self.step
        s, info, raw_s = self.score()
        if raw_s is not None and raw_s > self.best_raw["score"]:
            self.best_raw = {"score": raw_s, "step": step, "predictor": _clone_state(self.nern.predictor), "info": info,
                             "own_bn": self.raw_judged_bn}
        rec = {"stage": self.stage, "step": step, "wall_s": round(self.elapsed(), 2), "lr": self.sched.get_last_lr()[0],
               **parts, **info}
        self.history.append(rec)
        self.ctx.logger.log(rec)
        if s > self.best["score"] or phase.select == "last":
            self.best = {"score": s, "step": step, "predictor": self.kept_state(), "info": info,
                         "bn_buffers": self.bn_buffers(), "own_bn": self.judged_bn}
        elif phase.patience and (step - self.best["step"]) >= phase.patience * phase.eval_every:
            self.ctx.logger.info(f"{self.stage}: no improvement for {phase.patience} evaluations, stopping at step {step}")
            return True
        return False

    def train(self, save: Callable[[Snapshot], None] | None) -> str | None:
        """Step until the phase ends; returns the divergence message when the loss became non-finite."""
        phase = self.phase
        pbar = self.ctx.logger.progress(phase.steps, initial=self.step, desc=self.stage)
        t0, s0 = time.perf_counter(), self.step
        diverged = None
        while self.step < phase.steps:
            loss, parts = self.loss()
            if not math.isfinite(parts["loss"]):
                diverged = (f"{self.stage}: loss became {parts['loss']} at step {self.step}; kept the best predictor "
                            f"so far (step {self.best['step']}). Lower the learning rate "
                            f"(--set {phase_key(self.ctx, phase)}.lr=...).")
                break
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            if self.average is not None:
                self.average.update()
            self.step += 1
            pbar.update(1)
            if self.step % 10 == 0 or self.step == phase.steps:
                rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                pbar.set_postfix(loss=f"{parts['loss']:.4g}", acc=f"{self.best['info'].get('val_acc', float('nan')):.3f}",
                                 it_s=f"{rate:.1f}")
            evaluating = self.step % phase.eval_every == 0 or self.step == phase.steps
            if evaluating and self.evaluate(parts):
                break
            if not evaluating and self.uses_l2_scale() and self.step % phase.l2_scale_every == 0:
                self.refresh_scale()
            if save is not None and (self.step % phase.checkpoint_every == 0) and self.step < phase.steps:
                save(self.snapshot())
        pbar.close()
        return diverged


def run_phase(ctx: Context, nern: NeRN, phase: PhaseConfig, nets: PhaseNets, eval_model: nn.Module, stage: str,
              seed: int, resume: Snapshot | None = None, save: Callable[[Snapshot], None] | None = None,
              own_bn: OwnStatistics | None = None) -> dict[str, Any]:
    """Train ``nern`` in place; returns the phase's result (the kept predictor is loaded into ``nern``).

    ``eval_model`` is the frozen network the predictor is materialised into for validation (left holding the
    kept step's statistics); ``resume`` a snapshot written by ``save`` (every ``checkpoint_every`` steps) to
    continue from; ``own_bn`` scores validation with statistics re-estimated for each network (module doc)."""
    loop = _PhaseLoop(ctx, nern, phase, nets, eval_model, stage, seed, own_bn)
    loop.start(resume)
    diverged = loop.train(save)  # reported by the recipe, which stops there (PhaseDiverged)
    nern.predictor.load_state_dict(loop.best["predictor"])
    if loop.best.get("bn_buffers") is not None:  # the kept step's statistics go with its predictor
        load_buffers(eval_model, loop.best["bn_buffers"])
    if loop.best.get("own_bn") is not None:  # ... and those it was scored with, which the run delivers
        load_buffers(eval_model, loop.best["own_bn"])
    with torch.no_grad():
        err = nets.target.error(nern.rows())
    best = loop.best
    result = {"stage": stage, "phase": asdict(phase), "steps_run": loop.step, "wall_s": round(loop.elapsed(), 1),
              "best_step": best["step"],
              "selected_by": phase.select, "score": best["score"], **best["info"],
              "recon_l2": err["l2"], "recon_mse": err["mse"], "diverged": diverged, "history": loop.history}
    if loop.best.get("bn_buffers") is not None:
        result["bn_buffers"] = loop.best["bn_buffers"]
    if loop.own_bn is not None:
        result["own_bn"] = {"batches": loop.own_bn.batches, "seed": loop.own_bn.seed}
        result["own_bn_buffers"] = loop.best["own_bn"]
    if loop.best_raw is not None:  # what the same phase without the average keeps (its steps are the same)
        raw = loop.best_raw
        result["raw_best"] = {"step": raw["step"], "score": raw["score"], "predictor": raw["predictor"],
                              **{k[4:]: v for k, v in raw["info"].items() if k.startswith("raw_")}}
        if raw.get("own_bn") is not None:
            result["raw_best"]["own_bn_buffers"] = raw["own_bn"]
    return result
