"""The weight plan: which conv weights are predicted, where each kernel lives, and what the
predictor is asked for it.

Rows are kernels in *destination order*: layer by layer, then filter, then channel, exactly the
memory order of the concatenated conv weights. Row ``d`` is fed the coordinates of the chain
position the permutation assigns to it, so the permutation is folded into the coordinates and the
predictor's output rows are already in destination order (all-KxK networks: zero-copy).
The flat buffer holds every predicted weight back to back, each layer in its own kernel size
(k_l <= K; smaller kernels take the centre k_l x k_l of the KxK prediction).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .errors import PlanError
from .permutation import PERMUTATIONS, compute_permutations
from .selection import select_layers

NORMALIZATIONS = ("local", "global", "none")


@dataclass(frozen=True)
class LayerSpec:
    name: str
    shape: tuple[int, int, int, int]  # (c_out, c_in, k, k) of the conv weight

    @property
    def rows(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def numel(self) -> int:
        return self.rows * self.shape[2] * self.shape[3]


class Layout(NamedTuple):
    """A plan's int64 layout tensors on one device (the scatter ops' arguments)."""
    row_offsets: torch.Tensor   # (L+1,)
    buf_offsets: torch.Tensor   # (L+1,)
    kernel_sizes: torch.Tensor  # (L,)
    perm: torch.Tensor          # (N,) chain position -> destination row (index for rows in chain order)


def _offsets(sizes) -> tuple[int, ...]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + s)
    return tuple(out)


class WeightPlan:
    """Layout of the predicted weights; serialisable with ``to_meta``/``from_meta``.

    Immutable: everything is set in ``__init__`` (offsets included, as plain attributes that
    torch.compile reads without tracing a cached_property's lock) or derived from it on first use;
    ``layout(device)`` keeps the scatter ops' tensors per device, derived data the plan owns.
    """

    def __init__(self, layers: Sequence[LayerSpec], kernel_size: int, normalization: str,
                 permutation: str, perm: torch.Tensor, selection: dict[str, Any] | None = None):
        """``selection``: the ``select_layers`` arguments the layers came from (include, exclude,
        smaller_kernels), kept so ``modules_of`` can also refuse a model with convs the plan lacks."""
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
        if permutation not in PERMUTATIONS:
            raise ValueError(f"unknown permutation {permutation!r}; choose one of {PERMUTATIONS}")
        self.layers = tuple(layers)
        self.row_offsets = _offsets(l.rows for l in self.layers)   # (L+1,) first row of each layer
        self.buf_offsets = _offsets(l.numel for l in self.layers)  # (L+1,) first element in the flat buffer
        self._layouts: dict[torch.device, Layout] = {}
        self.kernel_size = kernel_size
        self.normalization = normalization
        self.permutation = permutation
        big = [(l.name, l.shape[2]) for l in self.layers if l.shape[2] > kernel_size]
        if big:
            raise PlanError(f"kernels larger than the predictor's {kernel_size}x{kernel_size} output: {big}; "
                            f"use kernel_size >= {max(k for _, k in big)} or exclude those layers")
        self.selection = None if selection is None else {
            "include": list(selection["include"]) if selection.get("include") else None,
            "exclude": list(selection["exclude"]) if selection.get("exclude") else None,
            "smaller_kernels": selection.get("smaller_kernels")}
        self.perm = perm.to(torch.long).cpu().reshape(-1)  # global chain index -> destination row
        if self.perm.numel() != self.num_rows:
            raise PlanError(f"permutation has {self.perm.numel()} entries, plan has {self.num_rows} rows; "
                            "the saved permutation belongs to another plan")
        n = self.num_rows
        if n and (self.perm.min() < 0 or self.perm.max() >= n
                  or not bool((torch.bincount(self.perm, minlength=n) == 1).all())):
            raise PlanError(f"the permutation is not a bijection of 0..{n - 1} (corrupt artefact?)")
        if n and not torch.equal(self.row_layer[self.perm], self.row_layer):
            raise PlanError("the permutation moves kernels between layers; it must permute within each layer")

    # ---- sizes and offsets -------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return self.row_offsets[-1]

    @property
    def numel(self) -> int:
        return self.buf_offsets[-1]

    def layout(self, device: torch.device | str) -> Layout:
        """The layout as int64 tensors on ``device`` (the scatter ops' arguments), built once per device."""
        device = torch.device(device)
        lay = self._layouts.get(device)
        if lay is None:
            lay = Layout(torch.tensor(self.row_offsets, dtype=torch.long, device=device),
                         torch.tensor(self.buf_offsets, dtype=torch.long, device=device),
                         torch.tensor([l.shape[2] for l in self.layers], dtype=torch.long, device=device),
                         self.perm.to(device))
            self._layouts[device] = lay
        return lay

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.layers]

    @property
    def uniform(self) -> bool:
        """True when every layer is KxK: the predictor's output rows *are* the flat buffer."""
        return all(l.shape[2] == self.kernel_size for l in self.layers)

    @cached_property
    def row_layer(self) -> torch.Tensor:
        """(N,) layer index of every destination row."""
        return torch.repeat_interleave(torch.arange(len(self.layers)), torch.tensor([l.rows for l in self.layers]))

    # ---- coordinates ---------------------------------------------------------------------------
    @cached_property
    def chain_coords(self) -> torch.Tensor:
        """(N, 3) int64 (layer, filter, channel) of every chain position, in chain order."""
        parts = []
        for i, l in enumerate(self.layers):
            j = torch.arange(l.rows)
            parts.append(torch.stack((torch.full_like(j, i), j // l.shape[1], j % l.shape[1]), 1))
        return torch.cat(parts)

    @cached_property
    def int_coords(self) -> torch.Tensor:
        """(N, 3) int64 coordinates fed for each destination row (permutation folded in)."""
        out = torch.empty_like(self.chain_coords)
        out[self.perm] = self.chain_coords
        return out

    def coordinate_scale(self) -> torch.Tensor:
        """(N, 3) float64 divisor turning integer coordinates into the normalised ones."""
        n = self.num_rows
        if self.normalization == "none":
            return torch.ones(n, 3, dtype=torch.float64)
        if self.normalization == "global":
            d = max([len(self.layers)] + [max(l.shape[:2]) for l in self.layers])
            return torch.full((n, 3), float(d), dtype=torch.float64)
        per_layer = torch.tensor([[len(self.layers), l.shape[0], l.shape[1]] for l in self.layers],
                                 dtype=torch.float64)
        return per_layer[self.row_layer]

    @cached_property
    def coords(self) -> torch.Tensor:
        """(N, 3) float32 normalised coordinates, destination order (the predictor's input)."""
        return (self.int_coords.to(torch.float64) / self.coordinate_scale()).float()

    # ---- identity ------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"layers": [[l.name, list(l.shape)] for l in self.layers], "kernel_size": self.kernel_size,
                "normalization": self.normalization, "permutation": self.permutation}

    def to_meta(self) -> dict[str, Any]:
        """JSON-serialisable description; with the permutation tensor, ``from_meta`` rebuilds the plan."""
        meta = self._identity()
        if self.selection is not None:
            meta["selection"] = dict(self.selection)
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any], perm: torch.Tensor) -> "WeightPlan":
        layers = [LayerSpec(n, tuple(s)) for n, s in meta["layers"]]
        return cls(layers, meta["kernel_size"], meta["normalization"], meta["permutation"], perm,
                   meta.get("selection"))

    @cached_property
    def hash(self) -> str:
        """Identity of what the predictor was trained for: layers, K, normalisation, permutation
        (not the selection arguments, which only chose the layers)."""
        h = hashlib.sha256(json.dumps(self._identity(), sort_keys=True).encode())
        h.update(self.perm.numpy().astype("<i8").tobytes())
        return h.hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WeightPlan) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (f"WeightPlan({len(self.layers)} layers, {self.num_rows} rows, K={self.kernel_size}, "
                f"{self.normalization}, {self.permutation}, hash={self.hash})")

    # ---- models --------------------------------------------------------------------------------
    def modules_of(self, model: nn.Module) -> list[nn.Conv2d]:
        """The model's predicted convs in plan order; a clear error if the model does not fit."""
        mods = dict(model.named_modules())
        problems = []
        for l in self.layers:
            m = mods.get(l.name)
            if not isinstance(m, nn.Conv2d):
                problems.append(f"{l.name}: missing (or not a Conv2d)")
            elif _weight_shape(m) != l.shape:
                problems.append(f"{l.name}: model has {_weight_shape(m)}, plan has {l.shape}")
        if self.selection is not None:
            try:
                selected = [n for n, _ in select_layers(model, **self.selection)]
            except PlanError:
                selected = []
            planned = set(self.names)
            extra = [n for n in selected if n not in planned]
            if extra:
                problems.insert(0, f"{len(extra)} conv(s) the plan does not predict: {extra[:4]}"
                                + (" ..." if len(extra) > 4 else ""))
        if problems:
            shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
            raise PlanError(f"model {type(model).__name__} does not match the predictor's weight plan "
                            f"({shown}). Build the same architecture the predictor was trained for.")
        return [mods[l.name] for l in self.layers]

    def weights_of(self, model: nn.Module) -> list[torch.Tensor]:
        return [m.weight for m in self.modules_of(model)]


