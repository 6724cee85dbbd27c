//! The training loop of `diagc train` and the evaluation of `diagc eval`, as the protocol of
//! `../shared/docs/experiment.md` says: windows in order, Adam with the Noam schedule and
//! clipping, validation after every epoch (and every N steps if asked), the best-validation
//! checkpoint kept, the test perplexity of the best and of the last checkpoint at the end in
//! `summary.json`.
//!
//! What a run directory holds is [`super::rundir`]'s to say. A run survives any interruption:
//! `last.safetensors` is replaced atomically at every `--valid-every`, at every epoch end, every
//! `--checkpoint-every-min` minutes and when a stop is asked (Ctrl-C, SIGTERM, SIGUSR1: at the
//! next step boundary), so a crash loses at most the steps since then; a resumed run cuts
//! `metrics.jsonl` back to its checkpoint's step and replays the same losses bit for bit,
//! because dropout masks depend only on the seed and the step.

use super::checkpoint::{self, Checkpoint, NamedTensor};
use super::data::{Batched, Corpus, Window, batchify};
use super::model::{ModelConfig, language_model_in, with_loss};
use super::optim::{Adam, clip_factor, noam};
use super::rundir::{self, Existing, Metrics, RunRecord};
use crate::autodiff;
use crate::backend::cpu::exec::{Plan, PlanOptions, Workspace};
use crate::backend::cpu::harness::Rng;
use crate::backend::cpu::interp::RunOptions;
use crate::error::Error;
use crate::ir::instance::{Init, Instance, lift_batch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Everything a training run is configured by.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    /// Stop after this many epochs, if set.
    pub epochs: Option<usize>,
    /// Stop after this many steps (all epochs together), if set.
    pub max_steps: Option<usize>,
    pub warmup: u64,
    pub lr_scale: f64,
    /// Global-norm clipping (0 disables).
    pub clip: f64,
    pub seed: u64,
    pub eval_batch: usize,
    /// Validate every this many steps too (besides after every epoch).
    pub valid_every: Option<usize>,
    /// Use only the first this many training tokens (for quick runs and tests).
    pub train_tokens: Option<usize>,
    /// Use only the first this many validation and test tokens.
    pub eval_tokens: Option<usize>,
    /// When a run counts as diverged.
    #[serde(default)]
    pub divergence: Divergence,
}

/// A run has diverged when its loss is not finite, or when it stays above the cross-entropy of
/// the uniform distribution (ln vocab) by more than `margin` nats for `steps` steps in a row
/// (0 turns that second test off).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Divergence {
    pub margin: f64,
    pub steps: usize,
}

impl Default for Divergence {
    fn default() -> Self {
        Divergence {
            margin: 5.0,
            steps: 10,
        }
    }
}

/// The most layers `diagc train` builds (the IR of the LM grows with them).
pub const MAX_LAYERS: usize = 256;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig::default(),
            epochs: Some(1),
            max_steps: None,
            warmup: 4000,
            lr_scale: 1.0,
            clip: 1.0,
            seed: 0,
            eval_batch: 10,
            valid_every: None,
            train_tokens: None,
            eval_tokens: None,
            divergence: Divergence::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every value against its range; the message names the flag.
    pub fn validate(&self) -> Result<(), Error> {
        let m = &self.model;
        let bad = |flag: &str, why: String| Err(Error::Usage(format!("--{flag}: {why}")));
        let positive = [
            ("layers", m.layers),
            ("d-model", m.d_model),
            ("heads", m.heads),
            ("d-ff", m.d_ff),
            ("bptt", m.bptt),
            ("batch-size", m.batch),
            ("vocab", m.vocab),
            ("eval-batch", self.eval_batch),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return bad(flag, "must be positive".into());
            }
        }
        let optional = [
            ("epochs", self.epochs),
            ("steps", self.max_steps),
            ("valid-every", self.valid_every),
            ("train-tokens", self.train_tokens),
            ("eval-tokens", self.eval_tokens),
        ];
        for (flag, v) in optional {
            if v == Some(0) {
                return bad(flag, "must be positive".into());
            }
        }
        if m.layers > MAX_LAYERS {
            return bad("layers", format!("{} is more than {MAX_LAYERS}", m.layers));
        }
        if !m.d_model.is_multiple_of(m.heads) {
            return bad(
                "heads",
                format!(
                    "{} does not divide --d-model {} (each head gets d-model / heads features)",
                    m.heads, m.d_model
                ),
            );
        }
        if !(m.dropout.is_finite() && (0.0..1.0).contains(&m.dropout)) {
            return bad("dropout", format!("{} is not in [0, 1)", m.dropout));
        }
        if !(self.lr_scale.is_finite() && self.lr_scale > 0.0) {
            return bad(
                "lr-scale",
                format!("{} is not a positive number", self.lr_scale),
            );
        }
        if !(self.clip.is_finite() && self.clip >= 0.0) {
            return bad(
                "clip",
                format!("{} is not a number >= 0 (0 disables clipping)", self.clip),
            );
        }
        let d = &self.divergence;
        if !(d.margin.is_finite() && d.margin > 0.0) {
            return bad(
                "diverge-margin",
                format!("{} is not a positive number", d.margin),
            );
        }
        for (name, n) in &m.sizes {
            if let Some((_, flag)) = super::model::PROTOCOL_AXES.iter().find(|(a, _)| a == name) {
                return Err(Error::Usage(format!(
                    "--size {name}={n}: the size of `{name}` is set by {flag}, not --size"
                )));
            }
            if *n == 0 {
                return Err(Error::Usage(format!("--size {name}=0: sizes are positive")));
            }
        }
        if let Some(d) = &m.diagram
            && !m.mech.ends_with(".diag")
        {
            return Err(Error::Usage(format!(
                "--diagram {d}: `{}` is a stdlib mechanism; --diagram picks a diagram of a \
                 mechanism file (a path ending in .diag)",
                m.mech
            )));
        }
        if m.model.as_deref().is_some_and(str::is_empty) {
            return bad("model", "an empty name".into());
        }
        Ok(())
    }

    /// What ends the run first: a step count or an epoch count (a run with neither trains one
    /// epoch).
    fn bounds(&self, per_epoch: usize) -> (usize, Bound) {
        let by_epochs = self
            .epochs
            .map(|e| e.saturating_mul(per_epoch))
            .unwrap_or(usize::MAX);
        match self.max_steps {
            Some(s) if s < by_epochs || self.epochs.is_none() => (s, Bound::Steps),
            _ if self.epochs.is_none() => (per_epoch, Bound::Epochs),
            _ => (by_epochs, Bound::Epochs),
        }
    }
}

/// Which bound ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Steps,
    Epochs,
}

