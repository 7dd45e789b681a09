"""The compressed artefact: predictor + permutation + the parameters that are not predicted.

One ``.safetensors`` file. Tensors: ``predictor.*`` (the MLP), ``encoding.*`` (persistent encoding
buffers, e.g. the ffn matrix), ``plan.perm`` (int32 row permutation; part of the compressed size),
``model.*`` (every model state entry that is not a predicted conv weight: BN, FC, excluded convs).
The header's ``nernfast`` metadata entry is JSON: architecture, plan, plan hash, predictor and
encoding settings, the resolved run config and the run's metrics.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from .encoding import build_encoding
from .models import build_model
from .nern import NeRN
from .plan import WeightPlan
from .predictor import Predictor
from .selection import PlanError

FORMAT = "nernfast-artefact-1"


class ArtefactError(ValueError):
    pass


def save_artefact(path: str | Path, nern: NeRN, model: nn.Module, architecture: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename). ``model`` supplies the non-predicted parameters."""
    path = Path(path)
    predicted = {f"{n}.weight" for n in nern.plan.names}
    tensors = {f"predictor.{k}": v for k, v in nern.predictor.state_dict().items()}
    tensors.update({f"encoding.{k}": v for k, v in nern.encoding.state_dict().items()})
    tensors["plan.perm"] = nern.plan.perm.to(torch.int32)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items() if k not in predicted})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "architecture": architecture or {},
        "plan": nern.plan.to_meta(),
        "plan_hash": nern.plan.hash,
        "predictor": {"hidden": nern.predictor.hidden, "num_blocks": nern.predictor.num_blocks,
                      "kernel_size": nern.predictor.kernel_size, "in_features": nern.predictor.in_features},
        "encoding": nern.encoding_args,
        "sizes": nern.size_report(),
        "config": config or {},
        "metrics": metrics or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"nernfast": json.dumps(meta, default=str)})
    os.replace(tmp, path)
    return path


def read_artefact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"artefact {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for foreign files
        raise ArtefactError(f"{path} is not a safetensors file ({e}); pass a nernfast artefact (.safetensors)") from None
    if "nernfast" not in header:
        raise ArtefactError(f"{path} is a safetensors file without nernfast metadata; it is not a nernfast artefact")
    meta = json.loads(header["nernfast"])
    if meta.get("format") != FORMAT:
        raise ArtefactError(f"{path}: unsupported artefact format {meta.get('format')!r} (this nernfast reads {FORMAT})")
    return meta, tensors


def is_artefact(path: str | Path) -> bool:
    try:
        read_artefact(path)
        return True
    except (ArtefactError, OSError):
        return False


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_nern(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu"
              ) -> tuple[NeRN, nn.Module, dict[str, Any]]:
    """(NeRN, model with non-predicted parameters loaded, metadata). The model is built from the
    artefact's architecture unless given; a model that does not fit raises a clear error."""
    meta, tensors = read_artefact(path)
    arch = meta.get("architecture") or {}
    if model is None:
        if "name" not in arch:
            raise ArtefactError(f"{path} does not name its architecture; pass model=<your nn.Module>")
        model = build_model(arch["name"], arch.get("num_classes", 10), arch.get("in_channels", 3))
    plan = WeightPlan.from_meta(meta["plan"], tensors["plan.perm"].long())
    plan.modules_of(model)  # raises PlanError naming every mismatch
    rest = _sub(tensors, "model.")
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in rest.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise PlanError(f"artefact {path} does not fit {type(model).__name__} (artefact vs model: {', '.join(bad[:4])}); "
                        "build the model with the artefact's number of classes and input channels")
    missing, unexpected = model.load_state_dict(rest, strict=False)
    predicted = {f"{n}.weight" for n in plan.names}
    missing = [k for k in missing if k not in predicted]
    if missing or unexpected:
        raise PlanError(f"artefact {path} does not fit {type(model).__name__}: missing {missing[:10]}, "
                        f"unexpected {unexpected[:10]}")
    enc = build_encoding(**meta["encoding"])
    enc.load_state_dict(_sub(tensors, "encoding."))
    p = meta["predictor"]
    pred = Predictor(p["in_features"], p["hidden"], p["kernel_size"], p["num_blocks"])
    pred.load_state_dict(_sub(tensors, "predictor."))
    nern = NeRN(plan, pred, enc, meta["encoding"]).to(device)
    return nern, model.to(device), meta


def load(path: str | Path, model: nn.Module | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """A ready ``nn.Module`` (eval mode) with every predicted weight decoded from the artefact."""
    nern, model, _ = load_nern(path, model, device)
    nern.materialize_(model)
    return model.eval()


def export_state_dict(path: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The decoded model as a plain state_dict (loadable without nernfast)."""
    return {k: v.detach().clone() for k, v in load(path, model).state_dict().items()}
