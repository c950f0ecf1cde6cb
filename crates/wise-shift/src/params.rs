//! The published parameters, and how they are chosen for an image of any size.
//!
//! Hendrycks & Dietterich published two tables: CIFAR-10-C's (`make_cifar_c.py`, 32×32
//! images) and ImageNet-C's (`make_imagenet_c.py`, 224×224 crops). Noise strengths differ
//! between them (a 224-pixel photo tolerates more per-pixel noise than a 32-pixel thumbnail
//! before the class is lost), and spatial sizes are in pixels of those resolutions.
//!
//! The rule for other sizes, with `side` = the image's shorter side:
//!
//! 1. **table**: CIFAR's when `side < 85`, ImageNet's otherwise (85 ≈ √(32·224), the size
//!    as far from both in scale);
//! 2. **spatial parameters scale with `side / 32` or `side / 224`**: blur radii and sigmas,
//!    glass blur's displacement (rounded, at least 1 pixel), the motion-blur radius and sigma
//!    of motion_blur and snow, elastic amplitudes and smoothing, the frost crystal size and
//!    fog's map size (the next power of two ≥ the longer side). Everything else (noise
//!    strengths, zoom factors, blend weights, pixelation factors, JPEG quality) is a ratio or
//!    a per-pixel quantity and is used as published.
//!
//! At exactly 32×32 and 224×224 this gives the published parameters unchanged.

use crate::Severity;

/// Which published table an image's parameters come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// CIFAR-10-C, for 32×32 images.
    Cifar,
    /// ImageNet-C, for 224×224 images.
    ImageNet,
}

/// Short sides below this use the CIFAR table.
pub const PROFILE_SPLIT: u32 = 85;

/// The table and the spatial scale for an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    pub profile: Profile,
    /// `side / 32` or `side / 224`.
    pub scale: f64,
    /// The shorter side, in pixels.
    pub side: u32,
}

impl Geometry {
    pub fn for_size(width: u32, height: u32) -> Self {
        let side = width.min(height);
        let (profile, reference) =
            if side < PROFILE_SPLIT { (Profile::Cifar, 32.0) } else { (Profile::ImageNet, 224.0) };
        Self { profile, scale: f64::from(side) / reference, side }
    }

    fn pick<T: Copy>(&self, table: &Table<T>, severity: Severity) -> T {
        let i = usize::from(severity.get() - 1);
        match self.profile {
            Profile::Cifar => table.cifar[i],
            Profile::ImageNet => table.imagenet[i],
        }
    }
}

/// One corruption's published parameters, per severity 1..5, for each table.
struct Table<T> {
    cifar: [T; 5],
    imagenet: [T; 5],
}

const GAUSSIAN_NOISE: Table<f64> =
    Table { cifar: [0.04, 0.06, 0.08, 0.09, 0.10], imagenet: [0.08, 0.12, 0.18, 0.26, 0.38] };
const SHOT_NOISE: Table<f64> =
    Table { cifar: [500.0, 250.0, 100.0, 75.0, 50.0], imagenet: [60.0, 25.0, 12.0, 5.0, 3.0] };
const IMPULSE_NOISE: Table<f64> =
    Table { cifar: [0.01, 0.02, 0.03, 0.05, 0.07], imagenet: [0.03, 0.06, 0.09, 0.17, 0.27] };
