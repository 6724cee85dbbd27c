//! Fusion of causal attention into one box: [`ExecOp::Attention`] for softmax attention (M1)
//! and [`ExecOp::LinearAttention`] for linear attention (M0).
//!
//! In an instance, M1's attention is five boxes per head and batch:
//!
//! ```text
//! s = dot[dk](q, k)  ->  scale[c]  ->  causal[tok, src]  ->  softmax[src]  ->  dot[src](_, v)
//! ```
//!
//! which materialise two `[tok, src]` score tensors per lane (and the gradient three more).
//! M0's is nine (two copies, an outer product, two prefix sums, two dots, a shift, a broadcast)
//! before its division, and materialises a `[tok, dk, dv]` state per lane. [`fuse_attention`]
//! replaces each such chain by one box computing `(o, lse)` (or `(out, den)`) from `(q, k, v)`
//! without them; autodiff turns it into one backward box. The CUDA backend runs them as the
//! flash-attention and linear-attention kernels of `kernels/`. A chain must be exactly that
//! (M1's scale may be absent), each intermediate wire used by the next box alone (the IR's
//! one-consumer invariant, copies being boxes), the lanes of `q`, `k` and `v` the same, and
//! M1's query and key of one size. Anything else is left as it is, so the pass never changes a
//! diagram's meaning: the interpreter's fused boxes are defined as those chains, and
//! `tests/fuse.rs` checks forward values and gradients against the unfused instance.

use super::instance::Instance;
use super::{
    Attention, AxisId, BoxId, Const, ExecOp, LinearAttention, Op, WireId, WireSink, WireSource,
    WireType, build,
};

/// The boxes of one matched chain and its operands.
struct Chain {
    /// The boxes replaced, but for the last, which becomes the fused box.
    gone: Vec<BoxId>,
    last: BoxId,
    /// `q, k, v` (or `qf, kf, v`).
    inputs: [WireId; 3],
    op: ExecOp,
    /// The type of the fused box's second output (`lse`, or `den`).
    second: WireType,
}

/// The instance with every causal attention chain fused, and how many were. The result is
/// verified ([`super::verify`]); an error is a bug of this pass.
pub fn fuse_attention(inst: &Instance) -> Result<(Instance, usize), crate::error::Error> {
    let d = &inst.diagram;
    // Chains in box order; one that shares a box with an earlier chain (attention applied to
    // the output of attention along its value feature, say) is left unfused.
    let mut claimed = vec![false; d.boxes.len()];
    let mut chains: Vec<Chain> = Vec::new();
    for b in (0..d.boxes.len()).map(|b| BoxId(b as u32)) {
        let Some(c) = chain_at(inst, b).or_else(|| linear_at(inst, b)) else {
            continue;
        };
        let boxes = || c.gone.iter().chain([&c.last]).map(|b| b.0 as usize);
        if boxes().any(|b| claimed[b]) {
            continue;
        }
        boxes().for_each(|b| claimed[b] = true);
        chains.push(c);
    }
    if chains.is_empty() {
        return Ok((inst.clone(), 0));
    }
    let mut gone = vec![false; d.boxes.len()];
    let mut fused: Vec<Option<usize>> = vec![None; d.boxes.len()];
    for (i, c) in chains.iter().enumerate() {
        for b in &c.gone {
            gone[b.0 as usize] = true;
        }
        fused[c.last.0 as usize] = Some(i);
    }
    let mut g = build::Graph::default();
    let mut map: Vec<Option<WireId>> = vec![None; d.wires.len()];
    let get = |map: &[Option<WireId>], w: WireId| map[w.0 as usize].expect("topological order");
    for (k, w) in d.inputs.iter().enumerate() {
        let wire = d.wire(*w);
        map[w.0 as usize] = Some(g.input(wire.ty.clone(), d.input_names[k].clone(), wire.span));
    }
    for (bi, b) in d.boxes.iter().enumerate() {
        if gone[bi] {
            continue;
        }
        let (op, ins, outs) = match fused[bi] {
            Some(i) => {
                let c = &chains[i];
                (
                    Op::Exec(c.op.clone()),
                    c.inputs.iter().map(|w| get(&map, *w)).collect(),
                    vec![d.wire(b.outputs[0]).ty.clone(), c.second.clone()],
                )
            }
            None => (
                b.op.clone(),
                b.inputs.iter().map(|w| get(&map, *w)).collect(),
                b.outputs.iter().map(|w| d.wire(*w).ty.clone()).collect(),
            ),
        };
        let new = g.add(op, ins, outs, b.span);
        for (o, n) in b.outputs.iter().zip(&new) {
            map[o.0 as usize] = Some(*n);
            g.wires[n.0 as usize].name = d.wire(*o).name.clone();
        }
        g.boxes.last_mut().expect("just added").params = b.params.clone();
    }
    let outputs = d.outputs.iter().map(|w| get(&map, *w)).collect();
    let diagram = super::verify::Flat::new(
        g.finish(d.name.clone(), outputs, d.span),
        "attention fusion",
    )?;
    let n = chains.len();
    Ok((
        Instance {
            diagram,
            ..inst.clone()
        },
        n,
    ))
}

