"""The benchmark cases: shapes, step kinds and variants, each a callable run once per round.

A *setup* holds one shape's fixed inputs: the original (and a teacher), nernfast's NeRN, the
reference's precomputed encoding matrix, one image batch and the weight mini-batch of every round
(``rows(i)``: the same rows carry gradient in round ``i`` of every variant, from the same seeded
``random_weighted_batch`` draw). A *variant* is built from a setup with its own copy of the same
initial predictor and its own optimiser, so variants never share state.

Step kinds (loss weights and optimiser from the shipped recipes, ``nernfast.config.resolve``):
  recon          reconstruction only. Reference: its step during the warm-up (everything runs, the
                 distillation terms are multiplied away). nernfast: ``ReconTarget.fast_loss``.
  joint          the baseline recipe past its warm-up: L_rec + a L_fmd + b L_kd from the original.
  distill        decoupled phase 2: lambda L_rec + L_kd from the original.
  distill-teacher teacher_decoupled phase 2: lambda L_rec + L_kd from a teacher (ResNet-56).
Variants: ``reference`` and ``reference-frozen`` (benchmarks/reference_baseline.py), ``plain``
(nernfast with NERNFAST_REFERENCE=1: every op on its plain-PyTorch reference), ``fast`` (nernfast's
dispatch, float32), ``fast-bf16`` (bf16 autocast, the trainer's ``precision: bf16``) and
``fast-bf16-cl`` (plus ``channels_last``). Materialisation also has ``fast-chunk4096`` and
``fast-bf16-chunk4096`` (``NeRN.materialize_(model, chunk=4096)``: the public API's chunk argument,
which bounds the intermediates on the CPU) and the matmul floors ``floor-fp32``/``floor-bf16``: the
predictor as one chain of matmuls on the precomputed encoding, in one pass.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from nernfast.batching import sample_rows
from nernfast.config import resolve
from nernfast.models import build_model, copy_frozen
from nernfast.nern import NeRN
from nernfast.optim import build_optimizer
from nernfast.training.objectives import PhaseNets, ReconTarget, data_loss

from reference_baseline import ReferenceNeRN, encoding_matrix

SHAPES = {  # name -> (architecture, predictor hidden width)
    "resnet20-h16": ("resnet20", 16),      # smoke shape (tests/test_benchmarks_smoke.py), not in make bench
    "resnet20-h140": ("resnet20", 140),
    "resnet56-h320": ("resnet56", 320),
    "resnet56-h680": ("resnet56", 680),
}
DEFAULT_SHAPES = ("resnet20-h140", "resnet56-h320", "resnet56-h680")
TEACHER = "resnet56"   # the CIFAR-10 default teacher (nernfast.pretrain.DEFAULT_TEACHER)
BATCH = 128            # image batch of every data-driven step
IMAGE = (3, 32, 32)    # CIFAR size; random data (speed only)
NUM_CLASSES = 10
WEIGHTS_BATCH = 4096   # rows carrying gradient per step (paper D.2, CIFAR)

STEP_KINDS = ("recon", "joint", "distill", "distill-teacher")
STEP_VARIANTS = ("reference", "reference-frozen", "plain", "fast", "fast-bf16", "fast-bf16-cl")
MATERIALIZE_VARIANTS = ("reference", "plain", "fast", "fast-bf16", "fast-chunk4096", "fast-bf16-chunk4096",
                        "floor-fp32", "floor-bf16")
CHUNK = 4096           # rows per chunk of the *-chunk4096 variants (NeRN.materialize_(model, chunk=CHUNK))
SKIP = {("recon", "fast-bf16-cl")}     # no images in a reconstruction step: channels_last has nothing to do
# channels_last is timed on one full shape (and the smoke shape), to keep `make bench` short.
CHANNELS_LAST_SHAPES = ("resnet20-h16", "resnet56-h320")


def step_variants(kind: str, shape: str) -> list[str]:
    return [v for v in STEP_VARIANTS if (kind, v) not in SKIP
            and (v != "fast-bf16-cl" or shape in CHANNELS_LAST_SHAPES)]
# (baseline, candidate) pairs written to results.json, per case family.
STEP_PAIRS = [("reference", "reference-frozen"), ("reference", "plain"), ("reference", "fast"),
              ("reference", "fast-bf16"), ("reference", "fast-bf16-cl"), ("reference-frozen", "fast"),
              ("reference-frozen", "fast-bf16"), ("plain", "fast")]
MATERIALIZE_PAIRS = [("reference", "plain"), ("reference", "fast"), ("reference", "fast-bf16"),
                     ("reference", "fast-chunk4096"), ("reference", "fast-bf16-chunk4096"),
                     ("reference", "floor-fp32"), ("reference", "floor-bf16"), ("plain", "fast"),
                     ("floor-fp32", "fast"), ("floor-bf16", "fast-bf16")]


def phase_config(kind: str):
    """The shipped recipe phase a step kind stands for."""
    if kind in ("recon", "joint"):
        return resolve("baseline").phase1
    if kind == "distill":
        return resolve("decoupled").phase2
    if kind == "distill-teacher":
        # L_rec + L_kd from the teacher, as the reference's teacher extension defines the step (its
        # feature-map term is off); the shipped recipe adds L_fmd against the original on top.
        return dataclasses.replace(resolve("teacher_decoupled").phase2, fmd_weight=0.0)
    raise ValueError(f"unknown step kind {kind!r}; choose one of {STEP_KINDS}")


@contextlib.contextmanager
def reference_ops(on: bool) -> Iterator[None]:
    """NERNFAST_REFERENCE=1 within the block when ``on`` (read by nernfast at every op call)."""
    old = os.environ.get("NERNFAST_REFERENCE")
    if on:
        os.environ["NERNFAST_REFERENCE"] = "1"
    try:
        yield
    finally:
        if on:
            if old is None:
                os.environ.pop("NERNFAST_REFERENCE", None)
            else:
                os.environ["NERNFAST_REFERENCE"] = old


@dataclass
class Setup:
    shape: str
    batch: int = BATCH
    device: str = "cpu"
    seed: int = 0
    _rows: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        arch, hidden = SHAPES[self.shape]
        torch.manual_seed(self.seed)
        self.original = copy_frozen(build_model(arch, NUM_CLASSES, IMAGE[0]))
        _randomise_bn(self.original, self.seed)
        self.original.to(self.device)
        self.nern = NeRN.from_model(self.original, hidden=hidden)
        self.plan = self.nern.plan
        self.target = ReconTarget(self.plan, self.plan.weights_of(self.original), self.device)
        self.x = torch.randn((self.batch,) + IMAGE, generator=torch.Generator().manual_seed(self.seed)).to(self.device)

    @property
    def cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @cached_property
    def teacher(self) -> nn.Module:
        torch.manual_seed(self.seed + 1)
        t = copy_frozen(build_model(TEACHER, NUM_CLASSES, IMAGE[0]))
        _randomise_bn(t, self.seed + 1)
        return t.to(self.device)

    @cached_property
    def enc(self) -> torch.Tensor:
        return encoding_matrix(self.nern.encoding, self.plan.coords)

    def rows(self, i: int) -> torch.Tensor | None:
        """Round ``i``'s weight mini-batch (the same for every variant)."""
        if i not in self._rows:
            g = torch.Generator().manual_seed(10_000 + i)
            self._rows[i] = sample_rows("random_weighted_batch", self.plan.num_rows, WEIGHTS_BATCH, g,
                                        self.target.norms)
        return self._rows[i]

    def fresh_nern(self) -> NeRN:
        return copy.deepcopy(self.nern)


