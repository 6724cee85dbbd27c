//! The model being trained: a language model (the stdlib's `lm` unless `--model` names another)
//! around a chosen mechanism, batched, with
//! the protocol's loss (mean cross-entropy over every position of the batch) appended, and its
//! gradient diagram. Both are IR, so any backend runs them.

use crate::autodiff::{self, Gradient};
use crate::error::Error;
use crate::ir::build::Graph;
use crate::ir::instance::{self, Bindings, HyperValue, Instance};
use crate::ir::{Const, ExecOp, Op, WireType};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The protocol's hyperparameters that shape the model (experiment.md's defaults), and what a
/// run chose besides: the mechanism's own hyperparameters and axis sizes, the diagram of a
/// multi-diagram mechanism file, another language model. Those four are left out of
/// `config.json` and of checkpoints when unset, so that files written before they existed load
/// and compare equal.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// The mechanism: a stdlib name (`m1`, `bahdanau`: the module `attention.NAME`;
    /// `anatomy.m05`: any stdlib module `X.Y` defining a mechanism `Y`), or a path to a `.diag`
    /// file.
    pub mech: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub bptt: usize,
    pub batch: usize,
    pub dropout: f64,
    /// The mechanism's own hyperparameters (`--hyper NAME=V`), as given: a number for an `int`
    /// or `float` one, a diagram's name for a diagram-valued one. The others take their
    /// defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hypers: BTreeMap<String, String>,
    /// Sizes of free axes besides those the protocol sets (`--size NAME=N`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sizes: BTreeMap<String, u64>,
    /// The mechanism's diagram in a mechanism file that defines several (`--diagram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagram: Option<String>,
    /// The language model (`--model`): a stdlib module defining `lm` (`lm_nopos`) or a path to a
    /// `.diag` file defining `lm`; `None`: the stdlib's `lm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Train a model that is not proved causal along `tok` (`--allow-noncausal`): the proof
    /// ([`crate::ir::causal`]) refuses it otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_noncausal: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            mech: "m1".into(),
            layers: 1,
            d_model: 512,
            heads: 4,
            d_ff: 2048,
            vocab: 10_000,
            bptt: 35,
            batch: 20,
            dropout: 0.1,
            hypers: BTreeMap::new(),
            sizes: BTreeMap::new(),
            diagram: None,
            model: None,
            allow_noncausal: false,
        }
    }
}

impl ModelConfig {
    /// The mechanism with the run's other model choices, as `diagc train` reports it:
    /// `mymech.diag (diagram b, temp=0.5, r=8, model lm_nopos)`, or just `m1`.
    pub fn label(&self) -> String {
        let mut extra: Vec<String> = Vec::new();
        extra.extend(self.diagram.iter().map(|d| format!("diagram {d}")));
        extra.extend(self.hypers.iter().map(|(k, v)| format!("{k}={v}")));
        extra.extend(self.sizes.iter().map(|(k, v)| format!("{k}={v}")));
        extra.extend(self.model.iter().map(|m| format!("model {m}")));
        if extra.is_empty() {
            self.mech.clone()
        } else {
            format!("{} ({})", self.mech, extra.join(", "))
        }
    }
}

/// The axes whose sizes the protocol sets, each with what sets it: `--size` refuses them.
pub const PROTOCOL_AXES: &[(&str, &str)] = &[
    ("tok", "--bptt"),
    ("dm", "--d-model"),
    ("head", "--heads"),
    ("dff", "--d-ff"),
    ("vocab", "the data (the size of its vocabulary)"),
    ("batch", "--batch-size"),
];

/// The training graph: `loss(ids, targets, params...)` and its gradient.
pub struct TrainGraph {
    pub forward: Instance,
    pub gradient: Gradient,
}

/// Checks the stdlib LM with the chosen mechanism and instantiates it at `cfg`'s sizes.
pub fn language_model(cfg: &ModelConfig) -> Result<Instance, Error> {
    language_model_in(cfg, None)
}

