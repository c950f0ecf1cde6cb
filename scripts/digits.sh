#!/usr/bin/env bash
# The default experiment, end to end: WiSE-FT on handwritten digits (configs/digits.toml).
#
# Usage: scripts/digits.sh [extra `wise run` flags, e.g. --force sweep]
#
# The raw datasets come from $WISE_DATASETS, else ../shared/datasets (the offline copy);
# when neither exists they are downloaded into .data/datasets with scripts/get-data.sh.
# Results: runs/digits/{results.jsonl, plot.png, report.md}. Re-running skips finished
# stages.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${WISE_DATASETS:-}" ]; then
    if [ -d ../shared/datasets/digits ]; then
        export WISE_DATASETS=../shared/datasets
    else
        export WISE_DATASETS=.data/datasets
        scripts/get-data.sh "$WISE_DATASETS"
    fi
fi

exec cargo run --release -p wise-cli -- run configs/digits.toml "$@"
