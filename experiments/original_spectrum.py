"""How much of each original is structure and how much its random initialisation (docs/fashion-mnist-tuning.md,
"What limits the plain original"). For every original at hand, two measurements of the conv weights a predictor
reconstructs (nernfast.selection):

- the trainer's seed-free check (nernfast.analysis.lowfreq.spectrum_check): the low-frequency energy ratio against
  random matrices of the same shapes;
- where the seed that initialised it is known (nernfast.pretrain seeds ``torch.manual_seed(seed)`` before
  ``build_model``; experiments/plain_original.py's per recipe, ``plain_original.SEED``), the share of the
  weights' energy along their own initial values: sum over layers of cos(W, W_init)^2 ||W||^2 / sum of ||W||^2.

    python experiments/original_spectrum.py        # prints a markdown table
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from nernfast.analysis.lowfreq import spectrum_check  # noqa: E402
from nernfast.analysis.weights import conv_weights  # noqa: E402
from nernfast.models import build_model  # noqa: E402
from nernfast.selection import select_layers  # noqa: E402
from fashion_mnist import PLAIN_ORIGINALS  # noqa: E402
from plain_original import SEED  # noqa: E402


def predicted(state: dict[str, torch.Tensor] | None = None, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """The conv weights a predictor reconstructs (the trainer's selection) of a ResNet-20 with ``state``
    (None: as freshly built under the current RNG state)."""
    model = build_model("resnet20", 10, in_channels)
    if state is not None:
        model.load_state_dict(state)
    return conv_weights(model, [n for n, _ in select_layers(model)])


def init_share(weights: dict[str, torch.Tensor], seed: int, in_channels: int) -> float:
    torch.manual_seed(seed)
    init = predicted(None, in_channels)
    along = total = 0.0
    for k, w in weights.items():
        cos = float((w * init[k]).sum() / (w.norm() * init[k].norm()))
        along, total = along + cos ** 2 * float(w.norm() ** 2), total + float(w.norm() ** 2)
    return along / total


def main() -> int:
    rows = []
    torch.manual_seed(12345)
    rows.append(("a fresh ResNet-20 (random init)", predicted(), None))
    for p in sorted((ROOT / "nernfast" / "pretrained").glob("resnet20_*.pt")):
        ck = torch.load(p, map_location="cpu", weights_only=True)
        seed = (ck["seed"], ck["in_channels"])
        rows.append((f"`{p.name}` (nernfast.pretrain)", predicted(ck["state_dict"], ck["in_channels"]), seed))
    for plain in dict.fromkeys(PLAIN_ORIGINALS.values()):  # plain and plain-epyc: one file
        if plain.file.exists():
            rows.append((f"plain Fashion-MNIST original (experiments/plain_original.py {' '.join(plain.options())})",
                         predicted(torch.load(plain.file, map_location="cpu", weights_only=True)),
                         (SEED[plain.recipe], 1)))
    print("| original | low-freq. ratio | random matrices | excess | near random | energy along its init |")
    print("|---|---|---|---|---|---|")
    for name, w, seed in rows:
        c = spectrum_check(w)
        share = f"{100 * init_share(w, *seed):.0f} %" if seed is not None else "100 % (it is one)"
        print(f"| {name} | {c['mean_ratio']:.3f} | {c['mean_random_ratio']:.3f} | {c['excess']:+.3f} | "
              f"{'yes' if c['near_random'] else 'no'} | {share} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