/// The sources of a model, as a run directory keeps them (`source/` of [`crate::train::run`]):
/// every file the check read, by its path relative to the root's (stdlib files by their stdlib
/// path: `lm.diag`, `attention/m1.diag`; a user's file by its name, and the files it `use`s by
/// their paths relative to it).
#[derive(Clone, Debug, PartialEq)]
pub struct Sources {
    /// The file that is checked: the LM's stdlib path (`lm.diag`, `lm_nopos.diag`) for a stdlib
    /// mechanism in a stdlib LM; the mechanism's file name for a user's mechanism (the LM is
    /// loaded beside it); the LM's file name for a stdlib mechanism in a user's LM.
    pub root: String,
    pub files: Vec<(String, String)>,
}

/// The sources that [`language_model`] checks for `cfg`'s mechanism, to copy into a run. The
/// flags that bind the model (`hypers`, `sizes`) are checked against it too, so that a run is
/// refused before it starts.
pub fn sources(cfg: &ModelConfig) -> Result<Sources, Error> {
    let c = check_model(cfg, None)?;
    bindings(cfg, &c.outcome.checked.program, &c.mech)?;
    if !cfg.allow_noncausal {
        let diagnostics = causality_of(&c);
        if !diagnostics.is_empty() {
            return Err(Error::Frontend {
                sources: Box::new(c.outcome.sources),
                diagnostics,
                context: format!(
                    "the model of {} is not proved causal along `tok`: it could see the tokens \
                     it predicts (train it anyway with --allow-noncausal)",
                    cfg.label()
                ),
            });
        }
    }
    let root_dir = c.root_dir.clone().unwrap_or_default();
    let mut files: Vec<(String, String)> = Vec::new();
    for (id, f) in c.outcome.sources.files() {
        let rel = if let Some(p) = f.name.strip_prefix("<stdlib>/") {
            p.to_string()
        } else if id == crate::source::FileId(0) {
            c.root.clone()
        } else {
            let p = std::path::Path::new(&f.name);
            match p.strip_prefix(&root_dir) {
                Ok(r) if !r.components().any(|c| c == std::path::Component::ParentDir) => {
                    r.to_string_lossy().to_string()
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "{} uses {}, outside its directory; a run copies the sources of its \
                         model, and only those in the directory of {} or below",
                        c.root_path, f.name, c.root_path
                    )));
                }
            }
        };
        if files.iter().any(|(r, _)| *r == rel) {
            return Err(Error::Usage(format!(
                "two of the model's sources would be copied to source/{rel} of the run; rename \
                 one of them"
            )));
        }
        files.push((rel, f.text.to_string()));
    }
    Ok(Sources {
        root: c.root,
        files,
    })
}

/// Proves the model causal along `tok` ([`crate::ir::causal`]): the mechanism on its own
/// (so that a leak is reported in the mechanism's terms), then the LM around it. Returns the
/// diagnostics of the failed proofs (empty: proved).
pub fn causality(cfg: &ModelConfig) -> Result<Vec<crate::diagnostic::Diagnostic>, Error> {
    let c = check_model(cfg, None)?;
    Ok(causality_of(&c))
}

fn causality_of(c: &CheckedModel) -> Vec<crate::diagnostic::Diagnostic> {
    use crate::ir::causal;
    let program = &c.outcome.checked.program;
    let Some(tok) = program.axes.lookup("tok") else {
        return vec![crate::diagnostic::Diagnostic::new(
            crate::diagnostic::Code::NotCausal,
            "the model declares no axis `tok`",
        )];
    };
    let mech = causal::prove(program, &c.mech, tok, &Default::default());
    if !mech.proved() {
        return mech.diagnostics;
    }
    let env: causal::DiagramEnv = [("mech".to_string(), c.mech.clone())].into_iter().collect();
    causal::prove(program, "lm", tok, &env).diagnostics
}

/// Where the mechanism comes from.
enum Mech {
    /// The stdlib module `module` (`attention.m1`, `anatomy.m05`), whose diagram `diagram` is
    /// the mechanism.
    Stdlib { module: String, diagram: String },
    /// A user's file.
    File(PathBuf),
}

/// Where the language model comes from.
enum Lm {
    /// A stdlib module (`lm`, `lm_nopos`).
    Stdlib(String),
    /// A user's file.
    File(PathBuf),
}

