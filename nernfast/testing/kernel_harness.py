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
encoding would charge that difference to the kernel alone; for the same reason the reference's FFN
encoding is evaluated in the kernel's order (``encoded_as_kernel``).

ReLU kinks: a ReLU whose pre-activation lies within rounding distance of 0 may switch on in one
computation and off in another, and one such flip moves a weight gradient by that row's whole
contribution (O(1), not O(rounding)), so max errors of two computations with different flips are not
comparable (heavy-tailed). Two measures keep flips out of the comparison:

* The reference rounds where the kernel rounds. The interpreter cannot do bf16 arithmetic, so there
  bf16 inputs take the fp32 compute path on the bf16 values (result rounded to bf16; ``fused_mlp``'s
  detour): the reference then is the fp32 composition on the same values (with the table first
  layer, on the encoding rounded to bf16, as ``first_layer_table`` rounds it), rounded to bf16 at
  the end, and only a GPU run proves the native bf16 path. (A bf16 reference against the detour
  failed 4-5 % of seeds, every time on a flip only the kernel took.)
* Rows whose masks still differ carry no gradient. Same rounding points still leave 1-ulp
  activation differences (another summation order), and rarely one of them crosses a kink (0.3 % of
  seeds of an 8-block fp16 case). ``check_rows`` reads the kernel's masks from its saved activations
  (the op's second output), requires every difference from the reference's masks to sit at a kink
  (a float64 pre-activation within ``KINK * FLOOR`` of its layer's scale; a wrong branch elsewhere is
  a kernel bug) on at most a quarter of the rows, and zeroes the upstream gradient of those rows.

Measured with benchmarks/tolerance_sweep.py (failure rates over many seeds, both rules).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..encoding import BasicEncoding, FFNEncoding, PositionalEncoding
from ..ops.predict import predict_rows
from ..predictor import Predictor

FLOOR = {"fp32": 1e-5, "tf32": 2.0**-10, "fp16": 2.0**-10, "bf16": 2.0**-7}
KINK = 4  # a ReLU may legitimately flip only within KINK * FLOOR of its layer's scale from 0 (kink_rows)
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


def encoded_as_kernel(enc: nn.Module, coords: torch.Tensor) -> torch.Tensor:
    """``enc(coords)`` in fp32, evaluated in the kernels' order (kernels/encoding.py): the FFN argument
    as ((2 pi p_0) B_k0 + (2 pi p_1) B_k1) + (2 pi p_2) B_k2, each product and sum rounded. The
    module's matmul rounds otherwise, and with integer coordinates (|x| ~ 10^3, ulp ~ 10^-4) that
    alone took up the whole factor 2 (1 of 400 seeds over the bound). The basic encoding's single
    product per feature is bit-identical already."""
    ke = enc.kernel_encoding() if isinstance(enc, PositionalEncoding) else None
    if ke is None or ke.kind != "ffn":
        return enc(coords)
    p, b = coords.float() * (2 * math.pi), ke.params
    x = p[:, 0:1] * b[:, 0]
    x = x + p[:, 1:2] * b[:, 1]
    x = x + p[:, 2:3] * b[:, 2]
    return torch.cat((torch.sin(x), torch.cos(x)), 1)


def _reference(prec: str, first: str, enc: nn.Module, pred: Predictor) -> tuple[nn.Module, Callable]:
    """(module, coords -> its input) of the reference doing the kernel's arithmetic (module doc)."""
    dtype = DTYPES[prec]
    if emulated(prec):
        p32 = copy.deepcopy(pred).float()
        return p32, lambda c: enc(c).to(dtype).float() if first == "table" else encoded_as_kernel(enc, c)
    return pred, lambda c: encoded_as_kernel(enc, c).to(dtype)  # basic: = predict_rows_reference(pred, enc, c)


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
    ref_module, ref_input = _reference(prec, first, enc, pred)

    def both(c):
        return ref_module(ref_input(c)), p64(e64(c.double()))
    with precision(prec):
        if g is None:
            with torch.no_grad():
                parts = [both(c) for c in coords.split(chunk)]
            return (torch.cat([r for r, _ in parts]).to(dtype), None, torch.cat([t for _, t in parts]), None)
        ref, truth = both(coords)
        ref_g = [t.to(dtype) for t in param_grads(ref, ref_module, g)]
        truth_g = param_grads(truth, p64, g)
    return ref.detach().to(dtype), ref_g, truth.detach(), truth_g


def preactivations(pred: Predictor, x: torch.Tensor) -> list[torch.Tensor]:
    """The hidden layers' pre-activations (the ReLUs' inputs) of ``pred`` on input features ``x``."""
    zs = []
    with torch.no_grad():
        for lin in pred.layers:
            zs.append(lin(x))
            x = torch.relu(zs[-1])
    return zs


class _SavedActivations(TorchDispatchMode):
    """Records the saved activations (second output) of the ``nernfast::fused_mlp`` calls in the block."""

    def __init__(self):
        super().__init__()
        self.acts: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.name() == "nernfast::fused_mlp":
            self.acts.append(out[1])
        return out


def kink_rows(name: str, prec: str, kernel_acts: torch.Tensor, ref_z: list[torch.Tensor],
              truth_z: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Rows whose ReLU masks differ between the kernel (its saved activations > 0) and the reference,
    and a check record: every differing mask must sit at a kink, a float64 pre-activation within
    ``KINK * FLOOR[prec]`` of its layer's scale (else the kernel's forward took a wrong branch), and
    they may touch at most a quarter of the rows."""
    n, hidden = ref_z[0].shape
    rows = torch.zeros(n, dtype=torch.bool, device=ref_z[0].device)
    worst = 0.0
    for l, (zr, zt) in enumerate(zip(ref_z, truth_z)):
        differ = (kernel_acts[l, :, :hidden] > 0) != (zr > 0)
        if differ.any():
            rows |= differ.any(1)
            worst = max(worst, (zt.abs()[differ].max() / zt.abs().max().clamp_min(1e-30)).item())
    tol = KINK * FLOOR[prec]
    r = {"check": f"{name} ReLU masks", "ok": worst <= tol and int(rows.sum()) <= n // 4, "err": worst, "tol": tol,
         "rows": int(rows.sum())}
    if not r["ok"]:
        r["error"] = (f"kernel and reference ReLU masks differ on {r['rows']} of {n} rows, at pre-activations up to "
                      f"{worst:.3g} x the layer's scale from 0 (a kink is within {tol:.3g})")
    return rows, r


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


def check_rows(name: str, prec: str, first: str, path: str, enc: nn.Module, pred: Predictor,
               coords: torch.Tensor, g: torch.Tensor, keep_graph: bool = False) -> tuple[list[dict], torch.Tensor]:
    """Every check of the kernel on these rows: forward, ReLU masks (``kink_rows``), then each
    parameter gradient with the upstream gradient ``g`` zeroed on the rows whose masks differ (at a
    kink two correct computations may take different branches, and one flip moves a weight gradient
    by that row's whole contribution; the module doc). Returns the records and the kernel's rows
    (with their graph when ``keep_graph``)."""
    ref_module, ref_input = _reference(prec, first, enc, pred)
    p64, e64 = copy.deepcopy(pred).double(), copy.deepcopy(enc).double()
    with precision(prec):
        with _SavedActivations() as saved:
            out = predict_rows(pred, enc, coords, backend="triton", first_layer=first, path=path)
        ref_z, truth_z = preactivations(ref_module, ref_input(coords)), preactivations(p64, e64(coords.double()))
    if len(saved.acts) != 1:
        raise RuntimeError(f"{name}: expected one nernfast::fused_mlp call, saw {len(saved.acts)}")
    kinks, masks = kink_rows(name, prec, saved.acts[0], ref_z, truth_z)
    g = g.clone()
    g[kinks] = 0
    ref, ref_g, truth, truth_g = expected(prec, first, enc, pred, coords, g)
    with precision(prec):
        ours_g = list(torch.autograd.grad(out, list(pred.parameters()), g.to(out.dtype), retain_graph=keep_graph))
    records = [measure(f"{name} forward", out.detach(), ref, truth, prec), masks]
    for (pname, p), a, b, t in zip(pred.named_parameters(), ours_g, ref_g, truth_g):
        r = measure(f"{name} grad {pname}", a, b, t, prec)
        if a.dtype != p.dtype:
            r.update(ok=False, error=f"gradient dtype {a.dtype}, parameter {p.dtype}")
        records.append(r)
    return records, out


def run_case(case: Case, seed: int, device: str | torch.device) -> list[dict]:
    """Every check of ``case`` (``check_rows``) as records (``measure``)."""
    enc, pred, coords = make(case, seed, device)
    g = torch.randn(case.n, case.k ** 2, device=device).to(case.dtype)
    return check_rows(str(case), case.prec, case.first, case.path, enc, pred, coords, g)[0]


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
