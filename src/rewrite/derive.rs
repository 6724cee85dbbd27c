//! Derivations: a start diagram, a sequence of rule applications and the expected end, replayed
//! and checked step by step (`diagc derive`).
//!
//! The file format, one directive per line, `#` starting a comment:
//!
//! ```text
//! start attention.bahdanau        # a stdlib module or a .diag path; MODULE:DIAGRAM picks one
//! step additive_is_pair_learner@s # RULE or RULE@SITE, as in `diagc rewrite --apply`
//! end attention.m1                # the result must equal this diagram up to wire names
//! ```
//!
//! Every step must apply at its site and its result must type (the rewrite re-checks it). An
//! `equal` step is also compared numerically with the diagram before it on the CPU interpreter
//! whenever both have the same parameter shapes (equalities of function classes, such as linear
//! after linear, reparametrise and are not compared). The end is compared by canonical text:
//! both diagrams printed with every name that is not an input erased.

use super::rule::{self, RuleBook, Site, Step};
use super::term::Term;
use super::verify::{self, Agreement};
use crate::error::Error;
use crate::ir::RuleClass;
use std::path::Path;

/// The derivations shipped in `stdlib/derivations/`: `(file name, text)`.
pub const STDLIB: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/stdlib_derivations.rs"));

#[derive(Clone, Debug)]
pub struct Derivation {
    pub start: String,
    pub steps: Vec<(String, Option<Site>, usize)>,
    pub end: Option<(String, usize)>,
}

/// Parses a derivation; errors name the line.
pub fn parse(text: &str) -> Result<Derivation, Error> {
    let mut start = None;
    let mut steps = Vec::new();
    let mut end = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let n = i + 1;
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(Error::Rewrite(format!(
                "line {n}: expected `{word} ONE-ARGUMENT`"
            )));
        }
        match word {
            "start" if start.is_none() => start = Some(rest.to_string()),
            "start" => return Err(Error::Rewrite(format!("line {n}: a second `start`"))),
            "step" if start.is_some() && end.is_none() => {
                let (r, s) = super::input::parse_apply(rest);
                steps.push((r, s, n));
            }
            "end" if start.is_some() && end.is_none() => end = Some((rest.to_string(), n)),
            "step" | "end" => {
                return Err(Error::Rewrite(format!(
                    "line {n}: `{word}` must come after `start` and before `end`"
                )));
            }
            other => {
                return Err(Error::Rewrite(format!(
                    "line {n}: unknown directive `{other}` (expected start, step or end)"
                )));
            }
        }
    }
    let start = start.ok_or_else(|| Error::Rewrite("a derivation needs a `start` line".into()))?;
    Ok(Derivation { start, steps, end })
}

/// Loads `MODULE[:DIAGRAM]` (a stdlib module) or `PATH[:DIAGRAM]` (a .diag file).
pub fn load_diagram(spec: &str) -> Result<Term, Error> {
    let (what, diagram) = match spec.rsplit_once(':') {
        Some((w, d)) => (w, Some(d)),
        None => (spec, None),
    };
    if what.ends_with(".diag") {
        return super::input::load_term(Path::new(what), diagram);
    }
    let (path, text) = crate::stdlib::module(what).ok_or_else(|| {
        Error::Rewrite(format!("no stdlib module `{what}` (and not a .diag path)"))
    })?;
    let o = crate::session::check_text(&format!("<stdlib>/{path}"), text);
    if !o.checked.is_ok() {
        return Err(Error::Rewrite(format!(
            "stdlib module `{what}` does not check"
        )));
    }
    super::input::term_of(&o.checked.program, diagram, what)
}

/// The text of a term with every non-input name erased, its nodes in structural order, its
/// axis declarations sorted and its unused hyperparameters and axes dropped, for comparisons
/// up to naming and the numbering of parameters.
pub fn canonical(t: &Term) -> String {
    let mut c = t.clone();
    c.name = "canonical".into();
    for n in c.nodes.iter_mut() {
        if matches!(n.kind, super::term::NodeKind::Box { .. }) {
            for name in n.names.iter_mut() {
                *name = None;
            }
        }
    }
    c.sort_structurally();
    // Hyperparameters the body no longer uses (a rule that removed `tanh(x / cap) * cap`)
    // are not part of what the diagram computes.
    let body = {
        let mut b = c.clone();
        b.hypers.clear();
        b.to_text()
    };
    let words: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with("axis "))
        .flat_map(|l| l.split(|ch: char| !(ch.is_alphanumeric() || ch == '_')))
        .collect();
    c.hypers.retain(|h| words.contains(h.name.as_str()));
    // Axis declarations in sorted order: a rule's new axis is declared last, the file it is
    // compared with may declare it anywhere. Axes that neither the body nor a kept axis uses
    // (`src` after a rewrite removed the key side's rename) are dropped.
    let text = c.to_text();
    let (axes, rest): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with("axis "));
    let name_of = |l: &str| {
        l.trim_start_matches("axis ")
            .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .next()
            .unwrap_or("")
            .to_string()
    };
    let mut used: std::collections::BTreeSet<String> =
        words.iter().map(|w| w.to_string()).collect();
    loop {
        let before = used.len();
        for l in &axes {
            if used.contains(&name_of(l)) {
                for w in l.split(|ch: char| !(ch.is_alphanumeric() || ch == '_')) {
                    used.insert(w.to_string());
                }
            }
        }
        if used.len() == before {
            break;
        }
    }
    let mut axes: Vec<&str> = axes
        .into_iter()
        .filter(|l| used.contains(&name_of(l)))
        .collect();
    axes.sort_unstable();
    let mut out = axes.join("\n");
    out.push('\n');
    out.push_str(&rest.join("\n"));
    out.push('\n');
    out
}

/// One checked step.
pub struct Checked {
    pub step: Step,
    /// For `equal` steps: the numeric comparison with the diagram before.
    pub numeric: Option<Agreement>,
}

/// Replays a derivation. `on_step` sees each step as it is checked.
pub fn replay(
    d: &Derivation,
    book: &RuleBook,
    on_step: &mut dyn FnMut(usize, &Checked),
) -> Result<Term, Error> {
    let mut term = load_diagram(&d.start)?;
    for (i, (rule_name, site, line)) in d.steps.iter().enumerate() {
        let step = rule::apply(book, &term, rule_name, site.as_ref())
            .map_err(|e| Error::Rewrite(format!("step {} (line {line}): {e}", i + 1)))?;
        let numeric = if step.class == RuleClass::Equal {
            let a = verify::compare(&step.before, &step.after)
                .map_err(|e| Error::Rewrite(format!("step {} (line {line}): {e}", i + 1)))?;
            if let Agreement::Agree(err) = a
                && err > verify::TOLERANCE
            {
                return Err(Error::Rewrite(format!(
                    "step {} (line {line}): `{rule_name}` is an equality, but the diagrams \
                     before and after differ numerically (worst relative error {err:.3e})",
                    i + 1
                )));
            }
            Some(a)
        } else {
            None
        };
        let checked = Checked { step, numeric };
        on_step(i + 1, &checked);
        term = checked.step.after;
    }
    if let Some((end, line)) = &d.end {
        let want = load_diagram(end).map_err(|e| Error::Rewrite(format!("line {line}: {e}")))?;
        if canonical(&want) != canonical(&term) {
            return Err(Error::Rewrite(format!(
                "line {line}: the result is not `{end}` up to names.\nresult:\n{}\nexpected:\n{}",
                canonical(&term),
                canonical(&want)
            )));
        }
    }
    Ok(term)
}
