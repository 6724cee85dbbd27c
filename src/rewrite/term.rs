//! Terms: the form rewriting works on.
//!
//! A [`Term`] is a checked diagram with its SIMD regions lowered (so every box is lane-wise and a
//! rule matches inside any tube: SIMD functoriality) and its copies and discards dropped (a value
//! used twice is one node with two consumers: the cartesian structure makes sharing free). It is
//! a DAG of nodes in topological order. A term prints back to `.diag` text ([`Term::to_text`])
//! and every rewrite re-checks that text with the real checker ([`Term::recheck`]), so a rewrite
//! result is always a checked diagram with every wire typed.

use crate::error::Error;
use crate::ir::size::Size;
use crate::ir::{
    AxisId, AxisTable, Band, Callee, Const, Diagram, Dim, FROZEN_NORMAL, FROZEN_UNIFORM, HyperArg,
    HyperType, Op, ParamSpec, Program, RegionKind, WireId, WireType, lower, print,
};
use print::list;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    pub node: usize,
    pub out: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// The diagram's `k`-th input.
    Input(usize),
    /// A box (never a copy, a discard or a region port).
    Box { op: Op, params: Vec<ParamSpec> },
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub args: Vec<Port>,
    /// The type of each output (unknown, `None`, for nodes a rewrite just made: the re-check
    /// types them).
    pub types: Vec<Option<WireType>>,
    /// The source-level name of each output, if it had one.
    pub names: Vec<Option<String>>,
}

impl Node {
    pub fn op(&self) -> Option<&Op> {
        match &self.kind {
            NodeKind::Box { op, .. } => Some(op),
            NodeKind::Input(_) => None,
        }
    }
}

/// A diagram as a DAG, with the axes it is typed over.
#[derive(Clone, Debug)]
pub struct Term {
    pub name: String,
    pub axes: AxisTable,
    /// Int and float hyperparameters (diagram-valued ones make a diagram unrewritable).
    pub hypers: Vec<crate::ir::Hyper>,
    pub inputs: Vec<(String, WireType)>,
    pub output_types: Vec<WireType>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<Port>,
}

impl Term {
    /// The term of a checked diagram of `program`.
    pub fn from_diagram(d: &Diagram, axes: &AxisTable) -> Result<Term, Error> {
        Term::build(d, axes, false, None, 0)
    }

    /// The term of diagram `name` of `p`, with calls of other diagrams (without
    /// hyperparameters) written in place.
    pub fn from_program(p: &Program, name: &str) -> Result<Term, Error> {
        let d = p
            .diagram(name)
            .ok_or_else(|| Error::Rewrite(format!("no diagram `{name}`")))?;
        Term::build(d, &p.axes, false, Some(p), 0)
    }

    /// The term of one side of a rule: calls of its diagram-valued hyperparameters (box
    /// variables) are allowed.
    pub fn from_rule_side(d: &Diagram, axes: &AxisTable) -> Result<Term, Error> {
        Term::build(d, axes, true, None, 0)
    }

