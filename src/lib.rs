//! diagc: a compiler for string diagrams of attention mechanisms and the Transformer language
//! models built around them (the formalism of "On the Anatomy of Attention", arXiv 2407.02423).
//!
//! The modules are the pipeline, in order; each depends only on the ones above it.

pub mod source;
pub mod diagnostic;
pub mod syntax;
pub mod ir;
pub mod check;
pub mod stdlib;
pub mod autodiff;
pub mod backend;
pub mod train;
pub mod render;
pub mod report;
pub mod driver;
pub mod rewrite;
pub mod opt;
pub mod cli;
