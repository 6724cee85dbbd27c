//! The run directory: what a run keeps so that it can be continued, evaluated and trusted later,
//! whatever happened to the process or to the files around it.
//!
//! | file | what |
//! |---|---|
//! | `config.json` | the [`TrainConfig`] |
//! | `run.json` | the diagc version, the data directory and the SHA-256 of its files, and the SHA-256 of every file under `source/` |
//! | `source/` | the model's sources as checked when the run started (`lm.diag`, `attention/m1.diag`, or the user's mechanism file): `eval` and `--resume` check these copies, never the stdlib or the original file |
//! | `metrics.jsonl` | one JSON object a line: every step (`step`, `epoch`, `loss`, `lr`, `tokens_per_s`), every validation (`step`, `valid_ppl`) |
//! | `last.safetensors` | the newest state (see [`super::checkpoint`]), to resume |
//! | `best.safetensors` | the state with the best validation perplexity |
//! | `last.prev.safetensors`, `best.prev.safetensors` | the generations before those (hard links), the fallback for a damaged checkpoint |
//! | `summary.json` | the outcome, once the run has finished |

use super::checkpoint::{self, sha256_hex};
use super::model::Sources;
use super::run::TrainConfig;
use crate::error::Error;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `run.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub diagc_version: String,
    /// The commit diagc was built from, when known (absent in runs of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagc_commit: Option<String>,
    /// The data directory the run started with (as given, and canonical).
    pub data_dir: PathBuf,
    /// The SHA-256 of each data file, by name.
    pub data_sha256: BTreeMap<String, String>,
    /// The file under `source/` that the model is checked from.
    pub source_root: String,
    /// The SHA-256 of each file under `source/`, by its path there.
    pub source_sha256: BTreeMap<String, String>,
}

/// The files a run writes; `--overwrite` removes these and nothing else.
const RUN_FILES: &[&str] = &[
    "config.json",
    "run.json",
    "metrics.jsonl",
    "last.safetensors",
    "best.safetensors",
    "last.prev.safetensors",
    "best.prev.safetensors",
    "summary.json",
];

/// What is found in a directory about to hold a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Nothing of a run.
    Empty,
    /// A run's files, without a `last` checkpoint (killed before its first one).
    Started,
    /// A run with a checkpoint to continue from.
    Resumable,
    /// A finished run.
    Finished,
}

pub fn existing(out: &Path) -> Existing {
    if out.join("summary.json").exists() {
        Existing::Finished
    } else if checkpoint::path(out, "last").exists() {
        Existing::Resumable
    } else if RUN_FILES.iter().any(|f| out.join(f).exists()) || out.join("source").exists() {
        Existing::Started
    } else {
        Existing::Empty
    }
}

/// Creates `out` (if needed) and checks that it is writable.
pub fn create(out: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::create(out, e).context("cannot create the run directory: "))?;
    let probe = out.join(format!(".write-probe{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(|e| {
        Error::Train(format!(
            "the run directory {} is not writable: {e}",
            out.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    checkpoint::remove_temporaries(out);
    Ok(())
}

/// Removes the files of a run from `out` (for `--overwrite`), leaving anything else.
pub fn clear(out: &Path) -> Result<(), Error> {
    for f in RUN_FILES {
        let p = out.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::remove(&p, e))?;
        }
    }
    let src = out.join("source");
    if src.exists() {
        std::fs::remove_dir_all(&src).map_err(|e| Error::remove(&src, e))?;
    }
    Ok(())
}

/// Writes `config.json`, the model's sources under `source/` and `run.json`.
pub fn write_start(
    out: &Path,
    cfg: &TrainConfig,
    sources: &Sources,
    data_dir: &Path,
) -> Result<RunRecord, Error> {
    let text = serde_json::to_string_pretty(cfg).map_err(|e| Error::Train(e.to_string()))?;
    let path = out.join("config.json");
    checkpoint::write_atomic(&path, text.as_bytes()).map_err(|e| Error::write(&path, e))?;
    let mut source_sha256 = BTreeMap::new();
    for (rel, text) in &sources.files {
        let p = out.join("source").join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::create(parent, e))?;
        }
        checkpoint::write_atomic(&p, text.as_bytes()).map_err(|e| Error::write(&p, e))?;
        source_sha256.insert(rel.clone(), sha256_hex(text.as_bytes()));
    }
    let data_sha256 = super::data::FILES
        .iter()
        .map(|(n, sha)| (n.to_string(), sha.to_string()))
        .collect();
    let record = RunRecord {
        diagc_version: env!("CARGO_PKG_VERSION").to_string(),
        diagc_commit: crate::version::build_commit(),
        data_dir: std::fs::canonicalize(data_dir).unwrap_or(data_dir.to_path_buf()),
        data_sha256,
        source_root: sources.root.clone(),
        source_sha256,
    };
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Train(e.to_string()))?;
    let path = out.join("run.json");
    checkpoint::write_atomic(&path, text.as_bytes()).map_err(|e| Error::write(&path, e))?;
    Ok(record)
}

/// Reads a run's `config.json` and `run.json`, and checks that the copies under `source/` are
/// the files the run started with.
pub fn read(out: &Path) -> Result<(TrainConfig, RunRecord), Error> {
    if !out.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory: give the run directory that `diagc train` wrote",
            out.display()
        )));
    }
    let read_json = |name: &str| -> Result<serde_json::Value, Error> {
        let p = out.join(name);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::Checkpoint(format!(
                    "{} is not a run directory of this diagc: it has no {name}",
                    out.display()
                ))
            } else {
                Error::read(&p, e)
            }
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Checkpoint(format!("{} is corrupt: {e}", p.display())))
    };
    let cfg: TrainConfig = serde_json::from_value(read_json("config.json")?).map_err(|e| {
        Error::Checkpoint(format!(
            "{}/config.json is not a training configuration: {e}",
            out.display()
        ))
    })?;
    let record: RunRecord = serde_json::from_value(read_json("run.json")?)
        .map_err(|e| Error::Checkpoint(format!("{}/run.json is corrupt: {e}", out.display())))?;
    for (rel, want) in &record.source_sha256 {
        let safe = Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        let p = out.join("source").join(rel);
        if !safe {
            return Err(Error::Checkpoint(format!(
                "{}/run.json names a source outside source/: {rel}",
                out.display()
            )));
        }
        let bytes = std::fs::read(&p).map_err(|e| Error::read(&p, e))?;
        let got = sha256_hex(&bytes);
        if got != *want {
            return Err(Error::Checkpoint(format!(
                "{} was changed after the run started (its SHA-256 is {got}, the run recorded \
                 {want}); the run's model is that copy, so it cannot be evaluated or continued \
                 from an edited one",
                p.display()
            )));
        }
    }
    if !record.source_sha256.contains_key(&record.source_root) {
        return Err(Error::Checkpoint(format!(
            "{}/run.json names {} as the model's source but has no checksum for it",
            out.display(),
            record.source_root
        )));
    }
    Ok((cfg, record))
}

/// The first field where two configurations differ (dotted, `model.heads`), with both values.
pub fn first_difference(
    a: &serde_json::Value,
    b: &serde_json::Value,
    at: &str,
) -> Option<(String, String, String)> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let null = serde_json::Value::Null;
                if let Some(d) =
                    first_difference(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &path)
                {
                    return Some(d);
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some((at.to_string(), a.to_string(), b.to_string())),
    }
}

/// `metrics.jsonl`: each record written whole with one `write` of its line, every error
/// returned (a metrics file that silently lost lines would misreport the run).
pub struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    /// Opens the run's metrics for appending. When `keep_through` is given (a resumed run),
    /// first cuts the file back to the records of steps up to that step, dropping the records
    /// the interrupted process wrote after its last checkpoint and any torn last line, so that
    /// every step appears once.
    pub fn open(out: &Path, keep_through: Option<usize>) -> Result<Metrics, Error> {
        let path = out.join("metrics.jsonl");
        if let Some(step) = keep_through {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(Error::read(&path, e)),
            };
            let kept: String = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= step)
                })
                .collect();
            checkpoint::write_atomic(&path, kept.as_bytes()).map_err(|e| Error::write(&path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::write(&path, e))?;
        Ok(Metrics { file, path })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<(), Error> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::write(&self.path, e).context("metrics: "))
    }
}

/// The bytes free for an unprivileged user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    if let Some(b) = super::fault::free_bytes() {
        return Some(b);
    }
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Refuses to start when the file system of `out` cannot hold the run's files at their largest:
/// `need` bytes more than it holds now.
pub fn check_free_space(out: &Path, need: u64) -> Result<(), Error> {
    if let Some(free) = free_bytes(out)
        && free < need
    {
        let why = format!(
            "its file system has {} free, and this run needs about {} more (checkpoints while \
             one is replaced, and metrics); free some space or choose another --out",
            human_bytes(free),
            human_bytes(need)
        );
        return Err(Error::write(
            out,
            std::io::Error::new(std::io::ErrorKind::StorageFull, why),
        ));
    }
    Ok(())
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`, `7 B`.
pub fn human_bytes(b: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in units {
        if b >= size {
            return format!("{:.1} {name}", b as f64 / size as f64);
        }
    }
    format!("{b} B")
}
