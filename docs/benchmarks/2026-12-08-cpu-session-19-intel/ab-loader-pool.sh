#!/usr/bin/env bash
# wise's training steps fed from photo-sized JPEGs, the loader's decoding on rayon's global
# pool (the compute's) or on a pool of its own (normal priority, or nice 19), against random
# pixels; alternating in each round. ViT-B/32, fp32, batch 16, 3 warm-up + 8 timed steps.
# WISE_LOADER_POOL=own|nice switched a throwaway build (crates/wise-data/src/loader.rs: a
# rayon pool of the loader's own, its threads at nice 19 for `nice`); the kept code has the
# global pool only, so with it every variant but `random` runs as `global`.
# Usage: ab-loader-pool.sh DATA ROUNDS VARIANTS...   (variants: random global own nice)
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=$1 ROUNDS=$2
shift 2
W=${WISE_BIN:-target/release/wise}
T=(--mode train --batch-size 16 --warmup 3 --iters 8)
uptime
for r in $(seq "$ROUNDS"); do
    for v in "$@"; do
        case $v in
            random) args=(--classes 10) ;;
            *) args=(--data "$DATA") ;;
        esac
        WISE_LOADER_POOL=$v "$W" bench "${T[@]}" "${args[@]}" | python3 -c 'import json,statistics,sys
d=json.loads(sys.stdin.read()); print(sys.argv[1], sys.argv[2], d["img_per_s"], d["img_per_s_best"], round(16/statistics.median(d["iter_s"]),3), flush=True)' "$r" "$v"
    done
done
uptime
