//! What diagc was built from: run records, sweep states and reports carry it. Below every other
//! module: anything may ask.

/// The crate's version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit diagc was built from (`git rev-parse HEAD` when `build.rs` last ran), if known.
pub fn build_commit() -> Option<String> {
    option_env!("DIAGC_GIT_COMMIT")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}
