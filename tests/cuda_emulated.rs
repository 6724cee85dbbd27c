//! The generated CUDA, run without a GPU: the source of a plan is compiled as C++ by g++ with a
//! small shim (`__global__` as nothing, `blockIdx`/`threadIdx` as globals, atomics as plain
//! read-modify-writes), and each launch runs as a serial loop over its blocks and threads.
//! Generated kernels use no shared memory, no barriers and no warp operations, so a serial
//! schedule computes what the GPU computes (up to the order of `atomicAdd`s). Products run twice:
//! through the cuBLAS mapping of the runtime (`runtime::blas_call`) replayed by a reference
//! column-major GEMM, and on the generated fallback kernel. Every primitive, every stdlib
//! mechanism and the training LM, forward and gradient, eval and train, must agree with the CPU
//! executor. This checks the code generator's index arithmetic and semantics and the runtime's
//! cuBLAS layouts; it does not check the CUDA toolchain or the device (the selftest does).

mod common;

use common::{LM_SIZES, bindings, instance_of, lm};
use diagc::backend::cpu::exec::{Loc, Plan, Workspace};
use diagc::backend::cpu::harness;
use diagc::backend::cpu::interp::RunOptions;
use diagc::backend::cuda::codegen::{self, Arg, Launch, Op};
use diagc::backend::cuda::runtime::blas_call;
use diagc::ir::instance::{Instance, instantiate};
use diagc::selftest::worst;
use std::collections::BTreeMap;
use std::fmt::Write;

