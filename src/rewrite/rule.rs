//! Rules: loading, matching a left side at a site of a term, and replacing it by the right side.
//!
//! A rule's left side is a pattern: its inputs are variables for sub-terms, its axes are axis
//! variables (bound injectively to the target's axes; an axis declared with a size, such as
//! `axis c = a / b`, is a side condition on the sizes of what `a`, `b` and `c` bind), its float
//! hyperparameters are constant variables (`scale[s](x)` matches any scale) and its diagram-valued
//! hyperparameters are box variables (`f(x)` matches any one box with that many inputs). Boxes
//! match boxes of the same op; `+`, `*`, `dot` and `outer` also match with their arguments
//! swapped. Every box is lane-wise, so a match may carry more axes than the pattern names (the
//! lanes). The right side is built with the same bindings; axes only it names become fresh axes
//! of the target; learned boxes it makes are per-lane over the axes the matched learned boxes
//! were. The result is printed and re-checked ([`Term::recheck`]): a rewrite whose result does
//! not type is refused at that site.

use super::term::{NodeKind, Port, Term, map_op};
use crate::error::Error;
use crate::ir::size::Size;
use crate::ir::{
    AxisId, AxisInfo, AxisTable, Callee, Const, HyperType, Op, ParamSpec, Program, RuleClass,
};
use std::collections::{BTreeMap, HashMap};

/// A checked rule, ready to match.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub class: RuleClass,
    pub lhs: Term,
    pub rhs: Term,
    /// Where it was defined (a file name).
    pub origin: String,
    /// The rule's float hyperparameters (constant variables) and diagram-valued ones (box
    /// variables).
    pub consts: Vec<String>,
    pub boxes: Vec<String>,
}

/// Every rule known to a command: the stdlib's and the user's.
#[derive(Clone, Debug, Default)]
pub struct RuleBook {
    pub rules: Vec<Rule>,
}

/// The stdlib modules that hold rules.
pub fn stdlib_rule_modules() -> Vec<String> {
    crate::stdlib::module_names()
        .filter(|m| m.starts_with("rules."))
        .collect()
}

impl RuleBook {
    /// The stdlib's rules.
    pub fn stdlib() -> Result<RuleBook, Error> {
        let mut book = RuleBook::default();
        for m in stdlib_rule_modules() {
            let (path, text) = crate::stdlib::module(&m).expect("listed module exists");
            book.add_text(&format!("<stdlib>/{path}"), text)?;
        }
        Ok(book)
    }

    /// Adds the rules of a `.diag` file's text. Ill-typed rules are an error with the checker's
    /// report.
    pub fn add_text(&mut self, name: &str, text: &str) -> Result<(), Error> {
        let outcome = crate::session::check_text(name, text);
        if !outcome.checked.is_ok() {
            return Err(Error::Rewrite(format!(
                "the rules in {name} do not check:\n{}",
                outcome.plain_report()
            )));
        }
        self.add_program(name, &outcome.checked.program)
    }

