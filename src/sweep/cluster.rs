//! A sweep's plan as work for a scheduler: Slurm job arrays, GNU parallel, a Kubernetes Indexed
//! Job (`diagc sweep emit`, `diagc sweep submit`).
//!
//! Pure: a plan and options in, the scripts' text and the submission commands out; the CLI
//! writes them through [`super::store`] and calls `sbatch`. Every scheduler runs the same unit,
//! `diagc sweep run-one DIR`, which takes its entry's index from `--index`, `SLURM_ARRAY_TASK_ID`,
//! `JOB_COMPLETION_INDEX` or `PARALLEL_SEQ` ([`index_from_env`]), plus `DIAGC_INDEX_OFFSET`.
//!
//! The plan is in stage order (single and stage A entries, then stage B, then timing), and the
//! stages are submitted in that order: stage B's arrays wait (`afterany`) for every stage A
//! array, the timing arrays for both, so that no task starts before the learning rate it needs
//! is chosen. Slurm refuses an array index at or above its `MaxArraySize`: a stage whose indices
//! reach it is split into arrays of `MaxArraySize` indices each, every array's task ids counted
//! from its own offset (the task's entry is `DIAGC_INDEX_OFFSET + SLURM_ARRAY_TASK_ID`).

use super::{Entry, Stage};
use serde::{Deserialize, Serialize};

/// The exit code of `run-one` for an entry that cannot run now (another process runs it, or its
/// stage A has not chosen the learning rate): the scripts requeue it.
pub const EXIT_LATER: i32 = 75;

/// Exit codes of `run-one` stopped by a signal with its run saved (128 + SIGINT, SIGUSR1,
/// SIGTERM): the scripts requeue it and the next attempt resumes it.
pub const EXIT_STOPPED: [i32; 3] = [130, 138, 143];

/// Slurm's default `MaxArraySize` (array indices 0 to 1000).
pub const SLURM_DEFAULT_MAX_ARRAY_SIZE: usize = 1001;

/// One submission of the sweep's task script: task ids `tasks` (each the plan index less
/// `offset`), after the submissions listed in `after` (positions in the list) have ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Array {
    /// What the entries are: `A` (stage A and single runs), `B` or `timing`.
    pub stage: String,
    pub offset: usize,
    pub tasks: Vec<usize>,
    pub after: Vec<usize>,
}

impl Array {
    /// The plan indices this array runs.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.tasks.iter().map(move |t| t + self.offset)
    }
}

/// The stage group of an entry: 0 for single and stage A runs, 1 for stage B, 2 for timing.
fn group(s: Stage) -> usize {
    match s {
        Stage::Single | Stage::A => 0,
        Stage::B => 1,
        Stage::Timing => 2,
    }
}

/// The name of a stage group in logs and script comments: `single` (a sweep without tuning),
/// `A`, `B`, `timing`.
fn group_name(entries: &[Entry], g: usize) -> &'static str {
    match g {
        0 if entries.iter().any(|e| e.stage == Stage::Single) => "single",
        0 => "A",
        1 => "B",
        _ => "timing",
    }
}

/// The arrays that run `entries`, in submission order: per stage group, one array per block of
/// `max_array_size` plan indices; each group after the arrays of the groups before it.
pub fn arrays(entries: &[Entry], max_array_size: usize) -> Vec<Array> {
    let size = max_array_size.max(1);
    let mut out: Vec<Array> = Vec::new();
    let mut earlier: Vec<usize> = Vec::new();
    for g in 0..3 {
        let mut blocks: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for e in entries.iter().filter(|e| group(e.stage) == g) {
            let block = e.index / size;
            blocks
                .entry(block)
                .or_default()
                .push(e.index - block * size);
        }
        let first = out.len();
        for (block, tasks) in blocks {
            out.push(Array {
                stage: group_name(entries, g).to_string(),
                offset: block * size,
                tasks,
                after: earlier.clone(),
            });
        }
        earlier.extend(first..out.len());
    }
    out
}

