#!/bin/bash
# wise fisher, seconds for 8 and 48 examples of MNIST (random ViT-B/32 classifier), alternating builds:
# base = before this session's f32 kernel, f32k = with it, fis = with it and the in-place sums
for r in 1 2; do
  for b in base f32k fis; do
    for n in 8 48; do
      s=$(date +%s.%N); /tmp/wise-$b fisher --model /tmp/fisherbench/b32.safetensors --data /tmp/dig16new/data/mnist/test --samples $n --out /tmp/fisherbench/f.safetensors > /dev/null 2>&1; e=$(date +%s.%N)
      echo "round $r $b samples $n seconds $(echo "$e - $s" | bc)"
    done
  done
done
