"""Run the throughput suite with pytest-benchmark and write ``benchmarks/results.json`` + a table.

    python benchmarks/run_bench.py                        # the full CPU set (make bench)
    python benchmarks/run_bench.py --shapes resnet20-h140 --rounds 1 --batch 8 --no-memory --out /tmp/r.json

results.json: {"machine", "torch", "device", "load", "results": [{"name": "materialize/resnet56-h320",
"baseline": "reference", "candidate": "fast", "baseline_ms", "candidate_ms", "speedup", ...}],
"variants": [every measured case/variant with its median, 20/80 quantiles, rounds and peak memory],
"targets": [each issue target with its measured ratio and met/missed]}. Medians in ms; speedup =
baseline median / candidate median, both measured in this run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FILES = ["bench_materialize.py", "bench_steps.py"]

# (case, baseline, candidates (best of), minimum speedup, note); see the issue.
CPU_TARGETS = [
    ("step-recon/resnet56-h320", "reference", ["fast", "fast-bf16"], 30.0,
     "recon-only step >= 30x the reference step (bf16 where the CPU has it natively)"),
    ("step-recon/resnet56-h320", "reference", ["fast"], 20.0, "recon-only step >= 20x the reference step (float32)"),
    ("step-distill/resnet56-h320", "reference", ["fast"], 2.0,
     "distillation-phase step >= 2x the reference step (float32)"),
    ("step-distill/resnet56-h320", "reference", ["fast", "fast-bf16", "fast-bf16-cl"], 2.0,
     "distillation-phase step >= 2x the reference step (bf16 allowed if its precision check passes)"),
    ("materialize/resnet56-h320", "reference", ["fast-bf16"], 2.5, "materialisation >= 2.5x the reference with bf16"),
    ("materialize/resnet56-h320", "reference", ["fast"], 1.0, "materialisation in float32 never slower than the reference"),
]
GPU_TARGETS = [  # the reference in its own fp32, ours in the precision stated
    ("step-recon/resnet56-h320", "reference", ["fast"], 50.0, "recon-only step >= 50x the reference step"),
    ("step-distill/resnet56-h320", "reference", ["fast", "fast-bf16", "fast-bf16-cl"], 3.0,
     "distillation-phase step >= 3x the reference step"),
    ("materialize/resnet56-h320", "reference", ["fast", "fast-bf16"], 10.0, "materialisation >= 10x the reference"),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import torch
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    info["avx512_bf16"] = "avx512_bf16" in flags
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def numerics_and_load() -> dict:
    """What decided this process's CPU numerics (nernfast.numerics.describe) and the load average:
    recorded beside every figure of the one-off benchmark scripts."""
    from nernfast import numerics
    return {**{k: v for k, v in numerics.describe().items() if k != "env"}, "loadavg": load_average()}


def collect(bench_json: dict) -> tuple[list[dict], dict[tuple[str, str], dict]]:
    """Per-variant stats from pytest-benchmark's JSON, keyed by (case, variant)."""
    from cases import MATERIALIZE_PAIRS, STEP_PAIRS
    variants: dict[tuple[str, str], dict] = {}
    for b in bench_json.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "case" not in info:
            continue  # someone else's benchmark
        st = b["stats"]
        variants[(info["case"], info["variant"])] = {
            "case": info["case"], "variant": info["variant"],
            "median_ms": 1e3 * info.get("median", st["median"]),
            "q20_ms": 1e3 * info.get("q20", st.get("q1", st["median"])),
            "q80_ms": 1e3 * info.get("q80", st.get("q3", st["median"])),
            "rounds": info.get("rounds", st["rounds"]),
            "peak_mb": info.get("peak_mb"), "batch": info.get("batch"),
        }
    results = []
    cases = sorted({c for c, _ in variants}, key=_case_order)
    for case in cases:
        pairs = MATERIALIZE_PAIRS if case.startswith("materialize/") else STEP_PAIRS
        for base, cand in pairs:
            b, c = variants.get((case, base)), variants.get((case, cand))
            if b is None or c is None:
                continue
            results.append({
                "name": case, "baseline": base, "candidate": cand,
                "baseline_ms": round(b["median_ms"], 3), "candidate_ms": round(c["median_ms"], 3),
                "speedup": round(b["median_ms"] / c["median_ms"], 3),
                "baseline_q20_ms": round(b["q20_ms"], 3), "baseline_q80_ms": round(b["q80_ms"], 3),
                "candidate_q20_ms": round(c["q20_ms"], 3), "candidate_q80_ms": round(c["q80_ms"], 3),
                "baseline_rounds": b["rounds"], "candidate_rounds": c["rounds"],
                "baseline_peak_mb": b["peak_mb"], "candidate_peak_mb": c["peak_mb"],
            })
    return results, variants


