//! Backends: what executes instantiated diagrams. The CPU reference interpreter is the semantic
//! oracle every other backend (and every rewrite) is checked against.

pub mod cpu;
pub mod cuda;
