//! Running a plan on the GPU: the generated module compiled to CUBIN, every buffer allocated
//! once, the launch sequence replayed (eagerly, or captured once as a CUDA graph).
//!
//! Memory is the plan's: one device buffer per workspace buffer of an [`lir::Plan`](Plan) (so the same
//! liveness-based reuse and the same peak), the plan's constants uploaded once, and one device
//! buffer per input that the caller fills before a run. The dropout seed and the training flag
//! live in device memory, so a captured graph reads each run's values. Products go to cuBLAS
//! (fp32, or TF32 tensor cores with [`Precision::Tf32`]) when each operand's layout is one cuBLAS
//! takes, else to the generated kernel that computes the same product.
//!
//! Nothing here has run on a GPU yet in this repository's history unless the closing notes of
//! issue 5 say so: the selftest (`diagc selftest --device cuda`) is what checks it against the
//! CPU executor.

use super::codegen::{self, Arg, GemmCall, Launch, Op};
use super::{DeviceInfo, nvrtc};
use crate::error::Error;
use crate::lir::{Loc, Plan};
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg, sys,
};
use std::sync::Arc;

/// How products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// IEEE fp32 throughout.
    #[default]
    Fp32,
    /// cuBLAS may use TF32 tensor cores for products (10-bit mantissa inputs, fp32
    /// accumulation); every other kernel stays fp32.
    Tf32,
}

/// An open device: context, stream and cuBLAS handle.
pub struct Gpu {
    pub info: DeviceInfo,
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    /// cuBLAS's workspace, given explicitly so that a captured graph never asks cuBLAS to
    /// allocate (as PyTorch does for graph capture).
    _blas_workspace: CudaSlice<u8>,
}

/// Bytes of cuBLAS workspace (what PyTorch gives cuBLAS on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

pub(crate) fn drv(e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("CUDA: {e:?}"))
}

impl Gpu {
    /// Probes and opens device 0. The error is one line for the user.
    pub fn open(precision: Precision) -> Result<Gpu, Error> {
        let info = super::probe()?;
        // cudarc panics when it cannot load a library: check cuBLAS and NVRTC first.
        // SAFETY: only tries to load the library.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(Error::Device(
                "cuBLAS (libcublas.so.13) was not found on the loader's path; add the CUDA \
                 toolkit's lib64 folder to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        nvrtc::load()?;
        let ctx = CudaContext::new(0).map_err(drv)?;
        // One stream, raw pointers: cudarc's per-buffer event tracking is not needed.
        // SAFETY: every buffer of this module is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone()).map_err(drv)?;
        let mode = match precision {
            Precision::Fp32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            Precision::Tf32 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: the handle is valid for the life of `blas`.
        unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
            .result()
            .map_err(drv)?;
        let workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE).map_err(drv)?;
        let wptr = workspace.device_ptr(&stream).0;
        // SAFETY: the workspace outlives the handle's use (both live in this `Gpu`).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                wptr as *mut std::ffi::c_void,
                BLAS_WORKSPACE,
            )
        }
        .result()
        .map_err(drv)?;
        Ok(Gpu {
            info,
            ctx,
            stream,
            blas,
            _blas_workspace: workspace,
        })
    }

    pub fn synchronize(&self) -> Result<(), Error> {
        self.stream.synchronize().map_err(drv)
    }

    /// Captures what `enqueue` puts on the stream as a CUDA graph (nothing runs yet). The capture
    /// is ended even when `enqueue` fails, and its error is returned.
    pub(crate) fn capture(
        &self,
        enqueue: impl FnOnce() -> Result<(), Error>,
    ) -> Result<CudaGraph, Error> {
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(drv)?;
        let enq = enqueue();
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(drv)?;
        enq?;
        graph.ok_or_else(|| Error::Device("the CUDA graph capture recorded nothing".into()))
    }

    /// Loads a CUBIN (compiled for this device's architecture).
    pub fn load_cubin(&self, bin: Vec<u8>) -> Result<(), Error> {
        self.ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(bin))
            .map(|_| ())
            .map_err(drv)
    }

    /// Compiles (cached) and loads a module.
    pub(crate) fn load(
        &self,
        src: &str,
        name: &str,
    ) -> Result<Arc<cudarc::driver::CudaModule>, Error> {
        let bin = nvrtc::cached_cubin(src, name, &self.info.arch())
            .map_err(|e| Error::Device(e.to_string()))?;
        self.ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(bin))
            .map_err(drv)
    }
}

