//! Fused elementwise kernels compiled with cranelift.
//!
//! The fast executor ([`super::exec`]) groups chains of elementwise steps (maps, binary ops,
//! bias adds, masks by multiplication, dropout, broadcasting copies) that run over the same
//! output layout into one [`Program`]: a straight-line list of per-element instructions whose
//! intermediate values never reach memory. This module compiles such programs to machine code
//! with cranelift and runs them.
//!
//! A compiled program is one function over one *row*: `f(ptrs, n, train)` reads
//! each input at `ptrs[k] + i * stride[k]` and writes each output at `ptrs[k] + i * stride[k]`
//! for `i in 0..n`, where the strides of the innermost loop dimension are constants of the
//! code. Dropout reads its keep mask (one 32-bit word per element, all ones where the element
//! is kept) from further pointers after the operands, one per dropout instruction: the runner
//! hashes the masks of a chunk of the row ([`keep_mask`], compiled for the CPU's widest SIMD:
//! the 64-bit multiplies of the hash have no 128-bit vector form for cranelift to use) and then
//! calls the code on that chunk. When every stride is 0 or 1 and no instruction needs a scalar
//! call (`exp`, `gelu`, `log`, `sigmoid`, `elu1` and their derivatives do; `relu`, `sqrt`,
//! `recip` and `tanh` are emitted inline), the row runs four lanes at a time (`f32x4`; inputs
//! of stride 0 are loaded once and splat), with a scalar tail; otherwise it is a scalar loop.
//! The outer dimensions are walked by [`Fused::run`] (an odometer over a [`DynNest`]), split
//! over the cores by the outermost dimension when the kernel is large, each thread writing a
//! disjoint part of every output.
//!
//! Every instruction computes exactly what the interpreter-path kernel of the same op computes
//! (same f32 operations in the same order, the same functions for `exp`, `gelu`..., which the
//! code calls, `func::single::tanh` repeated operation for operation, and the same dropout
//! mask: an integer compare equal to the float compare of
//! [`crate::backend::cpu::interp::keep`]), so a fused plan's results equal the unfused plan's
//! bit for bit (up to the sign of a zero and the payload of a NaN). `tests/jit.rs` checks it.
//!
//! Compilation never panics on a program the executor builds: a group whose code cannot be
//! generated is reported as an error and the executor keeps its unfused kernels.

use crate::backend::cpu::exec::kernels::{Shared, apply, derivative};
use crate::error::Error;
use crate::ir::Func;
use crate::lir::nest::DynNest;
use crate::lir::program::{H1, H2, H3, H4};
pub use crate::lir::program::{Inst, MAX_OPERANDS, Program, keep_threshold};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, Type, UserFuncName, Value, types,
};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use std::sync::Arc;

/// The generated row function.
type RowFn = unsafe extern "C" fn(*const *mut f32, usize, u64);

/// Machine code of one plan's fused kernels; freed when the last kernel using it is dropped.
struct Code(Option<JITModule>);

// SAFETY: after `finalize_definitions` the module is only kept to free its memory on drop;
// the code it holds is immutable and is called from any thread through plain function
// pointers.
unsafe impl Send for Code {}
// SAFETY: as above.
unsafe impl Sync for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: no `Fused` referring to this code is alive (they hold the `Arc`).
            unsafe { m.free_memory() }
        }
    }
}

/// A compiled fused kernel, as a plan step runs it. Its pointers are the step's inputs, then
/// its outputs; `nest` has one more operand, last: the element index that dropout hashes.
#[derive(Clone)]
pub struct Fused {
    f: RowFn,
    nest: DynNest,
    pub program: Program,
    /// Per dropout instruction (mask pointer): its key and [`keep_threshold`], `None` when
    /// `p = 0` (the code ignores that mask).
    drops: Vec<Option<(u64, u64)>>,
    _code: Arc<Code>,
}

/// Elements per chunk of a row whose dropout masks are hashed before the code runs on it:
/// small enough for the masks to stay in the first-level cache.
const MASK_CHUNK: usize = 2048;