/// (disk radius, anti-aliasing sigma)
const DEFOCUS_BLUR: Table<(f64, f64)> = Table {
    cifar: [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)],
    imagenet: [(3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)],
};
/// (sigma, max displacement, iterations)
const GLASS_BLUR: Table<(f64, f64, u32)> = Table {
    cifar: [(0.05, 1.0, 1), (0.25, 1.0, 1), (0.4, 1.0, 1), (0.25, 1.0, 2), (0.4, 1.0, 2)],
    imagenet: [(0.7, 1.0, 2), (0.9, 2.0, 1), (1.0, 2.0, 3), (1.1, 3.0, 2), (1.5, 4.0, 2)],
};
/// (radius, sigma) of ImageMagick's motion blur
const MOTION_BLUR: Table<(f64, f64)> = Table {
    cifar: [(6.0, 1.0), (6.0, 1.5), (6.0, 2.0), (8.0, 2.0), (9.0, 2.5)],
    imagenet: [(10.0, 3.0), (15.0, 5.0), (15.0, 8.0), (15.0, 12.0), (20.0, 15.0)],
};
/// numpy `arange(start, stop, step)` of zoom factors
const ZOOM_BLUR: Table<(f64, f64, f64)> = Table {
    cifar: [(1.0, 1.06, 0.01), (1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.01), (1.0, 1.26, 0.01)],
    imagenet: [(1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.02), (1.0, 1.26, 0.02), (1.0, 1.31, 0.03)],
};
/// (mean, std, zoom, threshold, motion radius, motion sigma, blend)
#[allow(clippy::type_complexity)]
const SNOW: Table<(f64, f64, f64, f64, f64, f64, f64)> = Table {
    cifar: [
        (0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95),
        (0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8),
    ],
    imagenet: [
        (0.1, 0.3, 3.0, 0.5, 10.0, 4.0, 0.8),
        (0.2, 0.3, 2.0, 0.5, 12.0, 4.0, 0.7),
        (0.55, 0.3, 4.0, 0.9, 12.0, 8.0, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12.0, 8.0, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12.0, 12.0, 0.55),
    ],
};
/// (image weight, frost weight)
const FROST: Table<(f64, f64)> = Table {
    cifar: [(1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    imagenet: [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
};
/// (strength, wibble decay of the plasma fractal)
const FOG: Table<(f64, f64)> = Table {
    cifar: [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)],
    imagenet: [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
};
const BRIGHTNESS: Table<f64> =
    Table { cifar: [0.05, 0.1, 0.15, 0.2, 0.3], imagenet: [0.1, 0.2, 0.3, 0.4, 0.5] };
const CONTRAST: Table<f64> =
    Table { cifar: [0.75, 0.5, 0.4, 0.3, 0.15], imagenet: [0.4, 0.3, 0.2, 0.1, 0.05] };
/// (alpha, sigma, affine amplitude) as fractions of the image size: CIFAR's script multiplies
/// by 32, ImageNet's by 244 ("244 should have been 224, but ultimately nothing is incorrect").
const ELASTIC: Table<(f64, f64, f64)> = Table {
    cifar: [(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    imagenet: [(2.0, 0.7, 0.1), (2.0, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],
};
const PIXELATE: Table<f64> =
    Table { cifar: [0.95, 0.9, 0.85, 0.75, 0.65], imagenet: [0.6, 0.5, 0.4, 0.3, 0.25] };
const JPEG_QUALITY: Table<u8> = Table { cifar: [80, 65, 58, 50, 40], imagenet: [25, 18, 15, 10, 7] };

/// Frost crystal size as a fraction of the shorter side, for texture 0..4 (see
/// `weather::frost_texture`; the published frost photographs are not available).
pub const FROST_CELL: [f64; 5] = [0.16, 0.19, 0.22, 0.25, 0.28];

pub fn gaussian_noise(g: &Geometry, s: Severity) -> f64 {
    g.pick(&GAUSSIAN_NOISE, s)
}

pub fn shot_noise(g: &Geometry, s: Severity) -> f64 {
    g.pick(&SHOT_NOISE, s)
}

pub fn impulse_noise(g: &Geometry, s: Severity) -> f64 {
    g.pick(&IMPULSE_NOISE, s)
}

/// (radius, anti-aliasing sigma), scaled.
pub fn defocus_blur(g: &Geometry, s: Severity) -> (f64, f64) {
    let (radius, alias) = g.pick(&DEFOCUS_BLUR, s);
    (radius * g.scale, alias * g.scale)
}

/// (sigma, displacement ≥ 1, iterations), sigma and displacement scaled.
pub fn glass_blur(g: &Geometry, s: Severity) -> (f64, i64, u32) {
    let (sigma, delta, iterations) = g.pick(&GLASS_BLUR, s);
    let delta = ((delta * g.scale + 0.5).floor() as i64).max(1);
    (sigma * g.scale, delta, iterations)
}

/// (radius, sigma), scaled.
pub fn motion_blur(g: &Geometry, s: Severity) -> (f64, f64) {
    let (radius, sigma) = g.pick(&MOTION_BLUR, s);
    (radius * g.scale, sigma * g.scale)
}

/// The zoom factors, as numpy's `arange(start, stop, step)` computes them (length
/// `ceil((stop - start) / step)`, values `start + i * ((start + step) - start)`).
pub fn zoom_blur(g: &Geometry, s: Severity) -> Vec<f64> {
    let (start, stop, step) = g.pick(&ZOOM_BLUR, s);
    crate::array::numpy_arange(start, stop, step)
}

/// Snow's parameters, motion radius and sigma scaled.
#[derive(Debug, Clone, Copy)]
pub struct Snow {
    pub mean: f64,
    pub std: f64,
    pub zoom: f64,
    pub threshold: f64,
    pub radius: f64,
    pub sigma: f64,
    pub blend: f64,
}

pub fn snow(g: &Geometry, s: Severity) -> Snow {
    let (mean, std, zoom, threshold, radius, sigma, blend) = g.pick(&SNOW, s);
    Snow { mean, std, zoom, threshold, radius: radius * g.scale, sigma: sigma * g.scale, blend }
}

pub fn frost(g: &Geometry, s: Severity) -> (f64, f64) {
    g.pick(&FROST, s)
}

pub fn fog(g: &Geometry, s: Severity) -> (f64, f64) {
    g.pick(&FOG, s)
}

pub fn brightness(g: &Geometry, s: Severity) -> f64 {
    g.pick(&BRIGHTNESS, s)
}

pub fn contrast(g: &Geometry, s: Severity) -> f64 {
    g.pick(&CONTRAST, s)
}

/// (alpha, sigma, affine amplitude) in pixels of this image.
pub fn elastic_transform(g: &Geometry, s: Severity) -> (f64, f64, f64) {
    let (alpha, sigma, affine) = g.pick(&ELASTIC, s);
    let size = match g.profile {
        Profile::Cifar => f64::from(g.side),
        Profile::ImageNet => 244.0 * g.scale,
    };
    (alpha * size, sigma * size, affine * size)
}

pub fn pixelate(g: &Geometry, s: Severity) -> f64 {
    g.pick(&PIXELATE, s)
}

pub fn jpeg_quality(g: &Geometry, s: Severity) -> u8 {
    g.pick(&JPEG_QUALITY, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sev(n: u8) -> Severity {
        Severity::new(n).unwrap()
    }

    #[test]
    fn profile_and_scale_follow_the_short_side() {
        let g = Geometry::for_size(32, 32);
        assert_eq!((g.profile, g.scale), (Profile::Cifar, 1.0));
        let g = Geometry::for_size(224, 224);
        assert_eq!((g.profile, g.scale), (Profile::ImageNet, 1.0));
        let g = Geometry::for_size(100, 64);
        assert_eq!((g.profile, g.scale), (Profile::Cifar, 2.0));
        assert_eq!(Geometry::for_size(84, 300).profile, Profile::Cifar);
        assert_eq!(Geometry::for_size(85, 300).profile, Profile::ImageNet);
        let g = Geometry::for_size(448, 500);
        assert_eq!((g.profile, g.scale), (Profile::ImageNet, 2.0));
    }

    #[test]
    fn published_values_at_the_reference_sizes() {
        let c = Geometry::for_size(32, 32);
        let i = Geometry::for_size(224, 224);
        assert_eq!(defocus_blur(&c, sev(5)), (1.5, 0.1));
        assert_eq!(defocus_blur(&i, sev(2)), (4.0, 0.5));
        assert_eq!(glass_blur(&i, sev(5)), (1.5, 4, 2));
        assert_eq!(motion_blur(&c, sev(4)), (8.0, 2.0));
        assert_eq!(jpeg_quality(&i, sev(5)), 7);
        assert_eq!(elastic_transform(&c, sev(2)), (0.05 * 32.0, 0.2 * 32.0, 0.07 * 32.0));
        assert_eq!(elastic_transform(&i, sev(1)), (2.0 * 244.0, 0.7 * 244.0, 0.1 * 244.0));
        // numpy: len(np.arange(1, 1.06, 0.01)) == 7 (the stop sneaks in through rounding)
        assert_eq!(zoom_blur(&c, sev(1)).len(), 7);
        assert_eq!(zoom_blur(&i, sev(5)).len(), 11);
    }

    #[test]
    fn spatial_parameters_scale() {
        let g = Geometry::for_size(64, 64);
        assert_eq!(defocus_blur(&g, sev(5)), (3.0, 0.2));
        assert_eq!(glass_blur(&g, sev(1)).1, 2);
        assert_eq!(snow(&g, sev(1)).radius, 16.0);
        assert_eq!(gaussian_noise(&g, sev(3)), 0.08);
        // a small ImageNet-table image never loses glass blur's displacement
        assert_eq!(glass_blur(&Geometry::for_size(90, 90), sev(1)).1, 1);
    }
}
