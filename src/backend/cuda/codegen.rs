//! CUDA C rendered from a plan (`lir::Plan`): one kernel per step, specialised to its sizes and strides.
//!
//! The [`Plan`] (`lir`) is the lowered form of a diagram that both backends share: the
//! layouts of the wires, the steps (each a [`Kernel`] over raw buffers, with its loop nests'
//! lengths and strides), the elementwise groups the fuser made (the same groups the cranelift
//! JIT compiles), and the memory plan (which buffer every value lives in). This module turns
//! every step into CUDA C with those numbers as constants:
//! - loop nests become one thread per point, the point's offsets computed from the thread index
//!   by the nest's lengths and strides (innermost first);
//! - a fused elementwise group becomes one kernel computing its program per element, with the
//!   same functions (`expf`, `erff`...) and the same dropout mask as the CPU (the splitmix64 hash
//!   of seed, box key and element index, `diagc_keep` in `kernels/common.cuh`);
//! - lane-wise steps (softmax, normalisation, cumulative sums, layer norm, cross-entropy) run
//!   one thread per lane, in the CPU kernel's order of operations;
//! - reductions, the embedding's and layer norm's parameter gradients accumulate with
//!   `atomicAdd` into a buffer zeroed first (their order of summation is not the CPU's);
//! - products are [`Op::Gemm`]: for cuBLAS, with a generated kernel computing the same product
//!   (`fallback`), used for layouts cuBLAS cannot take and by the selftest as a cross-check.
//!
//! The result is a self-contained source (`common.cuh`, the elementwise functions, the step
//! kernels) that NVRTC compiles alone, and the launch sequence a runtime replays. Kernels that
//! can meet bad input (an id outside the table, a target outside the classes) record a code in
//! an error word; [`Generated::errors`] says what each code means.

use crate::ir::{Func, Reduction};
use crate::lir::attention::{Attn, Form};
use crate::lir::kernels::{Binary, Gemm, Kernel, LN_EPS, LaneOp, Unary};
use crate::lir::nest::Nest;
use crate::lir::program::{Inst, keep_threshold};
use crate::lir::{Loc, Plan};
use std::fmt::Write;

/// The first lines of a kernel with dropout: the run's seed and mode, read from device memory.
const SEED_LOADS: &str = "    unsigned long long seed = *seedp; int train = *trainp;";

/// Threads per block of every generated kernel.
pub const BLOCK: u32 = 256;

/// An argument of a launch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// The base pointer of a buffer (`float*`).
    Buf(Loc),
    U64(u64),
    F32(f32),
    /// Where the run's dropout seed is (`const unsigned long long*`: device memory, so that a
    /// captured CUDA graph reads each run's seed).
    Seed,
    /// Where the training flag is (`const int*`, nonzero: dropout active).
    Train,
    /// The error word (`int*`) of generated kernels: they store an error code in it.
    Err,
    /// `int`.
    I32(i32),
    /// The flag (`int*`, set to nonzero) of a hand-written kernel's check: error code `k`.
    Flag(usize),
}

/// One kernel launch: `threads` threads in blocks of [`BLOCK`].
#[derive(Clone, Debug)]
pub struct Launch {
    pub kernel: String,
    pub threads: u64,
    pub args: Vec<Arg>,
}

/// A product for cuBLAS: the CPU's [`Gemm`] (row-major strides, batch nest `[c, a, b]`) on
/// these buffers; with `accumulate`, `c` already holds the bias and the product is added.
#[derive(Clone, Debug)]
pub struct GemmCall {
    pub gemm: Gemm,
    pub a: Loc,
    pub b: Loc,
    pub c: Loc,
    pub accumulate: bool,
}

/// A launch of a hand-written kernel of `kernels/` (`file`), with its own launch shape.
#[derive(Clone, Debug)]
pub struct HandLaunch {
    pub file: &'static str,
    pub kernel: &'static str,
    pub grid: u32,
    pub block: u32,
    pub args: Vec<Arg>,
}

#[derive(Clone, Debug)]
pub enum Op {
    Launch(Launch),
    /// A hand-written kernel in place of a generated one: what the step computes is the same.
    Hand(HandLaunch),
    /// A product: cuBLAS where the layout allows it, else the generated `fallback`.
    Gemm {
        call: GemmCall,
        fallback: Launch,
    },
}

/// The launches of one plan step, in order.
#[derive(Clone, Debug)]
pub struct Step {
    pub label: String,
    pub ops: Vec<Op>,
}

/// A plan's CUDA: the source and the launch sequence.
#[derive(Clone, Debug)]
pub struct Generated {
    pub source: String,
    pub steps: Vec<Step>,
    /// `errors[k - 1]` explains error code `k`.
    pub errors: Vec<String>,
}

/// An f32 literal that C reads back as the same float.
fn lit(x: f32) -> String {
    if x.is_nan() {
        "__int_as_float(0x7fc00000)".into()
    } else if x.is_infinite() {
        if x > 0.0 {
            "__int_as_float(0x7f800000)".into()
        } else {
            "__int_as_float(0xff800000)".into()
        }
    } else {
        // `{:?}` is the shortest text that reads back as `x`, always with a `.` or an `e`.
        format!("{x:?}f")
    }
}

/// The elementwise functions and their derivatives, as the CPU's `func::single` computes them
/// (same operations in the same order; the CUDA math library's `expf`, `erff`, `tanhf` differ
/// from Rust's by an ulp or two).
fn prelude() -> String {
    let sqrt2 = lit(std::f32::consts::SQRT_2);
    let sqrt2pi = lit((2.0 * std::f32::consts::PI).sqrt());
    format!(
        r#"
// ---- elementwise functions (backend::cpu::func::single) ----
__device__ __forceinline__ float dg_relu(float x) {{ return fmaxf(x, 0.0f); }}
__device__ __forceinline__ float dg_gelu(float x) {{ return 0.5f * x * (1.0f + erff(x / {sqrt2})); }}
__device__ __forceinline__ float dg_tanh(float x) {{ return tanhf(x); }}
__device__ __forceinline__ float dg_exp(float x) {{ return expf(x); }}
__device__ __forceinline__ float dg_log(float x) {{ return logf(x); }}
__device__ __forceinline__ float dg_sqrt(float x) {{ return sqrtf(x); }}
__device__ __forceinline__ float dg_elu1(float x) {{ return x > 0.0f ? x + 1.0f : expf(x); }}
__device__ __forceinline__ float dg_sigmoid(float x) {{ return 1.0f / (1.0f + expf(-x)); }}
__device__ __forceinline__ float dg_recip(float x) {{ return 1.0f / x; }}
__device__ __forceinline__ float dg_relu_d(float x) {{ return x > 0.0f ? 1.0f : 0.0f; }}
__device__ __forceinline__ float dg_abs(float x) {{ return fabsf(x); }}
__device__ __forceinline__ float dg_abs_d(float x) {{ return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f); }}
__device__ __forceinline__ float dg_stop_grad(float x) {{ return x; }}
__device__ __forceinline__ float dg_stop_grad_d(float x) {{ return 0.0f; }}
__device__ __forceinline__ float dg_step(float x) {{ return x >= 0.0f ? 1.0f : 0.0f; }}
__device__ __forceinline__ float dg_step_d(float x) {{ return 0.0f; }}
__device__ __forceinline__ float dg_sin(float x) {{ return sinf(x); }}
__device__ __forceinline__ float dg_sin_d(float x) {{ return cosf(x); }}
__device__ __forceinline__ float dg_cos(float x) {{ return cosf(x); }}
__device__ __forceinline__ float dg_cos_d(float x) {{ return -sinf(x); }}
__device__ __forceinline__ float dg_max2(float a, float b) {{ return (a >= b || a != a) ? a : b; }}
__device__ __forceinline__ float dg_min2(float a, float b) {{ return (a <= b || a != a) ? a : b; }}
__device__ __forceinline__ float dg_gelu_d(float x) {{
    float cdf = 0.5f * (1.0f + erff(x / {sqrt2}));
    float pdf = expf(-0.5f * x * x) / {sqrt2pi};
    return cdf + x * pdf;
}}
__device__ __forceinline__ float dg_tanh_d(float x) {{ float t = tanhf(x); return 1.0f - t * t; }}
__device__ __forceinline__ float dg_exp_d(float x) {{ return expf(x); }}
__device__ __forceinline__ float dg_log_d(float x) {{ return 1.0f / x; }}
__device__ __forceinline__ float dg_sqrt_d(float x) {{ return 0.5f / sqrtf(x); }}
__device__ __forceinline__ float dg_elu1_d(float x) {{ return x > 0.0f ? 1.0f : expf(x); }}
__device__ __forceinline__ float dg_sigmoid_d(float x) {{ float s = 1.0f / (1.0f + expf(-x)); return s * (1.0f - s); }}
__device__ __forceinline__ float dg_recip_d(float x) {{ return -1.0f / (x * x); }}

// Sets every element of p[0..n) to v.
extern "C" __global__ void dg_fill(float* p, unsigned long long n, float v) {{
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) p[i] = v;
}}
"#
    )
}

