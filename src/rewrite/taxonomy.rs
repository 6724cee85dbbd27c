//! The taxonomy of attention (`diagc taxonomy`): the graph of the stdlib's derivations.
//!
//! Every derivation in `stdlib/derivations/` is an edge from its `start` diagram to its `end`
//! diagram, labelled by its rules; building the taxonomy replays each one (every step must
//! apply, type, and `equal` steps must agree numerically; the end must be the named diagram up
//! to names), so the graph only ever shows relations the rewrite system has checked. The root is
//! [`ROOT`], primordial attention (a learner on the (query, key) pair); the literature's
//! variants are reached from it by specialisations and expressivity rewrites. Which variants the
//! paper's Figure 1 shows is not known ([`NOTE`]).

use super::derive::{self, Derivation};
use super::registry::Registry;
use super::rule::RuleBook;
use crate::error::Error;
use crate::ir::RuleClass;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// The root of the taxonomy.
pub const ROOT: &str = "attention.primordial";

/// Said wherever the taxonomy is shown.
pub const NOTE: &str = "The project's taxonomy: every edge is a stdlib derivation replayed and \
checked by diagc. Which variants the paper's Figure 1 shows is not known; this graph is not \
a copy of it.";

#[derive(Clone, Debug, Serialize)]
pub struct Node {
    /// The stdlib module, such as `attention.m1`.
    pub name: String,
    /// Its file, relative to the repository root.
    pub file: String,
    /// The first line of the file's leading comment.
    pub title: String,
    /// The drawing's layer: for a node reached from the root, the length of the longest path
    /// from it; for a node reached backwards ([`Node::backward`]), one less than the node its
    /// edge goes into (so that every edge goes down).
    pub depth: usize,
    /// Its class in `stdlib/zoo.toml` (score, normaliser, feature map, positional, sharing,
    /// gating, recurrence).
    pub class: String,
    /// Reached only against an edge's direction: a mechanism whose derivation goes into the
    /// taxonomy (a generalisation of M1 specialises to it; an equal form rewrites into it),
    /// drawn one layer above the node it derives.
    pub backward: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub rule: String,
    pub class: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The derivation file, relative to the repository root.
    pub derivation: String,
    /// The weakest class among the steps: `specialise` if any step specialises, else
    /// `expressive` if any is, else `equal`.
    pub class: &'static str,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Taxonomy {
    pub note: &'static str,
    pub root: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Stdlib attention mechanisms no derivation reaches and the registry gives no reason for
    /// (a gap: tests/zoo.rs requires this to be empty).
    pub not_reached: Vec<String>,
    /// Mechanisms no derivation reaches, with the registry's reason.
    pub not_derived: Vec<NotDerived>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NotDerived {
    pub name: String,
    pub class: String,
    pub reason: String,
}

fn class_name(c: RuleClass) -> &'static str {
    match c {
        RuleClass::Equal => "equal",
        RuleClass::Expressive => "expressive",
        RuleClass::Specialise => "specialise",
    }
}

fn module_file(module: &str) -> String {
    format!("stdlib/{}.diag", module.replace('.', "/"))
}

fn title(module: &str) -> String {
    crate::stdlib::module(module)
        .and_then(|(_, text)| text.lines().next())
        .map(|l| l.trim_start_matches('/').trim().to_string())
        .unwrap_or_default()
}

