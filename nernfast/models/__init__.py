"""Model zoo: CIFAR ResNets (akamaster/NeRN layout) and torchvision ResNets."""
from __future__ import annotations

import copy
import re

import torch.nn as nn

from .cifar_resnet import BasicBlock, CifarResNet, cifar_resnet
from .ensemble import Ensemble
from .features import collect_features, feature_modules
from .imagenet_resnet import cifar_stem_resnet18, cifar_stem_resnet50, imagenet_resnet

MODEL_NAMES = (
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet20b", "resnet32b", "resnet44b", "resnet56b", "resnet110b",
    "resnet20w2", "resnet56w2",
    "resnet18", "resnet34", "resnet50", "resnet18_cifar", "resnet50_cifar",
)


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a model by name. `resnetNN` (NN in 20/32/44/56/110) are CIFAR ResNets with option-A
    shortcuts, `resnetNNb` the same with option-B (1x1 conv) shortcuts, `resnetNNw2` (or `bw2`) twice
    as wide (a stronger teacher of the same family); `resnet18/34/50` are torchvision's ImageNet
    layout; `resnet18_cifar`/`resnet50_cifar` have a CIFAR stem."""
    key = name.lower()
    m = re.fullmatch(r"resnet(20|32|44|56|110)(b?)(?:w(\d+))?", key)
    if m:
        return cifar_resnet(int(m.group(1)), num_classes, in_channels, shortcut="B" if m.group(2) else "A",
                            width=16 * int(m.group(3) or 1))
    if key in ("resnet18", "resnet34", "resnet50"):
        return imagenet_resnet(int(key[6:]), num_classes, in_channels)
    if key == "resnet50_cifar":
        return cifar_stem_resnet50(num_classes, in_channels)
    if key == "resnet18_cifar":
        return cifar_stem_resnet18(num_classes, in_channels)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def copy_frozen(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no parameter requiring grad (originals, teachers, shells)."""
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


__all__ = [
    "BasicBlock", "CifarResNet", "Ensemble", "MODEL_NAMES", "build_model", "cifar_resnet", "cifar_stem_resnet18",
    "cifar_stem_resnet50", "collect_features", "copy_frozen", "feature_modules", "imagenet_resnet",
]