/// `dg_NAME(x)`, and `dg_NAME_d(x)` for the derivative.
fn func(f: Func, x: &str, derivative: bool) -> String {
    format!("dg_{}{}({x})", f.name(), if derivative { "_d" } else { "" })
}

fn dims_of<const N: usize>(nest: &Nest<N>) -> Vec<(usize, Vec<usize>)> {
    nest.dims().iter().map(|d| (d.n, d.s.to_vec())).collect()
}

/// Points a nest of `dims` visits (1 for no dimensions: a scalar).
fn points(dims: &[(usize, Vec<usize>)]) -> u64 {
    dims.iter().map(|d| d.0 as u64).product()
}

/// Declares `o0..o{ops-1}` (prefixed `pre`), the operands' offsets at point `idx` of a nest.
fn offsets(out: &mut String, dims: &[(usize, Vec<usize>)], ops: usize, idx: &str, pre: &str) {
    let names: Vec<String> = (0..ops).map(|k| format!("{pre}{k}")).collect();
    let _ = writeln!(
        out,
        "    unsigned long long {pre}_r = {idx}, {};",
        names
            .iter()
            .map(|n| format!("{n} = 0"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (n, s) in dims.iter().rev() {
        let mut adds = String::new();
        for (k, st) in s.iter().enumerate().take(ops) {
            if *st != 0 {
                let _ = write!(adds, " {}{k} += d * {st}ULL;", pre);
            }
        }
        let _ = writeln!(
            out,
            "    {{ unsigned long long d = {pre}_r % {n}ULL; {pre}_r /= {n}ULL;{adds} }}"
        );
    }
    let _ = writeln!(out, "    (void){pre}_r;");
}

/// The signature `(float* p0, ..., extra)` of a step kernel with `n` buffers.
fn params(n: usize, extra: &[&str]) -> String {
    let mut v: Vec<String> = (0..n).map(|k| format!("float* p{k}")).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v.join(", ")
}

/// The opening of a one-thread-per-point kernel over `threads` points.
fn open(out: &mut String, name: &str, params: &str, threads: u64) {
    let _ = writeln!(
        out,
        "extern \"C\" __global__ void {name}({params}) {{\n    \
         unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;\n    \
         if (i >= {threads}ULL) return;"
    );
}

struct Gen {
    /// Prefixed to every step kernel's name, so that several plans share one module.
    prefix: String,
    /// Use the hand-written kernels where a step's layout is theirs.
    hand: bool,
    src: String,
    steps: Vec<Step>,
    errors: Vec<String>,
}

fn bufs(locs: &[Loc]) -> Vec<Arg> {
    locs.iter().map(|l| Arg::Buf(*l)).collect()
}

fn fill(loc: Loc, len: usize, v: f32) -> Op {
    Op::Launch(Launch {
        kernel: "dg_fill".into(),
        threads: len as u64,
        args: vec![Arg::Buf(loc), Arg::U64(len as u64), Arg::F32(v)],
    })
}

impl Gen {
    /// A new error code for `what`.
    fn error(&mut self, what: String) -> usize {
        self.errors.push(what);
        self.errors.len()
    }

    /// Generates the kernels of step `i` and returns its launches.
    /// The hand-written kernels of `kernels/` for steps whose layout is theirs (contiguous rows):
    /// cross-entropy, layer norm and the embedding, forward and backward. `None`: generate.
    fn hand(&mut self, k: &Kernel, locs: &[Loc], label: &str) -> Option<Vec<Op>> {
        let one = |dims: &[(usize, Vec<usize>)]| -> Option<(usize, Vec<usize>)> {
            match dims {
                [] => None,
                [d] => Some(d.clone()),
                _ => None,
            }
        };
        let i32_of = |x: usize| i32::try_from(x).ok();
        let hand = |file, kernel, grid: usize, block: u32, args: Vec<Arg>| {
            Op::Hand(HandLaunch {
                file,
                kernel,
                grid: grid.clamp(1, 65_535) as u32,
                block,
                args,
            })
        };
        match k {
            Kernel::CrossEntropy { back, pos, n, s } => {
                let (rows, st) = one(&dims_of(pos))?;
                let n32 = i32_of(*n)?;
                let r32 = i32_of(rows)?;
                let out = locs[locs.len() - 1];
                if s[0] != 1 || st[0] != *n || st[1] != 1 {
                    return None;
                }
                if *back {
                    if s[1] != 1 || st[2] != *n {
                        return None;
                    }
                    Some(vec![hand(
                        "cross_entropy.cu",
                        "diagc_xent_bwd",
                        rows,
                        256,
                        vec![
                            Arg::Buf(locs[0]),
                            Arg::Buf(locs[1]),
                            Arg::Buf(locs[2]),
                            Arg::Buf(out),
                            Arg::I32(r32),
                            Arg::I32(n32),
                        ],
                    )])
                } else {
                    let code = self.error(format!("{label}: a target is outside the {n} classes"));
                    Some(vec![
                        fill(out, 1, 0.0),
                        hand(
                            "cross_entropy.cu",
                            "diagc_xent_fwd",
                            rows,
                            256,
                            vec![
                                Arg::Buf(locs[0]),
                                Arg::Buf(locs[1]),
                                Arg::Buf(out),
                                Arg::Flag(code),
                                Arg::I32(r32),
                                Arg::I32(n32),
                            ],
                        ),
                    ])
                }
            }
            Kernel::LayerNorm {
                outer,
                inner,
                dense: true,
            } => {
                let n = inner[0].len();
                let (rows, st) = one(&dims_of(outer))?;
                // Operands [out, x, gain, bias]: rows of n, one gain and bias for all.
                if st != [n, n, 0, 0] || locs.len() != 4 {
                    return None;
                }
                Some(vec![hand(
                    "layernorm.cu",
                    "diagc_layernorm_fwd",
                    rows,
                    if n >= 1024 { 256 } else { 128 },
                    vec![
                        Arg::Buf(locs[0]),
                        Arg::Buf(locs[1]),
                        Arg::Buf(locs[2]),
                        Arg::Buf(locs[3]),
                        Arg::I32(i32_of(rows)?),
                        Arg::I32(i32_of(n)?),
                    ],
                )])
            }
            Kernel::LayerNormBack {
                outer,
                inner,
                lens,
                dense: true,
            } => {
                let n = inner[0].len();
                let (rows, st) = one(&dims_of(outer))?;
                // Operands [gx, x, gain, gy, ggain, gbias].
                if st != [n, n, 0, n, 0, 0] || *lens != [n, n] || locs.len() != 6 {
                    return None;
                }
                Some(vec![
                    fill(locs[4], n, 0.0),
                    fill(locs[5], n, 0.0),
                    hand(
                        "layernorm.cu",
                        "diagc_layernorm_bwd",
                        rows.min(264),
                        if n >= 1024 { 256 } else { 128 },
                        vec![
                            Arg::Buf(locs[0]),
                            Arg::Buf(locs[1]),
                            Arg::Buf(locs[2]),
                            Arg::Buf(locs[3]),
                            Arg::Buf(locs[4]),
                            Arg::Buf(locs[5]),
                            Arg::I32(i32_of(rows)?),
                            Arg::I32(i32_of(n)?),
                        ],
                    ),
                ])
            }
            Kernel::Embed {
                ids,
                row,
                vocab,
                vstride,
            } => {
                let (count, si) = one(&dims_of(ids))?;
                let (dim, sr) = one(&dims_of(row))?;
                // Ids contiguous, rows of `dim` contiguous in the output and the table.
                if si != [dim, 1] || sr != [1, 1] || *vstride != dim {
                    return None;
                }
                let code = self.id_error(label, *vocab);
                Some(vec![hand(
                    "embedding.cu",
                    "diagc_embed_fwd",
                    (count * dim).div_ceil(256),
                    256,
                    vec![
                        Arg::Buf(locs[0]),
                        Arg::Buf(locs[1]),
                        Arg::Buf(locs[2]),
                        Arg::Flag(code),
                        Arg::I32(i32_of(count)?),
                        Arg::I32(i32_of(dim)?),
                        Arg::I32(i32_of(*vocab)?),
                    ],
                )])
            }
            Kernel::EmbedBack {
                ids,
                row,
                vocab,
                vstride,
                len,
            } => {
                let (count, si) = one(&dims_of(ids))?;
                let (dim, sr) = one(&dims_of(row))?;
                // Ids operands [gy, ids], rows [gtable, gy].
                if si != [dim, 1] || sr != [1, 1] || *vstride != dim || *len != vocab * dim {
                    return None;
                }
                // Invalid ids are skipped by the kernel; the forward reported them.
                Some(vec![
                    fill(locs[2], *len, 0.0),
                    hand(
                        "embedding.cu",
                        "diagc_embed_bwd",
                        (count * dim).div_ceil(256),
                        256,
                        vec![
                            Arg::Buf(locs[0]),
                            Arg::Buf(locs[1]),
                            Arg::Buf(locs[2]),
                            Arg::I32(i32_of(count)?),
                            Arg::I32(i32_of(dim)?),
                            Arg::I32(i32_of(*vocab)?),
                        ],
                    ),
                ])
            }
            Kernel::Attention(a) => flash(a, locs).or_else(|| linear(a, locs)),
            _ => None,
        }
    }

    /// The error code of a bad id in the embedding of step `label`.
    fn id_error(&mut self, label: &str, vocab: usize) -> usize {
        self.error(format!(
            "{label}: an id is not a whole number in 0..{vocab} (the table's rows)"
        ))
    }

    /// Opens a one-thread-per-(id, row element) kernel, the embedding's and its gradient's:
    /// offsets `a*` over `ids` (the id at `p0[a1]`), `r*` over `row`, then the id check, which
    /// records the error code, runs `on_bad` and returns. Returns the threads to launch.
    fn open_by_id(
        &mut self,
        name: &str,
        ids: &Nest<2>,
        row: &Nest<2>,
        vocab: usize,
        label: &str,
        on_bad: &str,
    ) -> u64 {
        let code = self.id_error(label, vocab);
        let s = &mut self.src;
        let (idims, rdims) = (dims_of(ids), dims_of(row));
        let per = points(&rdims);
        let n = points(&idims) * per;
        open(s, name, &params(3, &["int* err"]), n);
        let _ = writeln!(
            s,
            "    unsigned long long ii = i / {per}ULL, ri = i % {per}ULL;"
        );
        offsets(s, &idims, 2, "ii", "a");
        offsets(s, &rdims, 2, "ri", "r");
        let _ = writeln!(
            s,
            "    float id = p0[a1];\n    \
             if (!(id >= 0.0f && id < {vocab}.0f && id == floorf(id))) {{ atomicCAS(err, 0, {code}); {on_bad}return; }}"
        );
        n
    }

    fn step(&mut self, i: usize, k: &Kernel, locs: &[Loc], label: &str) -> Vec<Op> {
        if self.hand
            && let Some(ops) = self.hand(k, locs, label)
        {
            let _ = writeln!(
                self.src,
                "\n// {}step {i}: {} ({label}): hand-written kernel",
                self.prefix,
                k.name()
            );
            return ops;
        }
        let name = format!("{}s{i}_{}", self.prefix, k.name().replace('-', "_"));
        let s = &mut self.src;
        let _ = writeln!(s, "\n// {}step {i}: {} ({label})", self.prefix, k.name());
        let launch = |threads: u64, args: Vec<Arg>| {
            Op::Launch(Launch {
                kernel: name.clone(),
                threads,
                args,
            })
        };
        match k {
            Kernel::Copy(nest) | Kernel::Unary(_, nest) | Kernel::Dropout { nest, .. } => {
                let dims = dims_of(nest);
                let n = points(&dims);
                if nest.is_empty() {
                    return vec![];
                }
                let dropout = matches!(k, Kernel::Dropout { .. });
                let extra: &[&str] = if dropout {
                    &["const unsigned long long* seedp", "const int* trainp"]
                } else {
                    &[]
                };
                open(s, &name, &params(2, extra), n);
                if dropout {
                    let _ = writeln!(s, "{SEED_LOADS}");
                }
                offsets(s, &dims, 2, "i", "o");
                let x = "p0[o1]";
                let body = match k {
                    Kernel::Copy(_) => x.to_string(),
                    Kernel::Unary(Unary::Scale(c), _) => format!("{x} * {}", lit(*c)),
                    Kernel::Unary(Unary::Shift(c), _) => format!("{x} + {}", lit(*c)),
                    Kernel::Unary(Unary::Pow(c), _) => format!("powf({x}, {})", lit(*c)),
                    Kernel::Unary(Unary::Map(f), _) => func(*f, x, false),
                    Kernel::Dropout { p, key, .. } => {
                        if *p == 0.0 {
                            x.to_string()
                        } else {
                            format!(
                                "train ? (diagc_keep(seed, {key}ULL, o0, {}ULL) ? {x} * {} : 0.0f) : {x}",
                                keep_threshold(*p),
                                lit((1.0 / (1.0 - p)) as f32)
                            )
                        }
                    }
                    _ => unreachable!("matched above"),
                };
                let _ = writeln!(s, "    p1[o0] = {body};\n}}");
                let mut args = bufs(locs);
                if dropout {
                    args.extend([Arg::Seed, Arg::Train]);
                }
                vec![launch(n, args)]
            }
            Kernel::Fill { value, len } => vec![fill(locs[0], *len, *value)],
            Kernel::Binary(op, nest) => {
                if nest.is_empty() {
                    return vec![];
                }
                let dims = dims_of(nest);
                let n = points(&dims);
                open(s, &name, &params(3, &[]), n);
                offsets(s, &dims, 3, "i", "o");
                let (a, b) = ("p0[o1]", "p1[o2]");
                let body = match op {
                    Binary::Add => format!("{a} + {b}"),
                    Binary::Sub => format!("{a} - {b}"),
                    Binary::Mul => format!("{a} * {b}"),
                    Binary::Div => format!("{a} / {b}"),
                    Binary::Max => format!("dg_max2({a}, {b})"),
                    Binary::Min => format!("dg_min2({a}, {b})"),
                    Binary::MapBack(Func::Relu) => format!("{a} > 0.0f ? {b} : 0.0f"),
                    Binary::MapBack(f) => format!("{b} * {}", func(*f, a, true)),
                };
                let _ = writeln!(s, "    p2[o0] = {body};\n}}");
                vec![launch(n, bufs(locs))]
            }
            Kernel::Fused(f) => {
                let prog = &f.program;
                let nest = f.nest();
                let ops = f.arity();
                let dims: Vec<(usize, Vec<usize>)> =
                    nest.dims().iter().map(|d| (d.n, d.s.clone())).collect();
                let n = points(&dims);
                if nest.is_empty() {
                    return vec![];
                }
                let dropout = prog
                    .insts
                    .iter()
                    .any(|i| matches!(i, Inst::Dropout { p, .. } if *p != 0.0));
                let extra: &[&str] = if dropout {
                    &["const unsigned long long* seedp", "const int* trainp"]
                } else {
                    &[]
                };
                let _ = writeln!(s, "// {}", prog.describe());
                open(s, &name, &params(ops, extra), n);
                if dropout {
                    let _ = writeln!(s, "{SEED_LOADS}");
                }
                // The last operand of the nest is the element index dropout hashes.
                offsets(s, &dims, ops + 1, "i", "o");
                for (j, inst) in prog.insts.iter().enumerate() {
                    let e = match *inst {
                        Inst::Load(k) => format!("p{k}[o{k}]"),
                        Inst::Scale(x, c) => format!("v{x} * {}", lit(c)),
                        Inst::Shift(x, c) => format!("v{x} + {}", lit(c)),
                        Inst::Map(fu, x) => func(fu, &format!("v{x}"), false),
                        Inst::Add(a, b) => format!("v{a} + v{b}"),
                        Inst::Sub(a, b) => format!("v{a} - v{b}"),
                        Inst::Mul(a, b) => format!("v{a} * v{b}"),
                        Inst::Div(a, b) => format!("v{a} / v{b}"),
                        Inst::Max(a, b) => format!("dg_max2(v{a}, v{b})"),
                        Inst::Min(a, b) => format!("dg_min2(v{a}, v{b})"),
                        Inst::MapBack(Func::Relu, x, g) => format!("v{x} > 0.0f ? v{g} : 0.0f"),
                        Inst::MapBack(fu, x, g) => {
                            format!("v{g} * {}", func(fu, &format!("v{x}"), true))
                        }
                        Inst::Dropout { p, key, x } => {
                            if p == 0.0 {
                                format!("v{x}")
                            } else {
                                format!(
                                    "train ? (diagc_keep(seed, {key}ULL, o{ops}, {}ULL) ? v{x} * {} : 0.0f) : v{x}",
                                    keep_threshold(p),
                                    lit((1.0 / (1.0 - p)) as f32)
                                )
                            }
                        }
                    };
                    let _ = writeln!(s, "    float v{j} = {e};");
                }
                for (j, v) in prog.stores.iter().enumerate() {
                    let k = prog.inputs + j;
                    let _ = writeln!(s, "    p{k}[o{k}] = v{v};");
                }
                let _ = writeln!(s, "}}");
                let mut args = bufs(locs);
                if dropout {
                    args.extend([Arg::Seed, Arg::Train]);
                }
                vec![launch(n, args)]
            }
            Kernel::Causal {
                value,
                band,
                copy,
                nq,
                nk,
                sq,
                sk,
                rest,
            } => {
                let mut ops = Vec::new();
                if !copy.is_empty() {
                    let dims = dims_of(copy);
                    let n = points(&dims);
                    open(s, &format!("{name}_copy"), &params(2, &[]), n);
                    offsets(s, &dims, 2, "i", "o");
                    let _ = writeln!(s, "    p1[o0] = p0[o1];\n}}");
                    ops.push(Op::Launch(Launch {
                        kernel: format!("{name}_copy"),
                        threads: n,
                        args: bufs(locs),
                    }));
                }
                if !rest.is_empty() && *nq > 0 && *nk > 0 {
                    // Points (rest, q, k); those where q does not see k get `value`.
                    let mut dims = dims_of(rest);
                    dims.push((*nq, vec![*sq]));
                    dims.push((*nk, vec![*sk]));
                    let n = points(&dims);
                    open(s, &format!("{name}_mask"), &params(1, &[]), n);
                    // Seen: k + lag <= q and, with a window w, q - k < w.
                    let lag = band.lag;
                    let within = match band.window {
                        None => String::new(),
                        Some(w) => format!(" && q - k < {w}ULL"),
                    };
                    let _ = writeln!(
                        s,
                        "    unsigned long long k = i % {nk}ULL, q = (i / {nk}ULL) % {nq}ULL;\n    \
                         if (k + {lag}ULL <= q{within}) return;"
                    );
                    offsets(s, &dims, 1, "i", "o");
                    let _ = writeln!(s, "    p0[o0] = {};\n}}", lit(*value));
                    ops.push(Op::Launch(Launch {
                        kernel: format!("{name}_mask"),
                        threads: n,
                        args: vec![Arg::Buf(locs[1])],
                    }));
                }
                ops
            }
            Kernel::Reduce { nest, len } => {
                let mut ops = vec![fill(locs[1], *len, 0.0)];
                if !nest.is_empty() {
                    let dims = dims_of(nest);
                    let n = points(&dims);
                    open(s, &name, &params(2, &[]), n);
                    offsets(s, &dims, 2, "i", "o");
                    let _ = writeln!(s, "    atomicAdd(&p1[o0], p0[o1]);\n}}");
                    ops.push(launch(n, bufs(locs)));
                }
                ops
            }
            Kernel::MatScan {
                back,
                outer,
                n,
                r,
                s: st,
                col,
            } => {
                // One thread per state (a point of `outer`), sequential along the scan, as the
                // CPU executor computes it.
                if outer.is_empty() {
                    return vec![];
                }
                let dims = dims_of(outer);
                let lanes = points(&dims);
                open(s, &name, &params(3, &[]), lanes);
                offsets(s, &dims, 3, "i", "o");
                let _ = writeln!(
                    s,
                    "    float* po = p2 + o0; const float* pa = p0 + o1; const float* pb = p1 + o2;"
                );
                let ([y0, y1], [a0, a1], [b0, b1]) = (st[0], st[1], st[2]);
                let body = if *back {
                    format!(
                        "    for (long t = {n} - 1; t >= 0; t--) for (long c = 0; c < {r}; c++) {{
                                 float v = pa[t * {a0} + c * {a1}];
                                 if (t + 1 < {n}) for (long i = 0; i < {r}; i++) v += pb[(t + 1) * {b0} + i * {b1} + c * {col}] * po[(t + 1) * {y0} + i * {y1}];
                                 po[t * {y0} + c * {y1}] = v;
    }}"
                    )
                } else {
                    format!(
                        "    for (long t = 0; t < {n}; t++) for (long i = 0; i < {r}; i++) {{
                                 float v = pb[t * {b0} + i * {b1}];
                                 if (t > 0) for (long c = 0; c < {r}; c++) v += pa[t * {a0} + i * {a1} + c * {col}] * po[(t - 1) * {y0} + c * {y1}];
                                 po[t * {y0} + i * {y1}] = v;
    }}"
                    )
                };
                let _ = writeln!(s, "{body}\n}}");
                vec![launch(lanes, bufs(locs))]
            }
            Kernel::Lane {
                op,
                outer,
                n,
                s: st,
            } => {
                if outer.is_empty() {
                    return vec![];
                }
                let dims = dims_of(outer);
                let lanes = points(&dims);
                let two = locs.len() == 3;
                open(s, &name, &params(locs.len(), &[]), lanes);
                offsets(s, &dims, 3, "i", "o");
                let (out, b) = if two { ("p2", "p1") } else { ("p1", "p0") };
                let _ = writeln!(
                    s,
                    "    float* po = {out} + o0; const float* pa = p0 + o1; const float* pb = {b} + o2; (void)pb;"
                );
                let (s0, s1, s2) = (st[0], st[1], st[2]);
                let body = match op {
                    LaneOp::Softmax => format!(
                        "    float m = __int_as_float(0xff800000);\n    \
                         for (int j = 0; j < {n}; j++) m = fmaxf(m, pa[j * {s1}]);\n    \
                         if (isinf(m) || isnan(m)) m = 0.0f;\n    \
                         float total = 0.0f;\n    \
                         for (int j = 0; j < {n}; j++) {{ float e = expf(pa[j * {s1}] - m); po[j * {s0}] = e; total += e; }}\n    \
                         for (int j = 0; j < {n}; j++) po[j * {s0}] /= total;"
                    ),
                    LaneOp::Normalise => format!(
                        "    float total = 0.0f;\n    \
                         for (int j = 0; j < {n}; j++) total += pa[j * {s1}];\n    \
                         for (int j = 0; j < {n}; j++) po[j * {s0}] = pa[j * {s1}] / total;"
                    ),
                    LaneOp::SoftmaxBack => format!(
                        "    float dot = 0.0f;\n    \
                         for (int j = 0; j < {n}; j++) dot += pa[j * {s1}] * pb[j * {s2}];\n    \
                         for (int j = 0; j < {n}; j++) {{ float y = pa[j * {s1}], g = pb[j * {s2}]; po[j * {s0}] = y * (g - dot); }}"
                    ),
                    // Every value is read before its position is written (in place is safe).
                    LaneOp::Scan => format!(
                        "    float acc = 0.0f;\n    \
                         for (int j = 0; j < {n}; j++) {{ float g = pa[j * {s1}], x = pb[j * {s2}]; acc = j == 0 ? x : g * acc + x; po[j * {s0}] = acc; }}"
                    ),
                    LaneOp::ScanBack => format!(
                        "    float acc = 0.0f, gate = 0.0f;\n    \
                         for (int j = {n} - 1; j >= 0; j--) {{ float gy = pa[j * {s1}], g = pb[j * {s2}]; acc = gy + gate * acc; po[j * {s0}] = acc; gate = g; }}"
                    ),
                    LaneOp::RotateHalf => format!(
                        "    for (int j = 0; j < {n} / 2; j++) {{ float a = pa[j * {s1}], b = pa[(j + {n} / 2) * {s1}]; po[j * {s0}] = -b; po[(j + {n} / 2) * {s0}] = a; }}"
                    ),
                    LaneOp::Lag => format!(
                        "    for (int j = {n} - 1; j >= 0; j--) po[j * {s0}] = j == 0 ? 0.0f : pa[(j - 1) * {s1}];"
                    ),
                    // max/min: the fold of max2/min2 (the earlier entry on ties and where it is
                    // NaN); logsumexp shifted by the largest finite entry.
                    LaneOp::Reduce(r) | LaneOp::ReduceBack(r) => {
                        let back = matches!(op, LaneOp::ReduceBack(_));
                        let keep = match r {
                            Reduction::Max => Some("l >= r"),
                            Reduction::Min => Some("l <= r"),
                            Reduction::LogSumExp => None,
                        };
                        match (keep, back) {
                            (Some(keep), false) => format!(
                                "    int c = 0;\n    \
                                 for (int j = 1; j < {n}; j++) {{ float l = pa[c * {s1}], r = pa[j * {s1}]; if (!(l != l || {keep})) c = j; }}\n    \
                                 po[0] = pa[c * {s1}];"
                            ),
                            (Some(keep), true) => format!(
                                "    int c = 0;\n    \
                                 for (int j = 1; j < {n}; j++) {{ float l = pa[c * {s1}], r = pa[j * {s1}]; if (!(l != l || {keep})) c = j; }}\n    \
                                 for (int j = 0; j < {n}; j++) po[j * {s0}] = j == c ? pb[0] : 0.0f;"
                            ),
                            (None, back) => {
                                let tail = if back {
                                    format!(
                                        "for (int j = 0; j < {n}; j++) po[j * {s0}] = pb[0] * expf(pa[j * {s1}] - m) / total;"
                                    )
                                } else {
                                    "po[0] = m + logf(total);".to_string()
                                };
                                format!(
                                    "    float m = __int_as_float(0xff800000);\n    \
                                     for (int j = 0; j < {n}; j++) m = fmaxf(m, pa[j * {s1}]);\n    \
                                     if (isinf(m) || isnan(m)) m = 0.0f;\n    \
                                     float total = 0.0f;\n    \
                                     for (int j = 0; j < {n}; j++) total += expf(pa[j * {s1}] - m);\n    \
                                     {tail}"
                                )
                            }
                        }
                    }
                    LaneOp::NormaliseBack => format!(
                        "    float total = 0.0f, dot = 0.0f;\n    \
                         for (int j = 0; j < {n}; j++) total += pa[j * {s1}];\n    \
                         for (int j = 0; j < {n}; j++) dot += pb[j * {s2}] * (pa[j * {s1}] / total);\n    \
                         for (int j = 0; j < {n}; j++) po[j * {s0}] = (pb[j * {s2}] - dot) / total;"
                    ),
                };
                let _ = writeln!(s, "{body}\n}}");
                vec![launch(lanes, bufs(locs))]
            }
            Kernel::Cumsum {
                reverse,
                slab,
                n,
                s: st,
            } => {
                if slab.is_empty() || *n == 0 {
                    return vec![];
                }
                let dims = dims_of(slab);
                let cols = points(&dims);
                open(s, &name, &params(2, &[]), cols);
                offsets(s, &dims, 2, "i", "o");
                let (s0, s1) = (st[0], st[1]);
                let (pos, prev) = if *reverse {
                    (format!("({n} - 1 - t)"), format!("+ {s0}"))
                } else {
                    ("t".to_string(), format!("- {s0}"))
                };
                let _ = writeln!(
                    s,
                    "    for (unsigned long long t = 0; t < {n}ULL; t++) {{\n        \
                     unsigned long long at = o0 + {pos} * {s0}ULL;\n        \
                     float v = p0[o1 + {pos} * {s1}ULL];\n        \
                     p1[at] = t == 0 ? v : v + p1[at {prev}];\n    }}\n}}"
                );
                vec![launch(cols, bufs(locs))]
            }
            Kernel::LayerNorm {
                outer,
                inner,
                dense,
            } => {
                if outer.is_empty() {
                    return vec![];
                }
                // Pointers [x, gain, bias, out]; operands [out, x, gain, bias].
                let dims = dims_of(outer);
                let lanes = points(&dims);
                let n = inner[0].len();
                let t = tables(s, &name, inner, *dense);
                open(s, &name, &params(4, &[]), lanes);
                offsets(s, &dims, 4, "i", "o");
                let _ = writeln!(
                    s,
                    "    float mean = 0.0f, var = 0.0f;\n    \
                     for (int j = 0; j < {n}; j++) mean += p0[o1 + {x}];\n    \
                     mean /= {cnt};\n    \
                     for (int j = 0; j < {n}; j++) {{ float c = p0[o1 + {x}] - mean; var += c * c; }}\n    \
                     var /= {cnt};\n    \
                     float inv = 1.0f / sqrtf(var + {eps});\n    \
                     for (int j = 0; j < {n}; j++) {{\n        \
                     float xhat = (p0[o1 + {x}] - mean) * inv;\n        \
                     p3[o0 + {o}] = xhat * p1[o2 + {g}] + p2[o3 + {b}];\n    }}\n}}",
                    o = t[0],
                    x = t[1],
                    g = t[2],
                    b = t[3],
                    cnt = lit(n as f32),
                    eps = lit(LN_EPS),
                );
                vec![launch(lanes, bufs(locs))]
            }
            Kernel::LayerNormBack {
                outer,
                inner,
                lens,
                dense,
            } => {
                // Pointers [x, gain, gy, gx, ggain, gbias]; operands [gx, x, gain, gy, ggain,
                // gbias].
                let mut ops = vec![fill(locs[4], lens[0], 0.0), fill(locs[5], lens[1], 0.0)];
                if outer.is_empty() {
                    return ops;
                }
                let dims = dims_of(outer);
                let lanes = points(&dims);
                let n = inner[0].len();
                let t = tables(s, &name, inner, *dense);
                open(s, &name, &params(6, &[]), lanes);
                offsets(s, &dims, 6, "i", "o");
                let _ = writeln!(
                    s,
                    "    float mean = 0.0f, var = 0.0f, m1 = 0.0f, m2 = 0.0f;\n    \
                     for (int j = 0; j < {n}; j++) mean += p0[o1 + {x}];\n    \
                     mean /= {cnt};\n    \
                     for (int j = 0; j < {n}; j++) {{ float c = p0[o1 + {x}] - mean; var += c * c; }}\n    \
                     var /= {cnt};\n    \
                     float inv = 1.0f / sqrtf(var + {eps});\n    \
                     for (int j = 0; j < {n}; j++) {{\n        \
                     float gyg = p2[o3 + {gy}] * p1[o2 + {g}];\n        \
                     m1 += gyg; m2 += gyg * ((p0[o1 + {x}] - mean) * inv);\n    }}\n    \
                     m1 /= {cnt}; m2 /= {cnt};\n    \
                     for (int j = 0; j < {n}; j++) {{\n        \
                     float xhat = (p0[o1 + {x}] - mean) * inv;\n        \
                     atomicAdd(&p4[o4 + {gg}], p2[o3 + {gy}] * xhat);\n        \
                     atomicAdd(&p5[o5 + {gb}], p2[o3 + {gy}]);\n    }}\n    \
                     // gx may be x's or gy's buffer: every read of the lane is above.\n    \
                     for (int j = 0; j < {n}; j++) {{\n        \
                     float xhat = (p0[o1 + {x}] - mean) * inv;\n        \
                     p3[o0 + {gx}] = inv * (p2[o3 + {gy}] * p1[o2 + {g}] - m1 - xhat * m2);\n    }}\n}}",
                    gx = t[0],
                    x = t[1],
                    g = t[2],
                    gy = t[3],
                    gg = t[4],
                    gb = t[5],
                    cnt = lit(n as f32),
                    eps = lit(LN_EPS),
                );
                ops.push(launch(lanes, bufs(locs)));
                ops
            }
            Kernel::Gemm(g) => {
                let accumulate = g.bias.is_some();
                let mut ops = Vec::new();
                let c = locs[locs.len() - 1];
                if let Some(bias) = &g.bias
                    && !bias.is_empty()
                {
                    let dims = dims_of(bias);
                    let n = points(&dims);
                    open(s, &format!("{name}_bias"), &params(2, &[]), n);
                    offsets(s, &dims, 2, "i", "o");
                    let _ = writeln!(s, "    p1[o0] = p0[o1];\n}}");
                    ops.push(Op::Launch(Launch {
                        kernel: format!("{name}_bias"),
                        threads: n,
                        args: vec![Arg::Buf(locs[2]), Arg::Buf(c)],
                    }));
                }
                // The fallback: one thread per element of C, a dot product of length k.
                let bdims = dims_of(&g.batch);
                let n = points(&bdims) * (g.m * g.n) as u64;
                let _ = writeln!(
                    s,
                    "// C[{m}x{nn}] {op} A[{m}x{k}] B[{k}x{nn}], batch {b}; A strides {a:?}, B {bs:?}, C {cs:?}",
                    m = g.m,
                    nn = g.n,
                    k = g.k,
                    op = if accumulate { "+=" } else { "=" },
                    b = g.batch.len(),
                    a = g.a,
                    bs = g.b,
                    cs = g.c
                );
                open(s, &name, "const float* a, const float* b, float* c", n);
                let _ = writeln!(
                    s,
                    "    long long col = (long long)(i % {nn}ULL), row = (long long)((i / {nn}ULL) % {m}ULL);\n    \
                     unsigned long long bi = i / {mn}ULL;",
                    nn = g.n,
                    m = g.m,
                    mn = g.m * g.n
                );
                offsets(s, &bdims, 3, "bi", "o");
                let _ = writeln!(
                    s,
                    "    float acc = 0.0f;\n    \
                     for (long long kk = 0; kk < {k}; kk++)\n        \
                     acc += a[o1 + row * {a0}LL + kk * {a1}LL] * b[o2 + kk * {b0}LL + col * {b1}LL];\n    \
                     float* pc = c + o0 + row * {c0}LL + col * {c1}LL;\n    \
                     *pc = {acc};\n}}",
                    k = g.k,
                    a0 = g.a[0],
                    a1 = g.a[1],
                    b0 = g.b[0],
                    b1 = g.b[1],
                    c0 = g.c[0],
                    c1 = g.c[1],
                    acc = if accumulate { "*pc + acc" } else { "acc" }
                );
                ops.push(Op::Gemm {
                    call: GemmCall {
                        gemm: g.clone(),
                        a: locs[0],
                        b: locs[1],
                        c,
                        accumulate,
                    },
                    fallback: Launch {
                        kernel: name.clone(),
                        threads: n,
                        args: vec![Arg::Buf(locs[0]), Arg::Buf(locs[1]), Arg::Buf(c)],
                    },
                });
                ops
            }
            Kernel::Embed {
                ids,
                row,
                vocab,
                vstride,
            } => {
                if ids.is_empty() || row.is_empty() {
                    return vec![];
                }
                // Pointers [ids, table, out]; `ids` operands [out, ids], `row` [out, table].
                let n = self.open_by_id(&name, ids, row, *vocab, label, "p2[a0 + r0] = 0.0f; ");
                let _ = writeln!(
                    self.src,
                    "    p2[a0 + r0] = p1[(unsigned long long)id * {vstride}ULL + r1];\n}}"
                );
                let mut args = bufs(locs);
                args.push(Arg::Err);
                vec![launch(n, args)]
            }
            Kernel::EmbedBack {
                ids,
                row,
                vocab,
                vstride,
                len,
            } => {
                let mut ops = vec![fill(locs[2], *len, 0.0)];
                if ids.is_empty() || row.is_empty() {
                    return ops;
                }
                // Pointers [ids, gy, gtable]; `ids` operands [gy, ids], `row` [gtable, gy].
                let n = self.open_by_id(&name, ids, row, *vocab, label, "");
                let _ = writeln!(
                    self.src,
                    "    atomicAdd(&p2[(unsigned long long)id * {vstride}ULL + r0], p1[a0 + r1]);\n}}"
                );
                let mut args = bufs(locs);
                args.push(Arg::Err);
                ops.push(launch(n, args));
                ops
            }
            Kernel::CrossEntropy {
                back,
                pos,
                n,
                s: st,
            } => {
                let out = locs[locs.len() - 1];
                let mut ops = Vec::new();
                if !back {
                    ops.push(fill(out, 1, 0.0));
                }
                if pos.is_empty() || *n == 0 {
                    return ops;
                }
                let code = self.error(format!("{label}: a target is outside the {n} classes"));
                let s = &mut self.src;
                let dims = dims_of(pos);
                let rows = points(&dims);
                let np = if *back { 4 } else { 3 };
                open(s, &name, &params(np, &["int* err"]), rows);
                offsets(s, &dims, 3, "i", "o");
                let (s0, s1) = (st[0], st[1]);
                let _ = writeln!(
                    s,
                    "    float t = p1[o1];\n    \
                     if (!(t >= 0.0f && t < {n}.0f)) {{ atomicCAS(err, 0, {code}); return; }}\n    \
                     unsigned long long ti = (unsigned long long)t; // truncated, as on the CPU\n    \
                     const float* l = p0 + o0;\n    \
                     float m = __int_as_float(0xff800000);\n    \
                     for (unsigned long long j = 0; j < {n}ULL; j++) m = fmaxf(m, l[j * {s0}ULL]);\n    \
                     float z = 0.0f;\n    \
                     for (unsigned long long j = 0; j < {n}ULL; j++) z += expf(l[j * {s0}ULL] - m);"
                );
                if *back {
                    let _ = writeln!(
                        s,
                        "    float gy = p2[0];\n    \
                         float k = gy / z;\n    \
                         float* po = p3 + o2;\n    \
                         for (unsigned long long j = 0; j < {n}ULL; j++) po[j * {s1}ULL] = k * expf(l[j * {s0}ULL] - m);\n    \
                         po[ti * {s1}ULL] -= gy;\n}}"
                    );
                } else {
                    let _ = writeln!(s, "    atomicAdd(p2, m + logf(z) - l[ti * {s0}ULL]);\n}}");
                }
                let mut args = bufs(locs);
                args.push(Arg::Err);
                ops.push(launch(rows, args));
                ops
            }
            Kernel::Attention(a) => {
                let lanes = dims_of(&a.lanes);
                let count = points(&lanes) * a.t as u64;
                if count == 0 {
                    return vec![];
                }
                let (t, d, e) = (a.t, a.d, a.e);
                let (st, sf) = (a.st, a.sf);
                let ops = a.arity();
                // Element (i, f) of operand k in its lane: pk[ok + i * st + f * sf].
                let el = |k: usize, i: &str, f: &str| {
                    format!("p{k}[o{k} + {i} * {}ULL + {f} * {}ULL]", st[k], sf[k])
                };
                // sc = q_i . k_j, as the CPU sums it.
                let dot = format!(
                    "float sc = 0.0f; for (int f = 0; f < {d}; f++) sc += {} * {};",
                    el(0, "qi", "f"),
                    el(1, "kj", "f")
                );
                let kernel = |s: &mut String, kname: &str, pos: &str, body: String| {
                    open(s, kname, &params(ops, &[]), count);
                    let _ = writeln!(s, "    int {pos} = (int)(i % {t}ULL);");
                    offsets(s, &lanes, ops, &format!("(i / {t}ULL)"), "o");
                    let _ = writeln!(s, "{body}}}");
                    Op::Launch(Launch {
                        kernel: kname.to_string(),
                        threads: count,
                        args: bufs(locs),
                    })
                };
                let scale = match a.form {
                    Form::Softmax { scale } => lit(scale),
                    Form::Linear { eps } => {
                        return linear_kernels(a, s, &name, lit(eps), &dot, &el, &kernel);
                    }
                };
                // The scaled score.
                let score = format!("{dot} sc *= {scale};");
                if !a.back {
                    // One thread per (lane, query): the maximum, then the weights and the sum.
                    let body = format!(
                        "    float m = __int_as_float(0xff800000);\n    \
                         for (int kj = 0; kj <= qi; kj++) {{ {score} m = fmaxf(m, sc); }}\n    \
                         float acc[{e}];\n    \
                         for (int f = 0; f < {e}; f++) acc[f] = 0.0f;\n    \
                         float l = 0.0f;\n    \
                         for (int kj = 0; kj <= qi; kj++) {{\n        \
                         {score}\n        \
                         float w = expf(sc - m); l += w;\n        \
                         for (int f = 0; f < {e}; f++) acc[f] += w * {v};\n    }}\n    \
                         for (int f = 0; f < {e}; f++) {o} = acc[f] / l;\n    \
                         p4[o4 + qi * {lst}ULL] = m + logf(l);\n",
                        v = el(2, "kj", "f"),
                        o = el(3, "qi", "f"),
                        lst = st[4],
                    );
                    return vec![kernel(s, &name, "qi", body)];
                }
                // Backward: p_ij recomputed from lse, D_i = go_i . o_i, ds_ij = p_ij (go_i .
                // v_j - D_i). One kernel per query for gq, one per key for gk and gv: each
                // thread owns its output rows, so nothing is accumulated across threads.
                let prob = format!(
                    "{score} float p = expf(sc - p4[o4 + qi * {}ULL]);\n        \
                     float dp = 0.0f; for (int f = 0; f < {e}; f++) dp += {} * {};\n        \
                     float di = 0.0f; for (int f = 0; f < {e}; f++) di += {} * {};\n        \
                     float ds = p * (dp - di) * {scale};",
                    st[4],
                    el(5, "qi", "f"),
                    el(2, "kj", "f"),
                    el(5, "qi", "f"),
                    el(3, "qi", "f"),
                );
                let dq = format!(
                    "    float acc[{d}];\n    \
                     for (int f = 0; f < {d}; f++) acc[f] = 0.0f;\n    \
                     for (int kj = 0; kj <= qi; kj++) {{\n        \
                     {prob}\n        \
                     for (int f = 0; f < {d}; f++) acc[f] += ds * {k};\n    }}\n    \
                     for (int f = 0; f < {d}; f++) {gq} = acc[f];\n",
                    k = el(1, "kj", "f"),
                    gq = el(6, "qi", "f"),
                );
                let dkdv = format!(
                    "    float ak[{d}], av[{e}];\n    \
                     for (int f = 0; f < {d}; f++) ak[f] = 0.0f;\n    \
                     for (int f = 0; f < {e}; f++) av[f] = 0.0f;\n    \
                     for (int qi = kj; qi < {t}; qi++) {{\n        \
                     {prob}\n        \
                     for (int f = 0; f < {d}; f++) ak[f] += ds * {q};\n        \
                     for (int f = 0; f < {e}; f++) av[f] += p * {go};\n    }}\n    \
                     for (int f = 0; f < {d}; f++) {gk} = ak[f];\n    \
                     for (int f = 0; f < {e}; f++) {gv} = av[f];\n",
                    q = el(0, "qi", "f"),
                    go = el(5, "qi", "f"),
                    gk = el(7, "kj", "f"),
                    gv = el(8, "kj", "f"),
                );
                vec![
                    kernel(s, &format!("{name}_dq"), "qi", dq),
                    kernel(s, &format!("{name}_dkdv"), "kj", dkdv),
                ]
            }
        }
    }
}

