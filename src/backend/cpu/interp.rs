//! The reference interpreter: the semantic oracle.
//!
//! It runs an instantiated (flat, functional) diagram box by box in f64 on ndarray, with named
//! axes: every value is a [`Tensor`] that knows which axis each dimension is, and every op lines
//! its inputs up by axis name. Clarity comes first here; the fast executor and every other
//! backend are checked against this one.

use super::tensor::{Tensor, einsum};
use crate::error::Error;
use crate::ir::verify::Flat;
use crate::ir::{AxisId, Diagram, ExecOp, Op, Reduction, Visible, WireId, WireType};
use ndarray::{ArrayD, Axis, IxDyn, Zip};

/// How a run behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Training mode: dropout is active. Off: dropout is the identity.
    pub train: bool,
    /// Seeds the dropout masks (with each box's key).
    pub seed: u64,
    /// Stop at the first box that produces a NaN or an infinity, naming it.
    pub check_finite: bool,
}

/// Runs `d` (an instantiated diagram) on `inputs`, one per diagram input, in order.
pub fn run(
    d: &Flat,
    axes: &crate::ir::AxisTable,
    sizes: &[usize],
    inputs: Vec<Tensor>,
    opts: RunOptions,
) -> Result<Vec<Tensor>, Error> {
    if inputs.len() != d.inputs.len() {
        return Err(Error::Run(format!(
            "{} inputs given, the diagram takes {}",
            inputs.len(),
            d.inputs.len()
        )));
    }
    let mut values: Vec<Option<Tensor>> = vec![None; d.wires.len()];
    for (k, (w, t)) in d.inputs.iter().zip(inputs).enumerate() {
        let want = &d.wire(*w).ty;
        let name = d.input_names.get(k).cloned().unwrap_or_default();
        let t = conform(t, want, sizes, axes)
            .map_err(|e| Error::Run(format!("input `{name}`: {e}")))?;
        values[w.0 as usize] = Some(t);
    }
    for (bi, b) in d.boxes.iter().enumerate() {
        let mut ins: Vec<Tensor> = Vec::with_capacity(b.inputs.len());
        for w in &b.inputs {
            // Each wire has one consumer: take the value, freeing it.
            let v = values[w.0 as usize]
                .take()
                .ok_or_else(|| Error::Run(format!("box {bi} reads a wire with no value")))?;
            ins.push(v);
        }
        let out_types: Vec<&WireType> = b.outputs.iter().map(|w| &d.wire(*w).ty).collect();
        let outs = eval(&b.op, ins, &out_types, sizes, opts).map_err(|e| {
            Error::Run(format!(
                "box {bi} ({}): {e}",
                crate::ir::print::op_text(&b.op, axes)
            ))
        })?;
        for (w, t) in b.outputs.iter().zip(outs) {
            if opts.check_finite && t.data.iter().any(|x| !x.is_finite()) {
                let wire = d.wire(*w);
                let name = wire.name.as_deref().unwrap_or("an unnamed wire");
                return Err(Error::Run(format!(
                    "box {bi} `{}` produced a NaN or infinity on {name} (at bytes {}..{} of the source)",
                    crate::ir::print::op_text(&b.op, axes),
                    b.span.start,
                    b.span.end
                )));
            }
            values[w.0 as usize] = Some(t);
        }
    }
    d.outputs
        .iter()
        .map(|w| {
            values[w.0 as usize]
                .take()
                .ok_or_else(|| Error::Run("an output has no value".into()))
        })
        .collect()
}

/// Checks an input's axes and shape against the wire type, reordering its axes if needed.
fn conform(
    t: Tensor,
    want: &WireType,
    sizes: &[usize],
    axes: &crate::ir::AxisTable,
) -> Result<Tensor, Error> {
    let same_set = t.axes.len() == want.axes.len() && want.axes.iter().all(|a| t.axes.contains(a));
    if !same_set {
        let show = |ids: &[AxisId]| {
            ids.iter()
                .map(|a| axes.name(*a))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::Run(format!(
            "has axes [{}], expected [{}]",
            show(&t.axes),
            show(&want.axes)
        )));
    }
    for (a, n) in t.axes.iter().zip(t.data.shape()) {
        if sizes[a.0 as usize] != *n {
            return Err(Error::Run(format!(
                "axis `{}` has size {n}, expected {}",
                axes.name(*a),
                sizes[a.0 as usize]
            )));
        }
    }
    Ok(t.aligned(&want.axes))
}

