"""--sm90-report: the kernels compiled for sm_90 on a machine without a GPU (a development aid)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import torch
import triton

from nernfast.testing.kernel_harness import DTYPES

from .common import Recorder


def sm90_report(out: Path) -> int:
    """--sm90-report: without a GPU, compile every autotuning candidate of the fused kernel (and the
    per-layer GEMM) for sm_90 and report registers, local-memory spills (STACK) and shared memory,
    from ptxas/cuobjdump as bundled with Triton. Uses Triton internals (a stand-in driver giving the
    target); a development aid, not part of the GPU run."""
    import tempfile
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver as drv

    class Target:  # the only driver calls a warm-up compile makes
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
    drv.set_active(Target())
    from nernfast.kernels import fused_mlp as fm
    from nernfast.kernels import linear as lk
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rec = Recorder(out)

    # Part 1: every launcher path (forward and backward, all forms, paths and dtypes) compiles; the
    # launches themselves are no-ops (no GPU), autotuning off (its first config compiles).
    import triton.compiler.compiler as tcc
    from nernfast.encoding import BasicEncoding, FFNEncoding
    from nernfast.ops.predict import predict_rows
    from nernfast.predictor import Predictor
    run, meta = tcc.CompiledKernel.run, tcc.CompiledKernel.launch_metadata
    tcc.CompiledKernel.run = property(lambda self: (lambda *a, **k: None))
    tcc.CompiledKernel.launch_metadata = lambda self, *a: None
    split_k, lk.AUTOTUNE = fm._split_k, False
    fm._split_k = lambda m, n, k, d: 4
    for enc_name, first in (("basic", "table"), ("basic", "direct"), ("ffn", "direct")):
        for hidden, path in ((140, "fused"), (680, "layered")):
            for prec in ("bf16", "fp32", "fp16"):
                for blocks in (3, 4):
                    enc = BasicEncoding() if enc_name == "basic" else FFNEncoding(120)
                    pred = Predictor(enc.out_features, hidden, 3, blocks).to(DTYPES[prec])
                    coords = torch.rand(300, 3)
                    name = f"{enc_name}/{first}/{path}/H{hidden}/{prec}/nb{blocks}"
                    try:
                        with torch.no_grad():
                            predict_rows(pred, enc, coords, backend="triton", first_layer=first, path=path)
                        predict_rows(pred, enc, coords, backend="triton", first_layer=first, path=path).float().sum().backward()
                        rec.add("sm90_compile", {"variant": name, "ok": True})
                        rec.log(f"  compiles: {name} (forward, forward saving, backward)")
                    except Exception as e:
                        rec.add("sm90_compile", {"variant": name, "ok": False, "error": repr(e)[:2000]})
                        rec.log(f"  FAILS: {name}: {e!r}"[:2000])
    tcc.CompiledKernel.run, tcc.CompiledKernel.launch_metadata = run, meta
    fm._split_k, lk.AUTOTUNE = split_k, True

    # Part 2: registers / spills / shared memory of every autotuning candidate.

    def usage(k) -> str:
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(k.asm["cubin"])
        r = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        line = next((x for x in r.splitlines() if "REG:" in x), "")
        return " ".join(w for w in line.split() if w.split(":")[0] in ("REG", "STACK"))

    n, nmid, kk = 94256, 3, 9
    for prec in ("bf16", "tf32"):
        dt = DTYPES[prec]
        for hidden in (140, 320):
            for mode in (fm.ENC_TABLE, fm.ENC_BASIC):
                wf = torch.zeros(kk, hidden, dtype=dt)
                first = torch.zeros(185, hidden) if mode == fm.ENC_TABLE else torch.zeros(hidden, 240, dtype=dt)
                spec = fm.make_spec(mode, 40, first, wf, nmid, "tf32" if prec == "tf32" else "ieee", "fused")
                mids = [(torch.zeros(hidden, hidden, dtype=dt), torch.zeros(hidden, dtype=dt))] * nmid
                pk = fm.pack_weights(spec, None if mode == fm.ENC_TABLE else first,
                                     None if mode == fm.ENC_TABLE else torch.zeros(hidden, dtype=dt), mids, wf,
                                     torch.zeros(kk, dtype=dt))
                tab = fm.pad_table(first, spec) if mode == fm.ENC_TABLE else pk.first
                x = torch.zeros(n, 3, dtype=torch.int32 if mode == fm.ENC_TABLE else torch.float32)
                o = torch.zeros(n, kk, dtype=dt)
                args = (x, tab, pk.b0 if pk.b0 is not None else tab, pk.wm, pk.bm, pk.wf, pk.bf, torch.zeros(40), o, o,
                        n, hidden, spec.in_features, kk, nmid, 40)
                flags = dict(MODE=mode, SAVE=False, ODD=True, DT=spec.dt, DOT_PREC=spec.dot_precision, HP=spec.width,
                             FP=spec.in_padded, KP=spec.out_padded)
                for c in fm._fused_configs(spec.width):
                    t = time.time()
                    try:
                        k = fm._fused_mlp_fwd_kernel.warmup(*args, grid=(1,), num_warps=c.num_warps,
                                                            num_stages=c.num_stages, **flags, **c.kwargs)
                        r = {"kernel": "fused", "prec": prec, "hidden": hidden, "mode": "table" if mode == 2 else "direct",
                             "config": f"{c.kwargs} w{c.num_warps} s{c.num_stages}", "smem_kb": k.metadata.shared // 1024,
                             "usage": usage(k), "compile_s": round(time.time() - t, 1)}
                    except Exception as e:
                        r = {"kernel": "fused", "prec": prec, "hidden": hidden, "config": str(c), "error": repr(e)[:300]}
                    rec.add("sm90_report", r)
                    rec.log(f"  {r}")
        p_, m_ = 688, n
        a = torch.zeros(m_, p_, dtype=dt)
        w = torch.zeros(p_, p_, dtype=dt)
        for c in lk._configs():
            try:
                k = lk._linear_kernel.warmup(a, w.t(), a, w[0], a, x, torch.zeros(40), m_, p_, p_, 40, 0, p_,
                                             *a.stride(), *w.t().stride(), *a.stride(), 0, 0, 0, grid=(1,),
                                             num_warps=c.num_warps, num_stages=c.num_stages, A_ENC=False, B_ENC=False,
                                             ENC_MODE=0, HAS_BIAS=True, RELU=True, HAS_MASK=False, DT=lk.triton_dtype(dt),
                                             DOT_PREC="tf32" if prec == "tf32" else "ieee", **c.kwargs)
                r = {"kernel": "linear bias+relu", "prec": prec, "hidden": 680, "config": f"{c.kwargs} w{c.num_warps} "
                     f"s{c.num_stages}", "smem_kb": k.metadata.shared // 1024, "usage": usage(k)}
            except Exception as e:
                r = {"kernel": "linear", "prec": prec, "config": str(c), "error": repr(e)[:300]}
            rec.add("sm90_report", r)
            rec.log(f"  {r}")
    return 0

