#!/bin/bash
# Batches of 8 and 32 (400 and 1,600 rows) on the Intel Xeon: the BLAS (OpenBLAS 0.3.21,
# SkylakeX kernels) against the AVX-512 form, alternating, six rounds; every iteration's
# seconds printed, and the median.
WISE=${WISE:-target/release/wise}
show() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print('median', round(d['batch_size']/st.median(t),2), 'img/s, iter_s', [round(x,3) for x in t])"; }
for round in 1 2 3 4 5 6; do
  for bs in 8 32; do
    for kern in off avx512; do
      echo "round $round bs $bs $kern $(WISE_F32_KERNEL=$kern $WISE bench --mode infer --batch-size $bs --iters $(( bs == 8 ? 12 : 5 )) --warmup 2 2>/dev/null | show)"
    done
  done
done
