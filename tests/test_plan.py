"""The weight plan against per-layer / per-row loop references."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from nernfast.models import build_model
from nernfast.permutation import compute_permutations, layer_permutation
from nernfast.plan import LayerSpec, WeightPlan, build_plan
from nernfast.selection import PlanError, select_layers


class Mixed(nn.Module):
    """Odd shapes: 5x5, 3x3, grouped, 1x1."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 7, 5, padding=2)
        self.b = nn.Conv2d(7, 5, 3, padding=1)
        self.c = nn.Conv2d(5, 6, 3, padding=1, groups=1)
        self.g = nn.Conv2d(6, 9, 3, padding=1, groups=3)
        self.p = nn.Conv2d(9, 11, 1)

    def forward(self, x):
        for m in (self.a, self.b, self.c, self.g, self.p):
            x = torch.relu(m(x))
        return x


def coords_reference(plan: WeightPlan, perms: list[list[int]], normalization: str) -> torch.Tensor:
    """Row by row: destination row perms[l][j] (+ layer offset) gets the coordinates of chain position j."""
    n_layers = len(plan.layers)
    g = max([n_layers] + [max(l.shape[0], l.shape[1]) for l in plan.layers])
    out = [None] * plan.num_rows
    offset = 0
    for li, l in enumerate(plan.layers):
        c_out, c_in = l.shape[:2]
        for j in range(c_out * c_in):
            raw = (li, j // c_in, j % c_in)
            if normalization == "local":
                val = (li / n_layers, raw[1] / c_out, raw[2] / c_in)
            elif normalization == "global":
                val = tuple(r / g for r in raw)
            else:
                val = tuple(float(r) for r in raw)
            out[offset + perms[li][j]] = val
        offset += c_out * c_in
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("normalization", ["local", "global", "none"])
@pytest.mark.parametrize("permutation", ["none", "crossfilter", "infilter"])
@pytest.mark.parametrize("model_fn", [lambda: build_model("resnet20b"), lambda: Mixed()], ids=["resnet20b", "mixed"])
def test_offsets_and_coordinates_against_loops(model_fn, permutation, normalization, cache):
    model = model_fn()
    plan = build_plan(model, permutation, normalization, smaller_kernels=True, cache_dir=cache)
    convs = select_layers(model, smaller_kernels=True)
    assert plan.names == [n for n, _ in convs]
    assert plan.kernel_size == max(m.kernel_size[0] for _, m in convs)
    rows = buf = 0
    for i, (name, m) in enumerate(convs):
        assert plan.layers[i] == LayerSpec(name, tuple(m.weight.shape))
        assert (plan.row_offsets[i], plan.buf_offsets[i]) == (rows, buf)
        rows += m.weight.shape[0] * m.weight.shape[1]
        buf += m.weight.numel()
    assert (plan.row_offsets[-1], plan.buf_offsets[-1], plan.num_rows, plan.numel) == (rows, buf, rows, buf)
    assert plan.uniform == all(m.kernel_size[0] == plan.kernel_size for _, m in convs)

    # per-layer permutations are tested in test_permutation; here only how the plan folds them in
    perms = [p.tolist() for p in compute_permutations([m.weight for _, m in convs], permutation, cache)]
    want = coords_reference(plan, perms, normalization)
    assert plan.coords.dtype == torch.float32 and plan.coords.shape == (rows, 3)
    torch.testing.assert_close(plan.coords.double(), want, rtol=1e-6, atol=1e-7)
    # integer coordinates: the same before normalisation
    want_int = coords_reference(plan, perms, "none").long()
    assert torch.equal(plan.int_coords, want_int)


def test_row_d_gets_the_coordinates_of_its_chain_position(tmp_path):
    model = build_model("resnet20")
    plan = build_plan(model, "crossfilter", "none", include=[r"layer1\..*"], cache_dir=tmp_path)
    li = 4
    l = plan.layers[li]
    perm = layer_permutation(dict(model.named_modules())[l.name].weight, "crossfilter")
    c_in = l.shape[1]
    for j in [0, 1, 2, 100, 201, l.rows - 1]:
        d = plan.row_offsets[li] + int(perm[j])  # destination row of the kernel at chain position j
        assert plan.int_coords[d].tolist() == [li, j // c_in, j % c_in]
    # chain neighbours are similar kernels: adjacent chain positions map to the rows of the chain
    assert torch.equal(plan.perm[plan.row_offsets[li]:plan.row_offsets[li + 1]] - plan.row_offsets[li], perm)


def test_meta_round_trip_and_hash(cache):
    tmp_path = cache
    model = build_model("resnet20b")
    plan = build_plan(model, "infilter", "local", exclude=["conv1"], cache_dir=tmp_path)
    meta = json.loads(json.dumps(plan.to_meta()))  # JSON-serialisable
    back = WeightPlan.from_meta(meta, plan.perm.to(torch.int32))
    assert back == plan and back.hash == plan.hash and hash(back) == hash(plan)
    assert back.names == plan.names and back.kernel_size == plan.kernel_size
    assert torch.equal(back.coords, plan.coords) and torch.equal(back.perm, plan.perm)
    assert back.selection == plan.selection and "conv1" not in back.names
    # the hash changes with the permutation, the normalisation, the layers
    swapped = plan.perm.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert WeightPlan.from_meta(meta, swapped).hash != plan.hash
    assert WeightPlan.from_meta({**meta, "normalization": "global"}, plan.perm).hash != plan.hash
    assert build_plan(model, "crossfilter", cache_dir=tmp_path, include=[r"layer1\..*"]).hash != build_plan(
        model, "none", cache_dir=tmp_path, include=[r"layer1\..*"]).hash
    assert build_plan(model, "infilter", "local", cache_dir=tmp_path, exclude=["conv1"]).hash == plan.hash
    assert build_plan(model, "infilter", cache_dir=tmp_path).hash != plan.hash


def test_model_mismatch_error_lists_every_problem(tmp_path):
    plan = build_plan(build_model("resnet20"), "none", cache_dir=tmp_path)
    plan.modules_of(build_model("resnet20", num_classes=100))  # only the classifier differs: fine
    with pytest.raises(PlanError, match=r"conv1: model has \(16, 1, 3, 3\), plan has \(16, 3, 3, 3\)"):
        plan.modules_of(build_model("resnet20", in_channels=1))
    with pytest.raises(PlanError, match=r"12 conv\(s\) the plan does not predict: \['layer1\.3\.conv1'.*same architecture"):
        plan.modules_of(build_model("resnet32"))
    with pytest.raises(PlanError) as e:
        plan.modules_of(build_model("resnet18"))
    msg = str(e.value)
    assert "4 conv(s) the plan does not predict: ['layer4.0.conv1'" in msg
    assert "conv1: model has (64, 3, 7, 7)" in msg and "layer1.2.conv1: missing" in msg
    assert "12 more" in msg  # long lists are cut, with a count


def test_bad_inputs_are_clear_errors(tmp_path):
    model = build_model("resnet20")
    model.layer2[1].conv2.weight.data[0, 0, 1, 1] = float("nan")
    with pytest.raises(PlanError, match=r"NaN.*layer2\.1\.conv2"):
        build_plan(model, cache_dir=tmp_path)
    model.layer2[1].conv2.weight.data[0, 0, 1, 1] = float("inf")
    with pytest.raises(PlanError, match="NaN/Inf"):
        build_plan(model, cache_dir=tmp_path)
    with pytest.raises(PlanError, match=r"larger than the predictor's 3x3.*\('a', 5\).*kernel_size >= 5"):
        build_plan(Mixed(), "none", kernel_size=3, smaller_kernels=True, cache_dir=tmp_path)
    with pytest.raises(PlanError, match="no convolution layers"):
        build_plan(nn.Sequential(nn.Linear(2, 2)), cache_dir=tmp_path)
    ok = build_plan(build_model("resnet20"), "none", cache_dir=tmp_path)
    with pytest.raises(PlanError, match="entries"):
        WeightPlan.from_meta(ok.to_meta(), ok.perm[:-1])
    dup = ok.perm.clone()
    dup[1] = dup[0]
    with pytest.raises(PlanError, match="bijection"):
        WeightPlan.from_meta(ok.to_meta(), dup)
    across = ok.perm.clone()
    across[[0, ok.row_offsets[1]]] = across[[ok.row_offsets[1], 0]]
    with pytest.raises(PlanError, match="between layers"):
        WeightPlan.from_meta(ok.to_meta(), across)
    with pytest.raises(ValueError, match="normalization"):
        WeightPlan.from_meta({**ok.to_meta(), "normalization": "max"}, ok.perm)


def test_larger_kernel_size_than_needed_is_allowed(tmp_path):
    plan = build_plan(build_model("resnet20"), "none", kernel_size=5, cache_dir=tmp_path)
    assert plan.kernel_size == 5 and not plan.uniform
