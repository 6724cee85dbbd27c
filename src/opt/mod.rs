//! The optimiser: passes over a checked diagram before any backend runs it.
//!
//! It works on the rewrite term of the diagram ([`Term`]: SIMD lowered, copies and discards
//! dropped, a DAG) and only ever applies exact identities, so the optimised diagram computes the
//! same function as the original, up to floating-point rounding (`tests/opt.rs` checks this on
//! the interpreter for every stdlib mechanism). The passes, run in rounds until none changes the
//! term or a limit is reached:
//!
//! 1. **dead boxes** ([`Term::tidy`]): boxes no output depends on are removed;
//! 2. **constant folding**: scalings and shifts by constants are merged, number-only constant
//!    expressions are evaluated, `x * 1` and `x + 0` disappear;
//! 3. **common subexpressions**: two pure boxes with the same operation on the same arguments are
//!    one (learned and random boxes are never merged: two `linear` boxes are two parameters);
//! 4. **simplification by `equal` rules** ([`SIMPLIFY`]): stdlib equalities each of which removes
//!    boxes (renames that cancel, split then merge, `normalise . exp = softmax`...);
//! 5. **reassociation** ([`REASSOCIATE`]): `equal` rules that reorder contractions, `(Q K^T) V`
//!    or `Q (K^T V)`, and under a zero causal mask the prefix-sum form, each applied only where the
//!    cost model says the right side is cheaper at the axis sizes given.
//!
//! Then the elementwise chains of the result are grouped for fusion ([`groups`]). Every rule
//! application re-checks the term with the real checker, and the result is re-checked once more
//! at the end, so the optimised diagram is checked IR. The whole run is bounded by [`Limits`]
//! (nodes, rewrites, time): at a limit the optimiser stops with the best term so far and says so.

use crate::error::Error;
use crate::ir::{AxisId, BoxKind, Const, Op, Program, Reduction, WireType};
use crate::rewrite::rule::{self, RuleBook, Site};
use crate::rewrite::term::{NodeKind, Port, Term};
use crate::syntax::ast::BinOp;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// `equal` rules that simplify: each removes boxes, so applying them terminates.
pub const SIMPLIFY: &[&str] = &[
    "rename_inverse",
    "rename_inverse_past",
    "rename_rename",
    "split_merge",
    "merge_after_rename",
    "normalise_exp_is_softmax",
    "softmax_shift",
];

/// `equal` rules that reorder contractions; applied where the cost model prefers the right side.
pub const REASSOCIATE: &[&str] = &[
    "causal_prefix_sum",
    "causal_prefix_norm",
    "sum_of_scores",
    "reassociate_right",
    "reassociate_left",
];

/// The sizes the cost model assumes for size variables no `--size` binds: the model of
/// `../shared/docs/experiment.md` (d_model 512, 4 heads, d_ff 2048, vocabulary 10,000, batch 20)
/// with a long window of 1,024 tokens, where the choice between quadratic and linear forms matters.
pub const DEFAULT_SIZES: &[(&str, u64)] = &[
    ("tok", 1024),
    ("dm", 512),
    ("head", 4),
    ("dff", 2048),
    ("vocab", 10_000),
    ("batch", 20),
];

/// The size the cost model assumes for any other unbound size variable.
pub const DEFAULT_SIZE: f64 = 512.0;

/// Bounds on one optimisation.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The term may not grow beyond this many nodes.
    pub max_nodes: usize,
    /// At most this many rule applications.
    pub max_rewrites: usize,
    /// Wall-clock time.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_nodes: 50_000,
            max_rewrites: 1_000,
            time: Duration::from_secs(5),
        }
    }
}

/// What the optimiser is told.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Size variables for the cost model (`tok` -> 1024); others are [`DEFAULT_SIZE`].
    pub sizes: BTreeMap<String, u64>,
    pub limits: Limits,
}

/// One change a pass made.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub pass: &'static str,
    pub what: String,
}

/// What an optimisation did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub changes: Vec<Change>,
    /// The cost model's estimate (multiply-adds per call) before and after.
    pub cost_before: f64,
    pub cost_after: f64,
    /// The sizes the cost model used: (variable, value, assumed rather than given).
    pub sizes: Vec<(String, f64, bool)>,
    /// The elementwise groups of the result, as text.
    pub groups: Vec<String>,
    /// The limit that stopped the optimiser early, if one did.
    pub stopped: Option<String>,
    pub rounds: usize,
}