/// The generated kernels of a fused linear attention step (M0), in the quadratic form: one
/// thread per (lane, query) for the output (and `dqf`), one per (lane, key) for `dkf` and
/// `dv`, each summing over the positions it sees (`a_ij = qf_i . kf_j`, `j <= i`):
///   `den_i = sum_j a_ij + eps`, `out_i = sum_j a_ij v_j / den_i`;
///   with `dn_i = go_i / den_i`, `dden_i = -(go_i . out_i) / den_i`, `b_ij = v_j . dn_i + dden_i`:
///   `dqf_i = sum_j b_ij kf_j`, `dkf_j = sum_i b_ij qf_i`, `dv_j = sum_i a_ij dn_i`.
/// The CPU scans a running state instead: the same sums in another order.
fn linear_kernels(
    a: &Attn,
    s: &mut String,
    name: &str,
    eps: String,
    dot: &str,
    el: &dyn Fn(usize, &str, &str) -> String,
    kernel: &dyn Fn(&mut String, &str, &str, String) -> Op,
) -> Vec<Op> {
    let (t, d, e) = (a.t, a.d, a.e);
    let den = |i: &str| format!("p4[o4 + {i} * {}ULL]", a.st[4]);
    if !a.back {
        let body = format!(
            "    float acc[{e}];\n    \
             for (int c = 0; c < {e}; c++) acc[c] = 0.0f;\n    \
             float dn = 0.0f;\n    \
             for (int kj = 0; kj <= qi; kj++) {{\n        \
             {dot} dn += sc;\n        \
             for (int c = 0; c < {e}; c++) acc[c] += sc * {v};\n    }}\n    \
             dn += {eps};\n    \
             for (int c = 0; c < {e}; c++) {o} = acc[c] / dn;\n    \
             {den} = dn;\n",
            v = el(2, "kj", "c"),
            o = el(3, "qi", "c"),
            den = den("qi"),
        );
        return vec![kernel(s, name, "qi", body)];
    }
    // dden_i and b_ij, for the query qi and key kj in scope.
    let dden = format!(
        "float di = {den}; float dd = 0.0f;\n        \
         for (int c = 0; c < {e}; c++) dd += {go} * {o};\n        \
         dd = -dd / di;",
        den = den("qi"),
        go = el(5, "qi", "c"),
        o = el(3, "qi", "c"),
    );
    let b = format!(
        "float b = 0.0f; for (int c = 0; c < {e}; c++) b += {v} * ({go} / di); b += dd;",
        v = el(2, "kj", "c"),
        go = el(5, "qi", "c"),
    );
    let dq = format!(
        "    float acc[{d}];\n    \
         for (int f = 0; f < {d}; f++) acc[f] = 0.0f;\n    \
         {dden}\n    \
         for (int kj = 0; kj <= qi; kj++) {{\n        \
         {b}\n        \
         for (int f = 0; f < {d}; f++) acc[f] += b * {k};\n    }}\n    \
         for (int f = 0; f < {d}; f++) {gq} = acc[f];\n",
        k = el(1, "kj", "f"),
        gq = el(6, "qi", "f"),
    );
    let dkdv = format!(
        "    float ak[{d}], av[{e}];\n    \
         for (int f = 0; f < {d}; f++) ak[f] = 0.0f;\n    \
         for (int c = 0; c < {e}; c++) av[c] = 0.0f;\n    \
         for (int qi = kj; qi < {t}; qi++) {{\n        \
         {dden}\n        \
         {b}\n        \
         {dot}\n        \
         for (int f = 0; f < {d}; f++) ak[f] += b * {q};\n        \
         for (int c = 0; c < {e}; c++) av[c] += sc * ({go} / di);\n    }}\n    \
         for (int f = 0; f < {d}; f++) {gk} = ak[f];\n    \
         for (int c = 0; c < {e}; c++) {gv} = av[c];\n",
        q = el(0, "qi", "f"),
        go = el(5, "qi", "c"),
        gk = el(7, "kj", "f"),
        gv = el(8, "kj", "c"),
    );
    vec![
        kernel(s, &format!("{name}_dq"), "qi", dq),
        kernel(s, &format!("{name}_dkdv"), "kj", dkdv),
    ]
}

