//! Where things go: a layered (Sugiyama-style) layout for graphs with nested groups.
//!
//! Coordinates here are abstract: `across` runs along a layer and `along` runs with the wires,
//! from inputs (0) to outputs. The SVG writer maps them to the page (bottom to top, or left to
//! right), so one layout serves both directions; node sizes are measured in the direction asked.
//!
//! Why hand-written: the crates for layered layout (`layout-rs`, `rust-sugiyama`) place plain
//! graphs; a diagram needs every region (SIMD tube, repeat block, expanded composite) to be one
//! rectangle nested in its parent, with its ports on its edges. This file does that in about
//! the simplest way that gives clean pictures: it lays out each group on its own, innermost
//! first, and then treats the group as one big node of its parent (a compound node), whose ports
//! are where its entry and exit nodes ended up. For one group:
//! 1. **Layers.** Entry nodes (region ports, diagram inputs) form layer 0 and exit nodes the last
//!    layer, so they sit on the frame. The others get the longest path from the entries; nodes
//!    without inputs (parameters) are then moved up to just below their first consumer.
//! 2. **Dummies.** An edge that spans several layers gets one dummy slot per layer it crosses,
//!    so it is routed around boxes and takes part in crossing reduction.
//! 3. **Order.** Barycentre sweeps, alternately upwards and downwards: each slot moves to the
//!    mean position of its neighbours' ports in the layer just placed. After each sweep, sifting
//!    moves single slots to the place in their layer with the fewest crossings. Crossings are
//!    counted exactly (merge sort), the best order seen is kept, and the whole search runs from
//!    a few starting orders (the diagram's, its mirror, depth-first from either end). Boundary
//!    ports whose order is part of a signature keep it.
//! 4. **Coordinates.** Each slot wants to sit at the mean of its neighbours' ports; within a
//!    layer the order is fixed and slots keep a minimum gap, and the positions closest to the
//!    wishes (in least squares) are an isotonic regression, solved exactly by pool-adjacent-
//!    violators. Sweeping layers up and down balances the picture; long edges weigh more, and
//!    are then made straight wherever their neighbours leave room.
//! 5. **Spacing.** Each layer is as thick as its thickest item; the gap above a layer makes room
//!    for the wire labels that start there and grows with how far its wires travel sideways.
//!    A frame's caption takes the first place in its top layer, so ports stay clear of it.
//!
//! Time is bounded: sifting skips wide layers and stops after a fixed amount of work, restarts
//! are for small groups only, and the number of slots is capped ([`MAX_SLOTS`]).
//!
//! Everything is deterministic: sorts are stable with ties broken by index, and only `+ - * /`
//! and comparisons are used on coordinates.

use super::graph::{BoxStyle, Graph, GroupKind, NodeId, Role, Shape};
use super::{DrawError, Flow};
use std::cmp::Ordering;

/// Layout slots (nodes, groups and dummies) over all groups, at most.
pub const MAX_SLOTS: usize = 400_000;

/// Box label font size and the advance of one character of a monospace font at that size.
pub const FONT: f64 = 12.0;
pub const CHAR_W: f64 = 7.2;
/// Wire label font.
pub const SMALL_FONT: f64 = 10.0;
pub const SMALL_CHAR_W: f64 = 6.0;
pub const SMALL_H: f64 = 11.0;
/// Frame caption font.
pub const CAPTION_FONT: f64 = 11.0;
pub const CAPTION_CHAR_W: f64 = 6.6;
pub const CAPTION_H: f64 = 14.0;
/// Box height (TB) and padding of the label inside.
pub const BOX_H: f64 = 22.0;
pub const BOX_PAD: f64 = 8.0;
/// The parameter triangle of a learned box sticks out this far on its side.
pub const TRI: f64 = 10.0;
pub const PARAM: f64 = 14.0;
pub const DOT: f64 = 7.0;
pub const PORT: f64 = 9.0;
/// Padding inside frames.
pub const FRAME_PAD: f64 = 10.0;
/// Gap between a wire and its label.
pub const LABEL_GAP: f64 = 4.0;
/// Straight ends of a wire: after its label (or this much when unlabelled), and before it ends.
pub const STUB: f64 = 5.0;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pt {
    pub across: f64,
    pub along: f64,
}

fn pt(across: f64, along: f64) -> Pt {
    Pt { across, along }
}

/// An axis-aligned rectangle in abstract coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rect {
    pub across0: f64,
    pub along0: f64,
    pub across1: f64,
    pub along1: f64,
}

/// A wire's path: points, and whether the piece from each point to the next is a curve (with
/// tangents along the flow at both ends) or a straight line.
#[derive(Clone, Debug, Default)]
pub struct Route {
    pub pts: Vec<Pt>,
    pub curved: Vec<bool>,
}

/// The result: absolute positions.
#[derive(Clone, Debug, Default)]
pub struct Placed {
    /// Centre of each node's main shape.
    pub nodes: Vec<Pt>,
    /// Frame of each group (the root's is the whole picture).
    pub groups: Vec<Rect>,
    pub routes: Vec<Route>,
    /// Lower-left corner (smallest across and along) of each edge's label box.
    pub labels: Vec<Option<Pt>>,
    /// Lower-left corner of each group's caption box.
    pub captions: Vec<Pt>,
}

/// The size of a node's main shape along each axis, and how far its drawing reaches on each
/// side across (a learned box's triangle, a parameter's label).
#[derive(Clone, Copy, Debug)]
pub struct Extent {
    pub across: f64,
    pub along: f64,
    pub left: f64,
    pub right: f64,
}

pub fn text_w(s: &str, char_w: f64) -> f64 {
    s.chars().count() as f64 * char_w
}

/// The label's size in abstract coordinates.
pub fn label_size(s: &str, flow: Flow) -> (f64, f64) {
    let w = text_w(s, SMALL_CHAR_W);
    match flow {
        Flow::BottomToTop => (w, SMALL_H),
        Flow::LeftToRight => (SMALL_H, w),
    }
}

