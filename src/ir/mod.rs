//! The typed intermediate representation: diagrams as graphs of boxes and wires.
//!
//! Invariants (the checker establishes them; later phases rely on them):
//! - Every wire has exactly one source (a diagram input or one output of one box) and exactly one
//!   consumer (one input of one box, or one diagram output). Using a value twice is an explicit
//!   [`Op::Copy`]; dropping one is an explicit [`Op::Discard`]. This is the cartesian structure of
//!   the paper's string diagrams, and it makes rewriting local.
//! - Every wire has a [`WireType`]: a set of named axes (a layout order is kept for printing and
//!   execution, but equality is set equality), or an index wire into an axis.
//! - Boxes are stored in a topological order: a box's inputs come from earlier boxes or inputs.
//! - Regions ([`Region`]) stay visible: a SIMD region over axis `a` or a repeat block. Wires
//!   inside a SIMD region over `a` never carry `a`; they enter through [`Op::Zip`] (the outer wire
//!   carries `a`) or [`Op::Broadcast`] (it does not) and leave through [`Op::Collect`].
//!   [`lower::lower_simd`] removes SIMD regions by lifting every inner box by the region's axis.
//! - Named axes make lifting trivial: an op applies to the axes it names and runs over every
//!   other axis of its inputs lane-wise, and binary ops align their inputs by axis name.

pub mod build;
pub mod causal;
pub mod fuse;
pub mod instance;
pub mod lower;
pub mod ops;
pub mod print;
pub mod size;
pub mod verify;

use crate::source::Span;
use size::Size;
use std::collections::HashMap;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AxisId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WireId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoxId(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionId(pub u32);

/// A named axis and its (possibly symbolic) size.
#[derive(Clone, Debug)]
pub struct AxisInfo {
    pub name: String,
    pub size: Size,
    /// Where it was declared (the first declaration that gave a size, else the first one).
    pub span: Option<Span>,
}

/// All axes of a program. Axes are global by name: every module that declares `dm` means the
/// same axis.
#[derive(Clone, Debug, Default)]
pub struct AxisTable {
    pub axes: Vec<AxisInfo>,
    by_name: HashMap<String, AxisId>,
}

impl AxisTable {
    pub fn get(&self, id: AxisId) -> &AxisInfo {
        &self.axes[id.0 as usize]
    }

    pub fn name(&self, id: AxisId) -> &str {
        &self.axes[id.0 as usize].name
    }

    pub fn lookup(&self, name: &str) -> Option<AxisId> {
        self.by_name.get(name).copied()
    }

    pub fn insert(&mut self, info: AxisInfo) -> AxisId {
        let id = AxisId(self.axes.len() as u32);
        self.by_name.insert(info.name.clone(), id);
        self.axes.push(info);
        id
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.axes.iter().map(|a| a.name.as_str())
    }

    pub fn size(&self, id: AxisId) -> &Size {
        &self.axes[id.0 as usize].size
    }

    /// The product of the sizes of some axes.
    pub fn product(&self, ids: &[AxisId]) -> Size {
        ids.iter()
            .fold(Size::constant(1), |acc, a| acc.mul(self.size(*a)))
    }
}

/// What a wire carries: f32 values over a set of named axes, or integer indices into an axis.
#[derive(Clone, Debug)]
pub struct WireType {
    /// The axes, in layout order. Two types are equal when their axis sets are.
    pub axes: Vec<AxisId>,
    /// `Some(v)`: every element is an index into axis `v` (`[tok] of vocab`).
    pub index_of: Option<AxisId>,
}

impl PartialEq for WireType {
    fn eq(&self, other: &WireType) -> bool {
        self.index_of == other.index_of
            && self.axes.len() == other.axes.len()
            && self.axes.iter().all(|a| other.axes.contains(a))
    }
}

impl WireType {
    pub fn values(axes: Vec<AxisId>) -> WireType {
        WireType {
            axes,
            index_of: None,
        }
    }

    pub fn has(&self, a: AxisId) -> bool {
        self.axes.contains(&a)
    }

    pub fn without(&self, a: AxisId) -> WireType {
        WireType {
            axes: self.axes.iter().copied().filter(|x| *x != a).collect(),
            index_of: self.index_of,
        }
    }

    /// The same type with `a` added in front (lifting by a SIMD axis puts the lane axis first).
    pub fn with_front(&self, a: AxisId) -> WireType {
        let mut axes = vec![a];
        axes.extend(self.axes.iter().copied().filter(|x| *x != a));
        WireType {
            axes,
            index_of: self.index_of,
        }
    }

    pub fn display<'a>(&'a self, axes: &'a AxisTable) -> TypeDisplay<'a> {
        TypeDisplay { ty: self, axes }
    }
}

pub struct TypeDisplay<'a> {
    ty: &'a WireType,
    axes: &'a AxisTable,
}