    pub fn add_program(&mut self, origin: &str, p: &Program) -> Result<(), Error> {
        for r in &p.rules {
            if self.get(&r.name).is_some() {
                return Err(Error::Rewrite(format!(
                    "rule `{}` ({origin}) is defined twice",
                    r.name
                )));
            }
            let lhs = Term::from_rule_side(&r.lhs, &p.axes)
                .map_err(|e| Error::Rewrite(format!("rule `{}`: {e}", r.name)))?;
            let rhs = Term::from_rule_side(&r.rhs, &p.axes)
                .map_err(|e| Error::Rewrite(format!("rule `{}`: {e}", r.name)))?;
            if lhs.outputs.len() != 1 {
                return Err(Error::Rewrite(format!(
                    "rule `{}`: a left side has exactly one output (it has {})",
                    r.name,
                    lhs.outputs.len()
                )));
            }
            if matches!(lhs.nodes[lhs.outputs[0].node].kind, NodeKind::Input(_)) {
                return Err(Error::Rewrite(format!(
                    "rule `{}`: the left side is a bare input, which would match everywhere",
                    r.name
                )));
            }
            let mut consts = Vec::new();
            let mut boxes = Vec::new();
            for h in &r.lhs.hypers {
                match h.ty {
                    HyperType::Diagram { .. } => boxes.push(h.name.clone()),
                    _ => consts.push(h.name.clone()),
                }
            }
            self.rules.push(Rule {
                name: r.name.clone(),
                class: r.class,
                lhs,
                rhs,
                origin: origin.to_string(),
                consts,
                boxes,
            });
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}

/// A match of a rule's left side in a term.
#[derive(Clone, Debug)]
pub struct Match {
    /// The port the left side's output matched: the rewrite replaces its uses.
    pub root: Port,
    /// Rule axis to target axis.
    pub axes: BTreeMap<AxisId, AxisId>,
    /// For each left-side input, the target port it matched.
    pub vars: Vec<Option<Port>>,
    pub consts: BTreeMap<String, Const>,
    pub boxes: BTreeMap<String, (Op, Vec<ParamSpec>)>,
    /// Target nodes the left side's boxes matched.
    pub covered: Vec<usize>,
    /// Left-side box outputs and the target ports they matched.
    pub pairs: Vec<(Port, Port)>,
}

struct Matcher<'a> {
    rule: &'a Rule,
    t: &'a Term,
    /// `t.uses()`, computed once per search.
    uses: &'a HashMap<Port, usize>,
    m: Match,
}

impl Matcher<'_> {
    fn axis(&mut self, p: AxisId, t: AxisId) -> bool {
        if let Some(b) = self.m.axes.get(&p) {
            return *b == t;
        }
        if self.m.axes.values().any(|v| *v == t) {
            return false;
        }
        self.m.axes.insert(p, t);
        true
    }

    fn axes(&mut self, p: &[AxisId], t: &[AxisId]) -> bool {
        p.len() == t.len() && p.iter().zip(t).all(|(a, b)| self.axis(*a, *b))
    }