def _case_order(case: str) -> tuple:
    from cases import SHAPES, STEP_KINDS
    family, shape = case.split("/")
    kinds = ["materialize"] + [f"step-{k}" for k in STEP_KINDS]
    return (list(SHAPES).index(shape) if shape in SHAPES else 99, kinds.index(family) if family in kinds else 99)


def precision_verdict(path: Path = HERE / "precision_effect.json") -> str:
    """Whether bf16 may count for the distillation target (benchmarks/precision_effect.py's verdicts)."""
    try:
        verdicts = json.loads(path.read_text())["verdicts"]
    except (OSError, ValueError, KeyError):
        return "unchecked (no benchmarks/precision_effect.json)"
    plain = [v for v in verdicts if v["setting"] == "bf16"]
    if plain and all(v["verdict"] == "allowed" for v in plain):
        return "allowed"
    return "; ".join(f"{v['recipe']}: {v['verdict']}" for v in plain) or "unchecked"


def check_targets(variants: dict[tuple[str, str], dict], device: str = "cpu") -> list[dict]:
    """Each target's best candidate and ratio; a bf16 candidate of a data step only counts as met where
    the precision check allowed bf16 (CPU: benchmarks/precision_effect.json)."""
    out = []
    verdict = None
    for case, base, cands, need, note in (GPU_TARGETS if device.startswith("cuda") else CPU_TARGETS):
        b = variants.get((case, base))
        got = [(variants[(case, c)]["median_ms"], c) for c in cands if (case, c) in variants]
        if b is None or not got:
            continue
        ms, cand = min(got)
        ratio = b["median_ms"] / ms
        row = {"target": note, "case": case, "baseline": base, "candidate": cand, "required": need,
               "speedup": round(ratio, 2), "met": ratio >= need}
        if "bf16" in cand and case.startswith("step-") and not device.startswith("cuda"):
            verdict = verdict or precision_verdict()
            row["precision"] = verdict
            row["met"] = row["met"] and verdict == "allowed"
        out.append(row)
    return out


def table(results: list[dict], variants: dict[tuple[str, str], dict], targets: list[dict]) -> str:
    lines = []
    cases = sorted({c for c, _ in variants}, key=_case_order)
    head = f"{'case':<32} {'variant':<17} {'median ms':>10} {'q20-q80 ms':>19} {'rounds':>6} {'peak MB':>8} {'vs ref':>7}"
    lines += [head, "-" * len(head)]
    for case in cases:
        ref = variants.get((case, "reference"))
        for (c, v), s in sorted(variants.items(), key=lambda kv: _variant_order(kv[0][1])):
            if c != case:
                continue
            q = f"{s['q20_ms']:.1f}-{s['q80_ms']:.1f}"
            few = "*" if s["rounds"] < 5 else ""
            vs = f"{ref['median_ms'] / s['median_ms']:.2f}x" if ref else "-"
            peak = f"{s['peak_mb']:.1f}" if s["peak_mb"] is not None else "-"
            lines.append(f"{case:<32} {v:<17} {s['median_ms']:>10.1f} {q:>19} {s['rounds']:>5}{few:1} {peak:>8} {vs:>7}")
        lines.append("")
    if targets:
        lines.append("targets (this machine, this run):")
        for t in targets:
            extra = f"; bf16 precision: {t['precision']}" if "precision" in t else ""
            lines.append(f"  [{'met' if t['met'] else 'MISSED':>6}] {t['target']}: {t['candidate']} "
                         f"{t['speedup']:.2f}x (need {t['required']}x) on {t['case']}{extra}")
    lines.append("* fewer than 5 rounds. 'vs ref' = reference median / this median (same run).")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    """The RESULTS.md tables of a results.json: every case x variant, then the targets."""
    m = res["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, torch {res['torch']} ({m['torch_threads']} threads), "
             f"device {res['device']}; {res.get('date', '')}; load average (1/5/15 min) before "
             f"{res['load']['before']}, after {res['load']['after']}; {res['wall_seconds']:.0f} s in all.",
             "", "| case | variant | median ms | q20–q80 ms | rounds | peak MB | speed-up vs reference |",
             "|---|---|---|---|---|---|---|"]
    variants = {(v["case"], v["variant"]): v for v in res["variants"]}
    for case in sorted({c for c, _ in variants}, key=_case_order):
        ref = variants.get((case, "reference"))
        for (c, v), s in sorted(variants.items(), key=lambda kv: _variant_order(kv[0][1])):
            if c != case:
                continue
            peak = f"{s['peak_mb']:.0f}" if s.get("peak_mb") is not None else "–"
            vs = f"{ref['median_ms'] / s['median_ms']:.2f}×" if ref else "–"
            lines.append(f"| {case} | {v} | {_ms(s['median_ms'])} | {_ms(s['q20_ms'])}–{_ms(s['q80_ms'])} | "
                         f"{s['rounds']} | {peak} | {vs} |")
    if res.get("targets"):
        lines += ["", "| target | candidate | measured | verdict |", "|---|---|---|---|"]
        for t in res["targets"]:
            verdict = "met" if t["met"] else "**missed**"
            if "precision" in t:
                verdict += f" (bf16 precision check: {t['precision']})"
            lines.append(f"| {t['target']} ({t['case']}) | {t['candidate']} | {t['speedup']:.2f}× | {verdict} |")
    return "\n".join(lines)