simd_targets! {
/// The keep mask of dropout box `key` for `out.len()` elements of a row, the `i`th at element
/// index `idx0 + i stride`: all ones where [`crate::backend::cpu::interp::keep`] keeps the
/// element (the same SplitMix64 hash, compared as integers with `threshold` =
/// [`keep_threshold`]`(p)`), else 0.
pub fn keep_mask(seed: u64, key: u64, idx0: u64, stride: u64, threshold: u64, out: &mut [u32]) {
    let sk = seed ^ key.wrapping_mul(H1);
    for (i, o) in out.iter_mut().enumerate() {
        let index = idx0.wrapping_add((i as u64).wrapping_mul(stride));
        let mut z = sk ^ index.wrapping_mul(H2);
        z = (z ^ (z >> 30)).wrapping_mul(H3);
        z = (z ^ (z >> 27)).wrapping_mul(H4);
        z ^= z >> 31;
        *o = if z >> 11 >= threshold { u32::MAX } else { 0 };
    }
}
}

impl std::fmt::Debug for Fused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.program.describe())
    }
}

impl Fused {
    /// Inputs and outputs.
    pub fn arity(&self) -> usize {
        self.program.inputs + self.program.stores.len()
    }

    /// Runs the kernel.
    ///
    /// # Safety
    /// As `Kernel::run`: the pointers cover the lengths the plan checked
    /// (`lir::program::FusedGroup::check_bounds`), and
    /// an output shares an input's buffer only where both have the same layout.
    pub unsafe fn run(&self, p: &[*mut f32], train: bool, seed: u64, par_min: usize) {
        let cores = crate::backend::cpu::exec::kernels::cores();
        let ops = self.arity();
        let mut bases = [std::ptr::null_mut::<f32>(); MAX_OPERANDS];
        bases[..ops].copy_from_slice(&p[..ops]);
        let bases = Shared(bases);
        let work = self.nest.len() * self.program.insts.len().max(1) / 2;
        let strides = self.nest.inner_strides();
        let body = |base: &[usize], part: &DynNest| {
            let bases = bases.get();
            // The operands' pointers, then the dropout masks'.
            let mut ptrs = vec![std::ptr::null_mut::<f32>(); ops + self.drops.len()];
            if self.drops.is_empty() {
                part.rows(base, |off, n| {
                    for k in 0..ops {
                        // SAFETY: the offsets are within the operands (checked at plan time).
                        ptrs[k] = unsafe { bases[k].add(off[k]) };
                    }
                    // SAFETY: the code reads and writes `n` points of each operand at its
                    // stride from these pointers, all within bounds.
                    unsafe { (self.f)(ptrs.as_ptr(), n, train as u64) };
                });
                return;
            }
            // Out of training the masks are read but not used: zeros will do.
            let mut masks = vec![0u32; self.drops.len() * MASK_CHUNK];
            part.rows(base, |off, n| {
                let mut start = 0;
                while start < n {
                    let len = (n - start).min(MASK_CHUNK);
                    let idx0 = off[ops] + start * strides[ops];
                    for (k, p) in ptrs[..ops].iter_mut().enumerate() {
                        // SAFETY: within the operands, as the whole row is.
                        *p = unsafe { bases[k].add(off[k] + start * strides[k]) };
                    }
                    for (d, (drop, mask)) in self
                        .drops
                        .iter()
                        .zip(masks.chunks_exact_mut(MASK_CHUNK))
                        .enumerate()
                    {
                        if let (Some((key, threshold)), true) = (drop, train) {
                            let m = &mut mask[..len];
                            keep_mask(seed, *key, idx0 as u64, strides[ops] as u64, *threshold, m);
                        }
                        ptrs[ops + d] = mask.as_mut_ptr() as *mut f32;
                    }
                    // SAFETY: as above; each mask holds `MASK_CHUNK >= len` words.
                    unsafe { (self.f)(ptrs.as_ptr(), len, train as u64) };
                    start += len;
                }
            });
        };
        let zero = vec![0usize; ops + 1];
        if work < par_min || cores < 2 {
            body(&zero, &self.nest);
            return;
        }
        let parts = self.nest.split(cores);
        if parts.len() <= 1 {
            body(&zero, &self.nest);
            return;
        }
        // On rayon's pool, as the executor's other parallel steps (`exec::kernels::par`).
        rayon::scope(|scope| {
            let body = &body;
            for (base, sub) in &parts[1..] {
                scope.spawn(move |_| body(base, sub));
            }
            body(&parts[0].0, &parts[0].1);
        });
    }
}

