"""Shipped pretrained networks (nernfast.shipped): used instead of training, checked, and in step
with the cache names the current recipes give."""
from __future__ import annotations

import pytest
import torch

import nernfast.pretrain as pt
import nernfast.shipped as shipped


@pytest.fixture
def fake_training(monkeypatch):
    calls = []

    def fake_train(model_name, dataset, out, epochs=None, **k):
        calls.append((model_name, dataset))
        torch.save({"model": model_name, "dataset": dataset, "seed": 0, "state_dict": {"w": torch.zeros(1)},
                    "metrics": {"test_accuracy": 0.5, "test_loss": 1.0, "val_accuracy": 0.5, "val_loss": 1.0}}, out)
    monkeypatch.setattr(pt, "train_checkpoint", fake_train)
    return calls


def _ship(tmp_path, monkeypatch, state):
    """A shipped directory holding one checkpoint under the name the digits original's cache entry has."""
    name = pt.cache_path("resnet20", "digits").name
    src = tmp_path / "made" / name
    src.parent.mkdir()
    torch.save({"model": "resnet20", "dataset": "digits", "seed": 0, "state_dict": {"w": state},
                "numerics": {"cpu": "test CPU", "pinned": True},
                "metrics": {"test_accuracy": 0.9, "test_loss": 0.1, "val_accuracy": 0.9, "val_loss": 0.1}}, src)
    d = tmp_path / "shipped"
    shipped.add([str(src)], d)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", d)
    monkeypatch.setenv("NERNFAST_CACHE", str(tmp_path / "cache"))
    return d / name


def test_shipped_checkpoint_is_used_instead_of_training(tmp_path, monkeypatch, fake_training, capsys):
    src = _ship(tmp_path, monkeypatch, torch.arange(4.0))
    path = pt.ensure_pretrained("resnet20", "digits")
    assert fake_training == [] and path.read_bytes() == src.read_bytes()
    assert "using the shipped" in capsys.readouterr().err
    assert pt.ensure_pretrained("resnet20", "digits") == path and fake_training == []
    # another seed has no shipped file: trained
    pt.ensure_pretrained("resnet20", "digits", seed=1)
    assert fake_training == [("resnet20", "digits")]


def test_damaged_shipped_checkpoint_is_trained_instead(tmp_path, monkeypatch, fake_training, capsys):
    src = _ship(tmp_path, monkeypatch, torch.arange(4.0))
    data = bytearray(src.read_bytes())
    data[-10] ^= 0xFF
    src.write_bytes(bytes(data))
    pt.ensure_pretrained("resnet20", "digits")
    assert fake_training == [("resnet20", "digits")]
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "SHA-256" in err[0] and "training it instead" in err[0]


def test_shipping_can_be_turned_off(tmp_path, monkeypatch, fake_training):
    _ship(tmp_path, monkeypatch, torch.arange(4.0))
    monkeypatch.setenv("NERNFAST_SHIPPED", "0")
    pt.ensure_pretrained("resnet20", "digits")
    assert fake_training == [("resnet20", "digits")]


def test_every_shipped_checkpoint_matches_its_manifest_and_a_current_cache_name():
    """A recipe or pinned-numerics change renames cache entries: a shipped file left under an old
    name would silently stop being used, so the shipped set must be re-made (python -m nernfast.shipped)."""
    files = shipped.manifest()
    assert files, "no shipped checkpoints"
    assert {p.name for p in shipped.SHIPPED_DIR.glob("*.pt")} == set(files)
    for name, e in files.items():
        assert shipped.sha256(shipped.SHIPPED_DIR / name) == e["sha256"], name
        assert pt.cache_path(e["model"], e["dataset"], e["seed"]).name == name, \
            f"{name} is not the current cache name of {e['model']}/{e['dataset']}/seed {e['seed']}"
