//! wise-data: the images WiSE-FT fine-tunes and evaluates on, from disk to batches.
//!
//! WiSE-FT's claim is about distribution shift: fine-tune on one dataset, keep accuracy on
//! others of the same classes. That needs datasets whose classes line up by *readable name*
//! (what CLIP's zero-shot prompts are made of), reading that does not depend on thread
//! timing, and real shifted data. This crate provides:
//!
//! - [`dataset`]: [`Dataset`] = class keys, readable class names, labelled files; opened
//!   from an ImageFolder tree or a `path,label` CSV manifest.
//! - [`classnames`]: `classnames.txt`, mapping class keys to readable names.
//! - [`loader`]: [`Loader`] → batches of preprocessed `[B, 3, S, S]` tensors, decoded in
//!   parallel ahead of the consumer; deterministic eval order, seeded training shuffle and
//!   augmentation, and a choice to stop on or skip unreadable images.
//! - [`mod@import`]: MNIST, MNIST-5k, USPS, Semeion, optdigits (digits with natural shifts) and
//!   CIFAR-10, from their public raw files into ImageFolder trees.
//!
//! Decoding and preprocessing are `wise_clip::preprocess` (`load_rgb`, `ImagePreprocessor`),
//! so the pixels match HF's CLIP processor.

pub mod classnames;
pub mod dataset;
pub mod error;
pub mod import;
pub mod loader;
pub mod output;

pub use classnames::{write_classnames, ClassNames, CLASSNAMES_FILE};
pub use dataset::{Dataset, Sample, IMAGE_EXTENSIONS};
pub use error::{Error, Result};
pub use import::{import, ImportSummary, Source, SplitSummary};
pub use loader::{sample_rng, shuffled_order, Batch, Batches, Loader, OnBadImage, SkipReport};
