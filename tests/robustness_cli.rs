//! No input may panic or hang any command (issue 16): mutations of the stdlib's mechanisms
//! given to every command that reads a `.diag` file (check, draw, compile at every --emit,
//! rewrite, run, gradcheck, and train on tiny sizes). Each command must end, within a time
//! bound, with exit 0 (it worked), 1 (diagnostics or a failed run) or 2 (a usage or I/O error);
//! never 101 (a panic) or a signal (an abort). The whole test is bounded in time.

mod common;

use common::mutate::{Rng, mutate};
use common::root;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SIZES: &[&str] = &["--size", "tok=3", "--size", "dm=4", "--size", "head=2"];

/// Runs `diagc args` in `dir`; fails the test on a panic, a signal, or more than `limit`.
fn survive(args: &[String], dir: &std::path::Path, limit: Duration, input: &str) -> i32 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let dump = std::env::temp_dir().join("diagc-hang.diag");
            let _ = std::fs::write(&dump, input);
            panic!(
                "`diagc {}` ran over {limit:?}; input saved to {}",
                args.join(" "),
                dump.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !matches!(status.code(), Some(0..=2)) {
        let dump = std::env::temp_dir().join("diagc-crash.diag");
        let _ = std::fs::write(&dump, input);
        panic!(
            "`diagc {}` ended with {status:?}; input saved to {}",
            args.join(" "),
            dump.display()
        );
    }
    status.code().unwrap_or(-1)
}

/// The commands a mutated file `f` is given to.
fn commands(f: &str, run_dir: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<&str>> = vec![
        vec!["check", f],
        vec!["draw", f, "-o", "out.svg"],
        vec!["rewrite", f, "--sites"],
    ];
    for emit in ["ir", "ir-lowered", "instance", "optimized-ir", "cuda"] {
        let mut c = vec!["compile", f, "--emit", emit];
        c.extend_from_slice(SIZES);
        out.push(c);
    }
    let mut run = vec!["run", f];
    run.extend_from_slice(SIZES);
    out.push(run);
    let mut grad = vec!["gradcheck", f, "--samples", "2"];
    grad.extend_from_slice(SIZES);
    out.push(grad);
    out.push(vec![
        "train",
        f,
        "--out",
        run_dir,
        "--overwrite",
        "--d-model",
        "8",
        "--heads",
        "2",
        "--d-ff",
        "8",
        "--bptt",
        "4",
        "--batch-size",
        "2",
        "--train-tokens",
        "200",
        "--eval-tokens",
        "100",
        "--steps",
        "2",
        "--data",
    ]);
    out.into_iter()
        .map(|c| c.into_iter().map(str::to_string).collect())
        .collect()
}

#[test]
fn mutated_mechanisms_never_panic_or_hang_any_command() {
    let dir = std::env::temp_dir().join(format!("diagc-robust-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = root().join("../shared/data/ptb");
    let data = data.to_str().unwrap();
    let mechs: Vec<(&str, &str)> = diagc::stdlib::FILES
        .iter()
        .filter(|(p, _)| p.starts_with("attention/"))
        .copied()
        .collect();
    assert!(!mechs.is_empty());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let budget = Duration::from_secs(90);
    let start = Instant::now();
    let (mut files, mut runs) = (0, 0);
    while start.elapsed() < budget {
        let (path, text) = mechs[rng.below(mechs.len())];
        // Renamed, so that it does not clash with the stdlib's copy that the LM uses.
        let stem = path
            .trim_start_matches("attention/")
            .trim_end_matches(".diag");
        // (With or without hyperparameters: `diagram softcap[cap: float = 50](`.)
        let text = text
            .replace(&format!("diagram {stem}("), &format!("diagram my_{stem}("))
            .replace(&format!("diagram {stem}["), &format!("diagram my_{stem}["));
        // Every fourth file unmutated, so the commands also run to their end.
        let m = if files % 4 == 0 {
            text.clone()
        } else {
            mutate(&mut rng, &text)
        };
        let name = format!("my_{stem}.diag");
        std::fs::write(dir.join(&name), &m).unwrap();
        for mut c in commands(&name, "run") {
            if c[0] == "train" {
                c.push(data.to_string());
            }
            let code = survive(&c, &dir, Duration::from_secs(30), &m);
            if files % 4 == 0 {
                // The unmutated mechanisms work with every command.
                assert_eq!(code, 0, "`diagc {}` failed on {path}", c.join(" "));
            }
            runs += 1;
        }
        files += 1;
    }
    assert!(files >= 8, "only {files} files in {budget:?}");
    eprintln!("{files} files, {runs} command runs");
    let _ = std::fs::remove_dir_all(&dir);
}
