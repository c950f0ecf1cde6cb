//! Batches of preprocessed images, made in the background while the model works.
//!
//! Decoding and resizing is the slow part of feeding CLIP, so a producer thread prepares
//! batches ahead: each batch's images are decoded and preprocessed in parallel (rayon), and
//! finished batches wait in a bounded queue (`sync_channel` of `prefetch` batches). The bound
//! keeps memory flat (a 256 × 3 × 224 × 224 batch is 154 MB) and makes the producer wait
//! when the consumer is slower. Dropping the iterator stops the producer: its next `send`
//! fails, and it checks a stop flag before each batch; `Drop` then joins it, so no work
//! outlives the iterator.
//!
//! Results never depend on thread scheduling:
//! - eval order is the dataset's order;
//! - the training order is a permutation drawn from `(seed, epoch)`, the same every time and
//!   different each epoch;
//! - each training sample's random crop draws from its own generator seeded by
//!   `(seed, epoch, dataset index)`, not from a shared one that threads would race for.
//!
//! The generator is rand's `StdRng` (ChaCha12 in rand 0.9), seeded directly with those
//! numbers, so streams for different samples can never coincide. rand does not promise the
//! same stream across its major versions; the order is reproducible for a given build.
//!
//! Pixels travel between threads as plain vectors; the tensor is made on the consumer's
//! thread, so GPU contexts are only ever touched by the thread that owns the model. For a
//! CPU model they are normalised `f32`, made on the loader's threads; for an accelerator,
//! 8-bit levels, a quarter of the bytes to copy to it, normalised there through the same
//! table (`ImagePreprocessor::normalize_levels`): a batch of 128 ViT-B/16 images is 19 MB
//! to copy instead of 77 MB, and the host's cores, which decode what the device consumes,
//! skip the `f32` pass.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;
use wise_clip::preprocess::load_rgb;
use wise_clip::ImagePreprocessor;

use crate::{Dataset, Error, Result, Sample};

/// What to do with an image that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadImage {
    /// Stop: the iterator yields the error (naming the file) and then ends.
    #[default]
    Error,
    /// Leave the sample out of its batch (which is then smaller), count it, and go on;
    /// [`Batches::skipped`] reports them. For scraped data where a few broken files are
    /// expected.
    Skip,
}

/// Images skipped under [`OnBadImage::Skip`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipReport {
    pub count: usize,
    /// The first [`SkipReport::KEPT`] skipped files and why, in dataset-iteration order.
    pub first: Vec<(PathBuf, String)>,
}

impl SkipReport {
    /// How many skipped files are kept by name.
    pub const KEPT: usize = 5;
}

impl std::fmt::Display for SkipReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "skipped {} unreadable image{}", self.count, if self.count == 1 { "" } else { "s" })?;
        for (path, why) in &self.first {
            write!(f, "\n  {}: {why}", path.display())?;
        }
        if self.count > self.first.len() {
            write!(f, "\n  … and {} more", self.count - self.first.len())?;
        }
        Ok(())
    }
}

/// One batch, ready for the vision tower.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, S, S]` `f32`, normalised, on the loader's device.
    pub pixels: Tensor,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// Index of each image in [`Dataset::samples`].
    pub indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The labels as a `[B]` `u32` tensor on `device`, for a cross-entropy loss.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::new(self.labels.as_slice(), device)?)
    }
}

/// Makes [`Batches`] of a dataset: in dataset order for evaluation, shuffled and augmented
/// for training. Cheap to keep; each pass starts its own producer.
#[derive(Debug, Clone)]
pub struct Loader {
    samples: Arc<[Sample]>,
    preprocessor: ImagePreprocessor,
    device: Device,
    batch_size: usize,
    prefetch: usize,
    on_bad_image: OnBadImage,
    drop_last: bool,
    normalize_on_device: bool,
}

