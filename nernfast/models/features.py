"""Feature maps for the feature-map distillation loss, collected with forward hooks.

As in the NeRN reference, the maps are the outputs of every conv+BN pair and of every residual
block (after its sum). `forward` is left untouched: hooks record into a list while active.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torchvision.models.resnet as tv_resnet

from .cifar_resnet import BasicBlock

BLOCK_TYPES: tuple[type[nn.Module], ...] = (BasicBlock, tv_resnet.BasicBlock, tv_resnet.Bottleneck)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are distilled, in forward order (BN layers and residual blocks)."""
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d,) + BLOCK_TYPES)]


@contextmanager
def collect_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the context, every forward of `model` appends its feature maps to the yielded list."""
    feats: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: feats.append(out)) for m in feature_modules(model)]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
