"""The six recipes, each a composition of phases (see nernfast.training.phase).

recon_only         phase1: reconstruction only
progressive        rounds of recon_only, round r+1 reconstructing round r's network; best of several
                   seeds per round (validation accuracy); stop when a round no longer improves;
                   optionally each round's BN statistics re-estimated for its network
baseline           phase1: NeRN's joint loss (reconstruction warm-up, then + alpha*FMD + beta*KD)
decoupled          phase1 reconstruction, then phase2 distillation from the original
teacher_decoupled  phase1 reconstruction, then phase2 distillation from a stronger teacher
noise_decoupled    phase1 reconstruction, then phase2 distillation on U(low, high) noise, no data

With ``bn_recalibration_end`` (recon_only's and baseline's default) the kept network's BN statistics
are re-estimated for it after the last phase; progressive does so after every round instead. A phase
that selects by validation accuracy is then scored with such statistics at every evaluation
(nernfast.training.phase, ``OwnStatistics``; ``bn_score_every_eval``): the kept step is the best delivered
network, not the best one with statistics it will not keep.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..bn_stats import load_buffers, recalibrated
from ..config import PhaseConfig, RunConfig, recipe_phases
from ..models import copy_frozen
from ..nern import NeRN
from .context import Context
from .objectives import PhaseNets, ReconTarget
from .phase import OwnStatistics, evaluate_val, run_phase
from .shared import load_shared, phase1_key, store_shared
from .state import RunState


def new_nern(cfg: RunConfig, target_model: nn.Module, seed: int, init_from: str | None = None) -> NeRN:
    torch.manual_seed(seed)
    n = cfg.nern
    nern = NeRN.from_model(target_model, hidden=n.hidden, num_blocks=n.num_blocks, permutation=n.permutation,
                           normalization=n.normalization, encoding=n.encoding, levels=n.levels, base=n.base,
                           ffn_features=n.ffn_features, ffn_sigma=n.ffn_sigma, ffn_seed=n.ffn_seed, init=n.init,
                           kernel_size=n.kernel_size, include=n.include, exclude=n.exclude,
                           smaller_kernels=n.smaller_kernels)
    if init_from:
        from .init_from import load_predictor_init
        load_predictor_init(nern, init_from)
    return nern


@dataclass
class RecipeResult:
    """What a recipe produced."""
    nern: NeRN                           # the kept predictor
    model: nn.Module                     # the network it reconstructs: supplies BN/FC and unpredicted convs
    stages: list[dict[str, Any]]         # every phase's result, in order
    diverged: str | None = None          # the message of the phase whose loss became NaN/Inf (the recipe stopped)

    def decoded(self) -> nn.Module:
        """A frozen copy of ``model`` with the kept predictor's weights written in."""
        return self.nern.materialize_(copy_frozen(self.model))


