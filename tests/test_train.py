"""The trainer end to end on tiny configs, and each recipe's defining property."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nernfast
from nernfast import train as train_cli
from nernfast.config import RECIPES, ConfigError, resolve
from nernfast.models import copy_frozen
from nernfast.training import phase as phase_mod
from nernfast.training.phase import PhaseDiverged
from nernfast.training import recipes as recipes_mod

TINY = [
    "nern.hidden=16", "phase1.steps=12", "phase1.eval_every=6", "phase1.checkpoint_every=4",
    "phase1.weights_batch_size=512", "phase1.warmup_steps=6", "phase1.batch_size=32",
    "phase2.steps=6", "phase2.eval_every=3", "phase2.checkpoint_every=2", "phase2.batch_size=32",
    "phase2.lr_warmup_steps=2",
    "phase2.weights_batch_size=512", "progressive.rounds=2", "progressive.seeds=1", "progressive.bn_recalibration=2",
    "eval.ood=false", "eval.attacks=false", "eval.batch_size=512",
    "share_phase1=false",  # each test runs its own phase 1 (test_phase1_is_shared turns it on)
]


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A briefly trained original (ResNet-20) and teacher (ResNet-32) on digits."""
    from nernfast.pretrain import pretrain
    d = tmp_path_factory.mktemp("nets")
    pretrain("resnet20", "digits", epochs=1, out=d / "orig.pt", progress=False, seed=0)
    pretrain("resnet32", "digits", epochs=1, out=d / "teacher.pt", progress=False, seed=1)
    return d / "orig.pt", d / "teacher.pt"


def tiny_cfg(recipe: str, nets, out: Path, extra: list[str] = ()):
    orig, teacher = nets
    return resolve(recipe, sets=TINY + list(extra), original=str(orig), teacher=f"resnet32:{teacher}",
                   out=str(out), seed=0)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_end_to_end(recipe, nets, tmp_path, capfd):
    res = train_cli.run(tiny_cfg(recipe, nets, tmp_path), progress=False)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["recipe"] == recipe and data["stages"]
    # one epoch leaves the original's conv weights near their random init: checked, recorded and said in one line
    assert data["original_check"]["layers"] == 19 and data["original_check"]["near_random"] is True
    assert [ln for ln in capfd.readouterr().err.splitlines() if "close to their random initialisation" in ln]
    for s in data["stages"]:
        assert 0.0 <= s["test_acc"] <= 1.0 and s["recon_l2"] > 0
    assert data["sizes"]["compression_ratio"] == pytest.approx(
        data["sizes"]["predictor_params"] / data["sizes"]["predicted_params"])
    model = nernfast.load(tmp_path / "nern.safetensors")
    x = torch.randn(4, 1, 8, 8)
    assert model(x).shape == (4, 10)
    assert res["final"]["accuracy"] == data["final"]["accuracy"]


class Spy:
    def __init__(self, monkeypatch, module, name):
        self.calls, real = [], getattr(module, name)

        def wrapper(*a, **k):
            self.calls.append((a, k))
            return real(*a, **k)
        monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("extra", [[], ["phase2.bn_batch_stats=false"]], ids=["default", "fixed-statistics"])
def test_decoupled_phase2_learns_and_keeps_val_acc(nets, tmp_path, extra):
    # 60 steps: the tiny original sits near chance, where 15 steps of batch statistics moved the validation loss by
    # less than the statistics' own noise (float32 on an AVX2-only CPU: 3.003 -> 3.028; 60 steps: -> 2.634)
    cfg = tiny_cfg("decoupled", nets, tmp_path, ["phase2.steps=60", "phase2.eval_every=20", "phase2.lr=1e-3", *extra])
    res = train_cli.run(cfg, progress=False)
    p2 = res["stages"][1]
    evals = [h for h in p2["history"] if "val_loss" in h]
    # selection keeps phase 2's start (the network with re-estimated BN statistics, step 0) as a candidate; the
    # re-estimation itself may lower a near-chance network's accuracy below phase 1's (9.0 -> 6.9 % there)
    assert evals[0]["step"] == 0 and p2["val_acc"] >= evals[0]["val_acc"]
    # measured on the whole validation split (the logged KD is one training batch's: with batch statistics it
    # moves with each batch's statistics as well)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]


def test_decoupled_recon_weight_is_the_configured_one(nets, tmp_path, monkeypatch):
    spy = Spy(monkeypatch, phase_mod, "data_loss")
    train_cli.run(tiny_cfg("decoupled", nets, tmp_path, ["phase2.recon_weight=0.37"]), progress=False)
    assert spy.calls and all(a[1].recon_weight == 0.37 and a[1].kd_weight == 1.0 for a, _ in spy.calls)


