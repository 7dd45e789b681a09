"""experiments/plain_original.py: the independent originals' augmentations do what its docstring says."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    import plain_original
    yield plain_original
    sys.modules.pop("plain_original", None)


def _window(padded: torch.Tensor, out: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (row, col, flipped) of the 28x28 window of ``padded`` that ``out`` is, or None."""
    for oy in range(9):
        for ox in range(9):
            w = padded[oy:oy + 28, ox:ox + 28]
            for flipped in (False, True):
                if torch.equal(w.flip(1) if flipped else w, out):
                    return oy, ox, flipped
    return None


def test_adamw_recipe_crops_and_flips_each_image_on_its_own(plain):
    x = torch.randn(64, 1, 28, 28)
    out = plain.crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4), value=-plain.MEAN / plain.STD)  # black in pixel space
    windows = [_window(padded[i, 0], out[i, 0]) for i in range(len(x))]
    assert all(w is not None for w in windows)
    assert len({w[:2] for w in windows}) > 10  # offsets differ between images
    assert 10 < sum(w[2] for w in windows) < 54  # about half flipped
    again = plain.crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_sgd_recipe_crops_the_whole_batch_at_one_offset_without_flips(plain):
    x = torch.randn(16, 1, 28, 28)
    out = plain.crop_per_batch(x, torch.Generator().manual_seed(3))
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    windows = {_window(padded[i, 0], out[i, 0]) for i in range(len(x))}
    assert len(windows) == 1 and next(iter(windows))[2] is False
