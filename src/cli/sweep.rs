//! `diagc sweep plan | run | run-one | status | report | emit | submit`.
//!
//! `run` starts one `diagc sweep run-one` process per entry (at most `--jobs` at once, their
//! output in `DIR/logs/`), so that a crash, a leak or an out-of-memory kill ends one run, not
//! the sweep; `run-one` trains in its own process through the same code as `diagc train`.

use super::train::{Ran, TrainArgs, execute, stop_on_signals, stopped_code};
use super::*;
use crate::sweep::exec::Sweep;
use crate::sweep::plan::{self, Header};
use crate::sweep::{Entry, Stage, State, Status, cluster, results, spec, store};
use clap::Args;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

// Parsed once per process: the size of the `Emit` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(super) enum SweepCmd {
    /// Expand a sweep file (TOML: mechanisms, layers, seeds, [train] settings, [tuning],
    /// [timing]; see sweeps/*.toml) into DIR/plan.jsonl, one fully specified run per line,
    /// and copy the file to DIR/sweep.toml. Every run's settings and every mechanism are
    /// checked first; an error names the file's line and column.
    Plan {
        file: PathBuf,
        /// The sweep directory [default: runs/sweeps/NAME].
        #[arg(short, long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace the plan of DIR when the sweep file changed (finished runs whose definition
        /// did not change are kept).
        #[arg(long)]
        force: bool,
    },
    /// Run a sweep's entries here, skipping finished ones and resuming interrupted ones; stage
    /// B of a model starts when its stage A has chosen the learning rate; the timing phase runs
    /// last, alone. Then writes results.csv, results.jsonl, aggregate.csv and report.html.
    /// PATH is a sweep directory, or a sweep file (planned into --out first). Ctrl-C or
    /// SIGTERM stops every run at its next step with its state saved (exit 130 / 143). Exit 0
    /// when every entry is done, 1 when some failed or diverged.
    Run {
        /// A sweep directory, or a .toml sweep file.
        path: PathBuf,
        /// With a sweep file: the sweep directory [default: runs/sweeps/NAME].
        #[arg(short, long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// With a sweep file: replace a different plan in DIR.
        #[arg(long)]
        force: bool,
        /// Runs at once; each gets the machine's threads divided by N.
        #[arg(short, long, default_value_t = 1)]
        jobs: usize,
        /// Threads per run [default: the machine's threads / --jobs].
        #[arg(long)]
        threads: Option<usize>,
        /// Run the entries that failed again (diverged ones stay as they are: same seed, same
        /// result).
        #[arg(long)]
        retry_failed: bool,
        /// The PTB directory given to every run (default: each run's own lookup).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Do not write report.html at the end.
        #[arg(long)]
        no_report: bool,
        /// Download the PTB first when it is not found (as `diagc data fetch ptb` does).
        #[arg(long)]
        download: bool,
    },
    /// Run one entry of a sweep's plan in this process (what a cluster scheduler calls; the
    /// log says where the index came from).
    /// Exit 0 when it finished (or had), 1 when it failed or diverged, 75 when another process
    /// is running it or stage A has not chosen its learning rate yet, 128 + signal when
    /// stopped.
    RunOne {
        dir: PathBuf,
        /// The entry's index in plan.jsonl [default: SLURM_ARRAY_TASK_ID, else
        /// JOB_COMPLETION_INDEX (Kubernetes), else PARALLEL_SEQ - 1 (GNU parallel), each plus
        /// DIAGC_INDEX_OFFSET when set].
        #[arg(long)]
        index: Option<usize>,
        /// The PTB directory (default: the run's own lookup).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// How far a sweep is: done, running, failed, diverged, interrupted, waiting, pending.
    Status {
        dir: PathBuf,
        /// List every entry, not only those that are not done.
        #[arg(long)]
        all: bool,
    },
    /// Write the scripts that run the sweep's plan on a scheduler: `--to slurm` writes
    /// DIR/sweep.sbatch (a job array task: `run-one` with requeue on SIGUSR1/SIGTERM) and
    /// DIR/slurm/submit.sh (its arrays, stage after stage); `--to parallel` writes
    /// DIR/sweep.parallel (GNU parallel, --joblog, --resume-failed, -S for ssh machines);
    /// `--to k8s` writes DIR/sweep-k8s.yaml (one Indexed Job per stage). The binary, DIR and
    /// --data must be at the same paths on the machines that run the tasks (a shared file
    /// system; docs/cluster.md).
    Emit(EmitArgs),
    /// Submit a sweep emitted with `--to slurm` (`sbatch`, stage after stage with
    /// `--dependency=afterany`) and record the job ids in DIR/slurm/jobs.json, which `sweep
    /// status` reads to show the scheduler's view.
    Submit { dir: PathBuf },
    /// Gather the results (results.csv, results.jsonl, aggregate.csv, tuning.json) and write
    /// DIR/report.html; works while runs are still going (they show as pending).
    Report {
        dir: PathBuf,
        /// Where to write the report [default: DIR/report.html].
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum Scheduler {
    Slurm,
    Parallel,
    K8s,
}

#[derive(Args)]
pub(super) struct EmitArgs {
    dir: PathBuf,
    /// The scheduler.
    #[arg(long, value_enum)]
    to: Scheduler,
    /// The diagc binary the tasks run [default: this one].
    #[arg(long, value_name = "PATH")]
    diagc: Option<PathBuf>,
    /// The PTB directory every task reads (default: each run's own lookup on its machine).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Slurm: the partition.
    #[arg(long)]
    partition: Option<String>,
    /// Slurm: the time limit of one task (`--time`, e.g. 2:00:00); a task gets SIGUSR1
    /// --signal-before seconds before it, saves its run and requeues itself.
    #[arg(long)]
    time: Option<String>,
    /// Slurm and k8s: GPUs per task (give `--device cuda` in the sweep file's [train] too).
    #[arg(long)]
    gpus_per_task: Option<u32>,
    /// CPU cores per task (each run uses that many threads).
    #[arg(long, default_value_t = 1)]
    cpus_per_task: u32,
    /// Slurm and k8s: memory per task (Slurm's `--mem`, e.g. 8G; k8s: e.g. 8Gi).
    #[arg(long)]
    mem: Option<String>,
    /// Slurm: at most this many tasks of an array at once (`%K`); k8s: the Jobs' parallelism.
    #[arg(long, value_name = "K")]
    array_limit: Option<usize>,
    /// Slurm: how many seconds before the time limit a task is told to save and requeue
    /// (`--signal=B:USR1@N`); leave a few training steps' time.
    #[arg(long, value_name = "S", default_value_t = 120)]
    signal_before: u32,
    /// Slurm: the account to charge.
    #[arg(long)]
    account: Option<String>,
    /// Slurm: a further `#SBATCH ...` line for the header (repeatable).
    #[arg(long, value_name = "LINE")]
    extra: Vec<String>,
    /// Slurm: the cluster's MaxArraySize [default: `scontrol show config`'s, else 1001]; a
    /// stage whose indices reach it is split into several arrays.
    #[arg(long, value_name = "N")]
    max_array_size: Option<usize>,
    /// GNU parallel: runs at once per machine.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// GNU parallel: an ssh machine to run on (repeatable; `:` is this machine).
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// k8s: the container image (with diagc at the --diagc path).
    #[arg(long, default_value = "diagc:latest")]
    image: String,
    /// k8s: the PersistentVolumeClaim holding the sweep directory (mounted at DIR's parent).
    #[arg(long, default_value = "diagc-sweep")]
    claim: String,
}

/// `diagc train`'s arguments as clap parses them from a plan's entry.
#[derive(Parser)]
#[command(name = "diagc train")]
struct TrainLine {
    #[command(flatten)]
    a: TrainArgs,
}

fn train_args(args: &[String]) -> Result<TrainArgs, Error> {
    TrainLine::try_parse_from(std::iter::once("train".to_string()).chain(args.iter().cloned()))
        .map(|t| t.a)
        .map_err(|e| {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            Error::Usage(first.to_string())
        })
}

pub(super) fn sweep_cmd(cmd: SweepCmd) -> i32 {
    let r = match cmd {
        SweepCmd::Plan { file, out, force } => plan_cmd(&file, out.as_deref(), force).map(|_| 0),
        SweepCmd::Run {
            path,
            out,
            force,
            jobs,
            threads,
            retry_failed,
            data,
            no_report,
            download,
        } => (if download {
            super::data::download_for_train(data.as_deref(), None)
        } else {
            Ok(())
        })
        .and_then(|_| {
            run_cmd(
                &path,
                out.as_deref(),
                force,
                &RunOpts {
                    jobs,
                    threads,
                    retry_failed,
                    data,
                    report: !no_report,
                },
            )
        }),
        SweepCmd::RunOne { dir, index, data } => run_one_cmd(&dir, index, data.as_deref()),
        SweepCmd::Emit(a) => emit_cmd(&a).map(|_| 0),
        SweepCmd::Submit { dir } => submit_cmd(&dir).map(|_| 0),
        SweepCmd::Status { dir, all } => status_cmd(&dir, all),
        SweepCmd::Report { dir, out } => report_cmd(&dir, out.as_deref()).map(|_| 0),
    };
    r.unwrap_or_else(fail)
}

/// The stdlib mechanisms a sweep file may name.
fn stdlib_mechanisms() -> Vec<String> {
    crate::train::model::stdlib_mechanisms()
}

/// Plans `file` into `out` (default runs/sweeps/NAME); returns the sweep directory.
fn plan_cmd(file: &Path, out: Option<&Path>, force: bool) -> Result<PathBuf, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::Io {
        action: "read",
        path: file.to_path_buf(),
        source: e,
        context: String::new(),
    })?;
    let stem = file
        .file_stem()
        .map_or("sweep".to_string(), |s| s.to_string_lossy().to_string());
    let base = file.parent().unwrap_or(Path::new("."));
    let stdlib = stdlib_mechanisms();
    let shown = file.display().to_string();
    let spec = spec::parse(
        &text,
        &stem,
        &spec::Context {
            stdlib: &stdlib,
            base,
        },
    )
    .map_err(|e| spec::error(&shown, &text, &e))?;
    let entries = plan::expand(&spec);
    validate(&spec, &entries).map_err(|e| spec::error(&shown, &text, &e))?;
    let dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("runs/sweeps").join(&spec.name));
    let sha = store::sha256_hex(text.as_bytes());
    if store::is_sweep(&dir) {
        let old: Option<Header> = store::read_json(&dir, "plan.json")?;
        if old.as_ref().is_some_and(|h| h.sweep_sha256 == sha) {
            errln!(
                "{} already holds this plan ({} entries); nothing changed",
                dir.display(),
                entries.len()
            );
            return Ok(dir);
        }
        if !force {
            return Err(Error::Usage(format!(
                "{} holds the plan of another sweep file (or of an earlier version of this one); \
                 give --force to replace it (finished runs whose definition did not change are \
                 kept), or another -o DIR",
                dir.display()
            )));
        }
    } else if store::non_empty_dir(&dir) {
        return Err(Error::Usage(format!(
            "{} exists and is not a sweep directory; give another -o DIR",
            dir.display()
        )));
    }
    let count = |s: Stage| entries.iter().filter(|e| e.stage == s).count();
    let header = Header {
        format: plan::FORMAT,
        name: spec.name.clone(),
        description: spec.description.clone(),
        sweep_sha256: sha,
        source: shown,
        diagc_version: env!("CARGO_PKG_VERSION").into(),
        created: store::now_rfc3339(),
        entries: entries.len(),
        lr_scales: spec.tuning.as_ref().map(|t| t.lr_scales.clone()),
        tuning_seed: spec.tuning.as_ref().map(|t| t.seed),
        stage_a_reused: spec.tuning.as_ref().is_some_and(|t| t.steps.is_none()),
        reference: spec.timing.as_ref().map(|t| t.reference.name.clone()),
        timing_rounds: spec.timing.as_ref().map(|t| t.rounds),
        timing_steps: spec.timing.as_ref().map(|t| t.steps),
        seeds: spec.seeds.clone(),
    };
    store::write_plan(&dir, &text, &header, &entries)?;
    let stray = store::stray_runs(&dir, &entries);
    if !stray.is_empty() {
        errln!(
            "note: {} run directories under {}/runs are no longer in the plan (kept, not reported)",
            stray.len(),
            dir.display()
        );
    }
    errln!(
        "planned {} entries into {} ({} models; {} single, {} stage A, {} stage B, {} timing); \
         run them with `diagc sweep run {}`",
        entries.len(),
        dir.display(),
        entries
            .iter()
            .map(|e| &e.model)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        count(Stage::Single),
        count(Stage::A),
        count(Stage::B),
        count(Stage::Timing),
        dir.display()
    );
    Ok(dir)
}