def test_baseline_warmup_has_no_distillation(nets, tmp_path, monkeypatch):
    spy = Spy(monkeypatch, phase_mod, "data_loss")
    train_cli.run(tiny_cfg("baseline", nets, tmp_path), progress=False)
    assert len(spy.calls) == 12 - 6  # only the steps after the 6 warm-up steps distil


def test_progressive_round2_targets_round1(nets, tmp_path, monkeypatch):
    targets = []
    real = recipes_mod.ReconTarget

    def capture(plan, weights, device):
        targets.append([w.detach().clone() for w in weights])
        return real(plan, weights, device)
    monkeypatch.setattr(recipes_mod, "ReconTarget", capture)
    kept = {}
    real_run = recipes_mod.RecipeRunner.progressive

    def run_and_keep(self):
        out = real_run(self)
        kept["runner"] = self
        return out
    monkeypatch.setattr(recipes_mod.RecipeRunner, "progressive", run_and_keep)
    res = train_cli.run(tiny_cfg("progressive", nets, tmp_path, ["progressive.rounds=2"]), progress=False)
    r1 = [s for s in res["stages"] if s["stage"].startswith("round1")]
    assert len(targets) >= 2 and r1
    # Round 2's target = round 1's kept predictor materialised into the original.
    runner = kept["runner"]
    orig = runner.ctx.original
    assert not torch.equal(targets[1][0], targets[0][0])
    from nernfast.training.recipes import new_nern
    n1 = new_nern(runner.cfg, orig, r1[0]["seed"])
    n1.predictor.load_state_dict(runner.state.data["done"][r1[0]["stage"]]["predictor"])
    m = copy_frozen(orig)
    n1.materialize_(m)
    for t, w in zip(targets[1], n1.plan.weights_of(m)):
        torch.testing.assert_close(t, w)


@pytest.mark.parametrize("fmd", [0.0, 0.1])
def test_teacher_phase_runs_teacher_not_original(nets, tmp_path, monkeypatch, fmd):
    # Logits come from the teacher; the original runs only for L_fmd's feature maps, when it is on.
    counts = {}
    real = phase_mod.run_phase

    def spy(ctx, nern, phase, nets, eval_model, stage, *a, **k):
        c = {"original": 0, "teacher": 0}
        hs = [ctx.original.register_forward_hook(lambda *_: c.__setitem__("original", c["original"] + 1)),
              ctx.teacher.register_forward_hook(lambda *_: c.__setitem__("teacher", c["teacher"] + 1))]
        try:
            return real(ctx, nern, phase, nets, eval_model, stage, *a, **k)
        finally:
            for h in hs:
                h.remove()
            counts[stage] = c
    monkeypatch.setattr(recipes_mod, "run_phase", spy)
    train_cli.run(tiny_cfg("teacher_decoupled", nets, tmp_path, [f"phase2.fmd_weight={fmd}"]), progress=False)
    p2 = counts["phase2-distillation"]
    assert p2["teacher"] == 6 and p2["original"] == (6 if fmd else 0)
    assert counts["phase1-reconstruction"] == {"original": 0, "teacher": 0}


def test_noise_phase_never_touches_the_dataset(nets, tmp_path, monkeypatch):
    real = phase_mod.run_phase

    def guarded(ctx, nern, phase, *a, **k):
        if phase.data == "noise":
            def refuse(*_a, **_k):
                raise AssertionError("the noise phase read the dataset")
            orig_loader = ctx.bundle.loader
            ctx.bundle.loader = refuse
            try:
                return real(ctx, nern, phase, *a, **k)
            finally:
                ctx.bundle.loader = orig_loader
        return real(ctx, nern, phase, *a, **k)
    monkeypatch.setattr(recipes_mod, "run_phase", guarded)
    res = train_cli.run(tiny_cfg("noise_decoupled", nets, tmp_path), progress=False)
    assert res["stages"][1]["selected_by"] == "noise_kd"


def test_batchnorm_buffers_unchanged(nets, tmp_path):
    from nernfast.checkpoints import read_checkpoint
    sd = read_checkpoint(nets[0])["state_dict"]
    # the joint phase itself leaves them alone (the end's re-estimation, off here: test_the_kept_network_ends_...)
    train_cli.run(tiny_cfg("baseline", nets, tmp_path, ["bn_recalibration_end=0"]), progress=False)
    model = nernfast.load(tmp_path / "nern.safetensors")
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k or k.endswith("bn1.weight") or k.startswith("linear"):
            torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


