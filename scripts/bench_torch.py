#!/usr/bin/env python3
"""PyTorch CPU inference benchmark of the ViT-B/32 image tower (the baseline for wise).

Two implementations, both random weights, fp32, eval mode, ``torch.inference_mode()``:

- ``hf``: transformers ``CLIPVisionModelWithProjection`` from a ViT-B/32
  ``CLIPVisionConfig`` (hidden 768, 12 layers, 12 heads, mlp 3072, 224px, patch 32,
  projection 512, quick_gelu) -> ``image_embeds`` [B, 512].
- ``open_clip``: ``open_clip.create_model("ViT-B-32", pretrained=None).visual``.

Prints one JSON line per implementation::

    {"impl": "hf", "img_per_s": 13.6, "batch_size": 32, "threads": 2, "torch": "2.15.0", ...}

Usage (any venv with the pins of scripts/requirements-fixtures.txt)::

    python scripts/bench_torch.py --batch-size 32 --warmup 1 --iters 5 [--threads T] [--impl hf open_clip]

``img_per_s`` is batch_size * iters / (total time of the timed iterations);
``img_per_s_best`` is from the fastest iteration (robust to other load on a shared
machine); the per-iteration times are in ``iter_s``.
"""

import argparse
import json
import os
import time

import torch


def build_hf():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_channels=3,
        image_size=224,
        patch_size=32,
        projection_dim=512,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPVisionModelWithProjection(config).eval()

    def run(pixels):
        return model(pixel_values=pixels).image_embeds

    return model, run


def build_open_clip():
    import open_clip

    model = open_clip.create_model("ViT-B-32", pretrained=None).visual.eval()

    def run(pixels):
        return model(pixels)

    return model, run


BUILDERS = {"hf": build_hf, "open_clip": build_open_clip}


def bench(name, batch_size, warmup, iters, seed):
    torch.manual_seed(seed)
    model, run = BUILDERS[name]()
    model = model.float()
    pixels = torch.randn(batch_size, 3, 224, 224, dtype=torch.float32)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            out = run(pixels)
        for _ in range(iters):
            t0 = time.perf_counter()
            out = run(pixels)
            times.append(time.perf_counter() - t0)
    assert tuple(out.shape) == (batch_size, 512), out.shape
    total = sum(times)
    return {
        "impl": name,
        "img_per_s": round(batch_size * iters / total, 3),
        "img_per_s_best": round(batch_size / min(times), 3),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "iters": iters,
        "iter_s": [round(t, 4) for t in times],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: number of cores)")
    ap.add_argument("--impl", nargs="+", choices=sorted(BUILDERS), default=["hf", "open_clip"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    for name in args.impl:
        print(json.dumps(bench(name, args.batch_size, args.warmup, args.iters, args.seed)), flush=True)


if __name__ == "__main__":
    main()
