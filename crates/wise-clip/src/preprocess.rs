//! Image loading and CLIP preprocessing: files → normalized `[3, S, S]` pixels.
//!
//! CLIP's accuracy depends on seeing images prepared exactly as in its training, so the eval
//! transform reproduces Hugging Face's `CLIPImageProcessor` (PIL path), which is also OpenAI's
//! and open_clip's eval transform:
//!
//! 1. resize so the shortest side is `S` (the long side becomes `floor(S * long / short)`)
//!    with PIL's `BICUBIC`, i.e. a Catmull-Rom (a = -0.5) *convolution* whose support grows with
//!    the downscale factor (antialiasing);
//! 2. center crop `S × S` at `top = (h - S) / 2`, `left = (w - S) / 2` (integer division, as HF);
//! 3. `x / 255`, then `(x - mean) / std` per channel, channels first.
//!
//! The resize uses `fast_image_resize`: its `Convolution(CatmullRom)` computes the filter
//! weights as PIL does (same kernel, same support scaling, same window bounds), and it is
//! SIMD-fast; `image`'s own resize has no antialiased bicubic of that kind, and the
//! difference would show in the features. Two details of PIL are reproduced around it (see
//! `resize_levels`): the two 1-D passes run one at a time, in Pillow's order, each rounded
//! to 8 bits as Pillow does; and they run on 16-bit samples so that fast_image_resize uses
//! 32-bit weights (its 8-bit path's 16-bit weights are visibly coarser than Pillow's 22-bit
//! ones). The result equals Pillow's but for rare ±1 levels. The eval transform resizes
//! only the center crop's pixels (a 4:3 image's resize is then a quarter cheaper).
//!
//! The training transform is the one WiSE-FT fine-tunes with (open_clip's):
//! torchvision's `RandomResizedCrop(S, scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)` with the
//! same sampling algorithm, then the same `/255` and normalization.
//!
//! [`load_rgb`] decodes files the way HF's pipeline (`load_image`'s `exif_transpose`, then
//! `convert_to_rgb`) does: EXIF orientation applied, grey/palette/CMYK expanded to RGB,
//! transparency composited onto white, 16-bit samples reduced to their high byte.

use std::path::{Path, PathBuf};

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U16x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use rayon::prelude::*;
use serde_json::Value;

use crate::{Error, Result};

/// CLIP's per-channel pixel mean (OpenAI), in `[0, 1]` units.
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel pixel standard deviation (OpenAI), in `[0, 1]` units.
// OpenAI's published digits, kept verbatim so they can be checked against the reference.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Area fraction range of WiSE-FT's training `RandomResizedCrop`.
pub const TRAIN_SCALE: (f64, f64) = (0.9, 1.0);
/// Aspect-ratio (width / height) range of the training `RandomResizedCrop` (torchvision's
/// default).
pub const TRAIN_RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// A crop rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub top: u32,
    pub left: u32,
    pub height: u32,
    pub width: u32,
}