/// The stdlib modules `X.Y` whose file defines a diagram `Y`, dotted (`anatomy.m05`), and
/// those of `attention/` by their diagram's name alone (`m1`): what `diagc train` takes as a
/// stdlib mechanism. Every one is checked to be a mechanism when it is trained.
pub fn stdlib_mechanisms() -> Vec<String> {
    let mut plain = Vec::new();
    let mut dotted = Vec::new();
    for (path, text) in crate::stdlib::FILES {
        let module = path.trim_end_matches(".diag").replace('/', ".");
        if let Some(n) = module.strip_prefix("attention.") {
            plain.push(n.to_string());
        } else if let Some((_, last)) = module.rsplit_once('.')
            && defines(text, last)
        {
            dotted.push(module);
        }
    }
    plain.extend(dotted);
    plain
}

/// The stdlib modules that define a language model (a diagram `lm`): what `--model` takes by
/// name.
pub fn stdlib_models() -> Vec<String> {
    crate::stdlib::FILES
        .iter()
        .filter(|(_, text)| defines(text, "lm"))
        .map(|(path, _)| path.trim_end_matches(".diag").replace('/', "."))
        .collect()
}

/// Whether the source `text` declares a diagram `name`.
fn defines(text: &str, name: &str) -> bool {
    let (module, _) = crate::syntax::parse(crate::source::FileId(0), text);
    module
        .items
        .iter()
        .any(|i| matches!(i, crate::syntax::ast::Item::Diagram(d) if d.name.text == name))
}

/// `did you mean `x`? ` when a candidate is close to `name`, else nothing.
fn hint<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    crate::diagnostic::closest(name, candidates)
        .map_or(String::new(), |n| format!("did you mean `{n}`? "))
}

fn mech_of(mech: &str) -> Result<Mech, Error> {
    if mech.ends_with(".diag") {
        return Ok(Mech::File(PathBuf::from(mech)));
    }
    let module = if mech.contains('.') {
        mech.to_string()
    } else {
        format!("attention.{mech}")
    };
    let diagram = module.rsplit('.').next().unwrap_or_default().to_string();
    let found = crate::stdlib::module(&module)
        .is_some_and(|(_, text)| module.starts_with("attention.") || defines(text, &diagram));
    if !found {
        let known = stdlib_mechanisms();
        return Err(Error::Usage(format!(
            "unknown mechanism `{mech}`; {}the stdlib has: {} (or give a path to a .diag file)",
            hint(mech, known.iter().map(String::as_str)),
            known.join(", ")
        )));
    }
    Ok(Mech::Stdlib { module, diagram })
}

fn lm_of(model: Option<&str>) -> Result<Lm, Error> {
    let Some(model) = model else {
        return Ok(Lm::Stdlib("lm".into()));
    };
    if model.ends_with(".diag") {
        return Ok(Lm::File(PathBuf::from(model)));
    }
    if !crate::stdlib::module(model).is_some_and(|(_, text)| defines(text, "lm")) {
        let known = stdlib_models();
        return Err(Error::Usage(format!(
            "--model: the stdlib has no language model `{model}`; {}it has: {} (or give a path \
             to a .diag file defining `lm`)",
            hint(model, known.iter().map(String::as_str)),
            known.join(", ")
        )));
    }
    Ok(Lm::Stdlib(model.to_string()))
}

/// A model's sources, checked.
struct CheckedModel {
    outcome: crate::session::Outcome,
    /// The mechanism's diagram.
    mech: String,
    /// The root's name in [`Sources`].
    root: String,
    /// The root file as given (for messages), and the directory that its relative `use`s are
    /// copied from (`None` when every file is the stdlib's).
    root_path: String,
    root_dir: Option<PathBuf>,
}

