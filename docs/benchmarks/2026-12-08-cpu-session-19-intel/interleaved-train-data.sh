#!/usr/bin/env bash
# Training steps fed from photo-sized JPEGs vs on random pixels, wise and PyTorch (HF,
# open_clip), alternating in each round: ViT-B/32, fp32, batch 16, 3 warm-up + 6 timed steps.
# Usage: interleaved-train-data.sh DATA ROUNDS > interleaved-train-data.txt
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=$1 ROUNDS=${2:-4}
W=${WISE_BIN:-target/release/wise}
PY=${WISE_PY:-/root/.cache/wise-py/bin/python}
CLASSES=$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l)
T=(--mode train --batch-size 16 --warmup 3 --iters 6)
row() { python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"):
        d=json.loads(l); print(sys.argv[1], d["impl"], "data" if d.get("data") else "random", d["img_per_s"], d["img_per_s_best"], flush=True)' "$1"; }
uptime
for r in $(seq "$ROUNDS"); do
    "$W" bench "${T[@]}" --classes "$CLASSES" | row "$r"
    "$W" bench "${T[@]}" --data "$DATA" | row "$r"
    "$PY" scripts/bench_torch.py "${T[@]}" --classes "$CLASSES" 2>/dev/null | row "$r"
    "$PY" scripts/bench_torch.py "${T[@]}" --data "$DATA" --workers "$(nproc)" 2>/dev/null | row "$r"
done
uptime
