"""Runs inside NNCodec's own virtualenv (never imported by nernfast): codes a network's parameters
with NNCodec 2.1.3 at a sweep of quantisation parameters and decodes them again.

    NNCODEC_PY benchmarks/nncodec_worker.py IN.npz OUT_DIR --qp -20 -26 ...

IN.npz: the float32 parameters to code (name -> array). For every QP it writes
OUT_DIR/qp<QP>.nnc (the bitstream, i.e. the whole coded file) and OUT_DIR/qp<QP>.npz (the decoded
parameters), and prints one JSON line {"qp": .., "bytes": .., "seconds": ..}. Setup of the venv:
docs/compression.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("params")
    p.add_argument("out")
    p.add_argument("--qp", type=int, nargs="+", required=True)
    p.add_argument("--nonweight-qp", type=int, default=-75, help="QP of 1-D parameters (BN, biases); NNCodec's default")
    a = p.parse_args()
    from nncodec.nnc import compression as nnc
    params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in np.load(a.params).items()}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for qp in a.qp:
        t0 = time.perf_counter()
        bs_path = out / f"qp{qp}.nnc"
        with contextlib.redirect_stdout(io.StringIO()):  # NNCodec prints progress to stdout
            bs = nnc.compress(dict(params), bitstream_path=str(bs_path), qp=qp, nonweight_qp=a.nonweight_qp,
                              use_dq=True, return_bitstream=True, verbose=False)
            bs_path.write_bytes(bytes(bs))
            rec = nnc.decompress(str(bs_path), verbose=False)
        rec = rec[0] if isinstance(rec, tuple) else rec
        np.savez(out / f"qp{qp}.npz", **{k: np.asarray(v, dtype=np.float32) for k, v in rec.items()})
        print(json.dumps({"qp": qp, "bytes": bs_path.stat().st_size, "seconds": round(time.perf_counter() - t0, 2)}),
              flush=True)


if __name__ == "__main__":
    main()