/// Checks the model's sources: from `source_dir` (a run's copy, see [`Sources`]) when given,
/// else the stdlib and the user's files; then that the LM is one (`lm` with the boundary and
/// hyperparameters the trainer binds) and that the mechanism is one.
fn check_model(cfg: &ModelConfig, source_dir: Option<&Path>) -> Result<CheckedModel, Error> {
    let mech = mech_of(&cfg.mech)?;
    let lm = lm_of(cfg.model.as_deref())?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    };
    let stdlib_path = |module: &str| format!("{}.diag", module.replace('.', "/"));
    // The LM's file as it will be named in the check: its stdlib path, or its file name.
    let lm_rel = match &lm {
        Lm::Stdlib(m) => stdlib_path(m),
        Lm::File(f) => file_name(f),
    };
    let checked = match (&mech, &lm) {
        (Mech::Stdlib { module, diagram }, lm) => {
            if let Some(d) = &cfg.diagram {
                return Err(Error::Usage(format!(
                    "--diagram {d}: `{}` is a stdlib mechanism (the diagram `{diagram}`); \
                     --diagram picks a diagram of a mechanism file (a path ending in .diag)",
                    cfg.mech
                )));
            }
            let (outcome, root_path, root_dir) = match (lm, source_dir) {
                (Lm::Stdlib(m), None) => (
                    crate::session::check_stdlib(m, &[module.as_str()])?.ok_or_error("")?,
                    format!("<stdlib>/{lm_rel}"),
                    None,
                ),
                (_, Some(dir)) => {
                    let path = dir.join(&lm_rel);
                    (
                        crate::session::check_path_with(&path, &[module.as_str()])?
                            .ok_or_error(format!("{} has errors", path.display()))?,
                        path.display().to_string(),
                        None,
                    )
                }
                (Lm::File(f), None) => (
                    crate::session::check_path_with(f, &[module.as_str()])?
                        .ok_or_error(format!("{} has errors", f.display()))?,
                    f.display().to_string(),
                    Some(f.parent().map(Path::to_path_buf).unwrap_or_default()),
                ),
            };
            let p = &outcome.checked.program;
            match p.diagram(diagram) {
                Some(d) if is_mechanism(p, d) => {}
                _ => {
                    return Err(Error::Usage(format!(
                        "the stdlib module `{module}` does not define a mechanism `{diagram}` \
                         (a diagram from [tok, dm] to [tok, dm])"
                    )));
                }
            }
            CheckedModel {
                outcome,
                mech: diagram.clone(),
                root: lm_rel.clone(),
                root_path,
                root_dir,
            }
        }
        (Mech::File(m), lm) => {
            let name = file_name(m);
            let path = match source_dir {
                Some(dir) => dir.join(&name),
                None => m.clone(),
            };
            // The LM is loaded beside the mechanism, as a module: a stdlib one by its name, a
            // user's file by its stem, which must then be in the mechanism's directory.
            let module = match lm {
                Lm::Stdlib(l) => l.clone(),
                Lm::File(f) => {
                    let stem = f
                        .file_stem()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default();
                    if stem.is_empty() || stem.contains('.') {
                        return Err(Error::Usage(format!(
                            "--model {}: with a mechanism file, the model's file name must be a \
                             module name (no dots besides .diag)",
                            f.display()
                        )));
                    }
                    if source_dir.is_none() {
                        let dir = crate::session::directory_of;
                        if dir(f)? != dir(m)? {
                            return Err(Error::Usage(format!(
                                "--model {}: with a mechanism file, the model's file must be in \
                                 the mechanism's directory (a run keeps the two side by side); \
                                 copy it beside {}{}",
                                f.display(),
                                m.display(),
                                if stdlib_models().contains(&stem) {
                                    format!(", or give the stdlib's by its name: --model {stem}")
                                } else {
                                    String::new()
                                }
                            )));
                        }
                    }
                    stem
                }
            };
            let (outcome, mech) = user_mechanism(&path, &module, cfg.diagram.as_deref())?;
            CheckedModel {
                outcome,
                mech,
                root: name,
                root_path: m.display().to_string(),
                root_dir: Some(m.parent().map(Path::to_path_buf).unwrap_or_default()),
            }
        }
    };
    check_lm(
        &checked.outcome,
        &lm_rel,
        cfg.model.as_deref().unwrap_or("lm"),
    )?;
    Ok(checked)
}

/// Whether `d` has a mechanism's boundary: `([tok, dm]) -> [tok, dm]`.
fn is_mechanism(p: &crate::ir::Program, d: &crate::ir::Diagram) -> bool {
    let names = |ws: &[crate::ir::WireId]| -> Vec<(Vec<String>, bool)> {
        ws.iter()
            .map(|w| {
                let ty = &d.wire(*w).ty;
                let mut v: Vec<String> = ty
                    .axes
                    .iter()
                    .map(|a| p.axes.name(*a).to_string())
                    .collect();
                v.sort();
                (v, ty.index_of.is_some())
            })
            .collect()
    };
    let want = vec![(vec!["dm".to_string(), "tok".to_string()], false)];
    names(&d.inputs) == want && names(&d.outputs) == want
}

