//! The low-level IR: a diagram planned for concrete sizes, as plain data that every backend
//! executes or renders. The CPU backend runs it (`backend::cpu::exec`, compiling the fused
//! groups with cranelift and keeping the code beside the plan); the CUDA backend renders it as
//! CUDA C (`backend::cuda::codegen`). Nothing here runs a kernel or generates machine code.
//!
//! [`Plan::new`] plans an instantiated diagram (forward or gradient: both are plain IR) for
//! concrete axis sizes:
//! - every wire gets a fixed row-major layout in its [`WireType`] axis order;
//! - every box becomes zero or more steps ([`kernels::Kernel`]) whose strides and offset tables
//!   are computed here, so a run never looks an axis up by name;
//! - structural boxes cost nothing when they can: a copy box's outputs, and a rename, split or
//!   merge whose output layout is its input's memory order, are aliases of their input's buffer
//!   (the buffer then lives until the last alias is consumed); only a genuine change of memory
//!   order is a copy;
//! - contractions (`dot`, `outer`, `linear`, `einsum`) are batched products ([`kernels::Gemm`])
//!   reading their operands in place through strides whenever each operand's axes of a role
//!   (rows, columns, contracted) collapse into one stride, with a copy to a contiguous
//!   temporary only when they do not; each product is oriented so that its longer output side
//!   is the rows; a linear map's bias is written first and the product accumulated onto it;
//! - every other op is a loop nest over strided layouts ([`nest::Nest`]: length-1 axes dropped,
//!   axes contiguous for every operand merged, so the inner loop is long and usually has
//!   stride 1);
//! - with [`PlanOptions::jit`] (the default), after lowering and before buffers are assigned,
//!   runs of elementwise steps over one output layout become one fused step (`fuse`, a
//!   [`program::Program`] over a [`nest::DynNest`]); the values between them get no buffer;
//! - a memory planner gives every computed value a buffer from a small pool by liveness (a value
//!   lives from the step that writes it to the last step that reads it or an alias of it), and
//!   lets an elementwise or lane-wise step write over an input that dies there when both have
//!   the same layout. Diagram inputs are the caller's, read in place and never written;
//!   outputs live to the end of the run;
//! - every step's reach is bounds-checked against its buffers ([`kernels::Kernel::check_bounds`]).

pub mod attention;
mod build;
mod fuse;
pub mod kernels;
pub mod nest;
pub mod program;

use crate::error::Error;
use crate::ir::verify::Flat;
use crate::ir::{AxisId, AxisTable};
use build::Builder;
use kernels::Kernel;

/// Where a value's elements are at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The caller's input slice `k` (read only).
    Input(usize),
    /// The plan's constant `k` (read only).
    Const(usize),
    /// Workspace buffer `k`.
    Work(usize),
}

/// What a value's memory is, for the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Input(usize),
    Const(usize),
    /// Computed by a step: it needs a workspace buffer.
    Work,
}

/// A value of the plan: a wire, or a temporary of a lowered box. Row-major in `axes` order.
#[derive(Clone, Debug)]
pub(crate) struct Val {
    axes: Vec<AxisId>,
    strides: Vec<usize>,
    len: usize,
    /// The value whose memory this one is (itself when it is not an alias).
    root: usize,
    origin: Origin,
    /// The step that writes it (roots only).
    def: usize,
}

/// A `check_finite` point after a box: its outputs, with the message for each.
#[derive(Clone, Debug)]
pub struct Check {
    pub messages: Vec<String>,
    pub lens: Vec<usize>,
}

/// What a step does: a kernel, or a `check_finite` point.
#[derive(Clone, Debug)]
pub enum Action {
    Kernel(Kernel),
    Check(Check),
}

/// A step under construction: values rather than locations.
pub(crate) struct Draft {
    action: Action,
    ins: Vec<usize>,
    outs: Vec<usize>,
    /// Input slots whose buffer the first output may take over (same layout, elementwise).
    inplace: Vec<usize>,
    /// The error prefix: the box this step belongs to.
    label: String,
}

