#!/usr/bin/env bash
# Side-by-side CPU benchmark of a ViT-B/32 classifier: PyTorch (HF, open_clip) vs wise.
#
# Usage:
#   scripts/bench.sh [--mode infer|train|zeroshot] [--preset ViT-B/32|ViT-B/16] [--batch-size N]
#                    [--warmup W] [--iters 5] [--threads T] [--classnames FILE] [--bf16]
#
#   --bf16          mixed precision on both sides: PyTorch under torch.autocast("cpu",
#                   torch.bfloat16), wise with WISE_CPU_BF16=1 (the blocks' products in bf16,
#                   forward and backward, on AVX512_BF16 CPUs); infer and train modes, no
#                   fp32 ceiling (it does not apply)
#   --preset        the model's shape, ViT-B/32 by default (ViT-B/16: 4x the tokens, 4x the
#                   FLOPs; the sgemm ceiling is then measured at its product shapes too)
#   --mode infer    the image tower forward, fp32, batch 32 by default
#   --mode train    one fine-tuning step (tower + head, cross-entropy, backward, clipping,
#                   AdamW), fp32, batch 16 by default
#   --mode zeroshot a zero-shot head: the text tower over every class × template prompt
#                   (--classnames FILE, one per line, default CIFAR-10's ten; CLIP's 80
#                   ImageNet templates), 256 prompts a batch for wise; rates in prompts/s
#   --warmup W      untimed iterations first, the same for every implementation: 1 for
#                   infer, 3 for train by default (a training step reaches its steady state
#                   only after a few: PyTorch's HF step takes 3.1 s, 2.3 s, 2.1 s ... 1.9 s
#                   over its first eight, wise's allocator grows its heap once, ~0.3 s, within
#                   its first five; a fine-tuning run takes thousands)
#
#   WISE_PY=/path/to/python   Python with torch + transformers + open_clip
#                             (scripts/requirements-fixtures.txt). Default:
#                             .venv-fixtures/bin/python, else /root/.cache/wise-py/bin/python.
#   BENCH_OUT=file.jsonl      also write the raw JSON lines there.
#   WISE_BIN=path             run this already built `wise` and skip the cargo build.
#
# Builds `wise` in release first (compile time is not measured), then runs PyTorch
# (scripts/bench_torch.py) and `wise bench` one after the other on the same machine, all
# random weights, fp32, CPU. Prints the machine, the JSON lines, a table and the ratio
# wise / PyTorch (img/s) for each PyTorch implementation, from the mean over the timed
# iterations and from the fastest one ("best": robust to other load on a shared machine),
# and each one's share of the gemm-bound limit: the model's FLOPs per image over the best
# sgemm rate measured in the same run (PyTorch's, numpy's and wise's BLAS, and wise's own
# kernel from packed weights on AVX-512 and AVX2 CPUs; before and after the models).
# `--threads` sets torch's threads and RAYON_NUM_THREADS for wise; the default is the
# number of cores (nproc). Check `uptime` first: other jobs on the box skew everything.
set -euo pipefail

cd "$(dirname "$0")/.."

MODE=infer
PRESET=ViT-B/32
BF16=0
BATCH=
WARMUP=
ITERS=5
THREADS=$(nproc)
CLASSNAMES=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mode) MODE=$2; shift 2 ;;
        --preset) PRESET=$2; shift 2 ;;
        --bf16) BF16=1; shift ;;
        --batch-size) BATCH=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --iters) ITERS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --classnames) CLASSNAMES=$2; shift 2 ;;
        -h|--help) sed -n '2,42p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case "$MODE" in
    infer) BATCH=${BATCH:-32}; WARMUP=${WARMUP:-1} ;;
    train) BATCH=${BATCH:-16}; WARMUP=${WARMUP:-3} ;;
    zeroshot) BATCH=${BATCH:-256}; WARMUP=${WARMUP:-1} ;;
    *) echo "--mode must be infer, train or zeroshot, not $MODE" >&2; exit 2 ;;
esac
AMP=none
if [[ $BF16 == 1 ]]; then
    [[ $MODE != zeroshot ]] || { echo "--bf16 is for --mode infer and train" >&2; exit 2; }
    AMP=bf16
    export WISE_CPU_BF16=1
fi
PY=${WISE_PY:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv-fixtures/bin/python ]]; then
        PY=.venv-fixtures/bin/python
    elif [[ -x /root/.cache/wise-py/bin/python ]]; then
        PY=/root/.cache/wise-py/bin/python
    else
        echo "no Python venv: set WISE_PY (needs scripts/requirements-fixtures.txt)" >&2
        exit 1
    fi
fi

if [[ -n "${WISE_BIN:-}" ]]; then
    echo "== using prebuilt $WISE_BIN (no build)"
else
    echo "== build (not timed)"
    cargo build --release -q -p wise-cli
    WISE_BIN=${CARGO_TARGET_DIR:-target}/release/wise
