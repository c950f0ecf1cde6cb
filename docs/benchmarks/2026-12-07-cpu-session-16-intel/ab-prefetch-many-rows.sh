#!/bin/bash
# The AVX-512 form with the next chunk's prefetch against the build before at many rows
# (batches 8 and 32; a prefetch a step throughout, of lines already at hand after a
# chunk's first 4 tiles), alternating, ROUNDS rounds.
ROUNDS=${1:-4}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  for bs in 8 32; do
    iters=$(( bs == 8 ? 12 : 4 ))
    o=$(/tmp/s16/wise-base bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    n=$(/tmp/s16/wise-prefetch3 bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    python3 -c "print('round $round bs $bs median img/s: base $o prefetch $n | prefetch/base %.3f' % ($n/$o))"
  done
done