/// The chain whose first box is `first`, if it is one.
fn chain_at(inst: &Instance, first: BoxId) -> Option<Chain> {
    let d = &inst.diagram;
    let node = |b: BoxId| d.node(b);
    // The one box reading the single output of `b`.
    let next = |b: BoxId| -> Option<BoxId> {
        let n = node(b);
        if n.outputs.len() != 1 {
            return None;
        }
        match d.wire(n.outputs[0]).sink? {
            WireSink::Box(c, _) => Some(c),
            WireSink::Output(_) => None,
        }
    };
    let Op::Dot(feat) = node(first).op else {
        return None;
    };
    let mut gone = vec![first];
    let mut b = next(first)?;
    let mut scale = 1.0;
    if let Op::Scale(Const::Num(c)) = node(b).op {
        scale = c;
        gone.push(b);
        b = next(b)?;
    }
    // The fused kernels mask with the plain causal mask only.
    let Op::Causal {
        query,
        key,
        ref band,
    } = node(b).op
    else {
        return None;
    };
    if !band.is_plain() {
        return None;
    }
    gone.push(b);
    b = next(b)?;
    if node(b).op != Op::Softmax(key) {
        return None;
    }
    gone.push(b);
    let probs = node(b).outputs[0];
    let last = next(b)?;
    if node(last).op != Op::Dot(key) {
        return None;
    }
    let v = *node(last).inputs.iter().find(|w| **w != probs)?;
    let [a, c] = node(first).inputs[..] else {
        return None;
    };
    let ty = |w: WireId| &d.wire(w).ty;
    let (q, k) = if ty(a).has(query) { (a, c) } else { (c, a) };
    let out = d.node(last).outputs[0];
    // The value feature: `v`'s axis that is neither the key nor a lane (a lane being an axis
    // of `q` other than the query and the summed feature).
    let lane = |x: AxisId| ty(q).has(x) && x != query && x != feat;
    let vfeat = *ty(v).axes.iter().find(|x| **x != key && !lane(**x))?;
    let at = Attention {
        query,
        key,
        feat,
        vfeat,
        scale,
    };
    let second = WireType::values(
        ty(out)
            .axes
            .iter()
            .copied()
            .filter(|a| *a != vfeat)
            .collect(),
    );
    shapes_fit(inst, [ty(q), ty(k), ty(v), ty(out)], &at).then_some(Chain {
        gone,
        last,
        inputs: [q, k, v],
        op: ExecOp::Attention(at),
        second,
    })
}