/// The size of a frame caption: (across, along) of its box.
pub fn caption_size(s: &str, flow: Flow) -> (f64, f64) {
    let w = text_w(s, CAPTION_CHAR_W) + 8.0;
    match flow {
        Flow::BottomToTop => (w, CAPTION_H),
        Flow::LeftToRight => (CAPTION_H, w),
    }
}

/// Swaps a (page width, page height) size into (across, along).
fn oriented(w: f64, h: f64, flow: Flow) -> (f64, f64) {
    match flow {
        Flow::BottomToTop => (w, h),
        Flow::LeftToRight => (h, w),
    }
}

/// The width of a box's rectangle on the page.
pub fn box_w(label: &str) -> f64 {
    (text_w(label, CHAR_W) + 2.0 * BOX_PAD).max(28.0)
}

/// The width of node `n`'s box rectangle with `flow`: its label's, widened where the box has
/// several outputs so that each output's wire label (drawn to the right of its port) ends
/// before the next port (a call returning two tables would otherwise print them over each
/// other).
pub fn node_box_w(g: &Graph, n: NodeId, flow: Flow) -> f64 {
    let node = &g.nodes[n];
    let w = box_w(&node.label);
    if flow != Flow::BottomToTop || node.outputs < 2 {
        return w;
    }
    let widest = g
        .edges
        .iter()
        .filter(|e| e.from == n && e.from_port + 1 < node.outputs)
        .filter_map(|e| e.label.as_deref())
        .map(|l| text_w(l, SMALL_CHAR_W) + 8.0)
        .fold(0.0, f64::max);
    w.max(widest * (node.outputs as f64 + 1.0))
}

pub fn extent(g: &Graph, n: NodeId, flow: Flow) -> Extent {
    let node = &g.nodes[n];
    let sym = |w: f64, h: f64| {
        let (across, along) = oriented(w, h, flow);
        Extent {
            across,
            along,
            left: across / 2.0,
            right: across / 2.0,
        }
    };
    match node.shape {
        Shape::Box(style) => {
            let mut e = sym(node_box_w(g, n, flow), BOX_H);
            if style == BoxStyle::Learned && node.params {
                e.left += TRI;
            }
            e
        }
        Shape::Param => {
            let mut e = sym(PARAM, PARAM);
            // The label beside the triangle: to its right (TB) or below it (LR).
            match flow {
                Flow::BottomToTop => e.right += 3.0 + text_w(&node.label, CHAR_W),
                Flow::LeftToRight => {
                    e.right += 3.0 + FONT;
                    e.along = e.along.max(text_w(&node.label, CHAR_W));
                }
            }
            e
        }
        Shape::Fork => sym(DOT, DOT),
        Shape::Cap => sym(12.0, DOT),
        Shape::Port(_) | Shape::Output => sym(PORT, PORT),
        Shape::Input => {
            let w = text_w(&node.label, CHAR_W).max(PORT);
            match flow {
                Flow::BottomToTop => sym(w, 16.0),
                // The name left of the wire's start.
                Flow::LeftToRight => sym(w + 4.0, 16.0),
            }
        }
    }
}

/// Where port `k` of a node sits across, relative to its centre (inputs when `input`).
pub fn port_off(g: &Graph, n: NodeId, input: bool, k: usize, flow: Flow) -> f64 {
    let node = &g.nodes[n];
    let count = if input { node.inputs } else { node.outputs };
    match node.shape {
        Shape::Box(_) if count > 1 => {
            let w = match flow {
                Flow::BottomToTop => node_box_w(g, n, flow),
                Flow::LeftToRight => BOX_H,
            };
            -w / 2.0 + w * (k as f64 + 1.0) / (count as f64 + 1.0)
        }
        _ => 0.0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Node(NodeId),
    Group(usize),
}

/// An edge as seen by the group where it is laid out: between two of its members.
#[derive(Clone, Copy, Debug)]
struct LocalEdge {
    edge: usize,
    from: usize,
    from_off: f64,
    to: usize,
    to_off: f64,
    label: Option<(f64, f64)>,
}

/// A dummy's place: across, and the along extent of its layer (group coordinates).
#[derive(Clone, Copy, Debug)]
struct Via {
    across: f64,
    along0: f64,
    along1: f64,
}

struct Layout<'a> {
    g: &'a Graph,
    flow: Flow,
    /// Each group's members.
    members: Vec<Vec<Item>>,
    /// Each group's local edges.
    local: Vec<Vec<LocalEdge>>,
    /// The smallest node id inside each group: its place in the initial order.
    first: Vec<usize>,
    /// Node centres in their group's frame coordinates.
    pos: Vec<Pt>,
    /// Group frames' lower-left corners in their parent's frame coordinates, and sizes.
    origin: Vec<Pt>,
    size: Vec<(f64, f64)>,
    /// Per edge: the group where it was laid out and the dummies it passes through.
    vias: Vec<Option<(usize, Vec<Via>)>>,
    /// Per edge: the length of its straight start (label room).
    stubs: Vec<f64>,
    /// Per group: the lower-left corner of its caption, in its frame coordinates.
    caption: Vec<Pt>,
    slots_used: usize,
}

