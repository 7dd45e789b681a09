"""BatchNorm statistics for the rebuilt network.

The predictor reproduces each conv weight only approximately, and the errors shift every channel's
mean and variance; the original's running statistics, frozen, then normalise the wrong thing, and the
shift compounds over the depth. Re-estimating the statistics on a few thousand training images
recovers most of the loss (measured after phase 1 on Fashion-MNIST/ResNet-20 at CR 0.35: 63 -> 91 %
and 83 -> 93 % validation accuracy for seeds 1 and 0; digits 24 -> 97 %: docs/fashion-mnist-tuning.md,
R1). BN layers are not predicted: an artefact stores their statistics anyway, so this costs no bytes.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn

from ..models import copy_frozen
from ..nern import NeRN


def recalibrated_shell(nern: NeRN, shell: nn.Module, batches: Iterable, device: torch.device | str) -> nn.Module:
    """A frozen copy of ``shell`` whose BatchNorm running statistics are those of the network ``nern``
    rebuilds, on ``batches`` (``(x, y)`` pairs; every batch weighs the same). Everything else (BN affine
    parameters, FC, unpredicted convs) stays ``shell``'s; ``shell`` itself is not touched."""
    net = copy_frozen(shell)
    nern.materialize_(net)
    with torch.no_grad():
        update_bn(batches, net, device)
    return net.eval()
