//! Helpers shared by the test files: bindings and instances (the LM among them) for the
//! execution tests, golden files (one meaning of `DIAGC_BLESS`), and running the `diagc`
//! binary. Each test file uses some of them.
#![allow(dead_code)]

pub mod mutate;

use diagc::ir::instance::{Bindings, HyperValue, Instance, instantiate};
use diagc::session;
use std::path::Path;

pub fn bindings(sizes: &[(&str, u64)], hypers: &[(&str, HyperValue)]) -> Bindings {
    Bindings {
        sizes: sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        hypers: hypers
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// Checks `path` (relative to the crate, with `extra` modules) and instantiates `diagram`.
pub fn instance_of(path: &str, extra: &[&str], diagram: &str, b: &Bindings) -> Instance {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path_with(&root.join(path), extra).unwrap();
    assert!(
        o.checked.is_ok(),
        "{path}: {:?}",
        o.checked.diagnostics.first()
    );
    instantiate(&o.checked.program, diagram, b).unwrap_or_else(|e| panic!("{diagram}: {e}"))
}

/// Small sizes of the language model for the execution tests.
pub const LM_SIZES: &[(&str, u64)] = &[
    ("tok", 5),
    ("dm", 8),
    ("head", 2),
    ("dff", 12),
    ("vocab", 11),
];

/// The stdlib language model (`stdlib/lm.diag`) around the stdlib mechanism `mech`, with
/// `layers` layers, at `sizes`.
pub fn lm(mech: &str, layers: f64, sizes: &[(&str, u64)]) -> Instance {
    let b = bindings(
        sizes,
        &[
            ("layers", HyperValue::Num(layers)),
            ("mech", HyperValue::Diagram(mech.into())),
        ],
    );
    let module = format!("attention.{mech}");
    instance_of("stdlib/lm.diag", &[module.as_str()], "lm", &b)
}

/// The crate's root (where the tests' relative paths start).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether golden files are being rewritten: `DIAGC_BLESS` set to anything but `0` (or empty).
pub fn blessing() -> bool {
    std::env::var_os("DIAGC_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Compares `actual` with the golden file `rel` (relative to the crate root), or rewrites the
/// file when [`blessing`]. A difference writes the actual text under `target/golden-actual/`
/// and says how to look and bless.
pub fn golden_check(rel: &str, actual: &str) -> Result<(), String> {
    let path = root().join(rel);
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let want = std::fs::read_to_string(&path)
        .map_err(|e| format!("{rel}: {e}; run with DIAGC_BLESS=1 to create it"))?;
    if want == actual {
        return Ok(());
    }
    let out = root().join("target/golden-actual").join(rel);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    std::fs::write(&out, actual).unwrap();
    Err(format!(
        "{rel} differs (the actual text is in {}); if the change is intended, look at it and \
         bless: DIAGC_BLESS=1 cargo test --release",
        out.display()
    ))
}

/// [`golden_check`], failing the test on a difference.
pub fn golden(rel: &str, actual: &str) {
    if let Err(e) = golden_check(rel, actual) {
        panic!("{e}");
    }
}

/// Runs the `diagc` binary with `args` in the crate root, without colour.
pub fn diagc(args: &[&str]) -> std::process::Output {
    diagc_in(root(), args)
}

/// Runs the `diagc` binary with `args` in `dir`, without colour.
pub fn diagc_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}
