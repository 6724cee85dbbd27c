//! Drawing diagrams as pictures (`diagc draw`): SVG, and PNG through resvg.
//!
//! The picture follows the paper's conventions. Boxes are rectangles with their names; wires
//! are curves labelled with their named-axis types; copies are forks (a dot) and discards are
//! caps; learned boxes are red and carry a red triangle for their parameters, and a parameter on
//! its own (`param[...]`, a state) is a red triangle; SIMD regions are shaded tubes labelled with
//! their axis, entered through zip (circle) and broadcast (diamond) ports on their lower edge and
//! left through collect ports on their upper edge; repeat regions are dashed frames; composite
//! boxes are drawn closed (a double border) or expanded into a frame, one level per
//! [`DrawOptions::expand`]. Inputs are at the bottom and outputs at the top, or left to right.
//!
//! The work is three steps, one file each:
//! - [`graph`]: what is drawn. It walks a checked [`Diagram`], expands composite calls, and
//!   produces nodes (one per box, port, input and output), edges (one per wire) and nested
//!   groups (regions and expanded composites).
//! - [`layout`]: where. A layered (Sugiyama-style) layout, run group by group from the innermost
//!   out, so that every region is one rectangle inside its parent: layers, crossing reduction by
//!   barycentres, coordinates by isotonic regression. No crate fits this (nested clusters with
//!   ports on their frames), so it is hand-written and kept small; `layout.rs` explains it.
//! - [`svg`](mod@svg): how. It writes the SVG with the `svg` crate; [`png`] rasterises it with
//!   resvg.
//!
//! Invariants:
//! - **Deterministic.** The same input gives the same bytes: every walk is over vectors in
//!   creation order, ties are broken by index, coordinates are rounded to one decimal when
//!   written, and nothing iterates a `HashMap`. The layout uses only `+ - * /` and comparisons.
//! - **Total on checked input.** Drawing a diagram the checker accepted never panics; a diagram
//!   too large to lay out in reasonable time is an error ([`DrawError::TooLarge`]), not a hang.
//!   The CLI draws only diagrams without diagnostics (like `compile`, it fails with them).
//! - Text is measured as monospace (the SVG asks for a monospace font), so boxes fit their
//!   labels in any viewer.
//!
//! Highlights ([`Highlight`]) mark a set of boxes and wires of the drawn diagram: this is the
//! API the rewrite-step command (issue 6) will use to show a matched site before and after a
//! rewrite ([`draw_step`] puts the two pictures side by side).

pub mod graph;
pub mod layout;
pub mod png;
pub mod svg;

use crate::ir::{BoxId, Callee, Diagram, HyperArg, Op, Program, WireId};
use crate::source::FileId;
use std::collections::BTreeSet;
use std::fmt;

/// Which way the wires run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flow {
    /// Inputs at the bottom, outputs at the top (the paper's convention).
    #[default]
    BottomToTop,
    /// Inputs on the left, outputs on the right.
    LeftToRight,
}

/// Boxes and wires of the drawn diagram to mark (for instance a rewrite's matched site). Ids are
/// those of the [`Diagram`] passed to [`draw`]; a highlighted composite box that is expanded
/// highlights its frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Highlight {
    pub boxes: BTreeSet<BoxId>,
    pub wires: BTreeSet<WireId>,
}

impl Highlight {
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty() && self.wires.is_empty()
    }

    /// The wires bound to one of `names` in the source, and the boxes that produce them; the
    /// names that matched nothing are returned as the error.
    pub fn by_wire_names(d: &Diagram, names: &[String]) -> Result<Highlight, Vec<String>> {
        let mut h = Highlight::default();
        let mut missing = Vec::new();
        for n in names {
            let mut found = false;
            for (i, w) in d.wires.iter().enumerate() {
                if w.name.as_deref() == Some(n.as_str()) {
                    found = true;
                    h.wires.insert(WireId(i as u32));
                    if let crate::ir::WireSource::Box(b, _) = w.source {
                        h.boxes.insert(b);
                    }
                }
            }
            if !found {
                missing.push(n.clone());
            }
        }
        if missing.is_empty() {
            Ok(h)
        } else {
            Err(missing)
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DrawOptions {
    /// How many levels of composite boxes to expand (0: every composite box closed).
    pub expand: usize,
    pub flow: Flow,
    pub highlight: Highlight,
}

/// Expansion stops at this depth whatever is asked (each level is a frame inside a frame).
pub const MAX_EXPAND: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrawError {
    /// The picture would have more than [`graph::MAX_NODES`] nodes or [`layout::MAX_SLOTS`]
    /// layout slots.
    TooLarge(String),
    /// Rasterising failed (resvg could not read the SVG or allocate the image).
    Png(String),
}

impl From<DrawError> for crate::error::Error {
    fn from(e: DrawError) -> Self {
        crate::error::Error::Render(e.to_string())
    }
}

impl fmt::Display for DrawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrawError::TooLarge(s) => write!(f, "too large to draw: {s}"),
            DrawError::Png(s) => write!(f, "cannot render PNG: {s}"),
        }
    }
}

