//! Causality along a position axis, proved statically over named axes.
//!
//! A language-model mechanism must be *causal* along `tok`: no output position may depend on a
//! later input position. This module proves it for a checked diagram (regions visible, calls
//! followed into their callees), or names the box and the wire through which the future leaks.
//!
//! The analysis is an abstract interpretation. Every wire gets [`Facts`]:
//! - `deps`, a set of axes `A` of the wire: the element at index `idx` depends on input positions
//!   `q` with `q <= idx[a]` for some `a` in `A` (the empty set: it depends on no input position).
//!   The inputs that carry the position axis start with `A = {pos}`; parameters and constants
//!   with `A = {}`. `rename[tok -> src]` renames `tok` in `A`, so keys are tracked as `src`.
//! - `masks`, structural facts `(kind, q, k)`: every entry whose `k` index exceeds its `q` index
//!   is exactly zero (`causal_zero`, a product with such a wire, a softmax of a masked row) or
//!   minus infinity (`causal`), whatever the inputs. Such entries depend on nothing, and the
//!   others have `idx[k] <= idx[q]`: so `k` in `A` can be replaced by `q` (normalisation).
//! - `taint`: where the analysis lost the proof (a leak, or something it cannot follow).
//!
//! A reduction over an axis of `A` (`sum`, `dot`, `softmax`, `normalise`, `layernorm`, the input
//! side of `linear` and learners) makes each result depend on *every* position of that axis:
//! that is the leak. `cumsum` over a position axis is fine (a prefix). Reshapes of a position
//! axis are not followed (the proof fails with a note, not a false "causal"). The analysis is
//! sound (a diagram it proves causal is causal, whatever its parameters) and incomplete (a
//! causal diagram that hides its causality, say a mask applied after a reduction that cancels,
//! is reported as not proved). `diagc check --causal` and `diagc train` use it.

use super::{AxisId, Callee, Const, Diagram, Func, HyperArg, HyperType, Op, Program, RegionKind};
use crate::diagnostic::{Code, Diagnostic};
use crate::source::Span;
use std::collections::{BTreeSet, HashMap};

/// Whether masked entries hold zero or minus infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum MaskKind {
    Zero,
    NegInf,
}

/// Why the proof failed, at one box.
#[derive(Clone, Debug)]
struct Taint {
    /// `Some(axis)`: a reduction over `axis`, which carries later positions (a leak);
    /// `None`: a step the analysis does not follow (`reason`).
    leak: Option<AxisId>,
    reason: String,
    /// The box where the proof failed.
    at: Span,
    /// The wire that brought the later positions there, and its name.
    wire: Option<(Span, Option<String>)>,
    /// The calls through which the box was reached, innermost first.
    calls: Vec<Span>,
}

/// What is known of one wire (see the module documentation).
#[derive(Clone, Debug, Default)]
struct Facts {
    deps: BTreeSet<AxisId>,
    masks: BTreeSet<(MaskKind, AxisId, AxisId)>,
    taint: Option<Box<Taint>>,
}

impl Facts {
    fn join(&self, other: &Facts) -> Facts {
        Facts {
            deps: self.deps.union(&other.deps).copied().collect(),
            masks: self.masks.intersection(&other.masks).copied().collect(),
            taint: self.taint.clone().or_else(|| other.taint.clone()),
        }
    }

    fn same(&self, other: &Facts) -> bool {
        self.deps == other.deps
            && self.masks == other.masks
            && self.taint.is_some() == other.taint.is_some()
    }

