//! The PTB pipeline on the real files (`../shared/data/ptb`, as in CI) and on small texts.

use diagc::train::data::{self, Corpus, batchify};
use std::path::Path;

fn real() -> Corpus {
    let dir = data::data_dir(None);
    Corpus::load(&dir).unwrap_or_else(|e| panic!("the PTB files must be at {}: {e}", dir.display()))
}

#[test]
fn the_real_corpus_has_the_protocol_sizes() {
    let c = real();
    assert_eq!(c.vocab.len(), 10_000);
    assert_eq!(
        (c.train.len(), c.valid.len(), c.test.len()),
        (929_589, 73_760, 82_430)
    );
    // Ids follow first appearance in the training file; `<eos>` ends the first line.
    let first_line = std::fs::read_to_string(c.dir.join("ptb.train.txt")).unwrap();
    let words: Vec<&str> = first_line
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(c.vocab.words[0], words[0]);
    assert_eq!(c.vocab.words[words.len()], data::EOS);
    // Training batches: 20 columns of 46,479 tokens, 1,328 windows of 35 (the last shorter).
    let b = batchify(&c.train, 20);
    assert_eq!((b.rows, b.columns), (929_589 / 20, 20));
    assert_eq!(b.window_count(35), (b.rows - 1).div_ceil(35));
    let last = b.windows(35).last().unwrap();
    assert_eq!(last.len, (b.rows - 1) - (b.window_count(35) - 1) * 35);
}

#[test]
fn windows_read_contiguous_columns_with_next_token_targets() {
    let tokens: Vec<u32> = (0..23).collect();
    let b = batchify(&tokens, 3); // 7 rows, 2 tokens dropped
    assert_eq!((b.rows, b.columns), (7, 3));
    // Column c holds tokens c*7 .. c*7+7.
    assert_eq!(&b.data[0..3], &[0, 7, 14]);
    assert_eq!(&b.data[3..6], &[1, 8, 15]);
    let ws: Vec<_> = b.windows(4).collect();
    assert_eq!(ws.len(), 2);
    assert_eq!((ws[0].len, ws[1].len), (4, 2));
    assert_eq!(ws[0].inputs[..3], [0, 7, 14]);
    assert_eq!(ws[0].targets[..3], [1, 8, 15]);
    assert_eq!(ws[1].targets[3..6], [6, 13, 20]);
}

#[test]
fn unknown_words_map_to_unk_and_lines_end_with_eos() {
    let c = Corpus::from_texts(" a b <unk>\n b c\n", " a z\n", " q\n", Path::new("."));
    assert_eq!(c.vocab.words, ["a", "b", "<unk>", "<eos>", "c"]);
    assert_eq!(c.train, [0, 1, 2, 3, 1, 4, 3]);
    assert_eq!(c.valid, [0, 2, 3]);
    assert_eq!(c.test, [2, 3]);
}

#[test]
fn missing_and_corrupt_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("diagc-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = Corpus::load(&dir).unwrap_err();
    assert!(matches!(e, diagc::Error::Data(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("ptb.train.txt") && e.contains("--data"), "{e}");
    let src = data::data_dir(None);
    for (name, _) in data::FILES {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    assert!(Corpus::load(&dir).is_ok());
    let mut bytes = std::fs::read(dir.join("ptb.valid.txt")).unwrap();
    bytes[100] ^= 1;
    std::fs::write(dir.join("ptb.valid.txt"), bytes).unwrap();
    let e = Corpus::load(&dir).unwrap_err().to_string();
    assert!(e.contains("ptb.valid.txt") && e.contains("corrupt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
