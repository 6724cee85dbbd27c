//! Sweeps on a real scheduler (issue 18): a single-node Slurm cluster and GNU parallel.
//!
//! These tests need the cluster that `.ci/slurm up` starts (root; it installs Slurm, munge and
//! GNU parallel from Debian's packages), so they are `#[ignore]`d in a plain `cargo test` and
//! run by the README's test command (`.ci/slurm up && cargo test --release -- --include-ignored`).
//! When they run and the cluster is not there, they fail with the daemons' logs: they are never
//! skipped silently. What they saw (job ids, states, the report) goes to
//! `target/slurm-test.log`, which `.ci/run` prints.

mod common;

use common::root;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time: the node has the machine's cores, and the tests time their signals.
static CLUSTER: Mutex<()> = Mutex::new(());

fn bin() -> String {
    std::env::var("DIAGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_diagc").to_string())
}

fn data() -> String {
    root()
        .join("../shared/data/ptb")
        .to_string_lossy()
        .to_string()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn diagc(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}{}", cluster_logs()))
}

/// What `.ci/slurm logs` prints: the daemons' logs and sinfo.
fn cluster_logs() -> String {
    let o = Command::new("bash")
        .arg(root().join(".ci/slurm"))
        .arg("logs")
        .output();
    match o {
        Ok(o) => format!("\n---- .ci/slurm logs\n{}", text(&o)),
        Err(e) => format!("\n(.ci/slurm logs failed: {e})"),
    }
}