    fn konst(&mut self, p: &Const, t: &Const) -> bool {
        match (p, t) {
            (Const::Hyper(h), _) if self.rule.consts.contains(h) => {
                if let Some(b) = self.m.consts.get(h) {
                    return b == t;
                }
                self.m.consts.insert(h.clone(), t.clone());
                true
            }
            (Const::Num(a), Const::Num(b)) => a == b,
            (Const::Size(a), Const::Size(b)) => self.axis(*a, *b),
            (Const::Hyper(a), Const::Hyper(b)) => a == b,
            (Const::Neg(a), Const::Neg(b)) => self.konst(a, b),
            (Const::Fn(f, a), Const::Fn(g, b)) => {
                f == g && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| self.konst(x, y))
            }
            (Const::Bin(o1, a1, b1), Const::Bin(o2, a2, b2)) => {
                o1 == o2 && self.konst(a1, a2) && self.konst(b1, b2)
            }
            _ => false,
        }
    }

    fn op(&mut self, p: &Op, t: &Op) -> bool {
        use Op::*;
        match (p, t) {
            (Rename { from: a, to: b }, Rename { from: c, to: d }) => {
                self.axis(*a, *c) && self.axis(*b, *d)
            }
            (Split { from: a, into: b }, Split { from: c, into: d }) => {
                self.axis(*a, *c) && self.axes(b, d)
            }
            (Merge { from: a, into: b }, Merge { from: c, into: d }) => {
                self.axes(a, c) && self.axis(*b, *d)
            }
            (Expand(a), Expand(b))
            | (Dot(a), Dot(b))
            | (Sum(a), Sum(b))
            | (Softmax(a), Softmax(b))
            | (Normalise(a), Normalise(b))
            | (Cumsum(a), Cumsum(b))
            | (Scan(a), Scan(b))
            | (RotateHalf(a), RotateHalf(b)) => self.axis(*a, *b),
            (Reduce(r, a), Reduce(s, b)) => r == s && self.axis(*a, *b),
            (
                MatScan {
                    along: a,
                    row: r,
                    col: c,
                },
                MatScan {
                    along: b,
                    row: s,
                    col: d,
                },
            ) => self.axis(*a, *b) && self.axis(*r, *s) && self.axis(*c, *d),
            (
                Causal {
                    query: a,
                    key: b,
                    band: x,
                },
                Causal {
                    query: c,
                    key: d,
                    band: y,
                },
            )
            | (
                CausalZero {
                    query: a,
                    key: b,
                    band: x,
                },
                CausalZero {
                    query: c,
                    key: d,
                    band: y,
                },
            ) => {
                self.axis(*a, *c)
                    && self.axis(*b, *d)
                    && x.strict == y.strict
                    && match (&x.window, &y.window) {
                        (None, None) => true,
                        (Some(v), Some(w)) => self.konst(v, w),
                        _ => false,
                    }
            }
            (Scale(a), Scale(b))
            | (Shift(a), Shift(b))
            | (Pow(a), Pow(b))
            | (Dropout(a), Dropout(b)) => self.konst(a, b),
            (Map(a), Map(b)) => a == b,
            (
                Linear {
                    from: a,
                    to: b,
                    bias: x,
                },
                Linear {
                    from: c,
                    to: d,
                    bias: y,
                },
            ) => x == y && self.axes(a, c) && self.axes(b, d),
            (
                Learner {
                    from: a,
                    to: b,
                    width: w1,
                },
                Learner {
                    from: c,
                    to: d,
                    width: w2,
                },
            ) => self.axes(a, c) && self.axes(b, d) && self.konst(w1, w2),
            (Param(a), Param(b)) | (LayerNorm(a), LayerNorm(b)) => self.axes(a, b),
            (PosEnc { pos: a, feature: b }, PosEnc { pos: c, feature: d }) => {
                self.axis(*a, *c) && self.axis(*b, *d)
            }
            (Iota(a), Iota(b)) => self.axis(*a, *b),
            (Fill { axes: a, value: x }, Fill { axes: b, value: y }) => {
                self.axes(a, b) && self.konst(x, y)
            }
            (Embed { vocab: a, to: b }, Embed { vocab: c, to: d }) => {
                self.axis(*a, *c) && self.axes(b, d)
            }
            _ => std::mem::discriminant(p) == std::mem::discriminant(t) && p == t,
        }
    }

    fn port(&mut self, p: Port, t: Port) -> bool {
        let pn = &self.rule.lhs.nodes[p.node];
        match &pn.kind {
            NodeKind::Input(k) => {
                let k = *k;
                if let Some(b) = self.m.vars[k] {
                    return b == t;
                }
                self.m.vars[k] = Some(t);
                true
            }
            NodeKind::Box { op, .. } => {
                let tn = &self.t.nodes[t.node];
                let NodeKind::Box { op: top, params } = &tn.kind else {
                    return false;
                };
                if p.out != t.out || pn.args.len() != tn.args.len() {
                    return false;
                }
                if let Op::Call {
                    callee: Callee::Hyper(f),
                    ..
                } = op
                    && self.rule.boxes.contains(f)
                {
                    if tn.types.len() != 1 {
                        return false;
                    }
                    if let Some((bop, _)) = self.m.boxes.get(f) {
                        if bop != top {
                            return false;
                        }
                    } else {
                        self.m
                            .boxes
                            .insert(f.clone(), (top.clone(), params.clone()));
                    }
                } else if !self.op(op, top) {
                    return false;
                }
                self.m.covered.push(t.node);
                self.m.pairs.push((p, t));
                let (pa, ta) = (pn.args.clone(), tn.args.clone());
                let commutes = matches!(op, Op::Add | Op::Mul | Op::Dot(_) | Op::Outer);
                let saved = self.m.clone();
                if pa.iter().zip(&ta).all(|(a, b)| self.port(*a, *b)) {
                    return true;
                }
                if commutes && pa.len() == 2 {
                    self.m = saved;
                    return self.port(pa[0], ta[1]) && self.port(pa[1], ta[0]);
                }
                false
            }
        }
    }

    /// Types and side conditions, once the structure matched.
    fn finish(&mut self) -> bool {
        let lhs = &self.rule.lhs;
        // Every pattern wire's axes must be among its match's (the rest are lanes).
        for (id, n) in lhs.nodes.iter().enumerate() {
            for (k, ty) in n.types.iter().enumerate() {
                let Some(ty) = ty else { continue };
                let target = match &n.kind {
                    NodeKind::Input(i) => self.m.vars[*i],
                    NodeKind::Box { .. } => self.find_target(Port { node: id, out: k }),
                };
                let Some(target) = target else { continue };
                let Some(tty) = self.t.nodes[target.node].types[target.out].clone() else {
                    continue;
                };
                if ty.index_of.is_some() != tty.index_of.is_some() {
                    return false;
                }
                for a in &ty.axes {
                    match self.m.axes.get(a) {
                        Some(b) if !tty.axes.contains(b) => return false,
                        Some(_) => {}
                        None => {
                            // An axis named only by types: the first free candidate.
                            let cand = tty
                                .axes
                                .iter()
                                .find(|c| !self.m.axes.values().any(|v| v == *c))
                                .copied();
                            match cand {
                                Some(c) => {
                                    self.m.axes.insert(*a, c);
                                }
                                None => return false,
                            }
                        }
                    }
                }
            }
        }
        // Side conditions: sizes declared in the rule hold for what the axes bound.
        let rule_axes = &lhs.axes;
        for (p, t) in &self.m.axes {
            let want = rule_axes.size(*p);
            if let Some(mapped) = map_size(want, rule_axes, &self.m.axes, &self.t.axes)
                && mapped != *self.t.axes.size(*t)
            {
                return false;
            }
        }
        // A learned or random box inside the match may not be used outside it: replacing it
        // would change what the outside sees.
        let uses = self.uses;
        let root = self.m.root.node;
        for &c in &self.m.covered {
            if c == root {
                continue;
            }
            let n = &self.t.nodes[c];
            let learned = matches!(n.op().map(Op::kind), Some(crate::ir::BoxKind::Learned))
                || matches!(n.op(), Some(Op::Dropout(_)));
            if !learned {
                continue;
            }
            let inside: usize = self
                .m
                .covered
                .iter()
                .map(|&d| self.t.nodes[d].args.iter().filter(|a| a.node == c).count())
                .sum();
            let total: usize = (0..n.types.len())
                .map(|k| uses.get(&Port { node: c, out: k }).copied().unwrap_or(0))
                .sum();
            if total > inside {
                return false;
            }
        }
        true
    }

    /// The target port a left-side box output matched.
    fn find_target(&self, p: Port) -> Option<Port> {
        self.m.pairs.iter().find(|(a, _)| *a == p).map(|(_, b)| *b)
    }
}

