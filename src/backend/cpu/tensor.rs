//! Tensors with named axes: an ndarray plus the axis each dimension is.

use crate::ir::AxisId;
use ndarray::{Array2, Array3, ArrayD, Axis, IxDyn};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub axes: Vec<AxisId>,
    pub data: ArrayD<f64>,
}

impl Tensor {
    /// A tensor from a shape in `axes` order and its elements in row-major order.
    pub fn from_vec(axes: Vec<AxisId>, shape: &[usize], v: Vec<f64>) -> Tensor {
        Tensor {
            axes,
            data: ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape and length agree"),
        }
    }

    /// The position of axis `a` (which must be present).
    pub fn pos(&self, a: AxisId) -> usize {
        self.axes
            .iter()
            .position(|x| *x == a)
            .expect("the axis is present")
    }

    /// The same tensor with its dimensions in `order` (the same set of axes).
    pub fn aligned(self, order: &[AxisId]) -> Tensor {
        if self.axes == order {
            return self;
        }
        let perm: Vec<usize> = order.iter().map(|a| self.pos(*a)).collect();
        Tensor {
            axes: order.to_vec(),
            data: self.data.permuted_axes(IxDyn(&perm)),
        }
    }

    pub fn map(self, f: impl Fn(f64) -> f64) -> Tensor {
        Tensor {
            axes: self.axes,
            data: self.data.mapv(f),
        }
    }

    /// Adds axis `a` of size `n` in front, repeating the data.
    pub fn expand(self, a: AxisId, n: usize) -> Tensor {
        let mut shape = vec![n];
        shape.extend_from_slice(self.data.shape());
        let data = self
            .data
            .insert_axis(Axis(0))
            .broadcast(IxDyn(&shape))
            .expect("broadcast")
            .to_owned();
        let mut axes = vec![a];
        axes.extend(self.axes);
        Tensor { axes, data }
    }

    /// Repeats this tensor along the axes of `target` it lacks, in `target`'s order.
    pub fn expand_to(&self, target: &[AxisId], sizes: &[usize]) -> Tensor {
        let view = self.broadcast_view(target, sizes);
        Tensor {
            axes: target.to_vec(),
            data: view,
        }
    }

    fn broadcast_view(&self, target: &[AxisId], sizes: &[usize]) -> ArrayD<f64> {
        // Order own axes as they appear in target, then insert length-1 axes for the others.
        let own: Vec<AxisId> = target
            .iter()
            .copied()
            .filter(|a| self.axes.contains(a))
            .collect();
        let t = self.clone().aligned(&own);
        let mut data = t.data;
        for (i, a) in target.iter().enumerate() {
            if !self.axes.contains(a) {
                data = data.insert_axis(Axis(i));
            }
        }
        let shape: Vec<usize> = target
            .iter()
            .map(|a| sizes.get(a.0 as usize).copied().unwrap_or(1))
            .collect();
        let shape: Vec<usize> = shape
            .iter()
            .zip(data.shape())
            .map(|(want, have)| if *have == 1 { *want } else { *have })
            .collect();
        data.broadcast(IxDyn(&shape))
            .expect("broadcastable")
            .to_owned()
    }

    /// `self + other`, where `other`'s axes are a subset of `self`'s.
    pub fn add_broadcast(self, other: &Tensor) -> Tensor {
        let b = other.view_like(&self);
        Tensor {
            axes: self.axes,
            data: self.data + b,
        }
    }

    pub fn sub_broadcast(&self, other: &Tensor) -> Tensor {
        let b = other.view_like(self);
        Tensor {
            axes: self.axes.clone(),
            data: &self.data - &b,
        }
    }

    pub fn mul_broadcast(&self, other: &Tensor) -> Tensor {
        let b = other.view_like(self);
        Tensor {
            axes: self.axes.clone(),
            data: &self.data * &b,
        }
    }

