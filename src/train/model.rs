//! The model being trained: the stdlib language model around a chosen mechanism, batched, with
//! the protocol's loss (mean cross-entropy over every position of the batch) appended, and its
//! gradient diagram. Both are IR, so any backend runs them.

use crate::autodiff::{self, Gradient};
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
pub fn language_model(cfg: &ModelConfig) -> Result<Instance, String> {
    let known: Vec<String> = crate::stdlib::mechanisms().collect();
    if !known.contains(&cfg.mech) {
        return Err(format!(
            "unknown mechanism `{}`; the stdlib has: {}",
            cfg.mech,
            known.join(", ")
        ));
    }
    let (path, text) = crate::stdlib::module("lm").ok_or("the stdlib has no lm.diag")?;
    let mut sources = crate::source::SourceMap::new();
    let root = sources.add(format!("<stdlib>/{path}"), text);
    let module = format!("attention.{}", cfg.mech);
    let checked = crate::check::check_with(&mut sources, root, &[module.as_str()]);
    if let Some(d) = checked.diagnostics.first() {
        return Err(crate::report::render(d, &sources, false));
    }
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
            ("mech".to_string(), HyperValue::Diagram(cfg.mech.clone())),
            ("layers".to_string(), HyperValue::Num(cfg.layers as f64)),
            ("p".to_string(), HyperValue::Num(cfg.dropout)),
        ]
        .into_iter()
        .collect(),
    };
    instance::instantiate(&checked.program, "lm", &b)
}

/// Appends the mean cross-entropy of `targets` (a new data input after the ids, typed like the
/// ids) under the instance's single output (logits over `classes`).
pub fn with_loss(inst: &Instance, classes: &str) -> Result<Instance, String> {
    let classes = inst
        .axes
        .lookup(classes)
        .ok_or_else(|| format!("no axis `{classes}`"))?;
    let d = &inst.diagram;
    if d.outputs.len() != 1 || inst.data_inputs != 1 {
        return Err("the loss needs one data input (ids) and one output (logits)".into());
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
    let diagram = g.finish(format!("{} loss", d.name), vec![mean], span);
    Ok(Instance {
        diagram,
        axes: inst.axes.clone(),
        sizes: inst.sizes.clone(),
        data_inputs: 2,
        params: inst.params.clone(),
    })
}

/// The batched LM with its loss, and the gradient diagram.
pub fn train_graph(cfg: &ModelConfig) -> Result<TrainGraph, String> {
    let lm = language_model(cfg)?;
    let batched = instance::lift_batch(&lm, "batch", cfg.batch)?;
    let forward = with_loss(&batched, "vocab")?;
    let gradient = autodiff::gradient(&forward.diagram)?;
    Ok(TrainGraph { forward, gradient })
}