def _randomise_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, so feature maps and logits are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.weight.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


# ---- training steps -------------------------------------------------------------------------------

def _synced(setup: Setup, fn: Callable[[int], object]) -> Callable[[int], object]:
    """``fn`` followed by a device synchronisation (CUDA), so a round's time covers its work."""
    if not setup.cuda:
        return fn

    def run(i: int) -> object:
        out = fn(i)
        torch.cuda.synchronize(setup.device)
        return out
    return run


def make_step(setup: Setup, kind: str, variant: str) -> Callable[[int], object]:
    """A callable running round ``i``'s training step of ``kind`` with ``variant``."""
    return _synced(setup, _make_step(setup, kind, variant))


def _make_step(setup: Setup, kind: str, variant: str) -> Callable[[int], object]:
    if (kind, variant) in SKIP:
        raise ValueError(f"variant {variant} does not apply to {kind} steps")
    phase = phase_config(kind)
    if variant in ("reference", "reference-frozen"):
        ref = ReferenceNeRN(setup.original, setup.fresh_nern().predictor, setup.plan, setup.enc,
                            distill=setup.teacher if kind == "distill-teacher" else None,
                            freeze_source=variant == "reference-frozen", weights_batch_size=WEIGHTS_BATCH,
                            recon_weight=phase.recon_weight, fmd_weight=phase.fmd_weight,
                            kd_weight=phase.kd_weight, kd_kind=phase.kd_loss, temperature=phase.temperature,
                            recon_kind=phase.recon_loss)
        warmup = kind == "recon"
        return lambda i: ref.step(setup.rows(i), setup.x, warmup)

    if variant not in ("plain", "fast", "fast-bf16", "fast-bf16-cl"):
        raise ValueError(f"unknown variant {variant!r}; choose one of {STEP_VARIANTS}")
    nern = setup.fresh_nern()
    opt = build_optimizer(nern.predictor.parameters(), phase.optimizer, phase.lr, phase.weight_decay)
    plain = variant == "plain"
    if kind == "recon":
        def recon_step(i: int) -> float:
            with reference_ops(plain):
                # fast-bf16: the trainer's precision bf16 (autocast around the loss, fp32 master weights)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "fast-bf16"):
                    loss = setup.target.fast_loss(nern, setup.rows(i), phase.recon_loss) * phase.recon_weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return loss
        return recon_step

    distill = setup.teacher if kind == "distill-teacher" else setup.original
    shell = copy_frozen(setup.original)
    x = setup.x
    if variant == "fast-bf16-cl":  # the trainer's channels_last: inputs and the distillation source
        distill = copy.deepcopy(distill).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.bfloat16 if variant.startswith("fast-bf16") else None
    nets = PhaseNets(setup.target, shell, distill)
    # data_loss reports float(parts) (a device sync per step), as the trainer's step does.

    def data_step(i: int) -> float:
        with reference_ops(plain):
            loss, parts = data_loss(nern, phase, nets, setup.rows(i), x, autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss
    return data_step


# ---- whole-network materialisation -----------------------------------------------------------------

def make_materialize(setup: Setup, variant: str) -> Callable[[int], object]:
    return _synced(setup, _make_materialize(setup, variant))


def _make_materialize(setup: Setup, variant: str) -> Callable[[int], object]:
    if variant == "reference":
        ref = ReferenceNeRN(setup.original, setup.fresh_nern().predictor, setup.plan, setup.enc,
                            weights_batch_size=WEIGHTS_BATCH)
        return lambda i: ref.materialize()
    if variant.startswith("floor-"):
        dtype = torch.bfloat16 if variant == "floor-bf16" else torch.float32
        lins = [(l.weight.detach().t().contiguous().to(dtype), l.bias.detach().to(dtype))
                for l in setup.nern.predictor.linears()]
        enc = setup.enc.to(dtype)

        @torch.no_grad()
        def floor(i: int) -> torch.Tensor:
            return matmul_chain(enc, lins)
        return floor
    if variant not in MATERIALIZE_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {MATERIALIZE_VARIANTS}")
    nern, model = setup.fresh_nern(), copy_frozen(setup.original)
    plain, bf16 = variant == "plain", variant.startswith("fast-bf16")
    chunk = CHUNK if variant.endswith(f"-chunk{CHUNK}") else None

    def materialize(i: int) -> nn.Module:  # the public call: default chunk unless named, dtype for bf16
        with reference_ops(plain):
            return nern.materialize_(model, chunk=chunk, dtype=torch.bfloat16 if bf16 else None)
    return materialize


def matmul_chain(x: torch.Tensor, lins: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The predictor as one pass of matmuls (weights pre-transposed): the materialisation floor."""
    for w, b in lins[:-1]:
        x = F.relu_(torch.addmm(b, x, w))
    w, b = lins[-1]
    return torch.addmm(b, x, w)


# ---- peak memory -----------------------------------------------------------------------------------

def peak_memory_mb(fn: Callable[[], object], device: str = "cpu") -> float:
    """Peak bytes (MiB) the allocator held during ``fn()`` above what was allocated when it began: on
    CUDA from ``torch.cuda.max_memory_allocated``, on the CPU from torch.profiler's memory events
    (``profile_memory=True``: every tensor allocation and free)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    import json
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    # "Total Allocated" counts from the profiler's start: allocations minus frees seen so far.
    totals = [e["args"].get("Total Allocated", 0) for e in events
              if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    return max(totals, default=0) / 2**20
