"""BatchNorm statistics for a network rebuilt from a predictor.

A predictor reproduces each conv weight only approximately (after training, and more so after
quantisation); the errors shift every channel's mean and variance, the shift compounds over the
depth, and BN running statistics measured on other weights (the original's, or the fp32
predictor's) no longer match the activations. Re-estimating them on training images is the
standard remedy (e.g. Nagel et al., "A White Paper on Neural Network Quantization", §4.1). Used
before the distillation phase (``phase2.bn_recalibration``: Fashion-MNIST after phase 1 63 -> 91 %
and 83 -> 93 % validation accuracy, docs/fashion-mnist-tuning.md, R1) and by nernfast.compress
around its fine-tune. BN layers are not predicted: an artefact stores their statistics anyway, so
this costs no bytes. Also after each progressive round (``progressive.bn_recalibration``), whose
rounds otherwise inherit statistics measured on ever older weights, and at the end of recon_only and
baseline (``bn_recalibration_end``), whose kept networks otherwise carry the original's.
``load_buffers`` puts statistics gathered elsewhere (a phase that trains with batch statistics,
``phase.bn_batch_stats``) into a network.
"""
from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn


def recalibrated(nern: Any, model: nn.Module, bundle: Any, batches: int, device: torch.device | str,
                 seed: int = 0, batch_size: int = 128) -> nn.Module:
    """A copy of ``model`` (eval mode) holding ``nern``'s predicted weights, with its BN running
    statistics re-estimated (cumulative average, every batch weighing the same) over ``batches``
    shuffled training batches without augmentation -- the images the network is evaluated on.
    Everything else (BN affine parameters, FC, unpredicted convs) is ``model``'s, which is unchanged."""
    if batches < 1:
        raise ValueError(f"BN re-estimation needs >= 1 batch, got {batches}")
    m = copy.deepcopy(model).to(device)
    nern.materialize_(m)
    loader = bundle.loader("train", batch_size, shuffle=True, augment=False, seed=seed)
    with torch.no_grad():
        update_bn(itertools.islice(loader, batches), m, device)
    return m.eval()


def load_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> nn.Module:
    """Copy ``buffers`` (name -> tensor, every buffer of ``model``: BN running statistics) into ``model``."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    return model
