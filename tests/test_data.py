"""Datasets: every loader on small fixture files the tests write, the digits default, adaptation,
augmentation and the errors for missing or malformed data."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from nernfast.data import DATASETS, DatasetError, adapt_images, adapt_stats, get_dataset
from nernfast.data.base import Augment, random_affine, random_crop, random_hflip


# ---------------------------------------------------------------------------------------------- writers

def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    data = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_idx_dir(d, n_train=12, n_test=5, gz=False, seed=0):
    rng = np.random.RandomState(seed)
    arrays = {"train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10}
    for name, a in arrays.items():
        write_idx(d / name, a, gz)
    return arrays


def make_cifar(root, n=4, hundred=False, seed=0):
    rng = np.random.RandomState(seed)
    sub = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    sub.mkdir(parents=True)
    key, k = ("fine_labels", 100) if hundred else ("labels", 10)
    files = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    out = {}
    for f in files:
        d = {"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), key: list(rng.randint(0, k, n))}
        with open(sub / f, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        out[f] = d
    meta = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    with open(sub / meta[0], "wb") as fh:
        pickle.dump({meta[1]: [f"c{i}" for i in range(k)]}, fh)
    return out


# ---------------------------------------------------------------------------------------------- digits

def test_digits_bundle():
    b = get_dataset("digits")
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 1, 8)
    assert (len(b.train), len(b.val), len(b.test)) == (1294, 144, 359)
    x, y = b.train[0]
    assert x.shape == (1, 8, 8) and isinstance(y, int)
    xs = torch.cat([x for x, _ in b.loader("train", 512, augment=False)])
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1   # normalised
    # splits are disjoint; test is fixed, val follows the seed
    b1 = get_dataset("digits", seed=1)
    assert torch.equal(b.test.indices, b1.test.indices)
    assert not torch.equal(b.val.indices, b1.val.indices)
    assert not set(b.train.indices.tolist()) & set(b.val.indices.tolist())
    assert not set(b.train.indices.tolist()) & set(b.test.indices.tolist())
    assert torch.bincount(b.test.targets()).min() >= 35                        # stratified


def test_tensor_loader_matches_items_and_is_seeded():
    b = get_dataset("digits")
    x, y = next(iter(b.loader("test", 7)))
    for i in range(7):
        xi, yi = b.test[i]
        assert torch.allclose(x[i], xi) and y[i].item() == yi
    a1 = [y for _, y in b.loader("train", 100, seed=3)]
    a2 = [y for _, y in b.loader("train", 100, seed=3)]
    assert all(torch.equal(p, q) for p, q in zip(a1, a2))
    ld = b.loader("train", 100, seed=3)
    e1, e2 = [torch.cat([y for _, y in ld]) for _ in range(2)]
    assert not torch.equal(e1, e2) and sorted(e1.tolist()) == sorted(e2.tolist())  # new order each epoch
    assert len(b.loader("train", 100, drop_last=True)) == 12 and len(b.loader("train", 100)) == 13


def test_adaptation_one_place():
    b = get_dataset("digits", image_size=16, in_channels=3)
    x, _ = next(iter(b.loader("test", 4)))
    assert x.shape == (4, 3, 16, 16) and len(b.mean) == 3
    assert torch.equal(x[:, 0], x[:, 1])
    g = torch.rand(2, 3, 5, 5)
    assert torch.allclose(adapt_images(g, 1, 5)[:, 0], 0.299 * g[:, 0] + 0.587 * g[:, 1] + 0.114 * g[:, 2])
    assert adapt_stats((0.5,), (0.25,), 3) == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError):
        adapt_images(torch.rand(1, 2, 4, 4), 3, 4)


def test_augmentations():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 5, 5)
    x[:, :, 2, 2] = 1
    y = random_crop(x, 1, gen)
    pos = {tuple(torch.nonzero(im[0])[0].tolist()) for im in y if im.sum() > 0}
    assert y.shape == x.shape and len(pos) > 3 and all(1 <= r <= 3 and 1 <= c <= 3 for r, c in pos)
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(64, 1, 1, 1)
    f = random_hflip(x, gen)
    flipped = (f[:, 0, 0, 0] == 3).sum().item()
    assert 10 < flipped < 54 and ((f[:, 0, 0, 0] == 0) | (f[:, 0, 0, 0] == 3)).all()
    x = torch.rand(16, 1, 8, 8, generator=gen)
    assert torch.allclose(random_affine(x, 0, 0, 0, gen), x, atol=1e-5)        # identity warp
    y = Augment(rotate=10, scale=0.1, shift=0.75)(x, gen)
    assert y.shape == x.shape and not torch.allclose(y, x) and y.min() >= 0 and y.max() <= 1


# ---------------------------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("name,sub,gz", [("mnist", "MNIST/raw", True), ("fashion-mnist", "FashionMNIST/raw", False),
                                         ("kmnist", "", True)])
def test_idx_datasets(tmp_path, name, sub, gz):
    d = tmp_path / sub if sub else tmp_path
    arrays = make_idx_dir(d, gz=gz)
    b = get_dataset(name, tmp_path, val_fraction=0.25)
    assert (len(b.train), len(b.val), len(b.test), b.image_size, b.in_channels) == (9, 3, 5, 28, 1)
    assert torch.equal(b.test.targets(), torch.tensor(arrays["t10k-labels-idx1-ubyte"]))
    px = b.test.pixels(torch.arange(5))
    assert torch.allclose(px[:, 0] * 255, torch.tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32))
    x, y = next(iter(b.loader("train", 4)))
    assert x.shape == (4, 1, 28, 28)


def test_idx_malformed(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.*malformed IDX"):
        get_dataset("mnist", tmp_path)


def test_missing_dataset_error(tmp_path):
    with pytest.raises(DatasetError) as e:
        get_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg
    for name in ("cifar10", "cifar100", "stl10", "imagenet"):
        with pytest.raises(DatasetError, match=f"(?s)dataset .{name}. not found.*looked in"):
            get_dataset(name, tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset"):
        get_dataset("svhn")
    assert set(DATASETS) >= {"digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100", "stl10", "imagenet"}


# ---------------------------------------------------------------------------------------------- CIFAR / STL

def test_cifar10(tmp_path):
    batches = make_cifar(tmp_path)
    b = get_dataset("cifar10", tmp_path, val_fraction=0.1)
    assert (len(b.train) + len(b.val), len(b.test), b.num_classes, b.image_size) == (20, 4, 10, 32)
    assert b.classes[:2] == ["c0", "c1"]
    want = torch.tensor(batches["test_batch"]["data"]).view(4, 3, 32, 32).float() / 255
    assert torch.allclose(b.test.pixels(torch.arange(4)), want)
    assert b.test.targets().tolist() == [int(v) for v in batches["test_batch"]["labels"]]
    x, y = next(iter(b.loader("train", 8)))
    assert x.shape == (8, 3, 32, 32)


def test_cifar100_and_grey_adaptation(tmp_path):
    make_cifar(tmp_path, hundred=True)
    b = get_dataset("cifar100", tmp_path, in_channels=1, image_size=16)
    assert b.num_classes == 100 and len(b.classes) == 100
    x, _ = next(iter(b.loader("test", 4)))
    assert x.shape == (4, 1, 16, 16)


def test_cifar_refuses_code_in_pickles(tmp_path):
    make_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": [0]}, fh)
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        get_dataset("cifar10", tmp_path)


def test_stl10(tmp_path):
    d = tmp_path / "stl10_binary"
    d.mkdir()
    rng = np.random.RandomState(0)
    imgs = {}
    for split, n in (("train", 6), ("test", 3)):
        im = rng.randint(0, 256, (n, 3, 96, 96)).astype(np.uint8)          # (N, C, H, W)
        imgs[split] = im
        im.transpose(0, 1, 3, 2).tofile(d / f"{split}_X.bin")                 # stored column-major
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")  # labels 1..10
    b = get_dataset("stl10", tmp_path, val_fraction=1 / 6)
    assert (len(b.train), len(b.val), len(b.test), b.image_size) == (5, 1, 3, 96)
    assert torch.allclose(b.test.pixels(torch.arange(3)) * 255, torch.tensor(imgs["test"]).float())
    assert b.test.targets().tolist() == [0, 1, 2]
    (d / "test_y.bin").write_bytes(b"\x01")
    with pytest.raises(DatasetError, match="test_X.bin"):
        get_dataset("stl10", tmp_path)


# ---------------------------------------------------------------------------------------------- ImageNet

def make_image_folder(root, classes, n=3, size=20, seed=0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (size, size + 4, 3)).astype(np.uint8)).save(root / c / f"{i}.png")


def test_imagenet_folder(tmp_path):
    wnids = ["n01", "n02", "n03"]
    make_image_folder(tmp_path / "imagenet" / "train", wnids, n=4)
    make_image_folder(tmp_path / "imagenet" / "val", wnids[:2], n=2)
    b = get_dataset("imagenet", tmp_path, image_size=16, val_fraction=0.25)
    assert (b.num_classes, len(b.train), len(b.val), len(b.test)) == (3, 9, 3, 4)
    assert b.info["wnids"] == wnids and b.test.targets().tolist() == [0, 0, 1, 1]
    x, y = next(iter(b.loader("train", 5, num_workers=0)))
    assert x.shape == (5, 3, 16, 16)
    x, y = next(iter(b.loader("test", 4, num_workers=0)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]
