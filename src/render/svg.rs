//! How things look: writing laid-out scenes as SVG, with the `svg` crate.
//!
//! Styles are CSS classes in one `<style>` element, so the files stay small and a reader can
//! restyle them; every box, port and wire has a `<title>` (a tooltip in browsers) with the op
//! as the IR prints it, its parameters, or the wire's name and type. Numbers are written with
//! one decimal, so the bytes do not depend on the last bits of a float.

use super::graph::{BoxStyle, Graph, GroupKind, NodeId, PortShape, Shape};
use super::layout::{self, Pt, Rect, caption_size, extent, label_size};
use super::{Flow, Scene};
use ::svg::Node;
use ::svg::node::element::{Circle, Element, Group, Path, Polygon, Rectangle, Style};

/// Margin around a picture, and the height of its title line.
const MARGIN: f64 = 16.0;
const TITLE_H: f64 = 24.0;
/// Gap between panels, and the height of a panel's caption.
const PANEL_GAP: f64 = 40.0;
const PANEL_CAPTION_H: f64 = 22.0;

/// The style sheet. Font sizes come from the layout, which measures text with them.
fn css() -> String {
    format!(
        "
text {{ font-family: 'DejaVu Sans Mono', monospace; }}
.title {{ font-size: 13px; font-weight: bold; fill: #111; }}
.panel {{ font-size: 14px; font-weight: bold; fill: #555; }}
.frame {{ stroke-width: 1.2; }}
.simd {{ fill: #4a90d9; fill-opacity: 0.12; stroke: #3b78b8; }}
.repeat {{ fill: #f5a623; fill-opacity: 0.08; stroke: #a86f0a; stroke-dasharray: 6 3; }}
.composite {{ fill: none; stroke: #2c4a8a; }}
.caption {{ font-size: {caption}px; }}
.caption.simd {{ fill: #1f5a96; fill-opacity: 1; stroke: none; }}
.caption.repeat {{ fill: #7a5005; fill-opacity: 1; stroke: none; }}
.caption.composite {{ fill: #2c4a8a; fill-opacity: 1; stroke: none; }}
.wire {{ fill: none; stroke: #222; stroke-width: 1.3; }}
.wire-hl {{ fill: none; stroke: #ff8c00; stroke-width: 7; stroke-opacity: 0.5; stroke-linecap: round; }}
.box {{ stroke-width: 1.2; }}
.primitive {{ fill: #ffffff; stroke: #222; }}
.structural {{ fill: #eeeeee; stroke: #777; }}
.learned {{ fill: #fde3e1; stroke: #c0392b; }}
.closed {{ fill: #e6ecfa; stroke: #2c4a8a; }}
.param {{ fill: #d62728; stroke: #8b1a1a; stroke-width: 1; }}
.lane {{ fill: #4a90d9; fill-opacity: 0.35; stroke: #3b78b8; stroke-width: 1; }}
.fork {{ fill: #222; }}
.cap {{ fill: #222; }}
.port {{ fill: #ffffff; stroke: #222; stroke-width: 1.2; }}
.first {{ fill: #222; stroke: none; }}
.port.out {{ fill: #222; }}
.io {{ fill: #ffffff; stroke: #222; stroke-width: 1.2; }}
.hl {{ stroke: #ff8c00; stroke-width: 3; }}
.label {{ font-size: {font}px; fill: #111; }}
.ty {{ font-size: {small}px; fill: #555; stroke: #ffffff; stroke-width: 3; stroke-linejoin: round; paint-order: stroke; }}
",
        font = layout::FONT,
        small = layout::SMALL_FONT,
        caption = layout::CAPTION_FONT,
    )
}

/// A number with at most one decimal.
fn num(v: f64) -> String {
    let s = format!("{:.1}", v);
    let s = s.strip_suffix(".0").unwrap_or(&s).to_string();
    if s == "-0" { "0".into() } else { s }
}

/// Text safe for XML 1.0 (control characters are not allowed even escaped).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// An element holding text, written inline (`<text ...>content</text>`). The crate's own `Text`
/// and `Title` put the content on a line of its own, which tools reading the DOM would see.
struct Label(Element);

impl Label {
    fn new(tag: &str, content: &str) -> Label {
        let mut e = Element::new(tag);
        e.append(::svg::node::Text::new(clean(content)));
        Label(e)
    }

    fn text(content: &str) -> Label {
        Label::new("text", content)
    }

    fn set(mut self, name: &str, value: impl Into<::svg::node::Value>) -> Label {
        self.0.assign(name, value);
        self
    }
}

impl From<Label> for Box<dyn Node> {
    fn from(l: Label) -> Box<dyn Node> {
        Box::new(l.0)
    }
}

fn title(s: &str) -> Label {
    Label::new("title", s)
}

/// Maps abstract coordinates to the page of one scene.
struct Page {
    flow: Flow,
    /// Smallest across and largest along (TB) or smallest along (LR) of the content.
    across0: f64,
    along0: f64,
    along1: f64,
    /// Where the content starts on the page.
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Page {
    fn new(scene: &Scene) -> Page {
        let b = bounds(scene);
        let (cw, ch) = match scene.flow {
            Flow::BottomToTop => (b.across1 - b.across0, b.along1 - b.along0),
            Flow::LeftToRight => (b.along1 - b.along0, b.across1 - b.across0),
        };
        let title_w = layout::text_w(&scene.graph.title, 7.8);
        Page {
            flow: scene.flow,
            across0: b.across0,
            along0: b.along0,
            along1: b.along1,
            x0: MARGIN,
            y0: MARGIN + TITLE_H,
            w: (cw + 2.0 * MARGIN).max(title_w + 2.0 * MARGIN),
            h: ch + 2.0 * MARGIN + TITLE_H,
        }
    }

    fn map(&self, p: Pt) -> (f64, f64) {
        match self.flow {
            Flow::BottomToTop => (
                self.x0 + p.across - self.across0,
                self.y0 + self.along1 - p.along,
            ),
            Flow::LeftToRight => (
                self.x0 + p.along - self.along0,
                self.y0 + p.across - self.across0,
            ),
        }
    }

    /// A rectangle on the page: (x, y, width, height).
    fn rect(&self, r: Rect) -> (f64, f64, f64, f64) {
        let (x0, y0) = self.map(Pt {
            across: r.across0,
            along: r.along0,
        });
        let (x1, y1) = self.map(Pt {
            across: r.across1,
            along: r.along1,
        });
        (x0.min(x1), y0.min(y1), (x1 - x0).abs(), (y1 - y0).abs())
    }
}

/// Everything drawn, in abstract coordinates.
fn bounds(scene: &Scene) -> Rect {
    let (g, p) = (&scene.graph, &scene.placed);
    let mut r = Rect {
        across0: f64::INFINITY,
        along0: f64::INFINITY,
        across1: f64::NEG_INFINITY,
        along1: f64::NEG_INFINITY,
    };
    let mut add = |a: f64, l: f64| {
        r.across0 = r.across0.min(a);
        r.across1 = r.across1.max(a);
        r.along0 = r.along0.min(l);
        r.along1 = r.along1.max(l);
    };
    for (n, c) in p.nodes.iter().enumerate() {
        let e = extent(g, n, scene.flow);
        add(c.across - e.left, c.along - e.along / 2.0);
        add(c.across + e.right, c.along + e.along / 2.0);
    }
    for f in &p.groups {
        add(f.across0, f.along0);
        add(f.across1, f.along1);
    }
    for (e, at) in g.edges.iter().zip(&p.labels) {
        if let (Some(s), Some(at)) = (&e.label, at) {
            let (w, h) = label_size(s, scene.flow);
            add(at.across, at.along);
            add(at.across + w, at.along + h);
        }
    }
    for route in &p.routes {
        for q in &route.pts {
            add(q.across, q.along);
        }
    }
    if !r.across0.is_finite() {
        r = Rect::default();
    }
    r
}

pub fn geometry(scene: &Scene) -> super::Geometry {
    let page = Page::new(scene);
    let (g, p) = (&scene.graph, &scene.placed);
    let nodes = g
        .nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let e = extent(g, n, scene.flow);
            let c = p.nodes[n];
            let (x, y, w, h) = page.rect(Rect {
                across0: c.across - e.left,
                along0: c.along - e.along / 2.0,
                across1: c.across + e.right,
                along1: c.along + e.along / 2.0,
            });
            super::NodeGeometry {
                kind: match node.shape {
                    Shape::Box(_) => "box",
                    Shape::Param => "param",
                    Shape::Fork => "fork",
                    Shape::Cap => "cap",
                    Shape::Port(_) => "port",
                    Shape::Input => "input",
                    Shape::Output => "output",
                },
                label: node.label.clone(),
                frame: node.group,
                rect: [x, y, w, h],
                highlight: node.highlight,
            }
        })
        .collect();
    let frames = g
        .groups
        .iter()
        .enumerate()
        .map(|(c, grp)| {
            let (x, y, w, h) = page.rect(p.groups[c]);
            super::FrameGeometry {
                caption: grp.caption(),
                parent: grp.parent,
                rect: [x, y, w, h],
                highlight: grp.highlight,
            }
        })
        .collect();
    super::Geometry {
        width: page.w,
        height: page.h,
        nodes,
        frames,
    }
}

pub fn scene_size(scene: &Scene) -> (f64, f64) {
    let page = Page::new(scene);
    (page.w, page.h)
}

/// One SVG document holding the scenes side by side, each under its caption if it has one.
pub fn document(panels: &[(Option<&str>, &Scene)]) -> String {
    let captioned = panels.iter().any(|(c, _)| c.is_some());
    let cap_h = if captioned { PANEL_CAPTION_H } else { 0.0 };
    let pages: Vec<Page> = panels.iter().map(|(_, s)| Page::new(s)).collect();
    let width: f64 =
        pages.iter().map(|p| p.w).sum::<f64>() + PANEL_GAP * (pages.len().saturating_sub(1)) as f64;
    let height = pages.iter().map(|p| p.h).fold(0.0, f64::max) + cap_h;
    let mut doc = ::svg::Document::new()
        .set("width", num(width))
        .set("height", num(height))
        .set("viewBox", format!("0 0 {} {}", num(width), num(height)))
        .add(Style::new(css()))
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "#ffffff"),
        );
    let mut x = 0.0;
    for ((caption, scene), page) in panels.iter().zip(&pages) {
        let mut g = Group::new();
        if x != 0.0 || cap_h != 0.0 {
            g = g.set("transform", format!("translate({} {})", num(x), num(cap_h)));
        }
        if let Some(c) = caption {
            doc = doc.add(
                Label::text(c)
                    .set("class", "panel")
                    .set("x", num(x + MARGIN))
                    .set("y", num(16.0)),
            );
        }
        doc = doc.add(scene_group(g, scene, page));
        x += page.w + PANEL_GAP;
    }
    let mut out = doc.to_string();
    out.push('\n');
    out
}

fn scene_group(mut g: Group, scene: &Scene, page: &Page) -> Group {
    let (graph, placed) = (&scene.graph, &scene.placed);
    g = g.add(
        Label::text(&graph.title)
            .set("class", "title")
            .set("x", num(MARGIN))
            .set("y", num(MARGIN + 10.0)),
    );
    // Frames, outer first (parents have smaller ids), so inner ones are drawn on top.
    let mut frames = Group::new();
    for (c, grp) in graph.groups.iter().enumerate().skip(1) {
        let kind = match grp.kind {
            GroupKind::Simd(_) => "simd",
            GroupKind::Repeat(_) => "repeat",
            GroupKind::Composite(_) | GroupKind::Root => "composite",
        };
        let (x, y, w, h) = page.rect(placed.groups[c]);
        let class = if grp.highlight {
            format!("frame {kind} hl")
        } else {
            format!("frame {kind}")
        };
        frames = frames.add(
            Rectangle::new()
                .set("class", class)
                .set("x", num(x))
                .set("y", num(y))
                .set("width", num(w))
                .set("height", num(h))
                .set("rx", 6),
        );
        // The caption at the top left, inside.
        let cap = grp.caption();
        let (ca, cl) = caption_size(&cap, scene.flow);
        let at = placed.captions[c];
        let (cx, cy, _, ch) = page.rect(Rect {
            across0: at.across,
            along0: at.along,
            across1: at.across + ca,
            along1: at.along + cl,
        });
        frames = frames.add(
            Label::text(&cap)
                .set("class", format!("caption {kind}"))
                .set("x", num(cx + 5.0))
                .set("y", num(cy + ch - 3.5)),
        );
    }
    g = g.add(frames);

    let mut wires = Group::new();
    for (ei, e) in graph.edges.iter().enumerate() {
        let d = path_data(&placed.routes[ei].pts, &placed.routes[ei].curved, page);
        if e.highlight {
            wires = wires.add(Path::new().set("class", "wire-hl").set("d", d.clone()));
        }
        wires = wires.add(
            Path::new()
                .set("class", "wire")
                .set("d", d)
                .add(title(&e.title)),
        );
    }
    // The first input of a non-commuting operation (the numerator of `div`, the minuend of
    // `sub`): a small filled square where its wire ends.
    for (ei, e) in graph.edges.iter().enumerate() {
        let Some(what) = graph.nodes[e.to].first_input else {
            continue;
        };
        if e.to_port != 0 {
            continue;
        }
        let Some(&end) = placed.routes[ei].pts.last() else {
            continue;
        };
        let (x, y) = page.map(end);
        wires = wires.add(
            Path::new()
                .set("class", "first")
                .set("d", format!("M{} {}h6v6h-6z", num(x - 3.0), num(y - 3.0)))
                .add(title(what)),
        );
    }
    g = g.add(wires);

    let mut nodes = Group::new();
    for n in 0..graph.nodes.len() {
        nodes = nodes.add(node(graph, n, placed.nodes[n], scene.flow, page));
    }
    g = g.add(nodes);

    let mut labels = Group::new();
    for (ei, e) in graph.edges.iter().enumerate() {
        let (Some(s), Some(at)) = (&e.label, placed.labels[ei]) else {
            continue;
        };
        let (x, y) = page.map(at);
        let (tx, ty) = match scene.flow {
            // The box's lower edge is at `at`: the baseline just above it.
            Flow::BottomToTop => (x, y - 2.5),
            Flow::LeftToRight => (x, y + 8.5),
        };
        labels = labels.add(
            Label::text(s)
                .set("class", "ty")
                .set("x", num(tx))
                .set("y", num(ty)),
        );
    }
    g.add(labels)
}

/// The path of a route: straight pieces, and curves whose tangents run with the flow.
fn path_data(pts: &[Pt], curved: &[bool], page: &Page) -> String {
    let mut d = String::new();
    let Some(first) = pts.first() else {
        return d;
    };
    let (x, y) = page.map(*first);
    d.push_str(&format!("M{} {}", num(x), num(y)));
    for (i, w) in pts.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        let (bx, by) = page.map(b);
        if curved.get(i).copied().unwrap_or(false) {
            let mid = (a.along + b.along) / 2.0;
            let (c1x, c1y) = page.map(Pt {
                across: a.across,
                along: mid,
            });
            let (c2x, c2y) = page.map(Pt {
                across: b.across,
                along: mid,
            });
            d.push_str(&format!(
                "C{} {} {} {} {} {}",
                num(c1x),
                num(c1y),
                num(c2x),
                num(c2y),
                num(bx),
                num(by)
            ));
        } else {
            d.push_str(&format!("L{} {}", num(bx), num(by)));
        }
    }
    d
}

fn polygon(points: &[(f64, f64)]) -> Polygon {
    let s: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{},{}", num(*x), num(*y)))
        .collect();
    Polygon::new().set("points", s.join(" "))
}

fn with_hl(class: &str, hl: bool) -> String {
    if hl {
        format!("{class} hl")
    } else {
        class.to_string()
    }
}

/// One node: its shape, its label, its tooltip.
fn node(graph: &Graph, n: NodeId, c: Pt, flow: Flow, page: &Page) -> Group {
    let node = &graph.nodes[n];
    let e = extent(graph, n, flow);
    let (cx, cy) = page.map(c);
    // The main shape's width on the page.
    let w = match flow {
        Flow::BottomToTop => e.across,
        Flow::LeftToRight => e.along,
    };
    let mut g = Group::new().add(title(&node.title));
    let hl = node.highlight;
    match node.shape {
        Shape::Box(style) => {
            let (bw, bh) = (layout::node_box_w(graph, n, flow), layout::BOX_H);
            let class = match style {
                BoxStyle::Primitive => "box primitive",
                BoxStyle::Structural => "box structural",
                BoxStyle::Learned => "box learned",
                BoxStyle::Composite => "box closed",
            };
            let rx = if style == BoxStyle::Structural { 8 } else { 2 };
            g = g.add(
                Rectangle::new()
                    .set("class", with_hl(class, hl))
                    .set("x", num(cx - bw / 2.0))
                    .set("y", num(cy - bh / 2.0))
                    .set("width", num(bw))
                    .set("height", num(bh))
                    .set("rx", rx),
            );
            if style == BoxStyle::Composite {
                g = g.add(
                    Rectangle::new()
                        .set("class", "box closed")
                        .set("x", num(cx - bw / 2.0 + 3.0))
                        .set("y", num(cy - bh / 2.0 + 3.0))
                        .set("width", num(bw - 6.0))
                        .set("height", num(bh - 6.0))
                        .set("rx", 1),
                );
            }
            if style == BoxStyle::Learned && node.params {
                // The parameters: a red triangle on the box's side, pointing into it.
                let (tip, base) = match flow {
                    Flow::BottomToTop => ((cx - bw / 2.0, cy), (cx - bw / 2.0 - layout::TRI, cy)),
                    Flow::LeftToRight => ((cx, cy - bh / 2.0), (cx, cy - bh / 2.0 - layout::TRI)),
                };
                if !node.per_lane.is_empty() {
                    // Per-lane parameters sit in a tube of their own.
                    let (x, y, tw, th) = match flow {
                        Flow::BottomToTop => (base.0 - 1.5, cy - 8.0, layout::TRI + 1.5, 16.0),
                        Flow::LeftToRight => (cx - 8.0, base.1 - 1.5, 16.0, layout::TRI + 1.5),
                    };
                    g = g.add(
                        Rectangle::new()
                            .set("class", "lane")
                            .set("x", num(x))
                            .set("y", num(y))
                            .set("width", num(tw))
                            .set("height", num(th))
                            .set("rx", 3),
                    );
                }
                let pts = match flow {
                    Flow::BottomToTop => [(base.0, base.1 - 6.0), (base.0, base.1 + 6.0), tip],
                    Flow::LeftToRight => [(base.0 - 6.0, base.1), (base.0 + 6.0, base.1), tip],
                };
                g = g.add(polygon(&pts).set("class", "param"));
            }
            g = g.add(centred_label(&node.label, cx, cy));
        }
        Shape::Param => {
            let s = layout::PARAM / 2.0;
            let (tri, lx, ly, anchor) = match flow {
                Flow::BottomToTop => (
                    [(cx - s, cy + s), (cx + s, cy + s), (cx, cy - s)],
                    cx + s + 3.0,
                    cy + 4.0,
                    "start",
                ),
                Flow::LeftToRight => (
                    [(cx - s, cy - s), (cx - s, cy + s), (cx + s, cy)],
                    cx,
                    cy + s + 12.0,
                    "middle",
                ),
            };
            if !node.per_lane.is_empty() {
                g = g.add(
                    Rectangle::new()
                        .set("class", "lane")
                        .set("x", num(cx - s - 2.0))
                        .set("y", num(cy - s - 2.0))
                        .set("width", num(2.0 * s + 4.0))
                        .set("height", num(2.0 * s + 4.0))
                        .set("rx", 3),
                );
            }
            g = g.add(polygon(&tri).set("class", with_hl("param", hl)));
            if flow == Flow::LeftToRight && w > layout::PARAM {
                // The node is as long as its label: a wire from the triangle's tip to its end.
                g = g.add(Path::new().set("class", "wire").set(
                    "d",
                    format!(
                        "M{} {}L{} {}",
                        num(cx + s),
                        num(cy),
                        num(cx + w / 2.0),
                        num(cy)
                    ),
                ));
            }
            g = g.add(
                Label::text(&node.label)
                    .set("class", "label")
                    .set("x", num(lx))
                    .set("y", num(ly))
                    .set("text-anchor", anchor),
            );
        }
        Shape::Fork => {
            g = g.add(
                Circle::new()
                    .set("class", with_hl("fork", hl))
                    .set("cx", num(cx))
                    .set("cy", num(cy))
                    .set("r", 3.5),
            );
        }
        Shape::Cap => {
            // A dome closing the wire that comes in from below (TB) or the left (LR).
            let (a, b) = match flow {
                Flow::BottomToTop => ((cx - 5.0, cy + 3.0), (cx + 5.0, cy + 3.0)),
                Flow::LeftToRight => ((cx - 3.0, cy + 5.0), (cx - 3.0, cy - 5.0)),
            };
            g = g.add(Path::new().set("class", with_hl("cap", hl)).set(
                "d",
                format!(
                    "M{} {}A5 5 0 0 1 {} {}Z",
                    num(a.0),
                    num(a.1),
                    num(b.0),
                    num(b.1)
                ),
            ));
        }
        Shape::Port(kind) => {
            let r = layout::PORT / 2.0;
            let shape: Box<dyn Node> = match kind {
                PortShape::Broadcast | PortShape::Capture => polygon(&[
                    (cx, cy - r - 1.0),
                    (cx + r + 1.0, cy),
                    (cx, cy + r + 1.0),
                    (cx - r - 1.0, cy),
                ])
                .set("class", with_hl("port", hl))
                .into(),
                PortShape::Zip | PortShape::Collect => Circle::new()
                    .set(
                        "class",
                        with_hl(
                            if kind == PortShape::Collect {
                                "port out"
                            } else {
                                "port"
                            },
                            hl,
                        ),
                    )
                    .set("cx", num(cx))
                    .set("cy", num(cy))
                    .set("r", num(r))
                    .into(),
                PortShape::LoopIn | PortShape::LoopOut | PortShape::Enter | PortShape::Leave => {
                    let out = matches!(kind, PortShape::LoopOut | PortShape::Leave);
                    Rectangle::new()
                        .set("class", with_hl(if out { "port out" } else { "port" }, hl))
                        .set("x", num(cx - r))
                        .set("y", num(cy - r))
                        .set("width", num(2.0 * r))
                        .set("height", num(2.0 * r))
                        .into()
                }
            };
            g = g.add(shape);
        }
        Shape::Input => {
            let (x, y, anchor) = match flow {
                Flow::BottomToTop => (cx, cy + 4.0, "middle"),
                Flow::LeftToRight => (cx + w / 2.0 - 4.0, cy + 4.0, "end"),
            };
            g = g.add(
                Label::text(&node.label)
                    .set("class", with_hl("label", hl))
                    .set("x", num(x))
                    .set("y", num(y))
                    .set("text-anchor", anchor),
            );
            let (px, py) = page.map(Pt {
                across: c.across,
                along: c.along + e.along / 2.0,
            });
            g = g.add(
                Circle::new()
                    .set("class", "io")
                    .set("cx", num(px))
                    .set("cy", num(py))
                    .set("r", 2.5),
            );
        }
        Shape::Output => {
            g = g.add(
                Circle::new()
                    .set("class", with_hl("io", hl))
                    .set("cx", num(cx))
                    .set("cy", num(cy))
                    .set("r", 3.5),
            );
        }
    }
    g
}

fn centred_label(s: &str, cx: f64, cy: f64) -> Label {
    Label::text(s)
        .set("class", "label")
        .set("x", num(cx))
        .set("y", num(cy + 4.0))
        .set("text-anchor", "middle")
}
