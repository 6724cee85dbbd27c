//! The CPU reference interpreter and autodiff: gradient checks for every primitive and every
//! stdlib mechanism, and forward results compared with independent, naive computations.

use diagc::backend::cpu::harness::{self, Rng};
use diagc::backend::cpu::interp::{self, RunOptions};
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::instance::{HyperValue, Instance, instantiate};
use diagc::session;
use std::path::Path;

mod common;
use common::{bindings, instance_of, lm};

const SMALL: &[(&str, u64)] = &[("a", 3), ("b", 4), ("c", 2), ("v", 5)];

#[test]
fn every_primitive_has_a_correct_gradient() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let names: Vec<String> = o
        .checked
        .program
        .diagrams
        .iter()
        .map(|d| d.name.clone())
        .collect();
    assert!(names.len() >= 35, "{} diagrams", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let inst = instantiate(&o.checked.program, name, &bindings(SMALL, &[])).unwrap();
        inst.diagram.validate().unwrap();
        let r = harness::gradcheck(&inst, 7, 64, true).unwrap();
        if r.worst > 1e-6 {
            failures.push(format!("{name}: {:.3e} at {}", r.worst, r.worst_at));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const MECH_SIZES: &[(&str, u64)] = &[("tok", 5), ("dm", 8), ("head", 2)];

#[test]
fn every_stdlib_mechanism_has_a_correct_gradient() {
    let mechs: Vec<String> = diagc::stdlib::mechanisms().collect();
    assert!(mechs.len() >= 7);
    for m in &mechs {
        let inst = instance_of(
            &format!("stdlib/attention/{m}.diag"),
            &[],
            m,
            &bindings(MECH_SIZES, &[]),
        );
        let r = harness::gradcheck(&inst, 3, 24, false).unwrap();
        assert!(r.worst < 1e-6, "{m}: {:.3e} at {}", r.worst, r.worst_at);
    }
}

#[test]
fn the_language_model_has_a_correct_gradient_with_dropout() {
    let sizes = [
        ("tok", 4),
        ("dm", 8),
        ("head", 2),
        ("dff", 12),
        ("vocab", 11),
    ];
    for mech in ["m0", "m1"] {
        let inst = lm(mech, 2.0, &sizes);
        let r = harness::gradcheck(&inst, 11, 12, true).unwrap();
        assert!(
            r.worst < 1e-6,
            "lm with {mech}: {:.3e} at {}",
            r.worst,
            r.worst_at
        );
    }
}

/// Reads tensor `t` (axes in any order) at named coordinates.
fn at(inst: &Instance, t: &Tensor, coords: &[(&str, usize)]) -> f64 {
    let idx: Vec<usize> = t
        .axes
        .iter()
        .map(|a| {
            coords
                .iter()
                .find(|(n, _)| inst.axes.name(*a) == *n)
                .expect("a coordinate per axis")
                .1
        })
        .collect();
    t.data[idx.as_slice()]
}

/// `x W + b` for a `[tok, dm]` input and a `[dm', dm]` (or `[dm, dm]`-named) weight, naively.
fn affine(inst: &Instance, x: &[Vec<f64>], w: &Tensor, b: &Tensor) -> Vec<Vec<f64>> {
    let n = x[0].len();
    let (wi, wo) = (
        inst.axes.name(w.axes[0]).to_string(),
        inst.axes.name(w.axes[1]).to_string(),
    );
    x.iter()
        .map(|row| {
            (0..n)
                .map(|j| {
                    let mut s = at(inst, b, &[("dm", j)]);
                    for (i, xi) in row.iter().enumerate() {
                        s += xi * at(inst, w, &[(wi.as_str(), i), (wo.as_str(), j)]);
                    }
                    s
                })
                .collect()
        })
        .collect()
}

/// Runs the stdlib mechanism `mech` (tok 5, dm 8, head 2) on the interpreter with random inputs
/// and compares its output with a naive computation: the q, k and v projections of the input,
/// then `heads(q, k, v, head, dk)` (the attention of each head, concatenated per token), then
/// the output projection.
fn mechanism_matches_naive(
    mech: &str,
    seed: u64,
    heads: impl Fn(&[Vec<f64>], &[Vec<f64>], &[Vec<f64>], usize, usize) -> Vec<Vec<f64>>,
) {
    mechanism_matches_naive_with(mech, seed, &[], heads)
}

/// [`mechanism_matches_naive`] with these integer hyperparameters bound.
fn mechanism_matches_naive_with(
    mech: &str,
    seed: u64,
    hypers: &[(&str, i64)],
    heads: impl Fn(&[Vec<f64>], &[Vec<f64>], &[Vec<f64>], usize, usize) -> Vec<Vec<f64>>,
) {
    mechanism_matches_naive_extra(mech, seed, hypers, |_, _, _, q, k, v, h, dk| {
        heads(q, k, v, h, dk)
    })
}

/// The general form: the four `linear` maps are found by their parameters' names (`.weight`
/// then `.bias`, in order of appearance: q, k, v, output); `heads` also gets the instance, the
/// mechanism's other parameter tensors in order, and the input rows `x`.
#[allow(clippy::type_complexity)]
fn mechanism_matches_naive_extra(
    mech: &str,
    seed: u64,
    hypers: &[(&str, i64)],
    heads: impl Fn(
        &Instance,
        &[&Tensor],
        &[Vec<f64>],
        &[Vec<f64>],
        &[Vec<f64>],
        &[Vec<f64>],
        usize,
        usize,
    ) -> Vec<Vec<f64>>,
) {
    let (t, dm, h) = (5usize, 8usize, 2usize);
    let hypers: Vec<(&str, HyperValue)> = hypers
        .iter()
        .map(|(k, v)| (*k, HyperValue::Num(*v as f64)))
        .collect();
    let inst = instance_of(
        &format!("stdlib/attention/{mech}.diag"),
        &[],
        mech,
        &bindings(MECH_SIZES, &hypers),
    );
    let ins = harness::random_inputs(&inst, seed);
    let out = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap();
    let x: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            (0..dm)
                .map(|j| at(&inst, &ins[0], &[("tok", i), ("dm", j)]))
                .collect()
        })
        .collect();
    // Parameter k is input 1 + k.
    let names: Vec<&str> = inst.params.iter().map(|p| p.name.as_str()).collect();
    // The [dm, dm] maps (other linear maps, like a gate's, are the formula's own).
    let square = |k: usize| {
        let ax: Vec<&str> = inst.params[k]
            .axes
            .iter()
            .map(|a| inst.axes.name(*a))
            .collect();
        ax == ["dm'", "dm"]
    };
    let linears: Vec<usize> = (0..names.len())
        .filter(|&k| {
            names[k].ends_with(".weight")
                && square(k)
                && names.get(k + 1).is_some_and(|b| b.ends_with(".bias"))
        })
        .collect();
    assert_eq!(linears.len(), 4, "{mech}: {names:?}");
    let w = |k: usize| &ins[1 + linears[k]];
    let bias = |k: usize| &ins[2 + linears[k]];
    let extra: Vec<&Tensor> = (0..names.len())
        .filter(|k| !linears.iter().any(|l| *k == *l || *k == *l + 1))
        .map(|k| &ins[1 + k])
        .collect();
    let (q, k, v) = (
        affine(&inst, &x, w(0), bias(0)),
        affine(&inst, &x, w(1), bias(1)),
        affine(&inst, &x, w(2), bias(2)),
    );
    let y = affine(
        &inst,
        &heads(&inst, &extra, &x, &q, &k, &v, h, dm / h),
        w(3),
        bias(3),
    );
    for (i, row) in y.iter().enumerate() {
        for (j, want) in row.iter().enumerate() {
            let got = at(&inst, &out[0], &[("tok", i), ("dm", j)]);
            assert!(
                (got - want).abs() < 1e-12,
                "{mech} ({i}, {j}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn m1_matches_a_naive_causal_softmax_attention() {
    mechanism_matches_naive("m1", 5, |q, kk, v, h, dk| {
        let t = q.len();
        let mut heads = vec![vec![0.0; h * dk]; t];
        for hh in 0..h {
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..dk)
                            .map(|d| q[i][hh * dk + d] * kk[j][hh * dk + d])
                            .sum::<f64>()
                            / (dk as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dk {
                    heads[i][hh * dk + d] = (0..=i).map(|j| e[j] / z * v[j][hh * dk + d]).sum();
                }
            }
        }
        heads
    });
}

#[test]
fn m0_matches_a_naive_causal_linear_attention() {
    let phi = |z: f64| if z > 0.0 { z + 1.0 } else { z.exp() };
    mechanism_matches_naive("m0", 6, |q, kk, v, h, dk| {
        let t = q.len();
        let mut heads = vec![vec![0.0; h * dk]; t];
        for hh in 0..h {
            for i in 0..t {
                let fq: Vec<f64> = (0..dk).map(|d| phi(q[i][hh * dk + d])).collect();
                let mut den = 1e-6;
                let mut num = vec![0.0; dk];
                for j in 0..=i {
                    let fk: Vec<f64> = (0..dk).map(|d| phi(kk[j][hh * dk + d])).collect();
                    let s: f64 = fq.iter().zip(&fk).map(|(a, b)| a * b).sum();
                    den += s;
                    for e in 0..dk {
                        num[e] += s * v[j][hh * dk + e];
                    }
                }
                for e in 0..dk {
                    heads[i][hh * dk + e] = num[e] / den;
                }
            }
        }
        heads
    });
}

/// Scores `q_i . k_j / sqrt(dk)` of head `hh`.
fn score(q: &[Vec<f64>], k: &[Vec<f64>], hh: usize, dk: usize, i: usize, j: usize) -> f64 {
    (0..dk)
        .map(|d| q[i][hh * dk + d] * k[j][hh * dk + d])
        .sum::<f64>()
        / (dk as f64).sqrt()
}

/// Per head, `out_i = sum_{j <= i} w(hh, i, j) v_j` with the weights from `weights(hh, i)`.
fn weighted_heads(
    t: usize,
    h: usize,
    dk: usize,
    v: &[Vec<f64>],
    weights: impl Fn(usize, usize) -> Vec<f64>,
) -> Vec<Vec<f64>> {
    let mut heads = vec![vec![0.0; h * dk]; t];
    for hh in 0..h {
        for (i, row) in heads.iter_mut().enumerate() {
            let w = weights(hh, i);
            assert_eq!(w.len(), i + 1);
            for d in 0..dk {
                row[hh * dk + d] = (0..=i).map(|j| w[j] * v[j][hh * dk + d]).sum();
            }
        }
    }
    heads
}

#[test]
fn relu_attention_over_visible_keys_matches_a_naive_computation() {
    mechanism_matches_naive("relu_visible", 7, |q, k, v, h, dk| {
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            (0..=i)
                .map(|j| score(q, k, hh, dk, i, j).max(0.0) / (i + 1) as f64)
                .collect()
        })
    });
}