def _weight_shape(conv: nn.Conv2d) -> tuple[int, ...]:
    """The weight's shape without evaluating a parametrization (which may run a whole predictor)."""
    if parametrize.is_parametrized(conv, "weight"):
        return tuple(conv.parametrizations["weight"].original.shape)
    return tuple(conv.weight.shape)


def build_plan(model: nn.Module, permutation: str = "infilter", normalization: str = "none",
               kernel_size: int | None = None, include: Sequence[str] | None = None,
               exclude: Sequence[str] | None = None, smaller_kernels: bool | None = None,
               cache_dir: str | Path | None = None) -> WeightPlan:
    """Plan the prediction of `model`'s conv weights (their values only choose the permutation)."""
    chosen = select_layers(model, include, exclude, smaller_kernels)
    weights = [m.weight.detach() for _, m in chosen]
    bad = [n for (n, _), w in zip(chosen, weights) if not torch.isfinite(w).all()]
    if bad:
        raise PlanError(f"non-finite values (NaN/Inf) in the weights of {bad}; "
                        "the original checkpoint is corrupt: re-export it or pick another")
    k = kernel_size or max(w.shape[-1] for w in weights)
    layers = [LayerSpec(n, tuple(w.shape)) for (n, _), w in zip(chosen, weights)]
    perms = compute_permutations(weights, permutation, cache_dir)
    offs = torch.tensor([0] + [l.rows for l in layers]).cumsum(0)[:-1]
    perm = torch.cat([p + o for p, o in zip(perms, offs)])
    selection = {"include": include, "exclude": exclude, "smaller_kernels": smaller_kernels}
    return WeightPlan(layers, k, normalization, permutation, perm, selection)
