"""Bad input and faults (issue 14): each case reproduced with files made here; the CLI exits with a
documented code and ONE stderr line naming the problem and the fix (conftest.check_clear_error),
and nothing the user had changes. Case 3 (artefact integrity) lives with the artefact tests."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import nernfast
from nernfast import analyze as analyze_cli
from nernfast import evaluate as evaluate_cli
from nernfast import pretrain as pretrain_cli
from nernfast import train as train_cli

from conftest import check_clear_error

FAST = ["--no-progress", "--hidden", "8", "--set", "nern.permutation=none", "--set", "phase1.steps=2",
        "--set", "phase1.eval_every=2", "--set", "phase1.weights_batch_size=256", "--set", "eval.ood=false",
        "--set", "eval.attacks=false"]


@pytest.fixture(scope="module")
def orig(tmp_path_factory) -> Path:
    from nernfast.pretrain import pretrain
    p = tmp_path_factory.mktemp("orig") / "orig.pt"
    pretrain("resnet20", "digits", epochs=1, out=p, progress=False, seed=0)
    return p


def base(orig: Path, out: Path, *extra: str) -> list[str]:
    return [str(a) for a in ("--recipe", "recon_only", "--original", orig, "--out", out, *FAST, *extra)]


@pytest.fixture(scope="module")
def run_dir(orig, tmp_path_factory) -> Path:
    """A finished run (config.yaml, metrics.jsonl, results.json, nern.safetensors, train_state.pt)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert train_cli.main(base(orig, out)) == 0
    return out


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def copy_run(run_dir: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    d = tmp_path / "run"
    shutil.copytree(run_dir, d)
    return d, snapshot(d)


_DRIVER = """
import contextlib, io, json, sys, traceback
from nernfast.train import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        except Exception:
            traceback.print_exc()
            rc = 1
    results.append([rc, err.getvalue()])
print(json.dumps(results))
"""


def unprivileged(calls: list[list[str]]) -> list[tuple[int, str]]:
    """``nernfast.train.main(argv)`` for each argv in one subprocess (one start-up), so that file
    permissions apply even as root (CI runs as root, which ignores them): without the capabilities
    that override them. Returns (exit code, stderr) per call."""
    cmd = [sys.executable, "-c", _DRIVER, json.dumps(calls)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's override capabilities for this test"
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--inh-caps=-all", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def read_only(orig, run_dir, tmp_path_factory):
    """Cases 2 and 12 in one unprivileged subprocess: a read-only run directory (--overwrite,
    --resume) and a new --out inside a read-only directory."""
    tmp = tmp_path_factory.mktemp("ro")
    run, _ = copy_run(run_dir, tmp)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "out": str(run)}, sort_keys=False))  # not moved
    before = snapshot(run)
    parent = tmp / "parent"
    parent.mkdir()
    for d in (run, parent):
        d.chmod(0o555)
    try:
        res = unprivileged([base(orig, run, "--resume"), base(orig, run, "--overwrite"), base(orig, parent / "run")])
    finally:
        for d in (run, parent):
            d.chmod(0o755)
    return {"run": run, "before": before, "parent": parent, "results": res}


# ---- 1, 2, 12, 15, 16: the output directory --------------------------------------------------------------
def test_1_existing_run_is_refused_and_kept(orig, run_dir, tmp_path, cli_error):
    d, before = copy_run(run_dir, tmp_path)
    cli_error(train_cli.main, base(orig, d, "--set", "phase1.steps=4"), "already holds a run", "--resume",
              "--overwrite", "another --out")
    assert snapshot(d) == before


def test_1_overwrite_replaces_the_run(orig, run_dir, tmp_path):
    d, before = copy_run(run_dir, tmp_path)
    assert train_cli.main(base(orig, d, "--overwrite", "--set", "phase1.steps=4")) == 0
    rows = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]  # the old run's rows are gone, not appended to
    assert yaml.safe_load((d / "config.yaml").read_text())["phase1"]["steps"] == 4
    assert snapshot(d)["nern.safetensors"] != before["nern.safetensors"]


