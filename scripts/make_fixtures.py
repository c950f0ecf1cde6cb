#!/usr/bin/env python3
"""Generate the PyTorch / HF reference fixtures for wise (tests/fixtures/).

Run from the repository root:

    python scripts/make_fixtures.py

with the pinned environment from scripts/requirements-fixtures.txt. The script is
deterministic (fixed seeds, single-threaded torch, fixed JPEG/PNG encoder settings):
re-running it with the same package versions rewrites byte-identical files.
See tests/fixtures/README.md for what every file contains.
"""

import gzip
import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
import torch.nn as nn
import transformers
from PIL import Image, ImageDraw, ImageOps
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

import open_clip
import open_clip.zero_shot_classifier
from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
BPE_PATH = ROOT / "crates" / "wise-clip" / "assets" / "bpe_simple_vocab_16e6.txt.gz"

CONTEXT_LENGTH = 77
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LOGIT_SCALE = 2.6592

# The 4 images (in this order) that feed pixel_values of the tiny models.
MODEL_IMAGES = ["rgb", "wide", "tall", "grey"]


# --------------------------------------------------------------------------- utils


def setup_determinism():
    # One thread: CPU reductions (matmul, conv) are then order-stable across machines.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def save_tensors(path, tensors):
    # safetensors wants contiguous tensors; sort keys so the header is stable.
    save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, str(path))


