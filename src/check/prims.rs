//! Typing expressions: arithmetic, calls of diagrams, and the prelude of primitive boxes.
//!
//! Each primitive names the axes it acts on and runs lane-wise over every other axis of its
//! inputs. The rules below are the whole type system of the prelude; `docs/language.md` lists
//! them for users.

use super::body::Body;
use super::{HelpIfNone, HyperSig};
use crate::diagnostic::{Code, Diagnostic, did_you_mean};
use crate::ir::*;
use crate::source::Span;
use crate::syntax::ast::{self, BinOp};

/// The value of an expression while elaborating.
#[derive(Clone, Debug)]
pub enum Val {
    Wire(WireId),
    /// A number known when the model is built.
    Const(Const),
    /// Several wires (a call of a diagram with several outputs, a tuple).
    Tuple(Vec<WireId>),
    /// Something failed and was reported: stay quiet about it downstream.
    Error,
    /// A block without a result expression (its span).
    Nothing(Span),
}

/// The prelude: every primitive box but the elementwise functions, with the form users write it
/// in. The functions (`relu(x)`, `exp(x)`...) are `ir::Func::ALL`, the one list of them.
pub const PRIMITIVES: &[(&str, &str)] = &[
    ("add", "add(a, b)"),
    ("sub", "sub(a, b)"),
    ("mul", "mul(a, b)"),
    ("div", "div(a, b)"),
    ("scale", "scale[C](x)"),
    ("shift", "shift[C](x)"),
    ("dot", "dot[AXIS](a, b)"),
    ("outer", "outer(a, b)"),
    ("sum", "sum[AXIS](x)"),
    ("softmax", "softmax[AXIS](x)"),
    ("normalise", "normalise[AXIS, eps = C](x)"),
    ("cumsum", "cumsum[AXIS, decay = C](x)"),
    (
        "scan",
        "scan[AXIS](gate, x)` or, with a matrix gate, `scan[AXIS, COL -> ROW](gate, x)",
    ),
    ("rotate_half", "rotate_half[AXIS](x)"),
    ("max", "max[AXIS](x), or max(a, b) elementwise"),
    ("min", "min[AXIS](x), or min(a, b) elementwise"),
    ("logsumexp", "logsumexp[AXIS](x)"),
    (
        "causal",
        "causal[QUERY, KEY, strict = false, window = W](x)",
    ),
    (
        "causal_zero",
        "causal_zero[QUERY, KEY, strict = false, window = W](x)",
    ),
    ("rename", "rename[FROM -> TO](x)"),
    ("split", "split[AXIS -> AXIS, AXIS, ...](x)"),
    ("merge", "merge[AXIS, AXIS, ... -> AXIS](x)"),
    ("broadcast", "broadcast[AXIS](x)"),
    ("layernorm", "layernorm[AXIS, ...](x)"),
    ("dropout", "dropout[P](x)"),
    ("embed", "embed[VOCAB -> AXIS, ...](ids)"),
    ("posenc", "posenc[POSITION, FEATURE]()"),
    ("iota", "iota[AXIS]()"),
    ("fill", "fill[AXIS, ...](C)"),
    (
        "linear",
        "linear[AXIS, ... -> AXIS, ..., bias = true, per = AXIS](x)",
    ),
    (
        "learner",
        "learner[AXIS, ... -> AXIS, ..., width = N, per = AXIS](x, ...)",
    ),
    ("param", "param[AXIS, ...]()"),
    ("random", "random[AXIS, ..., dist = normal]()"),
];

pub fn is_primitive(name: &str) -> bool {
    primitive_names().any(|n| n == name)
}

/// The name of every primitive box of the prelude, the elementwise functions included.
pub fn primitive_names() -> impl Iterator<Item = &'static str> {
    PRIMITIVES
        .iter()
        .map(|(n, _)| *n)
        .chain(Func::ALL.iter().map(|(n, _)| *n))
}

fn usage(name: &str) -> String {
    match PRIMITIVES.iter().find(|(n, _)| *n == name) {
        Some((_, u)) => u.to_string(),
        None => format!("{name}(x)"),
    }
}

/// How many positional values a side of the brackets takes.
#[derive(Clone, Copy)]
enum Count {
    Exactly(usize),
    AtLeast(usize),
}

impl Count {
    fn ok(self, n: usize) -> bool {
        match self {
            Count::Exactly(k) => n == k,
            Count::AtLeast(k) => n >= k,
        }
    }
}

/// The bracket arguments of a primitive, checked against its form.
struct Idx<'a> {
    lhs: &'a [ast::Value],
    rhs: &'a [ast::Value],
    named: &'a [(ast::Name, ast::Value)],
}

const NO_VALUES: &[ast::Value] = &[];
const NO_NAMED: &[(ast::Name, ast::Value)] = &[];

impl Body<'_, '_> {
    pub fn expr(&mut self, e: &ast::Expr) -> Val {
        match e {
            ast::Expr::Num(x, _) => Val::Const(Const::Num(*x)),
            ast::Expr::Name(n) => self.lookup(n),
            ast::Expr::Call {
                callee,
                index,
                args,
                span,
            } => self.call(callee, index.as_ref(), args, *span),
            ast::Expr::Chain { first, rest, .. } => {
                let mut acc = self.expr(first);
                let mut acc_span = first.span();
                for (op, op_span, x) in rest {
                    let r = self.expr(x);
                    acc = self.binop(*op, acc, r, acc_span, x.span(), *op_span);
                    acc_span = acc_span.to(x.span());
                }
                acc
            }
            ast::Expr::Neg { count, expr, span } => {
                let v = self.expr(expr);
                if count % 2 == 0 {
                    v
                } else {
                    self.negate(v, *span)
                }
            }
            ast::Expr::Tuple(xs, _) => {
                let mut ws = Vec::new();
                let mut ok = true;
                for x in xs {
                    let v = self.expr(x);
                    match self.wire_arg(v, x.span()) {
                        Some(w) => ws.push(w),
                        None => ok = false,
                    }
                }
                if ok { Val::Tuple(ws) } else { Val::Error }
            }
            ast::Expr::Simd { axis, body, span } => self.simd(axis, body, *span),
            ast::Expr::Repeat {
                count,
                var,
                init,
                body,
                span,
            } => self.repeat(count, var, init, body, *span),
            ast::Expr::Error(_) => Val::Error,
        }
    }

