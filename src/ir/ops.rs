//! The op table: what every op of the IR is, stated once. Each [`Op`] (and each
//! [`ExecOp`]) has one entry in [`spec`]: its name (how the printer and the JSON forms call it),
//! its kind (structural, primitive, learned, composite), how many wires it takes and gives in a
//! checked diagram and in an instance, and the axes it names (the axes it acts on; it runs
//! lane-wise over every other axis of its inputs, which is what SIMD lowering relies on).
//!
//! [`Op::kind`], the verifier (`ir::verify`) and the printer's names (`ir::print`, checked
//! against this table by the tests) read it. What an op computes is defined by the
//! interpreter (`backend::cpu::interp`, the oracle), its planning by `lir`, its gradient by
//! `autodiff`, its typing by `check::prims`: adding an op adds its entry here and those rules.

use super::{AxisId, BoxKind, ExecOp, Op};
use std::borrow::Cow;

/// How many wires a box takes or gives: exactly `n`, or any number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    Exactly(usize),
    Any,
}

impl Count {
    pub fn admits(self, n: usize) -> bool {
        match self {
            Count::Exactly(k) => k == n,
            Count::Any => true,
        }
    }
}

/// The static facts of one op.
#[derive(Clone, Debug, PartialEq)]
pub struct OpSpec {
    /// The name the printer starts the op's text with (`softmax`, `copy`, `attention_back`;
    /// an elementwise function's own name, `relu`).
    pub name: Cow<'static, str>,
    pub kind: BoxKind,
    /// Inputs and outputs in a checked diagram (learned ops: the data inputs only; their
    /// parameters are the box's `params`).
    pub checked: (Count, Count),
    /// Inputs and outputs in an instance (learned ops take their parameters as inputs after
    /// the data; region ports, calls, learners and parameter boxes never appear: `None`).
    pub flat: Option<(Count, Count)>,
    /// The axes the op names.
    pub axes: Vec<AxisId>,
}

/// The table.
pub fn spec(op: &Op) -> OpSpec {
    use BoxKind::{Composite, Learned, Primitive, Structural};
    use Count::{Any, Exactly as N};
    use Op::*;
    let both = |i: Count, o: Count| ((i, o), Some((i, o)));
    let (name, kind, (checked, flat), axes): (Cow<'static, str>, _, _, Vec<AxisId>) = match op {
        Copy(n) => ("copy".into(), Structural, both(N(1), N(*n)), vec![]),
        Discard => ("discard".into(), Structural, both(N(1), N(0)), vec![]),
        Zip(a) => ("zip".into(), Structural, ((N(1), N(1)), None), vec![*a]),
        Broadcast(a) => (
            "broadcast_in".into(),
            Structural,
            ((N(1), N(1)), None),
            vec![*a],
        ),
        Collect(a) => ("collect".into(), Structural, ((N(1), N(1)), None), vec![*a]),
        LoopIn => ("loop_in".into(), Structural, ((N(1), N(1)), None), vec![]),
        Capture => ("capture".into(), Structural, ((N(1), N(1)), None), vec![]),
        LoopOut => ("loop_out".into(), Structural, ((N(1), N(1)), None), vec![]),
        Rename { from, to } => (
            "rename".into(),
            Structural,
            both(N(1), N(1)),
            vec![*from, *to],
        ),
        Split { from, into } => (
            "split".into(),
            Structural,
            both(N(1), N(1)),
            [*from].into_iter().chain(into.iter().copied()).collect(),
        ),
        Merge { from, into } => (
            "merge".into(),
            Structural,
            both(N(1), N(1)),
            from.iter().copied().chain([*into]).collect(),
        ),
        Expand(a) => ("broadcast".into(), Structural, both(N(1), N(1)), vec![*a]),
        Add => ("add".into(), Primitive, both(N(2), N(1)), vec![]),
        Sub => ("sub".into(), Primitive, both(N(2), N(1)), vec![]),
        Mul => ("mul".into(), Primitive, both(N(2), N(1)), vec![]),
        Div => ("div".into(), Primitive, both(N(2), N(1)), vec![]),
        Scale(_) => ("scale".into(), Primitive, both(N(1), N(1)), vec![]),
        Shift(_) => ("shift".into(), Primitive, both(N(1), N(1)), vec![]),
        Pow(_) => ("pow".into(), Primitive, both(N(1), N(1)), vec![]),
        Max => ("max".into(), Primitive, both(N(2), N(1)), vec![]),
        Min => ("min".into(), Primitive, both(N(2), N(1)), vec![]),
        Dot(a) => ("dot".into(), Primitive, both(N(2), N(1)), vec![*a]),
        Outer => ("outer".into(), Primitive, both(N(2), N(1)), vec![]),
        Sum(a) => ("sum".into(), Primitive, both(N(1), N(1)), vec![*a]),
        Reduce(r, a) => (r.name().into(), Primitive, both(N(1), N(1)), vec![*a]),
        RotateHalf(a) => ("rotate_half".into(), Primitive, both(N(1), N(1)), vec![*a]),
        Softmax(a) => ("softmax".into(), Primitive, both(N(1), N(1)), vec![*a]),
        Normalise(a) => ("normalise".into(), Primitive, both(N(1), N(1)), vec![*a]),
        Map(f) => (f.name().into(), Primitive, both(N(1), N(1)), vec![]),
        Causal { query, key, .. } => (
            "causal".into(),
            Primitive,
            both(N(1), N(1)),
            vec![*query, *key],
        ),
        CausalZero { query, key, .. } => (
            "causal_zero".into(),
            Primitive,
            both(N(1), N(1)),
            vec![*query, *key],
        ),
        Cumsum(a) => ("cumsum".into(), Primitive, both(N(1), N(1)), vec![*a]),
        Scan(a) => ("scan".into(), Primitive, both(N(2), N(1)), vec![*a]),
        MatScan { along, row, col } => (
            "scan".into(),
            Primitive,
            both(N(2), N(1)),
            vec![*along, *col, *row],
        ),
        Dropout(_) => ("dropout".into(), Primitive, both(N(1), N(1)), vec![]),
        PosEnc { pos, feature } => (
            "posenc".into(),
            Primitive,
            both(Any, N(1)),
            vec![*pos, *feature],
        ),
        Iota(a) => ("iota".into(), Primitive, both(N(0), N(1)), vec![*a]),
        Fill { axes, .. } => ("fill".into(), Primitive, both(N(0), N(1)), axes.clone()),
        Linear { from, to, bias } => (
            "linear".into(),
            Learned,
            ((N(1), N(1)), Some((N(2 + usize::from(*bias)), N(1)))),
            from.iter().chain(to).copied().collect(),
        ),
        Learner { from, to, .. } => (
            "learner".into(),
            Learned,
            ((Any, N(1)), None),
            from.iter().chain(to).copied().collect(),
        ),
        Param(ids) => ("param".into(), Learned, ((N(0), N(1)), None), ids.clone()),
        LayerNorm(ids) => (
            "layernorm".into(),
            Learned,
            ((N(1), N(1)), Some((N(3), N(1)))),
            ids.clone(),
        ),
        Embed { vocab, to } => (
            "embed".into(),
            Learned,
            ((N(1), N(1)), Some((N(2), N(1)))),
            [*vocab].into_iter().chain(to.iter().copied()).collect(),
        ),
        Call { .. } => ("call".into(), Composite, ((Any, Any), None), vec![]),
        Exec(e) => {
            let (name, inputs, outputs, axes) = exec_spec(e);
            (name, Primitive, both(inputs, outputs), axes)
        }
    };
    OpSpec {
        name,
        kind,
        checked,
        flat,
        axes,
    }
}

