"""The report's table cells: one grid's raw records as formatted numbers (means, intervals, paired
differences with verdicts), and the job ids of each method, size and chain."""
from __future__ import annotations

import math
from typing import Any

METHOD_LABEL = {"recon": "Recon-only", "baseline": "Baseline", "decoupled": "Decoupled (ours)",
                "gbaseline": "Baseline w/ teacher KD", "tdecoupled": "Decoupled w/ teacher (ours)",
                "kdstudent": "KD student from scratch", "original": "Original", "teacher": "Teacher"}


def pp(x: float) -> str:
    """A difference in percentage points, signed."""
    return "-" if x is None or math.isnan(x) else f"{100 * x:+.2f}"


def ci(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def dci(lo: float, hi: float) -> str:
    return "n/a" if math.isnan(lo) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"


def num(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


class Cells:
    """Formatted figures of one grid (``settings`` from grid.json, ``recs`` the jobs' raw JSON)."""

    def __init__(self, settings: dict[str, Any], recs: dict[str, dict[str, Any]]):
        from ..analysis import stats
        self.stats = stats
        self.S, self.recs = settings, recs
        self.sizes, self.seeds = settings["sizes"], settings["seeds"]
        self.rounds, self.ph = settings["rounds"], settings["progressive_hidden"]
        self.seeds_t3 = settings.get("seeds_t3", self.seeds)

    # ---- job ids
    def ids(self, method: str, h: int | None = None) -> list[str]:
        n = self.seeds_t3 if method in ("gbaseline", "tdecoupled", "kdstudent") else self.seeds
        return [f"{method}-h{h}-s{s}" if h is not None else f"{method}-s{s}" for s in range(n)]

    def chain_ids(self, r: int) -> list[str]:
        return [f"recon-h{self.ph}-s{c}" if r == 1 else f"prog-c{c}-r{r}" for c in range(self.seeds)]

    def orig_ids(self, k: int) -> list[str]:
        return ["original"] * k

    # ---- figures
    def metric(self, jid: str, key: str) -> float | None:
        r = self.recs.get(jid)
        return None if r is None else r["eval"].get(key)

    def group(self, ids: list[str], key: str) -> list[float]:
        return [v for v in (self.metric(i, key) for i in ids) if v is not None]

    def cell(self, ids: list[str], key: str, with_ci: bool = True) -> str:
        xs = self.group(ids, key)
        if not xs:
            return "-"
        m, sd = self.stats.mean_std(xs)
        s = f"{100 * m:.2f} ± {100 * sd:.2f}" if len(xs) > 1 else f"{100 * m:.2f}"
        if with_ci and len(xs) > 1:
            _, lo, hi = self.stats.t_interval(xs)
            s += f" {ci(lo, hi)}"
        return s + ("" if len(xs) == len(ids) else f" (n={len(xs)})")

    def single(self, jid: str, key: str) -> str:
        r = self.recs.get(jid)
        if r is None or r["eval"].get(key) is None:
            return "-"
        v, n = r["eval"][key], r["eval"]["num_examples"]
        lo, hi = self.stats.wilson(round(v * n), n)
        return f"{100 * v:.2f} {ci(lo, hi)}"

    def compare(self, a_ids: list[str], b_ids: list[str], key: str = "accuracy") -> tuple[str, str, str, str]:
        """(mean diff, 95 % CI, verdict, n) of a - b paired by seed; with one pair, paired by image."""
        recs, stats = self.recs, self.stats
        pairs = [(recs[a], recs[b]) for a, b in zip(a_ids, b_ids) if a in recs and b in recs]
        if not pairs:
            return "-", "-", "not run", "0"
        if len(pairs) == 1 and key == "accuracy":
            ra, rb = pairs[0]
            ca, cb = ra["eval"]["correct"], rb["eval"]["correct"]
            if ca == cb:
                return pp(0.0), "-", "identical on every test image", "1"
            m, lo, hi = stats.paired_diff([int(c) for c in ca], [int(c) for c in cb])
            return pp(m), dci(lo, hi), stats.verdict(lo, hi) + " (per image)", "1"
        if key == "accuracy":
            ca = [ra["eval"]["correct"] for ra, _ in pairs]
            cb = [rb["eval"]["correct"] for _, rb in pairs]
            if ca == cb:
                return pp(0.0), "-", "identical on every test image", str(len(pairs))
            m, lo, hi = stats.combined_paired_diff([[int(c) for c in v] for v in ca], [[int(c) for c in v] for v in cb])
        else:  # no per-image outcomes kept: the seed interval, widened to an unpaired binomial one
            xa = [ra["eval"][key] for ra, _ in pairs]
            xb = [rb["eval"][key] for _, rb in pairs]
            m, lo, hi = stats.seed_paired_diff(xa, xb)
            n = pairs[0][0]["eval"]["num_examples"]
            pa, pb = sum(xa) / len(xa), sum(xb) / len(xb)
            h = stats.Z95 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)
            lo, hi = (pa - pb - h, pa - pb + h) if math.isnan(lo) else (min(lo, pa - pb - h), max(hi, pa - pb + h))
        return pp(m), dci(lo, hi), stats.verdict(lo, hi), str(len(pairs))

    def kept(self, jids: list[str]) -> str:
        """The step each run kept (its last phase's best evaluation), per seed: step/steps."""
        out = []
        for i in jids:
            st = (self.recs.get(i) or {}).get("stages") or []
            if st:
                out.append(f"{st[-1].get('best_step')}/{st[-1].get('steps_run')}")
        return ", ".join(out) if out else "-"

    def cr(self, h: int) -> str:
        for s in range(self.seeds):
            for m in ("recon", "baseline", "decoupled", "gbaseline", "tdecoupled"):
                r = self.recs.get(f"{m}-h{h}-s{s}")
                if r:
                    return f"{r['sizes']['compression_ratio']:.2f}"
        return "?"
