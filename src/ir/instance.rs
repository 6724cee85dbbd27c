//! Instantiation: from a checked program, a diagram name, axis sizes and hyperparameters to one
//! flat, functional diagram that a backend can execute.
//!
//! The result ([`Instance`]) has:
//! - no calls (every composite box is inlined, diagram-valued hyperparameters resolved), no
//!   repeat regions (unrolled, each iteration with its own parameters), no SIMD regions (lowered
//!   with [`super::lower::lower_simd`]);
//! - parameters as diagram inputs: the data inputs come first, then one input per parameter
//!   tensor ([`Instance::params`] gives names, axes and initialisation). A learned box takes its
//!   parameters as extra inputs, in the order of its [`ParamSpec`]s (`linear(x, weight, bias)`,
//!   `layernorm(x, gain, bias)`, `embed(ids, table)`); `param[..]()` becomes the input itself; a
//!   `learner` becomes linear maps, a sum and a ReLU over a fresh width axis;
//! - every constant evaluated (`scale`, `shift`), every dropout keyed ([`ExecOp::Dropout`]);
//! - concrete sizes for every axis it uses ([`Instance::sizes`]);
//! - the IR invariants: one source and one sink per wire, topological order.

use super::verify::Flat;
use super::*;
use crate::error::Error;
use std::collections::BTreeMap;

/// A hyperparameter value given when instantiating.
#[derive(Clone, Debug, PartialEq)]
pub enum HyperValue {
    Num(f64),
    Diagram(String),
    /// A diagram with some of its own hyperparameters fixed, the others at their defaults: the
    /// value of a diagram-valued hyperparameter whose diagram's hyperparameters are "fixed by
    /// whoever passed it" (docs/language.md), here by the caller of [`instantiate`] (`diagc
    /// train --hyper`). Calls through the hyperparameter (`mech(x)`) take these values.
    Applied(String, BTreeMap<String, HyperValue>),
}

/// What instantiation binds: the size of every free axis, and hyperparameters of the
/// instantiated diagram (the others take their defaults).
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    pub sizes: BTreeMap<String, u64>,
    pub hypers: BTreeMap<String, HyperValue>,
}

/// How a parameter tensor starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `[-bound, bound]`.
    Uniform(f64),
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Every element the same value.
    Constant(f64),
}

#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// A path naming where it comes from: `lm/repeat0.0/block/mech:m1/linear3.weight`.
    pub name: String,
    pub axes: Vec<AxisId>,
    pub init: Init,
}

/// An executable diagram.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Flat: verified to hold executable ops only.
    pub diagram: Flat,
    pub axes: AxisTable,
    /// The size of each axis (indexed by `AxisId`); 0 for axes the instance does not use and
    /// whose size is unknown.
    pub sizes: Vec<usize>,
    /// How many of the diagram's inputs are data (the rest are parameters).
    pub data_inputs: usize,
    pub params: Vec<ParamInfo>,
}

impl Instance {
    pub fn size(&self, a: AxisId) -> usize {
        self.sizes[a.0 as usize]
    }

    /// The elements of every wire of the diagram together, with checked arithmetic (`None` on
    /// overflow): what the f64 reference interpreter holds at most, in values, when it keeps
    /// every wire. Multiply by 8 for its bytes.
    pub fn value_elements(&self) -> Option<u64> {
        let mut total: u64 = 0;
        for w in &self.diagram.wires {
            let mut n: u64 = 1;
            for a in &w.ty.axes {
                n = n.checked_mul(self.size(*a) as u64)?;
            }
            total = total.checked_add(n)?;
        }
        Some(total)
    }

    /// The shape of a wire (sizes in its layout order).
    pub fn shape(&self, ty: &WireType) -> Vec<usize> {
        ty.axes.iter().map(|a| self.size(*a)).collect()
    }

    pub fn param_wire(&self, k: usize) -> WireId {
        self.diagram.inputs[self.data_inputs + k]
    }

    /// The number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.axes.iter().map(|a| self.size(*a)).product::<usize>())
            .sum()
    }
}

/// Hyperparameter values in scope while emitting one diagram.
#[derive(Clone, Default)]
struct Env {
    values: BTreeMap<String, HyperValue>,
}

impl Env {
    fn num(&self, h: &str) -> Option<f64> {
        match self.values.get(h) {
            Some(HyperValue::Num(x)) => Some(*x),
            _ => None,
        }
    }
}

struct Builder<'p> {
    program: &'p Program,
    axes: AxisTable,
    sizes: Vec<Option<u64>>,
    /// The sizes the caller bound (`--size`), to say why a derived size has no value.
    bound: BTreeMap<String, u64>,
    lowered: BTreeMap<String, Diagram>,
    /// The flat diagram under construction: data inputs first, then parameters as they are
    /// met. Wires may have several consumers until [`build::Graph::finish`] inserts copies.
    g: build::Graph,
    data_inputs: usize,
    name: String,
    params: Vec<ParamInfo>,
    next_key: u64,
    next_width: usize,
    /// The box being instantiated says `trainable = false`: its parameters are frozen
    /// (named `....frozen`, behind `stop_grad`).
    freeze: bool,
    /// Inlining depth, to stop runaway recursion (the checker rejects recursive diagrams, so
    /// this only guards against a bug).
    depth: usize,
}

