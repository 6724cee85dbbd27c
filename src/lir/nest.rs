//! Loop nests over strided layouts: the one iteration scheme behind every non-GEMM kernel and
//! every fused group.
//!
//! A nest ([`LoopNest`]) is a list of dimensions, outermost first, each with a length and one
//! stride per operand (an operand that lacks the dimension has stride 0, which is how
//! broadcasting is expressed). Nests are built at plan time and normalised there: dimensions of
//! length 1 are dropped and neighbours that are contiguous for every operand at once are
//! merged, so that at run time the innermost dimension is as long as possible and usually has
//! stride 1.
//!
//! The strides of a dimension are an array when the number of operands is fixed by the kernel
//! ([`Nest`]`<N>`, `[usize; N]`: kept on the stack, what the kernels' loops use) and a vector
//! when it is known only at plan time ([`DynNest`], a fused group's operands). Both are the
//! same type and walk with the same odometer ([`LoopNest::walk`]).

/// The strides (or offsets) of one dimension (or point), one per operand.
pub trait Offsets: Clone + PartialEq + Eq + std::fmt::Debug {
    /// `n` zeros (an array ignores `n`: it has its own length).
    fn zeros(n: usize) -> Self;
    fn slice(&self) -> &[usize];
    fn slice_mut(&mut self) -> &mut [usize];
}

impl<const N: usize> Offsets for [usize; N] {
    fn zeros(_: usize) -> Self {
        [0; N]
    }
    fn slice(&self) -> &[usize] {
        self
    }
    fn slice_mut(&mut self) -> &mut [usize] {
        self
    }
}

impl Offsets for Vec<usize> {
    fn zeros(n: usize) -> Self {
        vec![0; n]
    }
    fn slice(&self) -> &[usize] {
        self
    }
    fn slice_mut(&mut self) -> &mut [usize] {
        self
    }
}

/// One dimension of a nest: its length and the stride of each operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestDim<S> {
    pub n: usize,
    pub s: S,
}

/// A dimension over `N` operands.
pub type Dim<const N: usize> = NestDim<[usize; N]>;

/// A normalised loop nest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopNest<S> {
    dims: Vec<NestDim<S>>,
    /// Some dimension has length 0, so the nest visits nothing.
    empty: bool,
    /// The number of operands.
    ops: usize,
}

/// A nest over `N` operands (every kernel but fused groups).
pub type Nest<const N: usize> = LoopNest<[usize; N]>;

/// A nest over a number of operands known at plan time (fused groups: inputs, outputs, then
/// the element index that dropout hashes). Never without dimensions: a scalar is one dimension
/// of length 1, so that a group always has an innermost row.
pub type DynNest = LoopNest<Vec<usize>>;

impl<S: Offsets> LoopNest<S> {
    /// Normalises `dims` (outermost first): drops length-1 dimensions and merges a dimension
    /// into the one outside it when every operand's outer stride is its inner stride times the
    /// inner length. Merging never changes which offsets are visited, only how many loops do it.
    fn normalised(dims: Vec<NestDim<S>>, ops: usize) -> LoopNest<S> {
        let empty = dims.iter().any(|d| d.n == 0);
        let mut out: Vec<NestDim<S>> = Vec::with_capacity(dims.len());
        for d in dims.into_iter().filter(|d| d.n != 1) {
            if let Some(last) = out.last_mut()
                && (0..ops).all(|k| last.s.slice()[k] == d.s.slice()[k] * d.n)
            {
                last.n *= d.n;
                last.s = d.s;
                continue;
            }
            out.push(d);
        }
        LoopNest {
            dims: out,
            empty,
            ops,
        }
    }

    /// The normalised dimensions, outermost first.
    pub fn dims(&self) -> &[NestDim<S>] {
        &self.dims
    }

    /// How many operands the nest walks.
    pub fn operands(&self) -> usize {
        self.ops
    }

    /// How many points the nest visits.
    pub fn len(&self) -> usize {
        if self.empty {
            0
        } else {
            self.dims.iter().map(|d| d.n).product()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest offset operand `k` reaches from base 0: plan-time bounds checks use it.
    pub fn reach(&self, k: usize) -> usize {
        if self.empty {
            return 0;
        }
        self.dims.iter().map(|d| (d.n - 1) * d.s.slice()[k]).sum()
    }

    /// Whether operands `a` and `b` visit the same offsets at every point (one could be
    /// written in place of the other).
    pub fn same(&self, a: usize, b: usize) -> bool {
        self.dims.iter().all(|d| d.s.slice()[a] == d.s.slice()[b])
    }

    /// The innermost dimension's strides (zeros for a scalar): constants of generated code.
    pub fn inner_strides(&self) -> S {
        self.dims
            .last()
            .map_or_else(|| S::zeros(self.ops), |d| d.s.clone())
    }

    /// Calls `f(offsets, len, strides)` once per innermost row: `offsets` are the operands'
    /// offsets (from `base`) at the row's first point, `len` and `strides` describe the row.
    /// The row loop itself is the caller's, so that it can be specialised (contiguous, reduce
    /// to a scalar...) and stay tight.
    #[inline]
    pub fn walk(&self, base: S, mut f: impl FnMut(&S, usize, &S)) {
        if self.empty {
            return;
        }
        let Some((inner, outer)) = self.dims.split_last() else {
            f(&base, 1, &S::zeros(self.ops));
            return;
        };
        let mut idx = vec![0usize; outer.len()];
        let mut off = base;
        loop {
            f(&off, inner.n, &inner.s);
            // The odometer: advance the innermost outer dimension, carrying outwards.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.slice_mut().iter_mut().zip(outer[d].s.slice()) {
                    *o += s;
                }
                if idx[d] < outer[d].n {
                    break;
                }
                for (o, s) in off.slice_mut().iter_mut().zip(outer[d].s.slice()) {
                    *o -= s * outer[d].n;
                }
                idx[d] = 0;
            }
        }
    }

