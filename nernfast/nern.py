"""NeRN: a predictor MLP that represents the conv weights of a model, and the ways to use it.

    nern = NeRN.from_model(model, hidden=140)       # plan + encoding + predictor
    nern.materialize_(model)                         # write predicted weights in place (no grad)
    w = nern.weights()                               # {name: differentiable weight} for functional_call
    nern.parametrize_(model)                         # model(x) uses predicted weights with autograd
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .batching import sample_rows, with_subset_gradient
from .binding import bind_flat
from .encoding import build_encoding
from .ops.predict import predict_rows
from .ops.scatter import flat_views, rows_to_flat, write_rows_
from .plan import WeightPlan, build_plan
from .predictor import Predictor
from .errors import PlanError


class NeRN(nn.Module):
    def __init__(self, plan: WeightPlan, predictor: Predictor, encoding: nn.Module,
                 encoding_args: dict[str, Any] | None = None):
        super().__init__()
        if predictor.kernel_size != plan.kernel_size:
            raise PlanError(f"predictor outputs {predictor.kernel_size}x{predictor.kernel_size} kernels, "
                            f"plan needs {plan.kernel_size}x{plan.kernel_size}")
        self.plan, self.predictor, self.encoding = plan, predictor, encoding
        self.encoding_args = dict(encoding_args or {})
        self.register_buffer("coords", plan.coords.clone(), persistent=False)
        self.predictor_calls = 0  # whole-network evaluations, for tests and diagnostics

    @classmethod
    def from_model(cls, model: nn.Module, hidden: int, num_blocks: int = 5, permutation: str = "infilter",
                   normalization: str = "none", encoding: str = "basic", levels: int = 40, base: float = 0.76,
                   ffn_features: int = 120, ffn_sigma: float = 1.0, ffn_seed: int = 0, init: str = "default",
                   kernel_size: int | None = None, include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None, smaller_kernels: bool | None = None,
                   cache_dir: str | Path | None = None) -> "NeRN":
        plan = build_plan(model, permutation, normalization, kernel_size, include, exclude, smaller_kernels, cache_dir)
        enc_args = dict(kind=encoding, levels=levels, base=base, ffn_features=ffn_features,
                        ffn_sigma=ffn_sigma, ffn_seed=ffn_seed)
        enc = build_encoding(**enc_args)
        pred = Predictor(enc.out_features, hidden, plan.kernel_size, num_blocks, init)
        return cls(plan, pred, enc, enc_args).to(next(model.parameters()).device)

    # ---- sizes ---------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return self.predictor.num_parameters()

    def compression_ratio(self) -> float:
        """The paper's CR: predictor parameters / predicted (original) parameters."""
        return self.num_parameters() / self.plan.numel

    def size_report(self) -> dict[str, float]:
        p = self.num_parameters()
        return {"predictor_params": p, "predicted_params": self.plan.numel,
                "predictor_mb": p * 4 / 2**20, "predicted_mb": self.plan.numel * 4 / 2**20,
                "compression_ratio": p / self.plan.numel,
                # The permutation must ship with the predictor: int32 per row in the artefact.
                "permutation_bytes": 0 if self.plan.permutation == "none" else self.plan.num_rows * 4}

    # ---- prediction ----------------------------------------------------------------------------
    def predict(self, idx: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        """Predicted rows (n, K*K) for destination rows ``idx`` (all when None), in the current grad mode."""
        coords = self.coords if idx is None else self.coords[idx.to(self.coords.device)]
        return predict_rows(self.predictor, self.encoding, coords, chunk)

    def rows(self, idx: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        """All N rows; gradient flows only through ``idx`` (through every row when None)."""
        self.predictor_calls += 1
        if idx is None:
            return self.predict(chunk=chunk)
        with torch.no_grad():
            full = self.predict(chunk=chunk)
        return with_subset_gradient(full, idx, self.predict(idx))

    def flat(self, rows: torch.Tensor) -> torch.Tensor:
        return rows_to_flat(rows, self.plan)

    def layer_weights(self, idx: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Predicted conv weights in plan order (views into one flat buffer)."""
        return flat_views(self.flat(self.rows(idx)), self.plan)

    def weights(self, method: str = "all", batch_size: int = 4096, generator: torch.Generator | None = None,
                norms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{conv_name + '.weight': tensor}`` for ``torch.func.functional_call``, differentiable through
        the weight mini-batch chosen by ``method`` (see nernfast.batching)."""
        # Seeded from the global RNG (not torch.seed(), which would reseed it at random).
        g = generator or torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        idx = sample_rows(method, self.plan.num_rows, batch_size, g, norms)
        return {f"{n}.weight": w for n, w in zip(self.plan.names, self.layer_weights(idx))}

    @torch.no_grad()
    def materialize_(self, model: nn.Module, chunk: int | None = None, dtype: torch.dtype | None = None) -> nn.Module:
        """Write every predicted weight into ``model`` in place (no autograd) with one op call for the
        whole network. The first call binds the model's predicted conv weights as views into one flat
        buffer (nernfast.binding); after ``model.to(...)``, ``.half()``, ``load_state_dict(..., assign=True)``
        it re-binds in the weights' current dtype and device. Returns ``model``.

        chunk: rows per step (None: ``nernfast.ops.predict.CPU_CHUNK`` on the CPU, one step on CUDA).
        dtype: the predictor's compute dtype (None: its parameters' dtype); e.g. ``torch.bfloat16`` runs
            its matmuls in bf16 under autocast, the weights still written in the model's dtype."""
        flat = bind_flat(model, self.plan)
        pdtype = next(self.predictor.parameters()).dtype
        if dtype is not None and dtype != pdtype:
            with torch.autocast(self.coords.device.type, dtype=dtype):
                write_rows_(flat, self.rows(chunk=chunk), self.plan)
            return model
        if self.plan.uniform and flat.device == self.coords.device and flat.dtype == pdtype:
            # Zero-copy: the predictor writes its rows straight into the conv weights (the fused Triton
            # kernel on CUDA stores them there; the PyTorch path copies once).
            self.predictor_calls += 1
            predict_rows(self.predictor, self.encoding, self.coords, chunk, out=flat.view(self.plan.num_rows, -1))
        else:
            write_rows_(flat, self.rows(chunk=chunk), self.plan)
        return model

    # ---- parametrize ---------------------------------------------------------------------------
    def parametrize_(self, model: nn.Module) -> nn.Module:
        """Make ``model(x)`` compute with predicted weights, differentiably, evaluating the predictor
        once per forward (not once per conv). Undo with ``unparametrize_``."""
        mods = self.plan.modules_of(model)
        if any(parametrize.is_parametrized(m, "weight") for m in mods):
            raise PlanError("model's predicted convs are already parametrized; call unparametrize_(model) first")
        shared = _SharedPrediction(self)
        for i, m in enumerate(mods):
            parametrize.register_parametrization(m, "weight", _PredictedWeight(shared, i), unsafe=True)
        # The prediction is shared by all convs of one forward and dropped before and after it.
        model._nernfast_hooks = [model.register_forward_pre_hook(lambda *_: shared.clear()),
                                 model.register_forward_hook(lambda *_: shared.clear())]
        return model

    def unparametrize_(self, model: nn.Module, keep_predicted: bool = True) -> nn.Module:
        """Remove ``parametrize_``: the convs keep the current predicted weights (``keep_predicted``)
        or get their original tensors back."""
        for m in self.plan.modules_of(model):
            if parametrize.is_parametrized(m, "weight"):
                with torch.no_grad():
                    parametrize.remove_parametrizations(m, "weight", leave_parametrized=keep_predicted)
        for h in getattr(model, "_nernfast_hooks", []):
            h.remove()
        model.__dict__.pop("_nernfast_hooks", None)
        return model


class _SharedPrediction:
    """Predicts the whole network once and hands each conv its slice until cleared (by the model's
    forward hooks), or until the predictor's parameters change or the grad mode differs."""

    def __init__(self, nern: NeRN):
        self.nern, self.cache, self.key = nern, None, None

    def clear(self) -> None:
        self.cache = self.key = None

    def get(self, i: int) -> torch.Tensor:
        key = (torch.is_grad_enabled(), tuple(p._version for p in self.nern.predictor.parameters()))
        if self.cache is None or key != self.key:
            self.cache, self.key = self.nern.layer_weights(), key
        return self.cache[i]


class _PredictedWeight(nn.Module):
    def __init__(self, shared: _SharedPrediction, index: int):
        super().__init__()
        self._shared = [shared]  # a list keeps the NeRN out of this module's children
        self.index = index

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # In the conv's dtype and device (after model.half() / .to()), as materialize_ writes it.
        return self._shared[0].get(self.index).to(original)
