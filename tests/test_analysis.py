"""Analyses on small synthetic weights and models: low-frequency ratio, interpolation, landscape,
loading, intervals and the ``python -m nernfast.analyze`` CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nernfast.analysis import stats
from nernfast.analysis.interpolate import alphas_grid, interpolate
from nernfast.analysis.landscape import landscape, make_plane
from nernfast.analysis.lowfreq import (lowfreq_ratio, random_ratio, ratio_differences, spectrum_check,
                                      spectrum_warning, summarize)
from nernfast.analysis.weights import load_weights, recon_l2, relative_l2
from nernfast.models import build_model


def _with_singular_values(s: list[float], rows: int, cols: int) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(rows, rows, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, cols, dtype=torch.float64))
    sig = torch.zeros(rows, cols, dtype=torch.float64)
    sig[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return u @ sig @ v.T


# ---------------------------------------------------------------------------------------------- lowfreq
@pytest.mark.parametrize("shape", [(6, 9), (16, 8, 3, 3), (5, 3, 3, 3)])
def test_rank_one_has_all_energy_in_first_half(shape):
    a = torch.randn(shape[0], dtype=torch.float64)
    b = torch.randn(int(torch.tensor(shape[1:]).prod()), dtype=torch.float64)
    w = torch.outer(a, b).reshape(shape).float()
    assert lowfreq_ratio(w) == pytest.approx(1.0, abs=1e-6)


def test_a_fresh_init_is_near_random_and_structure_is_not():
    torch.manual_seed(0)
    fresh = {n: m.weight.detach() for n, m in build_model("resnet20", 10, 1).named_modules()
             if isinstance(m, nn.Conv2d)}
    c = spectrum_check(fresh)
    assert c["layers"] == 19 and abs(c["excess"]) < 0.01 and c["near_random"]
    msg = spectrum_warning(c)
    assert "\n" not in msg and f"{c['mean_ratio']:.3f}" in msg and "random initialisation" in msg
    # the same shapes with most of their energy in a few directions (trained structure) + a little noise
    structured = {n: (_with_singular_values([3.0, 2.0, 1.0], w.shape[0], w[0].numel())
                      + 0.01 * torch.randn(w.shape[0], w[0].numel(), dtype=torch.float64)).reshape(w.shape)
                  for n, w in fresh.items()}
    c = spectrum_check(structured)
    assert c["excess"] > 0.2 and not c["near_random"] and spectrum_warning(c) is None
    with pytest.raises(ValueError, match="at least one"):
        spectrum_check({})


def test_random_ratio_depends_on_the_matrix_shape_only():
    assert random_ratio((16, 16, 3, 3)) == random_ratio((16, 144))
    assert random_ratio((64, 64)) == pytest.approx(lowfreq_ratio(torch.randn(64, 64)), abs=0.03)
    assert random_ratio((4, 400)) < random_ratio((64, 64))  # a wide matrix's spectrum is flatter


def test_ratio_matches_hand_computation():
    # sigma = (3, 2, 1, 1): first half = 2 values -> (9 + 4) / (9 + 4 + 1 + 1) = 13 / 15
    assert lowfreq_ratio(torch.diag(torch.tensor([3.0, 2.0, 1.0, 1.0]))) == pytest.approx(13 / 15, rel=1e-6)
    # n = 5 singular values (4, 3, 2, 1, 1): floor(5 / 2) = 2 -> 25 / 31, in a rotated 5 x 7 matrix
    w = _with_singular_values([4, 3, 2, 1, 1], 5, 7)
    assert lowfreq_ratio(w) == pytest.approx(25 / 31, rel=1e-9)
    # equal singular values: floor(n / 2) / n
    assert lowfreq_ratio(torch.eye(4)) == pytest.approx(0.5)
    # a conv weight is reshaped (c_out, c_in * k * k) before the SVD
    conv = _with_singular_values([2, 1, 1], 3, 2 * 2 * 2).reshape(3, 2, 2, 2)
    assert lowfreq_ratio(conv) == pytest.approx(4 / 6, rel=1e-9)


def test_ratio_difference_positive_for_a_smoother_reconstruction():
    orig = {"a": _with_singular_values([1, 1, 1, 1], 4, 6).float()}
    smooth = {"a": _with_singular_values([2, 1, 0.1, 0.1], 4, 6).float()}
    d = ratio_differences(smooth, orig)
    assert d["a"] == pytest.approx(5 / 5.02 - 0.5, rel=1e-5)
    assert summarize(d)["positive_layers"] == 1


# ---------------------------------------------------------------------------------------------- models
def _data(n: int = 48, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _tiny(seed: int) -> nn.Module:
    """A small conv net with BN (fast; the analyses only need named convs and a state dict)."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3),
                      nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10))
    return _randomise_bn(m)


