#!/bin/bash
# This session's build (b187d12: the next chunk prefetched, BLAS above 512 rows on Intel)
# against session 15's (799c620), alternating, ROUNDS rounds at batches 1, 8 and 32.
ROUNDS=${1:-4}
OLD=/tmp/s16/wise-base
NEW=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  for bs in 1 8 32; do
    iters=$(( bs == 1 ? 60 : (bs == 8 ? 12 : 4) ))
    o=$($OLD bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    n=$($NEW bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    python3 -c "print('round $round bs $bs median img/s: session 15 $o session 16 $n | 16/15 %.3f' % ($n/$o))"
  done
done
