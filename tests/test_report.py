"""The report: grid layout, scaled configs, and rendering from a small fake raw JSON (deterministic)."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest

from nernfast import report
from nernfast.config import resolve
from nernfast.analysis import stats

N_TEST = 40


def _eval(acc_images: int, rng: random.Random) -> dict:
    bits = ["1"] * acc_images + ["0"] * (N_TEST - acc_images)
    rng.shuffle(bits)
    a = acc_images / N_TEST
    return {"accuracy": a, "loss": 1 - a, "num_examples": N_TEST, "fgsm_accuracy": a - 0.1,
            "ifgsm_accuracy": a - 0.15, "ood_accuracy": a - 0.05, "ood_source": "builtin-corruptions",
            "settings": {"fgsm_eps": [0.1], "ifgsm_eps": 0.1, "ifgsm_steps": 10, "ifgsm_alpha": 0.025},
            "correct": "".join(bits), "seconds": 1.0}


def _fake_raw(tmp_path):
    rng = random.Random(0)
    sizes, seeds, rounds = [8, 32], 2, 2
    jobs = report.grid(sizes, seeds, rounds, max(sizes), {1, 2, 3})
    raw = tmp_path / "raw"
    manifest = {"settings": {"dataset": "digits", "model": "resnet20", "config": None, "scale": "smoke", "mult": 0.02,
                             "kd_epochs_mult": 0.05, "sizes": sizes, "seeds": seeds, "rounds": rounds,
                             "progressive_hidden": max(sizes), "tables": [1, 2, 3], "robustness": True},
                "job_ids": [j.id for j in jobs],
                "invocations": [{"command": "python -m nernfast.report --scale smoke", "jobs": 2, "threads": 1,
                                 "start": "2026-01-01 00:00:00 UTC", "end": "2026-01-01 00:10:00 UTC",
                                 "wall_seconds": 600.0, "uptime_end": "load average: 1.0",
                                 "machine": {"git_commit": "abc", "python": "3.11", "torch": "2.x", "cpu": "test cpu",
                                             "cpu_count": 2, "cuda": False, "platform": "linux",
                                             "uptime": "load average: 2.0", "git_dirty": False}}]}
    report.write_json(raw / "grid.json", manifest)
    base = {"recon": 30, "baseline": 33, "decoupled": 36, "gbaseline": 33, "tdecoupled": 37, "progressive": 35,
            "kdstudent": 34}
    for j in jobs:
        if j.id == "jobs-not-run" or j.id == "gbaseline-h8-s1":  # one missing job: the report says so
            continue
        if j.kind in ("original", "teacher"):
            rec = {"job": {"id": j.id}, "model": "resnet20" if j.kind == "original" else "resnet56",
                   "eval": _eval(35 if j.kind == "original" else 38, rng), "wall_seconds": 1.0}
        else:
            k = base[j.method] + (j.hidden == 32) + rng.randint(-1, 1)
            rec = {"job": {"id": j.id}, "eval": _eval(min(k, N_TEST), rng), "wall_seconds": 2.0,
                   "sizes": {"compression_ratio": j.hidden / 20 if j.hidden else 1.0},
                   "stages": [{"stage": "phase1", "val_acc": 0.5 + 0.01 * (j.round or 1)}],
                   "recon_l2_vs_original": 0.001 * (j.round or 1), "recon_l2_vs_target": 0.001}
        report.write_json(raw / "jobs" / f"{j.id}.json", rec)
    return raw


def test_render_is_deterministic_and_complete(tmp_path):
    raw = _fake_raw(tmp_path)
    out = tmp_path / "docs" / "results.md"
    notes = tmp_path / "notes.md"
    notes.write_text("Hand-written discussion.\n")
    first = report.render_from(raw, out, notes, plots=True)
    second = report.render_from(raw, out, notes, plots=True)
    assert first == second == out.read_text()
    for needle in ("## Table 1", "## Table 2", "## Table 3", "## The paper's claims", "within noise",
                   "missing: gbaseline-h8-s1", "git commit `abc`", "torch 2.x", "Hand-written discussion.",
                   "one image is 2.50 points", "load average: 2.0"):
        assert needle in first, needle
    assert (tmp_path / "docs" / "plots" / "accuracy_vs_cr.png").stat().st_size > 0
    # the original's cell is its accuracy with a Wilson interval
    lo, hi = stats.wilson(35, N_TEST)
    assert f"87.50 [{100 * lo:.2f}, {100 * hi:.2f}]" in first
    # the CLI re-renders to the same text
    assert report.main(["--render-only", "--raw-dir", str(raw), "--out", str(out), "--notes", str(notes)]) == 0
    assert out.read_text() == first


def test_grid_dependencies_and_scaled_steps():
    jobs = {j.id: j for j in report.grid([100, 280], 2, 3, 280, {1, 2, 3})}
    assert jobs["decoupled-h100-s1"].init_from_job == "recon-h100-s1"
    assert jobs["tdecoupled-h280-s0"].deps == ["recon-h280-s0"]
    assert jobs["prog-c1-r2"].original_job == "recon-h280-s1" and jobs["prog-c1-r3"].deps == ["prog-c1-r2"]
    assert jobs["recon-h280-s1"].round == 1 and "prog-c0-r1" not in jobs
    assert sum(j.kind == "kdstudent" for j in jobs.values()) == 2
    # Scaled from the shipped recipe YAMLs, whatever their step counts are.
    dec, base = resolve("decoupled"), resolve("baseline")
    sets = report.scaled_sets("decoupled", 0.1, None, zero_phase1=True)
    assert "phase1.steps=0" in sets and f"phase2.steps={round(0.1 * dec.phase2.steps)}" in sets
    sets = report.scaled_sets("baseline", 0.1, None)
    assert f"phase1.steps={round(0.1 * base.phase1.steps)}" in sets
    assert f"phase1.warmup_steps={round(0.1 * base.phase1.warmup_steps)}" in sets


def test_settings_mismatch_is_refused(tmp_path, capsys):
    raw = _fake_raw(tmp_path)
    assert report.main(["--scale", "full", "--raw-dir", str(raw), "--out", str(tmp_path / "r.md")]) == 2
    assert "other settings" in capsys.readouterr().err
    assert json.loads((raw / "grid.json").read_text())["settings"]["scale"] == "smoke"


@pytest.mark.parametrize("scale", sorted(report.SCALES))
def test_scales_are_documented(scale):
    assert scale in report.__doc__


def test_kd_student_trains_through_train_classifier(tmp_path, monkeypatch):
    """The KD student is pretrain.train_classifier with a KD loss hook, on the recipe of
    (dataset, model), on --device; a stand-in teacher (random weights) keeps it fast."""
    import nernfast.checkpoints as ck
    import nernfast.losses as losses
    import nernfast.pretrain as pt
    from nernfast.data import get_dataset
    from nernfast.report.kd_student import train_kd_student
    monkeypatch.setattr(pt, "ensure_pretrained", lambda *a, **k: tmp_path / "teacher.pt")
    monkeypatch.setattr(ck, "load_model_checkpoint", lambda path, model: model)
    calls, real_kd, real_train = [], losses.kd_loss, pt.train_classifier
    monkeypatch.setattr(losses, "kd_loss", lambda *a, **k: calls.append(a[2]) or real_kd(*a, **k))
    seen = {}

    def train(model, bundle, recipe, **k):
        seen.update(recipe=recipe, device=str(k["device"]))
        return real_train(model, bundle, recipe, max_steps=3, **k)
    monkeypatch.setattr(pt, "train_classifier", train)
    env = report.Env("digits", "resnet20", None, None, "smoke", 0.02, 0.01, str(tmp_path / "raw"),
                     str(tmp_path / "work"), "cpu", 1, False)
    bundle = get_dataset("digits", None, seed=0)
    rec = train_kd_student(report.Job("kdstudent-s0", "kdstudent", 3, "kdstudent", seed=0), env, bundle)
    assert calls and set(calls) == {"kl"}, "every step's loss is the KD loss"
    assert seen["recipe"] == dataclasses.replace(pt.recipe_for("digits", "resnet20"), epochs=1)
    assert seen["device"] == "cpu"
    assert rec["epochs"] == 1 and rec["steps"] == 3 and rec["teacher"] == pt.DEFAULT_TEACHER["digits"]
    assert 0 <= rec["eval"]["accuracy"] <= 1 and len(rec["eval"]["correct"]) == rec["eval"]["num_examples"]
