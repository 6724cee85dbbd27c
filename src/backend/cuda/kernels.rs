//! The hand-written CUDA kernels of `kernels/`, embedded in the binary by `build.rs`.
//!
//! `common.cuh` holds the device helpers every kernel uses (reductions, the dropout hash of the
//! CPU executor); it is prepended to each `.cu` file, which then compiles alone with NVRTC (no
//! `#include`: NVRTC has no host headers, and one module per file keeps compilation small).

/// Every file of `kernels/`: `(file name, source)`, sorted by name.
pub const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/cuda_kernels.rs"));

/// The shared helpers, prepended to every module.
pub const COMMON: &str = "common.cuh";

/// The source of `common.cuh` (empty if the file is missing, which the tests catch).
pub fn common() -> &'static str {
    FILES
        .iter()
        .find(|(n, _)| *n == COMMON)
        .map_or("", |(_, s)| *s)
}

/// The compilable modules: each `.cu` file, `common.cuh` prepended, as `(file name, source)`.
pub fn modules() -> Vec<(&'static str, String)> {
    FILES
        .iter()
        .filter(|(n, _)| n.ends_with(".cu"))
        .map(|(n, s)| (*n, format!("{}\n// ---- {n} ----\n{s}", common())))
        .collect()
}

/// The names of the `extern "C"` kernels a source defines (`__global__` functions with C
/// linkage), in order: what a runtime can launch from its module.
pub fn entry_points(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("__global__") {
        let after = &rest[at + "__global__".len()..];
        let before = &rest[..at];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let c_linkage = before[line_start..].contains("extern \"C\"");
        // `__global__ void NAME(`: the identifier before the first parenthesis.
        if let Some(paren) = after.find('(') {
            let head = after[..paren].trim_end();
            let name: String = head
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if c_linkage && !name.is_empty() {
                out.push(name);
            }
        }
        rest = after;
    }
    out
}
