"""CIFAR ResNets (He et al. 2016, §4.2) in the layout of the NeRN and akamaster code.

Module names (`conv1 bn1 layer1..layer3 linear`, blocks with `conv1 bn1 conv2 bn2 shortcut`) match
those repositories so their checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by 2 and zero-pad the new channels (parameter free)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes)
            elif shortcut == "B":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "A", width: int = 16):
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], 1, shortcut)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], 2, shortcut)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], 2, shortcut)
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int, shortcut: str) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s, shortcut))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


CIFAR_DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
                 width: int = 16) -> CifarResNet:
    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(CIFAR_DEPTHS)}, got {depth}")
    n = CIFAR_DEPTHS[depth]
    return CifarResNet([n, n, n], num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, width=width)
