//! `diagc enumerate`: exhaustive recombination of the generators of `stdlib/anatomy/spec.diag`
//! into attention mechanisms, redundancy removal by a canonical form modulo `equal` rules, and
//! the files `m00.diag` .. `m13.diag`.
//!
//! The recombination (the project's reconstruction; see the spec file): for every generator G,
//! the one-generator mechanism G applied to three projections of the layer input; then for every
//! outer generator O, slot s in (q, k, v) and inner generator I, the mechanism O whose slot s is
//! projected from the output of the one-generator mechanism I instead of the layer input. A
//! mechanism whose inner generator fed all three slots would be a deeper model and is not
//! generated. Each candidate is inlined, normalised by a fixed set of simplifying `equal` rules
//! applied until none matches (bounded), and dropped if its canonical text equals an earlier
//! one's.

use super::derive::canonical;
use super::rule::{self, RuleBook};
use super::term::Term;
use crate::error::Error;

/// The simplifying equalities used for the canonical form (each strictly shrinks the term).
pub const NORMALISE: &[&str] = &[
    "rename_inverse",
    "rename_rename",
    "split_merge",
    "merge_after_rename",
];

/// At most this many generators in a user's set (16 give 784 candidates, about a minute).
pub const MAX_GENERATORS: usize = 16;

/// At most this many normalising rewrites per candidate.
const MAX_STEPS: usize = 64;

/// One enumerated mechanism.
#[derive(Clone, Debug)]
pub struct Mechanism {
    /// `m00`, `m01`...
    pub name: String,
    /// How it was built, such as `L`, `D`, `D[k <- L]`.
    pub recipe: String,
    /// `linear only`, `dot-product only` or `both` for the stdlib's set; `D only`, `D and L`
    /// for a user's.
    pub colour: String,
    pub term: Term,
}

const SLOTS: [&str; 3] = ["q", "k", "v"];

/// A generator set: the diagrams that generate (each `(q, k, v: [tok, head, dk]) -> [tok, head,
/// dk]`, by letter), and the text that makes them visible to a candidate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `(letter, diagram)`, in the order of enumeration.
    pub generators: Vec<(String, String)>,
    /// Put before each candidate: `use anatomy.spec` for the stdlib's set, the spec file's own
    /// text for a user's.
    prelude: String,
    /// The spec file as shown in the generated files; `None` for the stdlib's.
    pub source: Option<String>,
}

impl Spec {
    /// The project's reconstruction of the paper's generator set (stdlib/anatomy/spec.diag):
    /// L then D.
    pub fn stdlib() -> Spec {
        Spec {
            generators: vec![("L".into(), "gen_l".into()), ("D".into(), "gen_d".into())],
            prelude: "use anatomy.spec\n".into(),
            source: None,
        }
    }

    /// A user's generator set: every diagram of `file` named `gen_NAME` is a generator, with
    /// the letter NAME in capitals, in the file's order. The file is checked first (its
    /// diagnostics are the error); a candidate that does not type (a generator of the wrong
    /// signature) is an error naming the candidate.
    pub fn load(file: &std::path::Path) -> Result<Spec, Error> {
        let o = crate::session::check_path(file)?.ok_or_error(format!(
            "the generator spec {} does not check",
            file.display()
        ))?;
        let root = crate::source::FileId(0);
        let mut generators = Vec::new();
        for d in &o.checked.program.diagrams {
            if d.span.file != root {
                continue;
            }
            if d.name == "mech" {
                return Err(Error::Usage(format!(
                    "{}: a spec may not define a diagram `mech` (the enumerator's candidates \
                     are called that)",
                    file.display()
                )));
            }
            let Some(letter) = d.name.strip_prefix("gen_").filter(|l| !l.is_empty()) else {
                continue;
            };
            if d.inputs.len() != 3 || d.outputs.len() != 1 || !d.hypers.is_empty() {
                return Err(Error::Usage(format!(
                    "{}: the generator `{}` must take (q, k, v: [tok, head, dk]) and return one \
                     [tok, head, dk], without hyperparameters",
                    file.display(),
                    d.name
                )));
            }
            generators.push((letter.to_uppercase(), d.name.clone()));
        }
        if generators.len() > MAX_GENERATORS {
            return Err(Error::Usage(format!(
                "{} defines {} generators; the enumerator takes at most {MAX_GENERATORS} (n \
                 generators give n + 3 n^2 candidates, each checked and normalised)",
                file.display(),
                generators.len()
            )));
        }
        if generators.is_empty() {
            return Err(Error::Usage(format!(
                "{} defines no generator: a generator is a diagram named gen_NAME(q: [tok, \
                 head, dk], k: [tok, head, dk], v: [tok, head, dk]) -> [tok, head, dk]",
                file.display()
            )));
        }
        let text = crate::session::read_text(file)?;
        Ok(Spec {
            generators,
            prelude: text,
            source: Some(file.display().to_string()),
        })
    }

    /// The colour class of a recipe from its outer and inner generators: for the stdlib's set
    /// the paper's names (`linear only`, `dot-product only`, `both`), else `D only`, `D and L`.
    fn colour(&self, outer: &str, inner: &str) -> String {
        if self.source.is_none() {
            return match (outer, inner) {
                ("L", "L") => "linear only",
                ("D", "D") => "dot-product only",
                _ => "both",
            }
            .into();
        }
        if outer == inner {
            format!("{outer} only")
        } else {
            format!("{outer} and {inner}")
        }
    }
}

