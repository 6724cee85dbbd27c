//! Reverse-mode automatic differentiation on the IR.
//!
//! From an instantiated diagram `f: inputs -> outputs`, [`gradient`] builds a new diagram in the
//! same IR, so every backend runs it:
//!
//! ```text
//! grad f: (inputs..., seeds...) -> (outputs..., d<seeds . outputs>/d input for each value input)
//! ```
//!
//! It contains the forward boxes, then one group of backward boxes per forward box in reverse
//! order. Because every wire of an IR diagram has exactly one consumer (copies are explicit),
//! every wire receives exactly one gradient: from its consumer's backward rule, or from a seed.
//! A copy's backward rule adds its outputs' gradients; a discard's gives none. Lifting needs no
//! rule of its own: instantiated diagrams are already lowered, and a shared parameter's gradient
//! sums over lanes because the contraction that uses it sums over every axis the parameter lacks,
//! while a per-lane parameter keeps its lane axis.

use crate::error::Error;
use crate::ir::build::Graph;
use crate::ir::verify::Flat;
use crate::ir::{Const, Diagram, ExecOp, Func, Op, WireId, WireType};

/// A gradient diagram and how its outputs line up with the forward diagram.
pub struct Gradient {
    /// Flat: verified to hold executable ops only.
    pub diagram: Flat,
    /// For each forward input, the index of its gradient among the gradient diagram's outputs
    /// (`None` for index wires, which have no gradient).
    pub grad_of: Vec<Option<usize>>,
    /// How many forward outputs come first among the outputs.
    pub forward_outputs: usize,
}

/// Builds the gradient diagram of `f` (an instantiated diagram).
pub fn gradient(f: &Diagram) -> Result<Gradient, Error> {
    let mut g = Graph::default();
    let mut map: Vec<Option<WireId>> = vec![None; f.wires.len()];
    for (k, w) in f.inputs.iter().enumerate() {
        let name = f
            .input_names
            .get(k)
            .cloned()
            .unwrap_or_else(|| format!("in{k}"));
        map[w.0 as usize] = Some(g.input(f.wire(*w).ty.clone(), name, f.wire(*w).span));
    }
    let fw = |map: &[Option<WireId>], w: WireId| map[w.0 as usize].expect("forward wire emitted");
    // The forward pass, as is.
    for b in &f.boxes {
        let ins: Vec<WireId> = b.inputs.iter().map(|w| fw(&map, *w)).collect();
        let outs = g.add(
            b.op.clone(),
            ins,
            b.outputs.iter().map(|w| f.wire(*w).ty.clone()).collect(),
            b.span,
        );
        for (o, n) in b.outputs.iter().zip(outs) {
            map[o.0 as usize] = Some(n);
        }
    }
    // Seeds.
    let mut grad: Vec<Option<WireId>> = vec![None; f.wires.len()];
    for (k, w) in f.outputs.iter().enumerate() {
        let ty = f.wire(*w).ty.clone();
        if ty.index_of.is_none() {
            grad[w.0 as usize] = Some(g.input(ty, format!("seed{k}"), f.wire(*w).span));
        }
    }
    // The backward pass.
    for b in f.boxes.iter().rev() {
        let gys: Vec<Option<WireId>> = b.outputs.iter().map(|w| grad[w.0 as usize]).collect();
        if gys.iter().all(Option::is_none) {
            continue;
        }
        let x = |k: usize| fw(&map, b.inputs[k]);
        let ty = |k: usize| f.wire(b.inputs[k]).ty.clone();
        let yty = |k: usize| f.wire(b.outputs[k]).ty.clone();
        let span = b.span;
        let gy = gys[0];
        let gx: Vec<Option<WireId>> = match &b.op {
            Op::Copy(_) => {
                let mut acc: Option<WireId> = None;
                for gi in gys.iter().flatten() {
                    acc = Some(match acc {
                        None => *gi,
                        Some(a) => g.add1(Op::Add, vec![a, *gi], ty(0), span),
                    });
                }
                vec![acc]
            }
            Op::Discard => vec![],
            Op::Exec(fused @ (ExecOp::Attention(_) | ExecOp::LinearAttention(_))) => {
                // Two outputs: the attended values, and the statistic (log-sum-exp, or the
                // denominator) that the backward box reuses (not itself differentiable).
                if gys[1].is_some() {
                    return Err(Error::Autodiff(
                        "the second output of fused attention is used: it has no gradient rule"
                            .into(),
                    ));
                }
                let Some(go) = gy else { continue };
                let y = |k: usize| fw(&map, b.outputs[k]);
                let back = match fused {
                    ExecOp::Attention(at) => ExecOp::AttentionBack(*at),
                    ExecOp::LinearAttention(at) => ExecOp::LinearAttentionBack(*at),
                    _ => unreachable!("matched above"),
                };
                g.add(
                    Op::Exec(back),
                    vec![x(0), x(1), x(2), y(0), y(1), go],
                    vec![ty(0), ty(1), ty(2)],
                    span,
                )
                .into_iter()
                .map(Some)
                .collect()
            }
            _ => {
                let gy = gy.expect("single-output boxes have their gradient");
                backward(
                    &mut g,
                    &b.op,
                    gy,
                    &gys,
                    &x,
                    &ty,
                    &yty,
                    fw(&map, b.outputs.first().copied().unwrap_or(WireId(0))),
                    span,
                )?
            }
        };
        for (w, gi) in b.inputs.iter().zip(gx) {
            if let Some(gi) = gi {
                grad[w.0 as usize] = Some(gi);
            }
        }
    }
    // Outputs: the forward outputs, then a gradient for every value input.
    let mut outputs: Vec<WireId> = f.outputs.iter().map(|w| fw(&map, *w)).collect();
    let forward_outputs = outputs.len();
    let mut grad_of = Vec::new();
    for w in &f.inputs {
        let ty = f.wire(*w).ty.clone();
        if ty.index_of.is_some() {
            grad_of.push(None);
            continue;
        }
        let gw = match grad[w.0 as usize] {
            Some(gw) => gw,
            None => g.add1(Op::Exec(ExecOp::Zeros), vec![], ty, f.wire(*w).span),
        };
        grad_of.push(Some(outputs.len()));
        outputs.push(gw);
    }
    let diagram = Flat::new(
        g.finish(format!("grad {}", f.name), outputs, f.span),
        "autodiff",
    )?;
    Ok(Gradient {
        diagram,
        grad_of,
        forward_outputs,
    })
}

