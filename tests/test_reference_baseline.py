"""The benchmarks' reference baseline (benchmarks/reference_baseline.py) computes what nernfast's
reference path computes: the same losses and the same predictor gradients on the same inputs.

Small shapes (ResNet-20 option B, so 1x1 shortcut convs exercise the centre crop; hidden 24;
a 16x16 image batch of 6), float32; tolerances are relative to each gradient's largest entry.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from reference_baseline import ReferenceNeRN, encoding_matrix  # noqa: E402

from nernfast.models import build_model  # noqa: E402
from nernfast.nern import NeRN  # noqa: E402
from nernfast.config import PhaseConfig  # noqa: E402
from nernfast.models import copy_frozen  # noqa: E402
from nernfast.training.objectives import PhaseNets, ReconTarget, data_loss  # noqa: E402

RTOL = 2e-4  # of the largest |entry| of each gradient: different summation orders only


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    monkeypatch.setenv("NERNFAST_REFERENCE", "1")  # nernfast's plain-PyTorch reference path
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small ops: one thread is as fast and does not stall when the CI machine's cores are busy.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _bn_noise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    original = copy_frozen(build_model("resnet20b", 10, 3))
    _bn_noise(original, 1)
    teacher = copy_frozen(build_model("resnet32", 10, 3))
    _bn_noise(teacher, 2)
    nern = NeRN.from_model(original, hidden=24)
    assert not nern.plan.uniform  # 1x1 shortcut convs: the crop is exercised
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    return original, teacher, nern, x


def _idx(nern, duplicates: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    n = nern.plan.num_rows
    if duplicates:  # the weighted branch draws with replacement
        idx = torch.randint(0, n, (300,), generator=g)
        return torch.cat([idx, idx[:50]])
    return torch.randperm(n, generator=g)[:300]


def _grads(module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in module.named_parameters()}


def _assert_grads_close(ours, theirs):
    assert ours.keys() == theirs.keys()
    for k in ours:
        a, b = ours[k], theirs[k]
        scale = b.abs().max().item()
        assert scale > 0, f"{k}: zero gradient, the comparison would check nothing"
        err = (a - b).abs()
        if err.max().item() > RTOL * scale:
            i = int(err.argmax())
            raise AssertionError(f"{k}: max |diff| {err.max().item():.3g} > {RTOL} * {scale:.3g} at flat index {i} "
                                 f"(baseline {a.flatten()[i].item():.6g}, nernfast {b.flatten()[i].item():.6g})")


def _baseline(world, freeze=False, teacher=False, **weights):
    original, tch, nern, _ = world
    pred = copy.deepcopy(nern.predictor)
    enc = encoding_matrix(nern.encoding, nern.plan.coords)
    return ReferenceNeRN(original, pred, nern.plan, enc, distill=tch if teacher else None, freeze_source=freeze,
                         weights_batch_size=4096, **weights)  # several chunks: N is ~30k


@pytest.mark.parametrize("duplicates", [False, True], ids=["uniform-rows", "weighted-rows"])
def test_joint_step_matches_nernfast(world, duplicates):
    original, _, nern, x = world
    w = dict(recon_weight=1.0, fmd_weight=0.3, kd_weight=0.7, kd_kind="stable_kl")
    idx = _idx(nern, duplicates)
    ref = _baseline(world, **w)
    loss_b, parts_b = ref.backward(idx, x)

    ours = copy.deepcopy(nern)
    target = ReconTarget(nern.plan, nern.plan.weights_of(original), "cpu")
    phase = PhaseConfig(recon_loss="l2", recon_weight=w["recon_weight"], fmd_weight=w["fmd_weight"],
                        kd_weight=w["kd_weight"], kd_loss="stable_kl", temperature=1.0)
    loss_n, parts_n = data_loss(ours, phase, PhaseNets(target, copy_frozen(original), original), idx, x)
    loss_n.backward()
    for k in ("rec", "fmd", "kd"):
        assert parts_b[k].item() == pytest.approx(parts_n[k], rel=1e-5), k
    assert loss_b.item() == pytest.approx(parts_n["loss"], rel=1e-5)
    _assert_grads_close(_grads(ref.predictor), _grads(ours.predictor))


def test_warmup_step_matches_recon_fast_path(world):
    """The reference's warm-up step (everything runs, distillation multiplied away) has the gradient of
    nernfast's recon-only step (ReconTarget.fast_loss, its L2 scale refreshed at the current predictor)."""
    original, _, nern, x = world
    idx = _idx(nern, duplicates=True)
    ref = _baseline(world)
    loss_b, parts_b = ref.backward(idx, x, warmup=True)

    ours = copy.deepcopy(nern)
    target = ReconTarget(nern.plan, nern.plan.weights_of(original), "cpu")
    err, _ = target.refresh(ours.rows())
    assert loss_b.item() == pytest.approx(err["l2"], rel=1e-5)
    assert "fmd" in parts_b and "kd" in parts_b  # computed, as the reference does, though unused
    target.fast_loss(ours, idx, "l2").backward()
    _assert_grads_close(_grads(ref.predictor), _grads(ours.predictor))


def test_teacher_distillation_matches_nernfast(world):
    original, teacher, nern, x = world
    idx = _idx(nern, duplicates=False)
    ref = _baseline(world, teacher=True, recon_weight=0.1, fmd_weight=0.0, kd_weight=1.0, kd_kind="kl")
    loss_b, parts_b = ref.backward(idx, x)
    assert "fmd" not in parts_b  # architectures differ

    ours = copy.deepcopy(nern)
    target = ReconTarget(nern.plan, nern.plan.weights_of(original), "cpu")
    phase = PhaseConfig(recon_loss="l2", recon_weight=0.1, fmd_weight=0.0, kd_weight=1.0, kd_loss="kl", temperature=1.0)
    loss_n, parts_n = data_loss(ours, phase, PhaseNets(target, copy_frozen(original), teacher), idx, x)
    loss_n.backward()
    assert parts_b["kd"].item() == pytest.approx(parts_n["kd"], rel=1e-5)
    assert loss_b.item() == pytest.approx(parts_n["loss"], rel=1e-5)
    _assert_grads_close(_grads(ref.predictor), _grads(ours.predictor))


def test_source_trainable_as_in_the_reference_and_frozen_variant(world):
    """The reference backpropagates through its original (trainable); the frozen variant does not.
    Both give the predictor the same gradient."""
    _, _, nern, x = world
    idx = _idx(nern, duplicates=False)
    grads = []
    for freeze in (False, True):
        ref = _baseline(world, freeze=freeze)
        ref.backward(idx, x)
        conv_grad = ref.original.conv1.weight.grad
        bn_grad = ref.original.bn1.weight.grad
        if freeze:
            assert conv_grad is None and bn_grad is None
        else:
            assert conv_grad is not None and bn_grad is not None and bn_grad.abs().sum() > 0
        grads.append(_grads(ref.predictor))
    _assert_grads_close(grads[1], grads[0])


def test_materialize_and_step(world):
    original, _, nern, x = world
    ref = _baseline(world)
    model = ref.materialize()
    ours = copy_frozen(original)
    nern.materialize_(ours)
    for a, b in zip(nern.plan.weights_of(model), nern.plan.weights_of(ours)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in ref.predictor.parameters()]
    idx = _idx(nern, duplicates=True)
    loss = ref.step(idx, x)
    assert loss == loss  # finite
    assert any(not torch.equal(a, p) for a, p in zip(before, ref.predictor.parameters()))
