//! The standard library, embedded in the binary by `build.rs` so `diagc` works from any
//! directory. `use attention.m1` finds `stdlib/attention/m1.diag`.

/// `(path relative to stdlib/, text)` for every stdlib file, sorted by path.
pub const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/stdlib_files.rs"));

/// The text of the stdlib module `a.b` (file `a/b.diag`).
pub fn module(dotted: &str) -> Option<(&'static str, &'static str)> {
    let path = format!("{}.diag", dotted.replace('.', "/"));
    FILES.iter().find(|(p, _)| *p == path).copied()
}

/// Every stdlib module name, dotted (`attention.m1`).
pub fn module_names() -> impl Iterator<Item = String> {
    FILES
        .iter()
        .map(|(p, _)| p.trim_end_matches(".diag").replace('/', "."))
}

/// The attention mechanisms: stdlib modules under `attention/`, by diagram name.
pub fn mechanisms() -> impl Iterator<Item = String> {
    module_names().filter_map(|m| m.strip_prefix("attention.").map(str::to_string))
}