impl Report {
    /// How many changes the named pass made.
    pub fn count(&self, pass: &str) -> usize {
        self.changes.iter().filter(|c| c.pass == pass).count()
    }

    /// The report as `//` comment lines, for the head of the optimised text.
    pub fn comment(&self) -> String {
        let mut s = String::new();
        let sizes: Vec<String> = self
            .sizes
            .iter()
            .map(|(v, x, assumed)| format!("{v}={x}{}", if *assumed { " (assumed)" } else { "" }))
            .collect();
        let _ = writeln!(
            s,
            "// optimised by diagc: cost {} -> {} multiply-adds per call (cost model sizes: {})",
            sci(self.cost_before),
            sci(self.cost_after),
            if sizes.is_empty() {
                "none".into()
            } else {
                sizes.join(", ")
            }
        );
        if self.changes.is_empty() {
            let _ = writeln!(s, "// no pass changed the diagram");
        }
        for c in &self.changes {
            let _ = writeln!(s, "// {}: {}", c.pass, c.what);
        }
        if let Some(why) = &self.stopped {
            let _ = writeln!(s, "// stopped early: {why}");
        }
        for (i, g) in self.groups.iter().enumerate() {
            let _ = writeln!(s, "// elementwise group {}: {g}", i + 1);
        }
        s
    }
}

/// A number for people: `1.2e6`, or the integer when small.
pub fn sci(x: f64) -> String {
    if x < 1e4 {
        format!("{x:.0}")
    } else {
        format!("{x:.2e}")
    }
}

/// The cost model: sizes of a term's axes as numbers, and the work of each box.
pub struct Cost<'a> {
    sizes: &'a BTreeMap<String, u64>,
}

impl<'a> Cost<'a> {
    pub fn new(sizes: &'a BTreeMap<String, u64>) -> Cost<'a> {
        Cost { sizes }
    }

    fn var(&self, v: &str) -> f64 {
        match self.sizes.get(v) {
            Some(x) => *x as f64,
            None => DEFAULT_SIZES
                .iter()
                .find(|(n, _)| *n == v)
                .map(|(_, x)| *x as f64)
                .unwrap_or(DEFAULT_SIZE),
        }
    }

    /// The size of an axis of `t` (a monomial evaluated in floating point, so that assumed
    /// sizes need not divide).
    pub fn axis(&self, t: &Term, a: AxisId) -> f64 {
        let s = &t.axes.get(a).size;
        let mut x = s.num as f64 / s.den as f64;
        for (v, e) in &s.vars {
            x *= self.var(v).powi(*e);
        }
        x
    }

    fn elements(&self, t: &Term, ty: &WireType) -> f64 {
        ty.axes.iter().map(|a| self.axis(t, *a)).product()
    }

    /// The work of node `id` of `t`, in multiply-adds (or elementwise operations); 0 for moves
    /// of data (renames, splits, merges, broadcasts), which the backends make views.
    pub fn node(&self, t: &Term, id: usize) -> f64 {
        let n = &t.nodes[id];
        let NodeKind::Box { op, .. } = &n.kind else {
            return 0.0;
        };
        let out = |k: usize| {
            n.types
                .get(k)
                .cloned()
                .flatten()
                .map(|ty| self.elements(t, &ty))
                .unwrap_or(0.0)
        };
        let arg = |k: usize| {
            n.args
                .get(k)
                .and_then(|p| t.nodes[p.node].types.get(p.out).cloned().flatten())
                .map(|ty| self.elements(t, &ty))
                .unwrap_or(0.0)
        };
        let prod = |axes: &[AxisId]| -> f64 { axes.iter().map(|a| self.axis(t, *a)).product() };
        match op {
            Op::Rename { .. } | Op::Split { .. } | Op::Merge { .. } | Op::Expand(_) => 0.0,
            Op::Dot(a) => out(0) * self.axis(t, *a),
            Op::Sum(_) => arg(0),
            Op::Reduce(r, _) => match r {
                Reduction::LogSumExp => 3.0 * arg(0),
                _ => arg(0),
            },
            Op::Softmax(_) | Op::Normalise(_) => 3.0 * out(0),
            Op::RotateHalf(_) => out(0),
            Op::LayerNorm(_) => 5.0 * out(0),
            Op::Linear { from, .. } => out(0) * prod(from),
            Op::Learner { from, to, width } => {
                let w = width
                    .eval(&|_| None, &|a| Some(self.axis(t, a)))
                    .unwrap_or(DEFAULT_SIZE);
                out(0) / prod(to).max(1.0) * w * (prod(from) + prod(to))
            }
            _ => out(0),
        }
    }

    /// The work of every box of `t`.
    pub fn term(&self, t: &Term) -> f64 {
        (0..t.nodes.len()).map(|i| self.node(t, i)).sum()
    }

    /// The work of a rule's right side at a match in `t`: its boxes, sized through the match's
    /// axes, times the lanes the match runs over.
    fn rhs(&self, r: &rule::Rule, m: &rule::Match, t: &Term) -> f64 {
        let rhs = &r.rhs;
        // Sizes of the rule's axes: bound ones through the match, the others from their
        // declared size in terms of bound ones.
        let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
        for (ra, ta) in &m.axes {
            by_name.insert(
                rhs.axes.name(*ra).to_string(),
                self.axis(t, *ta).round() as u64,
            );
        }
        let sized = Cost { sizes: &by_name };
        let within = sized.term(rhs);
        let root_axes = t.nodes[m.root.node].types[m.root.out]
            .as_ref()
            .map(|ty| ty.axes.clone())
            .unwrap_or_default();
        let lanes: f64 = root_axes
            .iter()
            .filter(|a| !m.axes.values().any(|b| b == *a))
            .map(|a| self.axis(t, *a))
            .product();
        within * lanes
    }
}

/// The running budget of one optimisation.
struct Budget {
    start: Instant,
    limits: Limits,
    rewrites: usize,
    stopped: Option<String>,
}

impl Budget {
    /// Whether another rewrite may run; records the limit reached otherwise.
    fn allows(&mut self, t: &Term) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        if self.rewrites >= self.limits.max_rewrites {
            self.stopped = Some(format!("{} rewrites", self.limits.max_rewrites));
        } else if t.nodes.len() > self.limits.max_nodes {
            self.stopped = Some(format!(
                "the diagram has {} nodes, over the limit of {}",
                t.nodes.len(),
                self.limits.max_nodes
            ));
        } else if self.start.elapsed() > self.limits.time {
            self.stopped = Some(format!("the time limit of {:?}", self.limits.time));
        }
        self.stopped.is_none()
    }
}

