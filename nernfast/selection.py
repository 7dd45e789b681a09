"""Which conv layers of a model are predicted, as the NeRN reference chooses them.

- CIFAR ResNets: every conv (option-B 1x1 shortcuts included; they take the centre of the KxK output).
- torchvision ResNets: the 3x3 convs inside residual blocks (stem and 1x1 downsamples kept as they are).
- Any other module: every square Conv2d of the largest square kernel size K (smaller square kernels
  too with ``smaller_kernels=True``).
Include/exclude regular expressions on module names override the defaults.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch.nn as nn
import torchvision

from .errors import PlanError  # noqa: F401  (raised here; ``from nernfast.selection import PlanError`` still works)
from .models.cifar_resnet import CifarResNet


def _square(conv: nn.Conv2d) -> bool:
    return conv.kernel_size[0] == conv.kernel_size[1]


def select_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    smaller_kernels: bool | None = None,
) -> list[tuple[str, nn.Conv2d]]:
    """Return ``(name, conv)`` for every predicted conv, in module order.

    Grouped and dilated convs are handled: only the weight tensor's shape matters to the predictor.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if include:
        pats = [re.compile(p) for p in include]
        chosen = [(n, m) for n, m in convs if any(p.fullmatch(n) for p in pats)]
        bad = [n for n, m in chosen if not _square(m)]
        if bad:
            raise PlanError(f"layers {bad} have non-square kernels and cannot be predicted; drop them from include")
    elif isinstance(model, CifarResNet):
        chosen = convs
    elif isinstance(model, torchvision.models.ResNet):
        chosen = [(n, m) for n, m in convs
                  if re.fullmatch(r"layer\d+\.\d+\.conv\d", n) and m.kernel_size == (3, 3)]
    else:
        square = [(n, m) for n, m in convs if _square(m)]
        if not square:
            chosen = []
        else:
            k = max(m.kernel_size[0] for _, m in square)
            chosen = [(n, m) for n, m in square if m.kernel_size[0] == k or smaller_kernels]
    if smaller_kernels is False:
        k = max((m.kernel_size[0] for _, m in chosen), default=0)
        chosen = [(n, m) for n, m in chosen if m.kernel_size[0] == k]
    if exclude:
        pats = [re.compile(p) for p in exclude]
        chosen = [(n, m) for n, m in chosen if not any(p.fullmatch(n) for p in pats)]
    if not chosen:
        raise PlanError(
            f"{type(model).__name__} has no convolution layers to predict "
            f"({len(convs)} Conv2d found); pass include=[name regex, ...] to choose layers explicitly"
        )
    return chosen