#[test]
fn sigmoid_attention_with_its_log_bias_matches_a_naive_computation() {
    mechanism_matches_naive("sigmoid_attn", 8, |q, k, v, h, dk| {
        let n = q.len() as f64;
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            (0..=i)
                .map(|j| 1.0 / (1.0 + (-(score(q, k, hh, dk, i, j) - n.ln())).exp()))
                .collect()
        })
    });
}

#[test]
fn alibi_matches_a_naive_computation() {
    mechanism_matches_naive("alibi", 9, |q, k, v, h, dk| {
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            // The paper's slopes: 2^(-8 (hh + 1) / h).
            let m = 2f64.powf(-8.0 * (hh + 1) as f64 / h as f64);
            let s: Vec<f64> = (0..=i)
                .map(|j| score(q, k, hh, dk, i, j) - m * (i - j) as f64)
                .collect();
            let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - top).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        })
    });
}

#[test]
fn layernorm_posenc_embed_and_dropout_follow_the_protocol() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    let p = &o.checked.program;
    let b = bindings(SMALL, &[]);
    // layernorm[b] with gain 1 and bias 0: each row has mean 0 and variance var/(var+eps).
    let inst = instantiate(p, "layernorm_", &b).unwrap();
    let ins = harness::random_inputs(&inst, 1);
    let y = &interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap()[0];
    for i in 0..3 {
        let xs: Vec<f64> = (0..4)
            .map(|j| at(&inst, &ins[0], &[("a", i), ("b", j)]))
            .collect();
        let mean = xs.iter().sum::<f64>() / 4.0;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 4.0;
        for (j, xv) in xs.iter().enumerate() {
            let want = (xv - mean) / (var + 1e-5).sqrt();
            assert!((at(&inst, y, &[("a", i), ("b", j)]) - want).abs() < 1e-12);
        }
    }
    // posenc: x * PE, PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(same).
    let inst = instantiate(p, "posenc_", &b).unwrap();
    let ones = Tensor::from_vec(
        inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone(),
        &[3, 4],
        vec![1.0; 12],
    );
    let y = &interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        vec![ones],
        RunOptions::default(),
    )
    .unwrap()[0];
    for pos in 0..3 {
        for i in 0..4 {
            let angle = pos as f64 / 10000f64.powf((2 * (i / 2)) as f64 / 4.0);
            let want = if i % 2 == 0 { angle.sin() } else { angle.cos() };
            assert!((at(&inst, y, &[("a", pos), ("b", i)]) - want).abs() < 1e-12);
        }
    }
    // embed: row `ids[i]` of the table.
    let inst = instantiate(p, "embed_", &b).unwrap();
    let ins = harness::random_inputs(&inst, 2);
    let y = &interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap()[0];
    for i in 0..3 {
        let id = at(&inst, &ins[0], &[("a", i)]) as usize;
        for j in 0..4 {
            assert_eq!(
                at(&inst, y, &[("a", i), ("b", j)]),
                at(&inst, &ins[1], &[("v", id), ("b", j)])
            );
        }
    }
    // dropout(0.5) in training: every element is 0 or doubled, about half of them kept, the
    // same mask for the same seed, another for another seed; identity when not training.
    let inst = instantiate(p, "dropout_", &bindings(&[("a", 100), ("b", 100)], &[])).unwrap();
    let ins = harness::random_inputs(&inst, 3);
    let run = |train, seed| {
        interp::run(
            &inst.diagram,
            &inst.axes,
            &inst.sizes,
            ins.clone(),
            RunOptions {
                train,
                seed,
                check_finite: false,
            },
        )
        .unwrap()
        .remove(0)
    };
    let (y1, y1b, y2, y0) = (run(true, 1), run(true, 1), run(true, 2), run(false, 1));
    assert_eq!(y1, y1b);
    assert_ne!(y1, y2);
    assert_eq!(y0.clone().aligned(&ins[0].axes).data, ins[0].data);
    let x = ins[0].clone().aligned(&y1.axes);
    let kept = y1
        .data
        .iter()
        .zip(x.data.iter())
        .filter(|(y, x)| (**y - 2.0 * **x).abs() < 1e-12 && **y != 0.0)
        .count();
    let dropped = y1.data.iter().filter(|y| **y == 0.0).count();
    assert_eq!(kept + dropped, 10_000);
    assert!((4_700..5_300).contains(&kept), "kept {kept} of 10000");
}