/// The gradients of a box's inputs, given its outputs' gradients. `x(k)` is forward input `k`
/// (its wire in the gradient diagram), `ty(k)` its type, `y` the first forward output.
#[allow(clippy::too_many_arguments)]
fn backward(
    g: &mut Graph,
    op: &Op,
    gy: WireId,
    gys: &[Option<WireId>],
    x: &dyn Fn(usize) -> WireId,
    ty: &dyn Fn(usize) -> WireType,
    yty: &dyn Fn(usize) -> WireType,
    y: WireId,
    span: crate::source::Span,
) -> Result<Vec<Option<WireId>>, Error> {
    let neg = |g: &mut Graph, w: WireId, t: WireType| {
        g.add1(Op::Scale(Const::Num(-1.0)), vec![w], t, span)
    };
    Ok(match op {
        Op::Rename { from, to } => vec![Some(g.add1(
            Op::Rename {
                from: *to,
                to: *from,
            },
            vec![gy],
            ty(0),
            span,
        ))],
        Op::Split { from, into } => {
            vec![Some(g.add1(
                Op::Merge {
                    from: into.clone(),
                    into: *from,
                },
                vec![gy],
                ty(0),
                span,
            ))]
        }
        Op::Merge { from, into } => {
            vec![Some(g.add1(
                Op::Split {
                    from: *into,
                    into: from.clone(),
                },
                vec![gy],
                ty(0),
                span,
            ))]
        }
        Op::Expand(_) | Op::Exec(ExecOp::SumTo) => {
            vec![Some(g.add1(Op::Exec(ExecOp::SumTo), vec![gy], ty(0), span))]
        }
        Op::Add => vec![Some(gy), Some(gy)],
        Op::Sub => vec![Some(gy), Some(neg(g, gy, ty(1)))],
        Op::Mul => vec![
            Some(g.add1(Op::Mul, vec![gy, x(1)], ty(0), span)),
            Some(g.add1(Op::Mul, vec![gy, x(0)], ty(1), span)),
        ],
        Op::Div => {
            // d(a/b)/da = 1/b; d(a/b)/db = -a/b^2.
            let ga = g.add1(Op::Div, vec![gy, x(1)], ty(0), span);
            let num = g.add1(Op::Mul, vec![gy, x(0)], ty(1), span);
            let bb = g.add1(Op::Mul, vec![x(1), x(1)], ty(1), span);
            let q = g.add1(Op::Div, vec![num, bb], ty(1), span);
            vec![Some(ga), Some(neg(g, q, ty(1)))]
        }
        Op::Scale(c) => vec![Some(g.add1(Op::Scale(c.clone()), vec![gy], ty(0), span))],
        Op::Shift(_) => vec![Some(gy)],
        Op::Dot(_) | Op::Outer | Op::Exec(ExecOp::Einsum) => vec![
            Some(g.add1(Op::Exec(ExecOp::Einsum), vec![gy, x(1)], ty(0), span)),
            Some(g.add1(Op::Exec(ExecOp::Einsum), vec![gy, x(0)], ty(1), span)),
        ],
        Op::Sum(a) => vec![Some(g.add1(Op::Expand(*a), vec![gy], ty(0), span))],
        Op::RotateHalf(a) => {
            // The rotation is orthogonal with R^T = -R.
            let r = g.add1(Op::RotateHalf(*a), vec![gy], ty(0), span);
            vec![Some(neg(g, r, ty(0)))]
        }
        Op::Reduce(r, a) => vec![Some(g.add1(
            Op::Exec(ExecOp::ReduceBack(*r, *a)),
            vec![x(0), gy],
            ty(0),
            span,
        ))],
        Op::Softmax(a) => vec![Some(g.add1(
            Op::Exec(ExecOp::SoftmaxBack(*a)),
            vec![y, gy],
            ty(0),
            span,
        ))],
        Op::Normalise(a) => vec![Some(g.add1(
            Op::Exec(ExecOp::NormaliseBack(*a)),
            vec![x(0), gy],
            ty(0),
            span,
        ))],
        // Nothing flows back through `stop_grad`: its input gets no gradient from here.
        Op::Map(Func::StopGrad) => vec![None],
        Op::Pow(c) => {
            // d(x^c)/dx = c x^(c-1).
            // (Differentiated diagrams are instantiated: the exponent is a number.)
            let Const::Num(k) = c else {
                return Err(Error::Autodiff(
                    "pow with an unevaluated exponent (instantiate first)".into(),
                ));
            };
            let p = g.add1(Op::Pow(Const::Num(k - 1.0)), vec![x(0)], ty(0), span);
            let d = g.add1(Op::Scale(c.clone()), vec![p], ty(0), span);
            vec![Some(g.add1(Op::Mul, vec![gy, d], ty(0), span))]
        }
        Op::Max | Op::Min => {
            // The left side gets the gradient where it is the result (ties included), the
            // right side the rest: step(a - b) for max, step(b - a) for min.
            let diff = if matches!(op, Op::Max) {
                g.add1(Op::Sub, vec![x(0), x(1)], ty(0), span)
            } else {
                g.add1(Op::Sub, vec![x(1), x(0)], ty(0), span)
            };
            let left = g.add1(Op::Map(Func::Step), vec![diff], ty(0), span);
            let ga = g.add1(Op::Mul, vec![gy, left], ty(0), span);
            let gb = g.add1(Op::Sub, vec![gy, ga], ty(1), span);
            vec![Some(ga), Some(gb)]
        }
        Op::Map(f) => vec![Some(g.add1(
            Op::Exec(ExecOp::MapBack(*f)),
            vec![x(0), gy],
            ty(0),
            span,
        ))],
        Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
            vec![Some(g.add1(
                Op::CausalZero {
                    query: *query,
                    key: *key,
                    band: band.clone(),
                },
                vec![gy],
                ty(0),
                span,
            ))]
        }
        Op::Scan(a) => {
            // y_t = g_t y_(t-1) + x_t: u = scan_back(gy, g), gx = u, gg = u * lag(y).
            // A gate with fewer axes than `x` (broadcast, as a constant gate in a batched model
            // is) gets the sum over the axes it lacks.
            let u = g.add1(Op::Exec(ExecOp::ScanBack(*a)), vec![gy, x(0)], ty(1), span);
            let prev = g.add1(Op::Exec(ExecOp::Lag(*a)), vec![y], ty(1), span);
            let mut gg = g.add1(Op::Mul, vec![u, prev], ty(1), span);
            if ty(0).axes.len() != ty(1).axes.len() {
                gg = g.add1(Op::Exec(ExecOp::SumTo), vec![gg], ty(0), span);
            }
            vec![Some(gg), Some(u)]
        }
        Op::MatScan { along, row, col } => {
            // y_t = g_t y_(t-1) + x_t: u = scan_back(gy, g), gx = u, and
            // gg[.., row, col] = u[.., row] * lag(y)[.., row := col], summed over the axes the
            // gate lacks (an einsum to the gate's type).
            let (along, row, col) = (*along, *row, *col);
            let u = g.add1(
                Op::Exec(ExecOp::MatScanBack { along, row, col }),
                vec![gy, x(0)],
                ty(1),
                span,
            );
            let prev = g.add1(Op::Exec(ExecOp::Lag(along)), vec![y], ty(1), span);
            let mut pty = ty(1);
            for a in pty.axes.iter_mut() {
                if *a == row {
                    *a = col;
                }
            }
            let prev = g.add1(Op::Rename { from: row, to: col }, vec![prev], pty, span);
            let gg = g.add1(Op::Exec(ExecOp::Einsum), vec![u, prev], ty(0), span);
            vec![Some(gg), Some(u)]
        }
        Op::Cumsum(a) => vec![Some(g.add1(
            Op::Exec(ExecOp::CumsumBack(*a)),
            vec![gy],
            ty(0),
            span,
        ))],
        Op::Exec(ExecOp::Dropout { p, key }) => {
            // The same mask: the backward box has the forward output's layout (see interp).
            vec![Some(g.add1(
                Op::Exec(ExecOp::Dropout { p: *p, key: *key }),
                vec![gy],
                yty(0),
                span,
            ))]
        }
        Op::PosEnc { .. } | Op::Iota(_) | Op::Fill { .. } | Op::Exec(ExecOp::Zeros) => vec![],
        Op::Linear { bias, .. } => {
            let mut v = vec![
                Some(g.add1(Op::Exec(ExecOp::Einsum), vec![gy, x(1)], ty(0), span)),
                Some(g.add1(Op::Exec(ExecOp::Einsum), vec![gy, x(0)], ty(1), span)),
            ];
            if *bias {
                v.push(Some(g.add1(Op::Exec(ExecOp::SumTo), vec![gy], ty(2), span)));
            }
            v
        }
        Op::LayerNorm(over) => {
            let outs = g.add(
                Op::Exec(ExecOp::LayerNormBack(over.clone())),
                vec![x(0), x(1), gy],
                vec![ty(0), ty(1), ty(2)],
                span,
            );
            outs.into_iter().map(Some).collect()
        }
        Op::Exec(ExecOp::CrossEntropy { classes }) => vec![
            Some(g.add1(
                Op::Exec(ExecOp::CrossEntropyBack { classes: *classes }),
                vec![x(0), x(1), gy],
                ty(0),
                span,
            )),
            None,
        ],
        Op::Embed { vocab, .. } => {
            vec![
                None,
                Some(g.add1(
                    Op::Exec(ExecOp::EmbedBack { vocab: *vocab }),
                    vec![x(0), gy],
                    ty(1),
                    span,
                )),
            ]
        }
        other => {
            let _ = gys;
            return Err(Error::Autodiff(format!(
                "no gradient rule for `{other:?}` (only instantiated, first-order diagrams are differentiated)"
            )));
        }
    })
}