/// CLIP image preprocessing for one input resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocessor {
    /// Side `S` of the square the vision tower takes.
    pub image_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ImagePreprocessor {
    /// CLIP's mean and std at `image_size`.
    pub fn new(image_size: usize) -> Self {
        Self { image_size, mean: CLIP_MEAN, std: CLIP_STD }
    }

    /// Writes `preprocessor_config.json` (transformers' `CLIPImageProcessor` format).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let s = self.image_size;
        let config = serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true,
            "size": { "shortest_edge": s },
            "resample": 3,
            "do_center_crop": true,
            "crop_size": { "height": s, "width": s },
            "do_rescale": true,
            "rescale_factor": 1.0 / 255.0,
            "do_normalize": true,
            "image_mean": self.mean,
            "image_std": self.std,
            "do_convert_rgb": true,
        });
        let path = dir.join("preprocessor_config.json");
        std::fs::write(&path, format!("{config:#}\n")).map_err(|e| Error::io(&path, e))
    }

    /// Settings from `preprocessor_config.json` in `dir` (`crop_size` / `size.shortest_edge`,
    /// `image_mean`, `image_std`), else from the `preprocess_cfg` of an open_clip
    /// `open_clip_config.json`, else [`new(image_size)`](Self::new).
    ///
    /// `image_size` is what the model's vision config says; a preprocessing config asking for
    /// another size, a resize different from the crop, or a resampling other than bicubic is an
    /// error rather than silently different pixels.
    pub fn for_model_dir(dir: &Path, image_size: usize) -> Result<Self> {
        let hf = dir.join("preprocessor_config.json");
        let oc = dir.join("open_clip_config.json");
        let parsed = if hf.is_file() {
            Some((hf.clone(), parse_hf_config(&hf, &read_json(&hf)?)?))
        } else if oc.is_file() {
            let json = read_json(&oc)?;
            match json.get("preprocess_cfg") {
                Some(cfg) => Some((oc.clone(), parse_open_clip_config(&oc, cfg)?)),
                None => None,
            }
        } else {
            None
        };
        let Some((path, cfg)) = parsed else {
            return Ok(Self::new(image_size));
        };
        let size = cfg.size.unwrap_or(image_size);
        if size != image_size {
            return Err(Error::Config {
                path,
                msg: format!(
                    "preprocessing is for {size}×{size} images but the model takes {image_size}×{image_size}"
                ),
            });
        }
        Ok(Self { image_size, mean: cfg.mean.unwrap_or(CLIP_MEAN), std: cfg.std.unwrap_or(CLIP_STD) })
    }

    /// Eval transform (HF `CLIPImageProcessor`): shortest side → `S` with antialiased bicubic,
    /// center crop, `/255`, normalize. Returns CHW `f32`, `3 * S * S` values.
    ///
    /// Only the crop's pixels are resized: each output pixel of a pass depends on its own
    /// filter window alone, so the columns (rows) the crop drops are never computed.
    pub fn eval(&self, img: &RgbImage) -> Result<Vec<f32>> {
        Ok(self.normalize(&self.eval_resized(img)?))
    }

    /// [`eval`](Self::eval) before `/255` and the normalisation: CHW 8-bit levels, a quarter
    /// of the bytes, for [`normalize_levels`](Self::normalize_levels) to finish on a device.
    pub fn eval_levels(&self, img: &RgbImage) -> Result<Vec<u8>> {
        Ok(self.eval_resized(img)?.channels_first())
    }

    fn eval_resized(&self, img: &RgbImage) -> Result<Wide> {
        let s = self.side()?;
        let (new_w, new_h) = shortest_side_size(img.width(), img.height(), s)?;
        let crop = CropBox { top: (new_h - s) / 2, left: (new_w - s) / 2, height: s, width: s };
        let whole = CropBox { top: 0, left: 0, height: img.height(), width: img.width() };
        resize_levels(&Wide::of(img, whole), (new_w, new_h), crop)
    }

    /// Training transform (open_clip / WiSE-FT): torchvision `RandomResizedCrop(S,
    /// scale=(0.9, 1.0), ratio=(3/4, 4/3), bicubic)` then `/255` and normalize. CHW `f32`.
    /// The same `rng` state gives the same output.
    pub fn train(&self, img: &RgbImage, rng: &mut impl rand::Rng) -> Result<Vec<f32>> {
        Ok(self.normalize(&self.train_resized(img, rng)?))
    }

    /// [`train`](Self::train) before `/255` and the normalisation, as
    /// [`eval_levels`](Self::eval_levels).
    pub fn train_levels(&self, img: &RgbImage, rng: &mut impl rand::Rng) -> Result<Vec<u8>> {
        Ok(self.train_resized(img, rng)?.channels_first())
    }

    fn train_resized(&self, img: &RgbImage, rng: &mut impl rand::Rng) -> Result<Wide> {
        let s = self.side()?;
        let b = random_resized_crop_params(img.width(), img.height(), TRAIN_SCALE, TRAIN_RATIO, rng)?;
        // Crop first, then resize the crop (as torchvision on PIL images): the filter must
        // not reach outside the crop.
        let all = CropBox { top: 0, left: 0, height: s, width: s };
        resize_levels(&Wide::of(img, b), (s, s), all)
    }

    /// `[B, 3, S, S]` `u8` levels ([`eval_levels`](Self::eval_levels),
    /// [`train_levels`](Self::train_levels)) → the normalised `f32` pixels
    /// [`eval`](Self::eval) and [`train`](Self::train) give, on the levels' device: each
    /// level looks its value up in the same table, so the result is identical.
    pub fn normalize_levels(&self, levels: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        use candle_core::{DType, Tensor};
        let device = levels.device();
        let (b, c, h, w) = levels.dims4()?;
        if c != 3 || levels.dtype() != DType::U8 {
            return Err(Error::Invalid(format!(
                "levels must be [B, 3, S, S] u8, not {:?} {:?}",
                levels.dims(),
                levels.dtype()
            )));
        }
        let table = Tensor::from_vec(self.normalization_table().concat(), 3 * 256, device)?;
        // Channel c's levels index the table's c-th 256 entries.
        let offsets = Tensor::new(&[0u32, 256, 512], device)?.reshape((1, 3, 1, 1))?;
        let index = levels.to_dtype(DType::U32)?.broadcast_add(&offsets)?.flatten_all()?;
        Ok(table.index_select(&index, 0)?.reshape((b, c, h, w))?)
    }

    /// Decodes ([`load_rgb`]) and eval-preprocesses many files in parallel, order preserved:
    /// a `[N, 3, S, S]` `f32` tensor on `device` (normalised there from 8-bit levels when it
    /// is not the CPU, as the data loader does). A file that fails makes the whole call fail
    /// with that file's error (which names it).
    pub fn eval_files(&self, paths: &[PathBuf], device: &candle_core::Device) -> Result<candle_core::Tensor> {
        let shape = (paths.len(), 3, self.image_size, self.image_size);
        if device.is_cpu() {
            let pixels = each_file(paths, |img| self.eval(img))?;
            return Ok(candle_core::Tensor::from_vec(pixels, shape, device)?);
        }
        let levels = each_file(paths, |img| self.eval_levels(img))?;
        self.normalize_levels(&candle_core::Tensor::from_vec(levels, shape, device)?)
    }

    fn side(&self) -> Result<u32> {
        match u32::try_from(self.image_size) {
            Ok(s) if s > 0 => Ok(s),
            _ => Err(Error::Invalid(format!("image size {} is not a usable side length", self.image_size))),
        }
    }

    /// Each channel's normalised value of each 8-bit level, as HF normalises: `x * (1/255)`
    /// in `f64` cast to `f32`, then `(x - mean) / std` in `f32`.
    fn normalization_table(&self) -> [[f32; 256]; 3] {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                let x = (v as f64 * (1.0 / 255.0)) as f32;
                *out = (x - self.mean[c]) / self.std[c];
            }
        }
        lut
    }

    /// An `S × S` resize result (8-bit levels stored as `v · 257`), normalised; channels first.
    fn normalize(&self, img: &Wide) -> Vec<f32> {
        let lut = self.normalization_table();
        let mut out = Vec::with_capacity(img.samples.len());
        for (c, lut) in lut.iter().enumerate() {
            out.extend(img.pixels().iter().map(|p| lut[usize::from(p.0[c] >> 8)]));
        }
        out
    }
}

