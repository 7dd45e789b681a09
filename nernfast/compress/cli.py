"""``python -m nernfast.compress RUN_OR_ARTEFACT --out FILE [--bits 8|4 | --step 0.04]``: the compact artefact.

Reads a trained artefact (or a run directory holding ``nern.safetensors``), fine-tunes its
predictor through the quantiser for ``--steps`` steps (distillation from the artefact's own fp32
network, kept by validation accuracy; ``--steps 0``: plain post-training quantisation), re-estimates
the BN statistics with the quantised predictor before and after it (``--bn-batches``; kept only
where validation accuracy rises: nernfast.bn_stats), chooses
the BN/FC precision (``--rest auto``: fp16 when it does not lower the validation accuracy, else
fp32), writes the compact artefact atomically (never over an existing file without
``--overwrite``; with ``--max-bytes N`` and ``--step``, the finest steps whose whole file fits N
bytes: nernfast.compress.budget), and prints the bytes of every part and the test accuracy before and after,
the latter measured on the file as written (decoded by ``nernfast.load``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..artefact import ArtefactError, artefact_bytes, load, load_nern, save_artefact
from ..codec.format2 import REST, Scheme
from . import file_parts, parts_table, split_metrics, summary
from .budget import fit_steps, scaled

# --max-bytes: bytes held back at the first fit for the metadata the fine-tune adds (its results: ~130
# bytes coded on the Fashion-MNIST artefacts) and the fine-tune's drift of the level histograms
MARGIN = 256
FP16_MAX = 60000.0  # BN/FC values beyond this stay fp32 (fp16's largest finite value is 65504)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nernfast.compress", description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a nernfast artefact, or a run directory holding nern.safetensors")
    p.add_argument("--out", required=True, help="the compact artefact to write")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--bits", type=int, choices=range(2, 9), metavar="{8,4,...}",  # None: 8 (a default of 8
                   # would hide "--bits 8 --step ..." from argparse's conflict check)
                   help="predictor weights: 8 (int8 per output channel) or 2-7 (group-wise, e.g. 4); default 8")
    q.add_argument("--step", type=float, metavar="REL",
                   help="instead of --bits: one uniform step per weight matrix, REL times its RMS, levels "
                        "entropy-coded (ANS); 0.04 is about int8's error in fewer bytes")
    p.add_argument("--per-layer", action="store_true",
                   help="with --step: one step per predictor layer, sized by each layer's measured sensitivity "
                        "(validation loss) at the bytes of the shared step (nernfast.compress.allocate)")
    p.add_argument("--max-bytes", type=int, metavar="N",
                   help="with --step: scale the steps (all by one factor) to the finest whose whole file, header "
                        "and checksum included, is at most N bytes")
    p.add_argument("--group", type=int, default=64, help="input weights per scale below 8 bits (default 64)")
    p.add_argument("--rest", choices=("auto",) + REST, default="auto",
                   help="precision of BN/FC and unpredicted tensors (default auto: fp16 where the validation "
                        "accuracy does not drop, else fp32)")
    # Measured on digits/ResNet-20/H140, int6 (docs/compression.md, "Fine-tune settings"): 5e-5 collapsed
    # the network within 50 steps on 2 of 3 seeds of the current defaults' artefacts (kept: PTQ); 1e-5
    # improved on PTQ on all three (97.21 / 96.10 / 98.05 % test).
    p.add_argument("--steps", type=int, default=400, help="quantisation-aware distillation steps (0: PTQ only)")
    p.add_argument("--lr", type=float, default=1e-5, help="fine-tune learning rate (Adam; default 1e-5)")
    p.add_argument("--distill-from", choices=("artefact", "teacher"), default="artefact",
                   help="the fine-tune's KD source: the fp32 artefact's own network (default; needs only the "
                        "data) or the teacher its run was trained with (its config's teacher and original)")
    p.add_argument("--fmd-weight", type=float, default=0.0,
                   help="weight of the fine-tune's feature-map term toward the KD source's block outputs (the "
                        "phase-2 L_fmd; default 0)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the fine-tuned weights (this decay per step) and "
                        "select among its evaluations; the raw weights' kept step and accuracy are reported "
                        "beside it (default 0: off)")
    p.add_argument("--bn-batches", type=int, default=50,
                   help="training batches to re-estimate the BN statistics with the quantised predictor, before "
                        "and after the fine-tune, each kept only if validation accuracy rises (0: keep the stored; "
                        "default 50)")
    p.add_argument("--eval-every", type=int, default=50, help="validation points of the fine-tune (default 50)")
    p.add_argument("--dataset", help="dataset for the fine-tune and the accuracies (default: the artefact's)")
    p.add_argument("--data-root", help="directory holding the dataset (default: the artefact's run config)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", help="also write the sizes and accuracies here as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def resolve_source(source: str) -> Path:
    p = Path(source)
    if p.is_dir():
        p = p / "nern.safetensors"
    if not p.exists():
        raise ArtefactError(f"{source}: no artefact there; pass a nernfast artefact or a run directory")
    return p


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing file without --overwrite, a directory, an unwritable place."""
    if out.is_dir():
        raise ArtefactError(f"--out {out} is a directory; name the file to write")
    if out.exists() and not overwrite:
        raise ArtefactError(f"--out {out} exists; pass another path or --overwrite to replace it")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ArtefactError(f"--out {out}: {parent} is not writable; choose another output path")


