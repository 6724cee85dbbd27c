//! Sweep files: TOML read with serde, every value kept with its span so that an error points
//! at its line and column, and expanded into the plan's entries.
//!
//! ```toml
//! name = "cpu-small"                 # the sweep's name (default: the file's stem)
//! description = "..."                # shown at the top of the report
//! mechanisms = ["anatomy.*", "m1", "my/mech.diag"]   # stdlib names, globs over them, paths
//! layers = [1, 2]
//! seeds = [0, 1, 2]                  # default [0]
//!
//! [train]                            # any `diagc train` setting; a list sweeps over its values
//! d_model = 128
//! steps = 600
//! bptt = [35, 256]                   # swept: every run at each value
//! hyper = { temp = 0.5 }             # --hyper temp=0.5 (values may be lists)
//! size = { rf = 64 }                 # --size rf=64
//!
//! [tuning]                           # per-model learning rate (stages A and B)
//! lr_scales = [0.5, 1.0, 2.0]
//! seed = 0                           # stage A's seed (default: the first of `seeds`)
//! steps = 300                        # stage A's budget (default: the runs' own)
//!
//! [timing]                           # Figure 4: each model's step against the reference's
//! reference = "anatomy.m01"
//! rounds = 5
//! steps = 4
//! ```

use crate::error::Error;
use std::collections::BTreeMap;
use toml::Spanned;

/// The `diagc train` settings a sweep file may give, with their flags and kinds.
pub const TRAIN_KEYS: &[(&str, &str, Kind)] = &[
    ("d_model", "--d-model", Kind::Int),
    ("heads", "--heads", Kind::Int),
    ("d_ff", "--d-ff", Kind::Int),
    ("dropout", "--dropout", Kind::Float),
    ("bptt", "--bptt", Kind::Int),
    ("batch_size", "--batch-size", Kind::Int),
    ("epochs", "--epochs", Kind::Int),
    ("steps", "--steps", Kind::Int),
    ("warmup", "--warmup", Kind::Int),
    ("lr_scale", "--lr-scale", Kind::Float),
    ("clip", "--clip", Kind::Float),
    ("valid_every", "--valid-every", Kind::Int),
    ("train_tokens", "--train-tokens", Kind::Int),
    ("eval_tokens", "--eval-tokens", Kind::Int),
    ("diverge_margin", "--diverge-margin", Kind::Float),
    ("diverge_steps", "--diverge-steps", Kind::Int),
    (
        "checkpoint_every_min",
        "--checkpoint-every-min",
        Kind::Float,
    ),
    ("device", "--device", Kind::Str),
    ("no_jit", "--no-jit", Kind::Bool),
    ("model", "--model", Kind::Path),
    ("diagram", "--diagram", Kind::Str),
    ("hyper", "--hyper", Kind::Table),
    ("size", "--size", Kind::Table),
    // The sweep's own: `--steps` = ceil(token_budget / (batch_size x bptt)), so that runs at
    // different windows or batches see the same number of training tokens.
    ("token_budget", "", Kind::Int),
];

/// Settings a sweep file may not give, and why.
const RUNNER_KEYS: &[(&str, &str)] = &[
    ("seed", "the seeds are the top-level `seeds` list"),
    ("layers", "the depths are the top-level `layers` list"),
    ("layer", "the depths are the top-level `layers` list"),
    ("mech", "the mechanisms are the top-level `mechanisms` list"),
    ("out", "each run's directory is chosen by the plan"),
    ("resume", "the runner resumes interrupted runs itself"),
    ("overwrite", "the runner never overwrites a run"),
    (
        "data",
        "the data directory is given to `diagc sweep run --data`",
    ),
    (
        "download",
        "fetch the data first with `diagc data fetch ptb`",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Float,
    Str,
    Bool,
    Path,
    Table,
}

/// A value of a setting, as the plan gives it to `diagc train`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

impl Value {
    /// The flag's argument: integers plainly, floats in Rust's shortest round-trip form.
    pub fn arg(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Str(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
        }
    }
}

/// `1.0` as `1`, `0.5` as `0.5`: the shortest text that reads back as the same f64.
pub fn format_float(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else if f != 0.0 && !(1e-4..1e15).contains(&f.abs()) {
        format!("{f:e}")
    } else {
        format!("{f}")
    }
}

/// A setting of the grid: a name (`bptt`, or `hyper.temp`, `size.rf`), its flag and its values
/// (more than one: swept), with where the values are in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The sweep file's key: `bptt`, `hyper.temp`, `size.rf`.
    pub key: String,
    pub flag: &'static str,
    pub values: Vec<Value>,
    /// Byte range of the value in the file.
    pub span: std::ops::Range<usize>,
}

