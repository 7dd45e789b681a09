"""One entropy-coded step per predictor layer, sized by how much each layer's error costs.

The predictor's layers are not equally sensitive: on the Fashion-MNIST H140 predictor, quantising
one layer alone at step 0.07 (BN statistics re-estimated) cost 0.17 pt of validation accuracy for the
input layer (33 600 weights) and 1.04 pt for the third (19 600 weights). With the loss increase of
layer l modelled as ``c_l * rel_l**2`` and its bytes as ``-n_l * log2(rel_l)`` (n_l weights), the
steps that minimise the total loss at the bytes of one shared step ``rel`` are

    rel_l = k * sqrt(n_l / c_l),   k such that  sum_l n_l log2(rel_l) = sum_l n_l log2(rel)

(reverse water-filling). ``c_l`` is measured: the validation cross-entropy after quantising layer l
alone at the probe step ``2 * rel``, BN statistics re-estimated, minus that of the unquantised
predictor (re-estimated the same way). A layer whose probe moves the loss by less than 5 % of the
largest move is treated as that 5 % (its step stays finite). The test split is not read.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch

from ..bn_stats import recalibrated
from ..codec.format2 import Scheme
from . import split_metrics

FLOOR = 0.05  # the smallest sensitivity, as a fraction of the largest


def _val_loss(nern: Any, model: torch.nn.Module, bundle: Any, batches: int, device: torch.device, seed: int) -> float:
    """Validation cross-entropy of ``nern``'s network with BN statistics re-estimated for it."""
    return split_metrics(recalibrated(nern, model, bundle, batches, device, seed), bundle, "val", device)[1]


def water_fill(numels: list[int], costs: list[float], rel: float) -> list[float]:
    """Per-layer steps minimising sum c_l rel_l^2 at the bytes of the shared step ``rel``."""
    top = max(costs)
    if top <= 0:
        return [rel] * len(numels)
    c = [max(x, FLOOR * top) for x in costs]
    shape = [math.sqrt(n / x) for n, x in zip(numels, c)]
    total = sum(numels)
    log_k = sum(n * (math.log2(rel) - math.log2(r)) for n, r in zip(numels, shape)) / total
    return [2.0 ** log_k * r for r in shape]


def allocate_steps(nern: Any, model: torch.nn.Module, bundle: Any, rel: float, device: torch.device,
                   bn_batches: int = 40, seed: int = 0) -> tuple[Scheme, dict[str, Any]]:
    """The ``ans`` scheme with one step per predictor weight matrix (see the module doc) and what
    was measured."""
    lins = nern.predictor.linears()
    base = _val_loss(nern, model, bundle, bn_batches, device, seed)
    probe, costs = Scheme("ans", step=2 * rel), []
    for i in range(len(lins)):
        q = copy.deepcopy(nern)  # the probe quantises a copy: nern itself stays fp32
        with torch.no_grad():
            target = q.predictor.linears()[i]
            target.weight.copy_(probe.roundtrip(target.weight, i))
        costs.append(_val_loss(q, model, bundle, bn_batches, device, seed) - base)
    numels = [lin.weight.numel() for lin in lins]
    steps = water_fill(numels, costs, rel)
    info = {"shared_step": rel, "probe_step": 2 * rel, "val_loss_unquantised": base,
            "val_loss_increase": costs, "weights": numels, "layer_steps": steps}
    return Scheme("ans", step=rel, layer_steps=tuple(steps)), info