/// A cuBLAS call worked out at load time: column-major operands as cuBLAS sees them
/// (`cublasSgemmStridedBatched(transa, transb, m, n, k, 1, X, lda, sx, Y, ldb, sy, beta, C,
/// ldc, sc, count)` per group, `X` the plan's `a` when `a_first`, else its `b`).
#[derive(Clone, Debug)]
pub struct BlasCall {
    /// Whether cuBLAS's first and second operands are transposed (`CUBLAS_OP_T`).
    pub ta: bool,
    pub tb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub lda: i32,
    pub ldb: i32,
    pub ldc: i32,
    /// Offsets (elements) of every batch group's first matrices `[c, a, b]`, the group's length
    /// and its strides: one strided-batched call per group.
    pub groups: Vec<([usize; 3], usize, [usize; 3])>,
    /// cuBLAS's first operand is the plan's `a` (else its `b`: the product is transposed).
    pub a_first: bool,
    pub beta: f32,
}

/// A matrix of `rows x cols` with strides `[row, col]` as cuBLAS takes it: `(transposed, ld)`
/// for its column-major view, or `None` when neither stride is 1 where it matters.
fn col_major(rows: usize, cols: usize, st: [isize; 2]) -> Option<(bool, usize)> {
    let ok = |ld: isize, min: usize| ld >= min.max(1) as isize;
    // Column-major: unit row stride (or one row), leading dimension the column stride.
    if (st[0] == 1 || rows == 1) && (cols == 1 || ok(st[1], rows)) {
        return Some((false, st[1].max(rows.max(1) as isize) as usize));
    }
    // Row-major: as column-major it is the transpose, leading dimension the row stride.
    if (st[1] == 1 || cols == 1) && (rows == 1 || ok(st[0], cols)) {
        return Some((true, st[0].max(cols.max(1) as isize) as usize));
    }
    None
}

/// Maps a CPU product to cuBLAS, or `None` when a layout does not fit (the generated kernel
/// computes it then). Public for the tests, which replay the mapping with a reference GEMM.
pub fn blas_call(call: &GemmCall) -> Option<BlasCall> {
    let g = &call.gemm;
    if g.m == 0 || g.n == 0 || g.k == 0 {
        return None;
    }
    let too_big = |x: usize| x > i32::MAX as usize;
    if [g.m, g.n, g.k].iter().any(|x| too_big(*x)) {
        return None;
    }
    // C = A B with C column-major, or C^T = B^T A^T with C row-major.
    let (a_first, (ta, lda), (tb, ldb), ldc, m, n) =
        if let Some((false, ldc)) = col_major(g.m, g.n, g.c) {
            (
                true,
                col_major(g.m, g.k, g.a)?,
                col_major(g.k, g.n, g.b)?,
                ldc,
                g.m,
                g.n,
            )
        } else {
            let (t, ldc) = col_major(g.n, g.m, [g.c[1], g.c[0]])?;
            if t {
                return None;
            }
            (
                false,
                col_major(g.n, g.k, [g.b[1], g.b[0]])?,
                col_major(g.k, g.m, [g.a[1], g.a[0]])?,
                ldc,
                g.n,
                g.m,
            )
        };
    if [lda, ldb, ldc].iter().any(|x| too_big(*x)) {
        return None;
    }
    // Batch groups: the innermost batch dimension is one strided-batched call; the outer ones
    // are enumerated.
    let dims = g.batch.dims();
    let (outer, inner) = match dims.split_last() {
        Some((last, rest)) => (rest, Some(last)),
        None => (&[][..], None),
    };
    let mut bases = vec![[0usize; 3]];
    for d in outer {
        bases = bases
            .iter()
            .flat_map(|b| {
                (0..d.n).map(move |i| [b[0] + i * d.s[0], b[1] + i * d.s[1], b[2] + i * d.s[2]])
            })
            .collect();
    }
    let groups = bases
        .into_iter()
        .map(|b| match inner {
            Some(d) => (b, d.n, d.s),
            None => (b, 1, [0, 0, 0]),
        })
        .collect();
    Some(BlasCall {
        ta,
        tb,
        m: m as i32,
        n: n as i32,
        k: g.k as i32,
        lda: lda as i32,
        ldb: ldb as i32,
        ldc: ldc as i32,
        groups,
        a_first,
        beta: if call.accumulate { 1.0 } else { 0.0 },
    })
}

