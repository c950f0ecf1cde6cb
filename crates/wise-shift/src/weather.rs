//! The weather family: snow (flakes streaked by wind over a brightened scene), frost (ice on
//! the lens) and fog (a plasma-fractal haze).

use image::RgbImage;

use crate::array::{clipped_zoom, to_image, trunc_u8, unit_f32, unit_f64, unit_to_image, Grid};
use crate::blur::motion_blur_u8;
use crate::params::{Snow, FROST_CELL};
use crate::rng::Noise;

/// Snow. A normal field (one flake candidate per pixel) is zoomed so flakes are bigger,
/// thresholded so only some remain, streaked by a motion blur at an angle in
/// [-135°, -45°), and added twice (once rotated 180°) to the image, which is first pulled
/// towards a brightened grey version of itself (the light of a snowy day).
///
/// Draws: one normal per pixel (row-major), then one uniform (the angle).
pub fn snow(img: &RgbImage, p: &Snow, noise: &mut dyn Noise) -> RgbImage {
    let x = unit_f32(img);
    let (h, w) = (x.h, x.w);
    let mut layer = Grid { h, w, c: 1, data: (0..h * w).map(|_| p.mean + p.std * noise.normal()).collect() };
    layer = clipped_zoom(&layer, p.zoom);
    for v in &mut layer.data {
        if *v < p.threshold {
            *v = 0.0;
        }
    }
    let flakes = layer.map(|v| trunc_u8(v.clamp(0.0, 1.0) * 255.0));
    let angle = -135.0 + (-45.0 - -135.0) * noise.uniform();
    let streaks = motion_blur_u8(&flakes, p.radius, p.sigma, angle).map(|v| f64::from(v) / 255.0);

    let blend = p.blend as f32;
    let rest = (1.0 - p.blend) as f32;
    let mut out = Grid::filled(h, w, 3, 0u8);
    for y in 0..h {
        for xx in 0..w {
            // cv2.cvtColor(RGB2GRAY) in float32
            let gray = (x.at(y, xx, 0) * 0.299f32 + x.at(y, xx, 1) * 0.587f32) + x.at(y, xx, 2) * 0.114f32;
            let bright = gray * 1.5f32 + 0.5f32;
            let flake = streaks.at(y, xx, 0);
            let flipped = streaks.at(h - 1 - y, w - 1 - xx, 0);
            for ch in 0..3 {
                let v = x.at(y, xx, ch);
                let lit = blend * v + rest * v.max(bright);
                let s = f64::from(lit) + flake + flipped;
                let i = out.idx(y, xx, ch);
                out.data[i] = trunc_u8(s.clamp(0.0, 1.0) * 255.0);
            }
        }
    }
    to_image(&out)
}

/// Frost: `a·x + b·texture`, the texture a random window of one of five ice textures.
///
/// The published frost blends in photographs (frost1.png … frost6.jpg) that are not
/// available here; [`frost_texture`] synthesises a stand-in, so frost results are not
/// comparable with the published CIFAR-10-C/ImageNet-C frost numbers. Draws: the texture
/// index (integer in [0, 5), as published: the sixth photograph was never drawn), the
/// window's top row in [0, h) and its left column in [0, w).
pub fn frost(img: &RgbImage, (a, b): (f64, f64), noise: &mut dyn Noise) -> RgbImage {
    let (w, h) = img.dimensions();
    let index = noise.integer(0, 5).clamp(0, 4) as usize;
    let top = noise.integer(0, i64::from(h)).max(0) as u64;
    let left = noise.integer(0, i64::from(w)).max(0) as u64;
    let texture = frost_texture(index, top, left, h as usize, w as usize, f64::from(h.min(w)));
    let x = img.as_raw();
    let data = x
        .iter()
        .zip(&texture.data)
        .map(|(&v, &t)| trunc_u8((a * f64::from(v) + b * f64::from(t)).clamp(0.0, 255.0)))
        .collect();
    to_image(&Grid { h: h as usize, w: w as usize, c: 3, data })
}

/// Blue-white tint of the ice.
const FROST_TINT: [f64; 3] = [0.80, 0.90, 1.0];

/// An `h × w` window at (`top`, `left`) of procedural ice texture `index` (0..5) for an
/// image whose short side is `side`: two layers of Voronoi crystals (cells of
/// `FROST_CELL[index]·side` pixels and a third of that), bright along the crystal edges,
/// each crystal with its own brightness, fading towards crystal centres; tinted blue-white.
///
/// Computed with + - * / sqrt floor in float64 and a 32-bit integer hash only, so the
/// fixture script (numpy) produces the same bytes. The texture is defined on the whole
/// plane; the window offset plays the part of the published random crop.
pub fn frost_texture(index: usize, top: u64, left: u64, h: usize, w: usize, side: f64) -> Grid<u8> {
    let index = index.min(FROST_CELL.len() - 1);
    let cell = side * FROST_CELL[index];
    let salt = 2 * index as u32;
    let mut out = Grid::filled(h, w, 3, 0u8);
    for y in 0..h {
        let row = (top + y as u64) as f64;
        for x in 0..w {
            let col = (left + x as u64) as f64;
            let (f1, f2, tone) = voronoi(row, col, cell, salt + 1);
            let (g1, g2, _) = voronoi(row, col, cell / 3.0, salt + 2);
            let edge = (1.0 - (f2 - f1) / 0.12).max(0.0);
            let grain = (1.0 - (g2 - g1) / 0.2).max(0.0);
            let v = 0.25 + 0.35 * tone + 0.5 * edge + 0.3 * grain - 0.15 * f1;
            let v = v.clamp(0.0, 1.0);
            for (ch, t) in FROST_TINT.iter().enumerate() {
                let i = out.idx(y, x, ch);
                out.data[i] = (v * t * 255.0 + 0.5).floor() as u8;
            }
        }
    }
    out
}