/// Lays out `g` for `flow`.
pub fn place(g: &Graph, flow: Flow) -> Result<Placed, DrawError> {
    let ng = g.groups.len();
    let mut members = vec![Vec::new(); ng];
    for (n, node) in g.nodes.iter().enumerate() {
        members[node.group].push(Item::Node(n));
    }
    for (c, grp) in g.groups.iter().enumerate() {
        if let Some(p) = grp.parent {
            members[p].push(Item::Group(c));
        }
    }
    let chain = |grp: usize| {
        let mut v = vec![grp];
        let mut cur = grp;
        while let Some(p) = g.groups[cur].parent {
            v.push(p);
            cur = p;
        }
        v.reverse();
        v
    };
    let mut first = vec![usize::MAX; ng];
    for (n, node) in g.nodes.iter().enumerate() {
        for c in chain(node.group) {
            first[c] = first[c].min(n);
        }
    }
    let mut lay = Layout {
        g,
        flow,
        members,
        local: vec![Vec::new(); ng],
        first,
        pos: vec![Pt::default(); g.nodes.len()],
        origin: vec![Pt::default(); ng],
        size: vec![(0.0, 0.0); ng],
        vias: vec![None; g.edges.len()],
        stubs: vec![STUB; g.edges.len()],
        caption: vec![Pt::default(); ng],
        slots_used: 0,
    };
    // Each edge belongs to the deepest group holding both ends; there it joins two members.
    let mut lifted: Vec<Option<(usize, Item, Item)>> = Vec::with_capacity(g.edges.len());
    for e in &g.edges {
        let (ca, cb) = (chain(g.nodes[e.from].group), chain(g.nodes[e.to].group));
        let common = ca.iter().zip(&cb).take_while(|(x, y)| x == y).count();
        let lca = ca[common - 1];
        let lift = |c: &[usize], n: NodeId| match c.get(common) {
            Some(child) => Item::Group(*child),
            None => Item::Node(n),
        };
        let (ia, ib) = (lift(&ca, e.from), lift(&cb, e.to));
        lifted.push((ia != ib).then_some((lca, ia, ib)));
    }
    // Children first: a group is laid out after everything inside it.
    let mut order: Vec<usize> = (0..ng).collect();
    let depth: Vec<usize> = (0..ng).map(|c| chain(c).len()).collect();
    order.sort_by_key(|c| std::cmp::Reverse(depth[*c]));
    for grp in order {
        let items = lay.members[grp].clone();
        let index = |it: Item| items.iter().position(|x| *x == it);
        let mut local = Vec::new();
        for (ei, l) in lifted.iter().enumerate() {
            let Some((lca, ia, ib)) = *l else { continue };
            if lca != grp {
                continue;
            }
            let e = &g.edges[ei];
            let (Some(from), Some(to)) = (index(ia), index(ib)) else {
                continue;
            };
            local.push(LocalEdge {
                edge: ei,
                from,
                from_off: lay.offset(ia, e.from, false, e.from_port),
                to,
                to_off: lay.offset(ib, e.to, true, e.to_port),
                label: e.label.as_ref().map(|s| label_size(s, flow)),
            });
        }
        lay.local[grp] = local;
        lay.group(grp)?;
    }
    Ok(lay.finish())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotKind {
    /// Member `i` of the group.
    Member(usize),
    /// A point of a long edge.
    Dummy,
    /// The room for the frame's caption, first in the top layer.
    Caption,
}

/// A slot of one group's layout.
#[derive(Clone, Debug)]
struct Slot {
    kind: SlotKind,
    left: f64,
    right: f64,
    along: f64,
    /// Initial order: (place in the diagram, then tie-breaker).
    hint: (usize, usize),
    fixed: Option<usize>,
}

/// A piece of edge between adjacent layers.
#[derive(Clone, Copy, Debug)]
struct Seg {
    lo: usize,
    lo_off: f64,
    hi: usize,
    hi_off: f64,
    weight: f64,
}

/// One group's layered graph: slots in layers, segments between adjacent layers, and the slots'
/// positions across.
struct Layered {
    slots: Vec<Slot>,
    layer: Vec<usize>,
    segs: Vec<Seg>,
    /// Per slot: the segments below it and above it.
    down: Vec<Vec<usize>>,
    up: Vec<Vec<usize>>,
    /// Per layer: the segments leaving it upwards.
    by_lower: Vec<Vec<usize>>,
    /// Per layer: its slots, in order.
    order: Vec<Vec<usize>>,
    x: Vec<f64>,
    /// Segments looked at by sifting so far.
    work: u64,
}

/// Barycentre sweeps at most, and how many without improvement end them.
const SWEEPS: usize = 24;
const STALE_SWEEPS: usize = 6;
/// Groups with more slots than this are ordered from one start only.
const RESTART_MAX: usize = 2000;
/// Balancing rounds for coordinates.
const ROUNDS: usize = 40;
/// Sifting is skipped in layers wider than this (it is quadratic in the layer), and stops in a
/// group once it has looked at this many segments: a deterministic bound on its time.
const TRANSPOSE_MAX: usize = 64;
const SIFT_BUDGET: u64 = 4_000_000;

impl Layered {
    fn new(slots: Vec<Slot>, layer: Vec<usize>, segs: Vec<Seg>, top: usize) -> Layered {
        let ns = slots.len();
        let mut order: Vec<Vec<usize>> = vec![Vec::new(); top + 1];
        for s in 0..ns {
            order[layer[s]].push(s);
        }
        for l in &mut order {
            l.sort_by_key(|s| (slots[*s].hint, *s));
        }
        let mut down = vec![Vec::new(); ns];
        let mut up = vec![Vec::new(); ns];
        let mut by_lower = vec![Vec::new(); top + 1];
        for (i, sg) in segs.iter().enumerate() {
            down[sg.hi].push(i);
            up[sg.lo].push(i);
            by_lower[layer[sg.lo]].push(i);
        }
        let mut lg = Layered {
            slots,
            layer,
            segs,
            down,
            up,
            by_lower,
            order,
            x: vec![0.0; ns],
            work: 0,
        };
        for l in 0..=top {
            lg.fix_caption(l);
            lg.pack(l);
        }
        lg
    }

    /// The least distance between the centres of neighbours `a` (left) and `b`.
    fn sep(&self, a: usize, b: usize) -> f64 {
        let (sa, sb) = (&self.slots[a], &self.slots[b]);
        let gap = if sa.kind == SlotKind::Dummy || sb.kind == SlotKind::Dummy {
            8.0
        } else {
            16.0
        };
        sa.right + gap + sb.left
    }

    /// Places layer `l`'s slots side by side from 0.
    fn pack(&mut self, l: usize) {
        let mut cur = 0.0;
        for i in 0..self.order[l].len() {
            let s = self.order[l][i];
            if i > 0 {
                cur += self.sep(self.order[l][i - 1], s);
            }
            self.x[s] = cur;
        }
    }

    /// Keeps the caption first in its layer.
    fn fix_caption(&mut self, l: usize) {
        if let Some(i) = self.order[l]
            .iter()
            .position(|s| self.slots[*s].kind == SlotKind::Caption)
        {
            let c = self.order[l].remove(i);
            self.order[l].insert(0, c);
        }
    }

    /// Crossings between layers `l` and `l + 1`.
    fn gap_crossings(&self, l: usize) -> u64 {
        let Some(ids) = self.by_lower.get(l) else {
            return 0;
        };
        let mut pairs: Vec<(f64, f64)> = ids
            .iter()
            .map(|i| {
                let sg = &self.segs[*i];
                (self.x[sg.lo] + sg.lo_off, self.x[sg.hi] + sg.hi_off)
            })
            .collect();
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut ups: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        inversions(&mut ups)
    }

    fn crossings(&self) -> u64 {
        (0..self.order.len()).map(|l| self.gap_crossings(l)).sum()
    }

    /// Orders every layer, from several starting orders (the diagram's order, its mirror image,
    /// and depth-first orders from the bottom and from the top), keeping the best.
    fn reduce_crossings(&mut self) {
        let top = self.order.len() - 1;
        let start = self.order.clone();
        let mut starts = vec![start.clone()];
        if self.slots.len() <= RESTART_MAX {
            starts.push(
                start
                    .iter()
                    .map(|l| l.iter().rev().copied().collect())
                    .collect(),
            );
            starts.push(self.depth_first(true));
            starts.push(self.depth_first(false));
        }
        let mut best: Option<(u64, Vec<Vec<usize>>)> = None;
        for st in starts {
            self.order = st;
            for l in 0..=top {
                keep_fixed(&mut self.order[l], &self.slots);
                self.fix_caption(l);
                self.pack(l);
            }
            self.sweeps();
            let c = self.crossings();
            if best.as_ref().is_none_or(|(b, _)| c < *b) {
                best = Some((c, self.order.clone()));
            }
            if c == 0 {
                break;
            }
        }
        if let Some((_, order)) = best {
            self.order = order;
        }
        for l in 0..=top {
            self.pack(l);
        }
    }

    /// Layers ordered by a depth-first walk from the lowest layer upwards (or from the top
    /// downwards), visiting neighbours in port order.
    fn depth_first(&self, upward: bool) -> Vec<Vec<usize>> {
        let ns = self.slots.len();
        let mut seen = vec![false; ns];
        let mut rank = vec![usize::MAX; ns];
        let mut next = 0;
        let roots: Vec<usize> = if upward {
            self.order.iter().flatten().copied().collect()
        } else {
            self.order.iter().rev().flatten().copied().collect()
        };
        for r in roots {
            if seen[r] {
                continue;
            }
            let mut stack = vec![r];
            while let Some(s) = stack.pop() {
                if seen[s] {
                    continue;
                }
                seen[s] = true;
                rank[s] = next;
                next += 1;
                let mut nbrs: Vec<(f64, usize)> = if upward {
                    self.up[s]
                        .iter()
                        .map(|i| (self.segs[*i].lo_off, self.segs[*i].hi))
                        .collect()
                } else {
                    self.down[s]
                        .iter()
                        .map(|i| (self.segs[*i].hi_off, self.segs[*i].lo))
                        .collect()
                };
                nbrs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                // Pushed in reverse so the leftmost port is visited first.
                for (_, t) in nbrs.into_iter().rev() {
                    if !seen[t] {
                        stack.push(t);
                    }
                }
            }
        }
        self.order
            .iter()
            .map(|l| {
                let mut v = l.clone();
                v.sort_by_key(|s| (rank[*s], *s));
                v
            })
            .collect()
    }

    /// Barycentre sweeps, each followed by sifting; keeps the best order seen.
    fn sweeps(&mut self) {
        let top = self.order.len() - 1;
        let mut best = self.order.clone();
        let mut best_cross = self.crossings();
        let mut stale = 0;
        for sweep in 0..SWEEPS {
            if best_cross == 0 || stale >= STALE_SWEEPS {
                break;
            }
            let upward = sweep % 2 == 0;
            let range: Vec<usize> = if upward {
                (1..=top).collect()
            } else {
                (0..top).rev().collect()
            };
            for l in range {
                self.barycentre(l, upward);
            }
            self.transpose();
            let c = self.crossings();
            if c < best_cross {
                best_cross = c;
                best = self.order.clone();
                stale = 0;
            } else {
                stale += 1;
            }
        }
        self.order = best;
        for l in 0..=top {
            self.pack(l);
        }
    }

    /// Sorts layer `l` by the mean position of each slot's neighbours in the layer below
    /// (`upward`) or above.
    fn barycentre(&mut self, l: usize, upward: bool) {
        let mut bary: Vec<(f64, usize, usize)> = self.order[l]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let adj = if upward { &self.down[*s] } else { &self.up[*s] };
                let (mut sum, mut n) = (0.0, 0.0);
                for si in adj {
                    let sg = &self.segs[*si];
                    sum += if upward {
                        self.x[sg.lo] + sg.lo_off - sg.hi_off
                    } else {
                        self.x[sg.hi] + sg.hi_off - sg.lo_off
                    };
                    n += 1.0;
                }
                let b = if n > 0.0 { sum / n } else { self.x[*s] };
                (b, i, *s)
            })
            .collect();
        bary.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut order: Vec<usize> = bary.iter().map(|b| b.2).collect();
        keep_fixed(&mut order, &self.slots);
        self.order[l] = order;
        self.fix_caption(l);
        self.pack(l);
    }

    /// Sifting: moves each slot to the place in its layer where the crossings with the layers
    /// above and below are fewest, until no move helps.
    fn transpose(&mut self) {
        let top = self.order.len() - 1;
        for _pass in 0..4 {
            let mut improved = false;
            for l in 0..=top {
                let n = self.order[l].len();
                if !(2..=TRANSPOSE_MAX).contains(&n) {
                    continue;
                }
                let around = |lg: &mut Layered| {
                    let below = if l > 0 { lg.by_lower[l - 1].len() } else { 0 };
                    lg.work += (lg.by_lower[l].len() + below) as u64;
                    lg.gap_crossings(l) + if l > 0 { lg.gap_crossings(l - 1) } else { 0 }
                };
                let movable: Vec<usize> = self.order[l]
                    .iter()
                    .copied()
                    .filter(|s| {
                        self.slots[*s].fixed.is_none() && self.slots[*s].kind != SlotKind::Caption
                    })
                    .collect();
                let first = self.order[l]
                    .iter()
                    .position(|s| self.slots[*s].kind != SlotKind::Caption)
                    .unwrap_or(0);
                for s in movable {
                    if self.work > SIFT_BUDGET {
                        return;
                    }
                    let before = around(self);
                    let from = self.order[l].iter().position(|x| *x == s).unwrap_or(0);
                    let (mut best, mut best_at) = (before, from);
                    self.order[l].remove(from);
                    for at in first..n {
                        self.order[l].insert(at, s);
                        self.pack(l);
                        let c = around(self);
                        if c < best {
                            (best, best_at) = (c, at);
                        }
                        self.order[l].remove(at);
                    }
                    self.order[l].insert(best_at, s);
                    self.pack(l);
                    improved |= best < before;
                }
            }
            if !improved {
                break;
            }
        }
    }

    /// Positions across: each layer centred, then every slot pulled towards the mean of its
    /// neighbours' ports, keeping order and gaps (isotonic regression), layer by layer, up and
    /// down.
    fn balance(&mut self) {
        let top = self.order.len() - 1;
        for l in 0..=top {
            self.pack(l);
            if let Some(last) = self.order[l].last() {
                let mid = self.x[*last] / 2.0;
                for s in &self.order[l] {
                    self.x[*s] -= mid;
                }
            }
        }
        for round in 0..ROUNDS {
            let range: Vec<usize> = if round % 2 == 0 {
                (0..=top).collect()
            } else {
                (0..=top).rev().collect()
            };
            for l in range {
                self.balance_layer(l);
            }
        }
    }

    fn balance_layer(&mut self, l: usize) {
        let order = &self.order[l];
        if order.is_empty() {
            return;
        }
        let mut want = Vec::with_capacity(order.len());
        let mut weight = Vec::with_capacity(order.len());
        for s in order {
            let (mut sum, mut wsum) = (0.0, 0.0);
            for si in &self.down[*s] {
                let sg = &self.segs[*si];
                sum += sg.weight * (self.x[sg.lo] + sg.lo_off - sg.hi_off);
                wsum += sg.weight;
            }
            for si in &self.up[*s] {
                let sg = &self.segs[*si];
                sum += sg.weight * (self.x[sg.hi] + sg.hi_off - sg.lo_off);
                wsum += sg.weight;
            }
            if wsum > 0.0 {
                want.push(sum / wsum);
                weight.push(wsum);
            } else {
                want.push(self.x[*s]);
                weight.push(0.5);
            }
        }
        // x_i = y_i + c_i with c the cumulative least gaps: then y must not decrease.
        let mut c = vec![0.0; order.len()];
        for i in 1..order.len() {
            c[i] = c[i - 1] + self.sep(order[i - 1], order[i]);
        }
        let target: Vec<f64> = want.iter().zip(&c).map(|(w, c)| w - c).collect();
        let y = isotonic(&target, &weight);
        for (i, s) in order.iter().enumerate() {
            self.x[*s] = y[i] + c[i];
        }
    }

    /// Makes long edges straight where their neighbours leave room: all of an edge's dummies
    /// move to its source's port, its target's port, or their median, the first that fits.
    fn straighten(&mut self, chains: &[(usize, f64, Vec<usize>, usize, f64)]) {
        let mut index = vec![0usize; self.slots.len()];
        for l in &self.order {
            for (i, s) in l.iter().enumerate() {
                index[*s] = i;
            }
        }
        for (from, from_off, dummies, to, to_off) in chains {
            if dummies.is_empty() {
                continue;
            }
            let mut xs: Vec<f64> = dummies.iter().map(|d| self.x[*d]).collect();
            xs.sort_by(f64::total_cmp);
            let median = xs[xs.len() / 2];
            let candidates = [self.x[*from] + from_off, self.x[*to] + to_off, median];
            for c in candidates {
                let fits = dummies.iter().all(|d| {
                    let row = &self.order[self.layer[*d]];
                    let i = index[*d];
                    let left_ok = i == 0 || self.x[row[i - 1]] + self.sep(row[i - 1], *d) <= c;
                    let right_ok =
                        i + 1 == row.len() || c + self.sep(*d, row[i + 1]) <= self.x[row[i + 1]];
                    left_ok && right_ok
                });
                if fits {
                    for d in dummies {
                        self.x[*d] = c;
                    }
                    break;
                }
            }
        }
    }
}

