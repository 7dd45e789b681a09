"""Data-driven phases under DistributedDataParallel (gloo, 2 CPU processes) match one process with
the same global batch."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, out: str) -> None:
    from nernfast.config import resolve
    from nernfast.data import get_dataset
    from nernfast.models import build_model
    from nernfast.training.context import Context
    from nernfast.training.logger import RunLogger
    from nernfast.models import copy_frozen
    from nernfast.training.objectives import PhaseNets, ReconTarget
    from nernfast.training.phase import run_phase
    from nernfast.training.recipes import new_nern

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = resolve("decoupled", sets=["nern.hidden=16", "nern.permutation=none", "phase2.steps=3",
                                     "phase2.batch_size=16", "phase2.select=last", "phase2.eval_every=100",
                                     "phase2.augment=false", "phase2.fmd_weight=0.001", "phase2.lr=1e-2",
                                     # batch statistics are each process's own shard's (no SyncBatchNorm), so
                                     # two processes equal one only on fixed statistics
                                     "phase2.bn_batch_stats=false"])
    torch.manual_seed(0)
    bundle = get_dataset("digits")
    original = copy_frozen(build_model("resnet20", 10, 1))
    ctx = Context(cfg, torch.device("cpu"), bundle, original, "test", None, None, {}, Path(out), RunLogger(Path(out), rank, False),
                  rank, world)
    nern = new_nern(cfg, original, seed=0)
    nets = PhaseNets(ReconTarget(nern.plan, nern.plan.weights_of(original), "cpu"), copy_frozen(original), original)
    run_phase(ctx, nern, cfg.phase2, nets, copy_frozen(original), "ddp", seed=5)
    if rank == 0:
        torch.save(nern.predictor.state_dict(), Path(out) / f"predictor_world{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    _run(0, 1, 0, str(tmp_path))
    mp.spawn(_run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "predictor_world1.pt")
    two = torch.load(tmp_path / "predictor_world2.pt")
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5)
