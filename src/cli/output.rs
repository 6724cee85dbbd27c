//! Standard output and standard error as the CLI writes them. `println!` and `eprintln!` panic
//! when a stream fails (`diagc compile ... > /dev/full`, a closed pipe); the CLI writes through
//! [`outln!`](crate::outln) and [`errln!`](crate::errln) instead, which record the first failure of each
//! stream and stop writing to it, and [`finish`] turns that into the exit code: a closed pipe
//! (`diagc ... | head`) keeps the command's code, any other failure (a full disk) is exit 2
//! with a message on the other stream.

use std::io::Write;
use std::sync::Mutex;

/// The first failure of standard output and of standard error.
static FAILED: Mutex<[Option<std::io::Error>; 2]> = Mutex::new([None, None]);

fn failed(k: usize) -> bool {
    FAILED.lock().map(|f| f[k].is_some()).unwrap_or(true)
}

fn record(k: usize, e: std::io::Error) {
    if let Ok(mut f) = FAILED.lock()
        && f[k].is_none()
    {
        f[k] = Some(e);
    }
}

/// Writes bytes to standard output (k = 0) or standard error (k = 1) unless it failed before.
pub fn write(k: usize, bytes: &[u8]) {
    if failed(k) {
        return;
    }
    let r = if k == 0 {
        std::io::stdout().lock().write_all(bytes)
    } else {
        std::io::stderr().lock().write_all(bytes)
    };
    if let Err(e) = r {
        record(k, e);
    }
}

/// Writes formatted text to standard output (k = 0) or standard error (k = 1).
pub fn write_fmt(k: usize, args: std::fmt::Arguments) {
    write(k, std::fmt::format(args).as_bytes());
}

/// Flushes standard output and returns the command's exit code given how the streams fared.
pub fn finish(code: i32) -> i32 {
    if !failed(0)
        && let Err(e) = std::io::stdout().lock().flush()
    {
        record(0, e);
    }
    let Ok(mut f) = FAILED.lock() else {
        return 2;
    };
    let mut code = code;
    for (k, name) in [(0, "standard output"), (1, "standard error")] {
        if let Some(e) = f[k].take() {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                continue;
            }
            let message = format!("diagc: cannot write {name}: {e}\n");
            let _ = if k == 0 {
                std::io::stderr().lock().write_all(message.as_bytes())
            } else {
                std::io::stdout().lock().write_all(message.as_bytes())
            };
            code = 2;
        }
    }
    code
}
