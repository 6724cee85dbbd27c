//! The stable text form of the IR (`diagc compile --emit ir`).
//!
//! One line per box: `%out: type = op[args](%in, ...)`, with the box's parameters after `;`.
//! Regions print as nested blocks headed `simd AXIS` or `repeat COUNT`, at the place of their
//! first box. Spans are not printed, so the text only changes when the diagram does.

use super::*;
use std::fmt::Write;

pub fn program(p: &Program) -> String {
    let mut out = String::new();
    out.push_str("axes\n");
    for a in &p.axes.axes {
        let _ = writeln!(out, "  {} = {}", a.name, a.size);
    }
    for d in &p.diagrams {
        out.push('\n');
        out.push_str(&diagram(d, &p.axes));
    }
    out
}

pub fn diagram(d: &Diagram, axes: &AxisTable) -> String {
    let mut out = String::new();
    let _ = write!(out, "diagram {}", d.name);
    if !d.hypers.is_empty() {
        out.push('[');
        for (i, h) in d.hypers.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "{}: {}", h.name, hyper_type(&h.ty, axes));
            if let Some(v) = &h.default {
                let _ = write!(out, " = {}", hyper_arg(v, axes));
            }
        }
        out.push(']');
    }
    out.push('(');
    for (i, (n, w)) in d.input_names.iter().zip(&d.inputs).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{n}: {}", d.wire(*w).ty.display(axes));
    }
    out.push_str(") -> ");
    out.push_str(&types(d.outputs.iter().map(|w| &d.wire(*w).ty), axes));
    out.push('\n');
    for (i, w) in d.inputs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  %{}: {} = input {}",
            w.0,
            d.wire(*w).ty.display(axes),
            d.input_names[i]
        );
    }
    let mut printer = Printer {
        d,
        axes,
        out,
        printed_regions: vec![false; d.regions.len()],
    };
    printer.block(None, 1);
    let mut out = printer.out;
    let outs: Vec<String> = d.outputs.iter().map(|w| format!("%{}", w.0)).collect();
    let _ = writeln!(out, "  output {}", outs.join(", "));
    out
}

fn types<'a>(tys: impl Iterator<Item = &'a WireType>, axes: &AxisTable) -> String {
    let v: Vec<String> = tys.map(|t| t.display(axes).to_string()).collect();
    if v.len() == 1 {
        v[0].clone()
    } else {
        format!("({})", v.join(", "))
    }
}

pub fn hyper_type(t: &HyperType, axes: &AxisTable) -> String {
    match t {
        HyperType::Int => "int".into(),
        HyperType::Float => "float".into(),
        HyperType::Diagram { inputs, outputs } => {
            let ins: Vec<String> = inputs.iter().map(|t| t.display(axes).to_string()).collect();
            format!("({}) -> {}", ins.join(", "), types(outputs.iter(), axes))
        }
    }
}

pub fn hyper_arg(v: &HyperArg, axes: &AxisTable) -> String {
    match v {
        HyperArg::Num(c) => c.display(axes).to_string(),
        HyperArg::Diagram(Callee::Diagram(n)) | HyperArg::Diagram(Callee::Hyper(n)) => n.clone(),
    }
}

struct Printer<'a> {
    d: &'a Diagram,
    axes: &'a AxisTable,
    out: String,
    printed_regions: Vec<bool>,
}

impl Printer<'_> {
    /// Prints the boxes directly in `region`, and each child region where its first box falls.
    fn block(&mut self, region: Option<RegionId>, depth: usize) {
        // A region's entry ports first: they only read wires from outside, and an outer region's
        // port is created when an inner region first needs it, so it can come later in the list.
        let is_entry =
            |op: &Op| matches!(op, Op::Zip(_) | Op::Broadcast(_) | Op::Capture | Op::LoopIn);
        if region.is_some() {
            for (i, b) in self.d.boxes.iter().enumerate() {
                if b.region == region && is_entry(&b.op) {
                    self.node(BoxId(i as u32), depth);
                }
            }
        }
        for (i, b) in self.d.boxes.iter().enumerate() {
            if b.region == region && region.is_some() && is_entry(&b.op) {
                continue;
            }
            if b.region == region {
                self.node(BoxId(i as u32), depth);
                continue;
            }
            // The child of `region` on the way to this box's region, if any.
            let chain = self.d.region_chain(b.region);
            let pos = match region {
                None => Some(0),
                Some(r) => chain.iter().position(|x| *x == r).map(|p| p + 1),
            };
            if let Some(child) = pos.and_then(|p| chain.get(p)).copied()
                && !self.printed_regions[child.0 as usize]
            {
                self.printed_regions[child.0 as usize] = true;
                let indent = "  ".repeat(depth);
                let head = match &self.d.region(child).kind {
                    RegionKind::Simd(a) => format!("simd {}", self.axes.name(*a)),
                    RegionKind::Repeat(c) => format!("repeat {}", c.display(self.axes)),
                };
                let _ = writeln!(self.out, "{indent}{head} {{");
                self.block(Some(child), depth + 1);
                let _ = writeln!(self.out, "{indent}}}");
            }
        }
    }

    fn node(&mut self, id: BoxId, depth: usize) {
        let b = self.d.node(id);
        let indent = "  ".repeat(depth);
        let outs: Vec<String> = b
            .outputs
            .iter()
            .map(|w| format!("%{}: {}", w.0, self.d.wire(*w).ty.display(self.axes)))
            .collect();
        let ins: Vec<String> = b.inputs.iter().map(|w| format!("%{}", w.0)).collect();
        let lhs = if outs.is_empty() {
            String::new()
        } else {
            format!("{} = ", outs.join(", "))
        };
        let _ = write!(
            self.out,
            "{indent}{lhs}{}({})",
            box_text(b, self.axes),
            ins.join(", ")
        );
        if !b.params.is_empty() {
            let ps: Vec<String> = b.params.iter().map(|p| param_text(p, self.axes)).collect();
            let _ = write!(self.out, "  ; {}", ps.join(", "));
        }
        self.out.push('\n');
    }
}

