//! Reading and writing checkpoints: safetensors files (single, sharded, memory-mapped),
//! and the OpenAI / open_clip key layout mapped onto HF `CLIPModel` names.
//!
//! Files are memory-mapped (memmap2) so a 1.7 GB ViT-L checkpoint is never copied whole
//! into RAM before the model takes its tensors one at a time. The safetensors header is
//! validated before anything is read (offsets inside the file, no overlap, exact size),
//! so a truncated or hostile file is an error naming the file, not a panic.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorView};
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// A checkpoint seen through HF `CLIPModel` parameter names.
pub trait WeightSource {
    /// Names the checkpoint in error messages (its file or directory).
    fn describe(&self) -> String;
    /// Every tensor name it holds, in HF naming.
    fn names(&self) -> Vec<String>;
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The tensor as f32 on `device`.
    fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor>;
}

/// One memory-mapped safetensors file with its validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap reader we rely on nobody
        // truncating the file while it is open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), mmap, header_len, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.metadata.info(name).map(|i| i.dtype)
    }

    /// The `__metadata__` string map of the header.
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self.metadata.info(name).ok_or_else(|| Error::Safetensors {
            path: self.path.clone(),
            msg: format!("no tensor named '{name}'"),
        })?;
        let start = 8 + self.header_len;
        let data = &self.mmap[start + info.data_offsets.0..start + info.data_offsets.1];
        TensorView::new(info.dtype, info.shape.clone(), data).map_err(|e| self.bad(name, e))
    }

    /// The tensor in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.view(name)?.load(device).map_err(|e| self.bad(name, e))
    }

    /// A floating-point tensor (f32/f16/bf16/f64) converted to f32; anything else is an error.
    pub fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.dtype(name) {
            Some(Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) | None => {}
            Some(other) => {
                return Err(self.bad(name, format!("dtype {other:?}, expected a float tensor")));
            }
        }
        Ok(self.load(name, device)?.to_dtype(DType::F32)?)
    }

    fn bad(&self, name: &str, cause: impl std::fmt::Display) -> Error {
        Error::Safetensors { path: self.path.clone(), msg: format!("tensor '{name}': {cause}") }
    }
}

/// A checkpoint in HF naming: one `.safetensors` file or the shards listed by
/// `model.safetensors.index.json`.
pub struct Checkpoint {
    label: String,
    files: Vec<SafetensorsFile>,
    /// Which file holds each tensor.
    routing: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// `path` is a `.safetensors` file, an `*.index.json`, or an HF model directory.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let single = path.join("model.safetensors");
            let index = path.join("model.safetensors.index.json");
            return match (single.exists(), index.exists()) {
                (true, _) => Self::open(&single),
                (false, true) => Self::open(&index),
                (false, false) => Err(Error::Invalid(format!(
                    "{}: no model.safetensors or model.safetensors.index.json \
                     (PyTorch .bin checkpoints are not read: convert them to safetensors)",
                    path.display()
                ))),
            };
        }
        let shard_paths = if path.to_string_lossy().ends_with(".index.json") {
            shards_of_index(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let files = shard_paths.iter().map(|p| SafetensorsFile::open(p)).collect::<Result<Vec<_>>>()?;
        let mut routing = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.names() {
                if let Some(prev) = routing.insert(name.clone(), i) {
                    return Err(Error::Invalid(format!(
                        "tensor '{name}' is in both {} and {}",
                        files[prev].path.display(),
                        f.path.display()
                    )));
                }
            }
        }
        Ok(Self { label: path.display().to_string(), files, routing })
    }

    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.routing.get(name).map(|&i| &self.files[i])
    }

    /// The `__metadata__` of the first file (where wise writes its own).
    pub fn user_metadata(&self) -> Option<&HashMap<String, String>> {
        self.files.first().and_then(|f| f.user_metadata())
    }
}

impl WeightSource for Checkpoint {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn names(&self) -> Vec<String> {
        self.routing.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.file_of(name)?.shape(name)
    }

    fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.file_of(name) {
            Some(f) => f.load_f32(name, device),
            None => Err(Error::Invalid(format!("{}: no tensor named '{name}'", self.label))),
        }
    }
}

/// Whether a sharded index's shard name is a file beside the index: no folders, nothing
/// that climbs out (`..`) or starts elsewhere (an absolute path).
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.contains(['/', '\\']) && !matches!(name, "" | "." | "..")
}