const SHIM: &str = r#"
#include <cmath>
#include <cstring>
using std::isinf; using std::isnan;
struct diagc_dim3 { unsigned x, y, z; };
static diagc_dim3 blockIdx, threadIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
template <class T> inline float __int_as_float(T i) { unsigned u = (unsigned)i; float f; memcpy(&f, &u, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
inline double atomicAdd(double* p, double v) { double o = *p; *p = o + v; return o; }
inline int atomicCAS(int* p, int cmp, int v) { int o = *p; if (o == cmp) *p = v; return o; }
inline int atomicExch(int* p, int v) { int o = *p; *p = v; return o; }
// Warp and block operations: the generated kernels use none; these only let common.cuh compile.
template <class T> inline T __shfl_xor_sync(unsigned, T v, int, int = 32) { return v; }
template <class T> inline T __shfl_down_sync(unsigned, T v, int, int = 32) { return v; }
inline void __syncthreads() {}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline float __expf(float a) { return expf(a); }
"#;

fn c_arg(a: &Arg, i: usize) -> String {
    match a {
        Arg::Buf(_) => format!("(float*)a[{i}]"),
        Arg::U64(_) => format!("(unsigned long long)a[{i}]"),
        Arg::F32(_) => format!("__uint_as_float((unsigned)a[{i}])"),
        Arg::Seed => format!("(const unsigned long long*)a[{i}]"),
        Arg::Train => format!("(const int*)a[{i}]"),
        Arg::Err => format!("(int*)a[{i}]"),
        Arg::I32(_) => format!("(int)a[{i}]"),
        Arg::Flag(_) => format!("(int*)a[{i}]"),
    }
}

/// The serial launcher of kernel `l.kernel`: `launch_NAME(args, grid)`.
fn wrapper(l: &Launch) -> String {
    let args: Vec<String> = l
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| c_arg(a, i))
        .collect();
    format!(
        "extern \"C\" void launch_{k}(const unsigned long long* a, unsigned grid) {{\n  \
         blockDim.x = {b}; blockDim.y = blockDim.z = 1; gridDim.x = grid;\n  \
         for (unsigned bx = 0; bx < grid; bx++) for (unsigned t = 0; t < {b}; t++) {{\n    \
         blockIdx.x = bx; threadIdx.x = t;\n    {k}({});\n  }}\n}}\n",
        args.join(", "),
        k = l.kernel,
        b = codegen::BLOCK
    )
}

struct Lib {
    lib: libloading::Library,
    _dir: std::path::PathBuf,
}

fn build(src: &str, tag: &str) -> Lib {
    let dir = std::env::temp_dir().join(format!("diagc-emul-{}-{tag}", std::process::id()));
    // The same source (a plan runs in several modes) is compiled once.
    if dir.join("k.so").exists() {
        // SAFETY: as below.
        let lib = unsafe { libloading::Library::new(dir.join("k.so")) }.unwrap();
        return Lib { lib, _dir: dir };
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("shim.h"), SHIM).unwrap();
    std::fs::write(dir.join("k.cpp"), src).unwrap();
    let out = std::process::Command::new("g++")
        .args(["-O1", "-std=c++17", "-shared", "-fPIC", "-w", "-include"])
        .arg(dir.join("shim.h"))
        .arg(dir.join("k.cpp"))
        .arg("-o")
        .arg(dir.join("k.so"))
        .output()
        .expect("g++ runs");
    assert!(
        out.status.success(),
        "g++ failed on {}:\n{}",
        dir.join("k.cpp").display(),
        String::from_utf8_lossy(&out.stderr)
    );
    // SAFETY: a library this test just built; its initialisers only set statics.
    let lib = unsafe { libloading::Library::new(dir.join("k.so")) }.unwrap();
    Lib { lib, _dir: dir }
}

/// Column-major `C = op(X) op(Y) + beta C` for one matrix of a batch, as cuBLAS defines it.
#[allow(clippy::too_many_arguments)]
unsafe fn ref_sgemm(
    ta: bool,
    tb: bool,
    (m, n, k): (usize, usize, usize),
    x: *const f32,
    lda: usize,
    y: *const f32,
    ldb: usize,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    unsafe {
        for j in 0..n {
            for r in 0..m {
                let mut acc = 0.0f32;
                for kk in 0..k {
                    let xv = if ta {
                        *x.add(kk + r * lda)
                    } else {
                        *x.add(r + kk * lda)
                    };
                    let yv = if tb {
                        *y.add(j + kk * ldb)
                    } else {
                        *y.add(kk + j * ldb)
                    };
                    acc += xv * yv;
                }
                let pc = c.add(r + j * ldc);
                *pc = if beta == 0.0 { acc } else { acc + beta * *pc };
            }
        }
    }
}

/// Runs a plan's generated CUDA on the CPU. With `blas`, products whose layout cuBLAS takes run
/// on the reference GEMM through the runtime's mapping; the others (and all, without) on the
/// generated kernel. Returns the outputs, and how many products went through the mapping.
fn emulate(
    plan: &Plan,
    inputs: &[Vec<f32>],
    opts: RunOptions,
    blas: bool,
) -> Result<(Vec<Vec<f32>>, usize), String> {
    // Generated kernels only: the hand-written ones need real threads (tests/cuda_kernels.rs).
    let g = codegen::generate_with(plan, "emulated", false);
    let mut src = g.source.clone();
    let mut seen = std::collections::HashSet::new();
    for step in &g.steps {
        for op in &step.ops {
            let l = match op {
                Op::Launch(l) => l,
                Op::Gemm { fallback, .. } => fallback,
                Op::Hand(h) => panic!(
                    "a hand-written kernel ({}) in a generated-only plan",
                    h.kernel
                ),
            };
            if seen.insert(l.kernel.clone()) {
                src.push_str(&wrapper(l));
            }
        }
    }
    let lib = build(&src, &format!("{:x}", fxhash(&src)));
    let mut work: Vec<Vec<f32>> = plan.buffer_lens().iter().map(|n| vec![0.0; *n]).collect();
    let mut ins: Vec<Vec<f32>> = inputs.to_vec();
    let mut consts: Vec<Vec<f32>> = plan.consts().to_vec();
    let seed = opts.seed;
    let train = opts.train as i32;
    let mut err = 0i32;
    let mut mapped = 0;
    let mut ptr = |l: Loc| -> *mut f32 {
        match l {
            Loc::Input(k) => ins[k].as_mut_ptr(),
            Loc::Const(k) => consts[k].as_mut_ptr(),
            Loc::Work(k) => work[k].as_mut_ptr(),
        }
    };
    let launch = |l: &Launch, ptr: &mut dyn FnMut(Loc) -> *mut f32, err: *mut i32| {
        let words: Vec<u64> = l
            .args
            .iter()
            .map(|a| match a {
                Arg::Buf(loc) => ptr(*loc) as u64,
                Arg::U64(v) => *v,
                Arg::F32(v) => v.to_bits() as u64,
                Arg::Seed => &seed as *const u64 as u64,
                Arg::Train => &train as *const i32 as u64,
                Arg::Err => err as u64,
                Arg::I32(v) => *v as u32 as u64,
                Arg::Flag(_) => panic!("a flag argument in a generated kernel"),
            })
            .collect();
        let grid = l.threads.div_ceil(codegen::BLOCK as u64) as u32;
        // SAFETY: the launcher's signature is the one `wrapper` generated.
        unsafe {
            let f: libloading::Symbol<unsafe extern "C" fn(*const u64, u32)> = lib
                .lib
                .get(format!("launch_{}", l.kernel).as_bytes())
                .unwrap();
            f(words.as_ptr(), grid);
        }
    };
    for step in &g.steps {
        for op in &step.ops {
            match op {
                Op::Launch(l) => launch(l, &mut ptr, &mut err),
                Op::Hand(h) => return Err(format!("hand-written kernel {}", h.kernel)),
                Op::Gemm { call, fallback } => match blas_call(call).filter(|_| blas) {
                    None => launch(fallback, &mut ptr, &mut err),
                    Some(b) => {
                        mapped += 1;
                        let (pa, pb, pc) = (ptr(call.a), ptr(call.b), ptr(call.c));
                        for (base, count, st) in &b.groups {
                            for i in 0..*count {
                                let a = unsafe { pa.add(base[1] + i * st[1]) };
                                let bb = unsafe { pb.add(base[2] + i * st[2]) };
                                let (x, y) = if b.a_first { (a, bb) } else { (bb, a) };
                                // SAFETY: the CPU plan bounds-checked these operands.
                                unsafe {
                                    ref_sgemm(
                                        b.ta,
                                        b.tb,
                                        (b.m as usize, b.n as usize, b.k as usize),
                                        x,
                                        b.lda as usize,
                                        y,
                                        b.ldb as usize,
                                        b.beta,
                                        pc.add(base[0] + i * st[0]),
                                        b.ldc as usize,
                                    )
                                };
                            }
                        }
                    }
                },
            }
        }
        if err != 0 {
            return Err(g.errors[err as usize - 1].clone());
        }
    }
    let outs = plan
        .output_locs()
        .iter()
        .map(|(l, n)| {
            let p = ptr(*l);
            // SAFETY: the output lies within its buffer (the plan's lengths).
            unsafe { std::slice::from_raw_parts(p, *n) }.to_vec()
        })
        .collect();
    Ok((outs, mapped))
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Forward and gradient plans of an instance, eval and train, both product paths: the failures.
fn check(name: &str, inst: &Instance, seed: u64, tol: (f64, f64)) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let forward = Plan::for_instance(inst).unwrap();
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let backward = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
    let (inputs, gin) = harness::plan_inputs(inst, seed);
    let mut mapped = 0;
    for train in [false, true] {
        let opts = RunOptions {
            train,
            seed: seed.wrapping_mul(31).wrapping_add(7),
            check_finite: false,
        };
        for (kind, plan, ins) in [
            ("forward", &forward, &inputs),
            ("gradient", &backward, &gin),
        ] {
            let refs: Vec<&[f32]> = ins.iter().map(Vec::as_slice).collect();
            let cpu = plan.run(&mut Workspace::default(), &refs, opts).unwrap();
            for blas in [true, false] {
                let what = format!(
                    "{name} {kind} {} {}",
                    if train { "train" } else { "eval" },
                    if blas {
                        "cublas-mapping"
                    } else {
                        "gemm-kernel"
                    }
                );
                match emulate(plan, ins, opts, blas) {
                    Err(e) => failures.push(format!("{what}: {e}")),
                    Ok((outs, m)) => {
                        mapped += m;
                        for (k, (o, c)) in outs.iter().zip(&cpu).enumerate() {
                            let w = worst(o, c, tol.0, tol.1);
                            assert_eq!(o.len(), c.len());
                            if w > 1.0 {
                                failures
                                    .push(format!("{what}: output {k} off by {w:.2} tolerances"));
                            }
                        }
                    }
                }
            }
        }
    }
    (failures, mapped)
}

const TOL: (f64, f64) = (1e-4, 1e-5);

#[test]
fn the_generated_cuda_of_every_primitive_computes_what_the_cpu_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = diagc::session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    let p = &o.checked.program;
    let mut failures = Vec::new();
    let mut mapped = 0;
    let mut by_size = BTreeMap::new();
    for sizes in [
        [("a", 3), ("b", 4), ("c", 2), ("v", 5)],
        [("a", 1), ("b", 4), ("c", 1), ("v", 1)],
    ] {
        for d in &p.diagrams {
            let inst = instantiate(p, &d.name, &bindings(&sizes, &[])).unwrap();
            let (f, m) = check(&d.name, &inst, 5, TOL);
            failures.extend(f);
            mapped += m;
            *by_size.entry(sizes[1].1).or_insert(0) += 1;
        }
    }
    assert!(by_size.values().all(|n| *n >= 35), "{by_size:?}");
    assert!(mapped > 0, "no product went through the cuBLAS mapping");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_generated_cuda_of_every_stdlib_mechanism_computes_what_the_cpu_does() {
    let mut failures = Vec::new();
    let mut count = 0;
    for m in diagc::stdlib::mechanisms() {
        let b = bindings(&[("tok", 7), ("dm", 8), ("head", 2)], &[]);
        let inst = instance_of(&format!("stdlib/attention/{m}.diag"), &[], &m, &b);
        failures.extend(check(&m, &inst, 3, TOL).0);
        count += 1;
    }
    assert!(count >= 7);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_generated_cuda_of_the_language_model_computes_what_the_cpu_does() {
    let mut failures = Vec::new();
    for mech in ["m0", "m1"] {
        let inst = lm(mech, 2.0, LM_SIZES);
        failures.extend(check(&format!("lm {mech}"), &inst, 9, TOL).0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_generated_cuda_of_fused_attention_computes_what_the_cpu_does() {
    // `ir::fuse` makes M1's attention one step (forward) and one step (gradient), which the
    // code generator writes as per-query and per-key kernels: the mechanism and the batched LM.
    use diagc::ir::instance::lift_batch;
    let mut failures = Vec::new();
    let mech = |m: &str| {
        let b = bindings(&[("tok", 7), ("dm", 8), ("head", 2)], &[]);
        instance_of(&format!("stdlib/attention/{m}.diag"), &[], m, &b)
    };
    let (m1, m0) = (mech("m1"), mech("m0"));
    let lm1 = lift_batch(&lm("m1", 2.0, LM_SIZES), "batch", 3).unwrap();
    let lm0 = lift_batch(&lm("m0", 1.0, LM_SIZES), "batch", 2).unwrap();
    for (what, inst, n) in [
        ("m1", m1, 1),
        ("batched lm m1", lm1, 2),
        ("m0", m0, 1),
        ("batched lm m0", lm0, 1),
    ] {
        let (fused, count) = diagc::ir::fuse::fuse_attention(&inst).unwrap();
        assert_eq!(count, n, "{what}");
        failures.extend(check(&format!("{what}, attention fused"), &fused, 4, TOL).0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_bad_token_id_is_reported_by_the_generated_embedding() {
    use diagc::ir::instance::HyperValue;
    let b = bindings(
        &[("tok", 3), ("dm", 4), ("head", 2), ("dff", 4), ("vocab", 5)],
        &[
            ("layers", HyperValue::Num(1.0)),
            ("mech", HyperValue::Diagram("m1".into())),
        ],
    );
    let inst = instance_of("stdlib/lm.diag", &["attention.m0"], "lm", &b);
    let plan = Plan::for_instance(&inst).unwrap();
    let mut inputs = harness::to_f32(&harness::random_inputs(&inst, 1));
    inputs[0][1] = 7.0; // the vocabulary has 5 entries
    let opts = RunOptions {
        train: false,
        seed: 0,
        check_finite: false,
    };
    let e = emulate(&plan, &inputs, opts, true).unwrap_err();
    assert!(e.contains("0..5"), "{e}");
    let _ = writeln!(String::new(), "{e}");
}
