"""A bare checkout (the repository on sys.path, not installed) finds nernfast.kernels, the top-level
kernels/ folder that setup.py maps when installing; without kernels/ the Triton path says so clearly.

The first check runs a fresh interpreter on a copy of the tree in tmp_path, with the editable
install's finder removed, so only the copy can provide nernfast and nernfast.kernels."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRELUDE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "__name__", type(f).__name__) != "_EditableFinder"]
import nernfast
assert nernfast.__file__.startswith(sys.argv[1]), nernfast.__file__
"""


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.so")
    for part in ("nernfast", "kernels"):
        shutil.copytree(ROOT / part, repo / part, ignore=ignore)
    return repo


def _run(repo: Path, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(repo), TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-c", PRELUDE + code, str(repo)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bare_checkout_loads_kernels_from_the_source_tree(tmp_path):
    repo = _copy(tmp_path)
    r = _run(repo, """
import torch
from nernfast.kernels import fused_mlp
assert fused_mlp.__file__ == str(__import__("pathlib").Path(sys.argv[1]) / "kernels" / "fused_mlp.py"), fused_mlp.__file__
from nernfast.encoding import BasicEncoding
from nernfast.ops.predict import predict_rows, predict_rows_reference
from nernfast.predictor import Predictor
enc = BasicEncoding(levels=4)
pred = Predictor(enc.out_features, 16, 3, 3)
c = torch.randint(0, 5, (7, 3)).float()
with torch.no_grad():
    torch.testing.assert_close(predict_rows(pred, enc, c, backend="triton"), predict_rows_reference(pred, enc, c))
print("ok")
""")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


def test_missing_kernels_give_a_clear_error(tmp_path, monkeypatch):
    """In-process: no installed mapping, no kernels/ beside the package, no module imported yet."""
    import nernfast._source_tree as st
    from nernfast.ops.predict import _kernels
    monkeypatch.setattr(st, "KERNELS", tmp_path / "kernels")
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path
                                           if getattr(f, "__name__", type(f).__name__) != "_EditableFinder"])
    for name in [m for m in sys.modules if m == "nernfast.kernels" or m.startswith("nernfast.kernels.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(sys.modules["nernfast"], "kernels", raising=False)
    with pytest.raises(ImportError, match=r"nernfast.kernels .*pip install -e \.\) or run from a checkout with kernels/ "
                                          r"beside nernfast/"):
        _kernels()
