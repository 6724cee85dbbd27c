//! `diagc compare RUN_DIR... [-o report.html]`: the sweep report's table and curves for ad-hoc
//! `diagc train` run directories. This file reads the directories; `sweep::compare` builds the
//! report's input from what was read and `sweep::report` renders it.

use super::*;
use crate::sweep::compare::{self, RunFiles};
use crate::sweep::report;
use serde_json::Value;

/// A run directory's JSON file, `None` when it does not exist.
fn json_file(dir: &Path, name: &str) -> Result<Option<Value>, Error> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::read(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Checkpoint(format!("{} is not JSON: {e}", path.display())))
}

/// The text of the run's mechanism source: its copy under `source/` (a stdlib mechanism's
/// `attention/NAME.diag`, a user's file by the name `run.json` gives), else the stdlib's.
fn mechanism_source(dir: &Path, mech: &str, run: Option<&Value>) -> Option<(String, String)> {
    let source = dir.join("source");
    let candidates: Vec<PathBuf> = if mech.ends_with(".diag") {
        let root = run
            .and_then(|r| r.get("source_root"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                Path::new(mech)
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
            });
        root.into_iter().map(|r| source.join(r)).collect()
    } else {
        vec![source.join("attention").join(format!("{mech}.diag"))]
    };
    for c in candidates {
        if let Ok(text) = std::fs::read_to_string(&c) {
            let name = c
                .file_name()
                .map_or(mech.to_string(), |f| f.to_string_lossy().to_string());
            return Some((name, text));
        }
    }
    crate::stdlib::module(&format!("attention.{mech}"))
        .map(|(path, text)| (path.to_string(), text.to_string()))
}

fn read_run(dir: &Path) -> Result<RunFiles, Error> {
    if !dir.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory (a `diagc train` run directory)",
            dir.display()
        )));
    }
    let config = json_file(dir, "config.json")?.ok_or_else(|| {
        Error::Usage(format!(
            "{} has no config.json: it is not a `diagc train` run directory",
            dir.display()
        ))
    })?;
    let summary = json_file(dir, "summary.json")?;
    // run.json only tells the version and the source root: a damaged one is left out.
    let run = json_file(dir, "run.json").ok().flatten();
    let metrics_path = dir.join("metrics.jsonl");
    let metrics = if metrics_path.exists() {
        std::fs::read_to_string(&metrics_path)
            .map_err(|e| Error::read(&metrics_path, e))?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    let mech = config
        .get("model")
        .and_then(|m| m.get("mech"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let source = mechanism_source(dir, &mech, run.as_ref());
    let drawing = source
        .as_ref()
        .map(|(name, text)| report::mechanism_drawing(name, text));
    Ok(RunFiles {
        name: dir.display().to_string(),
        config,
        summary,
        run,
        metrics,
        mechanism_source: source.map(|(_, t)| t),
        drawing,
    })
}

pub(super) fn compare_cmd(dirs: &[PathBuf], output: Option<&Path>) -> i32 {
    let mut runs = Vec::new();
    for d in dirs {
        match read_run(d) {
            Ok(r) => runs.push(r),
            Err(e) => return fail(e),
        }
    }
    let mut command = vec!["diagc".to_string(), "compare".to_string()];
    command.extend(dirs.iter().map(|d| d.display().to_string()));
    if let Some(o) = output {
        command.extend(["-o".to_string(), o.display().to_string()]);
    }
    let provenance = vec![
        ("diagc".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("command".to_string(), command.join(" ")),
    ];
    let input = compare::build(&runs, provenance);
    out!("{}", report::text_tables(&input));
    let Some(path) = output else {
        return 0;
    };
    let page = match report::render(&input) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if let Err(e) = std::fs::write(path, page.html) {
        return fail(Error::write(path, e));
    }
    errln!("diagc: wrote {}", path.display());
    0
}