impl Loader {
    /// Batches of 32, 2 batches prefetched, stop on a bad image, keep the last short batch;
    /// normalised on the device unless it is the CPU.
    pub fn new(dataset: &Dataset, preprocessor: ImagePreprocessor, device: &Device) -> Self {
        Self {
            samples: dataset.samples.clone().into(),
            preprocessor,
            device: device.clone(),
            batch_size: 32,
            prefetch: 2,
            on_bad_image: OnBadImage::Error,
            drop_last: false,
            normalize_on_device: !device.is_cpu(),
        }
    }

    /// Where the pixels are normalised: on the device (8-bit levels copied to it), or on
    /// the loader's threads (`f32` copied). The batches are identical either way.
    pub fn with_normalize_on_device(mut self, on_device: bool) -> Self {
        self.normalize_on_device = on_device;
        self
    }

    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Finished batches that may wait in the queue (0: the producer hands each batch over
    /// directly and only then starts the next).
    pub fn with_prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches;
        self
    }

    pub fn with_on_bad_image(mut self, policy: OnBadImage) -> Self {
        self.on_bad_image = policy;
        self
    }

    /// Leave out the last batch when it would be smaller than the batch size (training
    /// with batch statistics, or a fixed step count per epoch).
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Batches in one pass (before any skipped images).
    pub fn num_batches(&self) -> usize {
        match (self.batch_size, self.drop_last) {
            (0, _) => 0,
            (b, true) => self.samples.len() / b,
            (b, false) => self.samples.len().div_ceil(b),
        }
    }

    /// One pass in dataset order with the eval transform.
    pub fn eval(&self) -> Result<Batches> {
        self.start((0..self.samples.len()).collect(), Transform::Eval)
    }

    /// One training epoch: the order is [`shuffled_order`]`(len, seed, epoch)` and each
    /// image gets the training transform with [`sample_rng`]`(seed, epoch, index)`.
    pub fn train(&self, seed: u64, epoch: u64) -> Result<Batches> {
        self.start(shuffled_order(self.samples.len(), seed, epoch), Transform::Train { seed, epoch })
    }

    /// A training epoch from micro-batch `first_batch` on (to resume mid-epoch), in the
    /// epoch's shuffled order; `augment: false` keeps the order but uses the eval transform.
    pub fn train_from(&self, seed: u64, epoch: u64, augment: bool, first_batch: usize) -> Result<Batches> {
        let mut order = shuffled_order(self.samples.len(), seed, epoch);
        if self.drop_last {
            order.truncate(order.len() / self.batch_size.max(1) * self.batch_size);
        }
        order.drain(..(first_batch * self.batch_size).min(order.len()));
        let transform = if augment { Transform::Train { seed, epoch } } else { Transform::Eval };
        self.start(order, transform)
    }

    fn start(&self, mut order: Vec<usize>, transform: Transform) -> Result<Batches> {
        if self.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".to_string()));
        }
        if self.drop_last {
            order.truncate(order.len() / self.batch_size * self.batch_size);
        }
        let num_batches = order.len().div_ceil(self.batch_size);
        let (tx, rx) = sync_channel(self.prefetch);
        let stop = Arc::new(AtomicBool::new(false));
        let skipped = Arc::new(Mutex::new(SkipReport::default()));
        let producer = Producer {
            samples: self.samples.clone(),
            preprocessor: self.preprocessor.clone(),
            order,
            batch_size: self.batch_size,
            transform,
            levels: self.normalize_on_device,
            on_bad_image: self.on_bad_image,
            stop: stop.clone(),
            skipped: skipped.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("wise-data-loader".to_string())
            .spawn(move || producer.run(&tx))
            .map_err(|e| Error::Loader(format!("cannot start the producer thread: {e}")))?;
        Ok(Batches {
            rx: Some(rx),
            producer: Some(handle),
            stop,
            skipped,
            device: self.device.clone(),
            preprocessor: self.preprocessor.clone(),
            num_batches,
            finished: false,
            waited: Duration::ZERO,
        })
    }
}

/// The training order of epoch `epoch`: a permutation of `0..len` determined by
/// `(seed, epoch)`.
pub fn shuffled_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut seeded_rng(seed, epoch, 0, Stream::Order));
    order
}

