"""Out-of-distribution accuracy.

Which set is used, looked up under ``ood_root`` (else the bundle's data root):

* cifar10 / cifar100 -> ``CIFAR-10-C/`` / ``CIFAR-100-C/`` holding ``labels.npy`` and the 15
  standard ``<corruption>.npy`` files (50 000 x 32 x 32 x 3 uint8: severities 1..5, 10 000 each).
  Figure: mean accuracy over 15 corruptions x 5 severities; per-corruption means kept.
* imagenet -> ``imagenet-r/<wnid>/*`` (ImageNet-R, an ImageFolder of 200 ImageNet classes),
  scored on those 200 classes only: the logits are restricted to them before the argmax.
* otherwise (and for any dataset whose standard set is absent): the built-in corruption suite of
  :mod:`nernfast.eval.corruptions` applied to the test split, seeded; its source is reported as
  ``builtin-corruptions`` and never as CIFAR-C.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..data.adapt import adapt_images
from ..data.base import DataBundle, DatasetError, FolderDataset
from ..data.readers import scan_image_folder
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .threads import threads_for_batches

CIFAR_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
CIFAR_C_DIRS = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}


def _roots(bundle: DataBundle, ood_root) -> list[Path]:
    roots = []
    if ood_root is not None:
        roots.append(Path(ood_root))
    if bundle.source and Path(bundle.source).exists():
        roots += [Path(bundle.source), Path(bundle.source).parent]
    return roots


def find_ood_set(bundle: DataBundle, ood_root=None) -> tuple[str, Optional[Path]]:
    """('cifar-c', dir) | ('imagenet-r', dir) | ('builtin-corruptions', None)."""
    for root in _roots(bundle, ood_root):
        if bundle.name in CIFAR_C_DIRS:
            d = root / CIFAR_C_DIRS[bundle.name]
            if d.is_dir():
                missing = [f"{c}.npy" for c in CIFAR_C_CORRUPTIONS if not (d / f"{c}.npy").is_file()]
                if not (d / "labels.npy").is_file():
                    missing.insert(0, "labels.npy")
                if missing:
                    raise DatasetError(f"{d} is incomplete: missing {', '.join(missing)} "
                                       f"(all 15 corruptions and labels.npy are needed for the standard figure)")
                return "cifar-c", d
        if bundle.name == "imagenet":
            for name in ("imagenet-r", "ImageNet-R", "imagenet_r"):
                if (root / name).is_dir():
                    return "imagenet-r", root / name
    return "builtin-corruptions", None


@torch.no_grad()
def _count(model: nn.Module, batches: Iterable, device, mask: Optional[torch.Tensor] = None) -> tuple[int, int]:
    correct = total = 0
    with threads_for_batches(batches, device) as batches:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            if mask is not None:
                logits = logits[:, mask.to(device)]
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    return correct, total


def _limit(it: Iterable, max_batches: Optional[int]):
    for i, b in enumerate(it):
        if max_batches is not None and i >= max_batches:
            return
        yield b


def _summary(source: str, table: dict[str, dict[int, float]], **extra) -> dict:
    per_corruption = {k: float(np.mean(list(v.values()))) for k, v in table.items()}
    sevs = sorted({s for v in table.values() for s in v})
    per_severity = {s: float(np.mean([v[s] for v in table.values() if s in v])) for s in sevs}
    return {"source": source, "accuracy": float(np.mean(list(per_corruption.values()))),
            "per_corruption": per_corruption, "per_severity": per_severity,
            "table": {k: {str(s): a for s, a in v.items()} for k, v in table.items()}, **extra}


def builtin_corruption_accuracy(model: nn.Module, bundle: DataBundle, device="cpu", split: str = "test",
                                batch_size: int = 256, max_batches: Optional[int] = None, seed: int = 0,
                                corruptions: Optional[Sequence[str]] = None,
                                severities: Sequence[int] = SEVERITIES,
                                log: Optional[Callable[[str], None]] = None) -> dict:
    names = list(corruptions or CORRUPTIONS)
    table: dict[str, dict[int, float]] = {}
    for i, name in enumerate(names):
        table[name] = {}
        for s in severities:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()) % 100_000 * 10 + s)

            def batches():
                for x, y in _limit(bundle.loader(split, batch_size, shuffle=False, augment=False), max_batches):
                    x = bundle.denormalize(x).clamp_(0, 1)
                    yield bundle.normalize(corrupt(x, name, s, gen)), y

            c, t = _count(model, batches(), device)
            table[name][s] = c / max(t, 1)
        if log is not None:
            log(f"corruption {i + 1}/{len(names)} {name} (severities {', '.join(map(str, severities))}): "
                f"{100 * float(np.mean(list(table[name].values()))):.2f} %")
    return _summary("builtin-corruptions", table, split=split, seed=seed)


def cifar_c_accuracy(model: nn.Module, bundle: DataBundle, directory: Path, device="cpu", batch_size: int = 256,
                     max_batches: Optional[int] = None, severities: Sequence[int] = SEVERITIES,
                     log: Optional[Callable[[str], None]] = None) -> dict:
    labels = np.load(directory / "labels.npy")
    table: dict[str, dict[int, float]] = {}
    for i, name in enumerate(CIFAR_C_CORRUPTIONS):
        arr = np.load(directory / f"{name}.npy", mmap_mode="r")
        if arr.ndim != 4 or arr.shape[-1] != 3 or len(arr) != len(labels) or len(arr) % 5:
            raise DatasetError(f"{directory / (name + '.npy')}: expected (5*N, H, W, 3) uint8 matching labels.npy, "
                               f"got {arr.shape}")
        n = len(arr) // 5
        table[name] = {}
        for s in severities:
            lo = (s - 1) * n

            def batches():
                for start in range(lo, lo + n, batch_size):
                    x = torch.from_numpy(np.array(arr[start:min(start + batch_size, lo + n)]))
                    x = adapt_images(x.permute(0, 3, 1, 2).float() / 255, bundle.in_channels, bundle.image_size)
                    yield bundle.normalize(x), torch.from_numpy(labels[start:start + len(x)].astype(np.int64))

            c, t = _count(model, _limit(batches(), max_batches), device)
            table[name][s] = c / max(t, 1)
        if log is not None:
            log(f"{CIFAR_C_DIRS[bundle.name]} {i + 1}/{len(CIFAR_C_CORRUPTIONS)} {name}: "
                f"{100 * float(np.mean(list(table[name].values()))):.2f} %")
    return _summary(CIFAR_C_DIRS[bundle.name], table, directory=str(directory))


def imagenet_r_accuracy(model: nn.Module, bundle: DataBundle, directory: Path, device="cpu", batch_size: int = 256,
                        max_batches: Optional[int] = None, num_workers: Optional[int] = None) -> dict:
    wnids = bundle.info.get("wnids") or bundle.classes
    if not wnids:
        raise DatasetError("ImageNet-R needs the ImageNet class list (wnids) of the bundle")
    class_to_idx = {w: i for i, w in enumerate(wnids)}
    samples, classes = scan_image_folder(directory, class_to_idx)
    subset = torch.tensor(sorted(class_to_idx[c] for c in classes))
    pos = {int(k): i for i, k in enumerate(subset)}
    samples = [(p, pos[y]) for p, y in samples]       # labels as positions in the 200-class subset
    ds = FolderDataset(samples, bundle.mean, bundle.std, bundle.in_channels, bundle.image_size)
    import os
    from torch.utils.data import DataLoader
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers if num_workers is not None
                        else min(8, os.cpu_count() or 1))
    c, t = _count(model, _limit(loader, max_batches), device, mask=subset)
    return {"source": "ImageNet-R", "accuracy": c / max(t, 1), "num_classes": len(classes),
            "num_examples": t, "directory": str(directory)}


def ood_accuracy(model: nn.Module, bundle: DataBundle, device="cpu", ood_root=None, batch_size: int = 256,
                 max_batches: Optional[int] = None, seed: int = 0, split: str = "test",
                 log: Optional[Callable[[str], None]] = None) -> dict:
    """OOD accuracy on the standard set for ``bundle`` when present (see module docs), else on the
    built-in corruption suite. Returns a dict with ``source`` and ``accuracy`` (+ details)."""
    was_training = model.training
    model.eval()
    try:
        kind, d = find_ood_set(bundle, ood_root)
        if kind == "cifar-c":
            return cifar_c_accuracy(model, bundle, d, device, batch_size, max_batches, log=log)
        if kind == "imagenet-r":
            return imagenet_r_accuracy(model, bundle, d, device, batch_size, max_batches)
        return builtin_corruption_accuracy(model, bundle, device, split, batch_size, max_batches, seed, log=log)
    finally:
        model.train(was_training)
