//! The IR verifier: the invariants of the module docs checked on a whole diagram, after every
//! pass that produces IR (instantiation, batching, autodiff, fusion, loss attachment), so that a
//! pass that breaks one fails at once, naming itself, instead of a backend failing later.
//!
//! It checks:
//! - the wiring: every wire has one source and one consumer, each of which names it back, and
//!   boxes are in topological order;
//! - every box's arity: the number of inputs and outputs its op takes ([`arity`]);
//! - the types of the ops whose output type follows from their inputs' (elementwise maps,
//!   binary ops by axis union, sums and contractions, renames, expansions, copies);
//! - for [`Form::Flat`] (an instance), that nothing but executable ops is left: no region, no
//!   call, learner or parameter box, no region port.
//!
//! A failure is [`Error::Internal`]: always a compiler bug, never the user's input.

pub use super::ops::Count;
use super::{Diagram, ExecOp, Op, WireId, WireSink, WireSource};
use crate::error::Error;
use std::collections::BTreeSet;

/// What a diagram is expected to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// As the checker builds it: regions visible, calls, learners and parameters as boxes.
    Checked,
    /// An instance (or its gradient): flat, every op executable, parameters as inputs.
    Flat,
}

/// The inputs and outputs an op takes in a diagram of the given form (the op table's, `None`
/// for an op that cannot appear in that form).
pub fn arity(op: &Op, form: Form) -> Option<(Count, Count)> {
    let spec = super::ops::spec(op);
    match form {
        Form::Checked => Some(spec.checked),
        Form::Flat => spec.flat,
    }
}

/// A diagram proved flat and executable ([`Form::Flat`]): no region, no call, learner or
/// parameter box, no region port, and well wired and typed. [`Flat::new`], which verifies, is
/// the only way to make one; the interpreter and the planner take nothing else, so "this box
/// must be instantiated first" cannot arise when a diagram runs. Read it as a [`Diagram`].
#[derive(Clone, Debug)]
pub struct Flat(Diagram);

impl Flat {
    /// `d`, verified as flat; `pass` names the pass that produced it, for the error.
    pub fn new(d: Diagram, pass: &'static str) -> Result<Flat, Error> {
        verify(&d, Form::Flat, pass)?;
        Ok(Flat(d))
    }

    /// The diagram, to be changed (and verified again).
    pub fn into_inner(self) -> Diagram {
        self.0
    }
}

impl std::ops::Deref for Flat {
    type Target = Diagram;
    fn deref(&self) -> &Diagram {
        &self.0
    }
}

/// Checks `d` (see the module docs). `pass` names the pass that produced it, for the error.
pub fn verify(d: &Diagram, form: Form, pass: &'static str) -> Result<(), Error> {
    check(d, form).map_err(|message| Error::Internal {
        pass,
        message: format!("diagram `{}`: {message}", d.name),
    })
}

fn check(d: &Diagram, form: Form) -> Result<(), String> {
    wiring(d)?;
    if form == Form::Flat && !d.regions.is_empty() {
        return Err(format!(
            "{} region(s) left in a flat diagram",
            d.regions.len()
        ));
    }
    for (bi, b) in d.boxes.iter().enumerate() {
        let Some((ins, outs)) = arity(&b.op, form) else {
            return Err(format!(
                "box {bi} ({:?}) is not executable: instantiate the diagram first",
                b.op
            ));
        };
        if !ins.admits(b.inputs.len()) || !outs.admits(b.outputs.len()) {
            return Err(format!(
                "box {bi} ({:?}) has {} input(s) and {} output(s), its op takes {ins:?} and gives {outs:?}",
                b.op,
                b.inputs.len(),
                b.outputs.len()
            ));
        }
        if form == Form::Flat && b.region.is_some() {
            return Err(format!("box {bi} is inside a region in a flat diagram"));
        }
        types(d, bi).map_err(|m| format!("box {bi} ({:?}): {m}", b.op))?;
    }
    Ok(())
}