@pytest.mark.parametrize("extra", [[], ["phase2.ema_decay=0.5"], ["phase2.bn_batch_stats=false"]],
                         ids=["default", "weight-average", "fixed-statistics"])
def test_resume_equals_uninterrupted(nets, tmp_path, monkeypatch, extra):
    full = train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "a", extra), progress=False)

    from nernfast.training.state import RunState
    real_write = RunState.write
    writes = {"n": 0}

    def dying_write(self):
        real_write(self)
        writes["n"] += 1
        if writes["n"] == 4:  # mid phase 2 (phase 1 wrote 2 snapshots + done)
            raise KeyboardInterrupt
    monkeypatch.setattr(RunState, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "b", extra), progress=False)
    monkeypatch.setattr(RunState, "write", real_write)
    resumed = train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "b", extra), resume=True, progress=False)
    for s_full, s_res in zip(full["stages"], resumed["stages"]):
        assert s_full["val_acc"] == s_res["val_acc"] and s_full["recon_l2"] == pytest.approx(s_res["recon_l2"], rel=1e-6)
        assert [h["val_loss"] for h in s_full["history"]] == pytest.approx([h["val_loss"] for h in s_res["history"]])
    assert full["final"]["accuracy"] == resumed["final"]["accuracy"]


def test_cli_errors_are_clear(capsys):
    assert train_cli.main(["--recipe", "decoupled", "--set", "phase2.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'phase2.lrr'" in err and "phase2.lr" in err
    assert train_cli.main(["--recipe", "decoupled", "--set", "nern.hidden=abc"]) == 2
    assert "nern.hidden: expected int" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        resolve("nope")


def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--recipe", "--model", "--dataset", "--data-root", "--original", "--teacher", "--hidden",
                 "--config", "--set", "--out", "--device", "--seed", "--resume", "--overwrite", "--init-from",
                 "--trust-pickle"):
        assert flag in out


def test_nan_loss_stops_the_recipe_and_keeps_the_best(nets, tmp_path, monkeypatch):
    from nernfast.training import objectives
    real = objectives.ReconTarget.fast_loss
    calls = {"n": 0}

    def poisoned(self, nern, idx, kind):
        calls["n"] += 1
        loss = real(self, nern, idx, kind)
        return loss * float("nan") if calls["n"] == 8 else loss
    monkeypatch.setattr(objectives.ReconTarget, "fast_loss", poisoned)
    with pytest.raises(PhaseDiverged, match="Lower the learning rate") as info:
        train_cli.run(tiny_cfg("decoupled", nets, tmp_path), progress=False)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res == json.loads(json.dumps(info.value.results, default=float))
    assert len(res["stages"]) == 1  # the recipe stopped at the diverged phase: no phase 2
    stage = res["stages"][0]
    assert stage["steps_run"] == 7 and "loss became nan at step 7" in stage["diverged"] == res["diverged"]
    assert stage["best_step"] in (0, 6)
    model = nernfast.load(tmp_path / "nern.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_original_can_be_an_artefact_and_chains(nets, tmp_path):
    train_cli.run(tiny_cfg("recon_only", nets, tmp_path / "a"), progress=False)
    cfg = tiny_cfg("progressive", nets, tmp_path / "b", ["progressive.rounds=1"])
    cfg.original = str(tmp_path / "a" / "nern.safetensors")
    res = train_cli.run(cfg, progress=False)
    assert res["original_source"].startswith("nernfast artefact")
    model = nernfast.load(tmp_path / "b" / "nern.safetensors")  # names its architecture again
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_phase1_is_shared_between_recipes_that_start_alike(nets, tmp_path):
    """decoupled's phase 1 is reused by teacher_decoupled with the same settings (and only then)."""
    on = ["share_phase1=true"]
    a = train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "a", on), progress=False)
    b = train_cli.run(tiny_cfg("teacher_decoupled", nets, tmp_path / "b", on), progress=False)
    c = train_cli.run(tiny_cfg("noise_decoupled", nets, tmp_path / "c", on + ["phase1.lr=0.002"]), progress=False)
    pa, pb, pc = (r["stages"][0] for r in (a, b, c))
    assert "shared_from" not in pa and pb["shared_from"] and "shared_from" not in pc
    assert pb["test_acc"] == pa["test_acc"] and pb["recon_l2"] == pa["recon_l2"]
    assert pc["recon_l2"] != pa["recon_l2"]
    # The shared phase 1 is the one the run would have computed itself (runs repeat bit for bit).
    d = train_cli.run(tiny_cfg("teacher_decoupled", nets, tmp_path / "d"), progress=False)
    assert d["stages"][0]["recon_l2"] == pa["recon_l2"] and d["final"]["accuracy"] == b["final"]["accuracy"]