/// `[tok, dm]`, `[tok] of vocab`.
fn type_text(p: &crate::ir::Program, ty: &WireType) -> String {
    let axes: Vec<&str> = ty.axes.iter().map(|a| p.axes.name(*a)).collect();
    match ty.index_of {
        Some(v) => format!("[{}] of {}", axes.join(", "), p.axes.name(v)),
        None => format!("[{}]", axes.join(", ")),
    }
}

/// Refuses a language model the trainer cannot use: `lm` must be defined in the LM's own file
/// (`rel`: its stdlib path or file name), take token ids `[tok] of vocab`, return `[tok, vocab]`,
/// and have the hyperparameters `mech: ([tok, dm]) -> [tok, dm]`, `layers: int`, `p: float`
/// (any other with a default).
fn check_lm(o: &crate::session::Outcome, rel: &str, shown: &str) -> Result<(), Error> {
    const WANT: &str = "`diagram lm[mech: ([tok, dm]) -> [tok, dm], layers: int, p: float](ids: \
                        [tok] of vocab) -> [tok, vocab]` (see stdlib/lm_nopos.diag)";
    let p = &o.checked.program;
    let Some(d) = p.diagram("lm") else {
        return Err(Error::Usage(format!(
            "the model {shown} defines no diagram `lm`; a language model is {WANT}"
        )));
    };
    let file = &o.sources.get(d.span.file).name;
    if !(file.strip_prefix("<stdlib>/") == Some(rel) || Path::new(file).ends_with(rel)) {
        return Err(Error::Usage(format!(
            "the model {shown} does not define `lm` itself (it is {file}'s); a language model \
             is {WANT}"
        )));
    }
    let bad = |what: String| {
        Err(Error::Usage(format!(
            "`lm` of the model {shown} {what}; a language model is {WANT}"
        )))
    };
    let tys = |ws: &[crate::ir::WireId]| -> Vec<String> {
        ws.iter().map(|w| type_text(p, &d.wire(*w).ty)).collect()
    };
    let named = |ty: &WireType, names: &[&str], index: Option<&str>| {
        let mut got: Vec<&str> = ty.axes.iter().map(|a| p.axes.name(*a)).collect();
        got.sort();
        let mut want = names.to_vec();
        want.sort();
        got == want && ty.index_of.map(|v| p.axes.name(v)) == index
    };
    let ins_ok = d.inputs.len() == 1 && named(&d.wire(d.inputs[0]).ty, &["tok"], Some("vocab"));
    let outs_ok = d.outputs.len() == 1 && named(&d.wire(d.outputs[0]).ty, &["tok", "vocab"], None);
    if !ins_ok || !outs_ok {
        return bad(format!(
            "takes ({}) and returns ({})",
            tys(&d.inputs).join(", "),
            tys(&d.outputs).join(", ")
        ));
    }
    use crate::ir::HyperType;
    let mechanism = |ts: &[WireType]| ts.len() == 1 && named(&ts[0], &["tok", "dm"], None);
    let fits = |name: &str, t: &HyperType| match (name, t) {
        ("mech", HyperType::Diagram { inputs, outputs }) => mechanism(inputs) && mechanism(outputs),
        ("layers", HyperType::Int) | ("p", HyperType::Float) => true,
        _ => false,
    };
    for (name, kind) in [
        ("mech", "([tok, dm]) -> [tok, dm]"),
        ("layers", "int"),
        ("p", "float"),
    ] {
        if !d.hypers.iter().any(|h| h.name == name && fits(name, &h.ty)) {
            return bad(format!("has no hyperparameter `{name}: {kind}`"));
        }
    }
    if let Some(h) = d
        .hypers
        .iter()
        .find(|h| !["mech", "layers", "p"].contains(&h.name.as_str()) && h.default.is_none())
    {
        return bad(format!(
            "has a hyperparameter `{}` without a default, which the trainer cannot give",
            h.name
        ));
    }
    Ok(())
}

