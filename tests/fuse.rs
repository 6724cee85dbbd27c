//! The attention fusion pass (`ir::fuse`): which chains it fuses, and that the fused diagram
//! computes what the original does. Both run on the f64 interpreter, whose `attention` and
//! `attention_back` boxes are defined independently of the five boxes they replace (log-sum-exp,
//! then the flash-attention gradient formulas), so agreement to f64 rounding checks the pass,
//! the interpreter's fused ops and the autodiff rule together.

mod common;

use common::{LM_SIZES, bindings, instance_of, lm};
use diagc::autodiff;
use diagc::backend::cpu::harness::{self, Rng};
use diagc::backend::cpu::interp::{self, RunOptions};
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::fuse::fuse_attention;
use diagc::ir::instance::{Instance, lift_batch};
use diagc::ir::{ExecOp, Op};

fn count(inst: &Instance, f: impl Fn(&Op) -> bool) -> usize {
    inst.diagram.boxes.iter().filter(|b| f(&b.op)).count()
}

/// The worst relative difference between two runs' outputs.
fn worst(a: &[Tensor], b: &[Tensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut w: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        let y = y.clone().aligned(&x.axes);
        for (p, q) in x.data.iter().zip(y.data.iter()) {
            w = w.max((p - q).abs() / q.abs().max(1.0));
        }
    }
    w
}

