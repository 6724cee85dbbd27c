//! Rewriting: terms print back to checked `.diag` text, every stdlib rule rewrites its own left
//! side into its right side (golden files, `DIAGC_BLESS=1` to regenerate), `--verify-rules`
//! rejects false equalities, and the stdlib derivations replay step by step.

use diagc::rewrite::derive::{self, canonical};
use diagc::rewrite::rule::{self, RuleBook, Site};
use diagc::rewrite::term::Term;
use diagc::rewrite::verify::{self, Agreement};

mod common;
use common::{diagc, golden};

fn book() -> RuleBook {
    RuleBook::stdlib().expect("the stdlib rules load")
}

#[test]
fn every_mechanism_prints_back_to_an_equal_diagram() {
    for m in diagc::stdlib::mechanisms() {
        let (path, text) = diagc::stdlib::module(&format!("attention.{m}")).unwrap();
        let o = diagc::session::check_text(path, text);
        assert!(o.checked.is_ok());
        let p = o.checked.program;
        let t = Term::from_diagram(p.diagram(&m).unwrap(), &p.axes).unwrap();
        let (again, p2) = t.recheck().unwrap_or_else(|e| panic!("{m}: {e}"));
        // Printing is a fixed point, and the printed diagram computes the same function.
        assert_eq!(t.to_text(), again.to_text(), "{m}");
        match verify::compare_programs(&p, &m, &p2, &m).unwrap() {
            Agreement::Agree(e) => assert!(e <= 1e-12, "{m}: {e}"),
            other => panic!("{m}: {other:?}"),
        }
    }
}

/// The rules whose left side can stand alone as a diagram (no box variables).
fn standalone(book: &RuleBook) -> Vec<&rule::Rule> {
    book.rules.iter().filter(|r| r.boxes.is_empty()).collect()
}

#[test]
fn every_rule_rewrites_its_left_side_into_its_right_side() {
    let book = book();
    let rules = standalone(&book);
    assert!(rules.len() >= 25, "{} rules", rules.len());
    for r in rules {
        let mut lhs = r.lhs.clone();
        lhs.name = "site".into();
        let (lhs, _) = lhs
            .recheck()
            .unwrap_or_else(|e| panic!("{}: the left side: {e}", r.name));
        let step = rule::apply(&book, &lhs, &r.name, Some(&Site::Index(1)))
            .unwrap_or_else(|e| panic!("{}: {e}", r.name));
        let mut rhs = r.rhs.clone();
        rhs.name = "site".into();
        let (rhs, _) = rhs.recheck().unwrap();
        assert_eq!(canonical(&step.after), canonical(&rhs), "{}", r.name);
        golden(
            &format!("tests/golden/rewrite/{}.diag", r.name),
            &format!(
                "{}// after {}:\n{}",
                lhs.to_text(),
                r.name,
                step.after.to_text()
            ),
        );
    }
}

#[test]
fn box_variables_match_any_one_box() {
    let text = "axis a, b\ndiagram f(x: [a]) -> [b] { learner[a -> b, width = 8](tanh(x)) }\n";
    let o = diagc::session::check_text("<t>", text);
    let p = o.checked.program;
    let t = Term::from_diagram(p.diagram("f").unwrap(), &p.axes).unwrap();
    let step = rule::apply(&book(), &t, "absorb_before", None).unwrap();
    assert!(
        step.after
            .to_text()
            .contains("learner[a -> b, width = 8](x)")
    );
    assert!(!step.after.to_text().contains("tanh"));
}

