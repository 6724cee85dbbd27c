//! The IR's invariants hold for every stdlib diagram, before and after SIMD lowering.

use diagc::ir::verify::{Form, verify};
use diagc::ir::{BoxKind, Op, RegionKind, WireSink, lower::lower_simd, print};
use diagc::session;

fn stdlib_programs() -> Vec<(String, session::Outcome)> {
    diagc::stdlib::FILES
        .iter()
        .map(|(p, t)| {
            let o = session::check_text(&format!("<stdlib>/{p}"), t);
            assert!(
                o.checked.is_ok(),
                "{p}: {:?}",
                o.checked.diagnostics.first()
            );
            (p.to_string(), o)
        })
        .collect()
}

#[test]
fn every_stdlib_diagram_is_a_valid_graph_before_and_after_lowering() {
    for (p, o) in stdlib_programs() {
        for d in &o.checked.program.diagrams {
            verify(d, Form::Checked, "check").unwrap_or_else(|e| panic!("{p}/{}: {e}", d.name));
            let l = lower_simd(d);
            verify(&l, Form::Checked, "SIMD lowering")
                .unwrap_or_else(|e| panic!("{p}/{} lowered: {e}", d.name));
            assert!(
                l.regions
                    .iter()
                    .all(|r| matches!(r.kind, RegionKind::Repeat(_))),
                "{p}/{}: a SIMD region survived lowering",
                d.name
            );
            assert!(
                !l.boxes
                    .iter()
                    .any(|b| matches!(b.op, Op::Zip(_) | Op::Collect(_) | Op::Broadcast(_))),
                "{p}/{}: region ports survived lowering",
                d.name
            );
            // Same boundary types.
            for (a, b) in d.inputs.iter().zip(&l.inputs) {
                assert_eq!(d.wire(*a).ty, l.wire(*b).ty);
            }
            for (a, b) in d.outputs.iter().zip(&l.outputs) {
                assert_eq!(d.wire(*a).ty, l.wire(*b).ty);
            }
        }
    }
}

#[test]
fn copies_are_explicit_and_each_wire_has_one_consumer() {
    let (_, o) = stdlib_programs()
        .into_iter()
        .find(|(p, _)| p == "attention/m1.diag")
        .unwrap();
    let d = o.checked.program.diagram("m1").unwrap();
    // x feeds three projections: one copy box with three outputs.
    let copies: Vec<_> = d
        .boxes
        .iter()
        .filter(|b| matches!(b.op, Op::Copy(3)))
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].inputs, vec![d.inputs[0]]);
    for w in &d.wires {
        assert!(w.sink.is_some());
    }
    assert!(matches!(
        d.wire(d.outputs[0]).sink,
        Some(WireSink::Output(0))
    ));
}

#[test]
fn lowering_lifts_inner_wires_by_the_region_axis() {
    let (_, o) = stdlib_programs()
        .into_iter()
        .find(|(p, _)| p == "attention/m1.diag")
        .unwrap();
    let axes = &o.checked.program.axes;
    let d = o.checked.program.diagram("m1").unwrap();
    let head = axes.lookup("head").unwrap();
    let softmax = |d: &diagc::ir::Diagram| {
        let b = d
            .boxes
            .iter()
            .find(|b| matches!(b.op, Op::Softmax(_)))
            .unwrap();
        d.wire(b.outputs[0]).ty.clone()
    };
    assert!(
        !softmax(d).has(head),
        "inside the region the scores are one head's"
    );
    assert!(
        softmax(&lower_simd(d)).has(head),
        "lowered, the scores carry every head"
    );
    // The learned boxes of M1: four linear maps, shared (no lane axes).
    let learned: Vec<_> = d
        .boxes
        .iter()
        .filter(|b| b.op.kind() == BoxKind::Learned)
        .collect();
    assert_eq!(learned.len(), 4);
    assert!(
        learned
            .iter()
            .all(|b| b.params.iter().all(|p| p.per_lane.is_empty()))
    );
}

#[test]
fn per_lane_parameters_carry_the_lane_axis_after_lowering() {
    let src = "axis tok, head, dk\n\
               diagram f(x: [tok, head, dk]) -> [tok, head, dk] {\n\
                   simd head {\n\
                       w = param[head, dk]()\n\
                       s = param[dk]()\n\
                       x * broadcast[tok](w) + broadcast[tok](s)\n\
                   }\n\
               }\n";
    let o = session::check_text("<per-lane>", src);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics);
    let axes = &o.checked.program.axes;
    let head = axes.lookup("head").unwrap();
    let d = o.checked.program.diagram("f").unwrap();
    let params: Vec<_> = d
        .boxes
        .iter()
        .filter(|b| matches!(b.op, Op::Param(_)))
        .collect();
    assert_eq!(
        params[0].params[0].per_lane,
        vec![head],
        "param[head, dk] inside simd head is per-lane"
    );
    assert!(
        params[1].params[0].per_lane.is_empty(),
        "param[dk] inside simd head is shared"
    );
    let l = lower_simd(d);
    l.validate().unwrap();
    // The shared parameter is broadcast along head after lowering; the per-lane one is not.
    let expands = l
        .boxes
        .iter()
        .filter(|b| matches!(b.op, Op::Expand(a) if a == head))
        .count();
    assert_eq!(expands, 1, "{}", print::diagram(&l, axes));
}