/// `transform` of each decoded file, in parallel, concatenated in order; an error names its file.
fn each_file<T: Send + Copy>(
    paths: &[PathBuf],
    transform: impl Fn(&RgbImage) -> Result<Vec<T>> + Sync,
) -> Result<Vec<T>> {
    let images: Vec<Vec<T>> = paths
        .par_iter()
        .map(|path| {
            let img = load_rgb(path)?;
            transform(&img).map_err(|e| Error::Image { path: path.clone(), msg: e.to_string() })
        })
        .collect::<Result<_>>()?;
    Ok(images.concat())
}

/// Size after HF's "shortest edge" resize: the short side becomes `size`, the long side
/// `floor(size * long / short)` (Python's `int(size * long / short)`). Returns `(w, h)`.
pub fn shortest_side_size(width: u32, height: u32, size: u32) -> Result<(u32, u32)> {
    if width == 0 || height == 0 || size == 0 {
        return Err(Error::Invalid(format!(
            "cannot resize a {width}×{height} image to shortest side {size}"
        )));
    }
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let new_long = (f64::from(size) * f64::from(long) / f64::from(short)) as u64;
    let new_long = u32::try_from(new_long).map_err(|_| {
        Error::Invalid(format!("a {width}×{height} image resized to shortest side {size} is too large"))
    })?;
    Ok(if width <= height { (size, new_long) } else { (new_long, size) })
}

