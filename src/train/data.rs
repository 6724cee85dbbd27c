//! Word-level Penn Treebank, exactly as `../shared/docs/experiment.md` prescribes: tokens are the
//! whitespace-separated words of each line followed by `<eos>`; the vocabulary is built from the
//! training file in order of first appearance; a split's token stream is cut into `B` equal
//! contiguous columns (the remainder dropped, as PyTorch's word_language_model `batchify`); step
//! `i` reads rows `[i*T, i*T + T)` as inputs and the rows one further as targets.
//!
//! Nothing is downloaded: a missing or corrupt file (a checksum mismatch counts as corrupt) is an
//! error that names where diagc looked and how to get the data.

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

/// Where the data is: `--data DIR` if given, else `$DIAGC_DATA`, else `../shared/data/ptb`.
pub fn data_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("DIAGC_DATA") {
        return PathBuf::from(p);
    }
    PathBuf::from("../shared/data/ptb")
}

const HOW_TO_GET: &str = "diagc needs Mikolov's word-level Penn Treebank (ptb.train.txt, ptb.valid.txt, \
     ptb.test.txt, e.g. from the `simple-examples` archive of his RNNLM toolkit); put the three files in one \
     directory and pass it with `--data DIR` or the DIAGC_DATA environment variable";

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
            "cannot read {} ({e}); {HOW_TO_GET}",
            path.display()
        ))
    })?;
    let got: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != sha {
        return Err(Error::Data(format!(
            "{} is corrupt or not the standard file: its SHA-256 is {got}, expected {sha}; {HOW_TO_GET}",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        Error::Data(format!(
            "{} is not UTF-8 text; {HOW_TO_GET}",
            path.display()
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