impl fmt::Display for TypeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, a) in self.ty.axes.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(self.axes.name(*a))?;
        }
        f.write_str("]")?;
        if let Some(v) = self.ty.index_of {
            write!(f, " of {}", self.axes.name(v))?;
        }
        Ok(())
    }
}

/// A number known when the model is built: literals, axis sizes, hyperparameters, and
/// arithmetic and functions of them (`1 / sqrt(dk)`, `-log(tok)`, `pow(2, -8 / head)`).
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Num(f64),
    Size(AxisId),
    Hyper(String),
    Neg(Box<Const>),
    Bin(crate::syntax::ast::BinOp, Box<Const>, Box<Const>),
    /// A function of numbers; as many arguments as [`ConstFn::arity`].
    Fn(ConstFn, Vec<Const>),
}

/// The functions of numbers known when the model is built. On a wire, the one-argument ones
/// are the elementwise [`Func`]s of the same name (`log(x)`); `pow`, `min` and `max` take
/// numbers only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConstFn {
    Sqrt,
    /// The natural logarithm.
    Log,
    Exp,
    Abs,
    /// `pow(a, b)`: `a` to the power `b`.
    Pow,
    Min,
    Max,
    /// `clamp(a, lo, hi)`: `a` limited to `[lo, hi]`.
    Clamp,
    /// The sine and cosine of an angle in radians.
    Sin,
    Cos,
}

impl ConstFn {
    /// Each function's name and number of arguments.
    pub const ALL: &[(&'static str, ConstFn, usize)] = &[
        ("sqrt", ConstFn::Sqrt, 1),
        ("log", ConstFn::Log, 1),
        ("exp", ConstFn::Exp, 1),
        ("abs", ConstFn::Abs, 1),
        ("pow", ConstFn::Pow, 2),
        ("min", ConstFn::Min, 2),
        ("max", ConstFn::Max, 2),
        ("clamp", ConstFn::Clamp, 3),
        ("sin", ConstFn::Sin, 1),
        ("cos", ConstFn::Cos, 1),
    ];

    pub fn named(name: &str) -> Option<ConstFn> {
        ConstFn::ALL
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, f, _)| *f)
    }

    pub fn name(self) -> &'static str {
        ConstFn::ALL
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or("?", |(n, _, _)| n)
    }

    pub fn arity(self) -> usize {
        ConstFn::ALL
            .iter()
            .find(|(_, f, _)| *f == self)
            .map_or(1, |(_, _, k)| *k)
    }

    /// The value at `args` (as many as [`Self::arity`]; IEEE semantics: `log(0)` is `-inf`,
    /// `sqrt(-1)` is NaN, which instantiation refuses).
    pub fn apply(self, args: &[f64]) -> f64 {
        let a = args.first().copied().unwrap_or(f64::NAN);
        let b = args.get(1).copied().unwrap_or(f64::NAN);
        let c = args.get(2).copied().unwrap_or(f64::NAN);
        match self {
            ConstFn::Sqrt => a.sqrt(),
            ConstFn::Log => a.ln(),
            ConstFn::Exp => a.exp(),
            ConstFn::Abs => a.abs(),
            ConstFn::Pow => a.powf(b),
            ConstFn::Min => a.min(b),
            ConstFn::Max => a.max(b),
            ConstFn::Clamp => a.max(b).min(c),
            ConstFn::Sin => a.sin(),
            ConstFn::Cos => a.cos(),
        }
    }
}

impl Const {
    pub fn display<'a>(&'a self, axes: &'a AxisTable) -> ConstDisplay<'a> {
        ConstDisplay { c: self, axes }
    }

