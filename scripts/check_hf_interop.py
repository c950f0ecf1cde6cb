"""What wise writes, read back by HF transformers: the round trip the Rust tests cannot make.

The Rust tests hold wise to references made by PyTorch (``tests/fixtures``); this script goes
the other way. It has the ``wise`` binary write the files a user takes elsewhere, then loads
them with transformers and compares what transformers computes with what wise computed:

1. ``wise pretrain`` -> an HF model folder: ``CLIPModel``, ``CLIPTokenizerFast`` and
   ``CLIPImageProcessor.from_pretrained`` load it with no missing or unexpected weights; on
   the fixture images and texts, transformers' token ids equal wise's, its pixels are within
   0.03 of wise's (its PIL path, as in the Rust tests; transformers 5's default processor
   resizes with torchvision, and its difference is printed), and its image and
   text embeddings of the same ids and pixels are within 1e-4 of ``wise embed``'s.
2. ``wise zeroshot``, ``wise ensemble`` and ``wise train`` -> classifier checkpoints: their
   tower loads into ``CLIPVisionModelWithProjection`` (config from the checkpoint's
   ``wise.vision_config``) with nothing missing and only ``classification_head.*`` left over,
   the head is ``[classes, projection_dim]``; the zero-shot tower gives the CLIP's image
   embeddings, and the α = 0.5 checkpoint is ½θ0 + ½θ1 of the other two in every tensor.

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt
    cargo build --release -p wise-cli
    .venv/bin/python scripts/check_hf_interop.py   # prints each check, exits 1 on a failure

Run from the repository root; CPU only, offline, a few seconds.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (CLIPImageProcessor, CLIPModel, CLIPTokenizerFast,
                          CLIPVisionConfig, CLIPVisionModelWithProjection)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAILURES = []


def check(what, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
    if not ok:
        FAILURES.append(what)


def wise(binary, *args):
    subprocess.run([str(binary), *map(str, args)], check=True, capture_output=True, text=True)


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def check_model_folder(binary, tmp):
    model_dir, out = tmp / "model", tmp / "embeds.safetensors"
    wise(binary, "pretrain", "--data", FIXTURES / "flyp" / "data", "--out", model_dir,
         "--epochs", 1, "--batch-size", 4, "--warmup", 1, "--width", 32, "--heads", 2,
         "--layers", 2, "--text-width", 32, "--text-heads", 2, "--embed-dim", 16)
    # The fixture images whose decoding PIL and wise agree on to the byte (tests/fixtures).
    images = [FIXTURES / "images" / f for f in ("rgb.jpg", "wide.png", "tall.png", "grey.png")]
    wise(binary, "embed", "--model", model_dir, "--images", *images, "--texts",
         FIXTURES / "texts.txt", "--save-pixels", "--out", out)
    ours = load_file(str(out))

    model, info = CLIPModel.from_pretrained(str(model_dir), output_loading_info=True,
                                            attn_implementation="eager")
    model.eval()
    left_over = {k: v for k, v in info.items() if v}
    check("CLIPModel loads `wise pretrain`'s folder, every weight used", not left_over,
          str(left_over))
    tokenizer = CLIPTokenizerFast.from_pretrained(str(model_dir))
    # transformers 5's CLIPImageProcessor is its torchvision ("fast") backend; the PIL path,
    # which OpenAI's and open_clip's preprocessing is and wise matches, is CLIPImageProcessorPil.
    default = CLIPImageProcessor.from_pretrained(str(model_dir))
    processor = getattr(transformers, "CLIPImageProcessorPil", CLIPImageProcessor).from_pretrained(
        str(model_dir))

    texts = (FIXTURES / "texts.txt").read_text(encoding="utf-8").splitlines()
    context = model.config.text_config.max_position_embeddings
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=context,
                    return_tensors="pt")["input_ids"]
    check("token ids equal wise's", torch.equal(ids, ours["input_ids"].long()))

    opened = [Image.open(p) for p in images]
    pixels = processor(images=opened, return_tensors="pt")["pixel_values"]
    d = max_diff(pixels, ours["pixel_values"])
    check(f"{type(processor).__name__}'s pixels within 0.03 of wise's", d <= 0.03, f"max |diff| {d:.4f}")
    if type(default) is not type(processor):
        fast = default(images=opened, return_tensors="pt")["pixel_values"]
        print(f"     ({type(default).__name__}, torchvision's resize: max |diff| "
              f"{max_diff(fast, ours['pixel_values']):.4f}, for information)")

    with torch.no_grad():
        image = model.get_image_features(pixel_values=ours["pixel_values"])
        text = model.get_text_features(input_ids=ours["input_ids"].long())
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    for name, theirs in (("image", image), ("text", text)):
        d = max_diff(theirs, ours[f"{name}_embeds"])
        check(f"{name} embeddings within 1e-4 of `wise embed`'s", d <= 1e-4, f"max |diff| {d:.2e}")
    return model_dir, ours


def check_classifier(path, what, clip_image_embeds, pixels):
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    vision = json.loads(meta["wise.vision_config"])
    config = CLIPVisionConfig(**vision, projection_dim=int(meta["wise.projection_dim"]))
    tower = CLIPVisionModelWithProjection(config).eval()
    state = load_file(str(path))
    head = {k: state.pop(k) for k in list(state) if k.startswith("classification_head.")}
    missing, unexpected = tower.load_state_dict(state, strict=False)
    check(f"{what}: the tower loads into CLIPVisionModelWithProjection, nothing missing",
          not missing and not unexpected, f"missing {missing}, unexpected {unexpected}")
    classes = len(json.loads(meta["wise.class_names"]))
    shape = tuple(head["classification_head.weight"].shape)
    check(f"{what}: head is [classes, projection_dim]", shape == (classes, config.projection_dim),
          str(shape))
    if clip_image_embeds is not None:
        with torch.no_grad():
            embeds = tower(pixel_values=pixels).image_embeds
        d = max_diff(embeds, clip_image_embeds)
        check(f"{what}: the tower's image embeddings are the CLIP's", d <= 1e-4, f"max |diff| {d:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wise", default=ROOT / "target" / "release" / "wise", type=Path)
    binary = parser.parse_args().wise
    if not binary.is_file():
        sys.exit(f"{binary}: build it first (cargo build --release -p wise-cli)")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir, ours = check_model_folder(binary, tmp)
        zeroshot, mixed = tmp / "zeroshot.safetensors", tmp / "mixed.safetensors"
        finetuned = tmp / "train" / "finetuned.safetensors"
        wise(binary, "zeroshot", "--model", model_dir, "--classes", FIXTURES / "flyp" / "data",
             "--templates", "simple", "--out", zeroshot)
        wise(binary, "train", "--model", zeroshot, "--data", FIXTURES / "flyp" / "data", "--out",
             tmp / "train", "--epochs", 2, "--batch-size", 4, "--warmup", 1, "--lr", 1e-2)
        wise(binary, "ensemble", "--zeroshot", zeroshot, "--finetuned", finetuned, "--alpha", 0.5,
             "--out", mixed)
        check_classifier(zeroshot, "`wise zeroshot`", ours["image_embeds"], ours["pixel_values"])
        for path, what in ((finetuned, "`wise train`"), (mixed, "`wise ensemble` at α = 0.5")):
            check_classifier(path, what, None, None)
        theta0, theta1, mix = (load_file(str(p)) for p in (zeroshot, finetuned, mixed))
        moved = max(max_diff(theta0[k], theta1[k]) for k in theta0)
        d = max(max_diff(mix[k], 0.5 * theta0[k] + 0.5 * theta1[k]) for k in theta0)
        check("`wise ensemble` at α = 0.5 is ½θ0 + ½θ1 in every tensor, head included",
              set(mix) == set(theta0) and d <= 1e-6 and moved > 1e-3,
              f"max |diff| {d:.1e} (fine-tuning moved weights by up to {moved:.3f})")
    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
