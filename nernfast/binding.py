"""A model's predicted conv weights as views into one flat buffer, so one call rewrites them all.

    flat = bind_flat(model, plan)     # weights now view `flat` (values unchanged); idempotent
    write_rows_(flat, rows, plan)     # nernfast.ops.scatter: the whole network in one op call

Binding sets each predicted conv's ``weight.data`` to its slice of the buffer (layer i at
``plan.buf_offsets[i]``, contiguous, the plan's layer order), so the Parameter objects stay the same
(optimisers, hooks and state_dict keys are unaffected). The buffer is not stored anywhere: a model is
bound exactly when its predicted weights *are* such views of one storage, which ``flat_of`` checks
from the weights themselves (data pointers, offsets, dtype, device) on every call. Anything that gives
a weight new storage -- ``model.to(dtype/device)``, ``.half()``, ``.cuda()``,
``load_state_dict(..., assign=True)``, ``weight.data = ...`` -- therefore shows up as "not bound", and
``bind_flat`` re-binds in the weights' current dtype and device (keeping their current values): a
write can never land in a buffer the model no longer reads. ``load_state_dict`` without ``assign``
copies in place and keeps the binding. Re-binding makes weights contiguous (a channels_last weight
comes back in the default memory format).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from .plan import WeightPlan
from .errors import PlanError


def _weights(model: nn.Module, plan: WeightPlan) -> list[torch.Tensor]:
    mods = plan.modules_of(model)
    para = [l.name for l, m in zip(plan.layers, mods) if parametrize.is_parametrized(m, "weight")]
    if para:
        raise PlanError(f"the weights of {para[:3]}{' ...' if len(para) > 3 else ''} are parametrized "
                        "(NeRN.parametrize_): they are computed from the predictor at every forward and cannot be "
                        "bound or materialized; call NeRN.unparametrize_(model) first")
    return [m.weight for m in mods]


def flat_of(model: nn.Module, plan: WeightPlan) -> torch.Tensor | None:
    """The flat buffer ``model``'s predicted weights are views of, or None when they are not (anymore)."""
    ws = _weights(model, plan)
    first = ws[0]
    dtype, device, size = first.dtype, first.device, first.element_size()
    base = first.data_ptr()  # plan.buf_offsets[0] == 0
    storage = first.untyped_storage()
    sptr = storage.data_ptr()
    for w, off in zip(ws, plan.buf_offsets):
        # Separate allocations can sit back to back (CUDA's caching allocator): require one storage too.
        if (w.dtype != dtype or w.device != device or not w.is_contiguous()
                or w.data_ptr() != base + off * size or w.untyped_storage().data_ptr() != sptr):
            return None
    if storage.nbytes() < (first.storage_offset() + plan.numel) * size:
        return None
    return first.detach().as_strided((plan.numel,), (1,), first.storage_offset())


@torch.no_grad()
def bind_flat(model: nn.Module, plan: WeightPlan) -> torch.Tensor:
    """Make ``model``'s predicted conv weights views into one flat buffer and return it.

    A no-op returning the existing buffer when already bound; otherwise (first call, or after the
    weights got new storage) allocates a buffer in the weights' dtype and device, copies their current
    values in, and points every weight at its slice.
    """
    flat = flat_of(model, plan)
    if flat is not None:
        return flat
    ws = _weights(model, plan)
    kinds = {(w.dtype, w.device) for w in ws}
    if len(kinds) > 1:
        raise PlanError(f"the predicted conv weights mix dtypes/devices {sorted(map(str, kinds))}; "
                        "convert the model to one dtype and device (model.to(...)) before binding")
    # Outside inference mode even when called in it: inference tensors as weights would break training later.
    with torch.inference_mode(False):
        flat = torch.empty(plan.numel, dtype=ws[0].dtype, device=ws[0].device)
        for w, off in zip(ws, plan.buf_offsets):
            view = flat[off:off + w.numel()].view(w.shape)
            view.copy_(w)
            w.data = view
    return flat


def is_bound(model: nn.Module, plan: WeightPlan) -> bool:
    return flat_of(model, plan) is not None