/// Instantiates diagram `name` of `program`.
pub fn instantiate(program: &Program, name: &str, bindings: &Bindings) -> Result<Instance, Error> {
    let d = program.diagram(name).ok_or_else(|| {
        let names: Vec<&str> = program.diagrams.iter().map(|d| d.name.as_str()).collect();
        Error::Usage(format!(
            "no diagram `{name}`; there are: {}",
            names.join(", ")
        ))
    })?;
    // Sizes of every axis that the bindings determine.
    let lookup = |v: &str| bindings.sizes.get(v).copied();
    for (v, n) in &bindings.sizes {
        let Some(a) = program.axes.lookup(v) else {
            return Err(Error::instance(format!(
                "`--size {v}=...` names no axis of the program"
            )));
        };
        if *n == 0 {
            return Err(Error::Instance {
                message: format!("the size of `{v}` must be positive, not 0"),
                span: program.axes.get(a).span,
            });
        }
    }
    let sizes: Vec<Option<u64>> = program
        .axes
        .axes
        .iter()
        .map(|a| a.size.eval(&lookup))
        .collect();
    // The top diagram's hyperparameters: given, else defaults.
    for h in bindings.hypers.keys() {
        if !d.hypers.iter().any(|x| &x.name == h) {
            let names: Vec<&str> = d.hypers.iter().map(|x| x.name.as_str()).collect();
            return Err(Error::instance(format!(
                "`{name}` has no hyperparameter `{h}` (it has: {})",
                names.join(", ")
            )));
        }
    }
    let mut env = Env::default();
    for h in &d.hypers {
        let v = match bindings.hypers.get(&h.name) {
            Some(v) => v.clone(),
            None => default_value(h).ok_or_else(|| {
                Error::instance(format!("`{name}` needs the hyperparameter `{}`", h.name))
            })?,
        };
        check_value(program, h, &v, 0)?;
        env.values.insert(h.name.clone(), v);
    }
    let mut b = Builder {
        program,
        axes: program.axes.clone(),
        sizes,
        bound: bindings
            .sizes
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        lowered: BTreeMap::new(),
        g: build::Graph::default(),
        data_inputs: d.inputs.len(),
        name: name.to_string(),
        params: Vec::new(),
        next_key: 0,
        next_width: 0,
        freeze: false,
        depth: 0,
    };
    let mut args = Vec::new();
    for (w, n) in d.inputs.iter().zip(&d.input_names) {
        let ty = d.wire(*w).ty.clone();
        args.push(b.g.input(ty, n.clone(), d.wire(*w).span));
    }
    let outs = b.emit(name, &env, args, name.to_string())?;
    b.finish(outs)
}

/// Checks that `v` is a value of `h`'s kind: a whole non-negative number for an `int`, a
/// number for a `float`, a diagram of the program with `h`'s boundary for a diagram (and, for
/// an [`HyperValue::Applied`] one, each fixed hyperparameter one of that diagram's, of its kind).
fn check_value(program: &Program, h: &Hyper, v: &HyperValue, depth: usize) -> Result<(), Error> {
    if depth > 64 {
        return Err(Error::instance(format!(
            "the value of hyperparameter `{}` is nested too deep",
            h.name
        )));
    }
    match (&h.ty, v) {
        (HyperType::Int, HyperValue::Num(x)) if x.fract() != 0.0 || *x < 0.0 => Err(
            Error::instance(format!("hyperparameter `{}` is an int; {x} is not", h.name)),
        ),
        (HyperType::Int | HyperType::Float, HyperValue::Num(x)) if !x.is_finite() => {
            Err(Error::instance(format!(
                "hyperparameter `{}`: {x} is not a finite number",
                h.name
            )))
        }
        (HyperType::Int | HyperType::Float, HyperValue::Num(_)) => Ok(()),
        (
            HyperType::Diagram { inputs, outputs },
            HyperValue::Diagram(n) | HyperValue::Applied(n, _),
        ) => {
            let callee = program
                .diagram(n)
                .ok_or_else(|| Error::instance(format!("no diagram `{n}` for `{}`", h.name)))?;
            let ins: Vec<WireType> = callee
                .inputs
                .iter()
                .map(|w| callee.wire(*w).ty.clone())
                .collect();
            let outs: Vec<WireType> = callee
                .outputs
                .iter()
                .map(|w| callee.wire(*w).ty.clone())
                .collect();
            if &ins != inputs || &outs != outputs {
                return Err(Error::instance(format!(
                    "`{n}` does not have the boundary `{}` requires",
                    h.name
                )));
            }
            if let HyperValue::Applied(_, fixed) = v {
                for (name, x) in fixed {
                    let Some(inner) = callee.hypers.iter().find(|c| &c.name == name) else {
                        let names: Vec<&str> =
                            callee.hypers.iter().map(|c| c.name.as_str()).collect();
                        return Err(Error::instance(format!(
                            "`{n}` (the value of `{}`) has no hyperparameter `{name}` (it has: {})",
                            h.name,
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        )));
                    };
                    check_value(program, inner, x, depth + 1)?;
                }
            }
            Ok(())
        }
        (HyperType::Diagram { .. }, HyperValue::Num(_)) => Err(Error::instance(format!(
            "hyperparameter `{}` is a diagram, not a number",
            h.name
        ))),
        (HyperType::Int | HyperType::Float, HyperValue::Diagram(_) | HyperValue::Applied(..)) => {
            Err(Error::instance(format!(
                "hyperparameter `{}` is a number, not a diagram",
                h.name
            )))
        }
    }
}

