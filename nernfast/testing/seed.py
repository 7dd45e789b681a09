"""The seed of the tests that draw random inputs: fixed unless a random one is asked for.

``NERNFAST_TEST_SEED`` unset (or empty): ``DEFAULT_SEED``, so CI sees the same inputs every run;
an integer: that seed (replay); ``random``: a fresh seed, drawn once per process. The seed in use is
printed in pytest's header (tests/conftest.py) and named in the kernel checks' failure messages.
"""
from __future__ import annotations

import functools
import os
import random

DEFAULT_SEED = 0
ENV = "NERNFAST_TEST_SEED"


@functools.cache
def session_seed() -> int:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SEED
    if raw.lower() == "random":
        return random.SystemRandom().randrange(2**31)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected an integer seed or 'random'") from None


def seed_report() -> str:
    raw = os.environ.get(ENV, "").strip()
    origin = "random" if raw.lower() == "random" else ("given" if raw else "default")
    return f"{ENV}={session_seed()} ({origin}; replay with {ENV}={session_seed()}, draw a new one with {ENV}=random)"
