"""BatchNorm re-estimation for the rebuilt network (nernfast.bn_stats) and where training uses it."""
from __future__ import annotations

import itertools

import pytest
import torch

from nernfast.config import ConfigError, resolve
from nernfast.models import build_model, copy_frozen
from nernfast.nern import NeRN
from nernfast.bn_stats import recalibrated
from nernfast.data import get_dataset


@pytest.fixture
def shell_and_nern():
    torch.manual_seed(0)
    shell = copy_frozen(build_model("resnet20", 10, 1))
    for m in shell.modules():  # statistics unlike any batch's, so a no-op cannot pass
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(7.0)
    return shell, NeRN.from_model(shell, hidden=16)


def test_statistics_are_those_of_the_rebuilt_network(shell_and_nern):
    shell, nern = shell_and_nern
    bundle = get_dataset("digits", None, seed=0)
    before = {k: v.clone() for k, v in shell.state_dict().items()}
    net = recalibrated(nern, shell, bundle, 3, "cpu", seed=5, batch_size=16)
    batches = [x for x, _ in itertools.islice(bundle.loader("train", 16, shuffle=True, augment=False, seed=5), 3)]
    # The first BN sees the rebuilt first conv's output: its mean over all images, per channel
    # (equal batches, cumulative average), and the mean of the per-batch unbiased variances.
    rebuilt = copy_frozen(shell)
    nern.materialize_(rebuilt)
    outs = [rebuilt.conv1(x) for x in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.transpose(0, 1).reshape(o.shape[1], -1).var(1) for o in outs]).mean(0)
    torch.testing.assert_close(net.bn1.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.bn1.running_var, var, rtol=1e-4, atol=1e-5)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    for k, v in shell.state_dict().items():  # the shell itself is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    for k, v in net.state_dict().items():    # and only the statistics (and predicted weights) differ
        if not any(s in k for s in ("running_", "num_batches")) and k not in {f"{n}.weight" for n in nern.plan.names}:
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_recalibration_needs_training_images():
    with pytest.raises(ConfigError, match=r"phase2.bn_recalibration = 40 needs training images.*phase2.data = 'noise'"):
        resolve("decoupled", sets=["phase2.data=noise", "phase2.bn_recalibration=40", "phase2.bn_batch_stats=false"])
    with pytest.raises(ConfigError, match="phase2.bn_recalibration = -1 is out of range"):
        resolve("decoupled", sets=["phase2.bn_recalibration=-1"])
    assert resolve("noise_decoupled").phase2.bn_recalibration == 0   # the data-free recipe keeps it off
    assert resolve("decoupled").phase2.bn_recalibration == 40
