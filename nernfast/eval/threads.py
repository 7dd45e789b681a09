"""One torch CPU thread for tiny inputs.

Digits' 8x8 images give a second intra-op thread nothing to do, and when other processes load the
CPU two OpenMP threads waiting on each other made a ResNet-20 digits step ~20x slower (measured on
this 2-core machine at load ~8: 0.06-0.07 s/step with 1 thread, 1.2-1.8 s/step with 2). So
training and evaluation on inputs of side <= SMALL_INPUT_MAX_SIDE on the CPU use one thread,
restoring the previous setting afterwards.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterable, Iterator

import torch

SMALL_INPUT_MAX_SIDE = 16


@contextlib.contextmanager
def cpu_threads_for_side(side: int, device) -> Iterator[None]:
    old = torch.get_num_threads()
    change = torch.device(device).type == "cpu" and side <= SMALL_INPUT_MAX_SIDE and old != 1
    if change:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(old)


def cpu_threads_for(bundle, device):
    """:func:`cpu_threads_for_side` for a DataBundle's input size."""
    return cpu_threads_for_side(bundle.image_size, device)


@contextlib.contextmanager
def threads_for_batches(batches: Iterable, device) -> Iterator[Iterable]:
    """Peek at the first batch ``(x, y)`` and yield the same batches, with one thread when tiny."""
    it = iter(batches)
    first = next(it, None)
    if first is None:
        yield iter(())
        return
    with cpu_threads_for_side(int(first[0].shape[-1]), device):
        yield itertools.chain([first], it)