/// A fused attention step's lanes as (batch, head), `nb * nh` of them (lane bh is
/// `(bh / nh, bh % nh)`), and one layout `[b, h, t]` (lane strides, row stride) per class of
/// operands (pointer indices), where every operand of a class has the same layout and its
/// features are contiguous (`lse`, `den`: index 4, has none). `None`: more than two lane
/// dimensions, or a class whose operands differ.
fn lane_layouts(a: &Attn, classes: &[&[usize]]) -> Option<(usize, usize, Vec<[u64; 3]>)> {
    let ops = a.arity();
    let dims = dims_of(&a.lanes);
    let (nb, nh, sb, sh) = match &dims[..] {
        [] => (1, 1, vec![0; ops], vec![0; ops]),
        [(n, s)] => (*n, 1, s.clone(), vec![0; ops]),
        [(n0, s0), (n1, s1)] => (*n0, *n1, s0.clone(), s1.clone()),
        _ => return None,
    };
    let lay = |k: usize| [sb[k] as u64, sh[k] as u64, a.st[k] as u64];
    let mut out = Vec::new();
    for class in classes {
        let ks: Vec<usize> = class.iter().copied().filter(|k| *k < ops).collect();
        if ks.iter().any(|k| *k != 4 && a.sf[*k] != 1) || ks.iter().any(|k| lay(*k) != lay(ks[0])) {
            return None;
        }
        out.push(lay(ks[0]));
    }
    Some((nb, nh, out))
}

