//! The attention zoo's registry (`stdlib/zoo.toml`): for every stdlib mechanism its class in the
//! taxonomy, a one-line formula, its paper, the language model it trains in by default, and,
//! when no derivation reaches it, why. The taxonomy ([`super::taxonomy`]) labels its nodes from
//! here and `diagc taxonomy --format md` writes `docs/variants.md` from it.
//!
//! Invariants, checked by [`Registry::stdlib`] against the embedded stdlib: every mechanism of
//! `stdlib/attention/` has exactly one entry and every entry names one; classes and models are
//! from the fixed lists below.

use crate::error::Error;
use serde::Deserialize;

/// The registry's text, embedded in the binary.
pub const TEXT: &str = include_str!("../../stdlib/zoo.toml");

/// What a mechanism changes in softmax attention, the taxonomy's node classes.
pub const CLASSES: &[&str] = &[
    "score",
    "normaliser",
    "feature map",
    "positional",
    "sharing",
    "gating",
    "recurrence",
];

/// The stdlib language models a mechanism may train in.
pub const MODELS: &[&str] = &["lm", "lm_nopos"];

#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The mechanism: `stdlib/attention/NAME.diag`.
    pub name: String,
    pub class: String,
    pub formula: String,
    pub paper: String,
    /// `lm` (the default) or `lm_nopos`.
    #[serde(default = "lm")]
    pub model: String,
    /// Why no derivation reaches it; `None` when one does.
    #[serde(default)]
    pub not_derived: Option<String>,
}

fn lm() -> String {
    "lm".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    mechanism: Vec<Entry>,
}

#[derive(Clone, Debug)]
pub struct Registry {
    /// In the file's order.
    pub entries: Vec<Entry>,
}

impl Registry {
    /// Parses a registry and checks it against the stdlib's mechanisms `known`.
    pub fn parse(text: &str, known: &[String]) -> Result<Registry, Error> {
        let f: File = toml::from_str(text)
            .map_err(|e| Error::Rewrite(format!("stdlib/zoo.toml: {}", e.message())))?;
        let bad = |m: String| Err(Error::Rewrite(format!("stdlib/zoo.toml: {m}")));
        for (i, e) in f.mechanism.iter().enumerate() {
            if !known.contains(&e.name) {
                return bad(format!(
                    "`{}` is not a stdlib mechanism (stdlib/attention/{}.diag does not exist)",
                    e.name, e.name
                ));
            }
            if f.mechanism[..i].iter().any(|o| o.name == e.name) {
                return bad(format!("`{}` has two entries", e.name));
            }
            if !CLASSES.contains(&e.class.as_str()) {
                return bad(format!(
                    "`{}`: class `{}` is not one of {}",
                    e.name,
                    e.class,
                    CLASSES.join(", ")
                ));
            }
            if !MODELS.contains(&e.model.as_str()) {
                return bad(format!(
                    "`{}`: model `{}` is not one of {}",
                    e.name,
                    e.model,
                    MODELS.join(", ")
                ));
            }
            if e.not_derived
                .as_deref()
                .is_some_and(|r| r.trim().is_empty())
            {
                return bad(format!("`{}`: `not_derived` gives no reason", e.name));
            }
        }
        if let Some(m) = known
            .iter()
            .find(|m| !f.mechanism.iter().any(|e| &e.name == *m))
        {
            return bad(format!(
                "the stdlib mechanism `{m}` has no entry (stdlib/attention/{m}.diag)"
            ));
        }
        Ok(Registry {
            entries: f.mechanism,
        })
    }

    /// The embedded registry, checked against the embedded stdlib.
    pub fn stdlib() -> Result<Registry, Error> {
        let known: Vec<String> = crate::stdlib::mechanisms().collect();
        Registry::parse(TEXT, &known)
    }

    /// The entry of a mechanism (by its name, `mamba2`, or module, `attention.mamba2`).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        let name = name.strip_prefix("attention.").unwrap_or(name);
        self.entries.iter().find(|e| e.name == name)
    }
}

/// The language model a stdlib mechanism trains in when `--model` is not given: its registry
/// entry's (`lm_nopos` for the mechanisms that bring their own positions), `lm` otherwise.
pub fn default_model(mech: &str) -> &'static str {
    match Registry::stdlib() {
        Ok(r) if r.get(mech).is_some_and(|e| e.model == "lm_nopos") => "lm_nopos",
        _ => "lm",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    const OK: &str = "[[mechanism]]\nname = \"a\"\nclass = \"score\"\nformula = \"f\"\npaper = \"p\"\n\
        [[mechanism]]\nname = \"b\"\nclass = \"gating\"\nformula = \"f\"\npaper = \"p\"\nmodel = \"lm_nopos\"\nnot_derived = \"why\"\n";

    #[test]
    fn a_complete_registry_parses_with_defaults() {
        let r = Registry::parse(OK, &known()).unwrap();
        assert_eq!(r.entries[0].model, "lm");
        assert_eq!(r.entries[0].not_derived, None);
        assert_eq!(r.get("attention.b").unwrap().model, "lm_nopos");
    }

    #[test]
    fn missing_unknown_duplicate_and_misclassified_entries_are_refused() {
        let only_a = OK.split("[[mechanism]]\nname = \"b\"").next().unwrap();
        let e = Registry::parse(only_a, &known()).unwrap_err().to_string();
        assert!(e.contains("`b` has no entry"), "{e}");
        let e = Registry::parse(&OK.replace("\"b\"", "\"c\""), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`c` is not a stdlib mechanism"), "{e}");
        let e = Registry::parse(&OK.replace("\"b\"", "\"a\""), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("two entries"), "{e}");
        let e = Registry::parse(&OK.replace("gating", "gate"), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("class `gate`"), "{e}");
        let e = Registry::parse(&OK.replace("lm_nopos", "lm2"), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("model `lm2`"), "{e}");
        let e = Registry::parse(&OK.replace("\"why\"", "\" \""), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no reason"), "{e}");
        let e = Registry::parse(&OK.replace("paper", "papr"), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("papr"), "{e}");
    }

    #[test]
    fn the_stdlib_registry_holds() {
        let r = Registry::stdlib().unwrap();
        assert_eq!(r.entries.len(), crate::stdlib::mechanisms().count());
        assert_eq!(default_model("mamba2"), "lm_nopos");
        assert_eq!(default_model("m1"), "lm");
        assert_eq!(default_model("no_such"), "lm");
    }
}
