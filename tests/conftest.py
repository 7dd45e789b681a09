"""Shared pytest setup."""
from __future__ import annotations

import os

import torch

# Triton kernels run on the CPU only under its interpreter, and Triton reads TRITON_INTERPRET when a kernel
# is defined (at import of nernfast.kernels.*): set it before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's cache (pretrained networks, shared phase 1, evaluations)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NERNFAST_CACHE", str(tmp_path_factory.mktemp("nernfast-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (tests that draw a seed per run use their own)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One permutation cache per test module: models rebuilt with the same seed reuse it."""
    return tmp_path_factory.mktemp("perm-cache")
