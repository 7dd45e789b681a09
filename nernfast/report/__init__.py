"""``python -m nernfast.report``: run the documented grid of recipes and render ``docs/results.md``.

The grid (defaults: the embedded digits dataset, ResNet-20, predictor sizes 100 / 140 / 280, i.e.
CR 0.21 / 0.35 / 1.14, three seeds), every run going through the trainer's Python API
(``nernfast.train.run`` with ``nernfast.config.resolve(recipe, sets=[...])``):

Table 1  progressive reconstruction at the largest size: independent chains (one per seed) of
         ``recon_only`` runs, round r+1 reconstructing round r's artefact (``original=<artefact>``);
         round 1 of chain s is the Table 2 recon-only run of seed s.
Table 2  ``recon_only``, ``baseline`` and ``decoupled`` at every size and seed. Decoupled starts
         from the recon-only artefact of the same size and seed (``init_from``, phase 1 of length 0),
         so "decoupled - recon-only" is exactly the effect of phase 2, as in the paper.
Table 3  with the dataset's default teacher: NeRN's baseline distilling from the teacher
         (``phase1.distill_from=teacher``, no feature-map term), ``teacher_decoupled`` (again from
         the recon-only artefact) and a student of the original's architecture trained from scratch
         with the KD loss from the same teacher (the original's pretraining schedule).

Scales multiply every phase's steps, warm-up, evaluation and checkpoint intervals:

=====  ==========  =====  ======  =======================================================
scale  steps x     seeds  rounds  meant for
=====  ==========  =====  ======  =======================================================
smoke  0.02        1      2       checking the pipeline end to end (minutes)
small  0.1         3      3       a quick look (~15 min on 2 cores); too short to reach the
                                   recipes' results
medium 0.5         3      3       the committed report: ~35 min on an idle 2-core CPU with
                                   ``--seeds-t3 1 --jobs 2``
full   1           3      3       the recipes' own lengths (~1.5 h on 2 cores; a GPU)
=====  ==========  =====  ======  =======================================================

Every finished run leaves ``RAW/jobs/<id>.json`` (config, stage summaries, sizes, the final
evaluation and the per-image outcome on the test set, for paired comparisons); a rerun skips the
finished ones, so an interrupted grid continues where it stopped. ``--render-only`` rebuilds the
report from the raw JSON alone, byte for byte the same each time.
"""
# (This docstring is also the CLI's --help text.) Modules: grid (the jobs and their scaled configs),
# runs (one job: train or evaluate, its raw JSON), kd_student (Table 3's KD student), scheduler (the
# process pool), analyses (the analysis runs behind the report's figures), render and cells (the
# Markdown), cli (the command line; __main__ runs it).
from __future__ import annotations

from .cli import build_parser, main
from .cells import METHOD_LABEL
from .grid import DEFAULT_SIZES, SCALES, Job, grid, job_order, scaled_sets
from .render import load_raw, render, render_from
from .runs import Env, run_job, write_json
from .scheduler import run_grid

__all__ = ["DEFAULT_SIZES", "Env", "Job", "METHOD_LABEL", "SCALES", "build_parser", "grid", "job_order",
           "load_raw", "main", "render", "render_from", "run_grid", "run_job", "scaled_sets", "write_json"]
