//! The small numeric toolkit the corruptions are written in: channel-last float grids, the
//! border rules, and the few filters of numpy/scipy/OpenCV/Pillow that the published
//! definitions call, each written to give the same numbers as the library it stands for
//! (same formula, same order of operations where it changes the last bit, same precision).
//!
//! Own small kernels rather than `imageproc`: the published results depend on details that
//! a general-purpose blur does not promise (scipy's kernel radius `int(truncate·σ + 0.5)`
//! and its border modes, Pillow's 22-bit fixed-point resampling weights), and they are a few
//! dozen lines each.

use image::RgbImage;

/// A `h × w × c` grid, channels last (numpy's `(h, w, c)` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid<T> {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Grid<T> {
    pub fn filled(h: usize, w: usize, c: usize, v: T) -> Self {
        Self { h, w, c, data: vec![v; h * w * c] }
    }

    #[inline]
    pub fn idx(&self, y: usize, x: usize, ch: usize) -> usize {
        (y * self.w + x) * self.c + ch
    }

    #[inline]
    pub fn at(&self, y: usize, x: usize, ch: usize) -> T {
        self.data[self.idx(y, x, ch)]
    }

    pub fn map<U>(&self, f: impl Fn(T) -> U) -> Grid<U> {
        Grid { h: self.h, w: self.w, c: self.c, data: self.data.iter().map(|&v| f(v)).collect() }
    }

    /// Rows `top..top + h`, columns `left..left + w` (clamped to the grid).
    pub fn crop(&self, top: usize, left: usize, h: usize, w: usize) -> Self {
        let h = h.min(self.h.saturating_sub(top));
        let w = w.min(self.w.saturating_sub(left));
        let mut data = Vec::with_capacity(h * w * self.c);
        for y in top..top + h {
            let start = self.idx(y, left, 0);
            data.extend_from_slice(&self.data[start..start + w * self.c]);
        }
        Self { h, w, c: self.c, data }
    }
}

/// `np.array(img) / 255.`: float64 in [0, 1].
pub fn unit_f64(img: &RgbImage) -> Grid<f64> {
    let (w, h) = img.dimensions();
    Grid {
        h: h as usize,
        w: w as usize,
        c: 3,
        data: img.as_raw().iter().map(|&v| f64::from(v) / 255.0).collect(),
    }
}

/// `np.array(img, dtype=np.float32) / 255.`: float32 division.
pub fn unit_f32(img: &RgbImage) -> Grid<f32> {
    let (w, h) = img.dimensions();
    Grid {
        h: h as usize,
        w: w as usize,
        c: 3,
        data: img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
    }
}

/// `np.uint8(v)` for values already in [0, 255]: truncation towards zero, as the published
/// scripts convert before saving (NaN becomes 0).
#[inline]
pub fn trunc_u8(v: f64) -> u8 {
    v as u8
}

/// A 3-channel grid of bytes as an image.
pub fn to_image(g: &Grid<u8>) -> RgbImage {
    debug_assert_eq!(g.c, 3);
    RgbImage::from_raw(g.w as u32, g.h as u32, g.data.clone()).unwrap_or_else(|| RgbImage::new(0, 0))
}

/// `np.clip(v, 0, 1) * 255` then `np.uint8`, for float64 results.
pub fn unit_to_image(g: &Grid<f64>) -> RgbImage {
    to_image(&g.map(|v| trunc_u8(v.clamp(0.0, 1.0) * 255.0)))
}

/// The same for float32 results: the clip and the `* 255` happen in float32, as in numpy.
pub fn unit32_to_image(g: &Grid<f32>) -> RgbImage {
    to_image(&g.map(|v| trunc_u8(f64::from(v.clamp(0.0, 1.0) * 255.0))))
}

// --------------------------------------------------------------------------- borders

/// How an index outside `0..n` is brought back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Border {
    /// `d c b | a b c d | c b a` (scipy 'mirror', OpenCV BORDER_REFLECT_101).
    Mirror,
    /// `b a | a b c d | d c` (scipy 'reflect', half-sample symmetric).
    Reflect,
    /// `a a | a b c d | d d` (scipy 'nearest', OpenCV BORDER_REPLICATE, ImageMagick 'edge').
    Nearest,
}

