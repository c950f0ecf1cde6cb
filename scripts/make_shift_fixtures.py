#!/usr/bin/env python3
"""Reference outputs for `wise shift` (crates/wise-shift): the 15 CIFAR-10-C / ImageNet-C
corruptions (Hendrycks & Dietterich, ICLR 2019) at 5 severities, computed the published way
on a few small synthetic images, written to tests/fixtures/shift/.

Run from the repository root with the pinned environment:

    python3 -m venv .venv-shift && .venv-shift/bin/pip install -r scripts/requirements-shift.txt
    .venv-shift/bin/python scripts/make_shift_fixtures.py

Deterministic (fixed seeds, fixed encoder settings): with the pinned versions a rerun rewrites
byte-identical files. Needs no network and no datasets. See tests/fixtures/shift/README.md.

What "the published way" means here. The corruptions follow the algorithms and per-severity
parameters of hendrycks/robustness (`make_cifar_c.py` for 32x32, `make_imagenet_c.py` for
224x224) with numpy, scipy, scikit-image and Pillow. Three parts of those scripts cannot run
here and are replaced, on both sides (this script and the Rust crate):

- OpenCV calls (`cv2.filter2D`, `cv2.GaussianBlur`, `cv2.cvtColor`, `cv2.getAffineTransform`,
  `cv2.warpAffine`) are written with numpy/scipy: the same maths and the same border rule
  (BORDER_REFLECT_101 = scipy's 'mirror'). warpAffine is exact bilinear; OpenCV rounds the
  source position to 1/32 pixel, a difference of under 1/64 pixel.
- ImageMagick's motion blur (used through Wand by motion_blur and snow) is written in numpy
  as ImageMagick's MotionBlurImage computes it: a one-sided Gaussian kernel of
  2*ceil(radius)+1 taps along the angle, taps at offsets ceil(i*cos/sin - 0.5), edge pixels
  repeated past the border, the result rounded to 8 bits as the PNG round trip does.
- frost blends in photographs of frost (frost1.png ... frost6.jpg) that are not available. A
  seeded procedural ice texture (`frost_texture`, two layers of Voronoi crystals whose edges
  are lit, tinted blue-white) stands in; it uses only + - * / sqrt floor on float64 and a
  32-bit integer hash, so the Rust crate computes the same bytes.

Two deliberate departures from the scripts, also made on both sides:

- `clipped_zoom` (zoom_blur, snow) uses scipy's zoom with mode='nearest': with the default
  'constant', scipy >= 1.6 returns 0 for the last row/column whenever (n-1)/(m-1)*(m-1)
  rounds above n-1, a floating-point accident of one scipy version, not part of the method.
  Non-square images are cropped and zoomed per axis (the script used the height for both).
- glass_blur keeps the published "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]`, which with
  numpy views is a copy (x[h', w'] keeps its value): that is what produced the datasets.

Randomness. numpy's generators cannot be reproduced in Rust, so every random draw goes
through `Draws`, which records it (rounded to float16, and the rounded value is what the
reference then uses) in the order the Rust code draws. The fixture stores these streams, and
the Rust tests replay them, which makes the random corruptions comparable pixel by pixel.

Image size. Parameters come from the CIFAR table for images whose short side is < 85 pixels
(the geometric mean of 32 and 224) and from the ImageNet table otherwise; spatial parameters
(blur radii and sigmas, glass displacement, motion radius/sigma, elastic amplitudes, the frost
crystal size, the fog map size) scale with short side / 32 or / 224. See `params`.
"""

import json
import math
import shutil
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL
import scipy
import skimage
from PIL import Image, ImageDraw
from safetensors.numpy import save_file
from scipy.ndimage import correlate, correlate1d, map_coordinates, zoom as scizoom
from skimage.filters import gaussian

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "shift"

CORRUPTIONS = [
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]

# --------------------------------------------------------------------------- parameters

# Per severity 1..5, as published. CIFAR-10-C (make_cifar_c.py), for 32x32 images.
CIFAR = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    # fractions of the image size (the script multiplies by IMSIZE = 32)
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
                          (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}

# ImageNet-C (make_imagenet_c.py), for 224x224 images.
IMAGENET = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    # the script writes 244 * fraction ("244 should have been 224"): kept, scaled by side/224
    "elastic_transform": [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02),
                          (0.12, 0.01, 0.02)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}

