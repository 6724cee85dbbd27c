//! The kernels of the fast executor: what one step of a plan does to raw f32 buffers.
//!
//! Every kernel reads and writes through raw pointers with offsets that the planner computed
//! and bounds-checked at plan time ([`Kernel::check_bounds`]); nothing here looks up an axis
//! by name. Operands are passed as one array of base pointers, the step's inputs first and then
//! its outputs, and every [`Nest`] of a kernel lists the output first among its operands.
//!
//! An output may share its buffer with an input when the planner found that the input dies at
//! this step and is read at exactly the offsets the output is written at (in place). Every
//! kernel that the planner lets run in place reads each element (or each whole lane) before it
//! writes the same position, and the contiguous fast paths below never build a shared and a
//! mutable slice over the same memory: they test for the in-place case first.

use crate::backend::cpu::interp;
use crate::error::Error;
use crate::ir::{Func, Reduction};
pub use crate::lir::kernels::{Binary, Gemm, Kernel, LN_EPS, LaneOp, Unary};
use crate::lir::nest::{Dim, Nest};

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_within_two_ulp() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.5 {
            let (a, b) = (super::fast_exp(x), x.exp());
            let ulps = (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32;
            assert!(ulps <= 2, "{ulps} ulp at {x}");
            worst = worst.max(ulps);
            x += 0.000_37;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(super::fast_exp(-100.0), 0.0);
        assert_eq!(super::fast_exp(100.0), f32::INFINITY);
        assert!(super::fast_exp(f32::NAN).is_nan());
        assert_eq!(super::fast_exp(0.0), 1.0);
    }

    /// The blocked exponential-and-sum gives the bits of the exponentials then [`super::sum`],
    /// at lengths around the block and the eight-wide chunks.
    #[test]
    fn exp_shifted_equals_exp_then_sum() {
        for n in [0, 1, 7, 8, 9, 511, 512, 513, 1000, 1031, 10_000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
                .collect();
            let m = 3.25;
            let mut e = vec![0f32; n];
            let z = super::exp_shifted(&x, m, &mut e);
            let want: Vec<f32> = x.iter().map(|v| super::fast_exp(v - m)).collect();
            assert_eq!(e, want, "exponentials at n = {n}");
            assert_eq!(z.to_bits(), super::sum(&want).to_bits(), "sum at n = {n}");
        }
    }

    /// A reduction split over the cores by its kept inner axis gives the serial loop's bits.
    #[test]
    fn split_reductions_equal_the_serial_one() {
        use super::{Dim, Nest, PAR_MIN, par_reduce, reduce};
        // [rows (summed), cols (kept)], and [kept, summed, kept] in x's row-major order.
        let cases = [
            vec![
                Dim {
                    n: 700,
                    s: [0, 1000],
                },
                Dim { n: 1000, s: [1, 1] },
            ],
            vec![
                Dim {
                    n: 3,
                    s: [100, 90_000],
                },
                Dim {
                    n: 900,
                    s: [0, 100],
                },
                Dim { n: 100, s: [1, 1] },
            ],
        ];
        for dims in cases {
            let nest = Nest::new(dims);
            assert!(nest.len() >= PAR_MIN);
            let x: Vec<f32> = (0..nest.reach(1) + 1)
                .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let n_out = nest.reach(0) + 1;
            let (mut a, mut b) = (vec![0f32; n_out], vec![0f32; n_out]);
            unsafe {
                par_reduce(&nest, x.as_ptr(), a.as_mut_ptr());
                reduce(&nest, [0, 0], x.as_ptr(), b.as_mut_ptr());
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b));
            assert!(b.iter().any(|v| *v != 0.0));
        }
    }

    /// Transposing copies (tiled) and plain ones visit every point exactly as a naive loop.
    #[test]
    fn copies_in_tiles_equal_the_naive_copy() {
        use super::{Dim, Nest, copy};
        // out[a, b, c] = x[c, a, b] for sizes (a, b, c), over ragged tile edges, and the same
        // with the middle axis of length 1 (dropped by the nest).
        for (na, nb, nc) in [(3, 45, 70), (2, 1, 33), (1, 40, 40), (2, 31, 80)] {
            let x: Vec<f32> = (0..na * nb * nc).map(|i| i as f32).collect();
            let dims = vec![
                Dim {
                    n: na,
                    s: [nb * nc, nb],
                },
                Dim { n: nb, s: [nc, 1] },
                Dim {
                    n: nc,
                    s: [1, na * nb],
                },
            ];
            let mut out = vec![-1.0f32; na * nb * nc];
            unsafe { copy(&Nest::new(dims), [0, 0], x.as_ptr(), out.as_mut_ptr()) };
            for a in 0..na {
                for b in 0..nb {
                    for c in 0..nc {
                        let want = x[c * na * nb + a * nb + b];
                        assert_eq!(out[a * nb * nc + b * nc + c], want, "({a}, {b}, {c})");
                    }
                }
            }
        }
    }
}

/// Below this many points (elements, or multiply-adds for products) a kernel stays on the
/// calling thread: a scoped thread costs some tens of microseconds to start.
pub const PAR_MIN: usize = 1 << 18;

/// The chunk length of the chunked scans (`scan[A]` and its gradient along lanes of at least
/// twice this length), or 0 (the default) to run every scan position by position. Chunks are a
/// fixed length, not a function of the machine, so the rounding is the same on any number of
/// cores. The default is 0 because on the 2-core machine the project is measured on the
/// chunked scan is slower (0.5-0.8x, `cargo bench --bench scan`): a scan is memory-bound and
/// the chunked one reads its lanes twice; it pays where lanes are few and cores many.
pub static SCAN_CHUNK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The gated scan `z_i = G(i) z_(i-1) + X(i)` (`z_0 = X(0)`) of every lane, in chunks of `c`
/// positions: (1) each chunk scans from zero, in parallel over lanes and chunks, and keeps the
/// product of its gates; (2) each lane carries the true value at each chunk's end across its
/// chunks (one step per chunk); (3) each chunk adds its carry times the running product of its
/// gates, in parallel. Work and memory are linear in the length; the result equals the
/// position-by-position scan up to rounding. Forward (`back == false`) `a` is the gate and
/// `b` the input, along increasing positions; backward `a` is the incoming gradient and `b` the
/// gate, along decreasing positions with the gate one position ahead (`LaneOp::ScanBack`).
/// `starts` are the lanes' offsets (operands `[out, a, b]`), `s` the strides along the lane.
///
/// # Safety
/// As [`Kernel::run`]; `out` may share the input's (not the gate's) buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn chunked_scan(
    back: bool,
    starts: &[[usize; 3]],
    n: usize,
    s: [usize; 3],
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    c: usize,
) {
    use rayon::prelude::*;
    let chunks = n.div_ceil(c);
    let ptrs = Shared((a, b, out));
    // Position `i` in processing order is `t(i)` along the lane.
    let t = move |i: usize| if back { n - 1 - i } else { i };
    // The gate applied at processing step `i >= 1`, the input at step `i`, the output's place.
    // SAFETY (these three): the offsets are a lane's start plus a position below `n` times its
    // stride, which the plan bounds-checked; distinct tasks write distinct positions.
    let gate = move |o: &[usize; 3], i: usize| unsafe {
        let (a, b, _) = ptrs.get();
        if back {
            *b.add(o[2] + (n - i) * s[2])
        } else {
            *a.add(o[1] + i * s[1])
        }
    };
    let input = move |o: &[usize; 3], i: usize| unsafe {
        let (a, b, _) = ptrs.get();
        if back {
            *a.add(o[1] + t(i) * s[1])
        } else {
            *b.add(o[2] + i * s[2])
        }
    };
    let place = move |o: &[usize; 3], i: usize| unsafe { ptrs.get().2.add(o[0] + t(i) * s[0]) };
    let tasks = starts.len() * chunks;
    let big = tasks > 1 && starts.len() * n >= PAR_MIN / 8;
    // (1) Local scans from zero; the product of each chunk's gates.
    let local = |task: usize| -> f32 {
        let (lane, k) = (task / chunks, task % chunks);
        let o = &starts[lane];
        let (i0, i1) = (k * c, ((k + 1) * c).min(n));
        let mut acc = input(o, i0);
        // SAFETY (every write through `place`): see above.
        unsafe { *place(o, i0) = acc };
        let mut prod = if k == 0 { 0.0 } else { gate(o, i0) };
        for i in i0 + 1..i1 {
            let g = gate(o, i);
            acc = g * acc + input(o, i);
            unsafe { *place(o, i) = acc };
            prod *= g;
        }
        prod
    };
    let prods: Vec<f32> = if big {
        (0..tasks).into_par_iter().map(local).collect()
    } else {
        (0..tasks).map(local).collect()
    };
    // (2) The true value before each chunk: carry_k = end_(k-1) + prod_(k-1) carry_(k-1).
    let mut carry = vec![0f32; tasks];
    for (lane, o) in starts.iter().enumerate() {
        let mut h = 0f32;
        for k in 1..chunks {
            let end = unsafe { *place(o, k * c - 1) };
            h = end + prods[lane * chunks + k - 1] * h;
            carry[lane * chunks + k] = h;
        }
    }
    // (3) Each chunk after the first adds its carry times the running product of its gates.
    let fix = |task: usize| {
        let (lane, k) = (task / chunks, task % chunks);
        let h = carry[task];
        if k == 0 || h == 0.0 {
            return;
        }
        let o = &starts[lane];
        let (i0, i1) = (k * c, ((k + 1) * c).min(n));
        let mut prod = 1f32;
        for i in i0..i1 {
            prod *= gate(o, i);
            unsafe { *place(o, i) += prod * h };
        }
    };
    if big {
        (0..tasks).into_par_iter().for_each(fix);
    } else {
        (0..tasks).for_each(fix);
    }
}

