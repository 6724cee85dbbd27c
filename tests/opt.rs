//! The optimiser: every pass on a file of its own (input in `tests/opt/`, expected output with
//! the passes' report in `tests/golden/opt/`, `DIAGC_BLESS=1` regenerates), optimised and
//! unoptimised diagrams agree on the interpreter for every stdlib mechanism, the cost model picks
//! the quadratic or the prefix-sum form of causal softmax-free attention from the token count,
//! and the limits stop the optimiser with a checked result.

use diagc::opt::{self, Limits, Options};
use diagc::rewrite::derive::canonical;
use diagc::rewrite::rule::RuleBook;
use diagc::rewrite::term::{NodeKind, Term};
use diagc::rewrite::verify::{self, Agreement};
use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::golden;

fn book() -> RuleBook {
    RuleBook::stdlib().expect("the stdlib rules load")
}

fn sizes(pairs: &[(&str, u64)]) -> Options {
    Options {
        sizes: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Options::default()
    }
}

/// Checks a file and returns its program and the term of its last diagram.
fn load(path: &str, text: &str) -> (diagc::ir::Program, Term) {
    let o = diagc::session::check_text(path, text);
    assert!(o.checked.is_ok(), "{path}:\n{}", o.plain_report());
    let p = o.checked.program;
    let name = p.diagrams.last().expect("a diagram").name.clone();
    let t = Term::from_program(&p, &name).unwrap_or_else(|e| panic!("{path}: {e}"));
    (p, t)
}

fn agree(pa: &diagc::ir::Program, pb: &diagc::ir::Program, name: &str, what: &str) {
    match verify::compare_programs(pa, name, pb, name).unwrap_or_else(|e| panic!("{what}: {e}")) {
        Agreement::Agree(e) => assert!(e <= 1e-9, "{what}: the optimised diagram differs by {e}"),
        other => panic!("{what}: {other:?}"),
    }
}

fn count(t: &Term, pred: impl Fn(&diagc::ir::Op) -> bool) -> usize {
    t.nodes
        .iter()
        .filter(|n| matches!(&n.kind, NodeKind::Box { op, .. } if pred(op)))
        .count()
}

/// One file per pass, each with the pass it exercises: the optimiser's output (report and
/// text) is the golden file, the pass must have changed something, and the optimised diagram
/// must compute what the input does.
#[test]
fn every_pass_on_its_own_file() {
    let book = book();
    // (file, the pass it exercises, sizes for the cost model)
    type Case = (&'static str, &'static str, &'static [(&'static str, u64)]);
    let cases: &[Case] = &[
        ("dead_boxes", "dead boxes", &[]),
        ("fold_constants", "fold constants", &[]),
        ("common_subexpressions", "common subexpressions", &[]),
        ("simplify", "simplify", &[]),
        (
            "reassociate_right",
            "reassociate",
            &[("a", 1000), ("b", 1000), ("c", 8), ("e", 8)],
        ),
        (
            "reassociate_left",
            "reassociate",
            &[("a", 8), ("b", 8), ("c", 1000), ("e", 1000)],
        ),
        ("prefix_sum", "reassociate", &[("tok", 4096), ("d", 16)]),
    ];
    let mut files: Vec<String> = std::fs::read_dir("tests/opt")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let named: Vec<String> = cases.iter().map(|c| format!("{}.diag", c.0)).collect();
    assert_eq!(
        files,
        {
            let mut n = named.clone();
            n.sort();
            n
        },
        "every file in tests/opt has a case"
    );
    for (name, pass, sz) in cases {
        let path = format!("tests/opt/{name}.diag");
        let text = std::fs::read_to_string(&path).unwrap();
        let (p, t) = load(&path, &text);
        let (out, po, report) = opt::optimise(&book, &t, &sizes(sz)).unwrap();
        assert!(
            report.count(pass) > 0,
            "{name}: the {pass} pass did nothing:\n{}",
            report.comment()
        );
        assert!(report.cost_after <= report.cost_before, "{name}");
        agree(&p, &po, &t.name, name);
        golden(
            &format!("tests/golden/opt/{name}.diag"),
            &format!("{}{}", report.comment(), out.to_text()),
        );
    }
}

fn stdlib_terms() -> Vec<(String, diagc::ir::Program, Term)> {
    let mut out = Vec::new();
    let mut modules: Vec<String> = diagc::stdlib::mechanisms()
        .map(|m| format!("attention.{m}"))
        .collect();
    modules.extend((0..14).map(|i| format!("anatomy.m{i:02}")));
    for m in modules {
        let (path, text) = diagc::stdlib::module(&m).unwrap();
        let (p, t) = load(path, text);
        out.push((m, p, t));
    }
    out
}

