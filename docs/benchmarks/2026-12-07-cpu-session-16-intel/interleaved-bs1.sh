#!/bin/bash
# One image at a time, side by side on a VM whose speed drifts within minutes: PyTorch (HF,
# open_clip) and wise (this session's build, and the build before the prefetch) in short
# runs one after the other, ROUNDS times; each run's median img/s, and per round wise's
# ratios.
ROUNDS=${1:-5}
PY=${WISE_PY:-/root/.cache/wise-py/bin/python}
med() { python3 -c "import json,sys,statistics as st
for l in sys.stdin:
    if not l.startswith('{'): continue
    d=json.loads(l); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  hf=$($PY scripts/bench_torch.py --mode infer --impl hf --batch-size 1 --warmup 3 --iters 40 2>/dev/null | med)
  oc=$($PY scripts/bench_torch.py --mode infer --impl open_clip --batch-size 1 --warmup 3 --iters 40 2>/dev/null | med)
  new=$(/tmp/s16/wise-prefetch5 bench --mode infer --batch-size 1 --warmup 3 --iters 40 2>/dev/null | med)
  old=$(/tmp/s16/wise-base bench --mode infer --batch-size 1 --warmup 3 --iters 40 2>/dev/null | med)
  python3 -c "print('round $round bs 1 median img/s: hf $hf open_clip $oc wise $new wise-before $old | wise/hf %.2f wise/oc %.2f before/hf %.2f before/oc %.2f' % ($new/$hf, $new/$oc, $old/$hf, $old/$oc))"
done
