"""Config resolution: shared phase defaults, recipe differences, dataset-level files with per_recipe
sections, CLI flags and --set, in the documented order."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nernfast import train as train_cli
from nernfast.config import (RECIPES, ConfigError, RunConfig, recipe_phases, recipe_yaml, resolve,
                             shipped_configs, to_dict)

TWO_PHASE = {"decoupled", "teacher_decoupled", "noise_decoupled"}  # the expectation, stated independently
DEFAULTS = yaml.safe_load((recipe_yaml("decoupled").parent / "defaults.yaml").read_text())


def write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("recipe", RECIPES)
def test_phases_start_from_the_shared_defaults(recipe):
    assert recipe_phases(recipe) == (("phase1", "phase2") if recipe in TWO_PHASE else ("phase1",))
    cfg = to_dict(resolve(recipe))
    differences = yaml.safe_load(recipe_yaml(recipe).read_text())
    names = differences.pop("phases")
    for key, name in zip(recipe_phases(recipe), names):
        expected = {**DEFAULTS["phase_defaults"][name], **differences.get(key, {})}
        assert {k: cfg[key][k] for k in expected} == expected
    if recipe not in TWO_PHASE:  # a phase that does not run keeps the dataclass defaults
        assert cfg["phase2"] == to_dict(RunConfig())["phase2"]


def test_reconstruction_and_distillation_are_different_defaults():
    rec, dis = DEFAULTS["phase_defaults"]["reconstruction"], DEFAULTS["phase_defaults"]["distillation"]
    assert rec["data"] == "none" and dis["data"] == "dataset" and dis["kd_weight"] > 0 and "kd_weight" not in rec
    # The recipes' explicit differences: baseline's joint phase, noise_decoupled's selection.
    base, noise = resolve("baseline"), resolve("noise_decoupled")
    assert base.phase1.name == "joint" and base.phase1.data == "dataset" and base.phase1.kd_weight > 0
    assert (noise.phase1.select, noise.phase2.select, noise.phase2.data) == ("last", "noise_kd", "noise")


def test_noise_decoupled_holds_its_weights_to_the_original_harder_than_the_data_recipes():
    """Measured (docs/fashion-mnist-tuning.md, session 18): on noise images phase 2 drifts from what the data needs
    unless the reconstruction anchor is 10x the data recipes'; on every dataset's config."""
    for config in (None, "fashion_mnist.yaml"):
        noise, data = resolve("noise_decoupled", config=config), resolve("decoupled", config=config)
        assert (noise.phase2.recon_weight, data.phase2.recon_weight) == (1.0, 0.1)


def test_resolution_order(tmp_path):
    cfg_file = write(tmp_path, {"phase1": {"lr": 0.01, "steps": 7}, "nern": {"hidden": 50},
                                "per_recipe": {"decoupled": {"phase1": {"lr": 0.02}},
                                               "baseline": {"phase1": {"lr": 0.03}}}})
    cfg = resolve("decoupled", cfg_file)
    assert (cfg.phase1.lr, cfg.phase1.steps, cfg.nern.hidden) == (0.02, 7, 50)   # per_recipe > top level
    assert resolve("baseline", cfg_file).phase1.lr == 0.03
    assert resolve("recon_only", cfg_file).phase1.lr == 0.01
    assert resolve("progressive", cfg_file).nern.hidden == 50                     # --config > recipe file
    cfg = resolve("decoupled", cfg_file, ["nern.hidden=70"], nern={"hidden": 60})
    assert cfg.nern.hidden == 70                                                  # --set > CLI flag
    assert resolve("decoupled", cfg_file, nern={"hidden": 60}).nern.hidden == 60  # CLI flag > --config


def test_hidden_flag_goes_through_resolve(monkeypatch):
    seen = {}
    monkeypatch.setattr(train_cli, "run", lambda cfg, **k: seen.setdefault("cfg", cfg))
    assert train_cli.main(["--recipe", "recon_only", "--hidden", "32", "--set", "nern.hidden=48"]) == 0
    assert seen.pop("cfg").nern.hidden == 48
    assert train_cli.main(["--recipe", "recon_only", "--hidden", "32"]) == 0
    assert seen.pop("cfg").nern.hidden == 32


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown config key 'phase1.lrr'"):
        resolve("decoupled", write(tmp_path, {"phase1": {"lrr": 1}}))
    with pytest.raises(ConfigError, match=r"per_recipe must map recipe names"):
        resolve("decoupled", write(tmp_path, {"per_recipe": {"decoupledd": {}}}))
    with pytest.raises(ConfigError, match=r"'phases' belongs to the shipped recipe files"):
        resolve("decoupled", write(tmp_path, {"phases": ["reconstruction"]}))


@pytest.mark.parametrize("name", shipped_configs())
def test_paper_scale_configs_fit_every_recipe(name):
    """A phase without data carries no distillation weight (the trainer refuses that combination)."""
    for recipe in RECIPES:
        cfg = resolve(recipe, name)
        for key in recipe_phases(recipe):
            p = getattr(cfg, key)
            assert p.data != "none" or not (p.kd_weight or p.fmd_weight), (recipe, key)
    base = resolve("baseline", name).phase1
    assert base.data == "dataset" and base.kd_weight > 0 and base.fmd_weight > 0


def test_layer_selection_fields_reach_the_predictor():
    import torch.nn as nn

    from nernfast.models import build_model
    from nernfast.training.recipes import new_nern
    cfg = resolve("recon_only", sets=["nern.hidden=8", "nern.permutation=none", "nern.exclude=[conv1, 'layer3\\..*']",
                                      "nern.encoding=ffn", "nern.ffn_seed=3"])
    assert cfg.nern.exclude == ["conv1", "layer3\\..*"]
    model = build_model("resnet20", 10, 1)
    nern = new_nern(cfg, model, seed=0)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert nern.plan.names == [n for n in convs if n != "conv1" and not n.startswith("layer3.")]
    assert nern.encoding.seed == 3
    assert resolve("recon_only", sets=["nern.include=conv1"]).nern.include == ["conv1"]
    with pytest.raises(ConfigError, match="nern.include: expected a list of strings"):
        resolve("recon_only", sets=["nern.include=[1, 2]"])
