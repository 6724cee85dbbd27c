//! Loop nests over strided layouts: the one iteration scheme behind every non-GEMM kernel
//! ([`Nest`], a fixed number of operands) and every fused group ([`DynNest`], as many operands
//! as the group has).
//!
//! A nest is a list of dimensions, outermost first, each with a length and one stride per
//! operand (an operand that lacks the dimension has stride 0, which is how broadcasting is
//! expressed). Nests are built at plan time and normalised there: dimensions of length 1 are
//! dropped and neighbours that are contiguous for every operand at once are merged, so that at
//! run time the innermost dimension is as long as possible and usually has stride 1.

/// One dimension of a nest: its length and the stride of each of the `N` operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dim<const N: usize> {
    pub n: usize,
    pub s: [usize; N],
}

/// A normalised loop nest over `N` operands.
#[derive(Clone, Debug)]
pub struct Nest<const N: usize> {
    dims: Vec<Dim<N>>,
    /// Some dimension has length 0, so the nest visits nothing.
    empty: bool,
}

impl<const N: usize> Nest<N> {
    /// Normalises `dims` (outermost first): drops length-1 dimensions and merges a dimension
    /// into the one outside it when every operand's outer stride is its inner stride times the
    /// inner length. Merging never changes which offsets are visited, only how many loops do it.
    pub fn new(dims: Vec<Dim<N>>) -> Nest<N> {
        let empty = dims.iter().any(|d| d.n == 0);
        let mut out: Vec<Dim<N>> = Vec::with_capacity(dims.len());
        for d in dims.into_iter().filter(|d| d.n != 1) {
            if let Some(last) = out.last_mut()
                && (0..N).all(|k| last.s[k] == d.s[k] * d.n)
            {
                last.n *= d.n;
                last.s = d.s;
                continue;
            }
            out.push(d);
        }
        Nest { dims: out, empty }
    }

    /// The normalised dimensions, outermost first (empty for a scalar).
    pub fn dims(&self) -> &[Dim<N>] {
        &self.dims
    }

    /// How many points the nest visits.
    pub fn len(&self) -> usize {
        if self.empty {
            0
        } else {
            self.dims.iter().map(|d| d.n).product()
        }
    }

    /// The largest offset operand `k` reaches from base 0: plan-time bounds checks use it.
    pub fn reach(&self, k: usize) -> usize {
        if self.empty {
            return 0;
        }
        self.dims.iter().map(|d| (d.n - 1) * d.s[k]).sum()
    }

    /// Whether operands `a` and `b` visit the same offsets at every point (one could be
    /// written in place of the other).
    pub fn same(&self, a: usize, b: usize) -> bool {
        self.dims.iter().all(|d| d.s[a] == d.s[b])
    }

    /// Calls `f(offsets, len, strides)` once per innermost row: `offsets` are the operands'
    /// offsets (from `base`) at the row's first point, `len` and `strides` describe the row.
    /// The row loop itself is the caller's, so that it can be specialised (contiguous, reduce
    /// to a scalar...) and stay tight.
    #[inline]
    pub fn rows(&self, base: [usize; N], mut f: impl FnMut([usize; N], usize, [usize; N])) {
        if self.empty {
            return;
        }
        let Some((inner, outer)) = self.dims.split_last() else {
            f(base, 1, [0; N]);
            return;
        };
        let mut idx = vec![0usize; outer.len()];
        let mut off = base;
        loop {
            f(off, inner.n, inner.s);
            // The odometer: advance the innermost outer dimension, carrying outwards.
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.iter_mut().zip(outer[d].s) {
                    *o += s;
                }
                if idx[d] < outer[d].n {
                    break;
                }
                for (o, s) in off.iter_mut().zip(outer[d].s) {
                    *o -= s * outer[d].n;
                }
                idx[d] = 0;
            }
        }
    }

    /// Up to `parts` nests over consecutive ranges of the outermost dimension, with the offsets
    /// of each one's first point: together they visit exactly the points of this nest.
    pub fn split(&self, parts: usize) -> Vec<([usize; N], Nest<N>)> {
        let Some(first) = self.dims.first() else {
            return vec![([0; N], self.clone())];
        };
        let parts = parts.clamp(1, first.n.max(1));
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for k in 0..parts {
            let end = first.n * (k + 1) / parts;
            let mut dims = self.dims.clone();
            dims[0].n = end - start;
            out.push((
                first.s.map(|s| s * start),
                Nest {
                    dims,
                    empty: self.empty,
                },
            ));
            start = end;
        }
        out
    }

    /// Calls `f(offsets)` at every point.
    #[inline]
    pub fn each(&self, base: [usize; N], mut f: impl FnMut([usize; N])) {
        self.rows(base, |mut off, n, s| {
            for _ in 0..n {
                f(off);
                for (o, s) in off.iter_mut().zip(s) {
                    *o += s;
                }
            }
        });
    }
}

