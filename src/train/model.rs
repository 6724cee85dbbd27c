//! The model being trained: the stdlib language model around a chosen mechanism, batched, with
//! the protocol's loss (mean cross-entropy over every position of the batch) appended, and its
//! gradient diagram. Both are IR, so any backend runs them.

use crate::autodiff::{self, Gradient};
use crate::error::Error;
use crate::ir::build::Graph;
use crate::ir::instance::{self, Bindings, HyperValue, Instance};
use crate::ir::{Const, ExecOp, Op, WireType};

/// The protocol's hyperparameters that shape the model (experiment.md's defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// A stdlib mechanism name (`m1`, `m0`, `bahdanau`, ...).
    pub mech: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub d_ff: usize,
    pub vocab: usize,
    pub bptt: usize,
    pub batch: usize,
    pub dropout: f64,
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
        }
    }
}

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
/// every file the check read, by its path relative to the LM's (stdlib files by their stdlib
/// path: `lm.diag`, `attention/m1.diag`; a user's mechanism file by its name, and the files it
/// `use`s by their paths relative to it).
#[derive(Clone, Debug, PartialEq)]
pub struct Sources {
    /// The file that is checked: `lm.diag` for a stdlib mechanism, the mechanism's file name for
    /// a user's mechanism.
    pub root: String,
    pub files: Vec<(String, String)>,
}

/// The sources that [`language_model`] checks for `cfg`'s mechanism, to copy into a run.
pub fn sources(cfg: &ModelConfig) -> Result<Sources, Error> {
    let (outcome, _, root) = check_model(cfg, None)?;
    let root_dir = std::path::Path::new(&cfg.mech)
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut files = Vec::new();
    for (id, f) in outcome.sources.files() {
        let rel = if let Some(p) = f.name.strip_prefix("<stdlib>/") {
            p.to_string()
        } else if id == crate::source::FileId(0) {
            root.clone()
        } else {
            let p = std::path::Path::new(&f.name);
            match p.strip_prefix(&root_dir) {
                Ok(r) if !r.components().any(|c| c == std::path::Component::ParentDir) => {
                    r.to_string_lossy().to_string()
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "{} uses {}, outside its directory; a run copies the sources of its \
                         model, and only those in the mechanism's directory or below",
                        cfg.mech, f.name
                    )));
                }
            }
        };
        files.push((rel, f.text.to_string()));
    }
    Ok(Sources { root, files })
}

/// Checks the model's sources: from `source_dir` (a run's copy, see [`Sources`]) when given,
/// else the stdlib and the mechanism's file. Returns the outcome, the mechanism's diagram name
/// and the root's name in [`Sources`].
fn check_model(
    cfg: &ModelConfig,
    source_dir: Option<&std::path::Path>,
) -> Result<(crate::session::Outcome, String, String), Error> {
    if cfg.mech.ends_with(".diag") {
        let given = std::path::Path::new(&cfg.mech);
        let name = given
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let path = match source_dir {
            Some(dir) => dir.join(&name),
            None => given.to_path_buf(),
        };
        let (outcome, mech) = user_mechanism(&path)?;
        return Ok((outcome, mech, name));
    }
    let known: Vec<String> = crate::stdlib::mechanisms().collect();
    if !known.contains(&cfg.mech) {
        let near = known
            .iter()
            .filter(|k| strsim::levenshtein(k, &cfg.mech) <= 2 && cfg.mech.len() < 64)
            .min_by_key(|k| strsim::levenshtein(k, &cfg.mech));
        let hint = near.map_or(String::new(), |n| format!("did you mean `{n}`? "));
        return Err(Error::Usage(format!(
            "unknown mechanism `{}`; {hint}the stdlib has: {} (or give a path to a .diag file)",
            cfg.mech,
            known.join(", ")
        )));
    }
    let module = format!("attention.{}", cfg.mech);
    let outcome = match source_dir {
        Some(dir) => crate::session::check_path_with(&dir.join("lm.diag"), &[module.as_str()])?,
        None => crate::session::check_stdlib("lm", &[module.as_str()])?,
    }
    .ok_or_error("")?;
    Ok((outcome, cfg.mech.clone(), "lm.diag".to_string()))
}

/// [`language_model`] from a run's copy of its sources in `source_dir`, if given.
pub fn language_model_in(
    cfg: &ModelConfig,
    source_dir: Option<&std::path::Path>,
) -> Result<Instance, Error> {
    let (outcome, mech, _) = check_model(cfg, source_dir)?;
    let program = outcome.checked.program;
    let sizes = [
        ("tok", cfg.bptt),
        ("dm", cfg.d_model),
        ("head", cfg.heads),
        ("dff", cfg.d_ff),
        ("vocab", cfg.vocab),
    ];
    let b = Bindings {
        sizes: sizes
            .iter()
            .map(|(k, v)| (k.to_string(), *v as u64))
            .collect(),
        hypers: [
            ("mech".to_string(), HyperValue::Diagram(mech.clone())),
            ("layers".to_string(), HyperValue::Num(cfg.layers as f64)),
            ("p".to_string(), HyperValue::Num(cfg.dropout)),
        ]
        .into_iter()
        .collect(),
    };
    instance::instantiate(&program, "lm", &b)
}

/// A mechanism from a user's file: the file is checked (its diagnostics are the error) with the
/// stdlib LM loaded beside it; the mechanism is the diagram named like the file, else the only
/// diagram of the file with the boundary `([tok, dm]) -> [tok, dm]`.
fn user_mechanism(path: &std::path::Path) -> Result<(crate::session::Outcome, String), Error> {
    let o = crate::session::check_path_with(path, &["lm"])?
        .ok_or_error(format!("{} has errors", path.display()))?;
    let p = &o.checked.program;
    let root = crate::source::FileId(0);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let boundary = |d: &crate::ir::Diagram| {
        let names = |ws: &[crate::ir::WireId]| -> Vec<Vec<String>> {
            ws.iter()
                .map(|w| {
                    let mut v: Vec<String> = d
                        .wire(*w)
                        .ty
                        .axes
                        .iter()
                        .map(|a| p.axes.name(*a).to_string())
                        .collect();
                    v.sort();
                    v
                })
                .collect()
        };
        let want = vec![vec!["dm".to_string(), "tok".to_string()]];
        names(&d.inputs) == want
            && names(&d.outputs) == want
            && d.wire(d.inputs[0]).ty.index_of.is_none()
    };
    let own: Vec<&crate::ir::Diagram> = p.diagrams.iter().filter(|d| d.span.file == root).collect();
    let name = if let Some(d) = own.iter().find(|d| d.name == stem) {
        if !boundary(d) {
            return Err(Error::Usage(format!(
                "`{}` in {} is not a mechanism: it must take and return [tok, dm]",
                d.name,
                path.display()
            )));
        }
        d.name.clone()
    } else {
        let fits: Vec<&&crate::ir::Diagram> = own.iter().filter(|d| boundary(d)).collect();
        match fits.as_slice() {
            [d] => d.name.clone(),
            [] => {
                return Err(Error::Usage(format!(
                    "{} defines no diagram from [tok, dm] to [tok, dm]",
                    path.display()
                )));
            }
            many => {
                let names: Vec<&str> = many.iter().map(|d| d.name.as_str()).collect();
                return Err(Error::Usage(format!(
                    "{} defines several mechanisms ({}); name the file after the one to train",
                    path.display(),
                    names.join(", ")
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
