//! No input may panic or hang the front end: mutations of every stdlib file, random token
//! soup, and hostile shapes (deep nesting, huge files, a million wires). Each case must end with
//! diagnostics or a clean check, never a panic, within a bounded time.

mod common;

use common::mutate::{Rng, TOKENS, mutate};
use diagc::session;
use proptest::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Checks text and fails the test on a panic; returns how long it took.
fn survive(name: &str, text: &str) -> Duration {
    let start = Instant::now();
    let r = std::panic::catch_unwind(|| session::check_text(name, text));
    if r.is_err() {
        let dump = std::env::temp_dir().join("diagc-panic.diag");
        let _ = std::fs::write(&dump, text);
        panic!(
            "the checker panicked on {name}; input saved to {}",
            dump.display()
        );
    }
    start.elapsed()
}

fn stdlib_texts() -> Vec<(String, String)> {
    diagc::stdlib::FILES
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

#[test]
fn mutations_of_the_stdlib_never_panic() {
    let texts = stdlib_texts();
    assert!(!texts.is_empty());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let budget = Duration::from_secs(20);
    let start = Instant::now();
    let mut cases = 0;
    while start.elapsed() < budget && cases < 4000 {
        let (name, text) = &texts[rng.below(texts.len())];
        let m = mutate(&mut rng, text);
        let took = survive(name, &m);
        assert!(
            took < Duration::from_secs(5),
            "checking a mutation of {name} took {took:?}"
        );
        cases += 1;
    }
    assert!(cases >= 200, "only {cases} mutations ran in {budget:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn token_soup_never_panics(picks in proptest::collection::vec(0usize..TOKENS.len(), 0..200)) {
        let text: String = picks.iter().map(|i| TOKENS[*i]).collect();
        survive("<soup>", &text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        survive("<text>", &text);
    }
}

#[test]
fn ten_thousand_nested_brackets_are_an_error_not_a_crash() {
    for (open, close) in [("(", ")"), ("[", "]"), ("{", "}")] {
        let text = format!(
            "diagram f(x: [a]) -> [a] {{ y = {}x{} }}",
            open.repeat(10_000),
            close.repeat(10_000)
        );
        let o = session::check_text("<deep>", &text);
        assert!(
            o.checked
                .diagnostics
                .iter()
                .any(|d| d.code.as_str() == "E0003"),
            "no E0003 for {open}"
        );
    }
}

#[test]
fn long_operator_chains_do_not_overflow_the_stack() {
    // Chains are flat in the syntax tree, so depth does not grow with their length.
    let terms = vec!["x"; 100_000].join(" + ");
    let text = format!("axis a\ndiagram f(x: [a]) -> [a] {{\n    {terms}\n}}\n");
    let o = session::check_text("<chain>", &text);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let minus = format!(
        "axis a\ndiagram f(x: [a]) -> [a] {{\n    y = {}x\n    y\n}}\n",
        "- ".repeat(100_000)
    );
    let o = session::check_text("<minus>", &minus);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
}

#[test]
fn a_million_wires_check_in_bounded_time() {
    let n = 1_000_000;
    let mut text = String::with_capacity(n * 24);
    text.push_str("axis a\ndiagram chain(x0: [a]) -> [a] {\n");
    for i in 1..=n {
        text.push_str(&format!("    x{i} = relu(x{})\n", i - 1));
    }
    text.push_str(&format!("    x{n}\n}}\n"));
    let start = Instant::now();
    let o = session::check_text("<million>", &text);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    assert_eq!(o.checked.program.diagrams[0].boxes.len(), n);
    // Generous: this is a hang detector, not a benchmark (see benches/ for speed).
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_ten_megabyte_file_of_garbage_gives_bounded_diagnostics() {
    let mut rng = Rng(12345);
    let mut text = String::with_capacity(10 << 20);
    while text.len() < 10 << 20 {
        text.push_str(TOKENS[rng.below(TOKENS.len())]);
    }
    let start = Instant::now();
    let o = session::check_text("<garbage>", &text);
    assert!(!o.checked.diagnostics.is_empty());
    assert!(o.checked.diagnostics.len() <= diagc::check::MAX_DIAGNOSTICS);
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn binary_files_are_reported_not_read() {
    let dir = std::env::temp_dir().join(format!("diagc-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("binary.diag");
    std::fs::write(&f, [0x7f, b'E', b'L', b'F', 0xff, 0xfe, 0x00, 0x01, 0x80]).unwrap();
    let o = session::check_path(&f).unwrap();
    assert_eq!(o.checked.diagnostics.len(), 1);
    assert_eq!(o.checked.diagnostics[0].code.as_str(), "E0004");
    assert!(session::check_path(Path::new("/nonexistent/file.diag")).is_err());
}