def test_phase1_key_ignores_options_added_at_their_defaults(monkeypatch):
    """An option added to PhaseConfig after cache entries were made keeps their keys while at its default."""
    import dataclasses
    from types import SimpleNamespace
    from nernfast.training import shared

    original = torch.nn.Linear(2, 2)

    def key(phase1, fields_of=dataclasses.asdict):
        monkeypatch.setattr(shared, "asdict", fields_of)
        ctx = SimpleNamespace(cfg=resolve("decoupled", sets=[]), original=original,
                              bundle=SimpleNamespace(name="digits", source="x", val=[0] * 3), precision="float32",
                              channels_last=False, device="cpu")
        ctx.cfg.phase1 = phase1
        return shared.phase1_key(ctx)
    p1 = resolve("decoupled", sets=[]).phase1
    before = key(p1, lambda d: {k: v for k, v in dataclasses.asdict(d).items() if k != "bn_batch_stats"})
    assert key(p1) == before  # as keyed before the option existed
    assert key(dataclasses.replace(p1, bn_batch_stats=True)) != before


def test_trainer_predicts_only_the_selected_layers(nets, tmp_path):
    from nernfast.checkpoints import read_checkpoint
    train_cli.run(tiny_cfg("recon_only", nets, tmp_path, ["nern.exclude=[conv1]", "phase1.steps=2"]), progress=False)
    model = nernfast.load(tmp_path / "nern.safetensors")
    sd = read_checkpoint(nets[0])["state_dict"]
    torch.testing.assert_close(model.conv1.weight, sd["conv1.weight"], rtol=0, atol=0)  # kept as it was
    assert not torch.equal(model.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])   # predicted


def test_original_artefact_is_read_once(nets, tmp_path, monkeypatch):
    from nernfast import artefact
    train_cli.run(tiny_cfg("recon_only", nets, tmp_path / "a", ["phase1.steps=2"]), progress=False)
    reads = []
    real = artefact.read_artefact
    monkeypatch.setattr(artefact, "read_artefact", lambda *a, **k: reads.append(a) or real(*a, **k))
    from nernfast.training.context import build_context
    cfg = tiny_cfg("recon_only", nets, tmp_path / "b")
    cfg.original = str(tmp_path / "a" / "nern.safetensors")
    ctx = build_context(cfg, tmp_path / "b", progress=False)
    assert len(reads) == 1 and ctx.architecture["name"] == "resnet20"
    ctx.logger.close()


def test_progressive_runs_and_reports_every_round(nets, tmp_path, monkeypatch):
    """All configured rounds run and are reported; the kept one follows the paper's stop rule."""
    vals = iter([0.5, 0.4, 0.6])  # round 2 does not improve: the chain stops there, round 3 still runs
    real = recipes_mod.RecipeRunner.phase

    def scored(self, *a, **k):
        res = real(self, *a, **k)
        res["val_acc"] = next(vals)
        return res
    monkeypatch.setattr(recipes_mod.RecipeRunner, "phase", scored)
    res = train_cli.run(tiny_cfg("progressive", nets, tmp_path, ["progressive.rounds=3", "progressive.bn_recalibration=0"]),
                        progress=False)  # the scores above stand (re-estimation would re-measure them)
    rounds = [s.get("round") for s in res["stages"]]
    assert rounds == [1, 2, 3] and all(s.get("best_of_round") for s in res["stages"])
    assert [s["stage"] for s in res["stages"] if s.get("kept")] == ["round1-seed0"]
    assert [s["stage"] for s in res["stages"] if s.get("stopped_here")] == ["round2-seed0"]
    r1 = res["stages"][0]
    assert res["final"]["accuracy"] == r1["test_acc"]  # the artefact is round 1's predictor


def _spy_recalibration(monkeypatch) -> tuple[list, dict]:
    """Every network the recipes and phases re-estimate BN statistics for, in order, and each phase's
    (evaluation network, PhaseNets, validation accuracy, the re-estimations made during it) by stage."""
    shells, measured = [], {}
    real_recal, real_run = recipes_mod.recalibrated, phase_mod.run_phase

    def recal(*a, **k):
        shells.append(real_recal(*a, **k))
        return shells[-1]

    def spy(ctx, nern, phase, nets_, eval_model, stage, *a, **k):
        first = len(shells)
        res = real_run(ctx, nern, phase, nets_, eval_model, stage, *a, **k)
        measured[stage] = (eval_model, nets_, res["val_acc"], shells[first:])
        return res
    monkeypatch.setattr(recipes_mod, "recalibrated", recal)
    monkeypatch.setattr(phase_mod, "recalibrated", recal)
    monkeypatch.setattr(recipes_mod, "run_phase", spy)
    return shells, measured


