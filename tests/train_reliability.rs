//! Runs you can trust (issue 16): `diagc train` killed at any moment, stopped by a signal, out
//! of disk, fed edited files or absurd flags either continues exactly where it stopped or fails
//! with a clear message. Every test runs the binary on a tiny model and a slice of PTB.

mod common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test (`DIAGC_TEST_BIN` runs these tests against another build).
fn bin() -> String {
    std::env::var("DIAGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_diagc").to_string())
}

/// The tiny model of the trials, on small slices of the data.
const TINY: &[&str] = &[
    "--d-model",
    "32",
    "--heads",
    "2",
    "--d-ff",
    "64",
    "--bptt",
    "16",
    "--batch-size",
    "8",
    "--eval-tokens",
    "1000",
    "--warmup",
    "50",
    "--seed",
    "7",
];

fn fresh(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-rel-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cmd(args: &[&str], fault: Option<&str>) -> Command {
    let mut c = Command::new(bin());
    c.args(args).current_dir(root()).env("NO_COLOR", "1");
    c.env_remove("DIAGC_FAULT");
    if let Some(f) = fault {
        c.env("DIAGC_FAULT", f);
    }
    c
}

fn diagc(args: &[&str]) -> Output {
    cmd(args, None).output().unwrap()
}

/// `diagc args` with the fault `fault` injected (see `DIAGC_FAULT` in src/train/fault.rs).
fn faulty(args: &[&str], fault: &str) -> Output {
    cmd(args, Some(fault)).output().unwrap()
}

/// `diagc args` started in the background, its output discarded.
fn spawn(args: &[&str], fault: Option<&str>) -> std::process::Child {
    cmd(args, fault)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the run in `dir` has written `n` lines of metrics.
fn wait_for_lines(dir: &Path, n: usize) {
    let t0 = Instant::now();
    while std::fs::read_to_string(dir.join("metrics.jsonl"))
        .map(|t| t.lines().count() < n)
        .unwrap_or(true)
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no progress in {dir:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["train", "m1", "--out", out];
    // TINY's flags, less those that `extra` gives.
    let given = |f: &str| extra.iter().any(|e| e.split('=').next() == Some(f));
    for pair in TINY.chunks(2).chain([&["--train-tokens", "6000"][..]]) {
        if !given(pair[0]) {
            a.extend_from_slice(pair);
        }
    }
    a.extend_from_slice(extra);
    a
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every step's loss in `metrics.jsonl`, asserting that each line parses and no step repeats.
fn losses(dir: &Path) -> Vec<(u64, f64)> {
    let t = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let mut out = Vec::new();
    for line in t.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
        if let Some(l) = v["loss"].as_f64() {
            out.push((v["step"].as_u64().unwrap(), l));
        }
    }
    let steps: Vec<u64> = out.iter().map(|x| x.0).collect();
    let expected: Vec<u64> = (1..=steps.len() as u64).collect();
    assert_eq!(steps, expected, "every step once, in order");
    out
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn no_temporaries(dir: &Path) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// The reference: the same run, uninterrupted.
fn reference(tag: &str, steps: &str) -> (PathBuf, Vec<(u64, f64)>) {
    let dir = fresh(&format!("ref-{tag}"));
    let d = dir.to_str().unwrap();
    let o = diagc(&train_args(d, &["--steps", steps, "--valid-every", "7"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let l = losses(&dir);
    (dir, l)
}

/// Resumes `dir` until it finishes (each try may itself be killed by `fault`).
fn resume_to_end(dir: &Path) -> Output {
    let o = diagc(&["train", "--resume", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    o
}

#[test]
fn a_crash_inside_the_checkpoint_window_loses_nothing_but_the_interval() {
    // Item 1: the process dies with the new checkpoint complete but not yet in place; the
    // previous checkpoint is intact and the resumed run repeats the uninterrupted one.
    let (r, want) = reference("window", "30");
    let dir = fresh("window");
    let d = dir.to_str().unwrap();
    let o = faulty(
        &train_args(d, &["--steps", "30", "--valid-every", "7"]),
        "checkpoint-abort=4",
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.join("last.safetensors").exists());
    resume_to_end(&dir);
    assert_eq!(losses(&dir), want);
    no_temporaries(&dir);
    assert_eq!(summary(&dir)["test_ppl"], summary(&r)["test_ppl"]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_damaged_checkpoint_falls_back_to_its_previous_generation() {
    // Item 1's other half: when the newest checkpoint file is damaged anyway (a disk error),
    // eval and --resume use the generation before it, say so, and the run still ends as the
    // uninterrupted one.
    let (r, want) = reference("prev", "30");
    let dir = fresh("prev");
    let d = dir.to_str().unwrap();
    let o = diagc(&train_args(d, &["--steps", "20", "--valid-every", "7"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let last = dir.join("last.safetensors");
    let mut bytes = std::fs::read(&last).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x10;
    std::fs::remove_file(&last).unwrap();
    std::fs::write(&last, &bytes).unwrap();
    let o = diagc(&["eval", d, "--checkpoint", "last"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("last.prev.safetensors (step 14)"));
    let o = diagc(&["train", "--resume", d, "--steps", "30"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("from step 14"),
        "{}",
        text(&o)
    );
    assert_eq!(losses(&dir), want);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_failed_checkpoint_write_keeps_the_old_one_and_removes_its_temporary_file() {
    // Item 3: an I/O error while saving (a full disk) is exit 2 with a message, and leaves
    // neither a temporary file nor a damaged checkpoint.
    let dir = fresh("diskfull");
    let d = dir.to_str().unwrap();
    let o = faulty(
        &train_args(d, &["--steps", "20", "--valid-every", "5"]),
        "checkpoint-error=3",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("no space left") && e.contains("checkpoint"),
        "{e}"
    );
    no_temporaries(&dir);
    // Checkpoints 1 (best at step 5) and 2 (last at step 5) were saved; the 3rd failed.
    let o = resume_to_end(&dir);
    assert!(String::from_utf8_lossy(&o.stderr).contains("from step 5"));
    assert_eq!(losses(&dir).len(), 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn too_little_free_space_is_refused_before_training() {
    let dir = fresh("space");
    let d = dir.to_str().unwrap();
    let o = cmd(&train_args(d, &["--steps", "5"]), Some("free-bytes=100000"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("free,") && e.contains("needs about"), "{e}");
    assert!(!dir.join("metrics.jsonl").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_saves_and_the_run_resumes_exactly() {
    // Item 2: SIGTERM (what timeout, Slurm and docker send) stops at the next step with the
    // state saved, exit 143; the resumed run repeats the uninterrupted losses.
    let (r, want) = reference("term", "40");
    let dir = fresh("term");
    let d = dir.to_str().unwrap();
    let mut child = spawn(
        &train_args(d, &["--steps", "40", "--valid-every", "7"]),
        None,
    );
    // Wait for the first steps, then ask it to stop.
    wait_for_lines(&dir, 3);
    send_signal(child.id(), "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(dir.join("last.safetensors").exists());
    assert!(!dir.join("summary.json").exists());
    resume_to_end(&dir);
    assert_eq!(losses(&dir), want);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn sigusr1_and_sigint_save_too_with_their_own_exit_codes() {
    // Slurm sends SIGUSR1 before a preemption (`--signal`), a terminal SIGINT.
    for (signal, code) in [("USR1", 138), ("INT", 130)] {
        let dir = fresh(&format!("sig{signal}"));
        let d = dir.to_str().unwrap();
        let mut child = spawn(&train_args(d, &["--steps", "200"]), None);
        wait_for_lines(&dir, 3);
        send_signal(child.id(), signal);
        assert_eq!(child.wait().unwrap().code(), Some(code), "SIG{signal}");
        let steps = losses(&dir).len();
        let o = diagc(&["eval", d, "--checkpoint", "last"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(steps < 200, "SIG{signal} stopped nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Sends a signal with kill(1), to keep the tests free of unsafe code.
fn send_signal(pid: u32, signal: &str) {
    let s = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn sigkill_at_random_moments_never_loses_the_run() {
    // The crash test: SIGKILL at pseudo-random moments (checkpoint windows widened, so that
    // many kills land inside one), then --resume, again and again until the run ends. The
    // result must be the uninterrupted run's, loss for loss.
    let t_ref = Instant::now();
    let (r, want) = reference("kill9", "40");
    // The reference run's time between checkpoints (every 7 of 40 steps, start-up included:
    // an over-estimate), so that the kills spread over whole checkpoint intervals however
    // fast the build runs.
    let interval = t_ref.elapsed() * 7 / 40;
    let dir = fresh("kill9");
    let d = dir.to_str().unwrap();
    let mut args = train_args(d, &["--steps", "40", "--valid-every", "7"]);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let (mut kills, mut in_window) = (0, 0);
    let mut startup = Duration::ZERO;
    for attempt in 0..60 {
        // Its error output goes to a file, shown if an attempt fails.
        let err_path = dir.with_extension("stderr");
        let mut child = cmd(&args, Some("checkpoint-sleep-ms=150"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // The moments are counted from the end of the start-up (loading the data, checking
        // the model: a second or two in a debug build), measured on the first attempt, so
        // that the kills land in training and checkpointing rather than all before them.
        let spawned = Instant::now();
        while !dir.is_dir() && child.try_wait().unwrap().is_none() {
            assert!(
                spawned.elapsed() < Duration::from_secs(120),
                "the run never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        if attempt == 0 {
            startup = spawned.elapsed();
        }
        let span = (interval * 3 / 2)
            .max(Duration::from_millis(900))
            .as_millis() as u64;
        let wait = startup + Duration::from_millis(150 + seed % span);
        // Every third attempt aims at a checkpoint window: it is killed as soon as a
        // checkpoint's temporary file appears, so that such kills do not depend on luck.
        let aim = attempt % 3 == 1;
        let has_tmp = || {
            std::fs::read_dir(&dir).is_ok_and(|es| {
                es.flatten()
                    .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
            })
        };
        let t0 = spawned;
        let mut done = None;
        while if aim {
            // (After the start-up, by which a temporary file left by the last kill is gone.)
            (t0.elapsed() < startup || !has_tmp()) && t0.elapsed() < Duration::from_secs(120)
        } else {
            t0.elapsed() < wait
        } {
            if let Some(s) = child.try_wait().unwrap() {
                done = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match done {
            Some(s) => {
                assert_eq!(
                    s.code(),
                    Some(0),
                    "attempt {attempt} ({args:?}) failed after {kills} kills:\n{}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
                break;
            }
            None => {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                // A kill inside a checkpoint window leaves the new file's temporary copy (the
                // next run removes it).
                in_window += usize::from(has_tmp());
            }
        }
        // A kill before the run directory exists (the model is still being checked) leaves
        // nothing to resume: the run is started again as it was.
        if dir.is_dir() {
            args = vec!["train", "--resume", d];
        }
    }
    eprintln!("{kills} kills, {in_window} inside a checkpoint window");
    assert!(kills >= 3, "only {kills} kills landed");
    assert!(in_window >= 1, "no kill landed inside a checkpoint window");
    if !dir.join("summary.json").exists() {
        resume_to_end(&dir);
    }
    assert_eq!(losses(&dir), want, "after {kills} kills");
    no_temporaries(&dir);
    assert_eq!(summary(&dir)["test_ppl"], summary(&r)["test_ppl"]);
    let _ = std::fs::remove_file(dir.with_extension("stderr"));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&r);
}

#[test]
fn a_run_killed_before_its_first_checkpoint_is_not_silently_appended_to() {
    // Item 2: restarting the same --out without --resume after a kill appended to the dead
    // run's metrics. Now it is refused; --resume starts it again from step 0; --overwrite
    // replaces it.
    let dir = fresh("early");
    let d = dir.to_str().unwrap();
    let o = faulty(
        &train_args(d, &["--steps", "10", "--valid-every", "8"]),
        "checkpoint-abort=1",
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(!dir.join("last.safetensors").exists());
    let o = diagc(&train_args(d, &["--steps", "10"]));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    let o = resume_to_end(&dir);
    assert!(String::from_utf8_lossy(&o.stderr).contains("from step 0"));
    assert_eq!(losses(&dir).len(), 10);
    let o = diagc(&train_args(d, &["--steps", "6", "--overwrite"]));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(losses(&dir).len(), 6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn edited_checkpoints_configs_and_sources_are_refused() {
    // Items 5 and 6.
    let dir = fresh("edit");
    let d = dir.to_str().unwrap();
    // A user's mechanism, copied into the run.
    let mech = dir.with_extension("mech");
    std::fs::create_dir_all(&mech).unwrap();
    let mine = mech.join("mine.diag");
    std::fs::copy(root().join("stdlib/attention/m1.diag"), &mine).unwrap();
    let text0 = std::fs::read_to_string(&mine)
        .unwrap()
        .replace("diagram m1", "diagram mine");
    std::fs::write(&mine, &text0).unwrap();
    let mut a = vec!["train", mine.to_str().unwrap(), "--out", d];
    a.extend_from_slice(TINY);
    a.extend_from_slice(&["--steps", "6"]);
    let o = diagc(&a);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(dir.join("source/mine.diag").exists());
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", d];
        a.extend_from_slice(extra);
        diagc(&a)
    };
    let before = eval(&[]);
    assert_eq!(before.status.code(), Some(0), "{}", text(&before));
    // Editing the original file changes nothing: the run uses its copy.
    std::fs::write(&mine, text0.replace("softmax", "relu")).unwrap();
    let after = eval(&[]);
    assert_eq!(after.stdout, before.stdout, "{}", text(&after));
    // Editing the copy is refused.
    let copy = dir.join("source/mine.diag");
    let saved = std::fs::read_to_string(&copy).unwrap();
    std::fs::write(&copy, format!("{saved}\n// edited\n")).unwrap();
    let o = eval(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("changed after the run started"));
    std::fs::write(&copy, &saved).unwrap();
    // config.json edited: the checkpoint no longer matches, and the field is named.
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"heads\": 2", "\"heads\": 4")).unwrap();
    for o in [eval(&[]), diagc(&["train", "--resume", d, "--steps", "8"])] {
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("model.heads"),
            "{}",
            text(&o)
        );
    }
    std::fs::write(&cfg_path, cfg).unwrap();
    // The sidecar inside the checkpoint edited (the step, without re-hashing): refused.
    let ck = dir.join("best.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"\\\"step\\\"")
        .expect("the sidecar is in the header");
    let mut edited = bytes.clone();
    let digit = edited[at + 9..]
        .iter()
        .position(u8::is_ascii_digit)
        .unwrap()
        + at
        + 9;
    edited[digit] = if edited[digit] == b'1' { b'2' } else { b'1' };
    std::fs::write(&ck, &edited).unwrap();
    let o = eval(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("checksum"));
    std::fs::write(&ck, &bytes).unwrap();
    // `eval --checkpoint last`, and the data directory the run recorded (no --data, run from
    // elsewhere, where ../shared does not resolve).
    let o = Command::new(bin())
        .args(["eval", d, "--checkpoint", "last", "--split", "valid"])
        .current_dir(std::env::temp_dir())
        .env_remove("DIAGC_DATA")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("valid perplexity "));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&mech);
}

#[test]
fn steps_are_exact_and_the_summary_says_what_ended_the_run() {
    // Item 7: --steps 150 trains 150 steps (about five epochs of this slice) with a validation
    // at the end; both checkpoints' perplexities are in the summary. Item 10: throughput over
    // training steps only.
    let dir = fresh("steps");
    let d = dir.to_str().unwrap();
    let o = diagc(&train_args(
        d,
        &["--steps", "150", "--train-tokens", "3000"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(losses(&dir).len(), 150);
    let s = summary(&dir);
    assert_eq!(s["steps"], 150);
    assert_eq!(s["stopped_by"], "steps");
    assert_eq!(s["last"]["step"], 150);
    assert!(s["epochs_done"].as_u64().unwrap() >= 5, "{s}");
    let last_line = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(last_line.contains("\"valid_ppl\"") && last_line.contains("\"step\":150"));
    let (tokens, t, wall) = (
        s["train_tokens"].as_f64().unwrap(),
        s["train_time_s"].as_f64().unwrap(),
        s["wall_time_s"].as_f64().unwrap(),
    );
    // Windows of 16 tokens (shorter at each epoch's end) of 8 columns.
    assert!(
        tokens > 140.0 * 16.0 * 8.0 && tokens <= 150.0 * 16.0 * 8.0,
        "{s}"
    );
    assert!((s["train_tokens_per_s"].as_f64().unwrap() - tokens / t).abs() < 1e-6 * tokens / t);
    assert!(t + s["eval_time_s"].as_f64().unwrap() <= wall, "{s}");
    // --epochs with --steps: whichever comes first.
    let dir2 = fresh("epochs");
    let d2 = dir2.to_str().unwrap();
    let o = diagc(&train_args(
        d2,
        &["--steps", "150", "--epochs", "1", "--train-tokens", "3000"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(summary(&dir2)["stopped_by"], "epochs");
    assert!(losses(&dir2).len() < 150);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn divergence_stops_the_run_and_says_whether_a_checkpoint_exists() {
    // Item 8: a huge learning rate ran to "test perplexity inf" with exit 0.
    let dir = fresh("diverge");
    let d = dir.to_str().unwrap();
    let o = diagc(&train_args(d, &["--steps", "60", "--lr-scale", "1e6"]));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("diverged") && e.contains("at step"), "{e}");
    assert!(e.contains("no checkpoint had been saved"), "{e}");
    assert!(!dir.join("summary.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn absurd_flags_are_refused_up_front_naming_the_flag() {
    // Items 8 and 14.
    let dir = fresh("flags");
    let d = dir.to_str().unwrap();
    for (flags, want) in [
        (&["--lr-scale", "nan"][..], "--lr-scale"),
        (&["--lr-scale=-1"], "--lr-scale"),
        (&["--clip", "nan"], "--clip"),
        (&["--layers", "0"], "--layers: must be positive"),
        (&["--layers", "100000"], "--layers"),
        (&["--d-model", "0"], "--d-model: must be positive"),
        (&["--bptt", "0"], "--bptt: must be positive"),
        (&["--batch-size", "0"], "--batch-size: must be positive"),
        (&["--heads", "3"], "does not divide --d-model 32"),
        (&["--dropout", "1"], "--dropout"),
        (&["--steps", "0"], "--steps: must be positive"),
        (&["--checkpoint-every-min", "0"], "--checkpoint-every-min"),
    ] {
        let o = diagc(&train_args(d, flags));
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{flags:?}: {e}");
        assert!(!dir.exists(), "{flags:?} created the run directory");
    }
    // An unknown mechanism: a suggestion, and no run directory.
    let o = diagc(&["train", "M1", "--out", d]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did you mean `m1`"));
    assert!(!dir.exists());
    // A resumed run keeps its configuration.
    let o = diagc(&["train", "--resume", d, "--layers", "2"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--layers cannot change"));
    // A model too big for this machine is refused before it is allocated.
    let o = diagc(&[
        "train",
        "m1",
        "--out",
        d,
        "--d-model",
        "100000",
        "--heads",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("of memory available"));
    assert!(!dir.exists());
}

#[test]
fn a_full_or_closed_output_is_an_error_or_a_quiet_stop_never_a_panic() {
    // Item 12.
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let lm = root().join("stdlib/lm.diag");
    let lm = lm.to_str().unwrap();
    for args in [
        &["explain", "--list"][..],
        &["compile", lm, "--emit", "ir", "--diagram", "ffn"],
        &["draw", lm, "--diagram", "ffn"],
    ] {
        let o = cmd(args, None).stdout(full()).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("cannot write standard output"),
            "{args:?}: {}",
            text(&o)
        );
        // A closed pipe: the command stops quietly with its own exit code.
        let mut child = cmd(args, None)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(o.stderr.is_empty(), "{args:?}: {}", text(&o));
    }
    // A full standard error (the diagnostics of `check`).
    let bad = std::env::temp_dir().join(format!("diagc-bad-{}.diag", std::process::id()));
    std::fs::write(&bad, "diagram f(x: [tok]) -> [tok] { y }\n").unwrap();
    let o = cmd(&["check", bad.to_str().unwrap()], None)
        .stderr(full())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let _ = std::fs::remove_file(&bad);
}