#[test]
fn run_time_errors_name_the_wire_and_the_box() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    let p = &o.checked.program;
    let inst = instantiate(p, "add_", &bindings(SMALL, &[])).unwrap();
    let mut ins = harness::random_inputs(&inst, 1);
    ins[1] = Tensor::from_vec(ins[1].axes.clone(), &[4, 3], vec![0.0; 12]);
    let e = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        ins,
        RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, diagc::Error::Run(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("input `y`") && e.contains("size"), "{e}");
    // A NaN is reported with the box that produced it.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { sqrt(x - 5) }\n";
    let o = session::check_text("<nan>", src);
    let inst = instantiate(&o.checked.program, "f", &bindings(&[("a", 3)], &[])).unwrap();
    let opts = RunOptions {
        check_finite: true,
        ..RunOptions::default()
    };
    let e = harness::run_random(&inst, 0, opts).unwrap_err().to_string();
    assert!(e.contains("sqrt") && e.contains("NaN"), "{e}");
    // Unbound sizes are named.
    let e = instantiate(p, "add_", &bindings(&[("a", 3)], &[])).unwrap_err();
    assert!(matches!(e, diagc::Error::Instance { .. }), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("`b`"), "{e}");
}

#[test]
fn random_inputs_are_reproducible() {
    let mut r1 = Rng::new(4);
    let mut r2 = Rng::new(4);
    assert_eq!(
        (0..10).map(|_| r1.next_u64()).collect::<Vec<_>>(),
        (0..10).map(|_| r2.next_u64()).collect::<Vec<_>>()
    );
}

