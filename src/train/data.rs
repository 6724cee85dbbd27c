//! Word-level Penn Treebank, exactly as `../shared/docs/experiment.md` prescribes: tokens are the
//! whitespace-separated words of each line followed by `<eos>`; the vocabulary is built from the
//! training file in order of first appearance; a split's token stream is cut into `B` equal
//! contiguous columns (the remainder dropped, as PyTorch's word_language_model `batchify`); step
//! `i` reads rows `[i*T, i*T + T)` as inputs and the rows one further as targets.
//!
//! Nothing is downloaded here (`train::fetch` does that, when asked): a missing or corrupt file (a
//! checksum mismatch counts as corrupt) is an error that names where diagc looked and the exact
//! command that fetches the data. The lookup order is `--data DIR`, `$DIAGC_DATA`,
//! `../shared/data/ptb`, then the cache that `diagc data fetch ptb` fills ([`locate`]).

use crate::error::Error;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The three files and their SHA-256 (Mikolov's preprocessed PTB, as in `SHA256SUMS`).
pub const FILES: [(&str, &str); 3] = [
    (
        "ptb.train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    ),
    (
        "ptb.valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    ),
    (
        "ptb.test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
    ),
];

pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";

/// The relative directory the project's shared checkout provides (step 3 of the lookup).
pub const SHARED: &str = "../shared/data/ptb";

/// A step of the lookup order, in order: `--data DIR`, `$DIAGC_DATA`, `../shared/data/ptb`,
/// the cache (`$XDG_CACHE_HOME/diagc/ptb`, else `~/.cache/diagc/ptb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Flag,
    Env,
    Shared,
    Cache,
}

impl Step {
    /// The step as the user knows it: `--data`, `DIAGC_DATA`, `../shared/data/ptb`, `cache`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Flag => "--data",
            Step::Env => "DIAGC_DATA",
            Step::Shared => SHARED,
            Step::Cache => "cache",
        }
    }

    /// Its position in the lookup order, from 1.
    pub fn number(self) -> usize {
        self as usize + 1
    }
}

/// The cache directory `diagc data fetch ptb` writes to: `$XDG_CACHE_HOME/diagc/ptb` when
/// that is an absolute path (the XDG rule: a relative one is ignored), else
/// `$HOME/.cache/diagc/ptb`; `None` when neither is known.
pub fn cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".cache"))
    })?;
    Some(base.join("diagc").join("ptb"))
}

/// The directories of the lookup order that apply here: `--data` and `DIAGC_DATA` when given
/// (an empty `DIAGC_DATA` counts as unset), then `../shared/data/ptb` and the cache.
pub fn candidates(flag: Option<&Path>) -> Vec<(Step, PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = flag {
        out.push((Step::Flag, p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("DIAGC_DATA").filter(|p| !p.is_empty()) {
        out.push((Step::Env, PathBuf::from(p)));
    }
    out.push((Step::Shared, PathBuf::from(SHARED)));
    if let Some(c) = cache_dir() {
        out.push((Step::Cache, c));
    }
    out
}

/// Whether `dir` holds the three files (as regular files; their checksums are checked when
/// they are read). Partial downloads (`.NAME.part`) never count.
pub fn has_files(dir: &Path) -> bool {
    FILES.iter().all(|(n, _)| dir.join(n).is_file())
}

/// Where the data is, and which step of the lookup order found it: `--data DIR` or
/// `$DIAGC_DATA` when given (taken as they are: a directory the user names is the one used),
/// else the first of `../shared/data/ptb` and the cache that holds the three files; `None`
/// when neither does.
pub fn locate(flag: Option<&Path>) -> Option<(Step, PathBuf)> {
    let all = candidates(flag);
    if let Some((s, d)) = all.first()
        && matches!(s, Step::Flag | Step::Env)
    {
        return Some((*s, d.clone()));
    }
    all.into_iter().find(|(_, d)| has_files(d))
}

/// Where the data is ([`locate`]), or, when it is nowhere, where it would be fetched to (the
/// cache, else `../shared/data/ptb`), so that reading it fails with [`how_to_get`]'s advice.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    locate(flag)
        .map(|(_, d)| d)
        .or_else(cache_dir)
        .unwrap_or_else(|| PathBuf::from(SHARED))
}

/// Where the data is ([`locate`]), or an error saying where diagc looked and the exact
/// command that fetches it.
pub fn find(flag: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some((_, d)) = locate(flag) {
        return Ok(d);
    }
    let looked: Vec<String> = candidates(flag)
        .iter()
        .map(|(_, d)| d.display().to_string())
        .collect();
    Err(Error::Data(format!(
        "no Penn Treebank data found (looked in {}); {}",
        looked.join(" and "),
        how_to_get()
    )))
}

/// What to do when the data is missing or corrupt: the exact commands.
pub fn how_to_get() -> String {
    let cache = cache_dir()
        .map(|c| format!(" into {}", c.display()))
        .unwrap_or_default();
    format!(
        "run `diagc data fetch ptb` to download Mikolov's word-level Penn Treebank \
         (ptb.train.txt, ptb.valid.txt, ptb.test.txt){cache}, or add `--download` to `diagc train`; \
         or put the three files in one directory and pass it with `--data DIR` or the DIAGC_DATA \
         environment variable"
    )
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of a file, read in pieces (a file of any size is hashed in constant memory).
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where one split was found and whether its checksum matches (`diagc data status`).
#[derive(Debug, Clone)]
pub struct SplitStatus {
    pub file: &'static str,
    /// The first step of the lookup order whose directory holds the file, and the file.
    pub found: Option<(Step, PathBuf)>,
    /// Whether the file found has the expected SHA-256 (`None`: not found or unreadable).
    pub checksum_ok: Option<bool>,
}

/// Each split: where the lookup order finds it first, and whether its checksum matches.
pub fn status(flag: Option<&Path>) -> Vec<SplitStatus> {
    let all = candidates(flag);
    FILES
        .iter()
        .map(|(file, sha)| {
            let found = all
                .iter()
                .map(|(s, d)| (*s, d.join(file)))
                .find(|(_, p)| p.is_file());
            let checksum_ok = found
                .as_ref()
                .and_then(|(_, p)| file_sha256(p).ok())
                .map(|got| got == *sha);
            SplitStatus {
                file,
                found,
                checksum_ok,
            }
        })
        .collect()
}

/// The vocabulary: word <-> id, ids in order of first appearance in the training file.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub words: Vec<String>,
    index: HashMap<String, u32>,
}

impl Vocab {
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn id(&self, w: &str) -> Option<u32> {
        self.index.get(w).copied()
    }

    fn push(&mut self, w: &str) -> u32 {
        if let Some(i) = self.index.get(w) {
            return *i;
        }
        let i = self.words.len() as u32;
        self.words.push(w.to_string());
        self.index.insert(w.to_string(), i);
        i
    }
}

/// The three splits as token-id streams, and the vocabulary.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub vocab: Vocab,
    pub train: Vec<u32>,
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
    pub dir: PathBuf,
}

/// Reads one file, checking its SHA-256.
fn read_checked(dir: &Path, name: &str, sha: &str) -> Result<String, Error> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::Data(format!(
            "cannot read {} ({e}); {}",
            path.display(),
            how_to_get()
        ))
    })?;
    let got = sha256_hex(&bytes);
    if got != sha {
        return Err(Error::Data(format!(
            "{} is corrupt or not the standard file: its SHA-256 is {got}, expected {sha}; {}",
            path.display(),
            how_to_get()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        Error::Data(format!(
            "{} is not UTF-8 text; {}",
            path.display(),
            how_to_get()
        ))
    })
}

/// Splits text into words, with `<eos>` after every line.
pub fn tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .flat_map(|l| l.split_whitespace().chain(std::iter::once(EOS)))
}

