"""A ResNet-20 for Fashion-MNIST trained the way a user's own script might, not by nernfast.pretrain.

It shares only the architecture (``nernfast.models.build_model('resnet20')``, the akamaster layout
the predictor expects) and the input normalisation (mean 0.2860, std 0.3530). Everything else is a
different recipe, on purpose: its own IDX reader, all 60 000 training images (no validation split,
the last epoch is kept), and one of two optimisers (``--recipe``):

- ``sgd`` (the default; the ``plain`` original): batch 256, SGD with Nesterov momentum, lr 0.05 with a
  cosine decay to 0 and no warm-up, weight decay 1e-4, label smoothing 0.1, random crops with 4 pixels
  of reflection padding (one offset per batch) and no flips, 12 epochs (2 820 steps).
- ``adamw`` (the ``plain-adamw`` original): batch 128, AdamW lr 2e-3 (betas 0.9/0.999) with one epoch
  of linear warm-up then a cosine decay to 0, decoupled weight decay 0.05 on every parameter, random
  crops with 4 pixels of zero padding and horizontal flips (both per image), no label smoothing,
  10 epochs (4 690 steps).

It saves a plain ``state_dict`` (``torch.save``).

    python experiments/plain_original.py OUT.pt [--recipe sgd|adamw] [--data /usr/share/datasets/fashion-mnist]

On the CPU it reruns itself with nernfast's pinned numerics so the file is the same on any machine of one
CPU vendor (pinned numerics repeat per vendor, nernfast.shipped: ``sgd`` gives 92.09 % test on an Intel Xeon,
91.96 % on an AMD EPYC).
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

MEAN, STD = 0.2860, 0.3530
SEED = {"sgd": 7, "adamw": 11}      # torch.manual_seed before build_model (experiments/original_spectrum.py reads it)
EPOCHS = {"sgd": 12, "adamw": 10}


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    nd = data[3]
    dims = struct.unpack(f">{nd}I", data[4:4 + 4 * nd])
    return np.frombuffer(data[4 + 4 * nd:], dtype=np.uint8).reshape(dims)


# torch is imported inside functions: main() reruns the script with pinned numerics before torch loads
def crop_per_batch(xb, g):
    """sgd: reflection padding, one crop offset for the whole batch."""
    import torch
    import torch.nn.functional as F
    xb = F.pad(xb, (4, 4, 4, 4), mode="reflect")
    oy, ox = torch.randint(0, 9, (2,), generator=g).tolist()
    return xb[:, :, oy:oy + 28, ox:ox + 28]


def crop_flip(xb, g):
    """adamw: zero padding (black, in pixel space) and a crop offset and a horizontal flip per image."""
    import torch
    import torch.nn.functional as F
    n = len(xb)
    xb = F.pad(xb, (4, 4, 4, 4), value=-MEAN / STD)
    off = torch.randint(0, 9, (n, 2), generator=g)
    rows = (off[:, 0, None] + torch.arange(28))[:, :, None]  # (n, 28, 1)
    cols = (off[:, 1, None] + torch.arange(28))[:, None, :]  # (n, 1, 28)
    xb = xb[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], xb.flip(3), xb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--recipe", choices=tuple(SEED), default="sgd")
    p.add_argument("--epochs", type=int, help=f"default per recipe: {EPOCHS}")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seed", type=int, help=f"default per recipe: {SEED}")
    a = p.parse_args()
    adamw = a.recipe == "adamw"
    a.epochs = a.epochs if a.epochs is not None else EPOCHS[a.recipe]
    a.seed = a.seed if a.seed is not None else SEED[a.recipe]
    from nernfast.numerics import PINNED_ENV, is_pinned
    if not is_pinned():
        import subprocess
        return subprocess.run([sys.executable, *sys.argv], env={**os.environ, **PINNED_ENV}).returncode

    import torch
    import torch.nn.functional as F
    from nernfast.models import build_model

    d = Path(a.data)
    x = torch.from_numpy(read_idx(d / "train-images-idx3-ubyte.gz").copy()).float().div_(255).unsqueeze(1)
    y = torch.from_numpy(read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64))
    xt = torch.from_numpy(read_idx(d / "t10k-images-idx3-ubyte.gz").copy()).float().div_(255).unsqueeze(1)
    yt = torch.from_numpy(read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    x, xt = (x - MEAN) / STD, (xt - MEAN) / STD

    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    model = build_model("resnet20", 10, 1)
    if adamw:
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        bs = 128
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
        bs = 256
    steps_per_epoch = math.ceil(len(x) / bs)
    total = a.epochs * steps_per_epoch
    warm = steps_per_epoch if adamw else 0

    def rate(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    t0 = time.time()
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            xb = crop_flip(x[idx], g) if adamw else crop_per_batch(x[idx], g)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.0 if adamw else 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = sum((model(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum().item() for i in range(0, len(xt), 1000))
        print(f"epoch {epoch + 1}/{a.epochs}: loss {loss.item():.3f}, test accuracy {acc / len(xt):.4f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
