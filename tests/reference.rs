//! The CPU reference interpreter and autodiff against an independent PyTorch implementation.
//!
//! Each fixture in `tests/reference/` holds fixed inputs and parameters with the outputs and the
//! gradients of the sum of the outputs that PyTorch computed for them in float64
//! (`tests/reference/pytorch_reference.py`, which also regenerates them with `--all`). This test
//! recomputes both with diagc and asserts that every element agrees within 1e-9, relative to
//! max(1, |value|). It needs no PyTorch; a missing fixture is a failure, not a skip.

use diagc::autodiff;
use diagc::backend::cpu::harness::tensor_from_json;
use diagc::backend::cpu::interp::{self, RunOptions};
use diagc::backend::cpu::tensor::Tensor;
use diagc::ir::instance::{Bindings, HyperValue, Instance, instantiate};
use diagc::ir::size::Size;
use diagc::session;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const TOLERANCE: f64 = 1e-9;

fn load_fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the fixture {}: {e} (regenerate it with \
             `python3 tests/reference/pytorch_reference.py --all`)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks `file` and instantiates `diagram` with the fixture's sizes (those of the program's free
/// axes; derived ones such as `dk`, `src` and `dm'` follow from them) and hyperparameters.
fn instance_for(fixture: &Value, file: &str, extra: &[&str], diagram: &str) -> Instance {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path_with(&root.join(file), extra).unwrap();
    assert!(
        o.checked.is_ok(),
        "{file}: {:?}",
        o.checked.diagnostics.first()
    );
    let program = &o.checked.program;
    let fixture_sizes = fixture["sizes"].as_object().expect("fixture sizes");
    let mut sizes = BTreeMap::new();
    for (name, n) in fixture_sizes {
        let Some(id) = program.axes.lookup(name) else {
            continue;
        };
        if program.axes.size(id) == &Size::var(name) {
            sizes.insert(name.clone(), n.as_u64().expect("a size"));
        }
    }
    let mut hypers = BTreeMap::new();
    for (name, v) in fixture["hypers"].as_object().expect("fixture hypers") {
        let v = match v {
            Value::Number(x) => HyperValue::Num(x.as_f64().expect("a number")),
            Value::String(s) => HyperValue::Diagram(s.clone()),
            other => panic!("hyperparameter `{name}`: {other}"),
        };
        hypers.insert(name.clone(), v);
    }
    let inst = instantiate(program, diagram, &Bindings { sizes, hypers })
        .unwrap_or_else(|e| panic!("{diagram}: {e}"));
    // Every size the fixture recorded, derived ones included, is the instance's.
    for (name, n) in fixture_sizes {
        let id = inst
            .axes
            .lookup(name)
            .unwrap_or_else(|| panic!("the instance has no axis `{name}`"));
        assert_eq!(
            inst.size(id) as u64,
            n.as_u64().unwrap(),
            "the size of `{name}`"
        );
    }
    inst
}

/// The fixture's tensor named `name` in `group`; panics when there is none or more than one.
fn tensor_named<'a>(fixture: &'a Value, group: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = fixture[group]
        .as_array()
        .unwrap_or_else(|| panic!("the fixture has no `{group}`"))
        .iter()
        .filter(|t| t["name"] == name)
        .collect();
    match found.as_slice() {
        [t] => t,
        [] => panic!("the fixture's {group} have no tensor named `{name}`"),
        _ => panic!("the fixture's {group} name `{name}` more than once"),
    }
}

/// The largest error `|actual - expected| / max(1, |expected|)`, asserting it is within the
/// tolerance for every element; returns it with the largest absolute difference.
fn compare(what: &str, actual: &Tensor, expected: &Tensor) -> (f64, f64) {
    let mut a_axes = actual.axes.clone();
    let mut e_axes = expected.axes.clone();
    a_axes.sort();
    e_axes.sort();
    assert_eq!(a_axes, e_axes, "{what}: the axes differ");
    let actual = actual.clone().aligned(&expected.axes);
    assert_eq!(
        actual.data.shape(),
        expected.data.shape(),
        "{what}: the shapes differ"
    );
    let (mut worst, mut worst_abs) = (0.0f64, 0.0f64);
    for (i, (a, e)) in actual.data.iter().zip(expected.data.iter()).enumerate() {
        let abs = (a - e).abs();
        let rel = abs / e.abs().max(1.0);
        assert!(
            rel <= TOLERANCE,
            "{what}[{i}] (row-major in the fixture's axes): diagc {a:.17e}, PyTorch {e:.17e}, \
             error {rel:.3e}"
        );
        worst = worst.max(rel);
        worst_abs = worst_abs.max(abs);
    }
    (worst, worst_abs)
}

