"""Analyses of reconstructed weights (paper §3, App. C, E, F), one module each:

- :mod:`.lowfreq`     per-layer low-frequency energy ratio of the weights (SVD), reconstructed - original;
- :mod:`.interpolate` accuracy and reconstruction error along W(a) = (1 - a) W_orig + a W_recon;
- :mod:`.landscape`   train/test loss on the plane through three weight sets;
- :mod:`.layerdiff`   per-layer relative distance ||W - W_hat|| / ||W|| of several checkpoints;

with :mod:`.weights` (loading artefacts and checkpoints), :mod:`.stats` (95 % intervals) and
:mod:`.plotting`. The CLI is ``python -m nernfast.analyze``.
"""