    /// Evaluates with the given hyperparameter and axis-size values.
    pub fn eval(
        &self,
        hyper: &dyn Fn(&str) -> Option<f64>,
        size: &dyn Fn(AxisId) -> Option<f64>,
    ) -> Option<f64> {
        use crate::syntax::ast::BinOp::*;
        Some(match self {
            Const::Num(x) => *x,
            Const::Size(a) => size(*a)?,
            Const::Hyper(h) => hyper(h)?,
            Const::Neg(c) => -c.eval(hyper, size)?,
            Const::Fn(f, args) => {
                let mut v = Vec::with_capacity(args.len());
                for a in args {
                    v.push(a.eval(hyper, size)?);
                }
                f.apply(&v)
            }
            Const::Bin(op, a, b) => {
                let (a, b) = (a.eval(hyper, size)?, b.eval(hyper, size)?);
                match op {
                    Add => a + b,
                    Sub => a - b,
                    Mul => a * b,
                    Div => a / b,
                }
            }
        })
    }
}

pub struct ConstDisplay<'a> {
    c: &'a Const,
    axes: &'a AxisTable,
}

impl fmt::Display for ConstDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.c {
            Const::Num(x) => write!(f, "{x}"),
            Const::Size(a) => write!(f, "{}", self.axes.name(*a)),
            Const::Hyper(h) => write!(f, "{h}"),
            Const::Neg(c) => write!(f, "-{}", c.display(self.axes)),
            Const::Fn(func, args) => {
                write!(f, "{}(", func.name())?;
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", a.display(self.axes))?;
                }
                write!(f, ")")
            }
            Const::Bin(op, a, b) => {
                write!(
                    f,
                    "({} {} {})",
                    a.display(self.axes),
                    op.symbol(),
                    b.display(self.axes)
                )
            }
        }
    }
}

/// The reductions over an axis besides `sum`. `max` and `min` fold with the elementwise rule
/// (the earlier entry on ties; NaN wins, so a NaN in the lane gives NaN) and send the gradient to
/// the entry they chose; `logsumexp` is `m + log(sum exp(x - m))` with `m` the lane's largest
/// finite entry (0 if none): minus infinity for a lane of minus infinities, never an overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    Max,
    Min,
    LogSumExp,
}

impl Reduction {
    pub const ALL: [Reduction; 3] = [Reduction::Max, Reduction::Min, Reduction::LogSumExp];

    pub fn name(self) -> &'static str {
        match self {
            Reduction::Max => "max",
            Reduction::Min => "min",
            Reduction::LogSumExp => "logsumexp",
        }
    }

    pub fn named(name: &str) -> Option<Reduction> {
        Reduction::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The position in `0..n` of the entry that `max` or `min` chooses (`None` for
    /// `logsumexp`, or an empty lane): the fold of the elementwise `max2`/`min2`, which keeps
    /// the earlier entry on ties and where it is NaN, and takes a later NaN.
    pub fn chosen<F: PartialOrd + Copy>(self, n: usize, at: impl Fn(usize) -> F) -> Option<usize> {
        if n == 0 || self == Reduction::LogSumExp {
            return None;
        }
        let mut best = 0;
        for j in 1..n {
            let (l, r) = (at(best), at(j));
            let nan = l.partial_cmp(&l).is_none();
            let keep = nan
                || match self {
                    Reduction::Max => l >= r,
                    _ => l <= r,
                };
            if !keep {
                best = j;
            }
        }
        Some(best)
    }
}

/// Elementwise functions of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Func {
    Relu,
    Gelu,
    Tanh,
    Exp,
    Log,
    Sqrt,
    /// `elu(x) + 1`, the feature map of linear attention.
    Elu1,
    Sigmoid,
    /// `1 / x`.
    Recip,
    /// `|x|` (derivative: the sign of `x`, 0 at 0).
    Abs,
    /// The identity whose gradient is zero: `stop_grad(x)` is `x`, and nothing flows back
    /// through it (autodiff gives its input no gradient at all).
    StopGrad,
    /// The Heaviside step, `1` where `x >= 0` and `0` elsewhere (NaN gives 0); derivative 0.
    Step,
    /// The sine and cosine of `x` in radians (RoPE's tables, `sin(p * theta)`).
    Sin,
    Cos,
}

