//! The fast f32 executor (its default plans: elementwise steps fused into JIT-compiled kernels;
//! `tests/jit.rs` checks that the unfused path gives the same bits) against the f64 reference
//! interpreter: every primitive, every stdlib
//! mechanism and the language model, forward and gradient diagrams, in evaluation and training
//! mode (where dropout masks must agree exactly); then memory reuse, workspace reuse and errors.
//!
//! Tolerance: the executor computes in f32 and the interpreter in f64 on the same inputs
//! (rounded to f32 first, so that only the arithmetic differs). An element passes when
//! `|fast - reference| <= 1e-4 * max(1, |reference|)`: f32 has a relative precision of about
//! 6e-8, and the deepest chains here (the two-layer LM's gradient) accumulate some hundred
//! roundings, so 1e-4 leaves a wide margin while still catching any wrong element, index or
//! mask (those give errors of order 1).

use diagc::autodiff;
use diagc::backend::cpu::exec::{Plan, PlanOptions, RunOptions};
use diagc::backend::cpu::harness::{self, Rng};
use diagc::backend::cpu::interp;
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::instance::{Instance, instantiate};
use diagc::ir::verify::Flat;
use diagc::session;
use std::path::Path;

const TOL: f64 = 1e-4;

mod common;
use common::{bindings, instance_of, lm};

/// A tensor rounded to f32 (and kept in f64 for the interpreter).
fn rounded(t: Tensor) -> Tensor {
    Tensor {
        axes: t.axes,
        data: t.data.mapv(|x| x as f32 as f64),
    }
}

/// Row-major data of `t` in the axis order `axes`.
fn flat(t: &Tensor, axes: &[diagc::ir::AxisId]) -> Vec<f64> {
    t.clone()
        .aligned(axes)
        .data
        .as_standard_layout()
        .iter()
        .copied()
        .collect()
}

/// Runs `d` on `inputs` in both executors and returns the worst scaled error, with where.
fn compare(
    inst: &Instance,
    d: &Flat,
    inputs: &[Tensor],
    opts: RunOptions,
) -> Result<(f64, String), String> {
    let want = interp::run(d, &inst.axes, &inst.sizes, inputs.to_vec(), opts)
        .map_err(|e| format!("interp: {e}"))?;
    let plan = Plan::new(d, &inst.axes, &inst.sizes).map_err(|e| e.to_string())?;
    let xs: Vec<Vec<f32>> = inputs
        .iter()
        .zip(&d.inputs)
        .map(|(t, w)| {
            flat(t, &d.wire(*w).ty.axes)
                .into_iter()
                .map(|x| x as f32)
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
    let mut ws = plan.workspace();
    let got = plan
        .run(&mut ws, &refs, opts)
        .map_err(|e| format!("fast: {e}"))?;
    let mut worst = (0.0f64, String::new());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let w = flat(w, &d.wire(d.outputs[k]).ty.axes);
        if g.len() != w.len() {
            return Err(format!(
                "output {k}: {} elements, expected {}",
                g.len(),
                w.len()
            ));
        }
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let a = *a as f64;
            let err = if a == *b || (a.is_nan() && b.is_nan()) {
                0.0
            } else {
                (a - b).abs() / b.abs().max(1.0)
            };
            if err.is_nan() || err > worst.0 {
                worst = (
                    if err.is_nan() { f64::INFINITY } else { err },
                    format!("output {k}[{i}]: fast {a:e}, reference {b:e}"),
                );
            }
        }
    }
    Ok(worst)
}

