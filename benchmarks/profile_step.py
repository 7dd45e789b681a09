"""Where a data-driven (phase-2) step's time goes: ``torch.profiler`` over one evaluation interval of
the shipped decoupled recipe's phase 2 (so the interval's validation pass is counted, amortised).

    python benchmarks/profile_step.py --dataset digits
    python benchmarks/profile_step.py --dataset fashion-mnist --config fashion_mnist.yaml

Prints the wall time per step and the ops that take the most self CPU time, grouped into what they
belong to (the CNN's convolutions, BatchNorm, the predictor's matmuls, the optimiser, ...), and
writes the table as JSON with the machine (CPU capability, threads, load average) beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Ops by what they belong to (first match wins); the rest is "other".
GROUPS = [
    ("conv forward", ("convolution", "conv2d", "mkldnn_convolution", "_convolution")),
    ("conv backward", ("convolution_backward",)),
    ("batch norm", ("batch_norm", "native_batch_norm")),
    ("predictor / FC matmuls", ("addmm", "aten::mm", "aten::bmm", "linear", "matmul")),
    ("encoding sin/cos", ("aten::sin", "aten::cos")),
    ("weight scatter / copies", ("nernfast::", "index", "scatter", "copy_", "aten::cat", "clone", "contiguous",
                                 "to_copy", "aten::to")),
    ("profiler's own step marker", ("ProfilerStep",)),
    ("elementwise + activations", ("relu", "clamp", "threshold", "aten::add", "aten::mul", "aten::sub", "aten::div",
                                   "where", "aten::pow", "aten::exp", "aten::log", "softmax", "sum", "mean")),
    ("optimiser", ("adam", "foreach", "lerp", "addcdiv", "addcmul", "sqrt")),
    ("allocation", ("empty", "zeros", "fill_", "resize")),
]


def group_of(name: str) -> str:
    if name.startswith("aten::convolution_backward") or "convolution_backward" in name:
        return "conv backward"
    for label, keys in GROUPS:
        if any(k in name for k in keys):
            return label
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--config", default=None, help="a shipped config name or YAML path (default: the defaults)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--recipe", default="decoupled")
    p.add_argument("--set", action="append", default=[], help="config overrides, e.g. precision=float32")
    p.add_argument("--skip", type=int, default=10, help="phase-2 steps before the profiled window")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    a = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from run_bench import numerics_and_load
    from nernfast.config import resolve
    from nernfast.train import run
    from nernfast.training import logger as run_logger

    base = resolve(a.recipe, a.config, a.set, dataset=a.dataset, data_root=a.data_root)
    distill = base.phase2
    window = distill.eval_every              # one evaluation interval: its validation pass included
    steps = a.skip + window
    sets = a.set + ["eval.ood=false", "eval.attacks=false", f"phase2.steps={steps}", "phase2.warmup_steps=0",
                    "phase2.patience=0", "phase1.steps=1"]

    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=a.skip, warmup=0, active=window, repeat=1))
    times: list[float] = []
    real_progress = run_logger.RunLogger.progress

    def progress(self, total: int, initial: int = 0, desc: str = ""):
        bar = real_progress(self, total, initial, desc)
        if not desc.startswith("phase2"):
            return bar
        update = bar.update

        def step(n: int = 1):  # one optimiser step of the profiled phase has ended
            times.append(time.perf_counter())
            prof.step()
            return update(n)
        bar.update = step
        return bar

    run_logger.RunLogger.progress = progress
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(a.recipe, a.config, sets, dataset=a.dataset, data_root=a.data_root, out=str(Path(tmp) / "run"))
        prof.start()
        try:
            run(cfg, progress=False)
        finally:
            prof.stop()
            run_logger.RunLogger.progress = real_progress
    # times[i] is taken as step i+1 ends (its evaluation, at the window's last step, comes after it)
    span = times[a.skip + window - 1] - times[a.skip - 1]
    per_step = span / window
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    groups: dict[str, float] = {}
    for e in events:
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    machine = numerics_and_load()
    res = {"dataset": a.dataset, "recipe": a.recipe, "phase": "phase2", "window_steps": window,
           "eval_every": distill.eval_every, "seconds_per_step": per_step,
           "groups": {k: v / total for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
           "top_ops": [{"op": e.key, "self_cpu_share": e.self_cpu_time_total / total, "calls_per_step": e.count / window}
                       for e in top], "machine": machine, "sets": sets}
    print(f"{a.dataset} {a.recipe} phase 2: {per_step * 1e3:.1f} ms per step over {window} steps "
          f"(one validation pass included), {machine}")
    for k, v in res["groups"].items():
        print(f"  {k:28s} {100 * v:5.1f} %")
    print("  top ops (self CPU):")
    for t in res["top_ops"]:
        print(f"    {t['op']:40s} {100 * t['self_cpu_share']:5.1f} %  {t['calls_per_step']:.1f} calls/step")
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
