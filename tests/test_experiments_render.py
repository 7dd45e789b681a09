"""experiments/ (run outside CI): the result pages render from the committed raw results alone, and every raw
result is what its plan entry runs today."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "fashion-mnist" / "raw"


@pytest.fixture
def experiments(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    yield
    for name in ("fashion_mnist_render", "digits_table", "fashion_mnist", "plain_original", "original_spectrum",
                 "predictor_shape"):
        sys.modules.pop(name, None)


@pytest.mark.skipif(not RAW.is_dir(), reason="no committed Fashion-MNIST raw results")
def test_fashion_mnist_page_states_every_target_with_its_figure(experiments, tmp_path):
    from fashion_mnist_render import render
    page = tmp_path / "fashion-mnist.md"
    render(RAW, tmp_path, page)
    text = page.read_text()
    raw = {p.stem: json.loads(p.read_text()) for p in RAW.glob("*.json")}
    # Every run's test accuracy appears, and every target line says met or missed with its interval.
    for r in raw.values():
        assert f"{100 * r['final']['accuracy']:.2f}" in text
    targets = [ln for ln in text.splitlines() if ln.startswith("- ") and ("**met**" in ln or "**missed**" in ln)]
    comparisons = [ln for ln in targets if not ln.startswith("- progressive")]  # progressive lists its rounds
    assert comparisons and all("[" in ln and "]" in ln for ln in comparisons)
    assert (tmp_path / "plots" / "val_acc_vs_wall.png").stat().st_size > 0


@pytest.mark.skipif(not RAW.is_dir(), reason="no committed Fashion-MNIST raw results")
def test_every_raw_result_is_its_plan_entry_as_it_runs_today(experiments):
    """A raw file's recorded command is the one its plan entry runs (the output directory and the paths' folders
    aside: machines differ), so a row's variant says what ran; a default changed since must rename the earlier
    runs and spell out their settings."""
    import fashion_mnist

    def portable(command: str) -> list[str]:
        args = command.split()
        del args[args.index("--out"):args.index("--out") + 2]
        return [Path(a).name if a.startswith("/") else a for a in args]
    plan = {r.name: r for r in fashion_mnist.plan()}
    for path in sorted(RAW.glob("*.json")):
        run = json.loads(path.read_text())["run"]
        entry = plan.get(path.stem)
        assert entry is not None, f"{path.name} has no plan entry"
        assert (run["name"], run["recipe"], run["seed"], run["original"]) == \
            (entry.name, entry.recipe, entry.seed, entry.original), path.name
        assert portable(run["command"]) == portable("python -m nernfast.train " + " ".join(entry.args())), path.name
        variant = run["group"].removeprefix(f"{run['original']}-").removeprefix(run["recipe"]).strip("-")
        assert variant or not entry.extra, f"{path.name}: a default row whose command sets {entry.extra}"


def test_runs_on_an_original_this_machine_cannot_make_are_not_repeated(experiments):
    from fashion_mnist import Run, unrepeatable
    amd, intel = "AMD EPYC 7B13", "Intel(R) Xeon(R) Processor"
    assert "not kept" in unrepeatable(Run("x-s0", "decoupled", original="pretrain"), amd)
    assert unrepeatable(Run("x-s0", "decoupled", original="plain"), amd) == \
        f"the plain original was made on an Intel CPU and this one is {amd}"
    assert unrepeatable(Run("x-s0", "decoupled", original="plain"), intel) is None
    assert unrepeatable(Run("x-s0", "decoupled", original="plain-epyc"), amd) is None
    assert unrepeatable(Run("x-s0", "decoupled"), intel) is None  # the shipped original: every machine's


def test_digits_table_replaces_only_the_marked_block(experiments, tmp_path, monkeypatch):
    import digits_table
    raw = tmp_path / "raw"
    shutil.copytree(ROOT / "docs" / "digits" / "raw", raw)
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{digits_table.START}\nold table\n{digits_table.END}\nafter\n")
    monkeypatch.setattr(digits_table, "RAW", raw)
    monkeypatch.setattr(digits_table, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["digits_table.py", "--render"])
    assert digits_table.main() == 0
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert text.count("| `teacher_decoupled`") == 3 and "(phase 1 shared)" in text


def test_teacher_rows_name_each_teacher_without_its_checkpoint_paths(experiments):
    from fashion_mnist_render import teacher_name
    ens = {"teacher_source": "ensemble of 2 x resnet20 (seeds 0..1: /c/a.pt, /c/b.pt), averaged with its mirror images"}
    assert teacher_name(ens) == "ensemble of 2 x resnet20, averaged with its mirror images"
    assert teacher_name({"teacher_source": "the original, averaged with its mirror images"}) == \
        "the original, averaged with its mirror images"


def test_weight_average_section_compares_each_run_with_its_raw_weights(experiments):
    from fashion_mnist_render import weight_average

    def run(seed, avg_test, raw_test):
        p2 = {"stage": "phase2-distillation", "best_step": 1800, "val_acc": 0.94, "test_acc": avg_test,
              "raw_best": {"step": 1500, "val_acc": 0.935, "test_acc": raw_test}}
        return {"run": {"seed": seed}, "stages": [{"stage": "phase1-reconstruction"}, p2],
                "environment": {"cpu": "AMD EPYC"}}
    groups = {("shipped", "teacher_decoupled", 0.35, "ema"): [run(0, 0.9330, 0.9320), run(1, 0.9310, 0.9290)],
              ("shipped", "teacher_decoupled", 0.35, ""): [{"run": {"seed": 0}, "stages": [], "environment": {}}]}
    text = "\n".join(weight_average(groups))
    assert "| shipped teacher_decoupled ema | 0 | 1800, 94.00, 93.30 | 1500, 93.50, 93.20 | +0.10 | AMD EPYC |" in text
    assert "| shipped teacher_decoupled ema | 1 |" in text and "+0.20 |" in text
    assert "2 seeds: +0.15 [" in text
    assert weight_average({("shipped", "decoupled", 0.35, ""): groups[("shipped", "teacher_decoupled", 0.35, "")]}) == []


def test_progressive_rounds_show_the_re_estimated_and_inherited_figures(experiments):
    from fashion_mnist_render import progressive_rounds, targets

    def rnd(r, val, test, before=None):
        s = {"stage": f"round{r}-seed0", "round": r, "best_of_round": True, "val_acc": val, "test_acc": test}
        if before:
            s["bn_recalibration"] = {"batches": 40, "val_acc_before": before[0], "test_acc_before": before[1]}
        return s
    recal = {"run": {"seed": 0}, "final": {"accuracy": 0.934}, "stages": [
        rnd(1, 0.940, 0.934, (0.939, 0.933)), rnd(2, 0.941, 0.935, (0.937, 0.931)), rnd(3, 0.9405, 0.930)]}
    recal["stages"][1]["kept"] = True
    plain = {"run": {"seed": 0}, "final": {"accuracy": 0.933},
             "stages": [rnd(1, 0.940, 0.933), rnd(2, 0.937, 0.932), rnd(3, 0.930, 0.927)]}
    groups = {("shipped", "progressive", 1.14, "bnrecal"): [recal], ("shipped", "progressive", 1.14, ""): [plain]}
    text = "\n".join(progressive_rounds(groups))
    assert ("round2-seed0 val 94.10 / test 93.50 (inherited BN statistics: val 93.70 / test 93.10) (kept)" in text)
    assert "(shipped original, default, seed 0)" in text and "(shipped original, bnrecal, seed 0)" in text
    lines = [ln for ln in targets(groups, {"shipped": 0.9347}) if ln.startswith("- progressive")]
    assert lines == ["- progressive: ≥ 3 rounds run and none below round 1: **missed** (rounds' best val "
                     "94.00, 93.70, 93.00; test 93.30, 93.20, 92.70)",
                     "- progressive (bnrecal): ≥ 3 rounds run and none below round 1: **met** (rounds' best val "
                     "94.00, 94.10, 94.05; test 93.40, 93.50, 93.00)"]


def test_progressive_with_several_seeds_is_judged_per_seed_and_on_the_seed_mean(experiments):
    """One seed's round 2 a few images below its round 1 misses for that seed; the row's verdict on the seed
    means of each round still shows whether the rounds fall."""
    from fashion_mnist_render import targets

    def chain(seed, vals, tests):
        return {"run": {"seed": seed}, "final": {"accuracy": tests[0]},
                "stages": [{"stage": f"round{i + 1}-seed0", "round": i + 1, "best_of_round": True, "val_acc": v,
                            "test_acc": t} for i, (v, t) in enumerate(zip(vals, tests))]}
    runs = [chain(0, (0.9400, 0.9395, 0.9410), (0.930, 0.931, 0.932)),
            chain(1, (0.9380, 0.9400, 0.9400), (0.928, 0.930, 0.931))]
    lines = [ln for ln in targets({("shipped", "progressive", 1.14, ""): runs}, {"shipped": 0.93})
             if ln.startswith("- progressive")]
    assert lines == ["- progressive, seed 0: ≥ 3 rounds run and none below round 1: **missed** (rounds' best val "
                     "94.00, 93.95, 94.10; test 93.00, 93.10, 93.20)",
                     "- progressive, seed 1: ≥ 3 rounds run and none below round 1: **met** (rounds' best val "
                     "93.80, 94.00, 94.00; test 92.80, 93.00, 93.10)",
                     "- progressive, mean of 2 seeds: ≥ 3 rounds run and none below round 1: **met** (rounds' best "
                     "val 93.90, 93.97, 94.05; test 92.90, 93.05, 93.15)"]
    runs[1]["stages"][2]["val_acc"] = 0.9300  # the mean of round 3 falls below round 1's
    lines = [ln for ln in targets({("shipped", "progressive", 1.14, ""): runs}, {"shipped": 0.93})
             if ln.startswith("- progressive, mean")]
    assert lines[0].startswith("- progressive, mean of 2 seeds: ≥ 3 rounds run and none below round 1: **missed**")


def test_an_original_without_todays_decoupled_is_judged_with_its_fixed_bn_runs(experiments):
    """Where an original's decoupled ran only with the previous phase 2 (variant fixed-bn), its targets still
    appear, named for what they judge; today's runs are preferred wherever they exist."""
    from fashion_mnist_render import targets

    def run(correct: str) -> dict:
        return {"run": {"seed": 0}, "final": {"accuracy": correct.count("1") / len(correct), "correct": correct},
                "original": {"correct": "1" * 8 + "0" * 2}, "stages": []}
    groups = {("plain", "decoupled", 0.35, "fixed-bn"): [run("1" * 6 + "0" * 4)],
              ("plain", "baseline", 0.35, ""): [run("1" * 4 + "0" * 6)]}
    lines = [ln for ln in targets(groups, {"plain": 0.8}) if ln.startswith("- decoupled")]
    assert lines[0].startswith("- decoupled (fixed-bn) at CR 0.35 ≥ original − 0.5 pt: **missed** (-20.00")
    assert lines[1].startswith("- decoupled (fixed-bn) > baseline, interval excluding 0:")
    groups[("plain", "decoupled", 0.35, "")] = [run("1" * 8 + "0" * 2)]
    lines = [ln for ln in targets(groups, {"plain": 0.8}) if ln.startswith("- decoupled")]
    assert lines[0].startswith("- decoupled at CR 0.35 ≥ original − 0.5 pt: **met** (+0.00")


