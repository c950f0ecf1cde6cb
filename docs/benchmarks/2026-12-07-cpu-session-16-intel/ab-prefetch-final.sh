#!/bin/bash
# The final form (the next chunk asked for by the AVX-512 tiles of a chunk's last 4 row
# tiles only; the other tiles run the kernel as before) against the build before,
# alternating, ROUNDS rounds at batches 1, 8 and 32.
ROUNDS=${1:-4}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  for bs in 1 8 32; do
    iters=$(( bs == 1 ? 60 : (bs == 8 ? 12 : 4) ))
    o=$(/tmp/s16/wise-base bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    n=$(/tmp/s16/wise-prefetch5 bench --mode infer --batch-size $bs --warmup 2 --iters $iters 2>/dev/null | med)
    python3 -c "print('round $round bs $bs median img/s: base $o prefetch $n | prefetch/base %.3f' % ($n/$o))"
  done
done
