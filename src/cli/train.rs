//! `diagc train` and `diagc eval`.

use super::*;
use crate::train::run::{self, Control, Outcome, Start, TrainConfig};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

/// The arguments of `diagc train`. The model and protocol flags are optional so that `--resume`
/// can refuse them (a resumed run keeps its configuration); their defaults are the protocol's.
#[derive(clap::Args)]
pub(super) struct TrainArgs {
    /// The mechanism: a stdlib name (m1, m0, bahdanau, ...: the module attention.NAME;
    /// anatomy.m00 to anatomy.m13: the enumerated mechanisms; any stdlib module X.Y defining
    /// a mechanism Y) or a path to a .diag file defining a diagram from [tok, dm] to [tok, dm].
    #[arg(required_unless_present = "resume")]
    pub mech: Option<String>,
    /// Bind a hyperparameter of the mechanism, as NAME=VALUE (repeatable): a number for an
    /// int or float one, a diagram's name for a diagram-valued one; the others take their
    /// defaults. (The LM's own are --layers and --dropout.)
    #[arg(long = "hyper", value_name = "NAME=VALUE")]
    pub hypers: Vec<String>,
    /// The size of a free axis of the model, as NAME=N (repeatable), e.g. `--size r=8` for a
    /// mechanism declaring `axis r`. Not tok, dm, head, dff, vocab, batch (set by --bptt,
    /// --d-model, --heads, --d-ff, the data and --batch-size), nor an axis whose size follows
    /// from others (`dk = dm / head`).
    #[arg(long = "size", value_name = "NAME=N")]
    pub sizes: Vec<String>,
    /// The diagram to train, in a mechanism file that defines several [default: the one named
    /// like the file, else the file's only diagram from [tok, dm] to [tok, dm]].
    #[arg(long, value_name = "NAME")]
    pub diagram: Option<String>,
    /// The language model around the mechanism: a stdlib one by name (lm, lm_nopos: without
    /// positional encoding) or a .diag file defining `lm[mech: ([tok, dm]) -> [tok, dm],
    /// layers: int, p: float](ids: [tok] of vocab) -> [tok, vocab]`; with a mechanism file,
    /// the model's file must be beside it [default: the stdlib mechanism's own, lm_nopos for
    /// those that bring their own positions (stdlib/zoo.toml), else lm].
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Train a model that is not proved causal along `tok` (a mechanism whose outputs may see
    /// later tokens: its perplexity is not a language model's). Without it such a model is
    /// refused before training, with the box and wire through which the future leaks.
    #[arg(long)]
    pub allow_noncausal: bool,
    /// Transformer blocks, 1 to 256 [default: 1].
    #[arg(long)]
    pub layers: Option<usize>,
    /// Model width [default: 512].
    #[arg(long)]
    pub d_model: Option<usize>,
    /// Attention heads; must divide --d-model [default: 4].
    #[arg(long)]
    pub heads: Option<usize>,
    /// Feed-forward width [default: 2048].
    #[arg(long)]
    pub d_ff: Option<usize>,
    /// Dropout probability, in [0, 1) [default: 0.1].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Tokens per window (backpropagation through time) [default: 35].
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Columns of the batch [default: 20].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Stop after N epochs [default: 1, unless --steps is given].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Train exactly N steps (as many epochs as that takes), unless --epochs ends the run
    /// first. With --resume, --epochs and --steps replace the run's stopping point.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Warm-up steps of the Noam schedule [default: 4000].
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Factor on the Noam learning rate, > 0 [default: 1].
    #[arg(long)]
    pub lr_scale: Option<f64>,
    /// Global gradient-norm clipping, >= 0 (0 disables) [default: 1].
    #[arg(long)]
    pub clip: Option<f64>,
    /// Seed of the initialisation and the dropout masks [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Validate (and save last.safetensors) every N steps too, besides every epoch.
    #[arg(long)]
    pub valid_every: Option<usize>,
    /// Train on the first N tokens only (quick runs).
    #[arg(long)]
    pub train_tokens: Option<usize>,
    /// Evaluate on the first N validation and test tokens only (quick runs).
    #[arg(long)]
    pub eval_tokens: Option<usize>,
    /// Stop as diverged when the loss stays above ln(vocab) + NATS for --diverge-steps steps
    /// [default: 5].
    #[arg(long, value_name = "NATS")]
    pub diverge_margin: Option<f64>,
    /// Steps in a row above that threshold that count as divergence; 0 disables the test (a
    /// non-finite loss always stops the run) [default: 10].
    #[arg(long, value_name = "K")]
    pub diverge_steps: Option<usize>,
    /// The PTB directory (default: $DIAGC_DATA, else ../shared/data/ptb, else the cache that
    /// `diagc data fetch ptb` fills; a resumed run uses the one it recorded).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Download the PTB first when it is not found (into the cache, or into --data DIR), as
    /// `diagc data fetch ptb` does.
    #[arg(long)]
    pub download: bool,
    /// The run directory (default: runs/MECH-Ll-seedS; MECH with the file's stem for a path,
    /// followed by the --diagram, --hyper, --size and --model choices: runs/mech.b-temp0.5-1l-seed0).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run that --out holds (its files only; nothing else in the directory).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Continue the run in this directory from its last checkpoint, with its configuration.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Save last.safetensors at least every this many minutes (besides validations, epoch
    /// ends and stops).
    #[arg(long, value_name = "MINUTES", default_value_t = 5.0)]
    pub checkpoint_every_min: f64,
    /// cpu, cuda or auto (auto means cpu). `cuda` trains and evaluates on the GPU (each step
    /// one CUDA graph, attention fused); without a GPU it says why and runs on the CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Run every step on the precompiled kernels (the interpreter path), without the
    /// cranelift-fused elementwise kernels (the same results, bit for bit).
    #[arg(long)]
    pub no_jit: bool,
}

impl TrainArgs {
    /// The flags that set the configuration, by name, when given (a resumed run refuses them).
    fn given_config_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--layers", self.layers.is_some()),
            ("--d-model", self.d_model.is_some()),
            ("--heads", self.heads.is_some()),
            ("--d-ff", self.d_ff.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--bptt", self.bptt.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--warmup", self.warmup.is_some()),
            ("--lr-scale", self.lr_scale.is_some()),
            ("--clip", self.clip.is_some()),
            ("--seed", self.seed.is_some()),
            ("--valid-every", self.valid_every.is_some()),
            ("--train-tokens", self.train_tokens.is_some()),
            ("--eval-tokens", self.eval_tokens.is_some()),
            ("--diverge-margin", self.diverge_margin.is_some()),
            ("--diverge-steps", self.diverge_steps.is_some()),
            ("MECH", self.mech.is_some()),
            ("--hyper", !self.hypers.is_empty()),
            ("--size", !self.sizes.is_empty()),
            ("--diagram", self.diagram.is_some()),
            ("--model", self.model.is_some()),
            ("--allow-noncausal", self.allow_noncausal),
        ];
        given.iter().filter(|g| g.1).map(|g| g.0).collect()
    }

    /// The configuration of a new run: the flags over the protocol's defaults.
    pub(super) fn config(&self) -> Result<TrainConfig, Error> {
        let d = TrainConfig::default();
        let m = &d.model;
        Ok(TrainConfig {
            model: crate::train::model::ModelConfig {
                mech: self.mech.clone().unwrap_or_default(),
                layers: self.layers.unwrap_or(m.layers),
                d_model: self.d_model.unwrap_or(m.d_model),
                heads: self.heads.unwrap_or(m.heads),
                d_ff: self.d_ff.unwrap_or(m.d_ff),
                vocab: m.vocab,
                bptt: self.bptt.unwrap_or(m.bptt),
                batch: self.batch_size.unwrap_or(m.batch),
                dropout: self.dropout.unwrap_or(m.dropout),
                hypers: pairs("--hyper", "NAME=VALUE", &self.hypers, |v| {
                    (!v.is_empty()).then(|| v.to_string())
                })?,
                sizes: pairs("--size", "NAME=N", &self.sizes, |v| {
                    v.parse::<u64>().ok().filter(|n| *n > 0)
                })?,
                diagram: self.diagram.clone(),
                // The stdlib's `lm` is the default: naming it is not naming another model.
                // Without `--model`, a stdlib mechanism trains in the LM its registry entry
                // names (stdlib/zoo.toml: `lm_nopos` for those that bring their own positions).
                model: match self.model.as_deref() {
                    Some(m) => Some(m.to_string()),
                    None => self
                        .mech
                        .as_deref()
                        .filter(|m| !m.ends_with(".diag"))
                        .map(|m| crate::rewrite::registry::default_model(m).to_string()),
                }
                .filter(|m| m != "lm"),
                allow_noncausal: self.allow_noncausal,
            },
            epochs: match (self.epochs, self.steps) {
                (None, None) => Some(1),
                (e, _) => e,
            },
            max_steps: self.steps,
            warmup: self.warmup.unwrap_or(d.warmup),
            lr_scale: self.lr_scale.unwrap_or(d.lr_scale),
            clip: self.clip.unwrap_or(d.clip),
            seed: self.seed.unwrap_or(d.seed),
            eval_batch: d.eval_batch,
            valid_every: self.valid_every,
            train_tokens: self.train_tokens,
            eval_tokens: self.eval_tokens,
            divergence: crate::train::run::Divergence {
                margin: self.diverge_margin.unwrap_or(d.divergence.margin),
                steps: self.diverge_steps.unwrap_or(d.divergence.steps),
            },
        })
    }
}

