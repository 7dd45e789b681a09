"""Loss landscape on the plane through three weight sets (paper App. C, Fig. 6 and Fig. 7).

Given θ0, θ1, θ2 (all floating-point state entries of one architecture, flattened), the plane is
spanned by an orthonormal basis (Gram–Schmidt, as Garipov et al. 2018):

    u = θ1 − θ0,  e1 = u / ‖u‖,  v = θ2 − θ0,  e2 = (v − (v·e1) e1) / ‖v − (v·e1) e1‖,
    θ(x, y) = θ0 + x·e1 + y·e2,

so distances on the plot are distances in weight space. The three sets sit at (0, 0), (‖u‖, 0)
and (v·e1, ‖v − (v·e1) e1‖). The grid spans their bounding box widened by ``margin`` times its
size on each side. At every grid point the given evaluators (e.g. train and test split) report
(accuracy, mean cross-entropy). BN running statistics are part of the state and move with the
plane (for NeRN solutions they are the original's in all three sets, so they stay fixed); outside
the triangle an extrapolated running variance is clamped at 0.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn


@dataclass
class Plane:
    keys: list[str]                    # floating state entries spanned (the rest stay θ0's)
    shapes: list[torch.Size]
    origin: torch.Tensor               # θ0 flattened, float64
    e1: torch.Tensor
    e2: torch.Tensor
    points: list[tuple[float, float]]  # plane coordinates of θ0, θ1, θ2

    def vector(self, x: float, y: float) -> torch.Tensor:
        return self.origin + x * self.e1 + y * self.e2

    def state(self, base: Mapping[str, torch.Tensor], x: float, y: float) -> dict[str, torch.Tensor]:
        """``base`` with the spanned entries replaced by θ(x, y)."""
        out = dict(base)
        vec, off = self.vector(x, y), 0
        for k, shape in zip(self.keys, self.shapes):
            n = shape.numel()
            out[k] = vec[off:off + n].view(shape).to(base[k].dtype).clone()
            if k.endswith("running_var"):  # extrapolated variances may cross 0; BN adds its eps
                out[k].clamp_(min=0.0)
            off += n
        return out


def _flat(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().double().reshape(-1).cpu() for k in keys])


def make_plane(states: Sequence[Mapping[str, torch.Tensor]]) -> Plane:
    if len(states) != 3:
        raise ValueError(f"a plane needs exactly three weight sets, got {len(states)}")
    s0 = states[0]
    keys = [k for k, v in s0.items() if v.is_floating_point()]
    for i, s in enumerate(states[1:], 1):
        bad = [k for k in keys if k not in s or s[k].shape != s0[k].shape]
        if bad:
            raise ValueError(f"weight set {i} does not match the first ({bad[:5]}); use one architecture")
    t0, t1, t2 = (_flat(s, keys) for s in states)
    u, v = t1 - t0, t2 - t0
    nu = float(u.norm())
    if nu == 0.0:
        raise ValueError("the first and second weight sets are identical: no plane through them")
    e1 = u / nu
    px = float(v @ e1)
    w = v - px * e1
    nw = float(w.norm())
    if nw <= 1e-6 * max(nu, float(v.norm())):  # float32 weights: rounding leaves ~1e-7
        raise ValueError("the three weight sets are (nearly) collinear: no unique plane through them")
    e2 = w / nw
    return Plane(keys, [s0[k].shape for k in keys], t0, e1, e2, [(0.0, 0.0), (nu, 0.0), (px, nw)])


def grid_axes(plane: Plane, n: int, margin: float = 0.25) -> tuple[list[float], list[float]]:
    """``n`` x-values and ``n`` y-values covering the three points, widened by ``margin``."""
    if n < 2:
        raise ValueError(f"grid size must be at least 2, got {n}")
    xs, ys = [p[0] for p in plane.points], [p[1] for p in plane.points]

    def axis(lo: float, hi: float) -> list[float]:
        pad = margin * (hi - lo)
        lo, hi = lo - pad, hi + pad
        return [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return axis(min(xs), max(xs)), axis(min(ys), max(ys))


def landscape(models: Sequence[nn.Module], evaluators: Mapping[str, Callable[[nn.Module], tuple[float, float]]],
              n: int = 11, margin: float = 0.25, xs: Sequence[float] | None = None,
              ys: Sequence[float] | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Evaluate every grid point. Returns ``xs``, ``ys``, ``points`` and for each evaluator
    ``loss[i][j]`` / ``accuracy[i][j]`` at (xs[j], ys[i]), plus the values at the three points."""
    states = [m.state_dict() for m in models]
    plane = make_plane(states)
    if xs is None or ys is None:
        gx, gy = grid_axes(plane, n, margin)
        xs, ys = xs or gx, ys or gy
    work = copy.deepcopy(models[0]).eval()
    out: dict[str, Any] = {"xs": list(map(float, xs)), "ys": list(map(float, ys)),
                           "points": [list(p) for p in plane.points], "values": {}, "at_points": {}}
    for name in evaluators:
        out["values"][name] = {"loss": [[0.0] * len(xs) for _ in ys], "accuracy": [[0.0] * len(xs) for _ in ys]}
    total, k = len(xs) * len(ys), 0
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            work.load_state_dict(plane.state(states[0], x, y))
            for name, ev in evaluators.items():
                acc, loss = ev(work)
                out["values"][name]["loss"][i][j] = float(loss)
                out["values"][name]["accuracy"][i][j] = float(acc)
            k += 1
            if progress:
                progress(k, total)
    for name, ev in evaluators.items():
        out["at_points"][name] = []
        for p in plane.points:
            work.load_state_dict(plane.state(states[0], *p))
            acc, loss = ev(work)
            out["at_points"][name].append({"accuracy": float(acc), "loss": float(loss)})
    return out
