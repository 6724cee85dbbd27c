//! What sweeps need from `diagc train` (issue 17, part 8): `--hyper` binds the mechanism's own
//! hyperparameters, `--size` the model's free axes, `--diagram` picks a diagram of a mechanism
//! file, `--model` puts the mechanism in another language model, and the stdlib's enumerated
//! mechanisms train by name (`anatomy.m05`). A run keeps all of it, so that `--resume` and
//! `eval` rebuild the same model from the run directory alone. The tests run the binary on a
//! tiny model and a slice of PTB.

mod common;

use common::root;
use diagc::train::model::{self, ModelConfig};
use diagc::train::run::{TrainConfig, default_run_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The binary under test (`DIAGC_TEST_BIN` runs these tests against another build).
fn bin() -> String {
    std::env::var("DIAGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_diagc").to_string())
}

/// The tiny model and the small slices of data every run here uses.
const TINY: &[&str] = &[
    "--d-model",
    "16",
    "--heads",
    "2",
    "--d-ff",
    "32",
    "--bptt",
    "8",
    "--batch-size",
    "2",
    "--train-tokens",
    "2000",
    "--eval-tokens",
    "500",
    "--seed",
    "5",
];

fn diagc(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .env_remove("DIAGC_FAULT")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A fresh scratch directory holding the mechanism files of these tests.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-flags-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `diagc train MECH EXTRA... TINY --out OUT`, which must succeed.
fn train(mech: &str, extra: &[&str], out: &Path) -> Output {
    let mut a = vec!["train", mech];
    a.extend_from_slice(extra);
    a.extend_from_slice(TINY);
    a.extend_from_slice(&["--out", s(out)]);
    let o = diagc(&a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

/// `diagc train MECH EXTRA... TINY --steps 2` into a scratch directory, which must be refused
/// as a usage error before a run directory is made; returns its message.
fn refused(mech: &str, extra: &[&str]) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "diagc-flags-refused-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut a = vec!["train", mech];
    a.extend_from_slice(extra);
    a.extend_from_slice(TINY);
    a.extend_from_slice(&["--steps", "2", "--out", s(&out)]);
    let o = diagc(&a);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(!out.exists(), "a refused run made {out:?}");
    stderr(&o)
}

/// Every step's loss, by step.
fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// M1 (one head group) with its scores multiplied by `temp`, and an unused `int`.
const SCALED: &str = "axis tok, dm, head
axis dk = dm / head
axis src = tok

diagram scaled[temp: float = 1.0, extra: int = 0](x: [tok, dm]) -> [tok, dm] {
    q = split[dm -> head, dk](linear[dm -> dm](x))
    k = rename[tok -> src](split[dm -> head, dk](linear[dm -> dm](x)))
    v = rename[tok -> src](split[dm -> head, dk](linear[dm -> dm](x)))
    o = simd head {
        s = dot[dk](q, k) * temp / sqrt(dk)
        a = softmax[src](causal[tok, src](s))
        dot[src](a, v)
    }
    linear[dm -> dm](merge[head, dk -> dm](o))
}
";

/// Two mechanisms over a free axis `r` (a rank-r score, scaled by `temp`; a plain map), and a
/// diagram that is not a mechanism.
const MULTI: &str = "axis tok, dm, r
axis src = tok

diagram lowrank[temp: float = 1.0](x: [tok, dm]) -> [tok, dm] {
    q = linear[dm -> r](x)
    k = rename[tok -> src](linear[dm -> r](x))
    v = rename[tok -> src](linear[dm -> dm](x))
    s = dot[r](q, k) * temp / sqrt(r)
    a = softmax[src](causal[tok, src](s))
    dot[src](a, v)
}

diagram plain(x: [tok, dm]) -> [tok, dm] {
    linear[dm -> dm](x)
}

diagram pooled(x: [tok, dm]) -> [tok] {
    sum[dm](x)
}
";

#[test]
fn hyper_binds_a_hyperparameter_of_the_mechanism() {
    let dir = scratch("hyper");
    let mech = dir.join("scaled.diag");
    std::fs::write(&mech, SCALED).unwrap();
    let m = s(&mech);
    let run = |tag: &str, extra: &[&str]| {
        let out = dir.join(tag);
        let mut a = extra.to_vec();
        a.extend_from_slice(&["--steps", "2"]);
        train(m, &a, &out);
        losses(&out)
    };
    let half = run("half", &["--hyper", "temp=0.5"]);
    let double = run("double", &["--hyper", "temp=2", "--hyper", "extra=3"]);
    let default = run("default", &[]);
    let one = run("one", &["--hyper", "temp=1.0"]);
    assert_eq!(half.len(), 2);
    // Another temperature is another model: its losses differ from the first step on.
    assert_ne!(half[0], double[0]);
    assert_ne!(half[0], default[0]);
    // The default value given explicitly is the same model, bit for bit.
    assert_eq!(
        default.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        one.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    // The run records what it was given.
    assert_eq!(config(&dir.join("half"))["model"]["hypers"]["temp"], "0.5");
    assert!(
        config(&dir.join("default"))["model"]
            .get("hypers")
            .is_none()
    );

    // An unknown name lists the mechanism's hyperparameters, with a suggestion.
    let e = refused(m, &["--hyper", "tmp=0.5"]);
    assert!(
        e.contains("no hyperparameter `tmp`")
            && e.contains("did you mean `temp`?")
            && e.contains("temp: float = 1")
            && e.contains("extra: int = 0"),
        "{e}"
    );
    // The LM's own hyperparameters have flags.
    let e = refused(m, &["--hyper", "layers=2"]);
    assert!(e.contains("--layers"), "{e}");
    // Values of the wrong kind.
    let e = refused(m, &["--hyper", "temp=warm"]);
    assert!(
        e.contains("--hyper temp=warm") && e.contains("number"),
        "{e}"
    );
    let e = refused(m, &["--hyper", "extra=1.5"]);
    assert!(
        e.contains("extra: int") && e.contains("whole number"),
        "{e}"
    );
    let e = refused(m, &["--hyper", "temp=1", "--hyper", "temp=2"]);
    assert!(e.contains("twice"), "{e}");
    let e = refused(m, &["--hyper", "temp"]);
    assert!(e.contains("NAME=VALUE"), "{e}");
    // A stdlib mechanism without hyperparameters says so.
    let e = refused("m1", &["--hyper", "temp=1"]);
    assert!(
        e.contains("`m1` has no hyperparameter `temp`") && e.contains("none"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn size_binds_a_free_axis_and_refuses_the_protocols() {
    let dir = scratch("size");
    let mech = dir.join("multi.diag");
    std::fs::write(&mech, MULTI).unwrap();
    let m = s(&mech);
    let lowrank = ["--diagram", "lowrank"];
    // Unbound: the error names the axis and the flag.
    let e = refused(m, &lowrank);
    assert!(e.contains("`r`") && e.contains("--size r=N"), "{e}");
    // Bound: it trains, and the rank shapes the parameters.
    let run = |r: &str| {
        let out = dir.join(format!("r{r}"));
        let size = format!("r={r}");
        train(
            m,
            &["--diagram", "lowrank", "--size", &size, "--steps", "1"],
            &out,
        );
        assert_eq!(
            config(&out)["model"]["sizes"]["r"],
            r.parse::<u64>().unwrap()
        );
        summary(&out)["parameters"].as_u64().unwrap()
    };
    let (p4, p8) = (run("4"), run("8"));
    // Two linear[dm -> r] maps with bias: 2 * (16 + 1) parameters per unit of rank.
    assert_eq!(p8 - p4, 4 * 2 * 17);
    // The protocol's axes have their own flags.
    for (axis, flag) in [
        ("dm", "--d-model"),
        ("tok", "--bptt"),
        ("head", "--heads"),
        ("dff", "--d-ff"),
    ] {
        let e = refused(m, &["--diagram", "lowrank", "--size", &format!("{axis}=4")]);
        assert!(e.contains(flag) && e.contains(&format!("`{axis}`")), "{e}");
    }
    // Unknown and derived axes, and values that are not sizes.
    let e = refused(m, &["--diagram", "lowrank", "--size", "q=4"]);
    assert!(
        e.contains("no axis `q`") && e.contains("can bind: r"),
        "{e}"
    );
    let e = refused(m, &["--diagram", "lowrank", "--size", "src=4"]);
    assert!(
        e.contains("not a free axis") && e.contains("can bind: r"),
        "{e}"
    );
    let e = refused(m, &["--diagram", "lowrank", "--size", "r=0"]);
    assert!(e.contains("positive"), "{e}");
    let e = refused(m, &["--diagram", "lowrank", "--size", "r=x"]);
    assert!(e.contains("positive whole number"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn diagram_picks_one_mechanism_of_a_file() {
    let dir = scratch("diagram");
    let mech = dir.join("multi.diag");
    std::fs::write(&mech, MULTI).unwrap();
    let m = s(&mech);
    // Without --diagram the file is ambiguous, and the error says how to choose.
    let e = refused(m, &["--size", "r=4"]);
    assert!(
        e.contains("several mechanisms (lowrank, plain)") && e.contains("--diagram"),
        "{e}"
    );
    let count = |d: &str| {
        let out = dir.join(d);
        let o = train(m, &["--diagram", d, "--size", "r=4", "--steps", "1"], &out);
        assert!(stderr(&o).contains(&format!("diagram {d}")), "{}", text(&o));
        assert_eq!(config(&out)["model"]["diagram"], d);
        summary(&out)["parameters"].as_u64().unwrap()
    };
    let (lowrank, plain) = (count("lowrank"), count("plain"));
    // lowrank has two linear[dm -> r] more than plain's one linear[dm -> dm].
    assert_eq!(lowrank - plain, 2 * (16 * 4 + 4));
    let e = refused(m, &["--diagram", "pooled"]);
    assert!(
        e.contains("`pooled`") && e.contains("not a mechanism"),
        "{e}"
    );
    let e = refused(m, &["--diagram", "lowrnak"]);
    assert!(
        e.contains("did you mean `lowrank`?") && e.contains("its mechanisms: lowrank, plain"),
        "{e}"
    );
    let e = refused("m1", &["--diagram", "m1"]);
    assert!(e.contains("stdlib mechanism"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn model_puts_the_mechanism_in_another_language_model() {
    let dir = scratch("model");
    let with = dir.join("with");
    let without = dir.join("without");
    train("m1", &["--steps", "2"], &with);
    train(
        "m1",
        &["--model", "stdlib/lm_nopos.diag", "--steps", "2"],
        &without,
    );
    // The same parameters (the positional encoding has none), another function.
    assert_eq!(
        summary(&with)["parameters"],
        summary(&without)["parameters"]
    );
    assert_ne!(losses(&with)[0], losses(&without)[0]);
    // The run keeps the model's file.
    assert!(without.join("source/lm_nopos.diag").is_file());
    assert!(!without.join("source/lm.diag").exists());
    assert_eq!(
        std::fs::read_to_string(without.join("source/lm_nopos.diag")).unwrap(),
        std::fs::read_to_string(root().join("stdlib/lm_nopos.diag")).unwrap()
    );
    // By its stdlib name, the same model.
    let named = dir.join("named");
    train("m1", &["--model", "lm_nopos", "--steps", "2"], &named);
    assert_eq!(losses(&named), losses(&without));

    // A file whose `lm` has the wrong boundary, or lacks a hyperparameter, or no `lm` at all.
    let wrong = dir.join("wrong.diag");
    std::fs::write(
        &wrong,
        "use attention.m1\naxis tok, dm, vocab\n\
         diagram lm[mech: ([tok, dm]) -> [tok, dm] = m1, layers: int = 1, p: float = 0.1]\
         (ids: [tok] of vocab) -> [tok, dm] {\n    mech(embed[vocab -> dm](ids))\n}\n",
    )
    .unwrap();
    let e = refused("m1", &["--model", s(&wrong)]);
    assert!(
        e.contains("returns ([tok, dm])") && e.contains("-> [tok, vocab]"),
        "{e}"
    );
    let fixed = dir.join("fixed.diag");
    std::fs::write(
        &fixed,
        "use attention.m1\naxis tok, dm, vocab\n\
         diagram lm[layers: int = 1, p: float = 0.1](ids: [tok] of vocab) -> [tok, vocab] {\n    \
         linear[dm -> vocab](m1(embed[vocab -> dm](ids)))\n}\n",
    )
    .unwrap();
    let e = refused("m1", &["--model", s(&fixed)]);
    assert!(e.contains("no hyperparameter `mech"), "{e}");
    let none = dir.join("none.diag");
    std::fs::write(&none, "use lm\naxis tok\n").unwrap();
    let e = refused("m1", &["--model", s(&none)]);
    assert!(e.contains("does not define `lm` itself"), "{e}");
    let e = refused("m1", &["--model", "lm_nopose"]);
    assert!(
        e.contains("did you mean `lm_nopos`?") && e.contains("lm, lm_nopos"),
        "{e}"
    );
    // With a mechanism file, a model file elsewhere is refused, naming the stdlib's.
    let mech = dir.join("scaled.diag");
    std::fs::write(&mech, SCALED).unwrap();
    let e = refused(s(&mech), &["--model", "stdlib/lm_nopos.diag"]);
    assert!(
        e.contains("beside") && e.contains("--model lm_nopos"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_enumerated_mechanisms_train_by_stdlib_name() {
    let dir = scratch("anatomy");
    let out = dir.join("m05");
    let o = train("anatomy.m05", &["--steps", "2"], &out);
    assert_eq!(losses(&out).len(), 2, "{}", text(&o));
    assert!(out.join("source/anatomy/m05.diag").is_file());
    assert_eq!(config(&out)["model"]["mech"], "anatomy.m05");
    // `attention.NAME` is `NAME`.
    let a = dir.join("a");
    let b = dir.join("b");
    train("attention.m1", &["--steps", "1"], &a);
    train("m1", &["--steps", "1"], &b);
    assert_eq!(losses(&a), losses(&b));
    let e = refused("anatomy.m99", &[]);
    assert!(
        e.contains("unknown mechanism `anatomy.m99`")
            && e.contains("did you mean `anatomy.m09`?")
            && e.contains("anatomy.m00")
            && e.contains("anatomy.m13")
            && e.contains("bahdanau"),
        "{e}"
    );
    // Modules that do not define a mechanism named like them are not mechanisms.
    for not in ["anatomy.spec", "rules.equal", "lm"] {
        let e = refused(not, &[]);
        assert!(e.contains(&format!("unknown mechanism `{not}`")), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_stdlib_mechanism_name_builds_a_model() {
    let names = model::stdlib_mechanisms();
    for m in ["m1", "bahdanau", "anatomy.m00", "anatomy.m13"] {
        assert!(names.iter().any(|n| n == m), "{m} in {names:?}");
    }
    assert!(!names.iter().any(|n| n == "anatomy.spec"));
    assert_eq!(model::stdlib_models(), ["lm", "lm_nopos"]);
    for mech in names.iter().filter(|n| n.contains('.')) {
        let cfg = ModelConfig {
            mech: mech.clone(),
            d_model: 8,
            heads: 2,
            d_ff: 12,
            vocab: 11,
            bptt: 4,
            batch: 1,
            ..Default::default()
        };
        let lm = model::language_model(&cfg).unwrap_or_else(|e| panic!("{mech}: {e}"));
        assert!(lm.parameter_count() > 0, "{mech}");
        let nopos = ModelConfig {
            model: Some("lm_nopos".into()),
            ..cfg
        };
        let other = model::language_model(&nopos).unwrap_or_else(|e| panic!("{mech}: {e}"));
        assert_eq!(lm.parameter_count(), other.parameter_count(), "{mech}");
    }
}

#[test]
fn a_diagram_valued_hyperparameter_takes_a_diagram_name() {
    let dir = scratch("dv");
    let mech = dir.join("dv.diag");
    std::fs::write(
        &mech,
        "use attention.m1\nuse attention.m0\naxis tok, dm\n\
         diagram dv[inner: ([tok, dm]) -> [tok, dm] = m1](x: [tok, dm]) -> [tok, dm] {\n    \
         inner(x)\n}\n",
    )
    .unwrap();
    let cfg = |hypers: &[(&str, &str)]| ModelConfig {
        mech: s(&mech).into(),
        d_model: 8,
        heads: 2,
        d_ff: 12,
        vocab: 11,
        bptt: 4,
        batch: 1,
        hypers: hypers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let names = |c: &ModelConfig| -> Vec<String> {
        model::language_model(c)
            .unwrap()
            .params
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    // The mechanism's parameters are named after the diagram that was called.
    let default = names(&cfg(&[]));
    let m0 = names(&cfg(&[("inner", "m0")]));
    assert!(default.iter().any(|n| n.contains("/m1.")), "{default:?}");
    assert!(m0.iter().any(|n| n.contains("/m0.")), "{m0:?}");
    assert!(!m0.iter().any(|n| n.contains("/m1.")), "{m0:?}");
    assert_eq!(names(&cfg(&[("inner", "m1")])), default);
    let e = model::language_model(&cfg(&[("inner", "m9")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no diagram `m9`") && e.contains("did you mean `m0`?"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn configurations_without_the_new_fields_load_and_compare_equal() {
    // A config.json as runs before these flags wrote it.
    let old = r#"{
      "model": {"mech": "m1", "layers": 1, "d_model": 16, "heads": 2, "d_ff": 32,
                "vocab": 10000, "bptt": 8, "batch": 2, "dropout": 0.1},
      "epochs": null, "max_steps": 2, "warmup": 4000, "lr_scale": 1.0, "clip": 1.0,
      "seed": 5, "eval_batch": 10, "valid_every": null, "train_tokens": 2000,
      "eval_tokens": 500, "divergence": {"margin": 5.0, "steps": 10}
    }"#;
    let cfg: TrainConfig = serde_json::from_str(old).unwrap();
    assert!(cfg.model.hypers.is_empty() && cfg.model.sizes.is_empty());
    assert_eq!(
        (cfg.model.diagram.as_ref(), cfg.model.model.as_ref()),
        (None, None)
    );
    // Written back, it is the same JSON: no new keys, so old checkpoints still compare equal.
    let back = serde_json::to_value(&cfg).unwrap();
    let old: serde_json::Value = serde_json::from_str(old).unwrap();
    assert_eq!(back, old);
    // With the new fields set, they are written and read back.
    let mut new = cfg.clone();
    new.model.hypers.insert("temp".into(), "0.5".into());
    new.model.sizes.insert("r".into(), 4);
    new.model.diagram = Some("lowrank".into());
    new.model.model = Some("lm_nopos".into());
    let text = serde_json::to_string(&new).unwrap();
    assert_eq!(serde_json::from_str::<TrainConfig>(&text).unwrap(), new);
    assert_ne!(new, cfg);
}

#[test]
fn the_default_run_directory_names_the_choices() {
    let mut cfg = TrainConfig::default();
    cfg.model.mech = "anatomy.m05".into();
    assert_eq!(
        default_run_dir(&cfg),
        Path::new("runs/anatomy.m05-1l-seed0")
    );
    cfg.model.mech = "some/dir/multi.diag".into();
    cfg.model.diagram = Some("lowrank".into());
    cfg.model.hypers.insert("temp".into(), "0.5".into());
    cfg.model.sizes.insert("r".into(), 8);
    cfg.model.model = Some("some/dir/mylm.diag".into());
    cfg.model.layers = 2;
    assert_eq!(
        default_run_dir(&cfg),
        Path::new("runs/multi.lowrank-temp0.5-r8-mylm-2l-seed0")
    );
}

#[test]
fn resume_and_eval_rebuild_the_model_from_the_run_directory() {
    // A mechanism file with several diagrams, a hyperparameter, a free axis, and its own LM
    // beside it: everything the new flags record.
    let dir = scratch("resume");
    let mech = dir.join("multi.diag");
    std::fs::write(&mech, MULTI).unwrap();
    std::fs::copy(root().join("stdlib/lm_nopos.diag"), dir.join("mylm.diag")).unwrap();
    let m = s(&mech).to_string();
    let model = s(&dir.join("mylm.diag")).to_string();
    let flags = |steps: &'static str| -> Vec<String> {
        [
            "--diagram",
            "lowrank",
            "--hyper",
            "temp=0.5",
            "--size",
            "r=4",
            "--model",
            &model,
            "--valid-every",
            "2",
            "--steps",
            steps,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let whole = dir.join("whole");
    let half = dir.join("half");
    let args = flags("4");
    train(
        &m,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &whole,
    );
    let args = flags("2");
    train(
        &m,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &half,
    );
    let c = config(&whole);
    assert_eq!(c["model"]["model"], model.as_str());
    assert!(whole.join("source/mylm.diag").is_file() && whole.join("source/multi.diag").is_file());

    // The run needs nothing outside its directory: the original files go away, and edited
    // ones would not matter either.
    std::fs::remove_file(&mech).unwrap();
    std::fs::remove_file(dir.join("mylm.diag")).unwrap();

    // The resumed run repeats the uninterrupted losses and ends with the same perplexities.
    let h = s(&half);
    let o = diagc(&["train", "--resume", h, "--steps", "4"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let bits = |d: &Path| losses(d).iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&whole).len(), 4);
    assert_eq!(bits(&half), bits(&whole));
    let (sw, sh) = (summary(&whole), summary(&half));
    assert_eq!(sw["best"], sh["best"]);
    assert_eq!(sw["last"], sh["last"]);

    // eval of the best and the last checkpoint gives the summary's test perplexities.
    let w = s(&whole);
    for (which, key) in [("best", "best"), ("last", "last")] {
        let o = diagc(&["eval", w, "--checkpoint", which]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let want = format!(
            "test perplexity {:.2}\n",
            sw[key]["test_ppl"].as_f64().unwrap()
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), want, "{which}");
    }

    // A resumed run keeps its model: each of the new flags is refused.
    for flag in [
        &["--hyper", "temp=1"][..],
        &["--size", "r=8"],
        &["--diagram", "plain"],
        &["--model", "lm"],
    ] {
        let mut a = vec!["train", "--resume", w];
        a.extend_from_slice(flag);
        let o = diagc(&a);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            stderr(&o).contains(flag[0]) && stderr(&o).contains("cannot change"),
            "{}",
            text(&o)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
