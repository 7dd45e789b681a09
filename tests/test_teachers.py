"""Teachers: the --teacher grammar, ensembles as one module, and the strength check with its warning."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nernfast import train as train_cli
from nernfast.models import Ensemble, build_model
from nernfast.teachers import compare_teacher, parse_teacher, teacher_warning

from test_train import nets, tiny_cfg  # noqa: F401  (the module-scoped trained digits networks)


def test_teacher_spec_grammar():
    assert parse_teacher("resnet56") == parse_teacher("resnet56")
    assert parse_teacher("resnet56").members == 0 and parse_teacher("resnet56").path is None
    assert parse_teacher("resnet20w2").members == 0  # a width, not an ensemble
    s = parse_teacher("resnet20x3")
    assert (s.name, s.path, s.members) == ("resnet20", None, 3)
    s = parse_teacher("resnet32:/tmp/t.pt")
    assert (s.name, s.path, s.members) == ("resnet32", "/tmp/t.pt", 0)
    with pytest.raises(ValueError, match="K >= 1"):
        parse_teacher("resnet20x0")


def test_ensemble_is_the_log_of_the_mean_probability():
    torch.manual_seed(0)
    members = [build_model("resnet20", 10, 1).eval() for _ in range(3)]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        want = torch.stack([m(x).softmax(1) for m in members]).mean(0).log()
        got = Ensemble(members).eval()(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.exp().sum(1), torch.ones(5))
    with pytest.raises(ValueError):
        Ensemble([])


def test_warning_rule():
    base = {"teacher_val_acc": 0.99, "teacher_val_loss": 0.05, "original_val_acc": 0.98,
            "original_val_loss": 0.06, "val_images": 144}
    assert teacher_warning({**base, "stronger": True}) is None
    msg = teacher_warning({**base, "stronger": False})
    assert "\n" not in msg and "not stronger" in msg and "99.00 %" in msg and "--teacher" in msg


def test_the_original_as_its_own_teacher_is_not_stronger(nets, tmp_path, capfd):  # noqa: F811
    from nernfast.checkpoints import load_model_checkpoint
    from nernfast.data import get_dataset
    orig, _ = nets
    b = get_dataset("digits")
    net = load_model_checkpoint(orig, build_model("resnet20", 10, 1)).eval()
    c = compare_teacher(net, net, b, "cpu")
    assert c["teacher_val_acc"] == c["original_val_acc"] and not c["stronger"] and c["val_images"] == 144
    assert not compare_teacher(Ensemble([net]), net, b, "cpu")["stronger"]  # same predictions: loss not lower
    # The trainer checks at the start of teacher_decoupled, warns and records it.
    res = train_cli.run(tiny_cfg("teacher_decoupled", nets, tmp_path, [f"teacher=resnet20:{orig}"]), progress=False)
    assert res["teacher_check"]["stronger"] is False
    assert "not stronger than the original" in capfd.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["teacher_check"]["rule"].startswith("teacher val")
    assert math.isfinite(res["teacher_check"]["teacher_val_loss"])


def test_ensemble_members_are_seeds_0_to_k_minus_1_trained_side_by_side(monkeypatch, tmp_path):
    import threading
    import time
    from nernfast import pretrain, teachers
    seen, live, peak = [], [0], [0]
    lock = threading.Lock()

    def fake(name, dataset, data_root=None, seed=0, device="cpu", epochs=None, progress=False):
        with lock:
            seen.append((name, dataset, seed, progress))
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.2)
        with lock:
            live[0] -= 1
        return tmp_path / f"{name}-{seed}.pt"
    monkeypatch.setattr(pretrain, "ensure_pretrained", fake)
    monkeypatch.setattr(teachers, "usable_cpus", lambda: 2)
    paths = teachers.pretrain_members("resnet20", 3, "digits", progress=True)
    assert paths == [tmp_path / f"resnet20-{s}.pt" for s in range(3)]
    assert sorted(s for _, _, s, _ in seen) == [0, 1, 2] and peak[0] == 2
    assert [s for _, _, s, p in seen if p] == [2]  # one progress bar


def test_original_and_flip_teachers():
    from nernfast.teachers import build_teacher
    torch.manual_seed(0)
    net = build_model("resnet20", 10, 1).eval()
    x = torch.randn(4, 1, 8, 8)

    def no_load(*_a):
        raise AssertionError("the original needs no loading")
    t, src = build_teacher(parse_teacher("original+flip"), net, "fashion-mnist", no_load, no_load)
    with torch.no_grad():
        want = torch.stack([net(x).log_softmax(1), net(x.flip(-1)).log_softmax(1)]).exp().mean(0).log()
        torch.testing.assert_close(t(x), want, atol=1e-5, rtol=1e-5)
    assert "mirror" in src and parse_teacher("resnet20x3+flip") == parse_teacher("resnet20x3+flip")
    assert parse_teacher("resnet20x3+flip").members == 3 and parse_teacher("resnet20x3+flip").flip
    t, src = build_teacher(parse_teacher("original"), net, "digits", no_load, no_load)
    assert t is net and src == "the original"
    with pytest.raises(ValueError, match="mirror image"):
        build_teacher(parse_teacher("original+flip"), net, "digits", no_load, no_load)