/// Raw pointers handed to the threads of [`par`] and of a fused kernel
/// (`jit::Fused::run`). Sound because both give each thread a disjoint range of the outermost
/// loop of a nest whose output operands have distinct offsets at distinct points (the planner
/// builds every output's nest from its own row-major layout): the threads write disjoint
/// elements and only read the rest, and the pointers outlive the scope of the threads.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) T);
// SAFETY: see the type's comment; the pointers outlive the scope of the threads.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// The pointer (a method, so that closures capture the whole `Shared`, not its field).
    pub(crate) fn get(self) -> T {
        self.0
    }
}

/// The threads the CPU backend splits work over: rayon's pool (every core this process may
/// use, or `RAYON_NUM_THREADS`), shared by the GEMMs, the parallel kernels and Adam.
pub fn cores() -> usize {
    rayon::current_num_threads()
}

/// Runs `f(base, part)` over the parts of `nest` split by its outermost dimension, on every
/// core when `work` is large enough, else once on this thread with the whole nest. Only for
/// kernels whose output (operand 0) is written at distinct offsets by distinct points.
pub(super) fn par<const N: usize>(
    nest: &Nest<N>,
    work: usize,
    f: impl Fn([usize; N], &Nest<N>) + Sync,
) {
    let parts = if work >= PAR_MIN {
        nest.split(cores())
    } else {
        vec![]
    };
    if parts.len() <= 1 {
        f([0; N], nest);
        return;
    }
    // On rayon's pool, which the GEMMs use too: one set of threads for every parallel step,
    // none started per step, none spinning beside another set.
    rayon::scope(|scope| {
        let f = &f;
        for (base, sub) in &parts[1..] {
            scope.spawn(move |_| f(*base, sub));
        }
        f(parts[0].0, &parts[0].1);
    });
}

/// `v.fill(value)`, over every core when `v` is large (a gradient of the embedding table is
/// 20 MB zeroed at every step; two cores write it faster than one).
fn par_fill(v: &mut [f32], value: f32) {
    let parts = if v.len() >= PAR_MIN { cores() } else { 1 };
    if parts <= 1 {
        v.fill(value);
        return;
    }
    use rayon::prelude::*;
    v.par_chunks_mut(v.len().div_ceil(parts))
        .for_each(|c| c.fill(value));
}

/// `n` contiguous floats as a slice.
///
/// # Safety
/// `p` must be valid for `n` reads, with no live mutable reference over them.
unsafe fn sl<'a>(p: *const f32, n: usize) -> &'a [f32] {
    unsafe { std::slice::from_raw_parts(p, n) }
}

/// `n` contiguous floats as a mutable slice.
///
/// # Safety
/// `p` must be valid for `n` writes, with no other live reference over them.
unsafe fn sl_mut<'a>(p: *mut f32, n: usize) -> &'a mut [f32] {
    unsafe { std::slice::from_raw_parts_mut(p, n) }
}

/// Eight partial sums folded into one, pairwise, in the order every sum of this module uses.
#[inline(always)]
fn fold8(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// A sum with eight partial accumulators: it vectorises, and it loses less precision than a
/// running sum on long rows.
#[inline]
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let mut s = fold8(acc);
    for x in rest {
        s += x;
    }
    s
}

simd_targets! {
/// The largest element of `v` (`-inf` when empty; NaNs are skipped as `f32::max` does).
fn lane_max(v: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for a in acc.iter().chain(rest) {
        m = m.max(*a);
    }
    m
}
}

