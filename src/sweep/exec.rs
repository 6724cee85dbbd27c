//! The state of a sweep: what each entry's status is, what stage A chose, what can run next.
//!
//! Nothing here starts a run (the CLI does: `sweep run-one` trains in its own process, `sweep
//! run` starts those processes); this module reads the sweep directory through [`store`] and
//! decides.

use super::plan::Header;
use super::{Choice, Entry, ModelKey, Stage, State, Status, store};
use crate::error::Error;
use std::path::{Path, PathBuf};

/// An open sweep directory.
pub struct Sweep {
    pub dir: PathBuf,
    pub header: Header,
    pub entries: Vec<Entry>,
    /// The text of `sweep.toml`.
    pub text: String,
}

/// Stage A's outcome for one model.
#[derive(Clone, Debug, PartialEq)]
pub enum Tuned {
    /// Some of its stage A runs have not finished.
    Waiting,
    /// Every stage A run failed or diverged: no scale to choose.
    Nothing,
    Chosen(Choice),
}

impl Sweep {
    pub fn open(dir: &Path) -> Result<Sweep, Error> {
        let (header, entries, text) = store::read_plan(dir)?;
        Ok(Sweep {
            dir: dir.to_path_buf(),
            header,
            entries,
            text,
        })
    }

    /// The entry at `index`, or an error saying how many there are.
    pub fn entry(&self, index: usize) -> Result<&Entry, Error> {
        self.entries.get(index).ok_or_else(|| {
            Error::Usage(format!(
                "index {index} is not in the plan of {} (entries 0 to {})",
                self.dir.display(),
                self.entries.len().saturating_sub(1)
            ))
        })
    }

    /// An entry's own status, from its files and its lock (stage B's `Waiting` is not decided
    /// here: see [`Sweep::statuses`]).
    pub fn status(&self, e: &Entry) -> Result<Status, Error> {
        let finished = match e.stage {
            Stage::Timing => store::timing(&self.dir, e)?.is_some(),
            _ => store::summary(&self.dir, e)?.is_some(),
        };
        if finished {
            return Ok(Status::Done);
        }
        if store::is_locked(&self.dir, e) {
            return Ok(Status::Running);
        }
        Ok(match store::state(&self.dir, e)?.and_then(|s| s.status) {
            Some(s @ (Status::Failed | Status::Diverged | Status::Interrupted)) => s,
            _ => Status::Pending,
        })
    }

    /// Every entry's status; a stage B entry that would run is `Waiting` while its model's
    /// stage A is not finished.
    pub fn statuses(&self) -> Result<Vec<Status>, Error> {
        let mut st = self
            .entries
            .iter()
            .map(|e| self.status(e))
            .collect::<Result<Vec<_>, _>>()?;
        for (k, e) in self.entries.iter().enumerate() {
            if e.stage == Stage::B
                && matches!(st[k], Status::Pending | Status::Interrupted)
                && self.stage_a(&e.model).any(|a| !finished(st[a.index]))
            {
                st[k] = Status::Waiting;
            }
        }
        Ok(st)
    }

    /// The stage A entries of a model.
    pub fn stage_a<'a>(&'a self, model: &'a ModelKey) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.stage == Stage::A && &e.model == model)
    }

    /// The models of the sweep, in the plan's order.
    pub fn models(&self) -> Vec<ModelKey> {
        let mut out: Vec<ModelKey> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.model) {
                out.push(e.model.clone());
            }
        }
        out
    }

    /// Stage A's choice for a model: the scale with the best validation perplexity.
    pub fn tuned(&self, model: &ModelKey) -> Result<Tuned, Error> {
        let mut candidates = Vec::new();
        for a in self.stage_a(model) {
            let lr = a.lr_scale.unwrap_or(1.0);
            match self.status(a)? {
                Status::Done => {
                    let s = store::summary(&self.dir, a)?.unwrap_or_default();
                    candidates.push((lr, s.get("best_valid_ppl").and_then(|v| v.as_f64())));
                }
                Status::Failed | Status::Diverged => candidates.push((lr, None)),
                _ => return Ok(Tuned::Waiting),
            }
        }
        Ok(choose(model, candidates))
    }

    /// The learning-rate scale a training entry runs at: its own, or (stage B) stage A's choice.
    pub fn lr_of(&self, e: &Entry) -> Result<Result<f64, String>, Error> {
        if let Some(lr) = e.lr_scale {
            return Ok(Ok(lr));
        }
        Ok(match self.tuned(&e.model)? {
            Tuned::Chosen(c) => Ok(c.lr_scale),
            Tuned::Waiting => Err(format!(
                "stage A of {} has not finished: its learning rate is not chosen yet",
                e.model.label()
            )),
            Tuned::Nothing => Err(format!(
                "every stage A run of {} failed or diverged: no learning rate to train its seeds \
                 at (widen [tuning] lr_scales towards smaller values)",
                e.model.label()
            )),
        })
    }

    /// Whether `sweep run` should start the entry now.
    pub fn runnable(st: Status, retry_failed: bool) -> bool {
        match st {
            Status::Pending | Status::Interrupted => true,
            Status::Failed => retry_failed,
            _ => false,
        }
    }

    pub fn state(&self, e: &Entry) -> Result<State, Error> {
        Ok(store::state(&self.dir, e)?.unwrap_or_default())
    }
}

/// Finished for stage A's purposes: done, failed or diverged.
pub fn finished(s: Status) -> bool {
    matches!(s, Status::Done | Status::Failed | Status::Diverged)
}

/// The choice among stage A's candidates (scale, best validation perplexity or `None`): the
/// lowest perplexity; a tie goes to the smaller scale.
pub fn choose(model: &ModelKey, candidates: Vec<(f64, Option<f64>)>) -> Tuned {
    let best = candidates
        .iter()
        .filter_map(|(lr, p)| p.filter(|p| p.is_finite()).map(|p| (*lr, p)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.total_cmp(&b.0)));
    let Some((lr, _)) = best else {
        return Tuned::Nothing;
    };
    let lo = candidates.iter().map(|c| c.0).fold(f64::INFINITY, f64::min);
    let hi = candidates
        .iter()
        .map(|c| c.0)
        .fold(f64::NEG_INFINITY, f64::max);
    Tuned::Chosen(Choice {
        model: model.clone(),
        lr_scale: lr,
        at_edge: candidates.len() > 1 && (lr == lo || lr == hi),
        candidates,
    })
}