    fn build(
        d: &Diagram,
        axes: &AxisTable,
        rule: bool,
        program: Option<&Program>,
        depth: usize,
    ) -> Result<Term, Error> {
        if depth > 32 {
            return Err(Error::Rewrite(format!(
                "calls nest more than 32 deep at `{}`",
                d.name
            )));
        }
        if d.regions
            .iter()
            .any(|r| matches!(r.kind, RegionKind::Repeat(_)))
        {
            return Err(Error::Rewrite(format!(
                "diagram `{}` has a `repeat` block; rewriting works on diagrams without one",
                d.name
            )));
        }
        if !rule
            && let Some(h) = d
                .hypers
                .iter()
                .find(|h| matches!(h.ty, HyperType::Diagram { .. }))
        {
            return Err(Error::Rewrite(format!(
                "diagram `{}` takes the diagram-valued hyperparameter `{}`; rewrite the diagram \
                 it is given instead",
                d.name, h.name
            )));
        }
        let low = lower::lower_simd(d);
        let mut nodes: Vec<Node> = Vec::new();
        let mut port_of: HashMap<WireId, Port> = HashMap::new();
        let mut inputs = Vec::new();
        for (k, w) in low.inputs.iter().enumerate() {
            let wire = low.wire(*w);
            let name = low.input_names.get(k).cloned().unwrap_or(format!("x{k}"));
            inputs.push((name.clone(), wire.ty.clone()));
            port_of.insert(
                *w,
                Port {
                    node: nodes.len(),
                    out: 0,
                },
            );
            nodes.push(Node {
                kind: NodeKind::Input(k),
                args: Vec::new(),
                types: vec![Some(wire.ty.clone())],
                names: vec![Some(name)],
            });
        }
        for b in &low.boxes {
            match &b.op {
                Op::Copy(_) => {
                    let src = port_of[&b.inputs[0]];
                    for o in &b.outputs {
                        port_of.insert(*o, src);
                    }
                    continue;
                }
                Op::Discard => continue,
                Op::Call {
                    callee: Callee::Hyper(_),
                    ..
                } if rule => {}
                Op::Call {
                    callee: Callee::Diagram(name),
                    hypers,
                } if hypers.iter().all(|(_, a)| matches!(a, HyperArg::Num(_)))
                    && let Some(p) = program
                    && let Some(callee) = p.diagram(name) =>
                {
                    // Inline: the callee's boxes, with its inputs bound to the call's arguments
                    // and its numeric hyperparameters to the call's values, else their defaults
                    // (a constant of the caller, or a number).
                    let sub = Term::build(callee, axes, false, program, depth + 1)?;
                    let mut consts: BTreeMap<String, Const> = BTreeMap::new();
                    for h in &callee.hypers {
                        let given = hypers.iter().find(|(n, _)| *n == h.name).map(|(_, a)| a);
                        if let Some(HyperArg::Num(c)) = given.or(h.default.as_ref()) {
                            consts.insert(h.name.clone(), c.clone());
                        }
                    }
                    let mut map: Vec<Port> = Vec::with_capacity(sub.nodes.len());
                    for n in &sub.nodes {
                        match &n.kind {
                            NodeKind::Input(k) => {
                                map.push(port_of[&b.inputs[*k]]);
                            }
                            NodeKind::Box { .. } => {
                                let args = n
                                    .args
                                    .iter()
                                    .map(|a| Port {
                                        node: map[a.node].node,
                                        out: if matches!(sub.nodes[a.node].kind, NodeKind::Input(_))
                                        {
                                            map[a.node].out
                                        } else {
                                            a.out
                                        },
                                    })
                                    .collect();
                                map.push(Port {
                                    node: nodes.len(),
                                    out: 0,
                                });
                                let kind = match &n.kind {
                                    NodeKind::Box { op, params } if !consts.is_empty() => {
                                        NodeKind::Box {
                                            op: map_op(op, &mut |a| a, &consts),
                                            params: params.clone(),
                                        }
                                    }
                                    k => k.clone(),
                                };
                                nodes.push(Node {
                                    kind,
                                    args,
                                    types: vec![None; n.types.len()],
                                    names: n.names.clone(),
                                });
                            }
                        }
                    }
                    for (k, o) in b.outputs.iter().enumerate() {
                        let p = sub.outputs[k];
                        let port = if matches!(sub.nodes[p.node].kind, NodeKind::Input(_)) {
                            map[p.node]
                        } else {
                            Port {
                                node: map[p.node].node,
                                out: p.out,
                            }
                        };
                        port_of.insert(*o, port);
                    }
                    continue;
                }
                Op::Call { callee, .. } => {
                    let name = match callee {
                        Callee::Diagram(n) | Callee::Hyper(n) => n,
                    };
                    return Err(Error::Rewrite(format!(
                        "diagram `{}` calls `{name}`; rewriting works on diagrams without calls \
                         (write the callee's boxes in place)",
                        d.name
                    )));
                }
                Op::Exec(_) => {
                    return Err(Error::Rewrite(format!(
                        "diagram `{}` is an executable instance, not a source diagram",
                        d.name
                    )));
                }
                _ => {}
            }
            let args = b.inputs.iter().map(|w| port_of[w]).collect();
            let id = nodes.len();
            for (k, o) in b.outputs.iter().enumerate() {
                port_of.insert(*o, Port { node: id, out: k });
            }
            nodes.push(Node {
                kind: NodeKind::Box {
                    op: b.op.clone(),
                    params: b.params.clone(),
                },
                args,
                types: b
                    .outputs
                    .iter()
                    .map(|o| Some(low.wire(*o).ty.clone()))
                    .collect(),
                names: b
                    .outputs
                    .iter()
                    .map(|o| low.wire(*o).name.clone())
                    .collect(),
            });
        }
        let outputs = low.outputs.iter().map(|w| port_of[w]).collect();
        let output_types = low
            .outputs
            .iter()
            .map(|w| low.wire(*w).ty.clone())
            .collect();
        Ok(Term {
            name: d.name.clone(),
            axes: axes.clone(),
            hypers: d.hypers.clone(),
            inputs,
            output_types,
            nodes,
            outputs,
        })
    }

