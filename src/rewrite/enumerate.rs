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

/// At most this many normalising rewrites per candidate.
const MAX_STEPS: usize = 64;

/// One enumerated mechanism.
#[derive(Clone, Debug)]
pub struct Mechanism {
    /// `m00`, `m01`...
    pub name: String,
    /// How it was built, such as `L`, `D`, `D[k <- L]`.
    pub recipe: String,
    /// `linear only`, `dot-product only` or `both`.
    pub colour: &'static str,
    pub term: Term,
}

const SLOTS: [&str; 3] = ["q", "k", "v"];
const GENERATORS: [(&str, &str); 2] = [("L", "gen_l"), ("D", "gen_d")];

fn proj(src: &str) -> String {
    format!("split[dm -> head, dk](linear[dm -> dm]({src}))")
}

/// The source of one candidate, calling the spec's generators.
fn candidate(outer: &str, inner: Option<(usize, &str)>) -> String {
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
    format!("use anatomy.spec\n\ndiagram mech(x: [tok, dm]) -> [tok, dm] {{\n{body}}}\n")
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
    let mut recipes: Vec<(String, &'static str, String)> = Vec::new();
    for (g, f) in GENERATORS {
        let colour = if g == "L" {
            "linear only"
        } else {
            "dot-product only"
        };
        recipes.push((g.to_string(), colour, candidate(f, None)));
    }
    for (og, of) in GENERATORS {
        for (s, slot) in SLOTS.iter().enumerate() {
            for (ig, inf) in GENERATORS {
                let colour = match (og, ig) {
                    ("L", "L") => "linear only",
                    ("D", "D") => "dot-product only",
                    _ => "both",
                };
                recipes.push((
                    format!("{og}[{slot} <- {ig}]"),
                    colour,
                    candidate(of, Some((s, inf))),
                ));
            }
        }
    }
    let mut out: Vec<Mechanism> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (recipe, colour, text) in recipes {
        let o = crate::session::check_text("<enumerate>", &text);
        if !o.checked.is_ok() {
            return Err(Error::Rewrite(format!(
                "candidate {recipe} does not check:\n{text}"
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

/// The file text of a mechanism.
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