/// One step of a plan.
#[derive(Clone, Debug)]
pub struct Step {
    pub action: Action,
    /// Inputs, then outputs.
    pub locs: Vec<Loc>,
    /// The box (or boxes, for a fused group) the step computes: the prefix of its errors.
    pub label: String,
}

/// A diagram input as the plan expects it.
#[derive(Clone, Debug)]
pub struct InputSpec {
    pub name: String,
    pub len: usize,
    /// `[tok, dm] = [5, 8]`, for error messages.
    pub shape: String,
}

/// A planned diagram: steps over buffers, as plain data. Immutable once built (`Send + Sync`).
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub inputs: Vec<InputSpec>,
    /// Each output's location and length.
    pub outputs: Vec<(Loc, usize)>,
    pub consts: Vec<Vec<f32>>,
    /// The capacity (elements) of each workspace buffer.
    buffers: Vec<usize>,
    /// Elements a plan without buffer reuse would allocate: one buffer per computed value.
    no_reuse: usize,
    gemm_flops: u64,
    gemms: usize,
    fused: usize,
}

/// How a plan is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanOptions {
    /// Group runs of elementwise steps into fused steps ([`Kernel::Fused`]: one scalar program
    /// each, which the CPU compiles with cranelift and CUDA renders as one kernel). Off, every
    /// step is a kernel of its own (on the CPU: the interpreter path). Results are the same bit for bit, up
    /// to the sign of zeros and NaN payloads. With `check_finite`, a fused plan checks only
    /// the values it writes to memory, so a NaN is reported at the end of the group of steps
    /// it arose in: compile without JIT to have the exact box.
    pub jit: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { jit: true }
    }
}