/// Compiles several programs into one module of machine code. Programs that fail to compile
/// are skipped (their slot in the result is an error).
pub fn compile(groups: Vec<(Program, DynNest)>) -> Vec<Result<Fused, Error>> {
    let n = groups.len();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| compile_inner(groups))) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let m = e.to_string();
            (0..n).map(|_| Err(Error::Plan(m.clone()))).collect()
        }
        Err(_) => (0..n)
            .map(|_| Err(Error::Plan("the code generator panicked".into())))
            .collect(),
    }
}

fn compile_inner(groups: Vec<(Program, DynNest)>) -> Result<Vec<Result<Fused, Error>>, Error> {
    let mut flags = settings::builder();
    let set = |f: &mut settings::Builder, k: &str, v: &str| {
        f.set(k, v)
            .map_err(|e| Error::Plan(format!("cranelift flag {k}: {e}")))
    };
    set(&mut flags, "use_colocated_libcalls", "false")?;
    set(&mut flags, "is_pic", "false")?;
    set(&mut flags, "opt_level", "speed")?;
    let isa = cranelift_native::builder()
        .map_err(|e| Error::Plan(format!("this machine is not supported by cranelift: {e}")))?
        .finish(settings::Flags::new(flags))
        .map_err(|e| Error::Plan(format!("cranelift: {e}")))?;
    let mut module = JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()));
    let mut ctx = module.make_context();
    let mut fctx = FunctionBuilderContext::new();
    let target = module.target_config();
    let ptr = target.pointer_type();
    let mut sig = module.make_signature();
    for _ in 0..3 {
        sig.params.push(AbiParam::new(types::I64));
    }
    let mut call_sig = module.make_signature();
    call_sig.params.push(AbiParam::new(types::F32));
    call_sig.returns.push(AbiParam::new(types::F32));
    let mut ids: Vec<Result<FuncId, Error>> = Vec::new();
    for (g, (prog, nest)) in groups.iter().enumerate() {
        let id = (|| -> Result<FuncId, Error> {
            prog.validate()?;
            if nest.operands() != prog.inputs + prog.stores.len() + 1 {
                return Err(Error::Plan(
                    "the nest's operands do not match the program".into(),
                ));
            }
            let id = module
                .declare_function(&format!("fused{g}"), Linkage::Local, &sig)
                .map_err(|e| Error::Plan(e.to_string()))?;
            ctx.func.signature = sig.clone();
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            {
                let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
                emit(&mut b, prog, &nest.inner_strides(), ptr, &call_sig);
                b.seal_all_blocks();
                b.finalize(target);
            }
            let r = module.define_function(id, &mut ctx).map_err(|e| {
                let e = format!("{e:?}");
                Error::Plan(e.chars().take(300).collect::<String>())
            });
            module.clear_context(&mut ctx);
            r.map(|_| id)
        })();
        if id.is_err() {
            module.clear_context(&mut ctx);
        }
        ids.push(id);
    }
    module
        .finalize_definitions()
        .map_err(|e| Error::Plan(format!("cranelift: {e}")))?;
    let fns: Vec<Result<*const u8, Error>> = ids
        .into_iter()
        .map(|id| id.map(|id| module.get_finalized_function(id)))
        .collect();
    let code = Arc::new(Code(Some(module)));
    Ok(groups
        .into_iter()
        .zip(fns)
        .map(|((program, nest), f)| {
            f.map(|f| Fused {
                // SAFETY: the function was compiled with exactly this signature (three 64-bit
                // integer parameters, no results) in the platform's C calling convention.
                f: unsafe { std::mem::transmute::<*const u8, RowFn>(f) },
                nest,
                drops: program
                    .dropouts()
                    .into_iter()
                    .map(|(p, key)| (p != 0.0).then(|| (key, keep_threshold(p))))
                    .collect(),
                program,
                _code: code.clone(),
            })
        })
        .collect())
}

macro_rules! shims {
    ($($name:ident $back:ident $f:ident),*) => {
        $(
            extern "C" fn $name(x: f32) -> f32 { apply(Func::$f, x) }
            extern "C" fn $back(x: f32) -> f32 { derivative(Func::$f, x) }
        )*
        /// The address of the function computing `f` (or its derivative) on one f32, exactly
        /// as the unfused kernels do.
        fn shim(f: Func, back: bool) -> usize {
            match (f, back) {
                $(
                    (Func::$f, false) => $name as extern "C" fn(f32) -> f32 as usize,
                    (Func::$f, true) => $back as extern "C" fn(f32) -> f32 as usize,
                )*
            }
        }
    };
}

