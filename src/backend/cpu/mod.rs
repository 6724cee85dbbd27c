//! The CPU backend: named-axis tensors on ndarray and the reference interpreter.

pub mod harness;
pub mod interp;
pub mod tensor;