fn shards_of_index(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |msg: String| Error::Config { path: index.to_path_buf(), msg };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("`weight_map` values must be file names".into()))?;
        if !is_plain_file_name(file) {
            return Err(bad(format!("shard name '{file}' is not a plain file name")));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// How one HF tensor is read from the open_clip tensor it comes from.
#[derive(Debug, Clone, Copy)]
enum Part {
    Whole,
    /// Stored as `x @ W` (`[in, out]`); HF's Linear wants `[out, in]`.
    Transposed,
    /// Part `i` of 3 of a fused `in_proj` (q, k, v stacked on dim 0).
    InProj(usize),
}

/// An OpenAI / open_clip state dict (`visual.conv1.weight`, `transformer.resblocks.0...`)
/// presented under HF names. The mapping is the inverse of transformers'
/// `convert_clip_original_pytorch_to_hf.py`, checked by a fixture made with open_clip.
pub struct OpenClipCheckpoint {
    inner: Checkpoint,
    /// HF name -> (stored key, which part of it).
    map: BTreeMap<String, (String, Part)>,
    /// open_clip keys that have no HF counterpart.
    unknown: Vec<String>,
}

impl OpenClipCheckpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let inner = Checkpoint::open(path)?;
        let mut map = BTreeMap::new();
        let mut unknown = Vec::new();
        for key in inner.names() {
            // State dicts saved from DataParallel prefix every key with `module.`.
            let bare = key.strip_prefix("module.").unwrap_or(&key);
            let remapped = open_clip_to_hf(bare);
            if remapped.is_empty() && !is_open_clip_buffer(bare) {
                unknown.push(key.clone());
            }
            for (hf, part) in remapped {
                map.insert(hf, (key.clone(), part));
            }
        }
        Ok(Self { inner, map, unknown })
    }

    /// The checkpoint under its own (open_clip) names, e.g. to infer a config from shapes.
    pub fn raw(&self) -> &Checkpoint {
        &self.inner
    }
}

/// Buffers open_clip/OpenAI checkpoints may hold that are not parameters.
fn is_open_clip_buffer(key: &str) -> bool {
    matches!(key, "attn_mask" | "input_resolution" | "context_length" | "vocab_size")
}

/// The HF tensor(s) an open_clip key becomes.
fn open_clip_to_hf(key: &str) -> Vec<(String, Part)> {
    let same = |hf: String| vec![(hf, Part::Whole)];
    let (tower, rest) = match key.strip_prefix("visual.") {
        Some(rest) => ("vision_model", rest),
        None => ("text_model", key),
    };
    // Tower-level tensors.
    match (tower, rest) {
        ("vision_model", "conv1.weight") => {
            return same("vision_model.embeddings.patch_embedding.weight".into())
        }
        ("vision_model", "class_embedding") => return same("vision_model.embeddings.class_embedding".into()),
        ("vision_model", "positional_embedding") => {
            return same("vision_model.embeddings.position_embedding.weight".into())
        }
        ("vision_model", "proj") => return vec![("visual_projection.weight".into(), Part::Transposed)],
        ("text_model", "token_embedding.weight") => {
            return same("text_model.embeddings.token_embedding.weight".into())
        }
        ("text_model", "positional_embedding") => {
            return same("text_model.embeddings.position_embedding.weight".into())
        }
        ("text_model", "text_projection") => {
            return vec![("text_projection.weight".into(), Part::Transposed)]
        }
        ("text_model", "logit_scale") => return same("logit_scale".into()),
        _ => {}
    }
    for (norm, hf_norm) in
        [("ln_pre.", "pre_layrnorm."), ("ln_post.", "post_layernorm."), ("ln_final.", "final_layer_norm.")]
    {
        if let Some(p) = rest.strip_prefix(norm) {
            return same(format!("{tower}.{hf_norm}{p}"));
        }
    }
    // transformer.resblocks.{i}.<part>
    let Some(block) = rest.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((layer, part)) = block.split_once('.') else {
        return Vec::new();
    };
    let prefix = format!("{tower}.encoder.layers.{layer}");
    if let Some(kind) = part.strip_prefix("attn.in_proj_") {
        return ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("{prefix}.self_attn.{p}.{kind}"), Part::InProj(i)))
            .collect();
    }
    for (oc, hf) in [
        ("attn.out_proj.", "self_attn.out_proj."),
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ] {
        if let Some(p) = part.strip_prefix(oc) {
            return same(format!("{prefix}.{hf}{p}"));
        }
    }
    Vec::new()
}

impl WeightSource for OpenClipCheckpoint {
    fn describe(&self) -> String {
        format!("{} (open_clip layout)", self.inner.describe())
    }

