//! The results of a sweep as it stands: one row per training entry, the aggregate per model,
//! stage A's choices, the timing records; `results.jsonl`, `results.csv`, `aggregate.csv`,
//! `tuning.json`, and the input of the report.

use super::exec::{Sweep, Tuned};
use super::{
    AggregateRow, Choice, Curve, Entry, MechanismInfo, ModelKey, ReportInput, ResultRow, Stage,
    Stats, Status, TimingRecord, store,
};
use crate::error::Error;

/// Everything read off a sweep directory.
pub struct Gathered {
    pub rows: Vec<ResultRow>,
    pub aggregate: Vec<AggregateRow>,
    pub choices: Vec<Choice>,
    pub timing: Vec<TimingRecord>,
    pub statuses: Vec<Status>,
}

/// The commit this diagc was built from (the report's provenance; each row carries the commit
/// of the diagc that ran it, from its state).
pub fn git_commit() -> Option<String> {
    crate::version::build_commit()
}

fn row(sw: &Sweep, e: &Entry, status: Status, chosen_lr: Option<f64>) -> Result<ResultRow, Error> {
    let state = sw.state(e)?;
    let summary = store::summary(&sw.dir, e)?;
    let s = summary.as_ref();
    let f = |k: &str| s.and_then(|s| s.get(k)).and_then(|v| v.as_f64());
    let u = |k: &str| s.and_then(|s| s.get(k)).and_then(|v| v.as_u64());
    let lr = e.lr_scale.or(state.lr_scale).or(chosen_lr);
    let chosen = match e.stage {
        Stage::Single | Stage::B => true,
        Stage::A => {
            sw.header.stage_a_reused
                && Some(e.seed) == sw.header.tuning_seed
                && chosen_lr.is_some()
                && e.lr_scale == chosen_lr
        }
        Stage::Timing => false,
    };
    Ok(ResultRow {
        index: e.index,
        name: e.name.clone(),
        stage: e.stage,
        mech: e.model.mech.clone(),
        layers: e.model.layers,
        swept: e.model.swept.clone(),
        seed: e.seed,
        lr_scale: lr,
        status,
        error: state.error.clone(),
        chosen,
        parameters: u("parameters").map(|p| p as usize),
        best_valid_ppl: f("best_valid_ppl"),
        last_valid_ppl: f("last_valid_ppl"),
        test_ppl: f("test_ppl"),
        best_step: s
            .and_then(|s| s.pointer("/best/step"))
            .and_then(|v| v.as_u64())
            .map(|x| x as usize),
        steps: u("steps").map(|x| x as usize),
        train_tokens_per_s: f("train_tokens_per_s"),
        planned_memory_bytes: u("peak_memory_bytes"),
        peak_rss_bytes: state.peak_rss_bytes,
        wall_time_s: state.wall_time_s.or(f("wall_time_s")),
        device: s
            .and_then(|s| s.get("device"))
            .and_then(|v| v.as_str())
            .map(str::to_string),
        // The diagc that ran the entry (its state; a run's own record for the version), not the
        // one gathering the results.
        diagc_version: state
            .diagc_version
            .clone()
            .or_else(|| {
                store::run_record(&sw.dir, &e.run_dir)
                    .and_then(|r| r.get("diagc_version")?.as_str().map(str::to_string))
            })
            .unwrap_or_default(),
        git_commit: state.diagc_commit.clone().or_else(|| {
            store::run_record(&sw.dir, &e.run_dir)
                .and_then(|r| r.get("diagc_commit")?.as_str().map(str::to_string))
        }),
        run_dir: e.run_dir.clone(),
    })
}

/// Reads every entry of the sweep.
pub fn gather(sw: &Sweep) -> Result<Gathered, Error> {
    let statuses = sw.statuses()?;
    let mut choices = Vec::new();
    let mut chosen_lr: Vec<(ModelKey, f64)> = Vec::new();
    for m in sw.models() {
        if sw.stage_a(&m).next().is_none() {
            continue;
        }
        if let Tuned::Chosen(c) = sw.tuned(&m)? {
            chosen_lr.push((m.clone(), c.lr_scale));
            choices.push(c);
        }
    }
    let lr_for = |m: &ModelKey| chosen_lr.iter().find(|(k, _)| k == m).map(|(_, lr)| *lr);
    let mut rows = Vec::new();
    let mut timing = Vec::new();
    for (e, st) in sw.entries.iter().zip(&statuses) {
        if e.stage == Stage::Timing {
            if let Some(t) = store::timing(&sw.dir, e)? {
                timing.push(t);
            }
            continue;
        }
        rows.push(row(sw, e, *st, lr_for(&e.model))?);
    }
    let aggregate = aggregate(sw, &rows, &choices);
    Ok(Gathered {
        rows,
        aggregate,
        choices,
        timing,
        statuses,
    })
}