/// A sorted list of task ids as Slurm's `--array` writes it: `0-9,12,14-15`.
pub fn ranges(tasks: &[usize]) -> String {
    let mut t = tasks.to_vec();
    t.sort_unstable();
    t.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let mut j = i;
        while j + 1 < t.len() && t[j + 1] == t[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            t[i].to_string()
        } else {
            format!("{}-{}", t[i], t[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

/// Where the index of `run-one`'s entry came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSource {
    pub index: usize,
    /// How it was found, for the log: `--index`, `SLURM_ARRAY_TASK_ID=3 + DIAGC_INDEX_OFFSET=1000`.
    pub how: String,
}

/// The entry index from the scheduler's environment, in the order Slurm, Kubernetes, GNU
/// parallel (`PARALLEL_SEQ` counts from 1), each plus `DIAGC_INDEX_OFFSET`. `get` reads a
/// variable. An unset variable is skipped; a set one that is not a number is an error.
pub fn index_from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<IndexSource, String> {
    let offset = match get("DIAGC_INDEX_OFFSET") {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("DIAGC_INDEX_OFFSET is `{v}`, not a non-negative integer"))?,
        ),
    };
    for (var, base) in [
        ("SLURM_ARRAY_TASK_ID", 0usize),
        ("JOB_COMPLETION_INDEX", 0),
        ("PARALLEL_SEQ", 1),
    ] {
        let Some(v) = get(var) else { continue };
        let n = v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= base)
            .ok_or_else(|| {
                format!(
                    "{var} is `{v}`, not an integer{}",
                    if base > 0 { " from 1" } else { "" }
                )
            })?;
        let mut how = format!("{var}={v}");
        if base > 0 {
            how.push_str(&format!(" - {base}"));
        }
        if let Some(o) = offset {
            how.push_str(&format!(" + DIAGC_INDEX_OFFSET={o}"));
        }
        return Ok(IndexSource {
            index: n - base + offset.unwrap_or(0),
            how,
        });
    }
    Err(
        "no entry index: give --index, or run under Slurm (SLURM_ARRAY_TASK_ID), a Kubernetes \
         Indexed Job (JOB_COMPLETION_INDEX) or GNU parallel (PARALLEL_SEQ)"
            .into(),
    )
}

/// Quotes a word for a POSIX shell (single quotes; a plain word stays as it is).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,%+@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What every emitted script needs: the binary, the sweep directory and the data directory, as
/// absolute paths on the machines that run the tasks.
#[derive(Clone, Debug)]
pub struct Common {
    pub name: String,
    /// The directory the tasks start in: where relative paths of the plan (a mechanism file
    /// named by a relative path) resolve.
    pub cwd: String,
    pub diagc: String,
    pub dir: String,
    pub data: Option<String>,
}

impl Common {
    /// `diagc sweep run-one DIR [--data D]`, quoted for a shell.
    fn run_one(&self) -> String {
        let mut s = format!(
            "{} sweep run-one {}",
            sh_quote(&self.diagc),
            sh_quote(&self.dir)
        );
        if let Some(d) = &self.data {
            s.push_str(&format!(" --data {}", sh_quote(d)));
        }
        s
    }
}

/// `diagc sweep emit --to slurm`'s settings.
#[derive(Clone, Debug, Default)]
pub struct SlurmOpts {
    pub partition: Option<String>,
    pub time: Option<String>,
    pub gpus_per_task: Option<u32>,
    pub cpus_per_task: u32,
    pub mem: Option<String>,
    pub array_limit: Option<usize>,
    pub account: Option<String>,
    /// Lines added to the header as they are (each starting `#SBATCH`).
    pub extra: Vec<String>,
    /// Seconds before the time limit at which Slurm sends SIGUSR1 to the task's shell.
    pub signal_before_s: u32,
}

/// Checks `--extra` lines: each must be an `#SBATCH` directive on one line.
pub fn check_extra(lines: &[String]) -> Result<(), String> {
    for l in lines {
        if !l.trim_start().starts_with("#SBATCH") || l.contains('\n') {
            return Err(format!(
                "--extra `{l}` is not one `#SBATCH ...` line (give one --extra per directive)"
            ));
        }
    }
    Ok(())
}

