"""Whole-network writes of predicted rows into conv weights: the C++ op vs the per-layer Python loop.

    .venv/bin/python -m pytest benchmarks/bench_scatter.py -q [--benchmark-json out.json]

Cases (random rows; the predictor is not part of these timings), per network:
  write     rows -> the model's conv weights, no autograd (what ``NeRN.materialize_`` does after the
            predictor): ``write_rows_`` into the bound flat buffer (one ``scatter_rows_into`` call, or
            one copy for uniform plans) vs ``write_layers_reference`` (slice, crop, copy per layer, the
            loop the reference runs)
  write+model  the same including each side's per-call look-up of the model's convs
            (``bind_flat``'s binding check vs ``plan.weights_of``), i.e. all of materialize_ but the predictor
  autograd  differentiable rows -> flat (forward + backward to the rows): ``rows_to_flat`` (one
            ``scatter_rows``; backward one ``gather_rows``) vs ``rows_to_flat_reference`` (per-layer
            crops + cat; backward through them)
Networks: ResNet-56 option B (1x1 shortcut convs: a non-uniform plan, the op does the crop) and
ResNet-56 option A (all 3x3: uniform, zero-copy where the rows already are the flat buffer).
On CUDA (when present) the same cases run on the GPU, synchronised per round.
Compare ratios only within one run (``group`` = case; pytest-benchmark's table lists both variants).
"""
from __future__ import annotations

import pytest
import torch

from nernfast import _ext, build_model
from nernfast.binding import bind_flat
from nernfast.ops.scatter import rows_to_flat, rows_to_flat_reference, write_layers_reference, write_rows_
from nernfast.plan import build_plan

NETS = ("resnet56b", "resnet56")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ROUNDS = 30


class Net:
    def __init__(self, name: str, device: str):
        torch.manual_seed(0)
        self.model = build_model(name).to(device)
        self.plan = build_plan(self.model, permutation="none")  # the write cost does not depend on it
        self.rows = torch.randn(self.plan.num_rows, self.plan.kernel_size ** 2, device=device)
        self.weights = self.plan.weights_of(self.model)
        self.device = device


_NETS: dict[tuple[str, str], Net] = {}


def net(name: str, device: str) -> Net:
    if (name, device) not in _NETS:
        _NETS.clear()
        _NETS[name, device] = Net(name, device)
    return _NETS[name, device]


def timed(benchmark, fn, device: str):
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3, iterations=1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["op", "per-layer-loop"])
@pytest.mark.parametrize("name", NETS)
def test_write(benchmark, name, variant, device):
    n = net(name, device)
    benchmark.group = f"write/{name}/{device}"
    benchmark.extra_info.update(rows=n.plan.num_rows, numel=n.plan.numel, uniform=n.plan.uniform,
                                layers=len(n.plan.layers), ext=_ext.available())
    if variant == "op":
        if not n.plan.uniform and not _ext.supports(n.rows):
            pytest.skip("nernfast._C not built (or no kernel for this device): nothing to compare")
        flat = bind_flat(n.model, n.plan)
        timed(benchmark, lambda: write_rows_(flat, n.rows, n.plan), device)
        expected = rows_to_flat_reference(n.rows, n.plan)
        assert torch.equal(flat, expected)
    else:
        timed(benchmark, lambda: write_layers_reference(n.rows, n.plan, n.weights), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["op", "per-layer-loop"])
@pytest.mark.parametrize("name", NETS)
def test_write_with_model_lookup(benchmark, name, variant, device):
    n = net(name, device)
    benchmark.group = f"write+model/{name}/{device}"
    if variant == "op":
        if not n.plan.uniform and not _ext.supports(n.rows):
            pytest.skip("nernfast._C not built (or no kernel for this device): nothing to compare")
        timed(benchmark, lambda: write_rows_(bind_flat(n.model, n.plan), n.rows, n.plan), device)
    else:
        timed(benchmark, lambda: write_layers_reference(n.rows, n.plan, n.plan.weights_of(n.model)), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["op", "per-layer-loop"])
@pytest.mark.parametrize("name", NETS)
def test_autograd(benchmark, name, variant, device):
    n = net(name, device)
    benchmark.group = f"autograd/{name}/{device}"
    if variant == "op" and not n.plan.uniform and not _ext.supports(n.rows):
        pytest.skip("nernfast._C not built (or no kernel for this device): nothing to compare")
    fn = rows_to_flat if variant == "op" else rows_to_flat_reference
    rows = n.rows.clone().requires_grad_()
    upstream = torch.randn(n.plan.numel, device=device)

    def step():
        rows.grad = None
        fn(rows, n.plan).backward(upstream)

    timed(benchmark, step, device)