def test_1_demo_and_report_grid_overwrite_their_own_runs():
    import inspect

    from nernfast.report import runs
    demo = Path(__file__).parents[1].joinpath("Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert "nernfast.train" in demo and "--overwrite" in demo
    assert "overwrite=True" in inspect.getsource(runs.train_nern)


def test_2_unwritable_existing_run_is_found_before_any_work(read_only):
    d = read_only["run"]
    for code, err in read_only["results"][:2]:  # --resume, --overwrite
        check_clear_error(code, err, f"--out {d}", "cannot write", "make it writable", "another --out")
    assert snapshot(d) == read_only["before"]


def test_12_out_in_a_read_only_directory(read_only):
    code, err = read_only["results"][2]
    check_clear_error(code, err, "cannot write", "permission denied", "another --out")
    assert list(read_only["parent"].iterdir()) == []


def test_12_out_naming_a_file(orig, tmp_path, cli_error):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    cli_error(train_cli.main, base(orig, f), "is a file, not a directory", "pass a directory")
    cli_error(train_cli.main, base(orig, f / "run"), "is a file, not a directory", "another --out")
    assert f.read_text() == "mine"


def test_15_resume_ignores_how_out_is_spelled_and_names_differing_keys(orig, run_dir, tmp_path, monkeypatch,
                                                                       cli_error):
    d, _ = copy_run(run_dir, tmp_path)  # a moved run: its config.yaml names the old --out
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(base(orig, Path("run"), "--resume")) == 0   # relative spelling
    assert train_cli.main(base(orig, d, "--resume")) == 0              # absolute
    before = snapshot(d)
    cli_error(train_cli.main, base(orig, d, "--resume", "--set", "phase1.lr=0.5", "--seed", "3"),
              "config differs", "phase1.lr (saved 0.001, now 0.5)", "seed (saved 0, now 3)", "start a new --out")
    assert snapshot(d) == before


def test_15_resume_without_a_run(orig, tmp_path, cli_error):
    cli_error(train_cli.main, base(orig, tmp_path / "none", "--resume"), "no run state", "start without --resume")
    cli_error(train_cli.main, base(orig, tmp_path / "x", "--resume", "--overwrite"), "--resume", "--overwrite",
              "only one")


def test_16_failed_runs_leave_no_files(orig, tmp_path, cli_error):
    (tmp_path / "empty").mkdir()
    text = tmp_path / "orig.pt"
    text.write_text("not a checkpoint")
    for extra, msg in (([ "--dataset", "mnistt"], "unknown dataset"),
                       (["--dataset", "mnist", "--data-root", str(tmp_path / "empty")], "mnist"),
                       (["--original", str(text)], "text file")):
        out = tmp_path / "out"
        cli_error(train_cli.main, base(orig, out, *extra), msg)
        assert not out.exists(), list(out.rglob("*"))


# ---- 4: devices -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,cuda,count,expect", [
    ("cuda", False, 0, "no CUDA GPU is visible|this torch build has no CUDA"),
    ("cuda:3", True, 1, "this machine has 1 CUDA device(s)"),
    ("tpu", False, 0, "not a device name"),
])
def test_4_devices_are_checked_by_every_cli(device, cuda, count, expect, orig, run_dir, tmp_path, monkeypatch,
                                            cli_error):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    have = "pass one of: cpu" + (", cuda:0" if cuda else "")
    import re
    for main, argv in ((train_cli.main, base(orig, tmp_path / "t", "--device", device)),
                       (pretrain_cli.main, ["--device", device, "--out", tmp_path / "p.pt", "--epochs", "1"]),
                       (evaluate_cli.main, ["--checkpoint", orig, "--device", device]),
                       (analyze_cli.main, ["lowfreq", "--checkpoint", run_dir / "nern.safetensors", "--out",
                                           tmp_path / "a", "--device", device])):
        line = cli_error(main, argv, f"--device {device}", have)
        assert re.search(expect.replace("(", r"\(").replace(")", r"\)"), line), line
    assert not any(tmp_path.iterdir())


# ---- 5: ranges --------------------------------------------------------------------------------------------
def test_5_every_numeric_field_has_a_range():
    from nernfast.config_checks import RANGES, numeric_keys
    assert numeric_keys() == set(RANGES)


def _outside(r) -> list:
    if r.low is None:
        return [float("nan"), float("inf")]
    return [r.low] if r.open_low else [r.low - 1]


def test_5_every_range_is_enforced():
    from nernfast.config import ConfigError, resolve
    from nernfast.config_checks import RANGES
    checked = 0
    for table, r in RANGES.items():
        key = table.replace("phase.", "phase2.")
        for v in _outside(r):
            with pytest.raises(ConfigError) as e:
                resolve("decoupled", sets=[f"{key}={v}"])
            msg = str(e.value)
            assert key in msg and "out of range" in msg and str(r) in msg and "--set" in msg, msg
            checked += 1
    assert checked >= len(RANGES)


