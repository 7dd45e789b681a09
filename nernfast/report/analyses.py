"""The analyses behind the report's figures: ``python -m nernfast.analyze`` runs on seed 0's
artefacts, each leaving ``RAW/analysis/<name>.json`` (title, command, a summary paragraph, plots)."""
from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Any, Callable

from .runs import write_json


def analysis_specs(settings: dict[str, Any], work_dir: str, out_dir: str, grid_n: int,
                   original: str | None = None) -> list[dict[str, Any]]:
    """The analyses the report shows, as ``python -m nernfast.analyze`` argument lists, on seed 0's
    artefacts: progressive chain 0 (Fig. 2/8, 9, 7) and the three methods at the smallest size
    (Fig. 4b, 6)."""
    sizes, rounds, ph = settings["sizes"], settings["rounds"], settings["progressive_hidden"]
    art = lambda jid: str(Path(work_dir) / jid / "nern.safetensors")  # noqa: E731
    chain = [art(f"recon-h{ph}-s0")] + [art(f"prog-c0-r{r}") for r in range(2, rounds + 1)]
    chain_labels = [f"round{r}" for r in range(1, len(chain) + 1)]
    h = min(sizes)
    methods = [art(f"{m}-h{h}-s0") for m in ("recon", "baseline", "decoupled")]
    specs = []
    if 1 in settings["tables"]:
        specs += [
            {"name": "lowfreq_progressive", "title": f"Low-frequency ratio, progressive rounds (hidden {ph}; Fig. 2 / 8)",
             "args": ["lowfreq", "--checkpoint", *chain, "--labels", *chain_labels]},
            {"name": "interpolate_progressive", "title": f"Interpolation original -> round r (hidden {ph}; Fig. 9)",
             "args": ["interpolate", "--checkpoint", *chain, "--labels", *chain_labels, "--points", "11"]},
            {"name": "landscape_progressive", "title": f"Loss landscape: original, round 1, round {rounds} (Fig. 7)",
             "args": ["landscape", "--checkpoint", chain[0], chain[-1], "--labels", "round1", f"round{rounds}",
                      "--grid", str(grid_n)]}]
    if 2 in settings["tables"]:
        specs += [
            {"name": "layerdiff_methods", "title": f"Per-layer distance to the original, hidden {h} (Fig. 4b)",
             "args": ["layerdiff", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled"]},
            {"name": "lowfreq_methods", "title": f"Low-frequency ratio of the three methods, hidden {h}",
             "args": ["lowfreq", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled"]},
            {"name": "landscape_methods", "title": f"Loss landscape through recon-only, baseline, decoupled, hidden {h} (Fig. 6)",
             "args": ["landscape", "--checkpoint", *methods, "--labels", "recon-only", "baseline", "decoupled",
                      "--grid", str(grid_n)]}]
    for sp in specs:
        sp["args"] += ["--out", str(Path(out_dir) / sp["name"])]
        if original and not (sp["args"][0] == "landscape" and sp["name"] == "landscape_methods"):
            sp["args"] += ["--original", original]  # the true original, also for later rounds
    return specs


def summarize_analysis(res: dict[str, Any]) -> str:
    """One deterministic paragraph of the numbers behind an analysis plot."""
    w = res["what"]
    if w == "lowfreq":
        parts = [f"{l}: mean {s['mean']:+.4f} (first / middle / last third of the layers {s['first_third']:+.4f} / "
                 f"{s['middle_third']:+.4f} / {s['last_third']:+.4f}; {s['positive_layers']} of {s['layers']} layers "
                 "smoother than the original)" for l, s in res["summary"].items()]
        return "ratio(reconstructed) − ratio(original) per layer; " + "; ".join(parts) + "."
    if w == "layerdiff":
        rel = res["relative"]
        parts = []
        for l, d in rel.items():
            v = list(d.values())
            n = len(v)
            parts.append(f"{l}: recon L2 {res['recon_l2'][l]:.5f}, mean relative distance first / last third "
                         f"{sum(v[:n // 3]) / max(1, n // 3):.3f} / {sum(v[2 * n // 3:]) / max(1, n - 2 * n // 3):.3f}")
        return "; ".join(parts) + "."
    if w == "interpolate":
        parts = []
        for l, c in res["curves"].items():
            best = max(c, key=lambda r: (r["accuracy"], -r["alpha"]))
            keep = [r["alpha"] for r in c if r["accuracy"] >= c[0]["accuracy"] - 0.01]
            last = max(a for a in keep if all(r["accuracy"] >= c[0]["accuracy"] - 0.01 for r in c if r["alpha"] <= a))
            parts.append(f"{l}: accuracy {100 * c[0]['accuracy']:.2f} % at a=0, {100 * c[-1]['accuracy']:.2f} % at a=1, "
                         f"best {100 * best['accuracy']:.2f} % at a={best['alpha']:.1f}, within 1 point of a=0 up to "
                         f"a={last:.1f} (recon error {next(r['recon_l2'] for r in c if r['alpha'] == last):.5f}); "
                         f"recon error at a=1 {c[-1]['recon_l2']:.5f}")
        return f"{res['split']} split; " + "; ".join(parts) + "."
    parts = []
    for s, vals in res["at_points"].items():
        grid_min = min(min(row) for row in res["values"][s]["loss"])
        parts.append(f"{s} loss at " + ", ".join(f"{n} {v['loss']:.4f}" for n, v in zip(res["labels"], vals))
                     + f" (grid minimum {grid_min:.4f})")
    return f"{len(res['xs'])} x {len(res['ys'])} grid; " + "; ".join(parts) + "."


def run_analyses(raw: Path, work_dir: str, docs_dir: Path, grid_n: int, log: Callable[[str], None] = print) -> None:
    from .. import analyze
    manifest = json.loads((raw / "grid.json").read_text())
    orig = raw / "jobs" / "original.json"
    original = json.loads(orig.read_text()).get("checkpoint") if orig.exists() else None
    for sp in analysis_specs(manifest["settings"], work_dir, str(docs_dir / "analysis"), grid_n, original):
        missing = [x for x in sp["args"] if x.endswith(".safetensors") and not Path(x).exists()]
        if missing:
            log(f"skip analysis {sp['name']}: missing {', '.join(missing)}")
            continue
        log(f"analysis {sp['name']}")
        t0 = time.time()
        a = analyze.build_parser().parse_args(sp["args"])
        command = "python -m nernfast.analyze " + " ".join(shlex.quote(x) for x in sp["args"])
        try:
            res = analyze.run(a, command)
        except (ValueError, OSError) as e:  # e.g. two identical solutions span no plane
            log(f"analysis {sp['name']} not drawn: {e}")
            write_json(raw / "analysis" / f"{sp['name']}.json",
                       {"title": sp["title"], "command": command, "summary": f"Not drawn: {e}.", "plots": []})
            continue
        write_json(raw / "analysis" / f"{sp['name']}.json",
                   {"title": sp["title"], "command": command, "summary": summarize_analysis(res),
                    "plots": [os.path.relpath(res["plot"], docs_dir)], "seconds": round(time.time() - t0, 1)})

