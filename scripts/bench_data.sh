#!/usr/bin/env bash
# Is the data path ever the bottleneck? Side-by-side CPU benchmark on real JPEGs, for
# evaluation and for fine-tuning.
#
# Usage:
#   scripts/bench_data.sh [--data DIR] [--photos] [--limit 320] [--batch-size 32] [--decode-limit 2000]
#                         [--train-batch 16] [--train-iters 6] [--workers N]
#
#   --data DIR   an ImageFolder of JPEGs; default: CIFAR-10 test, unpacked from
#                ../shared/datasets/cifar10/cifar10-jpeg.tar.gz into a temp folder.
#   --photos     run on photo-sized JPEGs (500x375 and 375x500, ~70 KB) made from the
#                --decode-limit of the data's images, evenly spread (bench_decode.py --make-photos):
#                decoding at the size users feed CLIP, not CIFAR's 32x32.
#   --workers N  PyTorch DataLoader worker processes in part 2 (default: number of cores).
#   WISE_PY, WISE_BIN as for scripts/bench.sh.
#
# 1. `wise bench --mode eval`: the whole of `wise eval` (decode, resize to 224, model) with
#    a random ViT-B/32 classifier over --limit images, against `wise bench --mode infer`,
#    the bare model on random pixels at the same batch size. The ratio is what the loader
#    costs the model (issue target: >= 0.9).
# 2. Fine-tuning steps (ViT-B/32, a head of the data's classes, batch --train-batch, fp32,
#    all cores) fed from the data as `wise train` feeds them (shuffled, random resized
#    crops decoded ahead on the loader's threads), against the same steps on random
#    pixels; and PyTorch the same way (scripts/bench_torch.py --mode train, with and
#    without --data: a DataLoader of --workers processes over ImageFolder with open_clip's
#    training transform). Each one's ratio is what its data path costs its steps, and
#    wise / PyTorch on the data is the end-to-end comparison.
# 3. Decode + resize + normalise on one core: `RAYON_NUM_THREADS=1 wise bench --mode
#    preprocess` against scripts/bench_decode.py (Pillow + numpy, and transformers'
#    CLIPImageProcessor), over --decode-limit images; then the training transform
#    (`--augment`) against open_clip's (torchvision's RandomResizedCrop on PIL).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=
PHOTOS=
LIMIT=320
BATCH=32
DECODE_LIMIT=2000
TRAIN_BATCH=16
TRAIN_ITERS=6
WORKERS=$(nproc)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) DATA=$2; shift 2 ;;
        --photos) PHOTOS=1; shift ;;
        --limit) LIMIT=$2; shift 2 ;;
        --batch-size) BATCH=$2; shift 2 ;;
        --decode-limit) DECODE_LIMIT=$2; shift 2 ;;
        --train-batch) TRAIN_BATCH=$2; shift 2 ;;
        --train-iters) TRAIN_ITERS=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

PY=${WISE_PY:-}
if [[ -z "$PY" ]]; then
    for candidate in .venv-fixtures/bin/python /root/.cache/wise-py/bin/python; do
        [[ -x $candidate ]] && PY=$candidate && break
    done
fi
[[ -n "$PY" ]] || { echo "no Python venv: set WISE_PY (needs scripts/requirements-fixtures.txt)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [[ -z "$DATA" ]]; then
    ARCHIVE=../shared/datasets/cifar10/cifar10-jpeg.tar.gz
    [[ -f $ARCHIVE ]] || { echo "no --data and no $ARCHIVE" >&2; exit 1; }
    tar xzf "$ARCHIVE" -C "$TMP" test
    DATA=$TMP/test
fi
if [[ -n "$PHOTOS" ]]; then
    echo "== photo-sized JPEGs from $DATA (not timed)"
    "$PY" scripts/bench_decode.py --data "$DATA" --limit "$DECODE_LIMIT" --make-photos "$TMP/photos"
    DATA=$TMP/photos
fi
if [[ -z "${WISE_BIN:-}" ]]; then
    echo "== build (not timed)"
    cargo build --release -q -p wise-cli
    WISE_BIN=${CARGO_TARGET_DIR:-target}/release/wise
fi

echo "== machine"
echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)   nproc: $(nproc)   uptime: $(uptime)"
echo "cpu:    $(lscpu | awk -F': *' '/^Model name/{n=$2} /^CPU family/{f=$2} /^Model:/{m=$2} /^Flags/{v=($2 ~ /avx512f/) ? "AVX-512" : ($2 ~ /avx2/) ? "AVX2" : "no AVX2"} END{printf "%s (family %s, model %s, %s)", n, f, m, v}')"
echo "data:   $DATA ($(find "$DATA" -type f | wc -l) files)"

