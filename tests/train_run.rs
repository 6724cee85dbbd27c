//! Training end to end on a slice of PTB: the loss falls well below the unigram level, an
//! interrupted-then-resumed run gives the same losses as an uninterrupted one, and bad run
//! directories and corrupt checkpoints are clear errors.

use diagc::train::checkpoint;
use diagc::train::data::{self, Corpus};
use diagc::train::model::ModelConfig;
use diagc::train::run::{Control, Outcome, Start, TrainConfig, Trainer, open};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

fn tiny(epochs: usize, max_steps: Option<usize>) -> TrainConfig {
    TrainConfig {
        model: ModelConfig {
            mech: "m1".into(),
            layers: 1,
            d_model: 64,
            heads: 2,
            d_ff: 128,
            vocab: 10_000,
            bptt: 16,
            batch: 8,
            dropout: 0.1,
            ..Default::default()
        },
        epochs: Some(epochs),
        max_steps,
        warmup: 100,
        lr_scale: 2.0,
        clip: 1.0,
        seed: 3,
        eval_batch: 10,
        valid_every: None,
        train_tokens: Some(20_000),
        eval_tokens: Some(2_000),
        divergence: Default::default(),
    }
}

fn fresh_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect()
}

fn new_run(cfg: TrainConfig, out: &Path) -> Trainer {
    let start = Start::New {
        cfg,
        out: Some(out.to_path_buf()),
        overwrite: false,
    };
    open(start, None).unwrap().trainer
}

fn train(cfg: TrainConfig, out: &Path) -> Trainer {
    let mut t = new_run(cfg, out);
    let outcome = t.run(out, &Control::quiet(&AtomicUsize::new(0))).unwrap();
    assert!(matches!(outcome, Outcome::Finished(_)));
    t
}

#[test]
fn the_loss_falls_well_below_the_unigram_level() {
    let out = fresh_dir("unigram");
    // Big enough to learn a 10,000-token slice in 8 epochs (632 steps), without dropout.
    let mut cfg = tiny(8, None);
    cfg.model = ModelConfig {
        d_model: 128,
        heads: 4,
        d_ff: 256,
        dropout: 0.0,
        ..cfg.model
    };
    cfg.lr_scale = 1.0;
    cfg.train_tokens = Some(10_000);
    train(cfg, &out);
    // The unigram entropy of the slice the model trained on (nats per token).
    let c = Corpus::load(&data::data_dir(None)).unwrap();
    let slice = &c.train[..10_000];
    let mut counts = std::collections::HashMap::new();
    for t in slice {
        *counts.entry(*t).or_insert(0usize) += 1;
    }
    let n = slice.len() as f64;
    let unigram: f64 = counts
        .values()
        .map(|k| -(*k as f64 / n) * (*k as f64 / n).ln())
        .sum();
    let l = losses(&out);
    assert!(l.len() > 500, "{} steps", l.len());
    let first: f64 = l[..20].iter().map(|x| x.1).sum::<f64>() / 20.0;
    let last: f64 = l[l.len() - 50..].iter().map(|x| x.1).sum::<f64>() / 50.0;
    assert!(
        first > unigram + 1.0,
        "starts near uniform: {first} vs unigram {unigram}"
    );
    assert!(
        last < unigram - 1.0,
        "last losses {last} vs unigram {unigram}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(summary["test_ppl"].as_f64().unwrap().is_finite());
    assert_eq!(summary["device"], "cpu");
    assert!(summary["parameters"].as_u64().unwrap() > 0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn a_resumed_run_repeats_the_uninterrupted_losses() {
    let a = fresh_dir("whole");
    train(tiny(1, Some(40)), &a);
    let b = fresh_dir("half");
    train(tiny(1, Some(20)), &b);
    // Resume from b's last checkpoint with a later stopping point.
    let start = Start::Resume {
        dir: b.clone(),
        bounds: Some((Some(1), Some(40))),
    };
    let mut t = open(start, None).unwrap().trainer;
    assert_eq!(t.step, 20);
    t.run(&b, &Control::quiet(&AtomicUsize::new(0))).unwrap();
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 40);
    assert_eq!(lb.len(), 40);
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x, y, "step {} differs", x.0);
    }
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_dir_all(&b).unwrap();
}

