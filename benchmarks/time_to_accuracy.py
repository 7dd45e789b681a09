"""Time to accuracy: what a user waits for, not one step.

    python benchmarks/time_to_accuracy.py                       # the embedded default (digits)
    python benchmarks/time_to_accuracy.py --dataset fashion-mnist --config fashion_mnist.yaml

1. nernfast: ``decoupled`` with the shipped settings (phase 1 not shared with an earlier run, so it
   is timed), through ``nernfast.train.run``. Its time to accuracy is the training wall time (phase 1
   plus phase 2 up to the evaluation point, evaluations included) at the first evaluation whose
   validation accuracy is within ``--within`` (1 pt) of the original's.
2. The reference algorithm (benchmarks/reference_baseline.py: NeRN's joint loss with its CIFAR-10
   weights alpha = beta = 1e-4 and no warm-up, Ranger, every step predicting and swapping in the
   whole network) from the same predictor initialisation and image stream, for ``--budget`` (3) times
   nernfast's time (or nernfast's whole training time when it never got there); its validation
   accuracy is measured every ``--eval-seconds`` of training, those evaluations not counted.

The verdict follows the speed issue's target: met when nernfast reaches the accuracy in at most 1/3
of the time the reference needs, or the reference does not reach it within 3x. Prints one line per
side and the verdict; ``--out`` writes the JSON with the machine beside it.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def first_within(stages: list[dict], target: float) -> tuple[float | None, float, float]:
    """(seconds to the first evaluation at >= target or None, best val acc, total training seconds)."""
    t0, best, hit = 0.0, 0.0, None
    for st in stages:
        for row in st.get("history", []):
            acc = row.get("val_acc")
            if acc is None:
                continue
            best = max(best, acc)
            if hit is None and acc >= target:
                hit = t0 + (row.get("wall_s") or 0.0)
        t0 += st.get("wall_s") or 0.0
    return hit, best, t0


def run_reference(cfg, bundle, original, budget_s: float, eval_seconds: float, target: float, seed: int,
                  device) -> dict:
    import torch

    from nernfast.eval import accuracy
    from nernfast.training.recipes import new_nern
    from nernfast.training.streams import DatasetStream
    from reference_baseline import ReferenceNeRN, encoding_matrix
    nern = new_nern(cfg, original, seed)          # the same initial predictor as nernfast's run
    ref = ReferenceNeRN(original, copy.deepcopy(nern.predictor), nern.plan,
                        encoding_matrix(nern.encoding, nern.coords), freeze_source=False,
                        weights_batch_size=cfg.phase1.weights_batch_size)
    stream = DatasetStream(bundle, cfg.phase2.batch_size, seed, cfg.phase2.augment)
    gen = torch.Generator().manual_seed(seed)
    val = bundle.loader("val", cfg.eval.batch_size, shuffle=False, augment=False)
    trained, next_eval, steps, best, hit, curve = 0.0, eval_seconds, 0, 0.0, None, []
    while trained < budget_s:
        x, _ = stream.next()
        idx = torch.randperm(nern.plan.num_rows, generator=gen)[:cfg.phase1.weights_batch_size]
        t = time.perf_counter()
        ref.step(idx, x.to(device))
        trained += time.perf_counter() - t
        steps += 1
        if trained >= next_eval or trained >= budget_s:
            acc, _ = accuracy(ref.materialize(), val, device)
            best = max(best, acc)
            curve.append({"seconds": round(trained, 2), "step": steps, "val_acc": acc})
            if hit is None and acc >= target:
                hit = trained
            next_eval += eval_seconds
    return {"seconds_to_target": hit, "best_val_acc": best, "steps": steps, "trained_s": trained, "curve": curve}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--config", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--within", type=float, default=0.01, help="target: original val acc minus this (1 pt)")
    p.add_argument("--budget", type=float, default=3.0, help="the reference's time, in multiples of nernfast's")
    p.add_argument("--eval-seconds", type=float, default=20.0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)

    import torch

    from run_bench import numerics_and_load
    from nernfast.checkpoints import load_model_checkpoint
    from nernfast.config import resolve
    from nernfast.data import get_dataset
    from nernfast.eval import accuracy
    from nernfast.models import build_model
    from nernfast.pretrain import ensure_pretrained
    from nernfast.train import run

    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve("decoupled", a.config, ["share_phase1=false", "eval.ood=false", "eval.attacks=false"],
                      dataset=a.dataset, data_root=a.data_root, seed=a.seed, out=str(Path(tmp) / "run"))
        bundle = get_dataset(cfg.dataset, cfg.data_root, seed=0)
        device = torch.device(cfg.device)
        original = load_model_checkpoint(ensure_pretrained(cfg.model, cfg.dataset, data_root=cfg.data_root),
                                         build_model(cfg.model, bundle.num_classes, bundle.in_channels)).eval()
        orig_val, _ = accuracy(original, bundle.loader("val", cfg.eval.batch_size, shuffle=False, augment=False), device)
        target = orig_val - a.within
        res = run(cfg, progress=False)
    ours_hit, ours_best, ours_total = first_within(res["stages"], target)
    budget = a.budget * (ours_hit if ours_hit is not None else ours_total)
    ref = run_reference(cfg, bundle, original, budget, a.eval_seconds, target, a.seed, device)
    # Met: nernfast gets there, and the reference does not within the budget or takes >= budget x as long.
    met = ours_hit is not None and (ref["seconds_to_target"] is None or ours_hit * a.budget <= ref["seconds_to_target"])
    machine = numerics_and_load()
    out = {"dataset": cfg.dataset, "original_val_acc": orig_val, "target_val_acc": target,
           "nernfast": {"seconds_to_target": ours_hit, "best_val_acc": ours_best, "training_s": ours_total},
           "reference": ref, "budget_s": budget, "target_met": met, "machine": machine}
    fmt = lambda s: "not reached" if s is None else f"{s:.0f} s"  # noqa: E731
    print(f"time to val acc >= {100 * target:.2f} % (original {100 * orig_val:.2f} % - {100 * a.within:.0f} pt), "
          f"{cfg.dataset}, {machine['cpu']} {machine['cpu_capability']}, {machine['threads']} threads, "
          f"load {machine['loadavg'][0]:.2f}")
    print(f"  nernfast decoupled (defaults): {fmt(ours_hit)} (best {100 * ours_best:.2f} %, training {ours_total:.0f} s)")
    print(f"  reference algorithm, {budget:.0f} s budget: {fmt(ref['seconds_to_target'])} "
          f"(best {100 * ref['best_val_acc']:.2f} %, {ref['steps']} steps)")
    print(f"  target (nernfast <= 1/{a.budget:g} of the reference's time): {'met' if met else 'MISSED'}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