    /// Replaces a masked key axis by its query axis in `deps` (sound: see the module docs).
    fn normalise(mut self) -> Facts {
        for _ in 0..=self.masks.len() {
            let mut changed = false;
            for &(_, q, k) in &self.masks {
                if self.deps.remove(&k) {
                    self.deps.insert(q);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self
    }

    fn keep_masks(mut self, keep: impl Fn(MaskKind, AxisId, AxisId) -> Option<MaskKind>) -> Facts {
        self.masks = self
            .masks
            .iter()
            .filter_map(|&(m, q, k)| keep(m, q, k).map(|m2| (m2, q, k)))
            .collect();
        self
    }

    fn without_masks(mut self) -> Facts {
        self.masks.clear();
        self
    }

    fn rename(mut self, from: AxisId, to: AxisId) -> Facts {
        let r = |a: AxisId| if a == from { to } else { a };
        self.deps = self.deps.iter().map(|a| r(*a)).collect();
        self.masks = self
            .masks
            .iter()
            .map(|&(m, q, k)| (m, r(q), r(k)))
            .collect();
        self
    }

    fn involves(&self, a: AxisId) -> bool {
        self.deps.contains(&a) || self.masks.iter().any(|&(_, q, k)| q == a || k == a)
    }
}

/// The result of the analysis of one diagram.
#[derive(Debug)]
pub struct Verdict {
    /// The diagnostics (empty: proved causal). One per place where the proof failed.
    pub diagnostics: Vec<Diagnostic>,
}

impl Verdict {
    pub fn proved(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// Diagram-valued hyperparameters: name -> the diagram it stands for.
pub type DiagramEnv = HashMap<String, String>;

/// The diagram-valued hyperparameters of `d` at their defaults (what `diagc check` assumes).
pub fn default_env(d: &Diagram) -> DiagramEnv {
    d.hypers
        .iter()
        .filter(|h| matches!(h.ty, HyperType::Diagram { .. }))
        .filter_map(|h| match &h.default {
            Some(HyperArg::Diagram(Callee::Diagram(n))) => Some((h.name.clone(), n.clone())),
            _ => None,
        })
        .collect()
}

/// Proves the diagram `name` of `program` causal along `pos`, with its diagram-valued
/// hyperparameters bound by `env` (those missing take their defaults).
pub fn prove(program: &Program, name: &str, pos: AxisId, env: &DiagramEnv) -> Verdict {
    let Some(d) = program.diagram(name) else {
        return Verdict {
            diagnostics: vec![Diagnostic::new(
                Code::NotCausal,
                format!("no diagram `{name}` to prove causal"),
            )],
        };
    };
    let mut full = default_env(d);
    full.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let a = Analysis { program };
    let inputs: Vec<Facts> = d
        .inputs
        .iter()
        .map(|w| {
            let mut f = Facts::default();
            if d.wire(*w).ty.has(pos) {
                f.deps.insert(pos);
            }
            f
        })
        .collect();
    let outs = a.diagram(d, inputs, &full, 0);
    let mut diagnostics: Vec<Diagnostic> = Vec::new();
    let mut seen: BTreeSet<(u32, u32, u32)> = BTreeSet::new();
    let pos_name = program.axes.name(pos);
    for (i, (w, f)) in d.outputs.iter().zip(&outs).enumerate() {
        let wire = d.wire(*w);
        let taint = match &f.taint {
            Some(t) => (**t).clone(),
            None => {
                // Proved, unless the output's positions are along another axis.
                let other: Vec<AxisId> = f.deps.iter().copied().filter(|a| *a != pos).collect();
                if other.is_empty() && (f.deps.is_empty() || wire.ty.has(pos)) {
                    continue;
                }
                let names: Vec<String> = other
                    .iter()
                    .map(|a| format!("`{}`", program.axes.name(*a)))
                    .collect();
                Taint {
                    leak: None,
                    reason: format!(
                        "output {} depends on input positions through {}, and its positions are \
                         not along `{pos_name}`",
                        i + 1,
                        names.join(", ")
                    ),
                    at: wire.span,
                    wire: None,
                    calls: vec![],
                }
            }
        };
        let key = (taint.at.file.0, taint.at.start, taint.at.end);
        if !seen.insert(key) {
            continue;
        }
        diagnostics.push(diagnostic(program, d, pos, &taint));
    }
    Verdict { diagnostics }
}

fn diagnostic(program: &Program, d: &Diagram, pos: AxisId, t: &Taint) -> Diagnostic {
    let pos_name = program.axes.name(pos);
    let mut diag = match t.leak {
        Some(axis) => {
            let ax = program.axes.name(axis);
            let via = if axis == pos {
                String::new()
            } else {
                format!(" (`{ax}` carries positions of `{pos_name}`)")
            };
            let mut dg = Diagnostic::new(
                Code::NotCausal,
                format!(
                    "`{}` is not causal along `{pos_name}`: {} mixes every position of \
                     `{ax}`{via}, later ones included",
                    d.name, t.reason
                ),
            )
            .primary(t.at, format!("combines all positions of `{ax}`"));
            if let Some((span, name)) = &t.wire {
                let what = match name {
                    Some(n) => format!("`{n}` brings positions of `{ax}` that are later"),
                    None => format!("this wire brings positions of `{ax}` that are later"),
                };
                dg = dg.secondary(*span, format!("{what} than the output's"));
            }
            dg.help(if axis == pos {
                format!(
                    "sum with `cumsum[{pos_name}]` (a running sum) instead of over all \
                     positions; or compare positions as queries and keys: rename the keys \
                     (`rename[{pos_name} -> src]`) and mask them (`causal[{pos_name}, src]`)"
                )
            } else {
                format!(
                    "mask the scores with `causal[{pos_name}, {ax}]` before the softmax (or \
                     `causal_zero[{pos_name}, {ax}]` where there is none); a mask after the \
                     reduction is too late"
                )
            })
        }
        None => Diagnostic::new(
            Code::NotCausal,
            format!(
                "`{}` is not proved causal along `{pos_name}`: {}",
                d.name, t.reason
            ),
        )
        .primary(t.at, "the proof stops here"),
    };
    for c in &t.calls {
        diag = diag.secondary(*c, "reached through this call");
    }
    diag.note(format!(
        "causal along `{pos_name}`: every output position depends only on input positions at \
         or before it; `diagc explain E0601` says how the proof works"
    ))
}

struct Analysis<'a> {
    program: &'a Program,
}

/// Calls nested deeper than this are not followed (recursion is an error of the checker).
const MAX_DEPTH: usize = 64;
/// Passes over a diagram with repeat regions before giving up on a fixed point.
const MAX_PASSES: usize = 32;

impl Analysis<'_> {
    fn diagram(
        &self,
        d: &Diagram,
        inputs: Vec<Facts>,
        env: &DiagramEnv,
        depth: usize,
    ) -> Vec<Facts> {
        // Repeat regions: the carried wire's facts are the join over iterations, found by
        // passes until nothing changes (the facts only grow, in a finite set).
        let mut carried: HashMap<usize, Facts> = HashMap::new();
        for _ in 0..MAX_PASSES {
            let wires = self.pass(d, &inputs, env, depth, &carried);
            let mut changed = false;
            for (ri, r) in d.regions.iter().enumerate() {
                if !matches!(r.kind, RegionKind::Repeat(_)) {
                    continue;
                }
                let in_region = |op: fn(&Op) -> bool| {
                    d.boxes
                        .iter()
                        .position(|b| b.region == Some(super::RegionId(ri as u32)) && op(&b.op))
                };
                let (Some(lin), Some(lout)) = (
                    in_region(|o| matches!(o, Op::LoopIn)),
                    in_region(|o| matches!(o, Op::LoopOut)),
                ) else {
                    continue;
                };
                let body = &wires[d.boxes[lout].inputs[0].0 as usize];
                let old = carried.get(&lin).cloned().unwrap_or_default();
                let new = old.join(body);
                if !new.same(&old) {
                    carried.insert(lin, new);
                    changed = true;
                }
            }
            if !changed {
                return d
                    .outputs
                    .iter()
                    .map(|w| wires[w.0 as usize].clone())
                    .collect();
            }
        }
        let t = Taint {
            leak: None,
            reason: "the facts of a repeat did not settle".into(),
            at: d.span,
            wire: None,
            calls: vec![],
        };
        d.outputs
            .iter()
            .map(|_| Facts {
                taint: Some(Box::new(t.clone())),
                ..Facts::default()
            })
            .collect()
    }

    /// One pass over the boxes in their (topological) order.
    fn pass(
        &self,
        d: &Diagram,
        inputs: &[Facts],
        env: &DiagramEnv,
        depth: usize,
        carried: &HashMap<usize, Facts>,
    ) -> Vec<Facts> {
        let mut wires: Vec<Facts> = vec![Facts::default(); d.wires.len()];
        for (w, f) in d.inputs.iter().zip(inputs) {
            wires[w.0 as usize] = f.clone();
        }
        for (bi, b) in d.boxes.iter().enumerate() {
            let ins: Vec<Facts> = b
                .inputs
                .iter()
                .map(|w| wires[w.0 as usize].clone())
                .collect();
            let outs = self.transfer(d, bi, &ins, env, depth, carried);
            for (w, f) in b.outputs.iter().zip(outs) {
                wires[w.0 as usize] = f;
            }
        }
        wires
    }

    fn taint(&self, d: &Diagram, bi: usize, leak: Option<AxisId>, reason: String) -> Facts {
        let b = &d.boxes[bi];
        // The wire that brought the leaking axis (the first input that depends on it).
        let wire = leak.and_then(|_| b.inputs.first()).map(|w| {
            let w = d.wire(*w);
            (w.span, w.name.clone())
        });
        Facts {
            taint: Some(Box::new(Taint {
                leak,
                reason,
                at: b.span,
                wire,
                calls: vec![],
            })),
            ..Facts::default()
        }
    }

    /// A reduction over `axes`: a leak if one of them carries positions.
    fn reduce(
        &self,
        d: &Diagram,
        bi: usize,
        f: Facts,
        axes: &[AxisId],
        what: &str,
        inputs: &[Facts],
    ) -> Facts {
        if f.taint.is_some() {
            return f;
        }
        let f = f.normalise();
        if let Some(a) = axes.iter().find(|a| f.deps.contains(a)) {
            let mut t = self.taint(d, bi, Some(*a), format!("`{what}`"));
            // Point at the input that carries the axis.
            if let Some(t) = t.taint.as_mut() {
                let b = &d.boxes[bi];
                if let Some((w, _)) = b
                    .inputs
                    .iter()
                    .zip(inputs)
                    .find(|(_, fi)| (*fi).clone().normalise().deps.contains(a))
                {
                    let w = d.wire(*w);
                    t.wire = Some((w.span, w.name.clone()));
                }
            }
            return t;
        }
        let mut f = f;
        for a in axes {
            f.deps.remove(a);
        }
        f
    }

    fn transfer(
        &self,
        d: &Diagram,
        bi: usize,
        ins: &[Facts],
        env: &DiagramEnv,
        depth: usize,
        carried: &HashMap<usize, Facts>,
    ) -> Vec<Facts> {
        let b = &d.boxes[bi];
        let n_out = b.outputs.len();
        let one = |f: Facts| vec![f];
        let first = || ins.first().cloned().unwrap_or_default();
        // A tainted input taints every output: the first failure is the one reported.
        if b.op != Op::LoopIn
            && let Some(t) = ins.iter().find(|f| f.taint.is_some())
        {
            return vec![t.clone(); n_out];
        }
        let name = |a: &AxisId| self.program.axes.name(*a).to_string();
        // A binary elementwise box: dependencies from both sides; of the masks either side
        // has, those that `keep(mask, on_left, on_right)` says survive the operation.
        let binary = |keep: &dyn Fn(MaskKind, bool, bool) -> bool| -> Facts {
            let (x, y) = (first(), ins.get(1).cloned().unwrap_or_default());
            let masks = x
                .masks
                .union(&y.masks)
                .copied()
                .filter(|m| keep(m.0, x.masks.contains(m), y.masks.contains(m)))
                .collect();
            Facts {
                deps: x.deps.union(&y.deps).copied().collect(),
                masks,
                taint: None,
            }
            .normalise()
        };
        // Zero times anything is zero.
        let product = || binary(&|m, _, _| m == MaskKind::Zero);
        match &b.op {
            Op::Copy(n) => vec![first(); *n],
            Op::Discard => vec![],
            Op::Zip(_) | Op::Broadcast(_) | Op::Collect(_) | Op::Capture | Op::LoopOut => {
                vec![first(); n_out]
            }
            Op::LoopIn => {
                let init = first();
                let f = match carried.get(&bi) {
                    Some(c) => init.join(c),
                    None => init,
                };
                one(f)
            }
            Op::Expand(_) => one(first()),
            Op::Rename { from, to } => one(first().rename(*from, *to)),
            Op::Split { from, .. } => {
                let f = first();
                if f.involves(*from) {
                    return one(self.taint(
                        d,
                        bi,
                        None,
                        format!(
                            "a reshape of `{}`, which carries positions (reshapes of position \
                             axes are not followed)",
                            name(from)
                        ),
                    ));
                }
                one(f)
            }
            Op::Merge { from, .. } => {
                let f = first();
                if let Some(a) = from.iter().find(|a| f.involves(**a)) {
                    return one(self.taint(
                        d,
                        bi,
                        None,
                        format!(
                            "a reshape of `{}`, which carries positions (reshapes of position \
                             axes are not followed)",
                            name(a)
                        ),
                    ));
                }
                one(f)
            }
            // -inf plus anything finite is -inf; a zero survives only where both are zero.
            Op::Add => one(binary(&|m, l, r| m == MaskKind::NegInf || (l && r))),
            // -inf minus a finite value is -inf; zero minus zero is zero.
            Op::Sub => one(binary(&|m, l, r| {
                l && match m {
                    MaskKind::NegInf => !r,
                    MaskKind::Zero => r,
                }
            })),
            Op::Max | Op::Min => {
                // max(x, y) is masked where both are (with the same value); min(x, y) is
                // also minus infinity wherever either side is.
                let min = matches!(b.op, Op::Min);
                one(binary(&|m, l, r| {
                    (min && m == MaskKind::NegInf) || (l && r)
                }))
            }
            Op::Pow(c) => {
                // 0^c = 0 for c > 0.
                let positive = const_value(c).is_some_and(|v| v > 0.0);
                one(first().keep_masks(|m, _, _| (positive && m == MaskKind::Zero).then_some(m)))
            }
            Op::Mul | Op::Outer => one(product()),
            // Zero over anything is zero; the denominator's masks do not carry over.
            Op::Div => one(binary(&|m, l, _| l && m == MaskKind::Zero)),
            Op::Scale(c) => {
                let positive = const_value(c).is_some_and(|v| v > 0.0);
                one(first().keep_masks(|m, _, _| match m {
                    MaskKind::Zero => Some(m),
                    MaskKind::NegInf => positive.then_some(m),
                }))
            }
            Op::Shift(_) => one(first().keep_masks(|m, _, _| (m == MaskKind::NegInf).then_some(m))),
            Op::Dot(a) => {
                let p = product();
                let f = self.reduce(d, bi, p, &[*a], &format!("dot[{}]", name(a)), ins);
                one(f.keep_masks(|m, q, k| (q != *a && k != *a).then_some(m)))
            }
            Op::Sum(a) | Op::Reduce(_, a) => {
                let what = match &b.op {
                    Op::Reduce(r, _) => format!("{}[{}]", r.name(), name(a)),
                    _ => format!("sum[{}]", name(a)),
                };
                let f = self.reduce(d, bi, first(), &[*a], &what, ins);
                one(f.keep_masks(|m, q, k| (q != *a && k != *a).then_some(m)))
            }
            Op::RotateHalf(a) => {
                // Mixes entries along `a` (as a reduction does): facts about `a` do not survive.
                let what = format!("rotate_half[{}]", name(a));
                let f = self.reduce(d, bi, first(), &[*a], &what, ins);
                one(f.keep_masks(|m, q, k| (q != *a && k != *a).then_some(m)))
            }
            Op::Softmax(a) => {
                let f = self.reduce(d, bi, first(), &[*a], &format!("softmax[{}]", name(a)), ins);
                // A row's minus-infinity entries become exact zeros; other facts do not survive.
                let f = f.keep_masks(|m, _, k| {
                    (m == MaskKind::NegInf && k == *a).then_some(MaskKind::Zero)
                });
                // `softmax` keeps its axis: the reduced axis is back in the wire's type.
                one(f)
            }
            Op::Normalise(a) => {
                let f = self.reduce(
                    d,
                    bi,
                    first(),
                    &[*a],
                    &format!("normalise[{}]", name(a)),
                    ins,
                );
                one(f.keep_masks(|m, _, k| (m == MaskKind::Zero && k == *a).then_some(m)))
            }
            Op::Map(func) => one(first().keep_masks(|m, _, _| map_mask(*func, m))),
            // A strict or banded mask hides more than the plain one: the plain mask's fact holds.
            Op::Causal { query, key, .. } => {
                let mut f = first();
                f.masks.insert((MaskKind::NegInf, *query, *key));
                one(f.normalise())
            }
            Op::CausalZero { query, key, .. } => {
                let mut f = first();
                f.masks.insert((MaskKind::Zero, *query, *key));
                one(f.normalise())
            }
            Op::Cumsum(a) => {
                // A prefix sum: position `p` sees positions `<= p` of `a`, which is causal
                // when `a` carries positions; masks along `a` do not survive.
                one(first().keep_masks(|m, q, k| (q != *a && k != *a).then_some(m)))
            }
            Op::Scan(a) => {
                // A gated prefix sum: position `p` sees the gates and inputs at `<= p`.
                let (g, x) = (first(), ins.get(1).cloned().unwrap_or_default());
                one(g
                    .join(&x)
                    .keep_masks(|m, q, k| (q != *a && k != *a).then_some(m))
                    .normalise())
            }
            Op::MatScan { along, row, col } => {
                // As `scan`, and the gate's product contracts `col` with the state's `row`
                // read as `col`: a dependence on positions along either leaks across them.
                let (g, x) = (first(), ins.get(1).cloned().unwrap_or_default());
                let f = g
                    .join(&x)
                    .keep_masks(|m, q, k| {
                        let touched = [*along, *row, *col];
                        (!touched.contains(&q) && !touched.contains(&k)).then_some(m)
                    })
                    .normalise();
                let f = self.reduce(d, bi, f, &[*col, *row], "scan", ins);
                one(f)
            }
            Op::Dropout(_) => one(first().keep_masks(|m, _, _| (m == MaskKind::Zero).then_some(m))),
            Op::PosEnc { .. } | Op::Iota(_) | Op::Fill { .. } | Op::Param(_) => {
                vec![Facts::default(); n_out]
            }
            Op::Linear { from, to, bias } => {
                let what = format!(
                    "`linear[{} -> {}]`",
                    from.iter().map(name).collect::<Vec<_>>().join(", "),
                    to.iter().map(name).collect::<Vec<_>>().join(", ")
                );
                let f = self.reduce(d, bi, first(), from, what.trim_matches('`'), ins);
                let keep = !*bias;
                one(f.keep_masks(|m, q, k| {
                    (keep
                        && m == MaskKind::Zero
                        && !from.contains(&q)
                        && !from.contains(&k)
                        && !to.contains(&q)
                        && !to.contains(&k))
                    .then_some(m)
                }))
            }
            Op::Learner { from, .. } => {
                let f = self.reduce(d, bi, first(), from, "a learner", ins);
                one(f.without_masks())
            }
            Op::LayerNorm(axes) => {
                let f = self.reduce(d, bi, first(), axes, "layernorm", ins);
                one(f.without_masks())
            }
            Op::Embed { .. } => one(first().without_masks()),
            Op::Call { callee, hypers } => self.call(d, bi, callee, hypers, ins, env, depth),
            Op::Exec(_) => vec![self.taint(d, bi, None, "an executable-form op".into()); n_out],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        d: &Diagram,
        bi: usize,
        callee: &Callee,
        hypers: &[(String, HyperArg)],
        ins: &[Facts],
        env: &DiagramEnv,
        depth: usize,
    ) -> Vec<Facts> {
        let b = &d.boxes[bi];
        let n_out = b.outputs.len();
        let target = match callee {
            Callee::Diagram(n) => Some(n.clone()),
            Callee::Hyper(h) => env.get(h).cloned(),
        };
        let stop = |reason: String| vec![self.taint(d, bi, None, reason); n_out];
        let Some(target) = target else {
            let h = match callee {
                Callee::Hyper(h) => h.as_str(),
                Callee::Diagram(n) => n.as_str(),
            };
            return stop(format!(
                "it calls `{h}`, a diagram-valued hyperparameter without a value (give it a \
                 default, or check the diagram that binds it)"
            ));
        };
        let Some(cd) = self.program.diagram(&target) else {
            return stop(format!(
                "it calls `{target}`, which is not a diagram of the program"
            ));
        };
        if depth >= MAX_DEPTH {
            return stop(format!("calls nested more than {MAX_DEPTH} deep"));
        }
        // The callee's diagram-valued hyperparameters: as passed, else their defaults.
        let mut child = default_env(cd);
        for (hname, arg) in hypers {
            match arg {
                HyperArg::Diagram(Callee::Diagram(n)) => {
                    child.insert(hname.clone(), n.clone());
                }
                HyperArg::Diagram(Callee::Hyper(x)) => {
                    if let Some(n) = env.get(x) {
                        child.insert(hname.clone(), n.clone());
                    }
                }
                HyperArg::Num(_) => {}
            }
        }
        let mut outs = self.diagram(cd, ins.to_vec(), &child, depth + 1);
        for f in &mut outs {
            if let Some(t) = f.taint.as_mut() {
                t.calls.push(b.span);
            }
        }
        outs.resize(n_out, Facts::default());
        outs
    }
}

/// A constant's value when it needs no hyperparameter or axis size.
fn const_value(c: &Const) -> Option<f64> {
    c.eval(&|_| None, &|_| None)
}

/// What an elementwise function does to masked entries: `f(0)` and `f(-inf)`.
fn map_mask(f: Func, m: MaskKind) -> Option<MaskKind> {
    use MaskKind::{NegInf, Zero};
    match (f, m) {
        // f(0) = 0.
        (Func::Relu | Func::Tanh | Func::Sqrt | Func::Abs | Func::Gelu | Func::Sin, Zero) => {
            Some(Zero)
        }
        // log(0) = -inf.
        (Func::Log, Zero) => Some(NegInf),
        // f(-inf) = 0 (gelu is left out: x * Phi(x) is 0 * inf in floating point).
        (Func::Exp | Func::Relu | Func::Sigmoid | Func::Elu1 | Func::Step, NegInf) => Some(Zero),
        // The identity.
        (Func::StopGrad, m) => Some(m),
        _ => None,
    }
}