/// How a run is driven: its stop flag (0: go on; else the number of the signal that asked it to
/// stop), the progress bar, and how often `last` is saved besides validations and epoch ends.
pub struct Control<'a> {
    pub stop: &'a AtomicUsize,
    pub progress: bool,
    pub checkpoint_every: Duration,
}

impl Control<'_> {
    /// No progress bar, checkpoints every five minutes.
    pub fn quiet(stop: &AtomicUsize) -> Control<'_> {
        Control {
            stop,
            progress: false,
            checkpoint_every: Duration::from_secs(300),
        }
    }
}

/// One compiled graph (a window length, training or evaluation) with its workspace.
struct Compiled {
    plan: Plan,
    ws: Workspace,
    /// For a gradient plan: the output index of each parameter's gradient.
    grad_of: Vec<usize>,
    /// The axis names of the ids input, in layout order (`batch`, `tok`).
    ids_axes: Vec<String>,
}

/// The state of a run, everything a checkpoint holds.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub corpus: Corpus,
    pub names: Vec<String>,
    pub shapes: Vec<Vec<usize>>,
    pub params: Vec<Vec<f32>>,
    pub adam: Adam,
    pub step: usize,
    pub epoch: usize,
    /// The next training window of the current epoch.
    pub window: usize,
    pub best_valid: Option<f64>,
    /// The step of the best validation.
    pub best_step: Option<usize>,
    /// The step of the newest `last` checkpoint in the run directory, if one was saved.
    pub last_saved: Option<usize>,
    /// Consecutive steps with a loss above the divergence threshold.
    high_loss_steps: usize,
    /// Where the model's sources are checked from: the run directory's copy (`source/`) once
    /// the run has one; `None`: the stdlib and the mechanism's file.
    pub source_dir: Option<PathBuf>,
    /// Whether the model's parameters depend on the window length (a parameter over `tok`,
    /// such as the Synthesizer's): then only full windows can be used, and the shorter last
    /// window of each split is left out of training and evaluation.
    pub full_windows_only: bool,
    train_graphs: HashMap<usize, Compiled>,
    eval_graphs: HashMap<usize, Compiled>,
    train: Batched,
    /// How plans are compiled (JIT fusion on by default); set before the first step.
    pub plan_options: PlanOptions,
    /// Training on a GPU ([`Trainer::use_gpu`]); `None`: on the CPU.
    gpu: Option<GpuTraining>,
}

/// The GPU side of a run: one training step per window length, and which of them holds the
/// live parameters and Adam state (the host copies are stale while one does); one evaluation
/// plan per window length, with the evaluation whose parameters it holds.
struct GpuTraining {
    gpu: crate::backend::cuda::runtime::Gpu,
    steps: HashMap<usize, (crate::train::gpu::GpuStep, Vec<String>)>,
    live: Option<usize>,
    evals: HashMap<usize, (crate::backend::cuda::runtime::GpuPlan, Vec<String>, u64)>,
    /// Counts evaluations (`perplexity` calls), so that each uploads the parameters once.
    evaluation: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Finished(Box<Finished>),
    /// Stopped by this signal (2: SIGINT, 15: SIGTERM, 10: SIGUSR1) at a step boundary, with
    /// the state saved in `last`.
    Interrupted {
        signal: usize,
    },
}

/// The perplexities of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub stopped_by: Bound,
    /// The best checkpoint's step, validation and test perplexity.
    pub best: (usize, f64, f64),
    /// The last checkpoint's (the final step's).
    pub last: (usize, f64, f64),
}
/// Refuses to allocate `bytes` for `what` when the machine does not have them available.
fn check_memory(bytes: u128, what: &str) -> Result<(), Error> {
    if let Some(avail) = crate::session::available_memory()
        && bytes > avail as u128
    {
        return Err(Error::Usage(format!(
            "{what} need about {}, more than the {} of memory available on this machine; \
             train a smaller model (--d-model, --d-ff, --layers, --batch-size, --bptt)",
            rundir::human_bytes(u64::try_from(bytes).unwrap_or(u64::MAX)),
            rundir::human_bytes(avail)
        )));
    }
    Ok(())
}

fn model_for(cfg: &TrainConfig, vocab: usize, len: usize, batch: usize) -> ModelConfig {
    ModelConfig {
        vocab,
        bptt: len,
        batch,
        ..cfg.model.clone()
    }
}

/// The protocol's initialisation, on top of instantiation's: the output layer (a weight whose
/// axes include the vocabulary) U(-0.1, 0.1) with bias 0.
fn init_params(inst: &Instance, seed: u64) -> Vec<Vec<f32>> {
    let vocab = inst.axes.lookup("vocab");
    let mut rng = Rng::new(seed);
    inst.params
        .iter()
        .map(|p| {
            let n: usize = p.axes.iter().map(|a| inst.size(*a)).product();
            let output_layer =
                vocab.is_some_and(|v| p.axes.contains(&v)) && !p.name.ends_with(".table");
            let init = match (output_layer, p.name.ends_with(".bias")) {
                (true, true) => Init::Constant(0.0),
                (true, false) => Init::Uniform(0.1),
                _ => p.init,
            };
            match init {
                Init::Uniform(b) => (0..n)
                    .map(|_| ((rng.uniform() * 2.0 - 1.0) * b) as f32)
                    .collect(),
                Init::Normal(sd) => (0..n).map(|_| (rng.normal() * sd) as f32).collect(),
                Init::Constant(c) => vec![c as f32; n],
            }
        })
        .collect()
}

fn ids_axes(inst: &Instance) -> Vec<String> {
    let d = &inst.diagram;
    d.wire(d.inputs[0])
        .ty
        .axes
        .iter()
        .map(|a| inst.axes.name(*a).to_string())
        .collect()
}

/// A window's `[len, columns]` row-major tokens in the layout of the ids wire.
fn layout(tokens: &[u32], len: usize, columns: usize, axes: &[String]) -> Vec<f32> {
    if axes.first().map(String::as_str) == Some("tok") {
        return tokens.iter().map(|t| *t as f32).collect();
    }
    let mut out = vec![0.0f32; tokens.len()];
    for r in 0..len {
        for c in 0..columns {
            out[c * len + r] = tokens[r * columns + c] as f32;
        }
    }
    out
}

impl Trainer {
    /// A fresh run: loads the data and initialises the parameters.
    pub fn new(cfg: TrainConfig, data_dir: &Path) -> Result<Trainer, Error> {
        Trainer::with_sources(cfg, data_dir, None)
    }