/// A rule size mapped into the target through the axis binding, when every variable it uses
/// is bound.
fn map_size(
    s: &Size,
    rule_axes: &AxisTable,
    bind: &BTreeMap<AxisId, AxisId>,
    target: &AxisTable,
) -> Option<Size> {
    let mut out = Size::constant(s.num).div(&Size::constant(s.den));
    for (v, e) in &s.vars {
        let a = rule_axes.lookup(v)?;
        let t = bind.get(&a)?;
        let base = target.size(*t);
        for _ in 0..e.unsigned_abs() {
            out = if *e > 0 { out.mul(base) } else { out.div(base) };
        }
    }
    Some(out)
}

/// Every match of `rule` in `t`, in the order of the target's nodes (the site numbers).
pub fn find_matches(rule: &Rule, t: &Term) -> Vec<Match> {
    let mut out = Vec::new();
    let p0 = rule.lhs.outputs[0];
    let uses = t.uses();
    for (id, n) in t.nodes.iter().enumerate() {
        for k in 0..n.types.len() {
            let root = Port { node: id, out: k };
            let mut mt = Matcher {
                rule,
                t,
                uses: &uses,
                m: Match {
                    root,
                    axes: BTreeMap::new(),
                    vars: vec![None; rule.lhs.inputs.len()],
                    consts: BTreeMap::new(),
                    boxes: BTreeMap::new(),
                    covered: Vec::new(),
                    pairs: Vec::new(),
                },
            };
            if mt.port(p0, root) && mt.finish() {
                out.push(mt.m);
            }
        }
    }
    out
}