/// Axis names separated by commas; `[]` for none (inside brackets: `linear[dk -> []]`).
pub fn list(ids: &[AxisId], axes: &AxisTable) -> String {
    if ids.is_empty() {
        return "[]".into();
    }
    ids.iter()
        .map(|a| axes.name(*a))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn param_text(p: &ParamSpec, axes: &AxisTable) -> String {
    let dims: Vec<String> = p
        .dims
        .iter()
        .map(|d| match d {
            Dim::Axis(a) => axes.name(*a).to_string(),
            Dim::Extent(c) => c.display(axes).to_string(),
        })
        .collect();
    let mut s = format!("{}: [{}]", p.role, dims.join(", "));
    if !p.per_lane.is_empty() {
        let _ = write!(s, " per {}", list(&p.per_lane, axes));
    }
    if !p.trainable {
        s.push_str(" frozen");
    }
    s
}

/// The op as the source language writes it (`linear[dm -> head, dk]`).
/// A box's op as [`op_text`] writes it, except that the parameter of `random[...]()` (a frozen
/// tensor, told apart by its role) is written as `random`.
pub fn box_text(b: &BoxNode, axes: &AxisTable) -> String {
    match (&b.op, b.params.first()) {
        (Op::Param(ids), Some(p)) if p.role == FROZEN_NORMAL || p.role == FROZEN_UNIFORM => {
            let mut parts = Vec::new();
            if !p.per_lane.is_empty() || !ids.is_empty() {
                let mut all = p.per_lane.clone();
                all.extend(ids.iter().copied());
                parts.push(list(&all, axes));
            }
            if p.role == FROZEN_UNIFORM {
                parts.push("dist = uniform".into());
            }
            format!("random[{}]", parts.join(", "))
        }
        _ => op_text(&b.op, axes),
    }
}

pub fn op_text(op: &Op, axes: &AxisTable) -> String {
    let n = |a: &AxisId| axes.name(*a).to_string();
    match op {
        Op::Copy(k) => format!("copy[{k}]"),
        Op::Discard => "discard".into(),
        Op::Zip(a) => format!("zip[{}]", n(a)),
        Op::Broadcast(a) => format!("broadcast_in[{}]", n(a)),
        Op::Collect(a) => format!("collect[{}]", n(a)),
        Op::LoopIn => "loop_in".into(),
        Op::Capture => "capture".into(),
        Op::LoopOut => "loop_out".into(),
        Op::Rename { from, to } => format!("rename[{} -> {}]", n(from), n(to)),
        Op::Split { from, into } => format!("split[{} -> {}]", n(from), list(into, axes)),
        Op::Merge { from, into } => format!("merge[{} -> {}]", list(from, axes), n(into)),
        Op::Expand(a) => format!("broadcast[{}]", n(a)),
        Op::Add => "add".into(),
        Op::Sub => "sub".into(),
        Op::Mul => "mul".into(),
        Op::Div => "div".into(),
        Op::Scale(c) => format!("scale[{}]", c.display(axes)),
        Op::Shift(c) => format!("shift[{}]", c.display(axes)),
        Op::Pow(c) => format!("pow[{}]", c.display(axes)),
        Op::Max => "max".into(),
        Op::Min => "min".into(),
        Op::Dot(a) => format!("dot[{}]", n(a)),
        Op::Outer => "outer".into(),
        Op::Sum(a) => format!("sum[{}]", n(a)),
        Op::Reduce(r, a) => format!("{}[{}]", r.name(), n(a)),
        Op::RotateHalf(a) => format!("rotate_half[{}]", n(a)),
        Op::Softmax(a) => format!("softmax[{}]", n(a)),
        Op::Normalise(a) => format!("normalise[{}]", n(a)),
        Op::Map(f) => f.name().into(),
        Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
            mask_text(op, *query, *key, band, axes, &|c| {
                c.display(axes).to_string()
            })
        }
        Op::Cumsum(a) => format!("cumsum[{}]", n(a)),
        Op::Scan(a) => format!("scan[{}]", n(a)),
        Op::MatScan { along, row, col } => format!("scan[{}, {} -> {}]", n(along), n(col), n(row)),
        Op::Dropout(c) => format!("dropout[{}]", c.display(axes)),
        Op::PosEnc { pos, feature } => format!("posenc[{}, {}]", n(pos), n(feature)),
        Op::Iota(a) => format!("iota[{}]", n(a)),
        Op::Fill { axes: ids, value } => {
            format!("fill[{}]({})", list(ids, axes), value.display(axes))
        }
        Op::Linear { from, to, bias } => format!(
            "linear[{} -> {}{}]",
            list(from, axes),
            list(to, axes),
            if *bias { "" } else { ", bias = false" }
        ),
        Op::Learner { from, to, width } => {
            format!(
                "learner[{} -> {}, width = {}]",
                list(from, axes),
                list(to, axes),
                width.display(axes)
            )
        }
        Op::Param(ids) if ids.is_empty() => "param[]".into(),
        Op::Param(ids) => format!("param[{}]", list(ids, axes)),
        Op::LayerNorm(ids) => format!("layernorm[{}]", list(ids, axes)),
        Op::Embed { vocab, to } => format!("embed[{} -> {}]", n(vocab), list(to, axes)),
        Op::Exec(e) => exec_op_text(e, axes),
        Op::Call { callee, hypers } => {
            let name = match callee {
                Callee::Diagram(d) => d.clone(),
                Callee::Hyper(h) => format!("{h} (hyperparameter)"),
            };
            if hypers.is_empty() {
                format!("call {name}")
            } else {
                let hs: Vec<String> = hypers
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", hyper_arg(v, axes)))
                    .collect();
                format!("call {name}[{}]", hs.join(", "))
            }
        }
    }
}