/// The task script, `DIR/sweep.sbatch`: one plan entry per array task.
pub fn sbatch_script(c: &Common, o: &SlurmOpts) -> String {
    let mut h = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# diagc sweep `{}`: one entry of {}/plan.jsonl per array task.",
            c.name, c.dir
        ),
        "# Written by `diagc sweep emit DIR --to slurm`; `diagc sweep submit DIR` submits it once per".into(),
        "# array of slurm/submit.sh (stage A, then stage B after it, then the timing phase), each".into(),
        "# with --array and DIAGC_INDEX_OFFSET (the task's entry is DIAGC_INDEX_OFFSET +".into(),
        format!(
            "# SLURM_ARRAY_TASK_ID). A task stopped by SIGUSR1 (sent {} s before its time",
            o.signal_before_s
        ),
        "# limit, or by `scancel --signal=USR1 --batch`) or SIGTERM saves its run at the next step".into(),
        "# and requeues itself; the next attempt resumes it.".into(),
        format!("#SBATCH --job-name={}", sh_quote(&format!("diagc-{}", c.name))),
        format!("#SBATCH --output={}/slurm/%A_%a.log", c.dir),
        format!("#SBATCH --chdir={}", c.cwd),
        "#SBATCH --open-mode=append".into(),
        format!("#SBATCH --signal=B:USR1@{}", o.signal_before_s),
        "#SBATCH --requeue".into(),
        "#SBATCH --ntasks=1".into(),
        format!("#SBATCH --cpus-per-task={}", o.cpus_per_task.max(1)),
    ];
    if let Some(p) = &o.partition {
        h.push(format!("#SBATCH --partition={p}"));
    }
    if let Some(t) = &o.time {
        h.push(format!("#SBATCH --time={t}"));
    }
    if let Some(g) = o.gpus_per_task {
        h.push(format!("#SBATCH --gpus-per-task={g}"));
    }
    if let Some(m) = &o.mem {
        h.push(format!("#SBATCH --mem={m}"));
    }
    if let Some(a) = &o.account {
        h.push(format!("#SBATCH --account={a}"));
    }
    h.extend(o.extra.iter().cloned());
    let body = format!(
        r#"
set -u
export RAYON_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
echo "diagc: task ${{SLURM_ARRAY_JOB_ID:-?}}_${{SLURM_ARRAY_TASK_ID:-?}} (job ${{SLURM_JOB_ID:-?}}, restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
# run-one in the background, so that the signals reach this shell's traps and are passed on.
{run_one} &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null' USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
while :; do
    wait "$child"
    code=$?
    # `wait` returns early (128 + signal) when a trapped signal arrives; the run is then saving.
    kill -0 "$child" 2>/dev/null || break
done
requeue() {{
    echo "diagc: $1: requeueing job $SLURM_JOB_ID"
    if [ "${{SLURM_RESTART_COUNT:-0}}" -ge {max_restarts} ]; then
        echo "diagc: requeued {max_restarts} times already: giving up" >&2
        exit 1
    fi
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
}}
case "$code" in
    0) exit 0 ;;
    1) echo "diagc: the entry failed or diverged (recorded in the sweep; \`diagc sweep status\`)"; exit 1 ;;
    {later}) sleep 30; requeue "the entry cannot run yet (stage A not chosen, or run by another task)" ;;
    {stopped}) requeue "stopped by a signal with its run saved" ;;
    *) echo "diagc: run-one exited with code $code" >&2; exit "$code" ;;
esac
"#,
        run_one = c.run_one(),
        later = EXIT_LATER,
        stopped = EXIT_STOPPED.map(|c| c.to_string()).join("|"),
        max_restarts = 100,
    );
    let mut s = h.join("\n");
    s.push('\n');
    s.push_str(&body);
    s
}

/// The `sbatch` arguments of each array, in order; `job(i)` is the shell text of array `i`'s
/// job id (a variable in `submit.sh`, the number itself in `diagc sweep submit`).
pub fn sbatch_args(
    arrays: &[Array],
    i: usize,
    limit: Option<usize>,
    script: &str,
    job: &dyn Fn(usize) -> String,
) -> Vec<String> {
    let a = &arrays[i];
    let mut spec = ranges(&a.tasks);
    if let Some(k) = limit {
        spec.push_str(&format!("%{k}"));
    }
    let mut v = vec![
        "--parsable".to_string(),
        format!("--array={spec}"),
        format!("--export=ALL,DIAGC_INDEX_OFFSET={}", a.offset),
    ];
    if !a.after.is_empty() {
        let ids: Vec<String> = a.after.iter().map(|&j| job(j)).collect();
        v.push(format!("--dependency=afterany:{}", ids.join(":")));
    }
    v.push(script.to_string());
    v
}

