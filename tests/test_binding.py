"""Binding a model's predicted conv weights to one flat buffer, and keeping materialize_ honest after
what users do to models (.to(dtype), .half(), load_state_dict, replacing .data, deepcopy)."""
from __future__ import annotations

import copy

import pytest
import torch

from nernfast import NeRN, PlanError, build_model
from nernfast.binding import bind_flat, flat_of, is_bound
from nernfast.ops.scatter import rows_to_flat_reference


@pytest.fixture(scope="module", params=["resnet20", "resnet20b"])
def pair(request):
    """A small CIFAR ResNet (option A: uniform 3x3 plan; option B: 1x1 shortcuts, non-uniform) and its NeRN."""
    torch.manual_seed(1)
    model = build_model(request.param).eval()
    # The permutation does not matter to binding (the ops' tests use random ones); "none" plans fastest.
    return model, NeRN.from_model(model, hidden=8, permutation="none")


def predicted(nern: NeRN, dtype=torch.float32) -> torch.Tensor:
    """The flat predicted weights by the plain-PyTorch reference path."""
    with torch.no_grad():
        return rows_to_flat_reference(nern.predict(), nern.plan).to(dtype)


def model_flat(model, nern) -> torch.Tensor:
    return torch.cat([w.detach().reshape(-1) for w in nern.plan.weights_of(model)])


def perturb_(nern: NeRN) -> None:
    with torch.no_grad():
        for p in nern.predictor.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_bind_keeps_values_and_parameter_objects(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    params = [m.weight for m in nern.plan.modules_of(model)]
    before = model_flat(model, nern)
    flat = bind_flat(model, nern.plan)
    assert is_bound(model, nern.plan)
    assert torch.equal(flat, before)
    assert all(p is m.weight for p, m in zip(params, nern.plan.modules_of(model)))
    assert bind_flat(model, nern.plan).data_ptr() == flat.data_ptr()  # idempotent
    x = torch.randn(1, 3, 8, 8)
    y0 = model(x)
    with torch.no_grad():
        flat.mul_(0.5)  # writing the buffer changes what the model computes
    assert not torch.allclose(model(x), y0)
    assert torch.equal(model_flat(model, nern), before * 0.5)


def test_materialize_survives_dtype_round_trip_and_half(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    x = torch.randn(1, 3, 8, 8)
    nern.materialize_(model)
    old = flat_of(model, nern.plan)
    assert old is not None

    model.to(torch.float64)  # new storage for every weight: the binding is dead ...
    assert flat_of(model, nern.plan) is None
    perturb_(nern)
    nern.materialize_(model)  # ... and materialize_ re-binds in float64 before writing
    assert flat_of(model, nern.plan).dtype == torch.float64
    assert torch.equal(model_flat(model, nern), predicted(nern, torch.float64))
    model(x.double())  # runs in float64

    model.float()
    assert flat_of(model, nern.plan) is None
    perturb_(nern)
    nern.materialize_(model)
    assert torch.equal(model_flat(model, nern), predicted(nern))
    assert not torch.equal(old, flat_of(model, nern.plan))

    model.half()
    nern.materialize_(model)
    assert flat_of(model, nern.plan).dtype == torch.float16
    assert torch.equal(model_flat(model, nern), predicted(nern, torch.float16))


def test_load_state_dict_copy_keeps_binding_and_assign_rebinds(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    other = copy.deepcopy(model)
    flat = bind_flat(model, nern.plan)
    model.load_state_dict(other.state_dict())  # copies in place: still bound to the same buffer
    assert flat_of(model, nern.plan).data_ptr() == flat.data_ptr()

    model.load_state_dict(copy.deepcopy(other.state_dict()), assign=True)  # new tensors: binding dead
    assert flat_of(model, nern.plan) is None
    perturb_(nern)
    nern.materialize_(model)
    assert torch.equal(model_flat(model, nern), predicted(nern))


def test_replaced_weight_data_is_detected(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    bind_flat(model, nern.plan)
    conv = nern.plan.modules_of(model)[-1]
    conv.weight.data = conv.weight.data.clone()  # one weight leaves the buffer
    assert flat_of(model, nern.plan) is None
    nern.materialize_(model)
    assert torch.equal(model_flat(model, nern), predicted(nern))


def test_deepcopy_gets_its_own_buffer_and_leaves_the_original_alone(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    flat = bind_flat(model, nern.plan)
    before = flat.clone()
    twin = copy.deepcopy(model)  # Parameter.__deepcopy__ clones each weight: the twin is not bound
    assert flat_of(twin, nern.plan) is None
    perturb_(nern)
    nern.materialize_(twin)
    assert torch.equal(model_flat(twin, nern), predicted(nern))
    assert torch.equal(flat, before) and flat_of(model, nern.plan).data_ptr() == flat.data_ptr()


def test_channels_last_weights_are_rebound_contiguous(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    bind_flat(model, nern.plan)
    model.to(memory_format=torch.channels_last)
    nern.materialize_(model)
    assert torch.equal(model_flat(model, nern), predicted(nern))


def test_refuses_parametrized_and_mixed_models(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    nern.plan.modules_of(model)[0].double()
    with pytest.raises(PlanError, match="mix dtypes/devices"):
        bind_flat(model, nern.plan)
    model.float()
    nern.parametrize_(model)
    with pytest.raises(PlanError, match="parametrized"):
        nern.materialize_(model)
    nern.unparametrize_(model)
    nern.materialize_(model)
    assert torch.equal(model_flat(model, nern), predicted(nern))


def test_binding_made_in_inference_mode_still_trains(pair):
    model, nern = copy.deepcopy(pair[0]), pair[1]
    with torch.inference_mode():
        nern.materialize_(model)
    w = nern.plan.weights_of(model)[0]
    assert not w.is_inference() and not flat_of(model, nern.plan).is_inference()
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    assert w.grad is not None