# Short sides below this use the CIFAR table (sqrt(32 * 224) = 84.7).
PROFILE_SPLIT = 85
# Frost crystal size as a fraction of the short side, per texture index 0..4.
FROST_CELL = [0.16, 0.19, 0.22, 0.25, 0.28]


def params(name, severity, h, w):
    """(parameters, scale) for an h x w image: the table by size, spatial ones scaled."""
    side = min(h, w)
    cifar = side < PROFILE_SPLIT
    p = (CIFAR if cifar else IMAGENET)[name][severity - 1]
    s = side / (32.0 if cifar else 224.0)
    if name == "defocus_blur":
        return (p[0] * s, p[1] * s), s
    if name == "glass_blur":
        return (p[0] * s, max(1, int(math.floor(p[1] * s + 0.5))), p[2]), s
    if name == "motion_blur":
        return (p[0] * s, p[1] * s), s
    if name == "snow":
        return p[:4] + (p[4] * s, p[5] * s, p[6]), s
    if name == "elastic_transform":
        size = side if cifar else 244.0 * s
        return tuple(f * size for f in p), s
    return p, s


# --------------------------------------------------------------------------- randomness


class Draws:
    """numpy draws, recorded in order as float16 (the rounded values are the ones used), or
    replayed from such a record."""

    def __init__(self, rng=None, replay=None, quantize=True):
        self.rng = rng
        self.replay = None if replay is None else np.asarray(replay, np.float16)
        self.quantize = quantize
        self.pos = 0
        self.record = []

    def _take(self, fresh, shape):
        if self.replay is not None:
            n = int(np.prod(shape, dtype=np.int64))
            v = self.replay[self.pos:self.pos + n].reshape(shape)
            assert v.size == n, "replay stream too short"
            self.pos += n
        elif not self.quantize:
            return np.asarray(fresh(), dtype=np.float64).reshape(shape)
        else:
            raw = np.asarray(fresh())
            v = raw.astype(np.float16).reshape(shape)
            if raw.dtype.kind in "iu":
                assert np.array_equal(v.astype(np.int64).ravel(), raw.ravel()), "integer draw not exact in float16"
            self.record.append(v.ravel())
        return v.astype(np.float64)

    def uniform(self, low, high, shape=()):
        u = self._take(lambda: self.rng.random(shape), shape)
        return low + (high - low) * u

    def normal(self, loc, scale, shape=()):
        return loc + scale * self._take(lambda: self.rng.standard_normal(shape), shape)

    def poisson(self, lam):
        k = self._take(lambda: self.rng.poisson(lam), np.shape(lam))
        return k

    def integers(self, low, high, shape=()):
        return self._take(lambda: self.rng.integers(low, high, shape), shape).astype(np.int64)

    def stream(self):
        s = np.concatenate(self.record) if self.record else np.zeros(0, np.float16)
        assert np.all(np.isfinite(s))
        return s


def to_u8(x):
    """np.uint8 of values already in [0, 255]: truncation, as the published scripts save."""
    return np.asarray(x).astype(np.uint8)


# --------------------------------------------------------------------------- helpers


