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