@pytest.mark.parametrize("argv,fragments", [
    (["--set", "phase1.steps=-5"], ("phase1.steps = -5", "must be >= 1", "--set phase1.steps")),
    (["--hidden", "0"], ("nern.hidden = 0", "must be >= 1", "--hidden")),
    (["--hidden", "-3"], ("nern.hidden = -3", "must be >= 1")),
    (["--set", "phase1.eval_every=0"], ("phase1.eval_every = 0", "must be >= 1")),
    (["--set", "phase1.weights_batch_size=0"], ("phase1.weights_batch_size = 0", "must be >= 1")),
    (["--set", "phase1.lr=0"], ("phase1.lr = 0.0", "must be > 0")),
    (["--set", "precision=fp16"], ("precision = 'fp16'", "float32, bf16")),
])
def test_5_out_of_range_values_fail_before_any_work(argv, fragments, orig, tmp_path, cli_error):
    cli_error(train_cli.main, base(orig, tmp_path / "out", *argv), *fragments)
    assert not (tmp_path / "out").exists()


def test_5_ranges_depend_on_what_runs():
    from nernfast.config import ConfigError, resolve
    resolve("baseline", sets=["phase2.steps=-1"])            # baseline has no phase 2
    resolve("decoupled", sets=["phase1.steps=0"], init_from="x.safetensors")  # phase 2 only
    with pytest.raises(ConfigError, match="phase2.noise_low = 3.0 is out of range: must be below phase2.noise_high"):
        resolve("noise_decoupled", sets=["phase2.noise_low=3"])


def test_5_weights_batch_size_is_capped_at_the_plan(orig, tmp_path, capsys):
    assert train_cli.main(base(orig, tmp_path / "out", "--set", "phase1.weights_batch_size=1000000000")) == 0
    err = capsys.readouterr().err
    assert "phase1-reconstruction: weights_batch_size 1000000000 is more than the" in err and "rows; using" in err