shims!(
    relu relu_back Relu, gelu gelu_back Gelu, tanh tanh_back Tanh, exp exp_back Exp,
    log log_back Log, sqrt sqrt_back Sqrt, elu1 elu1_back Elu1, sigmoid sigmoid_back Sigmoid,
    recip recip_back Recip, abs abs_back Abs, stop_grad stop_grad_back StopGrad,
    step step_back Step, sin sin_back Sin, cos cos_back Cos
);

/// Emits the row function of `prog` for inner strides `strides` (inputs, outputs, index).
fn emit(
    b: &mut FunctionBuilder,
    prog: &Program,
    strides: &[usize],
    ptr: Type,
    call_sig: &Signature,
) {
    let mem = MemFlagsData::new().with_notrap();
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    let params = b.block_params(entry).to_vec();
    let (ptrs, n, train) = (params[0], params[1], params[2]);
    let ops = prog.inputs + prog.stores.len();
    let bases: Vec<Value> = (0..ops)
        .map(|k| b.ins().load(ptr, mem, ptrs, (8 * k) as i32))
        .collect();
    let masks: Vec<Value> = (0..prog.dropouts().len())
        .map(|d| b.ins().load(ptr, mem, ptrs, (8 * (ops + d)) as i32))
        .collect();
    let sigref = b.import_signature(call_sig.clone());
    let eval = b.ins().icmp_imm_s(IntCC::Equal, train, 0);
    // Inputs of stride 0 are read once per row.
    let hoisted: Vec<Option<Value>> = (0..prog.inputs)
        .map(|k| (strides[k] == 0).then(|| b.ins().load(types::F32, mem, bases[k], 0)))
        .collect();
    let vector = prog.vectorisable(strides);
    let vhead = b.create_block();
    let vbody = b.create_block();
    let shead = b.create_block();
    let sbody = b.create_block();
    let exit = b.create_block();
    for blk in [vhead, vbody, shead, sbody] {
        b.append_block_param(blk, types::I64);
    }
    // Stride-0 inputs as vectors, made in the entry block, before its terminator.
    let splats: Vec<Option<Value>> = if vector {
        hoisted
            .iter()
            .map(|h| h.map(|v| b.ins().splat(types::F32X4, v)))
            .collect()
    } else {
        Vec::new()
    };
    let zero = b.ins().iconst(types::I64, 0);
    let start = if vector { vhead } else { shead };
    b.ins().jump(start, &[BlockArg::from(zero)]);

    if vector {
        b.switch_to_block(vhead);
        let i = b.block_params(vhead)[0];
        let next = b.ins().iadd_imm_s(i, 4);
        let fits = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, next, n);
        b.ins().brif(
            fits,
            vbody,
            &[BlockArg::from(i)],
            shead,
            &[BlockArg::from(i)],
        );
        b.switch_to_block(vbody);
        let i = b.block_params(vbody)[0];
        let byte = b.ins().ishl_imm_s(i, 2);
        let load = |b: &mut FunctionBuilder, k: usize| match splats[k] {
            Some(v) => v,
            None => {
                let a = b.ins().iadd(bases[k], byte);
                b.ins().load(types::F32X4, mem, a, 0)
            }
        };
        let mask = |b: &mut FunctionBuilder, d: usize| {
            let a = b.ins().iadd(masks[d], byte);
            let m = b.ins().load(types::I32X4, mem, a, 0);
            b.ins().bitcast(types::F32X4, MemFlagsData::new(), m)
        };
        let vals = values(b, prog, types::F32X4, &load, &mask, eval);
        for (j, s) in prog.stores.iter().enumerate() {
            let k = prog.inputs + j;
            let a = b.ins().iadd(bases[k], byte);
            b.ins().store(mem, vals[*s], a, 0);
        }
        let next = b.ins().iadd_imm_s(i, 4);
        b.ins().jump(vhead, &[BlockArg::from(next)]);
    }

    b.switch_to_block(shead);
    let i = b.block_params(shead)[0];
    let more = b.ins().icmp(IntCC::UnsignedLessThan, i, n);
    b.ins().brif(more, sbody, &[BlockArg::from(i)], exit, &[]);
    b.switch_to_block(sbody);
    let i = b.block_params(sbody)[0];
    let addr = |b: &mut FunctionBuilder, k: usize| -> Value {
        let off = b.ins().imul_imm_s(i, (4 * strides[k]) as i64);
        b.ins().iadd(bases[k], off)
    };
    let keeps = |b: &mut FunctionBuilder, d: usize| {
        let off = b.ins().ishl_imm_s(i, 2);
        let a = b.ins().iadd(masks[d], off);
        let m = b.ins().load(types::I32, mem, a, 0);
        b.ins().icmp_imm_s(IntCC::NotEqual, m, 0)
    };
    let vals = scalar_values(b, prog, &hoisted, &addr, &keeps, eval, sigref);
    for (j, s) in prog.stores.iter().enumerate() {
        let a = addr(b, prog.inputs + j);
        b.ins().store(mem, vals[*s], a, 0);
    }
    let next = b.ins().iadd_imm_s(i, 1);
    b.ins().jump(shead, &[BlockArg::from(next)]);

    b.switch_to_block(exit);
    b.ins().return_(&[]);
}

