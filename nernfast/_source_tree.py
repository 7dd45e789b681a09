"""A bare checkout (the repository on sys.path, not pip-installed): kernels/ as ``nernfast.kernels``.

The Triton kernels live in the top-level ``kernels/`` folder (the layout is part of the design) and
setup.py maps it to ``nernfast.kernels`` when the package is installed, editable or not. From a
bare checkout nothing provides that mapping, so ``from nernfast.kernels import ...`` would fail
exactly where ``choose_backend`` picks Triton (CUDA). This finder supplies it: it answers for
``nernfast.kernels`` alone, after every other finder (an installed mapping always wins), and only
when ``../kernels/fused_mlp.py`` sits beside this package; submodules are then found normally.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

NAME = "nernfast.kernels"
KERNELS = Path(__file__).resolve().parent.parent / "kernels"


class SourceTreeKernels(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME or not (KERNELS / "fused_mlp.py").is_file():
            return None
        return importlib.util.spec_from_file_location(NAME, KERNELS / "__init__.py",
                                                      submodule_search_locations=[str(KERNELS)])


def install() -> None:
    if not any(isinstance(f, SourceTreeKernels) for f in sys.meta_path):
        sys.meta_path.append(SourceTreeKernels())