/// Runs the forward and gradient diagrams of `plain` and `fused` on the same inputs and seeds.
fn agree(what: &str, plain: &Instance, fused: &Instance) {
    let inputs = harness::random_inputs(plain, 7);
    let opts = RunOptions {
        train: true,
        seed: 3,
        check_finite: false,
    };
    let run = |i: &Instance, d: &diagc::ir::verify::Flat, xs: Vec<Tensor>| {
        interp::run(d, &i.axes, &i.sizes, xs, opts).unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let a = run(plain, &plain.diagram, inputs.clone());
    let b = run(fused, &fused.diagram, inputs.clone());
    assert!(worst(&a, &b) < 1e-12, "{what} forward: {:e}", worst(&a, &b));
    let (ga, gb) = (
        autodiff::gradient(&plain.diagram).unwrap(),
        autodiff::gradient(&fused.diagram).unwrap(),
    );
    assert_eq!(ga.grad_of, gb.grad_of);
    let mut gin = inputs;
    let mut rng = Rng::new(5);
    for w in &plain.diagram.outputs {
        gin.push(harness::random_tensor(
            plain,
            &plain.diagram.wire(*w).ty,
            &mut rng,
        ));
    }
    let a = run(plain, &ga.diagram, gin.clone());
    let b = run(fused, &gb.diagram, gin);
    // Every output of the gradient diagram: the forward outputs, then every input's gradient.
    assert!(
        worst(&a, &b) < 1e-10,
        "{what} gradient: {:e}",
        worst(&a, &b)
    );
}

#[test]
fn m1_attention_becomes_one_box_and_computes_the_same() {
    let inst = instance_of(
        "stdlib/attention/m1.diag",
        &[],
        "m1",
        &bindings(&[("tok", 7), ("dm", 12), ("head", 3)], &[]),
    );
    let (fused, n) = fuse_attention(&inst).unwrap();
    assert_eq!(n, 1);
    fused.diagram.validate().unwrap();
    let is_attn = |op: &Op| matches!(op, Op::Exec(ExecOp::Attention(_)));
    assert_eq!(count(&fused, is_attn), 1);
    // The five boxes are gone: no softmax, no causal mask and no dot remain.
    assert_eq!(
        count(&fused, |op| matches!(
            op,
            Op::Softmax(_) | Op::Causal { .. }
        )),
        0
    );
    assert_eq!(count(&fused, |op| matches!(op, Op::Dot(_))), 0);
    assert_eq!(fused.params.len(), inst.params.len());
    let Some(Op::Exec(ExecOp::Attention(at))) = fused
        .diagram
        .boxes
        .iter()
        .map(|b| &b.op)
        .find(|op| is_attn(op))
    else {
        unreachable!()
    };
    assert!(
        (at.scale - 0.5).abs() < 1e-15,
        "1/sqrt(dk) with dk = 4: {}",
        at.scale
    );
    agree("m1", &inst, &fused);
    // The gradient has one backward box and no score-sized softmax gradient.
    let g = autodiff::gradient(&fused.diagram).unwrap();
    let back = g
        .diagram
        .boxes
        .iter()
        .filter(|b| matches!(b.op, Op::Exec(ExecOp::AttentionBack(_))))
        .count();
    assert_eq!(back, 1);
    assert!(
        !g.diagram
            .boxes
            .iter()
            .any(|b| matches!(b.op, Op::Exec(ExecOp::SoftmaxBack(_))))
    );
}

#[test]
fn every_layer_of_the_batched_lm_is_fused_and_computes_the_same() {
    for layers in [1.0, 3.0] {
        let inst = lift_batch(&lm("m1", layers, LM_SIZES), "batch", 2).unwrap();
        let (fused, n) = fuse_attention(&inst).unwrap();
        assert_eq!(n, layers as usize);
        fused.diagram.validate().unwrap();
        agree(&format!("lm, {layers} layers"), &inst, &fused);
    }
}

#[test]
fn what_is_not_causal_softmax_attention_is_left_alone() {
    // M0 (linear attention), and mechanisms without a causal mask or without a softmax.
    let sizes = bindings(&[("tok", 5), ("dm", 8), ("head", 2)], &[]);
    for m in diagc::stdlib::mechanisms().filter(|m| m != "m1") {
        let inst = instance_of(&format!("stdlib/attention/{m}.diag"), &[], &m, &sizes);
        let (same, n) = fuse_attention(&inst).unwrap();
        // Any mechanism that has the exact chain is fused and must still agree.
        if n > 0 {
            agree(&m, &inst, &same);
        } else {
            assert_eq!(same.diagram.boxes.len(), inst.diagram.boxes.len(), "{m}");
        }
    }
    // Softmax-free attention has a causal mask but no softmax: not fused.
    let sf = instance_of(
        "stdlib/attention/softmax_free.diag",
        &[],
        "softmax_free",
        &sizes,
    );
    assert_eq!(fuse_attention(&sf).unwrap().1, 0);
}

#[test]
fn m0_linear_attention_becomes_one_box_and_computes_the_same() {
    let inst = instance_of(
        "stdlib/attention/m0.diag",
        &[],
        "m0",
        &bindings(&[("tok", 7), ("dm", 12), ("head", 3)], &[]),
    );
    let (fused, n) = fuse_attention(&inst).unwrap();
    assert_eq!(n, 1);
    fused.diagram.validate().unwrap();
    let lin = |op: &Op| matches!(op, Op::Exec(ExecOp::LinearAttention(_)));
    assert_eq!(count(&fused, lin), 1);
    assert_eq!(
        count(&fused, |op| matches!(op, Op::Cumsum(_) | Op::Outer)),
        0
    );
    let Some(Op::Exec(ExecOp::LinearAttention(at))) =
        fused.diagram.boxes.iter().map(|b| &b.op).find(|op| lin(op))
    else {
        unreachable!()
    };
    assert_eq!(at.eps, 1e-6);
    agree("m0", &inst, &fused);
    for layers in [1.0, 2.0] {
        let inst = lift_batch(&lm("m0", layers, LM_SIZES), "batch", 2).unwrap();
        let (fused, n) = fuse_attention(&inst).unwrap();
        assert_eq!(n, layers as usize);
        agree(&format!("lm m0, {layers} layers"), &inst, &fused);
    }
}

#[test]
fn a_chain_whose_weights_are_also_an_output_is_not_fused() {
    // The attention weights leave the diagram (through a copy), so they must be materialised.
    let src = "
axis t, s = t, d, x = t
diagram weights(q: [t, d], k: [s, d], v: [s, d]) -> ([t, d], [t, s]) {
    a = softmax[s](causal[t, s](dot[d](q, k) / sqrt(d)))
    (dot[s](a, v), a)
}
diagram unscaled(q: [t, d], k: [s, d], v: [s, d]) -> [t, d] {
    dot[s](softmax[s](causal[t, s](dot[d](k, q))), v)
}
diagram nested(q: [t, d], k: [s, d], v: [s, x], w: [x, d]) -> [t, d] {
    o = dot[s](softmax[s](causal[t, s](dot[d](q, k))), v)
    dot[x](softmax[x](causal[t, x](o)), w)
}
";
    let dir = std::env::temp_dir().join(format!("diagc-fuse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chains.diag");
    std::fs::write(&path, src).unwrap();
    let o = diagc::session::check_path(&path).unwrap();
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let b = bindings(&[("t", 4), ("d", 3)], &[]);
    let inst = |name: &str| diagc::ir::instance::instantiate(&o.checked.program, name, &b).unwrap();
    let w = inst("weights");
    assert_eq!(fuse_attention(&w).unwrap().1, 0);
    // Without a scale, and with the operands of the scores swapped: fused, scale 1.
    let u = inst("unscaled");
    let (fu, n) = fuse_attention(&u).unwrap();
    assert_eq!(n, 1);
    agree("unscaled", &u, &fu);
    // The first attention's last product is also the start of a second chain (attention over
    // its value feature): only the first is fused, and nothing breaks.
    let nested = inst("nested");
    let (fnested, n) = fuse_attention(&nested).unwrap();
    assert_eq!(n, 1);
    fnested.diagram.validate().unwrap();
    agree("nested", &nested, &fnested);
    std::fs::remove_dir_all(&dir).ok();
}