impl Layout<'_> {
    /// Where node `n`'s port is across, relative to the centre of `item`, the member of the
    /// current group that holds it.
    fn offset(&self, item: Item, n: NodeId, input: bool, k: usize) -> f64 {
        let port = port_off(self.g, n, input, k, self.flow);
        match item {
            Item::Node(_) => port,
            Item::Group(c) => self.within(c, n).across + port - self.size[c].0 / 2.0,
        }
    }

    /// Node `n`'s centre in the frame coordinates of group `c`, which contains it.
    fn within(&self, c: usize, n: NodeId) -> Pt {
        let mut p = self.pos[n];
        let mut cur = self.g.nodes[n].group;
        while cur != c {
            p.across += self.origin[cur].across;
            p.along += self.origin[cur].along;
            match self.g.groups[cur].parent {
                Some(parent) => cur = parent,
                None => break,
            }
        }
        p
    }

    /// Lays out the members of group `grp` (whose child groups are laid out already).
    fn group(&mut self, grp: usize) -> Result<(), DrawError> {
        let g = self.g;
        let flow = self.flow;
        let items = self.members[grp].clone();
        let local = self.local[grp].clone();
        let framed = g.groups[grp].kind != GroupKind::Root;
        let m = items.len();

        // Sizes and roles of the members.
        let mut slots: Vec<Slot> = Vec::with_capacity(m);
        let mut role = Vec::with_capacity(m);
        for (i, it) in items.iter().enumerate() {
            let (left, right, along, hint, fixed, r) = match *it {
                Item::Node(n) => {
                    let e = extent(g, n, flow);
                    let node = &g.nodes[n];
                    (e.left, e.right, e.along, n, node.fixed, node.role)
                }
                Item::Group(c) => {
                    let (w, h) = self.size[c];
                    (w / 2.0, w / 2.0, h, self.first[c], None, Role::Inner)
                }
            };
            slots.push(Slot {
                kind: SlotKind::Member(i),
                left,
                right,
                along,
                hint: (hint, 0),
                fixed,
            });
            role.push(r);
        }
        // Wire labels start beside their source: make room on its right.
        for le in &local {
            if let Some((w, _)) = le.label {
                let s = &mut slots[le.from];
                s.right = s.right.max(le.from_off + LABEL_GAP + w);
            }
        }

        // 1. Layers.
        let mut layer = layers(m, &local, &role, &slots);
        let top = layer.iter().copied().max().unwrap_or(0);
        let entry_layer = role.contains(&Role::Entry);
        let exit_layer = role.contains(&Role::Exit) && top > 0;

        // The caption: first in the exit layer (TB), so ports keep clear of it.
        let caption = g.groups[grp].caption();
        let (cap_across, cap_along) = if framed {
            caption_size(&caption, flow)
        } else {
            (0.0, 0.0)
        };
        let caption_slot = framed && flow == Flow::BottomToTop && exit_layer;
        if caption_slot {
            slots.push(Slot {
                kind: SlotKind::Caption,
                left: 0.0,
                right: cap_across,
                along: 0.0,
                hint: (0, 0),
                fixed: None,
            });
            layer.push(top);
        }

        // 2. Dummies and segments.
        let mut segs: Vec<Seg> = Vec::new();
        // Per local edge: the slots it passes through, bottom to top (empty: drawn directly).
        let mut paths: Vec<Vec<usize>> = Vec::with_capacity(local.len());
        for (li, le) in local.iter().enumerate() {
            let (la, lb) = (layer[le.from], layer[le.to]);
            if la >= lb {
                // Only malformed graphs have edges that do not go up.
                paths.push(Vec::new());
                continue;
            }
            let mut path = vec![le.from];
            for l in la + 1..lb {
                slots.push(Slot {
                    kind: SlotKind::Dummy,
                    left: 1.0,
                    right: 1.0,
                    along: 0.0,
                    hint: (slots[le.from].hint.0, li + 1),
                    fixed: None,
                });
                layer.push(l);
                path.push(slots.len() - 1);
            }
            path.push(le.to);
            let last = path.len() - 2;
            for (k, w) in path.windows(2).enumerate() {
                let dummies = (k > 0) as usize + (k < last) as usize;
                segs.push(Seg {
                    lo: w[0],
                    lo_off: if k == 0 { le.from_off } else { 0.0 },
                    hi: w[1],
                    hi_off: if k == last { le.to_off } else { 0.0 },
                    weight: [1.0, 2.0, 8.0][dummies],
                });
            }
            paths.push(path);
        }
        self.slots_used += slots.len();
        if self.slots_used > MAX_SLOTS {
            return Err(DrawError::TooLarge(format!(
                "the layout needs more than {MAX_SLOTS} slots"
            )));
        }

        // 3 and 4. Order, then coordinates across.
        let mut lg = Layered::new(slots, layer, segs, top);
        lg.reduce_crossings();
        lg.balance();
        let chains: Vec<(usize, f64, Vec<usize>, usize, f64)> = local
            .iter()
            .zip(&paths)
            .filter(|(_, p)| p.len() > 2)
            .map(|(le, p)| {
                (
                    le.from,
                    le.from_off,
                    p[1..p.len() - 1].to_vec(),
                    le.to,
                    le.to_off,
                )
            })
            .collect();
        lg.straighten(&chains);
        // The caption is first in its layer, so it can always move to the left edge.
        if let Some(c) = (0..lg.slots.len()).find(|s| lg.slots[*s].kind == SlotKind::Caption) {
            let left = (0..lg.slots.len())
                .filter(|s| *s != c)
                .map(|s| lg.x[s] - lg.slots[s].left)
                .fold(f64::INFINITY, f64::min);
            if left.is_finite() {
                lg.x[c] = lg.x[c].min(left);
            }
        }
        let ns = lg.slots.len();
        let (slots, layer, mut x) = (&lg.slots, &lg.layer, lg.x.clone());

        // The frame across: padding, and room for the caption.
        let pad = if framed { FRAME_PAD } else { 0.0 };
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for s in 0..ns {
            lo = lo.min(x[s] - slots[s].left);
            hi = hi.max(x[s] + slots[s].right);
        }
        if ns == 0 {
            (lo, hi) = (0.0, 0.0);
        }
        // In LR the caption runs along the frame's top edge on the page: the across-low side.
        let pad_lo = pad
            + match flow {
                Flow::LeftToRight => cap_across,
                Flow::BottomToTop => 0.0,
            };
        let content = pad_lo + (hi - lo) + pad;
        let width = if flow == Flow::BottomToTop && framed {
            content.max(cap_across + 2.0 * pad)
        } else {
            content
        };
        // Centred when the caption made the frame wider than its content.
        let shift = pad_lo - lo + (width - content) / 2.0;
        for v in x.iter_mut() {
            *v += shift;
        }

        // 5. Along: layer thickness and gaps.
        let thick: Vec<f64> = lg
            .order
            .iter()
            .map(|l| l.iter().map(|s| slots[*s].along).fold(0.0, f64::max))
            .collect();
        let mut gap = vec![0.0; top + 1];
        for (l, gl) in gap.iter_mut().enumerate().take(top) {
            let mut stub: f64 = STUB;
            let mut sideways: f64 = 0.0;
            for si in &lg.by_lower[l] {
                let sg = &lg.segs[*si];
                sideways = sideways.max((x[sg.hi] + sg.hi_off - x[sg.lo] - sg.lo_off).abs());
            }
            for (le, path) in local.iter().zip(&paths) {
                if layer[le.from] == l
                    && !path.is_empty()
                    && let Some((_, h)) = le.label
                {
                    stub = stub.max(h + 3.0);
                }
            }
            let curve = (14.0 + 0.15 * sideways).clamp(22.0, 80.0);
            *gl = stub + curve + STUB;
        }
        let cap_on_top = framed && flow == Flow::BottomToTop;
        if cap_on_top && exit_layer {
            gap[top - 1] += cap_along;
        }
        let mut y = vec![0.0; top + 1];
        y[0] = if entry_layer {
            0.0
        } else {
            pad + thick[0] / 2.0
        };
        for l in 1..=top {
            y[l] = y[l - 1] + thick[l - 1] / 2.0 + gap[l - 1] + thick[l] / 2.0;
        }
        let mut height = if exit_layer {
            y[top]
        } else {
            y[top] + thick[top] / 2.0 + pad + if cap_on_top { cap_along } else { 0.0 }
        };
        if m == 0 {
            height = 2.0 * pad + cap_along;
        }
        if flow == Flow::LeftToRight && framed {
            // The caption runs along the flow: the frame is at least as long as it.
            height = height.max(cap_along + 2.0 * pad);
        }

        // Write back: members' positions, dummies' places, the caption, the frame's size.
        // In a layer thicker than itself, a member that only consumes sits low and one that only
        // produces sits high, so that its wires stay short.
        let mut has_in = vec![false; m];
        let mut has_out = vec![false; m];
        for (le, path) in local.iter().zip(&paths) {
            if !path.is_empty() {
                has_out[le.from] = true;
                has_in[le.to] = true;
            }
        }
        for s in 0..ns {
            let l = layer[s];
            let slack = (thick[l] - slots[s].along) / 2.0;
            let shift = match slots[s].kind {
                SlotKind::Member(i) if role[i] == Role::Inner => match (has_in[i], has_out[i]) {
                    (true, false) => -slack,
                    (false, true) => slack,
                    _ => 0.0,
                },
                _ => 0.0,
            };
            let p = pt(x[s], y[l] + shift);
            match slots[s].kind {
                SlotKind::Member(i) => match items[i] {
                    Item::Node(n) => self.pos[n] = p,
                    Item::Group(c) => {
                        let (w, h) = self.size[c];
                        self.origin[c] = pt(p.across - w / 2.0, p.along - h / 2.0);
                    }
                },
                SlotKind::Caption => self.caption[grp] = pt(p.across, height - cap_along),
                SlotKind::Dummy => {}
            }
        }
        if framed && !caption_slot {
            self.caption[grp] = match flow {
                Flow::BottomToTop => pt(pad, height - cap_along),
                Flow::LeftToRight => pt(pad / 2.0, pad),
            };
        }
        for (le, path) in local.iter().zip(&paths) {
            let vias = if path.len() > 2 {
                path[1..path.len() - 1]
                    .iter()
                    .map(|s| {
                        let l = layer[*s];
                        Via {
                            across: x[*s],
                            along0: y[l] - thick[l] / 2.0,
                            along1: y[l] + thick[l] / 2.0,
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            self.vias[le.edge] = Some((grp, vias));
            if let Some((_, h)) = le.label {
                self.stubs[le.edge] = h + 3.0;
            }
            if path.is_empty() {
                self.stubs[le.edge] = 0.0;
            }
        }
        self.size[grp] = (width, height);
        Ok(())
    }

    fn finish(self) -> Placed {
        let g = self.g;
        let flow = self.flow;
        let ng = g.groups.len();
        // Absolute frame origins, parents first (parents have smaller ids).
        let mut abs = vec![Pt::default(); ng];
        for c in 0..ng {
            if let Some(p) = g.groups[c].parent {
                abs[c] = pt(
                    abs[p].across + self.origin[c].across,
                    abs[p].along + self.origin[c].along,
                );
            }
        }
        let nodes: Vec<Pt> = (0..g.nodes.len())
            .map(|n| {
                let o = abs[g.nodes[n].group];
                pt(o.across + self.pos[n].across, o.along + self.pos[n].along)
            })
            .collect();
        let groups = (0..ng)
            .map(|c| Rect {
                across0: abs[c].across,
                along0: abs[c].along,
                across1: abs[c].across + self.size[c].0,
                along1: abs[c].along + self.size[c].1,
            })
            .collect();
        let mut routes = Vec::with_capacity(g.edges.len());
        let mut labels = Vec::with_capacity(g.edges.len());
        for (ei, e) in g.edges.iter().enumerate() {
            let (ea, eb) = (extent(g, e.from, flow), extent(g, e.to, flow));
            let a = nodes[e.from];
            let b = nodes[e.to];
            let start = pt(
                a.across + port_off(g, e.from, false, e.from_port, flow),
                a.along + ea.along / 2.0,
            );
            let end = pt(
                b.across + port_off(g, e.to, true, e.to_port, flow),
                b.along - eb.along / 2.0,
            );
            let mut r = Route::default();
            let stub = self.stubs[ei];
            let direct = stub == 0.0 || end.along - start.along < 2.0 * STUB + stub;
            if direct {
                r.pts = vec![start, end];
                r.curved = vec![true];
            } else {
                r.pts.push(start);
                r.pts.push(pt(start.across, start.along + stub));
                r.curved.push(false);
                if let Some((grp, vias)) = &self.vias[ei] {
                    let o = abs[*grp];
                    for v in vias {
                        r.curved.push(true);
                        r.pts.push(pt(o.across + v.across, o.along + v.along0));
                        r.curved.push(false);
                        r.pts.push(pt(o.across + v.across, o.along + v.along1));
                    }
                }
                r.curved.push(true);
                r.pts.push(pt(end.across, end.along - STUB));
                r.curved.push(false);
                r.pts.push(end);
            }
            labels.push(
                e.label
                    .as_ref()
                    .map(|_| pt(start.across + LABEL_GAP, start.along + 1.5)),
            );
            routes.push(r);
        }
        let captions = (0..ng)
            .map(|c| {
                pt(
                    abs[c].across + self.caption[c].across,
                    abs[c].along + self.caption[c].along,
                )
            })
            .collect();
        Placed {
            nodes,
            groups,
            routes,
            labels,
            captions,
        }
    }
}

/// Layers of the members of one group: entries 0, exits last, others by longest path, and
/// members without inputs just below their first consumer.
fn layers(m: usize, local: &[LocalEdge], role: &[Role], slots: &[Slot]) -> Vec<usize> {
    // A topological order (Kahn's algorithm, smallest hint first); a cycle, which only a
    // malformed graph has, is broken at its smallest member.
    let mut indeg = vec![0usize; m];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); m];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); m];
    for le in local {
        succ[le.from].push(le.to);
        pred[le.to].push(le.from);
        indeg[le.to] += 1;
    }
    let key = |i: usize| (slots[i].hint, i);
    let mut done = vec![false; m];
    let mut ready: std::collections::BTreeSet<((usize, usize), usize)> =
        (0..m).filter(|i| indeg[*i] == 0).map(key).collect();
    let mut topo = Vec::with_capacity(m);
    while topo.len() < m {
        let next = match ready.pop_first() {
            Some((_, i)) => i,
            None => match (0..m).filter(|i| !done[*i]).min_by_key(|i| key(*i)) {
                Some(i) => i,
                None => break,
            },
        };
        if done[next] {
            continue;
        }
        done[next] = true;
        topo.push(next);
        for s in &succ[next] {
            indeg[*s] = indeg[*s].saturating_sub(1);
            if indeg[*s] == 0 && !done[*s] {
                ready.insert(key(*s));
            }
        }
    }
    let mut rank = vec![0usize; m];
    for (r, i) in topo.iter().enumerate() {
        rank[*i] = r;
    }
    let has_entries = role.contains(&Role::Entry);
    let base = has_entries as usize;
    let mut layer = vec![0usize; m];
    for &i in &topo {
        if role[i] == Role::Entry {
            continue;
        }
        let mut l = base;
        for p in &pred[i] {
            if rank[*p] < rank[i] && role[*p] != Role::Exit {
                l = l.max(layer[*p] + 1);
            }
        }
        layer[i] = l;
    }
    let inner_top = (0..m)
        .filter(|i| role[*i] == Role::Inner)
        .map(|i| layer[i])
        .max();
    let exit_layer = match inner_top {
        Some(t) => t + 1,
        None => base,
    };
    for i in 0..m {
        if role[i] == Role::Exit {
            layer[i] = exit_layer;
        }
    }
    // Members without inputs go just below their lowest consumer.
    for &i in topo.iter().rev() {
        if role[i] != Role::Inner || !pred[i].is_empty() || succ[i].is_empty() {
            continue;
        }
        let lowest = succ[i].iter().map(|s| layer[*s]).min().unwrap_or(base + 1);
        layer[i] = lowest.saturating_sub(1).max(base);
    }
    layer
}

