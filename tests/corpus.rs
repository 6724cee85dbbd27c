//! Corpus tests: every `.diag` file in the repository is checked, and its expected outcome is
//! written in the file itself.
//!
//! A file that should fail carries one line per expected diagnostic:
//!
//! ```text
//! // expect: E0204 `v` `dk`
//! ```
//!
//! meaning: a diagnostic with code E0204 whose labelled spans include one covering exactly the
//! text `v` and one covering exactly `dk`. The checker must report exactly the expected codes
//! (as a multiset), and every listed text must be the text of one of that diagnostic's labels.
//! Files without `expect` lines must check clean. A file with the line `// check: --causal`
//! (or `--causal=AXIS`) is checked as `diagc check --causal` checks it: its diagrams are also
//! proved causal along `tok` (or AXIS), and the E0601 errors of failed proofs are expected too. The rendered reports of failing files are
//! snapshotted next to their source (insta), so a reviewer sees source and report together.

use diagc::session;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
struct Expect {
    code: String,
    texts: Vec<String>,
    line: usize,
}

fn expectations(text: &str) -> Vec<Expect> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("// expect:") else {
            continue;
        };
        let rest = rest.trim();
        let (code, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let texts = tail
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push(Expect {
            code: code.to_string(),
            texts,
            line: i + 1,
        });
    }
    out
}

/// The axis of a `// check: --causal[=AXIS]` line, if the file has one.
fn causal_directive(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("// check:")?.trim();
        let rest = rest.strip_prefix("--causal")?;
        Some(rest.strip_prefix('=').unwrap_or("tok").trim().to_string())
    })
}

/// Checks a file as the CLI would with the flags its directives ask for.
fn check_as_directed(o: &mut session::Outcome, text: &str) {
    if let Some(axis) = causal_directive(text) {
        session::prove_causal(o, &axis);
    }
}

fn diag_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(diag_files(&p));
        } else if p.extension().is_some_and(|x| x == "diag") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Checks one outcome against its expectations; returns a description of each mismatch.
fn compare(name: &str, o: &session::Outcome, expects: &[Expect]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut remaining: Vec<&diagc::diagnostic::Diagnostic> = o.checked.diagnostics.iter().collect();
    for e in expects {
        let pos = remaining.iter().position(|d| {
            d.code.as_str() == e.code
                && e.texts
                    .iter()
                    .all(|t| d.labels.iter().any(|l| o.sources.slice(l.span) == t))
        });
        match pos {
            Some(p) => {
                remaining.remove(p);
            }
            None => problems.push(format!(
                "{name}:{}: expected {} with labels {:?}; got:\n{}",
                e.line,
                e.code,
                e.texts,
                render_all(o)
            )),
        }
    }
    for d in remaining {
        problems.push(format!(
            "{name}: unexpected diagnostic:\n{}",
            diagc::report::render(d, &o.sources, false)
        ));
    }
    problems
}

fn render_all(o: &session::Outcome) -> String {
    o.checked
        .diagnostics
        .iter()
        .map(|d| diagc::report::render(d, &o.sources, false))
        .collect()
}

fn run_dir(dir: &str, must_fail: bool) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = diag_files(&root.join(dir));
    let mut problems = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let expects = expectations(&String::from_utf8_lossy(&bytes));
        let name = f.strip_prefix(root).unwrap().display().to_string();
        if must_fail && expects.is_empty() {
            problems.push(format!("{name}: a file in {dir} needs `// expect:` lines"));
            continue;
        }
        // Relative to the package root (the tests' working directory), so reports and
        // snapshots do not depend on where the checkout is.
        let mut o = session::check_path(f.strip_prefix(root).unwrap()).unwrap();
        check_as_directed(&mut o, &String::from_utf8_lossy(&bytes));
        problems.extend(compare(&name, &o, &expects));
        if !expects.is_empty() {
            let mut settings = insta::Settings::clone_current();
            settings.set_snapshot_path(root.join("tests/snapshots"));
            settings.set_prepend_module_to_snapshot(false);
            settings.set_input_file(f);
            settings.bind(|| {
                let snap = format!(
                    "{}\n---\n{}",
                    String::from_utf8_lossy(&bytes),
                    render_all(&o)
                );
                insta::assert_snapshot!(name.replace(['/', '.'], "_"), snap);
            });
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
    files.len()
}

#[test]
fn stdlib_checks_clean() {
    let n = run_dir("stdlib", false);
    assert!(n >= 8, "the stdlib has {n} files");
}

#[test]
fn passing_corpus_checks_clean() {
    run_dir("tests/pass", false);
}

#[test]
fn failing_corpus_reports_what_each_file_expects() {
    let n = run_dir("tests/fail", true);
    assert!(
        n >= 40,
        "the failing corpus has {n} files; it should have at least 40"
    );
}

#[test]
fn examples_check_as_documented() {
    // Well-typed examples have no `expect` lines; the ill-typed ones say what they show.
    run_dir("examples", false);
    run_dir("examples/ill-typed", true);
}

#[test]
fn every_error_code_is_exercised_by_the_failing_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = std::collections::BTreeSet::new();
    for f in diag_files(&root.join("tests/fail")) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for e in expectations(&text) {
            seen.insert(e.code);
        }
    }
    let missing: Vec<&str> = diagc::diagnostic::ALL_CODES
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !seen.contains(*c))
        .collect();
    assert!(missing.is_empty(), "no failing test for {missing:?}");
}

/// Checks every ```diag block of a Markdown file as a standalone file; returns how many there
/// were and the problems found.
fn check_markdown(path: &Path) -> (usize, Vec<String>) {
    let doc = std::fs::read_to_string(path).unwrap();
    let shown = path.file_name().unwrap().to_string_lossy().to_string();
    let mut problems = Vec::new();
    let mut blocks = 0;
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if line.trim() != "```diag" {
            continue;
        }
        let mut block = String::new();
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            block.push_str(l);
            block.push('\n');
        }
        blocks += 1;
        let name = format!("<{shown}:{}>", i + 1);
        let mut o = session::check_text(&name, &block);
        check_as_directed(&mut o, &block);
        problems.extend(compare(&name, &o, &expectations(&block)));
    }
    (blocks, problems)
}

#[test]
fn language_reference_examples_check_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (blocks, problems) = check_markdown(&root.join("docs/language.md"));
    assert!(
        blocks >= 14,
        "docs/language.md has only {blocks} diag examples"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

#[test]
fn error_explanations_examples_check_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    let mut problems = Vec::new();
    for code in diagc::diagnostic::ALL_CODES {
        let (n, p) = check_markdown(&root.join(format!("docs/errors/{}.md", code.as_str())));
        total += n;
        problems.extend(p);
    }
    assert!(
        total >= 40,
        "the error pages have only {total} diag examples"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}