    fn names(&self) -> Vec<String> {
        // Unknown open_clip keys stay visible under their own name, so a load reports them
        // as unexpected instead of dropping them.
        self.map.keys().cloned().chain(self.unknown.iter().cloned()).collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (key, part) = self.map.get(name)?;
        let stored = self.inner.shape(key)?;
        Some(match part {
            Part::Whole => stored,
            Part::Transposed => stored.into_iter().rev().collect(),
            Part::InProj(_) => {
                let mut s = stored;
                s[0] /= 3;
                s
            }
        })
    }

    fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        let Some((key, part)) = self.map.get(name) else {
            return Err(Error::Invalid(format!("{}: no tensor for '{name}'", self.describe())));
        };
        let stored = self.inner.load_f32(key, device)?;
        Ok(match part {
            Part::Whole => stored,
            Part::Transposed => stored.t()?.contiguous()?,
            Part::InProj(i) => {
                let rows = stored.dim(0)? / 3;
                stored.narrow(0, i * rows, rows)?.contiguous()?
            }
        })
    }
}

/// Tensors already in memory, under HF names: a model built from another model's weights
/// (a classifier from a CLIP, an interpolation of two checkpoints) goes through the same
/// name-and-shape checks as one read from disk.
pub struct InMemory {
    pub label: String,
    pub tensors: BTreeMap<String, Tensor>,
}

impl WeightSource for InMemory {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }

    fn load_f32(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.tensors.get(name) {
            // A copy, so the new model's parameters never alias the source's.
            Some(t) => Ok(t.to_device(device)?.to_dtype(DType::F32)?.copy()?),
            None => Err(Error::Invalid(format!("{}: no tensor named '{name}'", self.label))),
        }
    }
}

/// Write tensors to `path` as safetensors, atomically: a temp file in the same directory,
/// then a rename, so a crash or a kill never leaves a half-written file under `path`.
pub fn save_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let contiguous =
        tensors.iter().map(|(n, t)| Ok((n.clone(), t.contiguous()?))).collect::<Result<Vec<_>>>()?;
    let result =
        safetensors::serialize_to_file(contiguous.iter().map(|(n, t)| (n.as_str(), t)), metadata, &tmp)
            .map_err(|e| Error::Safetensors { path: path.to_path_buf(), msg: format!("writing: {e}") })
            .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_keys_map_to_hf() {
        let m = open_clip_to_hf("visual.transformer.resblocks.3.attn.in_proj_weight");
        let names: Vec<_> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "vision_model.encoder.layers.3.self_attn.q_proj.weight",
                "vision_model.encoder.layers.3.self_attn.k_proj.weight",
                "vision_model.encoder.layers.3.self_attn.v_proj.weight"
            ]
        );
        let m = open_clip_to_hf("transformer.resblocks.0.mlp.c_proj.bias");
        assert_eq!(m[0].0, "text_model.encoder.layers.0.mlp.fc2.bias");
        let m = open_clip_to_hf("visual.ln_pre.weight");
        assert_eq!(m[0].0, "vision_model.pre_layrnorm.weight");
        assert!(open_clip_to_hf("visual.trunk.blocks.0.norm1.weight").is_empty());
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_naming_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("good.safetensors");
        let t = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((3, 4))?;
        save_safetensors_atomic(&good, &[("w".into(), t)], None)?;
        let bytes = std::fs::read(&good)?;
        let cases = [
            ("truncated.safetensors", bytes[..bytes.len() - 5].to_vec()),
            ("garbage.safetensors", b"not a safetensors file at all".to_vec()),
            ("huge-header.safetensors", u64::MAX.to_le_bytes().to_vec()),
            ("empty.safetensors", Vec::new()),
        ];
        for (name, data) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, data)?;
            let err = SafetensorsFile::open(&p).err().expect("must fail").to_string();
            assert!(err.contains(name), "{err}");
        }
        let f = SafetensorsFile::open(&good)?;
        assert_eq!(f.load_f32("w", &Device::Cpu)?.to_vec2::<f32>()?[2][3], 11.0);
        Ok(())
    }

    #[test]
    fn integer_tensor_where_float_expected_is_an_error() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("ints.safetensors");
        let t = Tensor::new(&[1i64, 2, 3], &Device::Cpu)?;
        save_safetensors_atomic(&p, &[("ids".into(), t)], None)?;
        let err = SafetensorsFile::open(&p)?.load_f32("ids", &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("ids") && err.contains("I64") && err.contains("ints.safetensors"), "{err}");
        Ok(())
    }
}
