//! The noise family: sensor noise (Gaussian), photon noise (shot, Poisson) and transmission
//! errors (impulse, salt and pepper). One independent draw per pixel and channel, in
//! row-major `(y, x, channel)` order.

use image::RgbImage;

use crate::array::{to_image, trunc_u8, unit_f64};
use crate::rng::Noise;

/// `x + N(0, c²)` on [0, 1] pixels. Draws: one normal per value.
pub fn gaussian_noise(img: &RgbImage, c: f64, noise: &mut dyn Noise) -> RgbImage {
    let mut x = unit_f64(img);
    for v in &mut x.data {
        *v = (*v + (0.0 + c * noise.normal())).clamp(0.0, 1.0) * 255.0;
    }
    to_image(&x.map(trunc_u8))
}

/// `Poisson(x·c) / c`: fewer photons (smaller `c`) mean more noise, strongest in the
/// highlights. Draws: one Poisson count per value.
pub fn shot_noise(img: &RgbImage, c: f64, noise: &mut dyn Noise) -> RgbImage {
    let mut x = unit_f64(img);
    for v in &mut x.data {
        *v = (noise.poisson(*v * c) / c).clamp(0.0, 1.0) * 255.0;
    }
    to_image(&x.map(trunc_u8))
}

/// scikit-image's `random_noise(mode='s&p', amount=c)`: each value is hit with probability
/// `c` (`u ≤ c`), and a hit is white or black with equal odds (`u ≤ 0.5` is white). Draws:
/// one uniform per value for the hits, then one per value for the colours (all of the first
/// before any of the second, as scikit-image draws whole arrays).
pub fn impulse_noise(img: &RgbImage, c: f64, noise: &mut dyn Noise) -> RgbImage {
    let x = unit_f64(img);
    let hit: Vec<bool> = x.data.iter().map(|_| noise.uniform() <= c).collect();
    let salt: Vec<bool> = x.data.iter().map(|_| noise.uniform() <= 0.5).collect();
    let mut out = x.map(|v| trunc_u8(v.clamp(0.0, 1.0) * 255.0));
    for (i, o) in out.data.iter_mut().enumerate() {
        if hit[i] {
            *o = if salt[i] { 255 } else { 0 };
        }
    }
    to_image(&out)
}