simd_targets! {
/// `e[j] = exp(x[j] - m)` ([`fast_exp`]) for every `j`, returning their [`sum`]. The row is
/// taken in blocks of 512 (2 KiB): a block's exponentials, then their sum while the block is
/// still in L1. A two-pass form read a vocabulary-wide row (40 KB) back from L2 on cores
/// with a 32 KiB L1 (Zen 3); a single fused loop vectorised worse with AVX-512. The partial
/// sums are those of `sum(e)`, in the same order, so the result is bit-identical to it.
fn exp_shifted(x: &[f32], m: f32, e: &mut [f32]) -> f32 {
    const BLOCK: usize = 512;
    let e = &mut e[..x.len()];
    let mut acc = [0f32; 8];
    for (xb, eb) in x.chunks(BLOCK).zip(e.chunks_mut(BLOCK)) {
        for (ej, xj) in eb.iter_mut().zip(xb) {
            *ej = fast_exp(*xj - m);
        }
        // Whole blocks are multiples of eight; only the last one leaves a remainder.
        for c in eb.chunks_exact(8) {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
    }
    let mut s = fold8(acc);
    for x in &e[x.len() - x.len() % 8..] {
        s += x;
    }
    s
}
}

simd_targets! {
/// `v[j] *= k` for every `j`.
fn scale(v: &mut [f32], k: f32) {
    for x in v {
        *x *= k;
    }
}
}

simd_targets! {
/// One lane of the dense layer norm, `out = (x - mean) / sqrt(var + eps) * gain + bias`,
/// vectorised by the widest SIMD the CPU has (the same operations, in the same order, on every
/// target).
///
/// # Safety
/// `x` and `out` must cover `gain.len()` floats; `out` may be `x` (only read through
/// pointers after the lane's sums), and overlaps neither `gain` nor `bias`.
unsafe fn ln_lane(x: *const f32, gain: &[f32], bias: &[f32], out: *mut f32) {
    let n = gain.len();
    let cnt = n as f32;
    let (mean, inv) = {
        // SAFETY: `x` covers `n` floats, and nothing writes them while `xs` lives.
        let xs = unsafe { sl(x, n) };
        let mean = sum_zip3(xs, xs, xs, |x, _, _| x) / cnt;
        let var = sum_zip3(xs, xs, xs, |x, _, _| (x - mean) * (x - mean)) / cnt;
        (mean, 1.0 / (var + LN_EPS).sqrt())
    };
    for j in 0..n {
        // SAFETY: `j < n`, within both lanes.
        unsafe { *out.add(j) = (*x.add(j) - mean) * inv * gain[j] + bias[j] };
    }
}
}

/// One lane of the dense layer norm's gradient, for lanes that do not share one gain (the
/// others go through [`ln_back_blocked`]): the lane's statistics ([`ln_back_stats`]), its terms
/// added to the gain's and bias's gradients ([`ln_back_params`]), then its `gx`
/// ([`ln_back_gx`]). `gx` may be `x`'s or `gy`'s lane, so it is written last.
///
/// # Safety
/// `x`, `gy` and `gx` must cover `gain.len()` floats; `gain`, `gg` and `gb` overlap nothing
/// else.
unsafe fn ln_back_lane(
    x: *const f32,
    gy: *const f32,
    gain: &[f32],
    gg: &mut [f32],
    gb: &mut [f32],
    gx: *mut f32,
) {
    let n = gain.len();
    unsafe {
        let st = ln_back_stats(sl(x, n), sl(gy, n), gain);
        ln_back_params(sl(x, n), sl(gy, n), st, gg, gb);
        ln_back_gx(x, gy, gain, st, gx);
    }
}

simd_targets! {
/// `[mean, 1 / std, mean(gy g), mean(gy g xhat)]` of one lane of the layer norm's gradient,
/// vectorised by the widest SIMD the CPU has (the same operations, in the same order, on every
/// target).
fn ln_back_stats(xs: &[f32], gys: &[f32], gain: &[f32]) -> [f32; 4] {
    let cnt = gain.len() as f32;
    let mean = sum_zip3(xs, xs, xs, |x, _, _| x) / cnt;
    let var = sum_zip3(xs, xs, xs, |x, _, _| (x - mean) * (x - mean)) / cnt;
    let inv = 1.0 / (var + LN_EPS).sqrt();
    let m1 = sum_zip3(gys, gain, gain, |gy, g, _| gy * g) / cnt;
    let m2 = sum_zip3(gys, gain, xs, |gy, g, x| gy * g * (x - mean) * inv) / cnt;
    [mean, inv, m1, m2]
}
}

simd_targets! {
/// One lane's terms of the gain's and bias's gradients (`gy xhat`, `gy`) added to `gg` and
/// `gb`, over the columns the slices cover.
fn ln_back_params(xs: &[f32], gys: &[f32], st: [f32; 4], gg: &mut [f32], gb: &mut [f32]) {
    let [mean, inv, ..] = st;
    for (((a, b), g), x) in gg.iter_mut().zip(gb.iter_mut()).zip(gys).zip(xs) {
        *a += g * (x - mean) * inv;
        *b += g;
    }
}
}

simd_targets! {
/// One lane's `gx = (gy g - mean(gy g) - xhat mean(gy g xhat)) / std`.
///
/// # Safety
/// `x`, `gy` and `gx` cover `gain.len()` floats; `gx` may be `x`'s or `gy`'s lane (each
/// element is read before it is written).
unsafe fn ln_back_gx(x: *const f32, gy: *const f32, gain: &[f32], st: [f32; 4], gx: *mut f32) {
    let [mean, inv, m1, m2] = st;
    for (j, g) in gain.iter().enumerate() {
        // SAFETY: `j < n`, within the three lanes.
        unsafe {
            let xhat = (*x.add(j) - mean) * inv;
            *gx.add(j) = inv * (*gy.add(j) * g - m1 - xhat * m2);
        }
    }
}
}

/// `f(a[j], b[j], c[j])` summed over `j` (the length of the shortest slice) with 32 partial
/// sums (two AVX-512 or four AVX2 registers, so that the adds do not wait on each other),
/// folded into eight and then as [`sum`] does; over chunks, with no bounds checks in the loop,
/// so that it vectorises. The layer norm's statistics, forward and backward, all use it, so
/// both see the same mean and variance.
#[inline(always)]
fn sum_zip3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut wide = [0f32; 32];
    let (ac, bc, cc) = (a.chunks_exact(32), b.chunks_exact(32), c.chunks_exact(32));
    let full = n - n % 32;
    for ((x, y), z) in ac.zip(bc).zip(cc) {
        for q in 0..32 {
            wide[q] += f(x[q], y[q], z[q]);
        }
    }
    let mut acc = [0f32; 8];
    for q in 0..8 {
        acc[q] = (wide[q] + wide[q + 8]) + (wide[q + 16] + wide[q + 24]);
    }
    let mut s = fold8(acc);
    for j in full..n {
        s += f(a[j], b[j], c[j]);
    }
    s
}

/// `f(0) + ... + f(n - 1)` with eight partial sums: the same benefits as [`sum`], for values
/// read through an offset table or computed on the fly.
#[inline]
fn sum_by(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n - n % 8;
    let mut j = 0;
    while j < full {
        for (q, a) in acc.iter_mut().enumerate() {
            *a += f(j + q);
        }
        j += 8;
    }
    let mut s = fold8(acc);
    for j in full..n {
        s += f(j);
    }
    s
}

