//! The report of a sweep (`diagc sweep report`) or of a comparison (`diagc compare`): one
//! self-contained HTML page (inline CSS and SVG; no script, no link, no network reference) and
//! the figures as standalone SVG documents, from a [`ReportInput`] gathered beforehand, so that
//! rendering reads no file.
//!
//! The page, in order: title and description; the flags (warnings) a reader must see; Figure 2;
//! Figure 4; the aggregate table per model; the learning-rate isolation plots; the validation
//! curves; every run; the failures with their errors; each mechanism's diagram; provenance.
//!
//! The markup is also well-formed XML (void elements closed, only XML's entities), so that tests
//! parse it. Every string that comes from the input is escaped. SVG inlined in the page loses its
//! XML prolog and `xmlns` attributes (HTML5 does not need them), its ids are prefixed and its
//! `<style>` rules scoped to it, so that two drawings on one page cannot restyle each other.

use super::figures::{self, Figure, esc, fmt_count, trim_num};
use super::{MechClass, ReportInput, ResultRow, Stage, Status};
use crate::error::Error;
use std::fmt::Write as _;

/// A rendered report.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The page.
    pub html: String,
    /// Every figure as a standalone SVG document, by file stem (`fig2-perplexity`,
    /// `fig4-cost`, `lr-isolation`, `valid-curves`).
    pub figures: Vec<(String, String)>,
}

/// Renders the page and the figures it shows.
pub fn render(input: &ReportInput) -> Result<Report, Error> {
    let figs: Vec<Figure> = figures::all(input)
        .into_iter()
        .filter(|f| shown(input, &f.stem))
        .collect();
    let html = page(input, &figs);
    Ok(Report {
        html,
        figures: figs.into_iter().map(|f| (f.stem, f.svg)).collect(),
    })
}

/// Whether the page has the figure `stem`. Figure 2 and the curves always (they say when
/// there is no data yet); Figure 4 when there are timing records or a reference to time
/// against (a sweep with a timing phase); the learning-rate plots when a model was tuned or has
/// stage A runs. So a comparison of run directories shows neither of the last two.
pub fn shown(input: &ReportInput, stem: &str) -> bool {
    match stem {
        figures::FIG4 => !input.timing.is_empty() || input.reference.is_some(),
        figures::LR => !input.choices.is_empty() || input.rows.iter().any(|r| r.stage == Stage::A),
        _ => true,
    }
}

/// A figure (or any SVG) as PNG, at twice its size, with resvg.
pub fn png(svg: &str) -> Result<Vec<u8>, Error> {
    crate::render::png::render(svg, 2.0).map_err(Error::from)
}

