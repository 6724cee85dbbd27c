//! Scalar programs: what a group of fused elementwise steps computes at one element (a
//! straight-line list of instructions over the group's operands), and the group as a plan step
//! holds it, with its loop nest. Backends turn a group into code: the CPU compiles it with
//! cranelift (`backend::cpu::jit`), the CUDA backend renders it as one kernel
//! (`backend::cuda::codegen`).

use super::nest::DynNest;
use crate::error::Error;
use crate::ir::Func;

/// The most operands (inputs and outputs) one fused kernel may have.
pub const MAX_OPERANDS: usize = 16;

/// A per-element operation of a fused program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inst {
    /// Input operand `k` at this element.
    Load(usize),
    /// `x * k`.
    Scale(usize, f32),
    /// `x + k`.
    Shift(usize, f32),
    /// `f(x)`.
    Map(Func, usize),
    Add(usize, usize),
    Sub(usize, usize),
    Mul(usize, usize),
    Div(usize, usize),
    /// `func::single::max2(a, b)`.
    Max(usize, usize),
    /// `func::single::min2(a, b)`.
    Min(usize, usize),
    /// `(x, gy) -> gy * f'(x)`.
    MapBack(Func, usize, usize),
    /// Dropout of `x` with keep probability `1 - p`; the mask hashes (seed, key, the element's
    /// offset in the group's output layout).
    Dropout {
        p: f64,
        key: u64,
        x: usize,
    },
}

impl Inst {
    pub fn args(&self) -> Vec<usize> {
        match *self {
            Inst::Load(_) => vec![],
            Inst::Scale(x, _) | Inst::Shift(x, _) | Inst::Map(_, x) => vec![x],
            Inst::Dropout { x, .. } => vec![x],
            Inst::Add(a, b)
            | Inst::Sub(a, b)
            | Inst::Mul(a, b)
            | Inst::Div(a, b)
            | Inst::Max(a, b)
            | Inst::Min(a, b)
            | Inst::MapBack(_, a, b) => vec![a, b],
        }
    }

    /// Whether the instruction needs the scalar loop (a call).
    pub fn scalar_only(&self) -> bool {
        match *self {
            Inst::Map(f, _) => !matches!(f, Func::Relu | Func::Sqrt | Func::Recip | Func::Tanh),
            Inst::MapBack(f, _, _) => !matches!(f, Func::Relu | Func::Tanh),
            _ => false,
        }
    }
}

/// A fused elementwise program: SSA instructions (each refers to earlier ones by index), over
/// `inputs` input operands, storing the values `stores` to the output operands in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub insts: Vec<Inst>,
    pub inputs: usize,
    pub stores: Vec<usize>,
}

impl Program {
    /// Checks that every reference is to an earlier instruction and every load to an input.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, inst) in self.insts.iter().enumerate() {
            if let Inst::Load(k) = inst
                && *k >= self.inputs
            {
                return Err(Error::Plan(format!(
                    "instruction {i} loads input {k} of {}",
                    self.inputs
                )));
            }
            if inst.args().iter().any(|a| *a >= i) {
                return Err(Error::Plan(format!("instruction {i} uses a later value")));
            }
        }
        if let Some(s) = self.stores.iter().find(|s| **s >= self.insts.len()) {
            return Err(Error::Plan(format!(
                "a store of value {s}, which does not exist"
            )));
        }
        if self.inputs + self.stores.len() > MAX_OPERANDS {
            return Err(Error::Plan("too many operands".into()));
        }
        Ok(())
    }

    /// The dropout instructions, in order: the `k`th reads mask pointer `k` (after the
    /// operands).
    pub fn dropouts(&self) -> Vec<(f64, u64)> {
        self.insts
            .iter()
            .filter_map(|i| match *i {
                Inst::Dropout { p, key, .. } => Some((p, key)),
                _ => None,
            })
            .collect()
    }

    pub fn vectorisable(&self, strides: &[usize]) -> bool {
        strides.iter().all(|s| *s <= 1) && !self.insts.iter().any(Inst::scalar_only)
    }

    /// A short description: `fused[add, dropout, add]`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .insts
            .iter()
            .filter_map(|i| match i {
                Inst::Load(_) => None,
                Inst::Scale(..) => Some("scale".into()),
                Inst::Shift(..) => Some("shift".into()),
                Inst::Map(f, _) => Some(format!("{f:?}").to_lowercase()),
                Inst::Add(..) => Some("add".into()),
                Inst::Sub(..) => Some("sub".into()),
                Inst::Mul(..) => Some("mul".into()),
                Inst::Div(..) => Some("div".into()),
                Inst::Max(..) => Some("max".into()),
                Inst::Min(..) => Some("min".into()),
                Inst::MapBack(f, ..) => Some(format!("{f:?}-back").to_lowercase()),
                Inst::Dropout { .. } => Some("dropout".into()),
            })
            .collect();
        format!("fused[{}]", names.join(", "))
    }
}

/// A fused group as a plan step: its program and the loop nest over its operands (inputs,
/// outputs, then the element index that dropout hashes). `id` numbers the candidate groups of
/// one planning in order, so that a backend that cannot compile one can ask for a plan without
/// it ([`super::Plan::with_unfused`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FusedGroup {
    pub id: usize,
    pub program: Program,
    pub nest: DynNest,
}

impl FusedGroup {
    /// The loop nest over the step's operands.
    pub fn nest(&self) -> &DynNest {
        &self.nest
    }

    /// Inputs and outputs.
    pub fn arity(&self) -> usize {
        self.program.inputs + self.program.stores.len()
    }

    /// Checks every operand's reach against its length (`lens`: inputs then outputs).
    pub fn check_bounds(&self, lens: &[usize]) -> Result<(), Error> {
        if lens.len() != self.arity() {
            return Err(Error::Plan(
                "plan bug: wrong operand count for a fused kernel".into(),
            ));
        }
        for (k, len) in lens.iter().enumerate() {
            let r = self.nest.reach(k);
            if *len > 0 && r >= *len {
                return Err(Error::Plan(format!(
                    "plan bug: fused operand {k} reaches offset {r} of a {len}-element buffer"
                )));
            }
        }
        Ok(())
    }
}

/// The SplitMix64 constants of the dropout hash (`interp::keep`).
pub const H1: u64 = 0x9E37_79B9_7F4A_7C15;
pub const H2: u64 = 0xD1B5_4A32_D192_ED03;
pub const H3: u64 = 0xBF58_476D_1CE4_E5B9;
pub const H4: u64 = 0x94D0_49BB_1331_11EB;

/// The integer threshold equivalent to `u >= p` for `u = m / 2^53`: `m >= ceil(p 2^53)`.
pub fn keep_threshold(p: f64) -> u64 {
    let t = (p * (1u64 << 53) as f64).ceil();
    if t.is_nan() || t <= 0.0 {
        0
    } else if t >= (1u64 << 53) as f64 {
        1u64 << 53
    } else {
        t as u64
    }
}
