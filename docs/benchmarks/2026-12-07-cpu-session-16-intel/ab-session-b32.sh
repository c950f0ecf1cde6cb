#!/bin/bash
# Batch 32 only: this session's build (the BLAS above 512 rows on Intel) against session
# 15's (the kernel at every row count), alternating, ROUNDS rounds, the order swapped every
# other round.
ROUNDS=${1:-6}
OLD=/tmp/s16/wise-base
NEW=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  if (( round % 2 )); then
    o=$($OLD bench --mode infer --batch-size 32 --warmup 2 --iters 4 2>/dev/null | med)
    n=$($NEW bench --mode infer --batch-size 32 --warmup 2 --iters 4 2>/dev/null | med)
  else
    n=$($NEW bench --mode infer --batch-size 32 --warmup 2 --iters 4 2>/dev/null | med)
    o=$($OLD bench --mode infer --batch-size 32 --warmup 2 --iters 4 2>/dev/null | med)
  fi
  python3 -c "print('round $round bs 32 median img/s: session 15 $o session 16 $n | 16/15 %.3f' % ($n/$o))"
done