/// `temp: float = 1.0`: a hyperparameter as declared.
fn hyper_text(p: &crate::ir::Program, h: &crate::ir::Hyper) -> String {
    use crate::ir::HyperType;
    let kind = match &h.ty {
        HyperType::Int => "int".to_string(),
        HyperType::Float => "float".to_string(),
        HyperType::Diagram { inputs, outputs } => {
            let ins: Vec<String> = inputs.iter().map(|t| type_text(p, t)).collect();
            let outs: Vec<String> = outputs.iter().map(|t| type_text(p, t)).collect();
            format!("({}) -> {}", ins.join(", "), outs.join(", "))
        }
    };
    match &h.default {
        Some(v) => format!(
            "{}: {kind} = {}",
            h.name,
            crate::ir::print::hyper_arg(v, &p.axes)
        ),
        None => format!("{}: {kind}", h.name),
    }
}

/// What instantiation binds for `cfg`: the protocol's sizes and `--size`'s, the LM's
/// hyperparameters, and the mechanism `mech` with its own hyperparameters (`--hyper`). Every
/// name and value is checked against the program, and a wrong one is refused naming its flag.
fn bindings(
    cfg: &ModelConfig,
    program: &crate::ir::Program,
    mech: &str,
) -> Result<Bindings, Error> {
    let mut sizes: BTreeMap<String, u64> = [
        ("tok", cfg.bptt),
        ("dm", cfg.d_model),
        ("head", cfg.heads),
        ("dff", cfg.d_ff),
        ("vocab", cfg.vocab),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v as u64))
    .collect();
    // The free axes (declared without a size) that `--size` may bind.
    let free = free_axes(program);
    let free_text = || {
        if free.is_empty() {
            "the model has no free axis besides those the protocol sets".to_string()
        } else {
            format!("the free axes it can bind: {}", free.join(", "))
        }
    };
    for (name, n) in &cfg.sizes {
        if let Some((_, flag)) = PROTOCOL_AXES.iter().find(|(p, _)| p == name) {
            return Err(Error::Usage(format!(
                "--size {name}={n}: the size of `{name}` is set by {flag}, not --size"
            )));
        }
        let Some(a) = program.axes.lookup(name) else {
            return Err(Error::Usage(format!(
                "--size {name}={n}: the model has no axis `{name}`; {}{}",
                hint(name, free.iter().copied()),
                free_text()
            )));
        };
        let size = program.axes.size(a);
        if *size != crate::ir::size::Size::var(name) {
            return Err(Error::Usage(format!(
                "--size {name}={n}: `{name}` is not a free axis: its size is `{size}`, which \
                 follows from the others; {}",
                free_text()
            )));
        }
        sizes.insert(name.clone(), *n);
    }
    let d = program
        .diagram(mech)
        .ok_or_else(|| Error::Usage(format!("the model has no diagram `{mech}`")))?;
    let mut fixed = BTreeMap::new();
    for (name, text) in &cfg.hypers {
        let Some(h) = d.hypers.iter().find(|h| h.name == *name) else {
            let listed: Vec<String> = d.hypers.iter().map(|h| hyper_text(program, h)).collect();
            let lm_flag = match name.as_str() {
                "layers" => " (the LM's `layers` is --layers)",
                "p" => " (the LM's dropout `p` is --dropout)",
                "mech" => " (the LM's `mech` is MECH)",
                _ => "",
            };
            return Err(Error::Usage(format!(
                "--hyper {name}={text}: the mechanism `{mech}` has no hyperparameter \
                 `{name}`{lm_flag}; {}{}",
                hint(name, d.hypers.iter().map(|h| h.name.as_str())),
                if listed.is_empty() {
                    "it has none".to_string()
                } else {
                    format!("it has: {}", listed.join(", "))
                }
            )));
        };
        use crate::ir::HyperType;
        let number = text.trim().parse::<f64>().ok().filter(|x| x.is_finite());
        let value = match (&h.ty, number) {
            (HyperType::Int, Some(x)) if x.fract() == 0.0 && x >= 0.0 => HyperValue::Num(x),
            (HyperType::Int, _) => {
                return Err(Error::Usage(format!(
                    "--hyper {name}={text}: `{}` takes a whole number >= 0",
                    hyper_text(program, h)
                )));
            }
            (HyperType::Float, Some(x)) => HyperValue::Num(x),
            (HyperType::Float, None) => {
                return Err(Error::Usage(format!(
                    "--hyper {name}={text}: `{}` takes a finite number",
                    hyper_text(program, h)
                )));
            }
            (HyperType::Diagram { .. }, _) => {
                if program.diagram(text).is_none() {
                    let names: Vec<&str> =
                        program.diagrams.iter().map(|d| d.name.as_str()).collect();
                    return Err(Error::Usage(format!(
                        "--hyper {name}={text}: `{}` takes a diagram, and the model has no \
                         diagram `{text}`{}",
                        hyper_text(program, h),
                        match hint(text, names.iter().copied()) {
                            h if h.is_empty() => String::new(),
                            h => format!("; {}", h.trim_end()),
                        }
                    )));
                }
                HyperValue::Diagram(text.clone())
            }
        };
        fixed.insert(name.clone(), value);
    }
    let mech_value = if fixed.is_empty() {
        HyperValue::Diagram(mech.to_string())
    } else {
        HyperValue::Applied(mech.to_string(), fixed)
    };
    Ok(Bindings {
        sizes,
        hypers: [
            ("mech".to_string(), mech_value),
            ("layers".to_string(), HyperValue::Num(cfg.layers as f64)),
            ("p".to_string(), HyperValue::Num(cfg.dropout)),
        ]
        .into_iter()
        .collect(),
    })
}