impl Func {
    pub const ALL: &[(&'static str, Func)] = &[
        ("relu", Func::Relu),
        ("gelu", Func::Gelu),
        ("tanh", Func::Tanh),
        ("exp", Func::Exp),
        ("log", Func::Log),
        ("sqrt", Func::Sqrt),
        ("elu1", Func::Elu1),
        ("sigmoid", Func::Sigmoid),
        ("recip", Func::Recip),
        ("abs", Func::Abs),
        ("stop_grad", Func::StopGrad),
        ("step", Func::Step),
        ("sin", Func::Sin),
        ("cos", Func::Cos),
    ];

    pub fn name(self) -> &'static str {
        Func::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Where a composite call goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Callee {
    /// A diagram of the program, by name.
    Diagram(String),
    /// A diagram-valued hyperparameter of the enclosing diagram (`mech` in the LM).
    Hyper(String),
}

/// A hyperparameter value passed to a call.
#[derive(Clone, Debug, PartialEq)]
pub enum HyperArg {
    Num(Const),
    Diagram(Callee),
}

/// The key positions `j` that a masked query position `i` sees: `j <= i` (`j < i` when
/// `strict`) and, with a `window` of `w`, `i - j < w` as well (a band: sliding-window attention).
/// The default is the plain causal mask.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Band {
    pub strict: bool,
    pub window: Option<Const>,
}

impl Band {
    /// The plain causal mask (`j <= i`), which the attention fusions and the prefix-sum
    /// reassociation assume.
    pub fn is_plain(&self) -> bool {
        !self.strict && self.window.is_none()
    }

    /// The mask with its window as a number (after instantiation); `None` if the window is not
    /// a positive whole number.
    pub fn resolved(&self) -> Option<Visible> {
        let window = match &self.window {
            None => None,
            Some(Const::Num(w)) if w.fract() == 0.0 && *w >= 1.0 && *w <= usize::MAX as f64 => {
                Some(*w as usize)
            }
            Some(_) => return None,
        };
        Some(Visible {
            lag: usize::from(self.strict),
            window,
        })
    }
}

/// A [`Band`] with numbers: query `i` sees key `j` when `lag <= i - j` and, with a window,
/// `i - j < window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    pub lag: usize,
    pub window: Option<usize>,
}

impl Visible {
    pub const PLAIN: Visible = Visible {
        lag: 0,
        window: None,
    };

    pub fn sees(&self, i: usize, j: usize) -> bool {
        i >= j + self.lag && self.window.is_none_or(|w| i - j < w)
    }
}