impl Plan {
    /// Compiles an instantiated diagram (no regions, calls or unevaluated constants: an
    /// [`crate::ir::instance::Instance`]'s diagram, or its [`crate::autodiff::gradient`]) for
    /// the axis sizes `sizes` (indexed by `AxisId`). Errors name the box or axis involved.
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
        Plan::with_unfused(diagram, axes, sizes, options, &[])
    }

    /// [`Plan::with_options`], leaving the candidate groups whose [`FusedGroup::id`] is in
    /// `unfused` as separate steps (for a backend that could not compile them).
    pub fn with_unfused(
        diagram: &Flat,
        axes: &AxisTable,
        sizes: &[usize],
        options: PlanOptions,
        unfused: &[usize],
    ) -> Result<Plan, Error> {
        let mut b = Builder {
            d: diagram,
            axes,
            sizes,
            vals: Vec::new(),
            wire_val: vec![None; diagram.wires.len()],
            drafts: Vec::new(),
            consts: Vec::new(),
        };
        let mut inputs = Vec::new();
        for (k, w) in diagram.inputs.iter().enumerate() {
            let ty = &diagram.wire(*w).ty;
            let v = b.value(ty.axes.clone(), Origin::Input(k))?;
            b.wire_val[w.0 as usize] = Some(v);
            let name = diagram.input_names.get(k).cloned().unwrap_or_default();
            let dims: Vec<String> = ty.axes.iter().map(|a| b.size(*a).to_string()).collect();
            inputs.push(InputSpec {
                name,
                len: b.vals[v].len,
                shape: format!("{} = [{}]", ty.display(axes), dims.join(", ")),
            });
        }
        for bi in 0..diagram.boxes.len() {
            b.lower(bi).map_err(|e| {
                e.context(&format!(
                    "box {bi} ({}): ",
                    crate::ir::print::op_text(&diagram.boxes[bi].op, axes)
                ))
            })?;
        }
        let outs: Vec<usize> = diagram
            .outputs
            .iter()
            .map(|w| {
                b.wire_val[w.0 as usize].ok_or_else(|| Error::Plan("an output has no value".into()))
            })
            .collect::<Result<_, _>>()?;
        let fused = if options.jit {
            b.fuse(&outs, unfused)
        } else {
            0
        };
        let mut plan = b.finish(inputs, &outs)?;
        plan.fused = fused;
        Ok(plan)
    }

    /// Compiles an instance's diagram.
    pub fn for_instance(inst: &crate::ir::instance::Instance) -> Result<Plan, Error> {
        Plan::new(&inst.diagram, &inst.axes, &inst.sizes)
    }

    /// Compiles an instance's diagram with explicit options.
    pub fn for_instance_with(
        inst: &crate::ir::instance::Instance,
        options: PlanOptions,
    ) -> Result<Plan, Error> {
        Plan::with_options(&inst.diagram, &inst.axes, &inst.sizes, options)
    }

    /// How many fused groups the plan has.
    pub fn fused_count(&self) -> usize {
        self.fused
    }

    /// The bytes of the workspace buffers: the plan's peak memory besides the caller's inputs
    /// and the plan's constants.
    pub fn peak_bytes(&self) -> usize {
        self.buffers
            .iter()
            .fold(0usize, |a, b| a.saturating_add(*b))
            .saturating_mul(4)
    }

    /// The bytes a plan without buffer reuse would need: one buffer per computed value (views
    /// and copies still aliased), for comparison with [`Plan::peak_bytes`].
    pub fn no_reuse_bytes(&self) -> usize {
        4 * self.no_reuse
    }

    /// How many workspace buffers the plan uses.
    pub fn buffer_count(&self) -> usize {
        self.buffers.len()
    }

    /// Floating-point operations of the contractions (GEMMs) of one run: `2 m k n` each.
    pub fn gemm_flops(&self) -> u64 {
        self.gemm_flops
    }

    /// How many GEMM steps the plan has (each may run several batched products).
    pub fn gemm_count(&self) -> usize {
        self.gemms
    }

    /// How many steps (kernels and `check_finite` points) the plan has.
    pub fn step_count(&self) -> usize {
        self.steps.len()
    }

    /// The number of elements input `k` must have.
    pub fn input_len(&self, k: usize) -> usize {
        self.inputs[k].len
    }

    /// The number of elements output `k` has.
    pub fn output_len(&self, k: usize) -> usize {
        self.outputs[k].1
    }

    /// The plan's kernels in order, with their operands (inputs, then outputs) and the label of
    /// the box each belongs to: what a backend lowers. The
    /// `check_finite` points are left out.
    pub fn kernel_steps(&self) -> impl Iterator<Item = (&Kernel, &[Loc], &str)> {
        self.steps.iter().filter_map(|s| match &s.action {
            Action::Kernel(k) => Some((k, s.locs.as_slice(), s.label.as_str())),
            Action::Check(_) => None,
        })
    }

    /// The capacity (elements) of each workspace buffer.
    pub fn buffer_lens(&self) -> &[usize] {
        &self.buffers
    }

    /// The plan's constants (read-only buffers).
    pub fn consts(&self) -> &[Vec<f32>] {
        &self.consts
    }

    /// Each output's location and length.
    pub fn output_locs(&self) -> &[(Loc, usize)] {
        &self.outputs
    }

    /// How many inputs the plan takes.
    pub fn input_count(&self) -> usize {
        self.inputs.len()
    }

    /// A one-line-per-step listing of the plan, for debugging and curiosity.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, st) in self.steps.iter().enumerate() {
            let what = match &st.action {
                Action::Check(_) => continue,
                Action::Kernel(k) => match k {
                    Kernel::Gemm(g) => format!(
                        "gemm {}x[{}x{}x{}]{}",
                        g.batch.len(),
                        g.m,
                        g.k,
                        g.n,
                        if g.bias.is_some() { " + bias" } else { "" }
                    ),
                    Kernel::Fused(f) => f.program.describe(),
                    other => other.name().to_string(),
                },
            };
            s.push_str(&format!("{i:4} {:<28} {:?}  {}\n", what, st.locs, st.label));
        }
        s
    }
}