/// `e^x` in f32 without a call, branch-free so that loops over it vectorise: Cody-Waite range
/// reduction `x = n ln 2 + r`, Cephes' degree-6 polynomial for `e^r`, and `2^n` built in the
/// exponent bits. Within 2 ulp of `f32::exp` on the normal range; 0 below about -87.3 (where
/// results would be subnormal), infinity above 88.7, NaN for NaN. Used where the exponentials
/// of a whole row are summed (cross-entropy), not for the elementwise `exp`.
#[inline]
pub fn fast_exp(x: f32) -> f32 {
    const HI: f32 = 88.72;
    const LO: f32 = -87.33;
    let c = x.clamp(LO, HI);
    // n = round(c / ln 2), by the 1.5 * 2^23 trick.
    let t = c * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = c - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n: n is an integer in [-126, 128] here, held in the low bits of t.
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    // In two factors, so that n = 128 and n = -126 both stay normal.
    let pow2 = |k: i32| f32::from_bits(((k + 127).clamp(1, 254) as u32) << 23);
    let half = ni >> 1;
    let y = er * pow2(half) * pow2(ni - half);
    if x.is_nan() {
        x
    } else if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

pub use crate::backend::cpu::func::single::{apply, derivative, max2, min2};

/// `out = f(x)` over a nest with operands `[out, x]`.
///
/// # Safety
/// Every offset of the nest must be in bounds; `out` and `x` are the same buffer only when
/// the nest visits the same offsets for both.
#[inline]
unsafe fn map1(
    nest: &Nest<2>,
    base: [usize; 2],
    x: *const f32,
    out: *mut f32,
    f: impl Fn(f32) -> f32,
) {
    nest.rows(base, |o, n, s| unsafe {
        let (po, px) = (out.add(o[0]), x.add(o[1]));
        if s == [1, 1] {
            if std::ptr::eq(po, px) {
                for v in sl_mut(po, n) {
                    *v = f(*v);
                }
            } else {
                for (v, x) in sl_mut(po, n).iter_mut().zip(sl(px, n)) {
                    *v = f(*x);
                }
            }
        } else {
            for i in 0..n {
                *po.add(i * s[0]) = f(*px.add(i * s[1]));
            }
        }
    });
}

/// `out = f(a, b)` over a nest with operands `[out, a, b]`.
///
/// # Safety
/// As [`map1`], for both inputs.
#[inline]
unsafe fn map2(
    nest: &Nest<3>,
    base: [usize; 3],
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    f: impl Fn(f32, f32) -> f32,
) {
    nest.rows(base, |o, n, s| unsafe {
        let (po, pa, pb) = (out.add(o[0]), a.add(o[1]), b.add(o[2]));
        if s == [1, 1, 1] {
            let (ia, ib) = (std::ptr::eq(po, pa), std::ptr::eq(po, pb));
            match (ia, ib) {
                (true, true) => {
                    for v in sl_mut(po, n) {
                        *v = f(*v, *v);
                    }
                }
                (true, false) => {
                    for (v, y) in sl_mut(po, n).iter_mut().zip(sl(pb, n)) {
                        *v = f(*v, *y);
                    }
                }
                (false, true) => {
                    for (v, x) in sl_mut(po, n).iter_mut().zip(sl(pa, n)) {
                        *v = f(*x, *v);
                    }
                }
                (false, false) => {
                    let (xs, ys) = (sl(pa, n), sl(pb, n));
                    for ((v, x), y) in sl_mut(po, n).iter_mut().zip(xs).zip(ys) {
                        *v = f(*x, *y);
                    }
                }
            }
        } else {
            for i in 0..n {
                *po.add(i * s[0]) = f(*pa.add(i * s[1]), *pb.add(i * s[2]));
            }
        }
    });
}

/// [`map1`] on every core for large nests.
///
/// # Safety
/// As [`map1`].
unsafe fn par_map1(nest: &Nest<2>, x: *const f32, out: *mut f32, f: impl Fn(f32) -> f32 + Sync) {
    let (x, out) = (Shared(x), Shared(out));
    par(nest, nest.len(), |base, part| unsafe {
        map1(part, base, x.get(), out.get(), &f)
    });
}

/// [`map2`] on every core for large nests.
///
/// # Safety
/// As [`map2`].
unsafe fn par_map2(
    nest: &Nest<3>,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    f: impl Fn(f32, f32) -> f32 + Sync,
) {
    let (a, b, out) = (Shared(a), Shared(b), Shared(out));
    par(nest, nest.len(), |base, part| unsafe {
        map2(part, base, a.get(), b.get(), out.get(), &f)
    });
}

/// [`copy`] on every core for large nests.
///
/// # Safety
/// As [`copy`].
unsafe fn par_copy(nest: &Nest<2>, x: *const f32, out: *mut f32) {
    let (x, out) = (Shared(x), Shared(out));
    par(nest, nest.len(), |base, part| unsafe {
        copy(part, base, x.get(), out.get())
    });
}

/// `out += x` reduced over a nest with operands `[out, x]` (in `x`'s order; `out`'s stride is
/// 0 along the summed axes). When the innermost axis is kept and long, its range is split over
/// the cores: each thread owns a slice of the outputs and adds into each in the serial order,
/// so the result does not depend on the number of threads.
///
/// # Safety
/// As [`map1`]; `out` holds the starting values (zeros).
unsafe fn par_reduce(nest: &Nest<2>, x: *const f32, out: *mut f32) {
    let dims = nest.dims();
    let parts = match dims.last() {
        Some(inner) if inner.s[0] != 0 && nest.len() >= PAR_MIN => cores().min(inner.n / 32),
        _ => 1,
    };
    if parts <= 1 {
        unsafe { reduce(nest, [0, 0], x, out) };
        return;
    }
    let inner = dims[dims.len() - 1];
    let (x, out) = (Shared(x), Shared(out));
    rayon::scope(|scope| {
        for t in 0..parts {
            let (lo, hi) = (inner.n * t / parts, inner.n * (t + 1) / parts);
            let mut d = dims.to_vec();
            let last = d.len() - 1;
            d[last].n = hi - lo;
            let sub = Nest::new(d);
            let base = [lo * inner.s[0], lo * inner.s[1]];
            // SAFETY: distinct ranges of a kept axis are distinct outputs.
            scope.spawn(move |_| unsafe { reduce(&sub, base, x.get(), out.get()) });
        }
    });
}

/// Lanes of the layer norm's gradient whose gain and bias gradients are summed together
/// before they are added to the whole: a fixed number, so that the sums (and the bits) do not
/// depend on how many cores the machine has.
const LN_CHUNK: usize = 64;

/// The dense layer norm's gradient where every lane shares one gain (the usual case), in one
/// pass over the lanes: each block of [`LN_CHUNK`] lanes sums its terms of the gain's and
/// bias's gradients in a buffer of its own while it writes its lanes' `gx`, the blocks split
/// over the cores when the work is large, and the blocks' sums are then added in block order.
/// The same bits on any number of cores. Returns false (doing nothing) when the lanes do not
/// share one gain, for the lane-by-lane loop.
///
/// # Safety
/// As the [`Kernel::LayerNormBack`] arm: `outer` (operands `[gx, x, g, gy, gg, gb]`) with lanes
/// of `n` contiguous floats covers the buffers; `gx` may be `x` or `gy`, nothing else overlaps.
unsafe fn ln_back_blocked(
    outer: &Nest<6>,
    n: usize,
    [x, g, gy]: [*const f32; 3],
    [gx, gg, gb]: [*mut f32; 3],
) -> bool {
    let mut lanes = Vec::with_capacity(outer.len());
    outer.each([0; 6], |o| lanes.push(o));
    let Some(first) = lanes.first().copied() else {
        return true;
    };
    if lanes
        .iter()
        .any(|o| (o[2], o[4], o[5]) != (first[2], first[4], first[5]))
    {
        return false;
    }
    let blocks = lanes.len().div_ceil(LN_CHUNK);
    let mut sums = vec![0f32; blocks * 2 * n];
    let (x, g, gy, gx) = (Shared(x), Shared(g), Shared(gy), Shared(gx));
    let run = |ls: &[[usize; 6]], sums: &mut [f32]| {
        for (ls, s) in ls.chunks(LN_CHUNK).zip(sums.chunks_mut(2 * n)) {
            let (sg, sb) = s.split_at_mut(n);
            for o in ls {
                // SAFETY: the lanes are within the buffers; `x` and `gy` are read through
                // the slices before `gx` (which may be either) is written, and each lane of
                // `gx` belongs to one block only.
                unsafe {
                    let (px, pgy) = (x.get().add(o[1]), gy.get().add(o[3]));
                    let gain = sl(g.get().add(o[2]), n);
                    let st = ln_back_stats(sl(px, n), sl(pgy, n), gain);
                    ln_back_params(sl(px, n), sl(pgy, n), st, sg, sb);
                    ln_back_gx(px, pgy, gain, st, gx.get().add(o[0]));
                }
            }
        }
    };
    let parts = if lanes.len() * n >= PAR_MIN {
        cores().min(blocks)
    } else {
        1
    };
    if parts <= 1 {
        run(&lanes, &mut sums);
    } else {
        let per = blocks.div_ceil(parts);
        rayon::scope(|scope| {
            let run = &run;
            for (ls, s) in lanes
                .chunks(per * LN_CHUNK)
                .zip(sums.chunks_mut(per * 2 * n))
            {
                scope.spawn(move |_| run(ls, s));
            }
        });
    }
    // SAFETY: `gg` and `gb` lanes of `n` floats at the shared offsets, overlapping nothing.
    let (tg, tb) = unsafe { (sl_mut(gg.add(first[4]), n), sl_mut(gb.add(first[5]), n)) };
    for s in sums.chunks(2 * n) {
        let (sg, sb) = s.split_at(n);
        for (t, v) in tg.iter_mut().zip(sg) {
            *t += v;
        }
        for (t, v) in tb.iter_mut().zip(sb) {
            *t += v;
        }
    }
    true
}

/// The serial loop of [`par_reduce`] from offsets `base`.
///
/// # Safety
/// As [`par_reduce`].
unsafe fn reduce(nest: &Nest<2>, base: [usize; 2], x: *const f32, out: *mut f32) {
    nest.rows(base, |o, n, s| unsafe {
        let (po, px) = (out.add(o[0]), x.add(o[1]));
        if s[0] == 0 {
            let acc = if s[1] == 1 {
                sum(sl(px, n))
            } else {
                (0..n).map(|i| *px.add(i * s[1])).sum()
            };
            *po += acc;
        } else if s == [1, 1] {
            for (v, x) in sl_mut(po, n).iter_mut().zip(sl(px, n)) {
                *v += *x;
            }
        } else {
            for i in 0..n {
                *po.add(i * s[0]) += *px.add(i * s[1]);
            }
        }
    });
}

/// The side of the square tiles in which [`copy`] transposes.
const TILE: usize = 32;

/// `out = x` over a nest with operands `[out, x]`; nothing to do when it runs in place.
///
/// # Safety
/// As [`map1`].
unsafe fn copy(nest: &Nest<2>, base: [usize; 2], x: *const f32, out: *mut f32) {
    if std::ptr::eq(out, x) {
        return;
    }
    // A transposition: the output's rows run across the input's. Walked row by row, every read
    // would touch another cache line; in square tiles of both dimensions, each line is read
    // (and written) once per tile.
    let dims = nest.dims();
    if let Some((inner, rest)) = dims.split_last()
        && inner.s[0] == 1
        && inner.s[1] != 1
        && inner.n >= TILE
        && let Some(j) = rest.iter().position(|d| d.s[1] == 1 && d.n >= TILE)
    {
        let across = rest[j];
        let others: Vec<Dim<2>> = rest
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != j)
            .map(|(_, d)| *d)
            .collect();
        Nest::new(others).each(base, |o| unsafe {
            for a0 in (0..across.n).step_by(TILE) {
                for i0 in (0..inner.n).step_by(TILE) {
                    for a in a0..(a0 + TILE).min(across.n) {
                        let (po, px) = (
                            out.add(o[0] + a * across.s[0]),
                            x.add(o[1] + a * across.s[1]),
                        );
                        for i in i0..(i0 + TILE).min(inner.n) {
                            *po.add(i) = *px.add(i * inner.s[1]);
                        }
                    }
                }
            }
        });
        return;
    }
    nest.rows(base, |o, n, s| unsafe {
        let (po, px) = (out.add(o[0]), x.add(o[1]));
        if s == [1, 1] {
            std::ptr::copy_nonoverlapping(px, po, n);
        } else if s[1] == 0 {
            let v = *px;
            for i in 0..n {
                *po.add(i * s[0]) = v;
            }
        } else {
            for i in 0..n {
                *po.add(i * s[0]) = *px.add(i * s[1]);
            }
        }
    });
}

