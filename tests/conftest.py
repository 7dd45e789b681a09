"""Shared pytest setup."""
from __future__ import annotations

import os

import torch

# Triton kernels run on the CPU only under its interpreter, and Triton reads TRITON_INTERPRET when a kernel
# is defined (at import of nernfast.kernels.*): set it before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from nernfast.testing.seed import seed_report, session_seed  # noqa: E402


def pytest_report_header(config):
    try:
        session_seed()
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    return seed_report()


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (the kernel and dispatch tests reseed from
    ``session_seed()``, which ``NERNFAST_TEST_SEED`` controls)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One permutation cache per test module: models rebuilt with the same seed reuse it."""
    return tmp_path_factory.mktemp("perm-cache")