def mirror_gaussian_1d(sigma, ksize):
    """cv2.getGaussianKernel(ksize, sigma) for a float32 image: float64 maths, float32 taps."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    t = np.array([math.exp(-0.5 / (sigma * sigma) * v * v) for v in x])
    t = t * (1.0 / t.sum())
    return t.astype(np.float32)


def disk(radius, alias_blur):
    """The anti-aliased disk of defocus_blur (an aliased disk, Gaussian-blurred)."""
    if radius <= 8:
        coords = np.arange(-8, 8 + 1)
        ksize = 3
    else:
        coords = np.arange(-radius, radius + 1)
        ksize = 5
    X, Y = np.meshgrid(coords, coords)
    aliased = np.array((X ** 2 + Y ** 2) <= radius ** 2, dtype=np.float32)
    aliased /= np.sum(aliased)
    k = mirror_gaussian_1d(alias_blur, ksize)
    # cv2.GaussianBlur: rows then columns, BORDER_REFLECT_101, float32 between passes
    out = correlate1d(aliased, k, axis=1, mode="mirror", output=np.float32)
    return correlate1d(out, k, axis=0, mode="mirror", output=np.float32)


def clipped_zoom(img, z):
    """Center crop of size ceil(n / z) per axis, linear zoom by z, center crop back to n."""
    h, w = img.shape[:2]
    ch, cw = int(np.ceil(h / z)), int(np.ceil(w / z))
    top, left = (h - ch) // 2, (w - cw) // 2
    factors = (z, z) + (1,) * (img.ndim - 2)
    out = scizoom(img[top:top + ch, left:left + cw], factors, order=1, mode="nearest")
    th, tw = (out.shape[0] - h) // 2, (out.shape[1] - w) // 2
    return out[th:th + h, tw:tw + w]


def motion_kernel(radius, sigma, angle):
    """ImageMagick's MotionBlurImage kernel: weights and (dx, dy) offsets per tap."""
    width = int(2.0 * math.ceil(radius) + 1.0)
    k = [math.exp(-(i * i) / (2.0 * sigma * sigma)) / (math.sqrt(2.0 * math.pi) * sigma) for i in range(width)]
    total = 0.0
    for v in k:
        total += v
    k = [v / total for v in k]
    theta = math.pi * angle / 180.0
    px, py = width * math.sin(theta), width * math.cos(theta)
    hyp = float(np.hypot(px, py))
    offsets = [(math.ceil(i * py / hyp - 0.5), math.ceil(i * px / hyp - 0.5)) for i in range(width)]
    return k, offsets


def motion_blur_u8(img, radius, sigma, angle):
    """ImageMagick motion blur of a uint8 (h, w) or (h, w, c) image, rounded to uint8."""
    k, offsets = motion_kernel(radius, sigma, angle)
    h, w = img.shape[:2]
    src = img.astype(np.float64)
    acc = np.zeros_like(src)
    ys, xs = np.arange(h), np.arange(w)
    for weight, (dx, dy) in zip(k, offsets):
        rows = np.clip(ys + dy, 0, h - 1)
        cols = np.clip(xs + dx, 0, w - 1)
        acc = acc + weight * src[rows][:, cols]
    return np.floor(np.clip(acc, 0, 255) + 0.5).astype(np.uint8)


def plasma_fractal(draws, mapsize, wibbledecay):
    """Diamond-square height map in [0, 1] (the published fog's), drawing through `draws`."""
    m = np.zeros((mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * draws.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = m[0:mapsize:step, 0:mapsize:step]
        sq = corners + np.roll(corners, shift=-1, axis=0)
        sq += np.roll(sq, shift=-1, axis=1)
        m[half:mapsize:step, half:mapsize:step] = wibbled_mean(sq)
        dr = m[half:mapsize:step, half:mapsize:step]
        ul = m[0:mapsize:step, 0:mapsize:step]
        lt = (dr + np.roll(dr, 1, axis=0)) + (ul + np.roll(ul, -1, axis=1))
        m[0:mapsize:step, half:mapsize:step] = wibbled_mean(lt)
        td = (dr + np.roll(dr, 1, axis=1)) + (ul + np.roll(ul, -1, axis=0))
        m[half:mapsize:step, 0:mapsize:step] = wibbled_mean(td)
        step //= 2
        wibble /= wibbledecay
    m -= m.min()
    return m / m.max()


def hash32(salt, gy, gx, k):
    """A 32-bit integer hash (lowbias32 finaliser) of a texture salt, a cell and a slot."""
    mask = np.uint64(0xFFFFFFFF)
    u = lambda v: np.asarray(v, dtype=np.int64).astype(np.uint64) & mask
    x = (u(salt) * np.uint64(0x9E3779B1) + u(gy) * np.uint64(0x85EBCA77)) & mask
    x = (x + u(gx) * np.uint64(0xC2B2AE3D) + u(k) * np.uint64(0x27D4EB2F)) & mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x7FEB352D)) & mask
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x846CA68B)) & mask
    x ^= x >> np.uint64(16)
    return x.astype(np.float64) / 4294967296.0


