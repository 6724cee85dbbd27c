//! Sweeps: the paper's experiment as one command (`diagc sweep`).
//!
//! A sweep file (TOML, [`spec`]) names a grid of training runs: mechanisms, depths, seeds,
//! learning-rate scales and any `diagc train` setting. [`plan`] expands it into an indexed list of
//! fully specified runs (`plan.jsonl`) in a sweep directory; [`exec`] runs the entries (each one a
//! `diagc train` run directory under `runs/`, locked while it runs, its outcome recorded under
//! `state/`), choosing each model's learning rate from stage A before stage B runs its seeds;
//! [`timing`] measures the training step of every model against a reference mechanism, round
//! after round, for Figure 4; [`results`] gathers every run into `results.csv` / `results.jsonl`
//! and the aggregate table; `report` draws the figures and writes `report.html`.
//!
//! The sweep directory:
//!
//! ```text
//! DIR/sweep.toml       the sweep file, copied at plan time (a changed file is refused)
//! DIR/plan.json        the plan's header: sweep name, SHA-256 of sweep.toml, diagc version, counts
//! DIR/plan.jsonl       one `Entry` per line, by index
//! DIR/runs/NAME/       one `diagc train` run directory per training entry
//! DIR/state/NAME.json  the sweep's record of an entry (`State`), written atomically
//! DIR/state/NAME.lock  held (flock) while a process runs the entry
//! DIR/tuning.json      stage A's choice per model (`Choice`), once stage A of a model is done
//! DIR/timing/NAME.json one `TimingRecord` per timing entry
//! DIR/results.jsonl    one `ResultRow` per entry; results.csv the same; aggregate.csv
//! DIR/report.html      `diagc sweep report DIR`
//! ```

pub mod cluster;
pub mod compare;
pub mod exec;
pub mod figures;
pub mod plan;
pub mod report;
pub mod results;
pub mod spec;
pub mod store;
pub mod timing;

use serde::{Deserialize, Serialize};

/// What an entry of the plan does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// A run of a sweep without learning-rate tuning.
    Single,
    /// Stage A of the tuning: one seed at one learning-rate scale of the grid.
    A,
    /// Stage B: one seed at the learning rate that stage A chose for its model.
    B,
    /// The timing phase (Figure 4): one model's training step against the reference's.
    Timing,
}

/// The outcome of an entry, as `diagc sweep status` and the results show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Finished: its summary (or timing record) is written.
    Done,
    /// Stopped with an error (recorded in its state).
    Failed,
    /// Stopped because the loss diverged (a training entry).
    Diverged,
    /// A process holds its lock now.
    Running,
    /// Stopped by a signal with its state saved; the next run resumes it.
    Interrupted,
    /// Not started, or started and killed before it recorded anything (resumed when run).
    Pending,
    /// A stage B entry whose model's stage A is not finished.
    Waiting,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Diverged => "diverged",
            Status::Running => "running",
            Status::Interrupted => "interrupted",
            Status::Pending => "pending",
            Status::Waiting => "waiting",
        }
    }
}

/// A model of the sweep: what stage A tunes the learning rate of, what Figure 2 plots a point
/// of, what the aggregate table has a row for. Besides the mechanism and the depth, every other
/// swept setting is part of the model (`swept`, in the sweep file's order).
///
/// Models order by mechanism, depth, then swept settings, numbers inside names compared as
/// numbers (`bptt=35` before `bptt=128`, `m2` before `m10`): tables, legends and figures list
/// them in that order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelKey {
    /// The mechanism as the sweep file names it (`anatomy.m05`, `m1`, or a path).
    pub mech: String,
    pub layers: usize,
    /// The other swept settings, `name=value` (e.g. `bptt=256`), sorted by name.
    pub swept: Vec<String>,
}

impl Ord for ModelKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        natural_cmp(&self.mech, &other.mech)
            .then(self.layers.cmp(&other.layers))
            .then_with(|| {
                for (a, b) in self.swept.iter().zip(&other.swept) {
                    let o = natural_cmp(a, b);
                    if o.is_ne() {
                        return o;
                    }
                }
                self.swept.len().cmp(&other.swept.len())
            })
    }
}

