//! A synthetic sweep for the report's tests (`sweep_report.rs`, `sweep_browser.rs`): mechanisms
//! of every class, two depths, three seeds, stage A over three learning-rate scales, one failed
//! run, one learning rate chosen at the edge of its grid, one model with a single finished seed,
//! timing records, curves and drawings of real stdlib mechanisms.
#![allow(dead_code)]

use diagc::sweep::{
    AggregateRow, Choice, Curve, MechClass, MechanismInfo, ModelKey, Quartiles, ReportInput,
    ResultRow, Stage, Stats, Status, TimingRecord, compare, report,
};

pub const MECHS: &[(&str, MechClass)] = &[
    ("anatomy.m00", MechClass::LinearOnly),
    ("anatomy.m02", MechClass::LinearOnly),
    ("anatomy.m01", MechClass::DotProductOnly),
    ("anatomy.m09", MechClass::DotProductOnly),
    ("anatomy.m05", MechClass::Both),
    ("anatomy.m08", MechClass::Both),
    ("bahdanau", MechClass::Other),
];
pub const DEPTHS: &[usize] = &[1, 2];
pub const SEEDS: &[u64] = &[0, 1, 2];
pub const SCALES: &[f64] = &[0.5, 1.0, 2.0];

/// The failed run (stage B).
pub const FAILED: &str = "anatomy.m08-L2-s2-b";
/// The model whose chosen learning rate is the largest of the grid.
pub const EDGE: (&str, usize) = ("anatomy.m09", 1);
/// The model with one finished seed (the others pending).
pub const SINGLE: (&str, usize) = ("bahdanau", 2);

fn key(mech: &str, layers: usize) -> ModelKey {
    ModelKey {
        mech: mech.into(),
        layers,
        swept: vec![],
    }
}

/// Trainable parameters: 13.4M at one layer, 3.15M more per layer, nested mechanisms 1.05M more
/// per layer.
pub fn params(mech: &str, layers: usize) -> usize {
    let nested = !matches!(mech, "anatomy.m00" | "anatomy.m01" | "bahdanau");
    10_250_000 + layers * (3_152_384 + if nested { 1_048_576 } else { 0 })
}

fn test_ppl(mi: usize, layers: usize, seed: u64) -> f64 {
    130.0 - 6.0 * layers as f64 + 1.7 * mi as f64 + [0.0, 1.9, -1.4][seed as usize % 3]
}

fn row(name: String, stage: Stage, mech: &str, layers: usize, seed: u64, lr: f64) -> ResultRow {
    ResultRow {
        index: 0,
        name: name.clone(),
        stage,
        mech: mech.into(),
        layers,
        swept: vec![],
        seed,
        lr_scale: Some(lr),
        status: Status::Done,
        error: None,
        chosen: stage == Stage::B,
        parameters: Some(params(mech, layers)),
        best_valid_ppl: None,
        last_valid_ppl: None,
        test_ppl: None,
        best_step: Some(5400),
        steps: Some(6000),
        train_tokens_per_s: Some(41_250.0 + 100.0 * seed as f64),
        planned_memory_bytes: Some(1 << 30),
        peak_rss_bytes: Some(3 << 29),
        wall_time_s: Some(1834.5),
        device: Some("cpu".into()),
        diagc_version: "0.1.0".into(),
        git_commit: Some("d227158".into()),
        run_dir: format!("runs/{name}"),
    }
}