/// The generator for the training augmentation of dataset sample `index` in `epoch`.
pub fn sample_rng(seed: u64, epoch: u64, index: usize) -> StdRng {
    seeded_rng(seed, epoch, index as u64, Stream::Sample)
}

/// What a generator is for, so the order and sample 0 never share a stream.
#[derive(Clone, Copy)]
enum Stream {
    Order = 1,
    Sample = 2,
}

/// ChaCha keyed by all four numbers: distinct inputs give unrelated streams.
fn seeded_rng(seed: u64, epoch: u64, index: u64, stream: Stream) -> StdRng {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_exact_mut(8).zip([seed, epoch, index, stream as u64]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    StdRng::from_seed(key)
}

#[derive(Debug, Clone, Copy)]
enum Transform {
    Eval,
    Train { seed: u64, epoch: u64 },
}

/// A batch on its way from the producer: plain CPU data.
struct CpuBatch {
    pixels: HostPixels,
    labels: Vec<u32>,
    indices: Vec<usize>,
}

/// An image's or a batch's pixels on the host, CHW: normalised, or 8-bit levels that the
/// device normalises.
enum HostPixels {
    Normalized(Vec<f32>),
    Levels(Vec<u8>),
}

impl HostPixels {
    fn with_capacity(levels: bool, capacity: usize) -> Self {
        if levels {
            Self::Levels(Vec::with_capacity(capacity))
        } else {
            Self::Normalized(Vec::with_capacity(capacity))
        }
    }

    /// Appends an image made the same way (the producer makes every image of a pass alike).
    fn push(&mut self, image: HostPixels) {
        match (self, image) {
            (Self::Normalized(batch), Self::Normalized(image)) => batch.extend_from_slice(&image),
            (Self::Levels(batch), Self::Levels(image)) => batch.extend_from_slice(&image),
            _ => unreachable!("one pass makes every image in one format"),
        }
    }
}

enum Message {
    Batch(CpuBatch),
    Failed(Error),
    /// Sent after the last batch, so a producer that died is told apart from one that
    /// finished.
    Done,
}

struct Producer {
    samples: Arc<[Sample]>,
    preprocessor: ImagePreprocessor,
    order: Vec<usize>,
    batch_size: usize,
    transform: Transform,
    /// Make 8-bit levels (normalised on the device) instead of normalised `f32`.
    levels: bool,
    on_bad_image: OnBadImage,
    stop: Arc<AtomicBool>,
    skipped: Arc<Mutex<SkipReport>>,
}

impl Producer {
    fn run(self, tx: &SyncSender<Message>) {
        let per_image = 3 * self.preprocessor.image_size * self.preprocessor.image_size;
        for chunk in self.order.chunks(self.batch_size) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let prepared: Vec<Result<HostPixels>> = chunk.par_iter().map(|&i| self.prepare(i)).collect();
            let mut batch = CpuBatch {
                pixels: HostPixels::with_capacity(self.levels, per_image * chunk.len()),
                labels: Vec::with_capacity(chunk.len()),
                indices: Vec::with_capacity(chunk.len()),
            };
            for (&index, result) in chunk.iter().zip(prepared) {
                match result {
                    Ok(pixels) => {
                        batch.pixels.push(pixels);
                        batch.labels.push(self.samples[index].label as u32);
                        batch.indices.push(index);
                    }
                    Err(e) if self.on_bad_image == OnBadImage::Skip => self.record_skip(index, &e),
                    Err(e) => {
                        let _ = tx.send(Message::Failed(e));
                        return;
                    }
                }
            }
            if batch.indices.is_empty() {
                continue;
            }
            if tx.send(Message::Batch(batch)).is_err() {
                return; // the consumer is gone
            }
        }
        let _ = tx.send(Message::Done);
    }

    /// Decodes and preprocesses one sample. A decoder that panics on a malformed file is
    /// treated like one that returns an error: bad input must not take the run down.
    fn prepare(&self, index: usize) -> Result<HostPixels> {
        let path = &self.samples[index].path;
        let result = catch_unwind(AssertUnwindSafe(|| -> wise_clip::Result<HostPixels> {
            let img = load_rgb(path)?;
            let pre = &self.preprocessor;
            let pixels = match (self.transform, self.levels) {
                (Transform::Eval, false) => pre.eval(&img).map(HostPixels::Normalized),
                (Transform::Eval, true) => pre.eval_levels(&img).map(HostPixels::Levels),
                (Transform::Train { seed, epoch }, levels) => {
                    let rng = &mut sample_rng(seed, epoch, index);
                    if levels {
                        pre.train_levels(&img, rng).map(HostPixels::Levels)
                    } else {
                        pre.train(&img, rng).map(HostPixels::Normalized)
                    }
                }
            };
            pixels.map_err(|e| match e {
                e @ wise_clip::Error::Image { .. } => e,
                other => wise_clip::Error::Image { path: path.clone(), msg: other.to_string() },
            })
        }));
        match result {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::from(wise_clip::Error::Image {
                path: path.clone(),
                msg: "the image decoder panicked on this file".to_string(),
            })),
        }
    }

    fn record_skip(&self, index: usize, error: &Error) {
        // A poisoned lock only means another thread panicked while holding it; the counts
        // are still usable.
        let mut report = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        report.count += 1;
        if report.first.len() < SkipReport::KEPT {
            report.first.push((self.samples[index].path.clone(), error.to_string()));
        }
    }
}

