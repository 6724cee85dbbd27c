//! The sweep directory on disk: the only module of `sweep` that touches the file system.
//!
//! Every file is written whole through a temporary name and an atomic rename
//! ([`crate::train::checkpoint::write_atomic`]), so a reader (a status, a report, another
//! runner on a shared file system) sees the old file or the new one, never a torn one. Two
//! processes never write the same file: an entry's state is written only by the process holding
//! its lock, and the gathered files (`results.*`, `tuning.json`) are the same bytes whoever
//! writes them.

use super::plan::Header;
use super::{Entry, State, TimingRecord};
use crate::error::Error;
use crate::train::checkpoint::write_atomic;
use std::path::{Path, PathBuf};

fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_path_buf(),
        source,
        context: String::new(),
    }
}

/// Writes `bytes` to `dir/rel` atomically, creating the parent directory.
pub fn write(dir: &Path, rel: &str, bytes: &[u8]) -> Result<PathBuf, Error> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    write_atomic(&path, bytes).map_err(|e| io("write", &path, e))?;
    Ok(path)
}

/// Reads `dir/rel`; `None` when it does not exist.
pub fn read(dir: &Path, rel: &str) -> Result<Option<String>, Error> {
    let path = dir.join(rel);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path, e)),
    }
}

/// Reads a JSON file; `None` when it does not exist, an error naming it when it does not parse.
pub fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    rel: &str,
) -> Result<Option<T>, Error> {
    match read(dir, rel)? {
        None => Ok(None),
        Some(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
            Error::Checkpoint(format!("{} is not valid: {e}", dir.join(rel).display()))
        }),
    }
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(dir: &Path, rel: &str, v: &T) -> Result<PathBuf, Error> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Internal {
        pass: "sweep",
        message: e.to_string(),
    })?;
    s.push('\n');
    write(dir, rel, s.as_bytes())
}

/// Whether `dir` holds a sweep (its `plan.json`).
pub fn is_sweep(dir: &Path) -> bool {
    dir.join("plan.json").is_file()
}