/// The matrix-gated scan, the plain way (the oracle): with the state `x` laid out as
/// `[batch.., along, row]` and the gate broadcast to `[batch.., along, row, col]`, forward
/// `y_t[r] = sum_c g_t[r, c] y_(t-1)[c] + x_t[r]` from the start; backward (`x` is then `gy`)
/// `u_t[c] = gy_t[c] + sum_r g_(t+1)[r, c] u_(t+1)[r]` from the end.
fn mat_scan(
    g: &Tensor,
    x: &Tensor,
    (along, row, col): (AxisId, AxisId, AxisId),
    back: bool,
    sizes: &[usize],
) -> Tensor {
    let mut order: Vec<AxisId> = x
        .axes
        .iter()
        .copied()
        .filter(|a| *a != along && *a != row)
        .collect();
    order.extend([along, row]);
    let x = x.clone().aligned(&order);
    let mut gorder = order.clone();
    gorder.push(col);
    let g = g.expand_to(&gorder, sizes);
    let xs: Vec<f64> = x.data.iter().copied().collect();
    let gs: Vec<f64> = g.data.iter().copied().collect();
    let n = sizes[along.0 as usize];
    let r = sizes[row.0 as usize];
    let lane = n * r;
    let mut y = vec![0.0; xs.len()];
    for b in 0..xs.len() / lane.max(1) {
        let (x, y, g) = (
            &xs[b * lane..(b + 1) * lane],
            &mut y[b * lane..(b + 1) * lane],
            &gs[b * lane * r..(b + 1) * lane * r],
        );
        let gate = |t: usize, i: usize, j: usize| g[(t * r + i) * r + j];
        if back {
            for t in (0..n).rev() {
                for c in 0..r {
                    let mut v = x[t * r + c];
                    if t + 1 < n {
                        for i in 0..r {
                            v += gate(t + 1, i, c) * y[(t + 1) * r + i];
                        }
                    }
                    y[t * r + c] = v;
                }
            }
        } else {
            for t in 0..n {
                for i in 0..r {
                    let mut v = x[t * r + i];
                    if t > 0 {
                        for c in 0..r {
                            v += gate(t, i, c) * y[(t - 1) * r + c];
                        }
                    }
                    y[t * r + i] = v;
                }
            }
        }
    }
    let shape: Vec<usize> = x.data.shape().to_vec();
    Tensor::from_vec(order, &shape, y)
}

fn one(mut v: Vec<Tensor>) -> Tensor {
    v.swap_remove(0)
}

