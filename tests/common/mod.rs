//! Helpers shared by the test files: bindings and instances (the LM among them) for the
//! execution tests (`exec.rs`, `fast_exec.rs`, `jit.rs`, `fuse.rs`, `cuda_emulated.rs`), golden files for the rewriting tests (`rewrite.rs`,
//! `opt.rs`). Each test file uses some of them.
#![allow(dead_code)]

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

/// Compares `actual` with the file at `path`, or writes the file when `DIAGC_BLESS` is set.
pub fn golden(path: &str, actual: &str) {
    if std::env::var_os("DIAGC_BLESS").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{path} is missing; run with DIAGC_BLESS=1 to create it"));
    assert_eq!(
        want, actual,
        "{path} differs (DIAGC_BLESS=1 regenerates it)"
    );
}