def _accuracy(model: torch.nn.Module, bundle: Any, split: str, device: torch.device) -> float:
    return split_metrics(model, bundle, split, device)[0]


def choose_rest(nern: Any, model: torch.nn.Module, bundle: Any, device: torch.device) -> tuple[str, dict]:
    """fp16 for BN/FC when the validation accuracy with fp16-rounded BN/FC is not lower (and no
    value overflows fp16), else fp32; returns the choice and what was measured."""
    ref = copy.deepcopy(model)
    nern.materialize_(ref)
    half = copy.deepcopy(ref)
    predicted = {f"{n}.weight" for n in nern.plan.names}
    with torch.no_grad():
        for k, v in half.state_dict().items():
            if k not in predicted and v.is_floating_point():
                if v.abs().max() > FP16_MAX:
                    return "fp32", {"reason": f"{k} exceeds the fp16 range"}
                v.copy_(v.half().float())
    a32, a16 = _accuracy(ref, bundle, "val", device), _accuracy(half, bundle, "val", device)
    return ("fp16" if a16 >= a32 else "fp32"), {"val_acc_fp32_rest": a32, "val_acc_fp16_rest": a16}


def better_bn(qnern: Any, current: torch.nn.Module, bundle: Any, args: argparse.Namespace,
              device: torch.device) -> tuple[torch.nn.Module, dict]:
    """``current``'s BN statistics or ones re-estimated with the quantised ``qnern``, whichever
    gives the higher validation accuracy (ties keep ``current``); returns it and what was measured."""
    from ..bn_stats import recalibrated
    cand = recalibrated(qnern, current, bundle, args.bn_batches, device, args.seed)
    stored = copy.deepcopy(current).to(device)
    qnern.materialize_(stored)
    a_stored, a_new = _accuracy(stored, bundle, "val", device), _accuracy(cand, bundle, "val", device)
    kept = a_new > a_stored
    return (cand if kept else current), {"val_acc_stored": a_stored, "val_acc_reestimated": a_new,
                                         "kept": "re-estimated" if kept else "stored"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..data import get_dataset
    from .qat import finetune
    src, out = resolve_source(args.source), Path(args.out)
    check_output(out, args.overwrite)
    if args.steps < 0:
        raise ValueError(f"--steps {args.steps}: must be >= 0 (0: quantise without fine-tuning)")
    if args.fmd_weight < 0:
        raise ValueError(f"--fmd-weight {args.fmd_weight}: must be >= 0")
    if not 0 <= args.ema < 1:
        raise ValueError(f"--ema {args.ema}: must be in [0, 1) (0: no average)")
    if args.bn_batches < 0:
        raise ValueError(f"--bn-batches {args.bn_batches}: must be >= 0 (0: keep the stored BN statistics)")
    weights = weight_scheme(args)  # a bad --step fails here, before any work
    if args.per_layer and args.step is None:
        raise ValueError("--per-layer sizes the steps of --step; pass --step REL as well")
    if args.max_bytes is not None and (args.step is None or args.max_bytes <= 0):
        raise ValueError(f"--max-bytes {args.max_bytes}: pass a positive byte count together with --step REL "
                         "(the budget scales the entropy-coded steps)")
    device = torch.device(args.device)
    nern, model, meta = load_nern(src, device=device)
    cfg = meta.get("config") or {}
    dataset = args.dataset or cfg.get("dataset")
    if not dataset:
        raise ArtefactError(f"{src} does not name its dataset; pass --dataset")
    bundle = get_dataset(dataset, args.data_root or cfg.get("data_root"), seed=0)
    t0 = time.perf_counter()
    before = _accuracy(load(src, device=device), bundle, "test", device)
    allocation = None
    if args.per_layer:
        from .allocate import allocate_steps
        weights, allocation = allocate_steps(nern, model, bundle, args.step, device, seed=args.seed)
    budget = None
    if args.max_bytes:  # first fit, on the fp32 weights; the fine-tune's metadata still to come gets a margin
        known = dict(meta.get("metrics") or {}, compress={"source": str(src), "scheme": asdict(weights),
                                                          "step_allocation": allocation})
        size = _sizer(nern, model, meta, args.rest if args.rest != "auto" else "fp16", known)
        factor, fitted = fit_steps(size, weights, args.max_bytes - MARGIN)
        weights = scaled(weights, factor)
        budget = {"max_bytes": args.max_bytes, "margin": MARGIN, "factor": factor, "bytes_before_finetune": fitted}
    tune, student, bn_info = None, model, {}
    if args.bn_batches:
        student, bn_info["before_finetune"] = better_bn(_quantized_copy(nern, weights), student, bundle, args, device)
    if args.steps:
        distill = run_teacher(cfg, bundle, device) if args.distill_from == "teacher" else None
        tune = finetune(nern, model, bundle, weights, args.steps, args.lr, args.seed, device,
                        progress=not args.no_progress, eval_every=args.eval_every, student=student, distill=distill,
                        fmd_weight=args.fmd_weight, ema_decay=args.ema)
    qnern = _quantized_copy(nern, weights)  # the predictor as the file will decode it
    if args.steps and args.bn_batches:
        student, bn_info["after_finetune"] = better_bn(qnern, student, bundle, args, device)
    rest, rest_info = (args.rest, {}) if args.rest != "auto" else choose_rest(qnern, student, bundle, device)
    scheme = replace(weights, rest=rest)
    info = {"source": str(src), "scheme": None, "max_bytes": budget,
            "qat_steps": args.steps, "qat_lr": args.lr, "qat_distill_from": args.distill_from,
            "qat_fmd_weight": args.fmd_weight, "qat_ema": args.ema,
            "qat_raw_best": tune and tune.get("raw_best"),
            "qat_kept_step": tune and tune["best_step"], "qat_val_acc": tune and tune.get("val_acc"),
            "bn_batches": args.bn_batches, "bn_reestimation": bn_info, "step_allocation": allocation,
            "rest_choice": rest_info, "test_acc_before": before}
    # the file keeps what made it; the fine-tune's curve (~0.4 kB coded) goes to --json only
    metrics = dict(meta.get("metrics") or {}, compress=info)
    if budget is not None:  # second fit, on the written form: only coarser (the fine-tune learned this grid)
        scheme = _refit(nern, student, meta, metrics, scheme, budget)
    info["scheme"] = asdict(scheme)
    save_artefact(out, nern.cpu(), student.cpu(), meta.get("architecture"), cfg, metrics, scheme=scheme,
                  overwrite=args.overwrite)
    after = _accuracy(load(out, device=device), bundle, "test", device)
    sizes = file_parts(out)
    conv_bytes = nern.plan.numel * 4
    res = {**info, "qat_history": [[h["step"], h.get("val_acc")] for h in tune["history"]] if tune else [],
           "out": str(out), "test_acc_after": after, "sizes": summary(sizes), "conv_fp32_bytes": conv_bytes,
           "source_bytes": src.stat().st_size, "seconds": round(time.perf_counter() - t0, 1)}
    print(parts_table(sizes, conv_bytes))
    print(f"test accuracy: {100 * before:.2f} % before (fp32 artefact, {src.stat().st_size:,} bytes), "
          f"{100 * after:.2f} % after ({_label(scheme)}, BN/FC {rest}; fine-tune kept step "
          f"{res['qat_kept_step'] if tune else '-'} of {args.steps})")
    if budget is not None:
        print(f"--max-bytes {budget['max_bytes']:,}: steps x{budget['factor'] * budget.get('refit_factor', 1.0):.3g} "
              f"of --step's; the file holds {sum(sizes.values()):,} bytes")
    print(f"wrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    return res


def _sizer(nern: Any, model: torch.nn.Module, meta: dict[str, Any], rest: str, metrics: dict[str, Any]) -> Any:
    """The whole file's bytes under a scheme (BN/FC in ``rest``, ``metrics`` read at each call), as
    ``save_artefact`` would write it."""
    def size(scheme: Scheme) -> int:
        return len(artefact_bytes(nern, model, meta.get("architecture"), meta.get("config") or {}, metrics,
                                  replace(scheme, rest=rest)))
    return size


def _refit(nern: Any, model: torch.nn.Module, meta: dict[str, Any], metrics: dict[str, Any], scheme: Scheme,
           budget: dict[str, Any]) -> Scheme:
    """``scheme`` coarsened (if at all) until the file with ``metrics`` fits ``budget``; records it there."""
    info = metrics["compress"]
    size = _sizer(nern, model, meta, scheme.rest, metrics)
    for _ in range(3):  # the metadata holds the steps it sizes: settle them (one pass in practice)
        info["scheme"] = asdict(scheme)
        n = size(scheme)
        if n <= budget["max_bytes"]:  # (the file keeps no byte count: it would change what it counts)
            return scheme
        factor, _ = fit_steps(size, scheme, budget["max_bytes"], lowest=1.0)
        budget["refit_factor"] = budget.get("refit_factor", 1.0) * factor
        scheme = scaled(scheme, factor)
    raise ValueError(f"--max-bytes {budget['max_bytes']:,}: the file still needs {n:,} bytes after refitting")


def run_teacher(cfg: dict[str, Any], bundle: Any, device: torch.device) -> torch.nn.Module:
    """The teacher the artefact's run distilled from, rebuilt from its stored config (the original it
    names, else the pretrained one; its teacher, else the dataset's default)."""
    from ..config import RunConfig
    from ..models import copy_frozen
    from ..training.context import load_network, load_teacher
    fields = ("dataset", "data_root", "model", "original", "teacher", "pretrain_epochs")
    rc = RunConfig(**{k: cfg[k] for k in fields if k in cfg})
    original = copy_frozen(load_network(rc.model, rc.original, bundle, rc, device).model).to(device)
    return load_teacher(rc, original, bundle, device)[0]


def weight_scheme(args: argparse.Namespace) -> Scheme:
    """The predictor weights' coding the arguments ask for (BN/FC precision chosen later)."""
    if args.step is not None:
        return Scheme(weights="ans", step=args.step)
    return Scheme(weights=f"int{args.bits or 8}", group=args.group)


def _label(scheme: Scheme) -> str:
    if scheme.weights != "ans":
        return scheme.weights
    if scheme.layer_steps:
        return "ans steps " + "/".join(f"{st:.3g}" for st in scheme.layer_steps) + " per layer"
    return f"ans step {scheme.step:g}"


def _quantized_copy(nern: Any, scheme: Scheme) -> Any:
    """The NeRN as the compact file will decode it (quantised predictor weights)."""
    q = copy.deepcopy(nern)
    with torch.no_grad():
        for i, lin in enumerate(q.predictor.linears()):
            lin.weight.copy_(scheme.roundtrip(lin.weight, i))
    return q


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..data import DatasetError
    from ..selection import PlanError
    try:
        run(args)
    except (ArtefactError, DatasetError, PlanError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