/// One pass over a dataset: an iterator of batches, prepared in the background.
///
/// Yields `Err` once (and then ends) if an image is bad under [`OnBadImage::Error`], or if
/// the producer thread dies. Drop it at any point to stop early.
pub struct Batches {
    rx: Option<Receiver<Message>>,
    producer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    skipped: Arc<Mutex<SkipReport>>,
    device: Device,
    preprocessor: ImagePreprocessor,
    num_batches: usize,
    finished: bool,
    /// How long `next` has waited for the producer so far.
    waited: Duration,
}

impl Batches {
    /// Images left out so far under [`OnBadImage::Skip`]; complete once the iterator has
    /// returned `None`.
    pub fn skipped(&self) -> SkipReport {
        self.skipped.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Batches this pass makes when no image is skipped.
    pub fn num_batches(&self) -> usize {
        self.num_batches
    }

    /// How long the consumer has waited for batches so far, including the batch's copy to
    /// the device: near zero while the loader keeps ahead of the model, most of the time
    /// when the data path is what limits a run.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    fn to_batch(&self, cpu: CpuBatch) -> Result<Batch> {
        let s = self.preprocessor.image_size;
        let shape = (cpu.indices.len(), 3, s, s);
        let pixels = match cpu.pixels {
            HostPixels::Normalized(v) => Tensor::from_vec(v, shape, &self.device)?,
            HostPixels::Levels(v) => {
                self.preprocessor.normalize_levels(&Tensor::from_vec(v, shape, &self.device)?)?
            }
        };
        Ok(Batch { pixels, labels: cpu.labels, indices: cpu.indices })
    }

    fn finish(&mut self) -> Option<String> {
        self.finished = true;
        self.rx = None;
        let handle = self.producer.take()?;
        match handle.join() {
            Ok(()) => None,
            Err(panic) => Some(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string()),
            ),
        }
    }
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("num_batches", &self.num_batches)
            .field("image_size", &self.preprocessor.image_size)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let start = Instant::now();
        let message = self.rx.as_ref()?.recv();
        let result = match message {
            Ok(Message::Batch(cpu)) => Some(self.to_batch(cpu)),
            Ok(Message::Failed(e)) => {
                self.finish();
                Some(Err(e))
            }
            Ok(Message::Done) => {
                self.finish();
                None
            }
            Err(_) => {
                let why = self.finish().unwrap_or_else(|| "it ended without finishing".to_string());
                Some(Err(Error::Loader(format!("the producer thread stopped: {why}"))))
            }
        };
        self.waited += start.elapsed();
        result
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver first wakes a producer blocked on a full queue.
        self.rx = None;
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}