impl Setting {
    /// The `diagc train` arguments of the setting at one of its values.
    pub fn args(&self, v: &Value) -> Vec<String> {
        match (self.flag, v) {
            ("--no-jit", Value::Bool(true)) => vec!["--no-jit".into()],
            ("--no-jit", _) => vec![],
            ("", _) => vec![],
            ("--hyper" | "--size", _) => {
                let name = self.key.split_once('.').map_or("", |(_, n)| n);
                vec![self.flag.into(), format!("{name}={}", v.arg())]
            }
            _ => vec![self.flag.into(), v.arg()],
        }
    }
}

/// A mechanism of the sweep, with the span of its name in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Mech {
    /// As the plan and the report name it: a stdlib name (`anatomy.m05`, `m1`) or the path as
    /// written in the file.
    pub name: String,
    /// What `diagc train` is given: the stdlib name, or the path resolved against the sweep
    /// file's directory.
    pub arg: String,
    pub span: std::ops::Range<usize>,
}

/// Stage A of the learning-rate tuning.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    pub lr_scales: Vec<f64>,
    pub seed: u64,
    /// Stage A's own budget (`--steps`), when shorter than the runs'.
    pub steps: Option<usize>,
}

/// The timing phase of Figure 4.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub reference: Mech,
    pub rounds: usize,
    pub steps: usize,
}

/// A checked sweep file.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub name: String,
    pub description: Option<String>,
    pub mechanisms: Vec<Mech>,
    pub layers: Vec<usize>,
    pub seeds: Vec<u64>,
    /// The `[train]` settings in the file's order of keys (alphabetical: TOML tables are maps).
    pub settings: Vec<Setting>,
    pub tuning: Option<Tuning>,
    pub timing: Option<Timing>,
}

impl Spec {
    /// The swept settings: those with more than one value.
    pub fn swept(&self) -> impl Iterator<Item = &Setting> {
        self.settings.iter().filter(|s| s.values.len() > 1)
    }
}

/// An error in a sweep file: the message and where.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecError {
    pub message: String,
    pub span: Option<std::ops::Range<usize>>,
}

impl SpecError {
    fn at(span: std::ops::Range<usize>, message: impl Into<String>) -> SpecError {
        SpecError {
            message: message.into(),
            span: Some(span),
        }
    }