/// Replaces the match's left side by the rule's right side. The result is not yet checked
/// (its new nodes have no types): call [`Term::recheck`].
pub fn replace(rule: &Rule, t: &Term, m: &Match) -> Result<Term, Error> {
    let mut out = t.clone();
    let mut axes = m.axes.clone();
    let rhs = &rule.rhs;
    // Fresh target axes for rule axes only the right side names.
    let fresh = |a: AxisId, axes: &mut BTreeMap<AxisId, AxisId>, table: &mut AxisTable| {
        if let Some(b) = axes.get(&a) {
            return *b;
        }
        let info = rhs.axes.get(a);
        let mut name = info.name.clone();
        let mut k = 2;
        while table.lookup(&name).is_some() {
            name = format!("{}{k}", info.name);
            k += 1;
        }
        let size = map_size(&info.size, &rhs.axes, axes, table).unwrap_or_else(|| Size::var(&name));
        let id = table.insert(AxisInfo {
            name,
            size,
            span: None,
        });
        axes.insert(a, id);
        id
    };
    // Lanes of learned boxes the match covered, other than axes the rule names: a rule applied
    // inside per-head parameters makes per-head parameters.
    let mut per_lane: Vec<AxisId> = Vec::new();
    for &c in &m.covered {
        if let NodeKind::Box { params, .. } = &t.nodes[c].kind {
            for p in params {
                for a in &p.per_lane {
                    if !per_lane.contains(a) && !m.axes.values().any(|v| v == a) {
                        per_lane.push(*a);
                    }
                }
            }
        }
    }
    let mut port_of: HashMap<usize, usize> = HashMap::new(); // rhs node -> new node
    let map_port = |p: Port, port_of: &HashMap<usize, usize>| -> Result<Port, Error> {
        match &rhs.nodes[p.node].kind {
            NodeKind::Input(k) => m.vars[*k].ok_or_else(|| {
                Error::Rewrite(format!(
                    "rule `{}`: the right side uses input `{}`, which the left side does not",
                    rule.name, rhs.inputs[*k].0
                ))
            }),
            NodeKind::Box { .. } => Ok(Port {
                node: port_of[&p.node],
                out: p.out,
            }),
        }
    };
    for (id, n) in rhs.nodes.iter().enumerate() {
        let NodeKind::Box { op, params } = &n.kind else {
            continue;
        };
        let (op, params) = match op {
            Op::Call {
                callee: Callee::Hyper(f),
                ..
            } if rule.boxes.contains(f) => m.boxes.get(f).cloned().ok_or_else(|| {
                Error::Rewrite(format!(
                    "rule `{}`: the right side uses box variable `{f}` unbound",
                    rule.name
                ))
            })?,
            _ => {
                let op = map_op(op, &mut |a| fresh(a, &mut axes, &mut out.axes), &m.consts);
                let params = params
                    .iter()
                    .map(|p| {
                        let mut lanes: Vec<AxisId> = p
                            .per_lane
                            .iter()
                            .map(|a| fresh(*a, &mut axes, &mut out.axes))
                            .collect();
                        for a in &per_lane {
                            if !lanes.contains(a) {
                                lanes.push(*a);
                            }
                        }
                        ParamSpec {
                            role: p.role.clone(),
                            dims: Vec::new(),
                            per_lane: lanes,
                            trainable: p.trainable,
                        }
                    })
                    .collect();
                (op, params)
            }
        };
        let args = n
            .args
            .iter()
            .map(|a| map_port(*a, &port_of))
            .collect::<Result<Vec<_>, _>>()?;
        port_of.insert(id, out.nodes.len());
        out.nodes.push(super::term::Node {
            kind: NodeKind::Box { op, params },
            args,
            types: vec![None; n.types.len()],
            names: vec![None; n.types.len()],
        });
    }
    let new_root = map_port(rhs.outputs[0], &port_of)?;
    // The new value keeps the replaced one's name.
    if let NodeKind::Box { .. } = out.nodes[new_root.node].kind
        && out.nodes[new_root.node].names[new_root.out].is_none()
    {
        out.nodes[new_root.node].names[new_root.out] =
            t.nodes[m.root.node].names[m.root.out].clone();
    }
    out.redirect(m.root, new_root);
    out.tidy();
    Ok(out)
}

