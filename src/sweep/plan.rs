//! Expanding a checked sweep file into the plan: an indexed list of fully specified entries.
//!
//! The order is the order the local runner takes them in: stage A of every model (or the single
//! runs), then stage B, then timing. An entry's name is its model, stage, seed and learning
//! rate, and a hash of everything that defines it, so that planning a changed file again keeps
//! the runs whose definition did not change.

use super::spec::{Setting, Spec, Value, format_float};
use super::{Entry, ModelKey, Stage};
use sha2::{Digest, Sha256};

/// The plan's header, `plan.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// Format of the sweep directory.
    pub format: u32,
    pub name: String,
    pub description: Option<String>,
    /// SHA-256 of `sweep.toml` (the copy in the sweep directory).
    pub sweep_sha256: String,
    /// The file the plan was made from, as given.
    pub source: String,
    pub diagc_version: String,
    /// RFC 3339, UTC.
    pub created: String,
    pub entries: usize,
    /// Stage A's grid and seed, when the sweep tunes the learning rate.
    pub lr_scales: Option<Vec<f64>>,
    pub tuning_seed: Option<u64>,
    /// Stage A runs at the runs' own budget: its run at the chosen scale counts as that seed's.
    pub stage_a_reused: bool,
    /// The reference mechanism of the timing phase.
    pub reference: Option<String>,
    pub timing_rounds: Option<usize>,
    pub timing_steps: Option<usize>,
    /// The seeds of the sweep, for the aggregate's expected counts.
    pub seeds: Vec<u64>,
}

pub const FORMAT: u32 = 1;

/// A file-system-safe piece of a name: letters, digits, `.`, `-` and `_` (others become `_`).
pub fn slug(s: &str) -> String {
    let stem = if s.ends_with(".diag") {
        std::path::Path::new(s)
            .file_stem()
            .map_or(s.to_string(), |x| x.to_string_lossy().to_string())
    } else {
        s.to_string()
    };
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every combination of the settings' values (the first setting varies slowest).
fn combinations(settings: &[Setting]) -> Vec<Vec<(&Setting, &Value)>> {
    let mut out: Vec<Vec<(&Setting, &Value)>> = vec![vec![]];
    for s in settings {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                s.values.iter().map(move |v| {
                    let mut p = prefix.clone();
                    p.push((s, v));
                    p
                })
            })
            .collect();
    }
    out
}

/// The integer value of a setting in a combination.
fn int_of(combo: &[(&Setting, &Value)], key: &str) -> Option<u64> {
    combo
        .iter()
        .find(|(s, _)| s.key == key)
        .and_then(|(_, v)| match v {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        })
}