def voronoi(rows, cols, cell, salt):
    """Nearest and second-nearest feature distances (in cells) and the nearest cell's tone."""
    ys = ((rows + 0.5) / cell)[:, None]
    xs = ((cols + 0.5) / cell)[None, :]
    cy, cx = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    best1 = np.full(np.broadcast(ys, xs).shape, np.inf)
    best2 = best1.copy()
    tone = np.zeros_like(best1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            gy, gx = cy + dy, cx + dx
            py = gy + hash32(salt, gy, gx, 0)
            px = gx + hash32(salt, gy, gx, 1)
            a = ys - py
            b = xs - px
            d = a * a + b * b
            closer = d < best1
            best2 = np.where(closer, best1, np.minimum(best2, d))
            tone = np.where(closer, hash32(salt, gy, gx, 2), tone)
            best1 = np.where(closer, d, best1)
    return np.sqrt(best1), np.sqrt(best2), tone


FROST_TINT = (0.80, 0.90, 1.0)


def frost_texture(index, top, left, h, w, side):
    """h x w uint8 RGB window at (top, left) of frost texture `index` for short side `side`."""
    rows = np.arange(top, top + h, dtype=np.float64)
    cols = np.arange(left, left + w, dtype=np.float64)
    cell = side * FROST_CELL[index]
    f1, f2, tone = voronoi(rows, cols, cell, 2 * index + 1)
    g1, g2, _ = voronoi(rows, cols, cell / 3.0, 2 * index + 2)
    edge = np.maximum(0.0, 1.0 - (f2 - f1) / 0.12)
    grain = np.maximum(0.0, 1.0 - (g2 - g1) / 0.2)
    v = 0.25 + 0.35 * tone + 0.5 * edge + 0.3 * grain - 0.15 * f1
    v = np.minimum(1.0, np.maximum(0.0, v))
    out = np.stack([np.floor(v * t * 255.0 + 0.5) for t in FROST_TINT], axis=-1)
    return out.astype(np.uint8)


def affine_from_points(src, dst):
    """The 2x3 matrix mapping three src points onto three dst points (cv2.getAffineTransform)."""
    a = np.zeros((6, 6))
    b = np.zeros(6)
    for i in range(3):
        x, y = float(src[i, 0]), float(src[i, 1])
        a[i] = [x, y, 1, 0, 0, 0]
        a[i + 3] = [0, 0, 0, x, y, 1]
        b[i] = dst[i, 0]
        b[i + 3] = dst[i, 1]
    return np.linalg.solve(a, b).reshape(2, 3)


def reflect101(i, n):
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def warp_affine(img, m):
    """cv2.warpAffine(img, m, (w, h), borderMode=BORDER_REFLECT_101), exact bilinear."""
    h, w = img.shape[:2]
    d = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22 = m[1, 1] * d, m[0, 0] * d
    a12, a21 = -m[0, 1] * d, -m[1, 0] * d
    b1 = -a11 * m[0, 2] - a12 * m[1, 2]
    b2 = -a21 * m[0, 2] - a22 * m[1, 2]
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    sx = a11 * xs + a12 * ys + b1
    sy = a21 * xs + a22 * ys + b2
    x0, y0 = np.floor(sx), np.floor(sy)
    tx, ty = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    src = img.astype(np.float64)
    c0, c1 = reflect101(x0, w), reflect101(x0 + 1, w)
    r0, r1 = reflect101(y0, h), reflect101(y0 + 1, h)
    tx, ty = tx[..., None], ty[..., None]
    top = src[r0, c0] * (1.0 - tx) + src[r0, c1] * tx
    bottom = src[r1, c0] * (1.0 - tx) + src[r1, c1] * tx
    return (top * (1.0 - ty) + bottom * ty).astype(img.dtype)


# --------------------------------------------------------------------------- corruptions
# Each takes a uint8 (h, w, 3) array, parameters, and Draws; returns uint8 (h, w, 3).


def gaussian_noise(x, c, draws):
    x = x / 255.0
    return to_u8(np.clip(x + draws.normal(0.0, c, x.shape), 0, 1) * 255)


def shot_noise(x, c, draws):
    x = x / 255.0
    return to_u8(np.clip(draws.poisson(x * c) / c, 0, 1) * 255)


def impulse_noise(x, c, draws):
    # skimage.util.random_noise(mode='s&p', amount=c): Bernoulli flips, then salt or pepper
    x = x / 255.0
    flipped = draws.uniform(0.0, 1.0, x.shape) <= c
    salted = draws.uniform(0.0, 1.0, x.shape) <= 0.5
    out = x.copy()
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return to_u8(np.clip(out, 0, 1) * 255)


def defocus_blur(x, c, draws):
    x = x / 255.0
    kernel = disk(c[0], c[1]).astype(np.float64)
    channels = [correlate(x[:, :, d], kernel, mode="mirror") for d in range(3)]
    return to_u8(np.clip(np.stack(channels, axis=-1), 0, 1) * 255)


def glass_blur(x, c, draws):
    sigma, delta, iterations = c
    x = to_u8(gaussian(x / 255.0, sigma=sigma, channel_axis=-1) * 255)
    h, w = x.shape[:2]
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    for _ in range(iterations):
        d = draws.integers(-delta, delta, (len(rows), len(cols), 2))
        for i, hh in enumerate(rows):
            for j, ww in enumerate(cols):
                dx, dy = int(d[i, j, 0]), int(d[i, j, 1])
                hp, wp = hh + dy, ww + dx
                x[hh, ww], x[hp, wp] = x[hp, wp], x[hh, ww]
    return to_u8(np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255)


def motion_blur(x, c, draws):
    angle = float(draws.uniform(-45, 45))
    return motion_blur_u8(x, c[0], c[1], angle)


def zoom_factors(c):
    return np.arange(c[0], c[1], c[2])


def zoom_blur(x, c, draws):
    x = (x / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    factors = zoom_factors(c)
    for z in factors:
        out += clipped_zoom(x, z)
    x = (x + out) / (len(factors) + 1)
    return to_u8(np.clip(x, 0, 1) * 255)


def snow(x, c, draws):
    h, w = x.shape[:2]
    x = np.array(x, dtype=np.float32) / 255.0
    layer = draws.normal(c[0], c[1], (h, w))
    layer = clipped_zoom(layer[..., np.newaxis], c[2])
    layer[layer < c[3]] = 0
    layer = to_u8(np.clip(layer.squeeze(-1), 0, 1) * 255)
    angle = float(draws.uniform(-135, -45))
    layer = motion_blur_u8(layer, c[4], c[5], angle) / 255.0
    layer = layer[..., np.newaxis]
    # cv2.cvtColor(RGB2GRAY) on float32
    gray = (x[..., 0] * np.float32(0.299) + x[..., 1] * np.float32(0.587)) + x[..., 2] * np.float32(0.114)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray.reshape(h, w, 1) * 1.5 + 0.5)
    return to_u8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)


