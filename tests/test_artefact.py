"""The compressed artefact: save, load into built-in and user models, mismatch errors, export, init-from."""
from __future__ import annotations

import pytest
import torch

import nernfast
from nernfast import NeRN, build_model
from nernfast.artefact import ArtefactError, export_state_dict, load_nern, read_artefact, save_artefact
from nernfast.selection import PlanError
from nernfast.training.init_from import load_predictor_init


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20b", 10, 1).eval()
    nern = NeRN.from_model(model, hidden=20, num_blocks=4, cache_dir=tmp_path)
    path = save_artefact(tmp_path / "a.safetensors", nern, model,
                         {"name": "resnet20b", "num_classes": 10, "in_channels": 1}, {"recipe": "x"}, {"acc": 0.5})
    ref = build_model("resnet20b", 10, 1).eval()
    ref.load_state_dict(model.state_dict())
    nern.materialize_(ref)
    return path, nern, ref


def test_load_builtin_reproduces_the_decoded_model(saved):
    path, _, ref = saved
    model = nernfast.load(path)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(model(x), ref(x))
    meta, tensors = read_artefact(path)
    assert meta["plan_hash"] and torch.equal(tensors["plan.perm"], nernfast.load_nern(path)[0].plan.perm)
    assert meta["format"] == "nernfast-artefact-2"
    assert meta["config"] == {"recipe": "x"}
    assert not any(k.startswith("model.") and k[6:] in {f"{n}.weight" for n in meta["plan"]["layers"]}
                   for k in tensors)


def test_load_into_users_model_and_export(saved):
    path, _, ref = saved
    mine = build_model("resnet20b", 10, 1)
    out = nernfast.load(path, model=mine)
    assert out is mine
    sd = export_state_dict(path)
    fresh = build_model("resnet20b", 10, 1).eval()
    fresh.load_state_dict(sd)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(x), ref(x))


def test_model_mismatch_is_a_clear_error(saved):
    path, _, _ = saved
    with pytest.raises(PlanError, match="does not match the predictor's weight plan"):
        nernfast.load(path, model=build_model("resnet32b", 10, 1))
    with pytest.raises(PlanError, match=r"conv1: model has \(16, 3, 3, 3\), plan has \(16, 1, 3, 3\)"):
        nernfast.load(path, model=build_model("resnet20b", 10, 3))


def test_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ArtefactError, match="not a safetensors file"):
        nernfast.load(bad)


def test_save_refuses_to_overwrite_when_asked(saved):
    path, nern, _ = saved
    before = path.read_bytes()
    with pytest.raises(ArtefactError, match="exists; pass another output path or --overwrite"):
        save_artefact(path, nern, build_model("resnet20b", 10, 1), overwrite=False)
    assert path.read_bytes() == before and not list(path.parent.glob("*.tmp*"))


def test_init_from_public_nern_state_dict(saved, tmp_path):
    _, nern, _ = saved
    # The public NeRN predictor's key names: layers.{i}.weight/bias, final_linear_layer.weight/bias.
    sd = {f"layers.{i}.{p}": torch.randn_like(getattr(l, p)) for i, l in enumerate(nern.predictor.layers)
          for p in ("weight", "bias")}
    sd.update({f"final_linear_layer.{p}": torch.randn_like(getattr(nern.predictor.final_linear_layer, p))
               for p in ("weight", "bias")})
    f = tmp_path / "public.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, f)
    load_predictor_init(nern, f)
    for k, v in sd.items():
        torch.testing.assert_close(nern.predictor.state_dict()[k], v)
    torch.save({"layers.0.weight": torch.zeros(3, 3)}, f)
    with pytest.raises(ValueError, match="does not fit this predictor"):
        load_predictor_init(nern, f)


def test_init_from_artefact(saved):
    path, nern, _ = saved
    n2, _, _ = load_nern(path)
    with torch.no_grad():
        for p in n2.predictor.parameters():
            p.zero_()
    load_predictor_init(n2, path)
    for a, b in zip(n2.predictor.parameters(), nern.predictor.parameters()):
        torch.testing.assert_close(a, b)
