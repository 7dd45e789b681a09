"""95 % intervals for accuracies measured on a finite test set.

* one accuracy (k correct of n): Wilson score interval;
* a mean over seeds: Student-t interval of the per-seed values;
* a difference between two models on the same test images: per image the pair of outcomes is
  known, so the difference is paired: ``paired_diff`` (one pair of models; Wald interval on the
  per-image differences, i.e. built from the discordant images); over several seeds
  ``seed_paired_diff`` (t-interval of the per-seed differences: training noise) and
  ``combined_paired_diff`` (the wider of that and the per-image interval of the seed-averaged
  differences: test-set noise, which the seed interval misses when every seed agrees).

An interval that contains 0 means "within noise" at the 95 % level.
"""
from __future__ import annotations

import math
from typing import Sequence

Z95 = 1.959963984540054


def t_quantile(df: int, q: float = 0.975) -> float:
    """Student-t quantile (scipy when installed; scikit-learn depends on it)."""
    if df < 1:
        return float("nan")
    try:
        from scipy.stats import t
        return float(t.ppf(q, df))
    except ImportError:  # pragma: no cover - table for the 97.5 % quantile only
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
        return table.get(df, Z95)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return m, sd


def t_interval(xs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of a 95 % t-interval; low = high = nan for fewer than two values."""
    m, sd = mean_std(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    h = t_quantile(len(xs) - 1) * sd / math.sqrt(len(xs))
    return m, m - h, m + h


def paired_diff(a: Sequence[int], b: Sequence[int], z: float = Z95) -> tuple[float, float, float]:
    """Accuracy of a minus accuracy of b on the same images (0/1 outcomes): (diff, low, high).

    Wald interval of the mean per-image difference d_i = a_i - b_i in {-1, 0, 1}: only the images
    the two models disagree on contribute."""
    n = len(a)
    if n == 0 or len(b) != n:
        raise ValueError(f"paired_diff needs two outcome vectors of the same length, got {len(a)} and {len(b)}")
    d = [int(x) - int(y) for x, y in zip(a, b)]
    m = sum(d) / n
    var = (sum(x * x for x in d) / n - m * m) / n
    h = z * math.sqrt(max(var, 0.0))
    return m, m - h, m + h


def seed_paired_diff(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Mean over seeds of a_s - b_s with a 95 % t-interval (nan bounds for one seed)."""
    if len(a) != len(b):
        raise ValueError(f"seed_paired_diff needs as many values on both sides, got {len(a)} and {len(b)}")
    return t_interval([x - y for x, y in zip(a, b)])


def combined_paired_diff(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> tuple[float, float, float]:
    """Seeds s = 1..S of two methods, each a 0/1 outcome vector on the same n test images.
    (mean difference, low, high): the union of the seed-level t-interval of the per-seed accuracy
    differences and the per-image interval of d_i = mean_s (a_si - b_si)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"combined_paired_diff needs as many seeds on both sides, got {len(a)} and {len(b)}")
    n = len(a[0])
    accs_a = [sum(v) / n for v in a]
    accs_b = [sum(v) / n for v in b]
    m, lo, hi = seed_paired_diff(accs_a, accs_b)
    d = [sum(int(a[s][i]) - int(b[s][i]) for s in range(len(a))) / len(a) for i in range(n)]
    md = sum(d) / n
    sd = math.sqrt(sum((x - md) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    h = Z95 * sd / math.sqrt(n)
    if math.isnan(lo):
        return md, md - h, md + h
    return m, min(lo, md - h), max(hi, md + h)


def verdict(low: float, high: float) -> str:
    """'within noise' when the 95 % interval contains 0, else which side it is on."""
    if math.isnan(low) or math.isnan(high):
        return "n/a (one seed)"
    if low <= 0 <= high:
        return "within noise"
    return "higher" if low > 0 else "lower"
