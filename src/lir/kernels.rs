//! What one step of a plan does, as data: the kernels every backend implements (the CPU in
//! `backend::cpu::exec::kernels`, CUDA in `backend::cuda::codegen`), with their operands'
//! layouts as loop nests and strides computed at plan time.
//!
//! Operands are one array of buffers per step, the step's inputs first and then its outputs,
//! and every [`Nest`] of a kernel lists the output first among its operands.
//! [`Kernel::check_bounds`] proves at plan time that every offset a kernel can touch lies
//! inside its operand, which is what a backend's unchecked accesses rely on.

use super::nest::Nest;
use crate::error::Error;
use crate::ir::{Func, Reduction, Visible};

/// The layernorm epsilon, the same as the reference interpreter's.
pub const LN_EPS: f32 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Scale(f32),
    Shift(f32),
    /// `x` to the power `k` (never fused: the JIT has no `pow`).
    Pow(f32),
    Map(Func),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    /// `func::single::max2`: the larger, the left on ties, NaN if either is.
    Max,
    /// `func::single::min2`.
    Min,
    /// `(x, gy) -> gy * f'(x)`.
    MapBack(Func),
}

/// Ops along one axis, lane by lane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LaneOp {
    Softmax,
    Normalise,
    /// `(y, gy) -> y * (gy - sum(gy * y))`.
    SoftmaxBack,
    /// `(x, gy) -> (gy - sum(gy * x / s)) / s` with `s = sum(x)`.
    NormaliseBack,
    /// `x -> max`, `min` or `logsumexp` of the lane, written at the lane's start (the output
    /// lacks the axis: its stride is 0).
    Reduce(Reduction),
    /// `(x, gy) -> gx` for [`LaneOp::Reduce`]; `gy` lacks the axis (stride 0).
    ReduceBack(Reduction),
    /// `(g, x) -> y`: `y_j = g_j y_(j-1) + x_j` (a gated prefix sum).
    Scan,
    /// `x -> y`: `y_j = -x_(j+h)`, `y_(j+h) = x_j` for `j < h = n / 2` (pairs read before they
    /// are written: safe in place).
    RotateHalf,
    /// `(gy, g) -> u`: `u_j = gy_j + g_(j+1) u_(j+1)`, from the end.
    ScanBack,
    /// `x -> z`: `z_j = x_(j-1)`, `z_0 = 0`, written from the end (safe in place).
    Lag,
}

/// A batched matrix product (the CPU runs it on the `gemm` crate, CUDA on cuBLAS): for every point of `batch`, the
/// `m x k` matrix at `a` (row and column strides `a_rs`, `a_cs`) times the `k x n` matrix at
/// `b` into the `m x n` matrix at `c`. With `bias`, `c` is first filled with the broadcast bias
/// and the product is accumulated onto it.
#[derive(Clone, Debug)]
pub struct Gemm {
    /// Operands: `[c, a, b]`.
    pub batch: Nest<3>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub a: [isize; 2],
    pub b: [isize; 2],
    pub c: [isize; 2],
    /// Operands: `[c, bias]`, over the output's axes.
    pub bias: Option<Nest<2>>,
}

impl Gemm {
    pub fn flops(&self) -> u64 {
        2 * (self.batch.len() * self.m * self.k * self.n) as u64
    }
}

