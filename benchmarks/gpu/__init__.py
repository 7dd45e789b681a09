"""The GPU check (``benchmarks/gpu_check.py`` is its entry point), one module per job:

- ``common``: paths, the run's clock, the CPU-smoke switch, the recorder, device and timer helpers;
- ``install``: the editable install, the re-exec that makes it importable, the source-tree fallback;
- ``networks``: the benchmark networks (a NeRN per real model) the later parts share;
- ``correctness``: the kernel harness's small cases, then whole networks (forward) and 4096-row
  subsets (backward);
- ``timing``: every timed path, the summary table and the issue's targets;
- ``sm90``: ``--sm90-report`` (compile for sm_90 without a GPU: registers, spills, shared memory);
- ``cpu_tables``: ``--cpu-tables`` (does the first-layer table shortcut pay on this CPU?);
- ``main``: the command line and the order of the run.
"""
