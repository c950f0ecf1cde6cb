//! Writing a safetensors file one piece at a time.
//!
//! `safetensors::serialize_to_file` wants every tensor in memory at once: 1.7 GB for a
//! ViT-L/14 CLIP. A safetensors file is an 8-byte header length, a JSON header (name →
//! dtype, shape, byte offsets) and then the tensors' bytes back to back; the header depends
//! only on names, dtypes and shapes. So [`StreamingWriter`] writes the header first and then
//! takes each tensor's bytes as they are computed, never holding more than a chunk.
//!
//! The file is written to a hidden temporary file beside its destination and renamed over
//! it only when complete, so a killed or failed merge leaves nothing at the destination
//! (the temporary file is removed on every error path; a SIGKILL can leave it behind,
//! hidden, never under the destination's name).
//!
//! The header can be rewritten at the end with the same length ([`StreamingWriter::finish`]):
//! the merge records the inputs' sha256 in the metadata, which is only known once they have
//! been read. It is first written with placeholder digests of the same length.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use serde_json::{Map, Value};
use tempfile::NamedTempFile;

use crate::{Error, Result};

/// Name, dtype and shape of one tensor of the file, in file order.
pub type TensorSpec = (String, Dtype, Vec<usize>);

/// The header JSON: `__metadata__` and one entry per tensor with contiguous offsets in the
/// order given. serde_json's map is sorted, so the same tensors and metadata always give
/// the same bytes. Padded with spaces to a multiple of 8, as safetensors does, so tensor
/// data starts 8-aligned.
pub fn header_bytes(tensors: &[TensorSpec], metadata: &BTreeMap<String, String>) -> Result<(Vec<u8>, usize)> {
    let mut map = Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::to_value(metadata).map_err(json_error)?);
    }
    let mut offset = 0usize;
    for (name, dtype, shape) in tensors {
        if name == "__metadata__" || map.contains_key(name) {
            return Err(Error::Invalid(format!("tensor name '{name}' is reserved or repeated")));
        }
        let bits = shape.iter().try_fold(dtype.bitsize(), |n, &d| n.checked_mul(d));
        let bytes = bits.filter(|b| b % 8 == 0).map(|b| b / 8).ok_or_else(|| {
            Error::Invalid(format!("tensor '{name}': {dtype:?} {shape:?} is not a whole number of bytes"))
        })?;
        let info = TensorInfo { dtype: *dtype, shape: shape.clone(), data_offsets: (offset, offset + bytes) };
        map.insert(name.clone(), serde_json::to_value(&info).map_err(json_error)?);
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&Value::Object(map)).map_err(json_error)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok((header, offset))
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Invalid(format!("safetensors header: {e}"))
}

/// A safetensors file being written: header first, then tensor bytes in header order.
pub struct StreamingWriter {
    path: PathBuf,
    tmp: NamedTempFile,
    out: BufWriter<File>,
    tensors: Vec<TensorSpec>,
    header_len: usize,
    data_len: usize,
    written: usize,
}

impl StreamingWriter {
    /// Starts `path` (through a temporary file in its folder, created if missing) with the
    /// header for `tensors` and `metadata`.
    pub fn create(
        path: &Path,
        tensors: Vec<TensorSpec>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // Temporary files are private (0600) by default; the checkpoint gets the usual
        // mode of a new file (0666 less the umask), as `File::create` would give it.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder.tempfile_in(&dir).map_err(|e| Error::io(&dir, e))?;
        let file = tmp.as_file().try_clone().map_err(|e| Error::io(tmp.path(), e))?;
        let (header, data_len) = header_bytes(&tensors, metadata)?;
        let mut writer = Self {
            path: path.to_path_buf(),
            // Chunks of 1 MB and more go straight to `write`; smaller pieces are gathered.
            out: BufWriter::with_capacity(1 << 20, file),
            tmp,
            tensors,
            header_len: header.len(),
            data_len,
            written: 0,
        };
        writer.put(&(header.len() as u64).to_le_bytes())?;
        writer.put(&header)?;
        Ok(writer)
    }

