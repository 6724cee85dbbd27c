//! The fused causal attention kernels of the fast executor, in f32, one lane (a batch row and
//! head) at a time, lanes split over the cores. They follow the interpreter's definitions; the
//! CUDA backend runs the same steps on the kernels of `kernels/`.
//!
//! Softmax ([`crate::ir::ExecOp::Attention`]), per lane and query `i` (keys `j <= i`):
//!   `s_j = scale * q_i . k_j`, `m = max s`, `l = sum exp(s_j - m)`, `lse_i = m + ln l`,
//!   `o_i = sum_j exp(s_j - m) / l * v_j`.
//! Backward, with `p_ij = exp(scale * q_i . k_j - lse_i)` recomputed and `D_i = go_i . o_i`:
//!   `ds_ij = p_ij (go_i . v_j - D_i)`, `gq_i = scale sum_j ds_ij k_j`,
//!   `gk_j = scale sum_i ds_ij q_i`, `gv_j = sum_i p_ij go_i`.
//!
//! Linear ([`crate::ir::ExecOp::LinearAttention`]), a scan over positions with the state
//! `S_i = sum_{j <= i} kf_j v_j^T` and `z_i = sum_{j <= i} kf_j`:
//!   `den_i = qf_i . z_i + eps`, `out_i = qf_i S_i / den_i`.
//! Backward, with `dn_i = go_i / den_i` and `dden_i = -(go_i . out_i) / den_i`:
//!   `gqf_i = S_i dn_i + dden_i z_i`, and from the end with `U_j = sum_{i >= j} qf_i dn_i^T`
//!   and `w_j = sum_{i >= j} dden_i qf_i`: `gkf_j = U_j v_j + w_j`, `gv_j = U_j^T kf_j`.

use super::kernels::par;
use crate::lir::attention::{Attn, BACK, Form};