/// Puts the slots with a fixed order back in that order, in the places they occupy.
fn keep_fixed(order: &mut [usize], slots: &[Slot]) {
    let places: Vec<usize> = (0..order.len())
        .filter(|i| slots[order[*i]].fixed.is_some())
        .collect();
    let mut fixed: Vec<usize> = places.iter().map(|i| order[*i]).collect();
    fixed.sort_by_key(|s| (slots[*s].fixed, *s));
    for (p, s) in places.iter().zip(fixed) {
        order[*p] = s;
    }
}

/// The number of pairs `i < j` with `v[i] > v[j]` (merge sort; sorts `v`).
fn inversions(v: &mut [f64]) -> u64 {
    let n = v.len();
    if n < 2 {
        return 0;
    }
    let mid = n / 2;
    let mut count = inversions(&mut v[..mid]) + inversions(&mut v[mid..]);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, mid);
    while i < mid && j < n {
        if v[i].total_cmp(&v[j]) != Ordering::Greater {
            merged.push(v[i]);
            i += 1;
        } else {
            merged.push(v[j]);
            count += (mid - i) as u64;
            j += 1;
        }
    }
    merged.extend_from_slice(&v[i..mid]);
    merged.extend_from_slice(&v[j..n]);
    v.copy_from_slice(&merged);
    count
}