impl PartialOrd for ModelKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Compares two strings with their runs of ASCII digits as numbers (`x35` < `x128`); equal
/// numbers with different zero padding, and everything else, compare as text.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = if x.0 && y.0 {
            let (tx, ty) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
            tx.len().cmp(&ty.len()).then(tx.cmp(ty))
        } else {
            x.1.cmp(y.1)
        };
        if o.is_ne() {
            return o;
        }
    }
    ca.len().cmp(&cb.len()).then(a.cmp(b))
}

impl ModelKey {
    /// `anatomy.m05 L2` or `m1 L1 bptt=256`.
    pub fn label(&self) -> String {
        let mut s = format!("{} L{}", self.mech, self.layers);
        for x in &self.swept {
            s.push(' ');
            s.push_str(x);
        }
        s
    }
}

/// One line of `plan.jsonl`: a fully specified unit of work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 0-based, dense, the order of `plan.jsonl`: what `sweep run-one --index` takes.
    pub index: usize,
    pub stage: Stage,
    /// The entry's name: its run directory under `runs/` (training) or its record under
    /// `timing/` (timing), and its state under `state/`. Unique in the plan; made of the model,
    /// the seed, the learning-rate scale and a hash, so that a re-plan keeps finished runs.
    pub name: String,
    pub model: ModelKey,
    pub seed: u64,
    /// The learning-rate scale; `None` for stage B (stage A's choice, known at run time) and
    /// for timing entries.
    pub lr_scale: Option<f64>,
    /// The `diagc train` arguments of the run, without `--out`, `--seed`, `--lr-scale` and the
    /// data directory (which the entry's fields and the runner give). Timing entries: the model
    /// flags only.
    pub args: Vec<String>,
    /// Relative to the sweep directory: `runs/NAME` or `timing/NAME.json`.
    pub run_dir: String,
    /// SHA-256 (hex, first 16 digits) of the entry's stage, model, seed, LR scale and args.
    pub hash: String,
}

/// `state/NAME.json`: what the sweep knows of an entry besides its run directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// `failed`, `diverged`, `interrupted` or `done` (never `running` or `pending`: those are
    /// read off the lock and the absence of a state).
    pub status: Option<Status>,
    /// The error of a failed or diverged entry, as `diagc train` prints it.
    pub error: Option<String>,
    /// How many times a process started the entry.
    pub attempts: u32,
    /// The learning-rate scale the run used (stage B: stage A's choice).
    pub lr_scale: Option<f64>,
    /// Peak resident memory of the process that ran the entry (bytes), `getrusage`.
    pub peak_rss_bytes: Option<u64>,
    /// Seconds the last attempt ran.
    pub wall_time_s: Option<f64>,
    /// RFC 3339 UTC times of the last attempt.
    pub started: Option<String>,
    pub ended: Option<String>,
    pub host: Option<String>,
    /// The version and commit of the diagc that ran the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagc_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagc_commit: Option<String>,
}

/// `tuning.json` holds one `Choice` per tuned model: stage A's ranking and the chosen scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub model: ModelKey,
    /// The chosen learning-rate scale: the best validation perplexity of stage A.
    pub lr_scale: f64,
    /// Every scale of the grid with its best validation perplexity (`None`: failed or
    /// diverged), in the grid's order.
    pub candidates: Vec<(f64, Option<f64>)>,
    /// The chosen scale is the smallest or the largest of the grid: the grid should be widened.
    pub at_edge: bool,
}

/// `timing/NAME.json`: one model's training step against the reference mechanism's, measured
/// alternately in one process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingRecord {
    pub model: ModelKey,
    /// The reference mechanism (M1 in the paper) at the same depth and settings.
    pub reference: String,
    /// Seconds of one whole training step (forward, backward, clipping, Adam), the median over
    /// the steps of a round, per round: (model, reference).
    pub rounds: Vec<(f64, f64)>,
    /// Per-round ratios model / reference: median, first and third quartiles.
    pub time_ratio: Quartiles,
    /// Planned bytes (workspace, parameters, gradients, Adam) of the model and the reference,
    /// and their ratio.
    pub memory_bytes: (u64, u64),
    pub memory_ratio: f64,
    /// Tokens per second of the model's median step.
    pub tokens_per_s: f64,
    /// `cpu` or the GPU's name.
    pub device: String,
}

