//! Where a model comes from: a local HF model directory, an OpenAI/open_clip state dict
//! in safetensors, or a Hugging Face hub id resolved through the standard HF cache.
//!
//! Hub ids go through hf-hub, so files land in (and are found in) the same cache as
//! Python's `huggingface_hub`: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`. With `HF_HUB_OFFLINE=1` nothing is downloaded and a model
//! missing from the cache is an error that says so.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

use crate::config::ClipConfig;
use crate::preprocess::ImagePreprocessor;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{Checkpoint, OpenClipCheckpoint, SafetensorsFile, WeightSource};
use crate::{Error, Result};

/// How the checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// transformers `CLIPModel` names (`vision_model.encoder.layers.0...`).
    Hf,
    /// OpenAI / open_clip names (`visual.transformer.resblocks.0...`).
    OpenClip,
}

/// A model location, resolved: its config, where its weights are, and the directory
/// whose tokenizer / preprocessor files (if any) go with it.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// What the user asked for (a path or a hub id), for messages and metadata.
    pub spec: String,
    pub config: ClipConfig,
    pub layout: Layout,
    /// A `.safetensors` file, an `*.index.json`, or an HF model directory.
    pub weights_path: PathBuf,
    /// Directory with `tokenizer.json` / `preprocessor_config.json`, when there is one.
    pub dir: Option<PathBuf>,
}

/// Hub settings, normally from the environment ([`HubOptions::from_env`]).
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub revision: String,
    pub token: Option<String>,
}

impl HubOptions {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .unwrap_or_else(|| Cache::default().path().clone());
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        Self { cache_dir, offline, revision: "main".to_string(), token: var("HF_TOKEN") }
    }
}

/// Files of an HF CLIP repo that wise reads; only the config and the weights are required.
const OPTIONAL_HUB_FILES: [&str; 4] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"];

impl ModelSource {
    /// A local path if it exists, else a hub id (`org/name`), with hub settings from the
    /// environment.
    pub fn resolve(spec: &str) -> Result<Self> {
        Self::resolve_with(spec, &HubOptions::from_env())
    }

    pub fn resolve_with(spec: &str, hub: &HubOptions) -> Result<Self> {
        let path = Path::new(spec);
        if path.exists() {
            return Self::local(path);
        }
        let looks_like_id =
            spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.ends_with(".safetensors");
        if !looks_like_id {
            return Err(Error::Invalid(format!(
                "model '{spec}': no such file or directory (and not a hub id like 'openai/clip-vit-base-patch32')"
            )));
        }
        Self::from_hub(spec, hub)
    }

    /// An HF model directory, or an OpenAI/open_clip `.safetensors` state dict (config from
    /// `open_clip_config.json` beside it, else inferred from the tensor shapes).
    pub fn local(path: &Path) -> Result<Self> {
        if path.is_dir() {
            if path.join("config.json").exists() {
                return Self::hf_dir(path, path.to_path_buf());
            }
            let candidates: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            return match candidates.as_slice() {
                [one] => Self::local(one),
                _ => Err(Error::Invalid(format!(
                    "{}: not a model directory (no config.json, and not exactly one .safetensors file)",
                    path.display()
                ))),
            };
        }
        let file = SafetensorsFile::open(path)?;
        let is_hf =
            file.names().iter().any(|n| n.starts_with("vision_model.") || n.starts_with("text_model."));
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        if is_hf {
            return Self::hf_dir(&dir, path.to_path_buf());
        }
        let oc_config = dir.join("open_clip_config.json");
        let config = if oc_config.exists() {
            let json = std::fs::read_to_string(&oc_config).map_err(|e| Error::io(&oc_config, e))?;
            ClipConfig::from_open_clip_json(&json)
        } else {
            let prefix = if file.names().iter().all(|n| n.starts_with("module.")) { "module." } else { "" };
            let names: Vec<String> = file.names().iter().map(|n| n[prefix.len()..].to_string()).collect();
            ClipConfig::infer_open_clip(|k| file.shape(&format!("{prefix}{k}")), &names)
        }
        .map_err(|msg| Error::Config {
            path: if oc_config.exists() { oc_config.clone() } else { path.to_path_buf() },
            msg,
        })?;
        Ok(Self {
            spec: path.display().to_string(),
            config,
            layout: Layout::OpenClip,
            weights_path: path.to_path_buf(),
            dir: None,
        })
    }