/// A launch grid of `blocks`, if it fits the kernels' 1-D grid and `int` arithmetic.
fn grid_of(blocks: Option<usize>) -> Option<u32> {
    u32::try_from(blocks?)
        .ok()
        .filter(|g| *g >= 1 && *g <= i32::MAX as u32)
}

/// The flash-attention kernels of `kernels/attention_flash.cu` for a fused softmax attention
/// step, where its layout is theirs: one feature length D in {32, 64, 96, 128} for scores and
/// values, features contiguous, at most two lane dimensions (batch, then head), and q, k, v and
/// their gradients in one layout, o and its gradient in another. `None`: generated kernels.
fn flash(a: &Attn, locs: &[Loc]) -> Option<Vec<Op>> {
    let Form::Softmax { scale } = a.form else {
        return None;
    };
    let d = a.d;
    if d != a.e || ![32, 64, 96, 128].contains(&d) || a.t == 0 || a.lanes.is_empty() {
        return None;
    }
    let (nb, nh, lays) = lane_layouts(a, &[&[0, 1, 2, 6, 7, 8], &[3, 5], &[4]])?;
    // Rows per block of each kernel (the file's instantiations).
    let (fwd, dq, dkdv) = match d {
        128 => (16, 8, 8),
        32 => (16, 16, 32),
        _ => (16, 16, 16),
    };
    let mut args = bufs(locs);
    args.extend([
        Arg::I32(i32::try_from(nb * nh).ok()?),
        Arg::I32(i32::try_from(a.t).ok()?),
        Arg::F32(scale),
        Arg::I32(i32::try_from(nh).ok()?),
    ]);
    args.extend(lays.iter().flatten().map(|x| Arg::U64(*x)));
    let launch = |kernel: &'static str, tile: usize| -> Option<Op> {
        Some(Op::Hand(HandLaunch {
            file: "attention_flash.cu",
            kernel,
            grid: grid_of((nb * nh).checked_mul(a.t.div_ceil(tile)))?,
            block: 128,
            args: args.clone(),
        }))
    };
    // The entry points, by kind and D (static names: HandLaunch keeps them).
    const NAMES: [[&str; 4]; 3] = [
        [
            "diagc_flash_fwd_d32",
            "diagc_flash_fwd_d64",
            "diagc_flash_fwd_d96",
            "diagc_flash_fwd_d128",
        ],
        [
            "diagc_flash_bwd_dq_d32",
            "diagc_flash_bwd_dq_d64",
            "diagc_flash_bwd_dq_d96",
            "diagc_flash_bwd_dq_d128",
        ],
        [
            "diagc_flash_bwd_dkdv_d32",
            "diagc_flash_bwd_dkdv_d64",
            "diagc_flash_bwd_dkdv_d96",
            "diagc_flash_bwd_dkdv_d128",
        ],
    ];
    let at = d / 32 - 1;
    if a.back {
        Some(vec![launch(NAMES[1][at], dq)?, launch(NAMES[2][at], dkdv)?])
    } else {
        Some(vec![launch(NAMES[0][at], fwd)?])
    }
}

