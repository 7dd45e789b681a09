#!/bin/bash
# The Fashion-MNIST comparison of docs/compression.md, end to end and idempotent: the shipped ResNet-20
# original against nernfast's teacher_decoupled artefacts (H140, CR 0.35, seeds 0-2, the runs of
# docs/fashion-mnist.md; trained by experiments/fashion_mnist.py when missing), each compact at int8 and at
# int7 in groups of 64 (BN/FC fp16, the default 400-step fine-tune), the original's int8 PTQ and NNCodec.
#   bash benchmarks/compression_fashion_mnist.sh     (from the repository root, after `make setup` and `make data`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
source benchmarks/nncodec_venv.sh
RUNS=runs/fashion-mnist
mkdir -p $RUNS/compact
for S in 0 1 2; do
  run=shipped-teacher_decoupled-s$S
  [ -s $RUNS/$run/nern.safetensors ] || $PY experiments/fashion_mnist.py --only $run
  for B in 8 7; do
    f=$RUNS/compact/$run-int$B.nern
    [ -f $f ] || OMP_NUM_THREADS=1 $PY -m nernfast.compress $RUNS/$run --out $f --bits $B --rest fp16 --no-progress \
      --json ${f%.nern}.json
  done
done
ORIG=$($PY -c "from nernfast.pretrain import ensure_pretrained; print(ensure_pretrained('resnet20', 'fashion-mnist'))" 2>/dev/null)
$PY benchmarks/compression_compare.py --dataset fashion-mnist --original "$ORIG" \
  --artefacts "$RUNS/shipped-teacher_decoupled-s[0-9]/nern.safetensors" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-s[0-9]-int[78].nern" \
  --nncodec-python "$NNC/bin/python" --qp -8 -12 -14 -16 -18 -20 -22 -24 -28 -32 -38 --out docs/compression/fashion-mnist