/// A median with its interquartile range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quartiles {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
}

impl Quartiles {
    /// The quartiles of `v` by linear interpolation; `None` for an empty slice.
    pub fn of(v: &[f64]) -> Option<Quartiles> {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let pos = q * (s.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        };
        Some(Quartiles {
            median: at(0.5),
            q1: at(0.25),
            q3: at(0.75),
        })
    }
}

/// One line of `results.jsonl` (and one row of `results.csv`): a training entry as it stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub index: usize,
    pub name: String,
    pub stage: Stage,
    pub mech: String,
    pub layers: usize,
    /// Every other swept setting, `name=value`.
    pub swept: Vec<String>,
    pub seed: u64,
    pub lr_scale: Option<f64>,
    pub status: Status,
    pub error: Option<String>,
    /// Counted in the aggregate and Figure 2: stage B, stage A at the chosen scale with the
    /// tuning seed when stage A trains at the full budget, and every single-stage run.
    pub chosen: bool,
    pub parameters: Option<usize>,
    pub best_valid_ppl: Option<f64>,
    pub last_valid_ppl: Option<f64>,
    /// Test perplexity of the best checkpoint.
    pub test_ppl: Option<f64>,
    pub best_step: Option<usize>,
    pub steps: Option<usize>,
    pub train_tokens_per_s: Option<f64>,
    /// Planned memory of the run (workspace, parameters, gradients, Adam), bytes.
    pub planned_memory_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
    pub wall_time_s: Option<f64>,
    pub device: Option<String>,
    pub diagc_version: String,
    pub git_commit: Option<String>,
    /// Relative to the sweep directory.
    pub run_dir: String,
}

/// One row of `aggregate.csv`: the chosen runs of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AggregateRow {
    pub model: ModelKey,
    pub lr_scale: Option<f64>,
    /// Stage A chose the smallest or largest scale of its grid.
    pub lr_at_edge: bool,
    pub parameters: Option<usize>,
    /// Runs counted (finished, chosen) and runs expected.
    pub n: usize,
    pub expected: usize,
    pub test_ppl: Option<Stats>,
    pub valid_ppl: Option<Stats>,
}

/// Mean, sample standard deviation (0 for one value), minimum and maximum.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// `None` for no finite value.
    pub fn of(v: &[f64]) -> Option<Stats> {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stats {
            mean,
            sd,
            min,
            max,
            n,
        })
    }
}

/// The paper's colour classes of Figure 2, and a fourth for every other mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MechClass {
    /// Built from linear attention only (M0 and its recombinations with itself).
    LinearOnly,
    /// Built from scaled dot-product attention only (M1 and its recombinations with itself).
    DotProductOnly,
    /// Both generators.
    Both,
    /// Any other mechanism (stdlib classics, users' files).
    Other,
}

/// One run's curves from its `metrics.jsonl`: the `valid_ppl` records, and the training loss
/// as a smoothed perplexity (drawn when the runs validated too rarely to make a curve).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The entry's name (or the run directory's for `diagc compare`).
    pub name: String,
    pub model: ModelKey,
    pub seed: u64,
    /// (step, validation perplexity), by step.
    pub points: Vec<(usize, f64)>,
    /// (step, training perplexity): `exp` of the mean loss over the [`TRAIN_WINDOW`] steps up to
    /// `step`, thinned to at most [`TRAIN_POINTS`] points, by step. See [`train_curve`].
    #[serde(default)]
    pub train: Vec<(usize, f64)>,
}

/// The steps over which [`train_curve`] averages the training loss.
pub const TRAIN_WINDOW: usize = 50;
/// The most points [`train_curve`] keeps of a run (the report stays small).
pub const TRAIN_POINTS: usize = 120;