#[test]
fn a_batched_instance_runs_each_sequence_as_the_unbatched_one() {
    use diagc::ir::instance::lift_batch;
    let sizes = [
        ("tok", 4),
        ("dm", 8),
        ("head", 2),
        ("dff", 12),
        ("vocab", 11),
    ];
    let b = bindings(&sizes, &[("mech", HyperValue::Diagram("m0".into()))]);
    let inst = instance_of("stdlib/lm.diag", &["attention.m0"], "lm", &b);
    let batched = lift_batch(&inst, "batch", 3).unwrap();
    batched.diagram.validate().unwrap();
    assert_eq!(
        batched.params.len(),
        inst.params.len(),
        "parameters stay shared"
    );
    let ins = harness::random_inputs(&batched, 9);
    let y = interp::run(
        &batched.diagram,
        &batched.axes,
        &batched.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap()
    .remove(0);
    let batch_axis = batched.axes.lookup("batch").unwrap();
    for s in 0..3 {
        // Sequence s alone through the unbatched instance.
        let ids = ins[0].clone().aligned(&{
            let mut o = vec![batch_axis];
            o.extend(ins[0].axes.iter().copied().filter(|a| *a != batch_axis));
            o
        });
        let one = Tensor {
            axes: ids.axes[1..].to_vec(),
            data: ids.data.index_axis(ndarray::Axis(0), s).to_owned(),
        };
        let mut single = vec![one];
        single.extend(ins[1..].iter().cloned());
        let ys = interp::run(
            &inst.diagram,
            &inst.axes,
            &inst.sizes,
            single,
            RunOptions::default(),
        )
        .unwrap()
        .remove(0);
        let yb = y.clone().aligned(&{
            let mut o = vec![batch_axis];
            o.extend(ys.axes.iter().copied());
            o
        });
        let got = yb.data.index_axis(ndarray::Axis(0), s).to_owned();
        let diff = (&got - &ys.data).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(diff < 1e-12, "sequence {s}: {diff}");
    }
    let r = harness::gradcheck(&batched, 5, 12, true).unwrap();
    assert!(r.worst < 1e-6, "{:.3e} at {}", r.worst, r.worst_at);
}

#[test]
fn the_primitive_corpus_covers_every_primitive_of_the_prelude() {
    // `src/selftest/primitives.diag` is what `diagc selftest` and these tests run every
    // primitive through: a primitive missing from it would go unchecked on every backend.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    assert!(o.checked.is_ok());
    let p = &o.checked.program;
    let mut used = std::collections::BTreeSet::new();
    for d in &p.diagrams {
        for b in &d.boxes {
            let text = diagc::ir::print::box_text(b, &p.axes);
            let name: String = text
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    let missing: Vec<&str> = diagc::check::primitive_names()
        .filter(|n| !used.contains(*n))
        .collect();
    assert!(missing.is_empty(), "not in the corpus: {missing:?}");
    // And the test sees what it should: the corpus has the arithmetic and the maps.
    for n in ["add", "dot", "softmax", "relu", "linear", "embed"] {
        assert!(used.contains(n), "{n} among {used:?}");
    }
}

#[test]
fn abs_and_its_gradient_match_a_naive_computation() {
    // `abs` is the op added to show what a new elementwise op touches: checked here against
    // |x| and sign(x) computed in the test, on the interpreter (the oracle), through autodiff.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { abs(x) }\n";
    let o = session::check_text("<abs>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let inst = instantiate(&o.checked.program, "f", &bindings(&[("a", 5)], &[])).unwrap();
    let xs = [-2.5, -0.25, 0.0, 0.5, 3.0];
    let a = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
    let x = Tensor::from_vec(a.clone(), &[5], xs.to_vec());
    let y = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        vec![x.clone()],
        RunOptions::default(),
    )
    .unwrap();
    let want: Vec<f64> = xs
        .iter()
        .map(|v: &f64| if *v < 0.0 { -v } else { *v })
        .collect();
    assert_eq!(y[0].data.iter().copied().collect::<Vec<_>>(), want);
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let seed = Tensor::from_vec(a, &[5], vec![1.0; 5]);
    let g = interp::run(
        &grad.diagram,
        &inst.axes,
        &inst.sizes,
        vec![x, seed],
        RunOptions::default(),
    )
    .unwrap();
    let sign: Vec<f64> = xs
        .iter()
        .map(|v| {
            if *v > 0.0 {
                1.0
            } else if *v < 0.0 {
                -1.0
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(
        g.last().unwrap().data.iter().copied().collect::<Vec<_>>(),
        sign
    );
}

/// Runs `f` (inputs over axis `a` of size `n`) on the interpreter, forward and gradient (seed of
/// ones): the output and the gradient of every input.
fn forward_and_gradient(src: &str, inputs: &[Vec<f64>]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let o = session::check_text("<test>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let n = inputs[0].len();
    let inst = instantiate(&o.checked.program, "f", &bindings(&[("a", n as u64)], &[])).unwrap();
    let a = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|v| Tensor::from_vec(a.clone(), &[n], v.clone()))
        .collect();
    let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
    let y = run(&inst.diagram, xs.clone()).unwrap();
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let mut ins = xs;
    ins.push(Tensor::from_vec(a, &[n], vec![1.0; n]));
    let g = run(&grad.diagram, ins).unwrap();
    let flat = |t: &Tensor| t.data.iter().copied().collect::<Vec<f64>>();
    let grads = g[g.len() - inputs.len()..].iter().map(flat).collect();
    (flat(&y[0]), grads)
}

#[test]
fn max_min_clamp_pow_step_and_stop_grad_match_a_naive_computation() {
    // Each elementwise op of the numerics item against the formula written here, forward and
    // gradient, on the interpreter through autodiff.
    let xs = vec![-2.0, -0.5, 0.0, 0.25, 0.5, 2.0, 1.0];
    let ys = vec![1.0, -0.5, 0.3, -1.0, 0.5, 3.0, 1.0];
    let both = |op: &str| format!("axis a\ndiagram f(x: [a], y: [a]) -> [a] {{ {op}(x, y) }}\n");
    for (op, pick_x) in [
        ("max", (|x: f64, y: f64| x >= y) as fn(f64, f64) -> bool),
        ("min", |x, y| x <= y),
    ] {
        let (v, g) = forward_and_gradient(&both(op), &[xs.clone(), ys.clone()]);
        for i in 0..xs.len() {
            let (x, y) = (xs[i], ys[i]);
            let left = pick_x(x, y);
            assert_eq!(v[i], if left { x } else { y }, "{op}({x}, {y})");
            // The left side takes the gradient on ties (x = y at 1 and 4 and 6).
            assert_eq!(
                g[0][i],
                if left { 1.0 } else { 0.0 },
                "d{op}/dx at {x}, {y}"
            );
            assert_eq!(
                g[1][i],
                if left { 0.0 } else { 1.0 },
                "d{op}/dy at {x}, {y}"
            );
        }
    }
    // clamp(x, lo, hi): the gradient passes where lo <= x <= hi.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { clamp(x, -0.5, 0.5) }\n";
    let (v, g) = forward_and_gradient(src, std::slice::from_ref(&xs));
    for (i, x) in xs.iter().enumerate() {
        assert_eq!(v[i], x.clamp(-0.5, 0.5));
        let inside = (-0.5..=0.5).contains(x);
        assert_eq!(g[0][i], if inside { 1.0 } else { 0.0 }, "clamp' at {x}");
    }
    // A number beside a wire is a constant wire: max(0.25, x) is relu shifted.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { max(0.25, x) + min(x, 0) }\n";
    let (v, _) = forward_and_gradient(src, std::slice::from_ref(&xs));
    for (i, x) in xs.iter().enumerate() {
        let want = (if 0.25 >= *x { 0.25 } else { *x }) + if *x <= 0.0 { *x } else { 0.0 };
        assert_eq!(v[i], want);
    }
    // pow(x^2 + 1, 1.5) and its gradient 1.5 (x^2 + 1)^0.5 2x; pow(x, 3).
    let src = "axis a\ndiagram f(x: [a]) -> [a] { pow(x * x + 1, 1.5) + pow(x, 3) }\n";
    let (v, g) = forward_and_gradient(src, std::slice::from_ref(&xs));
    for (i, x) in xs.iter().enumerate() {
        let u = x * x + 1.0;
        let want = u * u.sqrt() + x * x * x;
        let dwant = 1.5 * u.sqrt() * 2.0 * x + 3.0 * x * x;
        assert!(
            (v[i] - want).abs() < 1e-12 * want.abs().max(1.0),
            "{} vs {want}",
            v[i]
        );
        assert!(
            (g[0][i] - dwant).abs() < 1e-12 * dwant.abs().max(1.0),
            "{} vs {dwant}",
            g[0][i]
        );
    }
    // x * stop_grad(x) is x^2 whose gradient is x (not 2x); step(x) * x is relu with x >= 0.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { x * stop_grad(x) + step(x) * x }\n";
    let (v, g) = forward_and_gradient(src, std::slice::from_ref(&xs));
    for (i, x) in xs.iter().enumerate() {
        let step = if *x >= 0.0 { 1.0 } else { 0.0 };
        assert_eq!(v[i], x * x + step * x);
        assert_eq!(g[0][i], x + step, "gradient at {x}");
    }
    // NaN on either side of max/min gives NaN (the JIT and CUDA select the same way).
    let (v, _) = forward_and_gradient(&both("max"), &[vec![f64::NAN, 1.0], vec![1.0, f64::NAN]]);
    assert!(v.iter().all(|v| v.is_nan()), "{v:?}");
    let (v, _) = forward_and_gradient(&both("min"), &[vec![f64::NAN, 1.0], vec![1.0, f64::NAN]]);
    assert!(v.iter().all(|v| v.is_nan()), "{v:?}");
}

#[test]
fn strict_and_banded_masks_match_a_naive_computation() {
    // Query i sees key j when j + lag <= i and, with a window w, i - j < w: the rule written
    // here, against the interpreter's masks forward and (through autodiff) backward.
    let n = 6usize;
    let sees = |i: usize, j: usize, lag: usize, w: Option<usize>| {
        j + lag <= i && w.is_none_or(|w| i - j < w)
    };
    let mut rng = Rng::new(11);
    let xs: Vec<f64> = (0..n * n).map(|_| rng.uniform() * 4.0 - 2.0).collect();
    for (opts, lag, w) in [
        ("", 0, None),
        (", strict = true", 1, None),
        (", window = 3", 0, Some(3)),
        (", strict = true, window = 2", 1, Some(2)),
        (", window = 1", 0, Some(1)),
    ] {
        for zero in [true, false] {
            // `exp(causal(x))` is exp(x) where seen and exactly 0 where masked.
            let body = if zero {
                format!("causal_zero[a, a2{opts}](x)")
            } else {
                format!("exp(causal[a, a2{opts}](x))")
            };
            let src =
                format!("axis a\naxis a2 = a\ndiagram f(x: [a, a2]) -> [a, a2] {{ {body} }}\n");
            let o = session::check_text("<test>", &src);
            assert!(
                o.checked.is_ok(),
                "{body}: {:?}",
                o.checked.diagnostics.first()
            );
            let inst =
                instantiate(&o.checked.program, "f", &bindings(&[("a", n as u64)], &[])).unwrap();
            let axes = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
            let x = Tensor::from_vec(axes.clone(), &[n, n], xs.clone());
            let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
            let y = run(&inst.diagram, vec![x.clone()]).unwrap();
            let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
            let seed = Tensor::from_vec(axes, &[n, n], vec![1.0; n * n]);
            let g = run(&grad.diagram, vec![x.clone(), seed]).unwrap();
            let dx = g.last().unwrap();
            let mut masked = 0;
            for i in 0..n {
                for j in 0..n {
                    let v = at(&inst, &x, &[("a", i), ("a2", j)]);
                    let seen = sees(i, j, lag, w);
                    masked += usize::from(!seen);
                    let (want, dwant) = match (seen, zero) {
                        (false, _) => (0.0, 0.0),
                        (true, true) => (v, 1.0),
                        (true, false) => (v.exp(), v.exp()),
                    };
                    let got = at(&inst, &y[0], &[("a", i), ("a2", j)]);
                    let dgot = at(&inst, dx, &[("a", i), ("a2", j)]);
                    assert!(
                        (got - want).abs() < 1e-12,
                        "{body} ({i}, {j}): {got} vs {want}"
                    );
                    assert!(
                        (dgot - dwant).abs() < 1e-12,
                        "d {body} ({i}, {j}): {dgot} vs {dwant}"
                    );
                }
            }
            // The plain mask hides the 15 entries above the diagonal; the others hide more.
            assert!(masked >= n * (n - 1) / 2, "{body}: {masked} masked");
        }
    }
}

#[test]
fn sliding_window_attention_matches_a_naive_computation() {
    // The stdlib's default window (16) exceeds the test's 5 tokens: bind it to 2.
    mechanism_matches_naive_with("sliding_window", 10, &[("window", 2)], |q, k, v, h, dk| {
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            let seen = |j: usize| i - j < 2;
            let s: Vec<f64> = (0..=i).map(|j| score(q, k, hh, dk, i, j)).collect();
            let top = (0..=i)
                .filter(|j| seen(*j))
                .map(|j| s[j])
                .fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = (0..=i)
                .map(|j| if seen(j) { (s[j] - top).exp() } else { 0.0 })
                .collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        })
    });
}

#[test]
fn max_min_and_logsumexp_reductions_match_a_naive_computation() {
    // Rows of [a, b] reduced over b, forward and gradient (seed g_i = i + 1), against the
    // formulas written here: max/min pick the first extreme entry (ties to the earlier one, a
    // NaN wins), the gradient goes to that entry; logsumexp is computed in f64 with an explicit
    // shift and its gradient is softmax times the seed.
    let nan = f64::NAN;
    let inf = f64::INFINITY;
    let rows: Vec<Vec<f64>> = vec![
        vec![0.5, -1.0, 2.0, 2.0],
        vec![3.0, 3.0, -4.0, 0.0],
        vec![-1.0, nan, 5.0, 0.0],
        vec![1000.0, 999.0, -1000.0, 1000.0],
        vec![-inf, -inf, -inf, -inf],
        vec![-inf, 2.0, -inf, 1.0],
    ];
    let (na, nb) = (rows.len(), rows[0].len());
    for r in ["max", "min", "logsumexp"] {
        let src = format!("axis a, b\ndiagram f(x: [a, b]) -> [a] {{ {r}[b](x) }}\n");
        let o = session::check_text("<test>", &src);
        assert!(
            o.checked.is_ok(),
            "{r}: {:?}",
            o.checked.diagnostics.first()
        );
        let sizes = [("a", na as u64), ("b", nb as u64)];
        let inst = instantiate(&o.checked.program, "f", &bindings(&sizes, &[])).unwrap();
        let xty = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
        let yty = inst.diagram.wire(inst.diagram.outputs[0]).ty.axes.clone();
        let name = |a| inst.axes.name(a).to_string();
        assert_eq!(xty.iter().map(|a| name(*a)).collect::<Vec<_>>(), ["a", "b"]);
        let x = Tensor::from_vec(xty, &[na, nb], rows.concat());
        let seed: Vec<f64> = (0..na).map(|i| (i + 1) as f64).collect();
        let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
        let y = run(&inst.diagram, vec![x.clone()]).unwrap();
        let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
        let g = run(
            &grad.diagram,
            vec![x.clone(), Tensor::from_vec(yty, &[na], seed.clone())],
        )
        .unwrap();
        let dx = g.last().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let (want, dwant): (f64, Vec<f64>) = if r == "logsumexp" {
                let m = row
                    .iter()
                    .cloned()
                    .filter(|v| v.is_finite())
                    .fold(f64::NEG_INFINITY, f64::max);
                let m = if m.is_finite() { m } else { 0.0 };
                let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                (m + z.ln(), e.iter().map(|v| seed[i] * v / z).collect())
            } else {
                let mut c = 0;
                for j in 1..nb {
                    let (l, v) = (row[c], row[j]);
                    let better = if r == "max" { v > l } else { v < l };
                    if !l.is_nan() && (v.is_nan() || better) {
                        c = j;
                    }
                }
                let d = (0..nb)
                    .map(|j| if j == c { seed[i] } else { 0.0 })
                    .collect();
                (row[c], d)
            };
            let got = at(&inst, &y[0], &[("a", i)]);
            let same =
                |p: f64, q: f64| (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() < 1e-12;
            assert!(same(got, want), "{r} of row {i}: {got} vs {want}");
            // Spot values written out: max of row 0 is its first 2.0, min of row 1 is -4, a NaN
            // wins, logsumexp of the -inf row is -inf and of row 3 is 1000 + ln(2 + e^-1).
            let spot = match (r, i) {
                ("max", 0) => Some(2.0),
                ("min", 1) => Some(-4.0),
                ("max" | "min", 2) => Some(f64::NAN),
                ("logsumexp", 3) => Some(1000.0 + (2.0 + (-1f64).exp()).ln()),
                ("logsumexp", 4) => Some(f64::NEG_INFINITY),
                _ => None,
            };
            if let Some(v) = spot {
                assert!(same(got, v), "{r} of row {i}: {got}, expected {v}");
            }
            if (r, i) == ("max", 0) {
                assert_eq!(at(&inst, dx, &[("a", 0), ("b", 2)]), 1.0);
                assert_eq!(at(&inst, dx, &[("a", 0), ("b", 3)]), 0.0);
            }
            for (j, dw) in dwant.iter().enumerate() {
                let dgot = at(&inst, dx, &[("a", i), ("b", j)]);
                assert!(same(dgot, *dw), "d {r} row {i} at {j}: {dgot} vs {dw}");
            }
        }
    }
}

#[test]
fn performer_matches_a_naive_computation() {
    mechanism_matches_naive_extra("performer", 12, &[], |inst, extra, _, q, k, v, h, dk| {
        assert_eq!(extra.len(), 1, "the frozen matrix");
        let rf = 2 * dk;
        let w = |r: usize, d: usize| at(inst, extra[0], &[("rf", r), ("dk", d)]);
        // phi(x)_r = exp(w_r . x' - |x'|^2 / 2), x' = x / dk^(1/4); no stabilisation here (it
        // cancels).
        let phi = |x: &[f64]| -> Vec<f64> {
            let s = (dk as f64).powf(0.25);
            let xs: Vec<f64> = x.iter().map(|v| v / s).collect();
            let n2: f64 = xs.iter().map(|v| v * v).sum();
            (0..rf)
                .map(|r| ((0..dk).map(|d| w(r, d) * xs[d]).sum::<f64>() - n2 / 2.0).exp())
                .collect()
        };
        let part = |m: &[Vec<f64>], i: usize, hh: usize| m[i][hh * dk..(hh + 1) * dk].to_vec();
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            let pq = phi(&part(q, i, hh));
            let a: Vec<f64> = (0..=i)
                .map(|j| {
                    pq.iter()
                        .zip(&phi(&part(k, j, hh)))
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            let den: f64 = a.iter().sum();
            a.iter().map(|x| x / den).collect()
        })
    });
}

#[test]
fn performers_random_features_are_frozen_and_get_no_gradient() {
    let inst = instance_of(
        "stdlib/attention/performer.diag",
        &[],
        "performer",
        &bindings(MECH_SIZES, &[]),
    );
    let frozen = inst
        .params
        .iter()
        .position(|p| p.name.ends_with(".frozen"))
        .expect("a frozen tensor");
    // Parameters in order of appearance: q, k, v (weight, bias each), the frozen matrix, output.
    assert_eq!(
        frozen,
        6,
        "{:?}",
        inst.params.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    // The frozen matrix gets no gradient; the learned weights do.
    let ins = harness::random_inputs(&inst, 12);
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let mut gin = ins.clone();
    gin.push(harness::random_tensor(
        &inst,
        &inst.diagram.wire(inst.diagram.outputs[0]).ty,
        &mut Rng::new(5),
    ));
    let g = interp::run(
        &grad.diagram,
        &inst.axes,
        &inst.sizes,
        gin,
        RunOptions::default(),
    )
    .unwrap();
    let gp = &g[g.len() - inst.params.len()..];
    assert!(
        gp[frozen].data.iter().all(|v| *v == 0.0),
        "the frozen matrix has a gradient"
    );
    assert!(
        gp[0].data.iter().any(|v| *v != 0.0),
        "the query weight has no gradient"
    );
}

#[test]
fn scans_match_a_naive_recurrence() {
    // y_t = g_t y_(t-1) + x_t along `a` (per column of `b`), forward and gradient, against the
    // loop written here; and `cumsum[a, decay = 0.5]` against sum_(j <= t) 0.5^(t - j) x_j.
    let (na, nb) = (6usize, 3usize);
    let mut rng = Rng::new(21);
    let gs: Vec<f64> = (0..na * nb).map(|_| rng.uniform() * 1.6 - 0.3).collect();
    let xs: Vec<f64> = (0..na * nb).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let seed: Vec<f64> = (0..na * nb).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let src = "axis a, b\n\
               diagram f(g: [a, b], x: [a, b]) -> [a, b] { scan[a](g, x) }\n\
               diagram h(x: [a, b]) -> [a, b] { cumsum[a, decay = 0.5](x) }\n";
    let o = session::check_text("<test>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let sizes = [("a", na as u64), ("b", nb as u64)];
    let ix = |t: usize, c: usize| t * nb + c;
    // The recurrence and its gradient, naively.
    let mut y = vec![0.0; na * nb];
    for c in 0..nb {
        for t in 0..na {
            let prev = if t == 0 { 0.0 } else { y[ix(t - 1, c)] };
            y[ix(t, c)] = if t == 0 {
                xs[ix(0, c)]
            } else {
                gs[ix(t, c)] * prev + xs[ix(t, c)]
            };
        }
    }
    // dL/dx_j = sum_(t >= j) seed_t prod_(s = j+1..t) g_s; dL/dg_t = (dL/dx_t) y_(t-1).
    let mut dx = vec![0.0; na * nb];
    let mut dg = vec![0.0; na * nb];
    for c in 0..nb {
        for j in 0..na {
            let mut prod = 1.0;
            for t in j..na {
                if t > j {
                    prod *= gs[ix(t, c)];
                }
                dx[ix(j, c)] += seed[ix(t, c)] * prod;
            }
            dg[ix(j, c)] = if j == 0 {
                0.0
            } else {
                dx[ix(j, c)] * y[ix(j - 1, c)]
            };
        }
    }
    let inst = instantiate(&o.checked.program, "f", &bindings(&sizes, &[])).unwrap();
    let axes = inst.diagram.wire(inst.diagram.inputs[1]).ty.axes.clone();
    let names: Vec<&str> = axes.iter().map(|a| inst.axes.name(*a)).collect();
    assert_eq!(names, ["a", "b"]);
    let t = |v: &[f64]| Tensor::from_vec(axes.clone(), &[na, nb], v.to_vec());
    let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
    let out = run(&inst.diagram, vec![t(&gs), t(&xs)]).unwrap();
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let g = run(&grad.diagram, vec![t(&gs), t(&xs), t(&seed)]).unwrap();
    let (gg, gx) = (&g[g.len() - 2], &g[g.len() - 1]);
    for tt in 0..na {
        for c in 0..nb {
            let at2 = |x: &Tensor| at(&inst, x, &[("a", tt), ("b", c)]);
            assert!((at2(&out[0]) - y[ix(tt, c)]).abs() < 1e-12, "y ({tt}, {c})");
            assert!((at2(gx) - dx[ix(tt, c)]).abs() < 1e-12, "dx ({tt}, {c})");
            assert!((at2(gg) - dg[ix(tt, c)]).abs() < 1e-12, "dg ({tt}, {c})");
        }
    }
    let inst = instantiate(&o.checked.program, "h", &bindings(&sizes, &[])).unwrap();
    let axes = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
    let out = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        vec![Tensor::from_vec(axes, &[na, nb], xs.clone())],
        RunOptions::default(),
    )
    .unwrap();
    for tt in 0..na {
        for c in 0..nb {
            let want: f64 = (0..=tt)
                .map(|j| 0.5f64.powi((tt - j) as i32) * xs[ix(j, c)])
                .sum();
            let got = at(&inst, &out[0], &[("a", tt), ("b", c)]);
            assert!(
                (got - want).abs() < 1e-12,
                "decayed ({tt}, {c}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn retnet_recurrent_and_parallel_forms_agree_and_match_a_naive_computation() {
    let (t, dm, h) = (5usize, 8usize, 2usize);
    let dk = dm / h;
    let rec = instance_of(
        "stdlib/attention/retnet.diag",
        &[],
        "retnet",
        &bindings(MECH_SIZES, &[]),
    );
    let par = instance_of(
        "stdlib/attention/retnet_parallel.diag",
        &[],
        "retnet_parallel",
        &bindings(MECH_SIZES, &[]),
    );
    let names: Vec<&str> = rec.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(
        names[6].ends_with(".gain") && names[7].ends_with(".bias"),
        "{names:?}"
    );
    let ins = harness::random_inputs(&rec, 13);
    // The two files have their own axis tables: the same tensors, with axes found by name.
    let ins_par: Vec<Tensor> = ins
        .iter()
        .map(|t| Tensor {
            axes: t
                .axes
                .iter()
                .map(|a| par.axes.lookup(rec.axes.name(*a)).expect("the same axes"))
                .collect(),
            data: t.data.clone(),
        })
        .collect();
    let run = |i: &Instance, ins: &[Tensor]| {
        interp::run(
            &i.diagram,
            &i.axes,
            &i.sizes,
            ins.to_vec(),
            RunOptions::default(),
        )
        .unwrap()
    };
    let (yr, yp) = (run(&rec, &ins), run(&par, &ins_par));
    let x: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            (0..dm)
                .map(|j| at(&rec, &ins[0], &[("tok", i), ("dm", j)]))
                .collect()
        })
        .collect();
    // Inputs: x, then q, k, v (weight, bias), the group norm's gain and bias, the gate, the output.
    let (q, k, v) = (
        affine(&rec, &x, &ins[1], &ins[2]),
        affine(&rec, &x, &ins[3], &ins[4]),
        affine(&rec, &x, &ins[5], &ins[6]),
    );
    let mut y = vec![vec![0.0; dm]; t];
    for hh in 0..h {
        let gamma = 1.0 - 2f64.powi(-5 - hh as i32);
        for i in 0..t {
            let mut o = vec![0.0; dk];
            for j in 0..=i {
                let s: f64 = (0..dk)
                    .map(|d| q[i][hh * dk + d] * k[j][hh * dk + d])
                    .sum::<f64>()
                    / (dk as f64).sqrt();
                for d in 0..dk {
                    o[d] += gamma.powi((i - j) as i32) * s * v[j][hh * dk + d];
                }
            }
            let mean = o.iter().sum::<f64>() / dk as f64;
            let var = o.iter().map(|z| (z - mean) * (z - mean)).sum::<f64>() / dk as f64;
            for d in 0..dk {
                let gain = at(&rec, &ins[7], &[("head", hh), ("dv", d)]);
                let bias = at(&rec, &ins[8], &[("head", hh), ("dv", d)]);
                y[i][hh * dk + d] = (o[d] - mean) / (var + 1e-5).sqrt() * gain + bias;
            }
        }
    }
    let g = affine(&rec, &x, &ins[9], &ins[10]);
    let z: Vec<Vec<f64>> = (0..t)
        .map(|i| {
            (0..dm)
                .map(|j| y[i][j] * g[i][j] / (1.0 + (-g[i][j]).exp()))
                .collect()
        })
        .collect();
    let want = affine(&rec, &z, &ins[11], &ins[12]);
    for (i, row) in want.iter().enumerate() {
        for (j, w) in row.iter().enumerate() {
            let (a, b) = (
                at(&rec, &yr[0], &[("tok", i), ("dm", j)]),
                at(&par, &yp[0], &[("tok", i), ("dm", j)]),
            );
            assert!((a - w).abs() < 1e-10, "recurrent ({i}, {j}): {a} vs {w}");
            assert!((b - w).abs() < 1e-10, "parallel ({i}, {j}): {b} vs {w}");
        }
    }
}

#[test]
fn rope_matches_a_naive_computation() {
    // M1 with q and k rotated: pair (i, i + dk/2) of position p turned by p * 10000^(-2i/dk).
    mechanism_matches_naive("rope", 14, |q, k, v, h, dk| {
        let half = dk / 2;
        let rot = |x: &[Vec<f64>], p: usize, hh: usize| -> Vec<f64> {
            let mut y = vec![0.0; dk];
            for i in 0..half {
                let th = p as f64 * 10000f64.powf(-2.0 * i as f64 / dk as f64);
                let (a, b) = (x[p][hh * dk + i], x[p][hh * dk + i + half]);
                y[i] = a * th.cos() - b * th.sin();
                y[i + half] = b * th.cos() + a * th.sin();
            }
            y
        };
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            let qi = rot(q, i, hh);
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    let kj = rot(k, j, hh);
                    qi.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>() / (dk as f64).sqrt()
                })
                .collect();
            let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - top).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        })
    });
}

#[test]
fn the_caret_is_pow_with_the_usual_precedence() {
    // x ^ 2 + 2 ^ 3 - -x ^ 2 * 0.5 + (x * x + 1) ^ -1, read as
    // x^2 + 8 - (-(x^2)) * 0.5 + 1 / (x^2 + 1): `^` binds tighter than unary minus and `*`.
    let src =
        "axis a\ndiagram f(x: [a]) -> [a] { x ^ 2 + 2 ^ 3 - -x ^ 2 * 0.5 + (x * x + 1) ^ -1 }\n";
    let xs = vec![-2.0, -0.5, 0.0, 0.25, 1.5];
    let (v, g) = forward_and_gradient(src, std::slice::from_ref(&xs));
    for (i, x) in xs.iter().enumerate() {
        let want = x * x + 8.0 + 0.5 * x * x + 1.0 / (x * x + 1.0);
        let dwant = 2.0 * x + x - 2.0 * x / ((x * x + 1.0) * (x * x + 1.0));
        assert!((v[i] - want).abs() < 1e-12, "at {x}: {} vs {want}", v[i]);
        assert!(
            (g[0][i] - dwant).abs() < 1e-12,
            "d at {x}: {} vs {dwant}",
            g[0][i]
        );
    }
}

#[test]
fn normalise_with_an_epsilon_matches_its_formula() {
    // normalise[b, eps = 0.5](x) = x / (sum_b x + 0.5), per row of [a, b]; a row summing to zero
    // stays finite.
    let src = "axis a, b\ndiagram f(x: [a, b]) -> [a, b] { normalise[b, eps = 0.5](x) }\n";
    let o = session::check_text("<test>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let rows = [vec![1.0, 2.0, 3.0], vec![1.0, -1.0, 0.0]];
    let inst = instantiate(
        &o.checked.program,
        "f",
        &bindings(&[("a", 2), ("b", 3)], &[]),
    )
    .unwrap();
    let axes = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
    let x = Tensor::from_vec(axes, &[2, 3], rows.concat());
    let y = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        vec![x],
        RunOptions::default(),
    )
    .unwrap();
    for (i, row) in rows.iter().enumerate() {
        let s: f64 = row.iter().sum::<f64>() + 0.5;
        for (j, v) in row.iter().enumerate() {
            let got = at(&inst, &y[0], &[("a", i), ("b", j)]);
            assert!(
                (got - v / s).abs() < 1e-12,
                "({i}, {j}): {got} vs {}",
                v / s
            );
        }
    }
}

/// Softmax over the visible keys of the scores `s` (position i sees 0..=i).
fn softmax_row(s: &[f64]) -> Vec<f64> {
    let top = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - top).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn soft_capped_attention_matches_a_naive_computation() {
    // cap bound to 1 so that tanh is far from linear at these scores.
    mechanism_matches_naive_extra(
        "softcap",
        15,
        &[("cap", 1)],
        |_, extra, _, q, k, v, h, dk| {
            assert!(extra.is_empty());
            weighted_heads(q.len(), h, dk, v, |hh, i| {
                let s: Vec<f64> = (0..=i).map(|j| score(q, k, hh, dk, i, j).tanh()).collect();
                softmax_row(&s)
            })
        },
    );
}

#[test]
fn attention_with_a_learned_sink_matches_a_naive_computation() {
    mechanism_matches_naive_extra("sink", 16, &[], |inst, extra, _, q, k, v, h, dk| {
        assert_eq!(extra.len(), 1, "one sink logit per head");
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            let b = at(inst, extra[0], &[("head", hh)]);
            let e: Vec<f64> = (0..=i).map(|j| score(q, k, hh, dk, i, j).exp()).collect();
            let z: f64 = e.iter().sum::<f64>() + b.exp();
            e.iter().map(|x| x / z).collect()
        })
    });
}