impl Kernel {
    /// Runs the kernel on the pointers `p` (inputs, then outputs).
    ///
    /// # Safety
    /// The pointers must be the bases of buffers at least as long as the lengths the plan
    /// checked with [`Kernel::check_bounds`]; an output pointer may equal an input pointer only
    /// where the planner allowed this kernel to run in place.
    pub unsafe fn run(&self, p: &[*mut f32], train: bool, seed: u64) -> Result<(), Error> {
        unsafe {
            match self {
                // A fused group runs on the code `exec::Plan` compiled for it.
                Kernel::Fused(_) => {
                    return Err(Error::Plan(
                        "plan bug: a fused group without its compiled code".into(),
                    ));
                }
                Kernel::Attention(a) => a.run(p),
                Kernel::Copy(nest) => par_copy(nest, p[0], p[1]),
                Kernel::Fill { value, len } => par_fill(sl_mut(p[0], *len), *value),
                Kernel::Unary(u, nest) => match *u {
                    Unary::Scale(k) => par_map1(nest, p[0], p[1], |x| x * k),
                    Unary::Shift(k) => par_map1(nest, p[0], p[1], |x| x + k),
                    Unary::Pow(k) => par_map1(nest, p[0], p[1], |x| x.powf(k)),
                    Unary::Map(f) => match f {
                        // The cheap functions get their own loops so that they vectorise.
                        Func::Relu => par_map1(nest, p[0], p[1], |x| x.max(0.0)),
                        Func::Recip => par_map1(nest, p[0], p[1], |x| 1.0 / x),
                        Func::Sqrt => par_map1(nest, p[0], p[1], |x| x.sqrt()),
                        f => par_map1(nest, p[0], p[1], |x| apply(f, x)),
                    },
                },
                Kernel::Binary(op, nest) => match *op {
                    Binary::Add => par_map2(nest, p[0], p[1], p[2], |a, b| a + b),
                    Binary::Sub => par_map2(nest, p[0], p[1], p[2], |a, b| a - b),
                    Binary::Mul => par_map2(nest, p[0], p[1], p[2], |a, b| a * b),
                    Binary::Div => par_map2(nest, p[0], p[1], p[2], |a, b| a / b),
                    Binary::Max => par_map2(nest, p[0], p[1], p[2], max2),
                    Binary::Min => par_map2(nest, p[0], p[1], p[2], min2),
                    Binary::MapBack(Func::Relu) => {
                        par_map2(nest, p[0], p[1], p[2], |x, g| if x > 0.0 { g } else { 0.0 })
                    }
                    Binary::MapBack(f) => {
                        par_map2(nest, p[0], p[1], p[2], |x, g| g * derivative(f, x))
                    }
                },
                Kernel::Dropout { p: prob, key, nest } => {
                    if !train || *prob == 0.0 {
                        par_copy(nest, p[0], p[1]);
                    } else {
                        let scale = (1.0 / (1.0 - prob)) as f32;
                        let (x, out) = (Shared(p[0] as *const f32), Shared(p[1]));
                        par(nest, nest.len(), |base, part| {
                            let (x, out) = (x.get(), out.get());
                            part.rows(base, |o, n, s| {
                                for i in 0..n {
                                    let at = o[0] + i * s[0];
                                    let v = *x.add(o[1] + i * s[1]);
                                    *out.add(at) = if interp::keep(seed, *key, at as u64, *prob) {
                                        v * scale
                                    } else {
                                        0.0
                                    };
                                }
                            });
                        });
                    }
                }
                Kernel::Causal {
                    value,
                    band,
                    copy: c,
                    nq,
                    nk,
                    sq,
                    sk,
                    rest,
                } => {
                    copy(c, [0, 0], p[0], p[1]);
                    let out = p[1];
                    for q in 0..*nq {
                        for k in (0..*nk).filter(|k| !band.sees(q, *k)) {
                            rest.rows([q * sq + k * sk], |o, n, s| {
                                for i in 0..n {
                                    *out.add(o[0] + i * s[0]) = *value;
                                }
                            });
                        }
                    }
                }
                Kernel::Reduce { nest, len } => {
                    let (x, out) = (p[0] as *const f32, p[1]);
                    sl_mut(out, *len).fill(0.0);
                    par_reduce(nest, x, out);
                }
                Kernel::MatScan {
                    back,
                    outer,
                    n,
                    r,
                    s,
                    col,
                } => {
                    let (n, r, col) = (*n, *r, *col);
                    let (a, b, out) = (p[0] as *const f32, p[1] as *const f32, p[2]);
                    outer.each([0, 0, 0], |o| {
                        let (po, pa, pb) = (out.add(o[0]), a.add(o[1]), b.add(o[2]));
                        let y = |t: usize, i: usize| po.add(t * s[0][0] + i * s[0][1]);
                        if !*back {
                            // y_t[i] = x_t[i] + sum_c g_t[i, c] y_(t-1)[c].
                            let g = |t: usize, i: usize, c: usize| {
                                *pa.add(t * s[1][0] + i * s[1][1] + c * col)
                            };
                            for t in 0..n {
                                for i in 0..r {
                                    let mut v = *pb.add(t * s[2][0] + i * s[2][1]);
                                    if t > 0 {
                                        for c in 0..r {
                                            v += g(t, i, c) * *y(t - 1, c);
                                        }
                                    }
                                    *y(t, i) = v;
                                }
                            }
                        } else {
                            // u_t[c] = gy_t[c] + sum_i g_(t+1)[i, c] u_(t+1)[i].
                            let g = |t: usize, i: usize, c: usize| {
                                *pb.add(t * s[2][0] + i * s[2][1] + c * col)
                            };
                            for t in (0..n).rev() {
                                for c in 0..r {
                                    let mut v = *pa.add(t * s[1][0] + c * s[1][1]);
                                    if t + 1 < n {
                                        for i in 0..r {
                                            v += g(t + 1, i, c) * *y(t + 1, i);
                                        }
                                    }
                                    *y(t, c) = v;
                                }
                            }
                        }
                    });
                }
                Kernel::Lane {
                    op: op @ (LaneOp::Scan | LaneOp::ScanBack),
                    outer,
                    n,
                    s,
                } if {
                    let c = SCAN_CHUNK.load(std::sync::atomic::Ordering::Relaxed);
                    c > 0 && *n >= 2 * c
                } =>
                {
                    let c = SCAN_CHUNK.load(std::sync::atomic::Ordering::Relaxed);
                    let mut starts = Vec::with_capacity(outer.len());
                    outer.each([0, 0, 0], |o| starts.push(o));
                    let back = *op == LaneOp::ScanBack;
                    chunked_scan(back, &starts, *n, *s, p[0], p[1], p[2], c);
                }
                Kernel::Lane { op, outer, n, s } => {
                    let n = *n;
                    let a = p[0] as *const f32;
                    let (b, out) = if p.len() == 3 {
                        (p[1] as *const f32, p[2])
                    } else {
                        (a, p[1])
                    };
                    outer.each([0, 0, 0], |o| {
                        let (po, pa, pb) = (out.add(o[0]), a.add(o[1]), b.add(o[2]));
                        let at = |q: *const f32, st: usize, j: usize| *q.add(j * st);
                        match op {
                            LaneOp::Softmax => {
                                let mut m = f32::NEG_INFINITY;
                                for j in 0..n {
                                    m = m.max(at(pa, s[1], j));
                                }
                                let m = if m.is_finite() { m } else { 0.0 };
                                let mut total = 0.0;
                                for j in 0..n {
                                    let e = (at(pa, s[1], j) - m).exp();
                                    *po.add(j * s[0]) = e;
                                    total += e;
                                }
                                for j in 0..n {
                                    *po.add(j * s[0]) /= total;
                                }
                            }
                            LaneOp::Normalise => {
                                let total: f32 = (0..n).map(|j| at(pa, s[1], j)).sum();
                                for j in 0..n {
                                    *po.add(j * s[0]) = at(pa, s[1], j) / total;
                                }
                            }
                            LaneOp::SoftmaxBack => {
                                let dot: f32 =
                                    (0..n).map(|j| at(pa, s[1], j) * at(pb, s[2], j)).sum();
                                for j in 0..n {
                                    let (y, g) = (at(pa, s[1], j), at(pb, s[2], j));
                                    *po.add(j * s[0]) = y * (g - dot);
                                }
                            }
                            // Every value is read before its position is written, so an
                            // input may share the output's buffer.
                            LaneOp::Scan => {
                                let mut acc = 0.0;
                                for j in 0..n {
                                    let (g, x) = (at(pa, s[1], j), at(pb, s[2], j));
                                    acc = if j == 0 { x } else { g * acc + x };
                                    *po.add(j * s[0]) = acc;
                                }
                            }
                            LaneOp::ScanBack => {
                                let (mut acc, mut gate) = (0.0, 0.0);
                                for j in (0..n).rev() {
                                    let (gy, g) = (at(pa, s[1], j), at(pb, s[2], j));
                                    acc = gy + gate * acc;
                                    *po.add(j * s[0]) = acc;
                                    gate = g;
                                }
                            }
                            LaneOp::RotateHalf => {
                                let h = n / 2;
                                for j in 0..h {
                                    let (a, b) = (at(pa, s[1], j), at(pa, s[1], j + h));
                                    *po.add(j * s[0]) = -b;
                                    *po.add((j + h) * s[0]) = a;
                                }
                            }
                            LaneOp::Lag => {
                                for j in (0..n).rev() {
                                    *po.add(j * s[0]) =
                                        if j == 0 { 0.0 } else { at(pa, s[1], j - 1) };
                                }
                            }
                            LaneOp::Reduce(r) => {
                                *po = match r.chosen(n, |j| at(pa, s[1], j)) {
                                    Some(c) => at(pa, s[1], c),
                                    None if n == 0 => match r {
                                        Reduction::Min => f32::INFINITY,
                                        _ => f32::NEG_INFINITY,
                                    },
                                    None => {
                                        let m = lane_top(n, |j| at(pa, s[1], j));
                                        let total: f32 =
                                            (0..n).map(|j| (at(pa, s[1], j) - m).exp()).sum();
                                        m + total.ln()
                                    }
                                };
                            }
                            LaneOp::ReduceBack(r) => {
                                let g = *pb;
                                match r.chosen(n, |j| at(pa, s[1], j)) {
                                    Some(c) => {
                                        for j in 0..n {
                                            *po.add(j * s[0]) = if j == c { g } else { 0.0 };
                                        }
                                    }
                                    None => {
                                        let m = lane_top(n, |j| at(pa, s[1], j));
                                        let total: f32 =
                                            (0..n).map(|j| (at(pa, s[1], j) - m).exp()).sum();
                                        for j in 0..n {
                                            *po.add(j * s[0]) =
                                                g * (at(pa, s[1], j) - m).exp() / total;
                                        }
                                    }
                                }
                            }
                            LaneOp::NormaliseBack => {
                                let total: f32 = (0..n).map(|j| at(pa, s[1], j)).sum();
                                let dot: f32 = (0..n)
                                    .map(|j| at(pb, s[2], j) * (at(pa, s[1], j) / total))
                                    .sum();
                                for j in 0..n {
                                    *po.add(j * s[0]) = (at(pb, s[2], j) - dot) / total;
                                }
                            }
                        }
                    });
                }
                Kernel::Cumsum {
                    reverse,
                    slab,
                    n,
                    s,
                } => {
                    let (x, out) = (Shared(p[0] as *const f32), Shared(p[1]));
                    // Every part of the slab runs the whole scan, so parts are independent.
                    par(slab, slab.len() * n, |base, part| {
                        let (x, out) = (x.get(), out.get());
                        for t in 0..*n {
                            let pos = if *reverse { n - 1 - t } else { t };
                            part.rows(
                                [base[0] + pos * s[0], base[1] + pos * s[1]],
                                |o, len, st| {
                                    let (po, px) = (out.add(o[0]), x.add(o[1]));
                                    if st == [1, 1] {
                                        // The previous position's row is another part of `out`, and
                                        // `x`'s row is either this row (in place) or elsewhere.
                                        let prev = if t == 0 {
                                            None
                                        } else if *reverse {
                                            Some(sl(po.add(s[0]), len))
                                        } else {
                                            Some(sl(po.sub(s[0]), len))
                                        };
                                        let row = sl_mut(po, len);
                                        match (prev, std::ptr::eq(po, px)) {
                                            (None, true) => {}
                                            (None, false) => row.copy_from_slice(sl(px, len)),
                                            (Some(p), true) => {
                                                for (d, q) in row.iter_mut().zip(p) {
                                                    *d += q;
                                                }
                                            }
                                            (Some(p), false) => {
                                                for ((d, q), v) in
                                                    row.iter_mut().zip(p).zip(sl(px, len))
                                                {
                                                    *d = q + v;
                                                }
                                            }
                                        }
                                        return;
                                    }
                                    for i in 0..len {
                                        let at = o[0] + i * st[0];
                                        let v = *x.add(o[1] + i * st[1]);
                                        *out.add(at) = if t == 0 {
                                            v
                                        } else if *reverse {
                                            v + *out.add(at + s[0])
                                        } else {
                                            v + *out.add(at - s[0])
                                        };
                                    }
                                },
                            );
                        }
                    });
                }
                Kernel::LayerNorm {
                    outer,
                    inner,
                    dense: true,
                } => {
                    let (x, g, b, out) = (p[0] as *const f32, p[1] as *const f32, p[2], p[3]);
                    let n = inner[0].len();
                    let (x, g, b, out) = (Shared(x), Shared(g), Shared(b), Shared(out));
                    // Lanes are independent: split over the cores.
                    par(outer, outer.len() * n, |base, part| {
                        let (x, g, b, out) = (x.get(), g.get(), b.get(), out.get());
                        part.each(base, |o| {
                            let (gs, bs) = (sl(g.add(o[2]), n), sl(b.add(o[3]), n));
                            ln_lane(x.add(o[1]), gs, bs, out.add(o[0]));
                        });
                    });
                }
                Kernel::LayerNorm { outer, inner, .. } => {
                    let (x, g, b, out) = (p[0] as *const f32, p[1] as *const f32, p[2], p[3]);
                    let [to, tx, tg, tb] = inner;
                    let cnt = tx.len() as f32;
                    outer.each([0, 0, 0, 0], |o| {
                        let xv = |j: usize| *x.add(o[1] + tx[j]);
                        let mean = sum_by(tx.len(), xv) / cnt;
                        let var = sum_by(tx.len(), |j| (xv(j) - mean) * (xv(j) - mean)) / cnt;
                        let inv = 1.0 / (var + LN_EPS).sqrt();
                        for j in 0..tx.len() {
                            let xhat = (xv(j) - mean) * inv;
                            *out.add(o[0] + to[j]) =
                                xhat * *g.add(o[2] + tg[j]) + *b.add(o[3] + tb[j]);
                        }
                    });
                }
                Kernel::LayerNormBack {
                    outer,
                    inner,
                    lens,
                    dense: true,
                } => {
                    let (x, g, gy) = (p[0] as *const f32, p[1] as *const f32, p[2] as *const f32);
                    let (gx, gg, gb) = (p[3], p[4], p[5]);
                    sl_mut(gg, lens[0]).fill(0.0);
                    sl_mut(gb, lens[1]).fill(0.0);
                    let n = inner[0].len();
                    if !ln_back_blocked(outer, n, [x, g, gy], [gx, gg, gb]) {
                        outer.each([0; 6], |o| {
                            ln_back_lane(
                                x.add(o[1]),
                                gy.add(o[3]),
                                sl(g.add(o[2]), n),
                                sl_mut(gg.add(o[4]), n),
                                sl_mut(gb.add(o[5]), n),
                                gx.add(o[0]),
                            );
                        });
                    }
                }
                Kernel::LayerNormBack {
                    outer, inner, lens, ..
                } => {
                    let (x, g, gy) = (p[0] as *const f32, p[1] as *const f32, p[2] as *const f32);
                    let (gx, gg, gb) = (p[3], p[4], p[5]);
                    sl_mut(gg, lens[0]).fill(0.0);
                    sl_mut(gb, lens[1]).fill(0.0);
                    let [tgx, tx, tg, tgy, tgg, tgb] = inner;
                    let cnt = tx.len() as f32;
                    outer.each([0; 6], |o| {
                        let xv = |j: usize| *x.add(o[1] + tx[j]);
                        let gyv = |j: usize| *gy.add(o[3] + tgy[j]);
                        let gv = |j: usize| *g.add(o[2] + tg[j]);
                        let n = tx.len();
                        let mean = sum_by(n, xv) / cnt;
                        let var = sum_by(n, |j| (xv(j) - mean) * (xv(j) - mean)) / cnt;
                        let inv = 1.0 / (var + LN_EPS).sqrt();
                        let xhat = |j: usize| (xv(j) - mean) * inv;
                        let m1 = sum_by(n, |j| gyv(j) * gv(j)) / cnt;
                        let m2 = sum_by(n, |j| gyv(j) * gv(j) * xhat(j)) / cnt;
                        for j in 0..n {
                            *gg.add(o[4] + tgg[j]) += gyv(j) * xhat(j);
                            *gb.add(o[5] + tgb[j]) += gyv(j);
                        }
                        // Every read of this lane's x and gy is above: gx may overwrite them.
                        for (j, t) in tgx.iter().enumerate() {
                            let gxh = gyv(j) * gv(j);
                            *gx.add(o[0] + t) = inv * (gxh - m1 - xhat(j) * m2);
                        }
                    });
                }
                Kernel::Gemm(gm) => {
                    let (a, b) = (p[0] as *const f32, p[1] as *const f32);
                    let c = p[p.len() - 1];
                    let beta = match &gm.bias {
                        Some(nest) => {
                            par_copy(nest, p[2], c);
                            1.0
                        }
                        None => 0.0,
                    };
                    if gm.n == 1 || gm.k == 1 {
                        // Products with one column or a contraction of length 1 (a matrix
                        // times a vector, an outer product: linear attention has 140 of each
                        // per sequence) are memory-bound loops, where sgemm's packing costs
                        // more than the arithmetic; large batches of them use every core.
                        let (a, b, c) = (Shared(a), Shared(b), Shared(c));
                        let work = gm.batch.len() * gm.m * gm.k.max(gm.n);
                        par(&gm.batch, work, |base, part| {
                            part.each(base, |o| {
                                let (a, b, c) = (a.get().add(o[1]), b.get().add(o[2]), c.get());
                                if gm.n == 1 {
                                    gemv(gm, a, b, c.add(o[0]), beta);
                                } else {
                                    outer(gm, a, b, c.add(o[0]), beta);
                                }
                            });
                        });
                    } else {
                        // A batch of products (attention's scores and values: one per
                        // sequence and head) is split over the cores by its batch; a single
                        // product is split inside the GEMM.
                        let (a, b, c) = (Shared(a), Shared(b), Shared(c));
                        let threads = if gm.batch.len() > 1 { 1 } else { cores() };
                        par(&gm.batch, gm.flops() as usize, |base, part| {
                            part.each(base, |o| {
                                let (a, b, c) = (a.get().add(o[1]), b.get().add(o[2]), c.get());
                                sgemm(gm, a, b, c.add(o[0]), beta, threads);
                            });
                        });
                    }
                }
                Kernel::Embed {
                    ids,
                    row,
                    vocab,
                    vstride,
                } => {
                    let (idp, table, out) = (p[0] as *const f32, p[1] as *const f32, p[2]);
                    check_ids(ids, idp, *vocab)?;
                    ids.each([0, 0], |o| {
                        let id = *idp.add(o[1]) as usize;
                        row.rows([o[0], id * vstride], |r, n, s| {
                            let (po, pt) = (out.add(r[0]), table.add(r[1]));
                            if s == [1, 1] {
                                std::ptr::copy_nonoverlapping(pt, po, n);
                            } else {
                                for i in 0..n {
                                    *po.add(i * s[0]) = *pt.add(i * s[1]);
                                }
                            }
                        });
                    });
                }
                Kernel::EmbedBack {
                    ids,
                    row,
                    vocab,
                    vstride,
                    len,
                } => {
                    let (idp, gy, gt) = (p[0] as *const f32, p[1] as *const f32, p[2]);
                    check_ids(ids, idp, *vocab)?;
                    par_fill(sl_mut(gt, *len), 0.0);
                    ids.each([0, 0], |o| {
                        let id = *idp.add(o[1]) as usize;
                        row.rows([id * vstride, o[0]], |r, n, s| {
                            let (pt, pg) = (gt.add(r[0]), gy.add(r[1]));
                            for i in 0..n {
                                *pt.add(i * s[0]) += *pg.add(i * s[1]);
                            }
                        });
                    });
                }
                Kernel::CrossEntropy { back, pos, n, s } => {
                    let (lg, tg) = (Shared(p[0] as *const f32), Shared(p[1] as *const f32));
                    let (n, s, back) = (*n, *s, *back);
                    let (gy, out) = if back {
                        (*p[2], Shared(p[3]))
                    } else {
                        (0.0, Shared(p[2]))
                    };
                    // Positions are split over the cores; each part sums its own loss (forward)
                    // or writes its own lanes (backward), so the parts share nothing.
                    let totals = std::sync::Mutex::new((0.0f64, None::<f32>));
                    par(pos, pos.len() * n, |base, part| {
                        let (lg, tg, out) = (lg.get(), tg.get(), out.get());
                        let mut total = 0.0f64;
                        let mut bad = None;
                        let mut e = vec![0.0f32; n];
                        // A strided lane is gathered here first.
                        let mut g = vec![0.0f32; if s[0] == 1 { 0 } else { n }];
                        part.each(base, |o| {
                            let t = *tg.add(o[1]);
                            if !(t >= 0.0 && (t as usize) < n) {
                                bad = Some(t);
                                return;
                            }
                            let t = t as usize;
                            let l = lg.add(o[0]);
                            // The lane, contiguous: read in place, or gathered into `e` first.
                            let lane = if s[0] == 1 {
                                sl(l, n)
                            } else {
                                for (j, gj) in g.iter_mut().enumerate() {
                                    *gj = *l.add(j * s[0]);
                                }
                                &g[..]
                            };
                            let m = lane_max(lane);
                            if back && s[1] == 1 {
                                // The exponentials straight into the output, then scaled.
                                let po = sl_mut(out.add(o[2]), n);
                                let z = exp_shifted(lane, m, po);
                                scale(po, gy / z);
                                po[t] -= gy;
                                return;
                            }
                            let z = exp_shifted(lane, m, &mut e);
                            if !back {
                                total += (m + z.ln() - *l.add(t * s[0])) as f64;
                                return;
                            }
                            let po = out.add(o[2]);
                            let k = gy / z;
                            for (j, ej) in e.iter().enumerate() {
                                *po.add(j * s[1]) = k * ej;
                            }
                            *po.add(t * s[1]) -= gy;
                        });
                        let mut g = totals.lock().unwrap_or_else(|e| e.into_inner());
                        g.0 += total;
                        if bad.is_some() {
                            g.1 = bad;
                        }
                    });
                    let (total, bad) = totals.into_inner().unwrap_or_else(|e| e.into_inner());
                    if let Some(t) = bad {
                        return Err(Error::Plan(format!(
                            "target {t} is outside the {n} classes"
                        )));
                    }
                    if !back {
                        *out.get() = total as f32;
                    }
                }
            }
        }
        Ok(())
    }
}

