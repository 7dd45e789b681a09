"""``--init-from``: start a predictor from a nernfast artefact or a public NeRN predictor state_dict."""
from __future__ import annotations

from pathlib import Path

import torch

from ..nern import NeRN


def load_predictor_init(nern: NeRN, path: str | Path) -> None:
    from ..artefact import is_artefact, read_artefact
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--init-from {path}: file not found")
    if is_artefact(path):
        _, tensors = read_artefact(path)
        sd = {k[len("predictor."):]: v for k, v in tensors.items() if k.startswith("predictor.")}
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--init-from {path}: not a nernfast artefact and not a weights-only torch file ({e}). "
                             "Re-save the public NeRN predictor with torch.save(predictor.state_dict(), path).") from None
        for key in ("state_dict", "predictor", "model"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    own = nern.predictor.state_dict()
    problems = [f"missing {k}" for k in own if k not in sd] + [f"unexpected {k}" for k in sd if k not in own]
    problems += [f"{k}: file {tuple(sd[k].shape)} vs predictor {tuple(v.shape)}"
                 for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if problems:
        raise ValueError(f"--init-from {path} does not fit this predictor (hidden={nern.predictor.hidden}, "
                         f"num_blocks={nern.predictor.num_blocks}, in={nern.predictor.in_features}): "
                         + "; ".join(problems[:8]) + ". Match --hidden/--set nern.* to the saved predictor.")
    nern.predictor.load_state_dict(sd)