/// A loop nest with a run-time number of operands: dimensions outermost first, each a length
/// and one stride per operand. Normalised as [`Nest`] is: length-1 dimensions
/// dropped, dimensions contiguous for every operand merged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynNest {
    /// `(length, strides)`, outermost first; never empty (a scalar is one dimension of 1).
    dims: Vec<(usize, Vec<usize>)>,
    ops: usize,
}

impl DynNest {
    pub fn new(dims: Vec<(usize, Vec<usize>)>, ops: usize) -> DynNest {
        let mut out: Vec<(usize, Vec<usize>)> = Vec::with_capacity(dims.len());
        for (n, s) in dims.into_iter().filter(|d| d.0 != 1) {
            if let Some(last) = out.last_mut()
                && (0..ops).all(|k| last.1[k] == s[k] * n)
            {
                last.0 *= n;
                last.1 = s;
                continue;
            }
            out.push((n, s));
        }
        if out.is_empty() {
            out.push((1, vec![0; ops]));
        }
        DynNest { dims: out, ops }
    }

    /// The dimensions, outermost first: `(length, one stride per operand)`.
    pub fn dims(&self) -> &[(usize, Vec<usize>)] {
        &self.dims
    }

    /// Points visited.
    pub fn len(&self) -> usize {
        self.dims.iter().map(|d| d.0).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest offset operand `k` reaches (for plan-time bounds checks).
    pub fn reach(&self, k: usize) -> usize {
        if self.is_empty() {
            return 0;
        }
        self.dims.iter().map(|d| (d.0 - 1) * d.1[k]).sum()
    }

    /// How many operands the nest walks.
    pub fn operands(&self) -> usize {
        self.ops
    }

    /// The innermost dimension's strides: constants of the generated code.
    pub fn inner_strides(&self) -> Vec<usize> {
        self.dims.last().map_or(vec![0; self.ops], |d| d.1.clone())
    }

    /// Calls `f(offsets, n)` once per innermost row, the offsets at the row's first point.
    pub fn rows(&self, base: &[usize], mut f: impl FnMut(&[usize], usize)) {
        if self.is_empty() {
            return;
        }
        let Some(((n, _), outer)) = self.dims.split_last() else {
            return;
        };
        let mut idx = vec![0usize; outer.len()];
        let mut off = base.to_vec();
        loop {
            f(&off, *n);
            let mut d = outer.len();
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                idx[d] += 1;
                for (o, s) in off.iter_mut().zip(&outer[d].1) {
                    *o += s;
                }
                if idx[d] < outer[d].0 {
                    break;
                }
                for (o, s) in off.iter_mut().zip(&outer[d].1) {
                    *o -= s * outer[d].0;
                }
                idx[d] = 0;
            }
        }
    }

    /// Up to `parts` nests over consecutive ranges of the outermost dimension, each with the
    /// offsets of its first point.
    pub fn split(&self, parts: usize) -> Vec<(Vec<usize>, DynNest)> {
        let first = &self.dims[0];
        let parts = parts.clamp(1, first.0.max(1));
        let mut out = Vec::with_capacity(parts);
        let mut start = 0;
        for k in 0..parts {
            let end = first.0 * (k + 1) / parts;
            let mut dims = self.dims.clone();
            dims[0].0 = end - start;
            out.push((
                first.1.iter().map(|s| s * start).collect(),
                DynNest {
                    dims,
                    ops: self.ops,
                },
            ));
            start = end;
        }
        out
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