    /// `self` (axes a subset of `like`'s) with length-1 dimensions, ready to broadcast.
    fn view_like(&self, like: &Tensor) -> ArrayD<f64> {
        let own: Vec<AxisId> = like
            .axes
            .iter()
            .copied()
            .filter(|a| self.axes.contains(a))
            .collect();
        assert_eq!(
            own.len(),
            self.axes.len(),
            "broadcast operand has an axis the other lacks"
        );
        let mut data = self.clone().aligned(&own).data;
        for (i, a) in like.axes.iter().enumerate() {
            if !self.axes.contains(a) {
                data = data.insert_axis(Axis(i));
            }
        }
        data
    }

    /// Sums over every axis not in `keep`, and orders the rest as `keep`.
    pub fn sum_to(self, keep: &[AxisId]) -> Tensor {
        let mut t = self;
        let mut i = t.axes.len();
        while i > 0 {
            i -= 1;
            if !keep.contains(&t.axes[i]) {
                t.data = t.data.sum_axis(Axis(i));
                t.axes.remove(i);
            }
        }
        t.aligned(keep)
    }
}

/// A general two-operand contraction: the result has the axes `out`. Axes in `x`, `y` and `out`
/// are lane-wise (batch), axes in one operand and `out` are free, axes in both operands but not
/// in `out` are contracted, axes in one operand only and not in `out` are summed first.
/// Computed as a batched matrix product (ndarray's GEMM).
pub fn einsum(x: &Tensor, y: &Tensor, out: &[AxisId], sizes: &[usize]) -> Tensor {
    let size = |a: &AxisId| sizes[a.0 as usize];
    // Sum away axes that appear in one operand only and not in the output.
    let xs: Vec<AxisId> = x
        .axes
        .iter()
        .copied()
        .filter(|a| out.contains(a) || y.axes.contains(a))
        .collect();
    let ys: Vec<AxisId> = y
        .axes
        .iter()
        .copied()
        .filter(|a| out.contains(a) || x.axes.contains(a))
        .collect();
    let x = x.clone().sum_to(&xs);
    let y = y.clone().sum_to(&ys);
    let batch: Vec<AxisId> = out
        .iter()
        .copied()
        .filter(|a| x.axes.contains(a) && y.axes.contains(a))
        .collect();
    let xfree: Vec<AxisId> = out
        .iter()
        .copied()
        .filter(|a| x.axes.contains(a) && !y.axes.contains(a))
        .collect();
    let yfree: Vec<AxisId> = out
        .iter()
        .copied()
        .filter(|a| y.axes.contains(a) && !x.axes.contains(a))
        .collect();
    let contr: Vec<AxisId> = x
        .axes
        .iter()
        .copied()
        .filter(|a| y.axes.contains(a) && !out.contains(a))
        .collect();
    let (b, m, k, n) = (
        batch.iter().map(size).product::<usize>(),
        xfree.iter().map(size).product::<usize>(),
        contr.iter().map(size).product::<usize>(),
        yfree.iter().map(size).product::<usize>(),
    );
    let xo: Vec<AxisId> = batch.iter().chain(&xfree).chain(&contr).copied().collect();
    let yo: Vec<AxisId> = batch.iter().chain(&contr).chain(&yfree).copied().collect();
    let xd = x.aligned(&xo).data.as_standard_layout().into_owned();
    let yd = y.aligned(&yo).data.as_standard_layout().into_owned();
    let x3: Array3<f64> = xd.into_shape_with_order((b, m, k)).expect("contiguous");
    let y3: Array3<f64> = yd.into_shape_with_order((b, k, n)).expect("contiguous");
    let mut r = Array3::<f64>::zeros((b, m, n));
    for i in 0..b {
        let xm = x3.index_axis(Axis(0), i);
        let ym = y3.index_axis(Axis(0), i);
        let prod: Array2<f64> = xm.dot(&ym);
        r.index_axis_mut(Axis(0), i).assign(&prod);
    }
    let axes: Vec<AxisId> = batch.iter().chain(&xfree).chain(&yfree).copied().collect();
    let shape: Vec<usize> = axes.iter().map(size).collect();
    let data = r
        .into_shape_with_order(IxDyn(&shape))
        .expect("sizes agree")
        .into_dyn();
    Tensor { axes, data }.aligned(out)
}