/// The kernels of `kernels/linear_attention.cu` for a fused linear attention step, where its
/// layout is theirs: D and E at most 128, the constant 1e-6 (the kernels' own), features
/// contiguous, at most two lane dimensions, qf, kf and their gradients in one layout, v and its
/// gradient in one, out and its gradient in one. `None`: generated kernels.
fn linear(a: &Attn, locs: &[Loc]) -> Option<Vec<Op>> {
    let Form::Linear { eps } = a.form else {
        return None;
    };
    let (d, e) = (a.d, a.e);
    if eps != 1e-6 || d > 128 || e > 128 || d == 0 || e == 0 || a.t == 0 || a.lanes.is_empty() {
        return None;
    }
    let (nb, nh, lays) = lane_layouts(a, &[&[0, 1, 6, 7], &[2, 8], &[3, 5], &[4]])?;
    let bh = nb * nh;
    let mut args = bufs(locs);
    for x in [bh, a.t, d, e, nh] {
        args.push(Arg::I32(i32::try_from(x).ok()?));
    }
    args.extend(lays.iter().flatten().map(|x| Arg::U64(*x)));
    let (kernel, blocks) = if a.back {
        let per = 2 * d.div_ceil(32) + e.div_ceil(32);
        ("diagc_linattn_bwd", bh.checked_mul(per))
    } else {
        ("diagc_linattn_fwd", bh.checked_mul(e.div_ceil(32)))
    };
    Some(vec![Op::Hand(HandLaunch {
        file: "linear_attention.cu",
        kernel,
        grid: grid_of(blocks)?,
        block: 128,
        args,
    })])
}