/// Resizes with PIL's `BICUBIC` (antialiased Catmull-Rom convolution) to `width × height`,
/// as Pillow's `Image.resize` does (its output, but for rare ±1 levels).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let whole = CropBox { top: 0, left: 0, height: img.height(), width: img.width() };
    let all = CropBox { top: 0, left: 0, height, width };
    let levels = resize_levels(&Wide::of(img, whole), (width, height), all)?;
    let bytes = levels.levels().collect();
    RgbImage::from_raw(width, height, bytes)
        .ok_or_else(|| Error::Invalid("resize produced a buffer of the wrong size".to_string()))
}

/// An RGB image of 16-bit samples holding 8-bit levels as `v · 257` (`0 ↦ 0`, `255 ↦ 65535`).
///
/// fast_image_resize's 8-bit kernels use 16-bit fixed-point weights, a coarser
/// quantization than Pillow's 22 bits that shows as ±1–2 level differences; its 16-bit
/// kernels use 32-bit weights, so rounding their result back to a level gives Pillow's
/// value except where the exact result is within ~0.002 of a half level. So the resize
/// runs on these, and each pass's result is rounded to levels in place.
struct Wide {
    width: u32,
    height: u32,
    /// Row-major, 3 samples a pixel.
    samples: Vec<u16>,
}

impl Wide {
    /// The `crop` of `img`.
    fn of(img: &RgbImage, crop: CropBox) -> Self {
        let (row, left, len) = (img.width() as usize * 3, crop.left as usize * 3, crop.width as usize * 3);
        let mut samples = Vec::with_capacity(len * crop.height as usize);
        for y in crop.top as usize..(crop.top + crop.height) as usize {
            let start = y * row + left;
            samples.extend(img.as_raw()[start..start + len].iter().map(|&v| u16::from(v) * 257));
        }
        Self { width: crop.width, height: crop.height, samples }
    }

    fn pixels(&self) -> &[U16x3] {
        bytemuck::cast_slice(&self.samples)
    }

    /// The samples' 8-bit levels (`l · 257 / 256 == l` for every level `l`).
    fn levels(&self) -> impl Iterator<Item = u8> + '_ {
        self.samples.iter().map(|&v| (v >> 8) as u8)
    }

    /// The levels channels first (CHW), as the model's pixels are laid out.
    fn channels_first(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.samples.len());
        for c in 0..3 {
            out.extend(self.pixels().iter().map(|p| (p.0[c] >> 8) as u8));
        }
        out
    }
}

/// `round(v / 257)`, the 8-bit level nearest a 16-bit sample, without a division.
fn nearest_level(v: u16) -> u16 {
    let t = u32::from(v) + 128;
    ((t - (t >> 8)) >> 8) as u16
}

