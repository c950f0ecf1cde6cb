//! `--freeze-encoder`: the linear-classifier baseline. The tower is fixed, so its features
//! are computed once (eval preprocessing, normalised as the head sees them) and cached on
//! disk under a key of everything they depend on: the tower's weights, the images (paths,
//! sizes, modification times, labels) and the preprocessing. Only the head trains.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use wise_clip::model::l2_normalize;
use wise_data::{shuffled_order, Dataset, Loader};
use wise_zeroshot::ImageClassifier;

use crate::{Error, Result};

pub struct FrozenFeatures {
    /// `[N, D]` normalised image features, in dataset order.
    pub features: Tensor,
    pub labels: Vec<u32>,
}

impl FrozenFeatures {
    pub fn load_or_compute(
        classifier: &ImageClassifier,
        dataset: &Dataset,
        cache_dir: &Path,
        batch_size: usize,
    ) -> Result<Self> {
        let labels: Vec<u32> = dataset.samples.iter().map(|s| s.label as u32).collect();
        let device = classifier.device();
        let path = cache_dir.join(format!("{}.safetensors", cache_key(classifier, dataset)?));
        if path.exists() {
            if let Ok(mut t) = candle_core::safetensors::load(&path, device) {
                if let Some(features) = t.remove("features").filter(|f| f.dim(0).ok() == Some(labels.len())) {
                    return Ok(Self { features, labels });
                }
            }
            // A damaged cache entry is recomputed, not trusted.
        }
        let loader =
            Loader::new(dataset, classifier.preprocessor(), device).with_batch_size(batch_size.max(1));
        let mut rows = Vec::new();
        // Each weight packed once for the whole dataset.
        wise_clip::frozen_weights(|| -> Result<()> {
            for batch in loader.eval()? {
                let batch = batch?;
                let pixels = batch.pixels.to_dtype(classifier.compute_dtype)?;
                let f = wise_clip::inference_mode(|| classifier.encoder.forward(&pixels))?;
                rows.push(l2_normalize(&f.to_dtype(DType::F32)?)?.detach());
            }
            Ok(())
        })?;
        let features = Tensor::cat(&rows, 0)?;
        wise_clip::weights::save_safetensors_atomic(
            &path,
            &[("features".to_string(), features.to_device(&Device::Cpu)?)],
            None,
        )?;
        Ok(Self { features, labels })
    }

    /// Training batches of epoch `epoch`, in the same shuffled order the image loader uses,
    /// from micro-batch `first_batch` on.
    pub fn epoch(
        &self,
        seed: u64,
        epoch: u64,
        batch_size: usize,
        first_batch: usize,
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let order = shuffled_order(self.labels.len(), seed, epoch);
        let device = self.features.device();
        order
            .chunks(batch_size)
            .skip(first_batch)
            .map(|chunk| {
                let idx: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
                let labels: Vec<u32> = chunk.iter().map(|&i| self.labels[i]).collect();
                let idx = Tensor::new(idx.as_slice(), device)?;
                Ok((self.features.index_select(&idx, 0)?, Tensor::new(labels.as_slice(), device)?))
            })
            .collect()
    }
}

/// Hex SHA-256 of the tower weights, the image list and the preprocessing.
fn cache_key(classifier: &ImageClassifier, dataset: &Dataset) -> Result<String> {
    let mut h = Sha256::new();
    for (name, var) in classifier.params.iter().filter(|(n, _)| !n.starts_with("classification_head.")) {
        h.update(name.as_bytes());
        let values = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        for v in values {
            h.update(v.to_le_bytes());
        }
    }
    for sample in &dataset.samples {
        let meta = std::fs::metadata(&sample.path)
            .map_err(|e| Error::Io { path: sample.path.clone(), source: e })?;
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        writeln_hash(
            &mut h,
            &format!("{}|{}|{}|{:?}", sample.path.display(), sample.label, meta.len(), mtime),
        );
    }
    let p = &classifier.meta.preprocessing;
    writeln_hash(&mut h, &format!("{}|{:?}|{:?}", p.image_size, p.mean, p.std));
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn writeln_hash(h: &mut Sha256, line: &str) {
    let _ = h.write_all(line.as_bytes());
    h.update(b"\n");
}

/// The default cache folder: `$WISE_CACHE/features`, else `~/.cache/wise/features`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("WISE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wise")))
        .unwrap_or_else(|| PathBuf::from(".wise-cache"));
    base.join("features")
}