def tensor_of(out):
    """transformers 5 returns a BaseModelOutputWithPooling from get_*_features
    (pooler_output holds the projected features); older versions return a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# --------------------------------------------------------------------------- BPE vocab


def read_bpe_merges():
    """Merges exactly as open_clip's SimpleTokenizer slices them. Line 0 of the file is a
    header ('"bpe_simple_vocab_16e6.txt#version: 0.2'), hence the [1:...] start."""
    lines = gzip.open(BPE_PATH).read().decode("utf-8").split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]


def write_bpe_files(directory, merges):
    """Write vocab.json + merges.txt in HF layout: 256 byte tokens, their '</w>' forms,
    one token per merge, then <|startoftext|>, <|endoftext|>."""
    byte_tokens = list(bytes_to_unicode().values())
    vocab = byte_tokens + [t + "</w>" for t in byte_tokens]
    vocab += ["".join(m.split()) for m in merges]
    vocab += [SOT, EOT]
    assert len(set(vocab)) == len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "vocab.json", {t: i for i, t in enumerate(vocab)})
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


def load_hf_tokenizer(directory):
    return CLIPTokenizerFast.from_pretrained(
        str(directory), pad_token=EOT, model_max_length=CONTEXT_LENGTH
    )


def hf_encode(tok, texts):
    return tok(texts, padding="max_length", truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]


# --------------------------------------------------------------------------- 1. tokenizer cases


def exactly_at_limit_text(tok):
    """A text whose encoding is exactly 75 tokens + SOT/EOT = 77 (no padding, no truncation)."""
    words = ("the quick brown fox jumps over the lazy dog , while 3 photographs of "
             "café tables show naïve résumés !").split()
    words = (words * 10)[:200]
    for k in range(1, len(words) + 1):
        text = " ".join(words[:k])
        n = len(tok(text, truncation=False)["input_ids"])
        if n == CONTEXT_LENGTH:
            return text
        assert n < CONTEXT_LENGTH + 3, "could not hit exactly 77 tokens"
    raise AssertionError("unreachable")


def tokenizer_texts(tok):
    nfc = unicodedata.normalize("NFC", "résumé café")
    nfd = unicodedata.normalize("NFD", "résumé café")
    assert nfc != nfd
    texts = [
        "a photo of a dog.",
        "A PHOTO OF A DOG",
        "MiXeD CaSe Words",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n  mixed   whitespace\t",
        "hello!!! ...? wow?!",
        "it's we'll don't I'M they've you'd we're",
        "1234 3.14 2024-01-01 100%",
        "café naïve",
        nfc,
        nfd,
        "über straße ÉCOLE Ångström",
        "日本語のテキスト 中文字符 한국어",
        "emoji 😀👍🏽 🇫🇷 ❤️",
        "&amp; &lt;tag&gt; fish &amp;amp; chips",
        "",
        "   ",
        "a",
        "C++ & C# #hashtag @user http://example.com/a?b=c",
        "Mr. O'Neil's (really) [yes] {no} — “quoted” ‘single’",
        "supercalifragilisticexpialidocious" * 3,
        " ".join(["a photo of a cat sitting on a mat"] * 12),  # > 75 tokens: truncated
        exactly_at_limit_text(tok),
    ]
    return texts


def make_tokenizer_cases():
    out = FIX / "tokenizer"
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        n = write_bpe_files(Path(tmp), read_bpe_merges())
        assert n == 49408, n
        tok = load_hf_tokenizer(tmp)
    assert tok.pad_token_id == 49407 and tok.bos_token_id == 49406 and tok.eos_token_id == 49407

    texts = tokenizer_texts(tok)
    ids = hf_encode(tok, texts)
    assert all(len(r) == CONTEXT_LENGTH for r in ids)
    # The "exactly at the limit" case really fills the context without truncation,
    # and the long case really is truncated (EOT forced at position 76).
    assert len(tok(texts[-1])["input_ids"]) == CONTEXT_LENGTH
    assert len(tok(texts[-2])["input_ids"]) > CONTEXT_LENGTH and ids[-2][-1] == 49407

    # transformers 5 dropped the pure-Python CLIPTokenizer: CLIPTokenizerFast is an alias
    # of the tokenizers-backed CLIPTokenizer, so there is no independent slow result.
    slow_cls = getattr(transformers, "CLIPTokenizer", None)
    has_slow = slow_cls is not None and slow_cls is not CLIPTokenizerFast and not getattr(
        slow_cls, "is_fast", True)
    ids_slow = None
    if has_slow:
        with tempfile.TemporaryDirectory() as tmp:
            write_bpe_files(Path(tmp), read_bpe_merges())
            slow = slow_cls.from_pretrained(tmp, pad_token=EOT, model_max_length=CONTEXT_LENGTH)
            ids_slow = hf_encode(slow, texts)

    # open_clip's tokenizer (ftfy + double html.unescape + whitespace collapse, pads with 0).
    oc = SimpleTokenizer(bpe_path=str(BPE_PATH))
    ids_oc = oc(texts, context_length=CONTEXT_LENGTH).tolist()
    for t, a, b in zip(texts, ids, ids_oc):
        # Compare modulo padding (open_clip pads with 0, HF with EOT).
        if a != [49407 if x == 0 else x for x in b]:
            print(f"  note: HF and open_clip differ on {t!r}")

    # Hand-formatted JSON: one text / one id row per line, diff friendly.
    def rows(rs):
        if rs is None:
            return "null"
        return "[\n" + ",\n".join("    " + json.dumps(r) for r in rs) + "\n  ]"

    body = [
        f'  "context_length": {CONTEXT_LENGTH}',
        '  "texts": [\n' + ",\n".join("    " + json.dumps(t, ensure_ascii=False) for t in texts) + "\n  ]",
        f'  "input_ids": {rows(ids)}',
        f'  "input_ids_slow": {rows(ids_slow)}',
        f'  "input_ids_open_clip": {rows(ids_oc)}',
    ]
    (out / "cases.json").write_text("{\n" + ",\n".join(body) + "\n}\n", encoding="utf-8")
    # Sanity: it is valid JSON.
    json.loads((out / "cases.json").read_text(encoding="utf-8"))
    print(f"tokenizer: {len(texts)} cases, slow tokenizer present: {has_slow}")
    return has_slow


# --------------------------------------------------------------------------- 6. images


def pattern(h, w, seed):
    """Deterministic structured RGB image: gradients + shapes + noise (never flat)."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = 127.5 + 127.5 * np.sin(x / 3.0 + seed) * np.cos(y / 4.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.rectangle([w // 5, h // 6, w // 2, h // 2], fill=(230, 40, 30))
    d.ellipse([w // 2, h // 3, w - 3, h - 3], fill=(20, 60, 220), outline=(255, 255, 0))
    d.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=2)
    return img


def make_images():
    """Write the test images. JPEGs use quality 92 and 4:4:4 (subsampling=0) so that
    decoder differences (chroma upsampling) stay small; PNGs are lossless."""
    d = FIX / "images"
    d.mkdir(parents=True)
    rng = np.random.RandomState(7)

    pattern(66, 88, 1).save(d / "rgb.jpg", quality=92, subsampling=0)
    pattern(40, 90, 2).save(d / "wide.png")
    pattern(70, 33, 3).save(d / "tall.png")
    pattern(38, 50, 4).convert("L").save(d / "grey.png")

    # RGBA with alpha going 0 -> 255 across x plus a fully transparent/opaque block.
    rgba = np.array(pattern(44, 28, 5).convert("RGBA"))
    alpha = np.tile(np.linspace(0, 255, 28).round().astype(np.uint8), (44, 1))
    alpha[30:40, 4:14] = 0
    alpha[2:10, 16:26] = 255
    rgba[..., 3] = alpha
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")

    # Palette image without transparency (median-cut quantisation is deterministic).
    pattern(24, 36, 6).quantize(colors=24, method=Image.Quantize.MEDIANCUT).save(d / "palette.png")

    # 16-bit grey: full-range gradient + noise (values far above 255).
    yy, xx = np.mgrid[0:30, 0:40]
    g16 = 65535 * (xx / 39.0) * 0.7 + 65535 * (yy / 29.0) * 0.3 + rng.normal(0, 1500, (30, 40))
    g16 = Image.fromarray(np.clip(g16, 0, 65535).round().astype(np.uint16))
    assert g16.mode == "I;16", g16.mode
    g16.save(d / "grey16.png")

    # EXIF Orientation=6 means "rotate 90° clockwise to display"; store the displayed
    # 40x56 (w x h) image rotated 90° counter-clockwise so exif_transpose restores it.
    shown = pattern(56, 40, 8)
    stored = shown.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(d / "exif_rotated.jpg", quality=92, subsampling=0, exif=exif)

    pattern(36, 48, 9).convert("CMYK").save(d / "cmyk.jpg", quality=92)
    return d


def load_reference(path):
    """Reference loader: open -> exif_transpose -> RGB as transformers' `convert_to_rgb`
    (what CLIPImageProcessor does): transparency is alpha-composited onto white, anything
    else is PIL's convert('RGB'). grey16 is special: PIL's I;16 -> RGB conversion clips to
    255 instead of scaling, so the reference takes the high byte (v >> 8) as an 8-bit L
    image first."""
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        v = np.array(im).astype(np.uint32)
        assert v.max() > 255
        im = Image.fromarray((v >> 8).astype(np.uint8), "L")
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def pil_processor(size):
    """transformers 5: CLIPImageProcessor is the torchvision ('fast') backend, the PIL
    path is CLIPImageProcessorPil. Older versions: CLIPImageProcessor is the PIL one."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def manual_preprocess(img, s):
    """The documented CLIP steps, in PIL/numpy. Returns (resized uint8 HWC, CHW float32)."""
    w, h = img.size
    if w <= h:
        nw, nh = s, int(s * h / w)
    else:
        nw, nh = int(s * w / h), s
    resized = img.resize((nw, nh), resample=Image.BICUBIC)
    a = np.array(resized)
    top, left = (nh - s) // 2, (nw - s) // 2
    crop = a[top : top + s, left : left + s]
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return a, x.transpose(2, 0, 1)


def preprocess(img, s):
    """HF PIL-path pixels [3,S,S] (checked against the manual steps) + resized uint8."""
    hf = pil_processor(s)(images=[img], return_tensors="pt")["pixel_values"][0]
    resized, manual = manual_preprocess(img, s)
    diff = (hf - torch.from_numpy(manual)).abs().max().item()
    assert diff <= 1e-6, f"manual preprocessing deviates from HF by {diff}"
    return hf, torch.from_numpy(resized)


def make_image_expected(d):
    tensors = {}
    for path in sorted(d.iterdir()):
        img = load_reference(path)
        stem = path.stem
        tensors[f"decoded.{stem}"] = torch.from_numpy(np.array(img))
        for s in (32, 64):
            pix, resized = preprocess(img, s)
            tensors[f"pixels.{s}.{stem}"] = pix
            tensors[f"resized.{s}.{stem}"] = resized
            raw = Image.open(path)
            if "A" in raw.getbands():
                # Our loader composites exactly like HF's own convert_to_rgb: check it.
                direct = pil_processor(s)(images=[raw], return_tensors="pt")["pixel_values"][0]
                assert (direct - pix).abs().max().item() <= 1e-6, stem
    save_tensors(d / "expected.safetensors", tensors)
    print(f"images: {len([k for k in tensors if k.startswith('decoded.')])} images, {len(tensors)} tensors")


# --------------------------------------------------------------------------- 2+3. tiny models


TINY_MODELS = {
    "clip-tiny-quickgelu": dict(
        projection_dim=12,
        text=dict(vocab_size=1014, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                  layer_norm_eps=1e-5, bos_token_id=1012, eos_token_id=2, pad_token_id=1),
        vision=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=3, image_size=32, patch_size=8, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5),
        shard=None,
        seed=1001,
    ),
    "clip-tiny-gelu": dict(
        projection_dim=8,
        text=dict(vocab_size=1014, hidden_size=12, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=3, max_position_embeddings=77, hidden_act="gelu",
                  layer_norm_eps=1e-6, bos_token_id=1012, eos_token_id=1013, pad_token_id=1013),
        # 30 is not a multiple of 7: the patch conv silently drops the last 2 rows/cols.
        vision=dict(hidden_size=20, intermediate_size=36, num_hidden_layers=2,
                    num_attention_heads=4, image_size=30, patch_size=7, hidden_act="gelu",
                    layer_norm_eps=1e-6),
        shard="40KB",
        seed=2002,
    ),
}

TEXTS = [
    "a photo of a zero.",
    "A PHOTO of the number 7!!",
    "café — naïve résumé 😀",
    "a very long caption about a small grey cat that sits on a red mat next to a blue door "
    "while the sun sets slowly behind the old wooden house near the quiet river bank, "
    "and two children play with a yellow kite in the tall green grass of the meadow",
]


def build_model(spec):
    p = spec["projection_dim"]
    cfg = CLIPConfig(
        projection_dim=p,
        logit_scale_init_value=LOGIT_SCALE,
        text_config=dict(spec["text"], projection_dim=p),
        vision_config=dict(spec["vision"], projection_dim=p),
        attn_implementation="eager",
    )
    torch.manual_seed(spec["seed"])
    model = CLIPModel(cfg)
    assert model.config._attn_implementation == "eager"
    randomize_(model, spec["seed"])
    return model.float().eval()


@torch.no_grad()
def randomize_(model, seed):
    """Overwrite every parameter with O(1)-scale random values so that mistakes show
    (HF init has LN weight 1 / bias 0 / tiny embeddings, which hides many bugs)."""
    g = torch.Generator().manual_seed(seed)

    def randn(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float32)

    touched = set()
    for mname, mod in model.named_modules():
        prefix = mname + "." if mname else ""
        if isinstance(mod, nn.LayerNorm):
            mod.weight.copy_(1 + 0.2 * randn(mod.weight))
            mod.bias.copy_(0.1 * randn(mod.bias))
        elif isinstance(mod, (nn.Linear, nn.Conv2d)):
            # std 1/sqrt(fan_in): unit-variance inputs give unit-variance outputs.
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(randn(mod.weight) * fan_in ** -0.5)
            if mod.bias is not None:
                mod.bias.copy_(0.05 * randn(mod.bias))
        elif isinstance(mod, nn.Embedding):  # token + position embeddings
            mod.weight.copy_(0.5 * randn(mod.weight))
        else:
            continue
        touched.update(prefix + n for n, _ in mod.named_parameters(recurse=False))
    emb = model.vision_model.embeddings
    emb.class_embedding.copy_(0.5 * randn(emb.class_embedding))
    touched.add("vision_model.embeddings.class_embedding")
    model.logit_scale.fill_(LOGIT_SCALE)
    touched.add("logit_scale")
    missing = {n for n, _ in model.named_parameters()} - touched
    assert not missing, f"parameters not randomized: {missing}"


def save_tokenizer_and_processor(model_dir, image_size, tiny_bpe_dir):
    tok = load_hf_tokenizer(tiny_bpe_dir)
    assert len(tok) == 1014 and tok.bos_token_id == 1012 and tok.eos_token_id == 1013
    assert tok.pad_token_id == 1013
    tok.save_pretrained(str(model_dir))
    # HF-hub CLIP repos also ship the raw BPE files; transformers 5 no longer writes them.
    for f in ("vocab.json", "merges.txt"):
        if not (model_dir / f).exists():
            shutil.copy(tiny_bpe_dir / f, model_dir / f)
    pil_processor(image_size).save_pretrained(str(model_dir))


def compute_expected(model, pixel_values, input_ids):
    out = {"pixel_values": pixel_values, "input_ids": input_ids}
    with torch.no_grad():
        out["image_embeds"] = tensor_of(model.get_image_features(pixel_values=pixel_values))
        out["text_embeds"] = tensor_of(model.get_text_features(input_ids=input_ids))
        out["vision_last_hidden"] = model.vision_model(pixel_values=pixel_values).last_hidden_state
        out["text_last_hidden"] = model.text_model(input_ids=input_ids).last_hidden_state
        out["logit_scale"] = model.logit_scale.detach().clone()

    model.zero_grad(set_to_none=True)
    res = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    assert res.loss.dtype == torch.float32
    res.loss.backward()
    out["loss"] = res.loss.detach().clone()
    out["logits_per_image"] = res.logits_per_image.detach().clone()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no grad for {name}"
        assert p.grad.abs().max() > 0, f"zero grad for {name}"
        out[f"grad.{name}"] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in out.items()}


def make_tiny_model(name, spec, tiny_bpe_dir, image_dir):
    model_dir = FIX / name
    model_dir.mkdir(parents=True)
    model = build_model(spec)
    kwargs = {"max_shard_size": spec["shard"]} if spec["shard"] else {}
    model.save_pretrained(str(model_dir), **kwargs)
    image_size = spec["vision"]["image_size"]
    save_tokenizer_and_processor(model_dir, image_size, tiny_bpe_dir)

    # Inputs go through the model dir's own saved tokenizer / processor.
    tok = CLIPTokenizerFast.from_pretrained(str(model_dir))
    input_ids = torch.tensor(hf_encode(tok, TEXTS), dtype=torch.int64)
    assert len(tok(TEXTS[3])["input_ids"]) > CONTEXT_LENGTH, "last text must be truncated"
    proc = pil_processor(image_size)
    imgs = [load_reference(image_dir / f) for f in ("rgb.jpg", "wide.png", "tall.png", "grey.png")]
    pixel_values = proc(images=imgs, return_tensors="pt")["pixel_values"].float()
    assert pixel_values.shape == (4, 3, image_size, image_size)

    expected = compute_expected(model, pixel_values, input_ids)
    save_tensors(model_dir / "expected.safetensors", expected)

    # Round trip: the saved checkpoint reproduces the expected outputs bit-for-bit and
    # contains exactly the parameters (non-persistent position_ids buffers are not saved).
    shards = sorted(model_dir.glob("model*.safetensors"))
    saved = {}
    for s in shards:
        saved.update(load_file(str(s)))
    params = dict(model.named_parameters())
    assert set(saved) == set(params), set(saved) ^ set(params)
    for k, v in saved.items():
        assert torch.equal(v, params[k].detach()), k
    if spec["shard"]:
        assert len(shards) >= 2 and (model_dir / "model.safetensors.index.json").exists()
    else:
        assert [s.name for s in shards] == ["model.safetensors"]
    reloaded = CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    with torch.no_grad():
        again = tensor_of(reloaded.get_text_features(input_ids=input_ids))
    assert torch.equal(again, expected["text_embeds"])
    print(f"{name}: loss={expected['loss'].item():.6f}, {len(shards)} shard(s), "
          f"{len(params)} params")
    return model, expected


# --------------------------------------------------------------------------- 5. open_clip twin


def hf_to_open_clip(sd, n_vision_layers, n_text_layers):
    """Map a HF CLIPModel state dict to the OpenAI / open_clip layout."""
    out = {}

    def block(hf, oc):
        a = f"{hf}.self_attn"
        out[f"{oc}.ln_1.weight"] = sd[f"{hf}.layer_norm1.weight"]
        out[f"{oc}.ln_1.bias"] = sd[f"{hf}.layer_norm1.bias"]
        out[f"{oc}.attn.in_proj_weight"] = torch.cat(
            [sd[f"{a}.q_proj.weight"], sd[f"{a}.k_proj.weight"], sd[f"{a}.v_proj.weight"]], 0)
        out[f"{oc}.attn.in_proj_bias"] = torch.cat(
            [sd[f"{a}.q_proj.bias"], sd[f"{a}.k_proj.bias"], sd[f"{a}.v_proj.bias"]], 0)
        out[f"{oc}.attn.out_proj.weight"] = sd[f"{a}.out_proj.weight"]
        out[f"{oc}.attn.out_proj.bias"] = sd[f"{a}.out_proj.bias"]
        out[f"{oc}.ln_2.weight"] = sd[f"{hf}.layer_norm2.weight"]
        out[f"{oc}.ln_2.bias"] = sd[f"{hf}.layer_norm2.bias"]
        out[f"{oc}.mlp.c_fc.weight"] = sd[f"{hf}.mlp.fc1.weight"]
        out[f"{oc}.mlp.c_fc.bias"] = sd[f"{hf}.mlp.fc1.bias"]
        out[f"{oc}.mlp.c_proj.weight"] = sd[f"{hf}.mlp.fc2.weight"]
        out[f"{oc}.mlp.c_proj.bias"] = sd[f"{hf}.mlp.fc2.bias"]

    v = "vision_model"
    out["visual.conv1.weight"] = sd[f"{v}.embeddings.patch_embedding.weight"]
    out["visual.class_embedding"] = sd[f"{v}.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd[f"{v}.embeddings.position_embedding.weight"]
    out["visual.ln_pre.weight"] = sd[f"{v}.pre_layrnorm.weight"]
    out["visual.ln_pre.bias"] = sd[f"{v}.pre_layrnorm.bias"]
    for i in range(n_vision_layers):
        block(f"{v}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}")
    out["visual.ln_post.weight"] = sd[f"{v}.post_layernorm.weight"]
    out["visual.ln_post.bias"] = sd[f"{v}.post_layernorm.bias"]
    out["visual.proj"] = sd["visual_projection.weight"].T

    t = "text_model"
    out["token_embedding.weight"] = sd[f"{t}.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd[f"{t}.embeddings.position_embedding.weight"]
    for i in range(n_text_layers):
        block(f"{t}.encoder.layers.{i}", f"transformer.resblocks.{i}")
    out["ln_final.weight"] = sd[f"{t}.final_layer_norm.weight"]
    out["ln_final.bias"] = sd[f"{t}.final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].T
    out["logit_scale"] = sd["logit_scale"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def make_open_clip_twin(hf_model, expected):
    spec = TINY_MODELS["clip-tiny-quickgelu"]
    tc, vc = spec["text"], spec["vision"]
    config = {
        "embed_dim": spec["projection_dim"],
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": vc["image_size"],
            "layers": vc["num_hidden_layers"],
            "width": vc["hidden_size"],
            "head_width": vc["hidden_size"] // vc["num_attention_heads"],
            "mlp_ratio": vc["intermediate_size"] / vc["hidden_size"],
            "patch_size": vc["patch_size"],
        },
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": tc["vocab_size"],
            "width": tc["hidden_size"],
            "heads": tc["num_attention_heads"],
            "layers": tc["num_hidden_layers"],
            "mlp_ratio": tc["intermediate_size"] / tc["hidden_size"],
        },
    }
    oc = open_clip.model.CLIP(**config).float().eval()
    # open_clip uses plain nn.LayerNorm defaults: eps 1e-5, same as the HF quick_gelu model.
    for m in oc.modules():
        if isinstance(m, nn.LayerNorm):
            assert m.eps == 1e-5 == vc["layer_norm_eps"] == tc["layer_norm_eps"]
    assert int(config["vision_cfg"]["mlp_ratio"] * vc["hidden_size"]) == vc["intermediate_size"]
    assert int(config["text_cfg"]["mlp_ratio"] * tc["hidden_size"]) == tc["intermediate_size"]

    sd = hf_to_open_clip(hf_model.state_dict(), vc["num_hidden_layers"], tc["num_hidden_layers"])
    oc.load_state_dict(sd, strict=True)
    assert set(sd) == {n for n, _ in oc.named_parameters()}  # no attn_mask buffer

    pv, ids = expected["pixel_values"], expected["input_ids"]
    with torch.no_grad():
        img = oc.encode_image(pv)
        txt = oc.encode_text(ids)
        # open_clip pads with 0, HF with EOT: with causal attention + argmax pooling the
        # padding never reaches the pooled token, so both give the same embedding.
        ids0 = ids.clone()
        for r in range(ids0.shape[0]):
            first_eot = int((ids0[r] == 1013).nonzero()[0])
            ids0[r, first_eot + 1 :] = 0
        txt0 = oc.encode_text(ids0)
    for a, b, what in ((img, expected["image_embeds"], "image"), (txt, expected["text_embeds"], "text"),
                       (txt0, expected["text_embeds"], "text (0-padded)")):
        err = (a - b).abs().max().item()
        assert err <= 1e-5, f"open_clip {what} embeds differ from HF by {err}"
        print(f"  open_clip vs HF {what}: max abs diff {err:.2e}")

    d = FIX / "openclip-tiny-quickgelu"
    d.mkdir(parents=True)
    save_tensors(d / "open_clip_model.safetensors", sd)
    write_json(d / "open_clip_config.json", config)
    save_tensors(d / "expected.safetensors", {
        "pixel_values": pv, "input_ids": ids, "input_ids_zero_padded": ids0,
        "image_embeds": img, "text_embeds": txt,
    })
    print("openclip-tiny-quickgelu: mapping verified")


# --------------------------------------------------------------------------- 7. zero-shot heads + MNIST eval


ZS_MODEL = "clip-tiny-quickgelu"
ZS_CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ZS_SIMPLE_TEMPLATES = ["a photo of a {}."]
ZS_EVAL_COUNT = 200
# Real data is read from the offline copy (<repo>/../shared/datasets, the layout
# scripts/get-data.sh downloads into); WISE_DATASETS points elsewhere. Only derived
# tensors (labels, logits) are written: the MNIST images never enter the repo.
DATASETS = Path(os.environ.get("WISE_DATASETS", ROOT.parent / "shared" / "datasets"))
MNIST_IMAGES = DATASETS / "digits" / "mnist" / "t10k-images-idx3-ubyte.gz"
MNIST_LABELS = DATASETS / "digits" / "mnist" / "t10k-labels-idx1-ubyte.gz"


def read_idx(path, magic, n):
    """First n items of a gzip'd IDX file: big-endian u32 magic, u32 dims..., then u8 data.
    magic 2051 = images (count, rows, cols), 2049 = labels (count)."""
    raw = gzip.open(path).read()
    ndim = raw[3]
    header = np.frombuffer(raw, ">u4", count=1 + ndim)
    assert header[0] == magic, (path, header[0])
    dims = [int(x) for x in header[1:]]
    assert dims[0] >= n, dims
    data = np.frombuffer(raw, np.uint8, offset=4 * (1 + ndim))
    assert data.size == int(np.prod(dims)), "truncated IDX file"
    return data.reshape(dims)[:n]


def zeroshot_head(model, tok, templates, classnames=ZS_CLASSNAMES):
    """wise-ft's get_zeroshot_classifier: per class, the mean of the L2-normalised text
    embeddings over all templates, re-normalised; rows stacked [C, P], times exp(logit_scale).
    Each class goes through the text tower as its own batch, as in wise-ft."""
    rows = []
    with torch.no_grad():
        for c in classnames:
            texts = [t(c) if callable(t) else t.format(c) for t in templates]
            ids = torch.tensor(hf_encode(tok, texts), dtype=torch.int64)
            e = tensor_of(model.get_text_features(input_ids=ids))
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.mean(0)
            rows.append(e / e.norm())
        return torch.stack(rows) * model.logit_scale.exp()


def check_head_with_open_clip(model, tok, templates, head):
    """Independent check of the head formula: open_clip's build_zero_shot_classifier
    (one batch of all classes x templates, F.normalize, returns [P, C], unscaled), driven
    by the same HF model and tokenizer."""

    class Adapter:
        def encode_text(self, ids, normalize=False):
            e = tensor_of(model.get_text_features(input_ids=ids))
            return e / e.norm(dim=-1, keepdim=True) if normalize else e

    def tokenize(texts):
        return torch.tensor(hf_encode(tok, texts), dtype=torch.int64)

    ref = open_clip.zero_shot_classifier.build_zero_shot_classifier(
        Adapter(), tokenize, ZS_CLASSNAMES, templates, num_classes_per_batch=None)
    err = (ref.T * model.logit_scale.exp() - head).abs().max().item()
    assert err <= 1e-5, f"zero-shot head differs from open_clip's by {err}"
    return err


def topk_correct(logits, labels, k):
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def make_zeroshot():
    """Zero-shot heads of the tiny quickgelu model + a classifier evaluation on the first
    MNIST test images. No randomness: nothing here draws from any RNG, so earlier
    sections' streams are untouched."""
    model_dir = FIX / ZS_MODEL
    model = CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager").float().eval()
    assert model.config._attn_implementation == "eager"
    tok = CLIPTokenizerFast.from_pretrained(str(model_dir))

    templates = {"simple": ZS_SIMPLE_TEMPLATES, "openai_imagenet": list(OPENAI_IMAGENET_TEMPLATES)}
    assert len(templates["openai_imagenet"]) == 80
    tensors = {}
    for name, tmpl in templates.items():
        head = zeroshot_head(model, tok, tmpl)
        assert head.shape == (len(ZS_CLASSNAMES), model.config.projection_dim)
        err = check_head_with_open_clip(model, tok, tmpl, head)
        # The tiny tokenizer (500 merges) spells words in many pieces: report truncation.
        n_long = sum(len(tok(t(c) if callable(t) else t.format(c))["input_ids"]) > CONTEXT_LENGTH
                     for t in tmpl for c in ZS_CLASSNAMES)
        print(f"  head.{name}: {len(tmpl)} templates, {n_long} texts truncated, "
              f"open_clip diff {err:.1e}")
        tensors[f"head.{name}"] = head

    # MNIST test, first N: L 28x28 -> RGB -> PIL-path processor at the model's image size.
    # preprocess() also asserts HF equals the documented manual steps (bicubic 28 -> 32).
    images = read_idx(MNIST_IMAGES, 2051, ZS_EVAL_COUNT)
    labels = torch.from_numpy(read_idx(MNIST_LABELS, 2049, ZS_EVAL_COUNT).astype(np.int64))
    assert images.shape == (ZS_EVAL_COUNT, 28, 28)
    size = model.config.vision_config.image_size
    pixels = torch.stack([preprocess(Image.fromarray(a, "L").convert("RGB"), size)[0]
                          for a in images])
    with torch.no_grad():
        feats = tensor_of(model.get_image_features(pixel_values=pixels))
        # ClassificationHead(normalize=True) of wise-ft: normalise, then x @ W.T (+ 0 bias).
        logits = (feats / feats.norm(dim=-1, keepdim=True)) @ tensors["head.openai_imagenet"].T
    tensors["eval.indices"] = torch.arange(ZS_EVAL_COUNT, dtype=torch.int64)
    tensors["eval.labels"] = labels
    tensors["eval.image_embeds"] = feats
    tensors["eval.logits"] = logits

    # Margins at the top-1 and top-5 boundaries: a Rust run within float noise of these
    # logits gets the same predictions only if no row is (nearly) tied there.
    s = logits.sort(dim=1, descending=True).values
    m1, m5 = (s[:, 0] - s[:, 1]).min().item(), (s[:, 4] - s[:, 5]).min().item()
    assert min(m1, m5) > 1e-4, f"near-tie in the eval logits (top-1 {m1:.2e}, top-5 {m5:.2e})"

    d = FIX / "zeroshot"
    d.mkdir(parents=True)
    (d / "classnames.txt").write_text("".join(c + "\n" for c in ZS_CLASSNAMES), encoding="utf-8")
    save_tensors(d / "expected.safetensors", tensors)
    t1, t5 = topk_correct(logits, labels, 1), topk_correct(logits, labels, 5)
    print(f"zeroshot: top-1 {t1}/{ZS_EVAL_COUNT}, top-5 {t5}/{ZS_EVAL_COUNT}, "
          f"min margin top-1 {m1:.2e}, top-5 {m5:.2e}, labels {torch.bincount(labels).tolist()}")


# --------------------------------------------------------------------------- 8. fine-tuning steps

TRAIN_LABELS = [3, 1, 4, 1]
TRAIN_RECIPE = dict(lr=1e-4, wd=0.1, label_smoothing=0.1, clip=1.0, steps=3, warmup=0)


def wise_ft_cosine_lr(base_lr, warmup_length, steps, step):
    """wise-ft's `cosine_lr` adjuster, for one step (numpy, float64)."""
    if step < warmup_length:
        return base_lr * (step + 1) / warmup_length
    e = step - warmup_length
    es = steps - warmup_length
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr


def make_train_steps():
    """Three full-batch steps of wise-ft's fine-tuning recipe on the tiny classifier (tower
    of clip-tiny-quickgelu + its openai_imagenet zero-shot head, bias 0): label-smoothed
    cross-entropy on logits of normalised features, AdamW (decoupled decay on every
    parameter), global-norm clipping at 1.0, the cosine schedule with no warmup. No
    augmentation: the inputs are the model fixture's pixel_values. No randomness."""
    from transformers import CLIPVisionModelWithProjection

    tower = CLIPVisionModelWithProjection.from_pretrained(
        str(FIX / ZS_MODEL), attn_implementation="eager").float()
    tower.train()  # CLIP has no dropout or batch-norm: train and eval modes compute the same
    head = torch.nn.Linear(tower.config.projection_dim, len(ZS_CLASSNAMES))
    zs = load_file(str(FIX / "zeroshot" / "expected.safetensors"))
    with torch.no_grad():
        head.weight.copy_(zs["head.openai_imagenet"])
        head.bias.zero_()
    pixels = load_file(str(FIX / ZS_MODEL / "expected.safetensors"))["pixel_values"]
    labels = torch.tensor(TRAIN_LABELS)
    named = [(n, p) for n, p in tower.named_parameters()] + [
        ("classification_head." + n, p) for n, p in head.named_parameters()]
    params = [p for _, p in named]
    r = TRAIN_RECIPE
    opt = torch.optim.AdamW(params, lr=r["lr"], weight_decay=r["wd"])
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    tensors, losses, lrs, norms = {}, [], [], []
    for step in range(r["steps"]):
        lr = wise_ft_cosine_lr(r["lr"], r["warmup"], r["steps"], step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        feats = tower(pixel_values=pixels).image_embeds
        logits = head(feats / feats.norm(dim=-1, keepdim=True))
        loss = loss_fn(logits, labels)
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, r["clip"]).item())
        opt.step()
        losses.append(loss.item())
        lrs.append(lr)
    for n, p in named:
        tensors[f"after.{n}"] = p.detach().clone()
    tensors["labels"] = labels.to(torch.int64)
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    tensors["grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    # A longer schedule, to compare the formula itself: base 3e-5, 5 warmup of 20 steps.
    tensors["schedule.3e-5.5.20"] = torch.tensor(
        [wise_ft_cosine_lr(3e-5, 5, 20, i) for i in range(20)], dtype=torch.float64)
    d = FIX / "train"
    d.mkdir(parents=True)
    save_tensors(d / "expected.safetensors", tensors)
    print(f"train: losses {[f'{l:.5f}' for l in losses]}, grad norms {[f'{n:.4f}' for n in norms]}")


# --------------------------------------------------------------------------- 9. ensemble (WiSE-FT merges, Fisher)


ENS_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
ENS_NWAY_WEIGHTS = [0.2, 0.3, 0.5]
ENS_FISHER_FLOOR = 1e-8
# Tensors stored in half precision in every ensemble input: merges read them as f32,
# mix in f32 and store the result back in the same dtype.
ENS_DTYPES = {
    "vision_model.embeddings.patch_embedding.weight": torch.float16,
    "visual_projection.weight": torch.bfloat16,
}
# Tensors without a Fisher in the Fisher files: a Fisher merge interpolates them plainly.
ENS_NO_FISHER = ["vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias"]
ENS_FISHER_LABELS = [3, 7, 0, 9]


def wise_ft_merge(alpha, theta_0, theta_1, fishers=None, fisher_floor=ENS_FISHER_FLOOR):
    """wise-ft's `_merge` (src/wise_ft.py): plain interpolation (1-alpha)*t0 + alpha*t1 of
    every tensor, or with fishers (F0, F1): c_i = w_i * max(F_i, floor), then
    (c0*t0 + c1*t1) / (c0 + c1); a tensor with no Fisher in either file uses F = 1.
    Same expressions, same evaluation order, on f32 tensors."""
    if fishers is None:
        return {k: (1 - alpha) * theta_0[k] + alpha * theta_1[k] for k in theta_0}
    f0s, f1s = fishers
    out = {}
    for k in theta_0:
        assert (k in f0s) == (k in f1s), k
        ones = torch.ones_like(theta_0[k])
        f0 = torch.maximum(f0s.get(k, ones), fisher_floor * ones)
        f1 = torch.maximum(f1s.get(k, ones), fisher_floor * ones)
        c0, c1 = (1 - alpha) * f0, alpha * f1
        out[k] = (c0 * theta_0[k] + c1 * theta_1[k]) / (c0 + c1)
    return out


def make_ensemble_inputs(model):
    """Three small classifier-like checkpoints with the keys of an ImageClassifier of the
    tiny quickgelu tower (plus an int64 buffer), two Fisher files, and the merges PyTorch
    computes from them: WiSE-FT at each alpha (plain and Fisher) and a 3-way average."""
    g = torch.Generator().manual_seed(4242)

    def randn(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    base = {f"vision_model.{n}": p.detach().clone() for n, p in model.vision_model.named_parameters()}
    base["visual_projection.weight"] = model.visual_projection.weight.detach().clone()
    n_classes, dim = len(ZS_CLASSNAMES), model.config.projection_dim
    base["classification_head.weight"] = 5 * randn(n_classes, dim)
    base["classification_head.bias"] = 0.5 * randn(n_classes)
    thetas = [base] + [{k: v + 0.1 * randn(*v.shape) for k, v in base.items()} for _ in range(2)]
    # A negative zero in the zero-shot model: alpha = 0 must give it back bit for bit.
    thetas[0]["classification_head.bias"][0] = -0.0
    for t in thetas:
        for k, dt in ENS_DTYPES.items():
            t[k] = t[k].to(dt)
    float_keys = sorted(base)
    n_pos = model.config.vision_config.image_size // model.config.vision_config.patch_size
    position_ids = torch.arange(n_pos * n_pos + 1, dtype=torch.int64)[None]
    for t in thetas:
        t["vision_model.embeddings.position_ids"] = position_ids.clone()

    fishers = []
    for _ in range(2):
        f = {}
        for k in float_keys:
            if k in ENS_NO_FISHER:
                continue
            v = randn(*base[k].shape) ** 2 * 10 ** (4 * torch.rand(base[k].shape, generator=g) - 3)
            # Some exact zeros and values below the floor: max(F, floor) must kick in.
            v[torch.rand(v.shape, generator=g) < 0.1] = 0.0
            v[torch.rand(v.shape, generator=g) < 0.05] = 1e-12
            f[k] = v
        fishers.append(f)

    expected = {}
    as_f32 = [{k: t[k].float() for k in float_keys} for t in thetas]
    for alpha in ENS_ALPHAS:
        plain = wise_ft_merge(alpha, as_f32[0], as_f32[1])
        fisher = wise_ft_merge(alpha, as_f32[0], as_f32[1], (fishers[0], fishers[1]))
        for k in float_keys:
            dt = ENS_DTYPES.get(k, torch.float32)
            expected[f"plain.{alpha:.3f}.{k}"] = plain[k].to(dt)
            expected[f"fisher.{alpha:.3f}.{k}"] = fisher[k].to(dt)
    for k in float_keys:
        acc = ENS_NWAY_WEIGHTS[0] * as_f32[0][k]
        for w, t in zip(ENS_NWAY_WEIGHTS[1:], as_f32[1:]):
            acc = acc + w * t[k]
        expected[f"nway.{k}"] = acc.to(ENS_DTYPES.get(k, torch.float32))

    d = FIX / "ensemble"
    for i, t in enumerate(thetas):
        save_tensors(d / f"theta_{i}.safetensors", t)
    for i, f in enumerate(fishers):
        save_tensors(d / f"fisher_{i}.safetensors", f)
    save_tensors(d / "expected.safetensors", expected)
    print(f"ensemble: {len(float_keys)} float tensors + 1 int64, {len(fishers[0])} with Fisher, "
          f"{len(expected)} expected tensors")


def make_fisher_expected(model):
    """The diagonal Fisher of a classifier (the tiny quickgelu tower + a random head with a
    bias) as wise-ft's compute_fisher computes it, but with fixed labels instead of labels
    sampled from the model (PyTorch's and wise's random streams differ): for each image
    alone, cross-entropy of its label, backward, grad**2; the mean over the images."""
    g = torch.Generator().manual_seed(4343)
    n_classes, dim = len(ZS_CLASSNAMES), model.config.projection_dim
    head_w = (5 * torch.randn(n_classes, dim, generator=g)).requires_grad_()
    head_b = (0.5 * torch.randn(n_classes, generator=g)).requires_grad_()
    pixels = load_file(str(FIX / ZS_MODEL / "expected.safetensors"))["pixel_values"]
    labels = torch.tensor(ENS_FISHER_LABELS, dtype=torch.int64)
    params = {f"vision_model.{n}": p for n, p in model.vision_model.named_parameters()}
    params["visual_projection.weight"] = model.visual_projection.weight
    params["classification_head.weight"] = head_w
    params["classification_head.bias"] = head_b
    sums = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(labels)):
        for p in params.values():
            p.grad = None
        feats = tensor_of(model.get_image_features(pixel_values=pixels[i:i + 1]))
        # wise-ft's ClassificationHead(normalize=True): x / ||x||, then x @ W.T + b.
        logits = (feats / feats.norm(dim=-1, keepdim=True)) @ head_w.T + head_b
        loss = torch.nn.functional.cross_entropy(logits, labels[i:i + 1])
        loss.backward()
        for k, p in params.items():
            assert p.grad is not None, f"no gradient for {k}"
            sums[k] += p.grad.detach() ** 2
    out = {"pixel_values": pixels, "labels": labels,
           "head.weight": head_w.detach().clone(), "head.bias": head_b.detach().clone()}
    for k, s in sums.items():
        out[f"fisher.{k}"] = s / len(labels)
    for p in params.values():
        p.grad = None
    save_tensors(FIX / "ensemble" / "fisher_expected.safetensors", out)
    print(f"ensemble: Fisher of {len(params)} parameters over {len(labels)} images")


def make_ensemble():
    """Fixtures of `wise ensemble` / `wise fisher`. Uses its own seeded generators, after
    every other section, so the other fixtures are unchanged by it."""
    (FIX / "ensemble").mkdir(parents=True)
    model = CLIPModel.from_pretrained(str(FIX / ZS_MODEL), attn_implementation="eager").float().eval()
    make_ensemble_inputs(model)
    make_fisher_expected(model)


# --------------------------------------------------------------------------- 10. contrastive fine-tuning (FLYP)

# (class, pattern seed) of each training image; "one" twice: a duplicate class in the batch
# is a negative, as in FLYP's reference implementation (labels are arange(batch)).
FLYP_IMAGES = [("three", 21), ("one", 22), ("four", 23), ("one", 24), ("seven", 25)]
FLYP_RECIPE = dict(lr=1e-4, wd=0.1, clip=1.0, steps=3, warmup=0)


def make_flyp_steps():
    """Three full-batch steps of FLYP (contrastive fine-tuning of the whole CLIP) on
    clip-tiny-quickgelu, then the head rebuilt from the fine-tuned text tower.

    The data is an ImageFolder of 32x32 PNGs (the model's input size, so preprocessing is
    exact: no resize, no crop, just /255 and normalise). Each image's caption is the one
    simple template filled with its class name, so which template a seeded generator
    draws does not matter. Per step: the cosine schedule (no warmup) sets the lr, HF
    CLIPModel's symmetric contrastive loss (return_loss=True: cross-entropy over rows and
    columns of exp(logit_scale) * cos, labels arange(batch)), backward, global-norm
    clipping at 1.0 over every parameter, AdamW with decoupled decay on every parameter,
    then logit_scale clamped to [0, ln 100] as CLIP / open_clip. No randomness."""
    d = FIX / "flyp"
    data = d / "data"
    size = TINY_MODELS[ZS_MODEL]["vision"]["image_size"]
    for i, (cls, seed) in enumerate(FLYP_IMAGES):
        (data / cls).mkdir(parents=True, exist_ok=True)
        pattern(size, size, seed).save(data / cls / f"{i}.png")
    # ImageFolder order: classes sorted by folder name, then files sorted by path.
    classnames = sorted({c for c, _ in FLYP_IMAGES})
    files = [(data / c / f"{i}.png", classnames.index(c))
             for c in classnames for i, (c2, _) in enumerate(FLYP_IMAGES) if c2 == c]
    pixels = torch.stack([preprocess(load_reference(f), size)[0] for f, _ in files])
    for (f, _), pix in zip(files, pixels):
        a = np.array(Image.open(f).convert("RGB"))
        x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
        x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
        assert torch.equal(pix, torch.from_numpy(x.transpose(2, 0, 1))), f"{f}: resized or cropped"
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    captions = [ZS_SIMPLE_TEMPLATES[0].format(classnames[label]) for label in labels]

    model = CLIPModel.from_pretrained(str(FIX / ZS_MODEL), attn_implementation="eager").float()
    model.train()  # CLIP has no dropout or batch-norm: train and eval modes compute the same
    tok = CLIPTokenizerFast.from_pretrained(str(FIX / ZS_MODEL))
    ids = torch.tensor(hf_encode(tok, captions), dtype=torch.int64)
    named = list(model.named_parameters())
    params = [p for _, p in named]
    r = FLYP_RECIPE
    opt = torch.optim.AdamW(params, lr=r["lr"], weight_decay=r["wd"])
    losses, lrs, norms = [], [], []
    for step in range(r["steps"]):
        lr = wise_ft_cosine_lr(r["lr"], r["warmup"], r["steps"], step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(params, r["clip"]).item())
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        lrs.append(lr)
    model.eval()
    tensors = {f"after.{n}": p.detach().clone() for n, p in named}
    tensors["head"] = zeroshot_head(model, tok, ZS_SIMPLE_TEMPLATES, classnames)
    tensors["labels"] = labels
    tensors["losses"] = torch.tensor(losses, dtype=torch.float64)
    tensors["lrs"] = torch.tensor(lrs, dtype=torch.float64)
    tensors["grad_norms"] = torch.tensor(norms, dtype=torch.float64)
    save_tensors(d / "expected.safetensors", tensors)
    print(f"flyp: {len(files)} images of {classnames}, losses {[f'{l:.5f}' for l in losses]}, "
          f"grad norms {[f'{n:.4f}' for n in norms]}")


# --------------------------------------------------------------------------- main


def main():
    setup_determinism()
    assert BPE_PATH.exists(), BPE_PATH
    # Check the real data is there before anything is deleted.
    assert MNIST_IMAGES.exists() and MNIST_LABELS.exists(), f"MNIST test not found in {DATASETS}"
    # Regenerate everything the script owns from scratch (README.md is hand-written).
    FIX.mkdir(parents=True, exist_ok=True)
    for p in FIX.iterdir():
        if p.name != "README.md":
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    make_tokenizer_cases()

    image_dir = make_images()
    make_image_expected(image_dir)

    (FIX / "texts.txt").write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        tiny_bpe_dir = Path(tmp)
        n = write_bpe_files(tiny_bpe_dir, read_bpe_merges()[:500])
        assert n == 1014, n
        models = {name: make_tiny_model(name, spec, tiny_bpe_dir, image_dir)
                  for name, spec in TINY_MODELS.items()}

    make_open_clip_twin(*models["clip-tiny-quickgelu"])
    make_zeroshot()
    make_train_steps()
    make_ensemble()
    make_flyp_steps()
    print("done")


if __name__ == "__main__":
    main()
