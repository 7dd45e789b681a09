"""Readers for the on-disk formats. Each returns raw arrays or raises a DatasetError that names
the files expected and every directory searched. Nothing is ever downloaded."""
from __future__ import annotations

import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError, missing_error

# ---------------------------------------------------------------------------------------------- IDX

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _open_maybe_gz(base: Path) -> tuple[bytes, Path] | None:
    for p in (base, base.with_name(base.name + ".gz")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".gz":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError, zlib.error) as e:  # truncated: EOFError; damaged bytes: zlib.error
                    raise DatasetError(f"{p}: damaged gzip file ({e}); replace it with a fresh copy of the "
                                       "dataset file") from None
            return data, p
    return None


def parse_idx(data: bytes, path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (magic 0x0000 08 ndim, big-endian dims)."""
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: malformed IDX file (only {len(data)} bytes)")
    zero, dtype, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or nd != ndim:
        raise DatasetError(f"{path}: malformed IDX file (magic {data[:4].hex()}, expected 000008{ndim:02x}: "
                           f"unsigned bytes, {ndim} dimension(s))")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    n = int(np.prod(dims))
    body = data[4 + 4 * ndim:]
    if len(body) != n:
        raise DatasetError(f"{path}: malformed IDX file (header says {dims} = {n} bytes, found {len(body)})")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def idx_candidates(name: str, root: Path) -> list[Path]:
    sub = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST"),
           "kmnist": ("kmnist", "KMNIST")}[name]
    dirs = []
    for s in sub:
        dirs += [root / s / "raw", root / s]
    return dirs + [root]


def read_idx_dataset(name: str, root: Path):
    """(train_x, train_y, test_x, test_y) from the four standard IDX files (each optionally .gz),
    found in the first of ``idx_candidates`` that has them all."""
    looked = idx_candidates(name, root)
    for d in looked:
        if all(_open_maybe_gz(d / f) is not None for f in IDX_FILES):
            arrays = []
            for f, nd in zip(IDX_FILES, (3, 1, 3, 1)):
                data, path = _open_maybe_gz(d / f)
                arrays.append(parse_idx(data, path, nd))
            for x, y, split in ((arrays[0], arrays[1], "train"), (arrays[2], arrays[3], "t10k")):
                if len(x) != len(y):
                    raise DatasetError(f"{d}: {split} images ({len(x)}) and labels ({len(y)}) differ in count")
            return (*arrays, d)
    raise missing_error(name, [f"{f}[.gz]" for f in IDX_FILES], looked,
                        "pass --data-root pointing at the directory holding them (or its parent)")


# ---------------------------------------------------------------------------------------------- CIFAR

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR 'python version' batches are pickles of dicts of numpy arrays and lists; allow the
    numpy array machinery and nothing else (no arbitrary code from a data file)."""
    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any parse failure is a malformed file
        raise DatasetError(f"{path}: not a CIFAR batch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: not a CIFAR batch file (expected a dict, got {type(obj).__name__})")
    return obj


CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
                "batches.meta", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", "meta", "fine_label_names"),
}


def _cifar_arrays(files: Sequence[Path], label_key: str):
    xs, ys = [], []
    for p in files:
        d = load_cifar_pickle(p)
        if "data" not in d or label_key not in d:
            raise DatasetError(f"{p}: CIFAR batch without 'data' and '{label_key}' entries (keys: {sorted(d)})")
        x = np.asarray(d["data"], dtype=np.uint8)
        y = np.asarray(d[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
            raise DatasetError(f"{p}: expected data of shape (N, 3072) and N labels, got {x.shape} and {y.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar(name: str, root: Path):
    """torchvision's CIFAR layout (``cifar-10-batches-py/`` or ``cifar-100-python/`` under root,
    or root itself). Read directly (restricted unpickler, no md5 check) so that any well-formed
    batch files load, the official ones included."""
    sub, train_files, test_files, label_key, meta_file, names_key = CIFAR_LAYOUT[name]
    looked = [root / sub, root]
    for d in looked:
        if all((d / f).is_file() for f in train_files + test_files):
            trx, try_ = _cifar_arrays([d / f for f in train_files], label_key)
            tex, tey = _cifar_arrays([d / f for f in test_files], label_key)
            classes = None
            if (d / meta_file).is_file():
                classes = [str(c) for c in load_cifar_pickle(d / meta_file).get(names_key, [])] or None
            return trx, try_, tex, tey, classes, d
    raise missing_error(name, train_files + test_files, looked,
                        f"(the 'python version' from the CIFAR site, unpacked: {sub}/)")


# ---------------------------------------------------------------------------------------------- STL-10

STL_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def read_stl10(root: Path):
    """torchvision's STL-10 layout: ``stl10_binary/{train,test}_{X,y}.bin`` (labels 1..10)."""
    looked = [root / "stl10_binary", root]
    for d in looked:
        if all((d / f).is_file() for f in STL_FILES):
            out = []
            for split in ("train", "test"):
                xb = np.fromfile(d / f"{split}_X.bin", dtype=np.uint8)
                y = np.fromfile(d / f"{split}_y.bin", dtype=np.uint8).astype(np.int64) - 1
                if xb.size % (3 * 96 * 96) or xb.size // (3 * 96 * 96) != len(y):
                    raise DatasetError(f"{d / f'{split}_X.bin'}: expected {len(y)} images of 3x96x96 bytes "
                                       f"(one per label in {split}_y.bin), found {xb.size} bytes")
                if len(y) and (y.min() < 0 or y.max() > 9):
                    raise DatasetError(f"{d / f'{split}_y.bin'}: labels must be 1..10")
                # stored column-major per channel, as torchvision reads it
                out += [xb.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2).copy(), y]
            classes = None
            if (d / "class_names.txt").is_file():
                classes = [ln.strip() for ln in (d / "class_names.txt").read_text().splitlines() if ln.strip()] or None
            return (*out, classes, d)
    raise missing_error("stl10", STL_FILES, looked, "(the binary version, unpacked: stl10_binary/)")


# ---------------------------------------------------------------------------------------------- folders

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".JPEG")


def scan_image_folder(d: Path, class_to_idx: dict[str, int] | None = None):
    """(samples, classes) of an ImageFolder tree ``d/<class>/<image>``; with ``class_to_idx``
    the class folders are mapped through it (unknown ones refused)."""
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"{d}: no class sub-directories (expected {d}/<class>/<image files>)")
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DatasetError(f"{d}: class folders not in the training classes: {unknown[:5]}"
                           f"{' ...' if len(unknown) > 5 else ''}")
    samples = []
    for c in classes:
        for p in sorted((d / c).rglob("*")):
            if p.suffix.lower() in {e.lower() for e in IMG_EXTENSIONS} and p.is_file():
                samples.append((str(p), class_to_idx[c]))
    if not samples:
        raise DatasetError(f"{d}: no image files ({', '.join(IMG_EXTENSIONS[:5])}, ...) in its class folders")
    return samples, classes


def find_imagenet(root: Path) -> Path:
    looked = [root / "imagenet", root / "ImageNet", root / "ILSVRC2012", root]
    for d in looked:
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    raise missing_error("imagenet", ["train/<wnid>/*.JPEG", "val/<wnid>/*.JPEG"], looked,
                        "(an ImageFolder tree; val/ sorted into class folders, e.g. with the usual valprep.sh)")
