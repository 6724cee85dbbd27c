//! The training graph: the batched LM with the protocol's loss, its gradient, and the fast
//! executor on it.

use diagc::backend::cpu::exec::Plan;
use diagc::backend::cpu::harness;
use diagc::backend::cpu::interp::{self, RunOptions};
use diagc::train::model::{ModelConfig, language_model, train_graph};

fn small(mech: &str) -> ModelConfig {
    ModelConfig {
        mech: mech.into(),
        layers: 1,
        d_model: 8,
        heads: 2,
        d_ff: 12,
        vocab: 11,
        bptt: 4,
        batch: 3,
        dropout: 0.1,
        ..Default::default()
    }
}

#[test]
fn the_loss_is_the_mean_cross_entropy_of_the_logits() {
    let cfg = small("m1");
    let tg = train_graph(&cfg).unwrap();
    let f = &tg.forward;
    assert_eq!(f.data_inputs, 2);
    assert_eq!(
        &f.diagram.input_names[..2],
        &["ids".to_string(), "targets".to_string()]
    );
    let ins = harness::random_inputs(f, 4);
    let loss = interp::run(
        &f.diagram,
        &f.axes,
        &f.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap()[0]
        .data
        .iter()
        .next()
        .copied()
        .unwrap();
    // The same logits from the batched LM alone, and the cross-entropy computed here.
    let lm = diagc::ir::instance::lift_batch(&language_model(&cfg).unwrap(), "batch", 3).unwrap();
    let mut lm_ins = vec![ins[0].clone()];
    lm_ins.extend(ins[2..].iter().cloned());
    let logits = interp::run(
        &lm.diagram,
        &lm.axes,
        &lm.sizes,
        lm_ins,
        RunOptions::default(),
    )
    .unwrap()
    .remove(0);
    let (b, t, v) = (
        lm.axes.lookup("batch").unwrap(),
        lm.axes.lookup("tok").unwrap(),
        lm.axes.lookup("vocab").unwrap(),
    );
    let logits = logits.aligned(&[b, t, v]);
    let targets = ins[1].clone().aligned(&[b, t]);
    let mut total = 0.0;
    for i in 0..3 {
        for j in 0..4 {
            let lane: Vec<f64> = (0..11).map(|k| logits.data[[i, j, k].as_slice()]).collect();
            let z: f64 = lane.iter().map(|x| x.exp()).sum();
            total += z.ln() - lane[targets.data[[i, j].as_slice()] as usize];
        }
    }
    assert!(
        (loss - total / 12.0).abs() < 1e-12,
        "{loss} vs {}",
        total / 12.0
    );
}

#[test]
fn the_training_graph_has_correct_gradients() {
    for mech in ["m0", "m1"] {
        let tg = train_graph(&small(mech)).unwrap();
        let r = harness::gradcheck(&tg.forward, 2, 16, true).unwrap();
        assert!(r.worst < 1e-6, "{mech}: {:.3e} at {}", r.worst, r.worst_at);
    }
}

#[test]
fn the_fast_executor_agrees_on_the_training_step() {
    fast_executor_agrees("m1");
}

#[test]
fn every_stdlib_mechanism_trains_in_the_batched_lm() {
    // Batching adds an axis to what depends on the data and not to constants (a scan's constant
    // gate, a frozen matrix): the gradients and the fast executor must hold there too.
    let mechs: Vec<String> = diagc::stdlib::mechanisms().collect();
    assert!(mechs.len() >= 19, "{mechs:?}");
    for mech in &mechs {
        let tg = train_graph(&small(mech)).unwrap_or_else(|e| panic!("{mech}: {e}"));
        let r = harness::gradcheck(&tg.forward, 2, 8, true).unwrap();
        assert!(r.worst < 1e-6, "{mech}: {:.3e} at {}", r.worst, r.worst_at);
        fast_executor_agrees(mech);
    }
}

/// The fast executor's training step (loss and every gradient) against the interpreter's.
fn fast_executor_agrees(mech: &str) {
    let tg = train_graph(&small(mech)).unwrap();
    let f = &tg.forward;
    let ins = harness::random_inputs(f, 8);
    let seed_axes: Vec<diagc::ir::AxisId> = vec![];
    let seed = diagc::backend::cpu::tensor::Tensor::from_vec(seed_axes, &[], vec![1.0]);
    let mut gin = ins.clone();
    gin.push(seed);
    let opts = RunOptions {
        train: true,
        seed: 5,
        check_finite: false,
    };
    let want = interp::run(&tg.gradient.diagram, &f.axes, &f.sizes, gin.clone(), opts).unwrap();
    let plan = Plan::new(&tg.gradient.diagram, &f.axes, &f.sizes).unwrap();
    let mut ws = plan.workspace();
    let flat: Vec<Vec<f32>> = harness::to_f32(&gin);
    let refs: Vec<&[f32]> = flat.iter().map(|v| v.as_slice()).collect();
    let got = plan.run(&mut ws, &refs, opts).unwrap();
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let wire = tg.gradient.diagram.outputs[k];
        let w = w.clone().aligned(&tg.gradient.diagram.wire(wire).ty.axes);
        for (a, b) in g.iter().zip(w.data.as_standard_layout().iter()) {
            assert!(
                (*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{mech}: output {k}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn an_unknown_mechanism_lists_the_known_ones() {
    let e = train_graph(&ModelConfig {
        mech: "m9".into(),
        ..small("m1")
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("m9") && e.contains("m1") && e.contains("bahdanau"),
        "{e}"
    );
}

#[test]
fn a_mechanism_can_be_a_user_file() {
    let dir = std::env::temp_dir().join(format!("diagc-mech-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m1 = diagc::stdlib::module("attention.m1").unwrap().1;
    let good = dir.join("mine.diag");
    std::fs::write(&good, m1.replace("diagram m1(", "diagram mine(")).unwrap();
    let cfg = ModelConfig {
        mech: good.to_string_lossy().into(),
        ..small("m1")
    };
    let tg = train_graph(&cfg).unwrap();
    // The same parameters as the stdlib's M1.
    assert_eq!(
        tg.forward.params.len(),
        train_graph(&small("m1")).unwrap().forward.params.len()
    );
    // A wrong boundary, and an ill-typed file, are errors that say why.
    let wrong = dir.join("wrong.diag");
    std::fs::write(
        &wrong,
        "axis tok, dm\ndiagram wrong(x: [tok, dm]) -> [tok] { sum[dm](x) }\n",
    )
    .unwrap();
    let e = train_graph(&ModelConfig {
        mech: wrong.to_string_lossy().into(),
        ..small("m1")
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("[tok, dm]"), "{e}");
    let bad = dir.join("bad.diag");
    std::fs::write(
        &bad,
        "axis tok, dm\ndiagram bad(x: [tok, dm]) -> [tok, dm] { softmax[src](x) }\n",
    )
    .unwrap();
    let e = train_graph(&ModelConfig {
        mech: bad.to_string_lossy().into(),
        ..small("m1")
    })
    .err()
    .unwrap();
    // The checker's diagnostics come back as data, not as text.
    let diagc::Error::Frontend { diagnostics, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(diagnostics[0].code.as_str(), "E0204");
    let e = e.to_string();
    assert!(e.contains("E0204") && e.contains("src"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
