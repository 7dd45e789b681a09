"""Coding of the artefact's parts: quantisers, the permutation code, the format-2 container.

Decoding needs numpy, zstandard and constriction only (never torchao: it is used, when installed,
to quantise)."""
from .container import ContainerError
from .format2 import FORMAT2, LOSSLESS, Scheme

__all__ = ["ContainerError", "FORMAT2", "LOSSLESS", "Scheme"]