/// What a box does. Grouped as the issue and the paper group them; see [`Op::kind`].
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    // Structural: wiring only, no arithmetic.
    /// Copies its input to `n` outputs (a fork in the picture).
    Copy(usize),
    /// Deletes its input (a cap in the picture).
    Discard,
    /// SIMD region entry for a wire that carries the region's axis: lane `i` sees slice `i`.
    Zip(AxisId),
    /// SIMD region entry for a wire without the axis: every lane sees the whole wire.
    Broadcast(AxisId),
    /// SIMD region exit: the lanes' values stacked along the axis.
    Collect(AxisId),
    /// Repeat region entry for the carried wire (first iteration: the initial value).
    LoopIn,
    /// Repeat region entry for a wire from outside, the same in every iteration.
    Capture,
    /// Repeat region exit: the carried wire after the last iteration.
    LoopOut,
    Rename {
        from: AxisId,
        to: AxisId,
    },
    Split {
        from: AxisId,
        into: Vec<AxisId>,
    },
    Merge {
        from: Vec<AxisId>,
        into: AxisId,
    },
    /// Explicit broadcast along a new axis.
    Expand(AxisId),

    // Primitive: fixed arithmetic.
    Add,
    Sub,
    Mul,
    Div,
    Scale(Const),
    Shift(Const),
    /// `x` to a constant power, elementwise (`pow(x, c)`; NaN for a negative `x` and a
    /// fractional `c`, as IEEE `pow`).
    Pow(Const),
    /// The larger of two wires of one type, elementwise (a NaN on either side gives NaN; the
    /// gradient goes to the left side on ties).
    Max,
    /// The smaller of two wires, elementwise (as [`Op::Max`]).
    Min,
    Dot(AxisId),
    Outer,
    Sum(AxisId),
    /// `rotate_half[a](x)`: with `h` half the axis' (even) size, `y_j = -x_(j+h)` for `j < h`
    /// and `y_j = x_(j-h)` after: the pairwise rotation of RoPE, in the halves convention.
    RotateHalf(AxisId),
    /// `max[a]`, `min[a]` and `logsumexp[a]`: reductions that remove the axis.
    Reduce(Reduction, AxisId),
    Softmax(AxisId),
    Normalise(AxisId),
    Map(Func),
    /// Masks scores (to -inf) where the key position along the second axis is not visible from
    /// the query position along the first: after it, or outside the [`Band`].
    Causal {
        query: AxisId,
        key: AxisId,
        band: Band,
    },
    /// Zeroes the same entries: the causal mask of softmax-free attention (and the gradient of
    /// [`Op::Causal`]).
    CausalZero {
        query: AxisId,
        key: AxisId,
        band: Band,
    },
    Cumsum(AxisId),
    /// `(g, x) -> y`, the gated (decayed) prefix sum along the axis: `y_t = g_t y_(t-1) + x_t`,
    /// `y_0 = x_0`. A constant gate is `cumsum[a, decay = C]`; a first-order linear recurrence.
    Scan(AxisId),
    /// `(g, x) -> y`, the scan with a matrix gate: `y_t = g_t y_(t-1) + x_t`, `y_0 = x_0`,
    /// where `g_t` is a matrix over `[row, col]` applied to the state's `row` axis (read as
    /// `col`, an axis of the same size that the state does not carry): `y_t[row] = sum_col
    /// g_t[row, col] y_(t-1)[row := col] + x_t[row]`. The gate's other axes are among the
    /// state's (it is broadcast over those it lacks, `along` included). The delta rule
    /// (DeltaNet) is `g_t = I - beta_t k_t k_t^T`.
    MatScan {
        along: AxisId,
        row: AxisId,
        col: AxisId,
    },
    Dropout(Const),
    PosEnc {
        pos: AxisId,
        feature: AxisId,
    },
    /// The positions along an axis, `0, 1, ..., n - 1`, as a wire (a constant). Inside a SIMD
    /// region over the axis, the lane's own index.
    Iota(AxisId),
    /// A constant wire over the axes, every entry `value`.
    Fill {
        axes: Vec<AxisId>,
        value: Const,
    },

    // Learned: carry parameters (see [`BoxNode::params`]).
    Linear {
        from: Vec<AxisId>,
        to: Vec<AxisId>,
        bias: bool,
    },
    Learner {
        from: Vec<AxisId>,
        to: Vec<AxisId>,
        width: Const,
    },
    Param(Vec<AxisId>),
    LayerNorm(Vec<AxisId>),
    Embed {
        vocab: AxisId,
        to: Vec<AxisId>,
    },

    // Composite.
    Call {
        callee: Callee,
        hypers: Vec<(String, HyperArg)>,
    },

    /// Ops of the executable form only (after [`instance`]): never written by users.
    Exec(ExecOp),
}

