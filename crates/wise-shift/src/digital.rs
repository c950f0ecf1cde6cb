//! The digital family: exposure (brightness), contrast, elastic warping, pixelation and
//! JPEG compression artefacts.

use image::RgbImage;

use crate::array::{
    gaussian_filter, map_coordinate_reflect, pillow_box_resize, unit32_to_image, unit_f32, unit_f64,
    unit_to_image, Border, Grid,
};
use crate::rng::Noise;
use crate::{Error, Result};

/// `c` added to the V channel of HSV (scikit-image's `rgb2hsv` / `hsv2rgb`). Deterministic.
pub fn brightness(img: &RgbImage, c: f64) -> RgbImage {
    let x = unit_f64(img);
    let mut out = x.clone();
    for px in out.data.chunks_exact_mut(3) {
        let (h, s, v) = rgb_to_hsv(px[0], px[1], px[2]);
        let (r, g, b) = hsv_to_rgb(h, s, (v + c).clamp(0.0, 1.0));
        px.copy_from_slice(&[r, g, b]);
    }
    unit_to_image(&out)
}

/// scikit-image's `rgb2hsv` for one pixel: when several channels hold the maximum, blue's
/// formula wins over green's over red's (later assignments overwrite), and `h` is
/// `(h / 6) mod 1` with numpy's floored modulo.
fn rgb_to_hsv(r: f64, g: f64, b: f64) -> (f64, f64, f64) {
    let v = r.max(g).max(b);
    let delta = v - r.min(g).min(b);
    if delta == 0.0 {
        return (0.0, 0.0, v);
    }
    let s = delta / v;
    let mut h = 0.0;
    if r == v {
        h = (g - b) / delta;
    }
    if g == v {
        h = 2.0 + (b - r) / delta;
    }
    if b == v {
        h = 4.0 + (r - g) / delta;
    }
    let mut h = (h / 6.0) % 1.0;
    if h < 0.0 {
        h += 1.0;
    }
    (h, s, v)
}

