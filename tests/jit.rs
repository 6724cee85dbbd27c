//! The JIT path of the fast executor (elementwise steps fused into cranelift-compiled kernels,
//! `PlanOptions { jit: true }`, the default) against its interpreter path (every step on the
//! precompiled kernels, `jit: false`): every primitive, every stdlib mechanism and the language
//! model, forward and gradient diagrams, in evaluation and training mode (dropout active).
//!
//! Tolerance: none. A fused kernel performs the same f32 operations in the same order as the
//! kernels it replaces, calls the same functions for `exp`, `tanh`, `gelu`..., and draws the
//! same dropout masks, so every output must be equal bit for bit, except that a zero may differ
//! in sign (`max(x, 0)` against a compare-and-select) and NaNs are compared as NaNs.
//!
//! The f64 interpreter stays the oracle: `tests/fast_exec.rs` compares the default (JIT) plans
//! with it on the same diagrams, within f32 rounding; here `the_jit_plans_match_the_oracle`
//! repeats that for the LM so this file alone checks both links.

use diagc::autodiff;
use diagc::backend::cpu::exec::{Plan, PlanOptions, RunOptions};
use diagc::backend::cpu::harness::{self, Rng};
use diagc::backend::cpu::interp;
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::Diagram;
use diagc::ir::instance::{Instance, instantiate};
use diagc::ir::verify::Flat;
use diagc::session;
use std::path::Path;

mod common;
use common::{LM_SIZES, bindings, instance_of, lm};

fn flat(t: &Tensor, axes: &[diagc::ir::AxisId]) -> Vec<f32> {
    t.clone()
        .aligned(axes)
        .data
        .as_standard_layout()
        .iter()
        .map(|x| *x as f32)
        .collect()
}

/// Equal as the module comment says: bit for bit, zeros of either sign equal, NaN equal NaN.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || a == b || (a.is_nan() && b.is_nan())
}

/// Seeded inputs of the forward diagram and of its gradient (forward inputs, then one seed
/// per output), as f32 in each input wire's layout.
fn inputs(inst: &Instance, grad: &Diagram, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let f = &inst.diagram;
    let ts = harness::random_inputs(inst, seed);
    let fwd: Vec<Vec<f32>> = ts
        .iter()
        .zip(&f.inputs)
        .map(|(t, w)| flat(t, &f.wire(*w).ty.axes))
        .collect();
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut all = fwd.clone();
    for w in &f.outputs {
        let ty = &f.wire(*w).ty;
        if ty.index_of.is_none() {
            let t = harness::random_tensor(inst, ty, &mut rng);
            all.push(flat(&t, &ty.axes));
        }
    }
    assert_eq!(all.len(), grad.inputs.len());
    (fwd, all)
}

/// Runs `d` with JIT on and off on `xs`; returns a failure line per differing output, and the
/// number of fused kernels of the JIT plan.
fn compare(inst: &Instance, d: &Flat, xs: &[Vec<f32>], opts: RunOptions) -> (Vec<String>, usize) {
    let plan = |jit| Plan::with_options(d, &inst.axes, &inst.sizes, PlanOptions { jit }).unwrap();
    let (fast, slow) = (plan(true), plan(false));
    assert_eq!(slow.fused_count(), 0);
    // A group the code generator fails on is planned again unfused: the same numbers, so only
    // this count shows the failure.
    assert_eq!(
        fast.jit_failures(),
        0,
        "the JIT failed to compile some fused groups"
    );
    let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
    let a = fast.run(&mut fast.workspace(), &refs, opts).unwrap();
    let b = slow.run(&mut slow.workspace(), &refs, opts).unwrap();
    let mut failures = Vec::new();
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len());
        if let Some(i) = (0..x.len()).find(|i| !same(x[*i], y[*i])) {
            failures.push(format!(
                "output {k}[{i}]: jit {:e}, interpreter path {:e}",
                x[i], y[i]
            ));
        }
    }
    (failures, fast.fused_count())
}

/// Forward and gradient, evaluation and training: failures and the fused kernels seen.
fn check(what: &str, inst: &Instance, seed: u64) -> (Vec<String>, usize) {
    let grad = autodiff::gradient(&inst.diagram).unwrap_or_else(|e| panic!("{what}: {e}"));
    let (fwd, all) = inputs(inst, &grad.diagram, seed);
    let mut failures = Vec::new();
    let mut fused = 0;
    for train in [false, true] {
        let opts = RunOptions {
            train,
            seed: seed * 7 + 1,
            check_finite: false,
        };
        for (kind, d, xs) in [
            ("forward", &inst.diagram, &fwd),
            ("gradient", &grad.diagram, &all),
        ] {
            let (f, n) = compare(inst, d, xs, opts);
            fused += n;
            failures.extend(
                f.into_iter()
                    .map(|e| format!("{what} {kind} train={train}: {e}")),
            );
        }
    }
    (failures, fused)
}

fn primitives() -> diagc::ir::Program {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    assert!(o.checked.is_ok());
    o.checked.program
}

