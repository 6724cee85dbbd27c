//! Causality along `tok`: the static proof (`ir::causal`), checked against the dynamic probe
//! (`backend::cpu::harness::causal_probe`, which redraws later input positions on the f64
//! interpreter and watches earlier outputs), and the refusal of `diagc train`.
//!
//! The probe is independent of the proof: it runs the diagram. So every diagram here is judged
//! twice, and the two must agree: what the proof accepts, the probe finds no leak in; the leaky
//! diagrams the proof rejects really leak (the proof is not merely cautious on them).

use diagc::backend::cpu::harness::causal_probe;
use diagc::ir::causal;
use diagc::ir::instance::{self, Bindings};
use diagc::session;
use diagc::train::model::{self, ModelConfig};
use std::collections::BTreeMap;
use std::path::Path;

/// Sizes for the probe: `tok` 6, `dm` 8, `head` 2, every other free axis 4.
fn probe_sizes(program: &diagc::ir::Program) -> BTreeMap<String, u64> {
    program
        .axes
        .axes
        .iter()
        .filter(|a| a.size == diagc::ir::size::Size::var(&a.name))
        .map(|a| {
            let n = match a.name.as_str() {
                "tok" => 6,
                "dm" => 8,
                "head" => 2,
                _ => 4,
            };
            (a.name.clone(), n)
        })
        .collect()
}

/// The proof's verdict and the probe's finding for diagram `name` of a checked program.
fn judge(o: &session::Outcome, name: &str) -> (bool, bool) {
    let program = &o.checked.program;
    let tok = program
        .axes
        .lookup("tok")
        .expect("the program declares tok");
    let proved = causal::prove(program, name, tok, &Default::default()).proved();
    let b = Bindings {
        sizes: probe_sizes(program),
        hypers: BTreeMap::new(),
    };
    let inst = instance::instantiate(program, name, &b).unwrap_or_else(|e| panic!("{name}: {e}"));
    let leak = causal_probe(&inst, tok, 7).unwrap_or_else(|e| panic!("{name}: {e}"));
    (proved, leak.is_some())
}

fn stdlib_outcome(mech: &str) -> (session::Outcome, String) {
    let (module, diagram) = match mech.rsplit_once('.') {
        Some((_, d)) => (mech.to_string(), d.to_string()),
        None => (format!("attention.{mech}"), mech.to_string()),
    };
    let o = session::check_stdlib(&module, &[]).unwrap();
    assert!(o.checked.is_ok(), "{module}: {}", o.plain_report());
    (o, diagram)
}

#[test]
fn every_stdlib_mechanism_is_proved_causal_and_the_probe_finds_no_leak() {
    let mechs = model::stdlib_mechanisms();
    assert!(mechs.len() >= 20, "only {} stdlib mechanisms", mechs.len());
    for mech in &mechs {
        let (o, diagram) = stdlib_outcome(mech);
        let (proved, leaks) = judge(&o, &diagram);
        assert!(
            proved,
            "{mech} is not proved causal:\n{}",
            causal::prove(
                &o.checked.program,
                &diagram,
                o.checked.program.axes.lookup("tok").unwrap(),
                &Default::default()
            )
            .diagnostics
            .iter()
            .map(|d| diagc::report::render(d, &o.sources, false))
            .collect::<String>()
        );
        assert!(!leaks, "{mech}: proved causal, yet the probe sees a leak");
    }
}

#[test]
fn every_stdlib_mechanism_is_proved_causal_inside_both_language_models() {
    for mech in model::stdlib_mechanisms() {
        for lm in [None, Some("lm_nopos".to_string())] {
            let cfg = ModelConfig {
                mech: mech.clone(),
                model: lm.clone(),
                ..Default::default()
            };
            let d = model::causality(&cfg).unwrap();
            assert!(d.is_empty(), "{mech} in {lm:?}: {d:?}");
        }
    }
}

