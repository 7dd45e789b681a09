"""Effect of the trainer's precision options (``precision: bf16``, ``channels_last``) on results.

    python benchmarks/precision_effect.py                     # decoupled + teacher_decoupled, embedded digits
    python benchmarks/precision_effect.py --recipes decoupled --set phase2.steps=100

For each recipe: phase 1 (reconstruction, no data: precision does not apply) runs once; phase 2
(distillation, the data-driven phase the options act on) then runs from that same predictor with
the same seed under each setting, keeping its last step (``phase2.select=last``): float32 (the reference), bf16 autocast, bf16 + channels_last,
float32 + channels_last, and float32 with another phase-2 seed (the run-to-run spread, for scale).
Each kept predictor is materialised into the model and evaluated on the test split (digits: 360
images, one image = 0.28 points). Reported per setting against float32: top-1 agreement (share of
test images with the same predicted class) and the accuracy difference with its 95 % interval
(paired: d_i = correct_setting(i) - correct_fp32(i), mean +- 1.96 sd/sqrt(n)), plus phase-2 wall time.
The issue's rule for using bf16: agreement >= 99 % and the interval includes 0.

A comparison is only informative when the float32 run learned something: a run whose test
predictions take one class (or whose accuracy is within 2 points of chance) is marked ``vacuous``,
and the rule is then reported as not established rather than met. As a per-step measure that does
not depend on the run learning, the script also compares the phase-2 gradients themselves: from the
phase-1 predictor, on ``--grad-batches`` training batches, the cosine similarity and the relative
norm difference of the predictor gradient of the phase-2 distillation terms (lambda L_rec left out:
it is computed outside autocast either way) under each setting against float32's.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

SETTINGS = [  # name, precision, channels_last, phase-2 seed offset
    ("float32", "float32", False, 0),
    ("bf16", "bf16", False, 0),
    ("bf16+channels_last", "bf16", True, 0),
    ("float32+channels_last", "float32", True, 0),
    ("float32 (other seed)", "float32", False, 17),
]


@torch.no_grad()
def test_predictions(model: torch.nn.Module, bundle, device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    preds, labels = [], []
    for x, y in bundle.loader("test", 256, shuffle=False, augment=False):
        preds.append(model(x.to(device)).argmax(1).cpu())
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def compare(pred: torch.Tensor, ref_pred: torch.Tensor, y: torch.Tensor) -> dict:
    n = len(y)
    d = (pred == y).double() - (ref_pred == y).double()
    mean = d.mean().item()
    half = 1.96 * d.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return {"agreement": (pred == ref_pred).double().mean().item(), "acc": (pred == y).double().mean().item(),
            "acc_diff": mean, "ci95": [mean - half, mean + half], "n": n,
            "ci_includes_0": mean - half <= 0 <= mean + half}


def gradient_agreement(ctx, nern, target, phase, distill, shell, settings, batches: int, seed: int) -> dict:
    """Per setting: median cosine similarity / relative norm difference of the phase-2 predictor
    gradient against float32's, over the same batches and weight rows."""
    from nernfast.batching import sample_rows
    from nernfast.training.objectives import PhaseNets, data_loss
    from nernfast.training.streams import DatasetStream
    no_recon = dataclasses.replace(phase, recon_weight=0.0)
    stream = DatasetStream(ctx.bundle, phase.batch_size, seed, phase.augment)
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in settings}
    for _ in range(batches):
        x, _ = stream.next()
        idx = sample_rows(phase.weights_batch_method, nern.plan.num_rows, phase.weights_batch_size, gen, target.norms)
        grads = {}
        for name, precision, channels_last, _off in settings:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            xx = x.contiguous(memory_format=fmt)
            src = distill.to(memory_format=fmt)
            nern.predictor.zero_grad(set_to_none=True)
            loss, _ = data_loss(nern, no_recon, PhaseNets(target, shell, src), idx, xx,
                                torch.bfloat16 if precision == "bf16" else None)
            loss.backward()
            grads[name] = torch.cat([p.grad.flatten() for p in nern.predictor.parameters()])
        distill.to(memory_format=torch.contiguous_format)
        ref = grads["float32"]
        for name, g in grads.items():
            cos = torch.nn.functional.cosine_similarity(g, ref, dim=0).item()
            stats[name].append((cos, ((g - ref).norm() / ref.norm()).item()))
    out = {}
    for name, v in stats.items():
        cos = sorted(c for c, _ in v)
        rel = sorted(r for _, r in v)
        out[name] = {"cosine_median": cos[len(cos) // 2], "cosine_min": cos[0],
                     "rel_diff_median": rel[len(rel) // 2], "rel_diff_max": rel[-1], "batches": len(v)}
    return out


def run_recipe(recipe: str, sets: list[str], out: Path, seed: int, grad_batches: int) -> dict:
    from nernfast.config import resolve
    from nernfast.training.context import build_context
    from nernfast.training.recipes import RecipeRunner, new_nern
    from nernfast.training.state import RunState

    # The last step's predictor is compared, so model selection cannot mask (or cause) a difference.
    cfg = resolve(recipe, sets=["phase2.select=last"] + sets)
    cfg.seed = seed
    ctx = build_context(cfg, out / recipe, progress=False)
    runner = RecipeRunner(ctx, RunState(out / recipe / "state.pt", resume=False, enabled=False))
    nern = new_nern(cfg, ctx.original, cfg.seed)
    t0 = time.time()
    runner.phase(nern, ctx.original, cfg.phase1, "phase1", cfg.seed)
    phase1_s = time.time() - t0
    after_phase1 = copy.deepcopy(nern.predictor.state_dict())
    original, teacher = ctx.original, ctx.teacher
    from nernfast.models import copy_frozen
    from nernfast.training.objectives import ReconTarget
    target = ReconTarget(nern.plan, nern.plan.weights_of(original), ctx.device)
    distill = runner.distill_source(cfg.phase2)
    grad_settings = [s for s in SETTINGS if s[3] == 0]  # same seed: same batches and rows
    grads = gradient_agreement(ctx, nern, target, cfg.phase2, distill, copy_frozen(original), grad_settings,
                               grad_batches, cfg.seed + 1) if grad_batches else {}
    for name, g in grads.items():
        print(f"  {recipe:<18} {name:<22} gradient vs float32: cosine median {g['cosine_median']:.6f} "
              f"(min {g['cosine_min']:.6f}), relative difference median {g['rel_diff_median']:.2e}", flush=True)
    nern.predictor.load_state_dict(after_phase1)
    chance = 1.0 / ctx.bundle.num_classes
    rows, ref = [], None
    for name, precision, channels_last, seed_offset in SETTINGS:
        nern.predictor.load_state_dict(after_phase1)
        ctx.precision, ctx.channels_last = precision, channels_last
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ctx.original = original.to(memory_format=fmt)  # as build_context does for channels_last
        ctx.teacher = teacher.to(memory_format=fmt) if teacher is not None else None
        t0 = time.time()
        res = runner.phase(nern, ctx.original, cfg.phase2, f"phase2-{name}", cfg.seed + 1 + seed_offset)
        wall = time.time() - t0
        model = copy_frozen(ctx.original).to(memory_format=torch.contiguous_format)
        nern.materialize_(model)
        pred, y = test_predictions(model, ctx.bundle, ctx.device)
        if ref is None:
            ref = pred
            vacuous = pred.unique().numel() == 1 or abs((pred == y).double().mean().item() - chance) < 0.02
        row = {"setting": name, "precision": precision, "channels_last": channels_last,
               "phase2_seed": cfg.seed + 1 + seed_offset, "kept_step": res["best_step"],
               "val_acc": res.get("val_acc"), "phase2_wall_s": round(wall, 1), **compare(pred, ref, y)}
        rows.append(row)
        print(f"  {recipe:<18} {name:<22} test acc {100 * row['acc']:6.2f} %  agreement {100 * row['agreement']:6.2f} %  "
              f"diff {100 * row['acc_diff']:+.2f} [{100 * row['ci95'][0]:+.2f}, {100 * row['ci95'][1]:+.2f}]  "
              f"kept step {row['kept_step']}  phase 2 {wall:.0f} s", flush=True)
    ctx.original, ctx.teacher = original, teacher
    ctx.logger.close()
    return {"recipe": recipe, "model": cfg.model, "dataset": cfg.dataset, "phase1_steps": cfg.phase1.steps,
            "phase2_steps": cfg.phase2.steps, "phase1_wall_s": round(phase1_s, 1), "overrides": sets,
            "vacuous": vacuous, "settings": rows, "gradients": grads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="decoupled,teacher_decoupled")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides (all recipes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--grad-batches", type=int, default=20, help="batches of the gradient comparison (0: skip)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "precision_effect.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in args.recipes.split(","):
            results.append(run_recipe(recipe, args.set, Path(tmp), args.seed, args.grad_batches))
    verdicts = []
    for r in results:
        for s in r["settings"]:
            if s["precision"] == "bf16":
                ok = s["agreement"] >= 0.99 and s["ci_includes_0"]
                verdict = "not established (the float32 run did not learn)" if r["vacuous"] else \
                    ("allowed" if ok else "NOT allowed")
                verdicts.append({"recipe": r["recipe"], "setting": s["setting"], "rule_met": ok,
                                 "vacuous": r["vacuous"], "verdict": verdict})
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "rule": "bf16 allowed where top-1 agreement with float32 >= 99 % and the 95 % interval of the "
                   "accuracy difference includes 0", "results": results, "verdicts": verdicts}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for v in verdicts:
        print(f"{v['recipe']}: {v['setting']}: {v['verdict']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
