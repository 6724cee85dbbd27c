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
    /// The length of the longest path from the root (the drawing's layer).
    pub depth: usize,
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
    /// Stdlib attention mechanisms no derivation reaches yet.
    pub not_reached: Vec<String>,
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
    // Longest path from the root (the graph is small; relax until nothing changes, bounded by
    // the number of nodes so that a cycle cannot hang it).
    let mut depth: BTreeMap<&str, usize> = BTreeMap::from([(ROOT, 0)]);
    for _ in 0..names.len() {
        let mut changed = false;
        for e in &edges {
            if let Some(&d) = depth.get(e.from.as_str())
                && depth.get(e.to.as_str()).is_none_or(|&x| x < d + 1)
            {
                depth.insert(e.to.as_str(), d + 1);
                changed = true;
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
            "`{n}` is in a derivation but not reached from `{ROOT}`"
        )));
    }
    let nodes: Vec<Node> = names
        .iter()
        .map(|n| Node {
            name: n.clone(),
            file: module_file(n),
            title: title(n),
            depth: depth[n.as_str()],
        })
        .collect();
    let not_reached = crate::stdlib::mechanisms()
        .map(|m| format!("attention.{m}"))
        .filter(|m| !names.contains(m))
        .collect();
    Ok(Taxonomy {
        note: NOTE,
        root: ROOT.to_string(),
        nodes,
        edges,
        not_reached,
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

/// The taxonomy as an SVG picture: one row per depth from the root, nodes linked to their
/// files, edges labelled by their rules and coloured by class. Deterministic bytes.
pub fn svg(t: &Taxonomy) -> String {
    const W: f64 = 240.0; // node width
    const H: f64 = 44.0; // node height
    const GAP_X: f64 = 120.0;
    const ROW: f64 = 220.0;
    const MARGIN: f64 = 30.0;
    const TOP: f64 = 70.0;
    let mut rows: BTreeMap<usize, Vec<&Node>> = BTreeMap::new();
    for n in &t.nodes {
        rows.entry(n.depth).or_default().push(n);
    }
    let widest = rows.values().map(|r| r.len()).max().unwrap_or(1) as f64;
    let width = MARGIN * 2.0 + widest * W + (widest - 1.0) * GAP_X;
    let height = TOP + rows.len() as f64 * ROW + 60.0;
    let mut at: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (depth, row) in &rows {
        let row_w = row.len() as f64 * W + (row.len() as f64 - 1.0) * GAP_X;
        let x0 = (width - row_w) / 2.0;
        for (i, n) in row.iter().enumerate() {
            at.insert(
                n.name.as_str(),
                (x0 + i as f64 * (W + GAP_X), TOP + *depth as f64 * ROW),
            );
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
    for e in &t.edges {
        let (Some(&(fx, fy)), Some(&(tx, ty))) = (at.get(e.from.as_str()), at.get(e.to.as_str()))
        else {
            continue;
        };
        let (x1, y1, x2, y2) = if ty > fy {
            (fx + W / 2.0, fy + H, tx + W / 2.0, ty)
        } else {
            // Same row: from one side to the other.
            let (a, b) = if tx > fx { (fx + W, tx) } else { (fx, tx + W) };
            (a, fy + H / 2.0, b, ty + H / 2.0)
        };
        let colour = class_colour(e.class);
        let _ = writeln!(
            s,
            "<a xlink:href=\"{}\"><line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" \
             stroke=\"{colour}\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>",
            escape(&e.derivation)
        );
        // The label sits in the first gap below the edge's start, where no node is.
        let mut label = edge_lines(e);
        label.push(format!("({})", e.class));
        let my = if y2 > y1 {
            y1 + (ROW - H) / 2.0
        } else {
            y1 - 10.0
        };
        let mx = if y2 > y1 {
            x1 + (x2 - x1) * (my - y1) / (y2 - y1)
        } else {
            (x1 + x2) / 2.0
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
             height=\"{H:.1}\" rx=\"8.0\" fill=\"#f4f4f0\" stroke=\"#333\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#666\" text-anchor=\"middle\">{}</text></a>",
            escape(&n.file),
            escape(&n.title),
            x + W / 2.0,
            y + 19.0,
            escape(short(&n.name)),
            x + W / 2.0,
            y + 34.0,
            escape(&n.file)
        );
    }
    let legend_y = height - 24.0;
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