/// The `window` of `src` resized to `size` with PIL's `BICUBIC`, as [`Wide`] levels.
///
/// The two 1-D passes are separated by an intermediate rounded and clipped to 8 bits, and
/// the bicubic filter overshoots, so near strong edges the pass order changes results by
/// up to ~20 levels. fast_image_resize would run both passes in one call, horizontal first
/// and unrounded for 16-bit images; Pillow (`ImagingResampleInner`, Pillow 13) goes
/// horizontal-first unless the height shrinks by more than twice as many pixels as the
/// width. So: one axis per call, in Pillow's order, each computing only the window's
/// columns (rows) by cropping the source at their preimage. The filter windows are still
/// clipped by the whole source, as in the full resize; only the floating-point position of
/// the crop's pixels can differ from the full resize's in the last bit, which moved 4 in a
/// million samples by one level in a test over 75 image sizes.
fn resize_levels(src: &Wide, (width, height): (u32, u32), window: CropBox) -> Result<Wide> {
    let (in_w, in_h) = (src.width, src.height);
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return Err(Error::Invalid(format!("cannot resize a {in_w}×{in_h} image to {width}×{height}")));
    }
    let shrink_h = i64::from(in_h) - i64::from(height);
    let horizontal_first = !(shrink_h > 0 && shrink_h > (i64::from(in_w) - i64::from(width)) * 2);
    let resize_err = |e: &dyn std::fmt::Display| Error::Invalid(format!("resize failed: {e}"));
    let mut resizer = Resizer::new();
    let mut current: Option<Wide> = None;
    for horizontal in [horizontal_first, !horizontal_first] {
        let from = current.as_ref().unwrap_or(src);
        // This pass's axis: input and output sizes, and the window on the output.
        let (n_in, n_out, w0, wl) = match horizontal {
            true => (from.width, width, window.left, window.width),
            false => (from.height, height, window.top, window.height),
        };
        if n_in == n_out && (w0, wl) == (0, n_out) {
            continue;
        }
        // The window's preimage [start, start + len) on the source (the whole axis exactly
        // when the window is: then the coefficients are the full resize's, bit for bit).
        let (start, len) = if (w0, wl) == (0, n_out) {
            (0.0, f64::from(n_in))
        } else {
            let scale = f64::from(n_in) / f64::from(n_out);
            let start = f64::from(w0) * scale;
            (start, (f64::from(wl) * scale).min(f64::from(n_in) - start))
        };
        let (crop, (w, h)) = match horizontal {
            true => ((start, 0.0, len, f64::from(from.height)), (wl, from.height)),
            false => ((0.0, start, f64::from(from.width), len), (from.width, wl)),
        };
        let mut out = Wide { width: w, height: h, samples: vec![0; 3 * w as usize * h as usize] };
        let src_view =
            TypedImageRef::new(from.width, from.height, from.pixels()).map_err(|e| resize_err(&e))?;
        let mut dst_view = TypedImage::from_pixels_slice(w, h, bytemuck::cast_slice_mut(&mut out.samples))
            .map_err(|e| resize_err(&e))?;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
            .crop(crop.0, crop.1, crop.2, crop.3);
        resizer.resize_typed(&src_view, &mut dst_view, &options).map_err(|e| resize_err(&e))?;
        // Round to the nearest level, round(v / 257): (t - t / 256) / 256 with t = v + 128
        // equals it for every u16 (checked exhaustively in a test), and shifts vectorise.
        for v in &mut out.samples {
            *v = nearest_level(*v) * 257;
        }
        current = Some(out);
    }
    Ok(current.unwrap_or_else(|| Wide { samples: src.samples.clone(), ..*src }))
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of a crop whose area is a
/// uniform fraction in `scale` of the image and whose aspect ratio (w/h) is log-uniform in
/// `ratio`, sides rounded half-to-even (Python's `round`), at a uniform position; if none
/// fits, a centered crop of the whole image with the aspect ratio clamped into `ratio`.
pub fn random_resized_crop_params(
    width: u32,
    height: u32,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut impl rand::Rng,
) -> Result<CropBox> {
    if width == 0 || height == 0 {
        return Err(Error::Invalid(format!("cannot crop a {width}×{height} image")));
    }
    let valid = |(lo, hi): (f64, f64)| lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi;
    if !valid(scale) || !valid(ratio) {
        return Err(Error::Invalid(format!(
            "invalid RandomResizedCrop range: scale {scale:?}, ratio {ratio:?}"
        )));
    }
    let (w_img, h_img) = (f64::from(width), f64::from(height));
    let area = w_img * h_img;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target_area = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, log_lo, log_hi).exp();
        let w = (target_area * aspect).sqrt().round_ties_even();
        let h = (target_area / aspect).sqrt().round_ties_even();
        if 0.0 < w && w <= w_img && 0.0 < h && h <= h_img {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return Ok(CropBox { top, left, height: h, width: w });
        }
    }
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < ratio.0 {
        let h = (w_img / ratio.0).round_ties_even().clamp(1.0, h_img) as u32;
        (width, h)
    } else if in_ratio > ratio.1 {
        let w = (h_img * ratio.1).round_ties_even().clamp(1.0, w_img) as u32;
        (w, height)
    } else {
        (width, height)
    };
    Ok(CropBox { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w })
}

/// `torch.empty(1).uniform_(lo, hi)`, in `f64`.
fn uniform<R: rand::Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// Pixels above which an image is refused before decoding, as PIL (the reference
/// pipeline's decoder) refuses it with `DecompressionBombError`: twice its
/// `MAX_IMAGE_PIXELS` of 89,478,485. A small file can declare a huge image (a 2.6 MB PNG of
/// 30,000 × 30,000 took 8 GB to decode), and the loader decodes several at once.
const MAX_PIXELS: u64 = 2 * 89_478_485;

