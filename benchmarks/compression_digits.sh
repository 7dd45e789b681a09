#!/bin/bash
# The digits comparison of docs/compression.md, end to end and idempotent: NNCodec's own virtualenv,
# the nernfast runs (decoupled recipe, hidden 140 and 64, seeds 0-2), the compact artefacts of H140 (int8 and
# int6, 400 fine-tune steps at lr 5e-5), then benchmarks/compression_compare.py. Reruns skip what exists.
#   bash benchmarks/compression_digits.sh            (from the repository root, after `make setup`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
source benchmarks/nncodec_venv.sh
for H in 140 64; do for S in 0 1 2; do
  d=runs/cmp/h$H-s$S
  [ -s $d/nern.safetensors ] || $PY -m nernfast.train --recipe decoupled --hidden $H --seed $S --out $d --no-progress
  [ $H = 140 ] || continue  # H64 does not train with the recipe's settings on digits (docs/compression.md)
  for B in 8 6; do
    [ -f $d/c$B.safetensors ] || $PY -m nernfast.compress $d --out $d/c$B.safetensors --bits $B --steps 400 --lr 5e-5 \
      --no-progress --json $d/c$B.json
  done
done; done
ORIG=$($PY -c "from nernfast.pretrain import ensure_pretrained; print(ensure_pretrained('resnet20', 'digits'))" 2>/dev/null)
$PY benchmarks/compression_compare.py --dataset digits --original "$ORIG" \
  --artefacts 'runs/cmp/h*-s*/nern*.safetensors' --compact 'runs/cmp/h*-s*/c[0-9].safetensors' \
  --nncodec-python "$NNC/bin/python" --qp -4 -8 -12 -14 -16 -18 -20 -22 -24 -28 -32 -38 --out docs/compression