    /// The one wire a value must be; reports numbers (E0208) and tuples (E0207) given instead.
    pub fn wire_arg(&mut self, v: Val, span: Span) -> Option<WireId> {
        match v {
            Val::Wire(w) => {
                self.referenced[w.0 as usize] = true;
                Some(w)
            }
            Val::Error => None,
            Val::Const(_) => {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, "a number where a wire is expected")
                        .primary(span, "this is a number, not a wire")
                        .help("numbers scale or shift wires (`x * 2`), or go in brackets (`scale[2](x)`)"),
                );
                None
            }
            Val::Tuple(ws) => {
                for w in &ws {
                    self.referenced[w.0 as usize] = true;
                }
                self.cx.error(
                    Diagnostic::new(
                        Code::Arity,
                        format!("{} wires where one is expected", ws.len()),
                    )
                    .primary(span, format!("this gives {} wires", ws.len()))
                    .help("bind them to names first: `a, b = ...`"),
                );
                None
            }
            Val::Nothing(_) => None,
        }
    }

    /// A wire of values (not indices).
    fn float_arg(&mut self, v: Val, span: Span) -> Option<WireId> {
        let w = self.wire_arg(v, span)?;
        if let Some(vocab) = self.wire_ty(w).index_of {
            let ty = self.ty_str(self.wire_ty(w));
            let vocab = self.cx.axes.name(vocab).to_string();
            self.cx.error(
                Diagnostic::new(Code::IndexWire, "an index wire where values are expected")
                    .primary(span, format!("this is {ty}: indices, not values"))
                    .help(format!(
                        "look the indices up first: `embed[{vocab} -> ...](...)`"
                    )),
            );
            return None;
        }
        Some(w)
    }

    fn wire_label(&self, w: WireId) -> String {
        match &self.d.wire(w).name {
            Some(n) => format!("`{n}`"),
            None => "this wire".into(),
        }
    }

    fn negate(&mut self, v: Val, span: Span) -> Val {
        match v {
            Val::Const(c) => Val::Const(Const::Neg(Box::new(c))),
            other => match self.float_arg(other, span) {
                Some(w) => self.unary(Op::Scale(Const::Num(-1.0)), w, span),
                None => Val::Error,
            },
        }
    }

    /// A box with one input whose output has the same type.
    fn unary(&mut self, op: Op, w: WireId, span: Span) -> Val {
        let ty = self.wire_ty(w).clone();
        self.box1(op, vec![w], ty, vec![], span)
    }

    fn box1(
        &mut self,
        op: Op,
        ins: Vec<WireId>,
        ty: WireType,
        params: Vec<ParamSpec>,
        span: Span,
    ) -> Val {
        match self.add_box(op, ins, vec![ty], params, span) {
            Some(o) => Val::Wire(o[0]),
            None => Val::Error,
        }
    }

    pub fn binop(&mut self, op: BinOp, l: Val, r: Val, ls: Span, rs: Span, op_span: Span) -> Val {
        let whole = ls.to(rs);
        self.touch(&l);
        self.touch(&r);
        match (l, r) {
            (Val::Error, _) | (_, Val::Error) => Val::Error,
            (Val::Const(a), Val::Const(b)) => Val::Const(Const::Bin(op, Box::new(a), Box::new(b))),
            (l @ Val::Wire(_), Val::Const(c)) | (l @ Val::Tuple(_), Val::Const(c)) => {
                let Some(w) = self.float_arg(l, ls) else {
                    return Val::Error;
                };
                let op = match op {
                    BinOp::Add => Op::Shift(c),
                    BinOp::Sub => Op::Shift(Const::Neg(Box::new(c))),
                    BinOp::Mul => Op::Scale(c),
                    BinOp::Div => Op::Scale(Const::Bin(
                        BinOp::Div,
                        Box::new(Const::Num(1.0)),
                        Box::new(c),
                    )),
                };
                self.unary(op, w, whole)
            }
            (Val::Const(c), r) => {
                let Some(w) = self.float_arg(r, rs) else {
                    return Val::Error;
                };
                match op {
                    BinOp::Add => self.unary(Op::Shift(c), w, whole),
                    BinOp::Mul => self.unary(Op::Scale(c), w, whole),
                    BinOp::Sub => match self.unary(Op::Scale(Const::Num(-1.0)), w, whole) {
                        Val::Wire(n) => self.unary(Op::Shift(c), n, whole),
                        other => other,
                    },
                    BinOp::Div => match self.unary(Op::Map(Func::Recip), w, whole) {
                        Val::Wire(n) => self.unary(Op::Scale(c), n, whole),
                        other => other,
                    },
                }
            }
            (l, r) => {
                let (Some(a), Some(b)) = (self.float_arg(l, ls), self.float_arg(r, rs)) else {
                    return Val::Error;
                };
                if !self.same_axes(a, b, op.symbol(), ls, rs, op_span) {
                    return Val::Error;
                }
                let ta = self.wire_ty(a).clone();
                let op = match op {
                    BinOp::Add => Op::Add,
                    BinOp::Sub => Op::Sub,
                    BinOp::Mul => Op::Mul,
                    BinOp::Div => Op::Div,
                };
                self.box1(op, vec![a, b], ta, vec![], whole)
            }
        }
    }

    /// Whether wires `a` and `b` have the same axes; reports the mismatch of `symbol` if not.
    fn same_axes(
        &mut self,
        a: WireId,
        b: WireId,
        symbol: &str,
        ls: Span,
        rs: Span,
        op_span: Span,
    ) -> bool {
        let (ta, tb) = (self.wire_ty(a).clone(), self.wire_ty(b).clone());
        if ta != tb {
            // The names of the axes of `one` that `other` lacks.
            let only = |one: &WireType, other: &WireType| -> Vec<&str> {
                one.axes
                    .iter()
                    .filter(|x| !other.has(**x))
                    .map(|x| self.cx.axes.name(*x))
                    .collect()
            };
            let (only_a, only_b) = (only(&ta, &tb), only(&tb, &ta));
            let help = match (only_a.is_empty(), only_b.is_empty()) {
                (true, false) => format!(
                    "broadcast the left side explicitly: `broadcast[{}](...)`",
                    only_b.join("](broadcast[")
                ),
                (false, true) => format!(
                    "broadcast the right side explicitly: `broadcast[{}](...)`",
                    only_a.join("](broadcast[")
                ),
                _ => format!(
                    "the left has {} and the right has {}: rename or reduce one side",
                    only_a.join(", "),
                    only_b.join(", ")
                ),
            };
            let (sa, sb) = (self.ty_str(&ta), self.ty_str(&tb));
            self.cx.error(
                Diagnostic::new(
                    Code::AxesDiffer,
                    format!(
                        "`{}` needs the same axes on both sides: {sa} vs {sb}",
                        symbol
                    ),
                )
                .primary(op_span, "the two sides do not line up")
                .secondary(ls, format!("this is {sa}"))
                .secondary(rs, format!("this is {sb}"))
                .help(help),
            );
        }
        ta == tb
    }

    /// A call: a diagram-valued hyperparameter, a diagram, or a primitive.
    fn call(
        &mut self,
        callee: &ast::Name,
        index: Option<&ast::IndexArgs>,
        args: &[ast::Expr],
        span: Span,
    ) -> Val {
        let name = callee.text.as_str();
        if let Some(h) = self.hypers.iter().find(|h| h.name == name) {
            let (hty, hspan, sig_span) = (h.ty.clone(), h.span, h.sig_span);
            return match hty {
                Some(HyperType::Diagram { inputs, outputs }) => {
                    if let Some(ix) = index {
                        self.cx.error(
                            Diagnostic::new(Code::BadIndexArgs, format!("`{name}` is a hyperparameter: its own hyperparameters are fixed by whoever passes it"))
                                .primary(ix.span, "no brackets here"),
                        );
                    }
                    let ins = inputs.into_iter().map(|t| (Some(t), sig_span)).collect();
                    let outs = outputs.into_iter().map(Some).collect();
                    self.composite(
                        Callee::Hyper(name.to_string()),
                        vec![],
                        ins,
                        outs,
                        sig_span,
                        args,
                        span,
                    )
                }
                Some(_) => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::HyperMismatch,
                            format!("`{name}` is a number, not a diagram"),
                        )
                        .primary(callee.span, "called here")
                        .secondary(hspan, "declared here"),
                    );
                    for a in args {
                        let v = self.expr(a);
                        self.touch(&v);
                    }
                    Val::Error
                }
                None => Val::Error,
            };
        }
        if let Some(&i) = self.cx.sig_by_name.get(name) {
            let sig = &self.cx.sigs[i];
            let ins: Vec<(Option<WireType>, Span)> =
                sig.params.iter().map(|p| (p.1.clone(), p.2)).collect();
            let outs: Vec<Option<WireType>> = sig.outputs.iter().map(|o| o.0.clone()).collect();
            let def_span = sig.def.name.span;
            let hypers = self.call_hypers(i, index, span);
            let Some(hypers) = hypers else {
                for a in args {
                    let v = self.expr(a);
                    self.touch(&v);
                }
                return Val::Error;
            };
            return self.composite(
                Callee::Diagram(name.to_string()),
                hypers,
                ins,
                outs,
                def_span,
                args,
                span,
            );
        }
        // `max` and `min` with brackets are reductions (primitives); without, elementwise or
        // of numbers.
        if let Some(f) = ConstFn::named(name)
            && (!is_primitive(name)
                || (index.is_none() && matches!(f, ConstFn::Max | ConstFn::Min)))
        {
            return self.const_fn(f, callee, index, args, span);
        }
        if is_primitive(name) {
            return self.prim(callee, index, args, span);
        }
        let d = Diagnostic::new(Code::UnknownBox, format!("no box or diagram `{name}`"))
            .primary(callee.span, "not defined");
        let d = if self.cx.suggest() {
            let mut cands: Vec<&str> = primitive_names().collect();
            cands.extend(ConstFn::ALL.iter().map(|(n, _, _)| *n));
            cands.extend(self.cx.sig_by_name.keys().map(String::as_str));
            cands.extend(self.hypers.iter().map(|h| h.name.as_str()));
            did_you_mean(d, name, cands)
        } else {
            d
        };
        self.cx
            .error(d.help_if_none("define it with `diagram`, or `use` the module that does"));
        for a in args {
            let v = self.expr(a);
            self.touch(&v);
        }
        Val::Error
    }

    /// A function of numbers that is not also an elementwise box (`pow`, `min`, `max`): its
    /// arguments must be numbers known when the model is built.
    fn const_fn(
        &mut self,
        f: ConstFn,
        callee: &ast::Name,
        index: Option<&ast::IndexArgs>,
        args: &[ast::Expr],
        span: Span,
    ) -> Val {
        let name = f.name();
        let vals: Vec<(Val, Span)> = args.iter().map(|a| (self.expr(a), a.span())).collect();
        for (v, _) in &vals {
            self.touch(v);
        }
        let mut usage = format!(
            "`{name}({})` of numbers (sizes, hyperparameters, literals)",
            if f.arity() == 2 { "a, b" } else { "a" }
        );
        if matches!(f, ConstFn::Max | ConstFn::Min) {
            usage = format!(
                "`{name}(a, b)`, of numbers or elementwise of wires; along an axis, the reduction \
                 `{name}[AXIS](x)`"
            );
        }
        if let Some(ix) = index {
            self.cx.error(
                Diagnostic::new(Code::BadIndexArgs, format!("`{name}` takes no brackets"))
                    .primary(ix.span, "not expected here")
                    .help(format!("it is written {usage}")),
            );
            return Val::Error;
        }
        if vals.len() != f.arity() {
            self.cx.error(
                Diagnostic::new(
                    Code::Arity,
                    format!(
                        "`{name}` takes {} argument(s) but is given {}",
                        f.arity(),
                        vals.len()
                    ),
                )
                .primary(span, format!("{} given", vals.len()))
                .help(format!("it is written {usage}")),
            );
            return Val::Error;
        }
        if vals.iter().any(|(v, _)| matches!(v, Val::Error)) {
            return Val::Error;
        }
        if matches!(
            f,
            ConstFn::Pow | ConstFn::Min | ConstFn::Max | ConstFn::Clamp
        ) && vals
            .iter()
            .any(|(v, _)| matches!(v, Val::Wire(_) | Val::Tuple(_)))
        {
            return self.wire_fn(f, callee, vals, span);
        }
        let mut consts = Vec::new();
        for (v, s) in vals {
            match v {
                Val::Const(c) => consts.push(c),
                Val::Error => return Val::Error,
                _ => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::BadIndexArgs,
                            format!("`{name}` of a wire is not in the language yet"),
                        )
                        .primary(s, "a wire, not a number")
                        .secondary(callee.span, format!("`{name}` takes numbers"))
                        .help(format!(
                            "it is written {usage}; `docs/language.md` lists what wires cannot do yet"
                        )),
                    );
                    return Val::Error;
                }
            }
        }
        Val::Const(Const::Fn(f, consts))
    }

    /// `pow(x, c)`, `max(a, b)`, `min(a, b)` and `clamp(x, lo, hi)` where an argument is a
    /// wire: elementwise boxes. A number beside a wire is a constant wire of its type.
    fn wire_fn(
        &mut self,
        f: ConstFn,
        callee: &ast::Name,
        vals: Vec<(Val, Span)>,
        span: Span,
    ) -> Val {
        let name = f.name();
        if f == ConstFn::Pow {
            let mut it = vals.into_iter();
            let ((x, xs), (e, es)) = (it.next().expect("arity 2"), it.next().expect("arity 2"));
            let Val::Const(c) = e else {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, "the exponent of `pow` must be a number")
                        .primary(es, "a wire, not a number")
                        .secondary(callee.span, "`pow(x, c)` raises a wire to a constant power")
                        .help("for a number to a wire's power write `exp(x * log(c))`"),
                );
                return Val::Error;
            };
            let Some(w) = self.float_arg(x, xs) else {
                return Val::Error;
            };
            return self.unary(Op::Pow(c), w, span);
        }
        // The first wire gives the type the numbers are filled to.
        let mut wires: Vec<(Option<WireId>, Option<Const>, Span)> = Vec::new();
        for (v, s) in vals {
            match v {
                Val::Const(c) => wires.push((None, Some(c), s)),
                other => match self.float_arg(other, s) {
                    Some(w) => wires.push((Some(w), None, s)),
                    None => return Val::Error,
                },
            }
        }
        let (first, first_span) = wires
            .iter()
            .find_map(|(w, _, s)| w.map(|w| (w, *s)))
            .expect("called with a wire");
        let ty = self.wire_ty(first).clone();
        let mut args: Vec<(WireId, Span)> = Vec::new();
        for (w, c, s) in wires {
            let w = match (w, c) {
                (Some(w), _) => {
                    if !self.same_axes(first, w, name, first_span, s, span) {
                        return Val::Error;
                    }
                    w
                }
                (None, Some(c)) => {
                    let op = Op::Fill {
                        axes: ty.axes.clone(),
                        value: c,
                    };
                    match self.box1(op, vec![], ty.clone(), vec![], s) {
                        Val::Wire(w) => w,
                        _ => return Val::Error,
                    }
                }
                (None, None) => unreachable!("a wire or a number"),
            };
            args.push((w, s));
        }
        let bin = |this: &mut Self, op: Op, a: WireId, b: WireId| -> Option<WireId> {
            match this.box1(op, vec![a, b], ty.clone(), vec![], span) {
                Val::Wire(w) => Some(w),
                _ => None,
            }
        };
        let out = match f {
            ConstFn::Max => bin(self, Op::Max, args[0].0, args[1].0),
            ConstFn::Min => bin(self, Op::Min, args[0].0, args[1].0),
            // clamp(x, lo, hi) = min(max(x, lo), hi).
            _ => bin(self, Op::Max, args[0].0, args[1].0)
                .and_then(|m| bin(self, Op::Min, m, args[2].0)),
        };
        out.map_or(Val::Error, Val::Wire)
    }

    /// A call of a diagram (or of a diagram-valued hyperparameter) on wires.
    #[allow(clippy::too_many_arguments)]
    fn composite(
        &mut self,
        callee: Callee,
        hypers: Vec<(String, HyperArg)>,
        ins: Vec<(Option<WireType>, Span)>,
        outs: Vec<Option<WireType>>,
        def_span: Span,
        args: &[ast::Expr],
        span: Span,
    ) -> Val {
        let vals: Vec<(Val, Span)> = args.iter().map(|a| (self.expr(a), a.span())).collect();
        for (v, _) in &vals {
            self.touch(v);
        }
        let name = match &callee {
            Callee::Diagram(n) | Callee::Hyper(n) => n.clone(),
        };
        if vals.len() != ins.len() {
            self.cx.error(
                Diagnostic::new(
                    Code::Arity,
                    format!(
                        "`{name}` takes {} input(s) but is given {}",
                        ins.len(),
                        vals.len()
                    ),
                )
                .primary(span, format!("{} given here", vals.len()))
                .secondary(def_span, format!("{} declared here", ins.len())),
            );
            return Val::Error;
        }
        let mut wires = Vec::new();
        let mut ok = true;
        for ((v, vspan), (want, want_span)) in vals.into_iter().zip(ins) {
            let Some(w) = self.wire_arg(v, vspan) else {
                ok = false;
                continue;
            };
            let Some(want) = want else {
                ok = false;
                continue;
            };
            let have = self.wire_ty(w).clone();
            if have != want {
                let (h, wt) = (self.ty_str(&have), self.ty_str(&want));
                self.cx.error(
                    Diagnostic::new(
                        Code::TypeMismatch,
                        format!("`{name}` expects {wt} here, but this is {h}"),
                    )
                    .primary(vspan, format!("this is {h}"))
                    .secondary(want_span, format!("expects {wt}")),
                );
                ok = false;
                continue;
            }
            wires.push(w);
        }
        if !ok || outs.iter().any(Option::is_none) {
            return Val::Error;
        }
        let out_types: Vec<WireType> = outs.into_iter().flatten().collect();
        match self.add_box(Op::Call { callee, hypers }, wires, out_types, vec![], span) {
            Some(o) if o.len() == 1 => Val::Wire(o[0]),
            Some(o) => Val::Tuple(o),
            None => Val::Error,
        }
    }

    /// Hyperparameters passed to diagram `i`: positional then named; missing ones need defaults.
    fn call_hypers(
        &mut self,
        i: usize,
        index: Option<&ast::IndexArgs>,
        span: Span,
    ) -> Option<Vec<(String, HyperArg)>> {
        let decls: Vec<(String, Option<HyperType>, bool, Span)> = self.cx.sigs[i]
            .hypers
            .iter()
            .map(|h: &HyperSig| {
                (
                    h.name.clone(),
                    h.ty.clone(),
                    h.default.is_some() || h.ty.is_none(),
                    h.span,
                )
            })
            .collect();
        let dname = self.cx.sigs[i].name.clone();
        let mut given: Vec<Option<(HyperArg, Span)>> = vec![None; decls.len()];
        let mut ok = true;
        // Given, even if with a bad value (reported): not also "missing".
        let mut attempted: Vec<bool> = vec![false; decls.len()];
        if let Some(ix) = index {
            if let Some(rhs) = &ix.rhs {
                let at = rhs.first().map_or(ix.span, |v| v.span());
                self.cx.error(
                    Diagnostic::new(
                        Code::BadIndexArgs,
                        format!(
                            "`{dname}` is a diagram: its brackets take hyperparameters, not `->`"
                        ),
                    )
                    .primary(at, "unexpected here")
                    .help(format!("write `{dname}[value, name = value](...)`")),
                );
                ok = false;
            }
            let mut assign = |this: &mut Self, k: usize, v: &ast::Value| {
                let (hname, hty, _, hspan) = decls[k].clone();
                attempted[k] = true;
                if let Some((_, prev)) = &given[k] {
                    this.cx.error(
                        Diagnostic::new(
                            Code::Duplicate,
                            format!("hyperparameter `{hname}` is given twice"),
                        )
                        .primary(v.span(), "given again here")
                        .secondary(*prev, "first given here"),
                    );
                    return false;
                }
                let Some(hty) = hty else { return false };
                match this.hyper_value(v, &hty, hspan) {
                    Some(a) => {
                        given[k] = Some((a, v.span()));
                        true
                    }
                    None => false,
                }
            };
            for (k, v) in ix.lhs.iter().enumerate() {
                if k >= decls.len() {
                    self.cx.error(
                        Diagnostic::new(
                            Code::BadIndexArgs,
                            format!("`{dname}` takes {} hyperparameter(s)", decls.len()),
                        )
                        .primary(v.span(), "one too many"),
                    );
                    ok = false;
                    break;
                }
                ok &= assign(self, k, v);
            }
            for (n, v) in &ix.named {
                match decls.iter().position(|d| d.0 == n.text) {
                    Some(k) => ok &= assign(self, k, v),
                    None => {
                        let d = Diagnostic::new(
                            Code::UnknownOption,
                            format!("`{dname}` has no hyperparameter `{}`", n.text),
                        )
                        .primary(n.span, "unknown");
                        let d = did_you_mean(d, &n.text, decls.iter().map(|d| d.0.as_str()));
                        self.cx.error(d);
                        ok = false;
                    }
                }
            }
        }
        let missing: Vec<usize> = (0..decls.len())
            .filter(|k| given[*k].is_none() && !attempted[*k] && !decls[*k].2)
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing
                .iter()
                .map(|k| format!("`{}`", decls[*k].0))
                .collect();
            let mut d = Diagnostic::new(
                Code::HyperMissing,
                format!("`{dname}` needs {}", names.join(", ")),
            )
            .primary(span, "not given here");
            for k in &missing {
                d = d.secondary(decls[*k].3, "declared without a default");
            }
            self.cx.error(d.help(format!(
                "pass it in brackets: `{dname}[{} = ...](...)`",
                decls[missing[0]].0
            )));
            ok = false;
        }
        ok.then(|| {
            given
                .into_iter()
                .zip(&decls)
                .filter_map(|(g, d)| g.map(|(a, _)| (d.0.clone(), a)))
                .collect()
        })
    }

    /// A hyperparameter value of the expected type.
    fn hyper_value(&mut self, v: &ast::Value, ty: &HyperType, decl_span: Span) -> Option<HyperArg> {
        match ty {
            HyperType::Diagram { .. } => match v {
                ast::Value::Name(n) => self
                    .cx
                    .check_diagram_value(n, ty, decl_span, self.hypers)
                    .map(HyperArg::Diagram),
                other => {
                    self.cx.error(
                        Diagnostic::new(Code::HyperMismatch, "a diagram is expected here")
                            .primary(other.span(), "not a diagram name")
                            .secondary(decl_span, "declared as a diagram"),
                    );
                    None
                }
            },
            HyperType::Int | HyperType::Float => {
                let c = self.const_value(v)?;
                if *ty == HyperType::Int {
                    let bad = match &c {
                        Const::Num(x) => x.fract() != 0.0 || *x < 0.0,
                        Const::Hyper(h) => self
                            .hypers
                            .iter()
                            .any(|x| x.name == *h && x.ty != Some(HyperType::Int)),
                        _ => false,
                    };
                    if bad {
                        self.cx.error(
                            Diagnostic::new(Code::HyperMismatch, "an `int` is expected here")
                                .primary(v.span(), "not a whole number")
                                .secondary(decl_span, "declared as `int`"),
                        );
                        return None;
                    }
                }
                Some(HyperArg::Num(c))
            }
        }
    }

    /// A number in brackets: a literal, a number hyperparameter, or an axis (its size).
    fn const_value(&mut self, v: &ast::Value) -> Option<Const> {
        match v {
            ast::Value::Num(x, _) => Some(Const::Num(*x)),
            ast::Value::Empty(span) => {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, "a number is expected here")
                        .primary(*span, "an empty axis list"),
                );
                None
            }
            ast::Value::Name(n) => self.lookup_const(n),
        }
    }

    fn lookup_const(&mut self, n: &ast::Name) -> Option<Const> {
        if let Some(h) = self.hypers.iter().find(|h| h.name == n.text) {
            return match h.ty {
                Some(HyperType::Int | HyperType::Float) => Some(Const::Hyper(n.text.clone())),
                Some(HyperType::Diagram { .. }) => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::HyperMismatch,
                            format!("`{}` is a diagram, not a number", n.text),
                        )
                        .primary(n.span, "a number is expected here"),
                    );
                    None
                }
                None => None,
            };
        }
        if let Some(a) = self.cx.axes.lookup(&n.text) {
            return Some(Const::Size(a));
        }
        let d = Diagnostic::new(
            Code::UnknownWire,
            format!("no hyperparameter or axis `{}`", n.text),
        )
        .primary(n.span, "a number is expected here");
        let mut cands: Vec<&str> = self.hypers.iter().map(|h| h.name.as_str()).collect();
        cands.extend(self.cx.axes.names());
        let d = did_you_mean(d, &n.text, cands);
        self.cx.error(d);
        None
    }

    /// Checks the bracket form of primitive `name`.
    #[allow(clippy::too_many_arguments)]
    fn idx<'a>(
        &mut self,
        name: &str,
        index: Option<&'a ast::IndexArgs>,
        at: Span,
        lhs: Count,
        rhs: Option<Count>,
        options: &[&str],
    ) -> Option<Idx<'a>> {
        let bad = |this: &mut Self, span: Span, what: &str| {
            this.cx.error(
                Diagnostic::new(
                    Code::BadIndexArgs,
                    format!("`{name}` is written `{}`", usage(name)),
                )
                .primary(span, what.to_string()),
            );
            None
        };
        let Some(ix) = index else {
            if lhs.ok(0) && rhs.is_none() {
                return Some(Idx {
                    lhs: NO_VALUES,
                    rhs: NO_VALUES,
                    named: NO_NAMED,
                });
            }
            return bad(self, at, "its brackets are missing");
        };
        let lhs_vals: &[ast::Value] =
            if ix.lhs.len() == 1 && matches!(ix.lhs[0], ast::Value::Empty(_)) {
                &[]
            } else {
                &ix.lhs
            };
        match (&ix.rhs, rhs) {
            (Some(_), None) => return bad(self, ix.span, "it takes no `->`"),
            (None, Some(_)) => return bad(self, ix.span, "it needs `->`"),
            _ => {}
        }
        if !lhs.ok(lhs_vals.len()) {
            return bad(self, ix.span, &format!("{} value(s) given", lhs_vals.len()));
        }
        let rhs_vals: &[ast::Value] = match &ix.rhs {
            Some(r) if r.len() == 1 && matches!(r[0], ast::Value::Empty(_)) => &[],
            Some(r) => r,
            None => NO_VALUES,
        };
        if let Some(c) = rhs
            && !c.ok(rhs_vals.len())
        {
            return bad(
                self,
                ix.span,
                &format!("{} value(s) after `->`", rhs_vals.len()),
            );
        }
        let mut ok = true;
        for (k, (n, _)) in ix.named.iter().enumerate() {
            if !options.contains(&n.text.as_str()) {
                let d = Diagnostic::new(
                    Code::UnknownOption,
                    format!("`{name}` has no option `{}`", n.text),
                )
                .primary(n.span, "unknown option");
                let d = did_you_mean(d, &n.text, options.iter().copied());
                let d = if options.is_empty() {
                    d.help(format!("`{name}` takes no options"))
                } else {
                    d.help_if_none(format!("its options are {}", options.join(", ")))
                };
                self.cx.error(d);
                ok = false;
            } else if let Some((prev, _)) = ix.named[..k].iter().find(|(p, _)| p.text == n.text) {
                self.cx.error(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("option `{}` is given twice", n.text),
                    )
                    .primary(n.span, "again here")
                    .secondary(prev.span, "first here"),
                );
                ok = false;
            }
        }
        ok.then_some(Idx {
            lhs: lhs_vals,
            rhs: rhs_vals,
            named: &ix.named,
        })
    }

    fn axis_value(&mut self, v: &ast::Value) -> Option<AxisId> {
        match v {
            ast::Value::Name(n) => self.cx.axis(n),
            other => {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, "an axis name is expected here")
                        .primary(other.span(), "not an axis"),
                );
                None
            }
        }
    }

    /// Distinct axes from a list of values.
    fn axis_list(&mut self, vs: &[ast::Value]) -> Option<Vec<AxisId>> {
        let mut out: Vec<AxisId> = Vec::new();
        let mut ok = true;
        for v in vs {
            match self.axis_value(v) {
                Some(a) if out.contains(&a) => {
                    self.cx.error(
                        Diagnostic::new(
                            Code::AxisPresent,
                            format!("axis `{}` is listed twice", self.cx.axes.name(a)),
                        )
                        .primary(v.span(), "repeated here"),
                    );
                    ok = false;
                }
                Some(a) => out.push(a),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn option<'a>(idx: &Idx<'a>, name: &str) -> Option<&'a ast::Value> {
        idx.named
            .iter()
            .rev()
            .find(|(n, _)| n.text == name)
            .map(|(_, v)| v)
    }

    fn bool_option(&mut self, idx: &Idx, name: &str, default: bool) -> Option<bool> {
        match Self::option(idx, name) {
            None => Some(default),
            Some(ast::Value::Name(n)) if n.text == "true" => Some(true),
            Some(ast::Value::Name(n)) if n.text == "false" => Some(false),
            Some(v) => {
                self.cx.error(
                    Diagnostic::new(Code::BadIndexArgs, format!("`{name}` is `true` or `false`"))
                        .primary(v.span(), "not a boolean"),
                );
                None
            }
        }
    }

    /// The `per = AXIS` option of learned boxes: per-lane parameters over an enclosing region.
    fn per_option(&mut self, idx: &Idx) -> Option<Vec<AxisId>> {
        let Some(v) = Self::option(idx, "per") else {
            return Some(vec![]);
        };
        let a = self.axis_value(v)?;
        if !self.lane_axes().contains(&a) {
            let name = self.cx.axes.name(a).to_string();
            self.cx.error(
                Diagnostic::new(Code::SimdPerLane, format!("`per = {name}` outside a `simd {name}` region"))
                    .primary(v.span(), format!("no enclosing region runs over `{name}`"))
                    .help(format!("per-lane parameters belong inside `simd {name} {{ ... }}`; outside it, put `{name}` in the box's output axes")),
            );
            return None;
        }
        Some(vec![a])
    }

    /// A positive whole number: a literal, an `int` hyperparameter, or an axis size.
    fn whole_number(&mut self, c: &Const, span: Span, what: &str) -> bool {
        let ok = match c {
            Const::Num(x) => x.fract() == 0.0 && *x >= 1.0,
            Const::Hyper(h) => self
                .hypers
                .iter()
                .any(|x| x.name == *h && x.ty == Some(HyperType::Int)),
            Const::Size(_) => true,
            _ => false,
        };
        if !ok {
            self.cx.error(
                Diagnostic::new(
                    Code::BadIndexArgs,
                    format!("{what} is a positive whole number"),
                )
                .primary(span, "not a positive whole number")
                .help(
                    "write a number like 64, an `int` hyperparameter, or an axis name (its size)",
                ),
            );
        }
        ok
    }

    /// A probability: a literal in [0, 1) or a `float` hyperparameter (checked when bound).
    fn probability(&mut self, c: &Const, span: Span) -> bool {
        let ok = match c {
            Const::Num(x) => (0.0..1.0).contains(x),
            Const::Hyper(h) => self
                .hypers
                .iter()
                .any(|x| x.name == *h && x.ty == Some(HyperType::Float)),
            _ => false,
        };
        if !ok {
            self.cx.error(
                Diagnostic::new(
                    Code::BadIndexArgs,
                    "a dropout probability is a number in [0, 1)",
                )
                .primary(span, "not a probability")
                .help("write a number like 0.1, or a `float` hyperparameter"),
            );
        }
        ok
    }

    /// E0204 unless wire `w` (written at `ws`) has axis `a` (named at `at`).
    fn need_axis(&mut self, w: WireId, ws: Span, a: AxisId, at: Span) -> bool {
        let ty = self.wire_ty(w).clone();
        if ty.has(a) {
            return true;
        }
        let name = self.cx.axes.name(a).to_string();
        let size = self.cx.axes.size(a).clone();
        let same: Vec<&str> = ty
            .axes
            .iter()
            .filter(|x| *self.cx.axes.size(**x) == size)
            .map(|x| self.cx.axes.name(*x))
            .collect();
        let help = match same.first() {
            Some(s) => {
                format!("it has `{s}`, which has the same size: `rename[{s} -> {name}](...)`")
            }
            None => format!("only a wire with `{name}` can go here; check which wire is passed"),
        };
        let label = self.wire_label(w);
        let tys = self.ty_str(&ty);
        self.cx.error(
            Diagnostic::new(Code::MissingAxis, format!("{label} has no axis `{name}`"))
                .primary(ws, format!("this is {tys}"))
                .secondary(at, format!("`{name}` is required here"))
                .help(help),
        );
        false
    }

    /// E0206 if wire `w` already has axis `a`.
    fn fresh_axis(&mut self, w: WireId, ws: Span, a: AxisId, at: Span) -> bool {
        let ty = self.wire_ty(w).clone();
        if !ty.has(a) {
            return true;
        }
        let name = self.cx.axes.name(a).to_string();
        let label = self.wire_label(w);
        let tys = self.ty_str(&ty);
        self.cx.error(
            Diagnostic::new(
                Code::AxisPresent,
                format!("{label} already has axis `{name}`"),
            )
            .primary(at, format!("`{name}` would appear twice"))
            .secondary(ws, format!("this is {tys}"))
            .help("a wire has each axis once: use another axis name"),
        );
        false
    }

    fn same_size(&mut self, a: AxisId, b: AxisId, span: Span, what: &str) -> bool {
        let (sa, sb) = (self.cx.axes.size(a).clone(), self.cx.axes.size(b).clone());
        if sa == sb || self.cx.poisoned_axes.contains(&a) || self.cx.poisoned_axes.contains(&b) {
            return true;
        }
        let (na, nb) = (
            self.cx.axes.name(a).to_string(),
            self.cx.axes.name(b).to_string(),
        );
        let mut d = Diagnostic::new(
            Code::SizeMismatch,
            format!("{what} needs `{na}` and `{nb}` of the same size, but they are {sa} and {sb}"),
        )
        .primary(span, format!("`{na}` is {sa}, `{nb}` is {sb}"));
        for (id, n) in [(a, &na), (b, &nb)] {
            if let Some(s) = self.cx.axes.get(id).span {
                d = d.secondary(s, format!("`{n}` declared here"));
            }
        }
        self.cx.error(d.help(format!(
            "declare one in terms of the other, e.g. `axis {nb} = {na}`"
        )));
        false
    }

    /// A primitive box.
    fn prim(
        &mut self,
        callee: &ast::Name,
        index: Option<&ast::IndexArgs>,
        args: &[ast::Expr],
        span: Span,
    ) -> Val {
        self.prim_inner(callee, index, args, span)
            .unwrap_or(Val::Error)
    }

    /// [`Self::prim`], with `None` for "reported already".
    fn prim_inner(
        &mut self,
        callee: &ast::Name,
        index: Option<&ast::IndexArgs>,
        args: &[ast::Expr],
        span: Span,
    ) -> Option<Val> {
        let name = callee.text.as_str();
        let vals: Vec<(Val, Span)> = args.iter().map(|a| (self.expr(a), a.span())).collect();
        for (v, _) in &vals {
            self.touch(v);
        }
        let ix_span = index.map_or(callee.span, |i| i.span);
        let wire_count = match name {
            "posenc" | "param" | "iota" | "random" => Some(0),
            "add" | "sub" | "mul" | "div" | "dot" | "outer" | "scan" => Some(2),
            "learner" => None,
            _ => Some(1),
        };
        if let Some(n) = wire_count
            && vals.len() != n
        {
            self.cx.error(
                Diagnostic::new(
                    Code::Arity,
                    format!("`{name}` takes {n} input(s) but is given {}", vals.len()),
                )
                .primary(span, format!("{} given", vals.len()))
                .help(format!("it is written `{}`", usage(name))),
            );
            return None;
        }
        if name == "learner" && vals.is_empty() {
            self.cx.error(
                Diagnostic::new(Code::Arity, "`learner` takes at least one input")
                    .primary(span, "none given"),
            );
            return None;
        }
        use Count::*;
        Some(match name {
            "add" | "sub" | "mul" | "div" => {
                self.idx(name, index, ix_span, Exactly(0), None, &[])?;
                let op = match name {
                    "add" => BinOp::Add,
                    "sub" => BinOp::Sub,
                    "mul" => BinOp::Mul,
                    _ => BinOp::Div,
                };
                let mut it = vals.into_iter();
                let ((a, sa), (b, sb)) = (it.next()?, it.next()?);
                self.binop(op, a, b, sa, sb, callee.span)
            }
            "scale" | "shift" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let c = self.const_value(&idx.lhs[0])?;
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                self.unary(
                    if name == "scale" {
                        Op::Scale(c)
                    } else {
                        Op::Shift(c)
                    },
                    w,
                    span,
                )
            }
            "dot" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let a = self.axis_value(&idx.lhs[0])?;
                let at = idx.lhs[0].span();
                let mut it = vals.into_iter();
                let ((x, xs), (y, ys)) = (it.next()?, it.next()?);
                let (x, y) = (self.float_arg(x, xs), self.float_arg(y, ys));
                let (x, y) = (x?, y?);
                let okx = self.need_axis(x, xs, a, at);
                let oky = self.need_axis(y, ys, a, at);
                if !(okx && oky) {
                    return None;
                }
                let (tx, ty) = (self.wire_ty(x).clone(), self.wire_ty(y).clone());
                let mut axes: Vec<AxisId> = tx.axes.iter().copied().filter(|b| *b != a).collect();
                axes.extend(ty.axes.iter().copied().filter(|b| *b != a && !tx.has(*b)));
                self.box1(Op::Dot(a), vec![x, y], WireType::values(axes), vec![], span)
            }
            "outer" => {
                self.idx(name, index, ix_span, Exactly(0), None, &[])?;
                let mut it = vals.into_iter();
                let ((x, xs), (y, ys)) = (it.next()?, it.next()?);
                let (x, y) = (self.float_arg(x, xs), self.float_arg(y, ys));
                let (x, y) = (x?, y?);
                let (tx, ty) = (self.wire_ty(x).clone(), self.wire_ty(y).clone());
                // Shared axes are lane-wise (zipped); the others multiply out.
                let mut axes = tx.axes.clone();
                axes.extend(ty.axes.iter().copied().filter(|a| !tx.has(*a)));
                self.box1(Op::Outer, vec![x, y], WireType::values(axes), vec![], span)
            }
            "sum" | "softmax" | "normalise" | "cumsum" | "max" | "min" | "logsumexp"
            | "rotate_half" => {
                let options: &[&str] = match name {
                    "cumsum" => &["decay"],
                    "normalise" => &["eps"],
                    _ => &[],
                };
                let idx = self.idx(name, index, ix_span, Exactly(1), None, options)?;
                let decay = match Self::option(&idx, "decay") {
                    Some(v) => Some(self.const_value(v)?),
                    None => None,
                };
                let eps = match Self::option(&idx, "eps") {
                    Some(v) => Some(self.const_value(v)?),
                    None => None,
                };
                let a = self.axis_value(&idx.lhs[0])?;
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                if !self.need_axis(w, vs, a, idx.lhs[0].span()) {
                    return None;
                }
                let ty = self.wire_ty(w).clone();
                match name {
                    "sum" => self.box1(Op::Sum(a), vec![w], ty.without(a), vec![], span),
                    "softmax" => self.box1(Op::Softmax(a), vec![w], ty, vec![], span),
                    "rotate_half" => self.box1(Op::RotateHalf(a), vec![w], ty, vec![], span),
                    "normalise" => match eps {
                        None => self.box1(Op::Normalise(a), vec![w], ty, vec![], span),
                        // `normalise[a, eps = C](x)` is `x / broadcast[a](sum[a](x) + C)`.
                        Some(c) => {
                            let Val::Wire(s) =
                                self.box1(Op::Sum(a), vec![w], ty.without(a), vec![], span)
                            else {
                                return None;
                            };
                            let Val::Wire(s) = self.unary(Op::Shift(c), s, span) else {
                                return None;
                            };
                            let wide = ty.without(a).with_front(a);
                            let Val::Wire(s) =
                                self.box1(Op::Expand(a), vec![s], wide, vec![], span)
                            else {
                                return None;
                            };
                            self.box1(Op::Div, vec![w, s], ty, vec![], span)
                        }
                    },
                    "max" | "min" | "logsumexp" => {
                        let r = Reduction::named(name).expect("a reduction's name");
                        self.box1(Op::Reduce(r, a), vec![w], ty.without(a), vec![], span)
                    }
                    _ => match decay {
                        None => self.box1(Op::Cumsum(a), vec![w], ty, vec![], span),
                        // `cumsum[a, decay = C](x)` is `scan[a](fill[...](C), x)`.
                        Some(c) => {
                            let axes = ty.axes.clone();
                            let Val::Wire(g) = self.box1(
                                Op::Fill { axes, value: c },
                                vec![],
                                ty.clone(),
                                vec![],
                                span,
                            ) else {
                                return None;
                            };
                            self.box1(Op::Scan(a), vec![g, w], ty, vec![], span)
                        }
                    },
                }
            }
            "scan" if index.is_some_and(|ix| ix.rhs.is_some()) => {
                // `scan[A, C -> R](g, x)`: y_t = g_t y_(t-1) + x_t with g_t a matrix over
                // [R, C] applied to the state's `R` (read as `C`).
                let idx = self.idx(name, index, ix_span, Exactly(2), Some(Exactly(1)), &[])?;
                let a = self.axis_value(&idx.lhs[0]);
                let c = self.axis_value(&idx.lhs[1]);
                let r = self.axis_value(&idx.rhs[0]);
                let (a, c, r) = (a?, c?, r?);
                let mut it = vals.into_iter();
                let ((g, gs), (x, xs)) = (it.next()?, it.next()?);
                let (g, x) = (self.float_arg(g, gs), self.float_arg(x, xs));
                let (g, x) = (g?, x?);
                let mut ok = self.need_axis(x, xs, a, idx.lhs[0].span())
                    && self.need_axis(x, xs, r, idx.rhs[0].span());
                if ok && self.wire_ty(x).has(c) {
                    let (cn, rn) = (
                        self.cx.axes.name(c).to_string(),
                        self.cx.axes.name(r).to_string(),
                    );
                    let xts = self.ty_str(&self.wire_ty(x).clone());
                    self.cx.error(
                        Diagnostic::new(
                            Code::AxisPresent,
                            format!("the state already has axis `{cn}`, the gate's column axis"),
                        )
                        .primary(idx.lhs[1].span(), format!("`{cn}` stands for the previous state's `{rn}`"))
                        .secondary(xs, format!("this is {xts}"))
                        .help(format!(
                            "the gate's columns need an axis of `{rn}`'s size that the state does not carry: declare one (`axis {rn}_prev = {rn}`)"
                        )),
                    );
                    ok = false;
                }
                ok = ok
                    && self.need_axis(g, gs, r, idx.rhs[0].span())
                    && self.need_axis(g, gs, c, idx.lhs[1].span());
                if ok && (a == r || a == c || r == c) {
                    self.cx.error(
                        Diagnostic::new(
                            Code::AxisPresent,
                            "`scan[A, C -> R]` needs three different axes",
                        )
                        .primary(ix_span, "an axis named twice")
                        .help(
                            "`A` is the axis scanned along, `R` the state's axis the gate \
                             maps into, `C` a copy of `R` (`axis C = R`) for the previous state",
                        ),
                    );
                    ok = false;
                }
                ok = ok && self.same_size(r, c, ix_span, "a matrix gate");
                if ok {
                    // The gate's other axes must be the state's: it may lack some (broadcast).
                    let xt = self.wire_ty(x).clone();
                    let extra: Vec<AxisId> = self
                        .wire_ty(g)
                        .axes
                        .iter()
                        .copied()
                        .filter(|b| *b != c && !xt.has(*b))
                        .collect();
                    if let Some(b) = extra.first() {
                        let bn = self.cx.axes.name(*b).to_string();
                        let (gt, xts) = (self.ty_str(&self.wire_ty(g).clone()), self.ty_str(&xt));
                        self.cx.error(
                            Diagnostic::new(
                                Code::MissingAxis,
                                format!("the gate has axis `{bn}`, which the state does not"),
                            )
                            .primary(gs, format!("this is {gt}"))
                            .secondary(xs, format!("this is {xts}"))
                            .help(
                                "the gate's axes are the state's, plus the copy `C`; sum or \
                                 drop the others first",
                            ),
                        );
                        ok = false;
                    }
                }
                if !ok {
                    return None;
                }
                let ty = self.wire_ty(x).clone();
                self.box1(
                    Op::MatScan {
                        along: a,
                        row: r,
                        col: c,
                    },
                    vec![g, x],
                    ty,
                    vec![],
                    span,
                )
            }
            "scan" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let a = self.axis_value(&idx.lhs[0])?;
                let mut it = vals.into_iter();
                let ((g, gs), (x, xs)) = (it.next()?, it.next()?);
                let (g, x) = (self.float_arg(g, gs), self.float_arg(x, xs));
                let (g, x) = (g?, x?);
                if !self.need_axis(x, xs, a, idx.lhs[0].span())
                    || !self.same_axes(g, x, "scan", gs, xs, span)
                {
                    return None;
                }
                let ty = self.wire_ty(x).clone();
                self.box1(Op::Scan(a), vec![g, x], ty, vec![], span)
            }
            "causal" | "causal_zero" => {
                let idx = self.idx(
                    name,
                    index,
                    ix_span,
                    Exactly(2),
                    None,
                    &["strict", "window"],
                )?;
                let q = self.axis_value(&idx.lhs[0]);
                let k = self.axis_value(&idx.lhs[1]);
                let strict = self.bool_option(&idx, "strict", false);
                let window = match Self::option(&idx, "window") {
                    None => Some(None),
                    Some(v) => {
                        let c = self.const_value(v);
                        c.filter(|c| self.whole_number(c, v.span(), "a mask's window"))
                            .map(Some)
                    }
                };
                let (q, k, strict, window) = (q?, k?, strict?, window?);
                let band = Band { strict, window };
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                let okq = self.need_axis(w, vs, q, idx.lhs[0].span());
                let okk = self.need_axis(w, vs, k, idx.lhs[1].span());
                if !(okq && okk && self.same_size(q, k, ix_span, &format!("`{name}`"))) {
                    return None;
                }
                if q == k {
                    self.cx.error(
                        Diagnostic::new(
                            Code::BadIndexArgs,
                            format!("`{name}` relates two different token axes"),
                        )
                        .primary(ix_span, "the same axis twice")
                        .help("rename the key side first: `rename[tok -> src](k)`"),
                    );
                    return None;
                }
                let ty = self.wire_ty(w).clone();
                let op = if name == "causal" {
                    Op::Causal {
                        query: q,
                        key: k,
                        band,
                    }
                } else {
                    Op::CausalZero {
                        query: q,
                        key: k,
                        band,
                    }
                };
                self.box1(op, vec![w], ty, vec![], span)
            }
            "rename" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), Some(Exactly(1)), &[])?;
                let a = self.axis_value(&idx.lhs[0]);
                let b = self.axis_value(&idx.rhs[0]);
                let (a, b) = (a?, b?);
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_or_index(v, vs)?;
                if !self.need_axis(w, vs, a, idx.lhs[0].span())
                    || !self.fresh_axis(w, vs, b, idx.rhs[0].span())
                {
                    return None;
                }
                if !self.same_size(a, b, ix_span, "`rename`") {
                    return None;
                }
                let mut ty = self.wire_ty(w).clone();
                for x in &mut ty.axes {
                    if *x == a {
                        *x = b;
                    }
                }
                self.box1(Op::Rename { from: a, to: b }, vec![w], ty, vec![], span)
            }
            "split" | "merge" => {
                let idx = if name == "split" {
                    self.idx(name, index, ix_span, Exactly(1), Some(AtLeast(1)), &[])?
                } else {
                    self.idx(name, index, ix_span, AtLeast(1), Some(Exactly(1)), &[])?
                };
                let from = self.axis_list(idx.lhs);
                let to = self.axis_list(idx.rhs);
                let (from, to) = (from?, to?);
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_or_index(v, vs)?;
                let mut ok = true;
                for (a, at) in from.iter().zip(idx.lhs) {
                    ok &= self.need_axis(w, vs, *a, at.span());
                }
                for (b, at) in to.iter().zip(idx.rhs) {
                    ok &= !from.contains(b) && self.fresh_axis(w, vs, *b, at.span());
                }
                if !ok {
                    return None;
                }
                let (sf, st) = (self.cx.axes.product(&from), self.cx.axes.product(&to));
                let poisoned = from
                    .iter()
                    .chain(&to)
                    .any(|a| self.cx.poisoned_axes.contains(a));
                if sf != st && !poisoned {
                    let show = |ids: &[AxisId], this: &Self| {
                        ids.iter()
                            .map(|a| this.cx.axes.name(*a))
                            .collect::<Vec<_>>()
                            .join(" * ")
                    };
                    let (nf, nt) = (show(&from, self), show(&to, self));
                    self.cx.error(
                        Diagnostic::new(Code::ReshapeSize, format!("`{name}` must keep the number of elements: {nf} is {sf}, {nt} is {st}"))
                            .primary(ix_span, format!("{sf} elements become {st}"))
                            .help("a reshape is valid only when the sizes multiply; check the axis declarations"),
                    );
                    return None;
                }
                let old = self.wire_ty(w).clone();
                let mut axes = Vec::new();
                let mut placed = false;
                for x in &old.axes {
                    if from.contains(x) {
                        if !placed {
                            axes.extend(to.iter().copied());
                            placed = true;
                        }
                    } else {
                        axes.push(*x);
                    }
                }
                let ty = WireType {
                    axes,
                    index_of: old.index_of,
                };
                let op = if name == "split" {
                    Op::Split {
                        from: from[0],
                        into: to,
                    }
                } else {
                    Op::Merge { from, into: to[0] }
                };
                self.box1(op, vec![w], ty, vec![], span)
            }
            "broadcast" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let a = self.axis_value(&idx.lhs[0])?;
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_or_index(v, vs)?;
                if !self.fresh_axis(w, vs, a, idx.lhs[0].span()) {
                    return None;
                }
                let ty = self.wire_ty(w).with_front(a);
                self.box1(Op::Expand(a), vec![w], ty, vec![], span)
            }
            "layernorm" => {
                let idx = self.idx(
                    name,
                    index,
                    ix_span,
                    AtLeast(1),
                    None,
                    &["per", "trainable"],
                )?;
                let axes = self.axis_list(idx.lhs)?;
                let per = self.per_option(&idx)?;
                let trainable = self.bool_option(&idx, "trainable", true)?;
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                let mut ok = true;
                for (a, at) in axes.iter().zip(idx.lhs) {
                    ok &= self.need_axis(w, vs, *a, at.span());
                }
                if !ok {
                    return None;
                }
                let dims: Vec<Dim> = axes.iter().map(|a| Dim::Axis(*a)).collect();
                let params = vec![
                    ParamSpec {
                        role: "gain".into(),
                        dims: dims.clone(),
                        per_lane: per.clone(),
                        trainable: true,
                    },
                    ParamSpec {
                        role: "bias".into(),
                        dims,
                        per_lane: per,
                        trainable: true,
                    },
                ];
                let ty = self.wire_ty(w).clone();
                let params = frozen_unless(trainable, params);
                self.box1(Op::LayerNorm(axes), vec![w], ty, params, span)
            }
            "dropout" => {
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let p = self.const_value(&idx.lhs[0])?;
                if !self.probability(&p, idx.lhs[0].span()) {
                    return None;
                }
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                self.unary(Op::Dropout(p), w, span)
            }
            "embed" => {
                let idx = self.idx(
                    name,
                    index,
                    ix_span,
                    Exactly(1),
                    Some(AtLeast(1)),
                    &["per", "trainable"],
                )?;
                let trainable = self.bool_option(&idx, "trainable", true)?;
                let vocab = self.axis_value(&idx.lhs[0]);
                let to = self.axis_list(idx.rhs);
                let per = self.per_option(&idx);
                let (vocab, to, per) = (vocab?, to?, per?);
                let (v, vs) = vals.into_iter().next()?;
                let w = self.wire_arg(v, vs)?;
                let ty = self.wire_ty(w).clone();
                let vname = self.cx.axes.name(vocab).to_string();
                if ty.index_of != Some(vocab) {
                    let tys = self.ty_str(&ty);
                    let msg = match ty.index_of {
                        None => {
                            format!("`embed` looks up indices, but this wire holds values ({tys})")
                        }
                        Some(o) => format!(
                            "`embed[{vname} -> ...]` needs indices into `{vname}`, not into `{}`",
                            self.cx.axes.name(o)
                        ),
                    };
                    self.cx.error(
                        Diagnostic::new(Code::IndexWire, msg)
                            .primary(vs, format!("this is {tys}"))
                            .secondary(
                                idx.lhs[0].span(),
                                format!("indices into `{vname}` expected"),
                            )
                            .help(format!("token ids are typed `[tok] of {vname}`")),
                    );
                    return None;
                }
                let mut ok = true;
                for (b, at) in to.iter().zip(idx.rhs) {
                    ok &= self.fresh_axis(w, vs, *b, at.span());
                }
                if !ok {
                    return None;
                }
                let mut axes = ty.axes.clone();
                axes.extend(to.iter().copied());
                let mut dims = vec![Dim::Axis(vocab)];
                dims.extend(to.iter().map(|a| Dim::Axis(*a)));
                let params = vec![ParamSpec {
                    role: "table".into(),
                    dims,
                    per_lane: per,
                    trainable,
                }];
                self.box1(
                    Op::Embed { vocab, to },
                    vec![w],
                    WireType::values(axes),
                    params,
                    span,
                )
            }
            "posenc" => {
                let idx = self.idx(name, index, ix_span, Exactly(2), None, &[])?;
                let pos = self.axis_value(&idx.lhs[0]);
                let feature = self.axis_value(&idx.lhs[1]);
                let (pos, feature) = (pos?, feature?);
                if pos == feature {
                    self.cx.error(
                        Diagnostic::new(Code::AxisPresent, "`posenc` needs two different axes")
                            .primary(ix_span, "the same axis twice"),
                    );
                    return None;
                }
                self.box1(
                    Op::PosEnc { pos, feature },
                    vec![],
                    WireType::values(vec![pos, feature]),
                    vec![],
                    span,
                )
            }
            "iota" => {
                // Inside a SIMD region over the axis: the lane's own index, a wire of no axes
                // (lowering lifts it to the whole `iota`).
                let idx = self.idx(name, index, ix_span, Exactly(1), None, &[])?;
                let a = self.axis_value(&idx.lhs[0])?;
                let axes = if self.lane_axes().contains(&a) {
                    vec![]
                } else {
                    vec![a]
                };
                self.box1(Op::Iota(a), vec![], WireType::values(axes), vec![], span)
            }
            "fill" => {
                let idx = self.idx(name, index, ix_span, AtLeast(0), None, &[])?;
                let axes = self.axis_list(idx.lhs)?;
                let lanes = self.lane_axes();
                for (a, v) in axes.iter().zip(idx.lhs) {
                    if lanes.contains(a) {
                        let n = self.cx.axes.name(*a).to_string();
                        self.cx.error(
                            Diagnostic::new(
                                Code::SimdAxisInside,
                                format!("inside `simd {n}`, a wire does not carry `{n}`"),
                            )
                            .primary(v.span(), format!("`{n}` is this region's lane axis"))
                            .help(format!(
                                "fill outside the region and let it in, or drop `{n}`: every \
                                 lane gets the same constant"
                            )),
                        );
                        return None;
                    }
                }
                let (v, vs) = vals.into_iter().next()?;
                let value = match v {
                    Val::Const(c) => c,
                    Val::Error => return None,
                    _ => {
                        self.cx.error(
                            Diagnostic::new(Code::BadIndexArgs, "`fill` takes a number")
                                .primary(vs, "a wire, not a number")
                                .help(
                                    "it is written `fill[AXIS, ...](C)` with C a number known \
                                     when the model is built (`fill[tok](1)`, `fill[tok](-log(tok))`)",
                                ),
                        );
                        return None;
                    }
                };
                self.box1(
                    Op::Fill {
                        axes: axes.clone(),
                        value,
                    },
                    vec![],
                    WireType::values(axes),
                    vec![],
                    span,
                )
            }
            "linear" => {
                let idx = self.idx(
                    name,
                    index,
                    ix_span,
                    AtLeast(1),
                    Some(AtLeast(0)),
                    &["bias", "per", "trainable"],
                )?;
                let trainable = self.bool_option(&idx, "trainable", true)?;
                let from = self.axis_list(idx.lhs);
                let to = self.axis_list(idx.rhs);
                let bias = self.bool_option(&idx, "bias", true);
                let per = self.per_option(&idx);
                let (from, to, bias, per) = (from?, to?, bias?, per?);
                let (v, vs) = vals.into_iter().next()?;
                let w = self.float_arg(v, vs)?;
                let mut ok = true;
                for (a, at) in from.iter().zip(idx.lhs) {
                    ok &= self.need_axis(w, vs, *a, at.span());
                }
                let rest = WireType::values(
                    self.wire_ty(w)
                        .axes
                        .iter()
                        .copied()
                        .filter(|a| !from.contains(a))
                        .collect(),
                );
                // Only once the inputs line up: one mistake, one report.
                for (b, at) in to.iter().zip(idx.rhs) {
                    if ok && rest.has(*b) {
                        ok &= self.fresh_axis(w, vs, *b, at.span());
                    }
                }
                if !ok {
                    return None;
                }
                let mut dims: Vec<Dim> = from.iter().map(|a| Dim::Axis(*a)).collect();
                dims.extend(to.iter().map(|a| Dim::Axis(*a)));
                let mut params = vec![ParamSpec {
                    role: "weight".into(),
                    dims,
                    per_lane: per.clone(),
                    trainable: true,
                }];
                if bias {
                    params.push(ParamSpec {
                        role: "bias".into(),
                        dims: to.iter().map(|a| Dim::Axis(*a)).collect(),
                        per_lane: per,
                        trainable: true,
                    });
                }
                let params = frozen_unless(trainable, params);
                let mut axes = rest.axes;
                axes.extend(to.iter().copied());
                self.box1(
                    Op::Linear { from, to, bias },
                    vec![w],
                    WireType::values(axes),
                    params,
                    span,
                )
            }
            "learner" => {
                let idx = self.idx(
                    name,
                    index,
                    ix_span,
                    AtLeast(1),
                    Some(AtLeast(0)),
                    &["width", "per", "trainable"],
                )?;
                let trainable = self.bool_option(&idx, "trainable", true)?;
                let from = self.axis_list(idx.lhs);
                let to = self.axis_list(idx.rhs);
                let per = self.per_option(&idx);
                let width = match Self::option(&idx, "width") {
                    Some(v) => self.const_value(v),
                    None => {
                        self.cx.error(
                            Diagnostic::new(Code::BadIndexArgs, "`learner` needs its hidden width: `width = N`")
                                .primary(ix_span, "no `width` given")
                                .help("a learner is a one-hidden-layer MLP; its width sets how well it approximates"),
                        );
                        None
                    }
                };
                let (from, to, per, width) = (from?, to?, per?, width?);
                let width_span = Self::option(&idx, "width").map_or(ix_span, |v| v.span());
                if !self.whole_number(&width, width_span, "a learner's width") {
                    return None;
                }
                let mut wires = Vec::new();
                for (v, vs) in vals {
                    wires.push((self.float_arg(v, vs), vs));
                }
                if wires.iter().any(|(w, _)| w.is_none()) {
                    return None;
                }
                let wires: Vec<(WireId, Span)> = wires
                    .into_iter()
                    .map(|(w, s)| (w.expect("checked"), s))
                    .collect();
                // Every input axis must be fed by some input.
                let mut ok = true;
                for (a, at) in from.iter().zip(idx.lhs) {
                    if !wires.iter().any(|(w, _)| self.wire_ty(*w).has(*a)) {
                        let (w, ws) = wires[0];
                        ok &= self.need_axis(w, ws, *a, at.span());
                    }
                }
                let mut batch: Vec<AxisId> = Vec::new();
                for (w, _) in &wires {
                    for a in &self.wire_ty(*w).axes {
                        if !from.contains(a) && !batch.contains(a) {
                            batch.push(*a);
                        }
                    }
                }
                for (b, at) in to.iter().zip(idx.rhs) {
                    if batch.contains(b) {
                        let (w, ws) = wires[0];
                        ok &= self.fresh_axis(w, ws, *b, at.span());
                    }
                }
                if !ok {
                    return None;
                }
                let mut params = Vec::new();
                for (k, (w, _)) in wires.iter().enumerate() {
                    let mut dims: Vec<Dim> = self
                        .wire_ty(*w)
                        .axes
                        .iter()
                        .filter(|a| from.contains(a))
                        .map(|a| Dim::Axis(*a))
                        .collect();
                    dims.push(Dim::Extent(width.clone()));
                    params.push(ParamSpec {
                        role: format!("w_in{k}"),
                        dims,
                        per_lane: per.clone(),
                        trainable: true,
                    });
                }
                params.push(ParamSpec {
                    role: "b_hidden".into(),
                    dims: vec![Dim::Extent(width.clone())],
                    per_lane: per.clone(),
                    trainable: true,
                });
                let mut wout = vec![Dim::Extent(width.clone())];
                wout.extend(to.iter().map(|a| Dim::Axis(*a)));
                params.push(ParamSpec {
                    role: "w_out".into(),
                    dims: wout,
                    per_lane: per.clone(),
                    trainable: true,
                });
                params.push(ParamSpec {
                    role: "b_out".into(),
                    dims: to.iter().map(|a| Dim::Axis(*a)).collect(),
                    per_lane: per,
                    trainable: true,
                });
                let params = frozen_unless(trainable, params);
                let mut axes = batch;
                axes.extend(to.iter().copied());
                let ins = wires.iter().map(|(w, _)| *w).collect();
                self.box1(
                    Op::Learner { from, to, width },
                    ins,
                    WireType::values(axes),
                    params,
                    span,
                )
            }
            "param" | "random" => {
                let options: &[&str] = if name == "random" {
                    &["dist"]
                } else {
                    &["trainable"]
                };
                let idx = self.idx(name, index, ix_span, AtLeast(0), None, options)?;
                let trainable = self.bool_option(&idx, "trainable", true)?;
                let role = if name == "param" {
                    "value"
                } else {
                    match Self::option(&idx, "dist") {
                        None => FROZEN_NORMAL,
                        Some(ast::Value::Name(n)) if n.text == "normal" => FROZEN_NORMAL,
                        Some(ast::Value::Name(n)) if n.text == "uniform" => FROZEN_UNIFORM,
                        Some(v) => {
                            self.cx.error(
                                Diagnostic::new(
                                    Code::BadIndexArgs,
                                    "`dist` is `normal` (mean 0, deviation 1) or `uniform` (on [-1, 1])",
                                )
                                .primary(v.span(), "not a distribution")
                                .help("scale and shift the result for others: `random[a]() * 0.1 + 1`"),
                            );
                            return None;
                        }
                    }
                };
                let axes = self.axis_list(idx.lhs)?;
                let lanes = self.lane_axes();
                let per: Vec<AxisId> = axes.iter().copied().filter(|a| lanes.contains(a)).collect();
                let own: Vec<AxisId> = axes
                    .iter()
                    .copied()
                    .filter(|a| !lanes.contains(a))
                    .collect();
                let params = vec![ParamSpec {
                    role: role.into(),
                    dims: own.iter().map(|a| Dim::Axis(*a)).collect(),
                    per_lane: per,
                    trainable,
                }];
                self.box1(
                    Op::Param(own.clone()),
                    vec![],
                    WireType::values(own),
                    params,
                    span,
                )
            }
            _ => {
                // Elementwise functions; `sqrt`, `log`, `exp` and `abs` of a number are numbers
                // (`x / sqrt(dk)`, `s - log(tok)`).
                let func = Func::ALL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)?;
                self.idx(name, index, ix_span, Exactly(0), None, &[])?;
                let (v, vs) = vals.into_iter().next()?;
                if let (Val::Const(c), Some(f)) = (&v, ConstFn::named(name)) {
                    return Some(Val::Const(Const::Fn(f, vec![c.clone()])));
                }
                let w = self.float_arg(v, vs)?;
                self.unary(Op::Map(func), w, span)
            }
        })
    }

    /// A wire of values or of indices (structural boxes move either).
    fn float_or_index(&mut self, v: Val, span: Span) -> Option<WireId> {
        self.wire_arg(v, span)
    }
}

/// A learned box's parameters, marked not trainable when the box says `trainable = false`:
/// instantiation names them `....frozen` and puts `stop_grad` after them, so they are drawn,
/// stored and checkpointed like the others and never move.
fn frozen_unless(trainable: bool, params: Vec<ParamSpec>) -> Vec<ParamSpec> {
    params
        .into_iter()
        .map(|p| ParamSpec {
            trainable: trainable && p.trainable,
            ..p
        })
        .collect()
}
