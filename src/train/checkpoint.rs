//! Checkpoints: one safetensors file per checkpoint (`last.safetensors`, `best.safetensors`),
//! holding the parameters and Adam's state as tensors and everything else (config, step, data
//! position, best validation) as a JSON sidecar in the file's metadata. One SHA-256 covers the
//! sidecar and every tensor (name, shape, values), so an edited sidecar is refused like a flipped
//! bit in a tensor.
//!
//! A checkpoint is replaced atomically: the new file is written beside the old one under a
//! temporary name and flushed to disk; the old one is kept as `STEM.prev.safetensors` (a hard
//! link, no copy); the new one is renamed over the old name, and the directory flushed. At any
//! moment the name holds a complete checkpoint, the old or the new one; an interruption or an
//! I/O error leaves the old one and removes the temporary file (a `kill -9` can leave one, which
//! [`remove_temporaries`] clears when the run is opened again). When the named file is damaged
//! anyway (a disk error, a file system without atomic renames), [`load`] falls back to the
//! previous generation and says so.

use super::fault;
use crate::error::Error;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The format written in the metadata's `diagc.format`.
pub const FORMAT: &str = "2";

/// One named f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Tensors by group: `param`, `adam_m`, `adam_v`.
    pub tensors: Vec<(String, NamedTensor)>,
    /// Free-form state (config, step, data position, RNG, Adam step).
    pub sidecar: serde_json::Value,
}

pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file's bytes, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The checksum of a checkpoint: the sidecar's text, then every tensor sorted by full name
/// (`group/name`), each as its name, its shape and its little-endian values.
fn checksum(sidecar: &str, tensors: &[(String, &[usize], &[u8])]) -> String {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|a, b| tensors[*a].0.cmp(&tensors[*b].0));
    let mut h = Sha256::new();
    h.update((sidecar.len() as u64).to_le_bytes());
    h.update(sidecar.as_bytes());
    for k in order {
        let (name, shape, data) = &tensors[k];
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((shape.len() as u64).to_le_bytes());
        for d in *shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex(&h.finalize())
}

/// The temporary name that [`write_atomic`] writes `path` under.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
/// On failure the temporary file is removed and `path` keeps what it held.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, false)
}

