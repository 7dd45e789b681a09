"""Format 2 of the artefact: the parts of the container (nernfast.codec.container) and their codes.

=============  ====================================================================================
part           contents
=============  ====================================================================================
meta           zstd of the JSON metadata (format 1's keys: architecture, plan, plan hash, predictor,
               encoding, sizes, config, metrics) plus ``codec``: the scheme and the layout of every
               other part (array names, dtypes, shapes), so nothing below is implicit
predictor      zstd of the predictor's arrays: ``fp32`` weights as is, or per 2-D weight an int8 array
               (values in [-128, 127] or, for 4-bit, [-8, 7]) and its fp16 scales (nernfast.codec.quant),
               or (``ans``) its fp32 step, level histogram and ANS words (nernfast.codec.levels);
               biases always fp32
permutation    the plan's permutation as Lehmer digits in one ANS stream (nernfast.codec.permutation)
model          zstd of every model state entry that is not a predicted conv weight (BN, FC, unpredicted
               convs): floating tensors in the scheme's ``rest`` precision (fp32: lossless), others as is
encoding       zstd of the encoding's persistent buffers (fp32; absent for the basic encoding)
=============  ====================================================================================

Floating arrays are byte-shuffled before zstd (byte planes of all values, then the next plane):
exponent bytes compress, mantissa noise does not. All integers and floats are little-endian.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .container import ContainerError, read_container, write_container
from .levels import FakeQuantUniform, Levels, decode_levels, dequantize_uniform, encode_levels, quantize_uniform
from .permutation import decode_permutation, encode_permutation
from .quant import FakeQuant, Quantized, dequantize, quantize

FORMAT2 = "nernfast-artefact-2"
WEIGHTS = ("fp32", "int8", "int7", "int6", "int5", "int4", "int3", "int2", "ans")
REST = ("fp32", "fp16", "bf16")
MAX_REL_STEP = 10.0  # ans: the largest step, as a multiple of its matrix's RMS (coarser codes nothing useful)
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                        torch.int64, torch.int32, torch.int16, torch.int8,
                                                        torch.uint8, torch.bool)}


@dataclass(frozen=True)
class Scheme:
    """How the parts are coded. The default is lossless (what the trainer writes)."""
    weights: str = "fp32"     # predictor weights: fp32 | int8 (per output channel) | int2..int7 (group-wise)
                              # | ans (uniform step per matrix, levels entropy-coded)
    group: int = 64           # input weights per fp16 scale below 8 bits
    step: float = 0.04        # ans: the step as a fraction of each matrix's RMS (0.04: about int8's error)
    layer_steps: tuple[float, ...] = ()  # ans: one step per predictor weight matrix, in order (empty: ``step``)
    rest: str = "fp32"        # BN/FC and unpredicted tensors: fp32 | fp16 | bf16
    zstd_level: int = 19

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown weight coding {self.weights!r}; choose one of {WEIGHTS}")
        if self.rest not in REST:
            raise ValueError(f"unknown precision {self.rest!r} for BN/FC; choose one of {REST}")
        if self.group < 1:
            raise ValueError(f"group size must be >= 1, got {self.group}")
        for st in (self.step, *self.layer_steps):
            if not 0 < st <= MAX_REL_STEP:
                raise ValueError(f"relative step {st} out of range; choose one in (0, {MAX_REL_STEP:g}], e.g. 0.04")

    @property
    def bits(self) -> int | None:
        return int(self.weights[3:]) if self.weights.startswith("int") else None

    def step_of(self, i: int) -> float:
        """The ans step of the predictor's ``i``-th weight matrix."""
        if not self.layer_steps:
            return self.step
        if i >= len(self.layer_steps):
            raise ValueError(f"layer_steps lists {len(self.layer_steps)} steps; the predictor has more weight matrices")
        return self.layer_steps[i]

    def fake_quant(self, i: int = 0) -> torch.nn.Module:
        """The quantiser of the predictor's ``i``-th weight matrix as a parametrization (straight-through
        gradient)."""
        if self.weights == "ans":
            return FakeQuantUniform(self.step_of(i))
        if self.bits is None:
            raise ValueError("the fp32 scheme does not quantise")
        return FakeQuant(self.bits, self.group)

    def roundtrip(self, w: torch.Tensor, i: int = 0) -> torch.Tensor:
        """``w``, the predictor's ``i``-th weight matrix, as this scheme decodes it (fp32)."""
        if self.weights == "ans":
            return dequantize_uniform(quantize_uniform(w, self.step_of(i)))
        if self.bits is None:
            return w.detach().float()
        return dequantize(quantize(w, self.bits, self.group))

    @property
    def lossless(self) -> bool:
        return self.weights == "fp32" and self.rest == "fp32"


LOSSLESS = Scheme()


# ---- arrays <-> bytes ----------------------------------------------------------------------------
def _raw(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)


def _pack(arrays: list[tuple[str, torch.Tensor]]) -> tuple[bytes, list[dict[str, Any]]]:
    """Concatenated (byte-shuffled where floating) bytes and the layout records."""
    blobs, records = [], []
    for name, t in arrays:
        b = _raw(t)
        shuffle = t.is_floating_point() and t.element_size() > 1
        if shuffle:
            b = b.reshape(-1, t.element_size()).T.reshape(-1)
        blobs.append(b.tobytes())
        records.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "shuffle": shuffle})
    return b"".join(blobs), records


