"""Make nernfast importable on a machine with none of our setup: the editable install (the C++
extension only when asked: the kernels do not need it and its build would eat the budget), the
re-exec after it (the editable install's import hook is read at interpreter start-up), and the
source-tree fallback when pip or the build fails."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from . import common
from .common import REPO, Recorder


def install(rec: Recorder, with_ext: bool) -> bool:
    env = dict(os.environ)
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    if not with_ext:
        env["NERNFAST_NO_EXT"] = "1"
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", str(REPO)]
    for attempt in ("as asked", "without the C++ extension"):
        rec.log(f"build: {' '.join(cmd)} ({attempt}; NERNFAST_NO_EXT={env.get('NERNFAST_NO_EXT', '0')})")
        t = time.time()
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
            ok, tail = r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        except subprocess.TimeoutExpired:
            ok, tail = False, "timed out"
        rec.log(f"build: {'ok' if ok else 'FAILED'} in {time.time() - t:.0f}s\n{tail if not ok else ''}")
        rec.set("build", {"ok": ok, "seconds": round(time.time() - t, 1), "ext": env.get("NERNFAST_NO_EXT") != "1"})
        if ok or env.get("NERNFAST_NO_EXT") == "1":
            return ok
        env["NERNFAST_NO_EXT"] = "1"
    return False



def reexec_installed() -> None:
    """Run this command again (with --skip-install) so that the editable install is importable."""
    argv = [sys.executable, str(common.SCRIPT), *sys.argv[1:], "--skip-install"]
    os.environ["NERNFAST_GPU_CHECK_T0"] = str(common.T0)
    os.execv(sys.executable, argv)


def ensure_importable(rec: Recorder | None = None):
    """nernfast from the install, or (no pip / failed build) straight from the source tree: with the
    repository on sys.path, nernfast itself loads kernels/ as nernfast.kernels (nernfast/_source_tree.py)."""
    try:
        import nernfast.kernels.fused_mlp  # noqa: F401
    except ImportError:
        (rec.log if rec else print)("nernfast not installed: importing it from the source tree")
        sys.path.insert(0, str(REPO))
        import nernfast.kernels.fused_mlp  # noqa: F401,F811
    import nernfast
    return nernfast
