#!/usr/bin/env bash
# Peak memory of a CPU training step: wise's estimate (what `wise train` checks before the
# first step, `wise_train::memory`) against the peak `wise bench --mode train` reaches, and
# PyTorch's peak for the same step (HF transformers and open_clip, each in a process of
# its own), side by side.
#
# Usage: scripts/bench_memory.sh ["PRESET BATCH" ...]
#   default cases: "ViT-B/32 16" "ViT-B/32 64" "ViT-B/16 8" "ViT-L/14 2"
#
#   WISE_PY=/path/to/python   Python with torch + transformers + open_clip
#                             (default .venv-fixtures/bin/python, else /root/.cache/wise-py/bin/python)
#   WISE_BIN=path             this `wise` instead of a fresh release build
#   WARMUP, ITERS             steps before the timed ones (default 1) and timed (default 2):
#                             a process's peak is reached by its second step
#
# Prints one line per case and implementation: preset, batch, peak GB, and for wise the
# estimate and the peak over the estimate.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${WISE_PY:-}
if [[ -z "$PY" ]]; then
    for candidate in .venv-fixtures/bin/python /root/.cache/wise-py/bin/python; do
        [[ -x "$candidate" ]] && PY=$candidate && break
    done
fi
[[ -n "$PY" ]] || { echo "no Python with torch: set WISE_PY" >&2; exit 1; }
if [[ -z "${WISE_BIN:-}" ]]; then
    cargo build --release -q -p wise-cli
    WISE_BIN=target/release/wise
fi
WARMUP=${WARMUP:-1}
ITERS=${ITERS:-2}
CASES=("$@")
[[ ${#CASES[@]} -gt 0 ]] || CASES=("ViT-B/32 16" "ViT-B/32 64" "ViT-B/16 8" "ViT-L/14 2")

field() { "$PY" -c "import json,sys; d=json.loads(sys.stdin.readlines()[-1]); print(*(d.get(k) for k in sys.argv[1:]))" "$@"; }

echo "# $(date -u '+%F %H:%M UTC'), $(nproc) threads, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-9s %5s  %-10s %8s %10s %8s\n' preset batch impl "peak GB" "estimate" "peak/est"
for case in "${CASES[@]}"; do
    read -r preset batch <<<"$case"
    read -r peak estimate < <("$WISE_BIN" bench --mode train --preset "$preset" --batch-size "$batch" \
        --warmup "$WARMUP" --iters "$ITERS" 2>/dev/null | field peak_rss_gb memory_estimate_gb)
    ratio=$("$PY" -c "print(f'{$peak / $estimate:.3f}')")
    printf '%-9s %5s  %-10s %8s %10s %8s\n' "$preset" "$batch" wise "$peak" "$estimate" "$ratio"
    for impl in hf open_clip; do
        peak=$("$PY" scripts/bench_torch.py --mode train --impl "$impl" --preset "$preset" --batch-size "$batch" \
            --warmup "$WARMUP" --iters "$ITERS" 2>/dev/null | field peak_rss_gb)
        printf '%-9s %5s  %-10s %8s\n' "$preset" "$batch" "$impl" "$peak"
    done
done