fi

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
echo "== machine"
echo "date:       $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "nproc:      $(nproc)"
echo "cpu:        $(lscpu | awk -F': *' '/^Model name/{n=$2} /^CPU family/{f=$2} /^Model:/{m=$2} /^Flags/{v=($2 ~ /avx512f/) ? "AVX-512" : ($2 ~ /avx2/) ? "AVX2" : "no AVX2"} END{printf "%s (family %s, model %s, %s)", n, f, m, v}')"
echo "uptime:     $(uptime)"
echo "torch:      $TORCH_VERSION ($PY)"
echo "rustc:      $(rustc --version)"
echo "mode:       $MODE   preset: $PRESET   threads: $THREADS   batch: $BATCH   warmup: $WARMUP   iters: $ITERS   amp: $AMP"

RESULTS=$(mktemp)
NAMES=$(mktemp)
trap 'rm -f "$RESULTS" "$NAMES"' EXIT
if [[ -z "$CLASSNAMES" ]]; then
    printf '%s\n' airplane automobile bird cat deer dog frog horse ship truck > "$NAMES"
    CLASSNAMES=$NAMES
fi

# The gemm-bound limit's denominator: the best fp32 matrix-product rate measured on this
# machine in this run, by every library at hand (PyTorch's BLAS, numpy's OpenBLAS, wise's
# BLAS path and its own packed kernel), on the model's product shapes and 2048³; before and
# after the models, so a VM's drifting clock speed is caught on both sides.
ceiling() {
    "$PY" scripts/bench_torch.py --mode sgemm --preset "$PRESET" --batch-size "$BATCH" --threads "$THREADS" \
        --warmup 1 --iters 5 \
        | tee -a "$RESULTS"
    RAYON_NUM_THREADS=$THREADS "$WISE_BIN" bench --mode sgemm --preset "$PRESET" --batch-size "$BATCH" \
        --warmup 1 --iters 5 \
        | tee -a "$RESULTS"
}

# The ceiling is for the image tower's modes (its shapes, its FLOP count).
if [[ "$MODE" != zeroshot && $BF16 == 0 ]]; then
    echo "== sgemm ceiling (before)"
    ceiling
fi

echo "== PyTorch"
"$PY" scripts/bench_torch.py --mode "$MODE" --preset "$PRESET" --batch-size "$BATCH" --warmup "$WARMUP" \
    --iters "$ITERS" --threads "$THREADS" --amp "$AMP" \
    --classnames "$CLASSNAMES" 2> >(grep -v "No pretrained weights loaded" >&2) | tee -a "$RESULTS"

echo "== wise"
RAYON_NUM_THREADS=$THREADS "$WISE_BIN" bench --mode "$MODE" --preset "$PRESET" --batch-size "$BATCH" \
    --warmup "$WARMUP" --iters "$ITERS" \
    --classnames "$CLASSNAMES" | tee -a "$RESULTS"

if [[ "$MODE" != zeroshot && $BF16 == 0 ]]; then
    echo "== sgemm ceiling (after)"
    ceiling
fi

echo "uptime after: $(uptime)"
if [[ -n "${BENCH_OUT:-}" ]]; then cp "$RESULTS" "$BENCH_OUT"; fi

echo "== summary"
"$PY" - "$RESULTS" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
rows = [r for r in lines if r["mode"] != "sgemm"]
ceilings = [r for r in lines if r["mode"] == "sgemm"]
by = {r["impl"]: r for r in rows}
# Images per second, or prompts per second for zeroshot (one iteration: the whole head).
unit = "prompts" if rows and "prompts_per_s" in rows[0] else "img"
rate, best = f"{unit}_per_s", f"{unit}_per_s_best"
print(f"{'impl':<10} {unit + '/s':>9} {'best':>9} {'s/iter':>8} {'threads':>7}")
for r in rows:
    n = r.get("prompts", r.get("batch_size"))
    print(f"{r['impl']:<10} {r[rate]:>9.2f} {r[best]:>9.2f} {n / r[rate]:>8.3f} {r['threads']:>7}")
wise = by.get("wise")
if wise:
    for name in ("hf", "open_clip"):
        if name in by:
            print(f"ratio wise/{name}: {wise[rate] / by[name][rate]:.2f} (mean), "
                  f"{wise[best] / by[name][best]:.2f} (best iteration)")
if wise and ceilings and "model_gflop_per_img" in wise:
    # The issue's gemm-bound limit: model FLOPs / the best sgemm rate measured in this run.
    top = max(ceilings, key=lambda r: r["gflops_best"])
    shape = max(top["gflops"], key=top["gflops"].get)
    limit = top["gflops_best"] / wise["model_gflop_per_img"]
    print(f"sgemm ceiling: {top['gflops_best']:.1f} GFLOP/s ({top['impl']}, {shape}; "
          + ", ".join(f"{r['impl']} {r['gflops_best']:.0f}" for r in ceilings) + ")")
    print(f"gemm-bound limit: {limit:.2f} img/s ({wise['model_gflop_per_img']:.2f} GFLOP per image)")
    for r in rows:
        print(f"share of the limit, {r['impl']}: {r['img_per_s'] / limit:.1%} (mean), "
              f"{r['img_per_s_best'] / limit:.1%} (best iteration)")
PY
