"""The drop-in API on CIFAR ResNets (option A: uniform 3x3 plan; option B: 1x1 shortcuts) and a
torchvision ResNet: materialize_ (one op call), weights() for functional_call, parametrize_ (one
predictor evaluation per forward), and a package that works without the extension."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.resnet import Bottleneck, ResNet

from nernfast import NeRN, _ext, build_model
from nernfast.ops.scatter import rows_to_flat_reference, write_layers_reference


def torchvision_resnet() -> nn.Module:
    """A torchvision ResNet (the class the ImageNet models use) small enough for CI: one bottleneck
    per stage at width 8 per group, so its predicted 3x3 convs hold 5 440 kernels."""
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=8, num_classes=10)


MODELS = {"resnet20": lambda: build_model("resnet20"), "resnet20b": lambda: build_model("resnet20b"),
          "torchvision": torchvision_resnet}


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "nernfast":
            self.ops.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    torch.manual_seed(0)
    model = MODELS[request.param]().eval()
    nern = NeRN.from_model(model, hidden=8, permutation="none")
    x = torch.randn(2, 3, 16, 16)
    return request.param, model, nern, x


def test_materialize_is_one_op_call_and_matches_the_per_layer_loop(case):
    name, model, nern, _ = case
    model = copy.deepcopy(model)
    calls = nern.predictor_calls
    with OpLog() as log:
        nern.materialize_(model)
    assert nern.predictor_calls == calls + 1
    # Non-uniform plans: one scatter for the whole network; uniform plans: a plain copy, no op at all.
    assert log.ops == ([] if nern.plan.uniform else ["scatter_rows_into"]) or not _ext.available()
    expected = [torch.empty(l.shape) for l in nern.plan.layers]
    with torch.no_grad():
        write_layers_reference(nern.predict(), nern.plan, expected)
    for l, w, e in zip(nern.plan.layers, nern.plan.weights_of(model), expected):
        assert torch.equal(w, e), l.name


@pytest.mark.parametrize("hidden", [8, 140])
def test_default_cpu_chunk_changes_no_value(case, hidden):
    # materialize_ picks CPU_CHUNK rows per step by default: every model here has more rows than that.
    from nernfast.ops.predict import CPU_CHUNK
    _, model, _, _ = case
    torch.manual_seed(1)
    nern = NeRN.from_model(model, hidden=hidden)
    assert nern.plan.num_rows > CPU_CHUNK
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    nern.materialize_(a)
    nern.materialize_(b, chunk=nern.plan.num_rows)
    for wa, wb in zip(nern.plan.weights_of(a), nern.plan.weights_of(b)):
        assert torch.equal(wa, wb)


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.float16])
def test_materialize_computes_in_the_given_dtype_and_writes_the_models(case, model_dtype):
    _, model, nern, _ = case
    ref, low = copy.deepcopy(model), copy.deepcopy(model).to(model_dtype)
    nern.materialize_(ref)
    nern.materialize_(low, dtype=torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = nern.predict()
    assert expected.dtype == torch.bfloat16
    want = [torch.empty(l.shape, dtype=model_dtype) for l in nern.plan.layers]
    write_layers_reference(expected.to(model_dtype), nern.plan, want)
    for w, r, e in zip(nern.plan.weights_of(low), nern.plan.weights_of(ref), want):
        assert w.dtype == model_dtype
        assert torch.equal(w, e)  # the bf16 prediction, converted once
    assert not all(torch.equal(w.float(), r) for w, r in zip(nern.plan.weights_of(low), nern.plan.weights_of(ref)))


def test_functional_call_and_parametrize_agree_with_materialize(case):
    name, model, nern, x = case
    reference = nern.materialize_(copy.deepcopy(model))
    with torch.no_grad():
        y_ref = reference(x)

    # functional_call with differentiable predicted weights
    nern.zero_grad()
    y_func = functional_call(model, nern.weights(), (x,))
    torch.testing.assert_close(y_func, y_ref, rtol=1e-4, atol=1e-5)
    y_func.square().sum().backward()
    grads_func = [p.grad.clone() for p in nern.predictor.parameters()]

    # parametrize: model(x) uses predicted weights, one predictor evaluation per forward
    para = nern.parametrize_(copy.deepcopy(model))
    nern.zero_grad()
    calls = nern.predictor_calls
    y_para = para(x)
    assert nern.predictor_calls == calls + 1, f"{nern.predictor_calls - calls} predictor evaluations in one forward"
    torch.testing.assert_close(y_para, y_ref, rtol=1e-4, atol=1e-5)
    y_para.square().sum().backward()
    for g, p in zip(grads_func, nern.predictor.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    para(x)
    assert nern.predictor_calls == calls + 2

    nern.unparametrize_(para)
    calls = nern.predictor_calls
    torch.testing.assert_close(para(x), y_ref, rtol=1e-4, atol=1e-5)  # keeps the predicted weights
    assert nern.predictor_calls == calls
    nern.materialize_(para)  # and is an ordinary model again


def test_parametrize_tracks_predictor_updates_between_forwards():
    torch.manual_seed(0)
    model = build_model("resnet20b").eval()
    nern = NeRN.from_model(model, hidden=8, permutation="none")
    nern.parametrize_(model)
    x = torch.randn(1, 3, 8, 8)
    model(x).square().sum().backward()
    with torch.no_grad():  # like an optimiser step: in-place updates of the predictor's parameters
        for p in nern.predictor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    w = nern.plan.weights_of(model)[-1]  # outside a forward: reflects the updated predictor
    with torch.no_grad():
        expected = rows_to_flat_reference(nern.predict(), nern.plan)[nern.plan.buf_offsets[-2]:]
    torch.testing.assert_close(w.detach().reshape(-1), expected)


def test_import_and_materialize_without_the_extension():
    """A subprocess where nernfast._C cannot be imported: one warning line, reference paths work."""
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["nernfast._C"] = None  # makes `from . import _C` raise ImportError
        import torch, torch.nn as nn
        import nernfast
        from nernfast import NeRN, _ext
        assert not _ext.available()
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 1))
        nern = NeRN.from_model(model, hidden=4, permutation="none", smaller_kernels=True)
        assert not nern.plan.uniform
        nern.materialize_(model)
        from nernfast.ops.scatter import rows_to_flat_reference
        with torch.no_grad():
            ref = rows_to_flat_reference(nern.predict(), nern.plan)
        got = torch.cat([m.weight.detach().reshape(-1) for m in model])
        assert torch.equal(got, ref)
        print("OK")
    """)
    env = dict(os.environ, PYTHONWARNINGS="default")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
    lines = [l for l in out.stderr.splitlines() if "nernfast" in l]
    assert len(lines) == 1 and "C++ extension not loaded" in lines[0], out.stderr