/// One operation of a loaded plan.
enum RtOp {
    Launch {
        f: CudaFunction,
        grid: u32,
        block: u32,
        args: Vec<Arg>,
    },
    Blas {
        call: BlasCall,
        a: Loc,
        b: Loc,
        c: Loc,
    },
}

/// How a plan is loaded: the defaults are the fast path; the others exist for cross-checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Every product on the generated GEMM kernel instead of cuBLAS.
    pub gemm_kernel: bool,
    /// Use the hand-written kernels where they apply (else only generated ones).
    pub hand: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            gemm_kernel: false,
            hand: true,
        }
    }
}

/// A plan loaded on a device.
pub struct GpuPlan {
    ops: Vec<RtOp>,
    work: Vec<CudaSlice<f32>>,
    consts: Vec<CudaSlice<f32>>,
    inputs: Vec<CudaSlice<f32>>,
    outputs: Vec<(Loc, usize)>,
    seed: CudaSlice<u64>,
    train: CudaSlice<i32>,
    err: CudaSlice<i32>,
    errors: Vec<String>,
    graph: Option<CudaGraph>,
    /// Bytes of device memory the plan holds (workspace, constants, inputs).
    pub bytes: usize,
    /// Products that run on the generated kernel because cuBLAS cannot take their layout.
    pub fallback_gemms: usize,
}

