"""Teachers for distillation: what ``--teacher`` names, how an ensemble teacher is trained, and
whether the teacher is stronger than the original it should help beat.

``--teacher`` takes ``NAME`` (pretrained here, seed 0, cached), ``NAME:CKPT`` (a checkpoint or
nernfast artefact), ``original`` (the run's own original), or ``NAMExK``: an ensemble of the K
``NAME`` networks pretrained here with seeds 0..K-1, wrapped as one module
(:class:`nernfast.models.Ensemble`) -- with the dataset's default original, seed 0 *is* the
original, so ``resnet20x3`` costs two more pretrainings ("an ensemble of originals"). Missing
members train side by side, one pinned thread each. A ``+flip`` suffix averages the teacher over
each image and its mirror image (test-time augmentation), for datasets whose labels survive a
mirror (not digits, MNIST or KMNIST).

The strength check (:func:`compare_teacher`) runs both networks on the validation split. Rule: the
teacher is *stronger* when its validation accuracy is at least the original's **and** its
validation loss (NLL) is lower. Loss as well as accuracy because small validation splits (digits:
144 images, one image = 0.69 pt) often tie on accuracy while the loss still separates them.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

_ENSEMBLE = re.compile(r"(?P<name>.+?)x(?P<k>\d+)")


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    path: str | None = None   # NAME:CKPT
    members: int = 0          # NAMExK: K > 0 pretrained members (seeds 0..K-1)
    flip: bool = False        # ...+flip: averaged over each image and its mirror image


MIRROR_VARIANT = ("digits", "mnist", "kmnist")  # a mirrored digit or character is another symbol (or none)


def parse_teacher(spec: str) -> TeacherSpec:
    """``NAME``, ``NAME:CKPT``, ``original`` or ``NAMExK``, each optionally with ``+flip``."""
    flip = spec.endswith("+flip")
    if flip:
        spec = spec[:-len("+flip")]
    name, _, path = spec.partition(":")
    m = _ENSEMBLE.fullmatch(name.lower())
    if m and not path:
        k = int(m.group("k"))
        if k < 1:
            raise ValueError(f"--teacher {spec}: an ensemble needs K >= 1 members (NAMExK, e.g. resnet20x3)")
        return TeacherSpec(m.group("name"), None, k, flip)
    return TeacherSpec(name, path or None, 0, flip)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pretrain_members(name: str, members: int, dataset: str, data_root: Any = None, device: str = "cpu",
                     epochs: int | None = None, progress: bool = False) -> list:
    """Paths of the cached checkpoints of ensemble members 0..K-1, training the missing ones side by
    side (one pinned thread each, as many at once as this process may use CPUs)."""
    from .pretrain import ensure_pretrained
    jobs = 1 if torch.device(device).type != "cpu" else max(1, min(members, usable_cpus()))

    def one(seed: int):
        # Only one member draws a progress bar: parallel bars would interleave.
        return ensure_pretrained(name, dataset, data_root=data_root, seed=seed, device=device, epochs=epochs,
                                 progress=progress and seed == members - 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, range(members)))


def build_ensemble(name: str, members: int, bundle: Any, dataset: str, data_root: Any = None,
                   device: str = "cpu", epochs: int | None = None, progress: bool = False) -> tuple[nn.Module, str]:
    from .checkpoints import load_model_checkpoint
    from .models import Ensemble, build_model
    paths = pretrain_members(name, members, dataset, data_root, device, epochs, progress)
    nets = [load_model_checkpoint(p, build_model(name, bundle.num_classes, bundle.in_channels)) for p in paths]
    return Ensemble(nets), f"ensemble of {members} x {name} (seeds 0..{members - 1}: " + ", ".join(map(str, paths)) + ")"


def build_teacher(spec: TeacherSpec, original: nn.Module, dataset: str, load: Callable[[str, str | None], Any],
                  ensemble: Callable[[str, int], tuple[nn.Module, str]]) -> tuple[nn.Module, str]:
    """The teacher ``spec`` names: the run's ``original``, an ensemble (``ensemble(name, K)``) or one
    network (``load(name, path)`` -> an object with ``.model`` and ``.source``), mirrored on request."""
    from .models import Ensemble
    if spec.flip and dataset in MIRROR_VARIANT:
        raise ValueError(f"--teacher ...+flip: {dataset} labels do not survive a mirror image; drop +flip")
    if spec.name == "original" and spec.path is None and not spec.members:
        net, source = original, "the original"
    elif spec.members:
        net, source = ensemble(spec.name, spec.members)
    else:
        loaded = load(spec.name, spec.path)
        net, source = loaded.model, loaded.source
    if spec.flip:
        net, source = Ensemble([net], flip=True), f"{source}, averaged with its mirror images"
    return net, source


@torch.no_grad()
def compare_teacher(teacher: nn.Module, original: nn.Module, bundle: Any, device: Any,
                    batch_size: int = 512) -> dict[str, Any]:
    """Validation accuracy and loss of both networks, and whether the teacher is stronger (module doc)."""
    from .eval import accuracy

    def score(m: nn.Module) -> tuple[float, float]:
        return accuracy(m, bundle.loader("val", batch_size, shuffle=False, augment=False), device)
    (ta, tl), (oa, ol) = score(teacher), score(original)
    return {"teacher_val_acc": ta, "teacher_val_loss": tl, "original_val_acc": oa, "original_val_loss": ol,
            "val_images": len(bundle.val), "stronger": ta >= oa and tl < ol,
            "rule": "teacher val accuracy >= original's and teacher val loss < original's"}


def teacher_warning(check: dict[str, Any]) -> str | None:
    """A one-line warning when the teacher is not stronger, else None."""
    if check["stronger"]:
        return None
    return (f"warning: teacher val {100 * check['teacher_val_acc']:.2f} % (loss {check['teacher_val_loss']:.4f}) is "
            f"not stronger than the original's {100 * check['original_val_acc']:.2f} % (loss "
            f"{check['original_val_loss']:.4f}) on {check['val_images']} validation images: distillation from it "
            f"cannot be expected to beat the original; pass a stronger --teacher (e.g. an ensemble, NAMExK)")