impl std::error::Error for DrawError {}

/// A laid-out picture, ready to be written alone or beside others.
pub struct Scene {
    graph: graph::Graph,
    placed: layout::Placed,
    flow: Flow,
}

impl Scene {
    /// Builds and lays out the picture of `d` (a diagram of `program`).
    pub fn new(program: &Program, d: &Diagram, opts: &DrawOptions) -> Result<Scene, DrawError> {
        let graph = graph::build(program, d, opts)?;
        let placed = layout::place(&graph, opts.flow)?;
        Ok(Scene {
            graph,
            placed,
            flow: opts.flow,
        })
    }

    /// Width and height of the picture in SVG user units.
    pub fn size(&self) -> (f64, f64) {
        svg::scene_size(self)
    }

    /// Where everything is on the page: for tests and tools that check or post-process the
    /// picture.
    pub fn geometry(&self) -> Geometry {
        svg::geometry(self)
    }
}

/// A rectangle on the page: left, top, width, height (SVG user units, y downwards).
pub type PageRect = [f64; 4];

/// The laid-out picture as rectangles, in page coordinates.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub width: f64,
    pub height: f64,
    pub nodes: Vec<NodeGeometry>,
    /// Region and composite frames; index 0 is the whole diagram (no frame is drawn for it).
    pub frames: Vec<FrameGeometry>,
}

#[derive(Clone, Debug)]
pub struct NodeGeometry {
    /// `box`, `param`, `fork`, `cap`, `port`, `input` or `output`.
    pub kind: &'static str,
    pub label: String,
    /// The frame it is drawn in.
    pub frame: usize,
    /// Everything the node draws (its shape, a parameter triangle, a parameter's label).
    pub rect: PageRect,
    pub highlight: bool,
}

#[derive(Clone, Debug)]
pub struct FrameGeometry {
    pub caption: String,
    pub parent: Option<usize>,
    pub rect: PageRect,
    pub highlight: bool,
}

/// The SVG picture of `d`.
pub fn draw(program: &Program, d: &Diagram, opts: &DrawOptions) -> Result<String, DrawError> {
    let scene = Scene::new(program, d, opts)?;
    Ok(svg::document(&[(None, &scene)]))
}

/// One rewrite step: `before` and `after` side by side, captioned, each with its own highlight
/// (the matched site and its replacement). `opts.highlight` is ignored.
/// Each side comes with its own program, since a rewrite may add axes.
pub fn draw_step(
    before: (&Program, &Diagram, &Highlight),
    after: (&Program, &Diagram, &Highlight),
    opts: &DrawOptions,
) -> Result<String, DrawError> {
    let scene = |(p, d, h): (&Program, &Diagram, &Highlight)| {
        let o = DrawOptions {
            highlight: h.clone(),
            ..opts.clone()
        };
        Scene::new(p, d, &o)
    };
    let (b, a) = (scene(before)?, scene(after)?);
    Ok(svg::document(&[(Some("before"), &b), (Some("after"), &a)]))
}

/// The diagram a file is about: among the diagrams defined in `file`, the one that no other
/// diagram there uses (calls, or passes or defaults as a hyperparameter). `None` when there is
/// no such diagram or more than one.
pub fn default_diagram(program: &Program, file: FileId) -> Option<&Diagram> {
    let local: Vec<&Diagram> = program
        .diagrams
        .iter()
        .filter(|d| d.span.file == file)
        .collect();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let named = |a: &HyperArg| match a {
        HyperArg::Diagram(Callee::Diagram(n)) => Some(n.clone()),
        _ => None,
    };
    for d in &local {
        used.extend(
            d.hypers
                .iter()
                .filter_map(|h| h.default.as_ref().and_then(named)),
        );
        for b in &d.boxes {
            if let Op::Call { callee, hypers } = &b.op {
                if let Callee::Diagram(n) = callee {
                    used.insert(n.clone());
                }
                used.extend(hypers.iter().filter_map(|(_, a)| named(a)));
            }
        }
    }
    let mut top = local.into_iter().filter(|d| !used.contains(&d.name));
    match (top.next(), top.next()) {
        (Some(d), None) => Some(d),
        _ => None,
    }
}