/// Decodes an image file to 8-bit RGB as HF's CLIP pipeline sees it: EXIF orientation
/// applied; grey, palette and CMYK expanded to RGB; transparency composited onto white
/// (transformers' `convert_to_rgb`); 16-bit samples reduced to their high byte. The format is
/// sniffed from the content, not the extension. Errors name the file and the cause.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let image_err = |msg: String| Error::Image { path: path.to_path_buf(), msg };
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    if reader.format().is_none() {
        return Err(image_err(
            "unrecognised image format (supported: PNG, JPEG, BMP, WebP, TIFF)".to_string(),
        ));
    }
    let mut decoder = reader.into_decoder().map_err(|e| image_err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(image_err(format!(
            "{w} × {h} pixels is more than the {MAX_PIXELS} that PIL decodes (a decompression bomb?)"
        )));
    }
    // Unreadable EXIF is not a reason to reject pixels that decode: no rotation then.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| image_err(e.to_string()))?;
    img.apply_orientation(orientation);
    // 16-bit samples: their high byte, as the reference does.
    let is_16_bit = matches!(
        img,
        DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_)
    );
    let high_byte = |raw: Vec<u16>| -> Vec<u8> { raw.into_iter().map(|v| (v >> 8) as u8).collect() };
    let (w, h) = (img.width(), img.height());
    if !img.color().has_alpha() {
        return match img {
            DynamicImage::ImageRgb8(rgb) => Ok(rgb),
            other if is_16_bit => RgbImage::from_raw(w, h, high_byte(other.to_rgb16().into_raw()))
                .ok_or_else(|| image_err("inconsistent 16-bit image buffer".to_string())),
            other => Ok(other.to_rgb8()),
        };
    }
    let rgba = if is_16_bit { high_byte(img.to_rgba16().into_raw()) } else { img.to_rgba8().into_raw() };
    Ok(composite_on_white(w, h, &rgba))
}

