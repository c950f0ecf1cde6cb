//! Where the randomness comes from.
//!
//! Every corruption draws through the [`Noise`] trait, one value at a time, in a fixed
//! order (documented per corruption). Two sources implement it:
//!
//! - [`SeededNoise`]: ChaCha8 (portable and reproducible across platforms and `rand`
//!   versions) seeded per image from the user's seed, the corruption's name and the image's
//!   path relative to the dataset root ([`image_seed`]). An image's output therefore does not
//!   depend on which thread handled it or in what order, and the five severities of one image
//!   see the same draws (severity changes the strength, not the realisation).
//! - [`Replay`]: plays back recorded draws. numpy's generators cannot be reproduced in Rust,
//!   so the parity tests replay the draws `scripts/make_shift_fixtures.py` made with numpy;
//!   with the same draws the outputs are comparable pixel by pixel.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson, StandardNormal};

/// A source of random draws.
pub trait Noise {
    /// Uniform in `[0, 1)`. Corruptions map it to `[low, high)` as numpy does:
    /// `low + (high - low) * u`.
    fn uniform(&mut self) -> f64;
    /// Standard normal; `loc + scale * z` gives numpy's `normal(loc, scale)`.
    fn normal(&mut self) -> f64;
    /// Poisson with mean `lambda` (0 when `lambda` is not positive).
    fn poisson(&mut self, lambda: f64) -> f64;
    /// Uniform integer in `[low, high)` (numpy's `randint`); `low` when the range is empty.
    fn integer(&mut self, low: i64, high: i64) -> i64;
}

/// Seeded, reproducible draws (ChaCha8).
#[derive(Debug, Clone)]
pub struct SeededNoise {
    rng: ChaCha8Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// The source for one image of a dataset: see [`image_seed`].
    pub fn for_image(seed: u64, corruption: &str, relative_path: &str) -> Self {
        Self::new(image_seed(seed, corruption, relative_path))
    }
}

impl Noise for SeededNoise {
    fn uniform(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn normal(&mut self) -> f64 {
        StandardNormal.sample(&mut self.rng)
    }

    fn poisson(&mut self, lambda: f64) -> f64 {
        match Poisson::new(lambda) {
            Ok(p) if lambda.is_finite() => p.sample(&mut self.rng),
            _ => 0.0,
        }
    }

    fn integer(&mut self, low: i64, high: i64) -> i64 {
        if low >= high {
            return low;
        }
        self.rng.random_range(low..high)
    }
}

/// The per-image seed: FNV-1a over the corruption's name and the relative path (with `/`
/// separators, so Windows and Unix agree), mixed with the user's seed by SplitMix64. Stable
/// across platforms and releases: it is part of what a seed means.
pub fn image_seed(seed: u64, corruption: &str, relative_path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in corruption.bytes().chain([0xff]).chain(relative_path.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(h ^ splitmix64(seed))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Recorded draws played back in order, whatever kind is asked for: a uniform, a normal, a
/// Poisson count or an integer is simply the next value. Used by the parity tests to feed
/// numpy's draws; [`Replay::finish`] says whether exactly the recorded draws were used.
#[derive(Debug, Clone)]
pub struct Replay {
    values: Vec<f64>,
    pos: usize,
    overrun: usize,
}

impl Replay {
    pub fn new(values: Vec<f64>) -> Self {
        Self { values, pos: 0, overrun: 0 }
    }

    fn next(&mut self) -> f64 {
        match self.values.get(self.pos) {
            Some(&v) => {
                self.pos += 1;
                v
            }
            None => {
                self.overrun += 1;
                0.0
            }
        }
    }

    /// `Ok` when every recorded draw was used and no more were asked for; otherwise how the
    /// corruption's draws and the record disagree.
    pub fn finish(&self) -> std::result::Result<(), String> {
        if self.overrun > 0 {
            return Err(format!("{} draws recorded, {} more asked for", self.values.len(), self.overrun));
        }
        if self.pos != self.values.len() {
            return Err(format!("{} draws recorded, only {} used", self.values.len(), self.pos));
        }
        Ok(())
    }
}

impl Noise for Replay {
    fn uniform(&mut self) -> f64 {
        self.next()
    }

    fn normal(&mut self) -> f64 {
        self.next()
    }

    fn poisson(&mut self, _lambda: f64) -> f64 {
        self.next()
    }

    fn integer(&mut self, _low: i64, _high: i64) -> i64 {
        self.next() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_seed_separates_its_inputs() {
        let a = image_seed(0, "fog", "cat/1.png");
        assert_eq!(a, image_seed(0, "fog", "cat/1.png"));
        assert_ne!(a, image_seed(1, "fog", "cat/1.png"));
        assert_ne!(a, image_seed(0, "snow", "cat/1.png"));
        assert_ne!(a, image_seed(0, "fog", "cat/2.png"));
        // the separator keeps ("ab", "c") and ("a", "bc") apart
        assert_ne!(image_seed(0, "ab", "c"), image_seed(0, "a", "bc"));
    }

    #[test]
    fn seeded_draws_are_in_range() {
        let mut n = SeededNoise::new(3);
        for _ in 0..1000 {
            let u = n.uniform();
            assert!((0.0..1.0).contains(&u));
            let k = n.integer(-2, 2);
            assert!((-2..2).contains(&k));
        }
        assert_eq!(n.integer(5, 5), 5);
        assert_eq!(n.poisson(0.0), 0.0);
        assert_eq!(n.poisson(f64::NAN), 0.0);
    }

    #[test]
    fn replay_reports_short_and_long_records() {
        let mut r = Replay::new(vec![0.5, 2.0]);
        assert_eq!(r.uniform(), 0.5);
        assert!(r.finish().is_err());
        assert_eq!(r.integer(0, 9), 2);
        assert!(r.finish().is_ok());
        assert_eq!(r.normal(), 0.0);
        assert!(r.finish().unwrap_err().contains("1 more"));
    }
}
