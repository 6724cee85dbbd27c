//! The abstract syntax tree, exactly as written, with spans.
//!
//! Nothing here is resolved or typed: names are strings, sizes are expressions. Binary operator
//! chains are kept flat ([`Expr::Chain`]) and prefix minus signs are counted ([`Expr::Neg`]) so
//! that the depth of the tree is bounded by bracket nesting alone, which the lexer limits.

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Name {
    pub text: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `use attention.m1`
    Use(UsePath),
    /// `axis tok, src = tok, dk = dm / head`
    Axis(Vec<AxisDecl>),
    Diagram(DiagramDef),
    /// `rule NAME : CLASS (params) -> outputs { lhs } => { rhs }`
    Rule(Box<RuleDef>),
    /// A stretch the parser skipped after a syntax error (already reported).
    Error(Span),
}

#[derive(Clone, Debug, PartialEq)]
pub struct UsePath {
    pub parts: Vec<Name>,
    pub span: Span,
}

impl UsePath {
    pub fn dotted(&self) -> String {
        self.parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct AxisDecl {
    pub name: Name,
    pub size: Option<SizeExpr>,
    pub span: Span,
}

/// A size: a product and quotient of numbers and axis names, left to right.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeExpr {
    pub first: SizeAtom,
    pub rest: Vec<(MulOp, SizeAtom)>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MulOp {
    Mul,
    Div,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SizeAtom {
    Num(u64, Span),
    Axis(Name),
    Paren(Box<SizeExpr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiagramDef {
    pub name: Name,
    pub hypers: Vec<HyperDecl>,
    pub params: Vec<Param>,
    pub outputs: Vec<TypeExpr>,
    pub body: Block,
    pub span: Span,
}

/// A rewrite rule: two diagrams with the same name, hyperparameters (pattern variables for
/// sub-diagrams) and boundary. The axes a rule names are its axis variables.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleDef {
    /// `equal`, `expressive` or `specialise` (checked by the checker).
    pub class: Name,
    pub lhs: DiagramDef,
    pub rhs: DiagramDef,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HyperDecl {
    pub name: Name,
    pub kind: HyperKind,
    pub default: Option<Value>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HyperKind {
    Int(Span),
    Float(Span),
    /// A diagram-valued hyperparameter, given by the boundary it must have.
    Diagram(Signature),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TypeExpr>,
    pub outputs: Vec<TypeExpr>,
    pub span: Span,
}

/// `[tok, dm]`, `[]`, or `[tok] of vocab` (a wire of indices into `vocab`).
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub axes: Vec<Name>,
    pub of: Option<Name>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: Name,
    pub ty: TypeExpr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub result: Option<Box<Expr>>,
    /// A syntax error was found inside (and reported); the statements kept are those before it.
    pub recovered: bool,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `q = e`, `a, b = e`, or `o: [tok, dm] = e`.
    Bind {
        names: Vec<Name>,
        ty: Option<TypeExpr>,
        expr: Box<Expr>,
        span: Span,
    },
    /// `discard x, y`: deletes wires explicitly.
    Discard {
        names: Vec<Name>,
        span: Span,
    },
    Error(Span),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(f64, Span),
    Name(Name),
    Call {
        callee: Name,
        index: Option<IndexArgs>,
        args: Vec<Expr>,
        span: Span,
    },
    /// `first op e op e ...`, evaluated left to right (all ops of one precedence level).
    Chain {
        first: Box<Expr>,
        rest: Vec<(BinOp, Span, Expr)>,
        span: Span,
    },
    /// `count` prefix minus signs.
    Neg {
        count: usize,
        expr: Box<Expr>,
        span: Span,
    },
    Tuple(Vec<Expr>, Span),
    /// `simd head { ... }`
    Simd {
        axis: Name,
        body: Block,
        span: Span,
    },
    /// `repeat n (x = init) { ... }`
    Repeat {
        count: Value,
        var: Name,
        init: Box<Expr>,
        body: Block,
        span: Span,
    },
    /// A stretch the parser could not read (already reported).
    Error(Span),
}

impl Expr {
    pub fn span(&self) -> Span {
        match self {
            Expr::Num(_, s) | Expr::Tuple(_, s) | Expr::Error(s) => *s,
            Expr::Name(n) => n.span,
            Expr::Call { span, .. }
            | Expr::Chain { span, .. }
            | Expr::Neg { span, .. }
            | Expr::Simd { span, .. }
            | Expr::Repeat { span, .. } => *span,
        }
    }
}

/// The bracketed arguments of a box: `[dm -> head, dk]`, `[src]`, `[dff, bias = false]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexArgs {
    /// Positional values before `->` (or all of them, when there is no arrow).
    pub lhs: Vec<Value>,
    /// Positional values after `->`, when there is an arrow.
    pub rhs: Option<Vec<Value>>,
    pub named: Vec<(Name, Value)>,
    pub span: Span,
}

/// A value in brackets: a name, a number, or `[]` (the empty axis list).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Name(Name),
    Num(f64, Span),
    Empty(Span),
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Name(n) => n.span,
            Value::Num(_, s) | Value::Empty(s) => *s,
        }
    }
}

/// One item in brackets, before positional and named ones are separated (parser use only).
#[derive(Clone, Debug, PartialEq)]
pub enum IndexItem {
    Pos(Value),
    Named(Name, Value),
}