fn exec_op_text(op: &ExecOp, axes: &AxisTable) -> String {
    let n = |a: &AxisId| axes.name(*a).to_string();
    match op {
        ExecOp::Dropout { p, key } => format!("dropout[{p}, key = {key}]"),
        ExecOp::Einsum => "einsum".into(),
        ExecOp::SumTo => "sum_to".into(),
        ExecOp::Zeros => "zeros".into(),
        ExecOp::SoftmaxBack(a) => format!("softmax_back[{}]", n(a)),
        ExecOp::NormaliseBack(a) => format!("normalise_back[{}]", n(a)),
        ExecOp::ReduceBack(r, a) => format!("{}_back[{}]", r.name(), n(a)),
        ExecOp::MapBack(f) => format!("{}_back", f.name()),
        ExecOp::CumsumBack(a) => format!("cumsum_back[{}]", n(a)),
        ExecOp::ScanBack(a) => format!("scan_back[{}]", n(a)),
        ExecOp::MatScanBack { along, row, col } => {
            format!("scan_back[{}, {} -> {}]", n(along), n(col), n(row))
        }
        ExecOp::Lag(a) => format!("lag[{}]", n(a)),
        ExecOp::LayerNormBack(ids) => format!("layernorm_back[{}]", list(ids, axes)),
        ExecOp::EmbedBack { vocab } => format!("embed_back[{}]", n(vocab)),
        ExecOp::CrossEntropy { classes } => format!("cross_entropy[{}]", n(classes)),
        ExecOp::CrossEntropyBack { classes } => format!("cross_entropy_back[{}]", n(classes)),
        ExecOp::Attention(a) | ExecOp::AttentionBack(a) => format!(
            "{}[{}, {}, {}, {}, scale = {}]",
            if matches!(op, ExecOp::Attention(_)) {
                "attention"
            } else {
                "attention_back"
            },
            n(&a.query),
            n(&a.key),
            n(&a.feat),
            n(&a.vfeat),
            a.scale
        ),
        ExecOp::LinearAttention(a) | ExecOp::LinearAttentionBack(a) => format!(
            "{}[{}, {}, {}, eps = {}]",
            if matches!(op, ExecOp::LinearAttention(_)) {
                "linear_attention"
            } else {
                "linear_attention_back"
            },
            n(&a.pos),
            n(&a.feat),
            n(&a.vfeat),
            a.eps
        ),
    }
}

/// `causal[Q, K]` or `causal_zero[Q, K]` with its band's options, the window written by `konst`.
pub fn mask_text(
    op: &Op,
    query: AxisId,
    key: AxisId,
    band: &Band,
    axes: &AxisTable,
    konst: &dyn Fn(&Const) -> String,
) -> String {
    let name = if matches!(op, Op::Causal { .. }) {
        "causal"
    } else {
        "causal_zero"
    };
    let mut parts = vec![axes.name(query).to_string(), axes.name(key).to_string()];
    if band.strict {
        parts.push("strict = true".into());
    }
    if let Some(w) = &band.window {
        parts.push(format!("window = {}", konst(w)));
    }
    format!("{name}[{}]", parts.join(", "))
}