def _unpack(data: bytes, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    out, pos = {}, 0
    buf = np.frombuffer(data, dtype=np.uint8)
    for r in records:
        dtype = _DTYPES[r["dtype"]]
        size = torch.empty((), dtype=dtype).element_size()
        n = int(np.prod(r["shape"], dtype=np.int64)) * size
        b = buf[pos:pos + n]
        pos += n
        if r["shuffle"]:
            b = b.reshape(size, -1).T.reshape(-1)
        flat = torch.from_numpy(b.copy()).view(dtype) if n else torch.zeros(0, dtype=dtype)
        out[r["name"]] = flat.reshape(r["shape"])
    if pos != len(data):
        raise ContainerError(f"part holds {len(data)} bytes, its layout {pos}")
    return out


def _zstd(data: bytes, level: int) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor(level=level).compress(data)


def _unzstd(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdDecompressor().decompress(data)


# ---- parts ---------------------------------------------------------------------------------------
def _predictor_arrays(sd: dict[str, torch.Tensor], scheme: Scheme) -> tuple[list, dict[str, Any]]:
    arrays, quant = [], {}
    matrices = 0  # index of the 2-D weight in the predictor's order (its step in scheme.layer_steps)
    for k, v in sd.items():
        if scheme.weights == "ans" and v.dim() == 2:
            lv = quantize_uniform(v, scheme.step_of(matrices))
            matrices += 1
            lo, counts, words = encode_levels(lv.q)
            arrays += [(f"{k}:step", lv.step.reshape(1)), (f"{k}:counts", torch.from_numpy(counts)),
                       (f"{k}:ans", torch.from_numpy(words.view(np.int32)))]
            quant[k] = {"levels": "ans", "lo": lo, "shape": list(v.shape)}
        elif scheme.weights != "fp32" and v.dim() == 2:
            qz = quantize(v, scheme.bits, scheme.group)
            arrays += [(f"{k}:q", qz.q), (f"{k}:scale", qz.scale)]
            quant[k] = {"bits": qz.bits, "group": qz.group}
        else:
            arrays.append((k, v.detach().float()))
    return arrays, quant


_REST_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def encode(meta: dict[str, Any], tensors: dict[str, torch.Tensor], scheme: Scheme = LOSSLESS) -> bytes:
    """Format-2 bytes of an artefact given as format 1's (metadata, tensors)."""
    sub = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    pred, quant = _predictor_arrays(sub("predictor."), scheme)
    rest_dtype = _REST_DTYPE[scheme.rest]
    model, as_dtype = [], {}
    for k, v in sub("model.").items():
        if v.is_floating_point() and v.dtype != rest_dtype:
            as_dtype[k] = str(v.dtype).removeprefix("torch.")
            v = v.to(rest_dtype)
        model.append((k, v))
    shapes = [s for _, s in meta["plan"]["layers"]]
    perm_bytes, perm_meta = encode_permutation(tensors["plan.perm"].numpy(), shapes)
    parts, layout = {}, {}
    for name, arrays in (("predictor", pred), ("model", model), ("encoding", list(sub("encoding.").items()))):
        raw, records = _pack(arrays)
        layout[name] = records
        if records:
            parts[name] = _zstd(raw, scheme.zstd_level)
    if perm_bytes:
        parts["permutation"] = perm_bytes
    meta = dict(meta, format=FORMAT2)
    if isinstance(meta.get("sizes"), dict):  # NeRN.size_report counts int32 per row; this is what is stored
        meta["sizes"] = dict(meta["sizes"], permutation_bytes=len(perm_bytes))
    meta["codec"] = {"scheme": asdict(scheme), "layout": layout, "quantized": quant, "model_as": as_dtype,
                     "permutation": perm_meta, "part_bytes": {k: len(v) for k, v in parts.items()}}
    text = json.dumps(meta, default=str, separators=(",", ":")).encode()
    return write_container({"meta": _zstd(text, scheme.zstd_level), **parts})


def decode(data: bytes, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(metadata, tensors) of format-2 bytes, in format 1's layout; predictor weights dequantised."""
    parts = read_container(data, name)
    meta = json.loads(_unzstd(parts["meta"]))
    codec = meta["codec"]
    arr = {p: _unpack(_unzstd(parts[p]), codec["layout"][p]) if codec["layout"][p] else {}
           for p in ("predictor", "model", "encoding")}
    tensors: dict[str, torch.Tensor] = {}
    pred = arr["predictor"]
    for k, v in pred.items():
        if k.endswith((":scale", ":counts", ":ans")):
            continue
        if k.endswith(":step"):
            key = k[:-5]
            q = codec["quantized"][key]
            levels = decode_levels(q["lo"], pred[f"{key}:counts"].numpy(), pred[f"{key}:ans"].numpy().view(np.uint32),
                                   q["shape"])
            v = dequantize_uniform(Levels(levels, v.reshape(())))
            k = key
        elif k.endswith(":q"):
            key = k[:-2]
            q = codec["quantized"][key]
            v = dequantize(Quantized(v, pred[f"{key}:scale"], q["bits"], q["group"]))
            k = key
        tensors[f"predictor.{k}"] = v
    for k, v in arr["model"].items():
        tensors[f"model.{k}"] = v.to(_DTYPES[codec["model_as"][k]]) if k in codec["model_as"] else v
    tensors.update({f"encoding.{k}": v for k, v in arr["encoding"].items()})
    shapes = [s for _, s in meta["plan"]["layers"]]
    perm = decode_permutation(parts.get("permutation", b""), codec["permutation"], shapes)
    tensors["plan.perm"] = torch.from_numpy(perm)
    return meta, tensors
