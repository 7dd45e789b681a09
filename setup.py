"""Builds nernfast's C++ extension (``nernfast._C``): the CPU ops always, the CUDA ops when possible.

Knobs (environment variables, printed at build time):
  NERNFAST_CUDA=0|1|auto   build the CUDA part (auto: when CUDA_HOME is set and torch has CUDA)
  TORCH_CUDA_ARCH_LIST     CUDA archs, e.g. "9.0" (torch's own variable)
  MAX_JOBS                 parallel compile jobs (torch's own variable)
  NERNFAST_NO_EXT=1        skip the extension entirely (pure-Python install)
  NERNFAST_DEBUG=1         compile with -O0 -g (default: -O3 without debug info, the quicker build)
Install with ``pip install --no-build-isolation -e .`` so the build uses the installed torch.
"""
from __future__ import annotations

import glob
import os

from setuptools import find_packages, setup

packages = find_packages(include=["nernfast", "nernfast.*"]) + ["nernfast.kernels"]
package_dir = {"nernfast": "nernfast", "nernfast.kernels": "kernels"}


def extensions():
    if os.environ.get("NERNFAST_NO_EXT", "0") == "1":
        print("[nernfast build] NERNFAST_NO_EXT=1: skipping the C++ extension")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("[nernfast build] torch not importable (install without --no-build-isolation?): no extension")
        return [], {}
    cpp = sorted(glob.glob("csrc/*.cpp"))
    cu = sorted(glob.glob("csrc/*.cu"))
    if not cpp:
        return [], {}
    want = os.environ.get("NERNFAST_CUDA", "auto").lower()
    use_cuda = want not in ("0", "false", "no") and bool(cu) and CUDA_HOME is not None and torch.version.cuda is not None
    if want in ("1", "true", "yes") and not use_cuda:
        raise RuntimeError("NERNFAST_CUDA=1 but CUDA_HOME is unset or torch has no CUDA: set CUDA_HOME=/usr/local/cuda")
    print(f"[nernfast build] torch {torch.__version__}, CUDA part: {'on' if use_cuda else 'off'} "
          f"(NERNFAST_CUDA={want}, CUDA_HOME={CUDA_HOME}), TORCH_CUDA_ARCH_LIST="
          f"{os.environ.get('TORCH_CUDA_ARCH_LIST', '<torch default>')}, MAX_JOBS={os.environ.get('MAX_JOBS', '<auto>')}")
    # No -std flag: torch's BuildExtension adds the standard its headers need (c++20 for torch 2.14).
    debug = os.environ.get("NERNFAST_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    print(f"[nernfast build] sources: {' '.join(cpp + (cu if use_cuda else []))}; NERNFAST_DEBUG={int(debug)}")
    if use_cuda:
        ext = CUDAExtension("nernfast._C", cpp + cu, define_macros=[("NERNFAST_WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"] + (["-lineinfo"] if debug else [])})
    else:
        ext = CppExtension("nernfast._C", cpp, extra_compile_args={"cxx": cxx})
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = extensions()
setup(packages=packages, package_dir=package_dir, ext_modules=ext_modules, cmdclass=cmdclass)