    /// `FILE:LINE:COL: message`, then the line with a caret under the span.
    pub fn render(&self, file: &str, text: &str) -> String {
        let Some(span) = &self.span else {
            return format!("{file}: {}", self.message);
        };
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_no = text[..start].matches('\n').count() + 1;
        let col = text[line_start..start].chars().count() + 1;
        let line = &text[line_start..line_end];
        let width = text[start..span.end.clamp(start, line_end)]
            .chars()
            .count()
            .max(1);
        let gutter = " ".repeat(line_no.to_string().len());
        format!(
            "{file}:{line_no}:{col}: {}\n{gutter} |\n{line_no} | {line}\n{gutter} | {}{}",
            self.message,
            " ".repeat(col - 1),
            "^".repeat(width)
        )
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<Spanned<String>>,
    description: Option<String>,
    mechanisms: Spanned<Vec<Spanned<String>>>,
    layers: Spanned<Vec<Spanned<i64>>>,
    seeds: Option<Spanned<Vec<Spanned<i64>>>>,
    train: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    tuning: Option<RawTuning>,
    timing: Option<RawTiming>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTuning {
    lr_scales: Spanned<Vec<Spanned<f64>>>,
    seed: Option<Spanned<i64>>,
    steps: Option<Spanned<i64>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    reference: Spanned<String>,
    rounds: Option<Spanned<i64>>,
    steps: Option<Spanned<i64>>,
}

/// What a sweep file needs to know of the world: the stdlib's mechanism names (for names and
/// globs) and how a path is resolved.
pub struct Context<'a> {
    /// Every stdlib mechanism name `diagc train` accepts (`m1`, `anatomy.m05`, ...).
    pub stdlib: &'a [String],
    /// The directory of the sweep file (paths in it are relative to it).
    pub base: &'a std::path::Path,
}

/// At most this many runs in one sweep: a typo such as `seeds = [0, 1000000]`-like ranges is
/// caught before a plan of millions of lines is written.
pub const MAX_RUNS: usize = 100_000;

/// Parses and checks a sweep file's text. `stem` names the sweep when the file does not.
pub fn parse(text: &str, stem: &str, cx: &Context) -> Result<Spec, SpecError> {
    let raw: RawSpec = toml::from_str(text).map_err(|e| SpecError {
        message: e.message().trim_end().to_string(),
        span: e.span(),
    })?;
    let name = match &raw.name {
        Some(n) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(SpecError::at(
                    n.span(),
                    "a sweep's name is letters, digits, `-`, `_` and `.` only",
                ));
            }
            n.get_ref().clone()
        }
        None => stem.to_string(),
    };
    let mechanisms = mechanisms(&raw.mechanisms, cx)?;
    let layers = positive_list(&raw.layers, "layers", crate::train::run::MAX_LAYERS as i64)?;
    let seeds = match &raw.seeds {
        Some(s) => positive_or_zero_list(s, "seeds")?,
        None => vec![0],
    };
    let mut settings = Vec::new();
    for (k, v) in raw.train.iter().flatten() {
        settings.extend(setting(k, v, cx)?);
    }
    if let Some(b) = settings.iter().find(|s| s.key == "token_budget") {
        if let Some(s) = settings
            .iter()
            .find(|s| s.key == "steps" || s.key == "epochs")
        {
            return Err(SpecError::at(
                s.span.clone(),
                format!(
                    "`{}` and `token_budget` both set the budget; keep one",
                    s.key
                ),
            ));
        }
        if b.values
            .iter()
            .any(|v| matches!(v, Value::Int(i) if *i <= 0))
        {
            return Err(SpecError::at(
                b.span.clone(),
                "`token_budget` must be positive",
            ));
        }
    }
    let tuning = match &raw.tuning {
        Some(t) => {
            if let Some(s) = settings.iter().find(|s| s.key == "lr_scale") {
                return Err(SpecError::at(
                    s.span.clone(),
                    "`lr_scale` is chosen by [tuning] (its `lr_scales`); remove it from [train]",
                ));
            }
            let mut scales = Vec::new();
            for s in t.lr_scales.get_ref() {
                let v = *s.get_ref();
                if !(v.is_finite() && v > 0.0) {
                    return Err(SpecError::at(
                        s.span(),
                        format!("a learning-rate scale must be a positive number, not {v}"),
                    ));
                }
                if scales.contains(&v) {
                    return Err(SpecError::at(s.span(), format!("{v} is listed twice")));
                }
                scales.push(v);
            }
            if scales.len() < 2 {
                return Err(SpecError::at(
                    t.lr_scales.span(),
                    "[tuning] needs at least two learning-rate scales to choose from",
                ));
            }
            let seed = match &t.seed {
                Some(s) if *s.get_ref() < 0 => {
                    return Err(SpecError::at(s.span(), "a seed is a number >= 0"));
                }
                Some(s) => *s.get_ref() as u64,
                None => seeds[0],
            };
            let steps = match &t.steps {
                Some(s) if *s.get_ref() <= 0 => {
                    return Err(SpecError::at(s.span(), "stage A's steps must be positive"));
                }
                Some(s) => Some(*s.get_ref() as usize),
                None => None,
            };
            Some(Tuning {
                lr_scales: scales,
                seed,
                steps,
            })
        }
        None => None,
    };
    let timing = match &raw.timing {
        Some(t) => {
            let reference = mechanism(&t.reference, cx)?;
            let count = |v: &Option<Spanned<i64>>, what: &str, default: usize, max: i64| match v {
                Some(s) if !(1..=max).contains(s.get_ref()) => Err(SpecError::at(
                    s.span(),
                    format!("{what} must be between 1 and {max}"),
                )),
                Some(s) => Ok(*s.get_ref() as usize),
                None => Ok(default),
            };
            Some(Timing {
                reference,
                rounds: count(&t.rounds, "[timing] rounds", 5, 1000)?,
                steps: count(&t.steps, "[timing] steps", 4, 100_000)?,
            })
        }
        None => None,
    };
    let spec = Spec {
        name,
        description: raw.description,
        mechanisms,
        layers,
        seeds,
        settings,
        tuning,
        timing,
    };
    let runs = spec
        .settings
        .iter()
        .map(|s| s.values.len())
        .chain([
            spec.mechanisms.len(),
            spec.layers.len(),
            spec.seeds.len() + spec.tuning.as_ref().map_or(0, |t| t.lr_scales.len()),
        ])
        .try_fold(1usize, |acc, n| acc.checked_mul(n));
    if runs.is_none_or(|n| n > MAX_RUNS) {
        return Err(SpecError {
            message: format!("the grid has more than {MAX_RUNS} runs; split the sweep"),
            span: None,
        });
    }
    Ok(spec)
}

