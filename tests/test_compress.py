"""``python -m nernfast.compress`` end to end on a tiny predictor (digits, a few fine-tune steps)."""
from __future__ import annotations

import json

import pytest
import torch

import nernfast
from nernfast import NeRN, build_model
from nernfast.artefact import save_artefact
from nernfast.compress import file_parts
from nernfast.compress.cli import main
from nernfast.compress.qat import fake_quantized
from nernfast.codec.format2 import Scheme
from nernfast.codec.quant import dequantize, quantize_reference


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("run")
    model = build_model("resnet20", 10, 1).eval()
    nern = NeRN.from_model(model, hidden=12, num_blocks=3, cache_dir=d)
    save_artefact(d / "nern.safetensors", nern, model, {"name": "resnet20", "num_classes": 10, "in_channels": 1},
                  {"dataset": "digits"}, {})
    return d


@pytest.mark.parametrize("scheme", [Scheme("int4", group=8), Scheme("ans", step=0.05)], ids=["int4", "ans"])
def test_fake_quantized_leaves_latent_weights_that_quantise_to_what_it_computed(source, scheme):
    nern, _, _ = nernfast.load_nern(source / "nern.safetensors")
    with fake_quantized(nern, scheme):
        with torch.no_grad():
            for lin in nern.predictor.linears():
                lin.parametrizations.weight.original.add_(0.01)
        seen = [lin.weight.detach().clone() for lin in nern.predictor.linears()]
    for lin, w in zip(nern.predictor.linears(), seen):
        assert not hasattr(lin, "parametrizations")
        assert torch.equal(scheme.roundtrip(lin.weight.detach()), w)
    if scheme.weights == "int4":
        assert torch.equal(dequantize(quantize_reference(lin.weight.detach(), 4, 8)), seen[-1])


