//! Loading what the rewrite commands work on: rule books (the stdlib's and a user's files),
//! the term of one diagram of a file, `RULE[@SITE]` arguments, and pictures of rewrite steps.

use super::rule::{RuleBook, Site, Step};
use super::term::Term;
use crate::error::Error;
use crate::ir::Program;
use crate::session;
use std::path::{Path, PathBuf};

/// The stdlib's rules and those of `files`.
pub fn load_rules(files: &[PathBuf]) -> Result<RuleBook, Error> {
    let mut book = RuleBook::stdlib()?;
    for f in files {
        let text = session::read_text(f)?;
        book.add_text(&f.display().to_string(), &text)?;
    }
    Ok(book)
}

/// Checks `file` and returns the term of one of its diagrams (the named one, else the only or
/// last one defined in the file itself).
pub fn load_term(file: &Path, diagram: Option<&str>) -> Result<Term, Error> {
    let o = session::check_path(file)?.ok_or_error(format!("{} does not check", file.display()))?;
    let p = &o.checked.program;
    term_of(p, diagram, &file.display().to_string())
}

/// The term of diagram `diagram` of `p` (else the last one defined in its root file).
pub fn term_of(p: &Program, diagram: Option<&str>, shown: &str) -> Result<Term, Error> {
    let root = crate::source::FileId(0);
    let d = match diagram {
        Some(n) => p.diagram(n).ok_or_else(|| {
            let names: Vec<&str> = p.diagrams.iter().map(|d| d.name.as_str()).collect();
            Error::Usage(format!(
                "no diagram `{n}` in {shown}; there are: {}",
                names.join(", ")
            ))
        })?,
        None => p
            .diagrams
            .iter()
            .rev()
            .find(|d| d.span.file == root)
            .ok_or_else(|| Error::Rewrite(format!("{shown} defines no diagram")))?,
    };
    Term::from_diagram(d, &p.axes)
}

/// Parses `RULE[@SITE]`.
pub fn parse_apply(s: &str) -> (String, Option<Site>) {
    match s.split_once('@') {
        Some((r, site)) => (r.to_string(), Some(Site::parse(site))),
        None => (s.to_string(), None),
    }
}

/// Draws a step as an SVG: before and after, the rewritten wire highlighted on both sides.
pub fn draw_step(step: &Step) -> Result<String, Error> {
    let side =
        |t: &Term| -> Result<(Program, String), Error> { Ok((t.recheck()?.1, t.name.clone())) };
    let (pb, nb) = side(&step.before)?;
    let (pa, na) = side(&step.after)?;
    let db = pb
        .diagram(&nb)
        .ok_or_else(|| Error::Rewrite("lost diagram".into()))?;
    let da = pa
        .diagram(&na)
        .ok_or_else(|| Error::Rewrite("lost diagram".into()))?;
    let root = step.matched_name.clone().into_iter().collect::<Vec<_>>();
    let hb = crate::render::Highlight::by_wire_names(db, &root).unwrap_or_default();
    let ha = crate::render::Highlight::by_wire_names(da, &root).unwrap_or_default();
    crate::render::draw_step((&pb, db, &hb), (&pa, da, &ha), &Default::default())
        .map_err(|e| Error::Rewrite(format!("{e:?}")))
}
