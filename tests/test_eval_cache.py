"""The final evaluation a user waits for: progress lines, the cached evaluation of networks that do
not change between runs, and ``--eval quick|full``."""
from __future__ import annotations

import json

import torch

from nernfast import train as train_cli
from nernfast.data import get_dataset
from nernfast.eval import evaluate_cached, evaluate_model, state_digest
from nernfast.models import build_model

from test_train import TINY, nets  # noqa: F401  (the module-scoped trained digits networks)

QUICK = dict(ood=False, attacks=False, batch_size=512)


def test_cached_evaluation_is_keyed_by_weights_data_and_settings():
    torch.manual_seed(0)
    b = get_dataset("digits")
    net, other = build_model("resnet20", 10, 1).eval(), build_model("resnet20", 10, 1).eval()
    first = evaluate_cached(net, b, **QUICK)
    again = evaluate_cached(net, b, **QUICK)
    assert first["cached"] is None and again["cached"]
    assert again["accuracy"] == first["accuracy"] == evaluate_model(net, b, **QUICK)["accuracy"]
    # Per-image outcomes for paired comparisons: one character per test image, in split order.
    assert len(first["correct"]) == len(b.test) and set(first["correct"]) <= {"0", "1"}
    assert first["correct"].count("1") / len(b.test) == first["accuracy"] and again["correct"] == first["correct"]
    assert evaluate_cached(other, b, **QUICK)["cached"] is None            # other weights
    assert evaluate_cached(net, b, **{**QUICK, "split": "val"})["cached"] is None  # other settings
    assert state_digest(net) != state_digest(other)
    with torch.no_grad():
        next(net.parameters()).add_(1e-3)
    assert evaluate_cached(net, b, **QUICK)["cached"] is None              # weights changed in place


def test_progress_lines_name_each_figure():
    b = get_dataset("digits")
    lines: list[str] = []
    evaluate_model(build_model("resnet20", 10, 1), b, batch_size=512, max_batches=1, log=lines.append)
    text = "\n".join(lines)
    assert "accuracy" in lines[0] and " s)" in lines[0]
    assert sum(l.startswith("FGSM eps=") for l in lines) == 3 and "I-FGSM" in text
    assert text.count("corruption ") == 8 and "OOD (builtin-corruptions)" in lines[-1]


def test_eval_quick_and_full_and_the_original_is_evaluated_once(nets, tmp_path, capfd):  # noqa: F811
    orig, teacher = nets
    sets = [s for s in TINY if not s.startswith(("eval.ood", "eval.attacks"))]
    args = ["--recipe", "recon_only", "--original", str(orig), "--eval"]
    base = sum((["--set", s] for s in sets), [])
    assert train_cli.main(args + ["quick", "--out", str(tmp_path / "q")] + base) == 0
    q = json.loads((tmp_path / "q" / "results.json").read_text())
    assert "fgsm" not in q["final"] and "ood" not in q["final"] and "fgsm" not in q["original"]
    assert q["config"]["eval"]["ood"] is False and q["config"]["eval"]["attacks"] is False
    capfd.readouterr()
    assert train_cli.main(args + ["quick", "--out", str(tmp_path / "q2")] + base) == 0
    q2 = json.loads((tmp_path / "q2" / "results.json").read_text())
    assert q2["original"]["cached"] and q2["original"]["accuracy"] == q["original"]["accuracy"]
    assert "cached evaluation" in capfd.readouterr().err