#[test]
fn an_interrupt_saves_the_state() {
    let out = fresh_dir("stop");
    let mut t = new_run(tiny(1, None), &out);
    let outcome = t.run(&out, &Control::quiet(&AtomicUsize::new(15))).unwrap();
    assert_eq!(outcome, Outcome::Interrupted { signal: 15 });
    assert!(checkpoint::load(&out, "last").is_ok());
    // A directory holding a run is not overwritten by a new one.
    let again = Start::New {
        cfg: tiny(1, None),
        out: Some(out.clone()),
        overwrite: false,
    };
    let e = open(again, None).err().unwrap().to_string();
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn bad_data_and_run_directories_fail_before_training() {
    let e = Trainer::new(tiny(1, None), Path::new("/nonexistent/ptb"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/nonexistent/ptb") && e.contains("--data"),
        "{e}"
    );
    let file = std::env::temp_dir().join(format!("diagc-not-a-dir-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let start = Start::New {
        cfg: tiny(1, None),
        out: Some(file.join("run")),
        overwrite: false,
    };
    assert!(open(start, None).is_err());
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn a_checkpoint_missing_a_tensor_or_with_a_wrong_shape_is_refused() {
    // Item 5 of issue 16: a checkpoint missing a parameter tensor used to evaluate with the
    // untrained one.
    let mut t = Trainer::new(tiny(1, None), &data::data_dir(None)).unwrap();
    let ck = t.checkpoint();
    let mut missing = ck.clone();
    let k = missing
        .tensors
        .iter()
        .position(|(g, _)| g == "param")
        .unwrap();
    let name = missing.tensors.remove(k).1.name;
    let e = t.restore(&missing).unwrap_err().to_string();
    assert!(e.contains(&format!("no tensor `param/{name}`")), "{e}");
    let mut reshaped = ck.clone();
    reshaped.tensors[0].1.shape.push(1);
    let e = t.restore(&reshaped).unwrap_err().to_string();
    assert!(e.contains("has shape"), "{e}");
    let mut other_vocab = ck.clone();
    other_vocab.sidecar["vocab"] = serde_json::json!(5);
    assert!(t.restore(&other_vocab).is_err());
    t.restore(&ck).unwrap();
}

#[test]
fn frozen_random_features_do_not_move_in_training() {
    // Performer's `random[rf, dk]()` is stored with the parameters but never trained: after a few
    // steps it is bit-for-bit what it was drawn as, while the learned weights have moved.
    let mut cfg = tiny(1, Some(4));
    cfg.model.mech = "performer".into();
    cfg.model.dropout = 0.0;
    let out = fresh_dir("frozen");
    let mut t = new_run(cfg, &out);
    let before = t.checkpoint();
    let outcome = t.run(&out, &Control::quiet(&AtomicUsize::new(0))).unwrap();
    assert!(matches!(outcome, Outcome::Finished(_)));
    let after = t.checkpoint();
    let params = |c: &checkpoint::Checkpoint| -> Vec<(String, Vec<f32>)> {
        c.tensors
            .iter()
            .filter(|(g, _)| g == "param")
            .map(|(_, x)| (x.name.clone(), x.data.clone()))
            .collect()
    };
    let (b, a) = (params(&before), params(&after));
    assert_eq!(b.len(), a.len());
    let mut frozen = 0;
    for ((name, x), (_, y)) in b.iter().zip(&a) {
        if name.ends_with(".frozen") {
            frozen += 1;
            assert_eq!(x, y, "{name} moved");
            // Drawn from N(0, 1): not a constant.
            assert!(
                x.iter().any(|v| (v - x[0]).abs() > 1e-3),
                "{name} is constant"
            );
        } else if name.contains("linear") && name.ends_with(".weight") {
            assert_ne!(x, y, "{name} did not move");
        }
    }
    assert_eq!(
        frozen,
        1,
        "{:?}",
        b.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_projection_marked_not_trainable_does_not_move_in_training() {
    // M1 with its query projection written `linear[dm -> dm, trainable = false]`: its weight
    // and bias are stored and checkpointed, stay bit-for-bit as drawn, and are not counted as
    // trainable; the other projections move.
    let out = fresh_dir("frozen-q");
    std::fs::create_dir_all(&out).unwrap();
    let mech = out.with_extension("m1_frozen_q.diag");
    let m1 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("stdlib/attention/m1.diag"),
    )
    .unwrap();
    let q = "q = split[dm -> head, dk](linear[dm -> dm](x))";
    assert!(m1.contains(q));
    let text = m1
        .replace(
            q,
            "q = split[dm -> head, dk](linear[dm -> dm, trainable = false](x))",
        )
        .replace("diagram m1(", "diagram m1_frozen_q(");
    std::fs::write(&mech, text).unwrap();
    let mut cfg = tiny(1, Some(4));
    cfg.model.mech = mech.display().to_string();
    cfg.model.dropout = 0.0;
    let run_dir = out.join("run");
    let mut t = new_run(cfg, &run_dir);
    let before = t.checkpoint();
    let outcome = t
        .run(&run_dir, &Control::quiet(&AtomicUsize::new(0)))
        .unwrap();
    assert!(matches!(outcome, Outcome::Finished(_)));
    let after = t.checkpoint();
    let params = |c: &checkpoint::Checkpoint| -> Vec<(String, Vec<f32>)> {
        c.tensors
            .iter()
            .filter(|(g, _)| g == "param")
            .map(|(_, x)| (x.name.clone(), x.data.clone()))
            .collect()
    };
    let (b, a) = (params(&before), params(&after));
    let mut frozen = Vec::new();
    let mut moved = 0;
    for ((name, x), (_, y)) in b.iter().zip(&a) {
        if name.ends_with(".frozen") {
            assert_eq!(x, y, "{name} moved");
            frozen.push(name.clone());
        } else if name.contains("linear") && name.ends_with(".weight") && x != y {
            moved += 1;
        }
    }
    assert_eq!(frozen.len(), 2, "{frozen:?}");
    assert!(frozen[0].ends_with(".weight.frozen") && frozen[1].ends_with(".bias.frozen"));
    // The three other projections of the mechanism, and the feed-forward's two.
    assert!(moved >= 5, "{moved} learned weights moved");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["frozen_parameters"], 64 * 64 + 64);
    assert_eq!(
        summary["parameters"].as_u64().unwrap() as usize + 64 * 64 + 64,
        t.parameter_count()
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&mech);
}