/// `c = beta c + a b` for an `m x k` matrix `a` and a `k`-vector `b` (`g.n == 1`).
///
/// # Safety
/// The pointers must cover the matrices with `g`'s strides; `c` overlaps neither input.
unsafe fn gemv(g: &Gemm, a: *const f32, b: *const f32, c: *mut f32, beta: f32) {
    let (m, k) = (g.m, g.k);
    let ([ars, acs], bs, cs) = (g.a.map(|s| s as usize), g.b[0] as usize, g.c[0] as usize);
    unsafe {
        if acs == 1 {
            // Rows of `a` are contiguous: one dot product per row.
            for i in 0..m {
                let row = sl(a.add(i * ars), k);
                let s = if bs == 1 {
                    let v = sl(b, k);
                    let mut acc = [0f32; 8];
                    let (rc, vc) = (row.chunks_exact(8), v.chunks_exact(8));
                    let tail: f32 = rc
                        .remainder()
                        .iter()
                        .zip(vc.remainder())
                        .map(|(x, y)| x * y)
                        .sum();
                    for (r, v) in rc.zip(vc) {
                        for q in 0..8 {
                            acc[q] += r[q] * v[q];
                        }
                    }
                    sum(&acc) + tail
                } else {
                    (0..k).map(|j| row[j] * *b.add(j * bs)).sum()
                };
                let dst = c.add(i * cs);
                *dst = if beta == 0.0 { s } else { *dst + s };
            }
        } else {
            // Columns of `a` are contiguous (or nothing is): accumulate column by column.
            if beta == 0.0 {
                for i in 0..m {
                    *c.add(i * cs) = 0.0;
                }
            }
            for j in 0..k {
                let bj = *b.add(j * bs);
                let col = a.add(j * acs);
                if ars == 1 && cs == 1 {
                    for (d, x) in sl_mut(c, m).iter_mut().zip(sl(col, m)) {
                        *d += x * bj;
                    }
                } else {
                    for i in 0..m {
                        *c.add(i * cs) += *col.add(i * ars) * bj;
                    }
                }
            }
        }
    }
}

