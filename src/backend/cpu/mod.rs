//! The CPU backend: named-axis tensors on ndarray, the reference interpreter, and the fast f32
//! executor that is checked against it.

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

pub mod exec;
pub mod func;
pub mod harness;
pub mod interp;
pub mod jit;
pub mod tensor;
