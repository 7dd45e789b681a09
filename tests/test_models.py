"""Model zoo: every name builds, the akamaster/NeRN checkpoint layout loads, feature hooks are exact."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nernfast.models import MODEL_NAMES, build_model, collect_features
from nernfast.models.cifar_resnet import CifarResNet

CIFAR = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_name_builds_and_runs(name):
    model = build_model(name, num_classes=7, in_channels=3).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="resnet56b"):
        build_model("resnet21")


@pytest.mark.parametrize("name", ["resnet20", "resnet32b", "resnet18", "resnet50_cifar", "resnet18_cifar"])
def test_classes_and_input_channels(name):
    model = build_model(name, num_classes=13, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 13)
    assert model.conv1.in_channels == 1


def _cifar_layout(n: int, shortcut: str, num_classes: int = 10, in_channels: int = 3) -> dict[str, tuple]:
    """Keys and shapes of an akamaster/NeRN CIFAR ResNet checkpoint, written out from the paper's layout."""
    def bn(prefix, c):
        return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
                f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}

    keys = {"conv1.weight": (16, in_channels, 3, 3), **bn("bn1", 16)}
    c_in = 16
    for stage, width in enumerate((16, 32, 64), start=1):
        for b in range(n):
            p = f"layer{stage}.{b}"
            keys[f"{p}.conv1.weight"] = (width, c_in, 3, 3)
            keys.update(bn(f"{p}.bn1", width))
            keys[f"{p}.conv2.weight"] = (width, width, 3, 3)
            keys.update(bn(f"{p}.bn2", width))
            if c_in != width and shortcut == "B":
                keys[f"{p}.shortcut.0.weight"] = (width, c_in, 1, 1)
                keys.update(bn(f"{p}.shortcut.1", width))
            c_in = width
    keys["linear.weight"] = (num_classes, 64)
    keys["linear.bias"] = (num_classes,)
    return keys


@pytest.mark.parametrize("name", sorted(CIFAR) + [n + "b" for n in sorted(CIFAR)])
def test_cifar_checkpoint_layout_loads(name):
    depth_name = name.rstrip("b")
    layout = _cifar_layout(CIFAR[depth_name], "B" if name.endswith("b") else "A")
    model = build_model(name)
    assert isinstance(model, CifarResNet)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert have == layout, f"extra: {sorted(set(have) - set(layout))[:5]}, missing: {sorted(set(layout) - set(have))[:5]}"
    ckpt = {k: (torch.randn(s) if s else torch.tensor(7)) for k, s in layout.items()}
    model.load_state_dict(ckpt, strict=True)
    assert torch.equal(model.layer2[0].conv1.weight, ckpt["layer2.0.conv1.weight"])


def test_cifar_parameter_counts_match_the_papers():
    """He et al. / akamaster: ResNet-20 0.27M, ResNet-56 0.85M parameters (NOTES: 1.03 MB / 3.25 MB)."""
    counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in ("resnet20", "resnet56")}
    assert counts == {"resnet20": 269_722, "resnet56": 853_018}
    assert round(counts["resnet20"] * 4 / 2**20, 2) == 1.03 and round(counts["resnet56"] * 4 / 2**20, 2) == 3.25


def test_option_a_shortcut_is_parameter_free_zero_pad():
    model = build_model("resnet20").eval()
    blk = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    want = torch.zeros(2, 32, 4, 4)
    want[:, 8:24] = x[:, :, ::2, ::2]
    assert torch.equal(blk.shortcut(x), want)
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


# ---- feature maps -------------------------------------------------------------------------------------
def _cifar_reference(model: CifarResNet, x: torch.Tensor):
    """Out-of-place forward recording every BN output and every block output (after its ReLU)."""
    feats = []
    out = model.bn1(model.conv1(x))
    feats.append(out)
    out = F.relu(out)
    for layer in (model.layer1, model.layer2, model.layer3):
        for blk in layer:
            a = blk.bn1(blk.conv1(out))
            b = blk.bn2(blk.conv2(F.relu(a)))
            feats += [a, b]
            if isinstance(blk.shortcut, nn.Sequential) and len(blk.shortcut):
                s = blk.shortcut[1](blk.shortcut[0](out))
                feats.append(s)
            elif isinstance(blk.shortcut, nn.Sequential):
                s = out
            else:
                s = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, out.shape[1] // 2, out.shape[1] // 2))
            out = F.relu(b + s)
            feats.append(out)
    return model.linear(out.mean((2, 3))), feats


def _torchvision_reference(model: nn.Module, x: torch.Tensor):
    feats = []
    out = model.bn1(model.conv1(x))
    feats.append(out)
    out = model.maxpool(F.relu(out))
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in layer:
            h = blk.bn1(blk.conv1(out))
            feats.append(h)
            h = F.relu(h)
            if hasattr(blk, "conv3"):  # Bottleneck
                h = blk.bn2(blk.conv2(h))
                feats.append(h)
                h = F.relu(h)
            h = blk.bn3(blk.conv3(h)) if hasattr(blk, "conv3") else blk.bn2(blk.conv2(h))
            feats.append(h)
            if blk.downsample is not None:
                s = blk.downsample[1](blk.downsample[0](out))
                feats.append(s)
            else:
                s = out
            out = F.relu(h + s)
            feats.append(out)
    return model.fc(torch.flatten(model.avgpool(out), 1)), feats


@pytest.mark.parametrize("name,count", [("resnet20", 19 + 9), ("resnet20b", 21 + 9), ("resnet18_cifar", 20 + 8),
                                        ("resnet18", 20 + 8), ("resnet50", 53 + 16)])
def test_feature_hooks_collect_bn_and_block_outputs_without_changing_outputs(name, count):
    model = build_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with collect_features(model) as feats:
            hooked = model(x)
        after = model(x)
        ref_out, ref_feats = (_cifar_reference if isinstance(model, CifarResNet) else _torchvision_reference)(model, x)
    assert torch.equal(plain, hooked) and torch.equal(plain, after)
    torch.testing.assert_close(hooked, ref_out, rtol=1e-5, atol=1e-5)
    assert len(feats) == count == len(ref_feats)
    for i, (got, want) in enumerate(zip(feats, ref_feats)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m, i=i: f"feature map {i}: {m}")
    assert not any(m._forward_hooks for m in model.modules()), "hooks left behind"


def test_feature_maps_carry_gradients():
    model = build_model("resnet20")
    with collect_features(model) as feats:
        model(torch.randn(2, 3, 16, 16)).sum().backward(retain_graph=True)
    sum(f.square().mean() for f in feats).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