/// Distances (in cells) from pixel (`row`, `col`) to the nearest and second-nearest feature
/// point of a jittered grid of `cell`-pixel cells, and the nearest cell's tone in [0, 1).
fn voronoi(row: f64, col: f64, cell: f64, salt: u32) -> (f64, f64, f64) {
    let ys = (row + 0.5) / cell;
    let xs = (col + 0.5) / cell;
    let (cy, cx) = (ys.floor() as i64, xs.floor() as i64);
    let (mut best1, mut best2, mut tone) = (f64::INFINITY, f64::INFINITY, 0.0);
    for dy in -1..=1 {
        for dx in -1..=1 {
            let (gy, gx) = (cy + dy, cx + dx);
            let py = gy as f64 + hash_unit(salt, gy, gx, 0);
            let px = gx as f64 + hash_unit(salt, gy, gx, 1);
            let a = ys - py;
            let b = xs - px;
            let d = a * a + b * b;
            if d < best1 {
                best2 = best1;
                tone = hash_unit(salt, gy, gx, 2);
                best1 = d;
            } else {
                best2 = best2.min(d);
            }
        }
    }
    (best1.sqrt(), best2.sqrt(), tone)
}

/// A 32-bit hash of (salt, cell, slot) mapped to [0, 1): multiply-add mixing, then the
/// "lowbias32" finaliser (two xorshift-multiply rounds).
fn hash_unit(salt: u32, gy: i64, gx: i64, slot: u32) -> f64 {
    let mut x = salt.wrapping_mul(0x9E37_79B1).wrapping_add((gy as u32).wrapping_mul(0x85EB_CA77));
    x = x.wrapping_add((gx as u32).wrapping_mul(0xC2B2_AE3D)).wrapping_add(slot.wrapping_mul(0x27D4_EB2F));
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    f64::from(x) / 4_294_967_296.0
}

/// Fog: a plasma fractal (diamond-square height map, rough at high `decay`) of strength
/// `c` added to every channel, then the range pulled back as published
/// (`x·max / (max + c)`). The map is the next power of two at least as large as the image
/// (32 for CIFAR, 256 for 224-pixel ImageNet crops), cropped to it.
///
/// Draws: the fractal's uniforms, level by level (squares, then the two diamond sets, each
/// row-major).
pub fn fog(img: &RgbImage, (c, decay): (f64, f64), noise: &mut dyn Noise) -> RgbImage {
    let mut x = unit_f64(img);
    let mapsize = x.h.max(x.w).next_power_of_two().max(2);
    let plasma = plasma_fractal(mapsize, decay, noise);
    let max_val = x.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for y in 0..x.h {
        for xx in 0..x.w {
            let p = plasma[y * mapsize + xx];
            for ch in 0..3 {
                let i = x.idx(y, xx, ch);
                x.data[i] += c * p;
            }
        }
    }
    unit_to_image(&x.map(|v| v * max_val / (max_val + c)))
}

/// The published diamond-square fractal on a `mapsize × mapsize` torus (numpy `roll`
/// wraps), normalised to [0, 1]. Row-major.
pub fn plasma_fractal(mapsize: usize, decay: f64, noise: &mut dyn Noise) -> Vec<f64> {
    let m_idx = |y: usize, x: usize| y * mapsize + x;
    let mut m = vec![0.0f64; mapsize * mapsize];
    let mut step = mapsize;
    let mut wibble = 100.0f64;
    while step >= 2 {
        let half = step / 2;
        let n = mapsize / step;
        let wibbled = |a: f64, noise: &mut dyn Noise| {
            let (low, high) = (-wibble, wibble);
            a / 4.0 + wibble * (low + (high - low) * noise.uniform())
        };
        // squares: the centre of each square of corners
        let corner = |m: &[f64], i: usize, j: usize| m[m_idx((i % n) * step, (j % n) * step)];
        let mut sq = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                sq[i * n + j] = corner(&m, i, j) + corner(&m, i + 1, j);
            }
        }
        let first = sq.clone();
        for i in 0..n {
            for j in 0..n {
                sq[i * n + j] = first[i * n + j] + first[i * n + (j + 1) % n];
            }
        }
        for i in 0..n {
            for j in 0..n {
                m[m_idx(half + i * step, half + j * step)] = wibbled(sq[i * n + j], noise);
            }
        }
        // diamonds: the midpoints of the square edges
        let dr = |m: &[f64], i: usize, j: usize| m[m_idx(half + (i % n) * step, half + (j % n) * step)];
        let prev = |i: usize| (i + n - 1) % n;
        let mut lt = vec![0.0; n * n];
        let mut td = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                lt[i * n + j] =
                    (dr(&m, i, j) + dr(&m, prev(i), j)) + (corner(&m, i, j) + corner(&m, i, j + 1));
                td[i * n + j] =
                    (dr(&m, i, j) + dr(&m, i, prev(j))) + (corner(&m, i, j) + corner(&m, i + 1, j));
            }
        }
        for i in 0..n {
            for j in 0..n {
                m[m_idx(i * step, half + j * step)] = wibbled(lt[i * n + j], noise);
            }
        }
        for i in 0..n {
            for j in 0..n {
                m[m_idx(half + i * step, j * step)] = wibbled(td[i * n + j], noise);
            }
        }
        step /= 2;
        wibble /= decay;
    }
    let min = m.iter().copied().fold(f64::INFINITY, f64::min);
    for v in &mut m {
        *v -= min;
    }
    let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max > 0.0 {
        for v in &mut m {
            *v /= max;
        }
    }
    m
}