/// scikit-image's `hsv2rgb` for one pixel.
fn hsv_to_rgb(h: f64, s: f64, v: f64) -> (f64, f64, f64) {
    let hi = (h * 6.0).floor();
    let f = h * 6.0 - hi;
    let p = v * (1.0 - s);
    let q = v * (1.0 - f * s);
    let t = v * (1.0 - (1.0 - f) * s);
    match (hi as u8) % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Each channel pulled towards its mean by the factor `c`. Deterministic.
pub fn contrast(img: &RgbImage, c: f64) -> RgbImage {
    let x = unit_f64(img);
    let mut sums = [0.0f64; 3];
    for px in x.data.chunks_exact(3) {
        for ch in 0..3 {
            sums[ch] += px[ch];
        }
    }
    let n = (x.h * x.w) as f64;
    let means = sums.map(|s| s / n);
    let mut out = x.clone();
    for px in out.data.chunks_exact_mut(3) {
        for ch in 0..3 {
            px[ch] = (px[ch] - means[ch]) * c + means[ch];
        }
    }
    unit_to_image(&out)
}

/// Elastic transform: a random affine warp (three anchor points moved by up to `affine`
/// pixels), then a smooth random displacement field (uniform noise Gaussian-smoothed with
/// `sigma`, scaled by `alpha`), read with bilinear interpolation and mirrored borders.
///
/// Draws: 6 uniforms (the anchors' moves, x then y per point), `h·w` uniforms (the x
/// field), `h·w` uniforms (the y field), row-major. `cv2.warpAffine` is done with exact
/// bilinear weights (OpenCV rounds the source position to 1/32 pixel).
pub fn elastic_transform(
    img: &RgbImage,
    (alpha, sigma, affine): (f64, f64, f64),
    noise: &mut dyn Noise,
) -> RgbImage {
    let image = unit_f32(img);
    let (h, w) = (image.h, image.w);
    // anchors, as the published code builds them (with (h, w) used as (x, y))
    let center = [(h as f32 / 2.0).floor(), (w as f32 / 2.0).floor()];
    let square = (h.min(w) / 3) as f32;
    let src = [
        [center[0] + square, center[1] + square],
        [center[0] + square, center[1] - square],
        [center[0] - square, center[1] - square],
    ];
    let mut dst = src;
    for point in &mut dst {
        for v in point.iter_mut() {
            let moved = (-affine + (affine - -affine) * noise.uniform()) as f32;
            *v += moved;
        }
    }
    let warped = match affine_from_points(&src, &dst) {
        Some(m) => warp_affine(&image, &m),
        None => image.clone(), // degenerate anchors (images under 3 pixels): no affine part
    };

    let field = |noise: &mut dyn Noise| -> Vec<f32> {
        let u =
            Grid { h, w, c: 1, data: (0..h * w).map(|_| -1.0 + (1.0 - -1.0) * noise.uniform()).collect() };
        gaussian_filter(&u, sigma, 3.0, Border::Reflect).data.iter().map(|v| (v * alpha) as f32).collect()
    };
    let dx = field(noise);
    let dy = field(noise);

    let mut out = Grid::filled(h, w, 3, 0.0f32);
    for y in 0..h {
        for x in 0..w {
            let k = y * w + x;
            let (sy, sx) = (y as f64 + f64::from(dy[k]), x as f64 + f64::from(dx[k]));
            for ch in 0..3 {
                let i = out.idx(y, x, ch);
                out.data[i] = map_coordinate_reflect(&warped, sy, sx, ch) as f32;
            }
        }
    }
    unit32_to_image(&out)
}

/// The 2×3 matrix taking three `src` points (x, y) to `dst` (`cv2.getAffineTransform`), or
/// `None` when the source points are collinear.
fn affine_from_points(src: &[[f32; 2]; 3], dst: &[[f32; 2]; 3]) -> Option<[[f64; 3]; 2]> {
    let a: [[f64; 3]; 3] = src.map(|[x, y]| [f64::from(x), f64::from(y), 1.0]);
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&a);
    if d == 0.0 || !d.is_finite() {
        return None;
    }
    let mut m = [[0.0; 3]; 2];
    for (row, out) in m.iter_mut().enumerate() {
        let b: [f64; 3] = dst.map(|p| f64::from(p[row]));
        for (col, coef) in out.iter_mut().enumerate() {
            // Cramer's rule: replace column `col` of `a` by `b`
            let mut ac = a;
            for (r, line) in ac.iter_mut().enumerate() {
                line[col] = b[r];
            }
            *coef = det(&ac) / d;
        }
    }
    Some(m)
}

/// `cv2.warpAffine(image, m, (w, h), borderMode=BORDER_REFLECT_101)`: each output pixel
/// reads the source at the inverse transform of its position, bilinearly.
fn warp_affine(g: &Grid<f32>, m: &[[f64; 3]; 2]) -> Grid<f32> {
    let d = m[0][0] * m[1][1] - m[0][1] * m[1][0];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22) = (m[1][1] * d, m[0][0] * d);
    let (a12, a21) = (-m[0][1] * d, -m[1][0] * d);
    let b1 = -a11 * m[0][2] - a12 * m[1][2];
    let b2 = -a21 * m[0][2] - a22 * m[1][2];
    let mut out = g.clone();
    for y in 0..g.h {
        for x in 0..g.w {
            let (xf, yf) = (x as f64, y as f64);
            let sx = a11 * xf + a12 * yf + b1;
            let sy = a21 * xf + a22 * yf + b2;
            let (x0, y0) = (sx.floor(), sy.floor());
            let (tx, ty) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let (c0, c1) = (Border::Mirror.index(x0, g.w), Border::Mirror.index(x0.saturating_add(1), g.w));
            let (r0, r1) = (Border::Mirror.index(y0, g.h), Border::Mirror.index(y0.saturating_add(1), g.h));
            for ch in 0..g.c {
                let p = |r: usize, c: usize| f64::from(g.at(r, c, ch));
                let top = p(r0, c0) * (1.0 - tx) + p(r0, c1) * tx;
                let bottom = p(r1, c0) * (1.0 - tx) + p(r1, c1) * tx;
                let i = out.idx(y, x, ch);
                out.data[i] = (top * (1.0 - ty) + bottom * ty) as f32;
            }
        }
    }
    out
}

