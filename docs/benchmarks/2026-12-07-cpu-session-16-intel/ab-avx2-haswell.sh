#!/bin/bash
# The AVX2 form on the Intel Xeon against OpenBLAS held to its AVX2 (Haswell) kernels, as a
# CPU without AVX-512 would run them: one and two images a batch, alternating, three rounds.
WISE=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),2), d['img_per_s_best'], d['f32_kernel'])"; }
for round in 1 2 3; do
  for bs in 1 2; do
    for kern in off avx2; do
      echo "round $round bs $bs $kern median/best img/s $(OPENBLAS_CORETYPE=Haswell WISE_F32_KERNEL=$kern $WISE bench --mode infer --batch-size $bs --iters $(( bs == 1 ? 60 : 20 )) --warmup 3 2>/dev/null | med)"
    done
  done
done