def _ms(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _variant_order(v: str) -> int:
    from cases import MATERIALIZE_VARIANTS, STEP_VARIANTS
    order = list(dict.fromkeys(list(STEP_VARIANTS) + list(MATERIALIZE_VARIANTS)))
    return order.index(v) if v in order else 99


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help="comma-separated shapes (default: all)")
    p.add_argument("--kinds", help="comma-separated step kinds (default: all)")
    p.add_argument("--rounds", type=int, help="timed rounds per case (default: per shape)")
    p.add_argument("--batch", type=int, help="image batch (default 128)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--no-memory", action="store_true", help="skip the profiled peak-memory round")
    p.add_argument("--out", default=str(HERE / "results.json"), help="results file")
    p.add_argument("--bench-json", help="also keep pytest-benchmark's own JSON here")
    p.add_argument("-k", dest="keyword", help="pytest -k expression (subset of cases)")
    p.add_argument("--render", metavar="RESULTS_JSON", help="only print the markdown tables of an existing results file")
    args = p.parse_args(argv)
    if args.render:
        res = json.loads(Path(args.render).read_text())
        device = "cuda" if res.get("device", "cpu") != "cpu" else "cpu"
        res["targets"] = check_targets({(v["case"], v["variant"]): v for v in res["variants"]}, device)
        print(markdown(res))
        return 0

    import pytest
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(args.bench_json or Path(tmp) / "bench.json")
        cmd = [str(HERE / f) for f in FILES] + ["-q", "-p", "no:cacheprovider", f"--benchmark-json={raw}",
                                                 "--benchmark-sort=name", "--benchmark-columns=median,iqr,rounds"]
        for opt, val in (("--bench-shapes", args.shapes), ("--bench-kinds", args.kinds),
                         ("--bench-rounds", args.rounds), ("--bench-batch", args.batch),
                         ("--bench-device", args.device), ("--bench-threads", args.threads)):
            if val is not None:
                cmd.append(f"{opt}={val}")
        if args.no_memory:
            cmd.append("--no-bench-memory")
        if args.keyword:
            cmd += ["-k", args.keyword]
        load_before, t0 = load_average(), time.time()
        rc = pytest.main(cmd)
        wall = time.time() - t0
        if rc != 0 or not raw.exists():
            print(f"run_bench: pytest failed (exit {int(rc)}); no results written", file=sys.stderr)
            return int(rc) or 1
        bench = json.loads(raw.read_text())
    results, variants = collect(bench)
    targets = check_targets(variants, args.device)
    cuda = args.device.startswith("cuda")
    out = {
        "machine": machine_info(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(torch.device(args.device)) if cuda else "cpu",
        "load": {"before": load_before, "after": load_average(), "note": "os.getloadavg() 1/5/15 min"},
        "wall_seconds": round(wall, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "memory_method": ("torch.cuda.max_memory_allocated" if cuda else "torch.profiler profile_memory (CPU allocator)")
        + ": peak bytes during one extra round, above what was allocated when it began",
        "results": results, "variants": list(variants.values()), "targets": targets,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(table(results, variants, targets))
    print(f"\nwrote {args.out} ({len(results)} pairs, {len(variants)} cases x variants, {wall:.0f} s, "
          f"load {load_before} -> {out['load']['after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
