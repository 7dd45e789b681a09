"""Accuracy and the full evaluation report (accuracy, OOD, FGSM, I-FGSM).

All accuracies are fractions in [0, 1]. Default attack radii (pixels in [0, 1]) depend on the
dataset, since the same eps means very different things on 17-level 8x8 digits and on CIFAR:

=====================================  ============================  =================
datasets                               FGSM eps (first = headline)    I-FGSM eps, steps
=====================================  ============================  =================
digits, mnist, fashion-mnist, kmnist   0.1, 0.05, 0.2                0.1, 10
cifar10, cifar100, stl10, imagenet     1/255, 2/255, 4/255, 8/255    1/255, 10
=====================================  ============================  =================

I-FGSM step size defaults to eps / 4 (see :mod:`nernfast.eval.attacks`). The headline radii put a
plain model's FGSM accuracy roughly where the paper's CIFAR figures sit (about 75-85 % of clean
accuracy): the default digits ResNet-20 (98.61 % clean) measured 91.6 / 68.5 / 13.7 % FGSM accuracy at
eps 0.05 / 0.1 / 0.2 and 56.8 % I-FGSM accuracy at eps 0.1.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.base import DataBundle
from .attacks import fgsm_accuracy, ifgsm_accuracy
from .ood import ood_accuracy
from .threads import cpu_threads_for, threads_for_batches

SMALL_GREY = ("digits", "mnist", "fashion-mnist", "kmnist")
ATTACK_DEFAULTS = {
    "small": {"fgsm_eps": (0.1, 0.05, 0.2), "ifgsm_eps": 0.1, "ifgsm_steps": 10},
    "natural": {"fgsm_eps": (1 / 255, 2 / 255, 4 / 255, 8 / 255), "ifgsm_eps": 1 / 255, "ifgsm_steps": 10},
}


def attack_defaults(dataset: str) -> dict:
    return dict(ATTACK_DEFAULTS["small" if dataset in SMALL_GREY else "natural"])


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu",
             max_batches: Optional[int] = None, outcomes: Optional[list] = None) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of ``model`` in eval mode over ``loader``; with
    ``outcomes``, each example's 0/1 correctness is appended to it (in loader order)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loss = 0.0
    try:
        with threads_for_batches(loader, device) as batches:
            for i, (x, y) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").item()
                hit = logits.argmax(1) == y
                correct += hit.sum().item()
                total += len(y)
                if outcomes is not None:
                    outcomes.extend(hit.int().tolist())
    finally:
        model.train(was_training)
    return correct / max(total, 1), loss / max(total, 1)


def evaluate_model(model: nn.Module, bundle: DataBundle, device: str | torch.device = "cpu", split: str = "test",
                   batch_size: int = 256, fgsm_eps: Optional[Sequence[float]] = None,
                   ifgsm_eps: Optional[float] = None, ifgsm_steps: Optional[int] = None, ood: bool = True,
                   ood_root=None, max_batches: Optional[int] = None, ifgsm_alpha: Optional[float] = None,
                   seed: int = 0, attacks: bool = True, log: Optional[Callable[[str], None]] = None) -> dict:
    """Every figure of the paper's evaluation for ``model`` on ``bundle``'s ``split``, with the
    settings used. Keys: accuracy, loss, correct (per-image 0/1 string), fgsm_accuracy (at the
    first eps), fgsm {eps: acc}, ifgsm_accuracy, ood_accuracy, ood {source, per_corruption, ...},
    settings, seconds.
    ``log`` receives one line per figure as it is measured (progress for long evaluations)."""
    with cpu_threads_for(bundle, device):
        return _evaluate(model, bundle, device, split, batch_size, fgsm_eps, ifgsm_eps, ifgsm_steps, ifgsm_alpha,
                         ood, ood_root, max_batches, seed, attacks, log)


class _Timed:
    """Emits 'what: figure (seconds)' lines through ``log``."""

    def __init__(self, log: Optional[Callable[[str], None]]):
        self.log, self.t = log, time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if self.log is not None:
            self.log(f"{what} ({now - self.t:.0f} s)")
        self.t = now


def _evaluate(model, bundle, device, split, batch_size, fgsm_eps, ifgsm_eps, ifgsm_steps, ifgsm_alpha, ood,
              ood_root, max_batches, seed, attacks, log=None) -> dict:
    t0 = time.perf_counter()
    say = _Timed(log)
    model = model.to(device)
    d = attack_defaults(bundle.name)
    fgsm_eps = tuple(float(e) for e in (d["fgsm_eps"] if fgsm_eps is None else
                                        ((fgsm_eps,) if isinstance(fgsm_eps, (int, float)) else fgsm_eps)))
    ifgsm_eps = float(d["ifgsm_eps"] if ifgsm_eps is None else ifgsm_eps)
    ifgsm_steps = int(d["ifgsm_steps"] if ifgsm_steps is None else ifgsm_steps)

    def loader():
        return bundle.loader(split, batch_size, shuffle=False, augment=False)

    n = len(bundle.split(split))
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    outcomes: list[int] = []
    acc, loss = accuracy(model, loader(), device, max_batches, outcomes)
    say(f"accuracy {100 * acc:.2f} % on {n} {split} images")
    # Per-image outcomes ('1' = correct, in split order) for comparisons paired by image.
    res: dict = {"dataset": bundle.name, "split": split, "num_examples": n, "accuracy": acc, "loss": loss,
                 "correct": "".join(map(str, outcomes))}
    if attacks:
        res["fgsm"] = {}
        for e in fgsm_eps:
            res["fgsm"][f"{e:.6g}"] = a = fgsm_accuracy(model, loader(), e, bundle.mean, bundle.std, device, max_batches)
            say(f"FGSM eps={e:.6g}: {100 * a:.2f} %")
        res["fgsm_accuracy"] = res["fgsm"][f"{fgsm_eps[0]:.6g}"] if fgsm_eps else None
        res["ifgsm_accuracy"] = ifgsm_accuracy(model, loader(), ifgsm_eps, bundle.mean, bundle.std, ifgsm_steps,
                                               ifgsm_alpha, device, max_batches)
        say(f"I-FGSM eps={ifgsm_eps:.6g}, {ifgsm_steps} steps: {100 * res['ifgsm_accuracy']:.2f} %")
    if ood:
        res["ood"] = ood_accuracy(model, bundle, device, ood_root, batch_size, max_batches, seed, split,
                                  log=say if log is not None else None)
        res["ood_accuracy"] = res["ood"]["accuracy"]
        say(f"OOD ({res['ood']['source']}): {100 * res['ood_accuracy']:.2f} %")
    res["settings"] = {
        "split": split, "batch_size": batch_size, "max_batches": max_batches, "seed": seed,
        "fgsm_eps": list(fgsm_eps) if attacks else None, "ifgsm_eps": ifgsm_eps if attacks else None,
        "ifgsm_steps": ifgsm_steps if attacks else None,
        "ifgsm_alpha": (ifgsm_eps / 4 if ifgsm_alpha is None else ifgsm_alpha) if attacks else None,
        "attack_space": "pixels in [0, 1], clipped; model inputs normalised with the dataset mean/std",
        "ood": ood, "ood_root": str(ood_root) if ood_root is not None else None,
        "input": {"channels": bundle.in_channels, "size": bundle.image_size, "mean": list(bundle.mean),
                  "std": list(bundle.std)},
    }
    res["seconds"] = time.perf_counter() - t0
    return res


def format_results(res: dict) -> str:
    """One line per figure, each with its name (accuracies in %)."""
    pct = lambda a: f"{100 * a:.2f} %"  # noqa: E731
    s = res.get("settings", {})
    lines = [f"dataset: {res['dataset']} ({res['split']} split, {res['num_examples']} images)",
             f"accuracy: {pct(res['accuracy'])}", f"loss: {res['loss']:.4f}"]
    if "fgsm" in res:
        for e, a in res["fgsm"].items():
            lines.append(f"fgsm accuracy (eps={e}): {pct(a)}")
        lines.append(f"ifgsm accuracy (eps={s['ifgsm_eps']:.6g}, steps={s['ifgsm_steps']}, "
                     f"alpha={s['ifgsm_alpha']:.6g}): {pct(res['ifgsm_accuracy'])}")
    if "ood" in res:
        o = res["ood"]
        lines.append(f"ood accuracy ({o['source']}): {pct(o['accuracy'])}")
        for k, a in o.get("per_corruption", {}).items():
            lines.append(f"  ood {k}: {pct(a)}")
    return "\n".join(lines)