def test_compress_cli_end_to_end(source, tmp_path, capsys):
    out, js = tmp_path / "c.safetensors", tmp_path / "c.json"
    rc = main([str(source), "--out", str(out), "--bits", "4", "--group", "8", "--steps", "3", "--eval-every", "1",
               "--no-progress", "--json", str(js)])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(js.read_text())
    parts = file_parts(out)
    assert sum(parts.values()) == out.stat().st_size == res["sizes"]["file_bytes"]
    for label in ("predictor", "permutation", "BN/FC", "metadata", "checksum (SHA-256)", "file total", "test accuracy"):
        assert label in text, label
    assert "MB" not in text  # bytes and kB (1000 bytes) only
    # "after" is the file as written, decoded by nernfast.load
    from nernfast.compress.cli import _accuracy
    from nernfast.data import get_dataset
    acc = _accuracy(nernfast.load(out), get_dataset("digits", None, seed=0), "test", torch.device("cpu"))
    assert res["test_acc_after"] == acc
    meta, _ = nernfast.artefact.read_artefact(out)
    assert meta["codec"]["scheme"]["weights"] == "int4" and meta["metrics"]["compress"]["qat_steps"] == 3
    # the fine-tune's curve is reported, not stored in the artefact
    assert [s for s, _ in res["qat_history"]] == [0, 1, 2, 3] and "qat_history" not in meta["metrics"]["compress"]
    assert out.stat().st_size < (source / "nern.safetensors").stat().st_size

    before = out.read_bytes()
    rc = main([str(source), "--out", str(out), "--steps", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "exists" in err and "--overwrite" in err
    assert out.read_bytes() == before


def test_recalibrated_bn_matches_the_batch_statistics_of_the_quantised_network(source):
    """One batch, cumulative average: the running mean of the first BN is that batch's mean of the
    first conv's output computed with the quantised predictor; the stored model is not touched."""
    import argparse

    from nernfast.bn_stats import recalibrated
    from nernfast.compress.cli import _quantized_copy
    from nernfast.data import get_dataset

    def bn_state(m):
        return {k: v.clone() for k, v in m.state_dict().items() if "running_" in k or "num_batches" in k}
    nern, model, _ = nernfast.load_nern(source / "nern.safetensors")
    q = _quantized_copy(nern, Scheme("int4", group=8))
    before = bn_state(model)
    bundle = get_dataset("digits", None, seed=0)
    m = recalibrated(q, model, bundle, 1, torch.device("cpu"), seed=3, batch_size=32)
    assert all(torch.equal(v, bn_state(model)[k]) for k, v in before.items())
    assert not m.training
    x, _ = next(iter(bundle.loader("train", 32, shuffle=True, augment=False, seed=3)))
    w = dict(zip(q.plan.names, q.layer_weights()))
    assert torch.equal(m.layer1[0].conv1.weight, w["layer1.0.conv1"].detach().view_as(m.layer1[0].conv1.weight))
    with torch.no_grad():
        y = m.conv1(x)  # the stem feeds bn1: its running mean is this batch's channel mean
    assert torch.allclose(m.bn1.running_mean, y.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(m.bn1.running_mean, before["bn1.running_mean"])
    with pytest.raises(ValueError, match="1 batch"):
        recalibrated(q, model, bundle, 0, torch.device("cpu"))


def test_compress_cli_ans_step_writes_what_it_fine_tuned(source, tmp_path, capsys):
    """--step: the entropy-coded scheme end to end; the file decodes to exactly the quantiser's weights
    of its own (latent) predictor, and a bad step is one line before any work."""
    out = tmp_path / "a.nern"
    rc = main([str(source), "--out", str(out), "--step", "0.05", "--steps", "2", "--eval-every", "1",
               "--bn-batches", "0", "--rest", "fp16", "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "ans step 0.05" in text
    meta, tensors = nernfast.artefact.read_artefact(out)
    assert meta["codec"]["scheme"]["weights"] == "ans" and meta["codec"]["scheme"]["step"] == 0.05
    w = tensors["predictor.layers.0.weight"]
    step = w.abs()[w != 0].min()  # level +-1 occurs: the decoded weights are whole multiples of one step
    assert torch.allclose(w / step, torch.round(w / step), atol=1e-3) and (w / step).abs().max() > 20
    rc = main([str(source), "--out", str(tmp_path / "b.nern"), "--step", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "step" in err and not (tmp_path / "b.nern").exists()
    with pytest.raises(SystemExit):
        main([str(source), "--out", str(tmp_path / "c.nern"), "--step", "0.05", "--bits", "8"])
    assert "not allowed with" in capsys.readouterr().err
    rc = main([str(source), "--out", str(tmp_path / "e.nern"), "--fmd-weight", "-1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--fmd-weight" in err and not (tmp_path / "e.nern").exists()
    rc = main([str(source), "--out", str(tmp_path / "d.nern"), "--per-layer", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--step" in err and not (tmp_path / "d.nern").exists()


def test_compress_cli_ema_keeps_the_average_and_reports_the_raw_weights(source, tmp_path, capsys):
    """--ema: the fine-tune keeps its weight average (the file holds the quantised average: its validation
    accuracy is the kept one) and reports the raw weights' kept step beside it; a decay of 1 is refused."""
    out, js = tmp_path / "e.nern", tmp_path / "e.json"
    rc = main([str(source), "--out", str(out), "--step", "0.05", "--steps", "4", "--eval-every", "2", "--ema", "0.5",
               "--bn-batches", "0", "--rest", "fp32", "--no-progress", "--json", str(js)])
    assert rc == 0, capsys.readouterr().out
    res = json.loads(js.read_text())
    assert res["qat_ema"] == 0.5 and res["qat_raw_best"]["step"] in (0, 2, 4)
    assert set(res["qat_raw_best"]) >= {"step", "val_acc", "val_loss"} and "predictor" not in res["qat_raw_best"]
    from nernfast.compress.cli import _accuracy
    from nernfast.data import get_dataset
    val = _accuracy(nernfast.load(out), get_dataset("digits", None, seed=0), "val", torch.device("cpu"))
    assert val == res["qat_val_acc"]
    rc = main([str(source), "--out", str(tmp_path / "f.nern"), "--ema", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "--ema" in err and not (tmp_path / "f.nern").exists()


def test_finetune_distils_from_the_given_teacher(source):
    """--distill-from teacher: the KD source is the module passed, not the fp32 artefact's network."""
    from nernfast.compress.cli import run_teacher
    from nernfast.compress.qat import finetune
    from nernfast.data import get_dataset

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            self.calls += 1
            return self.net(x)
    bundle = get_dataset("digits", None, seed=0)
    teacher = run_teacher({"dataset": "digits", "teacher": "original"}, bundle, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    nern, model, _ = nernfast.load_nern(source / "nern.safetensors")
    counting = Counting(teacher)
    res = finetune(nern, model, bundle, Scheme("int8"), 2, 1e-5, eval_every=1, distill=counting)
    assert counting.calls == 2 and [h["step"] for h in res["history"]] == [0, 1, 2]


@pytest.mark.parametrize("fmd", [0.0, 0.1])
def test_finetune_feature_map_term_is_on_only_when_weighted(source, fmd):
    from nernfast.compress.qat import finetune
    from nernfast.data import get_dataset
    nern, model, _ = nernfast.load_nern(source / "nern.safetensors")
    res = finetune(nern, model, get_dataset("digits", None, seed=0), Scheme("ans", step=0.05), 2, 1e-5,
                   eval_every=1, fmd_weight=fmd)
    trained = [h for h in res["history"] if h["step"] > 0]
    assert trained and all(("fmd" in h) == (fmd > 0) for h in trained)
    assert all(h["fmd"] >= 0 for h in trained if "fmd" in h)


def test_compress_cli_refuses_a_missing_source(tmp_path, capsys):
    rc = main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "no artefact there" in err


def test_comparison_keeps_group_sizes_apart(source, tmp_path):
    """benchmarks/compression_compare.py: int7 in groups of 64 and of 128 are two settings, not one averaged point."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from compression_compare import aggregate, measure_artefact
    from nernfast.data import get_dataset
    bundle = get_dataset("digits", None, seed=0)
    rows = []
    for g in (64, 128):
        out = tmp_path / f"g{g}.nern"
        assert main([str(source), "--out", str(out), "--bits", "7", "--group", str(g), "--steps", "0",
                     "--bn-batches", "0", "--rest", "fp16", "--no-progress"]) == 0
        rows.append(measure_artefact(str(out), bundle))
    assert [r["setting"] for r in rows] == ["H12 int7 g64 BN/FC fp16", "H12 int7 g128 BN/FC fp16"]
    assert sorted(p["n"] for p in aggregate(rows)) == [1, 1]
    # a run trained with phase 2's weight average is its own group too (its config says so)
    meta, _ = nernfast.artefact.read_artefact(source / "nern.safetensors")
    nern, model, _ = nernfast.artefact.load_nern(source / "nern.safetensors")
    ema_src = tmp_path / "ema.safetensors"
    save_artefact(ema_src, nern, model, meta["architecture"], {"dataset": "digits", "phase2": {"ema_decay": 0.998}}, {})
    assert main([str(ema_src), "--out", str(tmp_path / "ema.nern"), "--bits", "7", "--group", "64", "--steps", "0",
                 "--bn-batches", "0", "--rest", "fp16", "--no-progress"]) == 0
    ema = measure_artefact(str(tmp_path / "ema.nern"), bundle)
    assert ema["setting"] == "H12 int7 g64 BN/FC fp16, phase-2 weight average 0.998"
    assert sorted(p["n"] for p in aggregate(rows + [ema])) == [1, 1, 1]


def test_compress_cli_max_bytes_fills_the_budget(source, tmp_path, capsys):
    """--max-bytes: the written file fits the budget with finer steps than --step alone gives; a budget
    below the fixed parts, or one without --step, is one line and no file."""
    ref = tmp_path / "ref.nern"
    args = ["--steps", "2", "--eval-every", "1", "--bn-batches", "0", "--rest", "fp16", "--no-progress"]
    assert main([str(source), "--out", str(ref), "--step", "0.05", *args]) == 0
    budget = ref.stat().st_size + 600
    out = tmp_path / "fit.nern"
    rc = main([str(source), "--out", str(out), "--step", "0.05", "--max-bytes", str(budget), "--json",
               str(tmp_path / "fit.json"), *args])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert ref.stat().st_size < out.stat().st_size <= budget and "--max-bytes" in text
    meta, _ = nernfast.artefact.read_artefact(out)
    assert meta["codec"]["scheme"]["step"] < 0.05
    res = json.loads((tmp_path / "fit.json").read_text())
    assert res["sizes"]["file_bytes"] == out.stat().st_size and res["max_bytes"]["max_bytes"] == budget
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from compression_compare import measure_artefact
    from nernfast.data import get_dataset
    # the comparison groups fitted files by their budget (each seed's steps differ)
    assert measure_artefact(str(out), get_dataset("digits", None, seed=0))["setting"] == \
        f"H12 ans, steps fitted to {budget:,} bytes BN/FC fp16"
    for bad, word in ((["--step", "0.05", "--max-bytes", "5000"], "coarsest"), (["--max-bytes", "90000"], "--step")):
        rc = main([str(source), "--out", str(tmp_path / "x.nern"), *bad, *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and "\n" not in err and word in err and not (tmp_path / "x.nern").exists()


def test_refit_coarsens_until_the_file_with_its_metadata_fits(source):
    """The second fit measures the file with the metadata it will hold (the steps it chose included) and
    only ever coarsens."""
    from dataclasses import asdict

    from nernfast.artefact import artefact_bytes, load_nern
    from nernfast.compress.cli import _refit
    nern, model, meta = load_nern(source / "nern.safetensors")
    scheme = Scheme("ans", step=0.01, rest="fp16")
    metrics = {"compress": {"scheme": asdict(scheme)}}

    def size(s: Scheme) -> int:  # the file with the metadata as it stands now
        return len(artefact_bytes(nern, model, meta.get("architecture"), meta.get("config"), metrics, s))

    before = size(scheme)
    budget = {"max_bytes": before - 400}
    fitted = _refit(nern, model, meta, metrics, scheme, budget)
    assert fitted.step > 0.01 and budget["refit_factor"] == pytest.approx(fitted.step / 0.01)
    assert metrics["compress"]["scheme"] == asdict(fitted)
    assert size(fitted) <= before - 400
    assert _refit(nern, model, meta, metrics, fitted, dict(budget)) == fitted  # fits already: unchanged
