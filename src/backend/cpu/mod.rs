//! The CPU backend: named-axis tensors on ndarray, the reference interpreter, and the fast f32
//! executor that is checked against it.

pub mod exec;
pub mod func;
pub mod harness;
pub mod interp;
pub mod jit;
pub mod tensor;
