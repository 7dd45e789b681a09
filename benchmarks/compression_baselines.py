"""What a user would pick instead of nernfast, measured as files on disk (benchmarks/compression_compare.py):

* ``fp32_file``: the original's state_dict as a safetensors file;
* ``int8_file``: per-channel symmetric int8 PTQ of every conv and linear weight with torch.ao
  (``PerChannelMinMaxObserver`` + ``torch.quantize_per_channel``), int8 values and fp32 scales in a
  safetensors file, BN and biases fp32; evaluated dequantised;
* ``nncodec_sweep``: NNCodec 2.1.3 (ISO/IEC 15938-17) in its own virtualenv through
  benchmarks/nncodec_worker.py, one bitstream per QP; the bitstream is the whole coded file.
"""
from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file


def _floats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if v.is_floating_point()}


def _rest(model: nn.Module, keys: set[str]) -> int:
    """Bytes (fp32) of the state entries outside ``keys`` (BN, biases, and the FC where not counted)."""
    return sum(v.numel() * v.element_size() for k, v in model.state_dict().items() if k not in keys)


def fp32_file(model: nn.Module, path: Path) -> dict:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return {"bytes": path.stat().st_size, "bn_fc_bytes": _rest(model, convs)}


def int8_ptq(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(dequantised copy, tensors of the int8 file) for every Conv2d/Linear weight."""
    from torch.ao.quantization.observer import PerChannelMinMaxObserver
    import copy
    q_model = copy.deepcopy(model)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_per_channel's deprecation notice
        for name, m in q_model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
                obs(m.weight)
                scale, zero = obs.calculate_qparams()
                q = torch.quantize_per_channel(m.weight, scale, zero, 0, torch.qint8)
                m.weight.copy_(q.dequantize())
                tensors[f"{name}.weight"] = q.int_repr().contiguous()
                tensors[f"{name}.weight_scale"] = scale.float().contiguous()  # zero points are 0 (symmetric)
    return q_model, tensors


def int8_file(model: nn.Module, path: Path) -> tuple[nn.Module, dict]:
    q_model, tensors = int8_ptq(model)
    save_file(tensors, str(path))
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    conv_keys = {f"{n}.{s}" for n in convs for s in ("weight", "weight_scale")}
    rest = sum(v.numel() * v.element_size() for k, v in tensors.items() if k not in conv_keys)  # as stored
    return q_model, {"bytes": path.stat().st_size, "bn_fc_bytes": rest}


def nncodec_sweep(model: nn.Module, work: Path, qps: list[int], python: str) -> list[tuple[int, dict, nn.Module]]:
    """[(qp, sizes, decoded model)]; ``python``: NNCodec's virtualenv interpreter."""
    import copy
    work.mkdir(parents=True, exist_ok=True)
    params = _floats(model)
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    np.savez(work / "all.npz", **{k: v.numpy() for k, v in params.items()})
    np.savez(work / "rest.npz", **{k: v.numpy() for k, v in params.items() if k not in convs})
    worker = str(Path(__file__).with_name("nncodec_worker.py"))
    runs = {}
    for part in ("all", "rest"):
        cmd = [python, worker, str(work / f"{part}.npz"), str(work / part), "--qp", *map(str, qps)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"NNCodec worker failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
        runs[part] = {r["qp"]: r for r in map(json.loads, res.stdout.strip().splitlines())}
    out = []
    for qp in qps:
        rec = dict(np.load(work / "all" / f"qp{qp}.npz"))
        m = copy.deepcopy(model)
        sd = m.state_dict()
        with torch.no_grad():
            for k, v in rec.items():
                sd[k].copy_(torch.from_numpy(v).to(sd[k].dtype))
        sizes = {"bytes": runs["all"][qp]["bytes"], "bn_fc_bytes": runs["rest"][qp]["bytes"]}
        out.append((qp, sizes, m))
    return out