/// The vector body: every instruction on `ty` lanes (no calls). `mask(b, d)` is dropout `d`'s
/// keep mask as lanes of all ones or zeros (in `ty`); `eval` is nonzero out of training.
fn values(
    b: &mut FunctionBuilder,
    prog: &Program,
    ty: Type,
    load: &dyn Fn(&mut FunctionBuilder, usize) -> Value,
    mask: &dyn Fn(&mut FunctionBuilder, usize) -> Value,
    eval: Value,
) -> Vec<Value> {
    let mut v: Vec<Value> = Vec::with_capacity(prog.insts.len());
    let mut drop = 0;
    let fconst = |b: &mut FunctionBuilder, c: f32| {
        let s = b.ins().f32const(c);
        b.ins().splat(ty, s)
    };
    for inst in &prog.insts {
        let r = match *inst {
            Inst::Load(k) => load(b, k),
            Inst::Scale(x, c) => {
                let c = fconst(b, c);
                b.ins().fmul(v[x], c)
            }
            Inst::Shift(x, c) => {
                let c = fconst(b, c);
                b.ins().fadd(v[x], c)
            }
            Inst::Add(x, y) => b.ins().fadd(v[x], v[y]),
            Inst::Sub(x, y) => b.ins().fsub(v[x], v[y]),
            Inst::Mul(x, y) => b.ins().fmul(v[x], v[y]),
            Inst::Div(x, y) => b.ins().fdiv(v[x], v[y]),
            Inst::Max(x, y) | Inst::Min(x, y) => {
                let c = left_wins(b, matches!(inst, Inst::Max(..)), v[x], v[y]);
                let c = b.ins().bitcast(ty, MemFlagsData::new(), c);
                b.ins().bitselect(c, v[x], v[y])
            }
            Inst::Map(Func::Sqrt, x) => b.ins().sqrt(v[x]),
            Inst::Map(Func::Recip, x) => {
                let one = fconst(b, 1.0);
                b.ins().fdiv(one, v[x])
            }
            Inst::Map(Func::Relu, x) => {
                let z = fconst(b, 0.0);
                let c = b.ins().fcmp(FloatCC::GreaterThan, v[x], z);
                let c = b.ins().bitcast(ty, MemFlagsData::new(), c);
                b.ins().bitselect(c, v[x], z)
            }
            Inst::MapBack(Func::Relu, x, g) => {
                let z = fconst(b, 0.0);
                let c = b.ins().fcmp(FloatCC::GreaterThan, v[x], z);
                let c = b.ins().bitcast(ty, MemFlagsData::new(), c);
                b.ins().bitselect(c, v[g], z)
            }
            Inst::Map(Func::Tanh, x) => tanh_lanes(b, v[x], &fconst),
            Inst::MapBack(Func::Tanh, x, g) => {
                // gy * (1 - t t), as `derivative(Tanh)` computes it.
                let t = tanh_lanes(b, v[x], &fconst);
                let tt = b.ins().fmul(t, t);
                let one = fconst(b, 1.0);
                let d = b.ins().fsub(one, tt);
                b.ins().fmul(v[g], d)
            }
            Inst::Dropout { p, x, .. } => {
                drop += 1;
                if p == 0.0 {
                    v[x]
                } else {
                    let keep = mask(b, drop - 1);
                    let scale = fconst(b, (1.0 / (1.0 - p)) as f32);
                    let scaled = b.ins().fmul(v[x], scale);
                    let z = fconst(b, 0.0);
                    let dropped = b.ins().bitselect(keep, scaled, z);
                    b.ins().select(eval, v[x], dropped)
                }
            }
            // `Program::vectorisable` keeps everything else on the scalar path; a zero
            // keeps the SSA well formed should it ever be asked for.
            _ => fconst(b, 0.0),
        };
        v.push(r);
    }
    v
}

