//! The planner: every box of an instantiated diagram lowered to steps over values with fixed
//! layouts ([`Builder::lower`]), then buffers assigned by liveness ([`Builder::finish`]).

use super::kernels::{Binary, Gemm, Kernel, LaneOp, Unary};
use super::nest::{Dim, Nest};
use super::{Action, Check, Draft, InputSpec, Loc, Origin, Plan, Step, Val};
use crate::error::Error;
use crate::ir::{AxisId, AxisTable, Const, Diagram, ExecOp, Op, WireType};

pub(super) struct Builder<'a> {
    pub(super) d: &'a Diagram,
    pub(super) axes: &'a AxisTable,
    pub(super) sizes: &'a [usize],
    pub(super) vals: Vec<Val>,
    pub(super) wire_val: Vec<Option<usize>>,
    pub(super) drafts: Vec<Draft>,
    pub(super) consts: Vec<Vec<f32>>,
}

fn num(c: &Const) -> Result<f32, Error> {
    match c {
        Const::Num(x) => Ok(*x as f32),
        other => Err(Error::Plan(format!("an unevaluated constant {other:?}"))),
    }
}

impl Builder<'_> {
    pub(super) fn size(&self, a: AxisId) -> usize {
        self.sizes.get(a.0 as usize).copied().unwrap_or(0)
    }

    pub(super) fn name(&self, a: AxisId) -> &str {
        self.axes.name(a)
    }

    /// A new root value over `axes`.
    pub(super) fn value(&mut self, axes: Vec<AxisId>, origin: Origin) -> Result<usize, Error> {
        let mut strides = vec![0; axes.len()];
        let mut len = 1usize;
        for (i, a) in axes.iter().enumerate().rev() {
            let n = self.size(*a);
            if n == 0 {
                return Err(Error::Plan(format!("axis `{}` has no size", self.name(*a))));
            }
            strides[i] = len;
            len *= n;
        }
        let id = self.vals.len();
        self.vals.push(Val {
            axes,
            strides,
            len,
            root: id,
            origin,
            def: 0,
        });
        Ok(id)
    }

    pub(super) fn fresh(&mut self, axes: Vec<AxisId>) -> Result<usize, Error> {
        self.value(axes, Origin::Work)
    }

    /// A value over `axes` that is `of`'s memory, read in its own layout.
    pub(super) fn alias(&mut self, of: usize, axes: Vec<AxisId>) -> Result<usize, Error> {
        let v = self.value(axes, Origin::Work)?;
        let root = self.vals[of].root;
        self.vals[v].root = root;
        self.vals[v].origin = self.vals[root].origin;
        Ok(v)
    }

    /// The stride of axis `a` in value `v`, 0 when `v` lacks it (a broadcast).
    pub(super) fn stride(&self, v: usize, a: AxisId) -> usize {
        let val = &self.vals[v];
        val.axes
            .iter()
            .position(|x| *x == a)
            .map_or(0, |p| val.strides[p])
    }

    pub(super) fn has(&self, v: usize, a: AxisId) -> bool {
        self.vals[v].axes.contains(&a)
    }

    /// Loop dimensions over `axes` for the operands `ops` (`None`: an absent operand).
    pub(super) fn dims<const N: usize>(
        &self,
        axes: &[AxisId],
        ops: [Option<usize>; N],
    ) -> Vec<Dim<N>> {
        axes.iter()
            .map(|a| Dim {
                n: self.size(*a),
                s: ops.map(|v| v.map_or(0, |v| self.stride(v, *a))),
            })
            .collect()
    }

    /// Whether `v` has exactly `out`'s layout, so that `out` can be written over it.
    pub(super) fn same_layout(&self, v: usize, out: usize) -> bool {
        self.vals[v].len == self.vals[out].len
            && self.vals[out]
                .axes
                .iter()
                .all(|a| self.size(*a) == 1 || self.stride(v, *a) == self.stride(out, *a))
    }

    /// The input slots of `ins` that `out` could be computed over in place.
    pub(super) fn inplace(&self, ins: &[usize], out: usize) -> Vec<usize> {
        (0..ins.len())
            .filter(|k| self.same_layout(ins[*k], out))
            .collect()
    }

    /// Checks that every axis of `v` is one of `axes` (what broadcasting ops require).
    pub(super) fn subset(&self, v: usize, axes: &[AxisId]) -> Result<(), Error> {
        match self.vals[v].axes.iter().find(|a| !axes.contains(a)) {
            Some(a) => Err(Error::Plan(format!(
                "an input has axis `{}`, which the output lacks",
                self.name(*a)
            ))),
            None => Ok(()),
        }
    }

    pub(super) fn push(
        &mut self,
        kernel: Kernel,
        ins: Vec<usize>,
        outs: Vec<usize>,
        inplace: Vec<usize>,
    ) {
        self.push_action(Action::Kernel(kernel), ins, outs, inplace);
    }

    pub(super) fn push_action(
        &mut self,
        action: Action,
        ins: Vec<usize>,
        outs: Vec<usize>,
        inplace: Vec<usize>,
    ) {
        let s = self.drafts.len();
        for o in &outs {
            self.vals[*o].def = s;
        }
        self.drafts.push(Draft {
            action,
            ins,
            outs,
            inplace,
            label: String::new(),
        });
    }

    /// A value over `out_axes` whose element at each point is `x`'s at offset `src` strides:
    /// `src` lists, in the output's order, one `(length, stride in x)` per dimension, where a
    /// merged output axis contributes one dimension per merged axis. The result aliases `x`
    /// when that is `x`'s own memory order, and is a copy otherwise.
    pub(super) fn view(
        &mut self,
        x: usize,
        out_axes: Vec<AxisId>,
        src: Vec<(usize, usize)>,
    ) -> Result<usize, Error> {
        let mut dims = Vec::with_capacity(src.len());
        let mut acc = 1;
        for (n, s) in src.iter().rev() {
            dims.push(Dim {
                n: *n,
                s: [acc, *s],
            });
            acc *= n;
        }
        dims.reverse();
        let nest = Nest::new(dims);
        let len: usize = src.iter().map(|d| d.0).product();
        if len == self.vals[x].len && nest.same(0, 1) {
            return self.alias(x, out_axes);
        }
        let out = self.fresh(out_axes)?;
        self.push(Kernel::Copy(nest), vec![x], vec![out], vec![]);
        Ok(out)
    }

    /// Sums `x` over the axes `keep` lacks, into a new value over `keep` (in that order).
    pub(super) fn reduce(&mut self, x: usize, keep: Vec<AxisId>) -> Result<usize, Error> {
        for a in &keep {
            if !self.has(x, *a) {
                return Err(Error::Plan(format!(
                    "the input lacks axis `{}`",
                    self.name(*a)
                )));
            }
        }
        let out = self.fresh(keep)?;
        let axes = self.vals[x].axes.clone();
        let nest = Nest::new(self.dims(&axes, [Some(out), Some(x)]));
        let len = self.vals[out].len;
        self.push(Kernel::Reduce { nest, len }, vec![x], vec![out], vec![]);
        Ok(out)
    }

    /// Whether the axes `group` (outermost first) of `v` collapse into one stride.
    pub(super) fn collapses(&self, v: usize, group: &[AxisId]) -> bool {
        group
            .windows(2)
            .all(|w| self.stride(v, w[0]) == self.stride(v, w[1]) * self.size(w[1]))
    }

    /// The stride of a collapsed group in `v`: its innermost axis's (1 for an empty group,
    /// where it does not matter).
    pub(super) fn group_stride(&self, v: usize, group: &[AxisId]) -> isize {
        group.last().map_or(1, |a| self.stride(v, *a).max(1)) as isize
    }

    /// A contraction `x . y -> out_axes` (the interpreter's `einsum`): axes of both operands
    /// and the output are a batch, axes of one operand and the output are rows or columns,
    /// axes of both operands only are contracted, axes of one operand only are summed first.
    /// With `bias`, the result is `x . y + bias` (bias broadcast over the axes it lacks).
    pub(super) fn contraction(
        &mut self,
        x: usize,
        y: usize,
        out_axes: Vec<AxisId>,
        bias: Option<usize>,
    ) -> Result<usize, Error> {
        let keep = |b: &Self, v: usize, other: usize| -> Vec<AxisId> {
            b.vals[v]
                .axes
                .iter()
                .copied()
                .filter(|a| out_axes.contains(a) || b.has(other, *a))
                .collect()
        };
        let (kx, ky) = (keep(self, x, y), keep(self, y, x));
        let x = if kx.len() < self.vals[x].axes.len() {
            self.reduce(x, kx)?
        } else {
            x
        };
        let y = if ky.len() < self.vals[y].axes.len() {
            self.reduce(y, ky)?
        } else {
            y
        };
        if let Some(a) = out_axes
            .iter()
            .find(|a| !self.has(x, **a) && !self.has(y, **a))
        {
            return Err(Error::Plan(format!(
                "output axis `{}` is in neither input",
                self.name(*a)
            )));
        }
        if let Some(b) = bias {
            self.subset(b, &out_axes)?;
        }
        // Axes of length 1 take no part: their offset is always 0.
        let big = |b: &Self, a: &AxisId| b.size(*a) > 1;
        let pick = |b: &Self, from: &[AxisId], f: &dyn Fn(&AxisId) -> bool| -> Vec<AxisId> {
            from.iter().copied().filter(|a| big(b, a) && f(a)).collect()
        };
        let xa = self.vals[x].axes.clone();
        let ya = self.vals[y].axes.clone();
        let batch = pick(self, &out_axes, &|a| self.has(x, *a) && self.has(y, *a));
        let rows_out = pick(self, &out_axes, &|a| self.has(x, *a) && !self.has(y, *a));
        let cols_out = pick(self, &out_axes, &|a| self.has(y, *a) && !self.has(x, *a));
        let contr_x = pick(self, &xa, &|a| self.has(y, *a) && !out_axes.contains(a));
        // The order within each group: the output's for rows and columns when they collapse
        // there (then the GEMM writes the output directly), else the operand's (then only the
        // output goes through a temporary); the contracted axes in x's order, else y's.
        let out_probe = self.fresh(out_axes.clone())?;
        let rows = if self.collapses(out_probe, &rows_out) {
            rows_out
        } else {
            pick(self, &xa, &|a| rows_out.contains(a))
        };
        let cols = if self.collapses(out_probe, &cols_out) {
            cols_out
        } else {
            pick(self, &ya, &|a| cols_out.contains(a))
        };
        let contr = if self.collapses(x, &contr_x) {
            contr_x
        } else {
            pick(self, &ya, &|a| contr_x.contains(a))
        };
        let ones = |b: &Self, v: &[AxisId]| -> Vec<AxisId> {
            v.iter().copied().filter(|a| !big(b, a)).collect()
        };
        let x = if self.collapses(x, &rows) && self.collapses(x, &contr) {
            x
        } else {
            let mut t: Vec<AxisId> = [&batch[..], &rows, &contr].concat();
            t.extend(ones(self, &xa));
            self.permuted(x, t)?
        };
        let y = if self.collapses(y, &contr) && self.collapses(y, &cols) {
            y
        } else {
            let mut t: Vec<AxisId> = [&batch[..], &contr, &cols].concat();
            t.extend(ones(self, &ya));
            self.permuted(y, t)?
        };
        let direct = self.collapses(out_probe, &rows) && self.collapses(out_probe, &cols);
        let c = if direct {
            out_probe
        } else {
            let mut t: Vec<AxisId> = [&batch[..], &rows, &cols].concat();
            t.extend(ones(self, &out_axes));
            self.fresh(t)?
        };
        let prod = |b: &Self, g: &[AxisId]| g.iter().map(|a| b.size(*a)).product::<usize>();
        let (m, k, n) = (prod(self, &rows), prod(self, &contr), prod(self, &cols));
        let (a, bm, cm) = (
            [self.group_stride(x, &rows), self.group_stride(x, &contr)],
            [self.group_stride(y, &contr), self.group_stride(y, &cols)],
            [self.group_stride(c, &rows), self.group_stride(c, &cols)],
        );
        // The longer side of the result becomes the rows, computing the transpose `y' x'` when
        // it is the columns (strides make the transposition free): a GEMM splits its rows over
        // threads most evenly (matrixmultiply, used before the `gemm` crate, split only rows, so
        // 35 tokens against 10,000 vocabulary columns ran on one core).
        let flip = m < n;
        let (first, second) = if flip { (y, x) } else { (x, y) };
        let gemm = Gemm {
            batch: Nest::new(self.dims(&batch, [Some(c), Some(first), Some(second)])),
            m: if flip { n } else { m },
            k,
            n: if flip { m } else { n },
            a: if flip { [bm[1], bm[0]] } else { a },
            b: if flip { [a[1], a[0]] } else { bm },
            c: if flip { [cm[1], cm[0]] } else { cm },
            bias: match bias {
                Some(b) if direct => Some(Nest::new(self.dims(&out_axes, [Some(c), Some(b)]))),
                _ => None,
            },
        };
        let mut ins = vec![first, second];
        if gemm.bias.is_some() {
            ins.extend(bias);
        }
        self.push(Kernel::Gemm(gemm), ins, vec![c], vec![]);
        if direct {
            return Ok(c);
        }
        // The product is in a temporary: move it to the output's layout, adding the bias.
        match bias {
            Some(b) => {
                let out = self.fresh(out_axes.clone())?;
                let nest = Nest::new(self.dims(&out_axes, [Some(out), Some(c), Some(b)]));
                self.push(
                    Kernel::Binary(Binary::Add, nest),
                    vec![c, b],
                    vec![out],
                    vec![],
                );
                Ok(out)
            }
            None => self.permuted(c, out_axes),
        }
    }

    /// `x` with its axes in the order `axes` (a copy unless that is its memory order).
    pub(super) fn permuted(&mut self, x: usize, axes: Vec<AxisId>) -> Result<usize, Error> {
        let src: Vec<(usize, usize)> = axes
            .iter()
            .map(|a| (self.size(*a), self.stride(x, *a)))
            .collect();
        self.view(x, axes, src)
    }

    /// Offsets of each operand over the axes `over`, enumerated in one common order.
    pub(super) fn table(&self, over: &[AxisId], ops: &[usize]) -> Vec<Vec<usize>> {
        let mut tables: Vec<Vec<usize>> = vec![vec![0]; ops.len()];
        for a in over {
            let n = self.size(*a);
            for (t, v) in tables.iter_mut().zip(ops) {
                let s = self.stride(*v, *a);
                *t = t
                    .iter()
                    .flat_map(|o| (0..n).map(move |i| o + i * s))
                    .collect();
            }
        }
        tables
    }

    /// Lowers box `bi`, binding its output wires to values.
    pub(super) fn lower(&mut self, bi: usize) -> Result<(), Error> {
        let d = self.d;
        let b = &d.boxes[bi];
        let first_step = self.drafts.len();
        let ins: Vec<usize> = b
            .inputs
            .iter()
            .map(|w| {
                self.wire_val[w.0 as usize]
                    .ok_or_else(|| Error::Plan(format!("wire %{} has no value", w.0)))
            })
            .collect::<Result<_, _>>()?;
        let out_ty = |k: usize| -> &WireType { &d.wire(b.outputs[k]).ty };
        let oa = |k: usize| out_ty(k).axes.clone();
        let arity = |n: usize| -> Result<(), Error> {
            if ins.len() == n {
                Ok(())
            } else {
                Err(Error::Plan(format!("{} inputs, expected {n}", ins.len())))
            }
        };
        let outs: Vec<usize> = match &b.op {
            Op::Copy(n) => {
                arity(1)?;
                (0..*n)
                    .map(|k| self.permuted(ins[0], oa(k)))
                    .collect::<Result<_, _>>()?
            }
            Op::Discard => vec![],
            Op::Rename { from, to } => {
                arity(1)?;
                if self.size(*from) != self.size(*to) {
                    return Err(Error::Plan(
                        "a rename between axes of different sizes".into(),
                    ));
                }
                let src = oa(0)
                    .iter()
                    .map(|a| {
                        let s = if a == to { *from } else { *a };
                        (self.size(*a), self.stride(ins[0], s))
                    })
                    .collect();
                vec![self.view(ins[0], oa(0), src)?]
            }
            Op::Split { from, into } => {
                arity(1)?;
                let parts: usize = into.iter().map(|a| self.size(*a)).product();
                if parts != self.size(*from) {
                    return Err(Error::Plan(
                        "the split axes' sizes do not multiply to the axis".into(),
                    ));
                }
                let base = self.stride(ins[0], *from);
                let src = oa(0)
                    .iter()
                    .map(|a| match into.iter().position(|x| x == a) {
                        Some(j) => {
                            let inner: usize =
                                into[j + 1..].iter().map(|x| self.size(*x)).product();
                            (self.size(*a), base * inner)
                        }
                        None => (self.size(*a), self.stride(ins[0], *a)),
                    })
                    .collect();
                vec![self.view(ins[0], oa(0), src)?]
            }
            Op::Merge { from, into } => {
                arity(1)?;
                let parts: usize = from.iter().map(|a| self.size(*a)).product();
                if parts != self.size(*into) {
                    return Err(Error::Plan(
                        "the merged axes' sizes do not multiply to the axis".into(),
                    ));
                }
                // The merged index is row-major over `from` in the written order.
                let mut src = Vec::new();
                for a in oa(0) {
                    if a == *into {
                        src.extend(
                            from.iter()
                                .map(|f| (self.size(*f), self.stride(ins[0], *f))),
                        );
                    } else {
                        src.push((self.size(a), self.stride(ins[0], a)));
                    }
                }
                vec![self.view(ins[0], oa(0), src)?]
            }
            Op::Expand(_) => {
                arity(1)?;
                self.subset(ins[0], &oa(0))?;
                vec![self.permuted(ins[0], oa(0))?]
            }
            Op::Add
            | Op::Sub
            | Op::Mul
            | Op::Div
            | Op::Max
            | Op::Min
            | Op::Exec(ExecOp::MapBack(_)) => {
                arity(2)?;
                let f = match &b.op {
                    Op::Add => Binary::Add,
                    Op::Sub => Binary::Sub,
                    Op::Mul => Binary::Mul,
                    Op::Div => Binary::Div,
                    Op::Max => Binary::Max,
                    Op::Min => Binary::Min,
                    Op::Exec(ExecOp::MapBack(f)) => Binary::MapBack(*f),
                    _ => unreachable!("matched above"),
                };
                vec![self.elementwise2(f, ins[0], ins[1], oa(0))?]
            }
            Op::Scale(c) | Op::Shift(c) | Op::Pow(c) => {
                arity(1)?;
                let k = num(c)?;
                let u = match b.op {
                    Op::Scale(_) => Unary::Scale(k),
                    Op::Shift(_) => Unary::Shift(k),
                    _ => Unary::Pow(k),
                };
                vec![self.elementwise1(u, ins[0], oa(0))?]
            }
            Op::Map(f) => {
                arity(1)?;
                vec![self.elementwise1(Unary::Map(*f), ins[0], oa(0))?]
            }
            Op::Exec(ExecOp::Dropout { p, key }) => {
                arity(1)?;
                self.subset(ins[0], &oa(0))?;
                let out = self.fresh(oa(0))?;
                let nest = Nest::new(self.dims(&oa(0), [Some(out), Some(ins[0])]));
                let inplace = self.inplace(&ins, out);
                self.push(
                    Kernel::Dropout {
                        p: *p,
                        key: *key,
                        nest,
                    },
                    ins.clone(),
                    vec![out],
                    inplace,
                );
                vec![out]
            }
            Op::Dropout(_) => {
                return Err(Error::Plan("dropout was not keyed by instantiation".into()));
            }
            Op::Dot(_) | Op::Outer | Op::Exec(ExecOp::Einsum) => {
                arity(2)?;
                vec![self.contraction(ins[0], ins[1], oa(0), None)?]
            }
            Op::Linear { .. } => {
                if ins.len() != 2 && ins.len() != 3 {
                    return Err(Error::Plan(format!(
                        "{} inputs, expected 2 or 3",
                        ins.len()
                    )));
                }
                vec![self.contraction(ins[0], ins[1], oa(0), ins.get(2).copied())?]
            }
            Op::Sum(_) | Op::Exec(ExecOp::SumTo) => {
                arity(1)?;
                vec![self.reduce(ins[0], oa(0))?]
            }
            Op::Softmax(a) | Op::Normalise(a) => {
                arity(1)?;
                let op = if matches!(b.op, Op::Softmax(_)) {
                    LaneOp::Softmax
                } else {
                    LaneOp::Normalise
                };
                vec![self.lane(op, &ins, *a, oa(0))?]
            }
            Op::Scan(a) | Op::Exec(ExecOp::ScanBack(a)) => {
                arity(2)?;
                let op = if matches!(b.op, Op::Scan(_)) {
                    LaneOp::Scan
                } else {
                    LaneOp::ScanBack
                };
                vec![self.lane(op, &ins, *a, oa(0))?]
            }
            Op::MatScan { along, row, col } | Op::Exec(ExecOp::MatScanBack { along, row, col }) => {
                arity(2)?;
                let back = matches!(b.op, Op::Exec(_));
                vec![self.mat_scan(back, &ins, (*along, *row, *col), oa(0))?]
            }
            Op::RotateHalf(a) => {
                arity(1)?;
                if !self.size(*a).is_multiple_of(2) {
                    return Err(Error::Plan(format!(
                        "rotate_half[{}] needs an axis of even size; it has {}",
                        self.name(*a),
                        self.size(*a)
                    )));
                }
                vec![self.lane(LaneOp::RotateHalf, &ins, *a, oa(0))?]
            }
            Op::Exec(ExecOp::Lag(a)) => {
                arity(1)?;
                vec![self.lane(LaneOp::Lag, &ins, *a, oa(0))?]
            }
            Op::Reduce(r, a) => {
                arity(1)?;
                vec![self.lane(LaneOp::Reduce(*r), &ins, *a, oa(0))?]
            }
            Op::Exec(ExecOp::ReduceBack(r, a)) => {
                arity(2)?;
                vec![self.lane(LaneOp::ReduceBack(*r), &ins, *a, oa(0))?]
            }
            Op::Exec(ExecOp::SoftmaxBack(a)) | Op::Exec(ExecOp::NormaliseBack(a)) => {
                arity(2)?;
                let op = if matches!(b.op, Op::Exec(ExecOp::SoftmaxBack(_))) {
                    LaneOp::SoftmaxBack
                } else {
                    LaneOp::NormaliseBack
                };
                vec![self.lane(op, &ins, *a, oa(0))?]
            }
            Op::Causal { query, key, band } | Op::CausalZero { query, key, band } => {
                arity(1)?;
                let band = band
                    .resolved()
                    .ok_or_else(|| Error::Plan("a mask's window was not instantiated".into()))?;
                let value = if matches!(b.op, Op::Causal { .. }) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                };
                let x = ins[0];
                self.subset(x, &oa(0))?;
                let out = self.fresh(oa(0))?;
                if !self.has(out, *query) || !self.has(out, *key) {
                    return Err(Error::Plan("the output lacks the query or key axis".into()));
                }
                let rest: Vec<AxisId> = oa(0)
                    .into_iter()
                    .filter(|a| a != query && a != key)
                    .collect();
                let kernel = Kernel::Causal {
                    value,
                    band,
                    copy: Nest::new(self.dims(&oa(0), [Some(out), Some(x)])),
                    nq: self.size(*query),
                    nk: self.size(*key),
                    sq: self.stride(out, *query),
                    sk: self.stride(out, *key),
                    rest: Nest::new(self.dims(&rest, [Some(out)])),
                };
                let inplace = self.inplace(&ins, out);
                self.push(kernel, ins.clone(), vec![out], inplace);
                vec![out]
            }
            Op::Cumsum(a) | Op::Exec(ExecOp::CumsumBack(a)) => {
                arity(1)?;
                let x = ins[0];
                self.subset(x, &oa(0))?;
                let out = self.fresh(oa(0))?;
                let others: Vec<AxisId> = oa(0).into_iter().filter(|c| c != a).collect();
                let kernel = Kernel::Cumsum {
                    reverse: matches!(b.op, Op::Exec(_)),
                    slab: Nest::new(self.dims(&others, [Some(out), Some(x)])),
                    n: self.size(*a),
                    s: [self.stride(out, *a), self.stride(x, *a)],
                };
                let inplace = self.inplace(&ins, out);
                self.push(kernel, ins.clone(), vec![out], inplace);
                vec![out]
            }
            Op::Iota(a) => {
                arity(0)?;
                if oa(0) != [*a] {
                    return Err(Error::Plan("iota's output must be exactly its axis".into()));
                }
                let k = self.consts.len();
                let v = self.value(oa(0), Origin::Const(k))?;
                // Exact in f32 up to 2^24 positions.
                let n = self.size(*a);
                self.consts.push((0..n).map(|i| i as f32).collect());
                vec![v]
            }
            Op::Fill { axes, value } => {
                arity(0)?;
                let x = num(value)?;
                let mut want = axes.clone();
                want.sort();
                let mut have = oa(0);
                have.sort();
                if want != have {
                    return Err(Error::Plan("fill's output must be exactly its axes".into()));
                }
                let k = self.consts.len();
                let v = self.value(oa(0), Origin::Const(k))?;
                let n: usize = oa(0).iter().map(|a| self.size(*a)).product();
                self.consts.push(vec![x; n]);
                vec![v]
            }
            Op::PosEnc { pos, feature } => {
                arity(0)?;
                let axes = oa(0);
                if axes.len() != 2 || !axes.contains(pos) || !axes.contains(feature) {
                    return Err(Error::Plan(
                        "posenc's output must be exactly its two axes".into(),
                    ));
                }
                let k = self.consts.len();
                let v = self.value(axes, Origin::Const(k))?;
                let (n, dm) = (self.size(*pos), self.size(*feature));
                let (sp, sf) = (self.stride(v, *pos), self.stride(v, *feature));
                let mut data = vec![0f32; n * dm];
                // Computed in f64 as the interpreter does, then rounded once.
                for p in 0..n {
                    for i in 0..dm {
                        let freq = 10000f64.powf((2 * (i / 2)) as f64 / dm as f64);
                        let a = p as f64 / freq;
                        data[p * sp + i * sf] = if i % 2 == 0 { a.sin() } else { a.cos() } as f32;
                    }
                }
                self.consts.push(data);
                vec![v]
            }
            Op::Exec(
                e @ (ExecOp::Attention(_)
                | ExecOp::AttentionBack(_)
                | ExecOp::LinearAttention(_)
                | ExecOp::LinearAttentionBack(_)),
            ) => {
                // Which kernel, and the axes its operands' strides are taken along (linear
                // attention's queries and keys share one position axis).
                let (form, back, query, key, feat, vfeat) = match e {
                    ExecOp::Attention(a) | ExecOp::AttentionBack(a) => (
                        super::attention::Form::Softmax {
                            scale: a.scale as f32,
                        },
                        matches!(e, ExecOp::AttentionBack(_)),
                        a.query,
                        a.key,
                        a.feat,
                        a.vfeat,
                    ),
                    ExecOp::LinearAttention(a) | ExecOp::LinearAttentionBack(a) => (
                        super::attention::Form::Linear { eps: a.eps as f32 },
                        matches!(e, ExecOp::LinearAttentionBack(_)),
                        a.pos,
                        a.pos,
                        a.feat,
                        a.vfeat,
                    ),
                    _ => unreachable!("matched above"),
                };
                arity(if back { 6 } else { 3 })?;
                if self.size(query) != self.size(key) {
                    return Err(Error::Plan(
                        "fused attention between query and key axes of different sizes".into(),
                    ));
                }
                let mut ops: Vec<usize> = ins.clone();
                let outs: Vec<usize> = (0..if back { 3 } else { 2 })
                    .map(|k| self.fresh(oa(k)))
                    .collect::<Result<_, _>>()?;
                ops.extend(&outs);
                // Each operand's position and feature axes (lse has no feature).
                let role = |k: usize| -> (AxisId, Option<AxisId>) {
                    match k {
                        0 | 6 => (query, Some(feat)),
                        1 | 7 => (key, Some(feat)),
                        2 | 8 => (key, Some(vfeat)),
                        3 | 5 => (query, Some(vfeat)),
                        _ => (query, None),
                    }
                };
                let lse = ops[4];
                let lanes: Vec<AxisId> = self.vals[lse]
                    .axes
                    .iter()
                    .copied()
                    .filter(|a| *a != query)
                    .collect();
                let mut st = [0; super::attention::BACK];
                let mut sf = [0; super::attention::BACK];
                for (k, v) in ops.iter().enumerate() {
                    let (pos, feat) = role(k);
                    st[k] = self.stride(*v, pos);
                    sf[k] = feat.map_or(0, |f| self.stride(*v, f));
                }
                let which: [Option<usize>; super::attention::BACK] =
                    std::array::from_fn(|k| ops.get(k).copied());
                let attn = super::attention::Attn {
                    form,
                    back,
                    lanes: Nest::new(self.dims(&lanes, which)),
                    t: self.size(query),
                    d: self.size(feat),
                    e: self.size(vfeat),
                    st,
                    sf,
                };
                self.push(
                    Kernel::Attention(Box::new(attn)),
                    ins.clone(),
                    outs.clone(),
                    vec![],
                );
                outs
            }
            Op::Exec(ExecOp::Zeros) => {
                arity(0)?;
                let out = self.fresh(oa(0))?;
                let len = self.vals[out].len;
                self.push(Kernel::Fill { value: 0.0, len }, vec![], vec![out], vec![]);
                vec![out]
            }
            Op::LayerNorm(over) => {
                arity(3)?;
                let (x, g, bias) = (ins[0], ins[1], ins[2]);
                self.subset(g, &self.vals[x].axes.clone())?;
                self.subset(bias, &self.vals[x].axes.clone())?;
                let out = self.fresh(oa(0))?;
                let keep: Vec<AxisId> = oa(0).into_iter().filter(|a| !over.contains(a)).collect();
                let ops = [out, x, g, bias];
                let outer = Nest::new(self.dims(&keep, ops.map(Some)));
                let t = self.table(over, &ops);
                let inner: [Vec<usize>; 4] = t
                    .try_into()
                    .map_err(|_| Error::Plan("four tables".into()))?;
                let inplace = self.inplace(&ins[..1], out);
                let dense = super::kernels::dense(&inner);
                self.push(
                    Kernel::LayerNorm {
                        outer,
                        inner,
                        dense,
                    },
                    ins.clone(),
                    vec![out],
                    inplace,
                );
                vec![out]
            }
            Op::Exec(ExecOp::LayerNormBack(over)) => {
                arity(3)?;
                let (x, g, gy) = (ins[0], ins[1], ins[2]);
                self.subset(g, &self.vals[x].axes.clone())?;
                let gx = self.fresh(oa(0))?;
                let gg = self.fresh(oa(1))?;
                let gb = self.fresh(oa(2))?;
                let keep: Vec<AxisId> = oa(0).into_iter().filter(|a| !over.contains(a)).collect();
                let ops = [gx, x, g, gy, gg, gb];
                let outer = Nest::new(self.dims(&keep, ops.map(Some)));
                let t = self.table(over, &ops);
                let inner: [Vec<usize>; 6] =
                    t.try_into().map_err(|_| Error::Plan("six tables".into()))?;
                let lens = [self.vals[gg].len, self.vals[gb].len];
                let inplace: Vec<usize> = [0, 2]
                    .into_iter()
                    .filter(|k| self.same_layout(ins[*k], gx))
                    .collect();
                let dense = super::kernels::dense(&inner);
                self.push(
                    Kernel::LayerNormBack {
                        outer,
                        inner,
                        lens,
                        dense,
                    },
                    ins.clone(),
                    vec![gx, gg, gb],
                    inplace,
                );
                vec![gx, gg, gb]
            }
            Op::Embed { vocab, to } => {
                arity(2)?;
                let (ids, table) = (ins[0], ins[1]);
                let want = 1 + to.len();
                let tab_axes = &self.vals[table].axes;
                if tab_axes.len() != want
                    || !tab_axes.contains(vocab)
                    || to.iter().any(|a| !tab_axes.contains(a))
                {
                    return Err(Error::Plan(
                        "per-lane embedding tables are not supported".into(),
                    ));
                }
                let out = self.fresh(oa(0))?;
                let id_axes = self.vals[ids].axes.clone();
                let row_axes: Vec<AxisId> = oa(0).into_iter().filter(|a| to.contains(a)).collect();
                if row_axes.len() != to.len() || id_axes.len() + to.len() != oa(0).len() {
                    return Err(Error::Plan(
                        "the output is not the ids' axes and the row's".into(),
                    ));
                }
                let kernel = Kernel::Embed {
                    ids: Nest::new(self.dims(&id_axes, [Some(out), Some(ids)])),
                    row: Nest::new(self.dims(&row_axes, [Some(out), Some(table)])),
                    vocab: self.size(*vocab),
                    vstride: self.stride(table, *vocab),
                };
                self.push(kernel, ins.clone(), vec![out], vec![]);
                vec![out]
            }
            Op::Exec(ExecOp::EmbedBack { vocab }) => {
                arity(2)?;
                let (ids, gy) = (ins[0], ins[1]);
                let gt = self.fresh(oa(0))?;
                let id_axes = self.vals[ids].axes.clone();
                let row_axes: Vec<AxisId> = oa(0).into_iter().filter(|a| a != vocab).collect();
                let want: usize = id_axes.len() + row_axes.len();
                if want != self.vals[gy].axes.len()
                    || row_axes.iter().any(|a| !self.has(gy, *a))
                    || id_axes.iter().any(|a| !self.has(gy, *a))
                {
                    return Err(Error::Plan(
                        "the gradient is not over the ids' axes and the row's".into(),
                    ));
                }
                let kernel = Kernel::EmbedBack {
                    ids: Nest::new(self.dims(&id_axes, [Some(gy), Some(ids)])),
                    row: Nest::new(self.dims(&row_axes, [Some(gt), Some(gy)])),
                    vocab: self.size(*vocab),
                    vstride: self.stride(gt, *vocab),
                    len: self.vals[gt].len,
                };
                self.push(kernel, ins.clone(), vec![gt], vec![]);
                vec![gt]
            }
            Op::Exec(ExecOp::CrossEntropy { classes })
            | Op::Exec(ExecOp::CrossEntropyBack { classes }) => {
                let back = matches!(b.op, Op::Exec(ExecOp::CrossEntropyBack { .. }));
                arity(if back { 3 } else { 2 })?;
                let (logits, targets) = (ins[0], ins[1]);
                let out = self.fresh(oa(0))?;
                let positions = self.vals[targets].axes.clone();
                let out_for_pos = if back { Some(out) } else { None };
                let pos =
                    Nest::new(self.dims(&positions, [Some(logits), Some(targets), out_for_pos]));
                let s = [
                    self.stride(logits, *classes),
                    if back { self.stride(out, *classes) } else { 0 },
                ];
                let kernel = Kernel::CrossEntropy {
                    back,
                    pos,
                    n: self.size(*classes),
                    s,
                };
                self.push(kernel, ins.clone(), vec![out], vec![]);
                vec![out]
            }
            // The planner takes a `Flat` diagram, which `ir::verify` proved free of these.
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
                crate::ir::ops::spec(&b.op).name
            ),
        };
        if outs.len() != b.outputs.len() {
            return Err(Error::Plan(format!(
                "{} outputs computed for {} wires",
                outs.len(),
                b.outputs.len()
            )));
        }
        for (k, (w, v)) in b.outputs.iter().zip(&outs).enumerate() {
            if self.vals[*v].axes.len() != out_ty(k).axes.len() {
                return Err(Error::Plan(
                    "an output's axes differ from its wire's".into(),
                ));
            }
            self.wire_val[w.0 as usize] = Some(*v);
        }
        let op = crate::ir::print::op_text(&b.op, self.axes);
        let label = format!("box {bi} ({op})");
        for dr in &mut self.drafts[first_step..] {
            dr.label = label.clone();
        }
        if !outs.is_empty() {
            let messages = b
                .outputs
                .iter()
                .map(|w| {
                    let name = d.wire(*w).name.as_deref().unwrap_or("an unnamed wire");
                    format!(
                        "box {bi} `{op}` produced a NaN or infinity on {name} (at bytes {}..{} of the source)",
                        b.span.start, b.span.end
                    )
                })
                .collect();
            let lens = outs.iter().map(|v| self.vals[*v].len).collect();
            self.push_action(
                Action::Check(Check { messages, lens }),
                outs.clone(),
                vec![],
                vec![],
            );
            let n = self.drafts.len();
            self.drafts[n - 1].label = label;
        }
        Ok(())
    }

    pub(super) fn elementwise1(
        &mut self,
        u: Unary,
        x: usize,
        out_axes: Vec<AxisId>,
    ) -> Result<usize, Error> {
        self.subset(x, &out_axes)?;
        let out = self.fresh(out_axes.clone())?;
        let nest = Nest::new(self.dims(&out_axes, [Some(out), Some(x)]));
        let inplace = self.inplace(&[x], out);
        self.push(Kernel::Unary(u, nest), vec![x], vec![out], inplace);
        Ok(out)
    }

    pub(super) fn elementwise2(
        &mut self,
        f: Binary,
        a: usize,
        b: usize,
        out_axes: Vec<AxisId>,
    ) -> Result<usize, Error> {
        self.subset(a, &out_axes)?;
        self.subset(b, &out_axes)?;
        let out = self.fresh(out_axes.clone())?;
        let nest = Nest::new(self.dims(&out_axes, [Some(out), Some(a), Some(b)]));
        let inplace = self.inplace(&[a, b], out);
        self.push(Kernel::Binary(f, nest), vec![a, b], vec![out], inplace);
        Ok(out)
    }

    /// An op along axis `a`, lane by lane over the output's other axes.
    pub(super) fn lane(
        &mut self,
        op: LaneOp,
        ins: &[usize],
        a: AxisId,
        out_axes: Vec<AxisId>,
    ) -> Result<usize, Error> {
        // A reduction's output lacks the lane's axis (its stride there is 0); the others keep it.
        let reduces = matches!(op, LaneOp::Reduce(_));
        let mut full = out_axes.clone();
        if reduces {
            full.push(a);
        }
        for x in ins {
            self.subset(*x, &full)?;
        }
        let out = self.fresh(out_axes.clone())?;
        if self.has(out, a) == reduces {
            return Err(Error::Plan(format!(
                "the output {} axis `{}`",
                if reduces {
                    "keeps the reduced"
                } else {
                    "lacks"
                },
                self.name(a)
            )));
        }
        let others: Vec<AxisId> = out_axes.iter().copied().filter(|c| *c != a).collect();
        let second = ins.get(1).copied();
        let outer = Nest::new(self.dims(&others, [Some(out), Some(ins[0]), second]));
        let s = [
            self.stride(out, a),
            self.stride(ins[0], a),
            second.map_or(0, |v| self.stride(v, a)),
        ];
        let kernel = Kernel::Lane {
            op,
            outer,
            n: self.size(a),
            s,
        };
        // A scan's output may take its input's buffer, never its gate's: the chunked execution
        // reads the gates again after writing the outputs.
        let mut inplace = self.inplace(ins, out);
        match op {
            LaneOp::Scan => inplace.retain(|k| *k == 1),
            LaneOp::ScanBack => inplace.retain(|k| *k == 0),
            _ => {}
        }
        self.push(kernel, ins.to_vec(), vec![out], inplace);
        Ok(out)
    }

    /// The matrix-gated scan (`Op::MatScan`, or its gradient with `back`): `ins` are
    /// `(gate, x)` forward and `(gy, gate)` backward.
    pub(super) fn mat_scan(
        &mut self,
        back: bool,
        ins: &[usize],
        (along, row, col): (AxisId, AxisId, AxisId),
        out_axes: Vec<AxisId>,
    ) -> Result<usize, Error> {
        let (gate, x) = if back {
            (ins[1], ins[0])
        } else {
            (ins[0], ins[1])
        };
        self.subset(x, &out_axes)?;
        let mut with_col = out_axes.clone();
        with_col.push(col);
        self.subset(gate, &with_col)?;
        let out = self.fresh(out_axes.clone())?;
        for a in [along, row] {
            if !self.has(out, a) || !self.has(x, a) {
                return Err(Error::Plan(format!(
                    "a matrix scan's state lacks axis `{}`",
                    self.name(a)
                )));
            }
        }
        if !self.has(gate, row) || !self.has(gate, col) {
            return Err(Error::Plan(
                "a matrix scan's gate lacks its row or column".into(),
            ));
        }
        let others: Vec<AxisId> = out_axes
            .iter()
            .copied()
            .filter(|c| *c != along && *c != row)
            .collect();
        let outer = Nest::new(self.dims(&others, [Some(out), Some(ins[0]), Some(ins[1])]));
        let st = |v: usize| [self.stride(v, along), self.stride(v, row)];
        let kernel = Kernel::MatScan {
            back,
            outer,
            n: self.size(along),
            r: self.size(row),
            s: [st(out), st(ins[0]), st(ins[1])],
            col: self.stride(gate, col),
        };
        let inplace = if self.same_layout(x, out) {
            vec![usize::from(!back)]
        } else {
            vec![]
        };
        self.push(kernel, ins.to_vec(), vec![out], inplace);
        Ok(out)
    }

    /// Liveness, buffer assignment and the final steps.
    pub(super) fn finish(self, inputs: Vec<InputSpec>, outs: &[usize]) -> Result<Plan, Error> {
        let nvals = self.vals.len();
        let root = |v: usize| self.vals[v].root;
        // A root lives from the step that writes it to the last step that reads it or any of
        // its aliases; an output's root lives to the end.
        let mut last: Vec<usize> = self.vals.iter().map(|v| v.def).collect();
        for (s, dr) in self.drafts.iter().enumerate() {
            for v in &dr.ins {
                let r = root(*v);
                last[r] = last[r].max(s);
            }
        }
        for v in outs {
            last[root(*v)] = usize::MAX;
        }
        let mut dying: Vec<Vec<usize>> = vec![Vec::new(); self.drafts.len()];
        for r in 0..nvals {
            if root(r) == r && self.vals[r].origin == Origin::Work && last[r] < dying.len() {
                dying[last[r]].push(r);
            }
        }
        // Greedy assignment in step order: an output takes over an input's buffer when the
        // step may run in place and that input dies here; otherwise the best-fitting free
        // buffer (the smallest that is large enough, else the largest, grown).
        let mut buffer_of: Vec<Option<usize>> = vec![None; nvals];
        let mut caps: Vec<usize> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut no_reuse = 0;
        for (s, dr) in self.drafts.iter().enumerate() {
            let mut taken: Option<usize> = None;
            for (k, o) in dr.outs.iter().enumerate() {
                let need = self.vals[*o].len;
                no_reuse += need;
                if k == 0 {
                    let candidate = dr.inplace.iter().copied().find(|slot| {
                        let r = root(dr.ins[*slot]);
                        self.vals[r].origin == Origin::Work
                            && last[r] == s
                            && dr
                                .ins
                                .iter()
                                .enumerate()
                                .all(|(j, v)| root(*v) != r || dr.inplace.contains(&j))
                    });
                    if let Some(slot) = candidate {
                        let r = root(dr.ins[slot]);
                        let buf = buffer_of[r]
                            .ok_or_else(|| Error::Plan("an input without a buffer".into()))?;
                        if caps[buf] >= need {
                            buffer_of[*o] = Some(buf);
                            taken = Some(r);
                            continue;
                        }
                    }
                }
                let fit = free
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| caps[**b] >= need)
                    .min_by_key(|(_, b)| caps[**b])
                    .or_else(|| free.iter().enumerate().max_by_key(|(_, b)| caps[**b]))
                    .map(|(i, _)| i);
                let buf = match fit {
                    Some(i) => free.swap_remove(i),
                    None => {
                        caps.push(0);
                        caps.len() - 1
                    }
                };
                caps[buf] = caps[buf].max(need);
                buffer_of[*o] = Some(buf);
            }
            for r in &dying[s] {
                if Some(*r) != taken
                    && let Some(buf) = buffer_of[*r]
                {
                    free.push(buf);
                }
            }
        }
        let loc = |v: usize| -> Result<Loc, Error> {
            let r = root(v);
            match self.vals[r].origin {
                Origin::Input(k) => Ok(Loc::Input(k)),
                Origin::Const(k) => Ok(Loc::Const(k)),
                Origin::Work => buffer_of[r]
                    .map(Loc::Work)
                    .ok_or_else(|| Error::Plan("a value without a buffer".into())),
            }
        };
        let (mut gemm_flops, mut gemms) = (0, 0);
        let mut steps = Vec::with_capacity(self.drafts.len());
        for dr in self.drafts {
            let locs: Vec<Loc> = dr
                .ins
                .iter()
                .chain(&dr.outs)
                .map(|v| loc(*v))
                .collect::<Result<_, _>>()?;
            if let Action::Kernel(k) = &dr.action {
                let lens: Vec<usize> = dr
                    .ins
                    .iter()
                    .chain(&dr.outs)
                    .map(|v| self.vals[*v].len)
                    .collect();
                if k.arity() != locs.len() {
                    return Err(Error::Plan(format!(
                        "{}: plan bug: wrong operand count",
                        dr.label
                    )));
                }
                k.check_bounds(&lens)
                    .map_err(|e| Error::Plan(format!("{}: {e}", dr.label)))?;
                if let Kernel::Gemm(g) = k {
                    gemm_flops += g.flops();
                    gemms += 1;
                }
            }
            steps.push(Step {
                action: dr.action,
                locs,
                label: dr.label,
            });
        }
        let outputs = outs
            .iter()
            .map(|v| Ok((loc(*v)?, self.vals[*v].len)))
            .collect::<Result<_, Error>>()?;
        Ok(Plan {
            steps,
            inputs,
            outputs,
            consts: self.consts,
            buffers: caps,
            no_reuse,
            gemm_flops,
            gemms,
            fused: 0,
        })
    }
}