#[test]
fn forgetting_attention_matches_a_naive_computation() {
    mechanism_matches_naive_extra("forgetting", 17, &[], |inst, extra, x, q, k, v, h, dk| {
        assert_eq!(extra.len(), 2, "the gate's weight and bias");
        let (gw, gb) = (extra[0], extra[1]);
        // f_t = sigmoid(x_t . w_h + b_h); the discount of (i, j) is sum_(j < l <= i) log f_l.
        let f = |t: usize, hh: usize| {
            let z: f64 = (0..x[t].len())
                .map(|m| x[t][m] * at(inst, gw, &[("dm", m), ("head", hh)]))
                .sum::<f64>()
                + at(inst, gb, &[("head", hh)]);
            1.0 / (1.0 + (-z).exp())
        };
        weighted_heads(q.len(), h, dk, v, |hh, i| {
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    let decay: f64 = (j + 1..=i).map(|l| f(l, hh).ln()).sum();
                    score(q, k, hh, dk, i, j) + decay
                })
                .collect();
            softmax_row(&s)
        })
    });
}

#[test]
fn a_box_marked_not_trainable_computes_as_its_learned_twin_and_gets_no_gradient() {
    // `linear[a -> b, trainable = false]` is a linear map whose parameters are frozen: named
    // `....frozen`, same value as a trainable linear with the same weights (a naive product in
    // the test), no gradient, and printed back with its option.
    let src = "axis a, b\ndiagram f(x: [a]) -> [b] {\n    \
               linear[a -> b, trainable = false](x) + linear[a -> b](x)\n}\n";
    let o = session::check_text("<frozen>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let (na, nb) = (3usize, 2usize);
    let inst = instantiate(
        &o.checked.program,
        "f",
        &bindings(&[("a", na as u64), ("b", nb as u64)], &[]),
    )
    .unwrap();
    let names: Vec<&str> = inst.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[0].ends_with(".weight.frozen") && names[1].ends_with(".bias.frozen"));
    assert!(
        names[2].ends_with(".weight") && names[3].ends_with(".bias"),
        "{names:?}"
    );
    // Both linears get the same weights: y = 2 (W^T x + c).
    let mut ins = harness::random_inputs(&inst, 3);
    ins[3] = ins[1].clone();
    ins[4] = ins[2].clone();
    let x: Vec<f64> = ins[0].data.iter().copied().collect();
    let w: Vec<f64> = ins[1].data.iter().copied().collect(); // [a, b], row-major
    let c: Vec<f64> = ins[2].data.iter().copied().collect();
    let y = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        ins.clone(),
        RunOptions::default(),
    )
    .unwrap();
    for j in 0..nb {
        let want = 2.0 * ((0..na).map(|i| w[i * nb + j] * x[i]).sum::<f64>() + c[j]);
        let got = y[0].data.iter().copied().nth(j).unwrap();
        assert!((got - want).abs() < 1e-12, "y[{j}] = {got}, want {want}");
    }
    // Gradient with a seed of ones: the frozen weight and bias get exactly zero; the trainable
    // twin gets d/dW = x (each column), d/dc = 1.
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let b_axes = inst.diagram.wire(inst.diagram.outputs[0]).ty.axes.clone();
    let mut gin = ins;
    gin.push(Tensor::from_vec(b_axes, &[nb], vec![1.0; nb]));
    let g = interp::run(
        &grad.diagram,
        &inst.axes,
        &inst.sizes,
        gin,
        RunOptions::default(),
    )
    .unwrap();
    let gp = &g[g.len() - 4..];
    assert!(
        gp[0]
            .data
            .iter()
            .chain(gp[1].data.iter())
            .all(|v| *v == 0.0)
    );
    let gw: Vec<f64> = gp[2].data.iter().copied().collect();
    for i in 0..na {
        for j in 0..nb {
            assert!((gw[i * nb + j] - x[i]).abs() < 1e-12, "dW[{i}, {j}]");
        }
    }
    assert!(gp[3].data.iter().all(|v| (*v - 1.0).abs() < 1e-12));
    // Printed back as the source says, and re-read the same.
    let term = diagc::rewrite::term::Term::from_program(&o.checked.program, "f").unwrap();
    let text = term.to_text();
    assert!(
        text.contains("linear[a -> b, trainable = false](x)"),
        "{text}"
    );
    let again = session::check_text("<again>", &text);
    assert!(again.checked.is_ok(), "{text}");
    let d = again.checked.program.diagram("f").unwrap();
    let frozen: Vec<bool> = d
        .boxes
        .iter()
        .filter(|b| !b.params.is_empty())
        .map(|b| b.params.iter().all(|p| !p.trainable))
        .collect();
    assert_eq!(frozen, vec![true, false]);
}