/// For a lane-wise step over offset tables: declares the non-trivial tables as device arrays
/// and returns, per operand, the expression of the offset of element `j` (`j` itself when every
/// table is `0, 1, 2...`).
fn tables(s: &mut String, name: &str, inner: &[Vec<usize>], dense: bool) -> Vec<String> {
    inner
        .iter()
        .enumerate()
        .map(|(k, t)| {
            if dense || t.iter().enumerate().all(|(j, o)| j == *o) {
                "j".to_string()
            } else {
                let body: Vec<String> = t.iter().map(|o| o.to_string()).collect();
                let _ = writeln!(
                    s,
                    "__device__ const unsigned int {name}_t{k}[{}] = {{{}}};",
                    t.len().max(1),
                    if body.is_empty() {
                        "0".to_string()
                    } else {
                        body.join(", ")
                    }
                );
                format!("{name}_t{k}[j]")
            }
        })
        .collect()
}

fn loc_text(l: &Loc) -> String {
    match l {
        Loc::Input(k) => format!("in{k}"),
        Loc::Const(k) => format!("const{k}"),
        Loc::Work(k) => format!("buf{k}"),
    }
}

fn arg_text(a: &Arg) -> String {
    match a {
        Arg::Buf(l) => loc_text(l),
        Arg::U64(v) => format!("{v}"),
        Arg::F32(v) => lit(*v),
        Arg::Seed => "seed".into(),
        Arg::Train => "train".into(),
        Arg::Err => "err".into(),
        Arg::I32(v) => format!("{v}"),
        Arg::Flag(k) => format!("&flag[{k}]"),
    }
}