    /// [`Trainer::new`] with the model checked from `source_dir` (a run's `source/`) if given.
    /// Refuses a model whose parameters and Adam's state alone would not fit in memory.
    pub fn with_sources(
        cfg: TrainConfig,
        data_dir: &Path,
        source_dir: Option<PathBuf>,
    ) -> Result<Trainer, Error> {
        cfg.validate()?;
        let mut corpus = Corpus::load(data_dir)?;
        if let Some(n) = cfg.train_tokens {
            corpus.train.truncate(n);
        }
        if let Some(n) = cfg.eval_tokens {
            corpus.valid.truncate(n);
            corpus.test.truncate(n);
        }
        let vocab = corpus.vocab.len();
        let inst = language_model_in(
            &model_for(&cfg, vocab, cfg.model.bptt, 1),
            source_dir.as_deref(),
        )?;
        let names: Vec<String> = inst.params.iter().map(|p| p.name.clone()).collect();
        let shapes: Vec<Vec<usize>> = inst
            .params
            .iter()
            .map(|p| p.axes.iter().map(|a| inst.size(*a)).collect())
            .collect();
        let count = shapes
            .iter()
            .try_fold(0usize, |n, s| {
                s.iter()
                    .try_fold(1usize, |a, b| a.checked_mul(*b))
                    .and_then(|k| n.checked_add(k))
            })
            .ok_or_else(|| Error::Train("the model's parameter count overflows".into()))?;
        // Parameters, Adam's two moments and the gradients, in f32.
        check_memory(
            count as u128 * 16,
            "the parameters, their gradients and Adam's state",
        )?;
        // Instantiated at another window length, does any parameter change shape?
        let other = language_model_in(
            &model_for(&cfg, vocab, cfg.model.bptt + 1, 1),
            source_dir.as_deref(),
        )?;
        let full_windows_only = other
            .params
            .iter()
            .map(|p| p.axes.iter().map(|a| other.size(*a)).collect::<Vec<_>>())
            .ne(shapes.iter().cloned());
        let params = init_params(&inst, cfg.seed);
        let adam = Adam::new(&params.iter().map(Vec::len).collect::<Vec<_>>());
        let train = batchify(&corpus.train, cfg.model.batch);
        if train.rows < 2 || (full_windows_only && train.rows <= cfg.model.bptt) {
            return Err(Error::Train(
                "the training split is too small for this batch size".into(),
            ));
        }
        Ok(Trainer {
            cfg,
            corpus,
            names,
            shapes,
            params,
            adam,
            step: 0,
            epoch: 0,
            window: 0,
            best_valid: None,
            best_step: None,
            last_saved: None,
            high_loss_steps: 0,
            source_dir,
            full_windows_only,
            train_graphs: HashMap::new(),
            eval_graphs: HashMap::new(),
            plan_options: PlanOptions::default(),
            train,
            gpu: None,
        })
    }

    /// Trains and evaluates on this GPU from now on (checkpoints copy the state back first).
    pub fn use_gpu(&mut self, gpu: crate::backend::cuda::runtime::Gpu) {
        self.gpu = Some(GpuTraining {
            gpu,
            steps: HashMap::new(),
            live: None,
            evals: HashMap::new(),
            evaluation: 0,
        });
    }

    /// The device this run trains on: `cpu`, or the GPU's name.
    pub fn device(&self) -> String {
        self.gpu
            .as_ref()
            .map_or("cpu".to_string(), |g| format!("cuda ({})", g.gpu.info.name))
    }

    /// Brings the parameters and Adam's state back from the GPU, if it holds them.
    pub fn sync_from_gpu(&mut self) -> Result<(), Error> {
        if let Some(g) = &mut self.gpu
            && let Some(len) = g.live.take()
        {
            let (step, _) = g
                .steps
                .get(&len)
                .ok_or_else(|| Error::Train("no GPU step for the live length".into()))?;
            step.store_state(&g.gpu, &mut self.params, &mut self.adam)?;
        }
        Ok(())
    }

    /// Builds the GPU training step for windows of `len` tokens, if it is not built yet.
    fn gpu_step_ready(&mut self, len: usize) -> Result<(), Error> {
        let needs = self
            .gpu
            .as_ref()
            .is_some_and(|g| !g.steps.contains_key(&len));
        if needs {
            // The GPU runs attention fused (flash-attention kernels); the CPU does not.
            let forward =
                crate::ir::fuse::fuse_attention(&self.loss_instance(len, self.cfg.model.batch)?)?.0;
            let gradient = autodiff::gradient(&forward.diagram)?;
            let axes = ids_axes(&forward);
            let tg = super::model::TrainGraph { forward, gradient };
            let g = self
                .gpu
                .as_mut()
                .ok_or_else(|| Error::Train("no GPU".into()))?;
            let step = crate::train::gpu::GpuStep::new(&g.gpu, &tg, &self.params, self.cfg.clip)?;
            g.steps.insert(len, (step, axes));
        }
        Ok(())
    }

    /// Builds (plans, compiles, allocates) what a training step on windows of `len` tokens
    /// runs, so that the step's own time excludes it.
    fn prepare_step(&mut self, len: usize) -> Result<(), Error> {
        if self.gpu.is_some() {
            self.gpu_step_ready(len)
        } else {
            self.train_graph(len).map(|_| ())
        }
    }

    /// [`Trainer::train_step`] on the GPU: the step of this window length (built on first use)
    /// takes the live state, then runs as one CUDA graph.
    fn train_step_gpu(&mut self, w: &Window, seed: u64, lr: f64) -> Result<f64, Error> {
        let len = w.len;
        self.gpu_step_ready(len)?;
        if self.gpu.as_ref().is_some_and(|g| g.live != Some(len)) {
            self.sync_from_gpu()?;
            let g = self
                .gpu
                .as_mut()
                .ok_or_else(|| Error::Train("no GPU".into()))?;
            let (step, _) = g
                .steps
                .get_mut(&len)
                .ok_or_else(|| Error::Train("no GPU step".into()))?;
            step.load_state(&g.gpu, &self.params, &self.adam)?;
            g.live = Some(len);
        }
        let columns = self.cfg.model.batch;
        let g = self
            .gpu
            .as_mut()
            .ok_or_else(|| Error::Train("no GPU".into()))?;
        let (step, axes) = g
            .steps
            .get_mut(&len)
            .ok_or_else(|| Error::Train("no GPU step".into()))?;
        let ids = layout(&w.inputs, len, columns, axes);
        let targets = layout(&w.targets, len, columns, axes);
        step.set_batch(&g.gpu, &ids, &targets)?;
        step.step(&g.gpu, lr, seed)?;
        Ok(step.loss(&g.gpu)? as f64)
    }