/// At most this many rounds of all passes.
const MAX_ROUNDS: usize = 16;

/// Optimises `t`. `book` must hold the rules named by [`SIMPLIFY`] and [`REASSOCIATE`] (the
/// stdlib's). Returns the optimised term (checked, every node typed), its program, and a report.
pub fn optimise(
    book: &RuleBook,
    t: &Term,
    opts: &Options,
) -> Result<(Term, Program, Report), Error> {
    for r in SIMPLIFY.iter().chain(REASSOCIATE) {
        if book.get(r).is_none() {
            return Err(Error::Optimise(format!(
                "the optimiser's rule `{r}` is missing from the rule book"
            )));
        }
    }
    let cost = Cost::new(&opts.sizes);
    // Boxes of inlined calls are not typed yet; the cost model needs every type.
    let typed = if t.nodes.iter().any(|n| n.types.iter().any(Option::is_none)) {
        t.recheck()?.0
    } else {
        t.clone()
    };
    let mut report = Report {
        cost_before: cost.term(&typed),
        ..Report::default()
    };
    let mut vars: Vec<String> = Vec::new();
    for ax in &t.axes.axes {
        for v in ax.size.vars.keys() {
            if !vars.contains(v) {
                vars.push(v.clone());
            }
        }
    }
    vars.sort();
    report.sizes = vars
        .iter()
        .map(|v| (v.clone(), cost.var(v), !opts.sizes.contains_key(v)))
        .collect();
    let start = Instant::now();
    let (mut best, mut best_report) = rounds(book, t, &cost, true, start, opts, report.clone())?;
    if best_report.count("reassociate") > 0 {
        // Each reassociation is taken for its local gain; a value the rewritten part shared
        // with the rest of the diagram may stay alive and make the whole dearer. Compare with
        // the diagram optimised without reassociation, and keep the cheaper.
        let (plain, mut plain_report) = rounds(book, t, &cost, false, start, opts, report)?;
        if plain_report.cost_after < best_report.cost_after {
            let taken: Vec<String> = best_report
                .changes
                .iter()
                .filter(|c| c.pass == "reassociate")
                .map(|c| c.what.clone())
                .collect();
            plain_report.changes.push(Change {
                pass: "reassociate",
                what: format!(
                    "not taken ({}): the whole would cost {} instead of {}",
                    taken.join("; "),
                    sci(best_report.cost_after),
                    sci(plain_report.cost_after)
                ),
            });
            (best, best_report) = (plain, plain_report);
        }
    }
    best_report.groups = groups(&best.0);
    Ok((best.0, best.1, best_report))
}