    /// How many times each port is used (by nodes and as a diagram output).
    pub fn uses(&self) -> HashMap<Port, usize> {
        let mut uses: HashMap<Port, usize> = HashMap::new();
        for n in &self.nodes {
            for a in &n.args {
                *uses.entry(*a).or_default() += 1;
            }
        }
        for o in &self.outputs {
            *uses.entry(*o).or_default() += 1;
        }
        uses
    }

    /// Replaces every use of `old` (by nodes and as an output) by `new`.
    pub fn redirect(&mut self, old: Port, new: Port) {
        for n in self.nodes.iter_mut() {
            for a in n.args.iter_mut() {
                if *a == old {
                    *a = new;
                }
            }
        }
        for o in self.outputs.iter_mut() {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes nodes no output depends on (inputs stay) and restores topological order.
    ///
    /// The order keeps learned and random boxes (whose parameters and dropout keys are
    /// numbered in order) in their present relative order, and otherwise computes each value as
    /// soon as its arguments are there: a stable topological sort that takes a ready pure box
    /// before any learned one, and among each kind the one now first. So rewriting never
    /// renumbers parameters, and the printed text reads in the order of the data flow (a
    /// projection, then what is done with it). Returns the number of boxes removed.
    pub fn tidy(&mut self) -> usize {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let n = self.nodes.len();
        // Live: reachable from the outputs (inputs always stay).
        let mut live = vec![false; n];
        for l in live.iter_mut().take(self.inputs.len()) {
            *l = true;
        }
        let mut stack: Vec<usize> = self.outputs.iter().map(|p| p.node).collect();
        while let Some(v) = stack.pop() {
            if !live[v] {
                live[v] = true;
                stack.extend(self.nodes[v].args.iter().map(|a| a.node));
            }
        }
        // Kahn's algorithm, smallest present index first.
        let mut waiting = vec![0usize; n];
        let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
        for v in (0..n).filter(|v| live[*v]) {
            for a in &self.nodes[v].args {
                waiting[v] += 1;
                consumers[a.node].push(v);
            }
        }
        let ordered = |v: usize| match &self.nodes[v].kind {
            NodeKind::Box { op, params } => !params.is_empty() || matches!(op, Op::Dropout(_)),
            NodeKind::Input(_) => false,
        };
        // Ready pure boxes, and ready learned or random ones.
        let mut pure: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
        let mut kept: BinaryHeap<Reverse<usize>> = BinaryHeap::new();
        for v in (0..n).filter(|v| live[*v] && waiting[*v] == 0) {
            if ordered(v) { &mut kept } else { &mut pure }.push(Reverse(v));
        }
        let mut order: Vec<usize> = Vec::with_capacity(n);
        while let Some(Reverse(v)) = pure.pop().or_else(|| kept.pop()) {
            order.push(v);
            for &c in &consumers[v] {
                waiting[c] -= 1;
                if waiting[c] == 0 {
                    if ordered(c) { &mut kept } else { &mut pure }.push(Reverse(c));
                }
            }
        }
        let removed = n - order.len();
        self.reorder(&order);
        removed
    }

    /// Removes dead nodes and puts the rest in depth-first post-order from the outputs (the
    /// arguments of a node in their order): an order that depends only on the structure of the
    /// term, not on how it was built, for comparing terms up to the numbering of their
    /// parameters ([`crate::rewrite::derive::canonical`]). Not for terms that will run: it may
    /// reorder learned boxes.
    pub fn sort_structurally(&mut self) {
        self.tidy();
        let n = self.nodes.len();
        let mut order: Vec<usize> = (0..self.inputs.len()).collect();
        let mut done = vec![false; n];
        for d in done.iter_mut().take(self.inputs.len()) {
            *d = true;
        }
        for root in self.outputs.iter().map(|p| p.node) {
            let mut stack = vec![(root, 0usize)];
            while let Some((v, i)) = stack.pop() {
                if done[v] {
                    continue;
                }
                if i < self.nodes[v].args.len() {
                    stack.push((v, i + 1));
                    let a = self.nodes[v].args[i].node;
                    if !done[a] {
                        stack.push((a, 0));
                    }
                } else {
                    done[v] = true;
                    order.push(v);
                }
            }
        }
        self.reorder(&order);
    }

    /// Keeps the nodes listed in `order` (a topological order), in that order.
    fn reorder(&mut self, order: &[usize]) {
        let mut new_id = vec![usize::MAX; self.nodes.len()];
        for (i, v) in order.iter().enumerate() {
            new_id[*v] = i;
        }
        let remap = |p: Port| Port {
            node: new_id[p.node],
            out: p.out,
        };
        let mut nodes = Vec::with_capacity(order.len());
        for v in order {
            let mut node = self.nodes[*v].clone();
            node.args = node.args.into_iter().map(remap).collect();
            nodes.push(node);
        }
        self.nodes = nodes;
        self.outputs = self.outputs.iter().map(|p| remap(*p)).collect();
    }

    /// The number of boxes (nodes that are not inputs).
    pub fn box_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Box { .. }))
            .count()
    }

    /// The term as a `.diag` file: the axis declarations it needs, then one diagram. Values
    /// used once are written inline; values used more than once, boxes with several outputs and
    /// values that had a name in the source are bound to names.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", axis_decls(self));
        let _ = write!(out, "\ndiagram {}", self.name);
        let hypers: Vec<String> = self
            .hypers
            .iter()
            .map(|h| {
                let ty = print::hyper_type(&h.ty, &self.axes);
                match &h.default {
                    Some(v) => format!("{}: {ty} = {}", h.name, print::hyper_arg(v, &self.axes)),
                    None => format!("{}: {ty}", h.name),
                }
            })
            .collect();
        if !hypers.is_empty() {
            let _ = write!(out, "[{}]", hypers.join(", "));
        }
        let ins: Vec<String> = self
            .inputs
            .iter()
            .map(|(n, t)| format!("{n}: {}", t.display(&self.axes)))
            .collect();
        let outs: Vec<String> = self
            .output_types
            .iter()
            .map(|t| t.display(&self.axes).to_string())
            .collect();
        let outs = if outs.len() == 1 {
            outs[0].clone()
        } else {
            format!("({})", outs.join(", "))
        };
        let _ = writeln!(out, "({}) -> {outs} {{", ins.join(", "));
        let uses = self.uses();
        let mut names = Names::new(self);
        // Which ports get a binding.
        let mut text_of: HashMap<Port, String> = HashMap::new();
        for (k, (n, _)) in self.inputs.iter().enumerate() {
            text_of.insert(Port { node: k, out: 0 }, n.clone());
        }
        // Arguments of boxes written inside a SIMD region must be names (an inline expression
        // would be computed inside the region, one lane at a time).
        let mut must_bind: BTreeSet<Port> = BTreeSet::new();
        for node in &self.nodes {
            if let NodeKind::Box { op, params } = &node.kind
                && !matches!(op, Op::Param(_))
                && !per_lane(params).is_empty()
            {
                must_bind.extend(node.args.iter().copied());
            }
        }
        let mut dead: Vec<String> = Vec::new();
        // The checker creates a statement's boxes when it reads the statement, so a learned box
        // written inline is created where its consumer's statement is. Parameters are numbered
        // in creation order; to keep them in node order, an inline expression holding a learned
        // box is bound to a name of its own before any later learned box's statement.
        let mut learned_in: HashMap<Port, bool> = HashMap::new();
        let mut pending: Vec<Port> = Vec::new();
        for (id, node) in self.nodes.iter().enumerate() {
            let NodeKind::Box { op, params } = &node.kind else {
                continue;
            };
            let has_learned = !params.is_empty()
                || node
                    .args
                    .iter()
                    .any(|a| learned_in.get(a).copied().unwrap_or(false));
            let port0 = Port { node: id, out: 0 };
            let used0 = uses.get(&port0).copied().unwrap_or(0);
            let is_output = self.outputs.contains(&port0);
            let lanes_here = !matches!(op, Op::Param(_)) && !per_lane(params).is_empty();
            let will_bind = node.types.len().max(1) > 1
                || used0 != 1
                || (node.names[0].is_some() && !is_output)
                || lanes_here
                || must_bind.contains(&port0);
            // Learned boxes written inline in other pending expressions, older than this
            // statement's, would be created after them: bind those expressions first, in node
            // order (with this node's inline arguments older than one of them).
            let newest_here = node
                .args
                .iter()
                .filter(|a| pending.contains(a))
                .map(|a| a.node)
                .chain((!params.is_empty()).then_some(id))
                .max();
            let mut flush: Vec<Port> = Vec::new();
            if has_learned
                && will_bind
                && let Some(here) = newest_here
            {
                let early: Vec<Port> = pending
                    .iter()
                    .copied()
                    .filter(|p| !node.args.contains(p) && p.node < here)
                    .collect();
                if let Some(newest) = early.iter().map(|p| p.node).max() {
                    flush = pending
                        .iter()
                        .copied()
                        .filter(|p| early.contains(p) || p.node < newest)
                        .collect();
                    flush.sort();
                }
            }
            // The rest of this node's inline arguments become part of its expression.
            pending.retain(|p| !node.args.contains(p) && !flush.contains(p));
            if !flush.is_empty() {
                for p in flush {
                    let name = names.fresh(None);
                    let expr = text_of.get(&p).cloned().unwrap_or_else(|| "?".into());
                    let _ = writeln!(out, "    {name} = {expr}");
                    text_of.insert(p, name);
                }
            }
            let infix = is_infix(op);
            let args: Vec<String> = node
                .args
                .iter()
                .map(|a| {
                    let t = text_of.get(a).cloned().unwrap_or_else(|| "?".into());
                    if infix { wrap(&t) } else { t }
                })
                .collect();
            let mut expr = expr_text(op, params, &args, &self.axes);
            // A per-lane learned box is written inside SIMD regions over its lane axes.
            let lanes = if matches!(op, Op::Param(_)) {
                &[][..]
            } else {
                per_lane(params)
            };
            for a in lanes.iter().rev() {
                expr = format!("simd {} {{ {expr} }}", self.axes.name(*a));
            }
            let outs = node.types.len().max(1);
            let bind = will_bind;
            if !bind {
                text_of.insert(port0, expr);
                if has_learned {
                    learned_in.insert(port0, true);
                    pending.push(port0);
                }
                continue;
            }
            let bound: Vec<String> = (0..outs)
                .map(|k| names.fresh(node.names.get(k).cloned().flatten()))
                .collect();
            if outs == 1 {
                let _ = writeln!(out, "    {} = {expr}", bound[0]);
            } else {
                let _ = writeln!(out, "    ({}) = {expr}", bound.join(", "));
            }
            for (k, b) in bound.iter().enumerate() {
                let p = Port { node: id, out: k };
                if uses.get(&p).copied().unwrap_or(0) == 0 {
                    dead.push(b.clone());
                }
                text_of.insert(p, b.clone());
            }
        }
        for (k, (n, _)) in self.inputs.iter().enumerate() {
            if uses.get(&Port { node: k, out: 0 }).copied().unwrap_or(0) == 0 {
                dead.push(n.clone());
            }
        }
        for d in dead {
            let _ = writeln!(out, "    discard {d}");
        }
        let results: Vec<String> = self
            .outputs
            .iter()
            .map(|p| text_of.get(p).cloned().unwrap_or_else(|| "?".into()))
            .collect();
        if results.len() == 1 {
            let _ = writeln!(out, "    {}", results[0]);
        } else {
            let _ = writeln!(out, "    ({})", results.join(", "));
        }
        out.push_str("}\n");
        out
    }

    /// Prints the term and checks the text: the result is the term of the checked diagram, with
    /// every node typed. `Err` carries the rendered diagnostics (a rewrite that broke typing).
    pub fn recheck(&self) -> Result<(Term, Program), Error> {
        let text = self.to_text();
        let outcome = crate::session::check_text(&format!("<rewrite of {}>", self.name), &text);
        if !outcome.checked.is_ok() {
            return Err(Error::Rewrite(format!(
                "{}\nin the rewritten text:\n{text}",
                outcome.plain_report()
            )));
        }
        let program = outcome.checked.program;
        let d = program.diagram(&self.name).ok_or_else(|| {
            Error::Rewrite(format!("the rewritten text lost diagram `{}`", self.name))
        })?;
        let t = Term::from_diagram(d, &program.axes)?;
        Ok((t, program))
    }
}