/// The synthetic sweep's report input.
pub fn input() -> ReportInput {
    let mut rows = Vec::new();
    let mut aggregate = Vec::new();
    let mut choices = Vec::new();
    let mut timing = Vec::new();
    let mut curves = Vec::new();
    for (mi, (mech, _)) in MECHS.iter().enumerate() {
        for &layers in DEPTHS {
            // Stage A: seed 0 at every scale; the best is 1.0, or 2.0 for the edge model.
            let chosen = if (*mech, layers) == EDGE { 2.0 } else { 1.0 };
            let mut candidates = Vec::new();
            for &s in SCALES {
                let name = format!("{mech}-L{layers}-s0-a{s}");
                let mut r = row(name, Stage::A, mech, layers, 0, s);
                let v = test_ppl(mi, layers, 0) + 4.0 + 9.0 * (s / chosen).log2().powi(2);
                r.best_valid_ppl = Some(v);
                r.last_valid_ppl = Some(v + 0.5);
                r.test_ppl = Some(v - 3.0);
                candidates.push((s, Some(v)));
                rows.push(r);
            }
            choices.push(Choice {
                model: key(mech, layers),
                lr_scale: chosen,
                candidates,
                at_edge: chosen == 2.0,
            });
            // Stage B: three seeds.
            let mut tests = Vec::new();
            let mut valids = Vec::new();
            for &seed in SEEDS {
                let name = format!("{mech}-L{layers}-s{seed}-b");
                let mut r = row(name.clone(), Stage::B, mech, layers, seed, chosen);
                if name == FAILED {
                    r.status = Status::Failed;
                    r.error = Some(
                        "training diverged at step 812: the loss is NaN\n(the gradient norm was 1e9 before clipping)"
                            .into(),
                    );
                    r.best_valid_ppl = None;
                    r.test_ppl = None;
                    r.train_tokens_per_s = None;
                    rows.push(r);
                    continue;
                }
                if (*mech, layers) == SINGLE && seed > 0 {
                    r.status = Status::Pending;
                    r.parameters = None;
                    r.peak_rss_bytes = None;
                    r.wall_time_s = None;
                    r.train_tokens_per_s = None;
                    rows.push(r);
                    continue;
                }
                let t = test_ppl(mi, layers, seed);
                r.test_ppl = Some(t);
                r.best_valid_ppl = Some(t + 4.0);
                r.last_valid_ppl = Some(t + 4.5);
                tests.push(t);
                valids.push(t + 4.0);
                curves.push(Curve {
                    name: name.clone(),
                    model: key(mech, layers),
                    seed,
                    points: (1..=10)
                        .map(|k| (k * 600, t + 4.0 + 900.0 / (k * k) as f64))
                        .collect(),
                    train: (1..=20)
                        .map(|k| (k * 300, t + 20.0 + 900.0 / k as f64))
                        .collect(),
                });
                rows.push(r);
            }
            aggregate.push(AggregateRow {
                model: key(mech, layers),
                lr_scale: Some(chosen),
                lr_at_edge: chosen == 2.0,
                parameters: Some(params(mech, layers)),
                n: tests.len(),
                expected: SEEDS.len(),
                test_ppl: Stats::of(&tests),
                valid_ppl: Stats::of(&valids),
            });
            if *mech != "anatomy.m01" {
                let base = 0.8 + 0.15 * mi as f64 + 0.05 * layers as f64;
                timing.push(TimingRecord {
                    model: key(mech, layers),
                    reference: "anatomy.m01".into(),
                    rounds: (0..5)
                        .map(|k| (0.1 * base + 0.001 * k as f64, 0.1))
                        .collect(),
                    time_ratio: Quartiles {
                        median: base,
                        q1: base - 0.04,
                        q3: base + 0.05,
                    },
                    memory_bytes: ((1.1e9 * base) as u64, 1_100_000_000),
                    memory_ratio: 0.9 + 0.1 * mi as f64,
                    tokens_per_s: 40_000.0 / base,
                    device: "cpu".into(),
                });
            }
        }
    }
    for (i, r) in rows.iter_mut().enumerate() {
        r.index = i;
    }
    let mechanisms = MECHS
        .iter()
        .map(|(name, class)| {
            let file = name.replace('.', "/");
            let text = diagc::stdlib::FILES
                .iter()
                .find(|(p, _)| p.trim_end_matches(".diag") == file)
                .map(|(_, t)| *t);
            let drawing = match text {
                // Three real drawings are enough (the debug build draws slowly).
                Some(t) if ["anatomy.m00", "anatomy.m05", "anatomy.m09"].contains(name) => {
                    report::mechanism_drawing(name, t)
                }
                Some(_) => Err("not drawn in this test".into()),
                None => Err(format!("{name} is not a stdlib anatomy file")),
            };
            MechanismInfo {
                name: name.to_string(),
                class: *class,
                summary: text.and_then(compare::header_summary),
                drawing,
            }
        })
        .collect();
    ReportInput {
        title: "anatomy-ptb".into(),
        description: Some(
            "The paper's experiment: 7 mechanisms × 2 depths × 3 seeds, learning rate tuned per \
             model (synthetic numbers for the tests)."
                .into(),
        ),
        rows,
        aggregate,
        choices,
        timing,
        curves,
        mechanisms,
        reference: Some("anatomy.m01".into()),
        provenance: vec![
            ("diagc".into(), "0.1.0 (d227158)".into()),
            ("device".into(), "cpu".into()),
            (
                "data SHA-256".into(),
                "ptb.train.txt 0a5fd8a9… ptb.valid.txt c9fe6346… ptb.test.txt dd65a59d…".into(),
            ),
            ("command".into(), "diagc sweep report sweeps/anatomy".into()),
        ],
        flags: vec![
            format!(
                "{} L{}: the chosen learning-rate scale 2 is at the edge of the grid [0.5, 1, 2]",
                EDGE.0, EDGE.1
            ),
            format!("1 run failed: {FAILED}"),
            format!("2 runs pending: {} L{} seeds 1 and 2", SINGLE.0, SINGLE.1),
        ],
    }
}
