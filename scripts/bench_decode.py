#!/usr/bin/env python3
"""Decode + resize + normalise throughput of the Python data path, one core (the peer of
``RAYON_NUM_THREADS=1 wise bench --mode preprocess``).

Two implementations over the same image files, each turning a file into a normalised
``[3, S, S]`` float32 array the way CLIP's eval transform does (shortest side to S with
bicubic, centre crop, /255, CLIP mean/std):

- ``pil``: Pillow directly (``Image.open().convert("RGB")``, ``resize(BICUBIC)``, crop) and
  numpy for the normalisation: the fastest plain-Python path.
- ``hf-processor``: transformers' ``CLIPImageProcessor`` (what HF users call), per batch.

and, for the training transform (``wise bench --mode preprocess --augment``), not run unless
named with ``--impl``:

- ``open_clip-train``: ``open_clip.image_transform(S, is_train=True)``, the transform WiSE-FT
  fine-tunes with (torchvision ``RandomResizedCrop(S, scale=(0.9, 1.0), bicubic)`` on the PIL
  image, RGB, ``ToTensor``, CLIP's ``Normalize``), one image at a time as a DataLoader
  worker runs it.

Prints one JSON line per implementation::

    {"impl": "pil", "mode": "preprocess", "img_per_s": 800.0, "images": 2000, "threads": 1, ...}

Run it with ``OMP_NUM_THREADS=1`` (numpy, torch) for one core.

Usage: ``python scripts/bench_decode.py --data DIR [--limit 2000] [--iters 2] [--size 224]``
(``--limit`` picks images evenly spread over the sorted file list, as ``wise bench`` does).

``--make-photos DST`` instead writes photo-sized JPEGs made from the images under ``--data``
(``--limit`` of them, class folders kept), for measuring decoding at the size users feed
CLIP: CIFAR's 32x32 JPEGs decode in microseconds and leave only the resize to measure.
Each image is upscaled (bicubic) to 500x375, every fourth to 375x500 (ImageNet's typical
sizes), given Gaussian noise (sigma 12 levels, seeded) so that its JPEG carries a photo's
amount of detail rather than an upscale's smoothness, and saved at quality 90 (~70 KB).
"""

import argparse
import json
import os
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def files_of(root, limit):
    paths = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.lower().endswith(EXTENSIONS)
    )
    if 0 < limit < len(paths):
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    return paths


def pil_prepare(paths, size):
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
        x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
        yield x.transpose(2, 0, 1)


def hf_prepare(paths, size, batch=32):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    for i in range(0, len(paths), batch):
        images = [Image.open(p) for p in paths[i : i + batch]]
        yield from processor(images=images, return_tensors="np")["pixel_values"]


def open_clip_train_prepare(paths, size):
    import open_clip

    transform = open_clip.image_transform(size, is_train=True)
    for p in paths:
        yield transform(Image.open(p)).numpy()


IMPLS = {"pil": pil_prepare, "hf-processor": hf_prepare, "open_clip-train": open_clip_train_prepare}


def make_photos(src, dst, limit):
    rng = np.random.default_rng(0)
    for i, path in enumerate(files_of(src, limit)):
        size = (375, 500) if i % 4 == 0 else (500, 375)
        img = Image.open(path).convert("RGB").resize(size, Image.BICUBIC)
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 12.0, (size[1], size[0], 3))
        out = os.path.join(dst, os.path.relpath(path, src))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(os.path.splitext(out)[0] + ".jpg", quality=90)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--impl", nargs="+", choices=sorted(IMPLS), default=["pil", "hf-processor"])
    ap.add_argument("--make-photos", metavar="DST", help="write photo-sized JPEGs made from --data to DST, then exit")
    args = ap.parse_args()
    if args.make_photos:
        make_photos(args.data, args.make_photos, args.limit)
        return

    # One core: torch (behind transformers' processors) and numpy's BLAS stay single-threaded.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    paths = files_of(args.data, args.limit)
    for name in args.impl:
        for _ in IMPLS[name](paths[:64], args.size):  # warm-up: imports, first allocations
            pass
        times = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            n = sum(1 for x in IMPLS[name](paths, args.size) if x.shape == (3, args.size, args.size))
            times.append(time.perf_counter() - t0)
            assert n == len(paths), (n, len(paths))
        row = {
            "impl": name,
            "mode": "preprocess",
            "img_per_s": round(len(paths) * args.iters / sum(times), 3),
            "img_per_s_best": round(len(paths) / min(times), 3),
            "images": len(paths),
            "threads": 1,
            "iters": args.iters,
            "iter_s": [round(t, 4) for t in times],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
