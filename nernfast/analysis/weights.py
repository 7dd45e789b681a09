"""Loading the weight sets the analyses compare: nernfast artefacts and plain checkpoints.

``load_weights(path)`` accepts

* a nernfast artefact (``.safetensors``): the predictor is decoded into the model it was trained
  for (``nernfast.load_nern``); the compared layers are the predicted convs (the plan's layers);
* a nernfast pretrained checkpoint (it names its model, classes and input channels);
* any other state_dict checkpoint (``nernfast.checkpoints``): pass ``model=NAME``; the class count
  and input channels are read from the first conv and the last linear layer's shapes.

The original of an artefact is its run's ``config.original`` (followed back through artefacts, so
the original of a progressive round is the first round's original), else the pretrained checkpoint
the trainer used (``nernfast.pretrain.ensure_pretrained``, cached).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..artefact import load_nern
from ..checkpoints import check_fit, extract_state_dict, file_format, read_checkpoint
from ..models import build_model
from ..selection import select_layers


class AnalysisError(ValueError):
    """An input the analyses cannot use; the message says what to pass instead."""


@dataclass
class Loaded:
    """A model with the weights of one checkpoint, and what is known about it."""
    model: nn.Module
    source: str
    kind: str                         # "artefact" | "checkpoint"
    model_name: str | None
    dataset: str | None
    layers: list[str]                 # compared conv layers (module names), in model order
    meta: dict[str, Any] = field(default_factory=dict)

    def conv_weights(self) -> dict[str, torch.Tensor]:
        return conv_weights(self.model, self.layers)


def conv_weights(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise AnalysisError(f"layers {missing[:5]} are not in {type(model).__name__}; "
                            "compare checkpoints of the same architecture")
    return {n: mods[n].weight.detach().float().cpu().clone() for n in names}


def _infer_shape(sd: Mapping[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """(num_classes, in_channels) from a state_dict: the last 2-D weight and the first 4-D weight."""
    mats = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    convs = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 4]
    return (mats[-1].shape[0] if mats else None), (convs[0].shape[1] if convs else None)


def artefact_model(path: str | Path, model: str | None = None) -> nn.Module | None:
    """The architecture an artefact decodes into. Artefacts of runs whose original was itself an
    artefact (progressive chains) do not name it; it is then rebuilt from the run config's model
    name, the class count of the kept linear layer and the first predicted conv's input channels."""
    from ..artefact import read_artefact
    meta, tensors = read_artefact(path)
    arch = meta.get("architecture") or {}
    name = model or arch.get("name")
    if arch.get("name") and not model:
        return None  # load_nern builds it
    name = name or (meta.get("config") or {}).get("model")
    if not name:
        raise AnalysisError(f"{path} does not name its architecture: pass --model")
    rest = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    n_cls, stem_in = _infer_shape(rest)  # a kept (not predicted) stem conv knows the input channels
    layers = (meta.get("plan") or {}).get("layers") or []
    in_ch = stem_in or (int(layers[0][1][1]) if layers else 3)
    return build_model(name, int(arch.get("num_classes") or n_cls or 10), int(arch.get("in_channels") or in_ch))


def load_weights(path: str | Path, model: str | None = None, dataset: str | None = None,
                 trust_pickle: bool = False) -> Loaded:
    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"checkpoint {path} not found")
    if file_format(path) == "artefact":  # a damaged artefact is reported by its reader
        net = artefact_model(path, model)
        nern, net, meta = load_nern(path, model=net)
        nern.materialize_(net)
        net.eval()
        cfg = meta.get("config") or {}
        arch = meta.get("architecture") or {}
        return Loaded(net, str(path), "artefact", arch.get("name") or model or cfg.get("model"),
                      dataset or cfg.get("dataset"), list(nern.plan.names), meta)
    obj = read_checkpoint(path, trust_pickle)
    meta = obj if isinstance(obj, dict) else {}
    name = model or (meta.get("model") if isinstance(meta.get("model"), str) else None)
    if not name:
        raise AnalysisError(f"{path} does not name its architecture: pass --model (e.g. resnet20)")
    sd = extract_state_dict(obj, path)
    n_cls, in_ch = _infer_shape(sd)
    net = build_model(name, int(meta.get("num_classes") or n_cls or 10), int(meta.get("in_channels") or in_ch or 3))
    check_fit(sd, net, path)
    own = net.state_dict()
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)
    net.eval()
    layers = [n for n, _ in select_layers(net)]
    info = {k: v for k, v in meta.items() if k != "state_dict" and not isinstance(v, torch.Tensor)}
    return Loaded(net, str(path), "checkpoint", name, dataset or meta.get("dataset"), layers, info)


def original_path(loaded: Loaded, data_root: str | None = None, max_depth: int = 32) -> str:
    """The checkpoint an artefact was trained to reconstruct, followed back to a non-artefact."""
    if loaded.kind != "artefact":
        raise AnalysisError(f"{loaded.source} is not a nernfast artefact: pass --original explicitly")
    meta = loaded.meta
    for _ in range(max_depth):
        cfg = meta.get("config") or {}
        orig = cfg.get("original")
        if orig is None:
            from ..pretrain import ensure_pretrained
            if not cfg.get("model") or not cfg.get("dataset"):
                raise AnalysisError(f"{loaded.source}: its config names no original; pass --original")
            return str(ensure_pretrained(cfg["model"], cfg["dataset"], data_root=data_root or cfg.get("data_root"),
                                         epochs=cfg.get("pretrain_epochs")))
        if not Path(orig).exists():
            raise AnalysisError(f"{loaded.source}: its original {orig} is not on this machine; pass --original")
        if file_format(orig) != "artefact":
            return str(orig)
        from ..artefact import read_artefact
        meta, _ = read_artefact(orig)
    raise AnalysisError(f"{loaded.source}: chain of originals deeper than {max_depth}; pass --original")


def load_original(loaded: Loaded, path: str | Path | None = None, data_root: str | None = None,
                  trust_pickle: bool = False) -> Loaded:
    """The original for ``loaded`` (explicit ``path`` first), as the same architecture."""
    p = Path(path) if path else Path(original_path(loaded, data_root))
    orig = load_weights(p, model=loaded.model_name, dataset=loaded.dataset, trust_pickle=trust_pickle)
    missing = [n for n in loaded.layers if n not in dict(orig.model.named_modules())]
    if missing:
        raise AnalysisError(f"original {p} lacks layers {missing[:5]} of {loaded.source}")
    orig.layers = list(loaded.layers)
    return orig


def relative_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per layer ||a - b|| / ||b|| (b is the reference)."""
    return {n: float((a[n].detach().double() - b[n].detach().double()).norm()
                     / b[n].detach().double().norm().clamp_min(1e-30)) for n in b}


def recon_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """NeRN's reconstruction error: sqrt(sum_l ||a_l - b_l||^2 / sum_l numel(b_l))."""
    sq = sum(float((a[n].detach().double() - b[n].detach().double()).pow(2).sum()) for n in b)
    return math.sqrt(sq / max(sum(b[n].numel() for n in b), 1))