impl Attn {
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
                match (self.form, self.back) {
                    (Form::Softmax { scale }, false) => self.fwd_lane(at, scale),
                    (Form::Softmax { scale }, true) => self.back_lane(at, scale),
                    (Form::Linear { eps }, false) => self.linear_fwd_lane(at, eps),
                    (Form::Linear { .. }, true) => self.linear_back_lane(at),
                }
            })
        });
    }

    /// Element `(i, f)` of operand `k` of a lane starting at `base`.
    #[inline(always)]
    unsafe fn el(&self, base: *mut f32, k: usize, i: usize, f: usize) -> *mut f32 {
        unsafe { base.add(i * self.st[k] + f * self.sf[k]) }
    }

    /// `q_i . k_j` (operands 0 and 1).
    #[inline(always)]
    unsafe fn dot(&self, q: *mut f32, k: *mut f32, i: usize, j: usize) -> f32 {
        let mut s = 0.0f32;
        for f in 0..self.d {
            unsafe { s += *self.el(q, 0, i, f) * *self.el(k, 1, j, f) };
        }
        s
    }

    unsafe fn fwd_lane(&self, at: impl Fn(usize) -> *mut f32, scale: f32) {
        let (q, k, v, o, lse) = (at(0), at(1), at(2), at(3), at(4));
        let mut s = vec![0f32; self.t];
        let mut acc = vec![0f32; self.e];
        for i in 0..self.t {
            let mut m = f32::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate().take(i + 1) {
                *sj = unsafe { self.dot(q, k, i, j) } * scale;
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

    unsafe fn back_lane(&self, at: impl Fn(usize) -> *mut f32, scale: f32) {
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
                    let p = (self.dot(q, k, i, j) * scale - l).exp();
                    let mut dp = 0.0f32;
                    for f in 0..self.e {
                        let g = *self.el(go, 5, i, f);
                        dp += g * *self.el(v, 2, j, f);
                        *self.el(gv, 8, j, f) += p * g;
                    }
                    let ds = p * (dp - di) * scale;
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

    /// Row `i` of operand `k` (`n` features) into `row`.
    #[inline(always)]
    unsafe fn gather(&self, base: *mut f32, k: usize, i: usize, row: &mut [f32]) {
        for (f, x) in row.iter_mut().enumerate() {
            *x = unsafe { *self.el(base, k, i, f) };
        }
    }

    /// `row` into row `i` of operand `k`.
    #[inline(always)]
    unsafe fn scatter(&self, base: *mut f32, k: usize, i: usize, row: &[f32]) {
        for (f, x) in row.iter().enumerate() {
            unsafe { *self.el(base, k, i, f) = *x };
        }
    }

    /// Rows are copied into contiguous vectors so that the inner loops (over a row of the
    /// `d x e` state) vectorise.
    unsafe fn linear_fwd_lane(&self, at: impl Fn(usize) -> *mut f32, eps: f32) {
        let (qf, kf, v, out, den) = (at(0), at(1), at(2), at(3), at(4));
        let (d, e) = (self.d, self.e);
        let mut state = vec![0f32; d * e];
        let mut z = vec![0f32; d];
        let (mut qr, mut kr, mut vr, mut num) =
            (vec![0f32; d], vec![0f32; d], vec![0f32; e], vec![0f32; e]);
        unsafe {
            for i in 0..self.t {
                self.gather(qf, 0, i, &mut qr);
                self.gather(kf, 1, i, &mut kr);
                self.gather(v, 2, i, &mut vr);
                for (f, row) in state.chunks_exact_mut(e).enumerate() {
                    z[f] += kr[f];
                    for (s, x) in row.iter_mut().zip(&vr) {
                        *s += kr[f] * x;
                    }
                }
                let mut dn = 0.0f32;
                num.fill(0.0);
                for (f, row) in state.chunks_exact(e).enumerate() {
                    dn += qr[f] * z[f];
                    for (n, s) in num.iter_mut().zip(row) {
                        *n += qr[f] * s;
                    }
                }
                let dn = dn + eps;
                num.iter_mut().for_each(|n| *n /= dn);
                self.scatter(out, 3, i, &num);
                *den.add(i * self.st[4]) = dn;
            }
        }
    }

    unsafe fn linear_back_lane(&self, at: impl Fn(usize) -> *mut f32) {
        let [qf, kf, v, out, den, go, gqf, gkf, gv] = std::array::from_fn(&at);
        let (d, e, t) = (self.d, self.e, self.t);
        let (mut qr, mut kr, mut vr, mut or) =
            (vec![0f32; d], vec![0f32; d], vec![0f32; e], vec![0f32; e]);
        let mut gd = vec![0f32; d];
        let mut ge = vec![0f32; e];
        unsafe {
            // dn_i = go_i / den_i and dden_i = -(go_i . out_i) / den_i, for every row.
            let mut dn = vec![0f32; t * e];
            let mut dden = vec![0f32; t];
            for i in 0..t {
                let dv = *den.add(i * self.st[4]);
                let row = &mut dn[i * e..(i + 1) * e];
                self.gather(go, 5, i, row);
                self.gather(out, 3, i, &mut or);
                let s: f32 = row.iter().zip(&or).map(|(g, o)| g * o).sum();
                row.iter_mut().for_each(|g| *g /= dv);
                dden[i] = -s / dv;
            }
            // Forward scan: gqf_i = S_i dn_i + dden_i z_i.
            let mut state = vec![0f32; d * e];
            let mut z = vec![0f32; d];
            for i in 0..t {
                self.gather(kf, 1, i, &mut kr);
                self.gather(v, 2, i, &mut vr);
                let dni = &dn[i * e..(i + 1) * e];
                for (f, row) in state.chunks_exact_mut(e).enumerate() {
                    z[f] += kr[f];
                    let mut g = 0.0f32;
                    for ((s, x), n) in row.iter_mut().zip(&vr).zip(dni) {
                        *s += kr[f] * x;
                        g += *s * n;
                    }
                    gd[f] = g + dden[i] * z[f];
                }
                self.scatter(gqf, 6, i, &gd);
            }
            // Backward scan: gkf_j = U_j v_j + w_j, gv_j = U_j^T kf_j.
            let mut u = state;
            u.fill(0.0);
            let mut w = z;
            w.fill(0.0);
            for j in (0..t).rev() {
                self.gather(qf, 0, j, &mut qr);
                self.gather(kf, 1, j, &mut kr);
                self.gather(v, 2, j, &mut vr);
                let dnj = &dn[j * e..(j + 1) * e];
                ge.fill(0.0);
                for (f, row) in u.chunks_exact_mut(e).enumerate() {
                    w[f] += dden[j] * qr[f];
                    let mut g = 0.0f32;
                    for (((uc, n), x), gv) in row.iter_mut().zip(dnj).zip(&vr).zip(ge.iter_mut()) {
                        *uc += qr[f] * n;
                        g += *uc * x;
                        *gv += *uc * kr[f];
                    }
                    gd[f] = g + w[f];
                }
                self.scatter(gkf, 7, j, &gd);
                self.scatter(gv, 8, j, &ge);
            }
        }
    }
}