/// `DIR/slurm/submit.sh`: what `diagc sweep submit` does, as plain `sbatch` commands.
pub fn submit_script(c: &Common, arrays: &[Array], limit: Option<usize>) -> String {
    let script = format!("{}/sweep.sbatch", c.dir);
    let mut s = String::from(
        "#!/bin/bash\n# Submits the sweep's arrays in order, each stage after the ones before it; \
         `diagc sweep submit DIR`\n# does the same and records the job ids in \
         DIR/slurm/jobs.json.\nset -euo pipefail\n",
    );
    for i in 0..arrays.len() {
        let args = sbatch_args(arrays, i, limit, &script, &|j| format!("${{job{j}%%;*}}"));
        let a = &arrays[i];
        s.push_str(&format!(
            "# stage {}: entries {}\njob{i}=$(sbatch {})\necho \"stage {} entries {}: job ${{job{i}%%;*}}\"\n",
            a.stage,
            ranges(&a.indices().collect::<Vec<_>>()),
            args.iter()
                .map(|x| if x.starts_with("--dependency") { format!("\"{x}\"") } else { sh_quote(x) })
                .collect::<Vec<_>>()
                .join(" "),
            a.stage,
            ranges(&a.indices().collect::<Vec<_>>()),
        ));
    }
    s
}

/// `DIR/sweep.parallel`: the sweep for GNU parallel, stage after stage, on this machine or the
/// ssh machines of `hosts` (`-S`), `jobs` at once per machine. A run stopped, failed or not yet
/// runnable exits non-zero and is run again by the next invocation (`--resume-failed`).
pub fn parallel_script(
    c: &Common,
    entries: &[Entry],
    jobs: usize,
    threads: usize,
    hosts: &[String],
) -> String {
    let mut s = format!(
        "#!/bin/bash\n# diagc sweep `{name}` with GNU parallel: written by `diagc sweep emit DIR --to parallel`.\n\
         # Runs each stage's entries ({jobs} at once per machine, {threads} thread(s) each), stage after stage;\n\
         # the job logs are {dir}/parallel.STAGE.joblog. Run it again to resume: finished entries are skipped\n\
         # by parallel (--resume-failed) and by diagc (a finished entry exits 0 at once).\n\
         set -u\ncd {cwd} || exit 1\nexport RAYON_NUM_THREADS={threads}\nstatus=0\n",
        name = c.name,
        dir = c.dir,
        cwd = sh_quote(&c.cwd),
    );
    let mut hosts_arg = String::new();
    for h in hosts {
        hosts_arg.push_str(&format!(" -S {}", sh_quote(h)));
    }
    if !hosts.is_empty() {
        hosts_arg.push_str(&format!(
            " --env RAYON_NUM_THREADS --wd {}",
            sh_quote(&c.cwd)
        ));
    }
    for g in 0..3 {
        let idx: Vec<usize> = entries
            .iter()
            .filter(|e| group(e.stage) == g)
            .map(|e| e.index)
            .collect();
        if idx.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "# stage {}\nparallel --joblog {} --resume-failed -j {jobs}{hosts_arg} \
             {} --index {{}} ::: {} || status=1\n",
            group_name(entries, g),
            // One job log per stage: --resume-failed matches jobs by their sequence number.
            sh_quote(&format!(
                "{}/parallel.{}.joblog",
                c.dir,
                group_name(entries, g)
            )),
            c.run_one(),
            idx.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    s.push_str("exit $status\n");
    s
}

/// `diagc sweep emit --to k8s`'s settings.
#[derive(Clone, Debug)]
pub struct K8sOpts {
    pub image: String,
    /// The PersistentVolumeClaim that holds the sweep directory (mounted at the same path as
    /// `Common::dir`'s parent) and the data.
    pub claim: String,
    pub cpus_per_task: u32,
    pub gpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub parallelism: usize,
}

/// `DIR/sweep-k8s.yaml`: one Indexed Job per stage (`completions` = the stage's entries, the
/// task's entry = `DIAGC_INDEX_OFFSET` + `JOB_COMPLETION_INDEX`), to be applied in order, each
/// after the one before has completed. Exit 75 (not runnable yet) and 130/138/143 (stopped,
/// saved) are retried without counting against the back-off limit.
pub fn k8s_yaml(c: &Common, entries: &[Entry], o: &K8sOpts) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let slug: String = c
        .name
        .to_ascii_lowercase()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect();
    let mount = std::path::Path::new(&c.dir)
        .parent()
        .map(|p| p.to_string_lossy().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let mut docs = vec![format!(
        "# diagc sweep `{}` as Kubernetes Indexed Jobs: written by `diagc sweep emit DIR --to k8s`.\n\
         # Apply one stage at a time, each after the one before has completed:\n\
         #   kubectl apply -f sweep-k8s.yaml -l diagc-stage=a && kubectl wait --for=condition=complete --timeout=-1s job/diagc-{slug}-a\n\
         #   (then -l diagc-stage=b, then -l diagc-stage=timing)\n\
         # The claim `{}` must hold the sweep directory at {} (and the data, if --data was given).",
        c.name, o.claim, c.dir
    )];
    for g in 0..3 {
        let idx: Vec<usize> = entries
            .iter()
            .filter(|e| group(e.stage) == g)
            .map(|e| e.index)
            .collect();
        let (Some(&first), Some(&last)) = (idx.iter().min(), idx.iter().max()) else {
            continue;
        };
        let stage = group_name(entries, g).to_ascii_lowercase();
        let mut cmd = vec![q(&c.diagc), q("sweep"), q("run-one"), q(&c.dir)];
        if let Some(d) = &c.data {
            cmd.push(q("--data"));
            cmd.push(q(d));
        }
        let mut limits = vec![format!("cpu: {}", q(&o.cpus_per_task.to_string()))];
        if let Some(m) = &o.mem {
            limits.push(format!("memory: {}", q(m)));
        }
        if let Some(gp) = o.gpus_per_task {
            limits.push(format!("nvidia.com/gpu: {}", q(&gp.to_string())));
        }
        let limits = limits
            .iter()
            .map(|l| format!("                {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        docs.push(format!(
            r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  labels:
    diagc-sweep: {sweep}
    diagc-stage: {stage}
spec:
  completionMode: Indexed
  completions: {completions}
  parallelism: {parallelism}
  backoffLimitPerIndex: 2
  maxFailedIndexes: {completions}
  podFailurePolicy:
    rules:
      - action: Ignore
        onExitCodes:
          operator: In
          values: [{later}, {stopped}]
  template:
    metadata:
      labels:
        diagc-sweep: {sweep}
        diagc-stage: {stage}
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 120
      containers:
        - name: run-one
          image: {image}
          workingDir: {cwd}
          command: [{cmd}]
          env:
            - name: DIAGC_INDEX_OFFSET
              value: {offset}
            - name: RAYON_NUM_THREADS
              value: {threads}
          resources:
            requests:
{limits}
            limits:
{limits}
          volumeMounts:
            - name: sweep
              mountPath: {mount}
      volumes:
        - name: sweep
          persistentVolumeClaim:
            claimName: {claim}"#,
            name = q(&format!("diagc-{slug}-{stage}")),
            sweep = q(&slug),
            stage = q(&stage),
            completions = last - first + 1,
            parallelism = o.parallelism.max(1),
            later = EXIT_LATER,
            stopped = EXIT_STOPPED.map(|c| c.to_string()).join(", "),
            image = q(&o.image),
            cmd = cmd.join(", "),
            offset = q(&first.to_string()),
            threads = q(&o.cpus_per_task.max(1).to_string()),
            mount = q(&mount),
            cwd = q(&c.cwd),
            claim = q(&o.claim),
        ));
    }
    let mut s = docs.join("\n---\n");
    s.push('\n');
    s
}

/// `DIR/slurm/arrays.json`: what `emit --to slurm` planned, for `submit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Emitted {
    pub script: String,
    pub array_limit: Option<usize>,
    pub max_array_size: usize,
    pub arrays: Vec<Array>,
}