/// The training curve of a run's metrics lines: `exp` of the trailing mean of the finite `loss`
/// records over [`TRAIN_WINDOW`] steps (the first point is the first full window, or the last step
/// of a shorter run), thinned evenly to at most [`TRAIN_POINTS`] points with the last kept.
pub fn train_curve<'a>(metrics: impl IntoIterator<Item = &'a str>) -> Vec<(usize, f64)> {
    let mut loss: Vec<(usize, f64)> = metrics
        .into_iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let step = v.get("step")?.as_u64()? as usize;
            let l = v.get("loss")?.as_f64()?;
            l.is_finite().then_some((step, l))
        })
        .collect();
    loss.sort_by_key(|p| p.0);
    loss.dedup_by_key(|p| p.0);
    if loss.is_empty() {
        return Vec::new();
    }
    let w = TRAIN_WINDOW.min(loss.len());
    let mut sum: f64 = loss[..w].iter().map(|p| p.1).sum();
    let mut smooth = vec![(loss[w - 1].0, (sum / w as f64).exp())];
    for i in w..loss.len() {
        sum += loss[i].1 - loss[i - w].1;
        smooth.push((loss[i].0, (sum / w as f64).exp()));
    }
    let every = smooth.len().div_ceil(TRAIN_POINTS).max(1);
    let last = smooth.len() - 1;
    smooth
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (last - i) % every == 0)
        .map(|(_, p)| p)
        .collect()
}

/// A mechanism of the sweep as the report shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MechanismInfo {
    /// As the sweep names it (`anatomy.m05`).
    pub name: String,
    pub class: MechClass,
    /// The first line of its file's header comment, if any (`M05: L[k <- D] (colour class: both).`).
    pub summary: Option<String>,
    /// Its diagram drawn by `render` (SVG text), or why it could not be drawn.
    pub drawing: Result<String, String>,
}

/// Everything `diagc sweep report` and `diagc compare` put in a report, gathered from the
/// sweep directory (or the run directories) beforehand, so that rendering reads no file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// The sweep's name (or "comparison").
    pub title: String,
    /// The sweep file's description, if any.
    pub description: Option<String>,
    pub rows: Vec<ResultRow>,
    pub aggregate: Vec<AggregateRow>,
    pub choices: Vec<Choice>,
    pub timing: Vec<TimingRecord>,
    /// Validation curves of the chosen runs.
    pub curves: Vec<Curve>,
    pub mechanisms: Vec<MechanismInfo>,
    /// The reference mechanism of Figure 4 (M1).
    pub reference: Option<String>,
    /// Provenance, in order: diagc version and commit, device, data SHA-256, sweep-file SHA-256,
    /// dates, the command.
    pub provenance: Vec<(String, String)>,
    /// Warnings a reader must see: a learning rate at the edge of its grid, failed runs, runs
    /// still pending.
    pub flags: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering::*;

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        assert_eq!(natural_cmp("bptt=35", "bptt=128"), Less);
        assert_eq!(natural_cmp("m10", "m2"), Greater);
        assert_eq!(natural_cmp("anatomy.m05", "anatomy.m13"), Less);
        assert_eq!(natural_cmp("a", "a1"), Less);
        assert_eq!(
            natural_cmp("x007", "x7"),
            Less,
            "padding breaks the tie as text"
        );
        assert_eq!(natural_cmp("abc", "abc"), Equal);
        assert_eq!(natural_cmp("", "0"), Less);
        let key = |m: &str, l: usize, s: &[&str]| ModelKey {
            mech: m.into(),
            layers: l,
            swept: s.iter().map(|x| x.to_string()).collect(),
        };
        let mut v = [
            key("m1", 1, &["bptt=2048"]),
            key("m0", 1, &["bptt=128"]),
            key("m0", 1, &["bptt=35"]),
            key("m0", 2, &["bptt=35"]),
            key("m0", 1, &["bptt=1024"]),
        ];
        v.sort();
        let labels: Vec<String> = v.iter().map(ModelKey::label).collect();
        assert_eq!(
            labels,
            [
                "m0 L1 bptt=35",
                "m0 L1 bptt=128",
                "m0 L1 bptt=1024",
                "m0 L2 bptt=35",
                "m1 L1 bptt=2048"
            ]
        );
    }
}