/// [`language_model`] from a run's copy of its sources in `source_dir`, if given.
pub fn language_model_in(
    cfg: &ModelConfig,
    source_dir: Option<&std::path::Path>,
) -> Result<Instance, Error> {
    let c = check_model(cfg, source_dir)?;
    let program = &c.outcome.checked.program;
    let b = bindings(cfg, program, &c.mech)?;
    instance::instantiate(program, "lm", &b).map_err(|e| {
        // A free axis without a size: say which flag gives it one.
        let text = e.to_string();
        let unbound: Vec<String> = free_axes(program)
            .into_iter()
            .filter(|a| !b.sizes.contains_key(*a) && text.contains(&format!("`{a}`")))
            .map(|a| format!("--size {a}=N"))
            .collect();
        if unbound.is_empty() {
            e
        } else {
            e.context(&format!(
                "the model has an axis without a size (give it with {}): ",
                unbound.join(", ")
            ))
        }
    })
}

/// The axes declared without a size that `--size` binds (the protocol's left out).
fn free_axes(program: &crate::ir::Program) -> Vec<&str> {
    program
        .axes
        .axes
        .iter()
        .filter(|a| a.size == crate::ir::size::Size::var(&a.name))
        .map(|a| a.name.as_str())
        .filter(|n| !PROTOCOL_AXES.iter().any(|(p, _)| p == n))
        .collect()
}

/// A mechanism from a user's file: the file is checked (its diagnostics are the error) with the
/// LM's module `lm` loaded beside it; the mechanism is `diagram` when given, else the diagram
/// named like the file, else the only diagram of the file with the boundary
/// `([tok, dm]) -> [tok, dm]`.
fn user_mechanism(
    path: &Path,
    lm: &str,
    diagram: Option<&str>,
) -> Result<(crate::session::Outcome, String), Error> {
    let o = crate::session::check_path_with(path, &[lm])?
        .ok_or_error(format!("{} has errors", path.display()))?;
    let p = &o.checked.program;
    let root = crate::source::FileId(0);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let own: Vec<&crate::ir::Diagram> = p.diagrams.iter().filter(|d| d.span.file == root).collect();
    let fits: Vec<&str> = own
        .iter()
        .filter(|d| is_mechanism(p, d))
        .map(|d| d.name.as_str())
        .collect();
    let not_one = |d: &crate::ir::Diagram| {
        Err(Error::Usage(format!(
            "`{}` in {} is not a mechanism: it must take and return [tok, dm]",
            d.name,
            path.display()
        )))
    };
    let name = if let Some(want) = diagram {
        match own.iter().find(|d| d.name == want) {
            Some(d) if !is_mechanism(p, d) => return not_one(d),
            Some(d) => d.name.clone(),
            None => {
                return Err(Error::Usage(format!(
                    "--diagram {want}: {} defines no diagram `{want}`; {}{}",
                    path.display(),
                    hint(want, own.iter().map(|d| d.name.as_str())),
                    if fits.is_empty() {
                        "it defines no mechanism (a diagram from [tok, dm] to [tok, dm])"
                            .to_string()
                    } else {
                        format!("its mechanisms: {}", fits.join(", "))
                    }
                )));
            }
        }
    } else if let Some(d) = own.iter().find(|d| d.name == stem) {
        if !is_mechanism(p, d) {
            return not_one(d);
        }
        d.name.clone()
    } else {
        match fits.as_slice() {
            [d] => d.to_string(),
            [] => {
                return Err(Error::Usage(format!(
                    "{} defines no diagram from [tok, dm] to [tok, dm]",
                    path.display()
                )));
            }
            many => {
                return Err(Error::Usage(format!(
                    "{} defines several mechanisms ({}); pick one with --diagram NAME (or name \
                     the file after it)",
                    path.display(),
                    many.join(", ")
                )));
            }
        }
    };
    Ok((o, name))
}

