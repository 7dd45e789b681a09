"""BatchNorm re-estimation for a quantised predictor.

Quantising the predictor moves every predicted conv weight a little; across 19 layers the shifts
compound, and the BN running statistics stored with the artefact (measured on the fp32 network)
no longer match the activations. Re-estimating them on training images is the standard
post-training remedy (e.g. Nagel et al., "A White Paper on Neural Network Quantization", §4.1).
The statistics live in the artefact's BN/FC part anyway, so this costs no bytes.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn


def recalibrated(nern: Any, model: nn.Module, bundle: Any, batches: int, device: torch.device,
                 seed: int = 0, batch_size: int = 128) -> nn.Module:
    """A copy of ``model`` holding ``nern``'s predicted weights, with its BN running statistics
    re-estimated (cumulative average) over ``batches`` shuffled training batches without
    augmentation. ``model`` itself is unchanged."""
    if batches < 1:
        raise ValueError(f"BN re-estimation needs >= 1 batch, got {batches}")
    m = copy.deepcopy(model).to(device)
    nern.materialize_(m)
    loader = bundle.loader("train", batch_size, shuffle=True, augment=False, seed=seed)
    update_bn(itertools.islice(loader, batches), m, device)
    return m.eval()