/// The wiring invariants: one source and one consumer per wire, each naming the wire back;
/// boxes in topological order.
pub(crate) fn wiring(d: &Diagram) -> Result<(), String> {
    for (i, w) in d.wires.iter().enumerate() {
        let me = Some(WireId(i as u32));
        match w.source {
            WireSource::Input(k) if d.inputs.get(k).copied() != me => {
                return Err(format!("wire %{i} claims input {k}"));
            }
            WireSource::Box(b, k)
                if d.boxes
                    .get(b.0 as usize)
                    .and_then(|b| b.outputs.get(k))
                    .copied()
                    != me =>
            {
                return Err(format!("wire %{i} claims output {k} of box {}", b.0));
            }
            _ => {}
        }
        match w.sink {
            None => return Err(format!("wire %{i} has no consumer")),
            Some(WireSink::Box(b, k))
                if d.boxes
                    .get(b.0 as usize)
                    .and_then(|b| b.inputs.get(k))
                    .copied()
                    != me =>
            {
                return Err(format!("wire %{i} claims input {k} of box {}", b.0));
            }
            Some(WireSink::Output(k)) if d.outputs.get(k).copied() != me => {
                return Err(format!("wire %{i} claims output {k}"));
            }
            _ => {}
        }
    }
    for (k, w) in d.inputs.iter().enumerate() {
        if d.wires.get(w.0 as usize).map(|x| x.source) != Some(WireSource::Input(k)) {
            return Err(format!(
                "input {k} is wire %{}, which does not name it",
                w.0
            ));
        }
    }
    for (k, w) in d.outputs.iter().enumerate() {
        if d.wires.get(w.0 as usize).map(|x| x.sink) != Some(Some(WireSink::Output(k))) {
            return Err(format!(
                "output {k} is wire %{}, which does not name it",
                w.0
            ));
        }
    }
    for (bi, b) in d.boxes.iter().enumerate() {
        for w in &b.inputs {
            if let WireSource::Box(src, _) = d.wire(*w).source
                && src.0 as usize >= bi
            {
                return Err(format!("box {bi} reads wire %{} from a later box", w.0));
            }
        }
    }
    Ok(())
}

/// The output types that follow from the input types, for the ops where they do.
fn types(d: &Diagram, bi: usize) -> Result<(), String> {
    use Op::*;
    let b = &d.boxes[bi];
    let set = |w: &WireId| -> BTreeSet<u32> { d.wire(*w).ty.axes.iter().map(|a| a.0).collect() };
    let ins: Vec<BTreeSet<u32>> = b.inputs.iter().map(set).collect();
    let outs: Vec<BTreeSet<u32>> = b.outputs.iter().map(set).collect();
    let want = |expected: BTreeSet<u32>, k: usize| -> Result<(), String> {
        if outs[k] == expected {
            Ok(())
        } else {
            Err(format!(
                "output {k} has axes {:?}, the op gives {:?}",
                outs[k], expected
            ))
        }
    };
    let union = || -> BTreeSet<u32> { ins.iter().flatten().copied().collect() };
    match &b.op {
        Copy(_) => (0..outs.len()).try_for_each(|k| want(ins[0].clone(), k)),
        Scale(_)
        | Shift(_)
        | Softmax(_)
        | Normalise(_)
        | Map(_)
        | Causal { .. }
        | CausalZero { .. }
        | Cumsum(_)
        | RotateHalf(_)
        | Dropout(_) => want(ins[0].clone(), 0),
        Exec(ExecOp::Dropout { .. } | ExecOp::CumsumBack(_) | ExecOp::Lag(_)) => {
            want(ins[0].clone(), 0)
        }
        Add | Sub | Mul | Div | Scan(_) | Exec(ExecOp::ScanBack(_)) => want(union(), 0),
        // The state's axes: the gate's `col` is contracted.
        MatScan { .. } => want(ins[1].clone(), 0),
        Exec(ExecOp::MatScanBack { .. }) => want(ins[0].clone(), 0),
        Sum(a) | Reduce(_, a) => {
            let mut s = ins[0].clone();
            if !s.remove(&a.0) {
                return Err("sums over an axis its input does not have".into());
            }
            want(s, 0)
        }
        Dot(a) => {
            if !ins.iter().all(|s| s.contains(&a.0)) {
                return Err("contracts an axis one of its inputs does not have".into());
            }
            let mut s = union();
            s.remove(&a.0);
            want(s, 0)
        }
        Rename { from, to } => {
            let mut s = ins[0].clone();
            if !s.remove(&from.0) {
                return Err("renames an axis its input does not have".into());
            }
            s.insert(to.0);
            want(s, 0)
        }
        Expand(a) => {
            let mut s = ins[0].clone();
            s.insert(a.0);
            want(s, 0)
        }
        // Inside a SIMD region over `a` (a body diagram, which does not know its region) the
        // lane's own index is a scalar; the checker allows that form only there, and lowering
        // gives it the axis back.
        Iota(_) if outs[0].is_empty() => Ok(()),
        Iota(a) => want([a.0].into_iter().collect(), 0),
        Fill { axes, .. } => want(axes.iter().map(|a| a.0).collect(), 0),
        _ => Ok(()),
    }
}