/// Ops that appear only in instantiated diagrams: forward ops that need run-time identity
/// (dropout's key), and the gradient ops autodiff emits. Every backend implements them.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecOp {
    /// Inverted dropout with a counter-based mask: element `i` of the box with `key` is kept
    /// when `hash(seed, key, i) >= p`, so the backward pass can rebuild the same mask.
    Dropout { p: f64, key: u64 },
    /// Two inputs; the output axes are the output wire's. Axes in both inputs and the output are
    /// lane-wise, axes missing from the output are summed: a general contraction.
    Einsum,
    /// Sums its input over the axes the output wire lacks.
    SumTo,
    /// A wire of zeros of the output wire's type.
    Zeros,
    /// `(y, gy) -> gx` for `y = softmax[a](x)`.
    SoftmaxBack(AxisId),
    /// `(x, gy) -> gx` for `y = normalise[a](x)`.
    NormaliseBack(AxisId),
    /// `(x, gy) -> gx` for `y = max[a](x)` (and the others): the gradient to the lane's first
    /// maximum (minimum), or `gy * softmax[a](x)` for `logsumexp`.
    ReduceBack(Reduction, AxisId),
    /// `(x, gy) -> gx` for `y = f(x)`.
    MapBack(Func),
    /// `gy -> gx` for `cumsum[a]`: the suffix sum.
    CumsumBack(AxisId),
    /// `(gy, g) -> u` for [`Op::Scan`]: the reverse scan with the gate one step ahead,
    /// `u_t = gy_t + g_(t+1) u_(t+1)`; `u` is the gradient of `x`, `u * lag(y)` that of `g`.
    ScanBack(AxisId),
    /// `(gy, g) -> u` for [`Op::MatScan`]: `u_t = gy_t + g_(t+1)^T u_(t+1)` from the end;
    /// `u` is the gradient of `x`, and that of `g` is `u_t` times `y_(t-1)` (read over `col`)
    /// summed over the axes the gate lacks.
    MatScanBack {
        along: AxisId,
        row: AxisId,
        col: AxisId,
    },
    /// `x -> z` with `z_t = x_(t-1)`, `z_0 = 0`: the previous position along the axis.
    Lag(AxisId),
    /// `(x, gain, gy) -> (gx, ggain, gbias)` for `layernorm[axes]`.
    LayerNormBack(Vec<AxisId>),
    /// `(ids, gy) -> gtable` for `embed[vocab -> ...]`: a scatter-add.
    EmbedBack { vocab: AxisId },
    /// `(logits, targets) -> []`: the summed negative log-likelihood of the targets (indices into
    /// `classes`) under `softmax[classes](logits)`, computed stably (log-sum-exp).
    CrossEntropy { classes: AxisId },
    /// `(logits, targets, gy) -> glogits = gy * (softmax(logits) - onehot(targets))`.
    CrossEntropyBack { classes: AxisId },
    /// `(q, k, v) -> (o, lse)`: causal scaled dot-product attention as one box, the fusion
    /// (`ir::fuse`) of `dot[src](softmax[src](causal[tok, src](scale * dot[dk](q, k))), v)`.
    /// `lse` is the log-sum-exp of each query's masked, scaled scores (over the output's axes
    /// less the value feature), which the gradient reuses.
    Attention(Attention),
    /// `(q, k, v, o, lse, go) -> (gq, gk, gv)` for [`ExecOp::Attention`].
    AttentionBack(Attention),
    /// `(qf, kf, v) -> (out, den)`: causal linear attention (M0) as one box, the fusion
    /// (`ir::fuse`) of `num / broadcast[vfeat](dot[feat](qf, cumsum[pos](kf)) + eps)` with
    /// `num = dot[feat](qf, cumsum[pos](outer(kf, v)))`. `den` (over the output's axes less
    /// the value feature) is the denominator, which the gradient reuses.
    LinearAttention(LinearAttention),
    /// `(qf, kf, v, out, den, go) -> (gqf, gkf, gv)` for [`ExecOp::LinearAttention`].
    LinearAttentionBack(LinearAttention),
}

/// The axes and constant of a fused linear attention box. Every other axis of `qf`, `kf` and
/// `v` is a lane, present in all three and in the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearAttention {
    /// Positions: in every operand (token `i` sums over `j <= i`).
    pub pos: AxisId,
    /// The feature of `qf` and `kf`.
    pub feat: AxisId,
    /// The value feature: in `v` and `out` (not `feat`).
    pub vfeat: AxisId,
    /// Added to the denominator (`1e-6` in M0).
    pub eps: f64,
}

/// The axes and scale of a fused attention box. Every other axis of `q`, `k` and `v` is a lane
/// (batch, heads), present in all three and in the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attention {
    /// Query positions: in `q`, `o` and `lse`.
    pub query: AxisId,
    /// Key positions: in `k` and `v`; the same size as `query` (key `j` is seen by query `i`
    /// when `j <= i`).
    pub key: AxisId,
    /// The feature summed in the scores: in `q` and `k`.
    pub feat: AxisId,
    /// The value feature: in `v` and `o` (may be `feat`).
    pub vfeat: AxisId,
    /// Multiplies the scores before the mask (`1 / sqrt(dk)` in M1).
    pub scale: f64,
}

/// The four kinds of box.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxKind {
    Structural,
    Primitive,
    Learned,
    Composite,
}

impl Op {
    /// The op's kind, from the op table ([`ops::spec`]).
    pub fn kind(&self) -> BoxKind {
        ops::spec(self).kind
    }
}

/// One dimension of a parameter tensor: an axis, or a width given as a number.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Axis(AxisId),
    Extent(Const),
}

/// The roles of the parameter of `random[...]()`: a frozen tensor, drawn once (from the run's
/// seed, like every parameter) and never trained.
pub const FROZEN_NORMAL: &str = "frozen_normal";
pub const FROZEN_UNIFORM: &str = "frozen_uniform";