/// One plan's part of a generated module.
#[derive(Clone, Debug)]
pub struct Part {
    /// The prefix of its kernels' names (`fwd_`).
    pub prefix: String,
    pub title: String,
    pub steps: Vec<Step>,
    /// `errors[k - 1]` explains error code `k`.
    pub errors: Vec<String>,
}

/// Generates the CUDA of a plan. `title` heads the source (what diagram, which sizes).
pub fn generate(plan: &Plan, title: &str) -> Generated {
    generate_with(plan, title, true)
}

/// [`generate`], choosing whether hand-written kernels replace generated ones where they apply
/// (`hand`); without, every launch is of the generated source.
pub fn generate_with(plan: &Plan, title: &str, hand: bool) -> Generated {
    let (source, mut parts) = generate_module_with(&[("", plan, title)], hand);
    let part = parts.pop().expect("one part");
    Generated {
        source,
        steps: part.steps,
        errors: part.errors,
    }
}

/// Generates one self-contained module for several plans `(prefix, plan, title)`: the shared
/// helpers once, then each plan's kernels, their names prefixed. Returns the source and, per
/// plan, its launch sequence.
pub fn generate_module(plans: &[(&str, &Plan, &str)]) -> (String, Vec<Part>) {
    generate_module_with(plans, true)
}

/// [`generate_module`], choosing whether hand-written kernels are used (see [`generate_with`]).
pub fn generate_module_with(plans: &[(&str, &Plan, &str)], hand: bool) -> (String, Vec<Part>) {
    let mut head = String::new();
    let mut body = String::new();
    let mut parts = Vec::new();
    let _ = writeln!(head, "// Generated by diagc {}.", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        head,
        "// Self-contained: NVRTC compiles it alone (kernels/common.cuh is included below)."
    );
    for (prefix, plan, title) in plans {
        let mut g = Gen {
            prefix: prefix.to_string(),
            hand,
            src: String::new(),
            steps: Vec::new(),
            errors: Vec::new(),
        };
        for (i, (k, locs, label)) in plan.kernel_steps().enumerate() {
            let ops = g.step(i, k, locs, label);
            g.steps.push(Step {
                label: label.to_string(),
                ops,
            });
        }
        describe(&mut head, prefix, plan, title, &g.steps, &g.errors);
        body.push_str(&g.src);
        parts.push(Part {
            prefix: prefix.to_string(),
            title: title.to_string(),
            steps: g.steps,
            errors: g.errors,
        });
    }
    // The hand-written kernels the launches use, so that the module is complete: their files
    // (after common.cuh, which they share) follow the generated kernels.
    let mut files: Vec<&str> = parts
        .iter()
        .flat_map(|p| &p.steps)
        .flat_map(|s| &s.ops)
        .filter_map(|o| match o {
            Op::Hand(h) => Some(h.file),
            _ => None,
        })
        .collect();
    files.sort_unstable();
    files.dedup();
    for f in files {
        let text = super::kernels::FILES
            .iter()
            .find(|(n, _)| *n == f)
            .map_or("", |(_, t)| *t);
        let _ = write!(body, "\n// ---- kernels/{f} (hand-written) ----\n{text}");
    }
    let source = format!(
        "{head}\n// ---- kernels/common.cuh ----\n{}\n{}{}",
        super::kernels::common(),
        prelude(),
        body
    );
    (source, parts)
}

/// The header comment of one plan: its buffers and launch sequence, for a reader.
fn describe(
    head: &mut String,
    prefix: &str,
    plan: &Plan,
    title: &str,
    steps: &[Step],
    errors: &[String],
) {
    let _ = writeln!(head, "//\n// {title} (kernels `{prefix}s*`)");
    let _ = writeln!(
        head,
        "// Buffers: in0..in{} (the inputs), {} workspace buffers (elements: {:?}), {} constants.",
        plan.input_count().saturating_sub(1),
        plan.buffer_lens().len(),
        plan.buffer_lens(),
        plan.consts().len()
    );
    let outs: Vec<String> = plan
        .output_locs()
        .iter()
        .map(|(l, n)| format!("{} ({n})", loc_text(l)))
        .collect();
    let _ = writeln!(head, "// Outputs: {}", outs.join(", "));
    let _ = writeln!(
        head,
        "// Launch sequence ({BLOCK} threads per block; gemm: cuBLAS, or the kernel named):"
    );
    for (i, st) in steps.iter().enumerate() {
        for op in &st.ops {
            let (what, l) = match op {
                Op::Launch(l) => ("", l),
                Op::Gemm { fallback, .. } => ("gemm ", fallback),
                Op::Hand(h) => {
                    let args: Vec<String> = h.args.iter().map(arg_text).collect();
                    let _ = writeln!(
                        head,
                        "//   {i:3} kernels/{}: {}<<<{}, {}>>>({})",
                        h.file,
                        h.kernel,
                        h.grid,
                        h.block,
                        args.join(", ")
                    );
                    continue;
                }
            };
            let args: Vec<String> = l.args.iter().map(arg_text).collect();
            let _ = writeln!(
                head,
                "//   {i:3} {what}{}<<<{}, {BLOCK}>>>({})",
                l.kernel,
                l.threads.div_ceil(BLOCK as u64),
                args.join(", ")
            );
        }
    }
    for (k, e) in errors.iter().enumerate() {
        let _ = writeln!(head, "// error code {}: {e}", k + 1);
    }
}
