#!/usr/bin/env python3
"""PyTorch benchmark of a CLIP image classifier (the baseline for `wise bench`).

Two implementations, both random weights:

- ``hf``: transformers ``CLIPVisionModelWithProjection`` from a ``CLIPVisionConfig`` of the
  preset's shape (ViT-B/32: hidden 768, 12 layers, 12 heads, mlp 3072, 224px, patch 32,
  projection 512, quick_gelu; ViT-B/16 the same with patch 16; ViT-L/14 hidden 1024, 24
  layers, 16 heads, patch 14, projection 768), its default attention (SDPA) ->
  ``image_embeds`` [B, projection].
- ``open_clip``: ``open_clip.create_model(<preset>, pretrained=None).visual`` (skipped with a
  note on stderr where open_clip is not installed).

Modes (the same work as ``wise bench --mode``):

- ``infer``: the tower forward under ``torch.inference_mode()``, eval mode.
- ``train``: one wise-ft step of tower + head (``Linear(projection, classes)`` on the
  L2-normalised features): cross-entropy, backward, ``clip_grad_norm_(1.0)``,
  ``AdamW(lr=3e-5, wd=0.1)``, train mode; on CPU also the process's peak memory
  (``peak_rss_gb``: run one ``--impl`` a process for a figure of its own). Random pixels, or
  with ``--data DIR`` (an ImageFolder) the batches a WiSE-FT run feeds its model: a
  ``DataLoader`` (``--workers`` processes, shuffled, full batches) over torchvision's
  ``ImageFolder`` with open_clip's training transform (``RandomResizedCrop(224, scale=(0.9,
  1.0), bicubic)``, ``ToTensor``, CLIP's ``Normalize``); waiting for a batch is part of the
  step's time, the head has the data's classes.
- ``zeroshot``: a zero-shot head (one text-tower feature per class × template, normalised,
  averaged per class) for ``--classnames FILE`` and ``--templates FILE`` (one per line, ``{}``
  for the class name), the preset's text tower (ViT-B/32: width 512, 12 layers), random
  weights, open_clip's tokenizer. ``open_clip``: ``open_clip.build_zero_shot_classifier`` (10
  classes a batch, every prompt padded to 77 tokens, as wise-ft and open_clip do); ``hf``:
  ``CLIPTextModelWithProjection`` one class a batch, each batch cut to its longest prompt (as
  a tokenizer's ``padding=True`` does). Rates in prompts/s.
- ``sgemm``: the machine's fp32 matrix-product ceiling as these libraries reach it:
  ``torch.mm`` (PyTorch's BLAS) and numpy's ``@`` (the OpenBLAS numpy ships) on a ViT-B
  block's products over batch × tokens rows and on 2048³; the best of ``--iters`` runs of
  each (``gflops_best``: the best of all), one line per library (impl ``torch``, ``numpy``).

``--device cuda --amp bf16`` runs under ``torch.autocast("cuda", torch.bfloat16)`` with fp32
master weights (PyTorch AMP, the counterpart of wise's bf16 compute on GPUs), synchronising
before each clock read. Prints one JSON line per implementation::

    {"impl": "hf", "mode": "train", "img_per_s": 3.9, "batch_size": 16, "threads": 2, ...}

Usage (any venv with the pins of scripts/requirements-fixtures.txt)::

    python scripts/bench_torch.py --mode infer --batch-size 32 --warmup 1 --iters 5 [--threads T]
        [--impl hf open_clip] [--preset ViT-B/32] [--device cpu|cuda] [--amp none|bf16]

``img_per_s`` is batch_size * iters / (total time of the timed iterations);
``img_per_s_best`` is from the fastest iteration (robust to other load on a shared
machine); the per-iteration times are in ``iter_s``.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import time

import torch

# name: (width, layers, heads, patch, projection), as open_clip's configs of that name.
PRESETS = {
    "ViT-B/32": (768, 12, 12, 32, 512),
    "ViT-B/16": (768, 12, 12, 16, 512),
    "ViT-L/14": (1024, 24, 16, 14, 768),
}


def build_hf(preset):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    width, layers, heads, patch, projection = PRESETS[preset]
    config = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_channels=3,
        image_size=224,
        patch_size=patch,
        projection_dim=projection,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    model = CLIPVisionModelWithProjection(config)
    return model, lambda pixels: model(pixel_values=pixels).image_embeds


def build_open_clip(preset):
    import open_clip

    model = open_clip.create_model(preset.replace("/", "-"), pretrained=None).visual
    return model, model


BUILDERS = {"hf": build_hf, "open_clip": build_open_clip}


def zeroshot_head(name, args):
    """Seconds per zero-shot head of ``name`` over the class names and templates."""
    import open_clip

    torch.manual_seed(args.seed)
    classnames = [l.strip() for l in open(args.classnames) if l.strip()]
    templates = [l.rstrip("\n") for l in open(args.templates) if l.strip() and not l.startswith("#")]
    tokenizer = open_clip.get_tokenizer(args.preset.replace("/", "-"))
    if name == "open_clip":
        model = open_clip.create_model(args.preset.replace("/", "-"), pretrained=None).eval()

        def build():
            with torch.inference_mode():
                return open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates)

    else:
        from transformers import CLIPTextConfig, CLIPTextModelWithProjection

        config = CLIPTextConfig(
            vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
            num_attention_heads=8, max_position_embeddings=77, projection_dim=512,
            hidden_act="quick_gelu", layer_norm_eps=1e-5,
        )  # eos_token_id 2 (legacy): pooled at the argmax id, open_clip's end-of-text
        model = CLIPTextModelWithProjection(config).eval()

        def build():
            rows = []
            with torch.inference_mode():
                for c in classnames:
                    ids = tokenizer([t.format(c) for t in templates])
                    ids = ids[:, : int((ids != 0).sum(1).max())]
                    f = model(input_ids=ids).text_embeds
                    f = f / f.norm(dim=-1, keepdim=True)
                    rows.append(f.mean(0) / f.mean(0).norm())
            return torch.stack(rows, 1)

    def timed():
        t0 = time.perf_counter()
        head = build()
        assert tuple(head.shape) == (512, len(classnames)), head.shape
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        timed()
    times = [timed() for _ in range(args.iters)]
    prompts = len(classnames) * len(templates)
    return {
        "impl": name,
        "mode": "zeroshot",
        "preset": args.preset,
        "device": "cpu",
        "dtype": "f32",
        "prompts_per_s": round(prompts * args.iters / sum(times), 3),
        "prompts_per_s_best": round(prompts / min(times), 3),
        "prompts": prompts,
        "classes": len(classnames),
        "templates": len(templates),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "iters": args.iters,
        "iter_s": [round(t, 4) for t in times],
    }


def train_batches(args, device):
    """Endless (pixels, labels) batches of ``--data`` as a WiSE-FT run's DataLoader makes them,
    and the number of classes."""
    import open_clip
    from torchvision.datasets import ImageFolder

    data = ImageFolder(args.data, transform=open_clip.image_transform(224, is_train=True))
    if 0 < args.limit < len(data):  # evenly spread, as `wise bench --limit`
        data = torch.utils.data.Subset(data, [i * len(data) // args.limit for i in range(args.limit)])
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(args.seed),
    )
    assert len(loader) > 0, f"{args.data}: fewer images than one batch"
    classes = len(data.dataset.classes if isinstance(data, torch.utils.data.Subset) else data.classes)

    def batches():
        while True:
            for pixels, labels in loader:
                yield pixels.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return batches(), classes


def bench(name, args):
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tower, embed = BUILDERS[name](args.preset)
    tower = tower.float().to(device)
    projection = PRESETS[args.preset][4]
    batches, classes = train_batches(args, device) if args.data else (None, args.classes)
    head = torch.nn.Linear(projection, classes).to(device)
    pixels = torch.randn(args.batch_size, 3, 224, 224, dtype=torch.float32, device=device)
    labels = (torch.arange(args.batch_size, device=device) * 7919) % classes
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()
    )
    if args.mode == "infer":
        tower.eval()

        def step():
            with torch.inference_mode(), autocast:
                out = embed(pixels)
            assert tuple(out.shape) == (args.batch_size, projection), out.shape

    else:
        tower.train()
        params = list(tower.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.1)

        def step():
            x, y = next(batches) if batches else (pixels, labels)
            with autocast:
                features = embed(x)
                features = features / features.norm(dim=-1, keepdim=True)
                loss = torch.nn.functional.cross_entropy(head(features), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    def timed():
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        timed()
    times = [timed() for _ in range(args.iters)]
    total = sum(times)
    row = {
        "impl": name,
        "mode": args.mode,
        "preset": args.preset,
        "device": device.type,
        "dtype": "bf16" if args.amp == "bf16" else "f32",
        "img_per_s": round(args.batch_size * args.iters / total, 3),
        "img_per_s_best": round(args.batch_size / min(times), 3),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "iters": args.iters,
        "iter_s": [round(t, 4) for t in times],
    }
    if args.data:
        row.update(data=args.data, workers=args.workers)
    if device.type == "cpu" and sys.platform == "linux":
        # The most this process held at once (kB on Linux): one implementation a process
        # (--impl NAME) for a figure of its own, as scripts/bench_memory.sh runs it.
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)
    if device.type == "cuda":
        # The most its tensors held at once (the caching allocator's, as `wise bench`'s
        # device_peak_gb is its memory pool's).
        row["device_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    return row


def sgemm_ceiling(args):
    import numpy as np

    rows = args.batch_size * ((224 // PRESETS[args.preset][3]) ** 2 + 1)
    shapes = [(rows, 768, 2304), (rows, 768, 768), (rows, 768, 3072), (rows, 3072, 768), (2048, 2048, 2048)]
    libraries = {
        "torch": (lambda a, b: torch.mm(a, b), lambda m, n: torch.randn(m, n, dtype=torch.float32)),
        "numpy": (lambda a, b: a @ b, lambda m, n: np.random.default_rng(0).standard_normal((m, n), np.float32)),
    }
    for name, (mm, randn) in libraries.items():
        rates = {}
        for m, k, n in shapes:
            a, b = randn(m, k), randn(k, n)
            times = []
            for run in range(args.warmup + args.iters):
                t0 = time.perf_counter()
                mm(a, b)
                if run >= args.warmup:
                    times.append(time.perf_counter() - t0)
            rates[f"{m}x{k}x{n}"] = round(2 * m * n * k / min(times) / 1e9, 1)
        print(json.dumps({
            "impl": name,
            "mode": "sgemm",
            "device": "cpu",
            "dtype": "f32",
            "gflops_best": max(rates.values()),
            "gflops": rates,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "numpy": np.__version__,
            "iters": args.iters,
        }), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["infer", "train", "sgemm", "zeroshot"], default="infer")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ViT-B/32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=1000, help="head classes in train mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: number of cores)")
    ap.add_argument("--impl", nargs="+", choices=sorted(BUILDERS), default=["hf", "open_clip"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="train: an ImageFolder to feed the steps from (default: random pixels)")
    ap.add_argument("--limit", type=int, default=0, help="train --data: this many images, evenly spread")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="train --data: DataLoader worker processes (default: number of cores)")
    ap.add_argument("--classnames", help="zeroshot: class names, one per line")
    ap.add_argument("--templates", default="crates/wise-zeroshot/templates/openai_imagenet.txt",
                    help="zeroshot: prompt templates, one per line with {} for the class name")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.mode == "sgemm":
        sgemm_ceiling(args)
        return
    if args.mode == "zeroshot" and not args.classnames:
        ap.error("--mode zeroshot needs --classnames")
    if args.data and args.mode != "train":
        ap.error("--data is for --mode train")
    for name in args.impl:
        try:
            row = zeroshot_head(name, args) if args.mode == "zeroshot" else bench(name, args)
        except ImportError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
