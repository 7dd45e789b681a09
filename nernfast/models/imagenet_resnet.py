"""torchvision ResNets (ImageNet layout) and a CIFAR-stem ResNet-50 used as a teacher."""
from __future__ import annotations

import torch.nn as nn
import torchvision


def _adapt_stem(model: nn.Module, in_channels: int) -> None:
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)


def imagenet_resnet(depth: int, num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision ResNet-18/34/50 with random init (weights are loaded from users' files, never downloaded)."""
    ctor = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
    if depth not in ctor:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(ctor)}, got {depth}")
    model = ctor[depth](weights=None, num_classes=num_classes)
    _adapt_stem(model, in_channels)
    return model


def cifar_stem_resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-50 with a 3x3 stride-1 stem and no max-pool, the usual choice for 32x32 inputs."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def cifar_stem_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