/// The aggregate per model of the chosen, finished runs.
pub fn aggregate(sw: &Sweep, rows: &[ResultRow], choices: &[Choice]) -> Vec<AggregateRow> {
    let mut out = Vec::new();
    for m in sw.models() {
        let mine: Vec<&ResultRow> = rows
            .iter()
            .filter(|r| r.chosen && r.mech == m.mech && r.layers == m.layers && r.swept == m.swept)
            .collect();
        let all: Vec<&ResultRow> = rows
            .iter()
            .filter(|r| r.mech == m.mech && r.layers == m.layers && r.swept == m.swept)
            .collect();
        if all.is_empty() {
            continue; // a timing-only model
        }
        let choice = choices.iter().find(|c| c.model == m);
        let tuned = sw.stage_a(&m).next().is_some();
        let expected = if tuned {
            sw.header.seeds.len()
        } else {
            all.len()
        };
        let done: Vec<&&ResultRow> = mine.iter().filter(|r| r.status == Status::Done).collect();
        let test: Vec<f64> = done.iter().filter_map(|r| r.test_ppl).collect();
        let valid: Vec<f64> = done.iter().filter_map(|r| r.best_valid_ppl).collect();
        let lr_scale = match choice {
            Some(c) => Some(c.lr_scale),
            None if !tuned => all.first().and_then(|r| r.lr_scale),
            None => None,
        };
        out.push(AggregateRow {
            model: m.clone(),
            lr_scale,
            lr_at_edge: choice.is_some_and(|c| c.at_edge),
            parameters: all.iter().find_map(|r| r.parameters),
            n: done.len(),
            expected,
            test_ppl: Stats::of(&test),
            valid_ppl: Stats::of(&valid),
        });
    }
    out
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or(String::new(), T::to_string)
}

