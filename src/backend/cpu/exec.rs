//! The fast CPU executor: f32, a backend-neutral plan ([`crate::lir::Plan`]) run many times.
//!
//! [`Plan::new`] plans an instantiated diagram (`lir`: layouts, steps, buffers) and compiles
//! each fused group of elementwise steps to machine code with cranelift ([`super::jit`]),
//! keeping the code beside the plan. A group cranelift cannot compile is left unfused: the
//! plan is made again without it. [`Plan::run`] then executes the steps on the caller's inputs
//! (each a flat `&[f32]` in its input wire's layout) with a reusable [`Workspace`], and returns
//! the outputs in their wires' layouts. Its semantics are the reference interpreter's
//! ([`super::interp`], in f64), which the tests in `tests/fast_exec.rs` compare it against op
//! by op and on whole models: the same [`RunOptions`], the same dropout masks (element indices
//! in the output wire's layout), the same errors.
//!
//! Products run on the `gemm` crate (its AVX-512 kernels where the CPU has them, chosen at run
//! time; one product over every core, a batch of products split over the cores by batch);
//! matrix-vector and outer products, which a GEMM's packing only slows down, are direct loops.
//! Large elementwise, dropout, copy, cumulative-sum and matrix-vector steps split their outer
//! loop over the cores, each thread writing a disjoint part of the output, and reductions split
//! a kept innermost axis (each output summed whole, in the serial order, by one thread).
//! Without fusion (`jit: false`, `--no-jit`), every step runs on the kernels of `kernels.rs`:
//! the interpreter path that the JIT path is checked against.

pub(crate) mod attention;
pub(crate) mod kernels;
pub use kernels::SCAN_CHUNK;

pub use super::interp::RunOptions;
use super::jit;
use crate::error::Error;
use crate::ir::AxisTable;
use crate::ir::verify::Flat;
use crate::lir::{Action, program::FusedGroup};
pub use crate::lir::{Loc, PlanOptions};
use kernels::Kernel;

/// A plan with its fused groups compiled for this CPU. Dereferences to the backend-neutral
/// [`crate::lir::Plan`] (sizes, buffers, steps). Immutable once built (`Send + Sync`): one plan
/// can serve several threads, each with its own [`Workspace`].
#[derive(Clone, Debug)]
pub struct Plan {
    lir: crate::lir::Plan,
    /// The compiled code of each step that is a fused group (`None` for every other step).
    code: Vec<Option<jit::Fused>>,
    /// Fused groups the code generator could not compile, planned again as separate steps
    /// (the same results, slower): zero unless the JIT has a bug.
    jit_failures: usize,
}

impl std::ops::Deref for Plan {
    type Target = crate::lir::Plan;
    fn deref(&self) -> &crate::lir::Plan {
        &self.lir
    }
}

/// The time one kernel step took ([`Plan::run_timed`]).
#[derive(Clone, Debug)]
pub struct StepTime<'a> {
    /// The boxes the step computes: `box 69 (einsum)`, or a fused group's first and last.
    pub label: &'a str,
    /// The kind of kernel (`gemm`, `fused`, `cross-entropy`...).
    pub kind: &'static str,
    pub time: std::time::Duration,
    /// Floating-point operations of a product (0 for other kernels).
    pub flops: u64,
    /// The product, when the step is one: its shape, batch and operand strides.
    pub gemm: Option<&'a kernels::Gemm>,
}

