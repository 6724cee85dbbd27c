//! `diagc sweep` (issue 17): sweep files and their errors, the plan, the runner (kill and
//! rerun, two runners at once), the per-model learning rate, results and the report. The end
//! to end tests run the real binary on `sweeps/smoke.toml`.

mod common;

use common::root;
use diagc::sweep::exec::{Tuned, choose};
use diagc::sweep::spec::{self, glob_match};
use diagc::sweep::{ModelKey, Quartiles, Stats};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> String {
    std::env::var("DIAGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_diagc").to_string())
}

fn data() -> String {
    root()
        .join("../shared/data/ptb")
        .to_string_lossy()
        .to_string()
}

fn fresh(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-sweep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(root()).env("NO_COLOR", "1");
    c
}

fn diagc(args: &[&str]) -> Output {
    cmd(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn stdlib() -> Vec<String> {
    diagc::train::model::stdlib_mechanisms()
}

fn parse(body: &str) -> Result<spec::Spec, spec::SpecError> {
    let names = stdlib();
    spec::parse(
        body,
        "t",
        &spec::Context {
            stdlib: &names,
            base: Path::new("."),
        },
    )
}

/// The (line, column) an error points at.
fn line_col(body: &str, e: &spec::SpecError) -> (usize, usize) {
    let r = e.render("f.toml", body);
    let first = r.lines().next().unwrap();
    let mut it = first.split(':').skip(1);
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

const SMALL: &str = "mechanisms = [\"m0\", \"m1\"]\nlayers = [1, 2]\nseeds = [0, 1]\n";

#[test]
fn sweep_file_errors_name_their_line_and_column() {
    // (file, line, column, words the message must have)
    let cases: &[(&str, usize, usize, &[&str])] = &[
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\n\n[train]\nd_modle = 64\n",
            5,
            1,
            &[
                "unknown [train] setting `d_modle`",
                "did you mean `d_model`",
            ],
        ),
        (
            "mechanisms = [\"m1\", \"m7\"]\nlayers = [1]\n",
            1,
            21,
            &["unknown mechanism `m7`", "did you mean `m0`"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\n[tuning]\nlr_scales = [1.0, 0]\n",
            4,
            19,
            &["positive number, not 0"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = []\n",
            2,
            10,
            &["`layers` is empty"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\nlayres = [2]\n",
            3,
            1,
            &["unknown field `layres`"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\n[train]\nsteps = []\n",
            4,
            9,
            &["`steps` is an empty list"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\n[train]\nseed = 3\n",
            4,
            1,
            &["cannot be set in [train]", "`seeds` list"],
        ),
        (
            "mechanisms = [\"zz*\"]\nlayers = [1]\n",
            1,
            15,
            &["matches no stdlib mechanism"],
        ),
        (
            "mechanisms = [\"m1\"]\nlayers = [1]\n[train]\ndropout = \"high\"\n",
            4,
            11,
            &["takes a number"],
        ),
    ];
    for (body, line, col, words) in cases {
        let e = parse(body).expect_err(body);
        let r = e.render("f.toml", body);
        assert_eq!(line_col(body, &e), (*line, *col), "{r}");
        for w in *words {
            assert!(r.contains(w), "{w:?} not in\n{r}");
        }
        // The caret line points under the span.
        assert!(r.lines().last().unwrap().contains('^'), "{r}");
    }
}

#[test]
fn a_bad_value_is_caught_by_train_s_own_checks_at_plan_time_with_its_line() {
    let dir = fresh("badval");
    let f = write(
        &dir,
        "bad.toml",
        &format!("{SMALL}\n[train]\nd_model = 30\nheads = 4\n"),
    );
    let o = diagc(&[
        "sweep",
        "plan",
        f.to_str().unwrap(),
        "-o",
        dir.join("s").to_str().unwrap(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("bad.toml:7:9: --heads: 4 does not divide --d-model 30"),
        "{t}"
    );
    assert!(!dir.join("s").exists(), "nothing is written for a bad file");
}

#[test]
fn globs_match_whole_names() {
    assert!(glob_match("anatomy.*", "anatomy.m05"));
    assert!(glob_match("m?", "m1"));
    assert!(!glob_match("m?", "m10"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "aXXbYYc"));
    assert!(!glob_match("a*b*c", "aXXbYY"));
    assert!(!glob_match("anatomy.*", "attention.m1"));
}

#[test]
fn the_plan_expands_every_combination_once_in_stage_order() {
    let body = format!(
        "{SMALL}[train]\nbptt = [16, 32]\nsteps = 5\n[tuning]\nlr_scales = [0.5, 1, 2]\n[timing]\nreference = \"m1\"\n"
    );
    let s = parse(&body).unwrap();
    let plan = diagc::sweep::plan::expand(&s);
    // 2 mechs x 2 layers x 2 windows = 8 models; A: 8 x 3; B: 8 x 1 (seed 0 reuses stage A);
    // timing: 8.
    use diagc::sweep::Stage::*;
    let count = |st| plan.iter().filter(|e| e.stage == st).count();
    assert_eq!(
        (count(A), count(B), count(Timing), count(Single)),
        (24, 8, 8, 0)
    );
    for (i, e) in plan.iter().enumerate() {
        assert_eq!(e.index, i);
    }
    let mut names: Vec<&str> = plan.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), plan.len(), "names are unique");
    // Stage order: every A before every B before every timing entry.
    let order: Vec<u8> = plan
        .iter()
        .map(|e| match e.stage {
            A => 0,
            B => 1,
            _ => 2,
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]));
    // A swept setting is part of the model and of the arguments.
    let e = plan.iter().find(|e| e.stage == B).unwrap();
    assert_eq!(e.model.swept, vec!["bptt=16".to_string()]);
    assert!(e.args.windows(2).any(|w| w == ["--bptt", "16"]));
    assert_eq!(e.lr_scale, None, "stage B's scale is chosen at run time");
    assert_eq!(e.seed, 1);
    // Expanding again gives the same plan (names carry a hash of the definition).
    assert_eq!(diagc::sweep::plan::expand(&s), plan);
}

#[test]
fn a_token_budget_sets_the_steps_per_window() {
    let body = "mechanisms = [\"m1\"]\nlayers = [1]\n[train]\nbatch_size = 4\nbptt = [10, 100]\ntoken_budget = 1000\n";
    let plan = diagc::sweep::plan::expand(&parse(body).unwrap());
    let steps: Vec<String> = plan
        .iter()
        .map(|e| {
            let k = e.args.iter().position(|a| a == "--steps").unwrap();
            e.args[k + 1].clone()
        })
        .collect();
    assert_eq!(steps, vec!["25", "3"]); // 1000 / 40, ceil(1000 / 400)
    let both = "mechanisms = [\"m1\"]\nlayers = [1]\n[train]\nsteps = 5\ntoken_budget = 1000\n";
    assert!(
        parse(both)
            .unwrap_err()
            .message
            .contains("both set the budget")
    );
}

#[test]
fn stage_a_chooses_the_best_validation_and_flags_the_edge() {
    let m = ModelKey {
        mech: "m1".into(),
        layers: 1,
        swept: vec![],
    };
    let Tuned::Chosen(c) = choose(
        &m,
        vec![(0.5, Some(300.0)), (1.0, Some(250.0)), (2.0, Some(260.0))],
    ) else {
        panic!()
    };
    assert_eq!((c.lr_scale, c.at_edge), (1.0, false));
    let Tuned::Chosen(c) = choose(
        &m,
        vec![(0.5, Some(300.0)), (1.0, Some(250.0)), (2.0, Some(240.0))],
    ) else {
        panic!()
    };
    assert_eq!((c.lr_scale, c.at_edge), (2.0, true));
    // A diverged scale is never chosen; nothing trained: nothing chosen.
    let Tuned::Chosen(c) = choose(&m, vec![(0.5, Some(300.0)), (1.0, None), (2.0, None)]) else {
        panic!()
    };
    assert_eq!(c.lr_scale, 0.5);
    assert_eq!(choose(&m, vec![(0.5, None), (1.0, None)]), Tuned::Nothing);
}

#[test]
fn statistics_are_the_textbook_ones() {
    let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
    assert_eq!((s.mean, s.min, s.max, s.n), (5.0, 2.0, 9.0, 8));
    assert!((s.sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    assert_eq!(Stats::of(&[3.0]).unwrap().sd, 0.0);
    assert!(Stats::of(&[f64::NAN]).is_none());
    let q = Quartiles::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    assert_eq!((q.q1, q.median, q.q3), (2.0, 3.0, 4.0));
    let q = Quartiles::of(&[1.0, 2.0]).unwrap();
    assert_eq!((q.q1, q.median, q.q3), (1.25, 1.5, 1.75));
}

#[test]
fn results_csv_quotes_what_needs_quoting() {
    use diagc::sweep::{ResultRow, Stage, Status};
    let row = ResultRow {
        index: 0,
        name: "n".into(),
        stage: Stage::Single,
        mech: "m1".into(),
        layers: 1,
        swept: vec!["bptt=16".into()],
        seed: 0,
        lr_scale: Some(0.5),
        status: Status::Failed,
        error: Some("bad, \"very\"\nbad".into()),
        chosen: true,
        parameters: None,
        best_valid_ppl: None,
        last_valid_ppl: None,
        test_ppl: None,
        best_step: None,
        steps: None,
        train_tokens_per_s: None,
        planned_memory_bytes: None,
        peak_rss_bytes: None,
        wall_time_s: None,
        device: None,
        diagc_version: "0".into(),
        git_commit: None,
        run_dir: "runs/n".into(),
    };
    let csv = diagc::sweep::results::results_csv(&[row]);
    let mut lines = csv.splitn(2, '\n');
    let head = lines.next().unwrap();
    assert!(head.starts_with("index,name,stage,mech,layers,bptt,seed,lr_scale,status"));
    let body = lines.next().unwrap();
    assert!(
        body.starts_with("0,n,single,m1,1,16,0,0.5,failed,true,"),
        "{body}"
    );
    assert!(
        body.ends_with("runs/n,\"bad, \"\"very\"\"\nbad\"\n"),
        "{body}"
    );
}

/// The smoke sweep, planned into a fresh directory.
fn smoke(tag: &str) -> PathBuf {
    let dir = fresh(tag);
    let o = diagc(&[
        "sweep",
        "plan",
        "sweeps/smoke.toml",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    dir
}

fn plan_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("plan.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn planning_again_is_idempotent_and_a_changed_file_needs_force() {
    let dir = smoke("replan");
    let d = dir.to_str().unwrap();
    let before = std::fs::read(dir.join("plan.jsonl")).unwrap();
    let o = diagc(&["sweep", "plan", "sweeps/smoke.toml", "-o", d]);
    assert!(
        o.status.success() && text(&o).contains("nothing changed"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(dir.join("plan.jsonl")).unwrap(), before);
    // A changed file: refused, then replaced with --force, keeping unchanged entries' names.
    // (written elsewhere, so its path mechanism is given absolutely)
    let m05 = root().join("stdlib/anatomy/m05.diag");
    let changed = std::fs::read_to_string(root().join("sweeps/smoke.toml"))
        .unwrap()
        .replace("seeds = [0, 1]", "seeds = [0, 1, 2]")
        .replace("../stdlib/anatomy/m05.diag", m05.to_str().unwrap());
    let f = write(&fresh("replan-file"), "smoke.toml", &changed);
    let f = f.to_str().unwrap();
    let o = diagc(&["sweep", "plan", f, "-o", d]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    let old: Vec<String> = plan_lines(&dir)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let o = diagc(&["sweep", "plan", f, "-o", d, "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    let new: Vec<String> = plan_lines(&dir)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(new.len(), old.len() + 6, "one more stage B seed per model");
    // The path mechanism's entries change (its path is relative to another file now); the
    // stdlib ones keep their names.
    let kept = old.iter().filter(|n| new.contains(n)).count();
    assert!(kept >= 12, "only {kept} names kept");
    // Editing the copy in the sweep directory is refused by every command.
    let copy = dir.join("sweep.toml");
    let t = std::fs::read_to_string(&copy).unwrap();
    std::fs::write(&copy, t.replace("steps = 30", "steps = 31")).unwrap();
    let o = diagc(&["sweep", "status", d]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("changed since it was planned"),
        "{}",
        text(&o)
    );
}

fn states(dir: &Path) -> Vec<serde_json::Value> {
    plan_lines(dir)
        .iter()
        .map(|e| {
            let p = dir.join(format!("state/{}.json", e["name"].as_str().unwrap()));
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|_| "{}".into()))
                .unwrap()
        })
        .collect()
}

/// Every training run's metrics have each step once, 1..=steps in order (a run trained twice
/// from scratch or appended to would repeat steps).
fn every_run_once(dir: &Path) {
    for e in plan_lines(dir) {
        if e["stage"] == "timing" {
            assert!(dir.join(e["run_dir"].as_str().unwrap()).is_file(), "{e}");
            continue;
        }
        let run = dir.join(e["run_dir"].as_str().unwrap());
        let m = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = m
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v.get("loss").is_some())
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, (1..=30).collect::<Vec<u64>>(), "{}", run.display());
        assert!(run.join("summary.json").is_file());
    }
}

fn status_counts(dir: &Path) -> String {
    text(&diagc(&["sweep", "status", dir.to_str().unwrap()]))
}

#[test]
fn the_smoke_sweep_killed_and_rerun_finishes_every_run_once_and_reports() {
    let dir = smoke("e2e");
    let d = dir.to_str().unwrap();
    let data = data();
    // Start the runner, let some runs finish and others start, then SIGKILL it: its run-one
    // processes get SIGTERM from the kernel (parent-death signal), save and record it.
    let mut child = cmd(&["sweep", "run", d, "--jobs", "2", "--data", &data])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let done = std::fs::read_dir(dir.join("runs"))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().join("summary.json").exists())
                    .count()
            })
            .unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no progress: {}",
            status_counts(&dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The orphans stop at their next step boundary.
    let t1 = Instant::now();
    while status_counts(&dir).contains("running") {
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "runs left running: {}",
            status_counts(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mid = status_counts(&dir);
    assert!(
        mid.contains("pending") || mid.contains("interrupted") || mid.contains("waiting"),
        "{mid}"
    );
    // Rerun: it finishes the rest.
    let o = diagc(&["sweep", "run", d, "--jobs", "2", "--data", &data]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    every_run_once(&dir);
    let st = states(&dir);
    assert!(st.iter().all(|s| s["status"] == "done"), "{st:?}");
    // Nothing was trained twice from scratch: an interrupted run resumed (attempts 2 at most).
    assert!(
        st.iter().all(|s| s["attempts"].as_u64().unwrap() <= 2),
        "{st:?}"
    );
    let s = status_counts(&dir);
    assert!(s.contains("24/24 done"), "{s}");
    // Results: one row per training entry; stage B ran at stage A's choice.
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 18, "{csv}");
    let tuning: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tuning.json")).unwrap()).unwrap();
    assert_eq!(tuning.len(), 6);
    for c in &tuning {
        let lr = c["lr_scale"].as_f64().unwrap();
        let best = c["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert_eq!(lr, best.0, "{c}");
        let mech = c["model"]["mech"].as_str().unwrap();
        let layers = c["model"]["layers"].as_u64().unwrap();
        // The stage B run's own configuration has that scale.
        for e in plan_lines(&dir) {
            if e["stage"] == "b" && e["model"]["mech"] == mech && e["model"]["layers"] == layers {
                let cfg: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(
                        dir.join(e["run_dir"].as_str().unwrap()).join("config.json"),
                    )
                    .unwrap(),
                )
                .unwrap();
                assert_eq!(cfg["lr_scale"].as_f64(), Some(lr), "{cfg}");
            }
        }
    }
    // Every state names the diagc that ran it, and each row carries its entry's commit, not
    // the gathering binary's: an entry recorded as run by another build keeps that build's.
    let built = diagc::version::build_commit();
    assert!(
        st.iter()
            .all(|s| s["diagc_commit"].as_str() == built.as_deref()),
        "{st:?}"
    );
    let first = plan_lines(&dir)[0]["name"].as_str().unwrap().to_string();
    let sp = dir.join("state").join(format!("{first}.json"));
    let mut s0: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    s0["diagc_commit"] = "0123abcd".into();
    s0["diagc_version"] = "0.0.9".into();
    std::fs::write(&sp, s0.to_string()).unwrap();
    let o = diagc(&["sweep", "report", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let r0 = rows.iter().find(|r| r["name"] == first.as_str()).unwrap();
    assert_eq!(r0["git_commit"], "0123abcd", "{r0}");
    assert_eq!(r0["diagc_version"], "0.0.9", "{r0}");
    assert!(
        rows.iter()
            .filter(|r| r["name"] != first.as_str())
            .all(|r| r["git_commit"].as_str() == built.as_deref()),
        "{rows:?}"
    );
    let agg = std::fs::read_to_string(dir.join("aggregate.csv")).unwrap();
    assert_eq!(agg.lines().count(), 1 + 6, "{agg}");
    assert!(
        agg.lines().skip(1).all(|l| l.contains(",2,2,")),
        "n = expected = 2 seeds:\n{agg}"
    );
    // Timing records: the reference against itself is 1 in memory.
    let m1 = plan_lines(&dir)
        .into_iter()
        .find(|e| e["stage"] == "timing" && e["model"]["mech"] == "m1")
        .unwrap();
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(m1["run_dir"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["memory_ratio"].as_f64(), Some(1.0));
    assert_eq!(rec["rounds"].as_array().unwrap().len(), 3);
    // The report: every run in it, self-contained, with its figures beside it.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for e in plan_lines(&dir) {
        if e["stage"] != "timing" {
            assert!(html.contains(e["name"].as_str().unwrap()), "{e}");
        }
    }
    assert!(!html.contains("<script") && !html.contains("http"));
    for stem in [
        "fig2-perplexity",
        "fig4-cost",
        "lr-isolation",
        "valid-curves",
    ] {
        assert!(dir.join(format!("figures/{stem}.svg")).is_file(), "{stem}");
        assert!(dir.join(format!("figures/{stem}.png")).is_file(), "{stem}");
    }
    // Each mechanism's class comes from its own file's header, as the run copied it (the
    // run's source/ also holds the LM's files).
    for (mech, class) in [
        ("../stdlib/anatomy/m05.diag", diagc::sweep::MechClass::Both),
        ("m1", diagc::sweep::MechClass::DotProductOnly),
        ("m0", diagc::sweep::MechClass::LinearOnly),
    ] {
        let e = plan_lines(&dir)
            .into_iter()
            .find(|e| e["stage"] == "a" && e["model"]["mech"] == mech)
            .unwrap();
        let header =
            diagc::sweep::store::mechanism_header(&dir, e["run_dir"].as_str().unwrap(), mech);
        assert!(header.is_some(), "{mech}");
        assert_eq!(
            diagc::sweep::compare::class_of(mech, header.as_deref()),
            class,
            "{mech}: {header:?}"
        );
    }
    // Running again does nothing.
    let o = diagc(&["sweep", "run", d, "--data", &data]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        states(&dir)
            .iter()
            .all(|s| s["attempts"].as_u64().unwrap() <= 2)
    );
}

#[test]
fn two_runners_on_one_directory_never_run_an_entry_twice() {
    let dir = fresh("two");
    let body = std::fs::read_to_string(root().join("sweeps/smoke.toml"))
        .unwrap()
        .replace(
            "[\"m0\", \"m1\", \"../stdlib/anatomy/m05.diag\"]",
            "[\"m0\", \"m1\"]",
        )
        .replace("layers = [1, 2]", "layers = [1]");
    let f = write(&dir, "two.toml", &body);
    let s = dir.join("s");
    let (f, d) = (f.to_str().unwrap(), s.to_str().unwrap());
    assert!(diagc(&["sweep", "plan", f, "-o", d]).status.success());
    let data = data();
    let spawn = || {
        cmd(&["sweep", "run", d, "--data", &data])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    every_run_once(&s);
    let st = states(&s);
    assert!(
        st.iter()
            .all(|x| x["status"] == "done" && x["attempts"] == 1),
        "{st:?}"
    );
}

#[test]
fn a_failing_run_is_recorded_and_the_sweep_goes_on() {
    let dir = fresh("fail");
    // A mechanism file that checks and instantiates but whose run fails at once: a window
    // longer than the training slice leaves no training window.
    let body = "mechanisms = [\"m0\", \"m1\"]\nlayers = [1]\n[train]\nd_model = 16\nheads = 2\nd_ff = 16\nbptt = 8\nbatch_size = 2\nsteps = 3\ntrain_tokens = 2000\neval_tokens = 500\nlr_scale = [1.0, 1e30]\n";
    let f = write(&dir, "f.toml", body);
    let s = dir.join("s");
    let (f, d) = (f.to_str().unwrap(), s.to_str().unwrap());
    assert!(diagc(&["sweep", "plan", f, "-o", d]).status.success());
    let o = diagc(&["sweep", "run", d, "--data", &data()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let st = states(&s);
    let bad: Vec<&serde_json::Value> = st.iter().filter(|x| x["status"] != "done").collect();
    assert_eq!(
        bad.len(),
        2,
        "the two runs at 1e30 diverge; the others finish: {st:?}"
    );
    for x in &bad {
        assert_eq!(x["status"], "diverged", "{x}");
        assert!(x["error"].as_str().unwrap().contains("diverged"), "{x}");
    }
    let status = status_counts(&s);
    assert!(
        status.lines().any(|l| l.trim() == "diverged     2"),
        "{status}"
    );
    let csv = std::fs::read_to_string(s.join("results.csv")).unwrap();
    assert_eq!(csv.matches(",diverged,").count(), 2, "{csv}");
}

use common::mutate;

#[test]
fn mutated_sweep_files_are_refused_or_planned_never_a_panic() {
    // Every preset, mutated 400 times (deletions, duplications, insertions, flipped bytes,
    // truncations): parsing and expanding either succeeds or returns an error with a span
    // inside the text; nothing panics, and no plan is absurdly large.
    let mut rng = mutate::Rng(0x5eed_5eed_1234_5678);
    let names = stdlib();
    for preset in ["smoke", "cpu-small", "paper", "long-context"] {
        let text = std::fs::read_to_string(root().join(format!("sweeps/{preset}.toml"))).unwrap();
        for _ in 0..400 {
            let t = mutate::mutate(&mut rng, &text);
            let cx = spec::Context {
                stdlib: &names,
                base: Path::new("."),
            };
            match spec::parse(&t, "m", &cx) {
                Ok(s) => {
                    let plan = diagc::sweep::plan::expand(&s);
                    assert!(plan.len() <= spec::MAX_RUNS * 2, "{t}");
                }
                Err(e) => {
                    if let Some(sp) = &e.span {
                        assert!(sp.start <= t.len(), "{t}");
                    }
                    let _ = e.render("m.toml", &t);
                }
            }
        }
    }
}