impl Border {
    /// The index in `0..n` that stands for `i` (any `i`, any `n ≥ 1`).
    #[inline]
    pub fn index(self, i: i64, n: usize) -> usize {
        let n = n as i64;
        if (0..n).contains(&i) {
            return i as usize;
        }
        let r = match self {
            Border::Nearest => i.clamp(0, n - 1),
            Border::Mirror if n == 1 => 0,
            Border::Mirror => {
                let period = 2 * n - 2;
                let m = i.rem_euclid(period);
                if m < n {
                    m
                } else {
                    period - m
                }
            }
            Border::Reflect => {
                let period = 2 * n;
                let m = i.rem_euclid(period);
                if m < n {
                    m
                } else {
                    period - 1 - m
                }
            }
        };
        r as usize
    }
}

// --------------------------------------------------------------------------- sums

/// numpy's `arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values
/// `start + i·((start + step) - start)` (numpy steps by the rounded difference, and the
/// length can include the stop: `arange(1, 1.06, 0.01)` has 7 values).
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// numpy's pairwise summation of a contiguous float64 array (`np.sum`): blocks of 8
/// partial sums up to 128 elements, halves above. Used where a kernel is normalised by its
/// sum, so the normalised weights match scipy's to the last bit.
pub fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut s = -0.0;
        for &v in a {
            s += v;
        }
        return s;
    }
    if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i + 8 <= n {
            for (k, rk) in r.iter_mut().enumerate() {
                *rk += a[i + k];
            }
            i += 8;
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            s += a[i];
            i += 1;
        }
        return s;
    }
    let mut half = n / 2;
    half -= half % 8;
    numpy_sum(&a[..half]) + numpy_sum(&a[half..])
}