    /// Up to `parts` nests over consecutive ranges of the outermost dimension, with the offsets
    /// of each one's first point: together they visit exactly the points of this nest.
    pub fn split(&self, parts: usize) -> Vec<(S, LoopNest<S>)> {
        let Some(first) = self.dims.first() else {
            return vec![(S::zeros(self.ops), self.clone())];
        };
        let parts = parts.clamp(1, first.n.max(1));
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for k in 0..parts {
            let end = first.n * (k + 1) / parts;
            let mut dims = self.dims.clone();
            dims[0].n = end - start;
            let mut base = S::zeros(self.ops);
            for (b, s) in base.slice_mut().iter_mut().zip(first.s.slice()) {
                *b = s * start;
            }
            out.push((
                base,
                LoopNest {
                    dims,
                    empty: self.empty,
                    ops: self.ops,
                },
            ));
            start = end;
        }
        out
    }
}

impl<const N: usize> LoopNest<[usize; N]> {
    /// A normalised nest over `N` operands (see [`LoopNest::walk`]).
    pub fn new(dims: Vec<Dim<N>>) -> Nest<N> {
        LoopNest::normalised(dims, N)
    }

    /// [`LoopNest::walk`] with the offsets and strides by value.
    #[inline]
    pub fn rows(&self, base: [usize; N], mut f: impl FnMut([usize; N], usize, [usize; N])) {
        self.walk(base, |o, n, s| f(*o, n, *s));
    }

    /// Calls `f(offsets)` at every point.
    #[inline]
    pub fn each(&self, base: [usize; N], mut f: impl FnMut([usize; N])) {
        self.walk(base, |off, n, s| {
            let mut off = *off;
            for _ in 0..n {
                f(off);
                for (o, s) in off.iter_mut().zip(s) {
                    *o += s;
                }
            }
        });
    }
}

impl LoopNest<Vec<usize>> {
    /// A normalised nest over `ops` operands from `(length, strides)` dimensions, outermost
    /// first; a scalar gets one dimension of length 1.
    pub fn new(dims: Vec<(usize, Vec<usize>)>, ops: usize) -> DynNest {
        let dims = dims.into_iter().map(|(n, s)| NestDim { n, s }).collect();
        let mut nest = LoopNest::normalised(dims, ops);
        if nest.dims.is_empty() {
            nest.dims.push(NestDim {
                n: 1,
                s: vec![0; ops],
            });
        }
        nest
    }

    /// Calls `f(offsets, n)` once per innermost row, the offsets at the row's first point.
    pub fn rows(&self, base: &[usize], mut f: impl FnMut(&[usize], usize)) {
        self.walk(base.to_vec(), |o, n, _| f(o, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_visited_offsets() {
        // A [2, 3, 4] row-major array read in its own order and through a transposed view.
        let dims = vec![
            Dim { n: 2, s: [12, 1] },
            Dim { n: 3, s: [4, 2] },
            Dim { n: 4, s: [1, 6] },
            Dim { n: 1, s: [99, 99] },
        ];
        let nest = Nest::new(dims.clone());
        let mut got = Vec::new();
        nest.each([0, 0], |o| got.push(o));
        let mut want = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    want.push([12 * i + 4 * j + k, i + 2 * j + 6 * k]);
                }
            }
        }
        assert_eq!(got, want);
        // Contiguous for both operands: one dimension.
        let flat = Nest::new(vec![Dim { n: 2, s: [4, 4] }, Dim { n: 4, s: [1, 1] }]);
        assert_eq!(flat.dims().len(), 1);
        assert_eq!(flat.len(), 8);
        assert!(flat.same(0, 1));
        assert_eq!(nest.reach(1), 1 + 2 * 2 + 3 * 6);
    }

    #[test]
    fn splitting_covers_every_point_once() {
        let nest = Nest::new(vec![Dim { n: 5, s: [12, 1] }, Dim { n: 3, s: [1, 5] }]);
        let mut whole = Vec::new();
        nest.each([0, 0], |o| whole.push(o));
        for parts in 1..8 {
            let mut got = Vec::new();
            for (base, sub) in nest.split(parts) {
                sub.each(base, |o| got.push(o));
            }
            assert_eq!(got, whole, "{parts} parts");
        }
    }

    #[test]
    fn scalars_and_empty_nests() {
        let scalar: Nest<1> = Nest::new(vec![]);
        let mut n = 0;
        scalar.each([5], |o| {
            assert_eq!(o, [5]);
            n += 1;
        });
        assert_eq!(n, 1);
        let empty: Nest<1> = Nest::new(vec![Dim { n: 0, s: [1] }, Dim { n: 3, s: [0] }]);
        empty.each([0], |_| panic!("visits nothing"));
        assert_eq!(empty.len(), 0);
    }
}
