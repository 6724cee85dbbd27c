//! A fused attention step of a plan (`ir::ExecOp::Attention`, `LinearAttention` and their
//! gradients) as data: its form, the lanes, the operands' strides. The CPU runs it with the
//! kernels of `backend::cpu::exec::attention`, the CUDA backend on `kernels/` or generated code.

use super::nest::Nest;

/// Operands, in pointer order: forward `[q, k, v, o, lse]`, backward `[q, k, v, o, lse, go,
/// gq, gk, gv]` (linear attention: `den` for `lse`).
pub const FWD: usize = 5;
pub const BACK: usize = 9;

/// Which attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Form {
    /// Causal softmax attention with this scale of the scores.
    Softmax { scale: f32 },
    /// Causal linear attention with this constant in the denominator.
    Linear { eps: f32 },
}

/// One fused attention step.
#[derive(Clone, Debug)]
pub struct Attn {
    pub form: Form,
    pub back: bool,
    /// Over the lanes, operands in pointer order (the forward uses the first five).
    pub lanes: Nest<BACK>,
    /// Positions (queries, and keys: the same number).
    pub t: usize,
    /// The scores' feature length (`q`, `k`) and the values' (`v`, `o`).
    pub d: usize,
    pub e: usize,
    /// Each operand's stride along its position axis and along its feature axis (0 for `lse`).
    pub st: [usize; BACK],
    pub sf: [usize; BACK],
}

impl Attn {
    /// How many pointers the step takes.
    pub fn arity(&self) -> usize {
        if self.back { BACK } else { FWD }
    }

    /// The largest offset each operand reaches (pointer order).
    pub fn reach(&self, k: usize) -> usize {
        let feat = if k == 4 {
            0
        } else if matches!(k, 2 | 3 | 5 | 8) {
            self.e
        } else {
            self.d
        };
        self.lanes.reach(k)
            + self.t.saturating_sub(1) * self.st[k]
            + feat.saturating_sub(1) * self.sf[k]
    }
}