fn positive_list(
    l: &Spanned<Vec<Spanned<i64>>>,
    what: &str,
    max: i64,
) -> Result<Vec<usize>, SpecError> {
    if l.get_ref().is_empty() {
        return Err(SpecError::at(
            l.span(),
            format!("`{what}` is empty: nothing to run"),
        ));
    }
    let mut out = Vec::new();
    for v in l.get_ref() {
        if !(1..=max).contains(v.get_ref()) {
            return Err(SpecError::at(
                v.span(),
                format!("`{what}` values must be between 1 and {max}"),
            ));
        }
        let x = *v.get_ref() as usize;
        if out.contains(&x) {
            return Err(SpecError::at(v.span(), format!("{x} is listed twice")));
        }
        out.push(x);
    }
    Ok(out)
}

fn positive_or_zero_list(
    l: &Spanned<Vec<Spanned<i64>>>,
    what: &str,
) -> Result<Vec<u64>, SpecError> {
    if l.get_ref().is_empty() {
        return Err(SpecError::at(
            l.span(),
            format!("`{what}` is empty: nothing to run"),
        ));
    }
    let mut out = Vec::new();
    for v in l.get_ref() {
        if *v.get_ref() < 0 {
            return Err(SpecError::at(
                v.span(),
                format!("`{what}` values are numbers >= 0"),
            ));
        }
        let x = *v.get_ref() as u64;
        if out.contains(&x) {
            return Err(SpecError::at(v.span(), format!("{x} is listed twice")));
        }
        out.push(x);
    }
    Ok(out)
}

/// `*` matches any run of characters, `?` one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`).
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