    fn hf_dir(dir: &Path, weights_path: PathBuf) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::Invalid(format!(
                "{}: HF-layout weights need a config.json beside them",
                weights_path.display()
            )));
        }
        Ok(Self {
            spec: weights_path.display().to_string(),
            config: ClipConfig::from_file(&config_path)?,
            layout: Layout::Hf,
            weights_path,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// The snapshot of hub repo `id` in the HF cache, downloading what is missing unless
    /// offline.
    pub fn from_hub(id: &str, hub: &HubOptions) -> Result<Self> {
        let err = |msg: String| Error::Hub { id: id.to_string(), msg };
        let repo = Repo::with_revision(id.to_string(), RepoType::Model, hub.revision.clone());
        let cached = Cache::new(hub.cache_dir.clone()).repo(repo.clone());
        let api = if hub.offline {
            None
        } else {
            let api = hf_hub::api::sync::ApiBuilder::from_cache(Cache::new(hub.cache_dir.clone()))
                .with_token(hub.token.clone())
                .build()
                .map_err(|e| err(e.to_string()))?;
            Some(api.repo(repo))
        };
        let fetch = |file: &str| -> Option<std::result::Result<PathBuf, String>> {
            match (cached.get(file), &api) {
                (Some(p), _) => Some(Ok(p)),
                (None, None) => None,
                (None, Some(api)) => Some(api.get(file).map_err(|e| e.to_string())),
            }
        };
        let offline_hint = if hub.offline {
            format!(" (HF_HUB_OFFLINE is set; cache: {})", hub.cache_dir.display())
        } else {
            String::new()
        };
        let config = match fetch("config.json") {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(err(format!("config.json: {e}"))),
            None => return Err(err(format!("not in the local cache{offline_hint}"))),
        };
        let snapshot = config.parent().map(Path::to_path_buf).unwrap_or_default();
        // Single-file weights, else the sharded index and every shard it lists.
        let weights = match fetch("model.safetensors") {
            Some(Ok(p)) => p,
            _ => match fetch("model.safetensors.index.json") {
                Some(Ok(index)) => {
                    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
                    let json: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| err(format!("index: {e}")))?;
                    let mut shards: Vec<&str> = json["weight_map"]
                        .as_object()
                        .map(|m| m.values().filter_map(|v| v.as_str()).collect())
                        .unwrap_or_default();
                    shards.sort_unstable();
                    shards.dedup();
                    for shard in shards {
                        // A download would link `snapshot/<shard>` to its blob: a name that
                        // climbs out (`..`, absolute) would write outside the cache.
                        if !crate::weights::is_plain_file_name(shard) {
                            return Err(err(format!(
                                "the index names shard {shard:?}, not a file of the repo"
                            )));
                        }
                        match fetch(shard) {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(err(format!("{shard}: {e}"))),
                            None => {
                                return Err(err(format!("{shard} is not in the local cache{offline_hint}")))
                            }
                        }
                    }
                    index
                }
                _ => {
                    return Err(err(format!(
                        "no model.safetensors (or sharded index) available{offline_hint}"
                    )))
                }
            },
        };
        for file in OPTIONAL_HUB_FILES {
            // Best effort: a repo without a tokenizer.json falls back to the OpenAI vocabulary.
            let _ = fetch(file);
        }
        Ok(Self {
            spec: id.to_string(),
            config: ClipConfig::from_file(&config)?,
            layout: Layout::Hf,
            weights_path: weights,
            dir: Some(snapshot),
        })
    }

    /// The model's own `tokenizer.json` when it has one, else the OpenAI CLIP vocabulary;
    /// sequences padded/truncated to the config's context length.
    pub fn tokenizer(&self) -> Result<ClipTokenizer> {
        let context = self.config.text_config.max_position_embeddings;
        match &self.dir {
            Some(dir) => ClipTokenizer::for_model_dir(dir, context),
            None => ClipTokenizer::openai(context),
        }
    }

    /// The model's `preprocessor_config.json` when it has one, else CLIP's defaults at the
    /// vision tower's image size.
    pub fn preprocessor(&self) -> Result<ImagePreprocessor> {
        let size = self.config.vision_config.image_size;
        match &self.dir {
            Some(dir) => ImagePreprocessor::for_model_dir(dir, size),
            None => Ok(ImagePreprocessor::new(size)),
        }
    }

    /// The checkpoint seen through HF names.
    pub fn weights(&self) -> Result<Box<dyn WeightSource>> {
        Ok(match self.layout {
            Layout::Hf => Box::new(Checkpoint::open(&self.weights_path)?),
            Layout::OpenClip => Box::new(OpenClipCheckpoint::open(&self.weights_path)?),
        })
    }
}
