#!/bin/bash
# The Fashion-MNIST comparison of docs/compression.md, end to end and idempotent: the shipped ResNet-20
# original against nernfast's teacher_decoupled artefacts (CR 0.35, seeds 0-2, the runs of docs/fashion-mnist.md;
# trained by experiments/fashion_mnist.py when missing; the committed results, docs/compression.md, ran on the
# 40-level predictor of their time: run names without -l40 then), each compact at int8, at
# int7 in groups of 64 and entropy-coded (ans, step 0.035, shared and per layer; per layer fitted to 10 % of the
# conv bytes, also from the runs whose phase 2 kept a weight average; seed 0 also 0.07 and 0.15) (BN/FC fp16, the
# default 400-step fine-tune), teacher_decoupled at H135 (int8; one seed)
# and recon_only at CR 1.14 as other predictor sizes, the original's int8 PTQ and NNCodec.
#   bash benchmarks/compression_fashion_mnist.sh     (from the repository root, after `make setup` and `make data`)
set -euo pipefail
PY=${PY:-.venv/bin/python}
source benchmarks/nncodec_venv.sh
RUNS=runs/fashion-mnist
mkdir -p $RUNS/compact docs/compression/fashion-mnist/compress
compact() {  # compact RUN TAG ARGS...: the run's artefact (trained when missing), then its compact file TAG (BN/FC fp16
  # unless ARGS say otherwise)
  local run=$1 tag=$2; shift 2; local f=$RUNS/compact/$run-$tag.nern
  [ -s $RUNS/$run/nern.safetensors ] || $PY experiments/fashion_mnist.py --need-artefacts --only $run
  [ -f $f ] || OMP_NUM_THREADS=1 $PY -m nernfast.compress $RUNS/$run --out $f --rest fp16 "$@" --no-progress \
    --json docs/compression/fashion-mnist/compress/$run-$tag.json
}
for S in 0 1 2; do
  compact shipped-teacher_decoupled-s$S int8 --bits 8; compact shipped-teacher_decoupled-s$S int7 --bits 7
  compact shipped-teacher_decoupled-s$S ans0.035 --step 0.035  # entropy-coded: the finest step within 10 %
  compact shipped-teacher_decoupled-s$S ansL0.035 --step 0.035 --per-layer  # the same bytes, a step per layer
  # per layer, every step scaled to the finest whose file fits the 10 % target (106 963 bytes)
  compact shipped-teacher_decoupled-s$S ansLB --step 0.035 --per-layer --max-bytes 106963
done
for S in 0 1 2; do  # the same fit, from the runs whose phase 2 kept a weight average (phase2.ema_decay=0.998)
  compact shipped-teacher_decoupled-ema-l40-s$S ansLB --step 0.035 --per-layer --max-bytes 106963
done
for ST in 0.07 0.15; do compact shipped-teacher_decoupled-s0 ans$ST --step $ST; done  # smaller files (one seed)
compact shipped-teacher_decoupled-h135-l40-s0 int8 --bits 8  # the largest predictor whose int8 file fits in 10 % (one seed)
[ -s $RUNS/shipped-recon_only-h302-s0/nern.safetensors ] ||
  $PY experiments/fashion_mnist.py --need-artefacts --only shipped-recon_only-h302-s0
ORIG=$($PY -c "from nernfast.pretrain import ensure_pretrained; print(ensure_pretrained('resnet20', 'fashion-mnist'))" 2>/dev/null)
$PY benchmarks/compression_compare.py --dataset fashion-mnist --original "$ORIG" \
  --artefacts "$RUNS/shipped-teacher_decoupled-s[0-9]/nern.safetensors" \
  --artefacts "$RUNS/shipped-teacher_decoupled-ema-l40-s[0-9]/nern.safetensors" \
  --artefacts "$RUNS/shipped-recon_only-h302-s0/nern.safetensors" \
  --artefacts "$RUNS/shipped-teacher_decoupled-h135-l40-s0/nern.safetensors" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-s[0-9]-int[78].nern" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-s[0-9]-ans0.*[0-9].nern" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-s[0-9]-ansL0.*[0-9].nern" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-s[0-9]-ansLB.nern" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-ema-l40-s[0-9]-ansLB.nern" \
  --compact "$RUNS/compact/shipped-teacher_decoupled-h135-l40-s0-int8.nern" \
  --nncodec-python "$NNC/bin/python" --qp -8 -12 -14 -16 -18 -20 -22 -24 -28 -32 -38 --out docs/compression/fashion-mnist