/// Evaluates one op.
fn eval(
    op: &Op,
    mut ins: Vec<Tensor>,
    outs: &[&WireType],
    sizes: &[usize],
    opts: RunOptions,
) -> Result<Vec<Tensor>, Error> {
    let out = |k: usize| outs[k].axes.clone();
    let num = |c: &crate::ir::Const| match c {
        crate::ir::Const::Num(x) => Ok(*x),
        other => Err(Error::Run(format!("an unevaluated constant {other:?}"))),
    };
    Ok(match op {
        Op::Copy(n) => {
            let t = one(ins);
            vec![t; *n]
        }
        Op::Discard => vec![],
        Op::Rename { from, to } => {
            let mut t = one(ins);
            for a in &mut t.axes {
                if a == from {
                    *a = *to;
                }
            }
            vec![t.aligned(&out(0))]
        }
        Op::Split { from, into } => {
            let t = one(ins);
            let pos = t.pos(*from);
            let mut new_axes = t.axes[..pos].to_vec();
            new_axes.extend(into.iter().copied());
            new_axes.extend(t.axes[pos + 1..].iter().copied());
            let shape: Vec<usize> = new_axes.iter().map(|a| sizes[a.0 as usize]).collect();
            let data = t
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| Error::Run(e.to_string()))?;
            vec![
                Tensor {
                    axes: new_axes,
                    data,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Merge { from, into } => {
            let t = one(ins);
            // Bring the merged axes together, in the written order, where the first one was.
            let first = from.iter().map(|a| t.pos(*a)).min().unwrap_or(0);
            let mut order: Vec<AxisId> = t
                .axes
                .iter()
                .copied()
                .filter(|a| !from.contains(a))
                .collect();
            let at = t.axes[..first].iter().filter(|a| !from.contains(a)).count();
            for (k, a) in from.iter().enumerate() {
                order.insert(at + k, *a);
            }
            let p = t.aligned(&order);
            let mut new_axes: Vec<AxisId> = order
                .iter()
                .copied()
                .filter(|a| !from.contains(a))
                .collect();
            new_axes.insert(at, *into);
            let shape: Vec<usize> = new_axes.iter().map(|a| sizes[a.0 as usize]).collect();
            let data = p
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| Error::Run(e.to_string()))?;
            vec![
                Tensor {
                    axes: new_axes,
                    data,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Expand(a) => {
            let t = one(ins);
            vec![t.expand(*a, sizes[a.0 as usize]).aligned(&out(0))]
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div => {
            let b = ins.pop().expect("two inputs");
            let a = ins.pop().expect("two inputs");
            let b = b.aligned(&a.axes);
            let data = match op {
                Op::Add => &a.data + &b.data,
                Op::Sub => &a.data - &b.data,
                Op::Mul => &a.data * &b.data,
                _ => &a.data / &b.data,
            };
            vec![Tensor { axes: a.axes, data }.aligned(&out(0))]
        }
        Op::Max | Op::Min => {
            let b = ins.pop().expect("two inputs");
            let a = ins.pop().expect("two inputs");
            let b = b.aligned(&a.axes);
            let f = if matches!(op, Op::Max) {
                super::func::double::max2
            } else {
                super::func::double::min2
            };
            let data = Zip::from(&a.data)
                .and(&b.data)
                .map_collect(|x, y| f(*x, *y));
            vec![Tensor { axes: a.axes, data }.aligned(&out(0))]
        }
        Op::Scale(c) => {
            let k = num(c)?;
            let t = one(ins);
            vec![t.map(|x| x * k).aligned(&out(0))]
        }
        Op::Pow(c) => {
            let k = num(c)?;
            let t = one(ins);
            vec![t.map(|x| x.powf(k)).aligned(&out(0))]
        }
        Op::Shift(c) => {
            let k = num(c)?;
            let t = one(ins);
            vec![t.map(|x| x + k).aligned(&out(0))]
        }
        Op::Dot(_) | Op::Outer | Op::Exec(ExecOp::Einsum) => {
            let y = ins.pop().expect("two inputs");
            let x = ins.pop().expect("two inputs");
            vec![einsum(&x, &y, &out(0), sizes)]
        }
        Op::Sum(a) => {
            let t = one(ins);
            let p = t.pos(*a);
            let axes: Vec<AxisId> = t.axes.iter().copied().filter(|x| x != a).collect();
            vec![
                Tensor {
                    axes,
                    data: t.data.sum_axis(Axis(p)),
                }
                .aligned(&out(0)),
            ]
        }
        Op::Exec(ExecOp::SumTo) => vec![one(ins).sum_to(&out(0))],
        Op::Reduce(r, a) => {
            let t = one(ins);
            let p = t.pos(*a);
            let axes: Vec<AxisId> = t.axes.iter().copied().filter(|x| x != a).collect();
            let data = t
                .data
                .map_axis(Axis(p), |lane| match r.chosen(lane.len(), |j| lane[j]) {
                    Some(j) => lane[j],
                    None => {
                        // logsumexp, or an empty lane (max -inf, min +inf, logsumexp -inf).
                        if lane.is_empty() {
                            return if *r == Reduction::Min {
                                f64::INFINITY
                            } else {
                                f64::NEG_INFINITY
                            };
                        }
                        let m = lane.fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                        let m = if m.is_finite() { m } else { 0.0 };
                        m + lane.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
                    }
                });
            vec![Tensor { axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::ReduceBack(r, a)) => {
            // max/min: gy to the chosen entry; logsumexp: gy * softmax(x).
            let gy = ins.pop().expect("a gradient");
            let x = ins.pop().expect("the input");
            let p = x.pos(*a);
            let gy = gy.aligned(
                &x.axes
                    .iter()
                    .copied()
                    .filter(|b| b != a)
                    .collect::<Vec<_>>(),
            );
            let mut gx = x.data.clone();
            for (mut lane, g) in gx.lanes_mut(Axis(p)).into_iter().zip(gy.data.iter()) {
                let n = lane.len();
                match r.chosen(n, |j| lane[j]) {
                    Some(c) => {
                        lane.fill(0.0);
                        lane[c] = *g;
                    }
                    None => {
                        let m = lane.fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                        let m = if m.is_finite() { m } else { 0.0 };
                        lane.mapv_inplace(|x| (x - m).exp());
                        let s: f64 = lane.sum();
                        lane.mapv_inplace(|e| g * e / s);
                    }
                }
            }
            vec![
                Tensor {
                    axes: x.axes,
                    data: gx,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Softmax(a) => {
            let mut t = one(ins);
            let p = t.pos(*a);
            for mut lane in t.data.lanes_mut(Axis(p)) {
                let m = lane.fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                let m = if m.is_finite() { m } else { 0.0 };
                lane.mapv_inplace(|x| (x - m).exp());
                let s: f64 = lane.sum();
                lane.mapv_inplace(|x| x / s);
            }
            vec![t.aligned(&out(0))]
        }
        Op::Normalise(a) => {
            let mut t = one(ins);
            let p = t.pos(*a);
            for mut lane in t.data.lanes_mut(Axis(p)) {
                let s: f64 = lane.sum();
                lane.mapv_inplace(|x| x / s);
            }
            vec![t.aligned(&out(0))]
        }
        Op::Map(f) => {
            let t = one(ins);
            let f = *f;
            vec![t.map(|x| apply(f, x)).aligned(&out(0))]
        }
        Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
            let value = if matches!(op, Op::Causal { .. }) {
                f64::NEG_INFINITY
            } else {
                0.0
            };
            let band = band
                .resolved()
                .ok_or_else(|| Error::Run("a mask's window was not instantiated".into()))?;
            vec![masked(one(ins), *query, *key, band, value).aligned(&out(0))]
        }
        Op::Scan(a) | Op::Exec(ExecOp::ScanBack(a)) => {
            // Forward (g, x): y_t = g_t y_(t-1) + x_t. Back (gy, g): u_t = gy_t + g_(t+1) u_(t+1).
            let back = matches!(op, Op::Exec(_));
            let [first, second] = inputs::<2>(ins)?;
            let (g, x) = if back {
                (second, first)
            } else {
                (first, second)
            };
            // A gate may lack axes of `x` (a constant gate in a batched model): broadcast it.
            let g = g.expand_to(&x.axes, sizes);
            let p = x.pos(*a);
            let mut y = x.data.clone();
            for (mut yl, gl) in y.lanes_mut(Axis(p)).into_iter().zip(g.data.lanes(Axis(p))) {
                let n = yl.len();
                let mut acc = 0.0;
                for i in 0..n {
                    if back {
                        let t = n - 1 - i;
                        let gate = if t + 1 < n { gl[t + 1] } else { 0.0 };
                        acc = yl[t] + gate * acc;
                        yl[t] = acc;
                    } else {
                        acc = if i == 0 { yl[0] } else { gl[i] * acc + yl[i] };
                        yl[i] = acc;
                    }
                }
            }
            vec![
                Tensor {
                    axes: x.axes,
                    data: y,
                }
                .aligned(&out(0)),
            ]
        }
        Op::MatScan { along, row, col } | Op::Exec(ExecOp::MatScanBack { along, row, col }) => {
            let back = matches!(op, Op::Exec(_));
            let [first, second] = inputs::<2>(ins)?;
            let (g, x) = if back {
                (second, first)
            } else {
                (first, second)
            };
            vec![mat_scan(&g, &x, (*along, *row, *col), back, sizes).aligned(&out(0))]
        }
        Op::RotateHalf(a) => {
            let x = one(ins);
            let p = x.pos(*a);
            let n = x.data.shape()[p];
            if !n.is_multiple_of(2) {
                return Err(Error::Run(format!(
                    "rotate_half needs an axis of even size; it has {n}"
                )));
            }
            let h = n / 2;
            let mut y = x.data.clone();
            for (mut yl, xl) in y.lanes_mut(Axis(p)).into_iter().zip(x.data.lanes(Axis(p))) {
                for j in 0..h {
                    yl[j] = -xl[j + h];
                    yl[j + h] = xl[j];
                }
            }
            vec![
                Tensor {
                    axes: x.axes,
                    data: y,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Exec(ExecOp::Lag(a)) => {
            let mut t = one(ins);
            let p = t.pos(*a);
            for mut lane in t.data.lanes_mut(Axis(p)) {
                let n = lane.len();
                for j in (1..n).rev() {
                    lane[j] = lane[j - 1];
                }
                if n > 0 {
                    lane[0] = 0.0;
                }
            }
            vec![t.aligned(&out(0))]
        }
        Op::Cumsum(a) | Op::Exec(ExecOp::CumsumBack(a)) => {
            let reverse = matches!(op, Op::Exec(_));
            vec![cumsum(one(ins), *a, reverse).aligned(&out(0))]
        }
        Op::Dropout(_) => return Err(Error::Run("dropout was not keyed by instantiation".into())),
        Op::Exec(ExecOp::Dropout { p, key }) => {
            let t = one(ins);
            if !opts.train || *p == 0.0 {
                return Ok(vec![t.aligned(&out(0))]);
            }
            // The mask depends on the element's position in the output layout, so forward and
            // backward (which sees the gradient in the same layout) agree.
            let t = t.aligned(&out(0));
            let t = Tensor {
                axes: t.axes,
                data: t.data.as_standard_layout().into_owned(),
            };
            let scale = 1.0 / (1.0 - p);
            let mut data = t.data;
            for (i, x) in data.iter_mut().enumerate() {
                *x = if keep(opts.seed, *key, i as u64, *p) {
                    *x * scale
                } else {
                    0.0
                };
            }
            vec![Tensor { axes: t.axes, data }]
        }
        Op::Iota(a) => {
            let n = sizes[a.0 as usize];
            let data = ArrayD::from_shape_fn(IxDyn(&[n]), |i| i[0] as f64);
            vec![
                Tensor {
                    axes: vec![*a],
                    data,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Fill { axes, value } => {
            let v = num(value)?;
            let shape: Vec<usize> = axes.iter().map(|a| sizes[a.0 as usize]).collect();
            let data = ArrayD::from_elem(IxDyn(&shape), v);
            vec![
                Tensor {
                    axes: axes.clone(),
                    data,
                }
                .aligned(&out(0)),
            ]
        }
        Op::PosEnc { pos, feature } => {
            let (n, dm) = (sizes[pos.0 as usize], sizes[feature.0 as usize]);
            let mut data = ArrayD::zeros(IxDyn(&[n, dm]));
            for p in 0..n {
                for i in 0..dm {
                    let freq = (10000f64).powf((2 * (i / 2)) as f64 / dm as f64);
                    let v = p as f64 / freq;
                    data[[p, i].as_slice()] = if i % 2 == 0 { v.sin() } else { v.cos() };
                }
            }
            vec![
                Tensor {
                    axes: vec![*pos, *feature],
                    data,
                }
                .aligned(&out(0)),
            ]
        }
        Op::Linear { .. } => {
            let bias = if ins.len() == 3 { ins.pop() } else { None };
            let w = ins.pop().expect("a weight");
            let x = ins.pop().expect("an input");
            let mut y = einsum(&x, &w, &out(0), sizes);
            if let Some(b) = bias {
                y = y.add_broadcast(&b);
            }
            vec![y]
        }
        Op::LayerNorm(over) => {
            let b = ins.pop().expect("a bias");
            let g = ins.pop().expect("a gain");
            let x = ins.pop().expect("an input");
            let (xhat, _) = normalise_layer(&x, over);
            vec![xhat.mul_broadcast(&g).add_broadcast(&b).aligned(&out(0))]
        }
        Op::Embed { vocab, to } => {
            let table = ins.pop().expect("a table");
            let ids = ins.pop().expect("ids");
            let mut order = vec![*vocab];
            order.extend(to.iter().copied());
            if table.axes.len() != order.len() {
                return Err(Error::Run(
                    "per-lane embedding tables are not supported".into(),
                ));
            }
            let table = table.aligned(&order);
            let vsize = sizes[vocab.0 as usize];
            let row: usize = to.iter().map(|a| sizes[a.0 as usize]).product();
            let flat = table
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[vsize, row]))
                .map_err(|e| Error::Run(e.to_string()))?;
            let ids_std = ids.data.as_standard_layout().into_owned();
            let n = ids_std.len();
            let mut outv = Vec::with_capacity(n * row);
            for id in ids_std.iter() {
                let i = *id as usize;
                if *id < 0.0 || i >= vsize || id.fract() != 0.0 {
                    return Err(Error::Run(format!(
                        "token id {id} is outside the vocabulary (size {vsize})"
                    )));
                }
                outv.extend(flat.index_axis(Axis(0), i).iter().copied());
            }
            let mut axes = ids.axes.clone();
            axes.extend(to.iter().copied());
            let shape: Vec<usize> = axes.iter().map(|a| sizes[a.0 as usize]).collect();
            let data = ArrayD::from_shape_vec(IxDyn(&shape), outv)
                .map_err(|e| Error::Run(e.to_string()))?;
            vec![Tensor { axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::EmbedBack { vocab }) => {
            let gy = ins.pop().expect("a gradient");
            let ids = ins.pop().expect("ids");
            let to: Vec<AxisId> = gy
                .axes
                .iter()
                .copied()
                .filter(|a| !ids.axes.contains(a))
                .collect();
            let mut order = ids.axes.clone();
            order.extend(to.iter().copied());
            let gy = gy.aligned(&order);
            let vsize = sizes[vocab.0 as usize];
            let row: usize = to.iter().map(|a| sizes[a.0 as usize]).product();
            let n = ids.data.len();
            let g2 = gy
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[n, row]))
                .map_err(|e| Error::Run(e.to_string()))?;
            let mut table = ArrayD::zeros(IxDyn(&[vsize, row]));
            for (r, id) in ids.data.as_standard_layout().iter().enumerate() {
                let mut dst = table.index_axis_mut(Axis(0), *id as usize);
                dst += &g2.index_axis(Axis(0), r);
            }
            let mut axes = vec![*vocab];
            axes.extend(to);
            let shape: Vec<usize> = axes.iter().map(|a| sizes[a.0 as usize]).collect();
            let data = table
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| Error::Run(e.to_string()))?;
            vec![Tensor { axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::CrossEntropy { classes })
        | Op::Exec(ExecOp::CrossEntropyBack { classes }) => {
            let back = matches!(op, Op::Exec(ExecOp::CrossEntropyBack { .. }));
            let gy = if back {
                ins.pop()
                    .map(|g| g.data.iter().next().copied().unwrap_or(0.0))
            } else {
                None
            };
            let targets = ins.pop().expect("targets");
            let logits = ins.pop().expect("logits");
            // Lay the logits out as [positions in the targets' order, classes].
            let mut order = targets.axes.clone();
            order.push(*classes);
            let l = logits.aligned(&order);
            let n = sizes[classes.0 as usize];
            let rows = targets.data.len();
            let flat = l
                .data
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[rows, n]))
                .map_err(|e| Error::Run(e.to_string()))?;
            let ts: Vec<f64> = targets.data.as_standard_layout().iter().copied().collect();
            let mut total = 0.0;
            let mut grad = ArrayD::zeros(IxDyn(&[rows, n]));
            for (r, t) in ts.iter().enumerate() {
                let t = *t as usize;
                if t >= n {
                    return Err(Error::Run(format!("target {t} is outside the {n} classes")));
                }
                let lane = flat.index_axis(Axis(0), r);
                let m = lane.fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                let z: f64 = lane.iter().map(|x| (x - m).exp()).sum();
                total += m + z.ln() - lane[t];
                if let Some(g) = gy {
                    for j in 0..n {
                        grad[[r, j].as_slice()] =
                            g * ((lane[j] - m).exp() / z - if j == t { 1.0 } else { 0.0 });
                    }
                }
            }
            if let Some(_g) = gy {
                let shape: Vec<usize> = order.iter().map(|a| sizes[a.0 as usize]).collect();
                let data = grad
                    .into_shape_with_order(IxDyn(&shape))
                    .map_err(|e| Error::Run(e.to_string()))?;
                vec![Tensor { axes: order, data }.aligned(&out(0))]
            } else {
                vec![Tensor {
                    axes: vec![],
                    data: ArrayD::from_elem(IxDyn(&[]), total),
                }]
            }
        }
        Op::Exec(ExecOp::Zeros) => {
            let axes = out(0);
            let shape: Vec<usize> = axes.iter().map(|a| sizes[a.0 as usize]).collect();
            vec![Tensor {
                axes,
                data: ArrayD::zeros(IxDyn(&shape)),
            }]
        }
        Op::Exec(ExecOp::SoftmaxBack(a)) => {
            // gx = y * (gy - sum_a(gy * y))
            let gy = ins.pop().expect("a gradient");
            let y = ins.pop().expect("the output");
            let gy = gy.aligned(&y.axes);
            let p = y.pos(*a);
            let prod = &y.data * &gy.data;
            let s = prod.sum_axis(Axis(p)).insert_axis(Axis(p));
            let data = &y.data * &(&gy.data - &s);
            vec![Tensor { axes: y.axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::NormaliseBack(a)) => {
            // y = x / s: gx = (gy - sum_a(gy * y)) / s
            let gy = ins.pop().expect("a gradient");
            let x = ins.pop().expect("the input");
            let gy = gy.aligned(&x.axes);
            let p = x.pos(*a);
            let s = x.data.sum_axis(Axis(p)).insert_axis(Axis(p));
            let y = &x.data / &s;
            let dot = (&gy.data * &y).sum_axis(Axis(p)).insert_axis(Axis(p));
            let data = (&gy.data - &dot) / &s;
            vec![Tensor { axes: x.axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::MapBack(f)) => {
            let gy = ins.pop().expect("a gradient");
            let x = ins.pop().expect("the input");
            let gy = gy.aligned(&x.axes);
            let f = *f;
            let mut data = gy.data;
            Zip::from(&mut data)
                .and(&x.data)
                .for_each(|g, &v| *g *= derivative(f, v));
            vec![Tensor { axes: x.axes, data }.aligned(&out(0))]
        }
        Op::Exec(ExecOp::LayerNormBack(over)) => {
            let gy = ins.pop().expect("a gradient");
            let g = ins.pop().expect("a gain");
            let x = ins.pop().expect("the input");
            let gy = gy.aligned(&x.axes);
            let (xhat, inv_std) = normalise_layer(&x, over);
            // Gradients of gain and bias: sums over everything but their own axes.
            let ggain = Tensor {
                axes: x.axes.clone(),
                data: &gy.data * &xhat.data,
            }
            .sum_to(&out(1));
            let gbias = gy.clone().sum_to(&out(2));
            // gx = inv_std * (gxh - mean(gxh) - xhat * mean(gxh * xhat)), gxh = gy * gain.
            let gxh = gy.mul_broadcast(&g);
            let n: f64 = over.iter().map(|a| sizes[a.0 as usize] as f64).product();
            let keep: Vec<AxisId> = x
                .axes
                .iter()
                .copied()
                .filter(|a| !over.contains(a))
                .collect();
            let m1 = gxh.clone().sum_to(&keep).map(|v| v / n);
            let m2 = Tensor {
                axes: x.axes.clone(),
                data: &gxh.data * &xhat.data,
            }
            .sum_to(&keep)
            .map(|v| v / n);
            let t = gxh.sub_broadcast(&m1);
            let t = Tensor {
                axes: t.axes.clone(),
                data: &t.data - &(&xhat.data * &m2.expand_to(&x.axes, sizes).data),
            };
            let gx = t.mul_broadcast(&inv_std);
            vec![gx.aligned(&out(0)), ggain, gbias]
        }
        Op::Exec(ExecOp::Attention(at)) => {
            let [q, k, v] = inputs(ins)?;
            let scores = attention_scores(&q, &k, at, &out(1), sizes);
            // The log-sum-exp of each query's masked scores. Key 0 is never masked, so the
            // maximum is finite.
            let kp = scores.pos(at.key);
            let mut lse_axes = scores.axes.clone();
            lse_axes.remove(kp);
            let lse = Tensor {
                axes: lse_axes,
                data: scores.data.map_axis(Axis(kp), |lane| {
                    let m = lane.fold(f64::NEG_INFINITY, |m, x| m.max(*x));
                    m + lane.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
                }),
            };
            let p = scores.sub_broadcast(&lse).map(f64::exp);
            vec![einsum(&p, &v, &out(0), sizes), lse.aligned(&out(1))]
        }
        Op::Exec(ExecOp::AttentionBack(at)) => {
            // With P = exp(S - lse): dP = go v^T, D = rowsum(go * o), dS = P * (dP - D),
            // gq = scale dS k, gk = scale dS^T q, gv = P^T go.
            let [q, k, v, o, lse, go] = inputs(ins)?;
            let scores = attention_scores(&q, &k, at, &lse.axes, sizes);
            let p = scores.sub_broadcast(&lse).map(f64::exp);
            let dp = einsum(&go, &v, &p.axes, sizes);
            let d = einsum(&go, &o, &lse.axes, sizes);
            let ds = Tensor {
                axes: p.axes.clone(),
                data: &p.data * &dp.sub_broadcast(&d).data,
            };
            let gq = einsum(&ds, &k, &out(0), sizes).map(|x| x * at.scale);
            let gk = einsum(&ds, &q, &out(1), sizes).map(|x| x * at.scale);
            let gv = einsum(&p, &go, &out(2), sizes);
            vec![gq, gk, gv]
        }
        Op::Exec(ExecOp::LinearAttention(at)) => {
            // S = cumsum(kf v^T), z = cumsum(kf), den = qf . z + eps, out = (qf S) / den.
            let [qf, kf, v] = inputs(ins)?;
            let (state, z) = linear_state(&kf, &v, at, sizes);
            let num = einsum(&qf, &state, &out(0), sizes);
            let den = einsum(&qf, &z, &out(1), sizes).map(|x| x + at.eps);
            let o = num.mul_broadcast(&den.clone().map(|x| 1.0 / x));
            vec![o, den]
        }
        Op::Exec(ExecOp::LinearAttentionBack(at)) => {
            // dn = go / den, dden = -(go . out) / den;
            // gqf = S dn + dden z, gkf = U v + w, gv = U^T kf, with the suffix sums
            // U = revcumsum(qf dn^T) and w = revcumsum(dden qf).
            let [qf, kf, v, o, den, go] = inputs(ins)?;
            let inv = den.clone().map(|x| 1.0 / x);
            let dn = go.mul_broadcast(&inv);
            let dden = einsum(&go, &o, &den.axes, sizes)
                .mul_broadcast(&inv)
                .map(|x| -x);
            let (state, z) = linear_state(&kf, &v, at, sizes);
            let gqf = einsum(&dn, &state, &out(0), sizes).add_broadcast(&z.mul_broadcast(&dden));
            let mut pair = qf.axes.clone();
            pair.push(at.vfeat);
            let u = cumsum(einsum(&qf, &dn, &pair, sizes), at.pos, true);
            let w = cumsum(qf.mul_broadcast(&dden), at.pos, true);
            let gkf = einsum(&u, &v, &out(1), sizes).add_broadcast(&w);
            let gv = einsum(&u, &kf, &out(2), sizes);
            vec![gqf.aligned(&out(0)), gkf.aligned(&out(1)), gv]
        }
        // `run` takes a `Flat` diagram, which `ir::verify` proved free of these.
        Op::Learner { .. }
        | Op::Param(_)
        | Op::Call { .. }
        | Op::Zip(_)
        | Op::Broadcast(_)
        | Op::Collect(_)
        | Op::LoopIn
        | Op::Capture
        | Op::LoopOut => unreachable!(
            "a flat diagram has no `{}` box",
            crate::ir::ops::spec(op).name
        ),
    })
}

/// The running sum of `t` along `a` (from the end when `reverse`).
fn cumsum(mut t: Tensor, a: AxisId, reverse: bool) -> Tensor {
    let p = t.pos(a);
    for mut lane in t.data.lanes_mut(Axis(p)) {
        let n = lane.len();
        let mut acc = 0.0;
        for i in 0..n {
            let j = if reverse { n - 1 - i } else { i };
            acc += lane[j];
            lane[j] = acc;
        }
    }
    t
}

/// Linear attention's prefix state: `S = cumsum[pos](outer(kf, v))` and `z = cumsum[pos](kf)`.
fn linear_state(
    kf: &Tensor,
    v: &Tensor,
    at: &crate::ir::LinearAttention,
    sizes: &[usize],
) -> (Tensor, Tensor) {
    let mut pair = kf.axes.clone();
    pair.push(at.vfeat);
    let s = cumsum(einsum(kf, v, &pair, sizes), at.pos, false);
    (s, cumsum(kf.clone(), at.pos, false))
}

/// The scaled, causally masked scores of fused attention, over `lanes_query` (the lanes and the
/// query axis: `lse`'s axes) then the key axis.
fn attention_scores(
    q: &Tensor,
    k: &Tensor,
    at: &crate::ir::Attention,
    lanes_query: &[AxisId],
    sizes: &[usize],
) -> Tensor {
    let mut axes = lanes_query.to_vec();
    axes.push(at.key);
    let s = einsum(q, k, &axes, sizes).map(|x| x * at.scale);
    masked(s, at.query, at.key, Visible::PLAIN, f64::NEG_INFINITY)
}

/// `t` with `value` wherever the `key` position exceeds the `query` position.
fn masked(mut t: Tensor, query: AxisId, key: AxisId, band: Visible, value: f64) -> Tensor {
    let (q, k) = (t.pos(query), t.pos(key));
    for (idx, x) in t.data.indexed_iter_mut() {
        if !band.sees(idx[q], idx[k]) {
            *x = value;
        }
    }
    t
}

/// A box's `N` inputs, in order.
fn inputs<const N: usize>(ins: Vec<Tensor>) -> Result<[Tensor; N], Error> {
    let n = ins.len();
    ins.try_into()
        .map_err(|_| Error::Run(format!("{n} inputs, expected {N}")))
}

const LN_EPS: f64 = 1e-5;

/// `(x - mean) / sqrt(var + eps)` over `over`, and `1 / sqrt(var + eps)` (without `over`).
fn normalise_layer(x: &Tensor, over: &[AxisId]) -> (Tensor, Tensor) {
    let keep: Vec<AxisId> = x
        .axes
        .iter()
        .copied()
        .filter(|a| !over.contains(a))
        .collect();
    let n: f64 = over
        .iter()
        .map(|a| x.data.shape()[x.pos(*a)] as f64)
        .product();
    let mean = x.clone().sum_to(&keep).map(|v| v / n);
    let centred = x.sub_broadcast(&mean);
    let var = Tensor {
        axes: centred.axes.clone(),
        data: centred.data.mapv(|v| v * v),
    }
    .sum_to(&keep)
    .map(|v| v / n);
    let inv_std = var.map(|v| 1.0 / (v + LN_EPS).sqrt());
    (centred.mul_broadcast(&inv_std), inv_std)
}

/// Whether dropout keeps element `i` of box `key` (splitmix64 of the three, as a uniform).
pub fn keep(seed: u64, key: u64, i: u64, p: f64) -> bool {
    let mut z =
        seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    u >= p
}

pub use super::func::double::{apply, derivative};

/// A convenience for callers: the wire ids of a diagram's outputs.
pub fn output_ids(d: &Diagram) -> Vec<WireId> {
    d.outputs.clone()
}
