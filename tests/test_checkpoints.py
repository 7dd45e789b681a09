"""Loading users' checkpoints (state_dict, module. prefix, akamaster's {'state_dict': ...}), refusing
pickled modules, clear mismatch errors, atomic saving."""
from __future__ import annotations

import os

import pytest
import torch

from nernfast.checkpoints import CheckpointError, load_model_checkpoint, save_checkpoint_atomic
from nernfast.models import build_model


@pytest.fixture(scope="module")
def src():
    torch.manual_seed(0)
    m = build_model("resnet20", 10, 3)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d):
                b.running_mean.normal_()
    return m


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa if "num_batches" not in k)


def test_plain_and_prefixed_state_dicts(tmp_path, src):
    torch.save(src.state_dict(), tmp_path / "a.pt")
    assert same(load_model_checkpoint(tmp_path / "a.pt", build_model("resnet20", 10, 3)), src)
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "b.pt")
    assert same(load_model_checkpoint(tmp_path / "b.pt", build_model("resnet20", 10, 3)), src)


def test_akamaster_style_loads(tmp_path, src):
    # akamaster's CIFAR checkpoints: {'state_dict': DataParallel keys, 'best_prec1': ...}, saved
    # before BatchNorm had num_batches_tracked
    sd = {"module." + k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"epoch": 200, "best_prec1": 91.7, "state_dict": sd}, tmp_path / "resnet20-12fca82f.th")
    m = load_model_checkpoint(tmp_path / "resnet20-12fca82f.th", build_model("resnet20", 10, 3))
    assert same(m, src)


def test_pickled_module_refused_with_documented_message(tmp_path, src):
    torch.save(src, tmp_path / "full.pt")
    with pytest.raises(CheckpointError) as e:
        load_model_checkpoint(tmp_path / "full.pt", build_model("resnet20", 10, 3))
    msg = str(e.value)
    assert "pickled Python object" in msg and "torch.save(model.state_dict()" in msg and "--trust-pickle" in msg
    m = load_model_checkpoint(tmp_path / "full.pt", build_model("resnet20", 10, 3), trust_pickle=True)
    assert same(m, src)


def test_mismatch_lists_keys_and_shapes(tmp_path, src):
    sd = dict(src.state_dict())
    sd.pop("conv1.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_model_checkpoint(tmp_path / "bad.pt", build_model("resnet20", 100, 3))
    msg = str(e.value)
    assert "missing keys (1): conv1.weight" in msg and "unexpected keys (1): extra.weight" in msg
    assert "linear.weight: checkpoint (10, 64) vs model (100, 64)" in msg


def test_unreadable_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model_checkpoint(tmp_path / "junk.pt", build_model("resnet20"))
    with pytest.raises(CheckpointError, match="not found"):
        load_model_checkpoint(tmp_path / "nope.pt", build_model("resnet20"))
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(CheckpointError, match="no state_dict found"):
        load_model_checkpoint(tmp_path / "nostate.pt", build_model("resnet20"))


def test_save_atomic(tmp_path, src):
    p = tmp_path / "sub" / "ck.pt"
    save_checkpoint_atomic({"model": "resnet20", "state_dict": src.state_dict()}, p)
    save_checkpoint_atomic({"model": "resnet20", "state_dict": src.state_dict()}, p)   # replace
    assert os.listdir(p.parent) == ["ck.pt"]
    obj = torch.load(p, weights_only=True)
    assert obj["model"] == "resnet20"
    assert same(load_model_checkpoint(p, build_model("resnet20", 10, 3)), src)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        save_checkpoint_atomic({"x": Boom()}, p)
    assert os.listdir(p.parent) == ["ck.pt"]                      # old file intact, no temp left
    assert torch.load(p, weights_only=True)["model"] == "resnet20"