#[test]
fn every_learned_box_takes_trainable_false() {
    // The option exists on every learned box, and its parameters all come out frozen.
    let src = "axis tok, a, b, v\ndiagram f(x: [tok, a], t: [tok] of v) -> [tok, b] {\n    \
               h = layernorm[a, trainable = false](x) + embed[v -> a, trainable = false](t)\n    \
               g = h + broadcast[tok](param[a, trainable = false]())\n    \
               learner[a -> b, width = 4, trainable = false](g)\n}\n";
    let o = session::check_text("<frozen-all>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let inst = instantiate(
        &o.checked.program,
        "f",
        &bindings(&[("tok", 2), ("a", 3), ("b", 2), ("v", 5)], &[]),
    )
    .unwrap();
    assert!(inst.params.len() >= 8);
    for p in &inst.params {
        assert!(p.name.ends_with(".frozen"), "{} is not frozen", p.name);
    }
    // A misspelt value is an error, not a silent default.
    let bad = session::check_text(
        "<bad>",
        "axis a, b\ndiagram f(x: [a]) -> [b] { linear[a -> b, trainable = no](x) }\n",
    );
    assert!(!bad.checked.is_ok());
}

#[test]
fn sin_and_cos_match_a_naive_computation() {
    // Of a wire, elementwise with their derivatives; of a number, a number (`x * sin(1)`).
    let src = "axis a\ndiagram f(x: [a]) -> [a] { sin(x) * 2 + cos(x) + x * sin(1) * cos(2) }\n";
    let xs = vec![-2.0, -0.3, 0.0, 0.7, 3.5];
    let (y, g) = forward_and_gradient(src, std::slice::from_ref(&xs));
    let k = 1f64.sin() * 2f64.cos();
    for (i, x) in xs.iter().enumerate() {
        let want = 2.0 * x.sin() + x.cos() + x * k;
        assert!(
            (y[i] - want).abs() < 1e-12,
            "y({x}) = {}, want {want}",
            y[i]
        );
        let dwant = 2.0 * x.cos() - x.sin() + k;
        assert!((g[0][i] - dwant).abs() < 1e-12, "dy/dx({x}) = {}", g[0][i]);
    }
}