#[test]
fn printing_is_deterministic() {
    // Each file is checked anew three times (fresh hash maps, fresh ids) and printed: the
    // texts must be the same, and not trivially (an empty program prints differently).
    for (p, t) in diagc::stdlib::FILES {
        let texts: Vec<String> = (0..3)
            .map(|_| {
                let o = session::check_text(&format!("<stdlib>/{p}"), t);
                assert!(o.checked.is_ok(), "{p}");
                print::program(&o.checked.program)
            })
            .collect();
        assert!(
            texts.iter().all(|x| *x == texts[0]),
            "{p} prints differently"
        );
        let empty = print::program(&session::check_text("<empty>", "").checked.program);
        assert_ne!(texts[0], empty, "{p} prints as an empty program");
    }
}

#[test]
fn the_printer_names_every_op_as_the_op_table_does() {
    // Every op of the stdlib (checked), of an instantiated LM, its gradient and its fused form.
    let mut seen = 0;
    let mut check = |d: &diagc::ir::Diagram, axes: &diagc::ir::AxisTable| {
        for b in &d.boxes {
            let text = print::op_text(&b.op, axes);
            let name = diagc::ir::ops::spec(&b.op).name;
            assert!(
                text.starts_with(name.as_ref()),
                "`{text}` is printed, the table says `{name}`"
            );
            seen += 1;
        }
    };
    for (_, o) in stdlib_programs() {
        for d in &o.checked.program.diagrams {
            check(d, &o.checked.program.axes);
        }
    }
    let cfg = diagc::train::model::ModelConfig {
        d_model: 8,
        heads: 2,
        d_ff: 12,
        vocab: 11,
        bptt: 5,
        batch: 2,
        ..Default::default()
    };
    for fuse in [false, true] {
        let tg = diagc::train::model::train_graph_with(&cfg, fuse).unwrap();
        check(&tg.forward.diagram, &tg.forward.axes);
        check(&tg.gradient.diagram, &tg.forward.axes);
    }
    assert!(seen > 1000, "only {seen} boxes seen");
}

#[test]
fn the_verifier_catches_broken_ir_and_names_the_pass() {
    let o = session::check_text(
        "<v>",
        "axis a, b\ndiagram f(x: [a, b]) -> [a] { sum[b](exp(x)) }\n",
    );
    let d = &o.checked.program.diagrams[0];
    verify(d, Form::Checked, "check").unwrap();
    // An op whose output type does not follow from its input: `sum[b]` claiming to keep `b`.
    let mut wrong = d.clone();
    let sum = wrong
        .boxes
        .iter()
        .position(|b| matches!(b.op, Op::Sum(_)))
        .unwrap();
    let out = wrong.boxes[sum].outputs[0];
    wrong.wires[out.0 as usize].ty = wrong.wire(wrong.inputs[0]).ty.clone();
    let e = verify(&wrong, Form::Checked, "a test pass")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("a test pass") && e.contains("output 0 has axes"),
        "{e}"
    );
    // A box with an input too many.
    let mut wrong = d.clone();
    let extra = wrong.inputs[0];
    wrong.boxes[sum].inputs.push(extra);
    let e = verify(&wrong, Form::Checked, "a test pass")
        .unwrap_err()
        .to_string();
    assert!(e.contains("input"), "{e}");
    // A checked diagram is not an instance: a region port or a call is refused as flat.
    let o = session::check_text(
        "<v>",
        "axis a, h\ndiagram g(x: [h, a]) -> [h, a] { simd h { exp(x) } }\n",
    );
    let g = &o.checked.program.diagrams[0];
    let e = verify(g, Form::Flat, "instantiation")
        .unwrap_err()
        .to_string();
    assert!(e.contains("instantiation") && e.contains("region"), "{e}");
    let mut no_regions = g.clone();
    no_regions.regions.clear();
    for b in &mut no_regions.boxes {
        b.region = None;
    }
    let e = verify(&no_regions, Form::Flat, "instantiation")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not executable"), "{e}");
}
