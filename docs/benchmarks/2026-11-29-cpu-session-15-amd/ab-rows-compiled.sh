#!/bin/bash
# A/B, AVX-512 form (the default on this CPU): session 14's final build (b5d7657,
# /tmp/ab15/wise-s14; the tile's row count a run-time value) against this session's
# (/tmp/ab15/wise-s15; a tile compiled per row count), ViT-B/32 f32 inference inside
# frozen_weights, alternating. Median and best of each run's iterations.
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),2), d['img_per_s_best'])"; }
for round in 1 2 3; do
  for bs in 1 8 32; do
    iters=$(( bs == 1 ? 60 : (bs == 8 ? 12 : 5) ))
    for b in s14 s15; do
      echo "round $round bs $bs $b median/best img/s $(/tmp/ab15/wise-$b bench --mode infer --batch-size $bs --iters $iters --warmup 3 2>/dev/null | med)"
    done
  done
done
