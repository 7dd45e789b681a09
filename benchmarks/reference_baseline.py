"""The public NeRN training step's algorithm: the baseline every nernfast benchmark is measured against.

Written by us from the description in the paper and /work/shared/paper/NOTES.md ("The public
reference's training step"); not part of the package. What one step does, in order:

1. Per-row 240-wide encodings were computed once, before training, and are kept as one (N, 6L)
   matrix in destination-row order (the permutation folded in, as nernfast's ``plan.coords``);
   the reference computes it with one Python call per row and caches it on disk, so its cost is
   not part of a step here either.
2. The whole network is predicted from that matrix: the rows carrying gradient (the step's weight
   mini-batch, in chunks of ``weights_batch_size``) under autograd and written into a zero (N, K*K)
   tensor by index assignment, then every other row (chunks of ``weights_batch_size``) under
   ``no_grad`` into the same tensor.
3. The tensor is split per layer, reshaped to (c_out, c_in, K, K), centre-cropped to each layer's
   kernel, and swapped into the reconstructed model's conv weights with ``weight.data = ...``.
4. Both models run forward on the image batch, with feature maps collected -- also during the
   reconstruction-only warm-up -- and all three losses are computed (reconstruction L2, batched
   feature-map loss, stable KL); during the warm-up the distillation terms are multiplied away.
5. Two backward passes: the loss to the reconstructed conv weights (through the original CNN too:
   the original is a submodule of the reconstructed wrapper, whose parameters the reference makes
   trainable), then the conv-weight gradients back through step 3-2 into the predictor.
6. A Ranger step on the predictor.

``freeze_source=True`` is the same algorithm with the distillation source frozen (the baseline's
second column: how much of a speedup comes from that fix alone). ``distill=teacher`` is our
extension for the teacher-guided phase (the reference has no teacher): the teacher takes the
original's place as the distillation source, treated as the reference treats its original
(trainable unless frozen), and the feature-map term is off (the architectures differ).

Every model here is nernfast's (``nernfast.models``), feature maps come from
``nernfast.models.collect_features`` and the losses from ``nernfast.losses``: the baseline differs
from nernfast in the algorithm (what is computed, how often, in which order), not in the maths,
which ``tests/test_reference_baseline.py`` checks (same losses and predictor gradients as
nernfast's reference path on the same inputs).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn as nn

from nernfast.losses import feature_map_loss_reference, kd_loss, reconstruction_loss
from nernfast.models import collect_features
from nernfast.optim import Ranger
from nernfast.plan import WeightPlan


def encoding_matrix(encoding: nn.Module, coords: torch.Tensor) -> torch.Tensor:
    """The precomputed per-row encodings (N, 6L), fp32, destination-row order."""
    with torch.no_grad():
        return encoding(coords).float().contiguous()


class _Reconstructed(nn.Module):
    """The reference's wrapper: the reconstructed CNN with the distillation source (and the
    original) as submodules, so ``parameters()`` -- made trainable wholesale -- includes theirs."""

    def __init__(self, original: nn.Module, source: nn.Module):
        super().__init__()
        self.original_model = original
        self.reconstructed_model = copy.deepcopy(original)
        if source is not original:
            self.source_model = source


class ReferenceNeRN:
    """One training set-up of the reference algorithm (see the module doc).

    original: the network whose conv weights are reconstructed (its BN/FC are kept).
    predictor: the predictor MLP (trained in place; pass a copy to keep yours).
    plan: nernfast's WeightPlan of ``original`` (layers, row order, kernel sizes).
    enc: ``encoding_matrix(...)`` for ``plan.coords``.
    distill: the distillation source (None: the original).
    """

    def __init__(self, original: nn.Module, predictor: nn.Module, plan: WeightPlan, enc: torch.Tensor, *,
                 distill: nn.Module | None = None, freeze_source: bool = False, weights_batch_size: int = 4096,
                 recon_weight: float = 1.0, fmd_weight: float = 1e-4, kd_weight: float = 1e-4,
                 kd_kind: str = "stable_kl", temperature: float = 1.0, recon_kind: str = "l2",
                 optimizer: torch.optim.Optimizer | None = None):
        self.plan, self.predictor, self.enc = plan, predictor, enc
        self.original = copy.deepcopy(original)
        source = self.original if distill is None else copy.deepcopy(distill)
        self.source, self.same_arch = source, distill is None
        self.wrapper = _Reconstructed(self.original, source).eval()
        self.recon = self.wrapper.reconstructed_model
        # The reference's set-up: original frozen, then every parameter of the wrapper made trainable
        # (which un-freezes the original, a submodule); the fix under test freezes the source again.
        for p in self.wrapper.parameters():
            p.requires_grad_(True)
        if freeze_source:
            for p in source.parameters():
                p.requires_grad_(False)
        self.recon_convs = plan.modules_of(self.recon)
        self.original_weights = plan.weights_of(self.original)  # the reconstruction target (live params)
        self.wbs = weights_batch_size
        self.recon_weight, self.fmd_weight, self.kd_weight = recon_weight, fmd_weight, kd_weight
        self.kd_kind, self.temperature, self.recon_kind = kd_kind, temperature, recon_kind
        self.opt = optimizer or Ranger(predictor.parameters())

    # ---- steps 2-3: predict the whole network and swap it into the reconstructed model -------------
    def _predict(self, enc: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.predictor(c) for c in enc.split(self.wbs)]) if enc.shape[0] else \
            enc.new_zeros(0, self.plan.kernel_size ** 2)

    def predict_all(self, idx: torch.Tensor | None) -> list[torch.Tensor]:
        """Per-layer predicted weights (cropped), differentiable through rows ``idx`` (all when None)."""
        n, K = self.plan.num_rows, self.plan.kernel_size
        if idx is None:
            pred = self._predict(self.enc)
        else:
            idx = idx.to(self.enc.device)
            rest = torch.ones(n, dtype=torch.bool, device=idx.device)
            rest[idx] = False
            rest = rest.nonzero().squeeze(1)
            with_grad = self._predict(self.enc[idx])
            pred = torch.zeros(n, K * K, device=self.enc.device)
            pred[idx] = with_grad
            with torch.no_grad():
                pred[rest] = self._predict(self.enc[rest])
        out = []
        for layer, rows in zip(self.plan.layers, pred.split([l.rows for l in self.plan.layers])):
            w = rows.reshape(layer.shape[0], layer.shape[1], K, K)
            k = layer.shape[2]
            lo = (K - k) // 2
            out.append(w[:, :, lo:lo + k, lo:lo + k])
        return out

    def swap_in(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``conv.weight.data = w`` for every predicted conv; returns the (leaf) conv weights."""
        for conv, w in zip(self.recon_convs, weights):
            conv.weight.data = w.data
        return [conv.weight for conv in self.recon_convs]

    @torch.no_grad()
    def materialize(self) -> nn.Module:
        """The whole network predicted (no autograd) and swapped into the reconstructed model."""
        self.swap_in(self.predict_all(None))
        return self.recon

    # ---- steps 4-5 ----------------------------------------------------------------------------------
    def losses(self, idx: torch.Tensor | None, x: torch.Tensor, warmup: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(loss, parts, predicted weights (graph), conv weights (leaves)) for one step."""
        predicted = self.predict_all(idx)
        updated = self.swap_in(predicted)
        if self.same_arch:
            with collect_features(self.source) as fo:
                src_logits = self.source(x)
            with collect_features(self.recon) as fr:
                logits = self.recon(x)
        else:
            src_logits, fo, fr = self.source(x), None, None
            logits = self.recon(x)
        parts = {"rec": reconstruction_loss(updated, self.original_weights, self.recon_kind),
                 "kd": kd_loss(logits, src_logits, self.kd_kind, self.temperature)}
        if fo is not None:
            parts["fmd"] = feature_map_loss_reference(fr, fo)
        loss = self.recon_weight * parts["rec"]
        if not warmup:
            if self.fmd_weight > 0 and "fmd" in parts:
                loss = loss + self.fmd_weight * parts["fmd"]
            if self.kd_weight > 0:
                loss = loss + self.kd_weight * parts["kd"]
        return loss, parts, predicted, updated

    def backward(self, idx: torch.Tensor | None, x: torch.Tensor, warmup: bool = False
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Steps 2-5: predictor gradients accumulate into ``predictor.*.grad``."""
        loss, parts, predicted, updated = self.losses(idx, x, warmup)
        for w in updated:
            w.grad = None
        loss.backward()
        torch.autograd.backward(predicted, [w.grad for w in updated])
        return loss, parts

    def step(self, idx: torch.Tensor | None, x: torch.Tensor, warmup: bool = False) -> float:
        """One full training step (steps 2-6); returns the loss."""
        self.opt.zero_grad()
        loss, _ = self.backward(idx, x, warmup)
        self.opt.step()
        return float(loss.detach())