/// Names for bindings: the source name when free, else a fresh `t1`, `t2`...
struct Names {
    taken: BTreeSet<String>,
    next: usize,
}

impl Names {
    fn new(t: &Term) -> Names {
        let mut taken: BTreeSet<String> = t.inputs.iter().map(|(n, _)| n.clone()).collect();
        taken.extend(t.axes.names().map(String::from));
        taken.extend(t.hypers.iter().map(|h| h.name.clone()));
        Names { taken, next: 1 }
    }

    fn fresh(&mut self, want: Option<String>) -> String {
        if let Some(w) = want
            && !self.taken.contains(&w)
            && !crate::check::is_primitive(&w)
        {
            self.taken.insert(w.clone());
            return w;
        }
        loop {
            let n = format!("t{}", self.next);
            self.next += 1;
            if !self.taken.contains(&n) {
                self.taken.insert(n.clone());
                return n;
            }
        }
    }
}

fn is_infix(op: &Op) -> bool {
    matches!(
        op,
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Scale(_) | Op::Shift(_)
    )
}

/// Infix expressions are parenthesised when used inside another expression.
fn wrap(e: &str) -> String {
    let depth0 = e
        .char_indices()
        .scan(0i32, |d, (i, c)| {
            match c {
                '(' | '[' => *d += 1,
                ')' | ']' => *d -= 1,
                _ => {}
            }
            Some((i, c, *d))
        })
        .any(|(_, c, d)| d == 0 && c == ' ');
    if depth0 {
        format!("({e})")
    } else {
        e.to_string()
    }
}