/// Replays every stdlib derivation and builds the graph. Fails, naming the derivation, when one
/// does not replay.
pub fn build(book: &RuleBook) -> Result<Taxonomy, Error> {
    let mut edges = Vec::new();
    for (name, text) in derive::STDLIB {
        let d: Derivation =
            derive::parse(text).map_err(|e| Error::Rewrite(format!("{name}: {e}")))?;
        let Some((end, _)) = &d.end else {
            return Err(Error::Rewrite(format!(
                "{name}: a taxonomy edge needs an `end` line"
            )));
        };
        let mut steps = Vec::new();
        derive::replay(&d, book, &mut |_, c| {
            steps.push(Step {
                rule: c.step.rule.clone(),
                class: class_name(c.step.class),
            })
        })
        .map_err(|e| Error::Rewrite(format!("{name}: {e}")))?;
        let class = ["specialise", "expressive"]
            .into_iter()
            .find(|k| steps.iter().any(|s| s.class == *k))
            .unwrap_or("equal");
        edges.push(Edge {
            from: d.start.clone(),
            to: end.clone(),
            derivation: format!("stdlib/derivations/{name}.derive"),
            class,
            steps,
        });
    }
    edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    let mut names: BTreeSet<String> = BTreeSet::new();
    for e in &edges {
        names.insert(e.from.clone());
        names.insert(e.to.clone());
    }
    if !names.contains(ROOT) {
        return Err(Error::Rewrite(format!(
            "no derivation starts at the root `{ROOT}`"
        )));
    }
    // Longest path from the root over the forward edges (the graph is small; relax until
    // nothing changes, bounded by the number of nodes so that a cycle cannot hang it). Then the
    // nodes reached backwards: a derivation from X into a node already placed puts X one layer
    // above that node, so that every arrow of the picture points down.
    let mut depth: BTreeMap<&str, usize> = BTreeMap::from([(ROOT, 0)]);
    let mut backward: BTreeSet<&str> = BTreeSet::new();
    for _ in 0..names.len() {
        let mut changed = false;
        for e in &edges {
            if let Some(&d) = depth.get(e.from.as_str())
                && !backward.contains(e.from.as_str())
                && depth.get(e.to.as_str()).is_none_or(|&x| x < d + 1)
            {
                depth.insert(e.to.as_str(), d + 1);
                changed = true;
            }
        }
        if !changed {
            for e in &edges {
                if let Some(&d) = depth.get(e.to.as_str())
                    && !depth.contains_key(e.from.as_str())
                {
                    depth.insert(e.from.as_str(), d.saturating_sub(1));
                    backward.insert(e.from.as_str());
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let unreachable: Vec<&String> = names
        .iter()
        .filter(|n| !depth.contains_key(n.as_str()))
        .collect();
    if let Some(n) = unreachable.first() {
        return Err(Error::Rewrite(format!(
            "`{n}` is in a derivation but connected to `{ROOT}` by none"
        )));
    }
    let registry = Registry::stdlib()?;
    let class_of = |n: &str| registry.get(n).map(|e| e.class.clone()).unwrap_or_default();
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node {
            name: n.clone(),
            file: module_file(n),
            title: title(n),
            depth: depth[n.as_str()],
            class: class_of(n),
            backward: backward.contains(n.as_str()),
        })
        .collect();
    let mut not_reached = Vec::new();
    let mut not_derived = Vec::new();
    for e in &registry.entries {
        let module = format!("attention.{}", e.name);
        match (&e.not_derived, names.contains(&module)) {
            (Some(_), true) => {
                let via = edges
                    .iter()
                    .find(|x| x.from == module || x.to == module)
                    .map(|x| x.derivation.clone())
                    .unwrap_or_default();
                return Err(Error::Rewrite(format!(
                    "stdlib/zoo.toml says `{}` is not derived, but {via} derives it: remove its \
                     `not_derived`",
                    e.name
                )));
            }
            (Some(reason), false) => not_derived.push(NotDerived {
                name: module,
                class: e.class.clone(),
                reason: reason.clone(),
            }),
            (None, false) => not_reached.push(module),
            (None, true) => {}
        }
    }
    Ok(Taxonomy {
        note: NOTE,
        root: ROOT.to_string(),
        nodes,
        edges,
        not_reached,
        not_derived,
    })
}

fn short(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn edge_label(e: &Edge) -> String {
    edge_lines(e).join(", ")
}

/// The rules of an edge, a repeated rule written once with its count (`fold_head_linear x2`).
fn edge_lines(e: &Edge) -> Vec<String> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for s in &e.steps {
        match out.last_mut() {
            Some((r, n)) if *r == s.rule => *n += 1,
            _ => out.push((s.rule.clone(), 1)),
        }
    }
    out.into_iter()
        .map(|(r, n)| if n > 1 { format!("{r} x{n}") } else { r })
        .collect()
}

/// Colours of the rule classes, in the DOT and SVG pictures.
fn class_colour(class: &str) -> &'static str {
    match class {
        "equal" => "#2b7a3d",
        "expressive" => "#1f5fa8",
        _ => "#b5532a",
    }
}

/// Fill colours of the node classes (stdlib/zoo.toml), in the SVG picture.
fn node_fill(class: &str) -> &'static str {
    match class {
        "score" => "#fbe3c4",
        "normaliser" => "#e4d9f4",
        "feature map" => "#d3e9f6",
        "positional" => "#dcefd5",
        "sharing" => "#f6d7e2",
        "gating" => "#fbf0b4",
        "recurrence" => "#e2e2de",
        _ => "#f4f4f0",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The taxonomy as a Graphviz digraph; nodes link to their stdlib files (`URL`), edges are
/// labelled by their rules and coloured by class.
pub fn dot(t: &Taxonomy) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "// {}", t.note);
    let _ = writeln!(s, "digraph taxonomy {{");
    let _ = writeln!(s, "    rankdir=TB;");
    let _ = writeln!(
        s,
        "    node [shape=box, style=rounded, fontname=\"Helvetica\"];"
    );
    let _ = writeln!(s, "    edge [fontname=\"Helvetica\", fontsize=10];");
    for n in &t.nodes {
        let _ = writeln!(
            s,
            "    \"{}\" [label=\"{}\\n{}\", URL=\"{}\", tooltip=\"{}\"];",
            n.name,
            short(&n.name),
            n.file,
            n.file,
            n.title.replace('"', "'")
        );
    }
    for e in &t.edges {
        let _ = writeln!(
            s,
            "    \"{}\" -> \"{}\" [label=\"{} ({})\", color=\"{}\", fontcolor=\"{}\", URL=\"{}\"];",
            e.from,
            e.to,
            edge_label(e),
            e.class,
            class_colour(e.class),
            class_colour(e.class),
            e.derivation
        );
    }
    s.push_str("}\n");
    s
}

/// The taxonomy as JSON (pretty-printed).
pub fn json(t: &Taxonomy) -> String {
    let mut s =
        serde_json::to_string_pretty(t).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// An item of a row of the taxonomy's picture: a node, or the point where an edge (by index)
/// crosses a layer (by depth).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Node(String),
    Via(usize, usize),
}

/// The taxonomy as an SVG picture: one row per depth from the root, nodes linked to their
/// files, edges labelled by their rules and coloured by class. Deterministic bytes.
pub fn svg(t: &Taxonomy) -> String {
    const W: f64 = 240.0; // node width
    const H: f64 = 44.0; // node height
    const GAP_X: f64 = 120.0;
    const ROW: f64 = 220.0;
    const MARGIN: f64 = 30.0;
    const TOP: f64 = 70.0;
    const VIA: f64 = 24.0; // the width of a point a long edge passes through
    let node_of = |n: &str| t.nodes.iter().find(|x| x.name == n);
    // Each edge's chain of items from its start to its end: an edge across more than one layer
    // passes through a point in every layer between (so that it runs between the nodes there,
    // not through them).
    let chains: Vec<Vec<Item>> = t
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (df, dt) = (
                node_of(&e.from).map_or(0, |n| n.depth),
                node_of(&e.to).map_or(0, |n| n.depth),
            );
            let mut c = vec![Item::Node(e.from.clone())];
            c.extend((df + 1..dt).map(|d| Item::Via(i, d)));
            c.push(Item::Node(e.to.clone()));
            c
        })
        .collect();
    let mut rows: BTreeMap<usize, Vec<Item>> = BTreeMap::new();
    for n in &t.nodes {
        rows.entry(n.depth)
            .or_default()
            .push(Item::Node(n.name.clone()));
    }
    for c in &chains {
        for it in c {
            if let Item::Via(_, d) = it {
                rows.entry(*d).or_default().push(it.clone());
            }
        }
    }
    let item_w = |it: &Item| match it {
        Item::Node(_) => W,
        Item::Via(..) => VIA,
    };
    let gap = |a: &Item, b: &Item| match (a, b) {
        (Item::Node(_), Item::Node(_)) => GAP_X,
        _ => 30.0,
    };
    let row_width = |row: &[Item]| {
        row.iter().map(item_w).sum::<f64>() + row.windows(2).map(|w| gap(&w[0], &w[1])).sum::<f64>()
    };
    let widest = rows.values().map(|r| row_width(r)).fold(W, f64::max);
    let width = (MARGIN * 2.0 + widest).max(1200.0);
    let layers = rows.keys().next_back().map_or(1, |d| d + 1);
    let height = TOP + layers as f64 * ROW + 60.0;
    // The centre x of every item, its row centred.
    let place = |rows: &BTreeMap<usize, Vec<Item>>| {
        let mut at: BTreeMap<Item, f64> = BTreeMap::new();
        for row in rows.values() {
            let mut x = (width - row_width(row)) / 2.0;
            for (k, it) in row.iter().enumerate() {
                if k > 0 {
                    x += gap(&row[k - 1], it);
                }
                at.insert(it.clone(), x + item_w(it) / 2.0);
                x += item_w(it);
            }
        }
        at
    };
    // An item's neighbours: the items next to it on the chains through it.
    let neighbours = |it: &Item| -> Vec<Item> {
        let mut out = Vec::new();
        for c in &chains {
            for (k, x) in c.iter().enumerate() {
                if x == it {
                    if k > 0 {
                        out.push(c[k - 1].clone());
                    }
                    if k + 1 < c.len() {
                        out.push(c[k + 1].clone());
                    }
                }
            }
        }
        out
    };
    // Fewer crossings: sweeps down and up the layers that order each row by the mean position
    // of its items' neighbours in the row before it (the barycentre heuristic); an item with
    // no neighbour there keeps its place, ties go by the items' order.
    let depths: Vec<usize> = rows.keys().copied().collect();
    let depth_of = |it: &Item| match it {
        Item::Node(n) => node_of(n).map_or(0, |x| x.depth),
        Item::Via(_, d) => *d,
    };
    for sweep in 0..6 {
        let order: Vec<(usize, usize)> = if sweep % 2 == 0 {
            depths.windows(2).map(|w| (w[1], w[0])).collect()
        } else {
            depths.windows(2).rev().map(|w| (w[0], w[1])).collect()
        };
        for (d, reference) in order {
            let at = place(&rows);
            let key = |it: &Item| {
                let xs: Vec<f64> = neighbours(it)
                    .iter()
                    .filter(|n| depth_of(n) == reference)
                    .map(|n| at[n])
                    .collect();
                if xs.is_empty() {
                    at[it]
                } else {
                    xs.iter().sum::<f64>() / xs.len() as f64
                }
            };
            if let Some(row) = rows.get_mut(&d) {
                row.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.cmp(b)));
            }
        }
    }
    let centre = place(&rows);
    let row_y = |d: usize| TOP + d as f64 * ROW;
    // The nodes' top-left corners.
    let at: BTreeMap<&str, (f64, f64)> = t
        .nodes
        .iter()
        .map(|n| {
            let c = centre[&Item::Node(n.name.clone())];
            (n.name.as_str(), (c - W / 2.0, row_y(n.depth)))
        })
        .collect();
    // Where each edge leaves its start and enters its end: spread along the node's bottom
    // (top) in the order of where the edges go (come from).
    let mut leave: BTreeMap<usize, f64> = BTreeMap::new();
    let mut enter: BTreeMap<usize, f64> = BTreeMap::new();
    for n in &t.nodes {
        let x = at[n.name.as_str()].0;
        for (out, map) in [(true, &mut leave), (false, &mut enter)] {
            let mut es: Vec<(f64, usize)> = chains
                .iter()
                .enumerate()
                .filter(|(i, _)| {
                    if out {
                        t.edges[*i].from == n.name
                    } else {
                        t.edges[*i].to == n.name
                    }
                })
                .map(|(i, c)| {
                    let other = if out { &c[1] } else { &c[c.len() - 2] };
                    (centre[other], i)
                })
                .collect();
            es.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let k = es.len() as f64;
            for (j, (_, i)) in es.iter().enumerate() {
                map.insert(*i, x + W * (0.2 + 0.6 * (j as f64 + 0.5) / k));
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" \
         width=\"{width:.1}\" height=\"{height:.1}\" viewBox=\"0 0 {width:.1} {height:.1}\" \
         font-family=\"'DejaVu Sans Mono', monospace\">"
    );
    let _ = writeln!(
        s,
        "<defs><marker id=\"arrow\" markerWidth=\"10\" markerHeight=\"8\" refX=\"9\" refY=\"4\" \
         orient=\"auto\"><path d=\"M0,0 L10,4 L0,8 z\" fill=\"#444\"/></marker></defs>"
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    // The note, in lines of at most 100 characters.
    let mut lines: Vec<String> = vec![String::new()];
    for word in t.note.split(' ') {
        let last = lines.last_mut().expect("one line");
        if !last.is_empty() && last.len() + word.len() > 100 {
            lines.push(word.to_string());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            s,
            "<text x=\"{MARGIN:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">{}</text>",
            20.0 + i as f64 * 14.0,
            escape(line)
        );
    }
    for (i, e) in t.edges.iter().enumerate() {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (at.get(e.from.as_str()), at.get(e.to.as_str()))
        else {
            continue;
        };
        // The points of the edge: down from its start, through the points of the layers it
        // crosses, into its end; an edge within one row goes from side to side.
        let points: Vec<(f64, f64)> = if ty > fy {
            let mut p = vec![(leave[&i], fy + H)];
            for it in &chains[i][1..chains[i].len() - 1] {
                if let Item::Via(_, d) = it {
                    p.push((centre[it], row_y(*d)));
                    p.push((centre[it], row_y(*d) + H));
                }
            }
            p.push((enter[&i], ty));
            p
        } else {
            let (a, b) = if tx > fx { (fx + W, tx) } else { (fx, tx + W) };
            vec![(a, fy + H / 2.0), (b, ty + H / 2.0)]
        };
        let colour = class_colour(e.class);
        let d: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(k, (x, y))| format!("{}{x:.1},{y:.1}", if k == 0 { "M" } else { "L" }))
            .collect();
        let _ = writeln!(
            s,
            "<a xlink:href=\"{}\"><path d=\"{}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>",
            escape(&e.derivation),
            d.join(" ")
        );
        // The label sits on the edge's first segment, halfway down the gap below its start,
        // where no node is.
        let mut label = edge_lines(e);
        label.push(format!("({})", e.class));
        let ((x1, y1), (x2, y2)) = (points[0], points[1]);
        let (mx, my) = if y2 > y1 {
            let my = y1 + (ROW - H) / 2.0;
            (x1 + (x2 - x1) * (my - y1) / (y2 - y1), my)
        } else {
            ((x1 + x2) / 2.0, y1 - 10.0)
        };
        let top = my - 6.0 * (label.len() as f64 - 1.0);
        for (k, line) in label.iter().enumerate() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{colour}\" \
                 text-anchor=\"middle\" stroke=\"white\" stroke-width=\"3\" \
                 paint-order=\"stroke\">{}</text>",
                mx,
                top + k as f64 * 12.0,
                escape(line)
            );
        }
        s.push_str("</a>\n");
    }
    for n in &t.nodes {
        let (x, y) = at[n.name.as_str()];
        let _ = writeln!(
            s,
            "<a xlink:href=\"{}\"><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{W:.1}\" \
             height=\"{H:.1}\" rx=\"8.0\" fill=\"{}\" stroke=\"#333\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#666\" text-anchor=\"middle\">{}</text></a>",
            escape(&n.file),
            escape(&n.title),
            node_fill(&n.class),
            x + W / 2.0,
            y + 19.0,
            escape(short(&n.name)),
            x + W / 2.0,
            y + 34.0,
            escape(&n.file)
        );
    }
    let legend_y = height - 24.0;
    let mut lx = MARGIN + 3.0 * 120.0 + 40.0;
    for class in super::registry::CLASSES {
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"22.0\" height=\"14.0\" rx=\"3.0\" \
             fill=\"{}\" stroke=\"#333\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{class}</text>",
            legend_y - 7.0,
            node_fill(class),
            lx + 28.0,
            legend_y + 4.0
        );
        lx += 40.0 + 7.0 * class.len() as f64;
    }
    for (i, class) in ["equal", "expressive", "specialise"].iter().enumerate() {
        let x = MARGIN + i as f64 * 120.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{legend_y:.1}\" x2=\"{:.1}\" y2=\"{legend_y:.1}\" \
             stroke=\"{}\" stroke-width=\"2.0\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{class}</text>",
            x + 24.0,
            class_colour(class),
            x + 30.0,
            legend_y + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The protocol's sizes at which `docs/variants.md` counts each mechanism's parameters.
pub const COUNT_SIZES: &[(&str, u64)] = &[("tok", 35), ("dm", 512), ("head", 4)];

/// The trainable parameters of a stdlib mechanism's sub-layer at [`COUNT_SIZES`] (its
/// hyperparameters at their defaults; frozen tensors, such as the Performer's random matrix,
/// are not counted).
pub fn parameter_count(mech: &str) -> Result<u64, Error> {
    let module = format!("attention.{mech}");
    let (path, text) = crate::stdlib::module(&module)
        .ok_or_else(|| Error::Rewrite(format!("no stdlib module `{module}`")))?;
    let o = crate::session::check_text(&format!("<stdlib>/{path}"), text);
    if !o.checked.is_ok() {
        return Err(Error::Rewrite(format!("`{module}` does not check")));
    }
    let mut b = crate::ir::instance::Bindings::default();
    for (k, v) in COUNT_SIZES {
        b.sizes.insert(k.to_string(), *v);
    }
    let inst = crate::ir::instance::instantiate(&o.checked.program, mech, &b)?;
    Ok(inst
        .params
        .iter()
        .filter(|p| !p.name.ends_with(".frozen"))
        .map(|p| p.axes.iter().map(|a| inst.size(*a) as u64).product::<u64>())
        .sum())
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A Markdown table cell: no `|`, no line break.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The derivations that connect a node to the root: for a node reached backwards, the edges
/// from it into the part reached from the root (`backward`, in order); then the longest path
/// from the root to where those end (`forward`, from the root down).
fn path_to(t: &Taxonomy, name: &str) -> (Vec<Edge>, Vec<Edge>) {
    let node = |n: &str| t.nodes.iter().find(|x| x.name == n);
    let mut backward = Vec::new();
    let mut at = name.to_string();
    for _ in 0..t.nodes.len() {
        let Some(n) = node(&at).filter(|n| n.backward) else {
            break;
        };
        let Some(e) = t
            .edges
            .iter()
            .find(|e| e.from == at && node(&e.to).is_some_and(|m| m.depth == n.depth + 1))
        else {
            break;
        };
        backward.push(e.clone());
        at = e.to.clone();
    }
    let mut forward = Vec::new();
    for _ in 0..t.nodes.len() {
        let Some(n) = node(&at) else { break };
        if n.depth == 0 {
            break;
        }
        let Some(e) = t.edges.iter().find(|e| {
            e.to == at && node(&e.from).is_some_and(|m| !m.backward && m.depth + 1 == n.depth)
        }) else {
            break;
        };
        forward.push(e.clone());
        at = e.from.clone();
    }
    forward.reverse();
    (backward, forward)
}

/// One derivation as Markdown: `a → b` linked to its file, with its rules.
fn edge_md(e: &Edge) -> String {
    format!(
        "[{} {} {}](../{}) ({}; {})",
        short(&e.from),
        "→",
        short(&e.to),
        e.derivation,
        edge_label(e),
        e.class
    )
}

/// The registry page `docs/variants.md`: every stdlib mechanism with its formula, paper, file,
/// class, derivation path (or the reason it has none), parameter count at the protocol's sizes
/// and picture. Deterministic bytes; tests/zoo.rs checks that the committed page is current.
pub fn markdown(t: &Taxonomy) -> Result<String, Error> {
    let registry = Registry::stdlib()?;
    let mut s = String::new();
    let reached = registry
        .entries
        .iter()
        .filter(|e| e.not_derived.is_none())
        .count();
    let _ = writeln!(s, "# The attention zoo\n");
    let _ = writeln!(
        s,
        "<!-- Generated by `diagc taxonomy --format md -o docs/variants.md` from stdlib/zoo.toml, \
         stdlib/attention/ and stdlib/derivations/; do not edit (tests/zoo.rs checks that it is \
         current). -->\n"
    );
    let _ = writeln!(
        s,
        "{} attention mechanisms in the stdlib, each a file of `stdlib/attention/` with the \
         boundary `[tok, dm] -> [tok, dm]` (projections included, causal), checked against a \
         naive loop of its formula in the tests. {} are connected to primordial attention by \
         derivations that `diagc taxonomy` replays and checks; {} are not, each with the \
         reason below. {}\n",
        registry.entries.len(),
        reached,
        registry.entries.len() - reached,
        NOTE
    );
    let _ = writeln!(
        s,
        "The taxonomy: [docs/taxonomy.svg](taxonomy.svg) (`diagc taxonomy --format svg`). A \
         derivation's class is its weakest step's: `equal` (the same function), `expressive` \
         (the same class of functions, by universal approximation), `specialise` (the end is \
         a special case of the start). The mechanisms drawn one row above M1 with an arrow into \
         it specialise to M1: they generalise it.\n"
    );
    let sizes: Vec<String> = COUNT_SIZES
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "Parameters: the sub-layer's trainable parameters at {} (the protocol's d_model and \
         heads; `tok` matters only to the Synthesizer, whose second layer is as wide as the \
         window).\n",
        sizes.join(", ")
    );
    let _ = writeln!(
        s,
        "| mechanism | class | formula (per head) | derived | parameters | trains in |"
    );
    let _ = writeln!(s, "|---|---|---|---|---:|---|");
    let mut counts = Vec::new();
    for e in &registry.entries {
        let n = parameter_count(&e.name)?;
        counts.push(n);
        let _ = writeln!(
            s,
            "| [{}](#{}) | {} | `{}` | {} | {} | `{}` |",
            e.name,
            e.name,
            e.class,
            cell(&e.formula).replace('`', "'"),
            if e.not_derived.is_some() { "no" } else { "yes" },
            thousands(n),
            e.model
        );
    }
    s.push('\n');
    for (e, n) in registry.entries.iter().zip(&counts) {
        let module = format!("attention.{}", e.name);
        let _ = writeln!(s, "## {}\n", e.name);
        let _ = writeln!(s, "{}\n", title(&module));
        let _ = writeln!(s, "- Formula: `{}`", e.formula.replace('`', "'"));
        let _ = writeln!(s, "- Paper: {}", e.paper);
        let _ = writeln!(
            s,
            "- File: [stdlib/attention/{0}.diag](../stdlib/attention/{0}.diag); class: {1}; \
             trains in `{2}` (`diagc train {0}`)",
            e.name, e.class, e.model
        );
        let _ = writeln!(s, "- Parameters: {}", thousands(*n));
        match &e.not_derived {
            Some(reason) => {
                let _ = writeln!(s, "- Not derived: {reason}.");
            }
            None if module == ROOT => {
                let _ = writeln!(s, "- Derivation: the root of the taxonomy.");
            }
            None => {
                let (back, fwd) = path_to(t, &module);
                let into = back
                    .last()
                    .map(|e| short(&e.to).to_string())
                    .unwrap_or_default();
                // What the backward derivations say of the mechanism, by their weakest class.
                let relation = if back.iter().any(|e| e.class == "specialise") {
                    format!("it generalises {into}")
                } else if back.iter().any(|e| e.class == "expressive") {
                    format!("as expressive as {into}")
                } else {
                    format!("the same function as {into}")
                };
                let fwd: Vec<String> = fwd.iter().map(edge_md).collect();
                let back: Vec<String> = back.iter().map(edge_md).collect();
                let from_root = if fwd.is_empty() {
                    "none found".to_string()
                } else {
                    fwd.join(", then ")
                };
                if back.is_empty() {
                    let _ = writeln!(s, "- Derivation from primordial attention: {from_root}");
                } else {
                    let _ = writeln!(
                        s,
                        "- Derivation: {} ({relation}); {into} from primordial attention: \
                         {from_root}",
                        back.join(", then ")
                    );
                }
            }
        }
        let _ = writeln!(s, "\n![{0}](../tests/golden/draw/{0}.svg)\n", e.name);
    }
    Ok(s)
}
