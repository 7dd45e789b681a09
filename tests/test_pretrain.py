"""Pretraining: a few steps beat chance, the checkpoint layout, the CLIs, the cache."""
from __future__ import annotations

import json

import pytest
import torch

import nernfast.pretrain as pt
import nernfast.shipped as shipped
from nernfast.checkpoints import load_model_checkpoint
from nernfast.evaluate import main as evaluate_main
from nernfast.models import build_model


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "r20.pt"
    res = pt.pretrain("resnet20", "digits", epochs=2, out=out, progress=False, max_steps=30)
    return res, out


def test_few_steps_beat_chance(short_run):
    res, out = short_run
    assert res["steps"] == 30 and res["epochs_run"] == 2
    assert res["test_accuracy"] > 0.5 and res["val_accuracy"] > 0.5          # chance is 0.1
    assert res["history"][0]["train_loss"] > res["history"][-1]["train_loss"]


def test_checkpoint_layout(short_run):
    res, out = short_run
    ck = torch.load(out, weights_only=True)
    assert {k: ck[k] for k in ("format", "model", "num_classes", "in_channels", "image_size", "dataset")} == {
        "format": pt.CHECKPOINT_FORMAT, "model": "resnet20", "num_classes": 10, "in_channels": 1, "image_size": 8,
        "dataset": "digits"}
    assert ck["metrics"]["test_accuracy"] == res["test_accuracy"] and ck["config"]["lr"] == 0.1
    m = load_model_checkpoint(out, build_model("resnet20", 10, 1))
    assert isinstance(m, torch.nn.Module)


def test_evaluate_cli_reads_model_from_checkpoint(short_run, tmp_path, capsys):
    res, out = short_run
    js = tmp_path / "r.json"
    rc = evaluate_main(["--checkpoint", str(out), "--device", "cpu", "--fgsm-eps", "0", "0.1", "--ifgsm-steps", "2",
                        "--max-batches", "1", "--batch-size", "32", "--json", str(js)])
    text = capsys.readouterr().out
    assert rc == 0
    for name in ("accuracy:", "loss:", "fgsm accuracy (eps=0)", "fgsm accuracy (eps=0.1)", "ifgsm accuracy",
                 "ood accuracy (builtin-corruptions)", "ood contrast"):
        assert name in text
    r = json.loads(js.read_text())
    assert r["num_examples"] == 32 and r["fgsm"]["0"] == r["accuracy"] and r["model"] == "resnet20"
    assert r["settings"]["fgsm_eps"] == [0.0, 0.1] and r["settings"]["ifgsm_steps"] == 2
    # --model is accepted too, and must agree with the checkpoint
    assert evaluate_main(["--checkpoint", str(out), "--model", "resnet20", "--dataset", "digits", "--device", "cpu",
                          "--no-ood", "--no-attacks"]) == 0
    assert evaluate_main(["--checkpoint", str(out), "--model", "resnet56", "--no-ood", "--no-attacks"]) == 2
    assert "disagrees" in capsys.readouterr().err


def test_evaluate_cli_plain_state_dict_needs_model(tmp_path, capsys):
    torch.save(build_model("resnet20", 10, 1).state_dict(), tmp_path / "sd.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "sd.pt"), "--dataset", "digits", "--no-ood"]) == 2
    assert "pass --model" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(tmp_path / "sd.pt"), "--model", "resnet20", "--dataset", "digits",
                          "--in-channels", "1", "--no-ood", "--no-attacks", "--device", "cpu"]) == 0


def test_pretrain_cli_missing_dataset(tmp_path, capsys):
    assert pt.main(["--dataset", "cifar10", "--data-root", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1" in err and str(tmp_path) in err


def test_lr_schedule():
    r = pt.Recipe(epochs=10, batch_size=1, lr=0.1, weight_decay=0, warmup_epochs=1.0)
    f = [pt._lr_factor(s, 4, r, 10) for s in range(40)]
    assert f[0] == 0.25 and f[3] == 1.0 and f[19] == 1.0
    assert f[20] == pytest.approx(0.1) and f[31] == pytest.approx(0.1) and f[32] == pytest.approx(0.01)


def test_ensure_pretrained_caches(tmp_path, monkeypatch):
    calls = []

    def fake_train(model_name, dataset, out, epochs=None, **k):
        calls.append((model_name, dataset, epochs))
        torch.save({"model": model_name, "state_dict": {}, "metrics": {"test_accuracy": 1.0}}, out)

    monkeypatch.setattr(pt, "train_checkpoint", fake_train)
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "none-shipped")
    monkeypatch.setenv("NERNFAST_CACHE", str(tmp_path / "cache"))
    p1 = pt.ensure_pretrained("resnet20", "digits")
    p2 = pt.ensure_pretrained("resnet20", "digits")
    assert p1 == p2 and len(calls) == 1 and p1.is_file()
    assert p1.parent == tmp_path / "cache" / "pretrained"
    assert p1.name.startswith(f"resnet20_digits_seed0_ep{pt.RECIPES['digits'].epochs}_") and p1.suffix == ".pt"
    p3 = pt.ensure_pretrained("resnet20", "digits", seed=1, epochs=3, cache_dir=tmp_path / "other")
    assert p3.parent == tmp_path / "other" and "seed1_ep3" in p3.name and len(calls) == 2
    assert not list((tmp_path / "other").glob("*.partial"))
    assert set(pt.DEFAULT_TEACHER) == set(pt.RECIPES) and pt.DEFAULT_TEACHER["digits"] != "resnet20"
    assert pt.recipe_for("digits", "resnet56").lr == 0.05 and pt.recipe_for("digits", "resnet20").lr == 0.1
    assert pt.cache_path("resnet56", "digits").name != pt.cache_path("resnet56", "digits", epochs=3).name


def test_pretraining_on_the_cpu_is_pinned_and_repeats_bit_for_bit(tmp_path):
    """The CLI reruns itself with the pinned numerics (nernfast.numerics), the way the cache trains
    (run_pinned): both give the same weights, and the checkpoint says what decided its numerics."""
    import subprocess
    import sys
    from nernfast import numerics
    args = ["-m", "nernfast.pretrain", "--model", "resnet20", "--dataset", "digits", "--max-steps", "4",
            "--no-progress", "--device", "cpu", "--out"]
    subprocess.run([sys.executable, *args, str(tmp_path / "cli.pt")], check=True, capture_output=True)
    assert numerics.run_pinned([*args, str(tmp_path / "cache.pt")]) == 0
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("cli.pt", "cache.pt"))
    assert a["numerics"]["pinned"] and a["numerics"]["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert a["numerics"]["threads"] == 1 and a["numerics"]["cpu_capability"] == "AVX2"
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
