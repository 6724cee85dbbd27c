//! diagc: a compiler for string diagrams of attention mechanisms and the Transformer language
//! models built around them (the formalism of "On the Anatomy of Attention", arXiv 2407.02423).
//!
//! The modules are the pipeline, in order; each depends only on the ones above it.

/// Compiles a function for the widest SIMD the CPU offers (AVX-512 on the development
/// machines, AVX2 and FMA on most others), chosen at run time by `multiversion`; each loop
/// keeps its order of operations, so every version gives bitwise the same result (Rust never
/// contracts a multiply and an add into an FMA on its own).
macro_rules! simd_targets {
    ($item:item) => {
        #[multiversion::multiversion(targets(
            "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl+avx2+fma+bmi1+bmi2+lzcnt+popcnt",
            "x86_64+avx2+fma+bmi1+bmi2+lzcnt+popcnt",
        ))]
        $item
    };
}

pub mod version;
pub mod source;
pub mod diagnostic;
pub mod report;
pub mod error;
pub mod stdlib;
pub mod syntax;
pub mod ir;
pub mod check;
pub mod session;
pub mod autodiff;
pub mod lir;
pub mod backend;
pub mod render;
pub mod rewrite;
pub mod opt;
pub mod train;
pub mod selftest;
pub mod sweep;
pub mod cli;

pub use error::{Error, Result};