/// Every diagram of the causality corpus: the pass file's are proved and do not leak; in each
/// fail file, the diagram that the report names is not proved, and it does leak.
#[test]
fn the_proof_and_the_probe_agree_on_the_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path(&root.join("tests/pass/causal-mechanisms.diag")).unwrap();
    assert!(o.checked.is_ok());
    let names: Vec<String> = o
        .checked
        .program
        .diagrams
        .iter()
        .map(|d| d.name.clone())
        .collect();
    assert!(names.len() >= 6);
    for n in &names {
        if n == "scores" {
            continue; // Its inputs are queries and keys, not one sequence.
        }
        assert_eq!(judge(&o, n), (true, false), "{n}");
    }
    let leaky = [
        ("E0601-attention-without-mask.diag", "leaky"),
        ("E0601-linear-attention-sum.diag", "leaky_linear"),
        ("E0601-reversed-mask.diag", "backwards"),
        ("E0601-leak-through-call.diag", "context"),
        ("E0601-leak-through-call.diag", "mean_all"),
    ];
    for (file, name) in leaky {
        let o = session::check_path(&root.join("tests/fail").join(file)).unwrap();
        assert!(o.checked.is_ok(), "{file} should pass the plain check");
        assert_eq!(judge(&o, name), (false, true), "{file}: {name}");
    }
}

/// The three mask positions of a mechanism that the proof must tell apart, each run by the
/// probe too: masked before the softmax (causal), masked after it (the softmax already mixed
/// every key: not causal), and no mask at all.
#[test]
fn the_mask_must_come_before_the_reduction() {
    let text = |body: &str| {
        format!(
            "axis tok, dm\naxis src = tok\n\ndiagram f(x: [tok, dm]) -> [tok, dm] {{\n    \
             k = rename[tok -> src](x)\n    v = rename[tok -> src](x)\n    s = dot[dm](x, k)\n    \
             {body}\n}}\n"
        )
    };
    let cases = [
        (
            "dot[src](softmax[src](causal[tok, src](s)), v)",
            (true, false),
        ),
        (
            "dot[src](causal_zero[tok, src](softmax[src](s)), v)",
            (false, true),
        ),
        ("dot[src](causal_zero[tok, src](s), v)", (true, false)),
        ("dot[src](softmax[src](s), v)", (false, true)),
    ];
    for (body, want) in cases {
        let o = session::check_text("<case>", &text(body));
        if !o.checked.is_ok() {
            panic!("{body}: {}", o.plain_report());
        }
        assert_eq!(judge(&o, "f"), want, "{body}");
    }
}

#[test]
fn train_refuses_a_leaky_mechanism_unless_allowed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("tests/fail/E0601-attention-without-mask.diag");
    let cfg = ModelConfig {
        mech: file.display().to_string(),
        d_model: 16,
        heads: 2,
        d_ff: 16,
        ..Default::default()
    };
    let e = model::sources(&cfg).unwrap_err().to_string();
    assert!(e.contains("E0601"), "{e}");
    assert!(e.contains("softmax[src](s)"), "{e}");
    assert!(e.contains("--allow-noncausal"), "{e}");
    let allowed = ModelConfig {
        allow_noncausal: true,
        ..cfg.clone()
    };
    assert!(model::sources(&allowed).is_ok());
    // The whole LM around it leaks too, as the probe sees it (ids at later positions change
    // earlier logits); around M1 it does not.
    for (mech, leaks) in [(cfg.mech.clone(), true), ("m1".to_string(), false)] {
        let c = ModelConfig {
            mech,
            vocab: 11,
            bptt: 5,
            batch: 2,
            ..cfg.clone()
        };
        let inst = model::language_model(&c).unwrap();
        let tok = inst.axes.lookup("tok").unwrap();
        let leak = causal_probe(&inst, tok, 3).unwrap();
        assert_eq!(leak.is_some(), leaks, "{}: {leak:?}", c.mech);
    }
}