/// Runs the passes in rounds until none changes the term or a limit is reached, then re-checks.
#[allow(clippy::type_complexity)]
fn rounds(
    book: &RuleBook,
    t: &Term,
    cost: &Cost,
    reassociate: bool,
    start: Instant,
    opts: &Options,
    mut report: Report,
) -> Result<((Term, Program), Report), Error> {
    let mut budget = Budget {
        start,
        limits: opts.limits.clone(),
        rewrites: 0,
        stopped: None,
    };
    let mut cur = t.clone();
    for round in 0..MAX_ROUNDS {
        report.rounds = round + 1;
        let mut changed = dead_boxes(&mut cur, &mut report);
        changed += fold_constants(&mut cur, &mut report);
        changed += common_subexpressions(&mut cur, &mut report);
        changed += by_rules(
            book,
            &mut cur,
            SIMPLIFY,
            "simplify",
            None,
            &mut budget,
            &mut report,
        )?;
        if reassociate {
            changed += by_rules(
                book,
                &mut cur,
                REASSOCIATE,
                "reassociate",
                Some(cost),
                &mut budget,
                &mut report,
            )?;
        }
        if changed == 0 || budget.stopped.is_some() {
            break;
        }
    }
    report.stopped = budget.stopped.take();
    cur.tidy();
    let (out, program) = cur.recheck()?;
    report.cost_after = cost.term(&out);
    Ok(((out, program), report))
}

/// Optimises diagram `name` of a checked program (calls of diagrams without hyperparameters
/// are inlined first).
pub fn optimise_diagram(
    book: &RuleBook,
    p: &Program,
    name: &str,
    opts: &Options,
) -> Result<(Term, Report), Error> {
    let t = Term::from_program(p, name)?;
    let (out, _, report) = optimise(book, &t, opts)?;
    Ok((out, report))
}

/// Pass 1: removes the boxes no output depends on.
fn dead_boxes(t: &mut Term, report: &mut Report) -> usize {
    let before: Vec<String> = box_names(t);
    let removed = t.tidy();
    if removed > 0 {
        let after = box_names(t);
        let mut gone = before;
        for a in after {
            if let Some(i) = gone.iter().position(|b| *b == a) {
                gone.remove(i);
            }
        }
        report.changes.push(Change {
            pass: "dead boxes",
            what: format!("removed {removed}: {}", gone.join(", ")),
        });
    }
    removed
}

fn box_names(t: &Term) -> Vec<String> {
    t.nodes
        .iter()
        .filter_map(|n| n.op().map(|op| op_name(op, t)))
        .collect()
}

/// A short name of an operation for reports: `dot[dk]`, `elu1`, `linear`.
fn op_name(op: &Op, t: &Term) -> String {
    let text = crate::ir::print::op_text(op, &t.axes);
    match op {
        Op::Add => "+".into(),
        Op::Sub => "-".into(),
        Op::Mul => "*".into(),
        Op::Div => "/".into(),
        Op::Linear { .. } | Op::Learner { .. } | Op::Param(_) => {
            text.split('[').next().unwrap_or(&text).to_string()
        }
        _ => text,
    }
}

/// A constant with every number-only sub-expression evaluated.
fn fold_const(c: &Const) -> Const {
    let folded = match c {
        Const::Neg(x) => Const::Neg(Box::new(fold_const(x))),
        Const::Fn(f, args) => Const::Fn(*f, args.iter().map(fold_const).collect()),
        Const::Bin(op, a, b) => Const::Bin(*op, Box::new(fold_const(a)), Box::new(fold_const(b))),
        other => other.clone(),
    };
    match folded.eval(&|_| None, &|_| None) {
        Some(x) if x.is_finite() && !matches!(folded, Const::Num(_)) => Const::Num(x),
        _ => folded,
    }
}