#[test]
fn every_primitive_is_the_same_with_and_without_jit() {
    let p = primitives();
    let mut failures = Vec::new();
    let mut fused = 0;
    for sizes in [
        [("a", 3), ("b", 4), ("c", 2), ("v", 5)],
        [("a", 1), ("b", 9), ("c", 1), ("v", 1)],
    ] {
        for d in &p.diagrams {
            let inst = instantiate(&p, &d.name, &bindings(&sizes, &[])).unwrap();
            let (f, n) = check(&d.name, &inst, 5);
            failures.extend(f);
            fused += n;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(fused > 20, "only {fused} fused kernels over the primitives");
}

#[test]
fn every_stdlib_mechanism_is_the_same_with_and_without_jit() {
    let mechs: Vec<String> = diagc::stdlib::mechanisms().collect();
    assert!(mechs.len() >= 7);
    let mut failures = Vec::new();
    for m in &mechs {
        let inst = instance_of(
            &format!("stdlib/attention/{m}.diag"),
            &[],
            m,
            &bindings(&[("tok", 6), ("dm", 8), ("head", 2)], &[]),
        );
        let (f, n) = check(m, &inst, 3);
        failures.extend(f);
        assert!(n > 0, "{m}: nothing was fused");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_language_model_is_the_same_with_and_without_jit() {
    let mut failures = Vec::new();
    for mech in diagc::stdlib::mechanisms() {
        for layers in [1.0, 2.0] {
            let inst = lm(&mech, layers, LM_SIZES);
            let (f, n) = check(&format!("lm {mech} x{layers}"), &inst, 11);
            failures.extend(f);
            assert!(n >= 4, "lm {mech}: only {n} fused kernels");
        }
    }
    // Batched (a lane axis in front of every data wire), and large enough that fused kernels
    // split over the cores.
    for (mech, sizes) in [
        ("m1", LM_SIZES),
        // The smoke sweep's sizes: a group with a stride-0 input on the vector path (its
        // broadcast was once emitted after the entry block's jump, and every group fell back).
        (
            "m1",
            &[
                ("tok", 16),
                ("dm", 32),
                ("head", 2),
                ("dff", 64),
                ("vocab", 50),
            ][..],
        ),
        (
            "m0",
            &[
                ("tok", 16),
                ("dm", 64),
                ("head", 4),
                ("dff", 256),
                ("vocab", 50),
            ][..],
        ),
    ] {
        let inst = lm(mech, 1.0, sizes);
        let inst = diagc::ir::instance::lift_batch(&inst, "batch", 24).unwrap();
        let (f, _) = check(&format!("batched lm {mech}"), &inst, 13);
        failures.extend(f);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fused_values_get_no_buffers() {
    // The LM's gradient with fusion needs less memory than without: the values inside fused
    // groups are never written.
    let inst = lm("m1", 2.0, LM_SIZES);
    let grad = autodiff::gradient(&inst.diagram).unwrap();
    let plan = |jit| {
        Plan::with_options(&grad.diagram, &inst.axes, &inst.sizes, PlanOptions { jit }).unwrap()
    };
    let (a, b) = (plan(true), plan(false));
    assert!(a.fused_count() > 0);
    assert!(a.no_reuse_bytes() < b.no_reuse_bytes());
    assert!(a.step_count() < b.step_count());
    assert!(a.describe().contains("fused["), "{}", a.describe());
}

#[test]
fn the_jit_plans_match_the_oracle() {
    // The f64 interpreter on the same (f32-rounded) inputs, within f32 rounding: 1e-4 relative,
    // as in tests/fast_exec.rs.
    for mech in ["m0", "m1"] {
        let inst = lm(mech, 2.0, LM_SIZES);
        let grad = autodiff::gradient(&inst.diagram).unwrap();
        let (_, all) = inputs(&inst, &grad.diagram, 17);
        let d = &grad.diagram;
        let tensors: Vec<Tensor> = all
            .iter()
            .zip(&d.inputs)
            .map(|(x, w)| {
                let axes = d.wire(*w).ty.axes.clone();
                let shape: Vec<usize> = axes.iter().map(|a| inst.sizes[a.0 as usize]).collect();
                Tensor::from_vec(axes, &shape, x.iter().map(|v| *v as f64).collect())
            })
            .collect();
        for train in [false, true] {
            let opts = RunOptions {
                train,
                seed: 3,
                check_finite: false,
            };
            let want = interp::run(d, &inst.axes, &inst.sizes, tensors.clone(), opts).unwrap();
            let plan = Plan::new(d, &inst.axes, &inst.sizes).unwrap();
            assert!(plan.fused_count() > 0);
            let refs: Vec<&[f32]> = all.iter().map(|x| x.as_slice()).collect();
            let got = plan.run(&mut plan.workspace(), &refs, opts).unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let w = flat(w, &d.wire(d.outputs[k]).ty.axes);
                for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                    let err = (a - b).abs() / b.abs().max(1.0);
                    assert!(
                        err <= 1e-4,
                        "{mech} train={train} output {k}[{i}]: jit {a}, oracle {b}"
                    );
                }
            }
        }
    }
}
