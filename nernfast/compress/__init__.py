"""The compact artefact: quantise a trained artefact's predictor (with a short quantisation-aware
distillation), code every part, write it, and account for its bytes.

``python -m nernfast.compress RUN_OR_ARTEFACT --out FILE`` is the command (nernfast.compress.cli);
docs/compression.md has the format and the measurements.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codec.container import part_sizes

# Parts of the file as the user counts them (the container's parts, grouped).
PART_LABELS = (("predictor", "predictor"), ("permutation", "permutation"), ("model", "BN/FC + unpredicted"),
               ("encoding", "encoding buffers"), ("meta", "metadata"), ("header", "container header"),
               ("sha256", "checksum (SHA-256)"))


def file_parts(path: str | Path) -> dict[str, int]:
    """Bytes of each part of a format-2 artefact on disk; the values sum to the file's size."""
    data = Path(path).read_bytes()
    sizes = part_sizes(data)
    assert sum(sizes.values()) == len(data), (sizes, len(data))
    return sizes


def parts_table(sizes: dict[str, int], conv_bytes: int | None = None) -> str:
    """The byte table the CLI prints (bytes exact; kB = 1000 bytes)."""
    total = sum(sizes.values())
    lines = [f"{'part':<22} {'bytes':>10} {'kB':>9} {'share':>7}"]
    for key, label in PART_LABELS:
        if key in sizes:
            lines.append(f"{label:<22} {sizes[key]:>10,} {sizes[key] / 1000:>9.2f} {100 * sizes[key] / total:>6.1f}%")
    lines.append(f"{'file total':<22} {total:>10,} {total / 1000:>9.2f} {'100.0%':>7}")
    if conv_bytes:
        no_rest = total - sizes.get("model", 0)
        lines.append(f"= {100 * total / conv_bytes:.2f} % of the original's fp32 conv weights ({conv_bytes:,} bytes); "
                     f"{100 * no_rest / conv_bytes:.2f} % without BN/FC")
    return "\n".join(lines)


def split_metrics(model: Any, bundle: Any, split: str, device: Any) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on a whole split, unshuffled and unaugmented."""
    from ..eval import accuracy
    return accuracy(model, bundle.loader(split, 256, shuffle=False, augment=False), device)


def summary(sizes: dict[str, int]) -> dict[str, Any]:
    return {"file_bytes": sum(sizes.values()), **{f"{k}_bytes": v for k, v in sizes.items()}}