def frost(x, c, draws):
    h, w = x.shape[:2]
    index = int(draws.integers(0, 5))
    top = int(draws.integers(0, h))
    left = int(draws.integers(0, w))
    texture = frost_texture(index, top, left, h, w, min(h, w))
    return to_u8(np.clip(c[0] * x + c[1] * texture, 0, 255))


def fog(x, c, draws):
    h, w = x.shape[:2]
    mapsize = max(2, 1 << (max(h, w) - 1).bit_length())
    x = x / 255.0
    max_val = x.max()
    x += c[0] * plasma_fractal(draws, mapsize, c[1])[:h, :w][..., np.newaxis]
    return to_u8(np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255)


def brightness(x, c, draws):
    x = skimage.color.rgb2hsv(x / 255.0)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = skimage.color.hsv2rgb(x)
    return to_u8(np.clip(x, 0, 1) * 255)


def contrast(x, c, draws):
    x = x / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return to_u8(np.clip((x - means) * c + means, 0, 1) * 255)


def elastic_transform(x, c, draws):
    image = np.array(x, dtype=np.float32) / 255.0
    shape = image.shape
    size = shape[:2]
    center = np.float32(size) // 2
    square = min(size) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + draws.uniform(-c[2], c[2], pts1.shape).astype(np.float32)
    image = warp_affine(image, affine_from_points(pts1, pts2))
    dx = (gaussian(draws.uniform(-1, 1, size), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(draws.uniform(-1, 1, size), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    idx = np.reshape(yy + dy, (-1, 1)), np.reshape(xx + dx, (-1, 1)), np.reshape(zz, (-1, 1))
    out = map_coordinates(image, idx, order=1, mode="reflect").reshape(shape)
    return to_u8(np.clip(out, 0, 1) * 255)


def pixelate(x, c, draws):
    h, w = x.shape[:2]
    img = Image.fromarray(x)
    img = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(img.resize((w, h), Image.BOX))


def jpeg_bytes(x, quality):
    buf = BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def jpeg_compression(x, c, draws):
    return np.asarray(Image.open(BytesIO(jpeg_bytes(x, c))).convert("RGB"))


FUNCS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(x, name, severity, draws):
    p, _ = params(name, severity, *x.shape[:2])
    out = FUNCS[name](x, p, draws)
    assert out.dtype == np.uint8 and out.shape == x.shape, (name, out.dtype, out.shape)
    return out


# --------------------------------------------------------------------------- self-checks


def check_against_libraries():
    """Where this script rewrites a library call, check the rewrite against the library."""
    rng = np.random.default_rng(7)
    img = rng.random((9, 11, 3))
    # impulse_noise == skimage.util.random_noise(mode='s&p') for the same generator state
    ref = skimage.util.random_noise(img, mode="s&p", amount=0.3, rng=np.random.default_rng(3))
    g = np.random.default_rng(3)
    flipped = g.random(img.shape) <= 0.3
    salted = g.random(img.shape) <= 0.5
    mine = img.copy()
    mine[flipped & salted] = 1.0
    mine[flipped & ~salted] = 0.0
    assert np.array_equal(ref, mine)
    # plasma_fractal with a recording generator == the published recursion on np.random
    np.random.seed(5)
    wanted = published_plasma(32, 2.5)
    mine = plasma_fractal(Draws(rng=np.random.RandomState(5), quantize=False), 32, 2.5)
    assert np.array_equal(mine, wanted)


def published_plasma(mapsize, wibbledecay):
    """The published algorithm on the global numpy RNG, to check `plasma_fractal`."""
    maparray = np.empty((mapsize, mapsize))
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100.0
    while stepsize >= 2:
        h = stepsize // 2
        c = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        s = c + np.roll(c, shift=-1, axis=0)
        s += np.roll(s, shift=-1, axis=1)
        maparray[h:mapsize:stepsize, h:mapsize:stepsize] = s / 4 + wibble * np.random.uniform(-wibble, wibble, s.shape)
        dr = maparray[h:mapsize:stepsize, h:mapsize:stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + (ul + np.roll(ul, -1, axis=1))
        maparray[0:mapsize:stepsize, h:mapsize:stepsize] = lt / 4 + wibble * np.random.uniform(-wibble, wibble, lt.shape)
        td = dr + np.roll(dr, 1, axis=1) + (ul + np.roll(ul, -1, axis=0))
        maparray[h:mapsize:stepsize, 0:mapsize:stepsize] = td / 4 + wibble * np.random.uniform(-wibble, wibble, td.shape)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


# --------------------------------------------------------------------------- inputs


def synthetic(h, w, seed, texture=4.0):
    """A deterministic 'natural-ish' RGB image: smooth colour gradients, a few shapes with hard
    edges, fine stripes and mild texture noise (exercises blurs, JPEG and the noises)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([
        0.55 + 0.35 * np.sin(2.1 * xx + 1.3 * yy + rng.uniform(0, 6)),
        0.45 + 0.30 * np.cos(1.7 * yy - 0.9 * xx + rng.uniform(0, 6)),
        0.40 + 0.25 * np.sin(2.9 * (xx + yy) + rng.uniform(0, 6)),
    ], axis=-1)
    img = Image.fromarray(to_u8(np.clip(base, 0, 1) * 255))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.uniform(-0.1, 0.8, 2) * (w, h)
        x1, y1 = (x0, y0) + rng.uniform(0.15, 0.5, 2) * (w, h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(img).astype(np.float64)
    # fine stripes in one corner region, texture everywhere
    stripes = (np.sin(xx * w * 1.6) > 0) & (yy > 0.55) & (xx < 0.45)
    arr[stripes] = arr[stripes] * 0.5 + 100
    arr += rng.normal(0, texture, arr.shape)
    return to_u8(np.clip(arr, 0, 255))


# name -> (height, width, seed, severities with stored outputs, corruptions with stored outputs)
NOISE_FAMILY = ["gaussian_noise", "shot_noise", "impulse_noise"]
IMAGES = {
    "a": (32, 32, 11, [1, 2, 3, 4, 5], CORRUPTIONS),
    "b": (32, 32, 22, [1, 2, 3, 4, 5], [c for c in CORRUPTIONS if c not in NOISE_FAMILY]),
    "c": (64, 64, 33, [1, 3, 5], [c for c in CORRUPTIONS if c not in NOISE_FAMILY]),
}
# 224x224 (ImageNet table): summary statistics only, see `stats_224`.
BIG = ("d", 224, 224, 44)  # less texture noise than the small ones: a smaller PNG
# Noise shared by all severities of an image (the same draws at every strength).
SHARED_NOISE = {"gaussian_noise", "impulse_noise"}


def diff_stats(clean, out):
    d = out.astype(np.float64) - clean.astype(np.float64)
    mse = float(np.mean(d * d))
    psnr = float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
    return {"mean": float(d.mean()), "std": float(d.std()), "psnr": psnr,
            "changed": float(np.mean(np.any(d != 0, axis=-1)))}


def stats_224(img, seed0):
    """For the 224 image: each corruption/severity on 4 numpy seeds; the statistics of each
    run, plus the replay streams where they are small (motion_blur angle, frost offsets)."""
    stats, streams = {}, {}
    for name in CORRUPTIONS:
        for sev in range(1, 6):
            runs = []
            for k in range(4):
                draws = Draws(rng=np.random.default_rng([seed0, CORRUPTIONS.index(name), sev, k]))
                out = corrupt(img, name, sev, draws)
                runs.append({s: round(v, 4) for s, v in diff_stats(img, out).items()})
                if k == 0 and name in ("motion_blur", "frost"):
                    streams[f"noise.d.{name}.{sev}"] = draws.stream()
            stats[f"{name}.{sev}"] = runs
    return stats, streams


def main():
    check_against_libraries()
    if OUT.exists():
        for p in OUT.iterdir():
            if p.name != "README.md":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    (OUT / "images").mkdir(parents=True, exist_ok=True)

    tensors = {}
    for key, (h, w, seed, severities, names) in IMAGES.items():
        img = synthetic(h, w, seed)
        Image.fromarray(img).save(OUT / "images" / f"{key}.png", optimize=True)
        for name in names:
            shared = None
            if name in SHARED_NOISE:
                d = Draws(rng=np.random.default_rng([seed, CORRUPTIONS.index(name)]))
                corrupt(img, name, 1, d)
                shared = d.stream()
                tensors[f"noise.{key}.{name}"] = shared
            for sev in severities:
                if shared is not None:
                    draws = Draws(replay=shared)
                else:
                    draws = Draws(rng=np.random.default_rng([seed, CORRUPTIONS.index(name), sev]))
                out = corrupt(img, name, sev, draws)
                tensors[f"out.{key}.{name}.{sev}"] = out
                if name == "jpeg_compression":  # Pillow's file too, to test the encoder alone
                    quality = params(name, sev, h, w)[0]
                    tensors[f"jpeg.{key}.{sev}"] = np.frombuffer(jpeg_bytes(img, quality), np.uint8)
                if shared is None and draws.record:
                    stream = draws.stream()
                    if name == "glass_blur":  # small integers: int8 halves the size
                        assert np.array_equal(stream.astype(np.int8), stream)
                        stream = stream.astype(np.int8)
                    tensors[f"noise.{key}.{name}.{sev}"] = stream

    key, h, w, seed = BIG
    big = synthetic(h, w, seed, texture=1.0)
    Image.fromarray(big).save(OUT / "images" / f"{key}.png", optimize=True)
    stats, streams = stats_224(big, seed)
    tensors.update(streams)
    save_file(dict(sorted(tensors.items())), str(OUT / "reference.safetensors"),
              metadata={"generator": "scripts/make_shift_fixtures.py"})
    with open(OUT / "stats_224.json", "w") as f:
        json.dump({"image": "images/d.png", "runs": stats}, f, indent=0, sort_keys=True)
        f.write("\n")
    with open(OUT / "versions.json", "w") as f:
        json.dump({"numpy": np.__version__, "scipy": scipy.__version__, "scikit-image": skimage.__version__,
                   "pillow": PIL.__version__}, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(tensors)} tensors, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