/// Where `max2` (`is_max`) or `min2` takes its left operand: where the left wins or ties or is
/// NaN (so a NaN on either side propagates). Scalar or lane-wise, as `x` and `y` are.
fn left_wins(b: &mut FunctionBuilder, is_max: bool, x: Value, y: Value) -> Value {
    let cc = if is_max {
        FloatCC::GreaterThanOrEqual
    } else {
        FloatCC::LessThanOrEqual
    };
    let wins = b.ins().fcmp(cc, x, y);
    let nan = b.ins().fcmp(FloatCC::Unordered, x, x);
    b.ins().bor(wins, nan)
}

/// `func::single::tanh` on vector lanes: the same operations in the same order (the clamp as
/// max then min, which agree with `f32::clamp` except on a NaN's payload).
fn tanh_lanes(
    b: &mut FunctionBuilder,
    x: Value,
    fconst: &dyn Fn(&mut FunctionBuilder, f32) -> Value,
) -> Value {
    use crate::backend::cpu::func::single::{TANH_CLAMP, TANH_P, TANH_Q};
    let lo = fconst(b, -TANH_CLAMP);
    let hi = fconst(b, TANH_CLAMP);
    let c = b.ins().fmax(x, lo);
    let c = b.ins().fmin(c, hi);
    let x2 = b.ins().fmul(c, c);
    let horner = |b: &mut FunctionBuilder, coef: &[f32]| {
        let mut p = fconst(b, coef[0]);
        for k in &coef[1..] {
            let m = b.ins().fmul(p, x2);
            let k = fconst(b, *k);
            p = b.ins().fadd(m, k);
        }
        p
    };
    let p = horner(b, &TANH_P);
    let q = horner(b, &TANH_Q);
    let n = b.ins().fmul(c, p);
    b.ins().fdiv(n, q)
}

