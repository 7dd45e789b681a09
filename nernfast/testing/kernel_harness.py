"""The kernel checks: cases, their inputs, the reference, the float64 truth and the bound.

One harness for ``tests/test_triton_mlp.py`` (tiny shapes, interpreter or GPU),
``benchmarks/gpu_check.py`` (GPU shapes and whole networks) and ``benchmarks/tolerance_sweep.py``
(failure rates over many seeds).

The bound: with ``truth`` the float64 result (encoding included) for the same parameters, inputs
and upstream gradient, each check requires
    err(kernel) <= 2 * err(reference) + FLOOR[prec] * scale,
errors as max |x - truth| and scale = max |truth| (per output, per parameter gradient). The
reference does the arithmetic the kernel does: operands in the compute dtype, fp32 accumulation.
The kernels sum in another order (and the table path sums three tables instead of one 240-term
product), hence the factor 2; the floor covers a reference that is exact by luck on a tiny shape:
fp32 1e-5 (~2^-17, far below any useful regression), tf32 and fp16 2^-10, bf16 2^-7 (one unit in
the last place of the dtype). The encoding counts as part of the computation: with raw integer
coordinates its fp32 arguments reach ~10^3 (ulp ~10^-4), and the kernel's FFN argument sums its
three terms in another order than the module's matmul, so a truth built on the module's fp32
encoding would charge that difference to the kernel alone.

Why the reference must round where the kernel rounds: a ReLU whose pre-activation lies within
rounding distance of 0 may switch on in one computation and off in another, and one such flip
moves a weight gradient by that row's whole contribution (O(1), not O(rounding)); a computation
with rounding points the reference lacks flips *other* ReLUs, so the max error stops being
comparable (heavy-tailed). The interpreter cannot do bf16 arithmetic, so there bf16 inputs take the
fp32 compute path on the bf16 values (result rounded to bf16; ``fused_mlp``'s detour): the
reference then is the fp32 composition on the same values (with the table first layer, on the
encoding rounded to bf16, as ``first_layer_table`` rounds it), rounded to bf16 at the end, and
only a GPU run proves the native bf16 path. (Measured: benchmarks/tolerance_sweep.py.)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..encoding import BasicEncoding, FFNEncoding
from ..ops.predict import predict_rows, predict_rows_reference
from ..predictor import Predictor

FLOOR = {"fp32": 1e-5, "tf32": 2.0**-10, "fp16": 2.0**-10, "bf16": 2.0**-7}
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Case:
    """A predictor and coordinate rows for one kernel configuration."""
    enc: str        # basic | ffn
    first: str      # direct | table
    path: str       # fused | layered
    prec: str       # fp32 | tf32 | fp16 | bf16
    blocks: int
    hidden: int
    k: int
    n: int
    coords: str = "unit"  # unit: normalised to [0, 1) | int: raw integer indices (normalization 'none', the default)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.prec]

    def __str__(self) -> str:
        return (f"{self.enc}-{self.first}-{self.path}-{self.prec}-nb{self.blocks}-H{self.hidden}-K{self.k}"
                f"-n{self.n}" + ("-int" if self.coords == "int" else ""))


class precision:
    """Context: fp32 matmuls in tf32 (PyTorch and, through predict_rows, the kernels) or not."""

    def __init__(self, prec: str):
        self.mode = "high" if prec == "tf32" else "highest"

    def __enter__(self):
        self.old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.mode)

    def __exit__(self, *exc):
        torch.set_float32_matmul_precision(self.old)


def interpreted() -> bool:
    from ..kernels.linear import INTERPRET  # lazy: TRITON_INTERPRET must be set before triton is imported
    return INTERPRET


def make(case: Case, seed: int, device: str | torch.device) -> tuple[nn.Module, Predictor, torch.Tensor]:
    """(encoding, predictor in the case's dtype, coordinates (n, 3) fp32), all drawn from ``seed``."""
    torch.manual_seed(seed)
    enc = BasicEncoding() if case.enc == "basic" else FFNEncoding(24, seed=seed % 1000)
    pred = Predictor(enc.out_features, case.hidden, case.k, case.blocks)
    with torch.no_grad():  # biases away from zero so the bias paths matter
        for lin in pred.linears():
            lin.bias.uniform_(-0.5, 0.5)
    # Coordinates as a plan makes them, few distinct values per coordinate: (layer, filter, channel)
    # indices as they are (normalization 'none') or divided by a count ('local').
    counts = (20, 64, 48) if case.coords == "int" else (5, 16, 12)
    coords = torch.stack([torch.randint(0, c, (case.n,)) for c in counts], 1).float()
    if case.coords == "unit":
        coords = coords / torch.tensor(counts)
    return enc.to(device), pred.to(device, case.dtype), coords.to(device)


def emulated(prec: str) -> bool:
    """True where the kernel does not compute in ``prec`` itself: bf16 under the interpreter."""
    return prec == "bf16" and interpreted()


def param_grads(out: torch.Tensor, module: nn.Module, g: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, list(module.parameters()), g.to(out.dtype)))