# ---- 6: divergence ----------------------------------------------------------------------------------------
def test_6_diverged_run_exits_3_and_keeps_the_best(orig, tmp_path, monkeypatch, cli_error):
    from nernfast.training import objectives
    real = objectives.ReconTarget.fast_loss
    monkeypatch.setattr(objectives.ReconTarget, "fast_loss",
                        lambda self, *a: real(self, *a) * float("nan"))
    out = tmp_path / "out"
    cli_error(train_cli.main, base(orig, out), "loss became nan at step 0", "Lower the learning rate",
              "--set phase1.lr=", code=3)
    res = json.loads((out / "results.json").read_text())
    assert res["diverged"] and res["stages"][0]["best_step"] == 0
    model = nernfast.load(out / "nern.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "| 3 |" in Path(__file__).parents[1].joinpath("docs", "errors.md").read_text()


def test_6_results_json_is_written_atomically(orig, tmp_path, monkeypatch):
    from nernfast import checkpoints
    written = []
    real = checkpoints.write_text_atomic
    monkeypatch.setattr(checkpoints, "write_text_atomic", lambda p, t: written.append(Path(p).name) or real(p, t))
    assert train_cli.main(base(orig, tmp_path / "out")) == 0
    assert "results.json" in written
    # An interrupted write leaves the old file and no temporary one.
    target = tmp_path / "out" / "results.json"
    old = target.read_bytes()

    def boom(f):
        f.write(b"{partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        checkpoints._write_atomic(target, boom)
    assert target.read_bytes() == old and sorted(p.name for p in target.parent.glob(".results.json*")) == []


# ---- 7, 8, 11: what --original / --checkpoint point at -----------------------------------------------------
@pytest.mark.parametrize("content", ["hello\n", "# README\nsome text\n", "a: 1\nb: [2, 3]\n", '{"a": 1}\n'])
def test_7_text_file_as_original(content, orig, tmp_path, cli_error):
    f = tmp_path / "model.pt"
    f.write_text(content)
    line = cli_error(train_cli.main, base(orig, tmp_path / "out", "--original", f), f"{f} is a text file",
                     "torch.save(model.state_dict()")
    assert "pickle" not in line


def test_8_train_takes_trust_pickle(orig, tmp_path, cli_error):
    from nernfast.checkpoints import load_model_checkpoint
    from nernfast.models import build_model
    f = tmp_path / "module.pt"
    torch.save(load_model_checkpoint(orig, build_model("resnet20", 10, 1)), f)  # a whole nn.Module
    cli_error(train_cli.main, base(orig, tmp_path / "a", "--original", f), "pickled Python object", "--trust-pickle")
    assert train_cli.main(base(orig, tmp_path / "b", "--original", f, "--trust-pickle")) == 0


@pytest.mark.parametrize("keep", ["header", "tensors"])
def test_11_truncated_artefact(keep, run_dir, orig, tmp_path, cli_error):
    data = (run_dir / "nern.safetensors").read_bytes()
    n = 8 + int.from_bytes(data[:8], "little")
    f = tmp_path / "cut.safetensors"
    f.write_bytes(data[:n // 2] if keep == "header" else data[:n + 1000])
    cli_error(train_cli.main, base(orig, tmp_path / "out", "--original", f), str(f), "safetensors")
    cli_error(analyze_cli.main, ["lowfreq", "--checkpoint", f, "--out", tmp_path / "an"], str(f), "safetensors")
    assert not (tmp_path / "out").exists() and not (tmp_path / "an").exists()


# ---- 9, 10: data and config files -------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flipped-block-header", "flipped-data", "truncated"])
def test_9_damaged_gz_in_the_dataset(damage, orig, tmp_path, cli_error):
    """zlib.error (a flipped deflate block header: was a traceback), a CRC mismatch, a cut file."""
    from test_data import make_idx_dir
    d = tmp_path / "mnist"
    make_idx_dir(d, gz=True)
    gz = d / "train-images-idx3-ubyte.gz"
    raw = bytearray(gz.read_bytes())
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    else:
        raw[10 if damage == "flipped-block-header" else 40] ^= 0xFF  # byte 10: the first block after the header
    gz.write_bytes(bytes(raw))
    cli_error(train_cli.main, base(orig, tmp_path / "out", "--dataset", "mnist", "--data-root", tmp_path),
              f"{gz}: damaged gzip file", "fresh copy")


def test_10_malformed_yaml_config(orig, tmp_path, cli_error):
    f = tmp_path / "my.yaml"
    f.write_text("phase1:\n  steps: [3\nnern: {hidden: 8}\n")
    cli_error(train_cli.main, base(orig, tmp_path / "out", "--config", f), f"{f}: not valid YAML", "line",
              "fix the file")
    f.write_text("- just\n- a list\n")
    cli_error(train_cli.main, base(orig, tmp_path / "out", "--config", f), "expected a mapping")


# ---- 13: the Python API -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_13_parametrize_after_a_dtype_change(dtype):
    from nernfast import NeRN, build_model
    model = build_model("resnet20", 10, 1).eval()
    nern = NeRN.from_model(model, hidden=8)
    ref = nern.materialize_(build_model("resnet20", 10, 1).eval()).to(dtype)
    nern.parametrize_(model.half() if dtype == torch.float16 else model.to(dtype))
    y = model(torch.randn(2, 1, 8, 8, dtype=dtype))  # was: RuntimeError "expected scalar type Half but found Float"
    assert y.dtype == dtype and y.shape == (2, 10)
    mods, refs = dict(model.named_modules()), dict(ref.named_modules())
    for name in nern.plan.names:  # the weights the convs compute with: the materialised ones in that dtype
        torch.testing.assert_close(mods[name].weight, refs[name].weight)
    y.float().sum().backward()
    assert nern.predictor.layers[0].weight.grad is not None


def test_13_load_into_a_model_with_other_classes(run_dir):
    from nernfast import PlanError, build_model
    with pytest.raises(PlanError, match=r"linear.weight \(10, 64\) vs \(7, 64\).*number of classes"):
        nernfast.load(run_dir / "nern.safetensors", model=build_model("resnet20", 7, 1))


# ---- 14: evaluate reads nernfast's own artefact -----------------------------------------------------------
def test_14_evaluate_reads_an_artefact(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert evaluate_cli.main(["--checkpoint", str(run_dir / "nern.safetensors"), "--no-ood", "--no-attacks",
                              "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    trained = json.loads((run_dir / "results.json").read_text())
    assert res["model"] == "resnet20" and res["accuracy"] == trained["final"]["accuracy"]
