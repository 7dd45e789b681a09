"""``python -m nernfast.analyze WHAT --checkpoint CKPT [CKPT ...] [--original ORIG] --out DIR``

WHAT is one of

  lowfreq      per-layer low-frequency energy ratio (SVD) of each checkpoint minus the original's
               (paper Fig. 2 / 8); several checkpoints (e.g. progressive rounds) side by side
  interpolate  test accuracy and reconstruction error along W(a) = (1 - a) W_orig + a W_ckpt,
               a in [0, 1], for each checkpoint (paper Fig. 9)
  landscape    train and test loss on the plane through three weight sets: the original and two
               checkpoints (e.g. first and last round, Fig. 7), or three checkpoints without
               --original (e.g. the solutions of three methods, Fig. 6); contour plots
  layerdiff    per-layer relative distance ||W - W_ckpt|| / ||W|| to the original, as bars (Fig. 4b)

Checkpoints are nernfast artefacts (.safetensors, decoded with their predictor) or state_dict
checkpoints (nernfast pretrained ones name their model; others need --model). --original defaults
to the original the (first) artefact was trained from. Each analysis writes DIR/WHAT.png, the
numbers behind it as DIR/WHAT.csv and DIR/WHAT.json (with the command and inputs).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .analysis.plotting import grouped_bars, plt, save, short_layer, write_csv, write_json
from .analysis.weights import AnalysisError, Loaded, load_original, load_weights

WHATS = ("lowfreq", "interpolate", "landscape", "layerdiff")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nernfast.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=WHATS)
    p.add_argument("--checkpoint", nargs="+", required=True, help="artefacts or checkpoints to analyse")
    p.add_argument("--labels", nargs="+", help="one label per checkpoint (default: file stems)")
    p.add_argument("--original", help="the original network (default: the artefact's own original)")
    p.add_argument("--model", help="architecture of plain state_dict checkpoints, e.g. resnet20")
    p.add_argument("--dataset", help="dataset for accuracy/loss (default: from the artefact or checkpoint)")
    p.add_argument("--data-root")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling a checkpoint that holds Python objects (runs code from the file)")
    p.add_argument("--points", type=int, default=11, help="interpolate: number of a values in [0, 1]")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="interpolate: split")
    p.add_argument("--grid", type=int, default=11, help="landscape: grid points per axis")
    p.add_argument("--margin", type=float, default=0.25, help="landscape: margin around the three points")
    p.add_argument("--splits", default="train,test", help="landscape: splits to evaluate")
    p.add_argument("--max-batches", type=int, default=None, help="evaluate at most this many batches per split")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--title", default=None)
    return p


def _labels(a: argparse.Namespace) -> list[str]:
    if a.labels:
        if len(a.labels) != len(a.checkpoint):
            raise AnalysisError(f"--labels has {len(a.labels)} entries for {len(a.checkpoint)} checkpoints")
        return list(a.labels)
    stems = [Path(c).stem if Path(c).stem != "nern" else Path(c).parent.name for c in a.checkpoint]
    return stems


def _bundle(a: argparse.Namespace, loaded: Loaded):
    from .data import get_dataset
    ds = a.dataset or loaded.dataset
    if not ds:
        raise AnalysisError(f"{loaded.source} does not name its dataset: pass --dataset")
    return get_dataset(ds, a.data_root or (loaded.meta.get("config") or {}).get("data_root"), seed=0)


def _evaluator(a: argparse.Namespace, bundle, split: str):
    from .analysis.interpolate import loader_evaluator
    return loader_evaluator(lambda: bundle.loader(split, a.batch_size, shuffle=False, augment=False),
                            a.device, a.max_batches)


def run(a: argparse.Namespace, command: str) -> dict[str, Any]:
    out = Path(a.out)
    labels = _labels(a)
    cks = [load_weights(c, a.model, a.dataset, a.trust_pickle) for c in a.checkpoint]
    result: dict[str, Any] = {"what": a.what, "command": command, "checkpoints": dict(zip(labels, a.checkpoint))}
    needs_original = a.what != "landscape" or len(cks) == 2
    if a.what == "landscape" and len(cks) not in (2, 3):
        raise AnalysisError("landscape needs two checkpoints and --original (or the artefacts' own original), "
                            f"or three checkpoints without --original; got {len(cks)}")
    if a.what == "landscape" and len(cks) == 3 and a.original:
        raise AnalysisError("landscape with three checkpoints spans their plane; drop --original")
    orig = load_original(cks[0], a.original, a.data_root, a.trust_pickle) if needs_original else None
    if orig is not None:
        result["original"] = orig.source
    layers = cks[0].layers
    title = a.title

    if a.what == "lowfreq":
        from .analysis.lowfreq import layer_ratios, summarize
        w0 = orig.conv_weights()
        r0 = layer_ratios(w0)
        ratios = {lbl: layer_ratios({n: c.conv_weights()[n] for n in layers}) for lbl, c in zip(labels, cks)}
        diffs = {lbl: {n: ratios[lbl][n] - r0[n] for n in layers} for lbl in labels}
        write_csv(out / "lowfreq.csv", ["layer", "ratio_original"] + [f"ratio_{l}" for l in labels]
                  + [f"diff_{l}" for l in labels],
                  [[n, r0[n]] + [ratios[l][n] for l in labels] + [diffs[l][n] for l in labels] for n in layers])
        result.update(layers=layers, ratio_original=r0, ratios=ratios, diffs=diffs,
                      summary={l: summarize(diffs[l]) for l in labels})
        fig, ax = plt().subplots(figsize=(max(6, 0.3 * len(layers)), 3.8))
        grouped_bars(ax, layers, {l: [diffs[l][n] for n in layers] for l in labels},
                     "low-freq. ratio: reconstructed − original")
        ax.set_title(title or "Low-frequency energy ratio difference per layer (positive = smoother)")
        result["plot"] = save(fig, out / "lowfreq.png")

    elif a.what == "layerdiff":
        from .analysis.layerdiff import layer_distances, overall
        w0 = orig.conv_weights()
        cand = {lbl: {n: c.conv_weights()[n] for n in layers} for lbl, c in zip(labels, cks)}
        d = layer_distances(cand, w0)
        write_csv(out / "layerdiff.csv", ["layer"] + labels, [[n] + [d[l][n] for l in labels] for n in layers])
        result.update(layers=layers, relative=d, recon_l2=overall(cand, w0))
        fig, ax = plt().subplots(figsize=(max(6, 0.3 * len(layers)), 3.8))
        grouped_bars(ax, layers, {l: [d[l][n] for n in layers] for l in labels}, "‖W − Ŵ‖ / ‖W‖")
        ax.set_title(title or "Per-layer relative distance to the original")
        result["plot"] = save(fig, out / "layerdiff.png")

    elif a.what == "interpolate":
        from .analysis.interpolate import alphas_grid, interpolate
        bundle = _bundle(a, cks[0])
        ev = _evaluator(a, bundle, a.split)
        alphas = alphas_grid(a.points)
        curves = {lbl: interpolate(orig.model, c.model, layers, alphas, ev) for lbl, c in zip(labels, cks)}
        write_csv(out / "interpolate.csv", ["label", "alpha", "accuracy", "loss", "recon_l2"],
                  [[l, r["alpha"], r["accuracy"], r["loss"], r["recon_l2"]] for l in labels for r in curves[l]])
        result.update(split=a.split, alphas=alphas, curves=curves)
        fig, ax1 = plt().subplots(figsize=(6.5, 4))
        ax2 = ax1.twinx()
        for i, l in enumerate(labels):
            col = f"C{i}"
            ax1.plot(alphas, [r["recon_l2"] for r in curves[l]], color=col, ls="--", lw=1)
            ax2.plot(alphas, [100 * r["accuracy"] for r in curves[l]], color=col, marker="o", ms=3, label=l)
        ax1.set_xlabel("a in W(a) = (1 − a) W_orig + a W_recon")
        ax1.set_ylabel("reconstruction error (dashed)")
        ax2.set_ylabel(f"{a.split} accuracy % (solid)")
        ax2.legend(fontsize=8, loc="lower left")
        ax1.set_title(title or "Interpolation between the original and the reconstructions")
        result["plot"] = save(fig, out / "interpolate.png")

    else:  # landscape
        from .analysis.landscape import landscape
        models = ([orig.model] if orig is not None else []) + [c.model for c in cks]
        names = (["original"] if orig is not None else []) + labels
        bundle = _bundle(a, cks[0])
        splits = [s for s in a.splits.split(",") if s]
        evs = {s: _evaluator(a, bundle, s) for s in splits}
        t0 = time.time()

        def progress(k: int, total: int) -> None:
            if k == 1 or k == total or k % max(1, total // 10) == 0:
                print(f"landscape: {k}/{total} grid points ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        res = landscape(models, evs, a.grid, a.margin, progress=progress)
        rows = []
        for s in splits:
            for i, y in enumerate(res["ys"]):
                for j, x in enumerate(res["xs"]):
                    rows.append([s, x, y, res["values"][s]["loss"][i][j], res["values"][s]["accuracy"][i][j]])
        write_csv(out / "landscape.csv", ["split", "x", "y", "loss", "accuracy"], rows)
        result.update(labels=names, **res)
        import numpy as np
        p = plt()
        fig, axes = p.subplots(1, len(splits), figsize=(6.0 * len(splits), 4.4), squeeze=False,
                               layout="constrained")
        for ax, s in zip(axes[0], splits):
            z = np.log10(np.maximum(np.array(res["values"][s]["loss"]), 1e-8))
            cs = ax.contourf(res["xs"], res["ys"], z, levels=20, cmap="viridis")
            ax.contour(res["xs"], res["ys"], z, levels=20, colors="white", linewidths=0.3)
            fig.colorbar(cs, ax=ax, label=f"log10 {s} loss")
            for (px, py), nm, vals in zip(res["points"], names, res["at_points"][s]):
                ax.plot(px, py, "o", color="red", ms=5)
                ax.annotate(f"{nm}\n{vals['loss']:.3f}", (px, py), color="white", fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
            ax.set_title(f"{s} loss")
            ax.set_xlabel("e1 (weight-space distance)")
            ax.set_ylabel("e2")
        if title:
            fig.suptitle(title)
        result["plot"] = save(fig, out / "landscape.png")

    result["seconds"] = None  # wall time is not a property of the result (kept out for reproducible JSON)
    write_json(out / f"{a.what}.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    command = "python -m nernfast.analyze " + " ".join(shlex.quote(x) for x in argv)
    from .cli import check_device, fail, user_errors
    try:
        check_device(a.device)
        res = run(a, command)
    except user_errors() as e:  # AnalysisError is a ValueError
        return fail(e)
    print(f"wrote {res['plot']} and {Path(a.out) / (a.what + '.csv')}, {Path(a.out) / (a.what + '.json')}")
    if a.what == "lowfreq":
        for l, s in res["summary"].items():
            print(f"{l}: mean diff {s['mean']:+.4f} (first/middle/last third {s['first_third']:+.4f} / "
                  f"{s['middle_third']:+.4f} / {s['last_third']:+.4f}), {s['positive_layers']}/{s['layers']} layers > 0")
    elif a.what == "layerdiff":
        for l, v in res["recon_l2"].items():
            print(f"{l}: recon L2 {v:.5f}")
    elif a.what == "interpolate":
        for l, c in res["curves"].items():
            print(f"{l}: " + ", ".join(f"a={r['alpha']:.2f} acc {100 * r['accuracy']:.2f}%" for r in c[:: max(1, len(c) // 5)]))
    else:
        for s in res["at_points"]:
            print(f"{s} loss at " + ", ".join(f"{n} {v['loss']:.4f}" for n, v in zip(res["labels"], res["at_points"][s])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
