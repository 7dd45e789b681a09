"""Positional encodings against per-row Python loops (float64 truth)."""
from __future__ import annotations

import math

import pytest
import torch

from nernfast.encoding import BasicEncoding, FFNEncoding, build_encoding


def basic_reference(coords: torch.Tensor, levels: int, base: float) -> torch.Tensor:
    """Row by row: for coordinate c, level j: [.., sin(p base^j pi), cos(p base^j pi), ..] at c*2L + 2j."""
    rows = []
    for p in coords.double().tolist():
        feats = []
        for c in range(3):
            for j in range(levels):
                x = p[c] * base ** j * math.pi
                feats += [math.sin(x), math.cos(x)]
        rows.append(feats)
    return torch.tensor(rows, dtype=torch.float64)


def ffn_reference(coords: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    rows = []
    for p in coords.double().tolist():
        xs = [2 * math.pi * sum(p[c] * float(B[f, c]) for c in range(3)) for f in range(B.shape[0])]
        rows.append([math.sin(x) for x in xs] + [math.cos(x) for x in xs])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("n", [1, 7, 123])
@pytest.mark.parametrize("levels,base", [(40, 0.76), (7, 0.5), (1, 0.9), (13, 1.3)])
def test_basic_matches_per_row_loop(n, levels, base):
    coords = torch.rand(n, 3)
    enc = BasicEncoding(levels, base)
    got = enc(coords)
    assert got.shape == (n, 6 * levels) == (n, enc.out_features) and got.dtype == torch.float32
    want = basic_reference(coords, levels, base)
    # float32 arguments up to |x| = pi * base^(L-1): bound by a few float32 ulps of the argument
    tol = 4 * torch.finfo(torch.float32).eps * math.pi * max(1.0, base ** (levels - 1))
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)


def test_basic_unnormalised_coordinates():
    """normalization='none' feeds integers up to hundreds: the error grows with the argument, like PyTorch's own."""
    coords = torch.randint(0, 512, (37, 3)).float()
    got = BasicEncoding()(coords).double()
    want = basic_reference(coords, 40, 0.76)
    x32 = (coords[:, :, None] * BasicEncoding().freqs).double()  # the argument float32 gives
    ulp_bound = (x32.abs() * torch.finfo(torch.float32).eps).amax().item() * 4 + 1e-6
    torch.testing.assert_close(got, want, rtol=0, atol=ulp_bound)


def test_basic_layout_and_blocks():
    enc = BasicEncoding(5, 0.76)
    coords = torch.tensor([[0.25, 0.5, 0.125]])
    out = enc(coords)[0]
    for c in range(3):
        for j in range(5):
            x = coords[0, c].item() * 0.76 ** j * math.pi
            assert out[c * 10 + 2 * j].item() == pytest.approx(math.sin(x), abs=1e-6)
            assert out[c * 10 + 2 * j + 1].item() == pytest.approx(math.cos(x), abs=1e-6)
    many = torch.rand(19, 3)
    full = enc(many)
    for c in range(3):
        assert torch.equal(enc.encode_coordinate(many[:, c]), full[:, c * 10:(c + 1) * 10])


def test_basic_defaults_width_240_and_no_state():
    enc = build_encoding("basic")
    assert enc.out_features == 240 and enc.levels == 40 and enc.base == 0.76
    assert len(enc.state_dict()) == 0  # nothing to save: frequencies follow from (levels, base)


@pytest.mark.parametrize("n,features,sigma", [(1, 3, 1.0), (45, 120, 1.0), (17, 11, 2.5)])
def test_ffn_matches_per_row_loop(n, features, sigma):
    coords = torch.rand(n, 3)
    enc = FFNEncoding(features, sigma, seed=3)
    got = enc(coords)
    assert got.shape == (n, 2 * features) == (n, enc.out_features)
    want = ffn_reference(coords, enc.B)
    arg = (2 * math.pi * coords.double() @ enc.B.double().T).abs().amax().item()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=8 * torch.finfo(torch.float32).eps * max(arg, 1))


def test_ffn_seeded_and_saved():
    a, b, c = FFNEncoding(20, 1.0, seed=5), FFNEncoding(20, 1.0, seed=5), FFNEncoding(20, 1.0, seed=6)
    assert torch.equal(a.B, b.B) and not torch.equal(a.B, c.B)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(FFNEncoding(20, 1.0, seed=5).B, a.B)
    assert torch.equal(FFNEncoding(20, 2.0, seed=5).B, 2 * a.B)
    state = c.state_dict()
    assert set(state) == {"B"}
    a.load_state_dict(state)
    assert torch.equal(a.B, c.B)


def test_build_encoding_choices():
    assert isinstance(build_encoding("ffn", ffn_features=8), FFNEncoding)
    with pytest.raises(ValueError, match="unknown encoding"):
        build_encoding("siren")


def test_default_encoding_separates_the_rows_of_a_resnet():
    """The shipped defaults (base 0.76, 40 levels, raw integer coordinates as the public reference
    feeds them) must give features that vary across rows. With coordinates scaled into [0, 1] the
    same encoding is nearly constant (median feature std ~1e-3 over a ResNet-20's rows) and the
    predictor cannot fit the weights at all; this guards the default against that regression."""
    from nernfast.config import NeRNConfig
    from nernfast.models import build_model
    from nernfast.plan import build_plan

    cfg = NeRNConfig()
    plan = build_plan(build_model("resnet20", 10, 3), "none", cfg.normalization)
    enc = build_encoding(cfg.encoding, cfg.levels, cfg.base)(plan.coords)
    assert float(enc.std(0).median()) > 0.05
    squashed = build_encoding(cfg.encoding, cfg.levels, cfg.base)(build_plan(build_model("resnet20", 10, 3),
                                                                               "none", "local").coords)
    assert float(squashed.std(0).median()) < 0.01  # the failure mode the default avoids