// --------------------------------------------------------------------------- gaussian

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)`: `exp(-0.5 / σ² · x²)`, normalised by
/// its numpy sum. Returns taps `0..=radius` (the kernel is symmetric).
pub fn scipy_gaussian_kernel(sigma: f64, radius: usize) -> Vec<f64> {
    let sigma2 = sigma * sigma;
    let factor = -0.5 / sigma2;
    let r = radius as i64;
    let full: Vec<f64> = (-r..=r).map(|x| (factor * (x * x) as f64).exp()).collect();
    let total = numpy_sum(&full);
    full[radius..].iter().map(|v| v / total).collect()
}

/// scipy's `correlate1d` with a symmetric kernel (`half[0]` the centre tap, `half[j]` the
/// taps at ±j), computed as scipy does: `x[0]·w0 + Σ_{j = r..1} (x[-j] + x[j])·wj`.
fn correlate_line_symmetric(line: &[f64], half: &[f64], border: Border, out: &mut [f64]) {
    let n = line.len();
    let r = half.len() - 1;
    let tap = |i: i64| line[border.index(i, n)];
    for (x, o) in out.iter_mut().enumerate() {
        let xi = x as i64;
        let mut acc = line[x] * half[0];
        for j in (1..=r).rev() {
            let j64 = j as i64;
            acc += (tap(xi - j64) + tap(xi + j64)) * half[j];
        }
        *o = acc;
    }
}

/// `scipy.ndimage.gaussian_filter` of each channel (σ on rows and columns, 0 on channels):
/// rows axis first, then columns, float64 throughout. `truncate` sets the radius
/// `int(truncate·σ + 0.5)`; σ ≤ 1e-15 leaves the grid unchanged (scipy skips the axis).
pub fn gaussian_filter(g: &Grid<f64>, sigma: f64, truncate: f64, border: Border) -> Grid<f64> {
    if sigma <= 1e-15 {
        return g.clone();
    }
    let radius = (truncate * sigma + 0.5) as usize;
    let half = scipy_gaussian_kernel(sigma, radius);
    correlate_axis(&correlate_axis(g, 0, &half, border), 1, &half, border)
}

/// [`correlate_line_symmetric`] along `axis` (0: down each column, 1: along each row) of
/// every channel.
fn correlate_axis(g: &Grid<f64>, axis: usize, half: &[f64], border: Border) -> Grid<f64> {
    let (lines, len) = if axis == 0 { (g.w, g.h) } else { (g.h, g.w) };
    let index =
        |line: usize, k: usize, ch: usize| if axis == 0 { g.idx(k, line, ch) } else { g.idx(line, k, ch) };
    let mut out = g.clone();
    let mut res = vec![0.0; len];
    for ch in 0..g.c {
        for l in 0..lines {
            let line: Vec<f64> = (0..len).map(|k| g.data[index(l, k, ch)]).collect();
            correlate_line_symmetric(&line, half, border, &mut res);
            for (k, v) in res.iter().enumerate() {
                out.data[index(l, k, ch)] = *v;
            }
        }
    }
    out
}

/// OpenCV's `GaussianBlur(k, (ksize, ksize), σ)` of a square float32 kernel image: taps
/// `exp(-x² / 2σ²)` normalised in float64 and stored as float32 (`getGaussianKernel` for a
/// float32 image), a pass along rows then one along columns, BORDER_REFLECT_101, float32
/// between and after the passes.
pub fn opencv_gaussian_blur_f32(k: &[f32], n: usize, sigma: f64, ksize: usize) -> Vec<f32> {
    let r = (ksize / 2) as i64;
    let taps: Vec<f64> = (-r..=r)
        .map(|x| {
            let x = x as f64;
            (-0.5 / (sigma * sigma) * x * x).exp()
        })
        .collect();
    let mut total = 0.0;
    for t in &taps {
        total += t;
    }
    let scale = 1.0 / total;
    let half: Vec<f64> = taps[r as usize..].iter().map(|t| f64::from((t * scale) as f32)).collect();
    let input = Grid { h: n, w: n, c: 1, data: k.iter().map(|&v| f64::from(v)).collect() };
    // along rows (x), then along columns (y), each rounded to float32
    let pass1 = correlate_axis(&input, 1, &half, Border::Mirror).map(|v| f64::from(v as f32));
    correlate_axis(&pass1, 0, &half, Border::Mirror).data.iter().map(|&v| v as f32).collect()
}

/// `scipy.ndimage.correlate(plane, kernel, mode='mirror')` of each channel (= OpenCV's
/// `filter2D` with BORDER_REFLECT_101): kernel taps in row-major order.
pub fn correlate2d_mirror(g: &Grid<f64>, kernel: &[f64], kn: usize) -> Grid<f64> {
    let r = (kn / 2) as i64;
    let taps: Vec<(i64, i64, f64)> = (0..kn * kn)
        .filter(|&i| kernel[i] != 0.0)
        .map(|i| ((i / kn) as i64 - r, (i % kn) as i64 - r, kernel[i]))
        .collect();
    let mut out = g.clone();
    for y in 0..g.h {
        for x in 0..g.w {
            for ch in 0..g.c {
                let mut acc = 0.0;
                for &(dy, dx, wt) in &taps {
                    let yy = Border::Mirror.index(y as i64 + dy, g.h);
                    let xx = Border::Mirror.index(x as i64 + dx, g.w);
                    acc += g.at(yy, xx, ch) * wt;
                }
                let i = out.idx(y, x, ch);
                out.data[i] = acc;
            }
        }
    }
    out
}

// --------------------------------------------------------------------------- interpolation

/// Taps and weights of scipy's order-1 spline at coordinate `c`: `floor(c)` with `1 - t`
/// and the next sample with `1 - (1 - t)` (scipy makes the last weight "1 minus the others").
#[inline]
fn linear_taps(c: f64) -> (i64, f64, f64) {
    let i0 = c.floor();
    let t = c - i0;
    let w0 = 1.0 - t;
    (i0 as i64, w0, 1.0 - w0)
}

/// Values that can be interpolated in float64 and stored back (f32 or f64 grids).
pub trait Sample: Copy {
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Sample for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl Sample for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

/// `scipy.ndimage.zoom(g, (z, z, 1), order=1, mode='nearest')`: output size
/// `round(n·z)` (ties to even, as Python's `round`), sample `o` of the output read at input
/// coordinate `o·(n-1)/(m-1)`, computed in float64 and stored in the grid's precision.
pub fn zoom_linear<T: Sample>(g: &Grid<T>, z: f64) -> Grid<T> {
    let out_len = |n: usize| ((n as f64 * z).round_ties_even() as usize).max(1);
    let (mh, mw) = (out_len(g.h), out_len(g.w));
    let ratio = |n: usize, m: usize| if m > 1 { (n as f64 - 1.0) / (m as f64 - 1.0) } else { 1.0 };
    let (ry, rx) = (ratio(g.h, mh), ratio(g.w, mw));
    let xs: Vec<(usize, usize, f64, f64)> = (0..mw)
        .map(|o| {
            let (i0, w0, w1) = linear_taps(o as f64 * rx);
            (Border::Nearest.index(i0, g.w), Border::Nearest.index(i0.saturating_add(1), g.w), w0, w1)
        })
        .collect();
    let mut out = Grid { h: mh, w: mw, c: g.c, data: Vec::with_capacity(mh * mw * g.c) };
    for oy in 0..mh {
        let (i0, wy0, wy1) = linear_taps(oy as f64 * ry);
        let (y0, y1) = (Border::Nearest.index(i0, g.h), Border::Nearest.index(i0.saturating_add(1), g.h));
        for &(x0, x1, wx0, wx1) in &xs {
            for ch in 0..g.c {
                let mut v = 0.0;
                v += g.at(y0, x0, ch).to_f64() * wy0 * wx0;
                v += g.at(y0, x1, ch).to_f64() * wy0 * wx1;
                v += g.at(y1, x0, ch).to_f64() * wy1 * wx0;
                v += g.at(y1, x1, ch).to_f64() * wy1 * wx1;
                out.data.push(T::from_f64(v));
            }
        }
    }
    out
}

/// The published `clipped_zoom`: centre crop of `ceil(n / z)` per axis, zoom by `z`, centre
/// crop back to `n` (per axis, so non-square images work; the published code used the
/// height for both axes, which is the same for square images).
pub fn clipped_zoom<T: Sample>(g: &Grid<T>, z: f64) -> Grid<T> {
    let ch = ((g.h as f64 / z).ceil() as usize).clamp(1, g.h);
    let cw = ((g.w as f64 / z).ceil() as usize).clamp(1, g.w);
    let cropped = g.crop((g.h - ch) / 2, (g.w - cw) / 2, ch, cw);
    let zoomed = zoom_linear(&cropped, z);
    let top = zoomed.h.saturating_sub(g.h) / 2;
    let left = zoomed.w.saturating_sub(g.w) / 2;
    let out = zoomed.crop(top, left, g.h, g.w);
    if out.h == g.h && out.w == g.w {
        return out;
    }
    // Only reachable through rounding at tiny sizes: pad by repeating the edge.
    let mut padded = Grid { h: g.h, w: g.w, c: g.c, data: Vec::with_capacity(g.data.len()) };
    for y in 0..g.h {
        for x in 0..g.w {
            for c in 0..g.c {
                padded.data.push(out.at(y.min(out.h - 1), x.min(out.w - 1), c));
            }
        }
    }
    padded
}

/// `scipy.ndimage.map_coordinates(g, (ys, xs, channel), order=1, mode='reflect')` at one
/// point and channel, in float64: taps summed rows-outer, columns-inner, `(v·wy)·wx`.
#[inline]
pub fn map_coordinate_reflect<T: Sample>(g: &Grid<T>, y: f64, x: f64, ch: usize) -> f64 {
    let (y0, wy0, wy1) = linear_taps(y);
    let (x0, wx0, wx1) = linear_taps(x);
    let (r0, r1) = (Border::Reflect.index(y0, g.h), Border::Reflect.index(y0.saturating_add(1), g.h));
    let (c0, c1) = (Border::Reflect.index(x0, g.w), Border::Reflect.index(x0.saturating_add(1), g.w));
    let mut v = 0.0;
    v += g.at(r0, c0, ch).to_f64() * wy0 * wx0;
    v += g.at(r0, c1, ch).to_f64() * wy0 * wx1;
    v += g.at(r1, c0, ch).to_f64() * wy1 * wx0;
    v += g.at(r1, c1, ch).to_f64() * wy1 * wx1;
    v
}

// --------------------------------------------------------------------------- Pillow

/// Pillow's `Image.resize(size, Image.BOX)` of an 8-bit RGB image: per axis, output pixel
/// `o` averages the inputs whose centres fall in `[(o)·s, (o+1)·s)` (the box filter,
/// support `0.5·max(s, 1)`), weights normalised and turned into 22-bit fixed point, a
/// horizontal pass then a vertical one, each rounded to 8 bits. Same bytes as Pillow.
pub fn pillow_box_resize(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    if (in_w, in_h) == (out_w, out_h) || in_w == 0 || in_h == 0 || out_w == 0 || out_h == 0 {
        return img.clone();
    }
    let mut cur = img.clone();
    if out_w != in_w {
        let coeffs = pillow_box_coeffs(in_w as usize, out_w as usize);
        let mut next = RgbImage::new(out_w, in_h);
        for y in 0..in_h {
            for (ox, (start, ks)) in coeffs.iter().enumerate() {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (k, &wt) in ks.iter().enumerate() {
                    let p = cur.get_pixel((start + k) as u32, y).0;
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(wt);
                    }
                }
                next.put_pixel(ox as u32, y, image::Rgb(acc.map(clip8)));
            }
        }
        cur = next;
    }
    if out_h != in_h {
        let coeffs = pillow_box_coeffs(in_h as usize, out_h as usize);
        let mut next = RgbImage::new(out_w, out_h);
        for (oy, (start, ks)) in coeffs.iter().enumerate() {
            for x in 0..out_w {
                let mut acc = [1i64 << (PRECISION_BITS - 1); 3];
                for (k, &wt) in ks.iter().enumerate() {
                    let p = cur.get_pixel(x, (start + k) as u32).0;
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(wt);
                    }
                }
                next.put_pixel(x, oy as u32, image::Rgb(acc.map(clip8)));
            }
        }
        cur = next;
    }
    cur
}

/// Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
const PRECISION_BITS: u32 = 22;

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box filter: per output
/// sample, the first input index and the fixed-point weights.
fn pillow_box_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 0.5 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let box_filter = |x: f64| if x > -0.5 && x <= 0.5 { 1.0 } else { 0.0 };
            let ws: Vec<f64> = (0..n).map(|x| box_filter(((x + xmin) as f64 - center + 0.5) * ss)).collect();
            let total: f64 = ws.iter().sum();
            let fixed = ws
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    if scaled < 0.0 {
                        (-0.5 + scaled) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borders_match_scipy_modes() {
        // n = 4: mirror  ... 2 1 | 0 1 2 3 | 2 1 0 1 ...
        let m: Vec<usize> = (-3..8).map(|i| Border::Mirror.index(i, 4)).collect();
        assert_eq!(m, [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]);
        // reflect ... 1 0 | 0 1 2 3 | 3 2 1 0 | 0 ...
        let r: Vec<usize> = (-3..9).map(|i| Border::Reflect.index(i, 4)).collect();
        assert_eq!(r, [2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]);
        assert_eq!(Border::Nearest.index(-5, 4), 0);
        assert_eq!(Border::Nearest.index(9, 4), 3);
        assert_eq!(Border::Mirror.index(-7, 1), 0);
        assert_eq!(Border::Reflect.index(-7, 1), 0);
    }

    #[test]
    fn numpy_sum_is_exact_on_integers() {
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        assert_eq!(numpy_sum(&v), 499_500.0);
        assert_eq!(numpy_sum(&[]), 0.0);
    }

    #[test]
    fn gaussian_kernel_sums_to_one() {
        let k = scipy_gaussian_kernel(1.5, 6);
        let total = k[0] + 2.0 * k[1..].iter().sum::<f64>();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn zoom_by_one_is_identity() {
        let g = Grid { h: 3, w: 2, c: 1, data: vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] };
        assert_eq!(zoom_linear(&g, 1.0), g);
        assert_eq!(clipped_zoom(&g, 1.0), g);
    }

    #[test]
    fn box_resize_averages_whole_blocks() {
        let img = RgbImage::from_fn(4, 2, |x, _| image::Rgb([(x * 10) as u8, 0, 255]));
        let small = pillow_box_resize(&img, 2, 1);
        assert_eq!(small.get_pixel(0, 0).0, [5, 0, 255]);
        assert_eq!(small.get_pixel(1, 0).0, [25, 0, 255]);
    }
}