RESULTS=$TMP/results.jsonl
echo "== 1. wise eval pipeline vs bare model (ViT-B/32, fp32, batch $BATCH, all cores)"
"$WISE_BIN" bench --mode infer --batch-size "$BATCH" --warmup 1 --iters 5 | tee -a "$RESULTS"
"$WISE_BIN" bench --mode eval --data "$DATA" --limit "$LIMIT" --batch-size "$BATCH" --warmup 0 --iters 1 \
    | tee -a "$RESULTS"
echo "== 2. fine-tuning steps fed from the data vs on random pixels (ViT-B/32, fp32, batch $TRAIN_BATCH, all cores)"
CLASSES=$(find "$DATA" -mindepth 1 -maxdepth 1 -type d | wc -l)
TRAIN=(--mode train --batch-size "$TRAIN_BATCH" --warmup 3 --iters "$TRAIN_ITERS")
"$WISE_BIN" bench "${TRAIN[@]}" --classes "$CLASSES" | sed 's/"mode":"train"/"mode":"train-random"/' \
    | tee -a "$RESULTS"
"$WISE_BIN" bench "${TRAIN[@]}" --data "$DATA" | tee -a "$RESULTS"
"$PY" scripts/bench_torch.py "${TRAIN[@]}" --classes "$CLASSES" 2>/dev/null \
    | sed 's/"mode": "train"/"mode": "train-random"/' | tee -a "$RESULTS"
"$PY" scripts/bench_torch.py "${TRAIN[@]}" --data "$DATA" --workers "$WORKERS" 2>/dev/null | tee -a "$RESULTS"
echo "== 3. decode + resize + normalise, one core: eval transform, then training transform"
RAYON_NUM_THREADS=1 "$WISE_BIN" bench --mode preprocess --data "$DATA" --limit "$DECODE_LIMIT" --warmup 1 \
    --iters 3 | tee -a "$RESULTS"
OMP_NUM_THREADS=1 "$PY" scripts/bench_decode.py --data "$DATA" --limit "$DECODE_LIMIT" --iters 3 \
    | tee -a "$RESULTS"
RAYON_NUM_THREADS=1 "$WISE_BIN" bench --mode preprocess --augment --data "$DATA" --limit "$DECODE_LIMIT" \
    --warmup 1 --iters 3 | sed 's/"mode":"preprocess"/"mode":"preprocess-train"/' | tee -a "$RESULTS"
OMP_NUM_THREADS=1 "$PY" scripts/bench_decode.py --data "$DATA" --limit "$DECODE_LIMIT" --iters 3 \
    --impl open_clip-train 2>/dev/null | tee -a "$RESULTS"
echo "uptime after: $(uptime)"

echo "== summary"
"$PY" - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["mode"]): r for r in rows}
infer, ev = by[("wise", "infer")], by[("wise", "eval")]
print(f"bare model {infer['img_per_s']:.2f} img/s, wise eval on JPEGs {ev['img_per_s']:.2f} img/s "
      f"({ev['images']} images): ratio {ev['img_per_s'] / infer['img_per_s']:.2f}")
fed = {}
for impl in ("wise", "hf", "open_clip"):
    if (impl, "train") in by and (impl, "train-random") in by:
        fed[impl] = by[(impl, "train")]["img_per_s"]
        random = by[(impl, "train-random")]["img_per_s"]
        print(f"training steps, {impl}: {fed[impl]:.2f} img/s fed from the data, {random:.2f} on random pixels: "
              f"ratio {fed[impl] / random:.2f}")
for impl in ("hf", "open_clip"):
    if "wise" in fed and impl in fed:
        print(f"training on the data, wise / {impl}: {fed['wise'] / fed[impl]:.2f}x")
wise = by[("wise", "preprocess")]
for name in ("pil", "hf-processor"):
    if (name, "preprocess") in by:
        r = by[(name, "preprocess")]
        print(f"decode+resize one core: wise {wise['img_per_s']:.0f} img/s, {name} {r['img_per_s']:.0f} img/s: "
              f"{wise['img_per_s'] / r['img_per_s']:.2f}x")
if ("wise", "preprocess-train") in by and ("open_clip-train", "preprocess") in by:
    w, r = by[("wise", "preprocess-train")]["img_per_s"], by[("open_clip-train", "preprocess")]["img_per_s"]
    print(f"training transform one core: wise {w:.0f} img/s, open_clip {r:.0f} img/s: {w / r:.2f}x")
PY
