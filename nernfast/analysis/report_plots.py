"""The report's summary plots, drawn from the raw JSON alone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import stats
from .plotting import plt, save


def _series(recs: dict[str, Any], ids: list[str], key: str = "accuracy") -> tuple[float, float, float] | None:
    xs = [recs[i]["eval"][key] for i in ids if i in recs and recs[i]["eval"].get(key) is not None]
    if not xs:
        return None
    m, lo, hi = stats.t_interval(xs)
    return m, (m - lo if lo == lo else 0.0), (hi - m if hi == hi else 0.0)


def report_plots(manifest: dict[str, Any], recs: dict[str, Any], out_dir: Path) -> list[str]:
    S = manifest["settings"]
    sizes, seeds, rounds, ph = S["sizes"], S["seeds"], S["rounds"], S["progressive_hidden"]
    files = []
    orig = recs.get("original")
    p = plt()
    methods = [(m, lbl) for m, lbl, t in (("recon", "Recon-only", 2), ("baseline", "Baseline", 2),
                                           ("decoupled", "Decoupled", 2), ("gbaseline", "Baseline w/ teacher", 3),
                                           ("tdecoupled", "Decoupled w/ teacher", 3)) if t in S["tables"]]
    if methods:
        fig, ax = p.subplots(figsize=(6, 4))
        for m, lbl in methods:
            xs, ys, es = [], [], []
            for h in sizes:
                ids = [f"{m}-h{h}-s{s}" for s in range(seeds)]
                r = _series(recs, ids)
                any_rec = next((recs[i] for i in ids if i in recs), None)
                if r and any_rec:
                    xs.append(any_rec["sizes"]["compression_ratio"])
                    ys.append(100 * r[0])
                    es.append([100 * r[1], 100 * r[2]])
            if xs:
                ax.errorbar(xs, ys, yerr=list(zip(*es)) if es else None, marker="o", capsize=3, label=lbl)
        if orig:
            ax.axhline(100 * orig["eval"]["accuracy"], color="black", ls="--", lw=1, label="original")
        ax.set_xlabel("compression ratio (predictor / original conv parameters)")
        ax.set_ylabel("test accuracy % (mean, 95 % t-CI over seeds)")
        ax.set_title(f"{S['dataset']} / {S['model']}, scale {S['scale']}")
        ax.legend(fontsize=8)
        files.append(save(fig, out_dir / "accuracy_vs_cr.png"))
    if 1 in S["tables"]:
        fig, ax = p.subplots(figsize=(5, 3.5))
        rs, ys, es = [], [], []
        for r in range(1, rounds + 1):
            ids = [f"recon-h{ph}-s{c}" if r == 1 else f"prog-c{c}-r{r}" for c in range(seeds)]
            v = _series(recs, ids)
            if v:
                rs.append(r)
                ys.append(100 * v[0])
                es.append([100 * v[1], 100 * v[2]])
        if rs:
            ax.errorbar(rs, ys, yerr=list(zip(*es)), marker="o", capsize=3, label=f"hidden {ph}")
            if orig:
                ax.axhline(100 * orig["eval"]["accuracy"], color="black", ls="--", lw=1, label="original")
            ax.set_xticks(rs)
            ax.set_xlabel("progressive round")
            ax.set_ylabel("test accuracy % (95 % t-CI)")
            ax.legend(fontsize=8)
            files.append(save(fig, out_dir / "progressive_rounds.png"))
        else:
            p.close(fig)
    return files