    /// Every stored scalar parameter, frozen ones included (what memory holds).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Vec::len).sum()
    }

    /// The scalar parameters training moves: all but the frozen tensors (`random[...]()`, and
    /// the boxes marked `trainable = false`), whose names end in `.frozen`.
    pub fn trainable_parameter_count(&self) -> usize {
        self.names
            .iter()
            .zip(&self.params)
            .filter(|(n, _)| !n.ends_with(".frozen"))
            .map(|(_, p)| p.len())
            .sum()
    }

    /// The LM with its loss for windows of `len` tokens and `batch` columns: what the training
    /// plans (CPU and GPU) differentiate and the evaluation plans run.
    fn loss_instance(&self, len: usize, batch: usize) -> Result<Instance, Error> {
        let m = model_for(&self.cfg, self.corpus.vocab.len(), len, batch);
        with_loss(
            &lift_batch(
                &language_model_in(&m, self.source_dir.as_deref())?,
                "batch",
                m.batch,
            )?,
            "vocab",
        )
    }

    /// Refuses a plan whose workspace, with the workspaces already allocated and the
    /// parameters' state, would not fit in the memory available.
    fn check_workspace(&self, plan: &Plan) -> Result<(), Error> {
        let held: u128 = self
            .train_graphs
            .values()
            .chain(self.eval_graphs.values())
            .map(|g| g.plan.peak_bytes() as u128)
            .sum();
        let state = self.parameter_count() as u128 * 12;
        check_memory(
            plan.peak_bytes() as u128 + held + state,
            "the planned workspaces with the parameters and Adam's state",
        )
    }

    /// The compiled training graph for windows of `len` tokens.
    fn train_graph(&mut self, len: usize) -> Result<&mut Compiled, Error> {
        if !self.train_graphs.contains_key(&len) {
            let inst = self.loss_instance(len, self.cfg.model.batch)?;
            let names: Vec<&String> = inst.params.iter().map(|p| &p.name).collect();
            if names != self.names.iter().collect::<Vec<_>>() {
                return Err(Error::Train(
                    "the parameters differ between window lengths (a bug)".into(),
                ));
            }
            let grad = autodiff::gradient(&inst.diagram)?;
            let grad_of = (0..self.names.len())
                .map(|k| grad.grad_of[2 + k].expect("parameters have gradients"))
                .collect();
            let plan =
                Plan::with_options(&grad.diagram, &inst.axes, &inst.sizes, self.plan_options)?;
            self.check_workspace(&plan)?;
            let ws = plan.workspace();
            self.train_graphs.insert(
                len,
                Compiled {
                    plan,
                    ws,
                    grad_of,
                    ids_axes: ids_axes(&inst),
                },
            );
        }
        Ok(self.train_graphs.get_mut(&len).expect("inserted"))
    }

    fn eval_graph(&mut self, len: usize) -> Result<&mut Compiled, Error> {
        if !self.eval_graphs.contains_key(&len) {
            let inst = self.loss_instance(len, self.cfg.eval_batch)?;
            let plan =
                Plan::with_options(&inst.diagram, &inst.axes, &inst.sizes, self.plan_options)?;
            self.check_workspace(&plan)?;
            let ws = plan.workspace();
            self.eval_graphs.insert(
                len,
                Compiled {
                    plan,
                    ws,
                    grad_of: vec![],
                    ids_axes: ids_axes(&inst),
                },
            );
        }
        Ok(self.eval_graphs.get_mut(&len).expect("inserted"))
    }

    /// One training step on window `w`; returns the mean loss of the window.
    pub fn train_step(&mut self, w: &Window) -> Result<f64, Error> {
        let columns = self.cfg.model.batch;
        let seed = self
            .cfg
            .seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(self.step as u64 + 1);
        let (clip, d, warmup, scale) = (
            self.cfg.clip,
            self.cfg.model.d_model,
            self.cfg.warmup,
            self.cfg.lr_scale,
        );
        let step = self.step as u64 + 1;
        if self.gpu.is_some() {
            let lr = noam(step, d, warmup, scale);
            let loss = self.train_step_gpu(w, seed, lr)?;
            if !loss.is_finite() {
                return Err(self.diverged(format!("the loss became {loss} at step {step}")));
            }
            self.step += 1;
            return Ok(loss);
        }
        self.train_graph(w.len)?;
        let g = self
            .train_graphs
            .get_mut(&w.len)
            .ok_or_else(|| Error::Train("no plan for this window length".into()))?;
        let ids = layout(&w.inputs, w.len, columns, &g.ids_axes);
        let targets = layout(&w.targets, w.len, columns, &g.ids_axes);
        let lr = noam(step, d, warmup, scale);
        let (loss, _) = cpu_step(
            (&g.plan, &mut g.ws, &g.grad_of),
            [&ids, &targets],
            (&mut self.params, &mut self.adam),
            (seed, lr, clip),
        )?;
        if !loss.is_finite() {
            return Err(self.diverged(format!("the loss became {loss} at step {step}")));
        }
        self.step += 1;
        Ok(loss as f64)
    }

    /// The error of a diverged run: `what` happened, and truthfully whether a checkpoint
    /// exists to go back to.
    fn diverged(&self, what: String) -> Error {
        let kept = match self.last_saved {
            Some(s) => format!("the last checkpoint, from step {s}, is kept in last.safetensors"),
            None => "no checkpoint had been saved, so nothing can be resumed".to_string(),
        };
        Error::Train(format!(
            "{what}: the run diverged and stopped ({kept}); a smaller --lr-scale or a longer \
             --warmup usually helps"
        ))
    }

    /// Perplexity on a split (`valid` or `test`): exp(total NLL / target tokens), eval mode.
    pub fn perplexity(&mut self, split: &str) -> Result<f64, Error> {
        self.sync_from_gpu()?;
        let tokens = match split {
            "valid" => self.corpus.valid.clone(),
            "test" => self.corpus.test.clone(),
            other => return Err(Error::Train(format!("no split `{other}` (valid or test)"))),
        };
        let b = batchify(&tokens, self.cfg.eval_batch);
        let (mut total, mut count) = (0.0f64, 0usize);
        let windows: Vec<Window> = b
            .windows(self.cfg.model.bptt)
            .filter(|w| !self.full_windows_only || w.len == self.cfg.model.bptt)
            .collect();
        if windows.is_empty() {
            return Err(Error::Train(format!("the {split} split is too small")));
        }
        if self.gpu.is_some() {
            return self.perplexity_gpu(&windows);
        }
        let params = std::mem::take(&mut self.params);
        let columns = self.cfg.eval_batch;
        let mut result = Ok(());
        for w in &windows {
            let g = match self.eval_graph(w.len) {
                Ok(g) => g,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let ids = layout(&w.inputs, w.len, columns, &g.ids_axes);
            let targets = layout(&w.targets, w.len, columns, &g.ids_axes);
            let mut refs: Vec<&[f32]> = vec![&ids, &targets];
            refs.extend(params.iter().map(|p| p.as_slice()));
            match g.plan.run(&mut g.ws, &refs, RunOptions::default()) {
                Ok(o) => {
                    let n = w.len * columns;
                    total += o[0][0] as f64 * n as f64;
                    count += n;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.params = params;
        result?;
        Ok((total / count as f64).exp())
    }

    /// [`Trainer::perplexity`] on the GPU: the LM with its loss (attention fused, as in
    /// training) as one CUDA graph per window length, the parameters uploaded once per call.
    fn perplexity_gpu(&mut self, windows: &[Window]) -> Result<f64, Error> {
        use crate::backend::cuda::runtime::{GpuPlan, LoadOptions};
        let columns = self.cfg.eval_batch;
        let g = self
            .gpu
            .as_mut()
            .ok_or_else(|| Error::Train("no GPU".into()))?;
        g.evaluation += 1;
        let (mut total, mut count) = (0.0f64, 0usize);
        for w in windows {
            if !self
                .gpu
                .as_ref()
                .is_some_and(|g| g.evals.contains_key(&w.len))
            {
                let inst = crate::ir::fuse::fuse_attention(&self.loss_instance(w.len, columns)?)?.0;
                let plan = Plan::new(&inst.diagram, &inst.axes, &inst.sizes)?;
                let axes = ids_axes(&inst);
                let g = self
                    .gpu
                    .as_mut()
                    .ok_or_else(|| Error::Train("no GPU".into()))?;
                let title = format!("evaluation, windows of {} tokens", w.len);
                let gp = GpuPlan::new(&g.gpu, &plan, &title, LoadOptions::default())?;
                g.evals.insert(w.len, (gp, axes, 0));
            }
            let params = &self.params;
            let g = self
                .gpu
                .as_mut()
                .ok_or_else(|| Error::Train("no GPU".into()))?;
            let (gp, axes, loaded) = g
                .evals
                .get_mut(&w.len)
                .ok_or_else(|| Error::Train("no evaluation plan".into()))?;
            if *loaded != g.evaluation {
                for (k, p) in params.iter().enumerate() {
                    gp.set_input(&g.gpu, 2 + k, p)?;
                }
                *loaded = g.evaluation;
            }
            gp.set_input(&g.gpu, 0, &layout(&w.inputs, w.len, columns, axes))?;
            gp.set_input(&g.gpu, 1, &layout(&w.targets, w.len, columns, axes))?;
            gp.run_graph(&g.gpu, false, 0)?;
            let loss = gp
                .output(&g.gpu, 0)?
                .first()
                .copied()
                .ok_or_else(|| Error::Train("no loss".into()))?;
            let n = w.len * columns;
            total += loss as f64 * n as f64;
            count += n;
        }
        Ok((total / count as f64).exp())
    }

    /// The state as a checkpoint.
    pub fn checkpoint(&self) -> Checkpoint {
        let mut tensors = Vec::new();
        for (group, values) in [
            ("param", &self.params),
            ("adam_m", &self.adam.m),
            ("adam_v", &self.adam.v),
        ] {
            for ((name, shape), data) in self.names.iter().zip(&self.shapes).zip(values.iter()) {
                tensors.push((
                    group.to_string(),
                    NamedTensor {
                        name: name.clone(),
                        shape: shape.clone(),
                        data: data.clone(),
                    },
                ));
            }
        }
        let sidecar = serde_json::json!({
            "config": self.cfg,
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "adam_step": self.adam.step,
            "best_valid_ppl": self.best_valid,
            "best_step": self.best_step,
            "high_loss_steps": self.high_loss_steps,
            "vocab": self.corpus.vocab.len(),
        });
        Checkpoint { tensors, sidecar }
    }

    /// Restores the state of a checkpoint made by a run of this configuration: every tensor of
    /// the model must be there with its shape, in each of the three groups, and nothing else.
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<(), Error> {
        let s = &ck.sidecar;
        let get = |k: &str| {
            s[k].as_u64()
                .ok_or_else(|| Error::Checkpoint(format!("the checkpoint lacks `{k}`")))
        };
        let vocab = get("vocab")? as usize;
        if vocab != self.corpus.vocab.len() {
            return Err(Error::Checkpoint(format!(
                "the checkpoint was trained with a vocabulary of {vocab} words, this data has {}",
                self.corpus.vocab.len()
            )));
        }
        let groups = ["param", "adam_m", "adam_v"];
        let mut seen = vec![[false; 3]; self.names.len()];
        for (group, t) in &ck.tensors {
            let k = self
                .names
                .iter()
                .position(|n| *n == t.name)
                .ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "the checkpoint has a tensor `{}` that the model does not",
                        t.name
                    ))
                })?;
            let g = groups.iter().position(|g| g == group).ok_or_else(|| {
                Error::Checkpoint(format!("unknown tensor group `{group}` in the checkpoint"))
            })?;
            if t.shape != self.shapes[k] {
                return Err(Error::Checkpoint(format!(
                    "tensor `{group}/{}` has shape {:?} in the checkpoint, {:?} in the model",
                    t.name, t.shape, self.shapes[k]
                )));
            }
            seen[k][g] = true;
        }
        for (k, name) in self.names.iter().enumerate() {
            if let Some(g) = seen[k].iter().position(|s| !s) {
                return Err(Error::Checkpoint(format!(
                    "the checkpoint has no tensor `{}/{name}`",
                    groups[g]
                )));
            }
        }
        for (group, t) in &ck.tensors {
            let k = self.names.iter().position(|n| *n == t.name).unwrap_or(0);
            let dst = match group.as_str() {
                "param" => &mut self.params[k],
                "adam_m" => &mut self.adam.m[k],
                _ => &mut self.adam.v[k],
            };
            dst.copy_from_slice(&t.data);
        }
        self.step = get("step")? as usize;
        self.epoch = get("epoch")? as usize;
        self.window = get("window")? as usize;
        self.adam.step = get("adam_step")?;
        self.best_valid = s["best_valid_ppl"].as_f64();
        self.best_step = s["best_step"].as_u64().map(|x| x as usize);
        self.high_loss_steps = s["high_loss_steps"].as_u64().unwrap_or(0) as usize;
        if let Some(g) = &mut self.gpu {
            g.live = None;
        }
        Ok(())
    }

    /// The training windows of an epoch.
    fn windows_per_epoch(&self) -> usize {
        let bptt = self.cfg.model.bptt;
        let n = self.train.window_count(bptt);
        let partial = !(self.train.rows - 1).is_multiple_of(bptt);
        if self.full_windows_only && partial {
            n - 1
        } else {
            n
        }
    }

    /// The number of steps the run will take in all, and which bound that is.
    pub fn total_steps(&self) -> (usize, Bound) {
        self.cfg.bounds(self.windows_per_epoch())
    }

    /// Saves `last` (the state is brought back from the GPU first).
    fn save_last(&mut self, out: &Path) -> Result<(), Error> {
        self.sync_from_gpu()?;
        checkpoint::save(out, "last", &self.checkpoint())?;
        self.last_saved = Some(self.step);
        Ok(())
    }

    /// Trains until the configured epochs or steps end, or a stop is asked. Writes metrics,
    /// checkpoints and the summary into `out`.
    pub fn run(&mut self, out: &Path, ctl: &Control) -> Result<Outcome, Error> {
        let started = Instant::now();
        let mut metrics = Metrics::open(out, Some(self.step))?;
        let per_epoch = self.windows_per_epoch();
        let (total_steps, bound) = self.total_steps();
        let bar = if ctl.progress {
            indicatif::ProgressBar::new(total_steps as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(self.step as u64);
        let (mut tokens_done, mut step_time, mut eval_time) =
            (0usize, Duration::ZERO, Duration::ZERO);
        let mut setup_time = Duration::ZERO;
        let mut last_valid: Option<(usize, f64)> = None;
        let mut saved_at = Instant::now();
        let uniform = (self.corpus.vocab.len() as f64).ln();
        while self.step < total_steps {
            if self.window >= per_epoch {
                // A checkpoint taken at an epoch's end, before the epoch counter moved on.
                self.epoch += 1;
                self.window = 0;
            }
            let windows: Vec<Window> = self
                .train
                .windows(self.cfg.model.bptt)
                .filter(|w| !self.full_windows_only || w.len == self.cfg.model.bptt)
                .skip(self.window)
                .collect();
            for w in windows {
                let signal = ctl.stop.load(Ordering::SeqCst);
                if signal != 0 {
                    self.save_last(out)?;
                    bar.abandon_with_message(
                        "stopped: state saved in last.safetensors; continue with --resume",
                    );
                    return Ok(Outcome::Interrupted { signal });
                }
                if self.step >= total_steps {
                    break;
                }
                let t = Instant::now();
                self.prepare_step(w.len)?;
                setup_time += t.elapsed();
                let t = Instant::now();
                let loss = self.train_step(&w)?;
                step_time += t.elapsed();
                self.window += 1;
                tokens_done += w.len * self.cfg.model.batch;
                let lr = noam(
                    self.step as u64,
                    self.cfg.model.d_model,
                    self.cfg.warmup,
                    self.cfg.lr_scale,
                );
                let tps = tokens_done as f64 / step_time.as_secs_f64().max(1e-9);
                metrics.write(&serde_json::json!({"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "tokens_per_s": tps}))?;
                bar.set_position(self.step as u64);
                bar.set_message(format!(
                    "loss {loss:.3} ppl {:.1} lr {lr:.2e} {tps:.0} tok/s",
                    loss.exp()
                ));
                let d = &self.cfg.divergence;
                if loss > uniform + d.margin {
                    self.high_loss_steps += 1;
                } else {
                    self.high_loss_steps = 0;
                }
                if d.steps > 0 && self.high_loss_steps >= d.steps {
                    return Err(self.diverged(format!(
                        "the loss stayed above {:.2} (the uniform distribution's {uniform:.2} \
                         plus the margin {}) for {} steps, up to {loss:.4e} at step {}",
                        uniform + d.margin,
                        d.margin,
                        d.steps,
                        self.step
                    )));
                }
                let mut save = saved_at.elapsed() >= ctl.checkpoint_every;
                let t = Instant::now();
                if let Some(n) = self.cfg.valid_every
                    && self.step.is_multiple_of(n)
                {
                    last_valid = Some((self.step, self.validate(out, &mut metrics)?));
                    save = true;
                }
                if self.window >= per_epoch {
                    if last_valid.is_none_or(|(s, _)| s != self.step) {
                        last_valid = Some((self.step, self.validate(out, &mut metrics)?));
                    }
                    if let Some((_, v)) = last_valid {
                        bar.println(format!("epoch {}: valid perplexity {v:.2}", self.epoch + 1));
                    }
                    save = true;
                }
                if self.step >= total_steps && last_valid.is_none_or(|(s, _)| s != self.step) {
                    // The run ends here: its last state is validated too.
                    last_valid = Some((self.step, self.validate(out, &mut metrics)?));
                }
                eval_time += t.elapsed();
                if save || self.step >= total_steps {
                    self.save_last(out)?;
                    saved_at = Instant::now();
                }
            }
            if self.window >= per_epoch && self.step < total_steps {
                self.epoch += 1;
                self.window = 0;
            }
        }
        if self.window >= per_epoch {
            self.epoch += 1;
            self.window = 0;
        }
        bar.finish_and_clear();
        let t = Instant::now();
        let (last_step, last_valid_ppl) = match last_valid {
            Some(v) => v,
            // A resumed run that had nothing left to do: validate its state.
            None => (self.step, self.perplexity("valid")?),
        };
        let last_test = self.perplexity("test")?;
        // The test perplexity of the best checkpoint.
        let (best, _) = checkpoint::load(out, "best")?;
        let current = self.params.clone();
        for (group, t) in &best.tensors {
            if group == "param"
                && let Some(k) = self.names.iter().position(|n| *n == t.name)
            {
                self.params[k].copy_from_slice(&t.data);
            }
        }
        let best_test = self.perplexity("test")?;
        self.params = current;
        if let Some(g) = &mut self.gpu {
            // The GPU's state was brought back before the best checkpoint was loaded.
            g.live = None;
        }
        eval_time += t.elapsed();
        let best_valid = self.best_valid.unwrap_or(f64::NAN);
        let best_step = self.best_step.unwrap_or(self.step);
        for (what, v) in [
            ("best validation perplexity", best_valid),
            ("test perplexity of the best checkpoint", best_test),
            ("test perplexity of the last checkpoint", last_test),
        ] {
            if !v.is_finite() {
                return Err(self.diverged(format!("the {what} is {v}")));
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let workspace: usize = self
            .train_graphs
            .values()
            .chain(self.eval_graphs.values())
            .map(|g| g.plan.peak_bytes())
            .max()
            .unwrap_or(0);
        let summary = serde_json::json!({
            "config": self.cfg,
            "parameters": self.trainable_parameter_count(),
            "frozen_parameters": self.parameter_count() - self.trainable_parameter_count(),
            "device": self.device(),
            "precision": "f32",
            "steps": self.step,
            "epochs_done": self.epoch,
            "stopped_by": bound,
            "best": {"step": best_step, "valid_ppl": best_valid, "test_ppl": best_test},
            "last": {"step": last_step, "valid_ppl": last_valid_ppl, "test_ppl": last_test},
            "best_valid_ppl": best_valid,
            "last_valid_ppl": last_valid_ppl,
            "test_ppl": best_test,
            "wall_time_s": wall,
            "setup_time_s": setup_time.as_secs_f64(),
            "train_time_s": step_time.as_secs_f64(),
            "eval_time_s": eval_time.as_secs_f64(),
            "train_tokens": tokens_done,
            "train_tokens_per_s": if tokens_done > 0 {
                Some(tokens_done as f64 / step_time.as_secs_f64().max(1e-9))
            } else {
                None
            },
            "peak_memory_bytes": workspace + self.parameter_count() * 4 * 4,
            "full_windows_only": self.full_windows_only,
        });
        let path = out.join("summary.json");
        let text =
            serde_json::to_string_pretty(&summary).map_err(|e| Error::Train(e.to_string()))?;
        checkpoint::write_atomic(&path, text.as_bytes()).map_err(|e| Error::write(&path, e))?;
        Ok(Outcome::Finished(Box::new(Finished {
            stopped_by: bound,
            best: (best_step, best_valid, best_test),
            last: (last_step, last_valid_ppl, last_test),
        })))
    }

    /// Validation perplexity; keeps the best checkpoint.
    fn validate(&mut self, out: &Path, metrics: &mut Metrics) -> Result<f64, Error> {
        let v = self.perplexity("valid")?;
        metrics.write(&serde_json::json!({"step": self.step, "valid_ppl": v}))?;
        if !v.is_finite() {
            return Err(self.diverged(format!(
                "the validation perplexity became {v} at step {}",
                self.step
            )));
        }
        if self.best_valid.is_none_or(|b| v < b) {
            self.best_valid = Some(v);
            self.best_step = Some(self.step);
            // `perplexity` brought the state back from the GPU.
            checkpoint::save(out, "best", &self.checkpoint())?;
        }
        Ok(v)
    }
}

/// The default run directory for a configuration.
/// `runs/MECH-Ll-seedS`, MECH being a stdlib mechanism's name (`m1`, `anatomy.m05`) or a
/// mechanism file's stem, followed by the model's other choices: `.DIAGRAM`, `-NAMEVALUE` for
/// each `--hyper` and `--size`, `-MODEL` (`runs/mymech.b-temp0.5-r8-lm_nopos-1l-seed0`).
pub fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    let m = &cfg.model;
    let stem = |s: &str| {
        if s.ends_with(".diag") {
            Path::new(s)
                .file_stem()
                .map_or(s.to_string(), |x| x.to_string_lossy().to_string())
        } else {
            s.to_string()
        }
    };
    let mut name = stem(&m.mech);
    if let Some(d) = &m.diagram {
        name.push_str(&format!(".{d}"));
    }
    for (k, v) in &m.hypers {
        name.push_str(&format!("-{k}{v}"));
    }
    for (k, v) in &m.sizes {
        name.push_str(&format!("-{k}{v}"));
    }
    if let Some(lm) = &m.model {
        name.push_str(&format!("-{}", stem(lm)));
    }
    // One path component, of characters that need no quoting.
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("runs/{name}-{}l-seed{}", m.layers, cfg.seed))
}

/// One training step on the CPU, the one the trainer, `diagc bench` and the CUDA selftest's
/// reference all take: runs the gradient plan (`grad_of[k]`: the plan output holding parameter
/// `k`'s gradient) on `(ids, targets, params..., 1)` in training mode with dropout `seed`, then,
/// if the loss is finite, clips the gradients to global norm `clip` and applies Adam with
/// learning rate `lr`. The gradients are read where the executor left them; clipping is a factor
/// applied inside Adam's update (the same f32 products as scaling them first). Returns the loss
/// (before the update; no update when it is not finite) and when the gradients were ready.
pub fn cpu_step(
    (plan, ws, grad_of): (&Plan, &mut Workspace, &[usize]),
    [ids, targets]: [&[f32]; 2],
    (params, adam): (&mut [Vec<f32>], &mut Adam),
    (seed, lr, clip): (u64, f64, f64),
) -> Result<(f32, Instant), Error> {
    let one = [1.0f32];
    let mut refs: Vec<&[f32]> = vec![ids, targets];
    refs.extend(params.iter().map(|p| p.as_slice()));
    refs.push(&one);
    let opts = RunOptions {
        train: true,
        seed,
        check_finite: false,
    };
    plan.run_in_place(ws, &refs, opts)
        .map_err(|e| Error::Train(e.to_string()))?;
    drop(refs);
    let ready = Instant::now();
    let loss = plan
        .output_in(ws, 0)
        .and_then(|l| l.first().copied())
        .unwrap_or(f32::NAN);
    if !loss.is_finite() {
        return Ok((loss, ready));
    }
    let grads: Vec<&[f32]> = grad_of
        .iter()
        .map(|k| plan.output_in(ws, *k))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Train("a parameter's gradient is not in the workspace".into()))?;
    let (_, k) = clip_factor(&grads, clip);
    adam.update_scaled(params, &grads, lr, k);
    Ok((loss, ready))
}

/// How `diagc train` starts.
// One value per process: the size of the `New` variant (a whole configuration) does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Start {
    /// A new run of `cfg` in `out` (else [`default_run_dir`]); `overwrite` replaces the files of
    /// a run already there.
    New {
        cfg: TrainConfig,
        out: Option<PathBuf>,
        overwrite: bool,
    },
    /// The run in `dir`, from its last checkpoint, with its own configuration; `bounds`
    /// (`epochs`, `steps`), when given, replace its stopping point.
    Resume {
        dir: PathBuf,
        bounds: Option<(Option<usize>, Option<usize>)>,
    },
}

/// A run ready to train.
pub struct Opened {
    pub trainer: Trainer,
    pub out: PathBuf,
    pub data_dir: PathBuf,
    /// For a resumed run, the step of the checkpoint it continues from (`None`: it had none and
    /// starts again from step 0).
    pub resumed_from: Option<Option<usize>>,
    /// What the user should know (a damaged checkpoint replaced by its previous generation).
    pub notes: Vec<String>,
}

/// Opens a run for `diagc train`. Everything that can be checked is checked before the run
/// directory is touched: the flags, the mechanism, the data, the memory; then the directory
/// is prepared (a directory holding a run is refused unless resumed or overwritten), the free
/// space checked, and the model's sources copied into it (a new run) or verified (a resumed one).
pub fn open(start: Start, data: Option<&Path>) -> Result<Opened, Error> {
    match start {
        Start::New {
            cfg,
            out,
            overwrite,
        } => {
            cfg.validate()?;
            let out = out.unwrap_or_else(|| default_run_dir(&cfg));
            let shown = out.display();
            let how = "choose another --out, or pass --overwrite to replace it";
            match rundir::existing(&out) {
                Existing::Empty => {}
                _ if overwrite => {}
                Existing::Finished => {
                    return Err(Error::Usage(format!(
                        "{shown} already holds a finished run; {how}"
                    )));
                }
                Existing::Resumable => {
                    return Err(Error::Usage(format!(
                        "{shown} already holds a run; continue it with --resume {shown}, or {how}"
                    )));
                }
                Existing::Started => {
                    return Err(Error::Usage(format!(
                        "{shown} holds a run that stopped before its first checkpoint; start it \
                         again with --resume {shown} (its configuration, from step 0), or {how}"
                    )));
                }
            }
            let sources = super::model::sources(&cfg.model)?;
            let data_dir = super::data::find(data)?;
            let mut trainer = Trainer::new(cfg.clone(), &data_dir)?;
            rundir::create(&out)?;
            if overwrite {
                rundir::clear(&out)?;
            }
            check_space(&trainer, &out)?;
            rundir::write_start(&out, &cfg, &sources, &data_dir)?;
            trainer.source_dir = Some(out.join("source"));
            Ok(Opened {
                trainer,
                out,
                data_dir,
                resumed_from: None,
                notes: Vec::new(),
            })
        }
        Start::Resume { dir, bounds } => {
            let (mut cfg, record) = rundir::read(&dir).map_err(|e| e.context("cannot resume: "))?;
            let saved = cfg.clone();
            if let Some((epochs, steps)) = bounds {
                cfg.epochs = epochs;
                cfg.max_steps = steps;
            }
            cfg.validate()?;
            let data_dir = recorded_data(data, &record);
            let mut trainer =
                Trainer::with_sources(cfg.clone(), &data_dir, Some(dir.join("source")))?;
            let mut notes = Vec::new();
            let resumed_from = match checkpoint::load(&dir, "last") {
                Ok((ck, note)) => {
                    notes.extend(note);
                    check_config(&ck, &saved, &checkpoint::path(&dir, "last"))
                        .and_then(|_| trainer.restore(&ck))
                        .map_err(|e| e.context("cannot resume: "))?;
                    trainer.last_saved = Some(trainer.step);
                    Some(trainer.step)
                }
                Err(_) if !checkpoint::path(&dir, "last").exists() => None,
                Err(e) => return Err(e.context("cannot resume: ")),
            };
            rundir::create(&dir)?;
            if cfg != saved {
                let text =
                    serde_json::to_string_pretty(&cfg).map_err(|e| Error::Train(e.to_string()))?;
                let path = dir.join("config.json");
                checkpoint::write_atomic(&path, text.as_bytes())
                    .map_err(|e| Error::write(&path, e))?;
            }
            let summary = dir.join("summary.json");
            if summary.exists() {
                std::fs::remove_file(&summary).map_err(|e| Error::remove(&summary, e))?;
            }
            check_space(&trainer, &dir)?;
            Ok(Opened {
                trainer,
                out: dir,
                data_dir,
                resumed_from: Some(resumed_from),
                notes,
            })
        }
    }
}

/// The data directory of an existing run: `--data` if given, else the one it recorded (if it
/// still exists), else the default lookup.
fn recorded_data(flag: Option<&Path>, record: &RunRecord) -> PathBuf {
    match flag {
        Some(d) => d.to_path_buf(),
        None if record.data_dir.is_dir() => record.data_dir.clone(),
        None => super::data::data_dir(None),
    }
}

/// Refuses a run whose directory cannot hold its files at their largest: `best` and `last`,
/// their previous generations, a fifth checkpoint being written, and the metrics; less what
/// is there already.
fn check_space(t: &Trainer, out: &Path) -> Result<(), Error> {
    let one = checkpoint::size_estimate(t.parameter_count() * 3, t.names.len() * 3);
    let (steps, _) = t.total_steps();
    let metrics = (steps.saturating_sub(t.step) as u64).saturating_mul(160);
    let have: u64 = ["last", "best"]
        .iter()
        .map(|s| checkpoint::path(out, s))
        .flat_map(|p| [checkpoint::previous(&p), p])
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    rundir::check_free_space(out, (5 * one + metrics).saturating_sub(have))
}

/// Refuses a checkpoint whose configuration is not the run's (`config.json`), naming the first
/// field that differs. The stopping point (`epochs`, `max_steps`) may differ: a resumed run may
/// change it.
fn check_config(ck: &Checkpoint, cfg: &TrainConfig, file: &Path) -> Result<(), Error> {
    let mut a = ck.sidecar["config"].clone();
    let mut b = serde_json::to_value(cfg).map_err(|e| Error::Train(e.to_string()))?;
    for v in [&mut a, &mut b] {
        if let Some(o) = v.as_object_mut() {
            o.remove("epochs");
            o.remove("max_steps");
        }
    }
    if let Some((field, x, y)) = rundir::first_difference(&a, &b, "") {
        return Err(Error::Checkpoint(format!(
            "{} does not belong to this run: its `{field}` is {x}, config.json says {y}",
            file.display()
        )));
    }
    Ok(())
}

/// The checkpoint `stem` (`best`, `last`) of a run directory, with the run's configuration and
/// record, every file checked: the sources against their checksums, the checkpoint against
/// its own and against `config.json`.
/// The last value says what the user should know (a damaged checkpoint replaced by its
/// previous generation).
pub fn load_run(
    dir: &Path,
    stem: &str,
) -> Result<(TrainConfig, RunRecord, Checkpoint, Option<String>), Error> {
    let (cfg, record) = rundir::read(dir)?;
    let (ck, note) = checkpoint::load(dir, stem)?;
    check_config(&ck, &cfg, &checkpoint::path(dir, stem))?;
    Ok((cfg, record, ck, note))
}

/// `diagc eval`: the perplexity of checkpoint `stem` of the run in `dir` on `split`, with the
/// model checked from the run's copy of its sources, on `data` or the run's data directory.
/// The second value says what the user should know (see [`load_run`]).
pub fn evaluate(
    dir: &Path,
    stem: &str,
    split: &str,
    data: Option<&Path>,
) -> Result<(f64, Option<String>), Error> {
    let (cfg, record, ck, note) = load_run(dir, stem)?;
    let data_dir = recorded_data(data, &record);
    let mut t = Trainer::with_sources(cfg, &data_dir, Some(dir.join("source")))?;
    t.restore(&ck)?;
    Ok((t.perplexity(split)?, note))
}
