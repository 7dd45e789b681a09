"""What the command-line tools (train, pretrain, evaluate, analyze) share: exit codes, the one-line
error for bad input, and the ``--device`` check. docs/errors.md lists the messages."""
from __future__ import annotations

import sys

import torch

EXIT_ERROR = 2      # bad input or a fault the message explains; nothing the user had was changed
EXIT_DIVERGED = 3   # train: a phase's loss became NaN/Inf; OUT holds the best predictor kept before it


class DeviceError(ValueError):
    """A --device this machine does not have; the message lists the ones it has."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions whose message is the whole story (imported lazily: the CLIs start fast)."""
    from .checkpoints import CheckpointError
    from .data import DatasetError
    return ValueError, FileNotFoundError, CheckpointError, DatasetError


def fail(e: BaseException, code: int = EXIT_ERROR) -> int:
    """Print ``error: <message>`` as one line on stderr; returns the exit code."""
    msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"error: {msg}", file=sys.stderr)
    return code


def available_devices() -> list[str]:
    return ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])


def check_device(spec: str, allow_auto: bool = False) -> torch.device:
    """The device named by ``spec`` (cpu, cuda, cuda:N; ``auto`` = cuda when available, where
    allowed), or a DeviceError naming the devices this machine has."""
    have = ", ".join(available_devices()) + (", auto" if allow_auto else "")
    s = str(spec).strip().lower()
    if allow_auto and s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(s)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {spec} is not a device name; pass one of: {have}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"--device {spec}: nernfast runs on the CPU or CUDA GPUs; pass one of: {have}")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DeviceError(f"--device {spec}: {why} (torch {torch.__version__}); pass one of: {have}")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise DeviceError(f"--device {spec}: this machine has {n} CUDA device(s); pass one of: {have}")
    return dev


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals]
                idle = v[3] + (v[4] if len(v) > 4 else 0)   # idle + iowait
                out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def idle_cpus(interval: float = 0.25) -> int:
    """How many of this process's CPUs (its affinity mask) were less than half busy over the last
    ``interval`` seconds; all of them where /proc/stat cannot be read."""
    import os
    import time
    try:
        mine = sorted(os.sched_getaffinity(0))
        a = _cpu_times()
        time.sleep(interval)
        b = _cpu_times()
    except (OSError, AttributeError, ValueError):
        return os.cpu_count() or 1
    free = 0
    for c in mine:
        if c in a and c in b and b[c][1] > a[c][1]:
            free += (b[c][0] - a[c][0]) / (b[c][1] - a[c][1]) < 0.5
    return free


def set_threads(spec: str | int | None = "auto") -> int:
    """``--threads``: N, or ``auto`` (one intra-op thread per CPU found idle at start, at least one).

    Why auto: torch's OpenMP threads wait for each other at every parallel op, so a thread that
    shares its core with another busy process stalls all of them (measured: a step 10-100x slower
    with 2 threads beside one busy process; benchmarks/contention.py). Taking only the idle cores
    keeps a step near its idle time; on an idle machine it takes them all."""
    import os
    if spec is None or str(spec) == "auto":
        n = max(1, idle_cpus())
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # an explicit cap is kept
            n = min(n, int(os.environ["OMP_NUM_THREADS"]))
    else:
        try:
            n = int(spec)
        except ValueError:
            raise ValueError(f"--threads {spec}: expected a positive number or auto") from None
        if n < 1:
            raise ValueError(f"--threads {spec}: expected a positive number or auto")
    torch.set_num_threads(n)
    return n