fn mechanism(s: &Spanned<String>, cx: &Context) -> Result<Mech, SpecError> {
    let name = s.get_ref();
    if name.ends_with(".diag") {
        let path = cx.base.join(name);
        return Ok(Mech {
            name: name.clone(),
            arg: path.to_string_lossy().to_string(),
            span: s.span(),
        });
    }
    if cx.stdlib.iter().any(|k| k == name) {
        return Ok(Mech {
            name: name.clone(),
            arg: name.clone(),
            span: s.span(),
        });
    }
    let near = crate::diagnostic::closest(name, cx.stdlib.iter().map(String::as_str));
    Err(SpecError::at(
        s.span(),
        format!(
            "unknown mechanism `{name}`; {}the stdlib has {} (or give a path to a .diag file)",
            near.map_or(String::new(), |n| format!("did you mean `{n}`? ")),
            cx.stdlib.join(", ")
        ),
    ))
}

fn mechanisms(l: &Spanned<Vec<Spanned<String>>>, cx: &Context) -> Result<Vec<Mech>, SpecError> {
    if l.get_ref().is_empty() {
        return Err(SpecError::at(
            l.span(),
            "`mechanisms` is empty: nothing to run",
        ));
    }
    let mut out: Vec<Mech> = Vec::new();
    for s in l.get_ref() {
        let found = if s.get_ref().contains(['*', '?']) && !s.get_ref().ends_with(".diag") {
            let hits: Vec<Mech> = cx
                .stdlib
                .iter()
                .filter(|k| glob_match(s.get_ref(), k))
                .map(|k| Mech {
                    name: k.clone(),
                    arg: k.clone(),
                    span: s.span(),
                })
                .collect();
            if hits.is_empty() {
                return Err(SpecError::at(
                    s.span(),
                    format!(
                        "`{}` matches no stdlib mechanism; the stdlib has {}",
                        s.get_ref(),
                        cx.stdlib.join(", ")
                    ),
                ));
            }
            hits
        } else {
            vec![mechanism(s, cx)?]
        };
        for m in found {
            if out.iter().any(|o| o.name == m.name) {
                return Err(SpecError::at(
                    s.span(),
                    format!("`{}` is listed twice", m.name),
                ));
            }
            out.push(m);
        }
    }
    Ok(out)
}

fn value_of(v: &toml::Value, kind: Kind) -> Option<Value> {
    match (kind, v) {
        (Kind::Int, toml::Value::Integer(i)) => Some(Value::Int(*i)),
        (Kind::Float, toml::Value::Float(f)) => Some(Value::Float(*f)),
        (Kind::Float, toml::Value::Integer(i)) => Some(Value::Float(*i as f64)),
        (Kind::Str | Kind::Path, toml::Value::String(s)) => Some(Value::Str(s.clone())),
        (Kind::Bool, toml::Value::Boolean(b)) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Int => "an integer",
        Kind::Float => "a number",
        Kind::Str => "a string",
        Kind::Path => "a path (a string)",
        Kind::Bool => "true or false",
        Kind::Table => "a table",
    }
}