/// Checks every entry's `diagc train` arguments (the flags' ranges and the model, checked and
/// instantiated once per distinct model) before anything is written.
fn validate(sp: &spec::Spec, entries: &[Entry]) -> Result<(), spec::SpecError> {
    let mut seen_models = std::collections::HashSet::new();
    let mut seen_args = std::collections::HashSet::new();
    let mech_span = |arg: &str| {
        sp.mechanisms
            .iter()
            .chain(sp.timing.as_ref().map(|t| &t.reference))
            .find(|m| m.arg == arg)
            .map(|m| m.span.clone())
    };
    let mut check = |args: Vec<String>| -> Result<(), spec::SpecError> {
        if !seen_args.insert(args.clone()) {
            return Ok(());
        }
        let a = train_args(&args).map_err(|e| spec::locate(sp, &e.to_string()))?;
        let cfg = a.config().map_err(|e| spec::locate(sp, &e.to_string()))?;
        cfg.validate()
            .map_err(|e| spec::locate(sp, &e.to_string()))?;
        let model = serde_json::to_string(&cfg.model).unwrap_or_default();
        if seen_models.insert(model) {
            crate::train::model::language_model(&cfg.model).map_err(|e| spec::SpecError {
                message: format!("{}: {e}", cfg.model.mech),
                span: mech_span(&cfg.model.mech),
            })?;
        }
        Ok(())
    };
    for e in entries {
        let lr = e.lr_scale.unwrap_or(1.0);
        match e.stage {
            Stage::Timing => {
                check(e.args.clone())?;
                if let Some(t) = &sp.timing {
                    let mut r = e.args.clone();
                    r[0] = t.reference.arg.clone();
                    check(r)?;
                }
            }
            _ => check(plan::train_args(e, lr, Path::new("x")))?,
        }
    }
    Ok(())
}