impl Corpus {
    /// Loads and checks the three files of `dir`.
    pub fn load(dir: &Path) -> Result<Corpus, Error> {
        let texts: Vec<String> = FILES
            .iter()
            .map(|(n, sha)| read_checked(dir, n, sha))
            .collect::<Result<_, _>>()?;
        Ok(Corpus::from_texts(&texts[0], &texts[1], &texts[2], dir))
    }

    /// Builds the corpus from the three texts (the vocabulary from `train`).
    pub fn from_texts(train: &str, valid: &str, test: &str, dir: &Path) -> Corpus {
        let mut vocab = Vocab {
            words: Vec::new(),
            index: HashMap::new(),
        };
        let train: Vec<u32> = tokenize(train).map(|w| vocab.push(w)).collect();
        let unk = vocab.id(UNK);
        let mut map = |text: &str| -> Vec<u32> {
            tokenize(text)
                .map(|w| match (vocab.id(w), unk) {
                    (Some(i), _) => i,
                    (None, Some(u)) => u,
                    // A word unseen in training and no `<unk>` to map it to: add `<unk>`.
                    (None, None) => vocab.push(UNK),
                })
                .collect()
        };
        let valid = map(valid);
        let test = map(test);
        Corpus {
            vocab,
            train,
            valid,
            test,
            dir: dir.to_path_buf(),
        }
    }
}

/// A token stream cut into `columns` contiguous columns: row-major `[rows, columns]`, element
/// `(r, c)` is token `c * rows + r` of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Batched {
    pub rows: usize,
    pub columns: usize,
    pub data: Vec<u32>,
}

pub fn batchify(tokens: &[u32], columns: usize) -> Batched {
    let columns = columns.max(1);
    let rows = tokens.len() / columns;
    let mut data = vec![0u32; rows * columns];
    for c in 0..columns {
        for r in 0..rows {
            data[r * columns + c] = tokens[c * rows + r];
        }
    }
    Batched {
        rows,
        columns,
        data,
    }
}

/// One window: inputs and next-token targets, both `[len, columns]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub start: usize,
    pub len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batched {
    /// The windows of length `bptt` (the last may be shorter), in order.
    pub fn windows(&self, bptt: usize) -> impl Iterator<Item = Window> + '_ {
        let bptt = bptt.max(1);
        (0..self.rows.saturating_sub(1))
            .step_by(bptt)
            .map(move |start| {
                let len = bptt.min(self.rows - 1 - start);
                let c = self.columns;
                Window {
                    start,
                    len,
                    inputs: self.data[start * c..(start + len) * c].to_vec(),
                    targets: self.data[(start + 1) * c..(start + 1 + len) * c].to_vec(),
                }
            })
    }

    /// How many windows of length `bptt` there are.
    pub fn window_count(&self, bptt: usize) -> usize {
        self.rows.saturating_sub(1).div_ceil(bptt.max(1))
    }
}