/// The `NAME=VALUE` arguments of a repeatable flag, each value read by `value` (`None`: not a
/// value this flag takes); a name given twice is refused.
fn pairs<T>(
    flag: &str,
    form: &str,
    given: &[String],
    value: impl Fn(&str) -> Option<T>,
) -> Result<std::collections::BTreeMap<String, T>, Error> {
    let mut out = std::collections::BTreeMap::new();
    for g in given {
        let (k, v) = g
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Error::Usage(format!("{flag} {g}: expected {form}")))?;
        let v = value(v).ok_or_else(|| {
            Error::Usage(format!(
                "{flag} {g}: {}",
                if flag == "--size" {
                    format!("`{v}` is not a positive whole number")
                } else {
                    "the value is empty".to_string()
                }
            ))
        })?;
        if out.insert(k.to_string(), v).is_some() {
            return Err(Error::Usage(format!("{flag} {k}=... is given twice")));
        }
    }
    Ok(out)
}

/// The exit code of a run stopped by `signal`: 128 + its number (130 for Ctrl-C, 143 for
/// SIGTERM, 138 for SIGUSR1), as shells report a process killed by it.
pub(super) fn stopped_code(signal: usize) -> i32 {
    128 + signal as i32
}

pub(super) fn train_cmd(a: &TrainArgs) -> i32 {
    // Signals first: a stop asked during the set-up is honoured at the first step boundary.
    let stop = match stop_on_signals() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match execute(a, &stop) {
        Ok(Ran::Finished) => 0,
        Ok(Ran::Interrupted(signal)) => stopped_code(signal),
        Err(e) => fail(e),
    }
}

