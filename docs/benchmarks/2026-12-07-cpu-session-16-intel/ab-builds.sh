#!/bin/bash
# Is wise slower on the Intel Xeon than in sessions 8-11? Session 11's build (6131c46,
# /root/.cache/s11-target) against this session's (799c620) with its AVX-512 kernel and
# with the BLAS alone, alternating, ROUNDS rounds; median img/s of each run, and per round
# each variant's ratio to session 11's.
# Usage: ab-builds.sh BATCH ITERS [ROUNDS]
BS=$1; ITERS=$2; ROUNDS=${3:-8}
OLD=/root/.cache/s11-target/release/wise
NEW=${WISE:-target/release/wise}
med() { python3 -c "import json,sys,statistics as st; d=json.load(sys.stdin); t=d['iter_s']; print(round(d['batch_size']/st.median(t),3))"; }
for round in $(seq $ROUNDS); do
  o=$($OLD bench --mode infer --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  k=$(WISE_F32_KERNEL=avx512 $NEW bench --mode infer --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  b=$(WISE_F32_KERNEL=off $NEW bench --mode infer --batch-size $BS --warmup 2 --iters $ITERS 2>/dev/null | med)
  python3 -c "print('round $round bs $BS median img/s: s11 $o now-avx512 $k now-blas $b | avx512/s11 %.3f blas/s11 %.3f avx512/blas %.3f' % ($k/$o, $b/$o, $k/$b))"
done
