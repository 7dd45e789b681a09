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


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's cache (pretrained networks, shared phase 1, evaluations)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NERNFAST_CACHE", str(tmp_path_factory.mktemp("nernfast-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same global RNG state (the kernel and dispatch tests reseed from
    ``session_seed()``, which ``NERNFAST_TEST_SEED`` controls)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One permutation cache per test module: models rebuilt with the same seed reuse it."""
    return tmp_path_factory.mktemp("perm-cache")


def check_clear_error(code: int, stderr: str, *fragments: str, expect_code: int = 2) -> str:
    """Assert a clear CLI error: exit code ``expect_code`` and ONE stderr line, ``error: ...``,
    containing every fragment (case-insensitive; name the problem and the fix). Returns the line.
    One-line warnings said before the work (e.g. on a near-random original) are not part of the error."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("warning: ")]
    assert code == expect_code, f"exit code {code}, expected {expect_code}; stderr:\n{stderr}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for f in fragments:
        assert f.lower() in line.lower(), f"{f!r} not in: {line}"
    return line


@pytest.fixture
def cli_error(capsys):
    """``cli_error(main, argv, *fragments, code=2)``: run a CLI's ``main(argv)`` in-process and
    check its error with ``check_clear_error``; returns the message line."""
    def run(main, argv, *fragments, code: int = 2) -> str:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        return check_clear_error(rc, capsys.readouterr().err, *fragments, expect_code=code)
    return run