fn ptr(s: &CudaSlice<f32>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

impl GpuPlan {
    /// Generates, compiles (cached) and loads the plan's CUDA, and allocates its memory.
    /// `force_fallback` computes every product with the generated kernel (for cross-checks).
    pub fn new(gpu: &Gpu, plan: &Plan, title: &str, opts: LoadOptions) -> Result<GpuPlan, Error> {
        let g = codegen::generate_with(plan, title, opts.hand);
        let module = gpu.load(&g.source, "plan.cu")?;
        let st = &gpu.stream;
        let mut ops = Vec::new();
        let mut fallback_gemms = 0;
        let load = |l: &Launch| -> Result<RtOp, Error> {
            Ok(RtOp::Launch {
                f: module.load_function(&l.kernel).map_err(drv)?,
                grid: u32::try_from(l.threads.div_ceil(codegen::BLOCK as u64))
                    .map_err(|_| Error::Device(format!("{}: too many threads", l.kernel)))?,
                block: codegen::BLOCK,
                args: l.args.clone(),
            })
        };
        for step in &g.steps {
            for op in &step.ops {
                match op {
                    Op::Launch(l) => {
                        if l.threads > 0 {
                            ops.push(load(l)?);
                        }
                    }
                    // The hand-written kernels are in the same module (after the generated ones).
                    Op::Hand(h) => {
                        let m = &module;
                        ops.push(RtOp::Launch {
                            f: m.load_function(h.kernel).map_err(drv)?,
                            grid: h.grid,
                            block: h.block,
                            args: h.args.clone(),
                        });
                    }
                    Op::Gemm { call, fallback } => match blas_call(call) {
                        Some(b) if !opts.gemm_kernel => ops.push(RtOp::Blas {
                            call: b,
                            a: call.a,
                            b: call.b,
                            c: call.c,
                        }),
                        _ => {
                            fallback_gemms += 1;
                            ops.push(load(fallback)?);
                        }
                    },
                }
            }
        }
        let alloc = |n: usize| st.alloc_zeros::<f32>(n.max(1)).map_err(drv);
        let work: Vec<_> = plan
            .buffer_lens()
            .iter()
            .map(|n| alloc(*n))
            .collect::<Result<_, _>>()?;
        let consts: Vec<_> = plan
            .consts()
            .iter()
            .map(|c| {
                if c.is_empty() {
                    alloc(1)
                } else {
                    st.clone_htod(c).map_err(drv)
                }
            })
            .collect::<Result<_, _>>()?;
        let inputs: Vec<_> = (0..plan.input_count())
            .map(|k| alloc(plan.input_len(k)))
            .collect::<Result<_, _>>()?;
        let bytes = 4
            * (plan.buffer_lens().iter().sum::<usize>()
                + plan.consts().iter().map(Vec::len).sum::<usize>()
                + (0..plan.input_count())
                    .map(|k| plan.input_len(k))
                    .sum::<usize>());
        Ok(GpuPlan {
            ops,
            work,
            consts,
            inputs,
            outputs: plan.output_locs().to_vec(),
            seed: st.alloc_zeros::<u64>(1).map_err(drv)?,
            train: st.alloc_zeros::<i32>(1).map_err(drv)?,
            err: st.alloc_zeros::<i32>(g.errors.len() + 1).map_err(drv)?,
            errors: g.errors,
            graph: None,
            bytes,
            fallback_gemms,
        })
    }

    /// Copies input `k` to the device (its length must be the plan's).
    pub fn set_input(&mut self, gpu: &Gpu, k: usize, data: &[f32]) -> Result<(), Error> {
        let dst = self
            .inputs
            .get_mut(k)
            .ok_or_else(|| Error::Device(format!("input {k} does not exist")))?;
        if dst.len() != data.len().max(1) && !(data.is_empty() && dst.len() == 1) {
            return Err(Error::Device(format!(
                "input {k}: {} elements given, {} expected",
                data.len(),
                dst.len()
            )));
        }
        if !data.is_empty() {
            gpu.stream.memcpy_htod(data, dst).map_err(drv)?;
        }
        Ok(())
    }

    fn loc_ptr(&self, l: Loc, st: &CudaStream) -> u64 {
        match l {
            Loc::Input(k) => ptr(&self.inputs[k], st),
            Loc::Const(k) => ptr(&self.consts[k], st),
            Loc::Work(k) => ptr(&self.work[k], st),
        }
    }

    /// Enqueues every operation on the stream.
    pub(crate) fn enqueue(&self, gpu: &Gpu) -> Result<(), Error> {
        let st = &gpu.stream;
        let seed = self.seed.device_ptr(st).0;
        let train = self.train.device_ptr(st).0;
        let err = self.err.device_ptr(st).0;
        for op in &self.ops {
            match op {
                RtOp::Launch {
                    f,
                    grid,
                    block,
                    args,
                } => {
                    // Pointers and 64-bit integers are 8 bytes, `F32` and `I32` 4: each kind
                    // is kept alive in its own vector until the launch.
                    let mut words: Vec<u64> = Vec::with_capacity(args.len());
                    let mut floats: Vec<f32> = Vec::new();
                    let mut ints: Vec<i32> = Vec::new();
                    for a in args {
                        match a {
                            Arg::Buf(l) => words.push(self.loc_ptr(*l, st)),
                            Arg::U64(v) => words.push(*v),
                            Arg::F32(v) => floats.push(*v),
                            Arg::I32(v) => ints.push(*v),
                            Arg::Seed => words.push(seed),
                            Arg::Train => words.push(train),
                            Arg::Err => words.push(err),
                            Arg::Flag(k) => words.push(err + 4 * *k as u64),
                        }
                    }
                    let mut b = st.launch_builder(f);
                    let (mut wi, mut fi, mut ii) = (0, 0, 0);
                    for a in args {
                        match a {
                            Arg::F32(_) => {
                                b.arg(&floats[fi]);
                                fi += 1;
                            }
                            Arg::I32(_) => {
                                b.arg(&ints[ii]);
                                ii += 1;
                            }
                            _ => {
                                b.arg(&words[wi]);
                                wi += 1;
                            }
                        }
                    }
                    let cfg = LaunchConfig {
                        grid_dim: (*grid, 1, 1),
                        block_dim: (*block, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: the kernel's parameters are the generated signature's, in order
                    // (pointers as 64-bit device addresses); every offset it computes was
                    // bounds-checked against these buffers' lengths when the plan was built (`lir`).
                    unsafe { b.launch(cfg) }.map_err(drv)?;
                }
                RtOp::Blas { call, a, b, c } => {
                    let (pa, pb, pc) = (
                        self.loc_ptr(*a, st),
                        self.loc_ptr(*b, st),
                        self.loc_ptr(*c, st),
                    );
                    let alpha = 1.0f32;
                    let op = |t: bool| {
                        if t {
                            blas_sys::cublasOperation_t::CUBLAS_OP_T
                        } else {
                            blas_sys::cublasOperation_t::CUBLAS_OP_N
                        }
                    };
                    for (base, count, strides) in &call.groups {
                        let at = |p: u64, off: usize| (p + 4 * off as u64) as *const f32;
                        let (x, y, sx, sy) = if call.a_first {
                            (at(pa, base[1]), at(pb, base[2]), strides[1], strides[2])
                        } else {
                            (at(pb, base[2]), at(pa, base[1]), strides[2], strides[1])
                        };
                        // SAFETY: the operands' extents were bounds-checked by the plan (`lir`);
                        // `alpha` and `beta` are host scalars (the handle's default pointer mode).
                        unsafe {
                            blas::sgemm_strided_batched(
                                *gpu.blas.handle(),
                                op(call.ta),
                                op(call.tb),
                                call.m,
                                call.n,
                                call.k,
                                &alpha,
                                x,
                                call.lda,
                                sx as i64,
                                y,
                                call.ldb,
                                sy as i64,
                                &call.beta,
                                at(pc, base[0]) as *mut f32,
                                call.ldc,
                                strides[0] as i64,
                                *count as i32,
                            )
                        }
                        .map_err(drv)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn set_run(&mut self, gpu: &Gpu, train: bool, seed: u64) -> Result<(), Error> {
        let st = &gpu.stream;
        st.memcpy_htod(&[seed], &mut self.seed).map_err(drv)?;
        st.memcpy_htod(&[train as i32], &mut self.train)
            .map_err(drv)?;
        st.memset_zeros(&mut self.err).map_err(drv)?;
        Ok(())
    }

    /// Reads the error words: `err[0]` holds a generated kernel's code, `err[k]` the flag of
    /// a hand-written kernel's check `k`.
    pub(crate) fn check(&self, gpu: &Gpu) -> Result<(), Error> {
        let mut e = vec![0i32; self.err.len()];
        gpu.stream.memcpy_dtoh(&self.err, &mut e).map_err(drv)?;
        gpu.synchronize()?;
        let code = match e.iter().position(|x| *x != 0) {
            None => return Ok(()),
            Some(0) => e[0] as usize,
            Some(k) => k,
        };
        Err(Error::Run(
            self.errors
                .get(code.wrapping_sub(1))
                .cloned()
                .unwrap_or_else(|| format!("kernel error code {code}")),
        ))
    }

    /// Runs the plan once, launch by launch, and waits for it.
    pub fn run(&mut self, gpu: &Gpu, train: bool, seed: u64) -> Result<(), Error> {
        self.set_run(gpu, train, seed)?;
        self.enqueue(gpu)?;
        self.check(gpu)
    }

    /// Runs the plan through a CUDA graph: captured on the first call, replayed after (the
    /// launch sequence and buffers never change; the seed and mode are read from device memory).
    pub fn run_graph(&mut self, gpu: &Gpu, train: bool, seed: u64) -> Result<(), Error> {
        self.set_run(gpu, train, seed)?;
        if self.graph.is_none() {
            self.graph = Some(gpu.capture(|| self.enqueue(gpu))?);
        }
        if let Some(g) = &self.graph {
            g.launch().map_err(drv)?;
        }
        self.check(gpu)
    }

    /// The device address of input `k` (its buffer stays for the plan's life).
    pub fn input_ptr(&self, gpu: &Gpu, k: usize) -> Option<u64> {
        self.inputs.get(k).map(|s| ptr(s, &gpu.stream))
    }

    /// The device address and length of output `k`.
    pub fn output_ptr(&self, gpu: &Gpu, k: usize) -> Option<(u64, usize)> {
        let (loc, len) = *self.outputs.get(k)?;
        Some((self.loc_ptr(loc, &gpu.stream), len))
    }

    /// Input `k`, copied to the host.
    pub fn input(&self, gpu: &Gpu, k: usize) -> Result<Vec<f32>, Error> {
        let src = self
            .inputs
            .get(k)
            .ok_or_else(|| Error::Device(format!("input {k} does not exist")))?;
        let mut host = vec![0f32; src.len()];
        gpu.stream.memcpy_dtoh(src, &mut host).map_err(drv)?;
        gpu.synchronize()?;
        Ok(host)
    }

    /// Output `k` of the last run, copied to the host.
    pub fn output(&self, gpu: &Gpu, k: usize) -> Result<Vec<f32>, Error> {
        let (loc, len) = *self
            .outputs
            .get(k)
            .ok_or_else(|| Error::Device(format!("output {k} does not exist")))?;
        let src = match loc {
            Loc::Input(i) => &self.inputs[i],
            Loc::Const(i) => &self.consts[i],
            Loc::Work(i) => &self.work[i],
        };
        let mut host = vec![0f32; src.len()];
        gpu.stream.memcpy_dtoh(src, &mut host).map_err(drv)?;
        gpu.synchronize()?;
        host.truncate(len);
        Ok(host)
    }
}
