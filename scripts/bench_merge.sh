#!/usr/bin/env bash
# Benchmark of the streaming merge (`wise ensemble`) against reading its inputs (`cat`).
#
# Two random ViT-L/14-sized CLIP checkpoints (HF names, f32, 1.71 GB each) are written by
# wise-ensemble's `random_checkpoint` example, then, REPEAT times in each of two states:
#
#   cold  the inputs' pages are evicted from the page cache before each timed command
#         (`dd iflag=nocache count=0`, which needs no root; after a `sync`);
#   warm  both inputs were just read, so both commands find them in the page cache;
#
# `cat A B > /dev/null` and `wise ensemble --zeroshot A --finetuned B --alpha 0.5` are timed
# (and, for reference, `cat A & cat B`: the merge reads both inputs at once, which a disk
# may serve faster than one after the other)
# with /usr/bin/time -v (wall time, peak RSS). Throughput is input bytes / wall time for
# both. The merge also hashes both inputs (sha256) and writes a 1.71 GB output; the output
# is deleted (and synced) before the next run so that runs do not queue behind each other's
# writeback. Prints a markdown table of the medians. The big files are deleted at the end
# (KEEP=1 keeps them).
#
#   scripts/bench_merge.sh                  # BENCH_DIR=/var/tmp/wise-bench REPEAT=3
#
# Run it on an otherwise idle machine: the merge uses both cores (one merging, the others
# hashing), so concurrent jobs show up directly in its time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${BENCH_DIR:-/var/tmp/wise-bench}"
REPEAT="${REPEAT:-3}"
PRESET="${PRESET:-ViT-L/14}"
WISE="$ROOT/target/release/wise"
GEN="$ROOT/target/release/examples/random_checkpoint"

command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time; apt-get install time)"; exit 1; }

(cd "$ROOT" && cargo build --release -q -p wise-cli && cargo build --release -q -p wise-ensemble --example random_checkpoint)
mkdir -p "$DIR"
A="$DIR/a.safetensors"
B="$DIR/b.safetensors"
OUT="$DIR/out"
cleanup() { rm -rf "$OUT"; [[ "${KEEP:-0}" == 1 ]] || rm -f "$A" "$B"; }
trap cleanup EXIT
[[ -f "$A" ]] || "$GEN" --preset "$PRESET" --seed 1 --out "$A"
[[ -f "$B" ]] || "$GEN" --preset "$PRESET" --seed 2 --out "$B"
BYTES=$(( $(stat -c %s "$A") + $(stat -c %s "$B") ))

evict() { sync; for f in "$@"; do dd if="$f" iflag=nocache count=0 status=none; done; }
warm() { cat "$@" > /dev/null; }

# timed LABEL CMD...: appends "LABEL wall_s maxrss_kb" to $DIR/times.
timed() {
    local label=$1; shift
    /usr/bin/time -v -o "$DIR/time.txt" "$@" > /dev/null 2> "$DIR/cmd.err" || { cat "$DIR/cmd.err"; exit 1; }
    local wall rss
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s}' "$DIR/time.txt")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$DIR/time.txt")
    echo "$label $wall $rss" >> "$DIR/times"
}

: > "$DIR/times"
for state in cold warm; do
    for _ in $(seq "$REPEAT"); do
        rm -rf "$OUT"; sync
        if [[ $state == cold ]]; then evict "$A" "$B"; else warm "$A" "$B"; fi
        timed "$state-cat" cat "$A" "$B"
        if [[ $state == cold ]]; then evict "$A" "$B"; else warm "$A" "$B"; fi
        timed "$state-pcat" bash -c 'cat "$1" > /dev/null & cat "$2" > /dev/null & wait' _ "$A" "$B"
        if [[ $state == cold ]]; then evict "$A" "$B"; else warm "$A" "$B"; fi
        timed "$state-merge" "$WISE" ensemble --zeroshot "$A" --finetuned "$B" --alpha 0.5 --out-dir "$OUT"
    done
done

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
echo
echo "inputs: 2 x $PRESET f32, $((BYTES / 2)) bytes each; $REPEAT runs per cell, medians; $(nproc) cores"
echo
echo "| state | cat A B s | cat MB/s | cat A & cat B s | merge s | merge MB/s | merge / cat | merge peak RSS |"
echo "|---|---|---|---|---|---|---|---|"
for state in cold warm; do
    cat_s=$(awk -v l="$state-cat" '$1 == l {print $2}' "$DIR/times" | median)
    pcat_s=$(awk -v l="$state-pcat" '$1 == l {print $2}' "$DIR/times" | median)
    merge_s=$(awk -v l="$state-merge" '$1 == l {print $2}' "$DIR/times" | median)
    rss_kb=$(awk -v l="$state-merge" '$1 == l {print $3}' "$DIR/times" | sort -n | tail -1)
    awk -v st="$state" -v b="$BYTES" -v c="$cat_s" -v p="$pcat_s" -v m="$merge_s" -v r="$rss_kb" 'BEGIN {
        printf "| %s | %.2f | %.0f | %.2f | %.2f | %.0f | %.0f%% | %.0f MB |\n", st, c, b / c / 1e6, p, m, b / m / 1e6, 100 * c / m, r / 1024 }'
done
echo
echo "all runs (label, wall s, max RSS KB):"
cat "$DIR/times"