/// Appends the mean cross-entropy of `targets` (a new data input after the ids, typed like the
/// ids) under the instance's single output (logits over `classes`).
pub fn with_loss(inst: &Instance, classes: &str) -> Result<Instance, Error> {
    let classes = inst
        .axes
        .lookup(classes)
        .ok_or_else(|| Error::Usage(format!("no axis `{classes}`")))?;
    let d = &inst.diagram;
    if d.outputs.len() != 1 || inst.data_inputs != 1 {
        return Err(Error::Usage(
            "the loss needs one data input (ids) and one output (logits)".into(),
        ));
    }
    let ids_ty = d.wire(d.inputs[0]).ty.clone();
    let mut g = Graph::default();
    let mut map = vec![None; d.wires.len()];
    for (k, w) in d.inputs.iter().enumerate() {
        map[w.0 as usize] = Some(g.input(
            d.wire(*w).ty.clone(),
            d.input_names[k].clone(),
            d.wire(*w).span,
        ));
        if k == 0 {
            g.input(ids_ty.clone(), "targets".into(), d.wire(*w).span);
        }
    }
    // The targets came right after the ids: inputs are [ids, targets, params...].
    let targets = g.inputs[1];
    for b in &d.boxes {
        let ins = b
            .inputs
            .iter()
            .map(|w| map[w.0 as usize].expect("topological order"))
            .collect();
        let outs = g.add(
            b.op.clone(),
            ins,
            b.outputs.iter().map(|w| d.wire(*w).ty.clone()).collect(),
            b.span,
        );
        for (o, n) in b.outputs.iter().zip(outs) {
            map[o.0 as usize] = Some(n);
        }
    }
    let logits = map[d.outputs[0].0 as usize].expect("the output is produced");
    let positions: usize = ids_ty.axes.iter().map(|a| inst.size(*a)).product();
    let span = d.span;
    let total = g.add1(
        Op::Exec(ExecOp::CrossEntropy { classes }),
        vec![logits, targets],
        WireType::values(vec![]),
        span,
    );
    let mean = g.add1(
        Op::Scale(Const::Num(1.0 / positions as f64)),
        vec![total],
        WireType::values(vec![]),
        span,
    );
    let diagram = crate::ir::verify::Flat::new(
        g.finish(format!("{} loss", d.name), vec![mean], span),
        "loss attachment",
    )?;
    Ok(Instance {
        diagram,
        axes: inst.axes.clone(),
        sizes: inst.sizes.clone(),
        data_inputs: 2,
        params: inst.params.clone(),
    })
}

/// The batched LM with its loss, and the gradient diagram.
pub fn train_graph(cfg: &ModelConfig) -> Result<TrainGraph, Error> {
    train_graph_with(cfg, false)
}

/// [`train_graph`], with causal dot-product attention fused into one box per layer when
/// `fuse_attention` (`ir::fuse`: the same function, computed without materialising the
/// scores; what the CUDA backend runs, on flash-attention kernels).
pub fn train_graph_with(cfg: &ModelConfig, fuse_attention: bool) -> Result<TrainGraph, Error> {
    let lm = language_model(cfg)?;
    let batched = instance::lift_batch(&lm, "batch", cfg.batch)?;
    let mut forward = with_loss(&batched, "vocab")?;
    if fuse_attention {
        forward = crate::ir::fuse::fuse_attention(&forward)?.0;
    }
    let gradient = autodiff::gradient(&forward.diagram)?;
    Ok(TrainGraph { forward, gradient })
}
