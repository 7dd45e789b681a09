"""The NeRN "KxK" predictor MLP.

``num_blocks`` linear layers in all: Linear(in, H) and (num_blocks - 2) x Linear(H, H), each followed
by ReLU, then Linear(H, K*K). Parameter names (``layers.i``, ``final_linear_layer``) are those of the
public NeRN implementation, so its predictor state_dicts load directly.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

INITS = ("default", "fmod")


class Predictor(nn.Module):
    def __init__(self, in_features: int, hidden: int, kernel_size: int = 3, num_blocks: int = 5,
                 init: str = "default"):
        super().__init__()
        if num_blocks < 2:
            raise ValueError(f"num_blocks must be >= 2 (input and output layers), got {num_blocks}")
        self.in_features, self.hidden, self.kernel_size, self.num_blocks = in_features, hidden, kernel_size, num_blocks
        self.layers = nn.ModuleList(
            [nn.Linear(in_features, hidden)] + [nn.Linear(hidden, hidden) for _ in range(num_blocks - 2)]
        )
        self.final_linear_layer = nn.Linear(hidden, kernel_size * kernel_size)
        if init == "fmod":
            # Our reading of NeRN's "fmod" init: N(0,1) folded into (-2, 2), scaled to Kaiming fan-in.
            with torch.no_grad():
                for lin in self.linears():
                    lin.weight.copy_(torch.fmod(torch.randn_like(lin.weight), 2) / lin.in_features ** 0.5)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")

    def linears(self) -> list[nn.Linear]:
        return [*self.layers, self.final_linear_layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.final_linear_layer(x)

    def hidden_from_first(self, h: torch.Tensor) -> torch.Tensor:
        """Finish the forward from the first layer's pre-activation (used by the table shortcut)."""
        h = F.relu(h)
        for lin in self.layers[1:]:
            h = F.relu(lin(h))
        return self.final_linear_layer(h)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_row(self) -> int:
        return sum(2 * lin.in_features * lin.out_features for lin in self.linears())