/// Compares the forward and the gradient diagram of `inst`, in evaluation and training mode;
/// returns a failure line per comparison over the tolerance.
fn check_instance(what: &str, inst: &Instance, seed: u64) -> Vec<String> {
    let mut failures = Vec::new();
    let f = &inst.diagram;
    let inputs: Vec<Tensor> = harness::random_inputs(inst, seed)
        .into_iter()
        .map(rounded)
        .collect();
    let grad = autodiff::gradient(f).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut rng = Rng::new(seed ^ 0xABCD);
    let mut gin = inputs.clone();
    for w in &f.outputs {
        let ty = &f.wire(*w).ty;
        if ty.index_of.is_none() {
            gin.push(rounded(harness::random_tensor(inst, ty, &mut rng)));
        }
    }
    for train in [false, true] {
        let opts = RunOptions {
            train,
            seed: seed.wrapping_mul(31).wrapping_add(7),
            check_finite: false,
        };
        for (kind, d, ins) in [("forward", f, &inputs), ("gradient", &grad.diagram, &gin)] {
            let mode = if train { "train" } else { "eval" };
            match compare(inst, d, ins, opts) {
                Ok((worst, at)) if worst > TOL => {
                    failures.push(format!("{what} {kind} {mode}: {worst:.3e} at {at}"));
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{what} {kind} {mode}: {e}")),
            }
        }
    }
    failures
}

fn primitives() -> diagc::ir::Program {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    o.checked.program
}

fn check_primitives(sizes: &[(&str, u64)]) {
    let p = primitives();
    let names: Vec<String> = p.diagrams.iter().map(|d| d.name.clone()).collect();
    assert!(names.len() >= 35, "{} diagrams", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let inst = instantiate(&p, name, &bindings(sizes, &[])).unwrap();
        failures.extend(check_instance(name, &inst, 5));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_primitive_matches_the_interpreter() {
    check_primitives(&[("a", 3), ("b", 4), ("c", 2), ("v", 5)]);
}

#[test]
fn every_primitive_matches_the_interpreter_with_axes_of_length_one() {
    // Axes of length 1 are dropped from loop nests and GEMM groups: check that nothing
    // depends on them.
    check_primitives(&[("a", 3), ("b", 1), ("c", 2), ("v", 5)]);
    check_primitives(&[("a", 1), ("b", 4), ("c", 1), ("v", 1)]);
}

#[test]
fn every_stdlib_mechanism_matches_the_interpreter() {
    let mechs: Vec<String> = diagc::stdlib::mechanisms().collect();
    assert!(mechs.len() >= 7);
    let mut failures = Vec::new();
    for m in &mechs {
        let inst = instance_of(
            &format!("stdlib/attention/{m}.diag"),
            &[],
            m,
            &bindings(&[("tok", 5), ("dm", 8), ("head", 2)], &[]),
        );
        failures.extend(check_instance(m, &inst, 3));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const LM_SIZES: &[(&str, u64)] = &[
    ("tok", 4),
    ("dm", 8),
    ("head", 2),
    ("dff", 12),
    ("vocab", 11),
];

#[test]
fn the_language_model_matches_the_interpreter() {
    let mut failures = Vec::new();
    for mech in ["m0", "m1"] {
        let inst = lm(mech, 2.0, LM_SIZES);
        failures.extend(check_instance(&format!("lm with {mech}"), &inst, 11));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_batched_language_model_matches_the_interpreter() {
    // A batch lane axis in front of every data wire, parameters shared: the contractions then
    // have several row axes, and the parameters' gradients sum over the batch.
    let mut failures = Vec::new();
    for mech in ["m0", "m1"] {
        let inst = lm(mech, 1.0, LM_SIZES);
        let inst = diagc::ir::instance::lift_batch(&inst, "batch", 3).unwrap();
        failures.extend(check_instance(
            &format!("batched lm with {mech}"),
            &inst,
            13,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fused_attention_matches_the_interpreter() {
    // `ir::fuse` turns M1's attention into one `attention` box (and its gradient into one
    // `attention_back`): the executor's fused kernels against the interpreter's, on the
    // mechanism, the two-layer LM and the batched LM, at a length where the causal rows differ.
    let mut failures = Vec::new();
    let m1 = instance_of(
        "stdlib/attention/m1.diag",
        &[],
        "m1",
        &bindings(&[("tok", 6), ("dm", 8), ("head", 2)], &[]),
    );
    let m0 = instance_of(
        "stdlib/attention/m0.diag",
        &[],
        "m0",
        &bindings(&[("tok", 6), ("dm", 8), ("head", 2)], &[]),
    );
    let two = lm("m1", 2.0, LM_SIZES);
    let batched = diagc::ir::instance::lift_batch(&lm("m1", 1.0, LM_SIZES), "batch", 3).unwrap();
    let linear = diagc::ir::instance::lift_batch(&lm("m0", 2.0, LM_SIZES), "batch", 3).unwrap();
    for (what, inst, layers) in [
        ("m1", m1, 1),
        ("m0", m0, 1),
        ("lm", two, 2),
        ("batched lm", batched, 1),
        ("batched lm m0", linear, 2),
    ] {
        let (fused, n) = diagc::ir::fuse::fuse_attention(&inst).unwrap();
        assert_eq!(n, layers, "{what}: fused chains");
        failures.extend(check_instance(
            &format!("{what}, attention fused"),
            &fused,
            17,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Layouts the stdlib does not produce: outputs in transposed orders, merges of axes that are
/// not adjacent, contractions whose row or column axes do not collapse in some operand (so an
/// operand or the result goes through a temporary), ops along an axis that is not innermost.
#[test]
fn unusual_layouts_match_the_interpreter() {
    let src = "
axis a, b, c, d
axis ab = a * b
axis a2 = a
diagram t_dot(x: [a, b], y: [c, b]) -> [c, a] { dot[b](x, y) }
diagram t_dot_batch(x: [b, a, c], y: [c, d, a]) -> [d, a, b] { dot[c](x, y) }
diagram t_rows_split(x: [a, c, b], y: [c, d]) -> [a, d, b] { dot[c](x, y) }
diagram t_outer(x: [b, a], y: [c, a]) -> [c, b, a] { outer(x, y) }
diagram t_merge(x: [b, c, a]) -> [c, ab] { merge[a, b -> ab](x) }
diagram t_split(x: [ab, c]) -> [b, c, a] { split[ab -> a, b](x) }
diagram t_softmax(x: [a, b]) -> [b, a] { softmax[a](x) }
diagram t_cumsum(x: [a, b]) -> [b, a] { cumsum[b](x) }
diagram t_layernorm(x: [a, b, c]) -> [c, a, b] { layernorm[a, c](x) }
diagram t_linear(x: [b, a, c]) -> [d, a] { linear[b, c -> d](x) }
diagram t_linear_t(x: [a, b]) -> [c, a] { linear[b -> c](x) }
diagram t_expand(x: [a, b]) -> [a, c, b] { broadcast[c](x) }
diagram t_sum(x: [a, b, c]) -> [c, a] { sum[b](x) }
diagram t_causal(x: [a, b, a2]) -> [a2, b, a] { causal[a, a2](x) }
";
    let o = session::check_text("<layouts>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics);
    let p = &o.checked.program;
    let sizes = [("a", 3), ("b", 4), ("c", 5), ("d", 2)];
    let mut failures = Vec::new();
    for d in &p.diagrams {
        let inst = instantiate(p, &d.name, &bindings(&sizes, &[])).unwrap();
        failures.extend(check_instance(&d.name, &inst, 9));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kernels_split_across_cores_match_the_interpreter() {
    // Kernels split their outer loop over the cores above about 256k elements (elementwise
    // maps, dropout, copies, cumulative sums, matrix-vector and outer products, layer norm and
    // its gradient, whose 600 lanes are ten blocks of gain and bias sums): these sizes take
    // that path, forward and backward.
    let p = primitives();
    let sizes = [("a", 600), ("b", 500), ("c", 2), ("v", 5)];
    let mut failures = Vec::new();
    for name in [
        "add_",
        "mul_",
        "div_",
        "funcs",
        "dropout_",
        "cumsum_",
        "dot_batch",
        "outer_shared",
        "broadcast_",
        "rename_",
        "layernorm_",
    ] {
        let inst = instantiate(&p, name, &bindings(&sizes, &[])).unwrap();
        failures.extend(check_instance(name, &inst, 21));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn dropout_masks_agree_on_a_large_tensor() {
    let p = primitives();
    let inst = instantiate(&p, "dropout_", &bindings(&[("a", 100), ("b", 100)], &[])).unwrap();
    let failures = check_instance("dropout_ 100x100", &inst, 3);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn memory_is_reused_on_the_lm_gradient() {
    let inst = lm(
        "m1",
        2.0,
        &[
            ("tok", 8),
            ("dm", 16),
            ("head", 2),
            ("dff", 32),
            ("vocab", 50),
        ],
    );
    let grad = autodiff::gradient(&inst.diagram).unwrap();
    // Without fusion, so that every value of the diagram is a buffer the planner places (fused
    // plans write fewer values: `tests/jit.rs`); the fused plan reuses memory too.
    let fused = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
    assert!(fused.peak_bytes() < fused.no_reuse_bytes());
    let plan = Plan::with_options(
        &grad.diagram,
        &inst.axes,
        &inst.sizes,
        PlanOptions { jit: false },
    )
    .unwrap();
    assert!(
        plan.peak_bytes() < plan.no_reuse_bytes(),
        "peak {} bytes, without reuse {}",
        plan.peak_bytes(),
        plan.no_reuse_bytes()
    );
    // The outputs (logits and every parameter's gradient) must stay, so they bound the peak
    // from below; reuse should bring everything else down well under the no-reuse figure.
    assert!(
        2 * plan.peak_bytes() < plan.no_reuse_bytes(),
        "peak {} bytes, without reuse {}",
        plan.peak_bytes(),
        plan.no_reuse_bytes()
    );
}

#[test]
fn a_workspace_is_reusable_across_runs_and_plans() {
    // One plan may serve several threads, each with its own workspace.
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Plan>();
    send_sync::<diagc::backend::cpu::exec::Workspace>();
    let inst = lm("m0", 1.0, LM_SIZES);
    let grad = autodiff::gradient(&inst.diagram).unwrap();
    let plan = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
    let fwd = Plan::for_instance(&inst).unwrap();
    let mut rng = Rng::new(1);
    let inputs: Vec<Vec<f32>> = (0..grad.diagram.inputs.len())
        .map(|k| {
            let n = plan.input_len(k);
            if k == 0 {
                (0..n).map(|_| rng.below(11) as f32).collect()
            } else {
                (0..n).map(|_| rng.uniform() as f32 - 0.5).collect()
            }
        })
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(|x| x.as_slice()).collect();
    let opts = RunOptions {
        train: true,
        seed: 4,
        check_finite: true,
    };
    let mut ws = plan.workspace();
    let first = plan.run(&mut ws, &refs, opts).unwrap();
    // The same workspace, used by another plan in between, gives the same results again.
    let fwd_refs: Vec<&[f32]> = refs[..inst.diagram.inputs.len()].to_vec();
    let logits = fwd.run(&mut ws, &fwd_refs, opts).unwrap();
    let second = plan.run(&mut ws, &refs, opts).unwrap();
    assert_eq!(first, second);
    assert_eq!(logits[0], first[0]);
    // Views give the same data without copying.
    let views = plan.run_views(&mut ws, &refs, opts).unwrap();
    assert!(views.iter().zip(&first).all(|(v, f)| *v == f.as_slice()));
}

#[test]
fn errors_name_the_input_and_the_box() {
    let p = primitives();
    let inst = instantiate(
        &p,
        "add_",
        &bindings(&[("a", 3), ("b", 4), ("c", 2), ("v", 5)], &[]),
    )
    .unwrap();
    let plan = Plan::for_instance(&inst).unwrap();
    let mut ws = plan.workspace();
    let x = vec![0f32; 12];
    let y = vec![0f32; 11];
    let e = plan
        .run(&mut ws, &[&x, &y], RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input `y`") && e.contains("11") && e.contains("12"),
        "{e}"
    );
    let e = plan
        .run(&mut ws, &[&x], RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 inputs given"), "{e}");
    // A token id outside the vocabulary names the embedding box.
    let inst = instantiate(
        &p,
        "embed_",
        &bindings(&[("a", 3), ("b", 4), ("c", 2), ("v", 5)], &[]),
    )
    .unwrap();
    let plan = Plan::for_instance(&inst).unwrap();
    let mut ws = plan.workspace();
    let ids = [0.0, 5.0, 1.0];
    let table = vec![0f32; 20];
    let e = plan
        .run(&mut ws, &[&ids, &table], RunOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("embed") && e.contains("token id 5"), "{e}");
    // A NaN is reported with the box that produced it, as the interpreter reports it.
    let src = "axis a\ndiagram f(x: [a]) -> [a] { sqrt(x - 5) }\n";
    let o = session::check_text("<nan>", src);
    let inst = instantiate(&o.checked.program, "f", &bindings(&[("a", 3)], &[])).unwrap();
    let opts = RunOptions {
        check_finite: true,
        ..RunOptions::default()
    };
    let plan = Plan::for_instance(&inst).unwrap();
    let mut ws = plan.workspace();
    let e = plan
        .run(&mut ws, &[&[1.0, 2.0, 3.0]], opts)
        .unwrap_err()
        .to_string();
    let reference = interp::run(
        &inst.diagram,
        &inst.axes,
        &inst.sizes,
        vec![Tensor::from_vec(
            inst.diagram.wire(inst.diagram.inputs[0]).ty.axes.clone(),
            &[3],
            vec![1.0, 2.0, 3.0],
        )],
        opts,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(e, reference);
    assert!(e.contains("sqrt") && e.contains("NaN"), "{e}");
}

#[test]
fn copies_and_layout_preserving_reshapes_do_not_copy() {
    // M1's splits and renames keep memory order: they must be aliases, leaving the four
    // linear maps, the two attention products, the merge (a real transposition) and the
    // elementwise steps.
    let inst = instance_of(
        "stdlib/attention/m1.diag",
        &[],
        "m1",
        &bindings(&[("tok", 5), ("dm", 8), ("head", 2)], &[]),
    );
    let plan = Plan::for_instance(&inst).unwrap();
    let listing = plan.describe();
    let copies = listing.lines().filter(|l| l.contains(" copy ")).count();
    assert_eq!(copies, 1, "{listing}");
    assert_eq!(plan.gemm_count(), 6, "{listing}");
}

#[test]
fn long_scans_run_in_chunks_and_match_the_interpreter() {
    // Lanes of at least twice `exec::SCAN_CHUNK` (64 here) positions run the chunked scan
    // (local scans, carries across chunks, fix-up), forward and gradient: at lengths on both
    // sides of the threshold, with a last chunk cut short, and with gates of exactly 1 (plain
    // prefix sums, where every carry reaches the end) and near 1.
    let src = "axis a, b\n\
               diagram gated(g: [a, b], x: [a, b]) -> [a, b] { scan[a](sigmoid(g) * 0.3 + 0.7, x) }\n\
               diagram ones(x: [b, a]) -> [b, a] { cumsum[a, decay = 1](x) }\n\
               diagram near(x: [a, b]) -> [a, b] { cumsum[a, decay = 0.99](x) }\n";
    let o = session::check_text("<scan>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    // The chunked execution is off by default (it does not pay on two cores): on for this
    // test. Other tests of this binary running meanwhile may take it too; it is checked
    // against the interpreter the same way.
    diagc::backend::cpu::exec::SCAN_CHUNK.store(64, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for n in [127u64, 128, 300, 1000] {
        for name in ["gated", "ones", "near"] {
            let inst = instantiate(
                &o.checked.program,
                name,
                &bindings(&[("a", n), ("b", 3)], &[]),
            )
            .unwrap();
            failures.extend(check_instance(&format!("{name} a={n}"), &inst, 9));
        }
    }
    diagc::backend::cpu::exec::SCAN_CHUNK.store(0, std::sync::atomic::Ordering::Relaxed);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
