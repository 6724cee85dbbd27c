//! Checkpoints: parameters and optimiser state in safetensors, a JSON sidecar with everything
//! else (config, step, data position, RNG state, and the SHA-256 of the tensor file, so a
//! corrupt or mismatched pair is detected). Both files are written atomically: to a temporary
//! file in the same directory, flushed to disk, then renamed over the old one, so an
//! interruption leaves the previous checkpoint intact.

use crate::error::Error;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

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

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The two files of checkpoint `stem` in `dir`.
pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.safetensors")),
        dir.join(format!("{stem}.json")),
    )
}

/// Saves a checkpoint: the tensor file first, then the sidecar that names its checksum.
pub fn save(dir: &Path, stem: &str, ck: &Checkpoint) -> Result<(), Error> {
    let bytes: Vec<Vec<u8>> = ck
        .tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::new();
    for ((group, t), b) in ck.tensors.iter().zip(&bytes) {
        let v = TensorView::new(Dtype::F32, t.shape.clone(), b)
            .map_err(|e| Error::Checkpoint(format!("tensor {}: {e}", t.name)))?;
        views.push((format!("{group}/{}", t.name), v));
    }
    let data = safetensors::serialize(views, None).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let (tpath, jpath) = paths(dir, stem);
    write_atomic(&tpath, &data)
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", tpath.display())))?;
    let mut side = ck.sidecar.clone();
    side["tensors_sha256"] = serde_json::json!(hex(&data));
    let text = serde_json::to_string_pretty(&side).map_err(|e| Error::Checkpoint(e.to_string()))?;
    write_atomic(&jpath, text.as_bytes())
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", jpath.display())))
}

/// Loads a checkpoint, refusing a tensor file whose checksum is not the sidecar's.
pub fn load(dir: &Path, stem: &str) -> Result<Checkpoint, Error> {
    let (tpath, jpath) = paths(dir, stem);
    let text = std::fs::read_to_string(&jpath)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", jpath.display())))?;
    let mut sidecar: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{} is corrupt: {e}", jpath.display())))?;
    let data = std::fs::read(&tpath)
        .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", tpath.display())))?;
    let want = sidecar["tensors_sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if hex(&data) != want {
        return Err(Error::Checkpoint(format!(
            "{} is corrupt: its checksum does not match {}",
            tpath.display(),
            jpath.display()
        )));
    }
    if let Some(o) = sidecar.as_object_mut() {
        o.remove("tensors_sha256");
    }
    let st = safetensors::SafeTensors::deserialize(&data)
        .map_err(|e| Error::Checkpoint(format!("{} is corrupt: {e}", tpath.display())))?;
    // Keep the file's order of names stable: sorted (safetensors stores a map).
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut tensors = Vec::new();
    for full in names {
        let v = st
            .tensor(&full)
            .map_err(|e| Error::Checkpoint(e.to_string()))?;
        if v.dtype() != Dtype::F32 {
            return Err(Error::Checkpoint(format!("{full}: not f32")));
        }
        let data: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (group, name) = full.split_once('/').unwrap_or(("param", full.as_str()));
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