/// `results.csv`: one row per training entry; every swept setting has its own column.
pub fn results_csv(rows: &[ResultRow]) -> String {
    let mut swept_keys: Vec<String> = Vec::new();
    for r in rows {
        for s in &r.swept {
            let k = s.split_once('=').map_or(s.as_str(), |(k, _)| k).to_string();
            if !swept_keys.contains(&k) {
                swept_keys.push(k);
            }
        }
    }
    let mut head: Vec<String> = ["index", "name", "stage", "mech", "layers"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    head.extend(swept_keys.iter().cloned());
    head.extend(
        [
            "seed",
            "lr_scale",
            "status",
            "chosen",
            "parameters",
            "best_valid_ppl",
            "last_valid_ppl",
            "test_ppl",
            "best_step",
            "steps",
            "train_tokens_per_s",
            "planned_memory_bytes",
            "peak_rss_bytes",
            "wall_time_s",
            "device",
            "diagc_version",
            "git_commit",
            "run_dir",
            "error",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut out = head.join(",");
    out.push('\n');
    for r in rows {
        let mut f: Vec<String> = vec![
            r.index.to_string(),
            r.name.clone(),
            stage_name(r.stage).into(),
            r.mech.clone(),
            r.layers.to_string(),
        ];
        for k in &swept_keys {
            let v = r
                .swept
                .iter()
                .find_map(|s| s.strip_prefix(&format!("{k}=")).map(str::to_string))
                .unwrap_or_default();
            f.push(v);
        }
        f.extend([
            r.seed.to_string(),
            r.lr_scale.map_or(String::new(), super::spec::format_float),
            r.status.as_str().into(),
            r.chosen.to_string(),
            opt(&r.parameters),
            opt(&r.best_valid_ppl),
            opt(&r.last_valid_ppl),
            opt(&r.test_ppl),
            opt(&r.best_step),
            opt(&r.steps),
            opt(&r.train_tokens_per_s),
            opt(&r.planned_memory_bytes),
            opt(&r.peak_rss_bytes),
            opt(&r.wall_time_s),
            opt(&r.device),
            r.diagc_version.clone(),
            opt(&r.git_commit),
            r.run_dir.clone(),
            r.error.clone().unwrap_or_default(),
        ]);
        let line: Vec<String> = f.iter().map(|s| csv_field(s)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

pub fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Single => "single",
        Stage::A => "a",
        Stage::B => "b",
        Stage::Timing => "timing",
    }
}

/// `aggregate.csv`: one row per model.
pub fn aggregate_csv(rows: &[AggregateRow]) -> String {
    let mut out = String::from(
        "mech,layers,swept,lr_scale,lr_at_edge,parameters,n,expected,test_ppl_mean,test_ppl_sd,\
         test_ppl_min,test_ppl_max,valid_ppl_mean,valid_ppl_sd\n",
    );
    for a in rows {
        let t = a.test_ppl;
        let v = a.valid_ppl;
        let f: Vec<String> = vec![
            a.model.mech.clone(),
            a.model.layers.to_string(),
            a.model.swept.join(" "),
            a.lr_scale.map_or(String::new(), super::spec::format_float),
            a.lr_at_edge.to_string(),
            opt(&a.parameters),
            a.n.to_string(),
            a.expected.to_string(),
            opt(&t.map(|s| s.mean)),
            opt(&t.map(|s| s.sd)),
            opt(&t.map(|s| s.min)),
            opt(&t.map(|s| s.max)),
            opt(&v.map(|s| s.mean)),
            opt(&v.map(|s| s.sd)),
        ];
        let line: Vec<String> = f.iter().map(|s| csv_field(s)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Writes `results.jsonl`, `results.csv`, `aggregate.csv` and `tuning.json`.
pub fn write(sw: &Sweep, g: &Gathered) -> Result<(), Error> {
    let mut jsonl = String::new();
    for r in &g.rows {
        jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
        jsonl.push('\n');
    }
    store::write(&sw.dir, "results.jsonl", jsonl.as_bytes())?;
    store::write(&sw.dir, "results.csv", results_csv(&g.rows).as_bytes())?;
    store::write(
        &sw.dir,
        "aggregate.csv",
        aggregate_csv(&g.aggregate).as_bytes(),
    )?;
    if sw.header.lr_scales.is_some() {
        store::write_json(&sw.dir, "tuning.json", &g.choices)?;
    }
    Ok(())
}

/// The report's input: the gathered results, the validation curves of the chosen runs, each
/// mechanism's drawing (`draw` is given its stdlib name or path and returns an SVG), the
/// provenance and the flags.
pub fn report_input(
    sw: &Sweep,
    g: &Gathered,
    draw: &dyn Fn(&str, &str) -> Result<String, String>,
    provenance: Vec<(String, String)>,
) -> ReportInput {
    let mut curves = Vec::new();
    for r in g.rows.iter().filter(|r| r.chosen) {
        let points = store::valid_curve(&sw.dir, &r.run_dir);
        let train = store::train_curve(&sw.dir, &r.run_dir);
        if !points.is_empty() || !train.is_empty() {
            curves.push(Curve {
                name: r.name.clone(),
                model: ModelKey {
                    mech: r.mech.clone(),
                    layers: r.layers,
                    swept: r.swept.clone(),
                },
                seed: r.seed,
                points,
                train,
            });
        }
    }
    let mut mechanisms: Vec<MechanismInfo> = Vec::new();
    for e in &sw.entries {
        if mechanisms.iter().any(|m| m.name == e.model.mech) {
            continue;
        }
        // The header comment as the run copied it, else as the sweep names it.
        let header = sw
            .entries
            .iter()
            .filter(|x| x.model.mech == e.model.mech && x.stage != Stage::Timing)
            .find_map(|x| store::mechanism_header(&sw.dir, &x.run_dir, &e.model.mech));
        let arg = e.args.first().cloned().unwrap_or_default();
        mechanisms.push(MechanismInfo {
            name: e.model.mech.clone(),
            class: super::compare::class_of(&e.model.mech, header.as_deref()),
            summary: header,
            drawing: draw(&e.model.mech, &arg),
        });
    }
    let mut flags = Vec::new();
    for c in &g.choices {
        if c.at_edge {
            flags.push(format!(
                "{}: stage A chose learning-rate scale {}, at the edge of the grid; widen [tuning] \
                 lr_scales beyond it",
                c.model.label(),
                super::spec::format_float(c.lr_scale)
            ));
        }
    }
    let count = |s: Status| g.statuses.iter().filter(|x| **x == s).count();
    for (s, what) in [
        (Status::Failed, "failed"),
        (Status::Diverged, "diverged"),
        (Status::Pending, "not started"),
        (Status::Waiting, "waiting for stage A"),
        (Status::Running, "running"),
        (Status::Interrupted, "interrupted (resumable)"),
    ] {
        let n = count(s);
        if n > 0 {
            flags.push(format!("{n} of {} entries {what}", g.statuses.len()));
        }
    }
    ReportInput {
        title: sw.header.name.clone(),
        description: sw.header.description.clone(),
        rows: g.rows.clone(),
        aggregate: g.aggregate.clone(),
        choices: g.choices.clone(),
        timing: g.timing.clone(),
        curves,
        mechanisms,
        reference: sw.header.reference.clone(),
        provenance,
        flags,
    }
}