    /// Total bytes of tensor data the header announces.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Appends tensor bytes (any split: a tensor may come in many pieces).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.written + bytes.len() > self.data_len {
            return Err(Error::Invalid(format!(
                "{}: more tensor data than the header announces ({} bytes)",
                self.path.display(),
                self.data_len
            )));
        }
        self.written += bytes.len();
        self.put(bytes)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        let tmp = self.tmp.path().to_path_buf();
        self.out.write_all(bytes).map_err(|e| Error::io(tmp, e))
    }

    /// Checks every announced byte was written, optionally rewrites the header with
    /// `final_metadata` (which must serialise to no more bytes than the first: it is padded
    /// to the same length), and renames the file into place.
    pub fn finish(mut self, final_metadata: Option<&BTreeMap<String, String>>) -> Result<()> {
        if self.written != self.data_len {
            return Err(Error::Invalid(format!(
                "{}: {} of {} bytes of tensor data written",
                self.path.display(),
                self.written,
                self.data_len
            )));
        }
        let tmp = self.tmp.path().to_path_buf();
        self.out.flush().map_err(|e| Error::io(&tmp, e))?;
        if let Some(metadata) = final_metadata {
            let (mut header, _) = header_bytes(&self.tensors, metadata)?;
            if header.len() > self.header_len {
                return Err(Error::Invalid(format!(
                    "{}: the final header ({} bytes) is longer than the one written ({})",
                    self.path.display(),
                    header.len(),
                    self.header_len
                )));
            }
            header.resize(self.header_len, b' ');
            let file = self.out.get_mut();
            file.seek(SeekFrom::Start(8)).map_err(|e| Error::io(&tmp, e))?;
            file.write_all(&header).map_err(|e| Error::io(&tmp, e))?;
        }
        drop(self.out);
        self.tmp.persist(&self.path).map_err(|e| Error::io(&self.path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn streamed_file_reads_back_and_matches_safetensors_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.safetensors");
        let tensors = vec![
            ("b".to_string(), Dtype::F32, vec![2, 3]),
            ("a".to_string(), Dtype::F16, vec![3]),
            ("s".to_string(), Dtype::F32, vec![]),
        ];
        let mut meta = BTreeMap::from([("k".to_string(), "0000".to_string())]);
        let mut w = StreamingWriter::create(&path, tensors, &meta).unwrap();
        let b: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.write(&b[..10]).unwrap();
        w.write(&b[10..]).unwrap();
        w.write(&[1, 2, 3, 4, 5, 6]).unwrap();
        assert!(!path.exists(), "nothing at the destination before finish");
        w.write(&7f32.to_le_bytes()).unwrap();
        assert!(w.write(&[0]).is_err());
        meta.insert("k".into(), "abcd".into());
        w.finish(Some(&meta)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &b[..]);
        assert_eq!(st.tensor("a").unwrap().data(), &[1, 2, 3, 4, 5, 6]);
        assert_eq!(st.tensor("s").unwrap().shape(), &[] as &[usize]);
        let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(m.metadata().as_ref().unwrap()["k"], "abcd");
        assert_eq!(m.offset_keys(), ["b", "a", "s"]);
        // Only the destination is left in the folder, with an ordinary file's mode.
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o644, 0o644, "{mode:o}");
        }
    }

    #[test]
    fn short_data_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut w = StreamingWriter::create(&path, vec![("a".into(), Dtype::F32, vec![4])], &BTreeMap::new())
            .unwrap();
        w.write(&[0; 8]).unwrap();
        let err = w.finish(None).unwrap_err().to_string();
        assert!(err.contains("8 of 16") && err.contains("x.safetensors"), "{err}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary file removed");
    }
}
