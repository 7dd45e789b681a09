"""Side by side: Fashion-MNIST's teacher_decoupled phase-2 step with the default teacher (the original with
its mirror images) reusing the original's logits from the feature-map pass, against the same teacher holding
a separate copy of the original (so nothing is reused: the step before this change).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/teacher_reuse.py --rounds 40 --out F.json

The step is the trainer's (nernfast.training.objectives.data_loss, then backward and the optimiser step) with
the shipped settings (``--config fashion_mnist.yaml``: hidden 140, 4 096 rows with gradient, L_fmd 0.1,
precision auto = bf16 + channels_last where native); random images and a randomly initialised ResNet-20
(speed only). Rounds alternate which variant goes first; the figure is the ratio of the medians.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)

    import torch

    from run_bench import numerics_and_load
    from nernfast import numerics
    from nernfast.batching import sample_rows
    from nernfast.config import resolve
    from nernfast.models import Ensemble, build_model, copy_frozen
    from nernfast.nern import NeRN
    from nernfast.optim import build_optimizer
    from nernfast.training.objectives import PhaseNets, ReconTarget, data_loss

    torch.manual_seed(0)
    cfg = resolve("teacher_decoupled", "fashion_mnist.yaml")
    phase = cfg.phase2
    precision = numerics.resolve_precision(cfg.precision, "cpu")
    channels_last = numerics.resolve_channels_last(cfg.channels_last, precision, "cpu")
    autocast = torch.bfloat16 if precision == "bf16" else None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    original = copy_frozen(build_model(cfg.model, 10, 1)).to(memory_format=fmt)
    x = torch.randn(phase.batch_size, 1, 28, 28).contiguous(memory_format=fmt)
    nern0 = NeRN.from_model(original, hidden=cfg.nern.hidden)
    target = ReconTarget(nern0.plan, nern0.plan.weights_of(original), "cpu")
    gen = torch.Generator().manual_seed(0)  # the trainer's draw of the rows carrying gradient (phase.py)
    rows = [sample_rows(phase.weights_batch_method, nern0.plan.num_rows, phase.weights_batch_size, gen, target.norms)
            for _ in range(a.rounds + a.warmup)]

    def variant(teacher_net):
        nern = copy.deepcopy(nern0)
        opt = build_optimizer(nern.predictor.parameters(), phase.optimizer, phase.lr, phase.weight_decay)
        nets = PhaseNets(target, copy_frozen(original), Ensemble([teacher_net], flip=True), features=original)

        def step(i: int) -> float:
            t = time.perf_counter()
            loss, _ = data_loss(nern, phase, nets, rows[i], x, autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t
        return step

    steps = {"separate copy": variant(copy.deepcopy(original)), "reused": variant(original)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(a.warmup + a.rounds):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))
        for k in order:
            dt = steps[k](i)
            if i >= a.warmup:
                times[k].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"case": "fashion-mnist teacher_decoupled phase-2 step, teacher original+flip", "rounds": a.rounds,
           "median_seconds": med, "ratio_separate_over_reused": med["separate copy"] / med["reused"],
           "precision": precision, "channels_last": channels_last, "machine": numerics_and_load()}
    print(f"{res['case']}: separate copy {1e3 * med['separate copy']:.1f} ms, reused {1e3 * med['reused']:.1f} ms "
          f"per step (medians of {a.rounds}); ratio {res['ratio_separate_over_reused']:.3f}; {res['machine']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
