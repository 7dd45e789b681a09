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


def test_ensemble_reuses_the_logits_it_is_given_for_one_member():
    torch.manual_seed(0)
    members = [build_model("resnet20", 10, 1).eval() for _ in range(2)]
    calls = []
    members[0].register_forward_hook(lambda m, i, o: calls.append(i[0]))
    x = torch.randn(5, 1, 8, 8)
    ens = Ensemble(members, flip=True).eval()
    with torch.no_grad():
        want = ens(x)
        calls.clear()
        got = ens(x, known=(members[0], members[0](x)))
    assert torch.equal(got, want)
    assert len(calls) == 2 and calls[1] is not x  # the caller's pass, then only the mirror view
    with torch.no_grad():  # logits given for a network that is not a member change nothing
        assert torch.equal(ens(x, known=(build_model("resnet20", 10, 1).eval(), torch.zeros(5, 10))), want)


def test_phase_two_runs_the_original_once_less_when_the_teacher_is_its_mirror_ensemble():
    """The default Fashion-MNIST teacher is the original with its mirror images: the feature-map pass already
    ran the original on the batch, so the teacher reuses those logits. Same loss and gradients as a teacher
    holding a separate copy of the original."""
    import copy

    from nernfast.config import PhaseConfig
    from nernfast.models import copy_frozen
    from nernfast.nern import NeRN
    from nernfast.training.objectives import PhaseNets, ReconTarget, data_loss
    torch.manual_seed(0)
    original = copy_frozen(build_model("resnet20", 10, 1))
    nern = NeRN.from_model(original, hidden=16)
    x = torch.randn(4, 1, 8, 8)
    idx = torch.randperm(nern.plan.num_rows)[:100]
    phase = PhaseConfig(recon_loss="l2", recon_weight=0.1, fmd_weight=0.1, kd_weight=1.0, kd_loss="kl",
                        temperature=1.0)
    target = ReconTarget(nern.plan, nern.plan.weights_of(original), "cpu")
    calls = []
    original.register_forward_hook(lambda m, i, o: calls.append(m))  # copies of it carry the hook too
    results = []
    for teacher in (Ensemble([copy.deepcopy(original)], flip=True), Ensemble([original], flip=True)):
        ours = copy.deepcopy(nern)
        calls.clear()
        loss, parts = data_loss(ours, phase, PhaseNets(target, copy_frozen(original), teacher, features=original),
                                idx, x)
        loss.backward()
        runs = sum(m is original for m in calls)
        results.append((parts, {k: p.grad for k, p in ours.predictor.named_parameters()}, runs))
    (parts_copy, grads_copy, calls_copy), (parts_shared, grads_shared, calls_shared) = results
    assert (calls_copy, calls_shared) == (1, 2)  # features only / features + the mirror view
    assert parts_shared == parts_copy and parts_shared["kd"] > 0
    for k in grads_copy:
        assert torch.equal(grads_shared[k], grads_copy[k]), k
