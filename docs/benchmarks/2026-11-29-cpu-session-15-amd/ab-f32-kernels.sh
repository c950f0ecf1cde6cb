#!/bin/bash
# A/B of wise's f32 kernel forms inside frozen_weights, ViT-B/32 inference, alternating in
# each round: the BLAS alone (WISE_F32_KERNEL=off), the AVX2 form up to 256 rows (this
# session's build, /tmp/ab15/wise-final), the AVX2 form at any row count (the same build
# with `max_rows` returning usize::MAX for AVX2, /tmp/ab15/wise-nolimit; batches of 8 and
# 32 only, where the limit matters), the AVX-512 form. Median and best of each run's
# iterations. OpenBLAS runs its Haswell (AVX2) kernels on this Zen 4 either way.
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),2), d['img_per_s_best'], d['f32_kernel'])"; }
for round in 1 2; do
  for bs in 1 2 4 8 32; do
    iters=$(( bs == 1 ? 60 : (bs <= 4 ? 20 : (bs == 8 ? 12 : 5)) ))
    runs="off:final avx2:final avx512:final"
    [ $bs -ge 8 ] && runs="off:final avx2:final avx2:nolimit avx512:final"
    for run in $runs; do
      kern=${run%%:*}; bin=${run##*:}
      echo "round $round bs $bs $kern $bin median/best img/s $(WISE_F32_KERNEL=$kern /tmp/ab15/wise-$bin bench --mode infer --batch-size $bs --iters $iters --warmup 3 2>/dev/null | med)"
    done
  done
done
