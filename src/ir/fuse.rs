//! Fusion of causal dot-product attention into one box ([`ExecOp::Attention`]).
//!
//! In an instance, M1's attention is five boxes per head and batch:
//!
//! ```text
//! s = dot[dk](q, k)  ->  scale[c]  ->  causal[tok, src]  ->  softmax[src]  ->  dot[src](_, v)
//! ```
//!
//! which materialise two `[tok, src]` score tensors per lane (and the gradient three more).
//! [`fuse_attention`] replaces each such chain by one `attention` box computing `(o, lse)` from
//! `(q, k, v)` without them; autodiff turns it into one `attention_back` box. The CUDA backend
//! runs both as flash-attention kernels. The chain must be exactly that (the scale may be
//! absent), each intermediate wire used once (the IR's one-consumer invariant makes "used by
//! the next box" the only case), the lanes of `q`, `k` and `v` the same, and query and key of
//! one size. Anything else is left as it is, so the pass never changes a diagram's meaning:
//! the interpreter's `attention` is defined as that chain, and `tests/fuse.rs` checks forward
//! values and gradients against the unfused instance.

use super::instance::Instance;
use super::{Attention, BoxId, Const, ExecOp, Op, WireId, WireSink, WireType, build};

/// The boxes of one matched chain and its operands.
struct Chain {
    /// The boxes replaced (the first dot, the scale if any, the mask, the softmax); the last
    /// dot becomes the fused box.
    gone: Vec<BoxId>,
    last: BoxId,
    q: WireId,
    k: WireId,
    v: WireId,
    at: Attention,
}

/// The instance with every causal attention chain fused, and how many were.
pub fn fuse_attention(inst: &Instance) -> (Instance, usize) {
    let d = &inst.diagram;
    let chains: Vec<Chain> = (0..d.boxes.len())
        .filter_map(|b| chain_at(inst, BoxId(b as u32)))
        .collect();
    if chains.is_empty() {
        return (inst.clone(), 0);
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
                let o = d.wire(b.outputs[0]).ty.clone();
                let lse = WireType::values(
                    o.axes
                        .iter()
                        .copied()
                        .filter(|a| *a != c.at.vfeat)
                        .collect(),
                );
                (
                    Op::Exec(ExecOp::Attention(c.at)),
                    vec![get(&map, c.q), get(&map, c.k), get(&map, c.v)],
                    vec![o, lse],
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
    let diagram = g.finish(d.name.clone(), outputs, d.span);
    let n = chains.len();
    (
        Instance {
            diagram,
            ..inst.clone()
        },
        n,
    )
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
    let Op::Causal { query, key } = node(b).op else {
        return None;
    };
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
    let lane = |x: super::AxisId| ty(q).has(x) && x != query && x != feat;
    let vfeat = *ty(v).axes.iter().find(|x| **x != key && !lane(**x))?;
    let at = Attention {
        query,
        key,
        feat,
        vfeat,
        scale,
    };
    shapes_fit(inst, [ty(q), ty(k), ty(v), ty(out)], &at).then_some(Chain {
        gone,
        last,
        q,
        k,
        v,
        at,
    })
}

/// Whether `q`, `k`, `v` and the output have the shapes the fused box computes: one set of
/// lanes `L` with `q = L + {query, feat}`, `k = L + {key, feat}`, `v = L + {key, vfeat}`,
/// `out = L + {query, vfeat}`, and query and key of one size.
fn shapes_fit(inst: &Instance, [q, k, v, out]: [&WireType; 4], at: &Attention) -> bool {
    if [q, k, v, out].iter().any(|t| t.index_of.is_some())
        || at.query == at.key
        || inst.size(at.query) != inst.size(at.key)
    {
        return false;
    }
    let lanes: Vec<_> = q
        .axes
        .iter()
        .copied()
        .filter(|a| *a != at.query && *a != at.feat)
        .collect();
    let is = |t: &WireType, extra: [super::AxisId; 2]| {
        let mut want: Vec<_> = lanes.iter().copied().chain(extra).collect();
        let mut have = t.axes.clone();
        want.sort();
        want.dedup();
        have.sort();
        want.len() == lanes.len() + 2 && want == have
    };
    is(q, [at.query, at.feat])
        && is(k, [at.key, at.feat])
        && is(v, [at.key, at.vfeat])
        && is(out, [at.query, at.vfeat])
}
