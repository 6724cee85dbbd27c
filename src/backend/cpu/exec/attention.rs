//! The fused causal attention kernels of the fast executor ([`crate::ir::ExecOp::Attention`]
//! and its gradient), in f32, one lane (a batch row and head) at a time, lanes split over the
//! cores. They follow the interpreter's definitions; the CUDA backend runs the same step as
//! flash-attention kernels.
//!
//! Forward, per lane and query `i` (keys `j <= i`):
//!   `s_j = scale * q_i . k_j`, `m = max s`, `l = sum exp(s_j - m)`, `lse_i = m + ln l`,
//!   `o_i = sum_j exp(s_j - m) / l * v_j`.
//! Backward, with `p_ij = exp(scale * q_i . k_j - lse_i)` recomputed and `D_i = go_i . o_i`:
//!   `ds_ij = p_ij (go_i . v_j - D_i)`, `gq_i = scale sum_j ds_ij k_j`,
//!   `gk_j = scale sum_i ds_ij q_i`, `gv_j = sum_i p_ij go_i`.

use super::kernels::par;
use super::nest::Nest;

/// Operands, in pointer order: forward `[q, k, v, o, lse]`, backward `[q, k, v, o, lse, go,
/// gq, gk, gv]`.
pub const FWD: usize = 5;
pub const BACK: usize = 9;

/// One fused attention step.
#[derive(Clone, Debug)]
pub struct Attn {
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
    pub scale: f32,
}

impl Attn {
    /// How many pointers the step takes.
    pub fn arity(&self) -> usize {
        if self.back { BACK } else { FWD }
    }

    /// Multiply-adds of one run (for profiles).
    pub fn flops(&self) -> u64 {
        let pairs = (self.t * (self.t + 1) / 2 * self.lanes.len()) as u64;
        let per = if self.back {
            2 * self.d + 2 * self.e + self.d + self.e
        } else {
            self.d + self.e
        };
        2 * pairs * per as u64
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

    /// Runs the step.
    ///
    /// # Safety
    /// `p` holds [`Attn::arity`] pointers to buffers the plan checked against [`Attn::reach`];
    /// the outputs share no memory with each other or with the inputs.
    pub unsafe fn run(&self, p: &[*mut f32]) {
        let ptrs: [usize; BACK] = std::array::from_fn(|k| p.get(k).map_or(0, |q| *q as usize));
        let work = self.lanes.len() * self.t * self.t * (self.d + self.e);
        // Distinct lanes write disjoint parts of every output, whichever part a thread gets.
        par(&self.lanes, work, |base, part| {
            part.each(base, |off| unsafe {
                let at = |k: usize| (ptrs[k] as *mut f32).add(off[k]);
                if self.back {
                    self.back_lane(at);
                } else {
                    self.fwd_lane(at);
                }
            })
        });
    }

    /// Element `(i, f)` of operand `k` of a lane starting at `base`.
    #[inline(always)]
    unsafe fn el(&self, base: *mut f32, k: usize, i: usize, f: usize) -> *mut f32 {
        unsafe { base.add(i * self.st[k] + f * self.sf[k]) }
    }

    /// `scale * q_i . k_j`.
    #[inline(always)]
    unsafe fn score(&self, q: *mut f32, k: *mut f32, i: usize, j: usize) -> f32 {
        let mut s = 0.0f32;
        for f in 0..self.d {
            unsafe { s += *self.el(q, 0, i, f) * *self.el(k, 1, j, f) };
        }
        s * self.scale
    }

    unsafe fn fwd_lane(&self, at: impl Fn(usize) -> *mut f32) {
        let (q, k, v, o, lse) = (at(0), at(1), at(2), at(3), at(4));
        let mut s = vec![0f32; self.t];
        let mut acc = vec![0f32; self.e];
        for i in 0..self.t {
            let mut m = f32::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate().take(i + 1) {
                *sj = unsafe { self.score(q, k, i, j) };
                m = m.max(*sj);
            }
            let mut l = 0.0f32;
            acc.fill(0.0);
            for (j, sj) in s.iter().enumerate().take(i + 1) {
                let w = (sj - m).exp();
                l += w;
                for (f, a) in acc.iter_mut().enumerate() {
                    *a += w * unsafe { *self.el(v, 2, j, f) };
                }
            }
            for (f, a) in acc.iter().enumerate() {
                unsafe { *self.el(o, 3, i, f) = a / l };
            }
            unsafe { *lse.add(i * self.st[4]) = m + l.ln() };
        }
    }

    unsafe fn back_lane(&self, at: impl Fn(usize) -> *mut f32) {
        let [q, k, v, o, lse, go, gq, gk, gv] = std::array::from_fn(&at);
        unsafe {
            for j in 0..self.t {
                for f in 0..self.d {
                    *self.el(gk, 7, j, f) = 0.0;
                }
                for f in 0..self.e {
                    *self.el(gv, 8, j, f) = 0.0;
                }
            }
            let mut acc = vec![0f32; self.d];
            for i in 0..self.t {
                let l = *lse.add(i * self.st[4]);
                let mut di = 0.0f32;
                for f in 0..self.e {
                    di += *self.el(go, 5, i, f) * *self.el(o, 3, i, f);
                }
                acc.fill(0.0);
                for j in 0..=i {
                    let p = (self.score(q, k, i, j) - l).exp();
                    let mut dp = 0.0f32;
                    for f in 0..self.e {
                        let g = *self.el(go, 5, i, f);
                        dp += g * *self.el(v, 2, j, f);
                        *self.el(gv, 8, j, f) += p * g;
                    }
                    let ds = p * (dp - di) * self.scale;
                    for (f, a) in acc.iter_mut().enumerate() {
                        *a += ds * *self.el(k, 1, j, f);
                        *self.el(gk, 7, j, f) += ds * *self.el(q, 0, i, f);
                    }
                }
                for (f, a) in acc.iter().enumerate() {
                    *self.el(gq, 6, i, f) = *a;
                }
            }
        }
    }
}