/// The scalar body. `keeps(b, d)` is whether dropout `d` keeps this element (from its mask).
fn scalar_values(
    b: &mut FunctionBuilder,
    prog: &Program,
    hoisted: &[Option<Value>],
    addr: &dyn Fn(&mut FunctionBuilder, usize) -> Value,
    keeps: &dyn Fn(&mut FunctionBuilder, usize) -> Value,
    eval: Value,
    sigref: cranelift_codegen::ir::SigRef,
) -> Vec<Value> {
    let mem = MemFlagsData::new().with_notrap();
    let mut v: Vec<Value> = Vec::with_capacity(prog.insts.len());
    let mut drop = 0;
    let call = |b: &mut FunctionBuilder, f: Func, back: bool, x: Value| -> Value {
        let callee = b.ins().iconst(types::I64, shim(f, back) as i64);
        let c = b.ins().call_indirect(sigref, callee, &[x]);
        b.inst_results(c)[0]
    };
    for inst in &prog.insts {
        let r = match *inst {
            Inst::Load(k) => match hoisted[k] {
                Some(h) => h,
                None => {
                    let a = addr(b, k);
                    b.ins().load(types::F32, mem, a, 0)
                }
            },
            Inst::Scale(x, c) => {
                let c = b.ins().f32const(c);
                b.ins().fmul(v[x], c)
            }
            Inst::Shift(x, c) => {
                let c = b.ins().f32const(c);
                b.ins().fadd(v[x], c)
            }
            Inst::Add(x, y) => b.ins().fadd(v[x], v[y]),
            Inst::Sub(x, y) => b.ins().fsub(v[x], v[y]),
            Inst::Mul(x, y) => b.ins().fmul(v[x], v[y]),
            Inst::Div(x, y) => b.ins().fdiv(v[x], v[y]),
            Inst::Max(x, y) | Inst::Min(x, y) => {
                let c = left_wins(b, matches!(inst, Inst::Max(..)), v[x], v[y]);
                b.ins().select(c, v[x], v[y])
            }
            Inst::Map(Func::Sqrt, x) => b.ins().sqrt(v[x]),
            Inst::Map(Func::Recip, x) => {
                let one = b.ins().f32const(1.0);
                b.ins().fdiv(one, v[x])
            }
            Inst::Map(Func::Relu, x) => {
                let z = b.ins().f32const(0.0);
                let c = b.ins().fcmp(FloatCC::GreaterThan, v[x], z);
                b.ins().select(c, v[x], z)
            }
            Inst::Map(f, x) => call(b, f, false, v[x]),
            Inst::MapBack(Func::Relu, x, g) => {
                let z = b.ins().f32const(0.0);
                let c = b.ins().fcmp(FloatCC::GreaterThan, v[x], z);
                b.ins().select(c, v[g], z)
            }
            Inst::MapBack(f, x, g) => {
                let d = call(b, f, true, v[x]);
                b.ins().fmul(v[g], d)
            }
            Inst::Dropout { p, x, .. } => {
                drop += 1;
                if p == 0.0 {
                    v[x]
                } else {
                    let keep = keeps(b, drop - 1);
                    let scale = b.ins().f32const((1.0 / (1.0 - p)) as f32);
                    let scaled = b.ins().fmul(v[x], scale);
                    let z = b.ins().f32const(0.0);
                    let dropped = b.ins().select(keep, scaled, z);
                    b.ins().select(eval, v[x], dropped)
                }
            }
        };
        v.push(r);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::interp::keep;

    #[test]
    fn the_integer_keep_test_is_the_float_one() {
        for p in [0.0, 1e-9, 0.1, 0.25, 0.5, 0.9, 0.999_999, 1.0] {
            let t = keep_threshold(p);
            for i in 0..20_000u64 {
                let mut z = 7 ^ 3u64.wrapping_mul(H1) ^ i.wrapping_mul(H2);
                z = (z ^ (z >> 30)).wrapping_mul(H3);
                z = (z ^ (z >> 27)).wrapping_mul(H4);
                z ^= z >> 31;
                assert_eq!((z >> 11) >= t, keep(7, 3, i, p), "p {p} i {i}");
            }
        }
    }

    #[test]
    fn nests_merge_and_split() {
        let n = DynNest::new(vec![(4, vec![3, 0, 3]), (3, vec![1, 1, 1])], 3);
        assert_eq!(n.dims().len(), 2);
        let m = DynNest::new(
            vec![(4, vec![3, 3, 3]), (3, vec![1, 1, 1]), (1, vec![9, 9, 9])],
            3,
        );
        assert_eq!(m.dims().len(), 1);
        assert_eq!((m.dims()[0].n, m.dims()[0].s.clone()), (12, vec![1, 1, 1]));
        let mut whole = Vec::new();
        n.rows(&[0, 0, 0], |o, len| whole.push((o.to_vec(), len)));
        for parts in 1..6 {
            let mut got = Vec::new();
            for (base, sub) in n.split(parts) {
                sub.rows(&base, |o, len| got.push((o.to_vec(), len)));
            }
            assert_eq!(got, whole);
        }
        let s = DynNest::new(vec![], 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.reach(0), 0);
    }

    #[test]
    fn invalid_programs_are_errors_not_panics() {
        let bad = Program {
            insts: vec![Inst::Add(0, 1)],
            inputs: 1,
            stores: vec![0],
        };
        let nest = DynNest::new(vec![(8, vec![1, 1, 1])], 3);
        let r = compile(vec![(bad, nest)]);
        assert!(r[0].is_err());
    }

    /// Runs a program over `n` contiguous elements of every operand (or broadcast ones).
    fn run(prog: Program, ins: &[Vec<f32>], strides: &[usize], n: usize, train: bool) -> Vec<f32> {
        let mut s = strides.to_vec();
        s.push(1);
        let nest = DynNest::new(vec![(n, s)], prog.inputs + 2);
        let f = compile(vec![(prog, nest)]).pop().unwrap().unwrap();
        let mut out = vec![0f32; n];
        let mut p: Vec<*mut f32> = ins.iter().map(|v| v.as_ptr() as *mut f32).collect();
        p.push(out.as_mut_ptr());
        unsafe { f.run(&p, train, 11, usize::MAX) };
        out
    }

    #[test]
    fn vector_and_scalar_paths_compute_the_ops() {
        let n = 11;
        let a: Vec<f32> = (0..n).map(|i| i as f32 - 5.5).collect();
        let b: Vec<f32> = (0..n).map(|i| 0.25 + i as f32).collect();
        // relu(a * b + 2) / b, vectorised (strides 1).
        let prog = Program {
            insts: vec![
                Inst::Load(0),
                Inst::Load(1),
                Inst::Mul(0, 1),
                Inst::Shift(2, 2.0),
                Inst::Map(Func::Relu, 3),
                Inst::Div(4, 1),
            ],
            inputs: 2,
            stores: vec![5],
        };
        let got = run(prog, &[a.clone(), b.clone()], &[1, 1, 1], n, true);
        for i in 0..n {
            assert_eq!(got[i], (a[i] * b[i] + 2.0).max(0.0) / b[i]);
        }
        // gelu(a) + broadcast scalar, scalar path with a call.
        let prog = Program {
            insts: vec![
                Inst::Load(0),
                Inst::Load(1),
                Inst::Map(Func::Gelu, 0),
                Inst::Add(2, 1),
            ],
            inputs: 2,
            stores: vec![3],
        };
        let got = run(prog, &[a.clone(), vec![3.0]], &[1, 0, 1], n, true);
        for i in 0..n {
            assert_eq!(got[i], apply(Func::Gelu, a[i]) + 3.0);
        }
        // tanh and its gradient on vector lanes, bit for bit the scalar functions, from tiny to
        // saturated arguments (and on the scalar path, through a stride of 2).
        let xs: Vec<f32> = (-4001..4000)
            .map(|i| i as f32 * 2.5e-3 * (1.0 + (i % 7) as f32))
            .chain([0.0, -0.0, 1e-30, -1e-30, 7.9, 8.0, 1e6, -1e6])
            .collect();
        let gy: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 5) as f32).collect();
        let prog = Program {
            insts: vec![
                Inst::Load(0),
                Inst::Load(1),
                Inst::Map(Func::Tanh, 0),
                Inst::MapBack(Func::Tanh, 0, 1),
                Inst::Add(2, 3),
            ],
            inputs: 2,
            stores: vec![4],
        };
        let n = xs.len();
        let got = run(prog.clone(), &[xs.clone(), gy.clone()], &[1, 1, 1], n, true);
        for i in 0..n {
            let want = apply(Func::Tanh, xs[i]) + gy[i] * derivative(Func::Tanh, xs[i]);
            assert_eq!(got[i].to_bits(), want.to_bits(), "x = {}", xs[i]);
        }
        let half = n / 2;
        let got = run(prog, &[xs.clone(), gy.clone()], &[2, 2, 1], half, true);
        for i in 0..half {
            let want = apply(Func::Tanh, xs[2 * i]) + gy[2 * i] * derivative(Func::Tanh, xs[2 * i]);
            assert_eq!(got[i].to_bits(), want.to_bits(), "x = {}", xs[2 * i]);
        }
        // Dropout: the interpreter's mask, identity out of training.
        let prog = Program {
            insts: vec![
                Inst::Load(0),
                Inst::Dropout {
                    p: 0.3,
                    key: 5,
                    x: 0,
                },
            ],
            inputs: 1,
            stores: vec![1],
        };
        // A row of several mask chunks, and one that ends inside the vector loop.
        for n in [n, 2 * MASK_CHUNK + 37] {
            let b: Vec<f32> = (0..n).map(|i| 0.25 + i as f32).collect();
            let got = run(prog.clone(), std::slice::from_ref(&b), &[1, 1], n, true);
            let scale = (1.0 / (1.0 - 0.3f64)) as f32;
            for i in 0..n {
                let want = if keep(11, 5, i as u64, 0.3) {
                    b[i] * scale
                } else {
                    0.0
                };
                assert_eq!(got[i], want, "element {i} of {n}");
            }
            assert_eq!(
                run(prog.clone(), std::slice::from_ref(&b), &[1, 1], n, false),
                b
            );
        }
    }

    #[test]
    fn the_keep_mask_is_the_interpreters() {
        for (idx0, stride, p) in [
            (0u64, 1u64, 0.1),
            (12_345, 7, 0.5),
            (3, 0, 0.9),
            (1, 1, 0.0),
        ] {
            let mut m = vec![7u32; 301];
            keep_mask(99, 4, idx0, stride, keep_threshold(p), &mut m);
            for (i, w) in m.iter().enumerate() {
                let want = keep(99, 4, idx0 + i as u64 * stride, p);
                assert_eq!(*w, if want { u32::MAX } else { 0 }, "i {i} p {p}");
            }
        }
    }
}
