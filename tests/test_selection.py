"""Which convs are predicted: CIFAR ResNets, torchvision ResNets, any other module, overrides, errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nernfast.models import build_model
from nernfast.selection import PlanError, select_layers


def names(model, **kw):
    return [n for n, _ in select_layers(model, **kw)]


def all_convs(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name,count", [("resnet20", 19), ("resnet56", 55), ("resnet110", 109)])
def test_cifar_option_a_every_conv(name, count):
    model = build_model(name)
    chosen = select_layers(model)
    assert [n for n, _ in chosen] == all_convs(model) and len(chosen) == count
    assert all(m.kernel_size == (3, 3) for _, m in chosen)


def test_cifar_option_b_includes_the_1x1_shortcuts():
    model = build_model("resnet20b")
    chosen = names(model)
    assert chosen == all_convs(model) and len(chosen) == 21
    assert "layer2.0.shortcut.0" in chosen and "layer3.0.shortcut.0" in chosen
    # the flag drops the smaller kernels
    assert names(model, smaller_kernels=False) == [n for n in chosen if "shortcut" not in n]


@pytest.mark.parametrize("name,count", [("resnet18", 16), ("resnet34", 32), ("resnet50", 16), ("resnet18_cifar", 16)])
def test_torchvision_only_3x3_block_convs(name, count):
    model = build_model(name)
    chosen = select_layers(model)
    assert len(chosen) == count
    assert all(m.kernel_size == (3, 3) and n.startswith("layer") and "downsample" not in n for n, m in chosen)
    assert "conv1" not in names(model)  # the stem (7x7, or 3x3 for the CIFAR stem) is kept as it is
    expected = [n for n, m in model.named_modules()
                if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n.count(".") == 2]
    assert names(model) == expected


class Odd(nn.Module):
    """A generic module: mixed kernel sizes, a non-square kernel, grouped and dilated convs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 5, padding=2)
        self.grouped = nn.Conv2d(6, 9, 3, padding=1, groups=3)
        self.dilated = nn.Conv2d(9, 4, 3, padding=2, dilation=2)
        self.depthwise = nn.Conv2d(4, 4, 5, padding=2, groups=4)
        self.point = nn.Conv2d(4, 5, 1)
        self.tall = nn.Conv2d(5, 5, (3, 1), padding=(1, 0))
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        for m in (self.stem, self.grouped, self.dilated, self.depthwise, self.point, self.tall):
            x = torch.relu(m(x))
        return self.head(x.mean((2, 3)))


def test_generic_module_largest_square_kernel():
    model = Odd()
    assert names(model) == ["stem", "depthwise"]  # K = 5
    assert names(model, smaller_kernels=True) == ["stem", "grouped", "dilated", "depthwise", "point"]
    assert "tall" not in names(model, smaller_kernels=True)  # non-square never


def test_grouped_and_dilated_shapes_are_the_weight_shapes():
    chosen = dict(select_layers(Odd(), smaller_kernels=True))
    assert chosen["grouped"].weight.shape == (9, 2, 3, 3)
    assert chosen["depthwise"].weight.shape == (4, 1, 5, 5)
    assert chosen["dilated"].dilation == (2, 2)


def test_include_and_exclude_patterns():
    model = build_model("resnet20b")
    assert names(model, include=[r"layer3\..*"]) == [n for n in all_convs(model) if n.startswith("layer3.")]
    assert names(model, include=[r"conv1", r"layer1\.0\.conv2"]) == ["conv1", "layer1.0.conv2"]
    assert names(model, exclude=[r".*shortcut.*", r"conv1"]) == [
        n for n in all_convs(model) if "shortcut" not in n and n != "conv1"]
    assert names(model, include=[r"layer2\..*"], exclude=[r".*conv2"]) == [
        "layer2.0.conv1", "layer2.0.shortcut.0", "layer2.1.conv1", "layer2.2.conv1"]
    assert names(model, include=[r"layer1\.0\.conv\d"]) == ["layer1.0.conv1", "layer1.0.conv2"]  # whole names
    tv = build_model("resnet18")
    assert names(tv, include=[r"conv1", r"layer1\.0\.conv1"]) == ["conv1", "layer1.0.conv1"]  # override the stem


def test_include_refuses_non_square():
    with pytest.raises(PlanError, match="tall.*non-square"):
        select_layers(Odd(), include=["tall", "stem"])


@pytest.mark.parametrize("model,kw", [
    (nn.Sequential(nn.Linear(3, 4), nn.ReLU()), {}),
    (nn.Sequential(nn.Conv2d(3, 4, (1, 3))), {}),
    (build_model("resnet20"), {"exclude": [".*"]}),
    (build_model("resnet20"), {"include": ["nothing"]}),
])
def test_no_predictable_convs_is_a_clear_error(model, kw):
    with pytest.raises(PlanError, match=r"no convolution layers to predict.*include="):
        select_layers(model, **kw)


def test_plan_error_lives_in_errors_and_is_importable_from_selection():
    import nernfast
    from nernfast import errors
    assert PlanError is errors.PlanError is nernfast.PlanError and issubclass(PlanError, ValueError)
