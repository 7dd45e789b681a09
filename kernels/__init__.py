"""Triton kernels, shipped as ``nernfast.kernels`` (the folder is mapped in setup.py)."""
