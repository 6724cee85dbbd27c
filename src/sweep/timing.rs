//! The timing phase of Figure 4: one model's training step against the reference mechanism's at
//! the same sizes, measured alternately in one process, round after round, so that a change in
//! the machine's load falls on both alike. Each round times `steps` steps of each (after a
//! warm-up step) and keeps the medians; the figure shows the median and the quartiles of the
//! per-round ratios.

use super::{ModelKey, Quartiles, TimingRecord};
use crate::error::Error;
use crate::train::bench::{Prepared, median};
use crate::train::model::ModelConfig;

/// Measures `model` (of `key`) against `reference` for `rounds` rounds of `steps` steps; `tick`
/// is called after each round.
pub fn measure(
    key: &ModelKey,
    model: &ModelConfig,
    reference: &ModelConfig,
    rounds: usize,
    steps: usize,
    tick: &mut dyn FnMut(usize),
) -> Result<TimingRecord, Error> {
    let mut m = Prepared::new(model, 0, true, false)?;
    let mut r = Prepared::new(reference, 0, true, false)?;
    m.time(1)?;
    r.time(1)?;
    let mut pairs = Vec::with_capacity(rounds);
    for k in 0..rounds {
        // Alternate which goes first, so that neither always runs on a warmer cache.
        let (tm, tr) = if k % 2 == 0 {
            let tm = m.time(steps)?;
            (tm, r.time(steps)?)
        } else {
            let tr = r.time(steps)?;
            (m.time(steps)?, tr)
        };
        let med = |v: Vec<(std::time::Duration, std::time::Duration)>| {
            median(v.iter().map(|t| t.1.as_secs_f64()).collect())
        };
        pairs.push((med(tm), med(tr)));
        tick(k + 1);
    }
    let ratios: Vec<f64> = pairs.iter().map(|(a, b)| a / b).collect();
    let time_ratio = Quartiles::of(&ratios)
        .ok_or_else(|| Error::Run("the timing phase measured no finite step time".into()))?;
    let own = median(pairs.iter().map(|p| p.0).collect());
    let memory_bytes = (m.planned_bytes(), r.planned_bytes());
    Ok(TimingRecord {
        model: key.clone(),
        reference: reference.mech.clone(),
        rounds: pairs,
        time_ratio,
        memory_ratio: memory_bytes.0 as f64 / memory_bytes.1.max(1) as f64,
        memory_bytes,
        tokens_per_s: m.tokens_per_step as f64 / own,
        device: "cpu".into(),
    })
}
