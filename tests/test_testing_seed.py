"""The tests' seed policy (nernfast.testing.seed): fixed by default, random only when asked."""
from __future__ import annotations

import pytest

from nernfast.testing import seed as S


@pytest.fixture(autouse=True)
def _fresh():
    S.session_seed.cache_clear()
    yield
    S.session_seed.cache_clear()


def test_default_given_random_and_bad(monkeypatch):
    monkeypatch.delenv(S.ENV, raising=False)
    assert S.session_seed() == S.DEFAULT_SEED and "(default;" in S.seed_report()
    S.session_seed.cache_clear()
    monkeypatch.setenv(S.ENV, "12345")
    assert S.session_seed() == 12345 and "replay with NERNFAST_TEST_SEED=12345" in S.seed_report()
    S.session_seed.cache_clear()
    monkeypatch.setenv(S.ENV, "random")
    drawn = S.session_seed()
    assert S.session_seed() == drawn, "one seed per process"
    assert f"NERNFAST_TEST_SEED={drawn} (random;" in S.seed_report()
    S.session_seed.cache_clear()
    monkeypatch.setenv(S.ENV, "12x")
    with pytest.raises(ValueError, match="integer seed or 'random'"):
        S.session_seed()
