//! The layering of `src/`, enforced: every `crate::` path in a module must name a module below
//! it in [`LAYERS`] (the order `docs/architecture.md` states), and a few negative invariants
//! hold ("only `cli` knows clap", "only `report` knows ariadne", "the CUDA backend imports
//! nothing from `backend::cpu`", "only these modules touch the file system").
//!
//! The test reads the source text: comments are dropped, then every `crate::` path is taken,
//! grouped imports (`use crate::{a::b, c}`) included, and attributed to the module of the file
//! it is in (`src/backend/cuda/runtime.rs` is `backend::cuda`, `src/cli/train.rs` is `cli`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The modules of the library, lowest first. A module may use the modules before it.
const LAYERS: &[&str] = &[
    "version",
    "source",
    "diagnostic",
    "report",
    "error",
    "stdlib",
    "syntax",
    "ir",
    "check",
    "session",
    "autodiff",
    "lir",
    "backend::cpu",
    "backend::cuda",
    "render",
    "rewrite",
    "opt",
    "train",
    "selftest",
    "sweep",
    "cli",
];

/// Edges the order would allow but the architecture forbids.
const FORBIDDEN: &[(&str, &str, &str)] = &[(
    "backend::cuda",
    "backend::cpu",
    "the CUDA backend renders the backend-neutral plan (`lir`); it imports nothing of the CPU's",
)];

/// Edges the order forbids but the architecture allows, each with its reason (kept in
/// `docs/architecture.md`). Empty: there is no exception.
const ALLOWED: &[(&str, &str, &str)] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file of `src/` belongs to (`None` for the crate roots).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts[0] == "backend" && parts.len() > 1 {
        return Some(format!("backend::{}", parts[1]));
    }
    Some(parts[0].clone())
}

/// The source without comments (line comments, doc comments and block comments); string
/// literals are kept as they are, which is harmless here.
fn strip_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("//") {
            rest = r.find('\n').map_or("", |i| &r[i..]);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The module a path after `crate::` names: its first segment, or `backend::X`.
fn target(path: &str) -> String {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let first = ident(path);
    if first == "backend" {
        let rest = path.trim_start()[first.len()..].trim_start();
        if let Some(r) = rest.strip_prefix("::") {
            let second = ident(r);
            if !second.is_empty() {
                return format!("backend::{second}");
            }
        }
    }
    // `crate::Error` and `crate::Result` are the error module's re-exports.
    if first == "Error" || first == "Result" {
        return "error".into();
    }
    first
}

/// Every module named by a `crate::` path in `src` (comments stripped).
fn targets(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code = strip_comments(src);
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        // Only whole paths: `crate::` not preceded by an identifier character (`diagc_crate::`).
        let before = code[..start - "crate::".len()].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[start..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level at commas.
            let (mut depth, mut item) = (1, String::new());
            for c in group.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        item.push(c);
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        item.push(c);
                    }
                    ',' if depth == 1 => {
                        if !item.trim().is_empty() {
                            out.insert(target(&item));
                        }
                        item.clear();
                    }
                    _ => item.push(c),
                }
            }
            if !item.trim().is_empty() {
                out.insert(target(&item));
            }
        } else {
            out.insert(target(rest));
        }
    }
    out
}

struct Source {
    rel: PathBuf,
    module: String,
    text: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_path_buf();
            let module = module_of(&rel)?;
            let text = std::fs::read_to_string(&p).unwrap();
            Some(Source { rel, module, text })
        })
        .collect()
}

fn rank(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == m)
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let mut wrong = Vec::new();
    let mut edges = BTreeSet::new();
    for s in sources() {
        let Some(from) = rank(&s.module) else {
            // `backend` itself only declares its two submodules.
            if s.module != "backend" {
                wrong.push(format!(
                    "{}: module `{}` is not in LAYERS",
                    s.rel.display(),
                    s.module
                ));
            }
            continue;
        };
        for t in targets(&s.text) {
            if t == s.module {
                continue;
            }
            let Some(to) = rank(&t) else {
                wrong.push(format!(
                    "{}: `crate::{t}` is not a known module",
                    s.rel.display()
                ));
                continue;
            };
            edges.insert((s.module.clone(), t.clone()));
            let allowed = ALLOWED.iter().any(|(a, b, _)| *a == s.module && *b == t);
            if to >= from && !allowed {
                wrong.push(format!(
                    "{}: `{}` uses `{t}`, which is not below it",
                    s.rel.display(),
                    s.module
                ));
            }
            if let Some((_, _, why)) = FORBIDDEN.iter().find(|(a, b, _)| *a == s.module && *b == t)
            {
                wrong.push(format!(
                    "{}: `{}` uses `{t}`: {why}",
                    s.rel.display(),
                    s.module
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // The test sees the edges it is meant to see (a parser that finds nothing passes vacuously).
    for (a, b) in [
        ("cli", "train"),
        ("train", "backend::cuda"),
        ("backend::cpu", "lir"),
        ("backend::cuda", "lir"),
        ("check", "ir"),
        ("rewrite", "session"),
    ] {
        assert!(
            edges.contains(&(a.to_string(), b.to_string())),
            "expected the edge {a} -> {b} among {edges:?}"
        );
    }
}

#[test]
fn the_parser_of_paths_sees_groups_and_skips_comments() {
    let src = "use crate::{ir::{Op, Diagram}, backend::cpu::exec};\n\
               // crate::cli in a comment\n\
               /* crate::train */ fn f() { crate::session::check_text(\"a\", \"b\"); }\n\
               type R = crate::Result<()>;";
    let t: Vec<String> = targets(src).into_iter().collect();
    assert_eq!(t, ["backend::cpu", "error", "ir", "session"]);
}

/// Files (relative to `src/`) whose text mentions one of `needles`, minus those allowed.
fn offenders(needles: &[&str], allowed: &[&str]) -> Vec<String> {
    sources()
        .into_iter()
        .filter(|s| {
            let code = strip_comments(&s.text);
            needles.iter().any(|n| code.contains(n))
        })
        .map(|s| s.rel.display().to_string())
        .filter(|r| !allowed.iter().any(|a| r.starts_with(a)))
        .collect()
}

#[test]
fn only_the_cli_knows_clap_and_exit_codes() {
    assert_eq!(
        offenders(&["clap::", "clap::{"], &["cli/"]),
        Vec::<String>::new()
    );
    assert_eq!(
        offenders(&["process::exit"], &["cli/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_report_knows_ariadne() {
    assert_eq!(
        offenders(&["ariadne"], &["report.rs"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_the_cpu_backend_runs_cranelift() {
    assert_eq!(
        offenders(&["cranelift"], &["backend/cpu/"]),
        Vec::<String>::new()
    );
}

#[test]
fn only_these_modules_touch_the_file_system() {
    // The session reads source files; training reads its data (and fetches it when asked) and
    // writes checkpoints and metrics; NVRTC's disk cache; the CLI writes what the user asked for.
    let allowed = [
        "session.rs",
        "train/data.rs",
        "train/fetch.rs",
        "train/checkpoint.rs",
        "train/run.rs",
        "train/rundir.rs",
        "backend/cuda/nvrtc.rs",
        "sweep/store.rs",
        "cli/",
    ];
    assert_eq!(offenders(&["fs::"], &allowed), Vec::<String>::new());
}

#[test]
fn only_the_fetcher_touches_the_network() {
    // `diagc data fetch ptb` and `diagc train --download`; nothing else opens a connection.
    assert_eq!(
        offenders(&["ureq::", "TcpStream", "UdpSocket"], &["train/fetch.rs"]),
        Vec::<String>::new()
    );
}