/// The non-decreasing sequence closest to `target` in weighted least squares
/// (pool-adjacent-violators).
fn isotonic(target: &[f64], weight: &[f64]) -> Vec<f64> {
    // Blocks of pooled values: (weighted sum, total weight, length).
    let mut blocks: Vec<(f64, f64, usize)> = Vec::with_capacity(target.len());
    for (t, w) in target.iter().zip(weight) {
        blocks.push((t * w, *w, 1));
        while blocks.len() >= 2 {
            let (s1, w1, n1) = blocks[blocks.len() - 1];
            let (s0, w0, n0) = blocks[blocks.len() - 2];
            if s0 / w0 <= s1 / w1 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (s0 + s1, w0 + w1, n0 + n1);
        }
    }
    let mut out = Vec::with_capacity(target.len());
    for (s, w, n) in blocks {
        out.extend(std::iter::repeat_n(s / w, n));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inversions_count_strictly_decreasing_pairs() {
        assert_eq!(inversions(&mut [1.0, 2.0, 3.0]), 0);
        assert_eq!(inversions(&mut [3.0, 2.0, 1.0]), 3);
        assert_eq!(inversions(&mut [1.0, 1.0, 1.0]), 0);
        assert_eq!(inversions(&mut [2.0, 1.0, 2.0, 1.0]), 3);
    }

    #[test]
    fn isotonic_regression_pools_violators() {
        assert_eq!(isotonic(&[1.0, 2.0, 3.0], &[1.0; 3]), vec![1.0, 2.0, 3.0]);
        assert_eq!(isotonic(&[3.0, 1.0], &[1.0; 2]), vec![2.0, 2.0]);
        assert_eq!(isotonic(&[3.0, 1.0], &[3.0, 1.0]), vec![2.5, 2.5]);
        assert_eq!(
            isotonic(&[0.0, 4.0, 2.0, 5.0], &[1.0; 4]),
            vec![0.0, 3.0, 3.0, 5.0]
        );
    }
}
