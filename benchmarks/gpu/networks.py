"""The benchmark networks: a NeRN per real model (whole plan, or a slice of it in the CPU smoke run),
with the 4096-row subset that carries gradient."""
from __future__ import annotations

import copy

import torch

from . import common
from .common import device

# name, architecture, classes, hidden, permutation ("none" for ResNet-18: its greedy chains take
# minutes on the CPU and do not change the work)
NETWORKS = [("resnet20-h140", "resnet20", 10, 140, "infilter"), ("resnet56-h320", "resnet56", 10, 320, "infilter"),
            ("resnet56-h680", "resnet56", 10, 680, "infilter"), ("resnet18-h1024", "resnet18", 1000, 1024, "none")]
SMOKE_NETWORKS = [("resnet20-h24-slice", "resnet20", 10, 24, "infilter")]
SMOKE_ROWS = 80       # rows of the smoke network's plan actually used (the interpreter is slow)
GRAD_ROWS = 4096      # rows carrying gradient (paper D.2, CIFAR)


class Network:
    def __init__(self, spec, smoke: bool = False):
        from nernfast.models import build_model
        from nernfast.nern import NeRN
        self.name, arch, classes, hidden, perm = spec
        torch.manual_seed(0)
        self.model = build_model(arch, classes)
        self.nern = NeRN.from_model(self.model, hidden=hidden, permutation=perm)
        self.model, self.nern = self.model.to(device()), self.nern.to(device())
        self.plan, self.pred, self.enc = self.nern.plan, self.nern.predictor, self.nern.encoding
        self.coords = self.nern.coords[:SMOKE_ROWS] if smoke else self.nern.coords
        self.n = self.coords.shape[0]
        g = torch.Generator().manual_seed(1)
        self.idx = torch.randperm(self.n, generator=g)[:min(GRAD_ROWS, self.n)].to(device())
        self.kk = self.plan.kernel_size ** 2

    def predictor(self, prec: str):
        from nernfast.testing.kernel_harness import DTYPES
        return copy.deepcopy(self.pred).to(DTYPES[prec])

    def flops(self, table: bool) -> float:
        """FLOPs executed for all rows: per-row products (without the first layer for tables)."""
        p = self.pred
        per_row = p.flops_per_row() - (2 * p.in_features * p.hidden if table else 0)
        extra = 0
        if table:
            from nernfast.ops.tables import coordinate_index
            extra = 2 * coordinate_index(self.coords).num_entries * p.in_features * p.hidden
        return float(self.n * per_row + extra)


def find(name: str):
    return next(s for s in NETWORKS + SMOKE_NETWORKS if s[0] == name)


def chosen(names: str = "") -> list:
    if common.CPU_SMOKE:
        return SMOKE_NETWORKS
    return [s for s in NETWORKS if not names or s[0] in names.split(",")]