/// [`write_atomic`]; `checkpoint`: with the fault-injection hook of [`fault`] in the window.
fn write_file(path: &Path, bytes: &[u8], checkpoint: bool) -> std::io::Result<()> {
    let tmp = temporary(path);
    let result = (|| {
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        // The window between a complete temporary file and the rename: a crash here must
        // leave the old file usable (the crash test stops the process here).
        if checkpoint {
            fault::in_checkpoint_window()?;
            // Keep the generation being replaced (best effort: a file system without hard
            // links keeps none).
            if path.exists() {
                let prev = previous(path);
                let _ = std::fs::remove_file(&prev);
                let _ = std::fs::hard_link(path, &prev);
            }
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the temporary files that an interrupted [`write_atomic`] of another process left in
/// `dir` (names `.NAME.tmpPID`). Returns how many were removed.
pub fn remove_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if ours && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    n
}

/// The file of checkpoint `stem` in `dir`.
pub fn path(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("{stem}.safetensors"))
}

/// Where the generation before `file` (`last.safetensors`) is kept: `last.prev.safetensors`.
pub fn previous(file: &Path) -> PathBuf {
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    file.with_file_name(format!("{stem}.prev.safetensors"))
}

/// The size in bytes of a checkpoint of these tensors (an estimate for the free-space check:
/// the values plus a generous header).
pub fn size_estimate(values: usize, tensors: usize) -> u64 {
    values as u64 * 4 + tensors as u64 * 256 + 64 * 1024
}

/// Saves a checkpoint, replacing the previous one atomically.
pub fn save(dir: &Path, stem: &str, ck: &Checkpoint) -> Result<(), Error> {
    let bytes: Vec<Vec<u8>> = ck
        .tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let full: Vec<String> = ck
        .tensors
        .iter()
        .map(|(group, t)| format!("{group}/{}", t.name))
        .collect();
    let sidecar =
        serde_json::to_string(&ck.sidecar).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let sum = checksum(
        &sidecar,
        &ck.tensors
            .iter()
            .zip(&bytes)
            .zip(&full)
            .map(|(((_, t), b), n)| (n.clone(), t.shape.as_slice(), b.as_slice()))
            .collect::<Vec<_>>(),
    );
    let mut views = Vec::new();
    for ((name, (_, t)), b) in full.iter().zip(&ck.tensors).zip(&bytes) {
        let v = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| Error::Checkpoint(format!("tensor {}: {e}", t.name)))?;
        views.push((name.clone(), v));
    }
    let metadata: HashMap<String, String> = [
        ("diagc.format".to_string(), FORMAT.to_string()),
        ("diagc.sidecar".to_string(), sidecar),
        ("diagc.sha256".to_string(), sum),
    ]
    .into_iter()
    .collect();
    let data = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    let file = path(dir, stem);
    write_file(&file, &data, true)
        .map_err(|e| Error::write(&file, e).context("saving a checkpoint: "))
}

/// Loads checkpoint `stem`, or, when its file is damaged (not merely absent), the previous
/// generation if that one is intact; the second value then says what happened.
pub fn load(dir: &Path, stem: &str) -> Result<(Checkpoint, Option<String>), Error> {
    let file = path(dir, stem);
    match load_file(dir, &file, stem) {
        Ok(ck) => Ok((ck, None)),
        Err(e) if file.exists() && previous(&file).exists() => {
            let prev = previous(&file);
            match load_file(dir, &prev, stem) {
                Ok(ck) => {
                    let note = format!(
                        "{e}; using the previous checkpoint {} (step {}) instead",
                        prev.display(),
                        ck.sidecar["step"]
                    );
                    Ok((ck, Some(note)))
                }
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Loads one checkpoint file, refusing one whose checksum does not match its contents.
fn load_file(dir: &Path, file: &Path, stem: &str) -> Result<Checkpoint, Error> {
    let shown = file.display();
    let data = std::fs::read(file).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Checkpoint(format!(
                "{shown} does not exist (no `{stem}` checkpoint was saved)"
            ))
        } else {
            Error::read(file, e)
        }
    })?;
    let corrupt = |why: String| Error::Checkpoint(format!("{shown} is corrupt: {why}"));
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&data).map_err(|e| corrupt(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| corrupt(e.to_string()))?;
    let md = meta.metadata().clone().unwrap_or_default();
    let (Some(sidecar_text), Some(want)) = (md.get("diagc.sidecar"), md.get("diagc.sha256")) else {
        let legacy = dir.join(format!("{stem}.json")).exists();
        return Err(Error::Checkpoint(if legacy {
            format!(
                "{shown} was written by an older diagc (with a separate {stem}.json); this \
                 version reads only its own single-file checkpoints: train the run again"
            )
        } else {
            format!("{shown} is not a diagc checkpoint (it has no diagc metadata)")
        }));
    };
    if md.get("diagc.format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::Checkpoint(format!(
            "{shown} has checkpoint format {:?}; this diagc reads format {FORMAT}",
            md.get("diagc.format")
        )));
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut views = Vec::new();
    for full in &names {
        let v = st.tensor(full).map_err(|e| corrupt(e.to_string()))?;
        if v.dtype() != Dtype::F32 {
            return Err(corrupt(format!("tensor {full} is not f32")));
        }
        views.push((full.clone(), v));
    }
    let got = checksum(
        sidecar_text,
        &views
            .iter()
            .map(|(n, v)| (n.clone(), v.shape(), v.data()))
            .collect::<Vec<_>>(),
    );
    if got != *want {
        return Err(corrupt(
            "its checksum does not match its contents (edited or damaged)".into(),
        ));
    }
    let sidecar: serde_json::Value =
        serde_json::from_str(sidecar_text).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors = Vec::new();
    for (full, v) in views {
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let Some((group, name)) = full.split_once('/') else {
            return Err(corrupt(format!("tensor `{full}` has no group")));
        };
        tensors.push((
            group.to_string(),
            NamedTensor {
                name: name.to_string(),
                shape: v.shape().to_vec(),
                data,
            },
        ));
    }
    Ok(Checkpoint { tensors, sidecar })
}