/// Pass 2: constant folding.
fn fold_constants(t: &mut Term, report: &mut Report) -> usize {
    let mut changed = 0;
    // Use counts, recounted after a change that rewires arguments.
    let mut uses = t.uses();
    for id in 0..t.nodes.len() {
        let Some(op) = t.nodes[id].op().cloned() else {
            continue;
        };
        let (c, unit, combine): (Const, f64, BinOp) = match &op {
            Op::Scale(c) => (c.clone(), 1.0, BinOp::Mul),
            Op::Shift(c) => (c.clone(), 0.0, BinOp::Add),
            _ => continue,
        };
        let same_kind = |o: &Op| {
            matches!(
                (o, &op),
                (Op::Scale(_), Op::Scale(_)) | (Op::Shift(_), Op::Shift(_))
            )
        };
        let arg = t.nodes[id].args[0];
        let inner = t.nodes[arg.node].op().cloned();
        // x * a * b -> x * (a * b), when the inner value has no other use.
        if let Some(inner) = inner.filter(|o| same_kind(o))
            && uses.get(&arg).copied().unwrap_or(0) == 1
        {
            let ic = match &inner {
                Op::Scale(x) | Op::Shift(x) => x.clone(),
                _ => unreachable!("same_kind"),
            };
            let merged = fold_const(&Const::Bin(combine, Box::new(ic), Box::new(c.clone())));
            let new_op = if matches!(op, Op::Scale(_)) {
                Op::Scale(merged)
            } else {
                Op::Shift(merged)
            };
            let what = format!(
                "{} then {} is {}",
                op_name(&inner, t),
                op_name(&op, t),
                op_name(&new_op, t)
            );
            t.nodes[id].args = t.nodes[arg.node].args.clone();
            if let NodeKind::Box { op, .. } = &mut t.nodes[id].kind {
                *op = new_op;
            }
            report.changes.push(Change {
                pass: "fold constants",
                what,
            });
            changed += 1;
            uses = t.uses();
            continue;
        }
        let f = fold_const(&c);
        if f == Const::Num(unit) {
            let what = format!("{} does nothing", op_name(&op, t));
            t.redirect(Port { node: id, out: 0 }, arg);
            report.changes.push(Change {
                pass: "fold constants",
                what,
            });
            changed += 1;
            uses = t.uses();
        } else if f != c {
            let new_op = if matches!(op, Op::Scale(_)) {
                Op::Scale(f)
            } else {
                Op::Shift(f)
            };
            let what = format!("{} is {}", op_name(&op, t), op_name(&new_op, t));
            if let NodeKind::Box { op, .. } = &mut t.nodes[id].kind {
                *op = new_op;
            }
            report.changes.push(Change {
                pass: "fold constants",
                what,
            });
            changed += 1;
        }
    }
    if changed > 0 {
        t.tidy();
    }
    changed
}

/// Whether two boxes with this operation on the same arguments are the same value: pure
/// arithmetic and data movement, not learned boxes (each has its own parameters), dropout (each
/// draws its own mask) or calls.
fn is_pure(op: &Op) -> bool {
    matches!(op.kind(), BoxKind::Primitive | BoxKind::Structural)
        && !matches!(op, Op::Dropout(_) | Op::Exec(_))
}

/// Pass 3: common subexpression elimination.
fn common_subexpressions(t: &mut Term, report: &mut Report) -> usize {
    let mut seen: HashMap<(String, Vec<Port>), usize> = HashMap::new();
    let mut subst: HashMap<Port, Port> = HashMap::new();
    let mut merged: Vec<String> = Vec::new();
    for id in 0..t.nodes.len() {
        let args: Vec<Port> = t.nodes[id]
            .args
            .iter()
            .map(|p| *subst.get(p).unwrap_or(p))
            .collect();
        t.nodes[id].args = args.clone();
        let Some(op) = t.nodes[id].op().cloned() else {
            continue;
        };
        if !is_pure(&op) {
            continue;
        }
        let mut key_args = args;
        if matches!(op, Op::Add | Op::Mul | Op::Dot(_) | Op::Outer) {
            key_args.sort();
        }
        match seen.get(&(format!("{op:?}"), key_args.clone())) {
            Some(&first) => {
                for out in 0..t.nodes[id].types.len().max(1) {
                    subst.insert(Port { node: id, out }, Port { node: first, out });
                    if t.nodes[first].names.get(out).cloned().flatten().is_none()
                        && let Some(n) = t.nodes[id].names.get(out).cloned().flatten()
                    {
                        t.nodes[first].names[out] = Some(n);
                    }
                }
                merged.push(op_name(&op, t));
            }
            None => {
                seen.insert((format!("{op:?}"), key_args), id);
            }
        }
    }
    for o in t.outputs.iter_mut() {
        if let Some(p) = subst.get(o) {
            *o = *p;
        }
    }
    if !merged.is_empty() {
        t.tidy();
        report.changes.push(Change {
            pass: "common subexpressions",
            what: format!("merged {}: {}", merged.len(), merged.join(", ")),
        });
    }
    merged.len()
}

