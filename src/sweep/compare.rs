//! `diagc compare RUN_DIR...`: a report over ad-hoc `diagc train` run directories, built from
//! their files as the CLI read them (this module reads nothing).
//!
//! Runs that differ only in their seed are one model: the aggregate counts them together. Every
//! other setting that differs between the runs becomes part of the model
//! ([`ModelKey::swept`], `name=value`), so that no two different configurations are averaged.

use super::{
    AggregateRow, Curve, MechClass, MechanismInfo, ModelKey, ReportInput, ResultRow, Stage, Stats,
    Status,
};
use serde_json::Value;
use std::collections::BTreeMap;

/// The class of a mechanism for the figures: from its file's header when it says
/// `(colour class: linear only | dot-product only | both)` (the anatomy files' first line), else
/// from its name (`m0`/`m00` linear only, `m1`/`m01` dot-product only), else `Other`.
///
/// `name` may be dotted (`anatomy.m05`) or a path (`stdlib/anatomy/m05.diag`).
pub fn class_of(name: &str, header: Option<&str>) -> MechClass {
    if let Some(h) = header {
        let lower = h.to_ascii_lowercase();
        for key in ["colour class:", "color class:"] {
            if let Some(i) = lower.find(key) {
                let rest = lower[i + key.len()..].trim_start();
                let end = rest.find([')', '.', '\n', ',', ';']).unwrap_or(rest.len());
                match rest[..end].trim() {
                    "linear only" | "linear-only" => return MechClass::LinearOnly,
                    "dot-product only" | "dot product only" | "dot-product-only" => {
                        return MechClass::DotProductOnly;
                    }
                    "both" => return MechClass::Both,
                    _ => {}
                }
            }
        }
    }
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let base = base.strip_suffix(".diag").unwrap_or(base);
    let base = base.rsplit('.').next().unwrap_or(base);
    match base.to_ascii_lowercase().as_str() {
        "m0" | "m00" => MechClass::LinearOnly,
        "m1" | "m01" => MechClass::DotProductOnly,
        _ => MechClass::Other,
    }
}

/// The first line of a header comment, without `//`: `M05: L[k <- D] (colour class: both).`
pub fn header_summary(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let s = line.strip_prefix("//")?.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// One run directory, as read by the CLI.
#[derive(Clone, Debug, Default)]
pub struct RunFiles {
    /// How the report names the run (its directory as given).
    pub name: String,
    /// `config.json` (a `TrainConfig`).
    pub config: Value,
    /// `summary.json`, once the run has finished.
    pub summary: Option<Value>,
    /// `run.json` (the diagc version the run started with), if readable.
    pub run: Option<Value>,
    /// The lines of `metrics.jsonl`; lines that are not JSON objects (a line being written) are
    /// skipped.
    pub metrics: Vec<String>,
    /// The text of the mechanism's source file, from the run's `source/` copy (for its header
    /// and its drawing).
    pub mechanism_source: Option<String>,
    /// The mechanism drawn (SVG), or why not.
    pub drawing: Option<Result<String, String>>,
}

/// Settings of a configuration that never make two runs different models.
const NOT_MODEL: &[&str] = &["seed", "model.mech", "model.layers"];

/// `config.json` flattened into `a.b = value` pairs (numbers and strings as JSON text).
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, x, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn f64_at(v: &Value, path: &[&str]) -> Option<f64> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_f64().filter(|f| f.is_finite())
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_u64()
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_str().map(str::to_string)
}

/// The validation records of a run's metrics, by step.
pub fn valid_points(metrics: &[String]) -> Vec<(usize, f64)> {
    let mut pts: Vec<(usize, f64)> = metrics
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            let step = v.get("step")?.as_u64()? as usize;
            let ppl = v.get("valid_ppl")?.as_f64()?;
            ppl.is_finite().then_some((step, ppl))
        })
        .collect();
    pts.sort_by_key(|p| p.0);
    pts
}