#[test]
fn every_stdlib_mechanism_agrees_with_its_optimised_form() {
    let book = book();
    let all = stdlib_terms();
    assert!(all.len() >= 22, "{} mechanisms", all.len());
    let mut reassociated = 0;
    for (m, p, t) in &all {
        for tok in [16, 4096] {
            let (out, po, report) = opt::optimise(&book, t, &sizes(&[("tok", tok)])).unwrap();
            agree(p, &po, &t.name, &format!("{m} at tok={tok}"));
            assert!(report.cost_after <= report.cost_before, "{m}");
            // Learned boxes are never merged or created: the same kinds in the same order (and
            // `agree` fed both the same parameters, so their shapes and order are the same).
            let learned = |t: &Term| {
                t.nodes
                    .iter()
                    .filter_map(|n| match &n.kind {
                        NodeKind::Box { op, params } if !params.is_empty() => {
                            let text = diagc::ir::print::op_text(op, &t.axes);
                            Some(text.split('[').next().unwrap_or_default().to_string())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(learned(t), learned(&out), "{m}");
            reassociated += report.count("reassociate");
        }
    }
    assert!(reassociated > 0, "no stdlib mechanism was reassociated");
}

#[test]
fn causal_softmax_free_attention_becomes_m0_when_the_window_is_long() {
    let book = book();
    let (path, text) = diagc::stdlib::module("attention.softmax_free").unwrap();
    let (p, t) = load(path, text);
    let (m0path, m0text) = diagc::stdlib::module("attention.m0").unwrap();
    let (_, m0) = load(m0path, m0text);
    assert_eq!(count(&t, |op| matches!(op, diagc::ir::Op::Cumsum(_))), 0);

    let (long, pl, report) = opt::optimise(&book, &t, &sizes(&[("tok", 4096)])).unwrap();
    assert_eq!(report.count("reassociate"), 2, "{}", report.comment());
    assert!(
        report.cost_after < report.cost_before / 4.0,
        "{}",
        report.comment()
    );
    // The O(n) form: no score matrix, prefix sums instead; exactly M0 up to names.
    assert_eq!(
        count(&long, |op| matches!(op, diagc::ir::Op::CausalZero { .. })),
        0
    );
    assert_eq!(count(&long, |op| matches!(op, diagc::ir::Op::Cumsum(_))), 2);
    let mut a = long.clone();
    let mut b = m0.clone();
    a.name = "m".into();
    b.name = "m".into();
    assert_eq!(canonical(&a), canonical(&b));
    agree(&p, &pl, &t.name, "softmax_free at tok=4096");

    // A short window: the quadratic form is cheaper, and stays.
    let (short, _, report) = opt::optimise(&book, &t, &sizes(&[("tok", 8)])).unwrap();
    assert_eq!(
        count(&short, |op| matches!(op, diagc::ir::Op::Cumsum(_))),
        0
    );
    assert_eq!(
        count(&short, |op| matches!(op, diagc::ir::Op::CausalZero { .. })),
        1
    );
    assert!(report.cost_after <= report.cost_before);
}

#[test]
fn limits_stop_the_optimiser_with_a_checked_result() {
    let book = book();
    let (path, text) = diagc::stdlib::module("attention.softmax_free").unwrap();
    let (p, t) = load(path, text);
    for limits in [
        Limits {
            max_rewrites: 1,
            ..Limits::default()
        },
        Limits {
            time: Duration::ZERO,
            ..Limits::default()
        },
        Limits {
            max_nodes: 3,
            ..Limits::default()
        },
    ] {
        let opts = Options {
            sizes: BTreeMap::from([("tok".to_string(), 4096)]),
            limits: limits.clone(),
        };
        let (_, po, report) = opt::optimise(&book, &t, &opts).unwrap();
        assert!(report.stopped.is_some(), "{limits:?}: not stopped");
        assert!(report.comment().contains("stopped early"));
        agree(&p, &po, &t.name, &format!("{limits:?}"));
    }
}

#[test]
fn the_optimiser_refuses_a_rule_book_without_its_rules() {
    let (_, t) = load("x.diag", "axis a\ndiagram f(x: [a]) -> [a] { exp(x) }\n");
    let err = opt::optimise(&RuleBook::default(), &t, &Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing from the rule book"), "{err}");
}

#[test]
fn elementwise_chains_are_grouped() {
    let text = "axis a, b\n\
                diagram f(x: [a, b], y: [a, b]) -> [a, b] {\n\
                    u = exp(x * 2.0) + y\n\
                    softmax[b](relu(u) * 3.0 + 1.0)\n\
                }\n";
    let (_, t) = load("g.diag", text);
    let (_, _, report) = opt::optimise(&book(), &t, &Options::default()).unwrap();
    assert_eq!(
        report.groups,
        vec!["scale[2], exp, +, relu, scale[3] over [a, b]".to_string()],
        "{}",
        report.comment()
    );
}

#[test]
fn compile_emits_optimized_ir() {
    let bin = env!("CARGO_BIN_EXE_diagc");
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .output()
            .expect("diagc runs")
    };
    let o = run(&[
        "compile",
        "stdlib/attention/softmax_free.diag",
        "--emit",
        "optimized-ir",
        "--size",
        "tok=4096",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("causal_prefix_sum"), "{text}");
    assert!(text.contains("cumsum[tok]"), "{text}");
    // The output is a checkable .diag file.
    let c = diagc::session::check_text("out.diag", &text);
    assert!(c.checked.is_ok(), "{}\n{text}", c.plain_report());

    // A diagram the optimiser cannot take is an error naming why, not a panic.
    let o = run(&["compile", "stdlib/lm.diag", "--emit", "optimized-ir"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot optimise"), "{err}");
    let o = run(&[
        "compile",
        "stdlib/attention/m1.diag",
        "--emit",
        "optimized-ir",
        "--size",
        "tok=zero",
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_cost_before_counts_the_boxes_of_inlined_calls() {
    let text = "axis a\n\
                diagram f(x: [a]) -> [a] { exp(x) * 1.0 }\n\
                diagram g(x: [a]) -> [a] { f(x) + 0.0 }\n";
    let (_, t) = load("calls.diag", text);
    let (_, _, report) = opt::optimise(&book(), &t, &sizes(&[("a", 10)])).unwrap();
    // exp, the scaling and the shift before; exp alone after.
    assert_eq!(report.cost_before, 30.0, "{}", report.comment());
    assert_eq!(report.cost_after, 10.0, "{}", report.comment());
}
