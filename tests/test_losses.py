"""NeRN's objectives against hand computation with Python floats."""
from __future__ import annotations

import math

import pytest
import torch

from nernfast.losses import feature_map_loss, feature_map_loss_reference, kd_loss, reconstruction_loss
from nernfast.testing.seed import session_seed


def layers():
    shapes = [(3, 2, 3, 3), (5, 3, 1, 1), (4, 5, 3, 3)]
    return [torch.randn(s, dtype=torch.float64) for s in shapes], [torch.randn(s, dtype=torch.float64) for s in shapes]


def test_l2_is_sqrt_of_total_squared_error_over_total_count():
    pred, target = layers()
    sq = sum((a - b) ** 2 for p, t in zip(pred, target) for a, b in zip(p.flatten().tolist(), t.flatten().tolist()))
    count = sum(t.numel() for t in target)
    assert reconstruction_loss(pred, target, "l2").item() == pytest.approx(math.sqrt(sq / count), rel=1e-12)
    assert reconstruction_loss(target, target, "l2").item() == 0.0


def test_mse_is_the_mean_of_per_layer_mse():
    pred, target = layers()
    per_layer = []
    for p, t in zip(pred, target):
        d = [(a - b) ** 2 for a, b in zip(p.flatten().tolist(), t.flatten().tolist())]
        per_layer.append(sum(d) / len(d))
    assert reconstruction_loss(pred, target, "mse").item() == pytest.approx(sum(per_layer) / 3, rel=1e-12)
    with pytest.raises(ValueError, match="unknown reconstruction loss"):
        reconstruction_loss(pred, target, "l1")


def test_reconstruction_gradients_flow():
    pred, target = layers()
    pred = [p.requires_grad_() for p in pred]
    reconstruction_loss(pred, target, "l2").backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pred)


def test_feature_map_loss_formula():
    eps = 1e-3
    student = [torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 6, 2, 2, dtype=torch.float64)]
    teacher = [torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 6, 2, 2, dtype=torch.float64)]
    total = 0.0
    for s, t in zip(student, teacher):
        B = s.shape[0]
        layer = 0.0
        for b in range(B):
            sv, tv = s[b].flatten().tolist(), t[b].flatten().tolist()
            ns, nt = math.sqrt(sum(x * x for x in sv)), math.sqrt(sum(x * x for x in tv))
            layer += sum((x / (nt + eps) - y / (ns + eps)) ** 2 for x, y in zip(tv, sv))
        total += layer / B
    assert feature_map_loss(student, teacher).item() == pytest.approx(total, rel=1e-12)
    assert feature_map_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-12)  # ||a||^2 + ||b||^2 - 2ab rounds
    assert feature_map_loss_reference(teacher, teacher).item() == 0.0
    # scale-free up to eps: doubling the student's maps barely moves it
    assert feature_map_loss([2 * s for s in student], teacher).item() == pytest.approx(total, rel=1e-3)
    with pytest.raises(ValueError, match="matching layers"):
        feature_map_loss(student, teacher[:1])


def kl_by_hand(student, teacher, T=1.0, stable=False):
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        et = [math.exp(v / T) for v in zt]
        es = [math.exp(v / T) for v in zs]
        p = [v / sum(et) for v in et]
        q = [v / sum(es) for v in es]
        log_q = [math.log(v + 1e-4) if stable else math.log(v) for v in q]
        total += sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q))
    return total / len(student) * T * T


@pytest.mark.parametrize("kind", ["kl", "stable_kl"])
@pytest.mark.parametrize("T", [1.0, 4.0, 0.5])
def test_kd_losses_by_hand(kind, T):
    student, teacher = torch.randn(6, 10, dtype=torch.float64) * 3, torch.randn(6, 10, dtype=torch.float64) * 3
    got = kd_loss(student, teacher, kind, T).item()
    # the loss computes in float32 (logits may come in half precision)
    assert got == pytest.approx(kl_by_hand(student, teacher, T, stable=kind == "stable_kl"), rel=1e-5, abs=1e-6)


def test_kd_zero_for_identical_logits_and_stable_bounds_the_gradient():
    z = torch.randn(5, 7)
    assert kd_loss(z, z, "kl").item() == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[0.0, 0.0, 0.0]])
    student = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)  # ~0 mass on class 1
    kd_loss(student, teacher, "kl").backward()
    plain = student.grad.abs().max().item()
    student.grad = None
    stable = kd_loss(student, teacher, "stable_kl")
    stable.backward()
    assert math.isfinite(stable.item()) and student.grad.abs().max().item() <= plain
    with pytest.raises(ValueError, match="unknown KD loss"):
        kd_loss(z, z, "js")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shapes", [
    [(8, 16, 28, 28)] * 7 + [(8, 32, 14, 14)] * 6 + [(8, 64, 7, 7)] * 6,   # ResNet-20 on 28x28 (the default)
    [(3, 4, 5, 5), (3, 6, 2, 2), (3, 4, 5, 5), (3, 1, 1, 7)],              # interleaved shapes, a 1-pixel map
    [(1, 2, 3, 3)],
])
def test_feature_map_loss_matches_reference(dtype, shapes):
    """The three-reduction computation against the per-layer reference, value and gradient, on random maps
    (seeded by NERNFAST_TEST_SEED, shown in the header)."""
    g = torch.Generator().manual_seed(session_seed())
    student = [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]
    teacher = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    ref_in = [s.detach().to(torch.promote_types(dtype, torch.float32)).requires_grad_() for s in student]
    ref = feature_map_loss_reference(ref_in, [t.to(ref_in[0].dtype) for t in teacher])
    got = feature_map_loss(student, teacher)
    assert got.dtype == ref.dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert got.item() == pytest.approx(ref.item(), rel=tol)
    ref.backward()
    got.backward()
    for a, b in zip(student, ref_in):
        # the grouped path's gradient reaches the 16-bit maps through the cast: compare in fp32
        torch.testing.assert_close(a.grad.float(), b.grad.float().to(a.dtype).float(),
                                   rtol=1e-2 if dtype == torch.bfloat16 else tol, atol=1e-6)


def test_feature_map_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        feature_map_loss([torch.ones(2, 3, 4, 4)], [torch.ones(2, 3, 2, 2)])


def test_feature_map_loss_on_huge_maps_matches_reference():
    """Maps whose squared norms overflow fp32 (a broken predicted network) give the reference's
    finite value, not NaN."""
    g = torch.Generator().manual_seed(session_seed())
    student = [torch.randn(4, 8, 6, 6, generator=g) * 1e20, torch.randn(4, 8, 6, 6, generator=g)]
    teacher = [torch.randn(4, 8, 6, 6, generator=g), torch.randn(4, 8, 6, 6, generator=g)]
    ref = feature_map_loss_reference(student, teacher)
    got = feature_map_loss(student, teacher)
    assert torch.isfinite(ref) and got.item() == pytest.approx(ref.item(), rel=1e-6)
