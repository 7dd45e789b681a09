"""Accuracy vs bytes on disk: nernfast artefacts (fp32 and compact) against the original fp32, the
original int8 (torch.ao per-channel PTQ) and NNCodec 2.1.3 at a sweep of QPs, on the same originals.

    python benchmarks/compression_compare.py --dataset digits --original ORIG.pt \\
        --artefacts 'runs/cmp/h*-s*/nern.safetensors' --compact 'runs/cmp/h*-s*/c*.safetensors' \\
        --nncodec-python /work/wt/nncodec-venv/bin/python --out docs/compression

Bytes are whole files (header and checksum included); BN/FC bytes are shown beside them. Points of
one setting over several seeds (nernfast: training seeds; baselines: one point per original) are
averaged with 95 % t-intervals. Writes OUT/compression.json (every measurement), OUT/table.md and
OUT/compression.png (Pareto front marked). docs/compression.md has the setup and the results.
"""
from __future__ import annotations

import argparse
import glob
import json
import platform
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compression_baselines as base  # noqa: E402

import nernfast  # noqa: E402
from nernfast.analysis.stats import t_interval  # noqa: E402
from nernfast.compress import file_parts  # noqa: E402
from nernfast.data import get_dataset  # noqa: E402
from nernfast.eval import accuracy  # noqa: E402


def _acc(model: torch.nn.Module, bundle) -> float:
    return accuracy(model, bundle.loader("test", 256, shuffle=False, augment=False), "cpu")[0]


def _original(path: str, dataset: str, data_root: str | None):
    from nernfast.evaluate import load_for_evaluation
    model, bundle, _ = load_for_evaluation(path, dataset=dataset, data_root=data_root)
    return model.eval(), bundle


def measure_baselines(orig: str, args, bundle_cache: dict) -> list[dict]:
    model, bundle = _original(orig, args.dataset, args.data_root)
    bundle_cache.setdefault("bundle", bundle)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        s = base.fp32_file(model, t / "fp32.safetensors")
        rows.append({"method": "original fp32", "setting": "fp32", "source": orig, "acc": _acc(model, bundle), **s})
        q_model, s = base.int8_file(model, t / "int8.safetensors")
        rows.append({"method": "original int8 (torch.ao PTQ)", "setting": "int8 per-channel", "source": orig,
                     "acc": _acc(q_model, bundle), **s})
        if args.nncodec_python:
            for qp, s, m in base.nncodec_sweep(model, t / "nnc", args.qp, args.nncodec_python):
                rows.append({"method": "NNCodec 2.1.3", "setting": f"qp {qp}", "source": orig,
                             "acc": _acc(m, bundle), **s})
    return rows


def measure_artefact(path: str, bundle) -> dict:
    meta, _ = nernfast.artefact.read_artefact(path)
    hidden = meta["predictor"]["hidden"]
    scheme = (meta.get("codec") or {}).get("scheme") or {"weights": "fp32", "rest": "fp32"}
    fmt = meta.get("format")
    if fmt == "nernfast-artefact-1":
        method, setting = "nernfast fp32 (format 1)", f"H{hidden}"
    elif scheme["weights"] == "fp32":
        method, setting = "nernfast fp32 (format 2, lossless)", f"H{hidden}"
    elif scheme["weights"] == "ans":
        method = "nernfast compact ans (entropy-coded)"
        per = " per layer (sensitivity)" if scheme.get("layer_steps") else ""
        budget = ((meta.get("metrics") or {}).get("compress") or {}).get("max_bytes")
        fit = (f", steps fitted to {budget['max_bytes']:,} bytes" if budget  # each seed's own steps: one group
               else f", bytes of step {scheme['step']:g}" if per else f" step {scheme['step']:g}")
        setting = f"H{hidden} ans{per}{fit} BN/FC {scheme['rest']}"
    else:
        groups = f" g{scheme['group']}" if scheme["weights"] != "int8" and scheme.get("group") else ""
        method = f"nernfast compact {scheme['weights']}{groups}"
        setting = f"H{hidden} {scheme['weights']}{groups} BN/FC {scheme['rest']}"
    ema = ((meta.get("config") or {}).get("phase2") or {}).get("ema_decay")
    if ema:  # trained otherwise than the default: its own group
        setting += f", phase-2 weight average {ema:g}"
    size = Path(path).stat().st_size
    bn = file_parts(path).get("model") if fmt != "nernfast-artefact-1" else None
    return {"method": method, "setting": setting, "source": path, "hidden": hidden, "format": fmt,
            "acc": _acc(nernfast.load(path), bundle), "bytes": size, "bn_fc_bytes": bn,
            "parts": file_parts(path) if fmt != "nernfast-artefact-1" else None}