def test_original_spectrum_table_matches_the_tuning_doc(experiments, capsys):
    """experiments/original_spectrum.py prints the rows docs/fashion-mnist-tuning.md quotes (the shipped originals'
    are the same on every machine; the plain original's only where runs/ holds it)."""
    import original_spectrum
    assert original_spectrum.main() == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| `resnet20_")]
    doc = (ROOT / "docs" / "fashion-mnist-tuning.md").read_text()
    assert len(rows) == 5 and all(r in doc for r in rows)
    assert all(r.endswith("| no | 12 % |") or r.endswith("| no | 13 % |") for r in rows if "fashion-mnist" in r)


def test_every_planned_original_is_one_the_runner_can_make_and_the_renderer_orders(experiments):
    """A plan entry names its original by key: shipped, pretrain or a plain one (fashion_mnist.PLAIN_ORIGINALS,
    whose recipes experiments/plain_original.py has); the renderer orders the originals by its own list."""
    import fashion_mnist
    import plain_original
    from fashion_mnist_render import ORIGINALS
    names = {r.original for r in fashion_mnist.plan()}
    assert names <= {"shipped", "pretrain", *fashion_mnist.PLAIN_ORIGINALS} and names <= set(ORIGINALS)
    assert all(p.recipe in plain_original.EPOCHS for p in fashion_mnist.PLAIN_ORIGINALS.values())


def test_digits_table_says_which_rows_ran_with_other_thread_counts(experiments):
    from digits_table import _threads
    assert _threads({1: ["decoupled (0)"]}) == "1 thread(s)"
    assert _threads({2: ["recon_only (0)"], 1: ["decoupled (0)", "progressive (0)"]}) == \
        "1 thread(s) for decoupled (0), progressive (0); 2 thread(s) for recon_only (0)"


def test_targets_judge_todays_recipe_first_and_name_an_earlier_one(experiments):
    """A target reads the recipe's default runs; an original without them is judged with the recipe of its time,
    whose variant the line names (recon_only and baseline before bn_recalibration_end: inherited-bn; before
    bn_score_every_eval: sel-inherited-bn; before 16 encoding levels: l40)."""
    from fashion_mnist_render import targets

    def run(correct: int, cr: float = 0.35) -> dict:
        return {"final": {"correct": "1" * correct + "0" * (100 - correct)}, "original": {"correct": "1" * 100},
                "sizes": {"compression_ratio": cr}, "run": {"seed": 0}, "stages": []}
    groups = {("shipped", "recon_only", 1.14, "h280-inherited-bn"): [run(90, 1.14)],
              ("shipped", "recon_only", 1.14, "h280"): [run(100, 1.14)],
              ("shipped", "decoupled", 0.35, ""): [run(99)],
              ("shipped", "baseline", 0.35, "inherited-bn"): [run(95)]}
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only at CR 1.14 ≥ original − 0.1 pt: **met** (+0.00" in text
    assert "- decoupled > baseline (inherited-bn), interval excluding 0: **met**" in text
    del groups[("shipped", "recon_only", 1.14, "h280")]
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only (inherited-bn) at CR 1.14 ≥ original − 0.1 pt: **missed** (-10.00" in text
    # the newest earlier recipe first (sel-inherited-bn: before session 20; inherited-bn: before 19)
    groups[("shipped", "recon_only", 1.14, "h280-sel-inherited-bn")] = [run(98, 1.14)]
    groups[("shipped", "baseline", 0.35, "sel-inherited-bn")] = [run(97)]
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only (sel-inherited-bn) at CR 1.14 ≥ original − 0.1 pt: **missed** (-2.00" in text
    assert "- decoupled > baseline (sel-inherited-bn), interval excluding 0: **missed** (+2.00" in text
    # since session 23 the predictor has 16 encoding levels: the 40-level runs are the newest earlier recipe (l40)
    groups = {("shipped", "recon_only", 1.14, "h280-l40"): [run(100, 1.14)],
              ("shipped", "recon_only", 1.14, "h280-sel-inherited-bn"): [run(98, 1.14)],
              ("shipped", "decoupled", 0.35, "l40"): [run(99)], ("shipped", "baseline", 0.35, "l40"): [run(95)],
              ("shipped", "baseline", 0.35, "sel-inherited-bn"): [run(97)]}
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only (l40) at CR 1.14 ≥ original − 0.1 pt: **met** (+0.00" in text
    assert "- decoupled (l40) > baseline (l40), interval excluding 0: **met**" in text
    assert "gain" not in text  # no run of today's shape to compare
    groups[("shipped", "recon_only", 1.14, "h302")] = [run(97, 1.14)]
    groups[("shipped", "decoupled", 0.35, "")] = [run(100)]
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only at CR 1.14 ≥ original − 0.1 pt: **missed** (-3.00" in text
    assert "- decoupled > baseline (l40), interval excluding 0: **met**" in text
    assert "- decoupled − decoupled (l40): the 16-level predictor's gain (reported): (+1.00" in text
    # two lengths of today's recipe at CR > 1: each judged, named with its training time (the budget is 30 min)
    groups[("shipped", "recon_only", 1.14, "h302-30k")] = [{**run(100, 1.14), "stages": [{"wall_s": 1800.0}]}]
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert "- recon_only (h302, 0 min training) at CR 1.14 ≥ original − 0.1 pt: **missed** (-3.00" in text
    assert "- recon_only (h302-30k, 30 min training) at CR 1.14 ≥ original − 0.1 pt: **met** (+0.00" in text
    # a run on a machine without native bf16 (float32 there, slower) says so beside its time
    avx2 = {"cpu": "AMD EPYC", "cpu_capability": "AVX2", "native_bf16": False, "precision": "float32"}
    groups[("shipped", "recon_only", 1.14, "h302-20k")] = [{**run(100, 1.14), "stages": [{"wall_s": 3600.0}],
                                                            "environment": avx2}]
    text = "\n".join(targets(groups, {"shipped": 1.0}))
    assert ("- recon_only (h302-20k, 60 min training, on an AMD EPYC with AVX2, float32) at CR 1.14 ≥ original "
            "− 0.1 pt: **met**") in text


def test_machines_line_names_the_runs_of_a_machine_that_ran_few(experiments):
    from fashion_mnist_render import machines
    env = {"cpu": "AMD EPYC", "cpu_capability": "AVX512", "native_bf16": True, "torch": "2.14.1"}
    raw = {f"shipped-decoupled-s{s}": {"environment": env, "run": {"name": f"shipped-decoupled-s{s}",
                                                                    "original": "shipped"}} for s in range(4)}
    raw["shipped-recon_only-s0"] = {"environment": {**env, "cpu_capability": "AVX2", "native_bf16": False},
                                    "run": {"name": "shipped-recon_only-s0", "original": "shipped"}}
    line = machines(raw)
    assert "native bf16: True), torch 2.14.1 for the shipped runs" in line
    assert "native bf16: False), torch 2.14.1 for `shipped-recon_only-s0`" in line


def test_predictor_shapes_spend_the_default_predictors_budget(experiments):
    """experiments/predictor_shape.py compares shapes at equal size: each within 1 % of the default's parameters,
    and each command trains what it names (the shape's overrides, decoupled's phase-1 length)."""
    from predictor_shape import PHASE1_STEPS, SHAPES
    from nernfast.config import resolve
    from nernfast.encoding import BasicEncoding
    from nernfast.predictor import Predictor
    cfg = resolve("decoupled", "fashion_mnist.yaml")
    assert PHASE1_STEPS == cfg.phase1.steps

    def size(hidden: int, levels: int, blocks: int) -> int:
        return Predictor(BasicEncoding(levels).out_features, hidden, 3, blocks).num_parameters()
    default = size(cfg.nern.hidden, cfg.nern.levels, cfg.nern.num_blocks)
    assert any((s.hidden, s.levels, s.num_blocks) == (cfg.nern.hidden, cfg.nern.levels, cfg.nern.num_blocks)
               for s in SHAPES)
    for s in SHAPES:
        assert abs(size(s.hidden, s.levels, s.num_blocks) / default - 1) <= 0.01, s
        args = " ".join(s.args())
        assert f"--hidden {s.hidden}" in args and f"nern.levels={s.levels}" in args
        assert f"nern.num_blocks={s.num_blocks}" in args and f"phase1.steps={PHASE1_STEPS}" in args