fn check_against_pytorch(fixture_name: &str, file: &str, extra: &[&str], diagram: &str) {
    let fixture = load_fixture(fixture_name);
    assert_eq!(fixture["diagram"], diagram, "{fixture_name}: the diagram");
    assert_eq!(
        fixture["train"], false,
        "{fixture_name}: fixtures are in eval mode"
    );
    let inst = instance_for(&fixture, file, extra, diagram);
    let f = &inst.diagram;

    // The inputs, by name, in the instance's order; none missing, none left over.
    let mut inputs = Vec::with_capacity(f.inputs.len());
    for (k, w) in f.inputs.iter().enumerate() {
        let name = &f.input_names[k];
        let t = tensor_from_json(&inst, tensor_named(&fixture, "inputs", name))
            .unwrap_or_else(|e| panic!("{fixture_name}: input `{name}`: {e}"));
        let ty = &f.wire(*w).ty.axes;
        let mut want = ty.clone();
        let mut have = t.axes.clone();
        want.sort();
        have.sort();
        assert_eq!(have, want, "{fixture_name}: input `{name}` has other axes");
        inputs.push(t.aligned(ty));
    }
    let given = fixture["inputs"].as_array().unwrap().len();
    assert_eq!(
        given,
        f.inputs.len(),
        "{fixture_name}: the fixture has {given} inputs, the instance takes {}",
        f.inputs.len()
    );

    let opts = RunOptions {
        train: false,
        seed: fixture["seed"].as_u64().unwrap_or(0),
        // The causal mask is -inf by design; a NaN in a result fails the comparison below.
        check_finite: false,
    };
    let (mut worst, mut worst_abs) = (0.0f64, 0.0f64);
    let mut note = |(r, a): (f64, f64)| {
        worst = worst.max(r);
        worst_abs = worst_abs.max(a);
    };

    // Outputs, from the forward diagram.
    let outs = interp::run(f, &inst.axes, &inst.sizes, inputs.clone(), opts)
        .unwrap_or_else(|e| panic!("{fixture_name}: {e:?}"));
    let expected_outputs = fixture["outputs"].as_array().unwrap();
    assert_eq!(
        expected_outputs.len(),
        outs.len(),
        "{fixture_name}: outputs"
    );
    for (k, y) in outs.iter().enumerate() {
        let name = format!("output{k}");
        let e = tensor_from_json(&inst, tensor_named(&fixture, "outputs", &name)).unwrap();
        note(compare(&format!("{fixture_name}: {name}"), y, &e));
    }

    // Gradients of the sum of the outputs: the gradient diagram with every seed all ones.
    let grad = autodiff::gradient(f).unwrap_or_else(|e| panic!("{fixture_name}: {e}"));
    let mut gin = inputs;
    for w in &f.outputs {
        let ty = &f.wire(*w).ty;
        if ty.index_of.is_some() {
            continue;
        }
        let shape = inst.shape(ty);
        let n = shape.iter().product();
        gin.push(Tensor::from_vec(ty.axes.clone(), &shape, vec![1.0; n]));
    }
    let gouts = interp::run(&grad.diagram, &inst.axes, &inst.sizes, gin, opts)
        .unwrap_or_else(|e| panic!("{fixture_name}: gradient: {e:?}"));
    // The gradient diagram's copy of the outputs agrees too.
    for (k, y) in gouts[..grad.forward_outputs].iter().enumerate() {
        let name = format!("output{k}");
        let e = tensor_from_json(&inst, tensor_named(&fixture, "outputs", &name)).unwrap();
        note(compare(
            &format!("{fixture_name}: {name} (gradient diagram)"),
            y,
            &e,
        ));
    }
    let mut checked = 0;
    for (k, g) in grad.grad_of.iter().enumerate() {
        let name = &f.input_names[k];
        let Some(g) = g else {
            assert!(
                f.wire(f.inputs[k]).ty.index_of.is_some(),
                "{fixture_name}: value input `{name}` has no gradient"
            );
            continue;
        };
        let e = tensor_from_json(&inst, tensor_named(&fixture, "gradients", name)).unwrap();
        note(compare(
            &format!("{fixture_name}: gradient of `{name}`"),
            &gouts[*g],
            &e,
        ));
        checked += 1;
    }
    let given = fixture["gradients"].as_array().unwrap().len();
    assert_eq!(
        given, checked,
        "{fixture_name}: the fixture has {given} gradients, diagc computed {checked}"
    );
    assert!(checked > 0, "{fixture_name}: no gradient was compared");
    println!(
        "{fixture_name}: {} outputs and {checked} gradients agree with PyTorch {}: \
         worst relative error {worst:.3e}, worst absolute difference {worst_abs:.3e}",
        outs.len(),
        fixture["torch_version"].as_str().unwrap_or("?")
    );
}

#[test]
fn m1_matches_pytorch() {
    check_against_pytorch("m1", "stdlib/attention/m1.diag", &[], "m1");
}

#[test]
fn m0_matches_pytorch() {
    check_against_pytorch("m0", "stdlib/attention/m0.diag", &[], "m0");
}

#[test]
fn the_language_model_with_m1_matches_pytorch() {
    check_against_pytorch("lm_m1", "stdlib/lm.diag", &["attention.m0"], "lm");
}

#[test]
fn the_language_model_with_m0_matches_pytorch() {
    check_against_pytorch("lm_m0", "stdlib/lm.diag", &["attention.m0"], "lm");
}
