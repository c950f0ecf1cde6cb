#!/bin/bash
# A/B: session-14 build before the f32 packed kernel (d8147f6, /tmp/wise-base) vs with it (/tmp/wise-f32k)
for r in 1 2; do
  for bs in 1 8 32; do
    it=$([ $bs = 1 ] && echo 30 || echo 8); wu=$([ $bs = 1 ] && echo 3 || echo 1)
    for b in base f32k; do
      echo "round $r bs $bs $b $(/tmp/wise-$b bench --mode infer --batch-size $bs --warmup $wu --iters $it 2>&1 | tail -1)"
    done
  done
  for b in base f32k; do
    for n in 8 48; do
      s=$(date +%s.%N); /tmp/wise-$b fisher --model /tmp/fisherbench/b32.safetensors --data /tmp/dig16new/data/mnist/test --samples $n --out /tmp/fisherbench/f.safetensors > /dev/null 2>&1; e=$(date +%s.%N)
      echo "round $r fisher $b samples $n seconds $(echo "$e - $s" | bc)"
    done
  done
done
