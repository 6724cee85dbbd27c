//! `diagc run` and `diagc gradcheck`: one diagram instantiated and run on the interpreter.

use super::*;

/// Checks FILE and instantiates one of its diagrams; prints what went wrong and returns the
/// exit code on failure.
fn load_instance(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
) -> Result<crate::ir::instance::Instance, i32> {
    let extra: Vec<String> = instance.mechanism_modules();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let o = session::check_path_with(file, &extra).map_err(fail)?;
    if print_diagnostics(&o, Format::Human, ColorChoice::Auto) {
        return Err(1);
    }
    let program = &o.checked.program;
    let root = crate::source::FileId(0);
    let name = match diagram {
        Some(n) => n.to_string(),
        None => match program.diagrams.iter().rfind(|d| d.span.file == root) {
            Some(d) => d.name.clone(),
            None => {
                return Err(fail(Error::Usage(format!(
                    "{} defines no diagram",
                    file.display()
                ))));
            }
        },
    };
    instance
        .bindings()
        .and_then(|b| crate::ir::instance::instantiate(program, &name, &b))
        .map_err(|e| fail_in(e, &o.sources))
}

pub(super) fn run_cmd(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
    seed: u64,
    train: bool,
    check_finite: bool,
    save: Option<&Path>,
) -> i32 {
    use crate::backend::cpu::{harness, interp::RunOptions};
    let inst = match load_instance(file, diagram, instance) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let opts = RunOptions {
        train,
        seed,
        check_finite,
    };
    let outs = match harness::run_random(&inst, seed, opts) {
        Ok(o) => o,
        Err(e) => return fail(e.context("run failed: ")),
    };
    if let Some(path) = save {
        let record = match harness::record(&inst, seed, opts) {
            Ok(r) => r,
            Err(e) => return fail(e.context("run failed: ")),
        };
        let text = serde_json::to_string(&record).expect("JSON values serialise");
        if let Err(e) = std::fs::write(path, text) {
            return fail(Error::write(path, e));
        }
    }
    let frozen: usize = inst
        .params
        .iter()
        .filter(|p| p.name.ends_with(".frozen"))
        .map(|p| p.axes.iter().map(|a| inst.size(*a)).product::<usize>())
        .sum();
    outln!(
        "{}: {} parameters in {} tensors{}, seed {seed}",
        inst.diagram.name,
        inst.parameter_count(),
        inst.params.len(),
        if frozen > 0 {
            format!(" ({frozen} of them frozen)")
        } else {
            String::new()
        }
    );
    for (k, t) in outs.iter().enumerate() {
        let axes: Vec<String> = t
            .axes
            .iter()
            .zip(t.data.shape())
            .map(|(a, n)| format!("{}={n}", inst.axes.name(*a)))
            .collect();
        let n = t.data.len().max(1) as f64;
        let mean = t.data.sum() / n;
        let std = (t.data.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        let min = t.data.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let first: Vec<String> = t.data.iter().take(4).map(|x| format!("{x:.5}")).collect();
        outln!(
            "output {k} [{}]: mean {mean:.6} std {std:.6} min {min:.6} max {max:.6} first [{}]",
            axes.join(", "),
            first.join(", ")
        );
    }
    0
}

pub(super) fn gradcheck_cmd(
    file: &Path,
    diagram: Option<&str>,
    instance: &InstanceArgs,
    seed: u64,
    samples: usize,
    tolerance: f64,
    train: bool,
) -> i32 {
    let inst = match load_instance(file, diagram, instance) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let report = match crate::backend::cpu::harness::gradcheck(&inst, seed, samples, train) {
        Ok(r) => r,
        Err(e) => return fail(e.context("gradcheck failed to run: ")),
    };
    for (name, n, worst) in &report.per_input {
        outln!("{worst:10.3e}  {name} ({n} elements)");
    }
    let verdict = if report.worst <= tolerance {
        "ok"
    } else {
        "FAILED"
    };
    outln!(
        "worst error {:.3e} at {} (tolerance {tolerance:.1e}): {verdict}",
        report.worst,
        report.worst_at
    );
    if report.worst <= tolerance { 0 } else { 1 }
}