def _randomise_bn(m: nn.Module) -> nn.Module:
    with torch.no_grad():  # non-trivial BN so that running statistics matter too
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(build_model("resnet20", 10, 1))


def _evaluator(x, y):
    def ev(model):
        with torch.no_grad():
            logits = model(x)
        return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))
    return ev


def _convs(m: nn.Module) -> list[str]:
    return [n for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)]


def test_interpolation_endpoints_reproduce_both_models():
    a, b = _tiny(1), _tiny(2)
    ev = _evaluator(*_data())
    before = {k: v.clone() for k, v in a.state_dict().items()}
    rows = interpolate(a, b, _convs(a), alphas_grid(3), ev)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    acc_a, loss_a = ev(a)
    acc_b, loss_b = ev(b)
    assert (rows[0]["accuracy"], rows[0]["loss"]) == (acc_a, pytest.approx(loss_a, abs=1e-6))
    assert (rows[-1]["accuracy"], rows[-1]["loss"]) == (acc_b, pytest.approx(loss_b, abs=1e-6))
    wa = {n: dict(a.named_modules())[n].weight for n in _convs(a)}
    wb = {n: dict(b.named_modules())[n].weight for n in _convs(b)}
    assert rows[0]["recon_l2"] == 0.0
    assert rows[-1]["recon_l2"] == pytest.approx(recon_l2(wb, wa), rel=1e-9)
    assert rows[1]["recon_l2"] == pytest.approx(0.5 * recon_l2(wb, wa), rel=1e-6)
    assert all(torch.equal(before[k], v) for k, v in a.state_dict().items()), "input model modified"


def _reference_point(states, x, y):
    """Independent plane construction: theta0 + x e1 + y e2 with Gram-Schmidt in float64."""
    keys = [k for k, v in states[0].items() if v.is_floating_point()]
    flat = [torch.cat([s[k].double().reshape(-1) for k in keys]) for s in states]
    u, v = flat[1] - flat[0], flat[2] - flat[0]
    e1 = u / u.norm()
    w = v - (v @ e1) * e1
    e2 = w / w.norm()
    vec = flat[0] + x * e1 + y * e2
    out, off = dict(states[0]), 0
    for k in keys:
        n = states[0][k].numel()
        out[k] = vec[off:off + n].view_as(states[0][k]).to(states[0][k].dtype)
        if k.endswith("running_var"):
            out[k] = out[k].clamp(min=0.0)
        off += n
    return out


def test_landscape_grid_corners_equal_direct_evaluations():
    models = [_tiny(s) for s in (3, 4, 5)]
    x, y = _data(32, seed=2)
    evs = {"test": _evaluator(x, y), "train": _evaluator(*_data(32, seed=3))}
    res = landscape(models, evs, n=3, margin=0.1)
    states = [m.state_dict() for m in models]
    probe = _tiny(0)
    for i in (0, len(res["ys"]) - 1):
        for j in (0, len(res["xs"]) - 1):
            probe.load_state_dict(_reference_point(states, res["xs"][j], res["ys"][i]))
            for name, ev in evs.items():
                acc, loss = ev(probe)
                assert res["values"][name]["loss"][i][j] == pytest.approx(loss, rel=1e-4, abs=1e-5), (name, i, j)
                assert res["values"][name]["accuracy"][i][j] == acc
    # the three weight sets sit at their plane coordinates: their losses are the models' own
    for k, m in enumerate(models):
        acc, loss = evs["test"](m)
        assert res["at_points"]["test"][k]["loss"] == pytest.approx(loss, rel=1e-4, abs=1e-5)
    p = res["points"]
    assert p[0] == [0.0, 0.0] and p[1][1] == 0.0 and p[2][1] > 0


def test_plane_rejects_collinear_sets():
    a, b = _tiny(6).state_dict(), _tiny(7).state_dict()
    mid = {k: (v + b[k]) / 2 if v.is_floating_point() else v for k, v in a.items()}
    with pytest.raises(ValueError, match="collinear"):
        make_plane([a, b, mid])


