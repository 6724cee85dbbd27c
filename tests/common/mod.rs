//! Helpers shared by the execution tests (`exec.rs`, `fast_exec.rs`, `jit.rs`).

use diagc::driver;
use diagc::ir::instance::{Bindings, HyperValue, Instance, instantiate};
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
    let o = driver::check_path_with(&root.join(path), extra).unwrap();
    assert!(
        o.checked.is_ok(),
        "{path}: {:?}",
        o.checked.diagnostics.first()
    );
    instantiate(&o.checked.program, diagram, b).unwrap_or_else(|e| panic!("{diagram}: {e}"))
}
