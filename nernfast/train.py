"""``python -m nernfast.train --recipe R``: train a NeRN predictor for a model with one of six recipes.

With no other argument every recipe runs on the embedded default (scikit-learn digits, ResNet-20,
a larger ResNet teacher), pretraining the original and the teacher the first time (cached).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import numerics
from .config import RECIPES, RunConfig, resolve, to_dict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nernfast.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", choices=RECIPES, help="training recipe (default: teacher_decoupled)")
    p.add_argument("--model", help="architecture to compress, e.g. resnet20, resnet56, resnet20b, resnet18")
    p.add_argument("--dataset", help="digits (embedded), mnist, fashion-mnist, kmnist, cifar10, cifar100, stl10, imagenet")
    p.add_argument("--data-root", help="directory holding the dataset files (not needed for digits)")
    p.add_argument("--original", help="the trained model to compress: a state_dict checkpoint or a nernfast "
                                      "artefact (e.g. to continue progressively from another run); default: "
                                      "pretrain --model on --dataset here (cached)")
    p.add_argument("--teacher", help="teacher for distillation as NAME or NAME:CKPT (default per dataset, "
                                     "pretrained here and cached)")
    p.add_argument("--hidden", type=int, help="predictor hidden width (the paper uses 120-1372); "
                                             "the same as --set nern.hidden=N, which wins over it")
    p.add_argument("--config", help="YAML config file (a shipped name such as cifar10_resnet20.yaml works too)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set phase2.lr=1e-4 --set nern.permutation=crossfilter")
    p.add_argument("--out", help="output directory (default: runs/<recipe>-<dataset>-<model>)")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help="seed for predictor init, weight batches and data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (without it, an "
                                                           "existing run is refused)")
    p.add_argument("--init-from", help="initialise the predictor from a nernfast artefact or a public NeRN "
                                       "predictor state_dict (same hidden size and encoding)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling an --original/--teacher checkpoint that holds Python objects (runs code "
                        "from the file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", default="auto",
                   help="torch CPU threads: N, or auto (one per CPU idle at start; default; see nernfast.cli.set_threads)")
    p.add_argument("--eval", choices=("quick", "full"), dest="eval_mode",
                   help="final evaluation: quick = clean accuracy only, full = + attacks and OOD (default: full)")
    return p


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.2f}" if pct else f"{v:.4g}"
    return str(v)


def result_table(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    rows = [("original", results["original"].get("accuracy"), None, results["original"].get("accuracy"), None, None)]
    if results.get("teacher"):
        rows.append(("teacher", results["teacher"].get("accuracy"), None, results["teacher"].get("accuracy"), None, None))
    for s in results["stages"]:
        name = s["stage"] + (" (kept)" if s.get("kept") else "") + (" (stopped)" if s.get("stopped_here") else "")
        rows.append((name, None, s.get("val_acc"), s.get("test_acc"), s.get("recon_l2"), s.get("best_step")))
    head = f"{'stage':<34} {'val acc %':>9} {'test acc %':>10} {'recon L2':>10} {'kept step':>9}"
    lines = [head, "-" * len(head)]
    for name, _, val, test, rec, step in rows:
        lines.append(f"{name:<34} {_fmt(val, True):>9} {_fmt(test, True):>10} {_fmt(rec):>10} {_fmt(step):>9}")
    f = results["final"]
    lines.append("-" * len(head))
    lines.append(f"final: test acc {_fmt(f.get('accuracy'), True)} % (original {_fmt(results['original'].get('accuracy'), True)} %)"
                 + "".join(f", {k} {_fmt(v, True)} %" for k, v in f.items() if k.endswith("_acc") and isinstance(v, float)))
    # Sizes in MiB (2**20 bytes, fp32 for the parameter counts) and the artefact in bytes: the units computed.
    lines.append(f"predictor {sizes['predictor_params']:,} params ({sizes['predictor_mb']:.3f} MiB fp32), predicted "
                 f"original weights {sizes['predicted_params']:,} ({sizes['predicted_mb']:.3f} MiB), "
                 f"CR {sizes['compression_ratio']:.3f}; artefact {sizes.get('artefact_bytes', 0):,} bytes on disk "
                 f"(permutation and BN/FC included)")
    return "\n".join(lines)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of nernfast.eval.evaluate_model's output."""
    keep = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            keep[k] = v
    return keep


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (one line on stderr names the problem and the fix), 3 a phase
    diverged (nernfast.cli; docs/errors.md)."""
    from .cli import EXIT_DIVERGED, fail, set_threads, user_errors
    from .training.phase import PhaseDiverged
    args = build_parser().parse_args(argv)
    threads_before = torch.get_num_threads()  # restored below: main() also runs inside other programs (tests)
    try:
        set_threads(args.threads)
        cfg = resolve(args.recipe, args.config, args.set, model=args.model, dataset=args.dataset,
                      data_root=args.data_root, original=args.original, teacher=args.teacher,
                      seed=args.seed, device=args.device, out=args.out, init_from=args.init_from,
                      nern={"hidden": args.hidden} if args.hidden is not None else None,
                      # --eval maps onto EvalConfig's own switches
                      eval={"ood": args.eval_mode == "full", "attacks": args.eval_mode == "full"}
                      if args.eval_mode is not None else None)
        run(cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
            trust_pickle=args.trust_pickle)
    except PhaseDiverged as e:
        return fail(e, EXIT_DIVERGED)
    except user_errors() as e:
        return fail(e)
    finally:
        torch.set_num_threads(threads_before)
    return 0


def run(cfg: RunConfig, resume: bool = False, progress: bool = True, overwrite: bool = False,
        trust_pickle: bool = False) -> dict[str, Any]:
    """Run a resolved config end to end; returns (and writes) the results.

    ``--out`` is checked before any work (nernfast.training.outdir): an existing run is continued
    only with ``resume`` and replaced only with ``overwrite``. Raises PhaseDiverged (carrying the
    results) after writing the outputs when a phase's loss became NaN/Inf."""
    from .artefact import save_artefact
    from .checkpoints import write_text_atomic
    from .config_checks import check
    from .eval import evaluate_cached, evaluate_model
    from .training.context import build_context
    from .training.outdir import check_out, start_out
    from .training.phase import PhaseDiverged
    from .training.recipes import RecipeRunner
    from .training.state import RunState

    check(cfg)  # resolve checks too; this covers configs changed in code since
    if "LOCAL_RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    out = Path(cfg.out or f"runs/{cfg.recipe}-{cfg.dataset}-{cfg.model}")
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    if rank0:
        check_out(out, cfg, resume, overwrite)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    ctx = build_context(cfg, out, progress, trust_pickle)
    if rank0:
        start_out(out, cfg, overwrite)
    state = RunState(out / "train_state.pt", resume, enabled=rank0)
    produced = RecipeRunner(ctx, state).run()
    nern = produced.nern
    ev = cfg.eval
    ekw = dict(device=ctx.device, split="test", batch_size=ev.batch_size, fgsm_eps=ev.fgsm_eps,
               ifgsm_eps=ev.ifgsm_eps, ifgsm_steps=ev.ifgsm_steps, ood=ev.ood, attacks=ev.attacks,
               ood_root=cfg.data_root)
    final_model = produced.decoded()

    def say(who: str):
        return lambda line: ctx.logger.status(f"evaluating {who}: {line}")
    # The original and the teacher are the same from run to run: their evaluations are cached.
    results: dict[str, Any] = {
        "recipe": cfg.recipe, "model": cfg.model, "dataset": cfg.dataset,
        "original_source": ctx.original_source, "teacher_source": ctx.teacher_source,
        "original": evaluate_cached(ctx.original, ctx.bundle, log=say("original"), **ekw),
        "teacher": evaluate_cached(ctx.teacher, ctx.bundle, log=say("teacher"), **{**ekw, "ood": False, "attacks": False})
        if ctx.teacher is not None else None,
        "teacher_check": ctx.teacher_check,
        "original_check": ctx.original_check,
        "final": evaluate_model(final_model, ctx.bundle, log=say("final model"), **ekw),
        "stages": [{k: v for k, v in s.items() if k not in ("predictor", "bn_buffers", "own_bn_buffers")}
                   for s in produced.stages],
        "sizes": nern.size_report(),
        "config": to_dict(cfg),
        "environment": {"torch": str(torch.__version__), "python": platform.python_version(),
                        "machine": platform.machine(), "cpu": numerics.cpu_name(),
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "native_bf16": numerics.native_bf16(), "precision": ctx.precision,
                        "channels_last": ctx.channels_last, "device": str(ctx.device),
                        "threads": torch.get_num_threads()},
        "wall_seconds": None,
        "diverged": produced.diverged,
    }
    if rank0:
        art = save_artefact(out / "nern.safetensors", nern, produced.model, ctx.architecture, to_dict(cfg),
                            {"final": _summary(results["final"]), "original": _summary(results["original"])})
        results["sizes"]["artefact_bytes"] = art.stat().st_size
        results["artefact"] = str(art)
        results["wall_seconds"] = round(time.time() - t0, 1)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2, default=float))
        print(result_table(results))
        print(f"wrote {out / 'results.json'} and {art}")
    ctx.logger.close()
    if produced.diverged:
        raise PhaseDiverged(f"{produced.diverged} The outputs in {out} hold that predictor.", results)
    return results


if __name__ == "__main__":
    sys.exit(main())