fn const_text(c: &Const, axes: &AxisTable) -> String {
    c.display(axes).to_string()
}

/// A constant as the right operand of `*` or `+`.
fn const_operand(c: &Const, axes: &AxisTable) -> String {
    match c {
        Const::Num(x) if *x < 0.0 => format!("(-{})", -x),
        Const::Neg(_) => format!("({})", const_text(c, axes)),
        _ => const_text(c, axes),
    }
}

/// The per-lane axes of a learned box (its parameters are per-lane over them).
pub fn per_lane(params: &[ParamSpec]) -> &[AxisId] {
    params
        .iter()
        .find(|p| !p.per_lane.is_empty())
        .map_or(&[], |p| &p.per_lane)
}

/// The per-lane option of a learned box, if its parameters are per-lane.
fn per_text(params: &[ParamSpec], axes: &AxisTable) -> Option<String> {
    let per = params.iter().find(|p| !p.per_lane.is_empty())?;
    Some(format!("per = {}", list(&per.per_lane, axes)))
}

/// One box applied to argument texts, as the source language writes it.
pub fn expr_text(op: &Op, params: &[ParamSpec], args: &[String], axes: &AxisTable) -> String {
    let n = |a: &AxisId| axes.name(*a).to_string();
    let call = |head: String| format!("{head}({})", args.join(", "));
    let opts = |base: Vec<String>| -> String {
        let mut parts = base;
        if let Some(p) = per_text(params, axes) {
            parts.push(p);
        }
        if params.iter().any(|p| !p.trainable) {
            parts.push("trainable = false".into());
        }
        parts.join(", ")
    };
    match op {
        Op::Add => format!("{} + {}", args[0], args[1]),
        Op::Sub => format!("{} - {}", args[0], args[1]),
        Op::Mul => format!("{} * {}", args[0], args[1]),
        Op::Div => format!("{} / {}", args[0], args[1]),
        Op::Scale(c) => format!("{} * {}", args[0], const_operand(c, axes)),
        Op::Shift(c) => format!("{} + {}", args[0], const_operand(c, axes)),
        Op::Pow(c) => format!("pow({}, {})", args[0], const_text(c, axes)),
        Op::Max => format!("max({}, {})", args[0], args[1]),
        Op::Min => format!("min({}, {})", args[0], args[1]),
        Op::Dropout(c) => call(format!("dropout[{}]", const_text(c, axes))),
        Op::PosEnc { pos, feature } => format!("posenc[{}, {}]()", n(pos), n(feature)),
        Op::Iota(a) => format!("iota[{}]()", n(a)),
        Op::Fill { axes: ids, value } => {
            format!("fill[{}]({})", list(ids, axes), const_text(value, axes))
        }
        Op::Linear { from, to, bias } => {
            let mut base = vec![format!("{} -> {}", list(from, axes), list(to, axes))];
            if !bias {
                base.push("bias = false".into());
            }
            call(format!("linear[{}]", opts(base)))
        }
        Op::Learner { from, to, width } => {
            let base = vec![
                format!("{} -> {}", list(from, axes), list(to, axes)),
                format!("width = {}", const_text(width, axes)),
            ];
            call(format!("learner[{}]", opts(base)))
        }
        Op::Param(ids) => {
            // Flat, a per-lane state is a state carrying its lane axes.
            let mut all: Vec<AxisId> = per_lane(params).to_vec();
            all.extend(ids.iter().copied());
            let role = params.first().map_or("value", |p| p.role.as_str());
            let (head, dist) = match role {
                FROZEN_NORMAL => ("random", None),
                FROZEN_UNIFORM => ("random", Some("dist = uniform")),
                _ => ("param", None),
            };
            let mut parts = Vec::new();
            if !all.is_empty() {
                parts.push(list(&all, axes));
            }
            parts.extend(dist.map(str::to_string));
            if params.iter().any(|p| !p.trainable) {
                parts.push("trainable = false".into());
            }
            format!("{head}[{}]()", parts.join(", "))
        }
        Op::LayerNorm(ids) => call(format!("layernorm[{}]", opts(vec![list(ids, axes)]))),
        Op::Embed { vocab, to } => call(format!(
            "embed[{}]",
            opts(vec![format!("{} -> {}", n(vocab), list(to, axes))])
        )),
        Op::Call { callee, hypers } => {
            let name = match callee {
                Callee::Diagram(d) | Callee::Hyper(d) => d.clone(),
            };
            if hypers.is_empty() {
                call(name)
            } else {
                let hs: Vec<String> = hypers
                    .iter()
                    .map(|(k, v)| match v {
                        HyperArg::Num(c) => format!("{k} = {}", const_text(c, axes)),
                        HyperArg::Diagram(Callee::Diagram(d) | Callee::Hyper(d)) => {
                            format!("{k} = {d}")
                        }
                    })
                    .collect();
                call(format!("{name}[{}]", hs.join(", ")))
            }
        }
        Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
            call(print::mask_text(op, *query, *key, band, axes, &|c| {
                const_text(c, axes)
            }))
        }
        other => call(print::op_text(other, axes)),
    }
}

fn map_band(
    band: &Band,
    f: &mut dyn FnMut(AxisId) -> AxisId,
    consts: &BTreeMap<String, Const>,
) -> Band {
    Band {
        strict: band.strict,
        window: band.window.as_ref().map(|w| map_const(w, f, consts)),
    }
}

/// The `axis` lines a term needs: every axis its types and boxes mention, and the axes their
/// sizes are defined from, in declaration order.
fn axis_decls(t: &Term) -> String {
    let mut used: BTreeSet<AxisId> = BTreeSet::new();
    let add_ty = |ty: &WireType, used: &mut BTreeSet<AxisId>| {
        used.extend(ty.axes.iter().copied());
        used.extend(ty.index_of);
    };
    for (_, ty) in &t.inputs {
        add_ty(ty, &mut used);
    }
    for ty in &t.output_types {
        add_ty(ty, &mut used);
    }
    for n in &t.nodes {
        for ty in n.types.iter().flatten() {
            add_ty(ty, &mut used);
        }
        if let NodeKind::Box { op, params } = &n.kind {
            // Every axis the op names, constants included.
            map_op(
                op,
                &mut |a| {
                    used.insert(a);
                    a
                },
                &Default::default(),
            );
            for p in params {
                used.extend(p.per_lane.iter().copied());
                for d in &p.dims {
                    if let Dim::Axis(a) = d {
                        used.insert(*a);
                    }
                }
            }
        }
    }
    // Primed axes (`dm'`) are made by instantiation only; they never reach source terms.
    let by_name: HashMap<&str, AxisId> = t
        .axes
        .axes
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), AxisId(i as u32)))
        .collect();
    // Close over the free variables of their sizes.
    let mut frontier: Vec<AxisId> = used.iter().copied().collect();
    while let Some(a) = frontier.pop() {
        for v in t.axes.size(a).vars.keys() {
            if let Some(&id) = by_name.get(v.as_str())
                && used.insert(id)
            {
                frontier.push(id);
            }
        }
    }
    let mut lines = Vec::new();
    for a in used {
        let info = t.axes.get(a);
        if info.size == Size::var(&info.name) {
            lines.push(format!("axis {}", info.name));
        } else {
            lines.push(format!("axis {} = {}", info.name, size_text(&info.size)));
        }
    }
    lines.join("\n")
}

fn map_const(
    c: &Const,
    f: &mut dyn FnMut(AxisId) -> AxisId,
    consts: &BTreeMap<String, Const>,
) -> Const {
    match c {
        Const::Hyper(h) => consts.get(h).cloned().unwrap_or_else(|| c.clone()),
        Const::Size(a) => Const::Size(f(*a)),
        Const::Num(_) => c.clone(),
        Const::Neg(x) => Const::Neg(Box::new(map_const(x, f, consts))),
        Const::Fn(func, args) => Const::Fn(
            *func,
            args.iter().map(|x| map_const(x, f, consts)).collect(),
        ),
        Const::Bin(o, x, y) => Const::Bin(
            *o,
            Box::new(map_const(x, f, consts)),
            Box::new(map_const(y, f, consts)),
        ),
    }
}

/// The op with its axes and constants mapped.
pub fn map_op(
    op: &Op,
    f: &mut dyn FnMut(AxisId) -> AxisId,
    consts: &BTreeMap<String, Const>,
) -> Op {
    use Op::*;
    let v = |xs: &[AxisId], f: &mut dyn FnMut(AxisId) -> AxisId| -> Vec<AxisId> {
        xs.iter().map(|a| f(*a)).collect()
    };
    match op {
        Rename { from, to } => Rename {
            from: f(*from),
            to: f(*to),
        },
        Split { from, into } => Split {
            from: f(*from),
            into: v(into, f),
        },
        Merge { from, into } => {
            let from = v(from, f);
            Merge {
                from,
                into: f(*into),
            }
        }
        Expand(a) => Expand(f(*a)),
        Dot(a) => Dot(f(*a)),
        Sum(a) => Sum(f(*a)),
        Reduce(r, a) => Reduce(*r, f(*a)),
        RotateHalf(a) => RotateHalf(f(*a)),
        Softmax(a) => Softmax(f(*a)),
        Normalise(a) => Normalise(f(*a)),
        Cumsum(a) => Cumsum(f(*a)),
        Scan(a) => Scan(f(*a)),
        MatScan { along, row, col } => MatScan {
            along: f(*along),
            row: f(*row),
            col: f(*col),
        },
        Causal { query, key, band } => Causal {
            query: f(*query),
            key: f(*key),
            band: map_band(band, f, consts),
        },
        CausalZero { query, key, band } => CausalZero {
            query: f(*query),
            key: f(*key),
            band: map_band(band, f, consts),
        },
        PosEnc { pos, feature } => PosEnc {
            pos: f(*pos),
            feature: f(*feature),
        },
        Iota(a) => Iota(f(*a)),
        Fill { axes, value } => Fill {
            axes: v(axes, f),
            value: map_const(value, f, consts),
        },
        Scale(c) => Scale(map_const(c, f, consts)),
        Shift(c) => Shift(map_const(c, f, consts)),
        Pow(c) => Pow(map_const(c, f, consts)),
        Dropout(c) => Dropout(map_const(c, f, consts)),
        Linear { from, to, bias } => {
            let from = v(from, f);
            Linear {
                from,
                to: v(to, f),
                bias: *bias,
            }
        }
        Learner { from, to, width } => {
            let from = v(from, f);
            let to = v(to, f);
            Learner {
                from,
                to,
                width: map_const(width, f, consts),
            }
        }
        Param(a) => Param(v(a, f)),
        LayerNorm(a) => LayerNorm(v(a, f)),
        Embed { vocab, to } => Embed {
            vocab: f(*vocab),
            to: v(to, f),
        },
        other => other.clone(),
    }
}

/// A size as the source language writes it: `dm / head`, `2 * tok`.
pub fn size_text(s: &Size) -> String {
    let mut num: Vec<String> = Vec::new();
    let mut den: Vec<String> = Vec::new();
    if s.num != 1 || s.vars.values().all(|e| *e < 0) {
        num.push(s.num.to_string());
    }
    for (v, e) in &s.vars {
        for _ in 0..e.unsigned_abs() {
            if *e > 0 {
                num.push(v.clone());
            } else {
                den.push(v.clone());
            }
        }
    }
    if s.den != 1 {
        den.insert(0, s.den.to_string());
    }
    let mut t = num.join(" * ");
    for d in den {
        t.push_str(" / ");
        t.push_str(&d);
    }
    t
}