/// Draws the mechanism defined in `text` (shown as `name`): the diagram named like the file, else
/// the file's one diagram that no other uses. Its `use`s resolve in the stdlib only. `Err` says
/// why it could not be drawn.
pub fn mechanism_drawing(name: &str, text: &str) -> Result<String, String> {
    let o = crate::session::check_text(name, text);
    if let Some(d) = o.checked.diagnostics.first() {
        return Err(format!(
            "it does not check here: {}{}",
            d.message,
            if o.checked.diagnostics.len() > 1 {
                format!(" (and {} more)", o.checked.diagnostics.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    let program = &o.checked.program;
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let base = base.strip_suffix(".diag").unwrap_or(base);
    let base = base.rsplit('.').next().unwrap_or(base);
    let d = program
        .diagram(base)
        .or_else(|| crate::render::default_diagram(program, crate::source::FileId(0)))
        .ok_or_else(|| "no diagram to draw".to_string())?;
    crate::render::draw(program, d, &crate::render::DrawOptions::default())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Inline SVG

/// `svg` prepared for inlining in the page under the id `id`: no XML prolog, comments,
/// DOCTYPE or `xmlns` attributes; `xlink:href` as `href`; ids prefixed with `id-`; `<style>`
/// rules scoped to `#id`; the root sized by CSS (its `viewBox` kept). `Err` for a document that
/// holds a script or foreign content, which the page will not inline.
pub fn inline_svg(svg: &str, id: &str) -> Result<String, String> {
    let lower = svg.to_ascii_lowercase();
    for bad in [
        "<script",
        "<foreignobject",
        "<iframe",
        "javascript:",
        " onload",
        " onclick",
    ] {
        if lower.contains(bad) {
            return Err(format!(
                "the drawing holds `{}`; it is not shown",
                bad.trim()
            ));
        }
    }
    let Some(start) = lower.find("<svg") else {
        return Err("not an SVG document".into());
    };
    let mut s = svg[start..].to_string();
    // Drop comments.
    while let Some(i) = s.find("<!--") {
        let end = s[i..].find("-->").map_or(s.len(), |j| i + j + 3);
        s.replace_range(i..end, "");
    }
    // Namespaces: every `xmlns="..."` and `xmlns:p="..."`.
    s = remove_attrs(&s, |name| name == "xmlns" || name.starts_with("xmlns:"));
    s = s.replace("xlink:href=", "href=");
    // Ids and references to them.
    s = prefix_ids(&s, id);
    s = scope_styles(&s, id);
    // The root: its own id and class, no fixed size (a viewBox from the size if it has none).
    let end = s.find('>').ok_or("an unterminated <svg> tag")?;
    let root = &s[..end];
    let dim = |name: &str| -> Option<String> { attr(root, name) };
    let (w, h) = (dim("width"), dim("height"));
    let mut new_root = remove_attrs(root, |n| n == "width" || n == "height" || n == "id");
    if attr(root, "viewBox").is_none()
        && let (Some(w), Some(h)) = (&w, &h)
    {
        let _ = write!(new_root, " viewBox=\"0 0 {} {}\"", esc(w), esc(h));
    }
    let _ = write!(new_root, " id=\"{}\" role=\"img\"", esc(id));
    s.replace_range(..end, &new_root);
    Ok(s)
}

/// The value of attribute `name` in a tag's text.
fn attr(tag: &str, name: &str) -> Option<String> {
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    let j = tag[i..].find('"')?;
    Some(tag[i..i + j].to_string())
}

/// `text` without the attributes (`name="..."`, double-quoted) whose name `drop` picks.
fn remove_attrs(text: &str, drop: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut in_tag = false;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            in_tag = true;
        } else if c == '>' {
            in_tag = false;
        }
        if in_tag && c.is_whitespace() {
            // An attribute may start after this space.
            let after = rest[c.len_utf8()..].trim_start();
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, ':' | '-' | '_'))
                .collect();
            if !name.is_empty()
                && after[name.len()..].starts_with("=\"")
                && drop(&name)
                && let Some(close) = after[name.len() + 2..].find('"')
            {
                let consumed = rest.len() - after.len() + name.len() + 2 + close + 1;
                rest = &rest[consumed..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Prefixes every `id="x"` with `p-`, and the references `url(#x)` and `href="#x"`.
fn prefix_ids(s: &str, p: &str) -> String {
    let mut ids: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(i) = s[at..].find(" id=\"") {
        let start = at + i + 5;
        let Some(j) = s[start..].find('"') else { break };
        ids.push(s[start..start + j].to_string());
        at = start + j;
    }
    if ids.is_empty() {
        return s.to_string();
    }
    let mut out = s.to_string();
    for id in &ids {
        let new = format!("{p}-{id}");
        out = out
            .replace(&format!(" id=\"{id}\""), &format!(" id=\"{new}\""))
            .replace(&format!("url(#{id})"), &format!("url(#{new})"))
            .replace(&format!("href=\"#{id}\""), &format!("href=\"#{new}\""));
    }
    out
}

/// Every `<style>` element's rules scoped to `#id`; at-rules (`@import`, `@font-face`,
/// `@media`) are dropped.
fn scope_styles(s: &str, id: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("<style") {
        let Some(open_end) = rest[i..].find('>').map(|j| i + j + 1) else {
            break;
        };
        let Some(close) = rest[open_end..].find("</style>").map(|j| open_end + j) else {
            break;
        };
        out.push_str(&rest[..open_end]);
        out.push_str(&scope_css(&rest[open_end..close], id));
        out.push_str("</style>");
        rest = &rest[close + "</style>".len()..];
    }
    out.push_str(rest);
    out
}

fn scope_css(css: &str, id: &str) -> String {
    let mut out = String::new();
    let mut rest = css;
    while let Some(open) = rest.find('{') {
        let selectors = rest[..open].trim();
        // The block, braces balanced.
        let mut depth = 0;
        let mut end = rest.len();
        for (k, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &rest[open..end];
        if !selectors.starts_with('@') && !body.contains("url(") {
            let scoped: Vec<String> = selectors
                .split(',')
                .map(|sel| format!("#{id} {}", sel.trim()))
                .collect();
            let _ = writeln!(out, "{} {}", scoped.join(", "), body);
        }
        rest = &rest[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Formats

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    match v {
        Some(x) if x.is_finite() => f(x),
        _ => "–".into(),
    }
}

fn ppl(v: f64) -> String {
    format!("{v:.2}")
}

fn bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.0} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

fn duration(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "–".into();
    }
    let t = s.round() as u64;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if t < 3600 {
        format!("{}m {:02}s", t / 60, t % 60)
    } else {
        format!("{}h {:02}m", t / 3600, (t % 3600) / 60)
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Single => "single",
        Stage::A => "A",
        Stage::B => "B",
        Stage::Timing => "timing",
    }
}

fn first_line(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let mut t: String = line.chars().take(n).collect();
    if line.chars().count() > n || s.lines().nth(1).is_some() {
        t.push('…');
    }
    t
}

fn class_of_mech(input: &ReportInput, mech: &str) -> MechClass {
    input
        .mechanisms
        .iter()
        .find(|m| m.name == mech)
        .map(|m| m.class)
        .unwrap_or_else(|| super::compare::class_of(mech, None))
}

fn swatch(c: MechClass) -> String {
    let (r, g, b) = figures::class_colour(c);
    format!(
        "<span class=\"swatch\" style=\"background:#{r:02x}{g:02x}{b:02x}\"></span>{}",
        figures::class_name(c)
    )
}

// ---------------------------------------------------------------------------------------------
// The page

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef0f3; color: #1d2026; font: 14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 22px 30px 60px; background: #ffffff; }
h1 { font-size: 26px; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e2e5ea; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.desc { margin: 0 0 6px; color: #333; }
p.counts { margin: 0; color: #555; }
nav.toc { margin: 14px 0 0; font-size: 13px; }
nav.toc a { color: #2a5db0; text-decoration: none; margin-right: 14px; white-space: nowrap; }
section.flags { margin-top: 18px; border: 1px solid #eac46a; border-left: 6px solid #e09b00; background: #fff8e6; padding: 10px 16px; }
section.flags h2 { margin: 0 0 4px; padding: 0; border: none; font-size: 17px; color: #7a4e00; }
section.flags ul { margin: 4px 0; padding-left: 20px; }
section.flags li { margin: 2px 0; }
section.noflags { margin-top: 18px; color: #1e7b34; }
figure { margin: 0; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { font-size: 13px; color: #444; margin-top: 6px; max-width: 980px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e7eb; text-align: left; white-space: nowrap; vertical-align: top; }
th { background: #f3f5f8; font-weight: bold; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f9fafb; }
td.err { white-space: normal; min-width: 180px; max-width: 320px; color: #8a1c14; }
td.best { font-weight: bold; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.edge { color: #b3261e; font-weight: bold; }
.st-done { color: #1e7b34; }
.st-failed, .st-diverged { color: #b3261e; font-weight: bold; }
.st-running { color: #2a5db0; }
.st-interrupted, .st-pending, .st-waiting { color: #8a6d00; }
.muted { color: #777; }
pre.error { white-space: pre-wrap; word-break: break-word; background: #fbeceb; border-left: 4px solid #b3261e; padding: 8px 10px; font-size: 12px; margin: 4px 0 12px; }
.lr-grid { display: block; }
.mechs { display: grid; align-items: start; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 14px; }
.mech { border: 1px solid #e2e5ea; border-radius: 6px; padding: 8px 10px; background: #fcfcfd; }
.mech h3 { margin: 0 0 2px; font-size: 14px; }
.mech p { margin: 0 0 6px; font-size: 12px; color: #444; }
.mech svg { display: block; width: 100%; height: auto; max-height: 820px; }
table.kv td:first-child { font-weight: bold; color: #333; }
table.kv td { white-space: normal; word-break: break-all; }
"#;

struct Page {
    out: String,
}

impl Page {
    fn raw(&mut self, s: &str) {
        self.out.push_str(s);
    }
    fn text(&mut self, s: &str) {
        self.out.push_str(&esc(s));
    }
}

fn page(input: &ReportInput, figs: &[Figure]) -> String {
    let mut p = Page { out: String::new() };
    p.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    p.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>\n<title>");
    p.text(&format!("{}: diagc report", input.title));
    p.raw("</title>\n<style>");
    p.raw(CSS);
    p.raw("</style>\n</head>\n<body>\n<main>\n");
    header(&mut p, input, figs);
    flags(&mut p, input);
    let find = |stem: &str| figs.iter().find(|f| f.stem == stem);
    if let Some(f) = find(figures::FIG2) {
        figure(&mut p, "fig2", f);
    }
    if let Some(f) = find(figures::FIG4) {
        figure(&mut p, "fig4", f);
    }
    aggregate(&mut p, input);
    if let Some(f) = find(figures::LR) {
        figure(&mut p, "lr", f);
    }
    if let Some(f) = find(figures::CURVES) {
        figure(&mut p, "curves", f);
    }
    runs(&mut p, input);
    failures(&mut p, input);
    mechanisms(&mut p, input);
    provenance(&mut p, input);
    p.raw("</main>\n</body>\n</html>\n");
    p.out
}

fn header(p: &mut Page, input: &ReportInput, figs: &[Figure]) {
    p.raw("<header>\n<h1>");
    p.text(&input.title);
    p.raw("</h1>\n");
    if let Some(d) = &input.description {
        p.raw("<p class=\"desc\">");
        p.text(d);
        p.raw("</p>\n");
    }
    let mut counts: Vec<(Status, usize)> = Vec::new();
    for r in &input.rows {
        match counts.iter_mut().find(|(s, _)| *s == r.status) {
            Some(c) => c.1 += 1,
            None => counts.push((r.status, 1)),
        }
    }
    counts.sort();
    let parts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    p.raw("<p class=\"counts\">");
    p.text(&format!(
        "{} training run{}{}; {} model{} in the results; {} timing record{}.",
        input.rows.len(),
        if input.rows.len() == 1 { "" } else { "s" },
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        },
        input.aggregate.len(),
        if input.aggregate.len() == 1 { "" } else { "s" },
        input.timing.len(),
        if input.timing.len() == 1 { "" } else { "s" },
    ));
    p.raw("</p>\n<nav class=\"toc\">");
    let has = |stem: &str| figs.iter().any(|f| f.stem == stem);
    for (id, name) in [
        ("fig2", "Figure 2"),
        ("fig4", "Figure 4"),
        ("aggregate", "Results per model"),
        ("lr", "Learning rates"),
        ("curves", "Curves"),
        ("runs", "Every run"),
        ("failures", "Failures"),
        ("mechanisms", "Mechanisms"),
        ("provenance", "Provenance"),
    ] {
        if (id == "fig4" && !has(figures::FIG4)) || (id == "lr" && !has(figures::LR)) {
            continue;
        }
        let _ = write!(p.out, "<a href=\"#{id}\">{name}</a>");
    }
    p.raw("</nav>\n</header>\n");
}

fn flags(p: &mut Page, input: &ReportInput) {
    if input.flags.is_empty() {
        p.raw("<section class=\"noflags\" id=\"flags\">No warnings.</section>\n");
        return;
    }
    p.raw("<section class=\"flags\" id=\"flags\">\n<h2>");
    p.text(&format!(
        "{} warning{}",
        input.flags.len(),
        if input.flags.len() == 1 { "" } else { "s" }
    ));
    p.raw("</h2>\n<ul>\n");
    for f in &input.flags {
        p.raw("<li>");
        p.text(f);
        p.raw("</li>\n");
    }
    p.raw("</ul>\n</section>\n");
}

fn figure(p: &mut Page, id: &str, f: &Figure) {
    let _ = write!(p.out, "<section id=\"{id}\">\n<h2>");
    p.text(&f.title);
    p.raw("</h2>\n<figure>\n");
    match inline_svg(&figures::untitled(&f.svg), &format!("svg-{}", f.stem)) {
        Ok(svg) => p.raw(&svg),
        Err(e) => {
            p.raw("<p class=\"muted\">");
            p.text(&e);
            p.raw("</p>");
        }
    }
    p.raw("\n<figcaption>");
    p.text(&f.caption);
    let _ = write!(
        p.out,
        " <span class=\"muted\">(File: {}.svg.)</span>",
        esc(&f.stem)
    );
    p.raw("</figcaption>\n</figure>\n</section>\n");
}

fn aggregate(p: &mut Page, input: &ReportInput) {
    p.raw("<section id=\"aggregate\">\n<h2>Results per model</h2>\n");
    if input.aggregate.is_empty() {
        p.raw("<p class=\"muted\">No model yet.</p>\n</section>\n");
        return;
    }
    let any_swept = input.aggregate.iter().any(|a| !a.model.swept.is_empty());
    // The best mean test perplexity at each depth is shown in bold.
    let best_at = |layers: usize| -> Option<f64> {
        input
            .aggregate
            .iter()
            .filter(|a| a.model.layers == layers)
            .filter_map(|a| a.test_ppl.map(|s| s.mean))
            .filter(|v| v.is_finite())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
    };
    p.raw("<div class=\"scroll\">\n<table class=\"aggregate\">\n<thead><tr><th>mechanism</th><th>class</th><th class=\"num\">layers</th>");
    if any_swept {
        p.raw("<th>settings</th>");
    }
    p.raw(
        "<th class=\"num\">LR scale</th><th class=\"num\">parameters</th><th class=\"num\">n / expected</th>\
         <th class=\"num\">test ppl (mean ± sd)</th><th class=\"num\">min</th><th class=\"num\">max</th>\
         <th class=\"num\">valid ppl (mean)</th></tr></thead>\n<tbody>\n",
    );
    for a in &input.aggregate {
        let class = class_of_mech(input, &a.model.mech);
        p.raw("<tr><td>");
        p.text(&a.model.mech);
        p.raw("</td><td>");
        p.raw(&swatch(class));
        let _ = write!(p.out, "</td><td class=\"num\">{}</td>", a.model.layers);
        if any_swept {
            p.raw("<td>");
            p.text(&a.model.swept.join(" "));
            p.raw("</td>");
        }
        p.raw("<td class=\"num\">");
        p.text(&opt(a.lr_scale, |v| trim_num(v, 3)));
        if a.lr_at_edge {
            p.raw(" <span class=\"edge\" title=\"the chosen scale is the smallest or largest of the grid: widen the grid\">(edge of grid)</span>");
        }
        p.raw("</td><td class=\"num\">");
        p.text(&opt(a.parameters.map(|x| x as f64), fmt_count));
        let _ = write!(
            p.out,
            "</td><td class=\"num\">{} / {}</td>",
            a.n, a.expected
        );
        let best = best_at(a.model.layers);
        match a.test_ppl {
            Some(s) => {
                let is_best = best.is_some_and(|b| b == s.mean);
                let _ = write!(
                    p.out,
                    "<td class=\"num{}\">{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                    if is_best { " best" } else { "" },
                    ppl(s.mean),
                    if s.n > 1 {
                        format!(" ± {}", ppl(s.sd))
                    } else {
                        String::new()
                    },
                    ppl(s.min),
                    ppl(s.max)
                );
            }
            None => {
                p.raw("<td class=\"num\">–</td><td class=\"num\">–</td><td class=\"num\">–</td>")
            }
        }
        let _ = writeln!(
            p.out,
            "<td class=\"num\">{}</td></tr>",
            opt(a.valid_ppl.map(|s| s.mean), ppl)
        );
    }
    p.raw("</tbody>\n</table>\n</div>\n<p class=\"muted\">Bold: the lowest mean test perplexity at its depth. n counts the finished runs with a test perplexity among the runs the results count (stage B, or single runs).</p>\n</section>\n");
}

fn status_cell(s: Status) -> String {
    format!("<td class=\"st-{0}\">{0}</td>", s.as_str())
}

fn runs(p: &mut Page, input: &ReportInput) {
    p.raw("<section id=\"runs\">\n<h2>Every run</h2>\n");
    if input.rows.is_empty() {
        p.raw("<p class=\"muted\">No run yet.</p>\n</section>\n");
        return;
    }
    p.raw(
        "<div class=\"scroll\">\n<table class=\"runs\">\n<thead><tr><th>name</th><th>stage</th><th class=\"num\">seed</th>\
         <th class=\"num\">LR scale</th><th>status</th><th class=\"num\">valid ppl</th><th class=\"num\">test ppl</th>\
         <th class=\"num\">tokens/s</th><th class=\"num\">peak RSS</th><th class=\"num\">wall time</th><th>error</th></tr></thead>\n<tbody>\n",
    );
    for r in &input.rows {
        row(p, r);
    }
    p.raw("</tbody>\n</table>\n</div>\n<p class=\"muted\">valid ppl: the best validation perplexity; test ppl: of the best checkpoint.");
    if input
        .rows
        .iter()
        .any(|r| matches!(r.stage, Stage::A | Stage::B))
    {
        p.raw(
            " Stage A runs tune the learning rate; stage B runs repeat the chosen one over seeds.",
        );
    }
    p.raw("</p>\n</section>\n");
}

fn row(p: &mut Page, r: &ResultRow) {
    p.raw("<tr class=\"run\"><td class=\"name\">");
    p.text(&r.name);
    let _ = write!(
        p.out,
        "</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{}",
        stage_name(r.stage),
        r.seed,
        esc(&opt(r.lr_scale, |v| trim_num(v, 3))),
        status_cell(r.status)
    );
    let _ = write!(
        p.out,
        "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
        opt(r.best_valid_ppl, ppl),
        opt(r.test_ppl, ppl),
        opt(r.train_tokens_per_s, thousands),
        r.peak_rss_bytes.map_or("–".into(), bytes),
        opt(r.wall_time_s, duration),
    );
    match &r.error {
        Some(e) => {
            let _ = write!(
                p.out,
                "<td class=\"err\" title=\"{}\">{}</td>",
                esc(e),
                esc(&first_line(e, 90))
            );
        }
        None => p.raw("<td></td>"),
    }
    p.raw("</tr>\n");
}

fn failures(p: &mut Page, input: &ReportInput) {
    p.raw("<section id=\"failures\">\n<h2>Failures</h2>\n");
    let failed: Vec<&ResultRow> = input
        .rows
        .iter()
        .filter(|r| matches!(r.status, Status::Failed | Status::Diverged) || r.error.is_some())
        .collect();
    if failed.is_empty() {
        p.raw("<p class=\"muted\">No run failed.</p>\n</section>\n");
        return;
    }
    for r in failed {
        p.raw("<h3>");
        p.text(&format!("{} ({})", r.name, r.status.as_str()));
        p.raw("</h3>\n<pre class=\"error\">");
        p.text(r.error.as_deref().unwrap_or("(no error recorded)"));
        p.raw("</pre>\n");
    }
    p.raw("</section>\n");
}

fn mechanisms(p: &mut Page, input: &ReportInput) {
    p.raw("<section id=\"mechanisms\">\n<h2>Mechanisms</h2>\n");
    if input.mechanisms.is_empty() {
        p.raw("<p class=\"muted\">No mechanism recorded.</p>\n</section>\n");
        return;
    }
    p.raw("<div class=\"mechs\">\n");
    for (i, m) in input.mechanisms.iter().enumerate() {
        p.raw("<div class=\"mech\">\n<h3>");
        p.text(&m.name);
        p.raw("</h3>\n<p>");
        p.raw(&swatch(m.class));
        if let Some(s) = &m.summary {
            p.raw(" · ");
            p.text(s);
        }
        p.raw("</p>\n");
        let drawn = match &m.drawing {
            Ok(svg) => inline_svg(svg, &format!("mech-{i}")),
            Err(e) => Err(e.clone()),
        };
        match drawn {
            Ok(svg) => p.raw(&svg),
            Err(e) => {
                p.raw("<p class=\"muted\">Not drawn: ");
                p.text(&e);
                p.raw("</p>");
            }
        }
        p.raw("\n</div>\n");
    }
    p.raw("</div>\n</section>\n");
}

fn provenance(p: &mut Page, input: &ReportInput) {
    p.raw("<section id=\"provenance\">\n<h2>Provenance</h2>\n");
    if input.provenance.is_empty() {
        p.raw("<p class=\"muted\">None recorded.</p>\n</section>\n");
        return;
    }
    p.raw("<table class=\"kv\">\n<tbody>\n");
    for (k, v) in &input.provenance {
        p.raw("<tr><td>");
        p.text(k);
        p.raw("</td><td>");
        p.text(v);
        p.raw("</td></tr>\n");
    }
    p.raw("</tbody>\n</table>\n</section>\n");
}

// ---------------------------------------------------------------------------------------------
// Text tables

/// The aggregate table and the runs as plain text, for a terminal.
pub fn text_tables(input: &ReportInput) -> String {
    let mut out = String::new();
    let mut t = vec![vec![
        "mechanism".to_string(),
        "class".into(),
        "layers".into(),
        "settings".into(),
        "LR scale".into(),
        "params".into(),
        "n/exp".into(),
        "test ppl".into(),
        "min".into(),
        "max".into(),
        "valid ppl".into(),
    ]];
    for a in &input.aggregate {
        t.push(vec![
            a.model.mech.clone(),
            figures::class_name(class_of_mech(input, &a.model.mech)).into(),
            a.model.layers.to_string(),
            a.model.swept.join(" "),
            format!(
                "{}{}",
                opt(a.lr_scale, |v| trim_num(v, 3)),
                if a.lr_at_edge { " (edge)" } else { "" }
            ),
            opt(a.parameters.map(|x| x as f64), fmt_count),
            format!("{}/{}", a.n, a.expected),
            match a.test_ppl {
                Some(s) if s.n > 1 => format!("{} ± {}", ppl(s.mean), ppl(s.sd)),
                Some(s) => ppl(s.mean),
                None => "–".into(),
            },
            opt(a.test_ppl.map(|s| s.min), ppl),
            opt(a.test_ppl.map(|s| s.max), ppl),
            opt(a.valid_ppl.map(|s| s.mean), ppl),
        ]);
    }
    if !input.aggregate.iter().any(|a| !a.model.swept.is_empty()) {
        for r in &mut t {
            r.remove(3);
        }
    }
    out.push_str(&columns(&t));
    out.push('\n');
    let mut t = vec![vec![
        "run".to_string(),
        "seed".into(),
        "status".into(),
        "valid ppl".into(),
        "test ppl".into(),
        "tokens/s".into(),
        "error".into(),
    ]];
    for r in &input.rows {
        t.push(vec![
            r.name.clone(),
            r.seed.to_string(),
            r.status.as_str().into(),
            opt(r.best_valid_ppl, ppl),
            opt(r.test_ppl, ppl),
            opt(r.train_tokens_per_s, thousands),
            r.error
                .as_deref()
                .map(|e| first_line(e, 60))
                .unwrap_or_default(),
        ]);
    }
    out.push_str(&columns(&t));
    for f in &input.flags {
        let _ = writeln!(out, "warning: {f}");
    }
    out
}

/// Left-aligned columns separated by two spaces.
fn columns(t: &[Vec<String>]) -> String {
    let n = t.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|c| {
            t.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in t {
        let mut line = String::new();
        for (c, s) in r.iter().enumerate() {
            line.push_str(s);
            if c + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[c] - s.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inlining_strips_namespaces_and_scopes_styles() {
        let svg = "<?xml version=\"1.0\"?>\n<!-- c --><svg width=\"10\" height=\"20\" xmlns=\"http://www.w3.org/2000/svg\" \
                   xmlns:xlink=\"http://www.w3.org/1999/xlink\"><style>text { fill: red; }\n.a, .b { x: 1 }\n@import url(x);</style>\
                   <defs><marker id=\"m\"/></defs><path marker-end=\"url(#m)\"/><use xlink:href=\"#m\"/></svg>";
        let s = inline_svg(svg, "p").unwrap();
        assert!(!s.contains("http"), "{s}");
        assert!(!s.contains("<?xml") && !s.contains("<!--"), "{s}");
        assert!(s.starts_with("<svg viewBox=\"0 0 10 20\" id=\"p\""), "{s}");
        assert!(s.contains("#p text { fill: red; }"), "{s}");
        assert!(s.contains("#p .a, #p .b"), "{s}");
        assert!(!s.contains("@import"), "{s}");
        assert!(
            s.contains("id=\"p-m\"") && s.contains("url(#p-m)") && s.contains("href=\"#p-m\""),
            "{s}"
        );
        assert!(inline_svg("<svg><script>x</script></svg>", "q").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(duration(75.0), "1m 15s");
        assert_eq!(duration(7300.0), "2h 01m");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}