# ---------------------------------------------------------------------------------------------- loading
def test_load_artefact_and_state_dict(tmp_path):
    from nernfast import NeRN, save_artefact
    m = _model(8)
    nern = NeRN.from_model(m, hidden=8, cache_dir=tmp_path)
    art = save_artefact(tmp_path / "n.safetensors", nern, m, {"name": "resnet20", "num_classes": 10, "in_channels": 1},
                        {"model": "resnet20", "dataset": "digits"})
    ld = load_weights(art)
    assert ld.kind == "artefact" and ld.layers == list(nern.plan.names) and ld.dataset == "digits"
    decoded = nern.materialize_(build_model("resnet20", 10, 1))
    for n, w in ld.conv_weights().items():
        assert torch.equal(w, dict(decoded.named_modules())[n].weight.detach())
    torch.save({"module." + k: v for k, v in m.state_dict().items()}, tmp_path / "plain.pt")
    ck = load_weights(tmp_path / "plain.pt", model="resnet20")  # classes and channels from the shapes
    assert ck.kind == "checkpoint" and ck.layers == _convs(m)
    assert all(v == 0.0 for v in relative_l2(ck.conv_weights(), {n: dict(m.named_modules())[n].weight for n in ck.layers}).values())


# ---------------------------------------------------------------------------------------------- intervals
def test_intervals():
    lo, hi = stats.wilson(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    m, lo, hi = stats.t_interval([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert m == 2.0 and hi - m == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    d, lo, hi = stats.paired_diff([1, 1, 0, 1], [1, 0, 0, 1])
    assert d == 0.25 and lo < 0 < hi and stats.verdict(lo, hi) == "within noise"
    assert stats.verdict(0.01, 0.02) == "higher" and stats.verdict(-0.2, -0.1) == "lower"
    # every seed gives the same +0.25 difference: the seed interval has zero width, the per-image
    # interval of the averaged differences does not, and the combined interval is the wider one
    a = [[1, 1, 0, 1], [1, 1, 0, 1]]
    b = [[1, 0, 0, 1], [1, 0, 0, 1]]
    m, lo, hi = stats.combined_paired_diff(a, b)
    assert m == 0.25 and lo == pytest.approx(0.25 - 1.96 * 0.5 / 2, abs=1e-3) and hi > 0.25


# ---------------------------------------------------------------------------------------------- CLI
def test_analyze_cli_on_checkpoints(tmp_path):
    from nernfast.analyze import main
    paths = []
    for s in (11, 12, 13):
        torch.save(_model(s).state_dict(), tmp_path / f"m{s}.pt")
        paths.append(str(tmp_path / f"m{s}.pt"))
    common = ["--model", "resnet20", "--dataset", "digits", "--max-batches", "1", "--batch-size", "32"]
    assert main(["lowfreq", "--checkpoint", paths[1], paths[2], "--original", paths[0], "--out", str(tmp_path / "lf")]
                + common) == 0
    assert main(["layerdiff", "--checkpoint", paths[1], "--original", paths[0], "--out", str(tmp_path / "ld")]
                + common) == 0
    assert main(["interpolate", "--checkpoint", paths[1], "--original", paths[0], "--points", "2",
                 "--out", str(tmp_path / "ip")] + common) == 0
    assert main(["landscape", "--checkpoint", *paths, "--grid", "2", "--splits", "test",
                 "--out", str(tmp_path / "ls")] + common) == 0
    for d, what in (("lf", "lowfreq"), ("ld", "layerdiff"), ("ip", "interpolate"), ("ls", "landscape")):
        for ext in ("png", "csv", "json"):
            assert (tmp_path / d / f"{what}.{ext}").stat().st_size > 0, (what, ext)
    lf = json.loads((tmp_path / "lf" / "lowfreq.json").read_text())
    assert set(lf["diffs"]) == {"m12", "m13"} and len(lf["layers"]) == 19
    ip = json.loads((tmp_path / "ip" / "interpolate.json").read_text())
    assert ip["curves"]["m12"][0]["recon_l2"] == 0.0
    assert main(["landscape", "--checkpoint", paths[1], "--original", paths[0], "--out", str(tmp_path / "x")]
                + common) == 2  # two sets do not span a plane