/// Passes 4 and 5: applies the named `equal` rules until none applies. With a cost model, a
/// match is rewritten only when the rule's right side costs less there than its left side.
fn by_rules(
    book: &RuleBook,
    t: &mut Term,
    rules: &[&str],
    pass: &'static str,
    cost: Option<&Cost>,
    budget: &mut Budget,
    report: &mut Report,
) -> Result<usize, Error> {
    let mut applied = 0;
    'again: loop {
        for name in rules {
            let r = book
                .get(name)
                .ok_or_else(|| Error::Optimise(format!("no rule `{name}`")))?;
            for (i, m) in rule::find_matches(r, t).iter().enumerate() {
                let gain = match cost {
                    None => None,
                    Some(c) => {
                        let lhs: f64 = m.covered.iter().map(|n| c.node(t, *n)).sum();
                        let rhs = c.rhs(r, m, t);
                        if rhs >= lhs * (1.0 - 1e-9) {
                            continue;
                        }
                        Some((lhs, rhs))
                    }
                };
                if !budget.allows(t) {
                    return Ok(applied);
                }
                budget.rewrites += 1;
                let step = match rule::apply(book, t, name, Some(&Site::Index(i + 1))) {
                    Ok(s) => s,
                    // A result that does not type (a rule whose axes clash here) is not taken.
                    Err(_) => continue,
                };
                let at = match &step.matched_name {
                    Some(n) => format!(" at `{n}`"),
                    None => String::new(),
                };
                let what = match gain {
                    Some((l, r)) => format!("{name}{at} (cost {} -> {})", sci(l), sci(r)),
                    None => format!("{name}{at}"),
                };
                report.changes.push(Change { pass, what });
                *t = step.after;
                applied += 1;
                continue 'again;
            }
        }
        return Ok(applied);
    }
}

/// Elementwise operations a backend can fuse into one loop.
fn is_elementwise(op: &Op) -> bool {
    matches!(
        op,
        Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Scale(_)
            | Op::Shift(_)
            | Op::Pow(_)
            | Op::Max
            | Op::Min
            | Op::Map(_)
            | Op::Dropout(_)
            | Op::Causal { .. }
            | Op::CausalZero { .. }
    )
}

/// The elementwise chains of a typed term: maximal sets of elementwise boxes joined by values
/// used exactly once, by a box of the same output axes, so that the intermediate values need
/// never be stored. Each is written as its operations in order and its axes.
pub fn groups(t: &Term) -> Vec<String> {
    let uses = t.uses();
    let n = t.nodes.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        let mut y = x;
        while p[y] != r {
            let next = p[y];
            p[y] = r;
            y = next;
        }
        r
    }
    let axes_of = |id: usize| -> Option<Vec<AxisId>> {
        t.nodes[id].types.first().cloned().flatten().map(|ty| {
            let mut a = ty.axes.clone();
            a.sort();
            a
        })
    };
    for id in 0..n {
        let Some(op) = t.nodes[id].op() else { continue };
        if !is_elementwise(op) {
            continue;
        }
        for a in &t.nodes[id].args {
            let producer_ok = t.nodes[a.node].op().is_some_and(is_elementwise);
            if producer_ok
                && uses.get(a).copied().unwrap_or(0) == 1
                && axes_of(a.node).is_some()
                && axes_of(a.node) == axes_of(id)
            {
                let (x, y) = (find(&mut parent, a.node), find(&mut parent, id));
                parent[x] = y;
            }
        }
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for id in 0..n {
        if t.nodes[id].op().is_some_and(is_elementwise) {
            let r = find(&mut parent, id);
            members.entry(r).or_default().push(id);
        }
    }
    let mut out: Vec<(usize, String)> = members
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|m| {
            let ops: Vec<String> = m
                .iter()
                .map(|id| op_name(t.nodes[*id].op().expect("a box"), t))
                .collect();
            let ty = t.nodes[*m.last().expect("two members")].types[0]
                .as_ref()
                .map(|ty| ty.display(&t.axes).to_string())
                .unwrap_or_default();
            (m[0], format!("{} over {ty}", ops.join(", ")))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, s)| s).collect()
}