/// A flag set to the number of SIGINT, SIGTERM or SIGUSR1 when one arrives.
pub(super) fn stop_on_signals() -> Result<Arc<AtomicUsize>, Error> {
    let stop = Arc::new(AtomicUsize::new(0));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register_usize(sig, stop.clone(), sig as usize)
            .map_err(|e| Error::External(format!("cannot handle signal {sig}: {e}")))?;
    }
    Ok(stop)
}

/// How a training run that did not fail ended.
pub(super) enum Ran {
    Finished,
    /// Stopped by this signal, its state saved.
    Interrupted(usize),
}

/// `diagc train` after its signals are set up: opens (or resumes) the run, trains it, prints
/// the result; `stop` is the flag the signals set.
pub(super) fn execute(a: &TrainArgs, stop: &Arc<AtomicUsize>) -> Result<Ran, Error> {
    known_device(&a.device)?;
    if !(a.checkpoint_every_min.is_finite() && a.checkpoint_every_min > 0.0) {
        return Err(Error::Usage(format!(
            "--checkpoint-every-min: {} is not a positive number of minutes",
            a.checkpoint_every_min
        )));
    }
    let start = match &a.resume {
        Some(dir) => {
            let given = a.given_config_flags();
            if !given.is_empty() {
                return Err(Error::Usage(format!(
                    "--resume continues a run with its own configuration; {} cannot change \
                     (only --epochs and --steps can)",
                    given.join(", ")
                )));
            }
            let bounds = (a.epochs.is_some() || a.steps.is_some()).then_some((a.epochs, a.steps));
            Start::Resume {
                dir: dir.clone(),
                bounds,
            }
        }
        None => Start::New {
            cfg: a.config()?,
            out: a.out.clone(),
            overwrite: a.overwrite,
        },
    };
    if a.download {
        // Bad flags are refused before anything is downloaded.
        let checked = match &start {
            Start::New { cfg, .. } => cfg.validate(),
            Start::Resume { .. } => Ok(()),
        };
        checked.and_then(|_| {
            super::data::download_for_train(a.data.as_deref(), a.resume.as_deref())
        })?;
    }
    if let Start::New { cfg, .. } = &start
        && cfg.model.allow_noncausal
    {
        match crate::train::model::causality(&cfg.model) {
            Ok(d) if d.is_empty() => errln!(
                "note: --allow-noncausal: {} is proved causal along `tok`; the flag changes nothing",
                cfg.model.label()
            ),
            Ok(d) => errln!(
                "warning: --allow-noncausal: {} is not proved causal along `tok` ({} place(s); \
                 `diagc check --causal` shows them): its perplexities are not those of a \
                 language model",
                cfg.model.label(),
                d.len()
            ),
            Err(_) => {}
        }
    }
    let opened = run::open(start, a.data.as_deref())?;
    let run::Opened {
        mut trainer,
        out,
        data_dir,
        resumed_from,
        notes,
    } = opened;
    for n in notes {
        errln!("diagc: warning: {n}");
    }
    trainer.plan_options.jit = !a.no_jit;
    if a.device == "cuda" {
        match crate::backend::cuda::runtime::Gpu::open(Default::default()) {
            Ok(gpu) => {
                errln!(
                    "diagc: training and evaluating on {} ({})",
                    gpu.info.name,
                    gpu.info.arch()
                );
                trainer.use_gpu(gpu);
            }
            Err(why) => errln!("diagc: --device cuda: {why}; running on the CPU"),
        }
    }
    let cfg = &trainer.cfg;
    let (total, bound) = trainer.total_steps();
    match resumed_from {
        Some(Some(step)) => errln!("resuming {} from step {step} of {total}", out.display()),
        Some(None) => errln!(
            "{} has no checkpoint yet: starting it again from step 0",
            out.display()
        ),
        None => {}
    }
    errln!(
        "training {} ({} layer(s), {} trainable parameters{}) on {} into {}: {total} steps (bound: {})",
        cfg.model.label(),
        cfg.model.layers,
        trainer.trainable_parameter_count(),
        match trainer.parameter_count() - trainer.trainable_parameter_count() {
            0 => String::new(),
            n => format!(", {n} frozen"),
        },
        data_dir.display(),
        out.display(),
        match bound {
            run::Bound::Steps => "--steps",
            run::Bound::Epochs => "--epochs",
        }
    );
    if trainer.full_windows_only {
        errln!(
            "note: {}'s parameters depend on the window length, so each split's shorter last \
             window is left out of training and evaluation",
            cfg.model.mech
        );
    }
    let ctl = Control {
        stop,
        progress: std::io::stderr().is_terminal(),
        checkpoint_every: std::time::Duration::from_secs_f64(a.checkpoint_every_min * 60.0),
    };
    match trainer.run(&out, &ctl)? {
        Outcome::Finished(f) => {
            let (bs, bv, bt) = f.best;
            let (ls, lv, lt) = f.last;
            let text = format!(
                "valid perplexity {bv:.2}\ntest perplexity {bt:.2}\n\
                 (best checkpoint, step {bs}; last checkpoint, step {ls}: valid {lv:.2}, test {lt:.2})\n\
                 summary: {}\n",
                out.join("summary.json").display()
            );
            out!("{text}");
            Ok(Ran::Finished)
        }
        Outcome::Interrupted { signal } => {
            errln!(
                "stopped by signal {signal} at step {}; state saved; continue with `diagc train --resume {}`",
                trainer.step,
                out.display()
            );
            Ok(Ran::Interrupted(signal))
        }
    }
}

/// The arguments of `diagc eval`.
#[derive(clap::Args)]
pub(super) struct EvalArgs {
    /// A run directory written by `diagc train`.
    pub run_dir: PathBuf,
    /// valid or test.
    #[arg(long, default_value = "test", value_parser = ["valid", "test"])]
    pub split: String,
    /// Which checkpoint: the best validation's, or the last one.
    #[arg(long, default_value = "best", value_parser = ["best", "last"])]
    pub checkpoint: String,
    /// The PTB directory (default: the one the run recorded, else $DIAGC_DATA, else
    /// ../shared/data/ptb, else the cache).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

pub(super) fn eval_cmd(a: &EvalArgs) -> i32 {
    match run::evaluate(&a.run_dir, &a.checkpoint, &a.split, a.data.as_deref()) {
        Ok((p, note)) => {
            if let Some(n) = note {
                errln!("diagc: warning: {n}");
            }
            outln!("{} perplexity {p:.2}", a.split);
            0
        }
        Err(e) => fail(e),
    }
}