fn default_value(h: &Hyper) -> Option<HyperValue> {
    match h.default.as_ref()? {
        HyperArg::Num(c) => c.eval(&|_| None, &|_| None).map(HyperValue::Num),
        HyperArg::Diagram(Callee::Diagram(n)) => Some(HyperValue::Diagram(n.clone())),
        HyperArg::Diagram(Callee::Hyper(_)) => None,
    }
}

impl Builder<'_> {
    fn add(&mut self, op: Op, inputs: Vec<WireId>, out: Vec<WireType>, span: Span) -> Vec<WireId> {
        self.g.add(op, inputs, out, span)
    }

    fn eval(&self, c: &Const, env: &Env) -> Result<f64, Error> {
        let sizes = &self.sizes;
        c.eval(&|h| env.num(h), &|a| sizes[a.0 as usize].map(|s| s as f64))
            .ok_or_else(|| {
                let mut unbound = Vec::new();
                self.unbound(c, env, &mut unbound);
                let problem = self
                    .first_unbound_axis(c)
                    .and_then(|a| self.size_problem(a).map(|why| (a, why)));
                let message = match problem {
                    Some((a, why)) => format!(
                        "cannot evaluate `{}`: the size of `{}` is invalid: {why}",
                        c.display(&self.axes),
                        self.axes.name(a)
                    ),
                    None => format!(
                        "cannot evaluate `{}`: {} unbound (use --size NAME=N / --hyper NAME=V)",
                        c.display(&self.axes),
                        unbound.join(", ")
                    ),
                };
                Error::Instance {
                    message,
                    span: self
                        .first_unbound_axis(c)
                        .and_then(|a| self.axes.get(a).span),
                }
            })
            .and_then(|v| {
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(Error::Instance {
                        message: format!(
                            "`{}` is {v} at these sizes and hyperparameters (a division by zero, \
                             the log of zero or of a negative number, or an overflow)",
                            c.display(&self.axes)
                        ),
                        span: None,
                    })
                }
            })
    }

    /// The axes without a size and the hyperparameters without a value that `c` uses.
    /// The first axis of `c` without a size.
    fn first_unbound_axis(&self, c: &Const) -> Option<AxisId> {
        match c {
            Const::Size(a) if self.size_of(*a).is_none() => Some(*a),
            Const::Num(_) | Const::Size(_) | Const::Hyper(_) => None,
            Const::Neg(x) => self.first_unbound_axis(x),
            Const::Fn(_, args) => args.iter().find_map(|x| self.first_unbound_axis(x)),
            Const::Bin(_, a, b) => self
                .first_unbound_axis(a)
                .or_else(|| self.first_unbound_axis(b)),
        }
    }

    fn unbound(&self, c: &Const, env: &Env, out: &mut Vec<String>) {
        match c {
            Const::Num(_) => {}
            Const::Size(a) if self.size_of(*a).is_none() => out.push(match self.size_problem(*a) {
                Some(why) => format!("the size of `{}` ({why}) is", self.axes.name(*a)),
                None => format!(
                    "the size of `{}` ({}) is",
                    self.axes.name(*a),
                    self.axes.size(*a)
                ),
            }),
            Const::Size(_) => {}
            Const::Hyper(h) if env.num(h).is_none() => out.push(format!("hyperparameter `{h}` is")),
            Const::Hyper(_) => {}
            Const::Neg(x) => self.unbound(x, env, out),
            Const::Fn(_, args) => {
                for x in args {
                    self.unbound(x, env, out);
                }
            }
            Const::Bin(_, a, b) => {
                self.unbound(a, env, out);
                self.unbound(b, env, out);
            }
        }
    }

    /// A new parameter input; of a box marked `trainable = false`, a frozen one: named
    /// `....frozen` (as `random[...]()`'s tensor) and read through `stop_grad`, so that no
    /// gradient reaches it and Adam (no weight decay) never moves it.
    fn param(&mut self, name: String, axes: Vec<AxisId>, init: Init, span: Span) -> WireId {
        let name = if self.freeze && !name.ends_with(".frozen") {
            format!("{name}.frozen")
        } else {
            name
        };
        let w = self
            .g
            .input(WireType::values(axes.clone()), name.clone(), span);
        self.params.push(ParamInfo {
            name,
            axes: axes.clone(),
            init,
        });
        if self.freeze {
            return self.add(
                Op::Map(Func::StopGrad),
                vec![w],
                vec![WireType::values(axes)],
                span,
            )[0];
        }
        w
    }

    /// The primed copy of axis `a` (`dm'`), created once, with the same size.
    fn primed_axis(&mut self, a: AxisId) -> AxisId {
        let name = format!("{}'", self.axes.name(a));
        if let Some(id) = self.axes.lookup(&name) {
            return id;
        }
        let info = AxisInfo {
            name,
            size: self.axes.size(a).clone(),
            span: None,
        };
        let id = self.axes.insert(info);
        let size = self.size_of(a);
        self.sizes.push(size);
        id
    }

    /// A fresh axis for a learner's hidden width.
    fn width_axis(&mut self, width: u64) -> AxisId {
        let name = format!("width#{}", self.next_width);
        self.next_width += 1;
        let id = self.axes.insert(AxisInfo {
            name,
            size: size::Size::constant(width),
            span: None,
        });
        self.sizes.push(Some(width));
        id
    }

    /// `tok=5, dm=8`: a wire's axes with their sizes.
    fn shape_text(&self, ty: &WireType) -> String {
        ty.axes
            .iter()
            .map(|a| match self.size_of(*a) {
                Some(n) => format!("{}={n}", self.axes.name(*a)),
                None => self.axes.name(*a).to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why axis `a` has no size although the variables of its size are all bound (a quotient
    /// that does not divide, a product that overflows); `None` when one is unbound.
    fn size_problem(&self, a: AxisId) -> Option<String> {
        let bound = &self.bound;
        self.axes.get(a).size.why_not(&|v| bound.get(v).copied())
    }

    fn size_of(&self, a: AxisId) -> Option<u64> {
        self.sizes.get(a.0 as usize).copied().flatten()
    }

    fn fan_in(&self, axes: &[AxisId]) -> f64 {
        axes.iter()
            .map(|a| self.size_of(*a).unwrap_or(1) as f64)
            .product::<f64>()
            .max(1.0)
    }

    /// Emits diagram `name` on `args`; returns its output wires.
    fn emit(
        &mut self,
        name: &str,
        env: &Env,
        args: Vec<WireId>,
        prefix: String,
    ) -> Result<Vec<WireId>, Error> {
        self.depth += 1;
        if self.depth > 256 {
            return Err(Error::instance(format!(
                "calls nested more than 256 deep at `{name}`"
            )));
        }
        if !self.lowered.contains_key(name) {
            let d = self
                .program
                .diagram(name)
                .ok_or_else(|| Error::instance(format!("no diagram `{name}`")))?;
            self.lowered.insert(name.to_string(), lower::lower_simd(d));
        }
        let d = self.lowered[name].clone();
        let mut map: Vec<Option<WireId>> = vec![None; d.wires.len()];
        for (w, a) in d.inputs.iter().zip(args) {
            map[w.0 as usize] = Some(a);
        }
        let order: Vec<BoxId> = (0..d.boxes.len() as u32).map(BoxId).collect();
        self.emit_boxes(&d, None, &order, env, &mut map, &prefix)?;
        self.depth -= 1;
        d.outputs
            .iter()
            .map(|w| {
                map[w.0 as usize].ok_or_else(|| {
                    Error::instance(format!("an output of `{name}` was not produced"))
                })
            })
            .collect()
    }

    /// Emits the boxes of `region` (among `order`), each child repeat region where its first box
    /// falls.
    fn emit_boxes(
        &mut self,
        d: &Diagram,
        region: Option<RegionId>,
        order: &[BoxId],
        env: &Env,
        map: &mut [Option<WireId>],
        prefix: &str,
    ) -> Result<(), Error> {
        let mut done: Vec<bool> = vec![false; d.regions.len()];
        for &bid in order {
            let b = d.node(bid);
            if b.region == region {
                if !matches!(b.op, Op::LoopIn | Op::Capture | Op::LoopOut) {
                    self.emit_box(d, bid, env, map, prefix)?;
                }
                continue;
            }
            // The child of `region` on the way to this box's region.
            let chain = d.region_chain(b.region);
            let pos = match region {
                None => Some(0),
                Some(r) => chain.iter().position(|x| *x == r).map(|p| p + 1),
            };
            let Some(child) = pos.and_then(|p| chain.get(p)).copied() else {
                continue;
            };
            if done[child.0 as usize] {
                continue;
            }
            done[child.0 as usize] = true;
            self.emit_repeat(d, child, order, env, map, prefix)?;
        }
        Ok(())
    }

    fn emit_repeat(
        &mut self,
        d: &Diagram,
        r: RegionId,
        order: &[BoxId],
        env: &Env,
        map: &mut [Option<WireId>],
        prefix: &str,
    ) -> Result<(), Error> {
        let RegionKind::Repeat(count) = &d.region(r).kind else {
            return Err(Error::instance("a SIMD region survived lowering"));
        };
        let count = self.eval(count, env)?;
        if count < 0.0 || count.fract() != 0.0 || count > 1e6 {
            return Err(Error::instance(format!(
                "a repeat count of {count} is not a usable whole number"
            )));
        }
        let inside: Vec<BoxId> = order
            .iter()
            .copied()
            .filter(|b| d.region_chain(d.node(*b).region).contains(&r))
            .collect();
        let port = |op: fn(&Op) -> bool| {
            inside
                .iter()
                .copied()
                .filter(move |b| d.node(*b).region == Some(r) && op(&d.node(*b).op))
        };
        let loop_in = port(|o| matches!(o, Op::LoopIn))
            .next()
            .ok_or_else(|| Error::instance("a repeat without its carried wire"))?;
        let loop_out = port(|o| matches!(o, Op::LoopOut))
            .next()
            .ok_or_else(|| Error::instance("a repeat without its result"))?;
        let captures: Vec<BoxId> = port(|o| matches!(o, Op::Capture)).collect();
        let init = d.node(loop_in).inputs[0];
        let mut carry = map[init.0 as usize]
            .ok_or_else(|| Error::instance("the carried wire of a repeat is not produced"))?;
        let tag = r.0;
        for i in 0..count as usize {
            map[d.node(loop_in).outputs[0].0 as usize] = Some(carry);
            for c in &captures {
                let b = d.node(*c);
                map[b.outputs[0].0 as usize] = map[b.inputs[0].0 as usize];
            }
            self.emit_boxes(
                d,
                Some(r),
                &inside,
                env,
                map,
                &format!("{prefix}/repeat{tag}.{i}"),
            )?;
            carry = map[d.node(loop_out).inputs[0].0 as usize]
                .ok_or_else(|| Error::instance("a repeat body did not produce its result"))?;
        }
        map[d.node(loop_out).outputs[0].0 as usize] = Some(carry);
        Ok(())
    }

    fn emit_box(
        &mut self,
        d: &Diagram,
        bid: BoxId,
        env: &Env,
        map: &mut [Option<WireId>],
        prefix: &str,
    ) -> Result<(), Error> {
        let b = d.node(bid);
        let ins: Vec<WireId> = b
            .inputs
            .iter()
            .map(|w| {
                map[w.0 as usize]
                    .ok_or_else(|| Error::instance("a box's input is not produced (order)"))
            })
            .collect::<Result<_, _>>()?;
        let out_types: Vec<WireType> = b.outputs.iter().map(|w| d.wire(*w).ty.clone()).collect();
        // Names follow the source: the box's number in its (lowered) diagram.
        let index = bid.0;
        let here = format!("{prefix}/{}{index}", op_name(&b.op));
        self.freeze = b.params.iter().any(|p| !p.trainable);
        let outs: Vec<WireId> = match &b.op {
            Op::Copy(_) => vec![ins[0]; b.outputs.len()],
            Op::Discard => vec![],
            Op::Zip(_)
            | Op::Collect(_)
            | Op::Broadcast(_)
            | Op::LoopIn
            | Op::Capture
            | Op::LoopOut => {
                return Err(Error::instance("region ports survived lowering"));
            }
            Op::Scale(c) => self.add(
                Op::Scale(Const::Num(self.eval(c, env)?)),
                ins,
                out_types,
                b.span,
            ),
            Op::Shift(c) => self.add(
                Op::Shift(Const::Num(self.eval(c, env)?)),
                ins,
                out_types,
                b.span,
            ),
            Op::Pow(c) => self.add(
                Op::Pow(Const::Num(self.eval(c, env)?)),
                ins,
                out_types,
                b.span,
            ),
            Op::Fill { axes, value } => self.add(
                Op::Fill {
                    axes: axes.clone(),
                    value: Const::Num(self.eval(value, env)?),
                },
                ins,
                out_types,
                b.span,
            ),
            Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
                let band = Band {
                    strict: band.strict,
                    window: match &band.window {
                        None => None,
                        Some(w) => {
                            let n = self.eval(w, env)?;
                            if !(n >= 1.0 && n.fract() == 0.0) {
                                return Err(Error::instance(format!(
                                    "a mask's window is {n}, not a positive whole number"
                                )));
                            }
                            Some(Const::Num(n))
                        }
                    },
                };
                let op = if matches!(b.op, Op::Causal { .. }) {
                    Op::Causal {
                        query: *query,
                        key: *key,
                        band,
                    }
                } else {
                    Op::CausalZero {
                        query: *query,
                        key: *key,
                        band,
                    }
                };
                self.add(op, ins, out_types, b.span)
            }
            Op::Dropout(c) => {
                let p = self.eval(c, env)?;
                if !(0.0..1.0).contains(&p) {
                    return Err(Error::instance(format!(
                        "dropout probability {p} is not in [0, 1)"
                    )));
                }
                let key = self.next_key;
                self.next_key += 1;
                self.add(Op::Exec(ExecOp::Dropout { p, key }), ins, out_types, b.span)
            }
            Op::Param(_) => {
                let spec = &b.params[0];
                let axes = self.param_axes(spec, env)?;
                let frozen = match spec.role.as_str() {
                    FROZEN_NORMAL => Some(Init::Normal(1.0)),
                    FROZEN_UNIFORM => Some(Init::Uniform(1.0)),
                    _ => None,
                };
                match frozen {
                    None => {
                        vec![self.param(format!("{here}.value"), axes, Init::Uniform(0.1), b.span)]
                    }
                    Some(init) => {
                        // Stored and checkpointed as a parameter; `stop_grad` keeps it out of
                        // the gradient, so Adam (no weight decay) never moves it.
                        let w = self.param(format!("{here}.frozen"), axes.clone(), init, b.span);
                        self.add(
                            Op::Map(Func::StopGrad),
                            vec![w],
                            vec![WireType::values(axes)],
                            b.span,
                        )
                    }
                }
            }
            Op::Linear { from, to, bias } => {
                let bound = 1.0 / self.fan_in(from).sqrt();
                // A map from an axis to itself (`linear[dm -> dm]`) needs a weight with two
                // distinct axes: the input side is renamed to a primed copy (`dm'`).
                let mut x = ins[0];
                let mut from = from.clone();
                for a in from.iter_mut() {
                    if to.contains(a) {
                        let primed = self.primed_axis(*a);
                        let mut t = self.g.wires[x.0 as usize].ty.clone();
                        for y in t.axes.iter_mut() {
                            if *y == *a {
                                *y = primed;
                            }
                        }
                        x = self.add(
                            Op::Rename {
                                from: *a,
                                to: primed,
                            },
                            vec![x],
                            vec![t],
                            b.span,
                        )[0];
                        *a = primed;
                    }
                }
                let lanes = b
                    .params
                    .first()
                    .map(|p| p.per_lane.clone())
                    .unwrap_or_default();
                let mut waxes = lanes.clone();
                waxes.extend(from.iter().copied());
                waxes.extend(to.iter().copied());
                let mut args = vec![
                    x,
                    self.param(
                        format!("{here}.weight"),
                        waxes,
                        Init::Uniform(bound),
                        b.span,
                    ),
                ];
                if *bias {
                    let mut baxes = lanes;
                    baxes.extend(to.iter().copied());
                    args.push(self.param(
                        format!("{here}.bias"),
                        baxes,
                        Init::Uniform(bound),
                        b.span,
                    ));
                }
                self.add(
                    Op::Linear {
                        from,
                        to: to.clone(),
                        bias: *bias,
                    },
                    args,
                    out_types,
                    b.span,
                )
            }
            Op::LayerNorm(_) => {
                let mut args = ins;
                for spec in &b.params {
                    let axes = self.param_axes(spec, env)?;
                    let init = if spec.role == "gain" {
                        Init::Constant(1.0)
                    } else {
                        Init::Constant(0.0)
                    };
                    args.push(self.param(format!("{here}.{}", spec.role), axes, init, b.span));
                }
                self.add(b.op.clone(), args, out_types, b.span)
            }
            Op::Embed { .. } => {
                let spec = &b.params[0];
                let axes = self.param_axes(spec, env)?;
                let table = self.param(
                    format!("{here}.{}", spec.role),
                    axes,
                    Init::Uniform(0.1),
                    b.span,
                );
                self.add(b.op.clone(), vec![ins[0], table], out_types, b.span)
            }
            Op::Learner { from, to, width } => {
                self.learner(b, from, to, width, ins, &out_types, env, &here)?
            }
            Op::Call { callee, hypers } => {
                let empty = BTreeMap::new();
                let (name, fixed) = match callee {
                    Callee::Diagram(n) => (n.clone(), &empty),
                    Callee::Hyper(h) => match env.values.get(h) {
                        Some(HyperValue::Diagram(n)) => (n.clone(), &empty),
                        Some(HyperValue::Applied(n, fixed)) => (n.clone(), fixed),
                        _ => {
                            return Err(Error::instance(format!(
                                "hyperparameter `{h}` is not bound to a diagram"
                            )));
                        }
                    },
                };
                let callee_d = self
                    .program
                    .diagram(&name)
                    .ok_or_else(|| Error::instance(format!("no diagram `{name}`")))?;
                let mut child = Env::default();
                for h in &callee_d.hypers {
                    let v = match hypers.iter().find(|(n, _)| *n == h.name) {
                        Some((_, HyperArg::Num(c))) => HyperValue::Num(self.eval(c, env)?),
                        Some((_, HyperArg::Diagram(Callee::Diagram(n)))) => {
                            HyperValue::Diagram(n.clone())
                        }
                        Some((_, HyperArg::Diagram(Callee::Hyper(x)))) => {
                            env.values.get(x).cloned().ok_or_else(|| {
                                Error::instance(format!("hyperparameter `{x}` is unbound"))
                            })?
                        }
                        None => match fixed.get(&h.name) {
                            Some(v) => v.clone(),
                            None => default_value(h).ok_or_else(|| {
                                Error::instance(format!("`{name}` needs `{}`", h.name))
                            })?,
                        },
                    };
                    child.values.insert(h.name.clone(), v);
                }
                self.emit(&name, &child, ins, format!("{prefix}/{name}.{index}"))?
            }
            Op::Exec(_) => {
                return Err(Error::instance("an executable-form op in a source diagram"));
            }
            _ => self.add(b.op.clone(), ins, out_types, b.span),
        };
        for (w, o) in b.outputs.iter().zip(outs) {
            map[w.0 as usize] = Some(o);
        }
        Ok(())
    }

    /// The axes of a parameter tensor: its lane axes, then its own dimensions.
    fn param_axes(&mut self, spec: &ParamSpec, env: &Env) -> Result<Vec<AxisId>, Error> {
        let mut axes = spec.per_lane.clone();
        for d in &spec.dims {
            match d {
                Dim::Axis(a) => axes.push(*a),
                Dim::Extent(_) => {
                    return Err(Error::instance("a width dimension outside a learner"));
                }
            }
        }
        let _ = env;
        Ok(axes)
    }

    /// `learner[from -> to, width](x_0, ..)` as `relu(sum_i linear_i(x_i)) -> linear`.
    #[allow(clippy::too_many_arguments)]
    fn learner(
        &mut self,
        b: &BoxNode,
        from: &[AxisId],
        to: &[AxisId],
        width: &Const,
        ins: Vec<WireId>,
        out_types: &[WireType],
        env: &Env,
        here: &str,
    ) -> Result<Vec<WireId>, Error> {
        let w = self.eval(width, env)?;
        if w < 1.0 || w.fract() != 0.0 {
            return Err(Error::instance(format!(
                "a learner width of {w} is not a positive whole number"
            )));
        }
        let wax = self.width_axis(w as u64);
        let lanes = b
            .params
            .first()
            .map(|p| p.per_lane.clone())
            .unwrap_or_default();
        // The batch axes of the sum: the union of every input's non-feature axes.
        let mut union: Vec<AxisId> = Vec::new();
        for x in &ins {
            for a in &self.g.wires[x.0 as usize].ty.axes {
                if !from.contains(a) && !union.contains(a) {
                    union.push(*a);
                }
            }
        }
        let mut acc: Option<WireId> = None;
        for (k, x) in ins.iter().enumerate() {
            let xt = self.g.wires[x.0 as usize].ty.clone();
            let feats: Vec<AxisId> = xt
                .axes
                .iter()
                .copied()
                .filter(|a| from.contains(a))
                .collect();
            let bound = 1.0 / self.fan_in(&feats).sqrt();
            let mut waxes = lanes.clone();
            waxes.extend(feats.iter().copied());
            waxes.push(wax);
            let wk = self.param(
                format!("{here}.w_in{k}"),
                waxes,
                Init::Uniform(bound),
                b.span,
            );
            let mut args = vec![*x, wk];
            if k == 0 {
                let mut baxes = lanes.clone();
                baxes.push(wax);
                args.push(self.param(
                    format!("{here}.b_hidden"),
                    baxes,
                    Init::Uniform(bound),
                    b.span,
                ));
            }
            let mut hax: Vec<AxisId> = xt
                .axes
                .iter()
                .copied()
                .filter(|a| !from.contains(a))
                .collect();
            hax.push(wax);
            let op = Op::Linear {
                from: feats,
                to: vec![wax],
                bias: k == 0,
            };
            let mut h = self.add(op, args, vec![WireType::values(hax.clone())], b.span)[0];
            for a in &union {
                if !hax.contains(a) {
                    let t = self.g.wires[h.0 as usize].ty.with_front(*a);
                    h = self.add(Op::Expand(*a), vec![h], vec![t], b.span)[0];
                }
            }
            acc = Some(match acc {
                None => h,
                Some(prev) => {
                    let t = self.g.wires[prev.0 as usize].ty.clone();
                    self.add(Op::Add, vec![prev, h], vec![t], b.span)[0]
                }
            });
        }
        let hidden = acc.ok_or_else(|| Error::instance("a learner without inputs"))?;
        let t = self.g.wires[hidden.0 as usize].ty.clone();
        let hidden = self.add(Op::Map(Func::Relu), vec![hidden], vec![t], b.span)[0];
        let bound = 1.0 / (w.sqrt());
        let mut wo = lanes.clone();
        wo.push(wax);
        wo.extend(to.iter().copied());
        let w_out = self.param(format!("{here}.w_out"), wo, Init::Uniform(bound), b.span);
        let mut bo = lanes.clone();
        bo.extend(to.iter().copied());
        let b_out = self.param(format!("{here}.b_out"), bo, Init::Uniform(bound), b.span);
        let op = Op::Linear {
            from: vec![wax],
            to: to.to_vec(),
            bias: true,
        };
        Ok(self.add(op, vec![hidden, w_out, b_out], out_types.to_vec(), b.span))
    }

    /// Inserts copies and discards, numbers the inputs (data, then parameters), checks that
    /// every axis has a size.
    fn finish(self, outputs: Vec<WireId>) -> Result<Instance, Error> {
        // Unsized axes: first those whose variables are bound but whose size is invalid.
        for w in &self.g.wires {
            for a in &w.ty.axes {
                if self.size_of(*a).is_none()
                    && let Some(why) = self.size_problem(*a)
                {
                    return Err(Error::Instance {
                        message: format!("the size of `{}` is invalid: {why}", self.axes.name(*a)),
                        span: self.axes.get(*a).span,
                    });
                }
            }
        }
        let mut missing: Vec<String> = Vec::new();
        let mut first_span = None;
        for w in &self.g.wires {
            for a in &w.ty.axes {
                if self.size_of(*a).is_none() {
                    let info = self.axes.get(*a);
                    first_span = first_span.or(info.span);
                    let vars: Vec<&String> = info.size.vars.keys().collect();
                    let what = if vars.is_empty() || (vars.len() == 1 && *vars[0] == info.name) {
                        format!("`{}`", info.name)
                    } else {
                        format!(
                            "`{}` (= {}: needs {})",
                            info.name,
                            info.size,
                            vars.iter()
                                .map(|v| format!("`{v}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    if !missing.contains(&what) {
                        missing.push(what);
                    }
                }
            }
        }
        if !missing.is_empty() {
            return Err(Error::Instance {
                message: format!(
                    "these axes have no size: {} (bind the free ones with `--size NAME=N`; sizes must divide evenly)",
                    missing.join(", ")
                ),
                span: first_span,
            });
        }
        // Element counts and bytes (8 per element, the interpreter's f64) of every wire must
        // fit in 64 bits: later phases compute buffer sizes from them.
        for w in &self.g.wires {
            let mut n: u64 = 1;
            for a in &w.ty.axes {
                let k = self.size_of(*a).unwrap_or(1);
                n = match n.checked_mul(k) {
                    Some(n) => n,
                    None => {
                        return Err(Error::Instance {
                            message: format!(
                                "the wire [{}] has more elements than 64 bits can count \
                                 (the product of its sizes overflows); use smaller sizes",
                                self.shape_text(&w.ty)
                            ),
                            span: Some(w.span),
                        });
                    }
                };
            }
            if n.checked_mul(8).is_none_or(|b| b > isize::MAX as u64) {
                return Err(Error::Instance {
                    message: format!(
                        "the wire [{}] has {n} elements, whose bytes overflow the address \
                         space; use smaller sizes",
                        self.shape_text(&w.ty)
                    ),
                    span: Some(w.span),
                });
            }
        }
        let span = Span {
            file: crate::source::FileId(0),
            start: 0,
            end: 0,
        };
        let d = Flat::new(
            self.g.finish(self.name.clone(), outputs, span),
            "instantiation",
        )?;
        let sizes = self.sizes.iter().map(|s| s.unwrap_or(0) as usize).collect();
        Ok(Instance {
            diagram: d,
            axes: self.axes,
            sizes,
            data_inputs: self.data_inputs,
            params: self.params,
        })
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Linear { .. } => "linear",
        Op::Learner { .. } => "learner",
        Op::Param(_) => "param",
        Op::LayerNorm(_) => "layernorm",
        Op::Embed { .. } => "embed",
        _ => "box",
    }
}

/// Runs an instance on a batch: every wire that depends on a data input gains a new lane axis
/// `name` of size `n` (in front), while parameters, and what is computed from parameters alone,
/// stay shared. Because every op acts on the axes it names and runs lane-wise over the others,
/// this only changes types, plus an explicit broadcast where a batched and an unbatched wire
/// meet in a binary op. Apply it before autodiff: gradients of shared parameters then sum over
/// the batch through the contractions that use them.
pub fn lift_batch(inst: &Instance, name: &str, n: usize) -> Result<Instance, Error> {
    if inst.axes.lookup(name).is_some() {
        return Err(Error::instance(format!(
            "the batch axis `{name}` is already an axis of the program"
        )));
    }
    let mut axes = inst.axes.clone();
    let batch = axes.insert(AxisInfo {
        name: name.to_string(),
        size: size::Size::constant(n as u64),
        span: None,
    });
    let mut sizes = inst.sizes.clone();
    sizes.push(n);
    let d = &inst.diagram;
    let mut g = build::Graph::default();
    let mut map: Vec<Option<WireId>> = vec![None; d.wires.len()];
    let batched = |g: &build::Graph, w: WireId| g.ty(w).has(batch);
    for (k, w) in d.inputs.iter().enumerate() {
        let mut ty = d.wire(*w).ty.clone();
        if k < inst.data_inputs {
            ty = ty.with_front(batch);
        }
        map[w.0 as usize] = Some(g.input(ty, d.input_names[k].clone(), d.wire(*w).span));
    }
    for b in &d.boxes {
        let mut ins: Vec<WireId> = b
            .inputs
            .iter()
            .map(|w| map[w.0 as usize].expect("topological order"))
            .collect();
        let any = ins.iter().any(|w| batched(&g, *w));
        if any
            && matches!(
                b.op,
                Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min
            )
        {
            for w in ins.iter_mut() {
                if !batched(&g, *w) {
                    let t = g.ty(*w).with_front(batch);
                    *w = g.add1(Op::Expand(batch), vec![*w], t, b.span);
                }
            }
        }
        let outs: Vec<WireType> = b
            .outputs
            .iter()
            .map(|w| {
                let t = d.wire(*w).ty.clone();
                if any { t.with_front(batch) } else { t }
            })
            .collect();
        let new = g.add(b.op.clone(), ins, outs, b.span);
        for (o, nw) in b.outputs.iter().zip(new) {
            map[o.0 as usize] = Some(nw);
        }
    }
    let outputs: Vec<WireId> = d
        .outputs
        .iter()
        .map(|w| map[w.0 as usize].expect("outputs are produced"))
        .collect();
    let diagram = Flat::new(
        g.finish(d.name.clone(), outputs, d.span),
        "batching (lift_batch)",
    )?;
    Ok(Instance {
        diagram,
        axes,
        sizes,
        data_inputs: inst.data_inputs,
        params: inst.params.clone(),
    })
}