def aggregate(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["setting"])].append(r)
    out = []
    for (method, setting), rs in groups.items():
        m, lo, hi = t_interval([r["acc"] for r in rs]) if len(rs) > 1 else (rs[0]["acc"],) * 3
        b = [r["bytes"] for r in rs]
        bn = [r["bn_fc_bytes"] for r in rs if r.get("bn_fc_bytes") is not None]
        out.append({"method": method, "setting": setting, "n": len(rs), "acc": m, "acc_lo": lo, "acc_hi": hi,
                    "bytes": sum(b) / len(b), "bytes_min": min(b), "bytes_max": max(b),
                    "bn_fc_bytes": sum(bn) / len(bn) if bn else None})
    out.sort(key=lambda r: r["bytes"])
    best = -1.0
    for r in out:  # sorted by bytes: on the front when more accurate than everything smaller
        r["pareto"] = r["acc"] > best
        best = max(best, r["acc"])
    return out


def table(points: list[dict], conv_bytes: int | None) -> str:
    head = "| method | setting | n | file bytes | % of fp32 conv | BN/FC bytes | test acc % (95 % CI) | front |"
    lines = [head, "|" + "---|" * 8]
    for p in points:
        ci = f"{100 * p['acc']:.2f}" + (f" ({100 * p['acc_lo']:.2f}–{100 * p['acc_hi']:.2f})" if p["n"] > 1 else "")
        pct = f"{100 * p['bytes'] / conv_bytes:.1f}" if conv_bytes else "-"
        bn = f"{p['bn_fc_bytes']:,.0f}" if p["bn_fc_bytes"] is not None else "-"
        lines.append(f"| {p['method']} | {p['setting']} | {p['n']} | {p['bytes']:,.0f} | {pct} | {bn} | {ci} | "
                     f"{'**yes**' if p['pareto'] else ''} |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path, title: str) -> None:
    """Two panels: the whole range, and the top accuracies (where the methods differ)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    front = [p for p in points if p["pareto"]]
    top = max(p["acc"] for p in points)
    for ax, low in zip(axes, (None, 100 * top - 6)):
        for method in dict.fromkeys(p["method"] for p in points):
            ps = [p for p in points if p["method"] == method]
            err = [[100 * (p["acc"] - p["acc_lo"]) for p in ps], [100 * (p["acc_hi"] - p["acc"]) for p in ps]]
            ax.errorbar([p["bytes"] / 1000 for p in ps], [100 * p["acc"] for p in ps], yerr=err,
                        fmt="o-" if method.startswith("NNCodec") else "o", capsize=3, label=method, alpha=0.85)
        ax.step([p["bytes"] / 1000 for p in front], [100 * p["acc"] for p in front], where="post", color="k",
                lw=1, ls="--", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("file size on disk (kB = 1000 bytes, log; header, checksum, BN/FC included)")
        ax.set_ylabel("test accuracy %")
        ax.grid(alpha=0.3, which="both")
        if low is not None:
            ax.set_ylim(low, 100 * top + 0.7)
            ax.set_title("top accuracies (95 % intervals over seeds)")
        else:
            ax.set_title(title)
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root")
    p.add_argument("--original", action="append", required=True, help="original checkpoint(s); repeat per seed")
    p.add_argument("--artefacts", action="append", default=[], help="glob(s) of nernfast fp32 artefacts")
    p.add_argument("--compact", action="append", default=[], help="glob(s) of compact artefacts")
    p.add_argument("--nncodec-python", help="NNCodec's virtualenv python (docs/compression.md); omit to skip NNCodec")
    p.add_argument("--qp", type=int, nargs="+", default=[-8, -12, -16, -20, -24, -28, -32, -38])
    p.add_argument("--out", default="docs/compression")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, cache = [], {}
    for o in a.original:
        rows += measure_baselines(o, a, cache)
        print(f"baselines of {o}: done", flush=True)
    bundle = cache["bundle"]
    files = sorted({f for g in a.artefacts + a.compact for f in glob.glob(g)})
    for f in files:
        rows.append(measure_artefact(f, bundle))
        print(f"{f}: {rows[-1]['bytes']:,} bytes, {100 * rows[-1]['acc']:.2f} %", flush=True)
    conv_bytes = None
    if files:
        meta, _ = nernfast.artefact.read_artefact(files[0])
        conv_bytes = meta["sizes"]["predicted_params"] * 4
    points = aggregate(rows)
    (out / "compression.json").write_text(json.dumps(
        {"dataset": a.dataset, "conv_fp32_bytes": conv_bytes, "points": points, "rows": rows,
         "command": " ".join(sys.argv), "torch": torch.__version__, "machine": platform.machine()}, indent=2))
    (out / "table.md").write_text(table(points, conv_bytes) + "\n")
    plot(points, out / "compression.png", f"{a.dataset}: accuracy vs bytes on disk")
    print(table(points, conv_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
