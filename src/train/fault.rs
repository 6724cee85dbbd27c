//! Fault injection for the crash and full-disk tests, read once from the environment variable
//! `DIAGC_FAULT` (comma-separated `key=value`; unset in normal use, and then every hook is a
//! no-op):
//!
//! - `checkpoint-abort=N`: the process aborts (as `kill -9` would end it) inside the N-th
//!   checkpoint window, after the new file is complete and before it replaces the old one;
//! - `checkpoint-error=N`: the N-th checkpoint write fails there with an I/O error (a full disk);
//! - `checkpoint-sleep-ms=MS`: every checkpoint window lasts MS milliseconds longer, so that a
//!   test killing the process at random moments lands inside windows often;
//! - `free-bytes=B`: the free-space check sees B bytes free.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Faults {
    abort_at: Option<usize>,
    error_at: Option<usize>,
    sleep_ms: u64,
    free_bytes: Option<u64>,
}

fn faults() -> &'static Faults {
    static F: OnceLock<Faults> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = Faults::default();
        let spec = std::env::var("DIAGC_FAULT").unwrap_or_default();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, ""));
            let n = v.parse::<u64>().ok();
            match k {
                "checkpoint-abort" => f.abort_at = n.map(|n| n as usize),
                "checkpoint-error" => f.error_at = n.map(|n| n as usize),
                "checkpoint-sleep-ms" => f.sleep_ms = n.unwrap_or(0),
                "free-bytes" => f.free_bytes = n,
                _ => {}
            }
        }
        f
    })
}

static WINDOWS: AtomicUsize = AtomicUsize::new(0);

/// Called between a complete temporary checkpoint file and its rename.
pub fn in_checkpoint_window() -> std::io::Result<()> {
    let f = faults();
    let n = WINDOWS.fetch_add(1, Ordering::SeqCst) + 1;
    if f.sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(f.sleep_ms));
    }
    if f.abort_at == Some(n) {
        std::process::abort();
    }
    if f.error_at == Some(n) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "no space left on device (injected by DIAGC_FAULT)",
        ));
    }
    Ok(())
}

/// The free bytes the free-space check should see instead of the file system's, if injected.
pub fn free_bytes() -> Option<u64> {
    faults().free_bytes
}
