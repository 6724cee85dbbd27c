//! Rewriting: the paper's rewrite system as a working part of the compiler.
//!
//! - [`term`]: the form rewriting works on (a checked diagram, SIMD lowered, as a DAG), printing
//!   back to `.diag` text and re-checking.
//! - [`rule`]: rules (`rule` declarations, checked like diagrams), matching a rule's left side
//!   at a site of a term and replacing it by the right side.
//! - [`verify`]: numeric comparison of two diagrams on the CPU interpreter (the oracle), used by
//!   `diagc check --verify-rules`, derivations and the optimiser's tests.
//! - [`input`]: rule books and terms loaded from files, `RULE[@SITE]` arguments, pictures of
//!   steps (what the commands of `cli::rewrite` and derivations share).
//! - [`derive`]: derivation files replayed step by step; [`taxonomy`]: the graph of the stdlib's
//!   derivations from primordial attention; [`enumerate`]: the 14-mechanism recombination.

pub mod term;
pub mod rule;
pub mod input;
pub mod verify;
pub mod derive;
pub mod enumerate;
pub mod registry;
pub mod taxonomy;
