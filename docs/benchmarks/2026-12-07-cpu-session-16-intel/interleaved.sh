#!/bin/bash
# Side by side on a VM whose speed drifts by up to 50 % within minutes: PyTorch (HF,
# open_clip) and wise (its AVX-512 kernel, and the BLAS alone) in short runs, one after the
# other, ROUNDS times; each run's median img/s, and per round wise's ratio to each PyTorch.
# Usage: interleaved.sh BATCH ITERS [ROUNDS]
BS=$1; ITERS=$2; ROUNDS=${3:-6}
PY=${WISE_PY:-/root/.cache/wise-py/bin/python}
WISE=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st
for l in sys.stdin:
    if not l.startswith('{'): continue
    d=json.loads(l); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  hf=$($PY scripts/bench_torch.py --mode infer --impl hf --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  oc=$($PY scripts/bench_torch.py --mode infer --impl open_clip --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  w5=$(WISE_F32_KERNEL=avx512 $WISE bench --mode infer --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  wo=$(WISE_F32_KERNEL=off $WISE bench --mode infer --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  python3 -c "print('round $round bs $BS median img/s: hf $hf open_clip $oc wise-avx512 $w5 wise-blas $wo | avx512/hf %.2f avx512/oc %.2f blas/hf %.2f blas/oc %.2f' % ($w5/$hf, $w5/$oc, $wo/$hf, $wo/$oc))"
done
