"""Artefact formats: format-1 files (written before format 2) still load; damaged files of either
format are one clear error, never a model with wrong weights."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import nernfast
from nernfast import NeRN, build_model
from nernfast.artefact import ArtefactError, read_artefact, save_artefact
from nernfast.codec.container import part_sizes
from nernfast.codec.format2 import Scheme

DATA = Path(__file__).parent / "data"


def tiny() -> nn.Module:
    """The model of the format-1 fixture (tests/data/format1_tiny*, written by nernfast at commit
    77646ad: hidden 8, 3 blocks, 4 levels, crossfilter permutation)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def test_format1_artefact_still_loads():
    expected = torch.load(DATA / "format1_tiny_expected.pt", weights_only=True)
    meta, tensors = read_artefact(DATA / "format1_tiny.safetensors")
    assert meta["format"] == "nernfast-artefact-1" and tensors["plan.perm"].dtype == torch.int32
    model = nernfast.load(DATA / "format1_tiny.safetensors", model=tiny())
    torch.testing.assert_close(model(expected["x"]), expected["logits"], rtol=0, atol=1e-6)
    nern, _, _ = nernfast.load_nern(DATA / "format1_tiny.safetensors", model=tiny())
    assert torch.equal(nern.plan.perm, expected["perm"])


def test_format1_resaved_as_format2_decodes_identically(tmp_path):
    nern, model, meta = nernfast.load_nern(DATA / "format1_tiny.safetensors", model=tiny())
    out = save_artefact(tmp_path / "v2.safetensors", nern, model, meta["architecture"], meta["config"], meta["metrics"])
    _, t1 = read_artefact(DATA / "format1_tiny.safetensors")
    _, t2 = read_artefact(out)
    assert t1.keys() == t2.keys()
    for k in t1:
        assert torch.equal(t1[k].long() if k == "plan.perm" else t1[k], t2[k]), k


def test_damaged_format1_values_are_refused(tmp_path):
    data = bytearray((DATA / "format1_tiny.safetensors").read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    start = 8 + n + json.loads(data[8:8 + n])["predictor.layers.0.weight"]["data_offsets"][0]
    data[start:start + 16] = b"\xff" * 16  # NaN bit patterns
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="non-finite values .* damaged"):
        nernfast.load(bad, model=tiny())


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet20", 10, 1).eval()
    d = tmp_path_factory.mktemp("art")
    nern = NeRN.from_model(model, hidden=16, num_blocks=3, cache_dir=d)
    arch = {"name": "resnet20", "num_classes": 10, "in_channels": 1}
    return save_artefact(d / "c.safetensors", nern, model, arch, scheme=Scheme("int4", group=8, rest="fp16"))


def _offset_of(path: Path, part: str) -> int:
    """File offset of the middle of ``part``."""
    data = path.read_bytes()
    sizes = part_sizes(data)
    pos = sizes["header"]
    for key in sizes:
        if key == "header":
            continue
        if key == part:
            return pos + sizes[key] // 2
        pos += sizes[key]
    raise KeyError(part)


@pytest.mark.parametrize("where", ["length prefix", "json header", "meta", "permutation", "predictor", "model",
                                   "sha256"])
def test_flipped_bytes_anywhere_are_one_clear_error(compact, tmp_path, where):
    data = bytearray(compact.read_bytes())
    i = {"length prefix": 0, "json header": 40}.get(where)
    i = _offset_of(compact, where) if i is None else i
    data[i] ^= 0x04
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtefactError) as e:
        nernfast.load(bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and ("corrupt" in msg or "damaged" in msg), msg


def test_truncated_compact_artefact_is_one_clear_error(compact, tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(compact.read_bytes()[:-100])
    with pytest.raises(ArtefactError, match=r"is truncated \([\d,]+ of [\d,]+ bytes\): copy it again"):
        nernfast.load(bad)
