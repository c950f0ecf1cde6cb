#!/bin/bash
# alternating rounds: bs32 inference img/s per binary
rounds=${ROUNDS:-5}; bs=${BS:-32}
for r in $(seq $rounds); do
  for b in "$@"; do
    v=$(/tmp/$b bench --mode infer --batch-size $bs --warmup 1 --iters ${ITERS:-4} 2>/dev/null | tail -1 | grep -o '"img_per_s":[0-9.]*' | cut -d: -f2)
    echo "$r $b $v"
  done
done