/// `c = beta c + a b` for an `m`-vector `a` and an `n`-vector `b` (`g.k == 1`).
///
/// # Safety
/// One product of `gm` (`c = beta c + a b`, each operand read through its strides) on the
/// `gemm` crate, over `threads` cores. The crate picks its kernels when it first runs, from
/// what the CPU has: AVX-512 (the `x86-v4` feature), else AVX2 and FMA, else scalar. On
/// the development machines (2-core AVX-512 Xeons) its AVX-512 kernels run the LM's products
/// about 1.6x faster than `matrixmultiply`, which stops at AVX2.
///
/// # Safety
/// The operands' strided extents must lie inside live buffers, and `c` must not overlap `a`
/// or `b`.
unsafe fn sgemm(gm: &Gemm, a: *const f32, b: *const f32, c: *mut f32, beta: f32, threads: usize) {
    // Below about a million multiply-adds, waking a second core costs more than it saves.
    let parallelism = if threads > 1 && gm.flops() >= 2_000_000 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // The crate computes `dst = alpha dst + beta lhs rhs`, reading `dst` only when told to.
    unsafe {
        gemm::gemm(
            gm.m,
            gm.n,
            gm.k,
            c,
            gm.c[1],
            gm.c[0],
            beta != 0.0,
            a,
            gm.a[1],
            gm.a[0],
            b,
            gm.b[1],
            gm.b[0],
            beta,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// The rate (GFLOP/s) of one contiguous row-major product, `m x k` by `k x n`, run as a plan's
/// products are (over every core): the best of `reps` timed runs after one warm-up.
/// `diagc bench` measures the machine's ceiling with it.
pub fn contiguous_gemm_rate(m: usize, n: usize, k: usize, reps: usize) -> f64 {
    isolated_gemm_rate(1, [m, n, k], [false; 3], reps)
}

/// The rate (GFLOP/s) of `batch` products `m x k` by `k x n` alone, on fresh buffers, run by
/// the plan's own [`Kernel::Gemm`] (one product split inside the GEMM over the cores, a batch
/// split over the cores by its batch). `transposed` says which of `[a, b, c]` is stored
/// column-major (a transposed operand, as a plan may read it); the others are row-major. The
/// best of `reps` timed runs after one warm-up. `diagc bench` times each product of the step
/// this way, in its own layout and row-major, to separate what a shape costs from what a
/// layout and the step around it cost.
pub fn isolated_gemm_rate(
    batch: usize,
    [m, n, k]: [usize; 3],
    transposed: [bool; 3],
    reps: usize,
) -> f64 {
    let batch = batch.max(1);
    let a = vec![1.0f32 / 3.0; batch * m * k];
    let b = vec![0.5f32; batch * k * n];
    let mut c = vec![0.0f32; batch * m * n];
    // `[row stride, column stride]` of an `r x q` matrix, row- or column-major.
    let strides = |r: usize, q: usize, t: bool| -> [isize; 2] {
        if t { [1, r as isize] } else { [q as isize, 1] }
    };
    let gemm = Kernel::Gemm(Gemm {
        // Operands `[c, a, b]`: the products one after another in each buffer.
        batch: Nest::new(vec![Dim {
            n: batch,
            s: [m * n, m * k, k * n],
        }]),
        m,
        k,
        n,
        a: strides(m, k, transposed[0]),
        b: strides(k, n, transposed[1]),
        c: strides(m, n, transposed[2]),
        bias: None,
    });
    let flops = 2.0 * (batch * m * n * k) as f64;
    let p = [
        a.as_ptr() as *mut f32,
        b.as_ptr() as *mut f32,
        c.as_mut_ptr(),
    ];
    let mut best = f64::INFINITY;
    for rep in 0..=reps.max(1) {
        let t0 = std::time::Instant::now();
        // SAFETY: the three live buffers hold the batch's products with exactly the strides
        // the kernel describes; `c` overlaps neither input, which are only read. A product
        // kernel returns no error.
        let _ = unsafe { gemm.run(&p, false, 0) };
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    flops / best / 1e9
}

/// As [`gemv`].
unsafe fn outer(g: &Gemm, a: *const f32, b: *const f32, c: *mut f32, beta: f32) {
    let (m, n) = (g.m, g.n);
    let (ars, bcs) = (g.a[0] as usize, g.b[1] as usize);
    let [crs, ccs] = g.c.map(|s| s as usize);
    unsafe {
        // Walk `c` along its contiguous side in the inner loop.
        let (outer_n, inner_n, xo, xs, yo, ys, co, ci) = if ccs <= crs {
            (m, n, a, ars, b, bcs, crs, ccs)
        } else {
            (n, m, b, bcs, a, ars, ccs, crs)
        };
        for i in 0..outer_n {
            let x = *xo.add(i * xs);
            let dst = c.add(i * co);
            if ci == 1 && ys == 1 {
                let row = sl_mut(dst, inner_n);
                let y = sl(yo, inner_n);
                if beta == 0.0 {
                    for (d, v) in row.iter_mut().zip(y) {
                        *d = x * v;
                    }
                } else {
                    for (d, v) in row.iter_mut().zip(y) {
                        *d += x * v;
                    }
                }
            } else {
                for j in 0..inner_n {
                    let d = dst.add(j * ci);
                    let v = x * *yo.add(j * ys);
                    *d = if beta == 0.0 { v } else { *d + v };
                }
            }
        }
    }
}

/// Checks every token id of a nest (operand 1 holds the ids) as the interpreter does: a
/// non-negative integer below the vocabulary size.
///
/// # Safety
/// The nest's offsets of operand 1 must be in bounds of `ids`.
unsafe fn check_ids(nest: &Nest<2>, ids: *const f32, vocab: usize) -> Result<(), Error> {
    let mut bad = None;
    nest.each([0, 0], |o| {
        let id = unsafe { *ids.add(o[1]) };
        if bad.is_none() && (id < 0.0 || id as usize >= vocab || id.fract() != 0.0) {
            bad = Some(id);
        }
    });
    match bad {
        Some(id) => Err(Error::Plan(format!(
            "token id {id} is outside the vocabulary (size {vocab})"
        ))),
        None => Ok(()),
    }
}

/// The largest finite entry of a lane, or 0 if it has none: the shift of a stable softmax and
/// logsumexp.
fn lane_top(n: usize, at: impl Fn(usize) -> f32) -> f32 {
    let m = (0..n).fold(f32::NEG_INFINITY, |m, j| m.max(at(j)));
    if m.is_finite() { m } else { 0.0 }
}
