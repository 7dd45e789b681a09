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

from .cifar_resnet import BasicBlock, CifarResNet

BLOCK_TYPES: tuple[type[nn.Module], ...] = (BasicBlock, tv_resnet.BasicBlock, tv_resnet.Bottleneck)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are distilled (BN layers and residual blocks), in registration order."""
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d,) + BLOCK_TYPES)]


def _may_modify_outputs_in_place(model: nn.Module) -> bool:
    """False only for models whose forward is known never to modify a BN or block output in place.

    torchvision's ResNets do (``nn.ReLU(inplace=True)`` right after each BN, ``out += identity``
    after the last BN of a block), which would silently turn a recorded BN output into the
    post-ReLU or post-sum tensor.
    """
    return not isinstance(model, CifarResNet)


@contextmanager
def collect_features(model: nn.Module, clone: bool | None = None) -> Iterator[list[torch.Tensor]]:
    """Within the context, every forward of `model` appends its feature maps to the yielded list
    (in execution order). ``clone`` copies each map as it is recorded so later in-place ops of the
    forward cannot change it; the default clones unless the model is one of our CIFAR ResNets."""
    feats: list[torch.Tensor] = []
    copy = _may_modify_outputs_in_place(model) if clone is None else clone

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        feats.append(out.clone() if copy else out)

    handles = [m.register_forward_hook(hook) for m in feature_modules(model)]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()