class RecipeRunner:
    def __init__(self, ctx: Context, state: RunState):
        self.ctx, self.state, self.cfg = ctx, state, ctx.cfg
        self.stages: list[dict[str, Any]] = []

    def distill_source(self, phase: PhaseConfig) -> nn.Module | None:
        if not (phase.kd_weight or phase.fmd_weight):
            return None
        if phase.distill_from == "teacher":
            if self.ctx.teacher is None:
                raise ValueError("this phase distils from a teacher but none was loaded; pass --teacher NAME[:CKPT]")
            return self.ctx.teacher
        return self.ctx.original

    def phase(self, nern: NeRN, target_model: nn.Module, phase: PhaseConfig, stage: str, seed: int,
              share_key: str | None = None, shell: nn.Module | None = None,
              own_bn: OwnStatistics | None = None) -> dict[str, Any]:
        """Run (or restore) one phase on ``nern``; the kept predictor ends up in ``nern``. With
        ``share_key``, an identical earlier run's result is reused (nernfast.training.shared).
        ``shell`` supplies the rebuilt network's BN/FC/unpredicted layers (default: ``target_model``,
        which stays the reconstruction and feature-map target either way); ``own_bn``: the phase
        scores its networks with statistics re-estimated for them (``rescored`` then keeps those)."""
        if share_key is not None and stage not in self.state.data["done"]:
            shared = load_shared(share_key)
            if shared is not None:
                self.ctx.logger.info(f"{stage}: reusing the identical phase 1 of an earlier run ({share_key})")
                self.state.data["done"][stage] = {**shared, "shared_from": share_key}
        # L_fmd matches the features of the network being reconstructed, whatever gives the logits.
        shell = target_model if shell is None else shell
        nets = PhaseNets(ReconTarget(nern.plan, nern.plan.weights_of(target_model), self.ctx.device),
                         copy_frozen(shell), self.distill_source(phase),
                         features=target_model if phase.fmd_weight else None)
        eval_model = copy_frozen(shell)

        def run(resume: dict | None, save: Any) -> dict[str, Any]:
            res = run_phase(self.ctx, nern, phase, nets, eval_model, stage, seed, resume, save, own_bn)
            # Reported, never selected on: the kept predictor is fixed before the test set is read.
            res["test_acc"], res["test_loss"] = evaluate_val(self.ctx, nern, eval_model, "test")
            res["predictor"] = {k: v.detach().clone() for k, v in nern.predictor.state_dict().items()}
            if "raw_best" in res:  # the phase kept a weight average: the raw weights it would keep otherwise, beside it
                raw = res["raw_best"]
                nern.predictor.load_state_dict(raw.pop("predictor"))
                raw_model = eval_model
                if "own_bn_buffers" in raw:  # scored with statistics of their own: tested with them
                    raw_model = load_buffers(copy_frozen(eval_model), raw.pop("own_bn_buffers"))
                raw["test_acc"], raw["test_loss"] = evaluate_val(self.ctx, nern, raw_model, "test")
                nern.predictor.load_state_dict(res["predictor"])
            return res

        result = self.state.stage(stage, run)
        if share_key is not None and "shared_from" not in result and not result["diverged"]:
            store_shared(share_key, result)
        nern.predictor.load_state_dict(result["predictor"])
        self.stages.append(result)
        return result

    # ---- recipes ---------------------------------------------------------------------------------
    def run(self) -> RecipeResult:
        cfg, orig = self.cfg, self.ctx.original
        if cfg.recipe == "progressive":
            return self.progressive()
        nern = new_nern(cfg, orig, cfg.seed, cfg.init_from)
        keys = recipe_phases(cfg.recipe)
        # Recipes with a phase after the first start from the same reconstruction: share it.
        share = phase1_key(self.ctx) if len(keys) > 1 and cfg.share_phase1 and self.ctx.world == 1 else None
        shell = orig
        end_seed = cfg.seed + len(keys)  # the end's re-estimation draws its batches from here
        for i, key in enumerate(keys):  # phase i draws its batches from seed + i
            p = getattr(cfg, key)
            stage = f"{key}-{p.name}"
            if p.bn_recalibration:
                shell = self.recalibrate(nern, shell, p.bn_recalibration, p.batch_size, stage, cfg.seed + i)
            own = (OwnStatistics(cfg.bn_recalibration_end, p.batch_size, end_seed)
                   if cfg.bn_recalibration_end and cfg.bn_score_every_eval and i == len(keys) - 1 else None)
            res = self.phase(nern, orig, p, stage, cfg.seed + i, share if i == 0 else None, shell, own)
            if "bn_buffers" in res:  # the phase moved the BN statistics (bn_batch_stats): its kept step's
                shell = load_buffers(copy_frozen(shell), res["bn_buffers"])
            if p.bn_recalibration:  # the phase's step-0 evaluation measured the re-estimated network
                res["bn_recalibration"] = {"batches": p.bn_recalibration, "val_acc": res["history"][0]["val_acc"],
                                           "val_acc_before": self.stages[-2]["val_acc"] if i else None}
            if res["diverged"]:
                return RecipeResult(nern, shell, self.stages, res["diverged"])
        if cfg.bn_recalibration_end:  # the kept network scored, and written, with statistics measured on it
            shell = self.rescored(nern, shell, self.stages[-1], cfg.bn_recalibration_end, p.batch_size,  # last phase's
                                  end_seed, "bn_recalibration_end")
        return RecipeResult(nern, shell, self.stages)

    def recalibrate(self, nern: NeRN, shell: nn.Module, batches: int, batch_size: int, stage: str,
                    seed: int) -> nn.Module:
        """``shell`` with BN statistics re-estimated for ``nern``'s current network (nernfast.bn_stats).
        Deterministic given the predictor, so a resumed run recomputes the same statistics."""
        self.ctx.logger.info(f"{stage}: re-estimating BatchNorm statistics on {batches} training batches")
        return recalibrated(nern, shell, self.ctx.bundle, batches, self.ctx.device, seed, batch_size)

    def rescored(self, nern: NeRN, base: nn.Module, res: dict[str, Any], batches: int, batch_size: int, seed: int,
                 record: str) -> nn.Module:
        """``base`` with BN statistics re-estimated for ``nern``'s network (those the phase scored it with, if it
        did); ``res``'s val/test figures become that network's, and the ones measured with ``base``'s
        statistics go to ``res[record]`` (``*_before``)."""
        own = res.get("own_bn_buffers")
        if record not in res:  # else a resumed run: the figures are already the re-estimated ones
            if own is None:
                before = res["val_acc"], res["test_acc"]
            else:  # the phase's figures are already its own statistics': measure the inherited ones
                inherited = copy_frozen(base)
                before = tuple(evaluate_val(self.ctx, nern, inherited, split)[0] for split in ("val", "test"))
            res[record] = {"batches": batches, "val_acc_before": before[0], "test_acc_before": before[1]}
        if own is None:
            shell = self.recalibrate(nern, base, batches, batch_size, res["stage"], seed)
            res["val_acc"], res["val_loss"] = evaluate_val(self.ctx, nern, shell, "val")
            res["test_acc"], res["test_loss"] = evaluate_val(self.ctx, nern, shell, "test")
        else:  # the phase measured val and test on these statistics already
            shell = load_buffers(nern.materialize_(copy_frozen(base)), own)
        rec = res[record]
        rec["val_acc"], rec["test_acc"] = res["val_acc"], res["test_acc"]  # as phase 2's record: after, and before
        self.ctx.logger.info(f"{res['stage']}: with BN statistics of its own val {res['val_acc']:.4f} "
                             f"(before: {rec['val_acc_before']:.4f})")
        return shell

    def recalibrate_round(self, nern: NeRN, target: nn.Module, res: dict[str, Any], seed: int) -> nn.Module:
        """A progressive round's network with its own BN statistics (``rescored``). Each round's weights drift
        further from those the statistics were measured on, and the drift compounds over the rounds
        (docs/fashion-mnist-tuning.md, progressive)."""
        return self.rescored(nern, target, res, self.cfg.progressive.bn_recalibration, self.cfg.phase1.batch_size,
                             seed, "bn_recalibration")

    def progressive(self) -> RecipeResult:
        cfg = self.cfg
        target = self.ctx.original
        prev_acc = None
        kept: RecipeResult | None = None
        kept_res: dict[str, Any] | None = None
        stopped = False
        for r in range(1, cfg.progressive.rounds + 1):
            best = None
            for s in range(cfg.progressive.seeds):
                seed = cfg.seed + 1000 * r + s
                nern = new_nern(cfg, target, seed, cfg.init_from if r == 1 else None)
                own = (OwnStatistics(cfg.progressive.bn_recalibration, cfg.phase1.batch_size, seed)
                       if cfg.progressive.bn_recalibration and cfg.bn_score_every_eval else None)
                res = self.phase(nern, target, cfg.phase1, f"round{r}-seed{s}", seed, own_bn=own)
                res["round"], res["seed"] = r, seed
                if res["diverged"]:  # keep the last kept round, else this seed's best so far
                    return dataclasses.replace(kept or RecipeResult(nern, target, self.stages), diverged=res["diverged"])
                shell = self.recalibrate_round(nern, target, res, seed) if cfg.progressive.bn_recalibration else None
                if best is None or res["val_acc"] > best[0]["val_acc"]:
                    best = (res, nern, shell)
            res, nern, shell = best
            res["best_of_round"] = True
            if shell is None:  # this round's network on the statistics it inherited
                shell = copy_frozen(target)
                nern.materialize_(shell)
            # The paper's rule picks the result: the chain stops at the first round that does not
            # improve validation accuracy. Later rounds still run (progressive.all_rounds) so that
            # every round is reported, but none of them can be kept.
            if stopped or prev_acc is not None and res["val_acc"] <= prev_acc:
                if not stopped:
                    self.ctx.logger.info(f"progressive: round {r} did not improve validation accuracy "
                                         f"({res['val_acc']:.4f} <= {prev_acc:.4f}); keeping round {r - 1}")
                    res["stopped_here"] = True
                stopped = True
                if not cfg.progressive.all_rounds:
                    break
            else:
                prev_acc = res["val_acc"]
                kept, kept_res = RecipeResult(nern, shell, self.stages), res
            # The next round reconstructs this round's network: its weights, and its re-estimated BN
            # statistics if any (BN affine parameters and FC stay the original's).
            target = shell
        kept_res["kept"] = True
        return kept