/// Appends to target/slurm-test.log (the evidence CI prints).
fn record(line: &str) {
    let p = root().join("target/slurm-test.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Fails with the daemons' logs unless the cluster's node is up and idle or busy.
fn require_cluster() {
    let o = Command::new("sinfo").args(["-h", "-o", "%t"]).output();
    let state = match o {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => panic!(
            "no Slurm cluster: sinfo says {} (start one with `.ci/slurm up`, as root){}",
            text(&o),
            cluster_logs()
        ),
        Err(e) => panic!(
            "no Slurm cluster: sinfo cannot run ({e}); start one with `.ci/slurm up` (as root)"
        ),
    };
    assert!(
        ["idle", "mix", "alloc"]
            .iter()
            .any(|s| state.starts_with(s)),
        "the Slurm node is `{state}`, not idle{}",
        cluster_logs()
    );
}

fn fresh(tag: &str) -> PathBuf {
    // Under target/, not /tmp: the tasks of a real cluster need a shared file system, and this
    // is the one directory the tests own.
    let d = root()
        .join("target/slurm-test")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.parent().unwrap()).unwrap();
    d
}

fn job_ids(dir: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("slurm/jobs.json")).unwrap())
            .unwrap();
    v["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// `squeue`'s lines for these jobs (empty when all have left the queue).
fn queued(ids: &[String]) -> String {
    let o = sh(
        "squeue",
        &["-h", "-r", "-o", "%i %T %r", "-j", &ids.join(",")],
    );
    if o.status.success() {
        String::from_utf8_lossy(&o.stdout).to_string()
    } else {
        // Job ids that left the queue altogether.
        String::new()
    }
}

/// Waits until every job has left the queue, recording the states it passes through.
fn wait_for(ids: &[String], dir: &Path, limit: Duration) {
    let t0 = Instant::now();
    let mut last = String::new();
    loop {
        let q = queued(ids);
        let summary = summarize(&q);
        if summary != last {
            record(&format!(
                "  [{:5.1} s] {summary}",
                t0.elapsed().as_secs_f64()
            ));
            last = summary;
        }
        if q.trim().is_empty() {
            return;
        }
        if t0.elapsed() > limit {
            panic!(
                "the jobs {ids:?} did not finish within {limit:?}; squeue:\n{q}\nstatus:\n{}{}",
                text(&diagc(&["sweep", "status", dir.to_str().unwrap()])),
                cluster_logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn summarize(squeue: &str) -> String {
    let mut m = std::collections::BTreeMap::<String, usize>::new();
    for l in squeue.lines() {
        if let Some(s) = l.split_whitespace().nth(1) {
            *m.entry(s.to_string()).or_default() += 1;
        }
    }
    if m.is_empty() {
        return "queue empty".into();
    }
    m.iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every entry of the sweep is done.
fn all_done(dir: &Path) -> usize {
    let sw = diagc::sweep::exec::Sweep::open(dir).unwrap();
    let st = sw.statuses().unwrap();
    for (e, s) in sw.entries.iter().zip(&st) {
        assert_eq!(
            *s,
            diagc::sweep::Status::Done,
            "entry {} ({}) is {:?}; its log:\n{}",
            e.index,
            e.name,
            s,
            std::fs::read_dir(dir.join("slurm"))
                .map(|rd| rd
                    .flatten()
                    .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n"))
                .unwrap_or_default()
        );
    }
    st.len()
}

#[test]
#[ignore = "needs the Slurm cluster of `.ci/slurm up` (the README's test command starts it)"]
fn smoke_sweep_as_slurm_job_arrays() {
    let _g = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    require_cluster();
    let d = fresh("smoke");
    let ds = d.to_str().unwrap();
    let o = diagc(&["sweep", "plan", "sweeps/smoke.toml", "-o", ds]);
    assert!(o.status.success(), "{}", text(&o));
    // The cluster's MaxArraySize (10, from .ci/slurm) splits the 24 entries into 5 arrays.
    let o = diagc(&[
        "sweep",
        "emit",
        ds,
        "--to",
        "slurm",
        "--array-limit",
        "2",
        "--time",
        "10",
        "--data",
        &data(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("from scontrol show config"),
        "{}",
        text(&o)
    );
    let o = diagc(&["sweep", "submit", ds]);
    assert!(o.status.success(), "{}{}", text(&o), cluster_logs());
    let ids = job_ids(&d);
    record(&format!(
        "smoke sweep: submitted {} job arrays: {}\n{}",
        ids.len(),
        ids.join(", "),
        String::from_utf8_lossy(&o.stdout).trim_end()
    ));
    assert_eq!(ids.len(), 5, "{}", text(&o));
    // While it runs, the status shows the scheduler's view and the report builds (pending).
    let st = diagc(&["sweep", "status", ds]);
    assert!(
        text(&st).contains(&format!("job {}", ids[0])),
        "{}",
        text(&st)
    );
    let early = diagc(&["sweep", "report", ds]);
    assert!(
        early.status.success(),
        "report while running: {}",
        text(&early)
    );
    wait_for(&ids, &d, Duration::from_secs(900));
    let n = all_done(&d);
    let o = diagc(&["sweep", "report", ds]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(d.join("report.html")).unwrap();
    assert!(html.contains("<svg"));
    let st = diagc(&["sweep", "status", ds]);
    assert!(
        text(&st).contains("none queued or running"),
        "{}",
        text(&st)
    );
    // Every task's log is named by array job and task, and says where its index came from.
    let logs: Vec<String> = std::fs::read_dir(d.join("slurm"))
        .unwrap()
        .flatten()
        .map(|f| f.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert_eq!(logs.len(), n, "{logs:?}");
    let one = std::fs::read_to_string(d.join("slurm").join(&logs[0])).unwrap();
    assert!(one.contains("(from SLURM_ARRAY_TASK_ID="), "{one}");
    record(&format!(
        "smoke sweep: {n} of {n} entries done; report {} ({} bytes)\n{}",
        d.join("report.html").display(),
        html.len(),
        text(&st).trim_end()
    ));
    let _ = std::fs::remove_dir_all(&d);
}

/// A sweep of one run long enough to be interrupted.
const PREEMPT: &str = r#"name = "preempt"
mechanisms = ["m1"]
layers = [1]
seeds = [0]
[train]
d_model = 32
heads = 2
d_ff = 64
bptt = 16
batch_size = 4
steps = 4000
warmup = 10
valid_every = 1000
train_tokens = 20000
eval_tokens = 4000
"#;

/// (step, loss) of a run's metrics.jsonl.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

fn the_run(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
}

#[test]
#[ignore = "needs the Slurm cluster of `.ci/slurm up` (the README's test command starts it)"]
fn a_task_signalled_with_usr1_requeues_and_resumes_to_the_same_losses() {
    let _g = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    require_cluster();
    let d = fresh("preempt");
    let ds = d.to_str().unwrap();
    std::fs::create_dir_all(&d).unwrap();
    let file = d.with_extension("toml");
    std::fs::write(&file, PREEMPT).unwrap();
    let o = diagc(&["sweep", "plan", file.to_str().unwrap(), "-o", ds]);
    assert!(o.status.success(), "{}", text(&o));
    let o = diagc(&["sweep", "emit", ds, "--to", "slurm", "--data", &data()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = diagc(&["sweep", "submit", ds]);
    assert!(o.status.success(), "{}{}", text(&o), cluster_logs());
    let ids = job_ids(&d);
    let task = format!("{}_0", ids[0]);
    // Once it has trained a few hundred steps, the batch shell gets SIGUSR1 (what
    // `--signal=B:USR1@120` sends before the time limit).
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_dir(d.join("runs"))
            .ok()
            .and_then(|mut rd| rd.next())
            .and_then(|r| r.ok())
            .map_or(0, |r| losses(&r.path()).len());
        if n >= 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the task did not start training within 5 minutes; squeue: {}{}",
            queued(&ids),
            cluster_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = sh("scancel", &["--signal=USR1", "--batch", &task]);
    assert!(o.status.success(), "scancel: {}", text(&o));
    record(&format!(
        "preemption: sent USR1 to task {task} at {} trained steps",
        losses(&the_run(&d)).len()
    ));
    wait_for(&ids, &d, Duration::from_secs(600));
    all_done(&d);
    let log = std::fs::read_to_string(d.join("slurm").join(format!("{task}.log"))).unwrap();
    record(&format!("preemption: the task's log:\n{log}"));
    assert!(log.contains("stopped by signal 10 at step"), "{log}");
    assert!(log.contains("requeueing job"), "{log}");
    assert!(
        log.contains("restart 1"),
        "came back as a requeued job: {log}"
    );
    assert!(log.contains("resuming"), "{log}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::fs::read_dir(d.join("state"))
                .unwrap()
                .flatten()
                .find(|f| f.path().extension().is_some_and(|x| x == "json"))
                .unwrap()
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["attempts"], 2, "{state}");

    // The same entry uninterrupted, in this process's sweep runner, one thread as the task had.
    let r = fresh("preempt-ref");
    let rs = r.to_str().unwrap();
    let o = diagc(&["sweep", "plan", file.to_str().unwrap(), "-o", rs]);
    assert!(o.status.success(), "{}", text(&o));
    let o = diagc(&[
        "sweep",
        "run",
        rs,
        "--threads",
        "1",
        "--no-report",
        "--data",
        &data(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let a = losses(&the_run(&d));
    let b = losses(&the_run(&r));
    assert_eq!(a.len(), 4000, "one loss per step, none twice");
    assert_eq!(a.len(), b.len());
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differ, 0,
        "the resumed run's losses differ from the uninterrupted run's"
    );
    record(&format!(
        "preemption: 4000 losses of the requeued run equal the uninterrupted run's (last {:.6})",
        a.last().unwrap().1
    ));
    for x in [&d, &r] {
        let _ = std::fs::remove_dir_all(x);
    }
    let _ = std::fs::remove_file(&file);
}

#[test]
#[ignore = "needs GNU parallel, which `.ci/slurm up` installs (the README's test command runs it)"]
fn smoke_sweep_with_gnu_parallel() {
    let _g = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let d = fresh("parallel");
    let ds = d.to_str().unwrap();
    let o = diagc(&["sweep", "plan", "sweeps/smoke.toml", "-o", ds]);
    assert!(o.status.success(), "{}", text(&o));
    let o = diagc(&[
        "sweep",
        "emit",
        ds,
        "--to",
        "parallel",
        "--jobs",
        "2",
        "--host",
        ":",
        "--data",
        &data(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("bash")
        .arg(d.join("sweep.parallel"))
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    assert!(
        o.status.success(),
        "the GNU parallel script failed (is GNU parallel installed? `.ci/slurm up` installs it): {}",
        text(&o)
    );
    let n = all_done(&d);
    // Each stage's job log: every line exit 0.
    let mut lines = 0;
    for stage in ["A", "B", "timing"] {
        let log = std::fs::read_to_string(d.join(format!("parallel.{stage}.joblog"))).unwrap();
        for l in log.lines().skip(1) {
            assert_eq!(l.split('\t').nth(6), Some("0"), "{stage}: {l}");
            lines += 1;
        }
    }
    assert_eq!(lines, n);
    // Again: nothing left to do, parallel resumes from its logs.
    let o = Command::new("bash")
        .arg(d.join("sweep.parallel"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    record(&format!("GNU parallel (-S :): {n} of {n} entries done"));
    let _ = std::fs::remove_dir_all(&d);
}