#[test]
fn sites_are_numbered_and_named_and_bad_sites_are_errors() {
    let t = derive::load_diagram("attention.m1").unwrap();
    let book = book();
    let r = book.get("linear_to_identity").unwrap();
    assert_eq!(rule::find_matches(r, &t).len(), 4);
    let e = rule::apply(&book, &t, "linear_to_identity", Some(&Site::Index(5)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 site(s)") && e.contains("no site 5"), "{e}");
    let e = rule::apply(
        &book,
        &t,
        "softmax_is_normalise_exp",
        Some(&Site::Wire("q".into())),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("does not apply at wire `q`"), "{e}");
    let ok = rule::apply(
        &book,
        &t,
        "softmax_is_normalise_exp",
        Some(&Site::Wire("a".into())),
    );
    assert!(ok.unwrap().after.to_text().contains("normalise[src](exp("));
    let e = rule::apply(&book, &t, "softmax_is_normalise_exp_", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("did you mean `softmax_is_normalise_exp`"), "{e}");
    let e = rule::apply(&book, &t, "reassociate_left", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not apply anywhere"), "{e}");
}

#[test]
fn equal_steps_are_numerically_equal_on_m1() {
    // Reassociating (softmax-free) contractions and splitting softmax keep the function.
    let t = derive::load_diagram("attention.m1").unwrap();
    let step = rule::apply(&book(), &t, "softmax_is_normalise_exp", None).unwrap();
    match verify::compare(&step.before, &step.after).unwrap() {
        Agreement::Agree(e) => assert!(e < 1e-12, "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn verify_rules_rejects_a_false_equality_and_accepts_the_stdlib() {
    let text = "axis a\nrule wrong : equal (x: [a]) -> [a] { relu(x) } => { tanh(x) }\n\
                rule right : equal (x: [a]) -> [a] { x * 2 * 3 } => { x * 6 }\n";
    let o = diagc::session::check_text("<t>", text);
    assert!(o.checked.is_ok());
    let v = verify::verify_rules(&o.checked.program);
    assert_eq!(v.len(), 2);
    let wrong = v[0].1.as_ref().unwrap_err().to_string();
    assert!(wrong.contains("differ numerically"), "{wrong}");
    assert!(v[1].1.is_ok(), "{:?}", v[1]);
    let (_, text) = diagc::stdlib::module("rules.equal").unwrap();
    let o = diagc::session::check_text("<equal>", text);
    for (name, verdict) in verify::verify_rules(&o.checked.program) {
        assert!(verdict.is_ok(), "{name}: {verdict:?}");
    }
}

#[test]
fn the_stdlib_derivations_replay_to_their_ends() {
    let book = book();
    for (name, want_steps) in [("bahdanau_to_vaswani", 7), ("softmax_to_linear", 5)] {
        let (_, text) = derive::STDLIB.iter().find(|(n, _)| *n == name).unwrap();
        let d = derive::parse(text).unwrap();
        assert_eq!(d.steps.len(), want_steps);
        let mut seen = 0;
        let mut numeric = 0;
        derive::replay(&d, &book, &mut |_, c| {
            seen += 1;
            if let Some(Agreement::Agree(e)) = c.numeric {
                assert!(e <= verify::TOLERANCE);
                numeric += 1;
            }
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(seen, want_steps);
        assert!(
            numeric >= 1,
            "{name}: no equal step was compared numerically"
        );
    }
}

#[test]
fn broken_derivations_fail_with_the_line() {
    let book = book();
    let cases = [
        (
            "start attention.m1\nstep no_such_rule\n",
            "step 1 (line 2): no rule",
        ),
        (
            "start attention.m1\nend attention.m0\n",
            "line 2: the result is not",
        ),
        (
            "start attention.m1\nstep separate\n",
            "does not apply anywhere",
        ),
        ("step x\n", "line 1: `step` must come after `start`"),
        ("start a b\n", "line 1: expected"),
        ("frobnicate m1\n", "unknown directive"),
        ("", "needs a `start`"),
        ("start attention.nope\n", "no stdlib module"),
    ];
    for (text, want) in cases {
        let err = derive::parse(text)
            .and_then(|d| derive::replay(&d, &book, &mut |_, _| {}).map(|_| ()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn a_false_equal_rule_fails_its_derivation_step() {
    let mut book = book();
    book.add_text(
        "<mine>",
        "axis a\nrule bogus : equal (x: [a]) -> [a] { softmax[a](x) } => { normalise[a](x) }\n",
    )
    .unwrap();
    let d = derive::parse("start attention.m1\nstep bogus@a\n").unwrap();
    let e = derive::replay(&d, &book, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("differ numerically"), "{e}");
}

#[test]
fn diagrams_rewriting_cannot_take_are_refused_with_a_reason() {
    let o = diagc::session::check_text("<lm>", diagc::stdlib::module("lm").unwrap().1);
    let p = o.checked.program;
    let e = Term::from_diagram(p.diagram("lm").unwrap(), &p.axes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("diagram-valued hyperparameter") || e.contains("repeat"),
        "{e}"
    );
}

#[test]
fn the_rewrite_commands_keep_their_contract() {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for cmd in [["rewrite", "--help"], ["derive", "--help"]] {
        let o = diagc(&cmd);
        assert_eq!(o.status.code(), Some(0));
        assert!(s(&o.stdout).contains("Usage"));
    }
    // A rewrite prints a diagram that checks.
    let o = diagc(&[
        "rewrite",
        "stdlib/attention/m1.diag",
        "--apply",
        "softmax_is_normalise_exp@a",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    let out = s(&o.stdout);
    assert!(
        out.contains("a = normalise[src](exp(causal[tok, src](s)))"),
        "{out}"
    );
    assert!(diagc::session::check_text("<out>", &out).checked.is_ok());
    // Bad input: exit 1 with a reason, never a panic.
    for (args, want) in [
        (
            vec!["rewrite", "stdlib/attention/m1.diag", "--apply", "nope"],
            "no rule `nope`",
        ),
        (
            vec![
                "rewrite",
                "stdlib/attention/m1.diag",
                "--apply",
                "separate@0",
            ],
            "does not apply",
        ),
        (vec!["rewrite", "stdlib/lm.diag"], "repeat"),
        (vec!["rewrite", "examples/ill-typed"], "directory"),
        (
            vec!["derive", "no_such_derivation"],
            "neither a stdlib derivation",
        ),
    ] {
        let o = diagc(&args);
        assert!(matches!(o.status.code(), Some(1) | Some(2)), "{args:?}");
        assert!(s(&o.stderr).contains(want), "{args:?}: {}", s(&o.stderr));
    }
    let o = diagc(&["derive", "softmax_to_linear"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    assert!(s(&o.stdout).contains("end: the result is `attention.m0`"));
    let o = diagc(&["derive", "--list"]);
    assert!(s(&o.stdout).contains("bahdanau_to_vaswani"));
}

#[test]
fn the_enumeration_gives_14_mechanisms_equal_to_the_committed_files() {
    use diagc::rewrite::enumerate;
    let book = book();
    let ms = enumerate::enumerate(&book).unwrap();
    assert_eq!(ms.len(), 14);
    for m in &ms {
        let path = format!("stdlib/anatomy/{}.diag", m.name);
        let committed = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            committed,
            enumerate::file_text(m),
            "{path} is stale: run `diagc enumerate`"
        );
    }
    // M0 and M1 are exactly the paper's (the stdlib's) mechanisms, up to wire names.
    let m0 = derive::load_diagram("attention.m0").unwrap();
    let m1 = derive::load_diagram("attention.m1").unwrap();
    assert_eq!(canonical(&ms[0].term), canonical(&m0));
    assert_eq!(canonical(&ms[1].term), canonical(&m1));
    let count = |c: &str| ms.iter().filter(|m| m.colour == c).count();
    assert_eq!(
        (
            count("linear only"),
            count("dot-product only"),
            count("both")
        ),
        (4, 4, 6)
    );
    // No two are equal modulo the normalising equalities.
    for (i, a) in ms.iter().enumerate() {
        for b in &ms[i + 1..] {
            assert_ne!(
                canonical(&a.term),
                canonical(&b.term),
                "{} = {}",
                a.name,
                b.name
            );
        }
    }
}

#[test]
fn every_enumerated_mechanism_runs_with_finite_outputs() {
    use diagc::backend::cpu::harness;
    use diagc::ir::instance::{Bindings, instantiate};
    for i in 0..14 {
        let name = format!("m{i:02}");
        let (path, text) = diagc::stdlib::module(&format!("anatomy.{name}")).unwrap();
        let o = diagc::session::check_text(path, text);
        assert!(o.checked.is_ok(), "{name}");
        let mut b = Bindings::default();
        for (k, v) in [("tok", 5), ("dm", 8), ("head", 2)] {
            b.sizes.insert(k.into(), v);
        }
        let inst = instantiate(&o.checked.program, &name, &b).unwrap();
        let out = harness::run_random(&inst, 1, Default::default()).unwrap();
        assert!(out[0].data.iter().all(|x| x.is_finite()), "{name}");
    }
}

#[test]
fn a_user_generator_set_enumerates_into_the_committed_modern_anatomy() {
    use diagc::rewrite::enumerate::{self, Spec};
    let book = book();
    let spec = Spec::load(std::path::Path::new("examples/modern-anatomy/spec.diag")).unwrap();
    let letters: Vec<&str> = spec.generators.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(letters, ["D", "L", "R", "S"]);
    let ms = enumerate::enumerate_spec(&book, &spec).unwrap();
    // 4 alone and 48 compositions, less the redundant ones; never more than that.
    assert!(ms.len() > 4 && ms.len() <= 52, "{}", ms.len());
    for m in &ms {
        let path = format!("examples/modern-anatomy/{}.diag", m.name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            enumerate::spec_file_text(m, "examples/modern-anatomy/spec.diag"),
            "{path} is stale: run `diagc enumerate --spec examples/modern-anatomy/spec.diag -o \
             examples/modern-anatomy`"
        );
    }
    // D alone is M1 and L alone is M0, the stdlib's files, up to wire names (checked against
    // the independent stdlib files, not the enumerator).
    let m0 = derive::load_diagram("attention.m0").unwrap();
    let m1 = derive::load_diagram("attention.m1").unwrap();
    assert_eq!((ms[0].recipe.as_str(), ms[1].recipe.as_str()), ("D", "L"));
    assert_eq!(canonical(&ms[0].term), canonical(&m1));
    assert_eq!(canonical(&ms[1].term), canonical(&m0));
    assert_eq!(ms[0].colour, "D only");
    assert!(ms.iter().any(|m| m.colour == "R and S"));
    for (i, a) in ms.iter().enumerate() {
        for b in &ms[i + 1..] {
            assert_ne!(
                canonical(&a.term),
                canonical(&b.term),
                "{} = {}",
                a.name,
                b.name
            );
        }
    }
}

#[test]
fn enumerate_spec_errors_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("diagc-enum-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let o = common::diagc(args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["enumerate", "--spec", "examples/modern-anatomy/spec.diag"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs `--output DIR`"), "{err}");
    let none = dir.join("none.diag");
    std::fs::write(&none, "axis a\ndiagram f(x: [a]) -> [a] { x }\n").unwrap();
    let out = dir.join("out");
    let (code, err) = run(&[
        "enumerate",
        "--spec",
        none.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("defines no generator"), "{err}");
    let bad = dir.join("bad.diag");
    std::fs::write(
        &bad,
        "axis tok, dm, head\naxis dk = dm / head\n\
         diagram gen_x(q: [tok, head, dk], k: [tok, head, dk]) -> [tok, head, dk] { q + k }\n",
    )
    .unwrap();
    let (code, err) = run(&[
        "enumerate",
        "--spec",
        bad.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("`gen_x` must take (q, k, v"), "{err}");
    let ill = dir.join("ill.diag");
    std::fs::write(&ill, "diagram gen_x(q: [tok]) -> [tok] { q }\n").unwrap();
    let (code, err) = run(&[
        "enumerate",
        "--spec",
        ill.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("does not check"), "{err}");
    // Too many generators: refused before any candidate is built.
    let many = dir.join("many.diag");
    let mut text = String::from("axis tok, dm, head\naxis dk = dm / head\n");
    for g in 0..17 {
        text.push_str(&format!(
            "diagram gen_{g}(q: [tok, head, dk], k: [tok, head, dk], v: [tok, head, dk]) -> \
             [tok, head, dk] {{ q + k + v }}\n"
        ));
    }
    std::fs::write(&many, text).unwrap();
    let (code, err) = run(&[
        "enumerate",
        "--spec",
        many.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("17 generators"), "{err}");
    assert!(!out.exists(), "nothing is written on an error");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_taxonomy_reaches_the_literature_variants_from_primordial_attention() {
    use diagc::rewrite::taxonomy;
    let t = taxonomy::build(&book()).unwrap();
    assert_eq!(t.root, "attention.primordial");
    let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
    for want in [
        "attention.primordial",
        "attention.bahdanau",
        "attention.luong_general",
        "attention.luong_dot",
        "attention.synthesizer",
        "attention.m1",
        "attention.m0",
    ] {
        assert!(names.contains(&want), "{want} is missing from {names:?}");
    }
    // One edge per stdlib derivation, each from a node to a deeper node (a node reached
    // backwards is drawn above the node it derives), with the weakest class of its steps.
    assert_eq!(t.edges.len(), derive::STDLIB.len());
    let depth = |n: &str| t.nodes.iter().find(|x| x.name == n).unwrap().depth;
    for e in &t.edges {
        assert!(depth(&e.to) > depth(&e.from), "{} -> {}", e.from, e.to);
        assert!(!e.steps.is_empty());
        if e.steps.iter().any(|s| s.class == "specialise") {
            assert_eq!(e.class, "specialise");
        }
    }
    let edge = |a: &str, b: &str| {
        t.edges
            .iter()
            .find(|e| e.from == a && e.to == b)
            .unwrap_or_else(|| panic!("no edge {a} -> {b}"))
    };
    assert_eq!(
        edge("attention.primordial", "attention.synthesizer").steps[0].rule,
        "delete_key_input"
    );
    assert_eq!(
        edge("attention.luong_dot", "attention.m1").class,
        "expressive"
    );
    // Every node links to its stdlib file, which exists.
    let dot = taxonomy::dot(&t);
    for n in &t.nodes {
        assert!(std::path::Path::new(&n.file).exists(), "{}", n.file);
        assert!(dot.contains(&format!("URL=\"{}\"", n.file)), "{}", n.name);
    }
    assert!(dot.contains("Figure 1 shows is not known"));
    let json: serde_json::Value = serde_json::from_str(&taxonomy::json(&t)).unwrap();
    assert_eq!(json["edges"].as_array().unwrap().len(), t.edges.len());
    // The picture in the docs is the command's output, byte for byte.
    golden("docs/taxonomy.svg", &taxonomy::svg(&t));
}
