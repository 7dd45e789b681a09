"""Helpers shared by the test suite and the GPU check (``benchmarks/gpu_check.py``); the library
itself never imports them."""
