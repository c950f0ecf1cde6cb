//! Test support shared by this crate's tests and the `wise` CLI tests (included there
//! with `#[path]`): fixture paths, tensor comparison, a fake HF hub cache.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

/// A file or folder under the repository's `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// A directory laid out like the HF hub cache: `models--org--name/{refs,snapshots,blobs}`,
/// holding the `clip-tiny-gelu` fixture model.
pub fn fake_hub_cache(id: &str) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join(format!("models--{}", id.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    for entry in std::fs::read_dir(fixture("clip-tiny-gelu")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name == "expected.safetensors" {
            continue;
        }
        // Like huggingface_hub: content in blobs/, snapshot entries are symlinks to it.
        let blob = repo.join("blobs").join(format!("blob-{name}"));
        std::fs::copy(&path, &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(&name)).unwrap();
    }
    cache
}

/// `<repo>/../shared/datasets` (the offline real data), or `None` after a note when it is
/// absent outside CI; under CI (`CI` set) missing data is a failure, never a silent pass.
pub fn shared_datasets() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing; CI must run the real-data tests", dir.display());
    }
    eprintln!("skipping: no offline datasets at {}", dir.display());
    None
}

/// The readable names of the digit classes `0`..`9`.
pub const DIGITS: [&str; 10] =
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

/// Every tensor of a safetensors file, on the CPU.
pub fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Each tensor's raw bytes, for bit-for-bit comparisons.
pub fn raw(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let file = wise_clip::weights::SafetensorsFile::open(path).unwrap();
    file.names().into_iter().map(|n| (n.clone(), file.view(&n).unwrap().data().to_vec())).collect()
}