fn proj(src: &str) -> String {
    format!("split[dm -> head, dk](linear[dm -> dm]({src}))")
}

/// The source of one candidate, calling the spec's generators.
fn candidate(prelude: &str, outer: &str, inner: Option<(usize, &str)>) -> String {
    let mut body = String::new();
    if let Some((_, g)) = inner {
        body.push_str(&format!(
            "    inner = linear[dm -> dm](merge[head, dk -> dm]({g}({}, {}, {})))\n",
            proj("x"),
            proj("x"),
            proj("x")
        ));
    }
    let args: Vec<String> = SLOTS
        .iter()
        .enumerate()
        .map(|(i, _)| match inner {
            Some((s, _)) if s == i => proj("inner"),
            _ => proj("x"),
        })
        .collect();
    body.push_str(&format!(
        "    linear[dm -> dm](merge[head, dk -> dm]({outer}({})))\n",
        args.join(", ")
    ));
    format!("{prelude}\ndiagram mech(x: [tok, dm]) -> [tok, dm] {{\n{body}}}\n")
}

/// Normalises a term by the [`NORMALISE`] rules until none applies.
pub fn normalise(book: &RuleBook, mut t: Term) -> Result<Term, Error> {
    for _ in 0..MAX_STEPS {
        let mut changed = false;
        for r in NORMALISE {
            let rule = book
                .get(r)
                .ok_or_else(|| Error::Rewrite(format!("the normalising rule `{r}` is missing")))?;
            if !rule::find_matches(rule, &t).is_empty() {
                t = rule::apply(book, &t, r, None)?.after;
                changed = true;
            }
        }
        if !changed {
            return Ok(t);
        }
    }
    Err(Error::Rewrite(format!(
        "normalisation did not finish in {MAX_STEPS} steps"
    )))
}

/// Enumerates the default specification.
pub fn enumerate(book: &RuleBook) -> Result<Vec<Mechanism>, Error> {
    enumerate_spec(book, &Spec::stdlib())
}

/// Enumerates a generator set: every generator alone, then every outer generator with one of
/// its slots fed by every inner one (n + 3 n^2 candidates), redundant ones removed.
pub fn enumerate_spec(book: &RuleBook, spec: &Spec) -> Result<Vec<Mechanism>, Error> {
    let mut recipes: Vec<(String, String, String)> = Vec::new();
    for (g, f) in &spec.generators {
        recipes.push((
            g.to_string(),
            spec.colour(g, g),
            candidate(&spec.prelude, f, None),
        ));
    }
    for (og, of) in &spec.generators {
        for (s, slot) in SLOTS.iter().enumerate() {
            for (ig, inf) in &spec.generators {
                recipes.push((
                    format!("{og}[{slot} <- {ig}]"),
                    spec.colour(og, ig),
                    candidate(&spec.prelude, of, Some((s, inf))),
                ));
            }
        }
    }
    let mut out: Vec<Mechanism> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (recipe, colour, text) in recipes {
        let o = crate::session::check_text("<enumerate>", &text);
        if !o.checked.is_ok() {
            let why: Vec<String> = o
                .checked
                .diagnostics
                .iter()
                .take(3)
                .map(|d| d.message.clone())
                .collect();
            return Err(Error::Rewrite(format!(
                "the candidate {recipe} does not check ({}); every generator must take \
                 (q, k, v: [tok, head, dk]) and return [tok, head, dk]",
                why.join("; ")
            )));
        }
        let t = Term::from_program(&o.checked.program, "mech")?;
        let t = normalise(book, t)?;
        let key = canonical(&t);
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let name = format!("m{:02}", out.len());
        let mut t = t;
        t.name = name.clone();
        out.push(Mechanism {
            name,
            recipe,
            colour,
            term: t,
        });
    }
    Ok(out)
}

/// The file text of a mechanism of a user's generator set.
pub fn spec_file_text(m: &Mechanism, source: &str) -> String {
    format!(
        "// {}: {} (colour class: {}).\n// Generated by `diagc enumerate --spec {source}`; do not edit.\n\n{}",
        m.name.to_uppercase(),
        m.recipe,
        m.colour,
        m.term.to_text()
    )
}

/// The file text of a mechanism of the stdlib's generator set.
pub fn file_text(m: &Mechanism) -> String {
    let known = match m.name.as_str() {
        "m00" => "This is the paper's M0: causal linear attention (Katharopoulos et al. 2020).",
        "m01" => {
            "This is the paper's M1: causal scaled dot-product attention (Vaswani et al. 2017)."
        }
        _ => {
            "The paper's M2..M13 are not available: this mechanism is the project's reconstruction."
        }
    };
    format!(
        "// {}: {} (colour class: {}).\n// Generated by `diagc enumerate` from stdlib/anatomy/spec.diag; do not edit.\n// {known}\n// The generator set beyond M0 and M1 is a reconstruction, not the paper's list.\n\n{}",
        m.name.to_uppercase(),
        m.recipe,
        m.colour,
        m.term.to_text()
    )
}