struct RunOpts {
    jobs: usize,
    threads: Option<usize>,
    retry_failed: bool,
    data: Option<PathBuf>,
    report: bool,
}

/// A run-one process of `sweep run`.
struct Job {
    child: Child,
    index: usize,
    started: Instant,
}

fn run_cmd(path: &Path, out: Option<&Path>, force: bool, o: &RunOpts) -> Result<i32, Error> {
    if o.jobs == 0 || o.threads == Some(0) {
        return Err(Error::Usage("--jobs and --threads must be positive".into()));
    }
    let dir = if path.is_dir() {
        if out.is_some() {
            return Err(Error::Usage(
                "-o is for a sweep file; PATH is already a sweep directory".into(),
            ));
        }
        path.to_path_buf()
    } else {
        plan_cmd(path, out, force)?
    };
    let sw = Sweep::open(&dir)?;
    let stop = stop_on_signals()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = o.threads.unwrap_or((cores / o.jobs).max(1));
    let exe = std::env::current_exe()
        .map_err(|e| Error::External(format!("cannot find diagc itself: {e}")))?;
    let total = sw.entries.len();
    let bar = progress_bar(total as u64);
    let mut jobs: Vec<Job> = Vec::new();
    let mut launched = std::collections::HashSet::new();
    let mut signal = 0usize;
    loop {
        let st = sw.statuses()?;
        let done = st.iter().filter(|s| **s == Status::Done).count();
        bar.set_position(done as u64);
        signal = signal.max(stop.load(std::sync::atomic::Ordering::Relaxed));
        if signal != 0 {
            for j in &jobs {
                forward(&j.child, signal);
            }
        }
        // Reap finished processes.
        let mut k = 0;
        while k < jobs.len() {
            if let Some(status) = jobs[k]
                .child
                .try_wait()
                .map_err(|e| Error::External(format!("waiting for a run: {e}")))?
            {
                let j = jobs.swap_remove(k);
                let e = &sw.entries[j.index];
                reaped(&sw, e, status, j.started.elapsed(), &bar)?;
            } else {
                k += 1;
            }
        }
        if signal != 0 {
            if jobs.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        // Training entries first (any number at once), then timing alone.
        let training_left = sw.entries.iter().zip(&st).any(|(e, s)| {
            e.stage != Stage::Timing
                && !matches!(s, Status::Done | Status::Failed | Status::Diverged)
        });
        let next = sw.entries.iter().zip(&st).find(|(e, s)| {
            !launched.contains(&e.index)
                && Sweep::runnable(**s, o.retry_failed)
                && (e.stage != Stage::Timing || (!training_left && jobs.is_empty()))
        });
        let limit = if next.is_some_and(|(e, _)| e.stage == Stage::Timing) {
            1
        } else {
            o.jobs
        };
        if let Some((e, _)) = next
            && jobs.len() < limit
        {
            launched.insert(e.index);
            let t = if e.stage == Stage::Timing {
                o.threads.unwrap_or(cores)
            } else {
                threads
            };
            let child = spawn(&exe, &dir, e, t, o.data.as_deref())?;
            bar.set_message(e.name.clone());
            jobs.push(Job {
                child,
                index: e.index,
                started: Instant::now(),
            });
            continue;
        }
        if jobs.is_empty() {
            // Nothing to start and nothing of ours running: finished, or waiting on entries
            // another process is running.
            let elsewhere = st.contains(&Status::Running);
            let waiting = st.contains(&Status::Waiting);
            if !(elsewhere && (waiting || next.is_some())) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    let g = results::gather(&sw)?;
    results::write(&sw, &g)?;
    if o.report
        && let Err(e) = write_report(&sw, &g, None)
    {
        errln!("diagc: warning: the report could not be written: {e}");
    }
    print_counts(&sw, &g.statuses);
    if signal != 0 {
        errln!(
            "stopped by signal {signal}; every run saved its state; continue with `diagc sweep run {}`",
            dir.display()
        );
        return Ok(stopped_code(signal));
    }
    let bad = g
        .statuses
        .iter()
        .filter(|s| matches!(s, Status::Failed | Status::Diverged))
        .count();
    Ok(if bad > 0 { 1 } else { 0 })
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} done  {elapsed_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Sends `signal` to a run-one process (it saves its run and exits).
fn forward(child: &Child, signal: usize) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let sig = match signal as i32 {
            x if x == signal_hook::consts::SIGINT => rustix::process::Signal::INT,
            x if x == signal_hook::consts::SIGUSR1 => rustix::process::Signal::USR1,
            _ => rustix::process::Signal::TERM,
        };
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn spawn(
    exe: &Path,
    dir: &Path,
    e: &Entry,
    threads: usize,
    data: Option<&Path>,
) -> Result<Child, Error> {
    let (log, _) = store::log_file(dir, e)?;
    let log2 = log
        .try_clone()
        .map_err(|err| Error::External(format!("cannot open the log of {}: {err}", e.name)))?;
    let mut c = Process::new(exe);
    c.arg("sweep")
        .arg("run-one")
        .arg(dir)
        .arg("--index")
        .arg(e.index.to_string())
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("DIAGC_SWEEP_CHILD", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(d) = data {
        c.arg("--data").arg(d);
    }
    c.spawn()
        .map_err(|err| Error::External(format!("cannot start a run of {}: {err}", exe.display())))
}

/// Records what a run-one process left: it records its own outcome; a process that died
/// without one (killed, out of memory, a panic) is recorded as failed here.
fn reaped(
    sw: &Sweep,
    e: &Entry,
    status: std::process::ExitStatus,
    took: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<(), Error> {
    let now = sw.status(e)?;
    let line = match now {
        Status::Done => {
            let summary = match e.stage {
                Stage::Timing => None,
                _ => store::summary(&sw.dir, e)?,
            };
            let what = match summary {
                Some(s) => format!(
                    "valid {:.2}, test {:.2}",
                    s.get("best_valid_ppl")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(f64::NAN),
                    s.get("test_ppl")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(f64::NAN)
                ),
                None => "timed".into(),
            };
            format!("done     {} ({what}, {:.0} s)", e.name, took.as_secs_f64())
        }
        Status::Failed | Status::Diverged | Status::Interrupted => {
            let st = sw.state(e)?;
            format!(
                "{:8} {}: {}",
                now.as_str(),
                e.name,
                st.error
                    .as_deref()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            )
        }
        _ => {
            let code = status.code();
            if code == Some(75) {
                // Busy elsewhere, or stage A not chosen: nothing to record.
                return Ok(());
            }
            let why = match code {
                Some(c) => {
                    format!("the run's process exited with code {c} without recording an outcome")
                }
                None => "the run's process was killed (by a signal, or out of memory)".to_string(),
            };
            let tail = store::log_tail(&sw.dir, e, 5);
            let mut st = sw.state(e)?;
            st.status = Some(Status::Failed);
            st.error = Some(if tail.is_empty() {
                why.clone()
            } else {
                format!("{why}; its log ends:\n{tail}")
            });
            st.ended = Some(store::now_rfc3339());
            store::write_state(&sw.dir, e, &st)?;
            format!("failed   {}: {why}", e.name)
        }
    };
    bar.suspend(|| errln!("{line}"));
    Ok(())
}

fn print_counts(sw: &Sweep, st: &[Status]) {
    let mut parts = Vec::new();
    for s in [
        Status::Done,
        Status::Running,
        Status::Failed,
        Status::Diverged,
        Status::Interrupted,
        Status::Waiting,
        Status::Pending,
    ] {
        let n = st.iter().filter(|x| **x == s).count();
        if n > 0 {
            parts.push(format!("{n} {}", s.as_str()));
        }
    }
    errln!(
        "{}: {} of {} entries: {}",
        sw.header.name,
        sw.dir.display(),
        st.len(),
        parts.join(", ")
    );
}

/// Runs the entry `index` (or the one the scheduler's environment names).
fn run_one_cmd(dir: &Path, index: Option<usize>, data: Option<&Path>) -> Result<i32, Error> {
    let stop = stop_on_signals()?;
    let index = match index {
        Some(i) => i,
        None => {
            let src = cluster::index_from_env(&|k| std::env::var(k).ok()).map_err(Error::Usage)?;
            errln!("entry {} (from {})", src.index, src.how);
            src.index
        }
    };
    if std::env::var_os("DIAGC_SWEEP_CHILD").is_some() {
        // Started by `sweep run`: stop (saving the run) when it dies, even by SIGKILL.
        let _ =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    }
    let sw = Sweep::open(dir)?;
    let e = sw.entry(index)?.clone();
    let Some(_lock) = store::try_lock(dir, &e)? else {
        errln!("entry {index} ({}) is being run by another process", e.name);
        return Ok(75);
    };
    if sw.status(&e)? == Status::Done {
        errln!("entry {index} ({}) is already done", e.name);
        return Ok(0);
    }
    let lr = match e.stage {
        Stage::Timing => None,
        _ => match sw.lr_of(&e)? {
            Ok(lr) => Some(lr),
            Err(why) if sw.tuned(&e.model)? == crate::sweep::exec::Tuned::Waiting => {
                errln!("entry {index} ({}): {why}", e.name);
                return Ok(75);
            }
            Err(why) => {
                errln!("diagc: entry {index} ({}): {why}", e.name);
                let mut st = sw.state(&e)?;
                st.status = Some(Status::Failed);
                st.error = Some(why);
                st.ended = Some(store::now_rfc3339());
                store::write_state(dir, &e, &st)?;
                return Ok(1);
            }
        },
    };
    let mut st: State = sw.state(&e)?;
    st.attempts += 1;
    st.status = None;
    st.error = None;
    st.lr_scale = lr;
    st.started = Some(store::now_rfc3339());
    st.ended = None;
    st.host = store::host();
    st.diagc_version = Some(env!("CARGO_PKG_VERSION").to_string());
    st.diagc_commit = crate::version::build_commit();
    store::write_state(dir, &e, &st)?;
    let t0 = Instant::now();
    let outcome = match e.stage {
        Stage::Timing => run_timing(&sw, &e).map(|_| Ran::Finished),
        _ => {
            let out = dir.join(&e.run_dir);
            let mut a = if store::run_started(dir, &e) {
                train_args(&["--resume".to_string(), out.to_string_lossy().to_string()])?
            } else {
                train_args(&plan::train_args(&e, lr.unwrap_or(1.0), &out))?
            };
            a.data = data.map(Path::to_path_buf);
            execute(&a, &stop)
        }
    };
    st.wall_time_s = Some(t0.elapsed().as_secs_f64());
    st.peak_rss_bytes = store::peak_rss();
    st.ended = Some(store::now_rfc3339());
    let code = match &outcome {
        Ok(Ran::Finished) => {
            st.status = Some(Status::Done);
            0
        }
        Ok(Ran::Interrupted(sig)) => {
            st.status = Some(Status::Interrupted);
            st.error = Some(format!(
                "stopped by signal {sig}; resumed by the next `sweep run`"
            ));
            stopped_code(*sig)
        }
        Err(err) => {
            st.status = Some(if matches!(err, Error::Train(_)) {
                Status::Diverged
            } else {
                Status::Failed
            });
            st.error = Some(err.to_string());
            print_error(err);
            1
        }
    };
    store::write_state(dir, &e, &st)?;
    Ok(code)
}

/// The timing entry `e`: its model against the reference at the same settings.
fn run_timing(sw: &Sweep, e: &Entry) -> Result<(), Error> {
    let reference = sw.header.reference.clone().unwrap_or_else(|| "m1".into());
    let model = train_args(&e.args)?.config()?.model;
    let mut rargs = e.args.clone();
    // The reference by the name train takes: a stdlib name, or the sweep's path argument.
    rargs[0] = sw
        .entries
        .iter()
        .find(|x| x.model.mech == reference)
        .and_then(|x| x.args.first().cloned())
        .unwrap_or(reference);
    let refm = train_args(&rargs)?.config()?.model;
    if e.args
        .windows(2)
        .any(|w| w[0] == "--device" && w[1] == "cuda")
    {
        errln!(
            "note: the timing phase measures the training step on the CPU (timing on the GPU is not \
             implemented yet); the record says so in its `device`"
        );
    }
    let rounds = sw.header.timing_rounds.unwrap_or(5);
    let steps = sw.header.timing_steps.unwrap_or(4);
    errln!(
        "timing {} against {} ({rounds} rounds of {steps} steps each)",
        e.model.label(),
        refm.mech
    );
    let rec = crate::sweep::timing::measure(&e.model, &model, &refm, rounds, steps, &mut |k| {
        errln!("  round {k}/{rounds}");
    })?;
    errln!(
        "  step time x{:.3} (IQR {:.3} to {:.3}), memory x{:.3}",
        rec.time_ratio.median,
        rec.time_ratio.q1,
        rec.time_ratio.q3,
        rec.memory_ratio
    );
    store::write_json(&sw.dir, &e.run_dir, &rec)?;
    Ok(())
}

/// An absolute form of `p` (canonical when it exists) for a script that runs elsewhere.
fn absolute(p: &Path) -> Result<String, Error> {
    let abs = std::fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .map_err(|e| Error::Io {
            action: "resolve",
            path: p.to_path_buf(),
            source: e,
            context: String::new(),
        })?;
    let s = abs.to_string_lossy().to_string();
    if s.contains('\n') || s.contains('\'') {
        return Err(Error::Usage(format!(
            "{} holds a newline or a quote, which the scripts cannot carry",
            abs.display()
        )));
    }
    Ok(s)
}

/// Slurm's MaxArraySize from `scontrol show config`, when Slurm is here.
fn slurm_max_array_size() -> Option<usize> {
    let out = Process::new("scontrol")
        .args(["show", "config"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.trim_start().starts_with("MaxArraySize"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().parse().ok())
}

fn emit_cmd(a: &EmitArgs) -> Result<(), Error> {
    let sw = Sweep::open(&a.dir)?;
    if a.cpus_per_task == 0 || a.jobs == 0 || a.array_limit == Some(0) {
        return Err(Error::Usage(
            "--cpus-per-task, --jobs and --array-limit must be positive".into(),
        ));
    }
    if a.max_array_size == Some(0) {
        return Err(Error::Usage("--max-array-size must be positive".into()));
    }
    cluster::check_extra(&a.extra).map_err(Error::Usage)?;
    let exe = match &a.diagc {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::External(format!("cannot find diagc itself: {e}")))?,
    };
    let cwd = std::env::current_dir()
        .map_err(|e| Error::External(format!("cannot read the current directory: {e}")))?;
    let common = cluster::Common {
        name: sw.header.name.clone(),
        cwd: absolute(&cwd)?,
        diagc: absolute(&exe)?,
        dir: absolute(&a.dir)?,
        data: a.data.as_deref().map(absolute).transpose()?,
    };
    if sw.entries.iter().any(|e| {
        e.args
            .first()
            .is_some_and(|m| m.ends_with(".diag") && !Path::new(m).is_absolute())
    }) {
        errln!(
            "note: the plan names mechanism files by relative paths; the tasks start in {} to \
             find them",
            common.cwd
        );
    }
    let written = match a.to {
        Scheduler::Slurm => {
            let (max, from) = match a.max_array_size {
                Some(m) => (m, "--max-array-size"),
                None => match slurm_max_array_size() {
                    Some(m) => (m, "scontrol show config"),
                    None => (
                        cluster::SLURM_DEFAULT_MAX_ARRAY_SIZE,
                        "Slurm's default; scontrol not found",
                    ),
                },
            };
            let opts = cluster::SlurmOpts {
                partition: a.partition.clone(),
                time: a.time.clone(),
                gpus_per_task: a.gpus_per_task,
                cpus_per_task: a.cpus_per_task,
                mem: a.mem.clone(),
                array_limit: a.array_limit,
                account: a.account.clone(),
                extra: a.extra.clone(),
                signal_before_s: a.signal_before,
            };
            let arrays = cluster::arrays(&sw.entries, max);
            let script = store::write(
                &sw.dir,
                "sweep.sbatch",
                cluster::sbatch_script(&common, &opts).as_bytes(),
            )?;
            let submit = store::write(
                &sw.dir,
                "slurm/submit.sh",
                cluster::submit_script(&common, &arrays, a.array_limit).as_bytes(),
            )?;
            for p in [&script, &submit] {
                make_executable(p);
            }
            store::write_json(
                &sw.dir,
                "slurm/arrays.json",
                &cluster::Emitted {
                    script: format!("{}/sweep.sbatch", common.dir),
                    array_limit: a.array_limit,
                    max_array_size: max,
                    arrays: arrays.clone(),
                },
            )?;
            errln!(
                "{} job arrays for {} entries (MaxArraySize {max}, from {from}):",
                arrays.len(),
                sw.entries.len()
            );
            for x in &arrays {
                errln!(
                    "  stage {:6} entries {}",
                    x.stage,
                    cluster::ranges(&x.indices().collect::<Vec<_>>())
                );
            }
            errln!(
                "submit with `diagc sweep submit {}` (or bash {})",
                a.dir.display(),
                submit.display()
            );
            script
        }
        Scheduler::Parallel => {
            let p = store::write(
                &sw.dir,
                "sweep.parallel",
                cluster::parallel_script(
                    &common,
                    &sw.entries,
                    a.jobs,
                    a.cpus_per_task as usize,
                    &a.hosts,
                )
                .as_bytes(),
            )?;
            make_executable(&p);
            errln!("run it with `bash {}` (GNU parallel)", p.display());
            p
        }
        Scheduler::K8s => {
            let p = store::write(
                &sw.dir,
                "sweep-k8s.yaml",
                cluster::k8s_yaml(
                    &common,
                    &sw.entries,
                    &cluster::K8sOpts {
                        image: a.image.clone(),
                        claim: a.claim.clone(),
                        cpus_per_task: a.cpus_per_task,
                        gpus_per_task: a.gpus_per_task,
                        mem: a.mem.clone(),
                        parallelism: a.array_limit.unwrap_or(1),
                    },
                )
                .as_bytes(),
            )?;
            errln!(
                "apply it stage by stage as its header says (kubectl apply -f {} -l diagc-stage=a, ...)",
                p.display()
            );
            p
        }
    };
    outln!("{}", written.display());
    Ok(())
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
}

fn submit_cmd(dir: &Path) -> Result<(), Error> {
    let sw = Sweep::open(dir)?;
    let emitted: cluster::Emitted =
        store::read_json(&sw.dir, "slurm/arrays.json")?.ok_or_else(|| {
            Error::Usage(format!(
                "{} has no Slurm script yet: run `diagc sweep emit {} --to slurm` first",
                dir.display(),
                dir.display()
            ))
        })?;
    let mut ids: Vec<String> = Vec::new();
    for i in 0..emitted.arrays.len() {
        let args = cluster::sbatch_args(
            &emitted.arrays,
            i,
            emitted.array_limit,
            &emitted.script,
            &|j| ids[j].clone(),
        );
        let out = Process::new("sbatch").args(&args).output().map_err(|e| {
            Error::External(format!(
                "cannot run sbatch ({e}): is Slurm installed here? (`diagc sweep emit` wrote \
                 {}/slurm/submit.sh to run on a login node)",
                dir.display()
            ))
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let id = cluster::parse_job_id(&stdout).filter(|_| out.status.success());
        let Some(id) = id else {
            let partial = if ids.is_empty() {
                String::new()
            } else {
                format!(" (jobs {} were submitted before it)", ids.join(", "))
            };
            return Err(Error::External(format!(
                "sbatch {} failed{partial}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        };
        let a = &emitted.arrays[i];
        outln!(
            "stage {} entries {}: job {id}",
            a.stage,
            cluster::ranges(&a.indices().collect::<Vec<_>>())
        );
        ids.push(id);
        store::write_json(
            &sw.dir,
            "slurm/jobs.json",
            &cluster::Submitted {
                submitted: store::now_rfc3339(),
                job_ids: ids.clone(),
                arrays: emitted.arrays[..ids.len()].to_vec(),
            },
        )?;
    }
    errln!(
        "follow it with `diagc sweep status {}` (logs in {}/slurm/)",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// The scheduler's view of a submitted sweep, for `sweep status`.
fn slurm_view(sw: &Sweep) -> Result<(), Error> {
    let Some(sub) = store::read_json::<cluster::Submitted>(&sw.dir, "slurm/jobs.json")? else {
        return Ok(());
    };
    outln!(
        "slurm: {} array jobs submitted {} ({})",
        sub.job_ids.len(),
        sub.submitted,
        sub.job_ids.join(", ")
    );
    let out = Process::new("squeue")
        .args(["-h", "-r", "-o", "%i %T", "-j", &sub.job_ids.join(",")])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            // squeue refuses ids that have left the queue altogether.
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("Invalid job id") {
                outln!("  none of them is queued or running any more");
            } else {
                outln!("  squeue failed: {}", err.trim());
            }
            return Ok(());
        }
        Err(e) => {
            outln!("  squeue is not available here ({e})");
            return Ok(());
        }
    };
    let counts = cluster::squeue_counts(&String::from_utf8_lossy(&out.stdout));
    for (id, a) in sub.job_ids.iter().zip(&sub.arrays) {
        let here: Vec<String> = counts
            .iter()
            .filter(|(j, _, _)| j == id)
            .map(|(_, s, n)| format!("{n} {}", s.to_lowercase()))
            .collect();
        outln!(
            "  job {id} (stage {}, {} tasks): {}",
            a.stage,
            a.tasks.len(),
            if here.is_empty() {
                "none queued or running".to_string()
            } else {
                here.join(", ")
            }
        );
    }
    Ok(())
}

fn status_cmd(dir: &Path, all: bool) -> Result<i32, Error> {
    let sw = Sweep::open(dir)?;
    let st = sw.statuses()?;
    let done = st.iter().filter(|s| **s == Status::Done).count();
    let width = 30usize;
    let filled = (done * width).checked_div(st.len()).unwrap_or(width);
    outln!(
        "{}  [{}{}] {done}/{} done",
        sw.header.name,
        "#".repeat(filled),
        "-".repeat(width - filled),
        st.len()
    );
    for s in [
        Status::Done,
        Status::Running,
        Status::Failed,
        Status::Diverged,
        Status::Interrupted,
        Status::Waiting,
        Status::Pending,
    ] {
        let n = st.iter().filter(|x| **x == s).count();
        if n > 0 {
            outln!("  {:12} {n}", s.as_str());
        }
    }
    let mut shown = 0;
    for (e, s) in sw.entries.iter().zip(&st) {
        if !all && *s == Status::Done {
            continue;
        }
        if !all && shown >= 40 {
            outln!("  ... (--all lists every entry)");
            break;
        }
        shown += 1;
        let mut line = format!("{:5} {:12} {}", e.index, s.as_str(), e.name);
        if matches!(s, Status::Failed | Status::Diverged) {
            let err = sw.state(e)?.error.unwrap_or_default();
            line.push_str(&format!("\n      {}", err.lines().next().unwrap_or("")));
        }
        outln!("{line}");
    }
    slurm_view(&sw)?;
    Ok(0)
}

/// Draws a mechanism for the report: its stdlib module or file, its diagram.
fn draw_mechanism(name: &str, arg: &str) -> Result<String, String> {
    let (outcome, diagram) = if arg.ends_with(".diag") {
        let o = session::check_path(Path::new(arg)).map_err(|e| e.to_string())?;
        let stem = Path::new(arg)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        (o, stem)
    } else {
        let module = if name.contains('.') {
            name.to_string()
        } else {
            format!("attention.{name}")
        };
        let o = session::check_stdlib(&module, &[]).map_err(|e| e.to_string())?;
        let d = module.rsplit('.').next().unwrap_or(name).to_string();
        (o, d)
    };
    let o = outcome.ok_or_error("").map_err(|e| e.to_string())?;
    let p = &o.checked.program;
    let d = p
        .diagram(&diagram)
        .or_else(|| crate::render::default_diagram(p, crate::source::FileId(0)))
        .ok_or_else(|| format!("no diagram `{diagram}` to draw"))?;
    crate::render::draw(p, d, &crate::render::DrawOptions::default()).map_err(|e| e.to_string())
}

fn write_report(sw: &Sweep, g: &results::Gathered, out: Option<&Path>) -> Result<PathBuf, Error> {
    let provenance = vec![
        (
            "diagc version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "diagc commit".to_string(),
            results::git_commit().unwrap_or_else(|| "unknown".into()),
        ),
        ("sweep file".to_string(), sw.header.source.clone()),
        (
            "sweep file SHA-256".to_string(),
            sw.header.sweep_sha256.clone(),
        ),
        ("planned".to_string(), sw.header.created.clone()),
        ("report written".to_string(), store::now_rfc3339()),
    ];
    let input = results::report_input(sw, g, &draw_mechanism, provenance);
    let page = crate::sweep::report::render(&input)?;
    for (stem, svg) in &page.figures {
        store::write(&sw.dir, &format!("figures/{stem}.svg"), svg.as_bytes())?;
        match crate::sweep::report::png(svg) {
            Ok(png) => {
                store::write(&sw.dir, &format!("figures/{stem}.png"), &png)?;
            }
            Err(e) => errln!("diagc: warning: figures/{stem}.png not written: {e}"),
        }
    }
    let path = match out {
        Some(p) => {
            crate::train::checkpoint::write_atomic(p, page.html.as_bytes()).map_err(|e| {
                Error::Io {
                    action: "write",
                    path: p.to_path_buf(),
                    source: e,
                    context: String::new(),
                }
            })?;
            p.to_path_buf()
        }
        None => store::write(&sw.dir, "report.html", page.html.as_bytes())?,
    };
    Ok(path)
}

fn report_cmd(dir: &Path, out: Option<&Path>) -> Result<(), Error> {
    let sw = Sweep::open(dir)?;
    let g = results::gather(&sw)?;
    results::write(&sw, &g)?;
    let path = write_report(&sw, &g, out)?;
    print_counts(&sw, &g.statuses);
    outln!("{}", path.display());
    Ok(())
}
