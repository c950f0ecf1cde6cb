#!/bin/bash
# The next chunk's prefetch in both forms (clamped to the packed data) against the build
# before, alternating, ROUNDS rounds: batches 1 and 2, each form.
ROUNDS=${1:-3}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  for kern in avx512 avx2; do
    for bs in 1 2; do
      iters=$(( bs == 1 ? 60 : 30 ))
      o=$(WISE_F32_KERNEL=$kern /tmp/s16/wise-base bench --mode infer --batch-size $bs --warmup 3 --iters $iters 2>/dev/null | med)
      n=$(WISE_F32_KERNEL=$kern /tmp/s16/wise-prefetch2 bench --mode infer --batch-size $bs --warmup 3 --iters $iters 2>/dev/null | med)
      python3 -c "print('round $round $kern bs $bs median img/s: base $o prefetch $n | prefetch/base %.3f' % ($n/$o))"
    done
  done
done