/// Step times summed per kind of kernel, with the number of steps of each kind, most
/// expensive first.
pub fn by_kind(times: &[StepTime]) -> Vec<(&'static str, std::time::Duration, usize)> {
    let mut prof: Vec<(&'static str, std::time::Duration, usize)> = Vec::new();
    for t in times {
        match prof.iter_mut().find(|e| e.0 == t.kind) {
            Some(e) => {
                e.1 += t.time;
                e.2 += 1;
            }
            None => prof.push((t.kind, t.time, 1)),
        }
    }
    prof.sort_by_key(|p| std::cmp::Reverse(p.1));
    prof
}

/// The mutable memory of runs: the plan's buffers. Reuse one across runs to avoid allocating;
/// [`Plan::run`] (re)sizes it for the plan it is given.
#[derive(Clone, Debug, Default)]
pub struct Workspace {
    bufs: Vec<Vec<f32>>,
}

impl Plan {
    /// Plans an instantiated diagram (no regions, calls or unevaluated constants: an
    /// [`crate::ir::instance::Instance`]'s diagram, or its [`crate::autodiff::gradient`]) for
    /// the axis sizes `sizes` (indexed by `AxisId`) and compiles it for this CPU. Errors name
    /// the box or axis involved.
    pub fn new(diagram: &Flat, axes: &AxisTable, sizes: &[usize]) -> Result<Plan, Error> {
        Plan::with_options(diagram, axes, sizes, PlanOptions::default())
    }

    /// [`Plan::new`] with explicit options (JIT fusion on or off).
    pub fn with_options(
        diagram: &Flat,
        axes: &AxisTable,
        sizes: &[usize],
        options: PlanOptions,
    ) -> Result<Plan, Error> {
        let mut unfused: Vec<usize> = Vec::new();
        loop {
            let lir = crate::lir::Plan::with_unfused(diagram, axes, sizes, options, &unfused)?;
            let groups: Vec<(usize, &FusedGroup)> = lir
                .steps
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match &s.action {
                    Action::Kernel(Kernel::Fused(g)) => Some((i, g.as_ref())),
                    _ => None,
                })
                .collect();
            let jobs = groups
                .iter()
                .map(|(_, g)| (g.program.clone(), g.nest.clone()))
                .collect();
            let mut code: Vec<Option<jit::Fused>> = vec![None; lir.steps.len()];
            let mut failed = Vec::new();
            for ((i, g), f) in groups.iter().zip(jit::compile(jobs)) {
                match f {
                    Ok(f) => code[*i] = Some(f),
                    Err(_) => failed.push(g.id),
                }
            }
            if failed.is_empty() {
                return Ok(Plan {
                    lir,
                    code,
                    jit_failures: unfused.len(),
                });
            }
            // Plan again with these groups left as separate steps (a group's id is its
            // index among the candidates, which do not depend on what is excluded).
            unfused.extend(failed);
        }
    }

    /// Plans and compiles an instance's diagram.
    pub fn for_instance(inst: &crate::ir::instance::Instance) -> Result<Plan, Error> {
        Plan::new(&inst.diagram, &inst.axes, &inst.sizes)
    }

    /// Plans and compiles an instance's diagram with explicit options.
    pub fn for_instance_with(
        inst: &crate::ir::instance::Instance,
        options: PlanOptions,
    ) -> Result<Plan, Error> {
        Plan::with_options(&inst.diagram, &inst.axes, &inst.sizes, options)
    }

    /// The backend-neutral plan.
    /// How many fused groups the JIT failed to compile (they run unfused).
    pub fn jit_failures(&self) -> usize {
        self.jit_failures
    }

    pub fn lir(&self) -> &crate::lir::Plan {
        &self.lir
    }

    /// A workspace sized for this plan.
    pub fn workspace(&self) -> Workspace {
        let mut ws = Workspace::default();
        ws.fit(self);
        ws
    }

    /// Runs the plan on `inputs` (one flat slice per diagram input, row-major in the input
    /// wire's layout; index inputs hold token ids as floats) and returns the outputs, each
    /// row-major in its output wire's layout. Inputs are validated first (count and lengths,
    /// naming the input); run-time errors name the box.
    pub fn run(
        &self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        opts: RunOptions,
    ) -> Result<Vec<Vec<f32>>, Error> {
        Ok(self
            .run_views(ws, inputs, opts)?
            .into_iter()
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// As [`Plan::run`], without copying the outputs: each is a view into the workspace (or,
    /// for an output that is an input or a constant passed through, into that).
    pub fn run_views<'a>(
        &'a self,
        ws: &'a mut Workspace,
        inputs: &[&'a [f32]],
        opts: RunOptions,
    ) -> Result<Vec<&'a [f32]>, Error> {
        self.execute(ws, inputs, opts, None)?;
        Ok(self.views(ws, inputs))
    }

    /// Runs the plan, leaving the outputs in the workspace, where [`Plan::output_in`] reads
    /// them without borrowing the inputs (so the caller may change its inputs, such as the
    /// parameters of a training step, while it reads the gradients).
    pub fn run_in_place(
        &self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        opts: RunOptions,
    ) -> Result<(), Error> {
        self.execute(ws, inputs, opts, None)
    }

    /// Output `k` of the last run in `ws`, when it lives in the workspace (not when it is a
    /// diagram input or a constant passed through).
    pub fn output_in<'a>(&'a self, ws: &'a Workspace, k: usize) -> Option<&'a [f32]> {
        match self.outputs.get(k)? {
            (Loc::Work(b), len) => ws.bufs.get(*b).map(|buf| &buf[..*len]),
            _ => None,
        }
    }

    /// Runs the plan as [`Plan::run_views`] does, timing every step, and returns the time spent
    /// per kind of kernel (`gemm`, `binary`, `layernorm`...), with the number of steps of that
    /// kind, most expensive first. For benchmarks and for finding what to optimise or fuse.
    pub fn run_profiled(
        &self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        opts: RunOptions,
    ) -> Result<Vec<(&'static str, std::time::Duration, usize)>, Error> {
        Ok(by_kind(&self.run_timed(ws, inputs, opts)?))
    }

    /// Runs the plan as [`Plan::run_views`] does, timing every kernel step: one record per
    /// step, in plan order (`diagc bench --top`).
    pub fn run_timed(
        &self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        opts: RunOptions,
    ) -> Result<Vec<StepTime<'_>>, Error> {
        let mut times = Vec::new();
        self.execute(ws, inputs, opts, Some(&mut times))?;
        Ok(times)
    }

    fn execute<'a>(
        &'a self,
        ws: &mut Workspace,
        inputs: &[&[f32]],
        opts: RunOptions,
        mut prof: Option<&mut Vec<StepTime<'a>>>,
    ) -> Result<(), Error> {
        if inputs.len() != self.inputs.len() {
            return Err(Error::Run(format!(
                "{} inputs given, the diagram takes {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        for (spec, x) in self.inputs.iter().zip(inputs) {
            if x.len() != spec.len {
                return Err(Error::Run(format!(
                    "input `{}`: has {} elements, expected {} ({})",
                    spec.name,
                    x.len(),
                    spec.len,
                    spec.shape
                )));
            }
        }
        ws.fit(self);
        let bases: Vec<*mut f32> = ws.bufs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        let ptr = |loc: Loc| -> *mut f32 {
            match loc {
                // Inputs and constants are only ever read: the planner never writes to them.
                Loc::Input(k) => inputs[k].as_ptr() as *mut f32,
                Loc::Const(k) => self.consts[k].as_ptr() as *mut f32,
                Loc::Work(k) => bases[k],
            }
        };
        let mut p = [std::ptr::null_mut::<f32>(); jit::MAX_OPERANDS];
        for (i, step) in self.steps.iter().enumerate() {
            match &step.action {
                Action::Kernel(k) => {
                    // Kernels take at most six pointers, fused ones at most `jit::MAX_OPERANDS`.
                    for (slot, loc) in p.iter_mut().zip(&step.locs) {
                        *slot = ptr(*loc);
                    }
                    let p = &p[..step.locs.len()];
                    let start = prof.as_ref().map(|_| std::time::Instant::now());
                    // SAFETY: the planner checked every offset of the kernel against the
                    // lengths of these buffers (`Kernel::check_bounds`), the workspace was
                    // just fitted to the plan and the inputs' lengths validated, and an output
                    // shares an input's buffer only where the planner allowed it in place.
                    match (k, &self.code[i]) {
                        // A fused group runs its compiled code; two threads pay off from a
                        // quarter of the generic kernels' threshold.
                        (Kernel::Fused(_), Some(f)) => unsafe {
                            f.run(p, opts.train, opts.seed, kernels::PAR_MIN / 4)
                        },
                        _ => unsafe { k.run(p, opts.train, opts.seed) }
                            .map_err(|e| Error::Run(format!("{}: {e}", step.label)))?,
                    }
                    if let (Some(prof), Some(start)) = (prof.as_deref_mut(), start) {
                        prof.push(StepTime {
                            label: &step.label,
                            kind: k.name(),
                            time: start.elapsed(),
                            flops: match k {
                                Kernel::Gemm(g) => g.flops(),
                                _ => 0,
                            },
                            gemm: match k {
                                Kernel::Gemm(g) => Some(g),
                                _ => None,
                            },
                        });
                    }
                }
                Action::Check(c) => {
                    if !opts.check_finite {
                        continue;
                    }
                    for ((loc, len), msg) in step.locs.iter().zip(&c.lens).zip(&c.messages) {
                        // SAFETY: as above; no kernel runs while this shared view lives.
                        let data =
                            unsafe { std::slice::from_raw_parts(ptr(*loc) as *const f32, *len) };
                        if data.iter().any(|x| !x.is_finite()) {
                            return Err(Error::Run(msg.clone()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The outputs of the last run in `ws`.
    fn views<'a>(&'a self, ws: &'a Workspace, inputs: &[&'a [f32]]) -> Vec<&'a [f32]> {
        self.outputs
            .iter()
            .map(|(loc, len)| match *loc {
                Loc::Input(k) => &inputs[k][..*len],
                Loc::Const(k) => &self.consts[k][..*len],
                Loc::Work(k) => &ws.bufs[k][..*len],
            })
            .collect()
    }
}

impl Workspace {
    /// Makes the buffers exactly the plan's (keeping allocations that already fit).
    fn fit(&mut self, plan: &Plan) {
        let caps = plan.buffer_lens();
        self.bufs.truncate(caps.len());
        while self.bufs.len() < caps.len() {
            self.bufs.push(Vec::new());
        }
        for (b, cap) in self.bufs.iter_mut().zip(caps) {
            if b.len() != *cap {
                b.resize(*cap, 0.0);
            }
        }
    }
}
