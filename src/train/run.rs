//! The training loop of `diagc train` and the evaluation of `diagc eval`, as the protocol of
//! `../shared/docs/experiment.md` says: windows in order, Adam with the Noam schedule and
//! clipping, validation after every epoch (and every N steps if asked), the best-validation
//! checkpoint kept, the test perplexity of the best checkpoint at the end in `summary.json`.
//!
//! A run directory holds `config.json`, `metrics.jsonl` (one JSON object per step and per
//! validation), `last.{safetensors,json}` (to resume), `best.{safetensors,json}` and
//! `summary.json`. Checkpoints are written atomically, so an interruption (Ctrl-C, a NaN loss, a
//! crash) leaves the last good one intact; a resumed run replays the same losses because dropout
//! masks depend only on the seed and the step.

use super::checkpoint::{self, Checkpoint, NamedTensor};
use super::data::{Batched, Corpus, Window, batchify};
use super::model::{ModelConfig, language_model, with_loss};
use super::optim::{Adam, clip_factor, noam};
use crate::autodiff;
use crate::backend::cpu::exec::{Plan, PlanOptions, Workspace};
use crate::backend::cpu::harness::Rng;
use crate::backend::cpu::interp::RunOptions;
use crate::error::Error;
use crate::ir::instance::{Init, Instance, lift_batch};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Everything a training run is configured by.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub epochs: usize,
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelConfig::default(),
            epochs: 1,
            max_steps: None,
            warmup: 4000,
            lr_scale: 1.0,
            clip: 1.0,
            seed: 0,
            eval_batch: 10,
            valid_every: None,
            train_tokens: None,
            eval_tokens: None,
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
    Finished {
        valid_ppl: Option<f64>,
        test_ppl: f64,
    },
    Interrupted,
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
        let mut corpus = Corpus::load(data_dir)?;
        if let Some(n) = cfg.train_tokens {
            corpus.train.truncate(n);
        }
        if let Some(n) = cfg.eval_tokens {
            corpus.valid.truncate(n);
            corpus.test.truncate(n);
        }
        let vocab = corpus.vocab.len();
        let inst = language_model(&model_for(&cfg, vocab, cfg.model.bptt, 1))?;
        let names: Vec<String> = inst.params.iter().map(|p| p.name.clone()).collect();
        let shapes: Vec<Vec<usize>> = inst
            .params
            .iter()
            .map(|p| p.axes.iter().map(|a| inst.size(*a)).collect())
            .collect();
        let params = init_params(&inst, cfg.seed);
        let adam = Adam::new(&params.iter().map(Vec::len).collect::<Vec<_>>());
        let train = batchify(&corpus.train, cfg.model.batch);
        if train.rows < 2 {
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

    /// [`Trainer::train_step`] on the GPU: the step of this window length (built on first use)
    /// takes the live state, then runs as one CUDA graph.
    fn train_step_gpu(&mut self, w: &Window, seed: u64, lr: f64) -> Result<f64, Error> {
        let len = w.len;
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

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(Vec::len).sum()
    }

    /// The LM with its loss for windows of `len` tokens and `batch` columns: what the training
    /// plans (CPU and GPU) differentiate and the evaluation plans run.
    fn loss_instance(&self, len: usize, batch: usize) -> Result<Instance, Error> {
        let m = model_for(&self.cfg, self.corpus.vocab.len(), len, batch);
        with_loss(
            &lift_batch(&language_model(&m)?, "batch", m.batch)?,
            "vocab",
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
                return Err(Error::Train(format!(
                    "the loss became {loss} at step {step}; the last good checkpoint is kept"
                )));
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
            return Err(Error::Train(format!(
                "the loss became {loss} at step {step}; the last good checkpoint is kept"
            )));
        }
        self.step += 1;
        Ok(loss as f64)
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
        let windows: Vec<Window> = b.windows(self.cfg.model.bptt).collect();
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
            "vocab": self.corpus.vocab.len(),
        });
        Checkpoint { tensors, sidecar }
    }

    /// Restores the state of a checkpoint (made by a run with the same configuration).
    pub fn restore(&mut self, ck: &Checkpoint) -> Result<(), Error> {
        let s = &ck.sidecar;
        let get = |k: &str| {
            s[k].as_u64()
                .ok_or_else(|| Error::Train(format!("the checkpoint lacks `{k}`")))
        };
        self.step = get("step")? as usize;
        self.epoch = get("epoch")? as usize;
        self.window = get("window")? as usize;
        self.adam.step = get("adam_step")?;
        self.best_valid = s["best_valid_ppl"].as_f64();
        for (group, t) in &ck.tensors {
            let k = self
                .names
                .iter()
                .position(|n| *n == t.name)
                .ok_or_else(|| {
                    Error::Train(format!("the checkpoint has an unknown tensor `{}`", t.name))
                })?;
            if t.shape != self.shapes[k] {
                return Err(Error::Train(format!(
                    "tensor `{}` has shape {:?}, the model {:?}",
                    t.name, t.shape, self.shapes[k]
                )));
            }
            let dst = match group.as_str() {
                "param" => &mut self.params[k],
                "adam_m" => &mut self.adam.m[k],
                "adam_v" => &mut self.adam.v[k],
                other => return Err(Error::Train(format!("unknown tensor group `{other}`"))),
            };
            dst.copy_from_slice(&t.data);
        }
        Ok(())
    }

    /// Trains until the configured epochs or steps end, or `stop` is set (Ctrl-C). Writes
    /// metrics, checkpoints and the summary into `out`.
    pub fn run(&mut self, out: &Path, stop: &AtomicBool, progress: bool) -> Result<Outcome, Error> {
        let started = Instant::now();
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join("metrics.jsonl"))
            .map_err(|e| Error::Train(format!("cannot write in {}: {e}", out.display())))?;
        let per_epoch = self.train.window_count(self.cfg.model.bptt);
        let total_steps = self
            .cfg
            .max_steps
            .unwrap_or(usize::MAX)
            .min(per_epoch * self.cfg.epochs);
        let bar = if progress {
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
        let mut tokens_done = 0usize;
        let train_started = Instant::now();
        let mut last_valid = None;
        while self.epoch < self.cfg.epochs && self.step < total_steps {
            let windows: Vec<Window> = self
                .train
                .windows(self.cfg.model.bptt)
                .skip(self.window)
                .collect();
            for w in windows {
                if stop.load(Ordering::SeqCst) {
                    self.sync_from_gpu()?;
                    checkpoint::save(out, "last", &self.checkpoint())?;
                    bar.abandon_with_message(
                        "interrupted: state saved in last.*; continue with --resume",
                    );
                    return Ok(Outcome::Interrupted);
                }
                if self.step >= total_steps {
                    break;
                }
                let loss = self.train_step(&w)?;
                self.window += 1;
                tokens_done += w.len * self.cfg.model.batch;
                let lr = noam(
                    self.step as u64,
                    self.cfg.model.d_model,
                    self.cfg.warmup,
                    self.cfg.lr_scale,
                );
                let tps = tokens_done as f64 / train_started.elapsed().as_secs_f64();
                let _ = writeln!(
                    metrics,
                    "{}",
                    serde_json::json!({"step": self.step, "epoch": self.epoch, "loss": loss, "lr": lr, "tokens_per_s": tps})
                );
                bar.set_position(self.step as u64);
                bar.set_message(format!(
                    "loss {loss:.3} ppl {:.1} lr {lr:.2e} {tps:.0} tok/s",
                    loss.exp()
                ));
                if let Some(n) = self.cfg.valid_every
                    && n > 0
                    && self.step.is_multiple_of(n)
                {
                    let v = self.validate(out, &mut metrics)?;
                    last_valid = Some(v);
                }
            }
            if self.window >= per_epoch {
                self.epoch += 1;
                self.window = 0;
                let v = self.validate(out, &mut metrics)?;
                last_valid = Some(v);
                bar.println(format!("epoch {}: valid perplexity {v:.2}", self.epoch));
            }
            self.sync_from_gpu()?;
            checkpoint::save(out, "last", &self.checkpoint())?;
        }
        if last_valid.is_none() {
            last_valid = Some(self.validate(out, &mut metrics)?);
        }
        bar.finish_and_clear();
        // The test perplexity of the best checkpoint.
        let best = checkpoint::load(out, "best")?;
        let current = self.params.clone();
        for (group, t) in &best.tensors {
            if group == "param"
                && let Some(k) = self.names.iter().position(|n| *n == t.name)
            {
                self.params[k].copy_from_slice(&t.data);
            }
        }
        let test = self.perplexity("test")?;
        self.params = current;
        if let Some(g) = &mut self.gpu {
            // The GPU's state was brought back before the best checkpoint was loaded.
            g.live = None;
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
            "parameters": self.parameter_count(),
            "device": self.device(),
            "precision": "f32",
            "steps": self.step,
            "epochs_done": self.epoch,
            "best_valid_ppl": self.best_valid,
            "last_valid_ppl": last_valid,
            "test_ppl": test,
            "wall_time_s": wall,
            "train_tokens_per_s": tokens_done as f64 / train_started.elapsed().as_secs_f64(),
            "peak_memory_bytes": workspace + self.parameter_count() * 4 * 4,
        });
        checkpoint::write_atomic(
            &out.join("summary.json"),
            serde_json::to_string_pretty(&summary)
                .unwrap_or_default()
                .as_bytes(),
        )
        .map_err(|e| Error::Train(format!("cannot write the summary: {e}")))?;
        Ok(Outcome::Finished {
            valid_ppl: self.best_valid,
            test_ppl: test,
        })
    }

    /// Validation perplexity; keeps the best checkpoint.
    fn validate(&mut self, out: &Path, metrics: &mut std::fs::File) -> Result<f64, Error> {
        let v = self.perplexity("valid")?;
        let _ = writeln!(
            metrics,
            "{}",
            serde_json::json!({"step": self.step, "valid_ppl": v})
        );
        if self.best_valid.is_none_or(|b| v < b) {
            self.best_valid = Some(v);
            // `perplexity` brought the state back from the GPU.
            checkpoint::save(out, "best", &self.checkpoint())?;
        }
        Ok(v)
    }
}