/// `DIR/slurm/jobs.json`: what `submit` submitted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    pub submitted: String,
    /// One per array of `Emitted::arrays`, in order: Slurm's job id.
    pub job_ids: Vec<String>,
    pub arrays: Vec<Array>,
}

/// The job id of `sbatch --parsable`'s output (`123` or `123;cluster`).
pub fn parse_job_id(out: &str) -> Option<String> {
    let id = out.trim().split(';').next()?.trim();
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_digit())).then(|| id.to_string())
}

/// Counts of `squeue -h -r -o '%i %T'` lines per array job id: (job id, state, count), by job.
pub fn squeue_counts(out: &str) -> Vec<(String, String, usize)> {
    let mut m: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        let (Some(id), Some(state)) = (w.next(), w.next()) else {
            continue;
        };
        let job = id.split('_').next().unwrap_or(id).to_string();
        *m.entry((job, state.to_string())).or_default() += 1;
    }
    m.into_iter().map(|((j, s), n)| (j, s, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::ModelKey;

    fn entries(stages: &[Stage]) -> Vec<Entry> {
        stages
            .iter()
            .enumerate()
            .map(|(i, &stage)| Entry {
                index: i,
                stage,
                name: format!("e{i}"),
                model: ModelKey {
                    mech: "m1".into(),
                    layers: 1,
                    swept: vec![],
                },
                seed: 0,
                lr_scale: None,
                args: vec![],
                run_dir: format!("runs/e{i}"),
                hash: String::new(),
            })
            .collect()
    }

    #[test]
    fn ranges_compress_runs() {
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[9, 8, 8, 7]), "7-9");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn arrays_follow_stages_and_split_at_max_array_size() {
        // 12 stage A, 6 stage B, 6 timing: the smoke sweep's shape.
        let mut st = vec![Stage::A; 12];
        st.extend([Stage::B; 6]);
        st.extend([Stage::Timing; 6]);
        let e = entries(&st);
        let a = arrays(&e, 10);
        let shape: Vec<(&str, usize, Vec<usize>, Vec<usize>)> = a
            .iter()
            .map(|x| (x.stage.as_str(), x.offset, x.tasks.clone(), x.after.clone()))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("A", 0, (0..10).collect(), vec![]),
                ("A", 10, vec![0, 1], vec![]),
                ("B", 10, (2..8).collect(), vec![0, 1]),
                ("timing", 10, vec![8, 9], vec![0, 1, 2]),
                ("timing", 20, (0..4).collect(), vec![0, 1, 2]),
            ]
        );
        // Every entry exactly once, and no task id at or above the limit.
        let mut all: Vec<usize> = a.iter().flat_map(|x| x.indices()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..24).collect::<Vec<_>>());
        assert!(a.iter().all(|x| x.tasks.iter().all(|&t| t < 10)));
        // Without a limit in sight: one array per stage.
        assert_eq!(arrays(&e, 1001).len(), 3);
    }

    #[test]
    fn index_from_env_order_and_offset() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let r = index_from_env(&env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("JOB_COMPLETION_INDEX", "7"),
            ("DIAGC_INDEX_OFFSET", "1000"),
        ]))
        .unwrap();
        assert_eq!(r.index, 1003);
        assert!(r.how.starts_with("SLURM_ARRAY_TASK_ID=3"), "{}", r.how);
        let r = index_from_env(&env(&[("JOB_COMPLETION_INDEX", "7")])).unwrap();
        assert_eq!(r.index, 7);
        let r = index_from_env(&env(&[("PARALLEL_SEQ", "1")])).unwrap();
        assert_eq!(r.index, 0);
        assert!(index_from_env(&env(&[("PARALLEL_SEQ", "0")])).is_err());
        assert!(index_from_env(&env(&[("SLURM_ARRAY_TASK_ID", "x")])).is_err());
        assert!(
            index_from_env(&env(&[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("DIAGC_INDEX_OFFSET", "-4")
            ]))
            .is_err()
        );
        let none = index_from_env(&env(&[])).unwrap_err();
        assert!(none.contains("--index"), "{none}");
    }

    #[test]
    fn sbatch_args_chain_dependencies() {
        let mut st = vec![Stage::A; 3];
        st.extend([Stage::B; 2]);
        let e = entries(&st);
        let a = arrays(&e, 1001);
        let ids = |j: usize| format!("{}", 100 + j);
        let first = sbatch_args(&a, 0, Some(2), "s.sbatch", &ids);
        assert_eq!(
            first,
            vec![
                "--parsable",
                "--array=0-2%2",
                "--export=ALL,DIAGC_INDEX_OFFSET=0",
                "s.sbatch"
            ]
        );
        let second = sbatch_args(&a, 1, None, "s.sbatch", &ids);
        assert_eq!(second[1], "--array=3-4");
        assert_eq!(second[3], "--dependency=afterany:100");
    }

    #[test]
    fn job_ids_and_queue_counts() {
        assert_eq!(parse_job_id("123\n").as_deref(), Some("123"));
        assert_eq!(parse_job_id("77;cluster").as_deref(), Some("77"));
        assert_eq!(parse_job_id("sbatch: error: x"), None);
        let c = squeue_counts("12_3 RUNNING\n12_4 PENDING\n12_5 PENDING\n13_[0-4%2] PENDING\n");
        assert_eq!(
            c,
            vec![
                ("12".into(), "PENDING".into(), 2),
                ("12".into(), "RUNNING".into(), 1),
                ("13".into(), "PENDING".into(), 1)
            ]
        );
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh_quote("/a/b-c_d.e"), "/a/b-c_d.e");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn extra_lines_must_be_directives() {
        assert!(check_extra(&["#SBATCH --qos=low".into()]).is_ok());
        assert!(check_extra(&["rm -rf /".into()]).is_err());
        assert!(check_extra(&["#SBATCH --a\nrm x".into()]).is_err());
    }
}