#[test]
fn the_matrix_scan_matches_a_naive_recurrence() {
    // y_t = G_t y_(t-1) + x_t along `a` with y a vector over `b` and G_t a [b, b2] matrix,
    // forward and gradient against loops written here: the gradient of x is the reverse
    // recurrence u_t = seed_t + G_(t+1)^T u_(t+1), that of G_t the outer product u_t y_(t-1)^T.
    let (na, nb) = (5usize, 3usize);
    let mut rng = Rng::new(23);
    let gs: Vec<f64> = (0..na * nb * nb).map(|_| rng.uniform() - 0.5).collect();
    let xs: Vec<f64> = (0..na * nb).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let seed: Vec<f64> = (0..na * nb).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let src = "axis a, b\naxis b2 = b\n\
               diagram f(g: [a, b, b2], x: [a, b]) -> [a, b] { scan[a, b2 -> b](g, x) }\n";
    let o = session::check_text("<test>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let inst = instantiate(
        &o.checked.program,
        "f",
        &bindings(&[("a", na as u64), ("b", nb as u64)], &[]),
    )
    .unwrap();
    let g_at = |t: usize, i: usize, c: usize| gs[(t * nb + i) * nb + c];
    let mut y = vec![0.0; na * nb];
    for t in 0..na {
        for i in 0..nb {
            let mut v = xs[t * nb + i];
            if t > 0 {
                v += (0..nb)
                    .map(|c| g_at(t, i, c) * y[(t - 1) * nb + c])
                    .sum::<f64>();
            }
            y[t * nb + i] = v;
        }
    }
    let mut u = vec![0.0; na * nb];
    for t in (0..na).rev() {
        for c in 0..nb {
            let mut v = seed[t * nb + c];
            if t + 1 < na {
                v += (0..nb)
                    .map(|i| g_at(t + 1, i, c) * u[(t + 1) * nb + i])
                    .sum::<f64>();
            }
            u[t * nb + c] = v;
        }
    }
    let mut dg = vec![0.0; na * nb * nb];
    for t in 1..na {
        for i in 0..nb {
            for c in 0..nb {
                dg[(t * nb + i) * nb + c] = u[t * nb + i] * y[(t - 1) * nb + c];
            }
        }
    }
    let gaxes = inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone();
    let xaxes = inst.diagram.wire(inst.diagram.inputs[1]).ty.axes.clone();
    let gt = Tensor::from_vec(gaxes.clone(), &[na, nb, nb], gs.clone());
    let xt = Tensor::from_vec(xaxes.clone(), &[na, nb], xs.clone());
    let run = |d, ins| interp::run(d, &inst.axes, &inst.sizes, ins, RunOptions::default());
    let out = run(&inst.diagram, vec![gt.clone(), xt.clone()]).unwrap();
    let flat = |t: Tensor, order: &[diagc::ir::AxisId]| -> Vec<f64> {
        t.aligned(order).data.iter().copied().collect()
    };
    let close = |got: &[f64], want: &[f64], what: &str| {
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-12, "{what}[{k}]: {g} vs {w}");
        }
    };
    close(&flat(out[0].clone(), &xaxes), &y, "y");
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let st = Tensor::from_vec(xaxes.clone(), &[na, nb], seed);
    let g = run(&grad.diagram, vec![gt, xt, st]).unwrap();
    let n = g.len();
    close(&flat(g[n - 2].clone(), &gaxes), &dg, "dG");
    close(&flat(g[n - 1].clone(), &xaxes), &u, "dx");
}