/// The linear attention chain (M0) whose last box, the division, is `last`:
///
/// ```text
/// qf -> copy[2] -> (qa, qb)       kf -> copy[2] -> (ka, kb)
/// num = dot[feat](qa, cumsum[pos](outer(ka, v)))
/// den = shift[eps](dot[feat](qb, cumsum[pos](kb)))
/// div(num, expand[vfeat](den))
/// ```
fn linear_at(inst: &Instance, last: BoxId) -> Option<Chain> {
    let d = &inst.diagram;
    let node = |b: BoxId| d.node(b);
    let ty = |w: WireId| &d.wire(w).ty;
    // The box producing `w`, if its op satisfies `want`.
    let from = |w: WireId, want: &dyn Fn(&Op) -> bool| -> Option<BoxId> {
        match d.wire(w).source {
            WireSource::Box(b, _) if want(&node(b).op) => Some(b),
            _ => None,
        }
    };
    let copy2 = |op: &Op| *op == Op::Copy(2);
    if node(last).op != Op::Div {
        return None;
    }
    let [num, bden] = node(last).inputs[..] else {
        return None;
    };
    let expand = from(bden, &|op| matches!(op, Op::Expand(_)))?;
    let Op::Expand(vfeat) = node(expand).op else {
        return None;
    };
    let shift = from(node(expand).inputs[0], &|op| {
        matches!(op, Op::Shift(Const::Num(_)))
    })?;
    let Op::Shift(Const::Num(eps)) = node(shift).op else {
        return None;
    };
    let den_dot = from(node(shift).inputs[0], &|op| matches!(op, Op::Dot(_)))?;
    let Op::Dot(feat) = node(den_dot).op else {
        return None;
    };
    let num_dot = from(num, &|op| *op == Op::Dot(feat))?;
    // Each dot reads a copy of qf and a prefix sum.
    let split = |dot: BoxId| -> Option<(WireId, BoxId)> {
        let [a, b] = node(dot).inputs[..] else {
            return None;
        };
        let sum = |w: WireId| from(w, &|op| matches!(op, Op::Cumsum(_)));
        match (sum(a), sum(b)) {
            (None, Some(c)) => Some((a, c)),
            (Some(c), None) => Some((b, c)),
            _ => None,
        }
    };
    let (qa, kv_sum) = split(num_dot)?;
    let (qb, z_sum) = split(den_dot)?;
    let Op::Cumsum(pos) = node(kv_sum).op else {
        return None;
    };
    if node(z_sum).op != Op::Cumsum(pos) {
        return None;
    }
    let q_copy = from(qa, &copy2)?;
    let outer = from(node(kv_sum).inputs[0], &|op| *op == Op::Outer)?;
    let k_copy = from(node(z_sum).inputs[0], &copy2)?;
    let [x, y] = node(outer).inputs[..] else {
        return None;
    };
    let (ka, v) = if from(x, &copy2) == Some(k_copy) {
        (x, y)
    } else {
        (y, x)
    };
    if from(qb, &copy2) != Some(q_copy) || from(ka, &copy2) != Some(k_copy) || k_copy == q_copy {
        return None;
    }
    let (qf, kf) = (node(q_copy).inputs[0], node(k_copy).inputs[0]);
    let out = node(last).outputs[0];
    // One set of lanes L: qf, kf = L + {pos, feat}; v, out = L + {pos, vfeat}.
    let fits = feat != vfeat
        && one_lane_set(&[
            (ty(qf), [pos, feat]),
            (ty(kf), [pos, feat]),
            (ty(v), [pos, vfeat]),
            (ty(out), [pos, vfeat]),
        ]);
    fits.then(|| Chain {
        gone: vec![
            q_copy, k_copy, outer, kv_sum, z_sum, num_dot, den_dot, shift, expand,
        ],
        last,
        inputs: [qf, kf, v],
        op: ExecOp::LinearAttention(LinearAttention {
            pos,
            feat,
            vfeat,
            eps,
        }),
        second: d.wire(node(shift).outputs[0]).ty.clone(),
    })
}

/// Whether `q`, `k`, `v` and the output have the shapes the fused box computes: one set of
/// lanes `L` with `q = L + {query, feat}`, `k = L + {key, feat}`, `v = L + {key, vfeat}`,
/// `out = L + {query, vfeat}`, and query and key of one size.
fn shapes_fit(inst: &Instance, [q, k, v, out]: [&WireType; 4], at: &Attention) -> bool {
    at.query != at.key
        && inst.size(at.query) == inst.size(at.key)
        && one_lane_set(&[
            (q, [at.query, at.feat]),
            (k, [at.key, at.feat]),
            (v, [at.key, at.vfeat]),
            (out, [at.query, at.vfeat]),
        ])
}

/// Whether value wires share one set of lane axes `L`: each `(t, [a, b])` has the axes
/// `L + {a, b}`, with `a` and `b` distinct and outside `L`, where `L` is the first wire's axes
/// less its two.
fn one_lane_set(wires: &[(&WireType, [AxisId; 2])]) -> bool {
    let Some((first, [a, b])) = wires.first() else {
        return false;
    };
    let lanes: Vec<AxisId> = first
        .axes
        .iter()
        .copied()
        .filter(|x| x != a && x != b)
        .collect();
    wires.iter().all(|(t, extra)| {
        let mut want: Vec<AxisId> = lanes.iter().copied().chain(*extra).collect();
        let mut have = t.axes.clone();
        want.sort();
        want.dedup();
        have.sort();
        t.index_of.is_none() && want.len() == lanes.len() + 2 && want == have
    })
}
