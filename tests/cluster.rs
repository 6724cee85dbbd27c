//! `diagc sweep emit` and `run-one`'s index from a scheduler (issue 18), without a scheduler:
//! the Slurm script is valid bash with the directives a requeueing array task needs, the
//! arrays cover the plan once each, the Kubernetes Jobs parse as YAML and carry the Indexed Job
//! fields, the GNU parallel script names every entry once. The runs under a real Slurm cluster
//! and GNU parallel are tests/slurm.rs.

mod common;

use common::root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> String {
    std::env::var("DIAGC_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_diagc").to_string())
}

fn diagc(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        // The tests run inside whatever environment CI has: no scheduler variables leak in.
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("PARALLEL_SEQ")
        .env_remove("DIAGC_INDEX_OFFSET")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A planned smoke sweep in a fresh directory.
fn planned(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diagc-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let o = diagc(&[
        "sweep",
        "plan",
        "sweeps/smoke.toml",
        "-o",
        d.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    d
}

fn plan_len(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("plan.jsonl"))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn slurm_script_is_bash_with_the_requeue_directives() {
    let d = planned("slurm");
    let o = diagc(&[
        "sweep",
        "emit",
        d.to_str().unwrap(),
        "--to",
        "slurm",
        "--partition",
        "gpu",
        "--time",
        "1:00:00",
        "--gpus-per-task",
        "1",
        "--cpus-per-task",
        "4",
        "--mem",
        "16G",
        "--array-limit",
        "3",
        "--account",
        "lab",
        "--extra",
        "#SBATCH --qos=low",
        "--max-array-size",
        "10",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let script = d.join("sweep.sbatch");
    let s = std::fs::read_to_string(&script).unwrap();
    let n = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(n.status.success(), "bash -n: {}", text(&n));
    for directive in [
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1:00:00",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=16G",
        "#SBATCH --account=lab",
        "#SBATCH --qos=low",
        "/slurm/%A_%a.log",
    ] {
        assert!(s.contains(directive), "missing {directive}:\n{s}");
    }
    // Every #SBATCH line comes before the first command (sbatch stops reading there).
    let first_cmd = s
        .lines()
        .position(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap();
    assert!(
        s.lines()
            .skip(first_cmd)
            .all(|l| !l.trim_start().starts_with("#SBATCH"))
    );
    assert!(s.contains("scontrol requeue"));
    assert!(s.contains(&format!(
        "{} sweep run-one {}",
        std::fs::canonicalize(bin()).unwrap().display(),
        std::fs::canonicalize(&d).unwrap().display()
    )));

    // The arrays: each plan entry exactly once, no task id at or above MaxArraySize, stage B
    // after every stage A array, the timing arrays after both.
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("slurm/arrays.json")).unwrap())
            .unwrap();
    let arrays = e["arrays"].as_array().unwrap();
    let mut seen = Vec::new();
    for (i, a) in arrays.iter().enumerate() {
        let off = a["offset"].as_u64().unwrap() as usize;
        for t in a["tasks"].as_array().unwrap() {
            let t = t.as_u64().unwrap() as usize;
            assert!(t < 10, "task id {t} of array {i} reaches MaxArraySize 10");
            seen.push(off + t);
        }
        let after: Vec<usize> = a["after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let earlier_stages: Vec<usize> = (0..i)
            .filter(|&j| arrays[j]["stage"] != a["stage"])
            .collect();
        assert_eq!(after, earlier_stages, "array {i}'s dependencies");
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..plan_len(&d)).collect::<Vec<_>>());
    assert!(
        arrays.len() >= 4,
        "24 entries at MaxArraySize 10: {arrays:?}"
    );

    // submit.sh: valid bash, one sbatch per array, the limit on each.
    let submit = d.join("slurm/submit.sh");
    let n = Command::new("bash")
        .arg("-n")
        .arg(&submit)
        .output()
        .unwrap();
    assert!(n.status.success(), "bash -n: {}", text(&n));
    let sub = std::fs::read_to_string(&submit).unwrap();
    assert_eq!(sub.matches("$(sbatch --parsable").count(), arrays.len());
    assert_eq!(sub.matches("%3 ").count(), arrays.len(), "{sub}");
    assert!(sub.contains("--dependency=afterany:"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn emit_refuses_bad_options() {
    let d = planned("bad");
    let ds = d.to_str().unwrap();
    for (args, says) in [
        (vec!["--to", "slurm", "--extra", "rm -rf /"], "#SBATCH"),
        (vec!["--to", "slurm", "--cpus-per-task", "0"], "positive"),
        (vec!["--to", "slurm", "--max-array-size", "0"], "positive"),
        (vec!["--to", "pbs"], "invalid value"),
    ] {
        let mut a = vec!["sweep", "emit", ds];
        a.extend(args.iter().copied());
        let o = diagc(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
    // Not a sweep directory.
    let o = diagc(&["sweep", "emit", "/nonexistent-dir", "--to", "slurm"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nonexistent-dir"), "{}", text(&o));
    // Submitting before emitting says what to do.
    let o = diagc(&["sweep", "submit", ds]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--to slurm"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn k8s_jobs_are_indexed_jobs_covering_the_plan() {
    let d = planned("k8s");
    let o = diagc(&[
        "sweep",
        "emit",
        d.to_str().unwrap(),
        "--to",
        "k8s",
        "--image",
        "registry.example/diagc:1",
        "--array-limit",
        "4",
        "--gpus-per-task",
        "1",
        "--mem",
        "8Gi",
        "--data",
        "/data/ptb",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let y = std::fs::read_to_string(d.join("sweep-k8s.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&y)
        .map(|doc| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(docs.len(), 3, "stage A, B, timing:\n{y}");
    let mut covered = Vec::new();
    for job in &docs {
        assert_eq!(job["apiVersion"], "batch/v1");
        assert_eq!(job["kind"], "Job");
        let spec = &job["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        let n = spec["completions"].as_u64().unwrap() as usize;
        assert_eq!(spec["parallelism"], 4);
        let pod = &spec["template"]["spec"];
        assert_eq!(
            pod["restartPolicy"], "Never",
            "Indexed Jobs with a podFailurePolicy"
        );
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "registry.example/diagc:1");
        let cmd: Vec<&str> = c["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(&cmd[1..3], &["sweep", "run-one"]);
        assert!(cmd.ends_with(&["--data", "/data/ptb"]), "{cmd:?}");
        let env = c["env"].as_array().unwrap();
        let offset: usize = env
            .iter()
            .find(|e| e["name"] == "DIAGC_INDEX_OFFSET")
            .unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        covered.extend(offset..offset + n);
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
        assert_eq!(c["resources"]["limits"]["memory"], "8Gi");
        // The exit codes that mean "later" and "stopped, saved" do not count as failures.
        let codes = &spec["podFailurePolicy"]["rules"][0];
        assert_eq!(codes["action"], "Ignore");
        let values: Vec<u64> = codes["onExitCodes"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(values, vec![75, 130, 138, 143]);
        let mount = &c["volumeMounts"][0];
        assert_eq!(mount["name"], pod["volumes"][0]["name"]);
    }
    covered.sort_unstable();
    assert_eq!(covered, (0..plan_len(&d)).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn parallel_script_names_every_entry_once_per_stage() {
    let d = planned("parallel");
    let o = diagc(&[
        "sweep",
        "emit",
        d.to_str().unwrap(),
        "--to",
        "parallel",
        "--jobs",
        "2",
        "--host",
        ":",
        "--host",
        "user@node2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let script = d.join("sweep.parallel");
    let n = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(n.status.success(), "bash -n: {}", text(&n));
    let s = std::fs::read_to_string(&script).unwrap();
    let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("parallel ")).collect();
    assert_eq!(lines.len(), 3, "one invocation per stage:\n{s}");
    let mut all = Vec::new();
    let mut logs = Vec::new();
    for l in &lines {
        assert!(l.contains("--resume-failed"), "{l}");
        assert!(l.contains("-S : -S user@node2"), "{l}");
        assert!(l.contains("--index {}"), "{l}");
        let log = l
            .split("--joblog ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        logs.push(log.to_string());
        let idx = l
            .split(" ::: ")
            .nth(1)
            .unwrap()
            .split(" ||")
            .next()
            .unwrap();
        all.extend(idx.split(' ').map(|i| i.parse::<usize>().unwrap()));
    }
    logs.sort();
    logs.dedup();
    assert_eq!(
        logs.len(),
        3,
        "a job log per stage (resume matches by sequence number)"
    );
    assert_eq!(all, (0..plan_len(&d)).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn run_one_takes_its_index_from_the_scheduler_and_says_so() {
    let d = planned("env");
    let ds = d.to_str().unwrap();
    let data = root().join("../shared/data/ptb");
    let run = |vars: &[(&str, &str)]| {
        let mut c = Command::new(bin());
        c.args(["sweep", "run-one", ds, "--data", data.to_str().unwrap()])
            .current_dir(root())
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX")
            .env_remove("PARALLEL_SEQ")
            .env_remove("DIAGC_INDEX_OFFSET")
            .env("RAYON_NUM_THREADS", "1");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    // Slurm, with the offset of a split array: entry 1 (stage A).
    let o = run(&[("SLURM_ARRAY_TASK_ID", "0"), ("DIAGC_INDEX_OFFSET", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("entry 1 (from SLURM_ARRAY_TASK_ID=0 + DIAGC_INDEX_OFFSET=1)"),
        "{}",
        text(&o)
    );
    let plan = std::fs::read_to_string(d.join("plan.jsonl")).unwrap();
    let name = |i: usize| -> String {
        let v: serde_json::Value = serde_json::from_str(plan.lines().nth(i).unwrap()).unwrap();
        v["name"].as_str().unwrap().to_string()
    };
    assert!(d.join("state").join(format!("{}.json", name(1))).is_file());
    assert!(!d.join("state").join(format!("{}.json", name(0))).exists());
    // Slurm comes before Kubernetes; GNU parallel counts from 1.
    let o = run(&[("SLURM_ARRAY_TASK_ID", "1"), ("JOB_COMPLETION_INDEX", "5")]);
    assert!(
        text(&o).contains("entry 1 (from SLURM_ARRAY_TASK_ID=1)"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("already done"), "{}", text(&o));
    let o = run(&[("PARALLEL_SEQ", "1")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("entry 0 (from PARALLEL_SEQ=1 - 1)"),
        "{}",
        text(&o)
    );
    // Nothing to go on, or nonsense: a usage error naming the variables, no run.
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("SLURM_ARRAY_TASK_ID"), "{}", text(&o));
    let o = run(&[("JOB_COMPLETION_INDEX", "three")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&[("JOB_COMPLETION_INDEX", "999")]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not in the plan"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}
