"""The compressed artefact: predictor + permutation + the parameters that are not predicted.

One ``.safetensors`` file in one of two formats, both read by ``read_artefact``/``load``:

* format 2 (``nernfast-artefact-2``, written by ``save_artefact``): a safetensors container of
  coded uint8 parts with a SHA-256 of the whole file at its end (nernfast.codec.container), each
  part coded as nernfast.codec.format2 describes. ``scheme`` chooses the coding: lossless by
  default (what the trainer writes), or quantised predictor weights and fp16/bf16 BN/FC (what
  ``python -m nernfast.compress`` writes). docs/compression.md documents the format.
* format 1 (``nernfast-artefact-1``, written before format 2; read only): plain tensors
  ``predictor.*`` (the MLP), ``encoding.*`` (persistent encoding buffers, e.g. the ffn matrix),
  ``plan.perm`` (int32 row permutation), ``model.*`` (every model state entry that is not a
  predicted conv weight: BN, FC, excluded convs); the ``nernfast`` metadata entry is the JSON that
  format 2 keeps in its ``meta`` part. It carries no checksum: a damaged one is caught only when
  its values are not finite.

Both decode to the same (metadata, tensors) layout: format 1's tensor names, fp32 predictor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

from .codec.container import CHECKSUM, ContainerError, header_of, is_container
from .codec.format2 import FORMAT2, LOSSLESS, Scheme, decode as decode_format2, encode as encode_format2
from .encoding import build_encoding
from .models import build_model
from .nern import NeRN
from .plan import WeightPlan
from .predictor import Predictor
from .selection import PlanError

FORMAT1 = "nernfast-artefact-1"  # read only; save_artefact writes format 2 (FORMAT2)


class ArtefactError(ValueError):
    pass


def artefact_bytes(nern: NeRN, model: nn.Module, architecture: dict[str, Any] | None = None,
                   config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   scheme: Scheme = LOSSLESS) -> bytes:
    """The format-2 file ``save_artefact`` writes, in memory (e.g. to size a coding before writing)."""
    predicted = {f"{n}.weight" for n in nern.plan.names}
    tensors = {f"predictor.{k}": v for k, v in nern.predictor.state_dict().items()}
    tensors.update({f"encoding.{k}": v for k, v in nern.encoding.state_dict().items()})
    tensors["plan.perm"] = nern.plan.perm.to(torch.int32)
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items() if k not in predicted})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT2,
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
    return encode_format2(meta, tensors, scheme)


def save_artefact(path: str | Path, nern: NeRN, model: nn.Module, architecture: dict[str, Any] | None = None,
                  config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                  scheme: Scheme = LOSSLESS, overwrite: bool = True) -> Path:
    """Write format 2 atomically (temp file + rename). ``model`` supplies the non-predicted
    parameters; ``scheme`` the coding (lossless by default); ``overwrite=False`` refuses an
    existing ``path``."""
    path = Path(path)
    if not overwrite and path.exists():
        raise ArtefactError(f"{path} exists; pass another output path or --overwrite to replace it")
    data = artefact_bytes(nern, model, architecture, config, metrics, scheme)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:  # atomic no-clobber: a file that appeared meanwhile is kept
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ArtefactError(f"{path} exists; pass another output path or --overwrite to replace it") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_artefact(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a format-1 or format-2 artefact; ArtefactError with one line otherwise."""
    path = Path(path)
    if not path.exists():
        raise ArtefactError(f"artefact {path} not found")
    data = path.read_bytes()
    head = header_of(data)
    if _format2(data, head):
        try:
            return decode_format2(data, str(path))
        except ContainerError as e:
            raise ArtefactError(str(e)) from None
    if head is None:
        raise ArtefactError(f"{path} is not a safetensors file (no readable header); pass a nernfast artefact "
                            "(.safetensors)")
    return _read_format1(path)


def _format2(data: bytes, head: dict | None) -> bool:
    """A format-2 file, intact or not: its header says so, has its parts, or (no longer parsing)
    still names the container."""
    if head is None:
        return b"nernfast_container" in data[:4096]
    return is_container(head) or {"meta", CHECKSUM} <= head.keys()


def _read_format1(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for foreign files
        raise ArtefactError(f"{path} is not a safetensors file ({e}); pass a nernfast artefact (.safetensors)") from None
    if "nernfast" not in header:
        raise ArtefactError(f"{path} is a safetensors file without nernfast metadata; it is not a nernfast artefact")
    try:
        meta = json.loads(header["nernfast"])
    except json.JSONDecodeError:
        raise ArtefactError(f"{path}: its nernfast metadata is damaged (not JSON); re-create the artefact") from None
    if meta.get("format") != FORMAT1:
        raise ArtefactError(f"{path}: unsupported artefact format {meta.get('format')!r} (this nernfast reads "
                            f"{FORMAT1} and {FORMAT2})")
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
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ArtefactError(f"{path} holds non-finite values (NaN/Inf) in {bad[:4]}: the file is damaged "
                            "(format-1 artefacts carry no checksum); re-create it")
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