def expected(prec: str, first: str, enc: nn.Module, pred: Predictor, coords: torch.Tensor,
             g: torch.Tensor | None = None, chunk: int = 65536):
    """(reference rows, reference grads, float64 rows, float64 grads) for the kernel's arithmetic.

    ``first``: the first-layer form the kernel uses ("table" or "direct"). Natively the reference is
    ``predict_rows_reference`` in the compute dtype; for the interpreter's bf16 detour it is the fp32
    composition on the bf16 values and on the encoding the kernel sees, rounded to bf16 (module doc).
    Without ``g``: rows only (grads None), computed without autograd in chunks of ``chunk`` rows.
    """
    dtype = DTYPES[prec]
    p64, e64 = copy.deepcopy(pred).double(), copy.deepcopy(enc).double()
    if emulated(prec):
        p32 = copy.deepcopy(pred).float()

        def ref_fn(c):
            x = enc(c)
            return p32(x.to(dtype).float() if first == "table" else x)
        ref_module = p32
    else:
        ref_fn, ref_module = (lambda c: predict_rows_reference(pred, enc, c)), pred

    def both(c):
        return ref_fn(c), p64(e64(c.double()))
    with precision(prec):
        if g is None:
            with torch.no_grad():
                parts = [both(c) for c in coords.split(chunk)]
            return (torch.cat([r for r, _ in parts]).to(dtype), None, torch.cat([t for _, t in parts]), None)
        ref, truth = both(coords)
        ref_g = [t.to(dtype) for t in param_grads(ref, ref_module, g)]
        truth_g = param_grads(truth, p64, g)
    return ref.detach().to(dtype), ref_g, truth.detach(), truth_g


def measure(name: str, ours: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, prec: str) -> dict:
    """One check as a record: ok, err, ref_err, tol, scale (and where the worst error is)."""
    if ours.shape != truth.shape or ours.dtype != ref.dtype:
        return {"check": name, "ok": False, "error": f"shape/dtype {tuple(ours.shape)} {ours.dtype}, reference "
                f"{tuple(truth.shape)} {ref.dtype}"}
    scale = truth.abs().max().item() if truth.numel() else 0.0
    d = (ours.double() - truth).abs()
    e_ours = d.max().item() if d.numel() else 0.0
    e_ref = (ref.double() - truth).abs().max().item() if d.numel() else 0.0
    tol = 2 * e_ref + FLOOR[prec] * scale
    finite = bool(torch.isfinite(ours).all())
    r = {"check": name, "ok": finite and e_ours <= tol, "err": e_ours, "ref_err": e_ref, "tol": tol, "scale": scale}
    if not r["ok"]:
        if not finite:
            r["error"] = "non-finite values"
        else:
            i = tuple(int(j) for j in (d == e_ours).nonzero()[0])
            r["error"] = (f"error {e_ours:.3g} > tol {tol:.3g} (reference error {e_ref:.3g}, scale {scale:.3g}); "
                          f"worst at {i}: ours {ours[i].item():.6g}, reference {ref[i].item():.6g}, float64 "
                          f"{truth[i].item():.6g}")
    return r


def kernel_rows(case: Case, enc: nn.Module, pred: Predictor, coords: torch.Tensor, g: torch.Tensor):
    """The kernel's rows and parameter gradients through ``predict_rows(backend="triton")``."""
    with precision(case.prec):
        out = predict_rows(pred, enc, coords, backend="triton", first_layer=case.first, path=case.path)
        return out.detach(), param_grads(out, pred, g)


def run_case(case: Case, seed: int, device: str | torch.device) -> list[dict]:
    """Every check of ``case`` (forward, then each parameter gradient) as records (``measure``)."""
    enc, pred, coords = make(case, seed, device)
    g = torch.randn(case.n, case.k ** 2, device=device).to(case.dtype)
    ref, ref_g, truth, truth_g = expected(case.prec, case.first, enc, pred, coords, g)
    ours, ours_g = kernel_rows(case, enc, pred, coords, g)
    out = [measure(f"{case} forward", ours, ref, truth, case.prec)]
    for (name, p), a, b, t in zip(pred.named_parameters(), ours_g, ref_g, truth_g):
        r = measure(f"{case} grad {name}", a, b, t, case.prec)
        if a.dtype != p.dtype:
            r.update(ok=False, error=f"gradient dtype {a.dtype}, parameter {p.dtype}")
        out.append(r)
    return out


def check_case(case: Case, seed: int, device: str | torch.device) -> None:
    """``run_case`` for tests: AssertionError naming the first failing check and the seed."""
    for r in run_case(case, seed, device):
        if not r["ok"]:
            raise AssertionError(f"{r['check']}: {r['error']} (replay with NERNFAST_TEST_SEED={seed})")


# ---- deliberate kernel bugs: the bound must catch each (tests, tolerance_sweep --bug) ----------------
def drop_hidden_biases(mp) -> None:
    from ..kernels import fused_mlp as fm
    real = fm.pack_weights

    def pack(*a, **k):
        pk = real(*a, **k)
        pk.bm.zero_()
        return pk
    mp.setattr(fm, "pack_weights", pack)


def mask_from_wrong_row(mp) -> None:
    from ..kernels import fused_mlp as fm
    real = fm.linear

    def linear(*a, mask=None, **k):
        return real(*a, mask=None if mask is None else mask.roll(1, 0), **k)
    mp.setattr(fm, "linear", linear)


def bias_grad_off_by_4_percent(mp) -> None:
    from ..kernels import fused_mlp as fm
    real = fm.mlp_backward

    def backward(*a, **k):
        d_first, d_b0, mids, d_wf, d_bf = real(*a, **k)
        return d_first, d_b0, mids, d_wf, d_bf * 1.04
    mp.setattr(fm, "mlp_backward", backward)


BUGS: dict[str, Callable] = {f.__name__: f for f in (drop_hidden_biases, mask_from_wrong_row,
                                                     bias_grad_off_by_4_percent)}