/// The mean training throughput of the metrics' step records (for an unfinished run).
fn mean_tokens_per_s(metrics: &[String]) -> Option<f64> {
    let v: Vec<f64> = metrics
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("tokens_per_s")?.as_f64())
        .filter(|x| x.is_finite())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The report input of a comparison: a row and a curve per run, an aggregate row per model (the
/// runs that differ only by seed), the mechanisms' classes and drawings, flags for runs that
/// are not finished, and `provenance` as given.
pub fn build(runs: &[RunFiles], provenance: Vec<(String, String)>) -> ReportInput {
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            flatten("", &r.config, &mut m);
            m
        })
        .collect();
    // The settings that differ between the runs (absent counts as a value).
    let mut all_keys: Vec<String> = flat.iter().flat_map(|m| m.keys().cloned()).collect();
    all_keys.sort();
    all_keys.dedup();
    let differing: Vec<String> = all_keys
        .into_iter()
        .filter(|k| !NOT_MODEL.contains(&k.as_str()))
        .filter(|k| {
            let first = flat.first().and_then(|m| m.get(k));
            flat.iter().any(|m| m.get(k) != first)
        })
        .collect();
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let mut flags = Vec::new();
    let mut mechanisms: Vec<MechanismInfo> = Vec::new();
    for (i, (r, f)) in runs.iter().zip(&flat).enumerate() {
        let mech = str_at(&r.config, &["model", "mech"]).unwrap_or_else(|| "?".into());
        let layers = u64_at(&r.config, &["model", "layers"]).unwrap_or(0) as usize;
        let seed = u64_at(&r.config, &["seed"]).unwrap_or(0);
        let lr_scale = f64_at(&r.config, &["lr_scale"]);
        let swept: Vec<String> = differing
            .iter()
            .map(|k| {
                let short = k.strip_prefix("model.").unwrap_or(k);
                format!("{short}={}", f.get(k).map_or("-", String::as_str))
            })
            .collect();
        let model = ModelKey {
            mech: mech.clone(),
            layers,
            swept: swept.clone(),
        };
        let points = valid_points(&r.metrics);
        let s = r.summary.as_ref();
        let status = if s.is_some() {
            Status::Done
        } else {
            flags.push(format!(
                "{}: not finished (no summary.json): still running, or stopped; its numbers are \
                 from its metrics so far",
                r.name
            ));
            Status::Interrupted
        };
        let best_from_metrics = points
            .iter()
            .map(|p| p.1)
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))));
        let best_step_from_metrics = points
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|p| p.0);
        let row = ResultRow {
            index: i,
            name: r.name.clone(),
            stage: Stage::Single,
            mech: mech.clone(),
            layers,
            swept,
            seed,
            lr_scale,
            status,
            error: None,
            chosen: true,
            parameters: s
                .and_then(|s| u64_at(s, &["parameters"]))
                .map(|p| p as usize),
            best_valid_ppl: s
                .and_then(|s| f64_at(s, &["best_valid_ppl"]))
                .or(best_from_metrics),
            last_valid_ppl: s
                .and_then(|s| f64_at(s, &["last_valid_ppl"]))
                .or(points.last().map(|p| p.1)),
            test_ppl: s.and_then(|s| f64_at(s, &["test_ppl"])),
            best_step: s
                .and_then(|s| u64_at(s, &["best", "step"]))
                .map(|x| x as usize)
                .or(best_step_from_metrics),
            steps: s.and_then(|s| u64_at(s, &["steps"])).map(|x| x as usize),
            train_tokens_per_s: s
                .and_then(|s| f64_at(s, &["train_tokens_per_s"]))
                .or_else(|| mean_tokens_per_s(&r.metrics)),
            planned_memory_bytes: s.and_then(|s| u64_at(s, &["peak_memory_bytes"])),
            peak_rss_bytes: None,
            wall_time_s: s.and_then(|s| f64_at(s, &["wall_time_s"])),
            device: s.and_then(|s| str_at(s, &["device"])),
            diagc_version: r
                .run
                .as_ref()
                .and_then(|v| str_at(v, &["diagc_version"]))
                .unwrap_or_default(),
            git_commit: None,
            run_dir: r.name.clone(),
        };
        rows.push(row);
        curves.push(Curve {
            name: r.name.clone(),
            model,
            seed,
            points,
            train: super::train_curve(r.metrics.iter().map(String::as_str)),
        });
        if !mechanisms.iter().any(|m| m.name == mech) {
            let header = r.mechanism_source.as_deref();
            mechanisms.push(MechanismInfo {
                name: mech.clone(),
                class: class_of(&mech, header),
                summary: header.and_then(header_summary),
                drawing: r
                    .drawing
                    .clone()
                    .unwrap_or_else(|| Err("its source was not found in the run directory".into())),
            });
        }
    }
    let aggregate = aggregate(&rows);
    ReportInput {
        title: "comparison".into(),
        description: Some(format!(
            "{} run director{} compared{}.",
            runs.len(),
            if runs.len() == 1 { "y" } else { "ies" },
            if differing.is_empty() {
                String::new()
            } else {
                format!(
                    "; settings that differ between them: {}",
                    differing
                        .iter()
                        .map(|k| k.strip_prefix("model.").unwrap_or(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        )),
        rows,
        aggregate,
        choices: Vec::new(),
        timing: Vec::new(),
        curves,
        mechanisms,
        reference: None,
        provenance,
        flags,
    }
}

/// One aggregate row per model of `rows` (in order of first appearance), over its finished
/// chosen runs.
pub fn aggregate(rows: &[ResultRow]) -> Vec<AggregateRow> {
    let mut order: Vec<ModelKey> = Vec::new();
    let mut by: BTreeMap<ModelKey, Vec<&ResultRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.chosen) {
        let k = ModelKey {
            mech: r.mech.clone(),
            layers: r.layers,
            swept: r.swept.clone(),
        };
        if !by.contains_key(&k) {
            order.push(k.clone());
        }
        by.entry(k).or_default().push(r);
    }
    order
        .into_iter()
        .map(|k| {
            let rs = &by[&k];
            let done: Vec<&&ResultRow> = rs.iter().filter(|r| r.status == Status::Done).collect();
            let test: Vec<f64> = done.iter().filter_map(|r| r.test_ppl).collect();
            let valid: Vec<f64> = done.iter().filter_map(|r| r.best_valid_ppl).collect();
            let mut scales: Vec<f64> = rs.iter().filter_map(|r| r.lr_scale).collect();
            scales.sort_by(f64::total_cmp);
            scales.dedup();
            AggregateRow {
                lr_scale: (scales.len() == 1).then(|| scales[0]),
                lr_at_edge: false,
                parameters: rs.iter().find_map(|r| r.parameters),
                n: done.iter().filter(|r| r.test_ppl.is_some()).count(),
                expected: rs.len(),
                test_ppl: Stats::of(&test),
                valid_ppl: Stats::of(&valid),
                model: k,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let h = "// M05: L[k <- D] (colour class: both).\n// more";
        assert_eq!(class_of("anatomy.m05", Some(h)), MechClass::Both);
        assert_eq!(
            class_of("x", Some("// M02: L[q <- L] (colour class: linear only).")),
            MechClass::LinearOnly
        );
        assert_eq!(
            class_of(
                "x",
                Some("// M09: D[q <- D] (colour class: dot-product only).")
            ),
            MechClass::DotProductOnly
        );
        assert_eq!(class_of("m0", None), MechClass::LinearOnly);
        assert_eq!(class_of("anatomy.m00", None), MechClass::LinearOnly);
        assert_eq!(
            class_of("stdlib/anatomy/m01.diag", None),
            MechClass::DotProductOnly
        );
        assert_eq!(
            class_of("m1", Some("// M1: causal scaled dot-product")),
            MechClass::DotProductOnly
        );
        assert_eq!(class_of("bahdanau", None), MechClass::Other);
        assert_eq!(class_of("m05", None), MechClass::Other);
        assert_eq!(
            header_summary(h).as_deref(),
            Some("M05: L[k <- D] (colour class: both).")
        );
    }

    #[test]
    fn runs_differing_by_seed_are_one_model() {
        let cfg = |seed: u64, bptt: u64| serde_json::json!({"model": {"mech": "m1", "layers": 1, "bptt": bptt}, "seed": seed, "lr_scale": 1.0});
        let summary = |t: f64| serde_json::json!({"parameters": 100, "test_ppl": t, "best_valid_ppl": t + 1.0});
        let run = |name: &str, seed, bptt, t: Option<f64>| RunFiles {
            name: name.into(),
            config: cfg(seed, bptt),
            summary: t.map(summary),
            metrics: vec![
                r#"{"epoch":0,"loss":5.0,"lr":0.001,"step":10,"tokens_per_s":1000.0}"#.into(),
                r#"{"step":600,"valid_ppl":247.08}"#.into(),
                r#"{"step":1200,"valid_ppl":200.5}"#.into(),
                "{\"step\":18".into(),
            ],
            ..RunFiles::default()
        };
        let input = build(
            &[
                run("a", 1, 35, Some(100.0)),
                run("b", 2, 35, Some(110.0)),
                run("c", 1, 70, None),
            ],
            vec![],
        );
        assert_eq!(input.aggregate.len(), 2);
        let a = &input.aggregate[0];
        assert_eq!(a.model.swept, vec!["bptt=35".to_string()]);
        assert_eq!((a.n, a.expected), (2, 2));
        assert_eq!(a.test_ppl.unwrap().mean, 105.0);
        assert_eq!(input.aggregate[1].n, 0);
        assert_eq!(input.rows[2].status, Status::Interrupted);
        assert_eq!(input.rows[2].best_valid_ppl, Some(200.5));
        assert_eq!(input.curves[0].points, vec![(600, 247.08), (1200, 200.5)]);
        assert_eq!(input.flags.len(), 1);
        assert_eq!(input.mechanisms[0].class, MechClass::DotProductOnly);
    }
}