/// Checks that `out` can hold a run before any work starts: it is created, writable, and not
/// a finished or started run (unless resuming).
pub fn prepare_run_dir(out: &Path, resuming: bool) -> Result<(), Error> {
    std::fs::create_dir_all(out).map_err(|e| {
        Error::Train(format!(
            "cannot create the run directory {}: {e}",
            out.display()
        ))
    })?;
    let probe = out.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| {
        Error::Train(format!(
            "the run directory {} is not writable: {e}",
            out.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    if !resuming && (out.join("last.json").exists() || out.join("summary.json").exists()) {
        return Err(Error::Train(format!(
            "{} already holds a run; continue it with --resume {}, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    Ok(())
}

/// The default run directory for a configuration.
pub fn default_run_dir(cfg: &TrainConfig) -> PathBuf {
    PathBuf::from(format!(
        "runs/{}-{}l-seed{}",
        cfg.model.mech, cfg.model.layers, cfg.seed
    ))
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

/// The run that `diagc train` starts or continues: for a new run, `cfg` and its directory
/// (`out`, else [`default_run_dir`]), prepared; with `resume`, the run saved there (its own
/// configuration, of which only the stopping point `--steps` may change) and its last
/// checkpoint to restore.
pub fn start_or_resume(
    cfg: TrainConfig,
    out: Option<PathBuf>,
    resume: Option<&Path>,
) -> Result<(TrainConfig, PathBuf, Option<checkpoint::Checkpoint>), Error> {
    let (cfg, out, ck) = match resume {
        Some(dir) => {
            let (mut saved, ck) =
                load_run(dir, "last").map_err(|e| e.context("cannot resume: "))?;
            saved.max_steps = cfg.max_steps.or(saved.max_steps);
            (saved, dir.to_path_buf(), Some(ck))
        }
        None => {
            let out = out.unwrap_or_else(|| default_run_dir(&cfg));
            (cfg, out, None)
        }
    };
    prepare_run_dir(&out, ck.is_some())?;
    let path = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Train(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::write(path, e))?;
    Ok((cfg, out, ck))
}

/// The checkpoint `stem` (`best`, `last`) of a run directory with the configuration it was
/// trained with.
pub fn load_run(dir: &Path, stem: &str) -> Result<(TrainConfig, checkpoint::Checkpoint), Error> {
    let ck = checkpoint::load(dir, stem)?;
    let cfg: TrainConfig = serde_json::from_value(ck.sidecar["config"].clone()).map_err(|e| {
        Error::Checkpoint(format!(
            "{}/{stem}.json has no usable config: {e}",
            dir.display()
        ))
    })?;
    Ok((cfg, ck))
}