/// Down to `int(side·c)` pixels and back up, both with Pillow's BOX filter (area average).
/// Deterministic.
pub fn pixelate(img: &RgbImage, c: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let small_w = ((f64::from(w) * c) as u32).max(1);
    let small_h = ((f64::from(h) * c) as u32).max(1);
    pillow_box_resize(&pillow_box_resize(img, small_w, small_h), w, h)
}

/// A JPEG round trip at `quality`, as Pillow's `save(quality=q)` (libjpeg-turbo's defaults)
/// and decode do it.
///
/// Encoded with the `jpeg-encoder` crate: it writes what libjpeg writes by default (the IJG
/// tables scaled by quality the libjpeg way, libjpeg's integer DCT and rounding, 4:2:0
/// chroma, which Pillow uses at every quality); `image`'s own encoder keeps full-resolution
/// chroma (4:4:4), which would leave out the colour bleeding that is a large part of the
/// artefact. One step is done here: jpeg-encoder subsamples chroma by taking every other
/// sample where libjpeg averages 2×2 blocks, so the image is handed over as YCbCr with
/// libjpeg's colour conversion and 2×2 averages already in place ([`libjpeg_ycbcr_420`]).
/// Decoded with `image` (zune-jpeg), which differs from libjpeg-turbo's decoder by rounding
/// (a few levels). Deterministic.
pub fn jpeg_compression(img: &RgbImage, quality: u8) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(Error::Config(format!("jpeg_compression: {w}×{h} is larger than JPEG's 65535×65535")));
    };
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, quality);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    encoder
        .encode(&libjpeg_ycbcr_420(img), w16, h16, jpeg_encoder::ColorType::Ycbcr)
        .map_err(|e| Error::Config(format!("jpeg_compression: encoding failed: {e}")))?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
        .map_err(|e| Error::Config(format!("jpeg_compression: decoding failed: {e}")))?;
    let out = decoded.to_rgb8();
    if out.dimensions() != (w, h) {
        return Err(Error::Config("jpeg_compression: the decoded image has another size".to_string()));
    }
    Ok(out)
}

/// libjpeg's RGB → YCbCr (`jccolor.c`): 16-bit fixed point, Y rounded, Cb and Cr rounded
/// with a "0.5 - ε" fudge.
fn libjpeg_ycbcr([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    const HALF: i32 = 1 << 15;
    const OFFSET: i32 = 128 << 16;
    let y = (19595 * r + 38470 * g + 7471 * b + HALF) >> 16;
    let cb = (-11059 * r - 21709 * g + 32768 * b + OFFSET + HALF - 1) >> 16;
    let cr = (32768 * r - 27439 * g - 5329 * b + OFFSET + HALF - 1) >> 16;
    [y, cb, cr].map(|v| v.clamp(0, 255) as u8)
}

/// Interleaved Y, Cb, Cr at full resolution, where each 2×2 block holds its chroma average
/// computed as libjpeg's `h2v2_downsample` does (`(a + b + c + d + bias) >> 2`, the bias
/// alternating 1, 2 along a row; odd edges repeat the last pixel), so that taking any one
/// sample per block gives libjpeg's subsampled chroma.
pub fn libjpeg_ycbcr_420(img: &RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let ycc: Vec<[u8; 3]> = img.pixels().map(|p| libjpeg_ycbcr(p.0)).collect();
    let at = |y: usize, x: usize| ycc[y.min(h - 1) * w + x.min(w - 1)];
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (y0, x0) = (y & !1, x & !1);
            let bias = if (x0 / 2) % 2 == 0 { 1 } else { 2 };
            let avg = |ch: usize| {
                let sum: u32 = [at(y0, x0), at(y0, x0 + 1), at(y0 + 1, x0), at(y0 + 1, x0 + 1)]
                    .iter()
                    .map(|p| u32::from(p[ch]))
                    .sum();
                ((sum + bias) >> 2) as u8
            };
            out.extend_from_slice(&[ycc[y * w + x][0], avg(1), avg(2)]);
        }
    }
    out
}