/// The values of one `[train]` key: a scalar, or a non-empty list of scalars of its kind.
fn values(
    key: &str,
    v: &toml::Value,
    kind: Kind,
    span: std::ops::Range<usize>,
) -> Result<Vec<Value>, SpecError> {
    let items: Vec<&toml::Value> = match v {
        toml::Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    if items.is_empty() {
        return Err(SpecError::at(
            span,
            format!("`{key}` is an empty list: nothing to run"),
        ));
    }
    let mut out = Vec::new();
    for it in items {
        let Some(x) = value_of(it, kind) else {
            return Err(SpecError::at(
                span,
                format!(
                    "`{key}` takes {} (or a list of them), not {it}",
                    kind_name(kind)
                ),
            ));
        };
        if let Value::Float(f) = x
            && !f.is_finite()
        {
            return Err(SpecError::at(
                span,
                format!("`{key}`: {f} is not a finite number"),
            ));
        }
        if out.contains(&x) {
            return Err(SpecError::at(
                span,
                format!("`{key}` lists {} twice", x.arg()),
            ));
        }
        out.push(x);
    }
    Ok(out)
}

fn setting(
    k: &Spanned<String>,
    v: &Spanned<toml::Value>,
    cx: &Context,
) -> Result<Vec<Setting>, SpecError> {
    let key = k.get_ref().as_str();
    if let Some((_, why)) = RUNNER_KEYS.iter().find(|(n, _)| *n == key) {
        return Err(SpecError::at(
            k.span(),
            format!("`{key}` cannot be set in [train]: {why}"),
        ));
    }
    let Some((_, flag, kind)) = TRAIN_KEYS.iter().find(|(n, ..)| *n == key) else {
        let dashed = key.replace('-', "_");
        let hint = if TRAIN_KEYS.iter().any(|(n, ..)| *n == dashed) {
            format!("did you mean `{dashed}`? ")
        } else {
            crate::diagnostic::closest(key, TRAIN_KEYS.iter().map(|(n, ..)| *n))
                .map_or(String::new(), |n| format!("did you mean `{n}`? "))
        };
        return Err(SpecError::at(
            k.span(),
            format!(
                "unknown [train] setting `{key}`; {hint}the settings are {}",
                TRAIN_KEYS
                    .iter()
                    .map(|(n, ..)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    if *kind == Kind::Table {
        let toml::Value::Table(t) = v.get_ref() else {
            return Err(SpecError::at(
                v.span(),
                format!("`{key}` is a table of names and values, e.g. `{key} = {{ name = 1 }}`"),
            ));
        };
        let inner = if key == "size" {
            Kind::Int
        } else {
            Kind::Float
        };
        let mut out = Vec::new();
        for (name, val) in t {
            let full = format!("{key}.{name}");
            // A diagram-valued hyperparameter takes a diagram's name.
            let strings = match val {
                toml::Value::String(_) => true,
                toml::Value::Array(a) => !a.is_empty() && a.iter().all(toml::Value::is_str),
                _ => false,
            };
            let inner = if key == "hyper" && strings {
                Kind::Str
            } else {
                inner
            };
            let mut vals = values(&full, val, inner, v.span())?;
            if key == "size"
                && let Some(bad) = vals.iter().find(|x| matches!(x, Value::Int(i) if *i <= 0))
            {
                return Err(SpecError::at(
                    v.span(),
                    format!("`{full}`: an axis size must be positive, not {}", bad.arg()),
                ));
            }
            if key == "hyper" {
                // Integers are hyperparameter values too (`layers`-like hypers are ints).
                vals = match val {
                    toml::Value::Integer(i) => vec![Value::Int(*i)],
                    toml::Value::Array(a) if a.iter().all(toml::Value::is_integer) => a
                        .iter()
                        .filter_map(toml::Value::as_integer)
                        .map(Value::Int)
                        .collect(),
                    _ => vals,
                };
            }
            out.push(Setting {
                key: full,
                flag,
                values: vals,
                span: v.span(),
            });
        }
        return Ok(out);
    }
    let mut vals = values(key, v.get_ref(), *kind, v.span())?;
    if *kind == Kind::Path {
        // A file is relative to the sweep file; a name (`lm_nopos`) is the stdlib's.
        for x in &mut vals {
            if let Value::Str(s) = x
                && s.ends_with(".diag")
            {
                *s = cx.base.join(&*s).to_string_lossy().to_string();
            }
        }
    }
    Ok(vec![Setting {
        key: key.to_string(),
        flag,
        values: vals,
        span: v.span(),
    }])
}

/// Turns a `diagc train` error about a flag (`--lr-scale: ...`) into an error at the setting
/// that gave the flag, when there is one.
pub fn locate(spec: &Spec, message: &str) -> SpecError {
    let flag = message.split(':').next().unwrap_or("");
    let span = spec
        .settings
        .iter()
        .find(|s| s.flag == flag)
        .map(|s| s.span.clone());
    SpecError {
        message: message.to_string(),
        span,
    }
}

/// Wraps [`SpecError::render`] as the library's error.
pub fn error(file: &str, text: &str, e: &SpecError) -> Error {
    Error::Usage(format!("invalid sweep file\n{}", e.render(file, text)))
}
