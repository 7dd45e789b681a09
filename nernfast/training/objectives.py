"""Per-step objectives.

Reconstruction-only steps take a shortcut: they predict only the rows that carry gradient and
never rebuild the network (a reconstruction step needs neither data nor the other rows).
- ``mse`` (mean over layers of per-layer MSE) is a sum of per-row terms, so the shortcut's gradient
  is exactly that of the full computation.
- ``l2`` (NeRN's sqrt(S / M), S the total squared error over all M weights) couples the rows through
  S: dL/de_r = e_r / sqrt(S * M). The shortcut uses S as measured last (at evaluation points and
  every ``phase.l2_scale_every`` steps), so the gradient direction is exact and its scale is off by
  sqrt(S_now / S_refresh). ``ReconTarget.refresh`` returns that factor since the last re-measurement;
  the trainer logs it at evaluations (``l2_scale_drift``) so the bound is measured, not assumed.
  Ranger/Adam normalise the step per parameter, so a slowly drifting scale barely changes the
  update; a sudden one does (a 2-3x jump at a reconstruction phase's first evaluation acted as a
  learning-rate spike: docs/fashion-mnist-tuning.md, S1), hence the frequent re-measurement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call

from ..config import PhaseConfig
from ..losses import feature_map_loss, kd_loss, reconstruction_loss
from ..models import Ensemble, collect_features
from ..nern import NeRN
from ..ops.scatter import flat_to_rows_reference, flat_views
from ..plan import WeightPlan


class ReconTarget:
    """The weights being reconstructed, laid out as predictor rows."""

    def __init__(self, plan: WeightPlan, weights: list[torch.Tensor], device: torch.device | str,
                 dtype: torch.dtype = torch.float32):
        self.plan = plan
        self.weights = [w.detach().to(device, dtype).clone() for w in weights]
        flat = torch.cat([w.reshape(-1) for w in self.weights])
        self.rows = flat_to_rows_reference(flat, plan)  # (N, K*K), zeros outside each layer's crop
        self.mask = flat_to_rows_reference(torch.ones_like(flat), plan)
        # Kernel norms drive the weighted row sampling (NeRN's random_weighted_batch).
        self.norms = self.rows.norm(dim=1).cpu()
        numel = torch.tensor([l.numel for l in plan.layers], dtype=torch.float64, device=self.rows.device)
        self.mse_row_weight = (1.0 / (len(plan.layers) * numel))[plan.row_layer.to(self.rows.device)].to(dtype)
        self.total_numel = plan.numel
        self.sq_error = float(self.rows.pow(2).sum())  # S at the all-zero prediction until refreshed

    def error(self, rows: torch.Tensor) -> dict[str, float]:
        """Full reconstruction errors of predicted rows (no grad)."""
        with torch.no_grad():
            e = (rows.to(self.rows.dtype) - self.rows) * self.mask
            sq = e.pow(2).sum(1)
            s = float(sq.sum())
            mse = float((sq * self.mse_row_weight).sum())
        return {"l2": math.sqrt(s / self.total_numel), "mse": mse, "sq_error": s}

    def refresh(self, rows: torch.Tensor) -> tuple[dict[str, float], float]:
        """Measure the full error and reset the L2 scale; returns (errors, drift factor)."""
        err = self.error(rows)
        drift = math.sqrt(err["sq_error"] / self.sq_error) if self.sq_error > 0 else 1.0
        self.sq_error = max(err["sq_error"], 1e-30)
        return err, drift

    def fast_loss(self, nern: NeRN, idx: torch.Tensor | None, kind: str) -> torch.Tensor:
        """A loss whose gradient w.r.t. the predictor equals the full reconstruction loss's gradient
        with gradient flowing through rows ``idx`` only (see module doc for ``l2``)."""
        pred = nern.predict(idx)
        if idx is None:
            t, m, w = self.rows, self.mask, self.mse_row_weight
        else:
            i = idx.to(self.rows.device)
            t, m, w = self.rows[i], self.mask[i], self.mse_row_weight[i]
        sq = ((pred.to(t.dtype) - t) * m).pow(2).sum(1)
        if kind == "mse":
            return (sq * w).sum()
        if kind == "l2":
            return sq.sum() / (2 * math.sqrt(self.sq_error * self.total_numel))
        raise ValueError(f"unknown reconstruction loss {kind!r}")


@dataclass
class PhaseNets:
    """The networks one phase trains against."""
    target: ReconTarget              # the weights being reconstructed
    shell: nn.Module                 # frozen copy of the reconstructed network, run with predicted weights
    distill: nn.Module | None        # distillation source (the original or a teacher); None: no distillation
    # The network whose feature maps L_fmd matches: the one being reconstructed (its architecture is
    # the student's). None: the distillation source (then the same network gives logits and features).
    features: nn.Module | None = None


def _teacher_logits(teacher: nn.Module, x: torch.Tensor, features: nn.Module, features_logits: torch.Tensor
                    ) -> torch.Tensor:
    """The teacher's logits on ``x``; an ensemble that holds the feature-map network (the default Fashion-MNIST
    teacher: the original with its mirror images) reuses that network's logits instead of running it again."""
    if isinstance(teacher, Ensemble) and any(m is features for m in teacher.members):
        return teacher(x, known=(features, features_logits))
    return teacher(x)


def data_loss(nern: NeRN, phase: PhaseConfig, nets: PhaseNets, idx: torch.Tensor | None, x: torch.Tensor,
              autocast_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Joint NeRN objective on an image batch, weighted by the phase:
    recon_weight*L_rec + fmd_weight*L_fmd + kd_weight*L_kd.

    The whole network is rebuilt from the predictor (gradient through rows ``idx``) and run with
    ``functional_call``; the distillation source (original or teacher) runs without autograd.
    """
    shell, distill = nets.shell, nets.distill
    ac = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(x.device.type, enabled=False)
    # The rebuild runs under the same autocast as the CNN: with bf16 the predictor's matmuls (the
    # largest cost of a digits step) run in bf16, and the convs take the predicted weights as they are
    # instead of casting them from fp32 (their values are rounded to bf16 either way).
    with ac:
        ws = flat_views(nern.flat(nern.rows(idx)), nern.plan)
    params = {f"{n}.weight": w for n, w in zip(nern.plan.names, ws)}
    parts: dict[str, float] = {}
    loss = x.new_zeros((), dtype=torch.float32)
    if phase.recon_weight:
        rec = reconstruction_loss([w.float() for w in ws], nets.target.weights, phase.recon_loss)
        loss = loss + phase.recon_weight * rec
        parts["rec"] = float(rec.detach())
    with ac:
        if phase.fmd_weight:
            with collect_features(shell) as fs:
                logits = functional_call(shell, params, (x,))
            source = nets.features if nets.features is not None else distill
            with torch.no_grad(), collect_features(source) as ft:
                t_logits = source(x)
            if source is not distill and phase.kd_weight:
                with torch.no_grad():
                    t_logits = _teacher_logits(distill, x, source, t_logits)
            fmd = feature_map_loss(fs, ft)  # computed in fp32
            loss = loss + phase.fmd_weight * fmd
            parts["fmd"] = float(fmd.detach())
        else:
            logits = functional_call(shell, params, (x,))
            with torch.no_grad():
                t_logits = distill(x) if phase.kd_weight else None
    if phase.kd_weight:
        kd = kd_loss(logits.float(), t_logits.float(), phase.kd_loss, phase.temperature)
        loss = loss + phase.kd_weight * kd
        parts["kd"] = float(kd.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts
