//! Elaborating a diagram body into IR, typing every wire.
//!
//! A block is a set of equations, not a sequence: `a = f(b)` may come before `b = g(x)`. The
//! statements of each block are ordered by their dependencies first (Kahn's algorithm; what is
//! left over is a cycle, E0402), then elaborated in that order, so every name a statement uses
//! is already a typed wire. Nested blocks (SIMD regions, repeat bodies) are scopes of their own;
//! a name from an enclosing scope is brought in through a port box (zip, broadcast or capture),
//! once per region.
//!
//! Uses are counted as boxes consume wires; at the end a wire used `k > 1` times gets a copy box,
//! a discarded one a discard box, and one never used is dangling (E0401).

use super::prims::Val;
use super::{Ctx, HelpIfNone, HyperSig};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::ir::lower::recompute_sinks;
use crate::ir::*;
use crate::source::Span;
use crate::syntax::ast;
use std::collections::{BTreeSet, HashMap};

/// A consumer of a wire, recorded while elaborating.
#[derive(Clone, Copy)]
enum Use {
    Box(BoxId, usize),
    Output(usize),
}

#[derive(Clone)]
enum Binding {
    Wire(WireId),
    Const(Const),
    /// The statement failed (already reported) or is part of a cycle.
    Poisoned,
}

struct Scope {
    names: HashMap<String, (Binding, Span)>,
    /// The region this scope is the body of; names from outside are imported through it.
    boundary: Option<RegionId>,
    /// Outer wire -> its port inside `boundary`.
    imports: HashMap<WireId, WireId>,
}

pub(super) struct Body<'c, 'm> {
    pub cx: &'c mut Ctx<'m>,
    pub d: Diagram,
    pub hypers: &'c [HyperSig],
    uses: Vec<Vec<Use>>,
    discarded: Vec<Option<Span>>,
    /// Whether each wire was passed to something, even to a box that failed to type: such a
    /// wire is not reported as dangling (that would only echo the first error).
    pub referenced: Vec<bool>,
    /// Where the name of each wire was bound, for E0401.
    bound_at: Vec<Option<Span>>,
    scopes: Vec<Scope>,
    /// The region boxes are currently created in.
    pub region: Option<RegionId>,
    /// Names bound in nested blocks, for E0303.
    inner_names: HashMap<String, Span>,
    /// A block of this diagram lost statements to a syntax error: dangling wires are not
    /// reported (their users may be in the lost part).
    syntax_recovered: bool,
}

/// Elaborates diagram `i` of the context. Returns `None` when its signature is unusable.
pub(super) fn elaborate(cx: &mut Ctx, i: usize) -> Option<Diagram> {
    let sig = &cx.sigs[i];
    let def = sig.def;
    let name = sig.name.clone();
    let params: Vec<(String, Option<WireType>, Span)> = sig.params.clone();
    let outputs: Vec<(Option<WireType>, Span)> = sig.outputs.clone();
    let hypers: Vec<HyperSig> = sig
        .hypers
        .iter()
        .map(|h| HyperSig {
            name: h.name.clone(),
            ty: h.ty.clone(),
            default: h.default.clone(),
            span: h.span,
            sig_span: h.sig_span,
        })
        .collect();
    let ir_hypers: Vec<Hyper> = hypers
        .iter()
        .filter_map(|h| {
            Some(Hyper {
                name: h.name.clone(),
                ty: h.ty.clone()?,
                default: h.default.clone(),
            })
        })
        .collect();
    let mut b = Body {
        cx,
        d: Diagram {
            name,
            hypers: ir_hypers,
            input_names: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            wires: Vec::new(),
            boxes: Vec::new(),
            regions: Vec::new(),
            span: def.span,
        },
        hypers: &hypers,
        uses: Vec::new(),
        discarded: Vec::new(),
        referenced: Vec::new(),
        bound_at: Vec::new(),
        scopes: vec![Scope {
            names: HashMap::new(),
            boundary: None,
            imports: HashMap::new(),
        }],
        region: None,
        inner_names: HashMap::new(),
        syntax_recovered: false,
    };
    let mut complete = true;
    for (k, (pname, ty, _)) in params.iter().enumerate() {
        let pspan = def.params[k].name.span;
        let binding = match ty {
            Some(ty) => {
                let w = b.new_wire(ty.clone(), WireSource::Input(k), Some(pname.clone()), pspan);
                b.d.inputs.push(w);
                b.d.input_names.push(pname.clone());
                b.bound_at[w.0 as usize] = Some(pspan);
                Binding::Wire(w)
            }
            None => {
                complete = false;
                Binding::Poisoned
            }
        };
        if let (Some(_), Binding::Wire(w)) = (b.scopes[0].names.get(pname), &binding) {
            // A duplicate input (E0104, reported with the signature): keep the first.
            b.referenced[w.0 as usize] = true;
            continue;
        }
        b.scopes[0].names.insert(pname.clone(), (binding, pspan));
    }
    let result = b.block(&def.body);
    // Match the result with the declared outputs.
    // A diagram declared without outputs was reported with its signature.
    let got = if outputs.is_empty() {
        b.touch(&result);
        None
    } else {
        b.values(
            &result,
            def.body.result.as_ref().map_or(def.body.span, |e| e.span()),
        )
    };
    match got {
        None => complete = false,
        Some(ws) if ws.len() != outputs.len() => {
            let span = def.body.result.as_ref().map_or(def.body.span, |e| e.span());
            let out_span = outputs.first().map(|o| o.1).unwrap_or(def.name.span);
            b.cx.error(
                Diagnostic::new(
                    Code::Arity,
                    format!(
                        "`{}` declares {} output(s) but its body produces {}",
                        def.name.text,
                        outputs.len(),
                        ws.len()
                    ),
                )
                .primary(span, format!("{} value(s) here", ws.len()))
                .secondary(out_span, format!("{} declared here", outputs.len())),
            );
            complete = false;
        }
        Some(ws) => {
            for (k, (w, (want, want_span))) in ws.iter().zip(&outputs).enumerate() {
                let Some(want) = want else {
                    complete = false;
                    continue;
                };
                let have = b.d.wire(*w).ty.clone();
                let result_expr = def.body.result.as_deref();
                if &have != want
                    && result_expr.is_some_and(|e| b.region_exit_error(e, &have, want, *want_span))
                {
                    complete = false;
                } else if &have != want {
                    let span = def.body.result.as_ref().map_or(def.body.span, |e| e.span());
                    let (h, wt) = (b.ty_str(&have), b.ty_str(want));
                    b.cx.error(
                        Diagnostic::new(
                            Code::TypeMismatch,
                            format!(
                                "the output of `{}` is {h}, but {wt} is declared",
                                def.name.text
                            ),
                        )
                        .primary(span, format!("this is {h}"))
                        .secondary(*want_span, format!("declared as {wt}")),
                    );
                    complete = false;
                } else {
                    b.uses[w.0 as usize].push(Use::Output(k));
                    b.d.outputs.push(*w);
                }
            }
        }
    }
    if def.body.result.is_none() && !outputs.is_empty() {
        // Reported by `values` as a block without result.
        complete = false;
    }
    b.finish_wiring();
    complete.then_some(b.d)
}

impl Body<'_, '_> {
    pub fn ty_str(&self, t: &WireType) -> String {
        t.display(&self.cx.axes).to_string()
    }

    pub fn wire_ty(&self, w: WireId) -> &WireType {
        &self.d.wire(w).ty
    }

    fn new_wire(
        &mut self,
        ty: WireType,
        source: WireSource,
        name: Option<String>,
        span: Span,
    ) -> WireId {
        self.d.wires.push(Wire {
            ty,
            name,
            source,
            sink: None,
            region: self.region,
            span,
        });
        self.uses.push(Vec::new());
        self.discarded.push(None);
        self.referenced.push(false);
        self.bound_at.push(None);
        WireId(self.d.wires.len() as u32 - 1)
    }

    /// Adds a box in the current region, consuming `inputs`; returns its output wires. Reports
    /// E0301 when an output inside a SIMD region carries that region's axis.
    pub fn add_box(
        &mut self,
        op: Op,
        inputs: Vec<WireId>,
        out_types: Vec<WireType>,
        params: Vec<ParamSpec>,
        span: Span,
    ) -> Option<Vec<WireId>> {
        // A region's exit ports produce the lifted wire, outside the region: exempt.
        let exit = matches!(op, Op::Collect(_) | Op::LoopOut);
        for t in out_types.iter().filter(|_| !exit) {
            if let Some((axis, region_span)) = self.carried_lane_axis(t) {
                let name = self.cx.axes.name(axis).to_string();
                let t = self.ty_str(t);
                self.cx.error(
                    Diagnostic::new(
                        Code::SimdAxisInside,
                        format!("a wire inside `simd {name}` carries `{name}`"),
                    )
                    .primary(span, format!("this produces {t}"))
                    .secondary(
                        region_span,
                        format!("inside this region every wire is one lane of `{name}`"),
                    )
                    .help(format!(
                        "do this outside the region, or over another axis than `{name}`"
                    )),
                );
                return None;
            }
        }
        let id = BoxId(self.d.boxes.len() as u32);
        for (k, w) in inputs.iter().enumerate() {
            self.uses[w.0 as usize].push(Use::Box(id, k));
        }
        let outs: Vec<WireId> = out_types
            .into_iter()
            .enumerate()
            .map(|(k, t)| self.new_wire(t, WireSource::Box(id, k), None, span))
            .collect();
        if exit {
            let outside = self.region.and_then(|r| self.d.region(r).parent);
            for o in &outs {
                self.d.wires[o.0 as usize].region = outside;
            }
        }
        self.d.boxes.push(BoxNode {
            op,
            inputs,
            outputs: outs.clone(),
            params,
            region: self.region,
            span,
        });
        Some(outs)
    }

    /// The SIMD axis of an enclosing region that `t` carries, with the region's span.
    fn carried_lane_axis(&self, t: &WireType) -> Option<(AxisId, Span)> {
        self.d
            .region_chain(self.region)
            .into_iter()
            .find_map(|r| match self.d.region(r).kind {
                RegionKind::Simd(a) if t.has(a) || t.index_of == Some(a) => {
                    Some((a, self.d.region(r).span))
                }
                _ => None,
            })
    }

    /// The axes of the SIMD regions enclosing the current point, outermost first.
    pub fn lane_axes(&self) -> Vec<AxisId> {
        self.d
            .region_chain(self.region)
            .into_iter()
            .filter_map(|r| match self.d.region(r).kind {
                RegionKind::Simd(a) => Some(a),
                RegionKind::Repeat(_) => None,
            })
            .collect()
    }

    /// Elaborates a block in the current scope (the caller pushed it) and returns its result.
    fn block(&mut self, block: &ast::Block) -> Val {
        // Bind names to statements; a name bound twice in one block is an error.
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, st) in block.stmts.iter().enumerate() {
            if let ast::Stmt::Bind { names, .. } = st {
                for n in names {
                    if let Some(prev) = self.lookup_local_span(&n.text) {
                        self.dup_error(n, prev);
                        continue;
                    }
                    if let Some(&j) = owner.get(n.text.as_str()) {
                        let prev = bind_span(&block.stmts[j], &n.text);
                        self.dup_error(n, prev);
                        continue;
                    }
                    if self.hypers.iter().any(|h| h.name == n.text) {
                        let h = self
                            .hypers
                            .iter()
                            .find(|h| h.name == n.text)
                            .map(|h| h.span)
                            .unwrap_or(n.span);
                        self.dup_error(n, h);
                        continue;
                    }
                    owner.insert(&n.text, i);
                }
            }
        }
        // Dependencies between statements of this block.
        let n = block.stmts.len();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, st) in block.stmts.iter().enumerate() {
            let mut refs = Vec::new();
            match st {
                ast::Stmt::Bind { expr, .. } => free_names(expr, &mut refs, &mut self.inner_names),
                ast::Stmt::Discard { names, .. } => {
                    refs.extend(names.iter().map(|n| n.text.as_str()))
                }
                ast::Stmt::Error(_) => {}
            }
            let mut ds: Vec<usize> = refs.iter().filter_map(|r| owner.get(r).copied()).collect();
            ds.sort_unstable();
            ds.dedup();
            deps[i] = ds;
        }
        let order = self.topo_order(block, &deps, &owner);
        for i in order {
            self.stmt(&block.stmts[i]);
        }
        if block.recovered {
            self.syntax_recovered = true;
            return Val::Error;
        }
        match &block.result {
            Some(e) => self.expr(e),
            None => Val::Nothing(block.span),
        }
    }

    fn lookup_local_span(&self, name: &str) -> Option<Span> {
        self.scopes
            .last()
            .and_then(|s| s.names.get(name))
            .map(|(_, span)| *span)
    }

    fn dup_error(&mut self, n: &ast::Name, prev: Span) {
        self.cx.error(
            Diagnostic::new(Code::Duplicate, format!("`{}` is defined twice", n.text))
                .primary(n.span, "defined again here")
                .secondary(prev, "first defined here")
                .help("every wire has one definition; give the second one another name"),
        );
    }

    /// Orders statements so dependencies come first, keeping source order where free. Cycles are
    /// reported (E0402) and their statements left out; their names are poisoned.
    fn topo_order(
        &mut self,
        block: &ast::Block,
        deps: &[Vec<usize>],
        owner: &HashMap<&str, usize>,
    ) -> Vec<usize> {
        let n = deps.len();
        let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &j in ds {
                dependants[j].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..n).filter(|i| waiting[*i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &k in &dependants[i] {
                waiting[k] -= 1;
                if waiting[k] == 0 {
                    ready.insert(k);
                }
            }
        }
        if order.len() < n {
            let mut left: Vec<bool> = vec![true; n];
            for &i in &order {
                left[i] = false;
            }
            // Report each cycle once: walk dependencies among the left-over statements.
            let mut reported = vec![false; n];
            for start in 0..n {
                if !left[start] || reported[start] {
                    continue;
                }
                let mut path = vec![start];
                let mut on_path: HashMap<usize, usize> = HashMap::from([(start, 0)]);
                let mut cur = start;
                let cycle = loop {
                    let Some(&next) = deps[cur].iter().find(|j| left[**j]) else {
                        break None;
                    };
                    if let Some(&p) = on_path.get(&next) {
                        break Some(path[p..].to_vec());
                    }
                    on_path.insert(next, path.len());
                    path.push(next);
                    cur = next;
                };
                for &p in &path {
                    reported[p] = true;
                }
                if let Some(cycle) = cycle {
                    let names: Vec<String> =
                        cycle.iter().map(|i| first_name(&block.stmts[*i])).collect();
                    let mut d = Diagnostic::new(
                        Code::Cycle,
                        format!("these wires depend on each other: {}", names.join(" -> ")),
                    );
                    for (k, &i) in cycle.iter().enumerate() {
                        let next = &names[(k + 1) % names.len()];
                        let span = stmt_span(&block.stmts[i]);
                        d = if k == 0 {
                            d.primary(span, format!("`{}` needs `{next}`", names[k]))
                        } else {
                            d.secondary(span, format!("`{}` needs `{next}`", names[k]))
                        };
                    }
                    self.cx.error(d.help(
                        "a diagram has no loops; use `repeat` to apply a block several times",
                    ));
                }
            }
            // Their inputs are not dangling: the statements that use them were skipped.
            let mut refs = Vec::new();
            let mut inner = HashMap::new();
            for (i, st) in block.stmts.iter().enumerate() {
                if let (true, ast::Stmt::Bind { expr, .. }) = (left[i], st) {
                    free_names(expr, &mut refs, &mut inner);
                }
            }
            self.touch_names(&refs);
            // Poison every name of the left-over statements.
            for (name, &i) in owner {
                if left[i] {
                    let span = bind_span(&block.stmts[i], name);
                    self.scopes
                        .last_mut()
                        .expect("a scope")
                        .names
                        .insert(name.to_string(), (Binding::Poisoned, span));
                }
            }
        }
        order
    }

    fn stmt(&mut self, st: &ast::Stmt) {
        match st {
            ast::Stmt::Error(_) => {}
            ast::Stmt::Discard { names, .. } => {
                for n in names {
                    if let Val::Wire(w) = self.lookup(n) {
                        if let Some(prev) = self.discarded[w.0 as usize] {
                            self.cx.error(
                                Diagnostic::new(
                                    Code::DiscardUsed,
                                    format!("`{}` is discarded twice", n.text),
                                )
                                .primary(n.span, "discarded again here")
                                .secondary(prev, "already discarded here"),
                            );
                        } else {
                            self.discarded[w.0 as usize] = Some(n.span);
                        }
                    }
                }
            }
            ast::Stmt::Bind {
                names, ty, expr, ..
            } => {
                let val = self.expr(expr);
                let val = match (ty, val) {
                    (Some(t), Val::Wire(w)) => self.ascribe(t, w, expr),
                    (_, v) => v,
                };
                let vals: Vec<Binding> = match val {
                    Val::Wire(w) if names.len() == 1 => vec![Binding::Wire(w)],
                    Val::Const(c) if names.len() == 1 => vec![Binding::Const(c)],
                    Val::Tuple(ws) if ws.len() == names.len() => {
                        ws.into_iter().map(Binding::Wire).collect()
                    }
                    Val::Error => vec![Binding::Poisoned; names.len()],
                    other => {
                        if let Val::Wire(w) = &other {
                            self.referenced[w.0 as usize] = true;
                        }
                        if let Val::Tuple(ws) = &other {
                            for w in ws {
                                self.referenced[w.0 as usize] = true;
                            }
                        }
                        let got = match &other {
                            Val::Tuple(ws) => format!("{} values", ws.len()),
                            Val::Nothing(_) => "no value".to_string(),
                            _ => "one value".to_string(),
                        };
                        let first = names[0].span;
                        let all = names.last().map_or(first, |l| first.to(l.span));
                        self.cx.error(
                            Diagnostic::new(
                                Code::Arity,
                                format!("{} name(s) bound to {got}", names.len()),
                            )
                            .primary(all, format!("{} name(s)", names.len()))
                            .secondary(expr.span(), got),
                        );
                        vec![Binding::Poisoned; names.len()]
                    }
                };
                for (n, b) in names.iter().zip(vals) {
                    // A second definition of a name (reported as E0104 already) does not replace
                    // the first, and its value is not also reported as dangling.
                    let redefined = matches!(
                        self.scopes.last().and_then(|s| s.names.get(&n.text)),
                        Some((Binding::Wire(_) | Binding::Const(_), span)) if *span != n.span
                    );
                    if let Binding::Wire(w) = &b {
                        if redefined {
                            self.referenced[w.0 as usize] = true;
                            continue;
                        }
                        // The latest name is the one reports use (`y = x` renames the wire).
                        self.d.wires[w.0 as usize].name = Some(n.text.clone());
                        self.bound_at[w.0 as usize] = Some(n.span);
                    }
                    let scope = self.scopes.last_mut().expect("a scope");
                    // A name already poisoned by the cycle check stays poisoned.
                    if !matches!(scope.names.get(&n.text), Some((Binding::Poisoned, _))) {
                        scope.names.insert(n.text.clone(), (b, n.span));
                    }
                }
            }
        }
    }

    /// E0302 when `expr` is a SIMD region whose result is declared (at `want_span`) without the
    /// region's axis; returns whether it reported.
    fn region_exit_error(
        &mut self,
        expr: &ast::Expr,
        have: &WireType,
        want: &WireType,
        want_span: Span,
    ) -> bool {
        let ast::Expr::Simd { axis, .. } = expr else {
            return false;
        };
        let Some(a) = self.cx.axes.lookup(&axis.text) else {
            return false;
        };
        if want.has(a) || have.without(a) != *want {
            return false;
        }
        self.cx.error(
            Diagnostic::new(
                Code::SimdLeaves,
                format!(
                    "a wire leaving `simd {}` must carry `{}`",
                    axis.text, axis.text
                ),
            )
            .primary(want_span, format!("declared without `{}`", axis.text))
            .secondary(
                axis.span,
                format!(
                    "each lane gives one slice: the result is {}",
                    self.ty_str(have)
                ),
            )
            .help(format!(
                "add `{}` to the type, or reduce the result with `sum[{}](...)`",
                axis.text, axis.text
            )),
        );
        true
    }

    /// Checks `o: [..] = e`.
    fn ascribe(&mut self, t: &ast::TypeExpr, w: WireId, expr: &ast::Expr) -> Val {
        // On failure the wire is still the user's: not dangling.
        self.referenced[w.0 as usize] = true;
        let Some(want) = self.cx.resolve_type(t) else {
            return Val::Error;
        };
        let have = self.wire_ty(w).clone();
        if have == want {
            // Adopt the written axis order, which is what later phases lay the wire out by.
            self.d.wires[w.0 as usize].ty = want;
            return Val::Wire(w);
        }
        if self.region_exit_error(expr, &have, &want, t.span) {
            return Val::Error;
        }
        let (h, wt) = (self.ty_str(&have), self.ty_str(&want));
        self.cx.error(
            Diagnostic::new(
                Code::TypeMismatch,
                format!("this wire is {h}, but its type is written {wt}"),
            )
            .primary(expr.span(), format!("this is {h}"))
            .secondary(t.span, format!("written {wt}")),
        );
        Val::Error
    }

    /// Marks the wires that skipped code refers to as referenced, so that skipping a statement
    /// (part of a cycle) or a block (in a region that failed) does not also report its inputs
    /// as dangling.
    fn touch_names(&mut self, names: &[&str]) {
        for n in names {
            let found = self
                .scopes
                .iter()
                .rev()
                .find_map(|s| s.names.get(*n))
                .map(|b| b.0.clone());
            if let Some(Binding::Wire(w)) = found {
                self.referenced[w.0 as usize] = true;
            }
        }
    }

    /// [`Body::touch_names`] for everything a block refers to from outside.
    pub fn touch_block(&mut self, b: &ast::Block) {
        let mut refs = Vec::new();
        let mut inner = HashMap::new();
        block_free_names(b, None, &mut refs, &mut inner);
        self.touch_names(&refs);
    }

    /// Marks the wires of a value as referenced (see [`Body::referenced`]).
    pub fn touch(&mut self, v: &Val) {
        match v {
            Val::Wire(w) => self.referenced[w.0 as usize] = true,
            Val::Tuple(ws) => {
                for w in ws {
                    self.referenced[w.0 as usize] = true;
                }
            }
            _ => {}
        }
    }

    /// The wires of a value that must be one or more wires (a block result, a region result).
    pub fn values(&mut self, v: &Val, span: Span) -> Option<Vec<WireId>> {
        match v {
            Val::Wire(w) => {
                self.referenced[w.0 as usize] = true;
                Some(vec![*w])
            }
            Val::Tuple(ws) => {
                for w in ws {
                    self.referenced[w.0 as usize] = true;
                }
                Some(ws.clone())
            }
            Val::Error => None,
            Val::Const(_) => {
                self.cx.error(
                    Diagnostic::new(
                        Code::TypeMismatch,
                        "a number cannot be an output: outputs are wires",
                    )
                    .primary(span, "this is a number")
                    .help(
                        "to output a constant wire, use a box that makes one, e.g. `param[...]()`",
                    ),
                );
                None
            }
            Val::Nothing(block_span) => {
                let end = Span {
                    file: block_span.file,
                    start: block_span.end.saturating_sub(1),
                    end: block_span.end,
                };
                self.cx.error(
                    Diagnostic::new(Code::Arity, "this block produces no value")
                        .primary(end, "the block ends without a result expression")
                        .help("end the block with the expression it outputs, e.g. `linear[dm -> dm](x)`"),
                );
                None
            }
        }
    }

    /// Resolves a name in an expression: a wire (imported into the current region if bound
    /// outside it), a number hyperparameter, or an axis (its size, as a number).
    pub fn lookup(&mut self, n: &ast::Name) -> Val {
        let found = self
            .scopes
            .iter()
            .rposition(|s| s.names.contains_key(&n.text));
        if let Some(depth) = found {
            let (b, _) = self.scopes[depth].names[&n.text].clone();
            return match b {
                Binding::Poisoned => Val::Error,
                Binding::Const(c) => Val::Const(c),
                Binding::Wire(w) => {
                    let mut w = w;
                    for level in depth + 1..self.scopes.len() {
                        w = self.import(level, w);
                    }
                    Val::Wire(w)
                }
            };
        }
        if let Some(h) = self.hypers.iter().find(|h| h.name == n.text) {
            return match &h.ty {
                Some(HyperType::Int | HyperType::Float) => Val::Const(Const::Hyper(n.text.clone())),
                Some(HyperType::Diagram { .. }) => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::HyperMismatch,
                            format!("`{}` is a diagram, not a wire", n.text),
                        )
                        .primary(n.span, "a diagram-valued hyperparameter")
                        .secondary(h.span, "declared here")
                        .help(format!("call it on its inputs: `{}(x)`", n.text)),
                    );
                    Val::Error
                }
                None => Val::Error,
            };
        }
        if let Some(a) = self.cx.axes.lookup(&n.text) {
            return Val::Const(Const::Size(a));
        }
        if let Some(inner) = self.inner_names.get(&n.text).copied() {
            self.cx.error(
                Diagnostic::new(Code::SimdScope, format!("`{}` is local to an inner block", n.text))
                    .primary(n.span, "used outside the block that defines it")
                    .secondary(inner, "defined inside this block")
                    .help("make it one of the block's results: end the block with a tuple `(result, other)`"),
            );
            return Val::Error;
        }
        let d = Diagnostic::new(Code::UnknownWire, format!("no wire `{}`", n.text))
            .primary(n.span, "not defined");
        let d = if self.cx.suggest() {
            let mut candidates: Vec<&str> = Vec::new();
            for s in &self.scopes {
                candidates.extend(s.names.keys().map(String::as_str));
            }
            candidates.extend(self.hypers.iter().map(|h| h.name.as_str()));
            did_you_mean(d, &n.text, candidates)
        } else {
            d
        };
        self.cx.error(d);
        Val::Error
    }

    /// Brings outer wire `w` into the region whose body is scope `level`, once.
    fn import(&mut self, level: usize, w: WireId) -> WireId {
        let Some(region) = self.scopes[level].boundary else {
            return w;
        };
        if let Some(&inner) = self.scopes[level].imports.get(&w) {
            return inner;
        }
        let ty = self.wire_ty(w).clone();
        let (op, inner_ty) = match self.d.region(region).kind {
            RegionKind::Simd(a) if ty.has(a) => (Op::Zip(a), ty.without(a)),
            RegionKind::Simd(a) => (Op::Broadcast(a), ty),
            RegionKind::Repeat(_) => (Op::Capture, ty),
        };
        let saved = self.region;
        self.region = Some(region);
        let span = self.d.region(region).span;
        let inner = self
            .add_box(op, vec![w], vec![inner_ty], vec![], span)
            .map(|o| o[0]);
        self.region = saved;
        let inner = inner.expect("a port's type never carries its own region's axis");
        self.scopes[level].imports.insert(w, inner);
        inner
    }

    /// `simd axis { body }`.
    pub fn simd(&mut self, axis: &ast::Name, body: &ast::Block, span: Span) -> Val {
        let Some(a) = self.cx.axis(axis) else {
            self.touch_block(body);
            return Val::Error;
        };
        if let Some(outer) = self
            .d
            .region_chain(self.region)
            .into_iter()
            .find(|r| self.d.region(*r).kind == RegionKind::Simd(a))
        {
            let outer_span = self.d.region(outer).span;
            self.cx.error(
                Diagnostic::new(
                    Code::SimdAxisInside,
                    format!("`simd {}` inside another `simd {}`", axis.text, axis.text),
                )
                .primary(
                    axis.span,
                    "this region's lanes are already lanes of the outer one",
                )
                .secondary(outer_span, "the outer region")
                .help("nest regions over different axes"),
            );
            self.touch_block(body);
            return Val::Error;
        }
        let region = self.open_region(RegionKind::Simd(a), span);
        let result = self.block(body);
        let result_span = body.result.as_ref().map_or(body.span, |e| e.span());
        let inner = self.values(&result, result_span);
        let outs = inner.and_then(|ws| {
            let mut outs = Vec::new();
            for w in ws {
                let ty = self.wire_ty(w).with_front(a);
                let saved = self.region;
                self.region = Some(region);
                let o = self.add_box(Op::Collect(a), vec![w], vec![ty], vec![], span);
                self.region = saved;
                outs.push(o?[0]);
            }
            Some(outs)
        });
        self.close_region(region);
        match outs {
            Some(ws) if ws.len() == 1 => Val::Wire(ws[0]),
            Some(ws) => Val::Tuple(ws),
            None => Val::Error,
        }
    }

    /// `repeat count (var = init) { body }`.
    pub fn repeat(
        &mut self,
        count: &ast::Value,
        var: &ast::Name,
        init: &ast::Expr,
        body: &ast::Block,
        span: Span,
    ) -> Val {
        let count = self.count_value(count);
        let init_val = self.expr(init);
        self.touch(&init_val);
        let Val::Wire(init_w) = init_val else {
            self.touch_block(body);
            if !matches!(init_val, Val::Error) {
                self.cx.error(
                    Diagnostic::new(
                        Code::TypeMismatch,
                        "the carried value of `repeat` must be one wire",
                    )
                    .primary(init.span(), "not a single wire"),
                );
            }
            return Val::Error;
        };
        let Some(count) = count else {
            self.touch_block(body);
            return Val::Error;
        };
        let ty = self.wire_ty(init_w).clone();
        let region = self.open_region(RegionKind::Repeat(count), span);
        let carried = self
            .add_box(Op::LoopIn, vec![init_w], vec![ty.clone()], vec![], var.span)
            .map(|o| o[0]);
        let Some(carried) = carried else {
            self.close_region(region);
            return Val::Error;
        };
        self.bound_at[carried.0 as usize] = Some(var.span);
        self.d.wires[carried.0 as usize].name = Some(var.text.clone());
        self.scopes
            .last_mut()
            .expect("a scope")
            .names
            .insert(var.text.clone(), (Binding::Wire(carried), var.span));
        let result = self.block(body);
        let result_span = body.result.as_ref().map_or(body.span, |e| e.span());
        let out = match self.values(&result, result_span) {
            Some(ws) if ws.len() == 1 && *self.wire_ty(ws[0]) == ty => self
                .add_box(Op::LoopOut, vec![ws[0]], vec![ty], vec![], span)
                .map(|o| o[0]),
            Some(ws) => {
                let got = if ws.len() == 1 {
                    self.ty_str(self.wire_ty(ws[0]))
                } else {
                    format!("{} values", ws.len())
                };
                let want = self.ty_str(&ty);
                self.cx.error(
                    Diagnostic::new(
                        Code::TypeMismatch,
                        format!(
                            "a `repeat` body must give back what it carries ({want}), not {got}"
                        ),
                    )
                    .primary(result_span, format!("this is {got}"))
                    .secondary(init.span(), format!("the carried value is {want}")),
                );
                None
            }
            None => None,
        };
        self.close_region(region);
        out.map_or(Val::Error, Val::Wire)
    }

    fn count_value(&mut self, v: &ast::Value) -> Option<Const> {
        match v {
            ast::Value::Num(x, span) => {
                if x.fract() != 0.0 || *x < 0.0 || !x.is_finite() {
                    self.cx.error(
                        Diagnostic::new(Code::BadIndexArgs, "a repeat count is a whole number")
                            .primary(*span, "not a whole number"),
                    );
                    return None;
                }
                Some(Const::Num(*x))
            }
            ast::Value::Name(n) => match self
                .hypers
                .iter()
                .find(|h| h.name == n.text)
                .map(|h| (h.ty.clone(), h.span))
            {
                Some((Some(HyperType::Int), _)) => Some(Const::Hyper(n.text.clone())),
                Some((Some(_), hspan)) => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::HyperMismatch,
                            format!("`{}` is not an `int`", n.text),
                        )
                        .primary(n.span, "a repeat count must be an `int` hyperparameter")
                        .secondary(hspan, "declared here"),
                    );
                    None
                }
                Some((None, _)) => None,
                None => {
                    let d = Diagnostic::new(
                        Code::UnknownWire,
                        format!("no hyperparameter `{}`", n.text),
                    )
                    .primary(n.span, "not declared")
                    .help_if_none(format!(
                        "declare it in the diagram's brackets: `[{}: int]`",
                        n.text
                    ));
                    let d = did_you_mean(d, &n.text, self.hypers.iter().map(|h| h.name.as_str()));
                    self.cx.error(d);
                    None
                }
            },
            ast::Value::Empty(span) => {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, "a repeat count is a whole number")
                        .primary(*span, "not a number"),
                );
                None
            }
        }
    }

    fn open_region(&mut self, kind: RegionKind, span: Span) -> RegionId {
        self.d.regions.push(Region {
            kind,
            parent: self.region,
            span,
        });
        let id = RegionId(self.d.regions.len() as u32 - 1);
        self.region = Some(id);
        self.scopes.push(Scope {
            names: HashMap::new(),
            boundary: Some(id),
            imports: HashMap::new(),
        });
        id
    }

    fn close_region(&mut self, id: RegionId) {
        self.scopes.pop();
        self.region = self.d.region(id).parent;
    }

    /// Inserts copy and discard boxes, reports dangling and misused discards, and restores the
    /// IR invariants: one consumer per wire, boxes in topological order.
    fn finish_wiring(&mut self) {
        let nwires = self.d.wires.len();
        // Boxes to place right after the producer of a wire (or first, for diagram inputs).
        let mut after: HashMap<WireId, Vec<BoxNode>> = HashMap::new();
        for i in 0..nwires {
            let w = WireId(i as u32);
            let uses = std::mem::take(&mut self.uses[i]);
            let real = uses;
            let counted = !real.is_empty();
            if let Some(span) = self.discarded[i] {
                if counted {
                    let name = self.d.wire(w).name.clone().unwrap_or_default();
                    let mut d = Diagnostic::new(
                        Code::DiscardUsed,
                        format!("`{name}` is discarded but also used"),
                    )
                    .primary(span, "discarded here");
                    if let Some(b) = self.bound_at[i] {
                        d = d.secondary(b, "defined here");
                    }
                    self.cx
                        .error(d.help("remove the `discard`: a used wire is not dropped"));
                    continue;
                }
                let region = self.d.wire(w).region;
                after.entry(w).or_default().push(BoxNode {
                    op: Op::Discard,
                    inputs: vec![w],
                    outputs: vec![],
                    params: vec![],
                    region,
                    span,
                });
                continue;
            }
            if !counted && !self.referenced[i] && !self.syntax_recovered {
                let wire = self.d.wire(w);
                let span = self.bound_at[i].unwrap_or(wire.span);
                let name = wire.name.clone();
                let what = match &name {
                    Some(n) => format!("wire `{n}` is never used"),
                    None => "this value is never used".into(),
                };
                let ty = self.ty_str(&self.d.wire(w).ty);
                self.cx.error(
                    Diagnostic::new(Code::Dangling, what)
                        .primary(span, format!("{ty}, dangling"))
                        .help(match name {
                            Some(n) => format!("use it, or drop it explicitly with `discard {n}`"),
                            None => {
                                "bind it to a name and use it, or drop it with `discard`".into()
                            }
                        }),
                );
                continue;
            }
            if real.len() > 1 {
                let ty = self.d.wire(w).ty.clone();
                let region = self.d.wire(w).region;
                let span = self.bound_at[i].unwrap_or(self.d.wire(w).span);
                let mut outs = Vec::new();
                for u in &real {
                    self.d.wires.push(Wire {
                        ty: ty.clone(),
                        name: self.d.wire(w).name.clone(),
                        source: WireSource::Input(0),
                        sink: None,
                        region,
                        span,
                    });
                    let c = WireId(self.d.wires.len() as u32 - 1);
                    match *u {
                        Use::Box(b, k) => self.d.boxes[b.0 as usize].inputs[k] = c,
                        Use::Output(k) => self.d.outputs[k] = c,
                    }
                    outs.push(c);
                }
                after.entry(w).or_default().push(BoxNode {
                    op: Op::Copy(outs.len()),
                    inputs: vec![w],
                    outputs: outs,
                    params: vec![],
                    region,
                    span,
                });
            }
        }
        // Rebuild the box list: each inserted box right after its wire's producer.
        let old = std::mem::take(&mut self.d.boxes);
        let mut boxes = Vec::with_capacity(old.len() + after.len());
        for w in self.d.inputs.clone() {
            push_chain(&mut boxes, &mut after, w);
        }
        for b in old {
            let outs = b.outputs.clone();
            boxes.push(b);
            for o in outs {
                push_chain(&mut boxes, &mut after, o);
            }
        }
        self.d.boxes = boxes;
        // Sources from the new positions.
        for (i, w) in self.d.inputs.iter().enumerate() {
            self.d.wires[w.0 as usize].source = WireSource::Input(i);
        }
        for (bi, b) in self.d.boxes.iter().enumerate() {
            for (k, o) in b.outputs.iter().enumerate() {
                self.d.wires[o.0 as usize].source = WireSource::Box(BoxId(bi as u32), k);
            }
        }
        recompute_sinks(&mut self.d);
    }
}

/// Appends the boxes waiting on wire `w`, and recursively those on their outputs.
fn push_chain(boxes: &mut Vec<BoxNode>, after: &mut HashMap<WireId, Vec<BoxNode>>, w: WireId) {
    if let Some(list) = after.remove(&w) {
        for b in list {
            let outs = b.outputs.clone();
            boxes.push(b);
            for o in outs {
                push_chain(boxes, after, o);
            }
        }
    }
}

fn first_name(st: &ast::Stmt) -> String {
    match st {
        ast::Stmt::Bind { names, .. } => names.first().map(|n| n.text.clone()).unwrap_or_default(),
        _ => String::new(),
    }
}

fn stmt_span(st: &ast::Stmt) -> Span {
    match st {
        ast::Stmt::Bind { span, .. } | ast::Stmt::Discard { span, .. } | ast::Stmt::Error(span) => {
            *span
        }
    }
}

fn bind_span(st: &ast::Stmt, name: &str) -> Span {
    match st {
        ast::Stmt::Bind { names, span, .. } => names
            .iter()
            .find(|n| n.text == name)
            .map_or(*span, |n| n.span),
        other => stmt_span(other),
    }
}

/// Collects the wire names an expression refers to that are not bound inside it; records the
/// names bound by nested blocks in `inner`.
fn free_names<'a>(e: &'a ast::Expr, out: &mut Vec<&'a str>, inner: &mut HashMap<String, Span>) {
    match e {
        ast::Expr::Num(..) | ast::Expr::Error(_) => {}
        ast::Expr::Name(n) => out.push(&n.text),
        ast::Expr::Call { args, .. } => {
            for a in args {
                free_names(a, out, inner);
            }
        }
        ast::Expr::Chain { first, rest, .. } => {
            free_names(first, out, inner);
            for (_, _, x) in rest {
                free_names(x, out, inner);
            }
        }
        ast::Expr::Neg { expr, .. } => free_names(expr, out, inner),
        ast::Expr::Tuple(xs, _) => {
            for x in xs {
                free_names(x, out, inner);
            }
        }
        ast::Expr::Simd { body, .. } => block_free_names(body, None, out, inner),
        ast::Expr::Repeat {
            init, body, var, ..
        } => {
            free_names(init, out, inner);
            block_free_names(body, Some(var), out, inner);
        }
    }
}

fn block_free_names<'a>(
    b: &'a ast::Block,
    var: Option<&'a ast::Name>,
    out: &mut Vec<&'a str>,
    inner: &mut HashMap<String, Span>,
) {
    let mut bound: std::collections::HashSet<&str> = std::collections::HashSet::new();
    if let Some(v) = var {
        bound.insert(&v.text);
        inner.entry(v.text.clone()).or_insert(v.span);
    }
    let mut refs = Vec::new();
    for st in &b.stmts {
        match st {
            ast::Stmt::Bind { names, expr, .. } => {
                for n in names {
                    bound.insert(&n.text);
                    inner.entry(n.text.clone()).or_insert(n.span);
                }
                free_names(expr, &mut refs, inner);
            }
            ast::Stmt::Discard { names, .. } => refs.extend(names.iter().map(|n| n.text.as_str())),
            ast::Stmt::Error(_) => {}
        }
    }
    if let Some(r) = &b.result {
        free_names(r, &mut refs, inner);
    }
    out.extend(refs.into_iter().filter(|r| !bound.contains(r)));
}