/// A learned tensor owned by a box.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Its role in the box: `weight`, `bias`, `gain`, `table`, `w1`...
    pub role: String,
    pub dims: Vec<Dim>,
    /// The SIMD axes it is per-lane over (empty: shared by every lane of enclosing regions).
    pub per_lane: Vec<AxisId>,
    /// `false` for the parameters of a box written with `trainable = false`: drawn at
    /// initialisation like the others, stored in checkpoints, never trained.
    pub trainable: bool,
}

#[derive(Clone, Debug)]
pub struct BoxNode {
    pub op: Op,
    pub inputs: Vec<WireId>,
    pub outputs: Vec<WireId>,
    pub params: Vec<ParamSpec>,
    pub region: Option<RegionId>,
    pub span: Span,
}

/// Where a wire comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSource {
    Input(usize),
    Box(BoxId, usize),
}

/// Where a wire goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireSink {
    Box(BoxId, usize),
    Output(usize),
}

#[derive(Clone, Debug)]
pub struct Wire {
    pub ty: WireType,
    /// The source-level name, when the wire was bound to one.
    pub name: Option<String>,
    pub source: WireSource,
    pub sink: Option<WireSink>,
    pub region: Option<RegionId>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RegionKind {
    Simd(AxisId),
    Repeat(Const),
}

#[derive(Clone, Debug)]
pub struct Region {
    pub kind: RegionKind,
    pub parent: Option<RegionId>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HyperType {
    Int,
    Float,
    Diagram {
        inputs: Vec<WireType>,
        outputs: Vec<WireType>,
    },
}

#[derive(Clone, Debug)]
pub struct Hyper {
    pub name: String,
    pub ty: HyperType,
    pub default: Option<HyperArg>,
}

#[derive(Clone, Debug)]
pub struct Diagram {
    pub name: String,
    pub hypers: Vec<Hyper>,
    pub input_names: Vec<String>,
    pub inputs: Vec<WireId>,
    pub outputs: Vec<WireId>,
    pub wires: Vec<Wire>,
    pub boxes: Vec<BoxNode>,
    pub regions: Vec<Region>,
    pub span: Span,
}

impl Diagram {
    pub fn wire(&self, w: WireId) -> &Wire {
        &self.wires[w.0 as usize]
    }

    pub fn node(&self, b: BoxId) -> &BoxNode {
        &self.boxes[b.0 as usize]
    }

    pub fn region(&self, r: RegionId) -> &Region {
        &self.regions[r.0 as usize]
    }

    /// The regions enclosing `r`, outermost first, `r` included.
    pub fn region_chain(&self, r: Option<RegionId>) -> Vec<RegionId> {
        let mut chain = Vec::new();
        let mut cur = r;
        while let Some(id) = cur {
            chain.push(id);
            cur = self.region(id).parent;
        }
        chain.reverse();
        chain
    }

    /// Checks the wiring invariants listed in the module docs (one source and one consumer
    /// per wire, topological order); [`verify::verify`] checks arities and types too.
    pub fn validate(&self) -> Result<(), crate::error::Error> {
        verify::wiring(self).map_err(|message| crate::error::Error::Internal {
            pass: "validate",
            message,
        })
    }
}

/// The three classes of rewrite rule of the paper, kept distinct.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleClass {
    /// Exact, usable in both directions (and by the optimiser).
    Equal,
    /// Equivalent up to universal approximation: the two sides span the same function class.
    Expressive,
    /// One direction only, may lose expressivity.
    Specialise,
}

impl RuleClass {
    pub const ALL: &[(&'static str, RuleClass)] = &[
        ("equal", RuleClass::Equal),
        ("expressive", RuleClass::Expressive),
        ("specialise", RuleClass::Specialise),
    ];

    pub fn name(self) -> &'static str {
        RuleClass::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("?", |(n, _)| n)
    }
}

/// A checked rewrite rule: both sides elaborated as diagrams with the same signature (so their
/// boundary types agree by construction). The axes they use are the rule's axis variables.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub class: RuleClass,
    pub lhs: Diagram,
    pub rhs: Diagram,
    pub span: Span,
}

/// A checked program: its axes, its diagrams and its rewrite rules, in definition order.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub axes: AxisTable,
    pub diagrams: Vec<Diagram>,
    pub rules: Vec<Rule>,
}

impl Program {
    pub fn diagram(&self, name: &str) -> Option<&Diagram> {
        self.diagrams.iter().find(|d| d.name == name)
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}
