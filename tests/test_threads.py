"""--threads: explicit counts, and auto (one thread per CPU idle at start, capped by OMP_NUM_THREADS)."""
from __future__ import annotations

import os

import pytest
import torch

from nernfast import cli


@pytest.fixture(autouse=True)
def _restore():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_explicit_and_bad_counts():
    assert cli.set_threads("3") == 3 and torch.get_num_threads() == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(ValueError, match="--threads"):
            cli.set_threads(bad)


def test_auto_takes_the_idle_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "idle_cpus", lambda interval=0.25: 2)
    assert cli.set_threads("auto") == 2
    monkeypatch.setattr(cli, "idle_cpus", lambda interval=0.25: 0)   # everything busy: still one
    assert cli.set_threads("auto") == 1
    monkeypatch.setattr(cli, "idle_cpus", lambda interval=0.25: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                        # a user's cap is kept
    assert cli.set_threads("auto") == 1


def test_idle_cpus_reads_this_machine():
    n = cli.idle_cpus(0.05)
    assert 0 <= n <= len(os.sched_getaffinity(0))
