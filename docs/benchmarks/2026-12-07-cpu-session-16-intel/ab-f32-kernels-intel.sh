#!/bin/bash
# A/B of wise's f32 kernel forms inside frozen_weights on the Intel Xeon (family 6 model
# 207), ViT-B/32 inference, alternating in each round: the BLAS alone (WISE_F32_KERNEL=off,
# Debian's OpenBLAS 0.3.21 with its SkylakeX kernels), the AVX2 form (up to 256 rows; above
# that the BLAS), the AVX-512 form. Median and best of each run's iterations.
WISE=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),2), d['img_per_s_best'], d['f32_kernel'])"; }
for round in 1 2; do
  for bs in 1 2 8 32; do
    iters=$(( bs == 1 ? 60 : (bs <= 4 ? 20 : (bs == 8 ? 12 : 5)) ))
    for kern in off avx2 avx512; do
      echo "round $round bs $bs $kern median/best img/s $(WISE_F32_KERNEL=$kern $WISE bench --mode infer --batch-size $bs --iters $iters --warmup 3 2>/dev/null | med)"
    done
  done
done
