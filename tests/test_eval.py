"""Evaluation: clean accuracy, FGSM / I-FGSM in pixel space, the built-in corruption suite, CIFAR-C
and ImageNet-R plumbing, and the full report."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import nernfast.pretrain as pt
from nernfast.data import DatasetError, get_dataset
from nernfast.eval import (CIFAR_C_CORRUPTIONS, CORRUPTIONS, Normalized, accuracy, builtin_corruption_accuracy,
                           corrupt, evaluate_model, fgsm_accuracy, format_results, ifgsm, ifgsm_accuracy,
                           ood_accuracy)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny 8x8 models: one thread (see nernfast.eval.threads) also for the direct calls below."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ResNet-20 trained for 4 short epochs on digits (~95 % test accuracy, a few seconds)."""
    out = tmp_path_factory.mktemp("eval") / "r20.pt"
    pt.pretrain("resnet20", "digits", epochs=4, out=out, progress=False)
    bundle = get_dataset("digits")
    model = pt.build_model("resnet20", 10, 1)
    model.load_state_dict(torch.load(out, weights_only=True)["state_dict"])
    model.eval()
    clean, _ = accuracy(model, bundle.loader("test", 512))
    assert clean > 0.85
    return model, bundle, clean


def test_fgsm_zero_is_clean_and_accuracy_falls_with_eps(trained):
    model, b, clean = trained
    accs = [fgsm_accuracy(model, b.loader("test", 512), e, b.mean, b.std) for e in (0.0, 0.05, 0.1, 0.2, 0.3)]
    assert accs[0] == clean
    assert all(a >= c for a, c in zip(accs, accs[1:])), accs
    assert accs[-1] < clean - 0.3 and accs[2] < clean


def test_ifgsm(trained):
    model, b, clean = trained
    assert ifgsm_accuracy(model, b.loader("test", 512), 0.0, b.mean, b.std) == clean
    it = ifgsm_accuracy(model, b.loader("test", 512), 0.1, b.mean, b.std, steps=5)
    one = fgsm_accuracy(model, b.loader("test", 512), 0.1, b.mean, b.std)
    assert it <= one + 0.01 and it < clean
    pm = Normalized(model, b.mean, b.std)
    x, y = next(iter(b.loader("test", 64)))
    xp = pm.to_pixels(x)
    xa = ifgsm(pm, xp, y, 0.05, steps=4, alpha=0.03)
    assert (xa - xp).abs().max() <= 0.05 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        assert torch.allclose(pm(xp), model(x), atol=1e-4)           # the wrapper normalises


def test_every_corruption_at_severity_5_lowers_accuracy(trained):
    model, b, clean = trained
    res = builtin_corruption_accuracy(model, b, severities=(5,))
    assert res["source"] == "builtin-corruptions" and set(res["per_corruption"]) == set(CORRUPTIONS)
    assert len(CORRUPTIONS) >= 6
    for name, acc in res["per_corruption"].items():
        assert acc < clean, (name, acc, clean)
    again = builtin_corruption_accuracy(model, b, severities=(5,), corruptions=["gaussian_noise"])
    assert again["per_corruption"]["gaussian_noise"] == res["per_corruption"]["gaussian_noise"]   # seeded


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_properties(name):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.2
    outs = {s: corrupt(x, name, s, torch.Generator().manual_seed(1)) for s in (1, 5)}
    for y in outs.values():
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(outs[5], corrupt(x, name, 5, torch.Generator().manual_seed(1)))
    assert (outs[5] - x).abs().mean() > (outs[1] - x).abs().mean() > 0
    with pytest.raises(ValueError):
        corrupt(x, name, 6, torch.Generator())


def test_evaluate_model_report(trained):
    model, b, clean = trained
    r = evaluate_model(model, b, max_batches=1, batch_size=64, fgsm_eps=(0.1, 0.2), ifgsm_steps=3)
    for k in ("accuracy", "loss", "fgsm_accuracy", "fgsm", "ifgsm_accuracy", "ood_accuracy", "ood", "settings"):
        assert k in r
    assert r["num_examples"] == 64 and r["fgsm_accuracy"] == r["fgsm"]["0.1"]
    assert r["settings"]["ifgsm_eps"] == 0.1 and r["settings"]["ifgsm_alpha"] == 0.025   # digits defaults
    assert r["ood"]["source"] == "builtin-corruptions"
    text = format_results(r)
    assert "fgsm accuracy (eps=0.2)" in text and "ood accuracy (builtin-corruptions)" in text


# ---------------------------------------------------------------------------------------------- OOD sets

class ConstantLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def _tiny_cifar10(root):
    sub = root / "cifar-10-batches-py"
    sub.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(sub / f, "wb") as fh:
            pickle.dump({"data": rng.randint(0, 256, (2, 3072)).astype(np.uint8), "labels": [0, 1]}, fh)


def test_cifar10_c(tmp_path):
    _tiny_cifar10(tmp_path)
    b = get_dataset("cifar10", tmp_path)
    c = tmp_path / "ood" / "CIFAR-10-C"
    c.mkdir(parents=True)
    np.save(c / "labels.npy", np.tile([0, 0, 1, 1], 5).astype(np.uint8))
    for name in CIFAR_C_CORRUPTIONS:
        np.save(c / f"{name}.npy", np.random.RandomState(0).randint(0, 256, (20, 32, 32, 3)).astype(np.uint8))
    model = ConstantLogits([1.0] + [0.0] * 9)                # always class 0: half of each severity is right
    r = ood_accuracy(model, b, ood_root=tmp_path / "ood", batch_size=3)
    assert r["source"] == "CIFAR-10-C" and set(r["per_corruption"]) == set(CIFAR_C_CORRUPTIONS)
    assert r["accuracy"] == 0.5 and r["table"]["fog"] == {str(s): 0.5 for s in range(1, 6)}
    (c / "fog.npy").unlink()
    with pytest.raises(DatasetError, match="fog.npy"):
        ood_accuracy(model, b, ood_root=tmp_path / "ood")


def test_imagenet_r_scores_its_200_class_subset(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)

    def folder(root, wnids, n):
        for w in wnids:
            (root / w).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (12, 12, 3)).astype(np.uint8)).save(root / w / f"{i}.png")

    folder(tmp_path / "imagenet" / "train", ["n01", "n02", "n03"], 2)
    folder(tmp_path / "imagenet" / "val", ["n01"], 1)
    folder(tmp_path / "imagenet-r", ["n02", "n03"], 2)
    b = get_dataset("imagenet", tmp_path, image_size=8)
    model = ConstantLogits([5.0, 1.0, 2.0])       # unmasked always n01, which ImageNet-R lacks
    r = ood_accuracy(model, b, batch_size=4)
    assert r["source"] == "ImageNet-R" and r["num_classes"] == 2 and r["num_examples"] == 4
    assert r["accuracy"] == 0.5                   # restricted to {n02, n03}: always n03, right for half