def _bn(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running" in k}


def _assert_scored_with_own_statistics(stage: dict, measured: dict, batches: int) -> None:
    """Every evaluation of ``stage`` re-estimated statistics for the weights it scored, and the kept step's
    statistics are the ones its evaluation network ends with."""
    eval_model, _, val_acc, recals = measured[stage["stage"]]
    assert stage["own_bn"]["batches"] == batches and len(recals) == len(stage["history"])
    kept = [h["step"] for h in stage["history"]].index(stage["best_step"])
    for k, v in _bn(eval_model).items():
        torch.testing.assert_close(v, _bn(recals[kept])[k], rtol=0, atol=0)
    assert val_acc == stage["history"][kept]["val_acc"]


def test_progressive_rounds_carry_their_own_statistics(nets, tmp_path, monkeypatch):
    """progressive.bn_recalibration: each round is scored with BN statistics re-estimated for its network at every
    evaluation, the next round reconstructs that network, and the artefact keeps the kept round's statistics."""
    from nernfast.checkpoints import read_checkpoint
    from nernfast.data import get_dataset
    from nernfast.eval import accuracy
    shells, measured = _spy_recalibration(monkeypatch)
    vals = iter([0.5, 0.6])  # round 2 improves: it is kept

    real_recal_round = recipes_mod.RecipeRunner.recalibrate_round

    def scored(self, *a, **k):
        shell = real_recal_round(self, *a, **k)
        a[2]["val_acc"] = next(vals)
        return shell
    monkeypatch.setattr(recipes_mod.RecipeRunner, "recalibrate_round", scored)
    res = train_cli.run(tiny_cfg("progressive", nets, tmp_path, ["progressive.bn_recalibration=3"]), progress=False)
    key = "layer3.2.bn2.running_mean"
    orig = read_checkpoint(nets[0])["state_dict"]
    r1, r2 = res["stages"]
    for s in (r1, r2):
        _assert_scored_with_own_statistics(s, measured, 3)
        assert s["bn_recalibration"]["batches"] == 3 and s["bn_recalibration"]["test_acc"] == s["test_acc"]
    round1_eval = measured["round1-seed0"][0]
    assert not torch.equal(round1_eval.state_dict()[key], orig[key])
    # the figure before: round 1's kept network on the original's statistics
    inherited = copy_frozen(round1_eval)
    inherited.load_state_dict({**inherited.state_dict(), **{k: orig[k] for k in _bn(inherited)}})
    assert r1["bn_recalibration"]["val_acc_before"] == accuracy(inherited, get_dataset("digits").loader("val", 512))[0]
    round2_nets = measured["round2-seed0"][1]
    for t, w in zip(round2_nets.target.weights, round2_nets.target.plan.weights_of(round1_eval)):
        torch.testing.assert_close(t, w, rtol=0, atol=0)  # round 2 reconstructs round 1's network
    assert r2.get("kept") and res["final"]["accuracy"] == r2["test_acc"]  # scored on its own statistics
    model = nernfast.load(tmp_path / "nern.safetensors")
    torch.testing.assert_close(model.state_dict()[key], measured["round2-seed0"][0].state_dict()[key], rtol=0, atol=0)


def test_progressive_recalibration_is_on_by_default_and_checked():
    assert resolve("progressive").progressive.bn_recalibration == 40
    assert resolve("progressive", config="fashion_mnist.yaml").progressive.bn_recalibration == 40
    assert resolve("progressive", sets=["progressive.bn_recalibration=0"]).progressive.bn_recalibration == 0
    with pytest.raises(ConfigError, match=r"progressive.bn_recalibration = -1 is out of range"):
        resolve("progressive", sets=["progressive.bn_recalibration=-1"])


@pytest.mark.parametrize("recipe", ["recon_only", "baseline", "decoupled"])
def test_the_kept_network_ends_with_statistics_of_its_own(recipe, nets, tmp_path, monkeypatch):
    """bn_recalibration_end: the last phase scores every evaluation with BN statistics re-estimated for the network
    scored, keeps the best so measured, and the run is scored and written with its statistics; the figures on
    the statistics it would otherwise have kept (the original's; decoupled: phase 2's running ones) go to the
    record."""
    from nernfast.checkpoints import read_checkpoint
    from nernfast.data import get_dataset
    from nernfast.eval import accuracy
    shells, measured = _spy_recalibration(monkeypatch)
    res = train_cli.run(tiny_cfg(recipe, nets, tmp_path, ["bn_recalibration_end=3"]), progress=False)
    last = res["stages"][-1]
    _assert_scored_with_own_statistics(last, measured, 3)
    rec = last["bn_recalibration_end"]
    assert rec["batches"] == 3 and rec["val_acc"] == last["val_acc"] == measured[last["stage"]][2]
    assert rec["test_acc"] == last["test_acc"] == res["final"]["accuracy"]
    key = "layer3.2.bn2.running_mean"
    orig = read_checkpoint(nets[0])["state_dict"]
    kept = measured[last["stage"]][0]
    assert not torch.equal(kept.state_dict()[key], orig[key])
    model = nernfast.load(tmp_path / "nern.safetensors")
    torch.testing.assert_close(model.state_dict()[key], kept.state_dict()[key], rtol=0, atol=0)
    if recipe != "decoupled":  # one phase: the statistics it would have kept are the original's
        model.load_state_dict({**model.state_dict(), **{k: orig[k] for k in _bn(model)}})
        assert rec["val_acc_before"] == accuracy(model, get_dataset("digits").loader("val", 512))[0]
        assert rec["test_acc_before"] == accuracy(model, get_dataset("digits").loader("test", 512))[0]


@pytest.mark.parametrize("recipe", ["recon_only", "progressive"])
def test_statistics_re_estimated_once_after_the_phase(recipe, nets, tmp_path, monkeypatch):
    """bn_score_every_eval=false: the step is chosen on the statistics the network inherits, and its own are
    re-estimated once, after the phase (per round for progressive)."""
    shells, measured = _spy_recalibration(monkeypatch)
    sets = ["bn_score_every_eval=false", "progressive.bn_recalibration=3"] + (
        ["bn_recalibration_end=3"] if recipe == "recon_only" else [])
    res = train_cli.run(tiny_cfg(recipe, nets, tmp_path, sets), progress=False)
    record = "bn_recalibration" if recipe == "progressive" else "bn_recalibration_end"
    assert len(shells) == len(res["stages"])  # one re-estimation per phase, none during it
    for s in res["stages"]:
        _, _, val_acc, recals = measured[s["stage"]]
        assert not recals and "own_bn" not in s
        assert s[record]["val_acc_before"] == val_acc and s[record]["val_acc"] == s["val_acc"]
    key = "layer3.2.bn2.running_mean"
    kept = next(i for i, s in enumerate(res["stages"]) if s.get("kept", recipe == "recon_only"))
    torch.testing.assert_close(nernfast.load(tmp_path / "nern.safetensors").state_dict()[key],
                               shells[kept].state_dict()[key], rtol=0, atol=0)


def test_end_recalibration_defaults_and_checks(nets, tmp_path):
    for config in (None, "fashion_mnist.yaml"):  # on for the recipes whose kept network has the original's statistics
        assert {r: resolve(r, config=config).bn_recalibration_end for r in RECIPES} == {
            "recon_only": 40, "progressive": 0, "baseline": 40, "decoupled": 0, "teacher_decoupled": 0,
            "noise_decoupled": 0}
    with pytest.raises(ConfigError, match=r"bn_recalibration_end = 40 does not apply to progressive.*"
                                          r"--set bn_recalibration_end=0"):
        resolve("progressive", sets=["bn_recalibration_end=40"])
    with pytest.raises(ConfigError, match="bn_recalibration_end = -1 is out of range"):
        resolve("recon_only", sets=["bn_recalibration_end=-1"])
    res = train_cli.run(tiny_cfg("recon_only", nets, tmp_path, ["bn_recalibration_end=0"]), progress=False)
    assert "bn_recalibration_end" not in res["stages"][-1]  # off: the original's statistics, as before
    key = "layer3.2.bn2.running_mean"
    from nernfast.checkpoints import read_checkpoint
    torch.testing.assert_close(nernfast.load(tmp_path / "nern.safetensors").state_dict()[key],
                               read_checkpoint(nets[0])["state_dict"][key], rtol=0, atol=0)


def test_phase2_starts_from_recalibrated_statistics(nets, tmp_path, monkeypatch):
    # decoupled re-estimates BN statistics before phase 2: the student and the artefact carry them,
    # while the reconstruction and feature-map targets stay the original's.
    from nernfast.checkpoints import read_checkpoint
    seen = {}
    real = phase_mod.run_phase

    def spy(ctx, nern, phase, nets_, eval_model, stage, *a, **k):
        seen[stage] = (nets_, eval_model, ctx.original)
        return real(ctx, nern, phase, nets_, eval_model, stage, *a, **k)
    monkeypatch.setattr(recipes_mod, "run_phase", spy)
    res = train_cli.run(tiny_cfg("decoupled", nets, tmp_path, ["phase2.fmd_weight=0.1"]), progress=False)
    sd = read_checkpoint(nets[0])["state_dict"]
    key = "layer3.2.bn2.running_mean"
    student_nets, eval_model, original = seen["phase2-distillation"]
    assert not torch.equal(eval_model.state_dict()[key], sd[key])
    assert torch.equal(student_nets.shell.state_dict()[key], eval_model.state_dict()[key])
    assert student_nets.features is original and torch.equal(original.state_dict()[key], sd[key])
    for t, w in zip(student_nets.target.weights, student_nets.target.plan.weights_of(original)):
        torch.testing.assert_close(t, w, rtol=0, atol=0)
    # phase 1 ran on the original's statistics
    p1_nets, p1_eval, _ = seen["phase1-reconstruction"]
    assert torch.equal(p1_eval.state_dict()[key], sd[key])
    rec = res["stages"][1]["bn_recalibration"]
    assert rec["batches"] == 40 and rec["val_acc_before"] == res["stages"][0]["val_acc"]
    model = nernfast.load(tmp_path / "nern.safetensors")
    torch.testing.assert_close(model.state_dict()[key], eval_model.state_dict()[key], rtol=0, atol=0)


def test_phase2_with_batch_statistics_keeps_the_kept_steps(nets, tmp_path, monkeypatch):
    """phase2.bn_batch_stats: the student's BN layers normalise with batch statistics during the steps, the
    running statistics they gather are what evaluations use, and the kept step's go into the artefact."""
    modes, results, starts = [], {}, {}
    real_loss, real_run = phase_mod.data_loss, phase_mod.run_phase

    def loss_spy(nern, phase, nets_, *a, **k):
        modes.append(nets_.shell.training)
        return real_loss(nern, phase, nets_, *a, **k)

    def run_spy(ctx, nern, phase, nets_, eval_model, stage, *a, **k):
        starts[stage] = {n: b.clone() for n, b in nets_.shell.named_buffers()}
        results[stage] = real_run(ctx, nern, phase, nets_, eval_model, stage, *a, **k)
        results[stage + "/eval"] = eval_model
        return results[stage]
    monkeypatch.setattr(phase_mod, "data_loss", loss_spy)
    monkeypatch.setattr(recipes_mod, "run_phase", run_spy)
    res = train_cli.run(tiny_cfg("decoupled", nets, tmp_path, ["phase2.bn_batch_stats=true", "phase2.eval_every=2"]),
                        progress=False)
    assert modes and all(modes)
    p2 = results["phase2-distillation"]
    key = "layer3.2.bn2.running_mean"
    kept = p2["bn_buffers"]
    assert not torch.equal(kept[key], starts["phase2-distillation"][key]) or p2["best_step"] == 0
    assert int(kept["bn1.num_batches_tracked"]) == int(starts["phase2-distillation"]["bn1.num_batches_tracked"]) \
        + p2["best_step"]  # the statistics of the kept step, not of the last
    torch.testing.assert_close(results["phase2-distillation/eval"].state_dict()[key], kept[key], rtol=0, atol=0)
    model = nernfast.load(tmp_path / "nern.safetensors")
    torch.testing.assert_close(model.state_dict()[key], kept[key], rtol=0, atol=0)
    assert res["final"]["accuracy"] == p2["test_acc"]  # the test figure was measured with them
    assert "bn_buffers" not in json.loads((tmp_path / "results.json").read_text())["stages"][1]
    with pytest.raises(ConfigError, match=r"phase2.bn_batch_stats = True needs training images but phase2.data = "
                                          r"'noise'; pass --set phase2.bn_batch_stats=false or"):
        resolve("decoupled", sets=["phase2.data=noise", "phase2.bn_recalibration=0", "phase2.bn_batch_stats=true"])
    with pytest.raises(ConfigError, match=r"phase2.bn_recalibration = 40 and phase2.bn_batch_stats = True need "
                                          r"training images .*; pass --set phase2.bn_recalibration=0 --set "
                                          r"phase2.bn_batch_stats=false or --set phase2.data=dataset"):
        resolve("decoupled", sets=["phase2.data=noise"])  # both at their defaults: one line names both


def test_no_recalibration_keeps_the_original_statistics(nets, tmp_path):
    from nernfast.checkpoints import read_checkpoint
    sd = read_checkpoint(nets[0])["state_dict"]
    sets = ["phase2.bn_recalibration=0", "phase2.bn_batch_stats=false"]  # the original's statistics, never moved
    res = train_cli.run(tiny_cfg("decoupled", nets, tmp_path, sets), progress=False)
    assert "bn_recalibration" not in res["stages"][1]
    model = nernfast.load(tmp_path / "nern.safetensors")
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


@pytest.mark.parametrize("every, expected", [(4, [4, 8]), (0, [])])
def test_l2_scale_is_remeasured_between_evaluations(nets, tmp_path, monkeypatch, every, expected):
    """phase.l2_scale_every re-measures the linearised l2 loss's scale (the full reconstruction error)
    at every multiple that is not an evaluation (12 steps, evaluations at 6 and 12); 0 leaves it to
    the evaluations."""
    seen, real = [], phase_mod._PhaseLoop.refresh_scale

    def spy(self):
        real(self)
        exact = self.nets.target.error(self.nern.rows())["sq_error"]
        seen.append((self.step, self.nets.target.sq_error, exact))
    monkeypatch.setattr(phase_mod._PhaseLoop, "refresh_scale", spy)
    train_cli.run(tiny_cfg("recon_only", nets, tmp_path, [f"phase1.l2_scale_every={every}"]), progress=False)
    assert [step for step, _, _ in seen] == expected
    for _, scale, exact in seen:
        assert scale == pytest.approx(exact, rel=1e-6)


def test_recon_l2_selection_keeps_the_lowest_reconstruction_error(nets, tmp_path):
    """select: recon_l2 keeps the evaluation point with the lowest full error (validation still reported)."""
    res = train_cli.run(tiny_cfg("recon_only", nets, tmp_path, ["phase1.select=recon_l2", "phase1.eval_every=3",
                                                                 "phase1.lr=0.05"]), progress=False)
    stage = res["stages"][0]
    hist = stage["history"]
    assert all("val_acc" in h for h in hist)
    best = min(hist, key=lambda h: h["recon_l2"])
    assert stage["best_step"] == best["step"]
    assert stage["recon_l2"] == pytest.approx(best["recon_l2"], rel=1e-5)


@pytest.mark.parametrize("end", [[], ["bn_recalibration_end=3"]], ids=["phase2-statistics", "own-statistics"])
def test_weight_average_keeps_the_raw_trajectory_and_the_average(end, nets, tmp_path):
    """With phase2.ema_decay the steps are those of the phase without it (raw scores recorded beside the
    average's), and the artefact holds the average at its best evaluation; scored with statistics of their own
    (bn_recalibration_end), the raw weights are tested with theirs."""
    from nernfast.data import get_dataset
    from nernfast.eval import accuracy
    plain = train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "plain", end), progress=False)
    avg = train_cli.run(tiny_cfg("decoupled", nets, tmp_path / "avg", ["phase2.ema_decay=0.5", *end]), progress=False)
    p2_plain, p2_avg = plain["stages"][-1], avg["stages"][-1]
    for h_plain, h_avg in zip(p2_plain["history"], p2_avg["history"], strict=True):
        assert h_avg["step"] == h_plain["step"]
        assert h_avg["raw_val_acc"] == h_plain["val_acc"] and h_avg["raw_val_loss"] == pytest.approx(h_plain["val_loss"])
        assert h_avg["recon_l2"] == pytest.approx(h_plain["recon_l2"], rel=1e-6)
    assert any(h["val_loss"] != pytest.approx(h["raw_val_loss"]) for h in p2_avg["history"][1:])
    raw = p2_avg["raw_best"]  # the plain run's kept step, scores and test accuracy
    assert (raw["step"], raw["val_acc"], raw["test_acc"]) == (p2_plain["best_step"], p2_plain["val_acc"], p2_plain["test_acc"])
    assert raw["val_loss"] == pytest.approx(p2_plain["val_loss"]) and raw["test_loss"] == pytest.approx(p2_plain["test_loss"])
    best = max(p2_avg["history"], key=lambda h: (h["val_acc"], -h["val_loss"]))
    assert p2_avg["best_step"] == best["step"] and p2_avg["val_acc"] == best["val_acc"]
    model = nernfast.load(tmp_path / "avg" / "nern.safetensors")
    acc, loss = accuracy(model, get_dataset("digits").loader("val", 512))
    assert acc == best["val_acc"] and loss == pytest.approx(best["val_loss"], rel=1e-4)