/// What one step does. The comment on each variant gives the order of its pointers.
#[derive(Clone, Debug)]
pub enum Kernel {
    /// `[x, out]`: `out = x` through a view of `x` (a permutation, broadcast, split or merge of
    /// axes). Nest operands `[out, x]`.
    Copy(Nest<2>),
    /// `[out]`: every element set to `value`.
    Fill { value: f32, len: usize },
    /// `[x, out]`; nest operands `[out, x]`.
    Unary(Unary, Nest<2>),
    /// `[a, b, out]`; nest operands `[out, a, b]`.
    Binary(Binary, Nest<3>),
    /// `[x, out]`; nest operands `[out, x]`. The output is visited in its row-major order, so
    /// its offset is the element index that the mask hashes, exactly as in the interpreter.
    Dropout { p: f64, key: u64, nest: Nest<2> },
    /// `[x, out]`: `out = x` (nest `[out, x]`), then `value` wherever the query index does not
    /// see the key index (`band`). `rest` (operand: out) runs over the other axes.
    Causal {
        value: f32,
        band: Visible,
        copy: Nest<2>,
        nq: usize,
        nk: usize,
        sq: usize,
        sk: usize,
        rest: Nest<1>,
    },
    /// `[x, out]`: `out` (of `len` elements) is zeroed, then every element of `x` is added to
    /// the element of `out` it reduces to. Nest operands `[out, x]`, in `x`'s order.
    Reduce { nest: Nest<2>, len: usize },
    /// `[a, (b), out]`: an op along one axis of length `n`; `outer` (operands `[out, a, b]`)
    /// gives each lane's start, `s` the strides along the lane.
    Lane {
        op: LaneOp,
        outer: Nest<3>,
        n: usize,
        s: [usize; 3],
    },
    /// `[a, b, out]`: the matrix-gated scan (`Op::MatScan`) along an axis of length `n` with a
    /// state axis of length `r`. Forward `a` is the gate and `b` the input:
    /// `y_t[i] = b_t[i] + sum_c a_t[i, c] y_(t-1)[c]`; backward (`back`) `a` is the incoming
    /// gradient and `b` the gate: `u_t[c] = a_t[c] + sum_i b_(t+1)[i, c] u_(t+1)[i]`. `outer`
    /// (operands `[out, a, b]`) gives each state's start, `s[k]` operand `k`'s strides along
    /// the scanned and the state axis, `col` the gate's stride along its copy of the state axis.
    /// Each position is read before it is written: an input may share the output's buffer.
    MatScan {
        back: bool,
        outer: Nest<3>,
        n: usize,
        r: usize,
        s: [[usize; 2]; 3],
        col: usize,
    },
    /// `[x, out]`: a (reverse, for the gradient) cumulative sum along an axis of length `n`,
    /// computed slab by slab: `slab` (operands `[out, x]`) covers the other axes, `s` gives
    /// the strides along the summed axis. Slabs keep the inner loop on the contiguous axes.
    Cumsum {
        reverse: bool,
        slab: Nest<2>,
        n: usize,
        s: [usize; 2],
    },
    /// `[x, gain, bias, out]`: layernorm over a group of axes. `outer` (operands `[out, x,
    /// gain, bias]`) gives each lane's start; `inner[k]` lists operand `k`'s offsets over the
    /// normalised axes, in the same order for every operand.
    LayerNorm {
        outer: Nest<4>,
        inner: [Vec<usize>; 4],
        /// Every table is `0, 1, 2...`: each lane is contiguous in every operand.
        dense: bool,
    },
    /// `[x, gain, gy, gx, ggain, gbias]`; `outer` and `inner` operands `[gx, x, gain, gy,
    /// ggain, gbias]`. `ggain` and `gbias` (of `lens` elements) are zeroed, then accumulated.
    LayerNormBack {
        outer: Nest<6>,
        inner: [Vec<usize>; 6],
        lens: [usize; 2],
        /// As for [`Kernel::LayerNorm`].
        dense: bool,
    },
    /// `[a, b, (bias), out]`.
    Gemm(Gemm),
    /// `[ids, table, out]`: `ids` (operands `[out, ids]`) runs over the id positions, `row`
    /// (operands `[out, table]`) over one embedding row; row `i` starts at `i * vstride`.
    Embed {
        ids: Nest<2>,
        row: Nest<2>,
        vocab: usize,
        vstride: usize,
    },
    /// `[ids, gy, gtable]`: `gtable` (of `len` elements) is zeroed, then row `ids[i]` gets the
    /// gradient row `i` added. `ids` operands `[gy, ids]`, `row` operands `[gtable, gy]`.
    EmbedBack {
        ids: Nest<2>,
        row: Nest<2>,
        vocab: usize,
        vstride: usize,
        len: usize,
    },
    /// `[logits, targets, out]` (forward) or `[logits, targets, gy, out]` (backward): for each
    /// position of `pos` (operands `[logits, targets, out]`; the output's stride is 0 forward),
    /// the lane of `n` classes at stride `s[0]` in the logits (`s[1]` in the output). Forward
    /// sums `log-sum-exp - logit[target]` into the scalar `out`; backward writes
    /// `gy * (softmax - onehot)`.
    CrossEntropy {
        back: bool,
        pos: Nest<3>,
        n: usize,
        s: [usize; 2],
    },
    /// `[q, k, v, o, lse]` (forward) or `[q, k, v, o, lse, go, gq, gk, gv]` (backward): fused
    /// causal attention (`exec::attention`).
    Attention(Box<super::attention::Attn>),
    /// Inputs, then outputs: a group of elementwise steps compiled into one kernel
    /// (`lir::fuse`; the CPU compiles it with cranelift, `backend::cpu::jit`).
    Fused(Box<super::program::FusedGroup>),
}

