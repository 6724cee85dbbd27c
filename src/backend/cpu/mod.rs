//! The CPU backend: named-axis tensors on ndarray and the reference interpreter.

pub mod interp;
pub mod tensor;