/// One applied rewrite.
#[derive(Clone, Debug)]
pub struct Step {
    pub rule: String,
    pub class: RuleClass,
    /// The 1-based site number among the rule's matches.
    pub site: usize,
    pub before: Term,
    pub after: Term,
    /// The name of the rewritten wire, if it has one (for highlighting).
    pub matched_name: Option<String>,
}

/// Where to apply a rule: the n-th match (1-based) or the match whose root is the wire bound
/// to a name.
#[derive(Clone, Debug, PartialEq)]
pub enum Site {
    Index(usize),
    Wire(String),
}

impl Site {
    pub fn parse(s: &str) -> Site {
        match s.parse::<usize>() {
            Ok(n) => Site::Index(n),
            Err(_) => Site::Wire(s.to_string()),
        }
    }
}

/// Applies `rule` at `site` (the first match when `None`) and re-checks the result.
pub fn apply(book: &RuleBook, t: &Term, rule: &str, site: Option<&Site>) -> Result<Step, Error> {
    let r = book.get(rule).ok_or_else(|| {
        let names: Vec<&str> = book.rules.iter().map(|r| r.name.as_str()).collect();
        match crate::diagnostic::closest(rule, names.iter().copied()) {
            Some(c) => Error::Usage(format!("no rule `{rule}` (did you mean `{c}`?)")),
            None => Error::Usage(format!("no rule `{rule}`")),
        }
    })?;
    let matches = find_matches(r, t);
    if matches.is_empty() {
        return Err(Error::Rewrite(format!(
            "rule `{rule}` does not apply anywhere in `{}`",
            t.name
        )));
    }
    let (index, m) = match site {
        None => (1, &matches[0]),
        Some(Site::Index(n)) => {
            if *n == 0 || *n > matches.len() {
                return Err(Error::Rewrite(format!(
                    "rule `{rule}` applies at {} site(s) in `{}`; there is no site {n}",
                    matches.len(),
                    t.name
                )));
            }
            (*n, &matches[n - 1])
        }
        Some(Site::Wire(w)) => {
            let found = matches.iter().enumerate().find(|(_, m)| {
                t.nodes[m.root.node].names[m.root.out].as_deref() == Some(w.as_str())
            });
            match found {
                Some((i, m)) => (i + 1, m),
                None => {
                    return Err(Error::Rewrite(format!(
                        "rule `{rule}` does not apply at wire `{w}` (it applies at {} site(s); \
                         give a number or the name of the wire the rule's left side outputs)",
                        matches.len()
                    )));
                }
            }
        }
    };
    let replaced = replace(r, t, m)?;
    let (after, _) = replaced.recheck().map_err(|e| {
        Error::Rewrite(format!(
            "rule `{rule}` at site {index}: the result does not type:\n{e}"
        ))
    })?;
    Ok(Step {
        rule: rule.to_string(),
        class: r.class,
        site: index,
        before: t.clone(),
        after,
        matched_name: t.nodes[m.root.node].names[m.root.out].clone(),
    })
}
