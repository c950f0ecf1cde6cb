#!/bin/bash
# Prefetching the next chunk of the packed weight (AVX-512 form) against the build before,
# alternating, ROUNDS rounds at batches 1, 2 and 8: median img/s of each run, and the ratio.
ROUNDS=${1:-4}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  for bs in 1 2 8; do
    iters=$(( bs == 1 ? 60 : (bs == 2 ? 30 : 12) ))
    o=$(/tmp/s16/wise-base bench --mode infer --batch-size $bs --warmup 3 --iters $iters 2>/dev/null | med)
    n=$(/tmp/s16/wise-prefetch bench --mode infer --batch-size $bs --warmup 3 --iters $iters 2>/dev/null | med)
    python3 -c "print('round $round bs $bs median img/s: base $o prefetch $n | prefetch/base %.3f' % ($n/$o))"
  done
done