impl Kernel {
    /// A short name of the kind of kernel, for listings and profiles.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Copy(_) => "copy",
            Kernel::Fill { .. } => "fill",
            Kernel::Unary(..) => "unary",
            Kernel::Binary(..) => "binary",
            Kernel::Dropout { .. } => "dropout",
            Kernel::Causal { .. } => "causal",
            Kernel::Reduce { .. } => "reduce",
            Kernel::Lane { .. } => "lane",
            Kernel::MatScan { back: false, .. } => "matrix-scan",
            Kernel::MatScan { back: true, .. } => "matrix-scan-back",
            Kernel::Cumsum { .. } => "cumsum",
            Kernel::LayerNorm { .. } => "layernorm",
            Kernel::LayerNormBack { .. } => "layernorm-back",
            Kernel::Gemm(_) => "gemm",
            Kernel::Embed { .. } => "embed",
            Kernel::EmbedBack { .. } => "embed-back",
            Kernel::CrossEntropy { back: false, .. } => "cross-entropy",
            Kernel::CrossEntropy { back: true, .. } => "cross-entropy-back",
            Kernel::Attention(a) if a.back => "attention-back",
            Kernel::Attention(_) => "attention",
            Kernel::Fused(_) => "fused",
        }
    }

    /// How many pointers the kernel takes (inputs, then outputs).
    pub fn arity(&self) -> usize {
        match self {
            Kernel::Fill { .. } => 1,
            Kernel::Copy(_)
            | Kernel::Unary(..)
            | Kernel::Dropout { .. }
            | Kernel::Causal { .. }
            | Kernel::Reduce { .. }
            | Kernel::Cumsum { .. } => 2,
            Kernel::Binary(..)
            | Kernel::Embed { .. }
            | Kernel::EmbedBack { .. }
            | Kernel::MatScan { .. } => 3,
            Kernel::CrossEntropy { back, .. } => 3 + *back as usize,
            Kernel::Lane { op, .. } => match op {
                LaneOp::Softmax
                | LaneOp::Normalise
                | LaneOp::Reduce(_)
                | LaneOp::Lag
                | LaneOp::RotateHalf => 2,
                LaneOp::SoftmaxBack
                | LaneOp::NormaliseBack
                | LaneOp::ReduceBack(_)
                | LaneOp::Scan
                | LaneOp::ScanBack => 3,
            },
            Kernel::LayerNorm { .. } => 4,
            Kernel::LayerNormBack { .. } => 6,
            Kernel::Gemm(g) => 3 + g.bias.is_some() as usize,
            Kernel::Attention(a) => a.arity(),
            Kernel::Fused(f) => f.arity(),
        }
    }

    /// Checks, at plan time, that every offset the kernel can touch lies inside its operand:
    /// `lens` are the operands' lengths in pointer order. This is what makes the unchecked
    /// accesses of [`Kernel::run`] sound.
    pub fn check_bounds(&self, lens: &[usize]) -> Result<(), Error> {
        let fits = |what: &str, reach: usize, len: usize| {
            if len > 0 && reach >= len {
                Err(Error::Plan(format!(
                    "plan bug: {what} reaches offset {reach} of a {len}-element buffer"
                )))
            } else {
                Ok(())
            }
        };
        // `nest_fits(nest, [(operand in nest, pointer index)])`.
        fn table_reach(t: &[usize]) -> usize {
            t.iter().copied().max().unwrap_or(0)
        }
        match self {
            Kernel::Fused(f) => f.check_bounds(lens),
            Kernel::Attention(a) => {
                for (k, len) in lens.iter().enumerate() {
                    fits("an attention operand", a.reach(k), *len)?;
                }
                Ok(())
            }
            Kernel::Copy(nest) | Kernel::Unary(_, nest) | Kernel::Dropout { nest, .. } => {
                fits("out", nest.reach(0), lens[1])?;
                fits("x", nest.reach(1), lens[0])
            }
            Kernel::Reduce { nest, len } => {
                fits("out", nest.reach(0), lens[1])?;
                fits("x", nest.reach(1), lens[0])?;
                fits("out", len.saturating_sub(1), lens[1])
            }
            Kernel::Fill { len, .. } => fits("out", len.saturating_sub(1), lens[0]),
            Kernel::Binary(_, nest) => {
                fits("out", nest.reach(0), lens[2])?;
                fits("a", nest.reach(1), lens[0])?;
                fits("b", nest.reach(2), lens[1])
            }
            Kernel::Causal {
                copy,
                nq,
                nk,
                sq,
                sk,
                rest,
                ..
            } => {
                fits("out", copy.reach(0), lens[1])?;
                fits("x", copy.reach(1), lens[0])?;
                let corner = nq.saturating_sub(1) * sq + nk.saturating_sub(1) * sk;
                fits("out", corner + rest.reach(0), lens[1])
            }
            Kernel::MatScan {
                back,
                outer,
                n,
                r,
                s,
                col,
            } => {
                let (last, lr) = (n.saturating_sub(1), r.saturating_sub(1));
                let reach = |k: usize| outer.reach(k) + last * s[k][0] + lr * s[k][1];
                fits("out", reach(0), lens[2])?;
                fits("a", reach(1) + if *back { 0 } else { lr * col }, lens[0])?;
                fits("b", reach(2) + if *back { lr * col } else { 0 }, lens[1])
            }
            Kernel::Lane { outer, n, s, .. } => {
                let last = n.saturating_sub(1);
                fits(
                    "out",
                    outer.reach(0) + last * s[0],
                    *lens.last().unwrap_or(&0),
                )?;
                fits("a", outer.reach(1) + last * s[1], lens[0])?;
                if lens.len() == 3 {
                    fits("b", outer.reach(2) + last * s[2], lens[1])?;
                }
                Ok(())
            }
            Kernel::Cumsum { slab, n, s, .. } => {
                let last = n.saturating_sub(1);
                fits("out", slab.reach(0) + last * s[0], lens[1])?;
                fits("x", slab.reach(1) + last * s[1], lens[0])
            }
            Kernel::LayerNorm { outer, inner, .. } => {
                // Pointer order [x, gain, bias, out]; operand order [out, x, gain, bias].
                let ptr = [3, 0, 1, 2];
                for k in 0..4 {
                    fits(
                        "a layernorm operand",
                        outer.reach(k) + table_reach(&inner[k]),
                        lens[ptr[k]],
                    )?;
                }
                Ok(())
            }
            Kernel::LayerNormBack {
                outer,
                inner,
                lens: l,
                ..
            } => {
                // Pointer order [x, gain, gy, gx, ggain, gbias]; operands [gx, x, gain, gy,
                // ggain, gbias].
                let ptr = [3, 0, 1, 2, 4, 5];
                for k in 0..6 {
                    fits(
                        "a layernorm gradient operand",
                        outer.reach(k) + table_reach(&inner[k]),
                        lens[ptr[k]],
                    )?;
                }
                fits("ggain", l[0].saturating_sub(1), lens[4])?;
                fits("gbias", l[1].saturating_sub(1), lens[5])
            }
            Kernel::Gemm(g) => {
                let out = lens.len() - 1;
                let span = |r: usize, c: usize, st: [isize; 2]| {
                    r.saturating_sub(1) * st[0].max(0) as usize
                        + c.saturating_sub(1) * st[1].max(0) as usize
                };
                fits("c", g.batch.reach(0) + span(g.m, g.n, g.c), lens[out])?;
                fits("a", g.batch.reach(1) + span(g.m, g.k, g.a), lens[0])?;
                fits("b", g.batch.reach(2) + span(g.k, g.n, g.b), lens[1])?;
                if let Some(bias) = &g.bias {
                    fits("c", bias.reach(0), lens[out])?;
                    fits("bias", bias.reach(1), lens[2])?;
                }
                Ok(())
            }
            Kernel::Embed {
                ids,
                row,
                vocab,
                vstride,
            } => {
                fits("ids", ids.reach(1), lens[0])?;
                fits("out", ids.reach(0) + row.reach(0), lens[2])?;
                fits(
                    "table",
                    vocab.saturating_sub(1) * vstride + row.reach(1),
                    lens[1],
                )
            }
            Kernel::EmbedBack {
                ids,
                row,
                vocab,
                vstride,
                len,
            } => {
                fits("ids", ids.reach(1), lens[0])?;
                fits("gy", ids.reach(0) + row.reach(1), lens[1])?;
                fits(
                    "gtable",
                    vocab.saturating_sub(1) * vstride + row.reach(0),
                    lens[2],
                )?;
                fits("gtable", len.saturating_sub(1), lens[2])
            }
            Kernel::CrossEntropy { back, pos, n, s } => {
                let out = if *back { 3 } else { 2 };
                fits("logits", pos.reach(0) + n.saturating_sub(1) * s[0], lens[0])?;
                fits("targets", pos.reach(1), lens[1])?;
                if *back {
                    fits("gy", 0, lens[2])?;
                }
                fits(
                    "out",
                    pos.reach(2) + n.saturating_sub(1) * s[1] * *back as usize,
                    lens[out],
                )
            }
        }
    }
}

/// Whether offset tables are all `0, 1, 2...` (then the dense layernorm kernels apply).
pub fn dense(tables: &[Vec<usize>]) -> bool {
    tables
        .iter()
        .all(|t| t.iter().enumerate().all(|(j, o)| j == *o))
}
