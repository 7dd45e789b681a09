"""Fashion-MNIST, the real workload, read from Debian's dataset-fashion-mnist (``make data``).

Skipped with the reason when the package is not installed; CI installs it (.ci/run). The readers
themselves are tested on small synthetic IDX files in tests/test_data.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nernfast.data import get_dataset
from nernfast.data import datasets as ds

FMNIST = ds.SYSTEM_DATASETS / "fashion-mnist"
pytestmark = pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                reason=f"Fashion-MNIST not installed in {FMNIST}: run `make data`")


def test_real_fashion_mnist_from_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("NERNFAST_DATA", str(tmp_path / "empty"))  # no default root: the Debian one is used
    b = get_dataset("fashion-mnist")
    assert Path(b.source) == FMNIST
    assert (len(b.train), len(b.val), len(b.test)) == (54_000, 6_000, 10_000)
    assert b.num_classes == 10 and b.in_channels == 1 and b.image_size == 28
    counts = torch.bincount(b.test.targets(), minlength=10)
    assert (counts == 1000).all(), counts
    train_counts = torch.bincount(torch.cat([b.train.targets(), b.val.targets()]), minlength=10)
    assert (train_counts == 6000).all(), train_counts
    x, y = next(iter(b.loader("test", 512, shuffle=False)))
    px = b.denormalize(x)
    assert px.min() >= -1e-6 and px.max() <= 1 + 1e-6 and 0.25 < float(px.mean()) < 0.32  # the set's mean 0.286
    assert b.augment is not None and b.augment.hflip and b.augment.pad == 2


def test_an_explicit_data_root_is_never_replaced(tmp_path):
    from nernfast.data import DatasetError
    with pytest.raises(DatasetError, match="not found"):
        get_dataset("fashion-mnist", tmp_path)
