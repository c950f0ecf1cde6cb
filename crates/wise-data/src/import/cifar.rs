//! CIFAR-10 from the "CIFAR-10-images" JPEG archive: `train/<class>/NNNN.jpg` and
//! `test/<class>/NNNN.jpg`, optionally under one top folder (as GitHub's archive of the
//! repository has it).
//!
//! The archive is streamed (gzip → tar → files), never unpacked whole, and each JPEG's bytes
//! are written as they are: decoding and re-encoding would compress the images a second time.
//! Files are written in parallel, a chunk of entries at a time, while decompression stays
//! sequential (a gzip stream cannot be split).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use super::{SplitSummary, Written};
use crate::dataset::IMAGE_EXTENSIONS;
use crate::{Error, Result};

const SPLITS: [&str; 2] = ["train", "test"];

/// Entries buffered before they are written out in parallel (~1 KB each), and the most
/// bytes buffered, whatever the entries' sizes.
const CHUNK: usize = 4096;
const CHUNK_BYTES: usize = 64 << 20;

/// The largest image entry taken: a CIFAR-10 JPEG is 1–3 KB, and a few kilobytes of gzip
/// can stand for gigabytes of one entry, which must not be read into memory.
const MAX_ENTRY_BYTES: u64 = 16 << 20;

pub(super) fn import(archive_path: &Path, out: &Path) -> Result<Written> {
    let file = std::fs::File::open(archive_path).map_err(|e| Error::io(archive_path, e))?;
    let mut reader = std::io::BufReader::new(file);
    let mut magic = [0u8; 2];
    let gz = reader.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive_path).map_err(|e| Error::io(archive_path, e))?;
    let stream: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(stream);
    let bad_archive =
        |e: std::io::Error| Error::invalid(archive_path, format!("cannot read the archive: {e}"));

    // (split, class) → count; folders already created.
    let mut counts: BTreeMap<(&'static str, String), usize> = BTreeMap::new();
    let mut pending: Vec<(PathBuf, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let mut pending_bytes = 0;
    for entry in archive.entries().map_err(bad_archive)? {
        let mut entry = entry.map_err(bad_archive)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad_archive)?.into_owned();
        let Some((split, class, file_name)) = image_entry(archive_path, &name)? else {
            continue;
        };
        let dir = out.join(split).join(&class);
        let count = counts.entry((split, class)).or_insert(0);
        if *count == 0 {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        *count += 1;
        // The header's size only as a hint: a corrupt header must not reserve gigabytes.
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 20) as usize);
        (&mut entry).take(MAX_ENTRY_BYTES + 1).read_to_end(&mut bytes).map_err(bad_archive)?;
        if bytes.len() as u64 > MAX_ENTRY_BYTES {
            return Err(Error::invalid(
                archive_path,
                format!(
                    "entry {} holds more than {} MiB; a CIFAR-10 image is a few kilobytes",
                    name.display(),
                    MAX_ENTRY_BYTES >> 20
                ),
            ));
        }
        pending_bytes += bytes.len();
        pending.push((dir.join(file_name), bytes));
        if pending.len() == CHUNK || pending_bytes >= CHUNK_BYTES {
            write_all(&mut pending)?;
            pending_bytes = 0;
        }
    }
    write_all(&mut pending)?;

    let classes: Vec<String> =
        counts.keys().map(|(_, c)| c.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    if classes.is_empty() {
        return Err(Error::invalid(
            archive_path,
            "no train/<class>/*.jpg or test/<class>/*.jpg images in the archive",
        ));
    }
    let mut splits = Vec::new();
    for split in SPLITS {
        let split_counts: Vec<usize> =
            classes.iter().map(|c| counts.get(&(split, c.clone())).copied().unwrap_or(0)).collect();
        if split_counts.iter().all(|&n| n == 0) {
            continue;
        }
        if let Some(i) = split_counts.iter().position(|&n| n == 0) {
            return Err(Error::invalid(
                archive_path,
                format!("{split}/ has no images of class '{}' although other splits do", classes[i]),
            ));
        }
        splits.push(SplitSummary { split: Some(split.to_string()), counts: split_counts });
    }
    Ok(Written { class_names: classes.clone(), classes, splits })
}

/// `(split, class, file name)` of an image entry `…/<split>/<class>/<file>`, `None` for
/// anything else (a README, a `.DS_Store`). A path that climbs out (`..`, absolute) is an
/// error: the archive must not write outside the output folder.
fn image_entry(archive_path: &Path, name: &Path) -> Result<Option<(&'static str, String, String)>> {
    let mut parts = Vec::new();
    for component in name.components() {
        match component {
            Component::Normal(p) => match p.to_str() {
                Some(s) => parts.push(s),
                None => {
                    return Err(Error::invalid(
                        archive_path,
                        format!("entry {} is not UTF-8", name.display()),
                    ))
                }
            },
            Component::CurDir => {}
            _ => {
                return Err(Error::invalid(
                    archive_path,
                    format!("entry {} points outside the archive; refusing to unpack it", name.display()),
                ))
            }
        }
    }
    let [.., split, class, file] = parts[..] else {
        return Ok(None);
    };
    let Some(split) = SPLITS.into_iter().find(|s| *s == split) else {
        return Ok(None);
    };
    let is_image = !file.starts_with('.')
        && Path::new(file)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)));
    if !is_image || class.starts_with('.') {
        return Ok(None);
    }
    Ok(Some((split, class.to_string(), file.to_string())))
}

fn write_all(pending: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
    pending
        .par_iter()
        .try_for_each(|(path, bytes)| std::fs::write(path, bytes).map_err(|e| Error::io(path, e)))?;
    pending.clear();
    Ok(())
}
