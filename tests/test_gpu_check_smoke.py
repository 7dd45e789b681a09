"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's whole logic (small and "full-size" correctness,
every timing path, the table, the targets) on tiny shapes under the Triton interpreter, in a
subprocess so that the script's own set-up (TRITON_INTERPRET before triton is imported) is what runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_smoke(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--cpu-smoke"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"gpu_check --cpu-smoke failed (rc {r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["env"]["interpreter"] and res["failures"] == 0
    checks = res["small_correctness"] + res["full_correctness"]
    assert checks and all(c["ok"] for c in checks), [c for c in checks if not c["ok"]]
    paths = {t["path"].split(" (")[0] for t in res["timings"]}
    assert {"reference", "fused-fwd", "fused-fwd+bwd 4096", "torch", "floor"} <= paths, paths
    assert (tmp_path / "table.md").read_text().count("\n| resnet20") == len(res["timings"])
    assert (tmp_path / "log.txt").exists()