/// Transparency over a white background, as transformers' `convert_to_rgb` does before
/// CLIP preprocessing (PIL `alpha_composite`): `c·a + 255·(1 − a)`, rounded.
fn composite_on_white(w: u32, h: u32, rgba: &[u8]) -> RgbImage {
    let mut out = RgbImage::new(w, h);
    for (dst, px) in out.pixels_mut().zip(rgba.chunks_exact(4)) {
        let a = px[3] as u32;
        for (out, &c) in dst.0.iter_mut().zip(px) {
            *out = ((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// What a preprocessing config asks for; `None` = not said.
struct ParsedConfig {
    size: Option<usize>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Config { path: path.to_path_buf(), msg: e.to_string() })
}

fn config_err(path: &Path, msg: String) -> Error {
    Error::Config { path: path.to_path_buf(), msg }
}

fn as_size(path: &Path, key: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| config_err(path, format!("{key} should be a positive integer, found {v}")))
}

fn as_triple(path: &Path, key: &str, v: &Value) -> Result<[f32; 3]> {
    let bad = || config_err(path, format!("{key} should be 3 numbers, found {v}"));
    let arr = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(arr) {
        *o = x.as_f64().ok_or_else(bad)? as f32;
    }
    Ok(out)
}

fn as_std(path: &Path, key: &str, v: &Value) -> Result<[f32; 3]> {
    let std = as_triple(path, key, v)?;
    if std.iter().all(|&x| x > 0.0 && x.is_finite()) {
        Ok(std)
    } else {
        Err(config_err(path, format!("{key} {v} must be positive")))
    }
}

/// A square size given as `n`, `{"height": n, "width": n}`, `{"shortest_edge": n}` or `[n, n]`.
fn square_size(path: &Path, key: &str, v: &Value) -> Result<usize> {
    if let Some(arr) = v.as_array() {
        return match arr.as_slice() {
            [h, w] if h == w => as_size(path, key, h),
            [n] => as_size(path, key, n),
            _ => Err(config_err(path, format!("{key} {v} is not a square size"))),
        };
    }
    let Some(obj) = v.as_object() else {
        return as_size(path, key, v);
    };
    if let Some(n) = obj.get("shortest_edge") {
        return as_size(path, key, n);
    }
    match (obj.get("height"), obj.get("width")) {
        (Some(h), Some(w)) if h == w => as_size(path, key, h),
        _ => Err(config_err(path, format!("{key} {v} is not a square size or a shortest edge"))),
    }
}

fn parse_hf_config(path: &Path, json: &Value) -> Result<ParsedConfig> {
    if let Some(r) = json.get("resample") {
        if r.as_u64() != Some(3) {
            return Err(config_err(path, format!("resample {r} is not supported: CLIP uses 3 (bicubic)")));
        }
    }
    let crop = match json.get("crop_size") {
        Some(v) if !v.is_null() => Some(square_size(path, "crop_size", v)?),
        _ => None,
    };
    let resize = match json.get("size") {
        Some(v) if !v.is_null() => Some(square_size(path, "size", v)?),
        _ => None,
    };
    if let (Some(c), Some(r)) = (crop, resize) {
        if c != r {
            return Err(config_err(
                path,
                format!("resizing to {r} then cropping {c} is not supported (CLIP uses one size)"),
            ));
        }
    }
    Ok(ParsedConfig {
        size: crop.or(resize),
        mean: json.get("image_mean").map(|v| as_triple(path, "image_mean", v)).transpose()?,
        std: json.get("image_std").map(|v| as_std(path, "image_std", v)).transpose()?,
    })
}

fn parse_open_clip_config(path: &Path, cfg: &Value) -> Result<ParsedConfig> {
    if let Some(i) = cfg.get("interpolation") {
        if i.as_str() != Some("bicubic") {
            return Err(config_err(path, format!("interpolation {i} is not supported: CLIP uses bicubic")));
        }
    }
    if let Some(m) = cfg.get("resize_mode") {
        if m.as_str() != Some("shortest") {
            return Err(config_err(path, format!("resize_mode {m} is not supported: CLIP uses shortest")));
        }
    }
    Ok(ParsedConfig {
        size: cfg.get("size").map(|v| square_size(path, "preprocess_cfg.size", v)).transpose()?,
        mean: cfg.get("mean").map(|v| as_triple(path, "preprocess_cfg.mean", v)).transpose()?,
        std: cfg.get("std").map(|v| as_std(path, "preprocess_cfg.std", v)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_level_rounds_every_sample() {
        for v in 0..=u16::MAX {
            assert_eq!(u32::from(nearest_level(v)), (u32::from(v) + 128) / 257, "{v}");
        }
    }

    /// The eval transform's resize of the center crop alone against the whole resize,
    /// cropped afterwards, on images with hard edges (where the bicubic overshoots): wide,
    /// tall, upscaled, square, and shrunk along the other axis first.
    #[test]
    fn windowed_resize_is_the_whole_resize_cropped() {
        let (mut samples, mut differing) = (0usize, 0usize);
        let sizes = [
            (500, 375),
            (375, 500),
            (640, 480),
            (1000, 23),
            (23, 1000),
            (41, 29),
            (224, 224),
            (225, 224),
            (227, 224),
        ];
        for (w, h) in sizes {
            let img = RgbImage::from_fn(w, h, |x, y| {
                let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 7;
                image::Rgb([(v % 7 * 40) as u8, ((x / 3 + y / 5) % 2 * 255) as u8, (v % 251) as u8])
            });
            let src = Wide::of(&img, CropBox { top: 0, left: 0, height: h, width: w });
            for s in [224, 61, 32] {
                let (nw, nh) = shortest_side_size(w, h, s).unwrap();
                let whole = resize_levels(&src, (nw, nh), CropBox { top: 0, left: 0, height: nh, width: nw })
                    .unwrap();
                let crop = CropBox { top: (nh - s) / 2, left: (nw - s) / 2, height: s, width: s };
                let window = resize_levels(&src, (nw, nh), crop).unwrap();
                assert_eq!((window.width, window.height), (s, s));
                let row = 3 * nw as usize;
                for y in 0..s as usize {
                    let start = (crop.top as usize + y) * row + 3 * crop.left as usize;
                    let want = &whole.samples[start..start + 3 * s as usize];
                    let got = &window.samples[3 * s as usize * y..3 * s as usize * (y + 1)];
                    for (a, b) in got.iter().zip(want) {
                        assert!(a.abs_diff(*b) <= 257, "{w}×{h} at {s}: {a} vs {b}");
                        differing += usize::from(a != b);
                    }
                    samples += want.len();
                }
            }
        }
        // Only the crop's floating-point position may differ, in the last bit.
        assert!(differing * 10_000 <= samples, "{differing} of {samples} samples differ");
        eprintln!("{differing} of {samples} samples differ by one level");
    }
}