/// The entry of an executable-only op: name, inputs, outputs, axes named.
fn exec_spec(e: &ExecOp) -> (Cow<'static, str>, Count, Count, Vec<AxisId>) {
    use Count::{Any, Exactly as N};
    match e {
        ExecOp::Dropout { .. } => ("dropout".into(), N(1), N(1), vec![]),
        ExecOp::Einsum => ("einsum".into(), N(2), N(1), vec![]),
        ExecOp::SumTo => ("sum_to".into(), N(1), N(1), vec![]),
        ExecOp::Zeros => ("zeros".into(), Any, N(1), vec![]),
        ExecOp::SoftmaxBack(a) => ("softmax_back".into(), N(2), N(1), vec![*a]),
        ExecOp::NormaliseBack(a) => ("normalise_back".into(), N(2), N(1), vec![*a]),
        ExecOp::ReduceBack(r, a) => (format!("{}_back", r.name()).into(), N(2), N(1), vec![*a]),
        ExecOp::MapBack(f) => (format!("{}_back", f.name()).into(), N(2), N(1), vec![]),
        ExecOp::CumsumBack(a) => ("cumsum_back".into(), N(1), N(1), vec![*a]),
        ExecOp::ScanBack(a) => ("scan_back".into(), N(2), N(1), vec![*a]),
        ExecOp::MatScanBack { along, row, col } => {
            ("scan_back".into(), N(2), N(1), vec![*along, *col, *row])
        }
        ExecOp::Lag(a) => ("lag".into(), N(1), N(1), vec![*a]),
        ExecOp::LayerNormBack(ids) => ("layernorm_back".into(), N(3), N(3), ids.clone()),
        ExecOp::EmbedBack { vocab } => ("embed_back".into(), N(2), N(1), vec![*vocab]),
        ExecOp::CrossEntropy { classes } => ("cross_entropy".into(), N(2), N(1), vec![*classes]),
        ExecOp::CrossEntropyBack { classes } => {
            ("cross_entropy_back".into(), N(3), N(1), vec![*classes])
        }
        ExecOp::Attention(a) => (
            "attention".into(),
            N(3),
            N(2),
            vec![a.query, a.key, a.feat, a.vfeat],
        ),
        ExecOp::AttentionBack(a) => (
            "attention_back".into(),
            N(6),
            N(3),
            vec![a.query, a.key, a.feat, a.vfeat],
        ),
        ExecOp::LinearAttention(a) => (
            "linear_attention".into(),
            N(3),
            N(2),
            vec![a.pos, a.feat, a.vfeat],
        ),
        ExecOp::LinearAttentionBack(a) => (
            "linear_attention_back".into(),
            N(6),
            N(3),
            vec![a.pos, a.feat, a.vfeat],
        ),
    }
}
