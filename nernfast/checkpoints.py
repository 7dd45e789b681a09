"""Loading users' model checkpoints safely, and saving checkpoints atomically.

Accepted layouts (all read with ``torch.load(..., weights_only=True)``):

* a plain ``state_dict`` (``{name: tensor}``);
* a dict wrapping it under ``state_dict`` (akamaster's CIFAR ResNets, most training scripts),
  ``model_state_dict``, ``model`` (when it is a dict of tensors) or ``net``;
* nernfast's own pretrained checkpoints (``{"model": name, ..., "state_dict": ...}``);
* keys prefixed ``module.`` (DataParallel / DistributedDataParallel) or ``_orig_mod.``
  (``torch.compile``) — the prefix is stripped.

A file that holds a pickled object (typically a whole ``nn.Module`` saved with
``torch.save(model, ...)``) is refused with :data:`PICKLE_REFUSED`, unless ``trust_pickle=True``
(CLI ``--trust-pickle``), which unpickles it — running whatever code the file names.

BatchNorm ``num_batches_tracked`` buffers missing from old checkpoints (akamaster's were saved
before they existed) are tolerated; any other missing or unexpected key, or a shape mismatch, is
an error listing all of them.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

PICKLE_REFUSED = (
    "{path} holds a pickled Python object (e.g. a whole nn.Module saved with torch.save(model, ...)), "
    "which nernfast does not unpickle because that can run arbitrary code. Re-save it as a state_dict: "
    "torch.save(model.state_dict(), 'model.pt') — or, only if you trust the file, pass --trust-pickle "
    "(trust_pickle=True)."
)
PREFIXES = ("module.", "_orig_mod.")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, or does not fit the model."""


FORMATS = ("artefact", "safetensors", "torch", "pickle", "text", "empty", "unknown")
_MAX_HEADER = 100 * 2**20  # safetensors caps its JSON header at 100 MB


def file_format(path: str | os.PathLike) -> str:
    """What a model file holds, judged from its first bytes (tensors are not read): one of FORMATS.

    ``artefact``: a safetensors file with nernfast metadata, or one whose header is damaged (reading
    it as an artefact then names the damage); ``safetensors``: any other safetensors file; ``torch``:
    ``torch.save``'s zip format; ``pickle``: a legacy ``torch.save`` / plain pickle; ``text``: UTF-8
    text (a README, YAML or JSON saved under a model's name).
    """
    with open(path, "rb") as f:
        head = f.read(9)
        if not head:
            return "empty"
        n = int.from_bytes(head[:8], "little")  # safetensors: u64 header length, then the JSON header
        if len(head) == 9 and head[8:9] == b"{" and 2 <= n <= _MAX_HEADER:
            try:
                meta = json.loads(head[8:] + f.read(n - 1)).get("__metadata__") or {}
            except (ValueError, AttributeError):
                return "artefact"
            from .codec.container import CONTAINER_KEY  # format 2 names its container instead
            return "artefact" if "nernfast" in meta or CONTAINER_KEY in meta else "safetensors"
        if head.startswith(b"PK\x03\x04"):
            return "torch"
        if head.startswith(b"\x80"):
            return "pickle"
        f.seek(0)
        start = f.read(4096)
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(start) - 4:  # not merely a multi-byte character cut at the end
            return "unknown"
    return "unknown" if b"\x00" in start else "text"


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, containers, primitives only); a plain
    safetensors file is read as its state_dict. Files that are no checkpoint at all (text, empty,
    a nernfast artefact) are refused with a message saying what they are."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    kind = file_format(path)
    fix = "pass a state_dict saved with torch.save(model.state_dict(), path)"
    if kind in ("text", "empty"):
        what = "an empty file" if kind == "empty" else "a text file (e.g. a README, YAML or JSON)"
        raise CheckpointError(f"{path} is {what}, not a model checkpoint; {fix}")
    if kind == "artefact":
        raise CheckpointError(f"{path} is a nernfast artefact, not a state_dict checkpoint; load it with "
                              "nernfast.load(path)")
    if kind == "safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types
            raise CheckpointError(f"{path}: damaged safetensors file ({e}); {fix} or re-export it") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m is None and "Unsupported" not in str(e):  # not a refused object: the bytes are damaged
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({e}); {fix} or re-export it") from None
        if not trust_pickle:
            found = f" (it refers to {m.group(1)})" if m else ""
            raise CheckpointError(PICKLE_REFUSED.format(path=path) + found) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise CheckpointError(f"{path}: could not be unpickled even with --trust-pickle: {e2}") from e2
    except Exception as e:  # noqa: BLE001 - damaged files fail anywhere in the unpickler (KeyError, ...)
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e}); {fix} or "
                              "re-export it") from None


def extract_state_dict(obj: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint, with ``module.``/``_orig_mod.`` stripped."""
    if isinstance(obj, nn.Module):  # only reachable with trust_pickle
        obj = obj.state_dict()
    sd = None
    if _is_tensor_dict(obj):
        sd = obj
    elif isinstance(obj, Mapping):
        for k in WRAPPER_KEYS:
            v = obj.get(k)
            if isinstance(v, nn.Module):
                v = v.state_dict()
            if _is_tensor_dict(v):
                sd = v
                break
    if sd is None:
        keys = sorted(map(str, obj.keys()))[:10] if isinstance(obj, Mapping) else []
        raise CheckpointError(f"{path}: no state_dict found (expected a dict of tensors, or one under "
                              f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; got {type(obj).__name__}"
                              f"{' with keys ' + str(keys) if keys else ''})")
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def check_fit(state_dict: Mapping[str, torch.Tensor], model: nn.Module, path: str | os.PathLike = "checkpoint") -> None:
    """Raise a CheckpointError listing missing/unexpected keys and shape mismatches, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def block(title, items):
            if not items:
                return ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else "")
        raise CheckpointError(f"{path} does not fit {type(model).__name__}:" + block("missing keys", missing)
                              + block("unexpected keys", unexpected) + block("shape mismatches", shapes)
                              + "\n(check the model name, number of classes and input channels)")


def load_model_checkpoint(path: str | os.PathLike, model: nn.Module, trust_pickle: bool = False) -> nn.Module:
    """Load the weights in ``path`` into ``model`` (in place) and return it; see module docs."""
    sd = extract_state_dict(read_checkpoint(path, trust_pickle), path)
    check_fit(sd, model, path)
    own = model.state_dict()
    sd = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=False)  # only num_batches_tracked may be absent (checked above)
    return model


def _write_atomic(path: str | os.PathLike, write: Any) -> Path:
    """``write(file)`` into a temporary file in the same directory, then ``os.replace`` it onto
    ``path``: readers never see a partial file, and a failed write leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (see ``_write_atomic``)."""
    return _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (see ``_write_atomic``)."""
    return _write_atomic(path, lambda f: f.write(text.encode()))
