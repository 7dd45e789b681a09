"""Evaluate a checkpoint: ``python -m nernfast.evaluate --checkpoint PATH [--model NAME] --dataset NAME
[--data-root DIR]``.

Prints every figure with its name — top-1 accuracy and loss, FGSM accuracy per eps, I-FGSM
accuracy, OOD accuracy (CIFAR-10-C / CIFAR-100-C / ImageNet-R when on disk, else the built-in
corruption suite, per corruption too) — and optionally writes them, with the settings used, as
JSON. The model name, class count, input channels/size and dataset are read from nernfast
checkpoints; for other checkpoints (plain state_dicts, akamaster's ``{'state_dict': ...}``) pass
``--model`` (and ``--dataset``); ``--model`` is accepted either way but must then agree.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .checkpoints import CheckpointError, check_fit, extract_state_dict, file_format, read_checkpoint
from .data import DATASETS, canonical_name, get_dataset
from .eval.metrics import evaluate_model, format_results
from .models import MODEL_NAMES, build_model


def load_for_evaluation(checkpoint, model_name: Optional[str] = None, dataset: Optional[str] = None,
                        data_root=None, trust_pickle: bool = False, image_size: Optional[int] = None,
                        in_channels: Optional[int] = None, val_fraction: float = 0.1):
    """(model with the checkpoint's weights, DataBundle, checkpoint metadata). A nernfast artefact
    is decoded with its predictor (its run config names the dataset and the data root)."""
    if file_format(checkpoint) == "artefact":
        return _load_artefact(checkpoint, model_name, dataset, data_root, image_size, in_channels, val_fraction)
    obj = read_checkpoint(checkpoint, trust_pickle)
    meta = obj if isinstance(obj, dict) else {}
    ck_model = meta.get("model") if isinstance(meta.get("model"), str) else None
    if model_name and ck_model and model_name.lower() != ck_model.lower():
        raise CheckpointError(f"--model {model_name} disagrees with the checkpoint's model {ck_model}")
    name = model_name or ck_model
    if not name:
        raise CheckpointError(f"{checkpoint} does not name its model: pass --model (one of {', '.join(MODEL_NAMES)})")
    ds = dataset or meta.get("dataset")
    if not ds:
        raise CheckpointError(f"{checkpoint} does not name its dataset: pass --dataset (one of {', '.join(DATASETS)})")
    ds = canonical_name(ds)
    bundle = get_dataset(ds, data_root, val_fraction=val_fraction,
                         image_size=image_size or meta.get("image_size"),
                         in_channels=in_channels or meta.get("in_channels"))
    num_classes = int(meta.get("num_classes") or bundle.num_classes)
    if num_classes != bundle.num_classes:
        raise CheckpointError(f"{checkpoint} has {num_classes} classes but {ds} has {bundle.num_classes}")
    model = build_model(name, num_classes, bundle.in_channels)
    sd = extract_state_dict(obj, checkpoint)
    check_fit(sd, model, checkpoint)
    model.load_state_dict(sd, strict=False)   # check_fit allowed only missing num_batches_tracked
    return model, bundle, {k: v for k, v in meta.items() if k != "state_dict"}


def _load_artefact(path, model_name, dataset, data_root, image_size, in_channels, val_fraction):
    from .analysis.weights import artefact_model
    from .artefact import load_nern
    nern, model, meta = load_nern(path, model=artefact_model(path, model_name))
    nern.materialize_(model).eval()
    arch, cfg = meta.get("architecture") or {}, meta.get("config") or {}
    name = arch.get("name") or model_name or cfg.get("model")
    if model_name and arch.get("name") and model_name.lower() != arch["name"].lower():
        raise CheckpointError(f"--model {model_name} disagrees with the artefact's model {arch['name']}")
    ds = dataset or cfg.get("dataset")
    if not ds:
        raise CheckpointError(f"{path} does not name its dataset: pass --dataset (one of {', '.join(DATASETS)})")
    bundle = get_dataset(canonical_name(ds), data_root or cfg.get("data_root"), val_fraction=val_fraction,
                         image_size=image_size, in_channels=in_channels or arch.get("in_channels"))
    n_cls = arch.get("num_classes")
    if n_cls and n_cls != bundle.num_classes:
        raise CheckpointError(f"{path} has {n_cls} classes but {ds} has {bundle.num_classes}; pass the "
                              "dataset it was trained on (--dataset)")
    return model, bundle, {"model": name, "dataset": ds, "format": "nernfast artefact", "sizes": meta.get("sizes"),
                           "metrics": meta.get("metrics")}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nernfast.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", default=None, help=f"one of: {', '.join(MODEL_NAMES)} (default: from the checkpoint)")
    p.add_argument("--dataset", default=None, help=f"one of: {', '.join(DATASETS)} (default: from the checkpoint)")
    p.add_argument("--data-root", default=None, help="directory holding the dataset ($NERNFAST_DATA or ./data)")
    p.add_argument("--ood-root", default=None, help="where CIFAR-10-C/, CIFAR-100-C/ or imagenet-r/ live "
                   "(default: next to the dataset)")
    p.add_argument("--split", default="test", choices=("test", "val", "train"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fgsm-eps", type=float, nargs="+", default=None,
                   help="FGSM radii in pixels [0,1]; the first is the headline (default per dataset, "
                        "see nernfast.eval.metrics)")
    p.add_argument("--ifgsm-eps", type=float, default=None)
    p.add_argument("--ifgsm-steps", type=int, default=None)
    p.add_argument("--ifgsm-alpha", type=float, default=None, help="I-FGSM step (default eps/4)")
    p.add_argument("--no-ood", action="store_true")
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--max-batches", type=int, default=None, help="evaluate only this many batches per figure")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in corruptions")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=None)
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a checkpoint that holds Python objects (runs code from the file)")
    p.add_argument("--json", default=None, help="write the results (with settings) here as JSON")
    a = p.parse_args(argv)
    from .cli import check_device, fail, user_errors

    try:
        device = check_device(a.device, allow_auto=True)
        model, bundle, meta = load_for_evaluation(a.checkpoint, a.model, a.dataset, a.data_root, a.trust_pickle,
                                                  a.image_size, a.in_channels)
        res = evaluate_model(model, bundle, device=device, split=a.split, batch_size=a.batch_size,
                             fgsm_eps=a.fgsm_eps, ifgsm_eps=a.ifgsm_eps, ifgsm_steps=a.ifgsm_steps,
                             ood=not a.no_ood, ood_root=a.ood_root, max_batches=a.max_batches,
                             ifgsm_alpha=a.ifgsm_alpha, seed=a.seed, attacks=not a.no_attacks)
    except user_errors() as e:
        return fail(e)
    res["checkpoint"] = str(a.checkpoint)
    res["model"] = meta.get("model") or a.model
    print(f"checkpoint: {a.checkpoint} ({res['model']})")
    print(format_results(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