fn hash_of(stage: Stage, model: &ModelKey, seed: u64, lr: Option<f64>, args: &[String]) -> String {
    let text = serde_json::to_string(&(stage, model, seed, lr, args)).unwrap_or_default();
    let h = Sha256::digest(text.as_bytes());
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn entry(stage: Stage, model: &ModelKey, seed: u64, lr: Option<f64>, args: Vec<String>) -> Entry {
    let hash = hash_of(stage, model, seed, lr, &args);
    let mut name = format!("{}-L{}", slug(&model.mech), model.layers);
    for s in &model.swept {
        name.push('-');
        name.push_str(&slug(s));
    }
    let tag = match stage {
        Stage::Single => "",
        Stage::A => "-a",
        Stage::B => "-b",
        Stage::Timing => "-timing",
    };
    name.push_str(tag);
    if stage != Stage::Timing {
        name.push_str(&format!("-s{seed}"));
    }
    if let Some(lr) = lr {
        name.push_str(&format!("-lr{}", format_float(lr)));
    }
    name.push('-');
    name.push_str(&hash[..8]);
    let run_dir = match stage {
        Stage::Timing => format!("timing/{name}.json"),
        _ => format!("runs/{name}"),
    };
    Entry {
        index: 0,
        stage,
        name,
        model: model.clone(),
        seed,
        lr_scale: lr,
        args,
        run_dir,
        hash,
    }
}

/// The plan of a sweep, indexed.
pub fn expand(spec: &Spec) -> Vec<Entry> {
    let lr_setting = spec.settings.iter().find(|s| s.key == "lr_scale");
    let others: Vec<Setting> = spec
        .settings
        .iter()
        .filter(|s| s.key != "lr_scale")
        .cloned()
        .collect();
    // Stage A drops the runs' own budget for its own, when it has one.
    let stage_a_budget = spec.tuning.as_ref().and_then(|t| t.steps);
    let mut models = Vec::new();
    for m in &spec.mechanisms {
        for &layers in &spec.layers {
            for combo in combinations(&others) {
                let swept: Vec<String> = combo
                    .iter()
                    .filter(|(s, _)| s.values.len() > 1)
                    .map(|(s, v)| format!("{}={}", s.key, v.arg()))
                    .collect();
                let mut args = vec![m.arg.clone(), "--layers".into(), layers.to_string()];
                let mut a_args = args.clone();
                for (s, v) in &combo {
                    args.extend(s.args(v));
                    if !(stage_a_budget.is_some() && (s.key == "steps" || s.key == "epochs")) {
                        a_args.extend(s.args(v));
                    }
                }
                if let Some(steps) = stage_a_budget {
                    a_args.extend(["--steps".into(), steps.to_string()]);
                }
                if let Some(budget) = int_of(&combo, "token_budget") {
                    let tokens = int_of(&combo, "batch_size").unwrap_or(20)
                        * int_of(&combo, "bptt").unwrap_or(35);
                    let steps = budget.max(1).div_ceil(tokens.max(1));
                    args.extend(["--steps".into(), steps.to_string()]);
                    if stage_a_budget.is_none() {
                        a_args.extend(["--steps".into(), steps.to_string()]);
                    }
                }
                models.push((
                    ModelKey {
                        mech: m.name.clone(),
                        layers,
                        swept,
                    },
                    args,
                    a_args,
                ));
            }
        }
    }
    let mut entries = Vec::new();
    match &spec.tuning {
        Some(t) => {
            for (model, _, a_args) in &models {
                for &lr in &t.lr_scales {
                    entries.push(entry(Stage::A, model, t.seed, Some(lr), a_args.clone()));
                }
            }
            for (model, args, _) in &models {
                for &seed in &spec.seeds {
                    if t.steps.is_none() && seed == t.seed {
                        continue; // stage A's run at the chosen scale is this seed's run
                    }
                    entries.push(entry(Stage::B, model, seed, None, args.clone()));
                }
            }
        }
        None => {
            let lrs: Vec<f64> = match lr_setting {
                Some(s) => s
                    .values
                    .iter()
                    .map(|v| match v {
                        Value::Float(f) => *f,
                        Value::Int(i) => *i as f64,
                        _ => 1.0,
                    })
                    .collect(),
                None => vec![1.0],
            };
            for (model, args, _) in &models {
                for &lr in &lrs {
                    let mut model = model.clone();
                    if lrs.len() > 1 {
                        model.swept.push(format!("lr_scale={}", format_float(lr)));
                    }
                    for &seed in &spec.seeds {
                        entries.push(entry(Stage::Single, &model, seed, Some(lr), args.clone()));
                    }
                }
            }
        }
    }
    if spec.timing.is_some() {
        for (model, args, _) in &models {
            entries.push(entry(Stage::Timing, model, 0, None, args.clone()));
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        e.index = i;
    }
    entries
}

/// The `diagc train` arguments of a training entry, complete: its args, the seed and the
/// learning-rate scale (stage B: `lr`, stage A's choice), and the run directory.
pub fn train_args(e: &Entry, lr: f64, out: &std::path::Path) -> Vec<String> {
    let mut a = e.args.clone();
    a.extend([
        "--seed".into(),
        e.seed.to_string(),
        "--lr-scale".into(),
        format_float(lr),
        "--out".into(),
        out.to_string_lossy().to_string(),
    ]);
    a
}
