//! The blur family: an out-of-focus lens (defocus), frosted glass (glass), camera shake
//! (motion) and a fast zoom during exposure (zoom).

use image::RgbImage;

use crate::array::{
    clipped_zoom, correlate2d_mirror, gaussian_filter, numpy_arange, opencv_gaussian_blur_f32, to_image,
    trunc_u8, unit32_to_image, unit_f64, unit_to_image, Border, Grid,
};
use crate::rng::Noise;

/// Convolution with an anti-aliased disk of `radius` (the lens's circle of confusion).
/// Deterministic.
pub fn defocus_blur(img: &RgbImage, radius: f64, alias_blur: f64) -> RgbImage {
    let (kernel, n) = disk(radius, alias_blur);
    let kernel: Vec<f64> = kernel.iter().map(|&v| f64::from(v)).collect();
    unit_to_image(&correlate2d_mirror(&unit_f64(img), &kernel, n))
}

/// The published `disk`: the pixels within `radius` of the centre of a 17×17 grid (or
/// `±radius` past 8 pixels), normalised, then a 3×3 (5×5 past 8 pixels) Gaussian blur of
/// sigma `alias_blur` to soften its staircase edge. float32, as OpenCV computes it.
pub fn disk(radius: f64, alias_blur: f64) -> (Vec<f32>, usize) {
    let (coords, ksize) = if radius <= 8.0 {
        ((-8..=8).map(f64::from).collect::<Vec<_>>(), 3)
    } else {
        (numpy_arange(-radius, radius + 1.0, 1.0), 5)
    };
    let n = coords.len();
    let r2 = radius * radius;
    let mut aliased: Vec<f32> = Vec::with_capacity(n * n);
    for &y in &coords {
        for &x in &coords {
            aliased.push(if x * x + y * y <= r2 { 1.0 } else { 0.0 });
        }
    }
    let count: f32 = aliased.iter().sum();
    if count > 0.0 {
        for v in &mut aliased {
            *v /= count;
        }
    }
    (opencv_gaussian_blur_f32(&aliased, n, alias_blur, ksize), n)
}

/// Frosted glass: Gaussian blur (sigma), then `iterations` sweeps from the bottom-right
/// corner in which each pixel takes the value of a random neighbour up to `delta` away,
/// then the blur again.
///
/// The published code writes the sweep as a swap, `x[h, w], x[h', w'] = x[h', w'], x[h, w]`;
/// with numpy views that is a copy (`x[h', w']` keeps its value), and the datasets were made
/// that way, so it is a copy here too. Draws per pixel of a sweep: `dx`, then `dy`, each an
/// integer in `[-delta, delta)`.
pub fn glass_blur(
    img: &RgbImage,
    sigma: f64,
    delta: i64,
    iterations: u32,
    noise: &mut dyn Noise,
) -> RgbImage {
    let blurred = gaussian_filter(&unit_f64(img), sigma, 4.0, Border::Nearest);
    let mut x: Grid<u8> = blurred.map(|v| trunc_u8(v * 255.0));
    let (h, w) = (x.h as i64, x.w as i64);
    for _ in 0..iterations {
        for hh in (delta + 1..=h - delta).rev() {
            for ww in (delta + 1..=w - delta).rev() {
                let dx = noise.integer(-delta, delta);
                let dy = noise.integer(-delta, delta);
                let src_y = Border::Nearest.index(hh.saturating_add(dy), x.h);
                let src_x = Border::Nearest.index(ww.saturating_add(dx), x.w);
                for ch in 0..3 {
                    let v = x.at(src_y, src_x, ch);
                    let i = x.idx(hh as usize, ww as usize, ch);
                    x.data[i] = v;
                }
            }
        }
    }
    let x = x.map(|v| f64::from(v) / 255.0);
    unit_to_image(&gaussian_filter(&x, sigma, 4.0, Border::Nearest))
}

/// Camera shake along a random angle in [-45°, 45°). Draws: one uniform (the angle).
pub fn motion_blur(img: &RgbImage, radius: f64, sigma: f64, noise: &mut dyn Noise) -> RgbImage {
    let angle = -45.0 + (45.0 - -45.0) * noise.uniform();
    let (w, h) = img.dimensions();
    let grid = Grid { h: h as usize, w: w as usize, c: 3, data: img.as_raw().clone() };
    to_image(&motion_blur_u8(&grid, radius, sigma, angle))
}

/// ImageMagick's `MotionBlurImage` (which the published code calls through Wand) on 8-bit
/// values: a one-sided Gaussian of `2·ceil(radius) + 1` taps, tap `i` at offset
/// `(ceil(i·cos θ - 0.5), ceil(i·sin θ - 0.5))` pixels, pixels past the border repeating the
/// edge, the sum rounded to 8 bits as the PNG round trip does.
pub fn motion_blur_u8(g: &Grid<u8>, radius: f64, sigma: f64, angle: f64) -> Grid<u8> {
    let (kernel, offsets) = motion_kernel(radius, sigma, angle);
    let mut out = g.clone();
    for y in 0..g.h {
        for x in 0..g.w {
            for ch in 0..g.c {
                let mut acc = 0.0;
                for (k, &(dx, dy)) in kernel.iter().zip(&offsets) {
                    let yy = Border::Nearest.index(y as i64 + dy, g.h);
                    let xx = Border::Nearest.index(x as i64 + dx, g.w);
                    acc += k * f64::from(g.at(yy, xx, ch));
                }
                let i = out.idx(y, x, ch);
                out.data[i] = (acc.clamp(0.0, 255.0) + 0.5).floor() as u8;
            }
        }
    }
    out
}

/// Weights and `(dx, dy)` offsets of ImageMagick's motion-blur kernel.
pub fn motion_kernel(radius: f64, sigma: f64, angle: f64) -> (Vec<f64>, Vec<(i64, i64)>) {
    let width = (2.0 * radius.max(0.0).ceil() + 1.0) as usize;
    let sigma = sigma.max(1e-12);
    let raw: Vec<f64> = (0..width)
        .map(|i| {
            let i = i as f64;
            (-(i * i) / (2.0 * sigma * sigma)).exp() / ((2.0 * std::f64::consts::PI).sqrt() * sigma)
        })
        .collect();
    let mut total = 0.0;
    for v in &raw {
        total += v;
    }
    let kernel = raw.iter().map(|v| v / total).collect();
    let theta = std::f64::consts::PI * angle / 180.0;
    let (px, py) = (width as f64 * theta.sin(), width as f64 * theta.cos());
    let hyp = px.hypot(py);
    let offsets = (0..width)
        .map(|i| {
            let i = i as f64;
            ((i * py / hyp - 0.5).ceil() as i64, (i * px / hyp - 0.5).ceil() as i64)
        })
        .collect();
    (kernel, offsets)
}

/// The mean of the image and its zooms by each factor about the centre. Deterministic.
pub fn zoom_blur(img: &RgbImage, factors: &[f64]) -> RgbImage {
    let x: Grid<f32> = unit_f64(img).map(|v| v as f32);
    let mut out = Grid::filled(x.h, x.w, x.c, 0.0f32);
    for &z in factors {
        let layer = clipped_zoom(&x, z);
        for (o, v) in out.data.iter_mut().zip(&layer.data) {
            *o += v;
        }
    }
    let n = (factors.len() + 1) as f32;
    let mean = Grid {
        h: x.h,
        w: x.w,
        c: x.c,
        data: x.data.iter().zip(&out.data).map(|(a, b)| (a + b) / n).collect(),
    };
    unit32_to_image(&mean)
}