/// Whether `dir` exists and holds anything.
pub fn non_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Writes the plan: `sweep.toml` (the file's text), `plan.jsonl`, then `plan.json` last (a
/// directory with a header has a complete plan).
pub fn write_plan(
    dir: &Path,
    sweep_text: &str,
    header: &Header,
    entries: &[Entry],
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    write(dir, "sweep.toml", sweep_text.as_bytes())?;
    let mut lines = String::new();
    for e in entries {
        lines.push_str(&serde_json::to_string(e).unwrap_or_default());
        lines.push('\n');
    }
    write(dir, "plan.jsonl", lines.as_bytes())?;
    write_json(dir, "plan.json", header)?;
    Ok(())
}

/// Reads the plan of a sweep directory, checking that `sweep.toml` is the file it was made from.
pub fn read_plan(dir: &Path) -> Result<(Header, Vec<Entry>, String), Error> {
    let header: Header = read_json(dir, "plan.json")?.ok_or_else(|| {
        Error::Usage(format!(
            "{} is not a sweep directory (no plan.json); make one with `diagc sweep plan FILE -o {}`",
            dir.display(),
            dir.display()
        ))
    })?;
    if header.format != super::plan::FORMAT {
        return Err(Error::Checkpoint(format!(
            "{} was planned by a diagc with sweep format {} (this one reads {})",
            dir.display(),
            header.format,
            super::plan::FORMAT
        )));
    }
    let text = read(dir, "sweep.toml")?.unwrap_or_default();
    if sha256_hex(text.as_bytes()) != header.sweep_sha256 {
        return Err(Error::Usage(format!(
            "{} changed since it was planned; plan it again with `diagc sweep plan {} -o {} --force` \
             (finished runs whose definition did not change are kept)",
            dir.join("sweep.toml").display(),
            dir.join("sweep.toml").display(),
            dir.display()
        )));
    }
    let lines = read(dir, "plan.jsonl")?.unwrap_or_default();
    let mut entries = Vec::new();
    for (k, l) in lines.lines().enumerate() {
        let e: Entry = serde_json::from_str(l).map_err(|e| {
            Error::Checkpoint(format!(
                "{} line {}: {e}",
                dir.join("plan.jsonl").display(),
                k + 1
            ))
        })?;
        if e.index != entries.len() {
            return Err(Error::Checkpoint(format!(
                "{} line {}: index {} out of order",
                dir.join("plan.jsonl").display(),
                k + 1,
                e.index
            )));
        }
        entries.push(e);
    }
    if entries.len() != header.entries {
        return Err(Error::Checkpoint(format!(
            "{} has {} entries, plan.json says {}",
            dir.join("plan.jsonl").display(),
            entries.len(),
            header.entries
        )));
    }
    Ok((header, entries, text))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn state(dir: &Path, e: &Entry) -> Result<Option<State>, Error> {
    read_json(dir, &format!("state/{}.json", e.name))
}

pub fn write_state(dir: &Path, e: &Entry, s: &State) -> Result<(), Error> {
    write_json(dir, &format!("state/{}.json", e.name), s).map(|_| ())
}

/// The lock of an entry, held while its process lives (released by the kernel when it dies).
pub struct Lock {
    _file: std::fs::File,
}

/// Takes an entry's lock without waiting; `None` when another process holds it.
pub fn try_lock(dir: &Path, e: &Entry) -> Result<Option<Lock>, Error> {
    let path = dir.join(format!("state/{}.lock", e.name));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io("open", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(err) => Err(io("lock", &path, err.into())),
    }
}

/// Whether a process holds the entry's lock now.
pub fn is_locked(dir: &Path, e: &Entry) -> bool {
    let path = dir.join(format!("state/{}.lock", e.name));
    let Ok(file) = std::fs::OpenOptions::new().read(true).open(&path) else {
        return false;
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// A run directory's `summary.json` (written when a run finishes).
pub fn summary(dir: &Path, e: &Entry) -> Result<Option<serde_json::Value>, Error> {
    read_json(dir, &format!("{}/summary.json", e.run_dir))
}

/// A run directory's `config.json` (written when a run starts).
pub fn run_config(dir: &Path, run_dir: &str) -> Result<Option<serde_json::Value>, Error> {
    read_json(dir, &format!("{run_dir}/config.json"))
}

/// A run directory's `run.json` (what `diagc train` recorded of itself and its inputs).
pub fn run_record(dir: &Path, run_dir: &str) -> Option<serde_json::Value> {
    read_json(dir, &format!("{run_dir}/run.json"))
        .ok()
        .flatten()
}

/// Whether a run directory holds a run (its `config.json`).
pub fn run_started(dir: &Path, e: &Entry) -> bool {
    dir.join(&e.run_dir).join("config.json").is_file()
}

/// The validation records of a run's `metrics.jsonl`: (step, valid_ppl). Torn or foreign lines
/// are skipped (a running run may be writing its last line).
pub fn valid_curve(dir: &Path, run_dir: &str) -> Vec<(usize, f64)> {
    let Ok(Some(text)) = read(dir, &format!("{run_dir}/metrics.jsonl")) else {
        return Vec::new();
    };
    let mut out: Vec<(usize, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some((
                v.get("step")?.as_u64()? as usize,
                v.get("valid_ppl")?.as_f64()?,
            ))
        })
        .collect();
    out.sort_by_key(|p| p.0);
    out.dedup_by_key(|p| p.0);
    out
}

/// The training curve of a run (see [`super::train_curve`]); empty without metrics.
pub fn train_curve(dir: &Path, run_dir: &str) -> Vec<(usize, f64)> {
    match read(dir, &format!("{run_dir}/metrics.jsonl")) {
        Ok(Some(text)) => super::train_curve(text.lines()),
        _ => Vec::new(),
    }
}

/// A timing entry's record.
pub fn timing(dir: &Path, e: &Entry) -> Result<Option<TimingRecord>, Error> {
    read_json(dir, &e.run_dir)
}

/// The header comment's first line of a mechanism's source as a run copied it
/// (`runs/NAME/source/...`), for its class and summary. `mech` is the mechanism as the sweep
/// names it: a stdlib name (`anatomy.m05` is `source/anatomy/m05.diag`, `m1` is
/// `source/attention/m1.diag`) or a path (its file name).
pub fn mechanism_header(dir: &Path, run_dir: &str, mech: &str) -> Option<String> {
    let rel = if mech.ends_with(".diag") {
        Path::new(mech).file_name()?.to_string_lossy().to_string()
    } else if mech.contains('.') {
        format!("{}.diag", mech.replace('.', "/"))
    } else {
        format!("attention/{mech}.diag")
    };
    let text = std::fs::read_to_string(dir.join(run_dir).join("source").join(rel)).ok()?;
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("//"))
        .map(|l| l.trim().to_string())
}

/// Peak resident memory of this process so far (`VmHWM` of `/proc/self/status`), bytes.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The machine's name (`/proc/sys/kernel/hostname`), for the state records.
pub fn host() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Creates the log directory and opens (appending) the log of an entry.
pub fn log_file(dir: &Path, e: &Entry) -> Result<(std::fs::File, PathBuf), Error> {
    let path = dir.join(format!("logs/{}.log", e.name));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("create", parent, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| io("open", &path, e))?;
    Ok((f, path))
}

/// The last `n` lines of an entry's log (what a crashed process printed last).
pub fn log_tail(dir: &Path, e: &Entry, n: usize) -> String {
    let Ok(Some(text)) = read(dir, &format!("logs/{}.log", e.name)) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run directories under `runs/` that the plan does not name (left by a re-plan).
pub fn stray_runs(dir: &Path, entries: &[Entry]) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir.join("runs")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .map(|e| format!("runs/{}", e.file_name().to_string_lossy()))
        .filter(|n| !entries.iter().any(|e| &e.run_dir == n))
        .collect();
    out.sort();
    out
}

/// Now as RFC 3339 UTC (`2026-12-03T17:37:19Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
