"""Ranger = RAdam + Lookahead (+ gradient centralisation) against a hand-written loop; factory; schedule."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from nernfast.optim import Ranger, build_optimizer, build_schedule, cosine_schedule


def problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(4, 3, 2, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    targets = [torch.randn_like(p) for p in params]
    scales = [torch.rand(p.shape, generator=g, dtype=torch.float64) * 3 for p in params]

    def grads(ps, step):  # a deterministic gradient field that changes with the step
        return [s * (p - t) ** 3 + 0.1 * math.sin(step) * t for p, t, s in zip(ps, targets, scales)]
    return params, grads


def ranger_by_hand(params, grads, steps, lr=5e-3, betas=(0.5, 0.999), eps=1e-5, wd=1e-3, k=6, alpha=0.5, gc=False):
    """RAdam (Liu et al. 2020, decoupled weight decay) + Lookahead (Zhang et al. 2019), written out."""
    b1, b2 = betas
    p = [x.clone() for x in params]
    slow = [x.clone() for x in params]  # the slow weights start at the initial weights
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, steps + 1):
        gs = grads(p, t)
        for i, g in enumerate(gs):
            if gc and g.dim() > 1:
                g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
            p[i] = p[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1 ** t)
            rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
            if rho_t > 5:
                r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                adaptive = math.sqrt(1 - b2 ** t) / (v[i].sqrt() + eps)
                p[i] = p[i] - lr * m_hat * r * adaptive
            else:
                p[i] = p[i] - lr * m_hat
        if t % k == 0:
            for i in range(len(p)):
                slow[i] = slow[i] + alpha * (p[i] - slow[i])
                p[i] = slow[i].clone()
    return p


def run_ranger(params, grads, steps, **kw):
    ps = [torch.nn.Parameter(x.clone()) for x in params]
    opt = Ranger(ps, **kw)
    for t in range(1, steps + 1):
        for x, g in zip(ps, grads([q.detach() for q in ps], t)):
            x.grad = g.clone()
        opt.step()
    return ps, opt


@pytest.mark.parametrize("kw", [{}, {"gc": True}, {"lr": 0.05, "k": 3, "alpha": 0.8, "betas": (0.9, 0.99)},
                                {"weight_decay": 0.0, "eps": 1e-8}])
def test_ranger_equals_radam_plus_lookahead_by_hand(kw):
    params, grads = problem()
    steps = 20  # covers the un-rectified first steps (rho_t <= 5) and three Lookahead syncs
    got, _ = run_ranger(params, grads, steps, **kw)
    names = {"betas": "betas", "eps": "eps", "lr": "lr", "k": "k", "alpha": "alpha", "gc": "gc"}
    hand_kw = {names[k]: v for k, v in kw.items() if k in names}
    if "weight_decay" in kw:
        hand_kw["wd"] = kw["weight_decay"]
    want = ranger_by_hand(params, grads, steps, **hand_kw)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-12)


def test_lookahead_slow_weights_start_at_the_initial_weights():
    params, grads = problem(1)
    got, opt = run_ranger(params, grads, 6, k=6, alpha=0.5)
    radam_only = [torch.nn.Parameter(x.clone()) for x in params]
    ro = torch.optim.RAdam(radam_only, lr=5e-3, betas=(0.5, 0.999), eps=1e-5, weight_decay=1e-3,
                           decoupled_weight_decay=True)
    for t in range(1, 7):
        for x, g in zip(radam_only, grads([q.detach() for q in radam_only], t)):
            x.grad = g.clone()
        ro.step()
    for a, fast, p0 in zip(got, radam_only, params):  # after k steps: halfway between start and fast
        torch.testing.assert_close(a.detach(), p0 + 0.5 * (fast.detach() - p0), rtol=1e-12, atol=1e-12)


def test_gradient_centralisation_changes_only_multi_dim_grads():
    params, grads = problem(2)
    plain, _ = run_ranger(params, grads, 3)
    central, _ = run_ranger(params, grads, 3, gc=True)
    assert not torch.allclose(plain[0], central[0])
    torch.testing.assert_close(plain[1], central[1], rtol=0, atol=0)  # 1-D (bias-like): untouched


def test_state_dict_round_trip_continues_identically():
    params, grads = problem(3)
    a = [torch.nn.Parameter(x.clone()) for x in params]
    opt_a = Ranger(a, k=4)
    for t in range(1, 8):  # stop between two Lookahead syncs
        for x, g in zip(a, grads([q.detach() for q in a], t)):
            x.grad = g.clone()
        opt_a.step()
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    opt_b = Ranger(b, k=4)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert all("slow" in opt_b.state[p] for p in b)
    for t in range(8, 16):
        for ps, opt in ((a, opt_a), (b, opt_b)):
            for x, g in zip(ps, grads([q.detach() for q in ps], t)):
                x.grad = g.clone()
            opt.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_param_groups_added_later_and_closure():
    w = torch.nn.Parameter(torch.ones(3))
    opt = Ranger([w], gc=True)
    extra = torch.nn.Parameter(torch.ones(2, 2))
    opt.add_param_group({"params": [extra], "lr": 1e-2})
    assert opt.param_groups[1]["lookahead_k"] == 6 and opt.param_groups[1]["gc"] is True

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum() + (extra ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(7.0)
    assert (w < 1).all()
    with pytest.raises(ValueError, match="Lookahead"):
        Ranger([w], k=0)


@pytest.mark.parametrize("name,cls", [("ranger", Ranger), ("radam", torch.optim.RAdam), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("Adam", torch.optim.Adam)])
def test_build_optimizer(name, cls):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], name, lr=1e-3, weight_decay=0.0)
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 1e-3
    if cls is Ranger:
        assert opt.param_groups[0]["betas"] == (0.5, 0.999) and opt.param_groups[0]["eps"] == 1e-5


def test_build_optimizer_unknown():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], "lamb")


def test_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = cosine_schedule(opt, 10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    want = [0.02 + (0.2 - 0.02) * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(11)]
    assert lrs == pytest.approx(want, rel=1e-9)


def test_build_schedule_warmup_then_cosine_and_constant():
    def lrs(kind: str, total: int, warm: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_schedule(opt, kind, total, warm)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    got = lrs("cosine", 10, 4)
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    want_tail = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(5)]  # cosine from the peak
    assert got[4:9] == pytest.approx(want_tail)
    assert all(a >= b for a, b in zip(got[3:], got[4:]))        # monotone after the warm-up
    assert lrs("constant", 6, 2) == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert lrs("cosine", 5, 0)[0] == 1.0                          # no warm-up: starts at the base lr
    with pytest.raises(ValueError, match="unknown schedule"):
        build_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "step", 5)
