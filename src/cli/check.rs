//! `diagc check` and `diagc explain`.

use super::*;

pub(super) fn check(
    files: &[PathBuf],
    format: Format,
    color: ColorChoice,
    verify_rules: bool,
    causal: Option<&str>,
    probe: bool,
) -> i32 {
    let files = match session::diag_files(files) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut any_errors = false;
    let mut io_error = false;
    let mut total = 0;
    for f in &files {
        match session::check_path(f) {
            Ok(mut o) => {
                let before = o.checked.diagnostics.len();
                let analysed = causal.map(|axis| (axis, session::prove_causal(&mut o, axis)));
                total += o.checked.diagnostics.len() + o.checked.suppressed;
                let failed = print_diagnostics(&o, format, color);
                if let Some((axis, n)) = analysed
                    && matches!(format, Format::Human)
                    && before == 0
                {
                    let unproved = o.checked.diagnostics.len();
                    match (n, unproved) {
                        (0, _) => errln!(
                            "{}: no diagram with an input along `{axis}` to prove causal",
                            f.display()
                        ),
                        (n, 0) => errln!(
                            "{}: {n} diagram(s) proved causal along `{axis}`",
                            f.display()
                        ),
                        (n, _) => errln!(
                            "{}: {n} diagram(s) analysed, not all proved causal along `{axis}`",
                            f.display()
                        ),
                    }
                }
                if let Some(axis) = causal.filter(|_| probe && before == 0) {
                    let (problems, lines) = causal_probe(&o, axis);
                    for l in lines {
                        errln!("{l}");
                    }
                    any_errors |= problems > 0;
                    total += problems;
                }
                any_errors |= failed;
                if verify_rules && !failed {
                    for (rule, verdict) in crate::rewrite::verify::verify_rules(&o.checked.program)
                    {
                        match verdict {
                            Ok(line) => errln!("rule `{rule}`: {line}"),
                            Err(e) => {
                                errln!("diagc: rule `{rule}` ({}): {e}", f.display());
                                any_errors = true;
                                total += 1;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                print_error(&e);
                io_error = true;
            }
        }
    }
    if matches!(format, Format::Human) {
        if any_errors {
            errln!("{total} error(s) in {} file(s) checked", files.len());
        } else if !io_error {
            errln!("{} file(s) checked, no errors", files.len());
        }
    }
    if io_error {
        2
    } else if any_errors {
        1
    } else {
        0
    }
}

/// The sizes of the probe's instances: the position axis 8, every other free axis 4.
const PROBE_POSITIONS: u64 = 8;
const PROBE_OTHERS: u64 = 4;

/// `--causal-probe`: runs [`crate::backend::cpu::harness::causal_probe`] on every diagram that
/// `--causal` analysed, at small sizes. Returns the number of problems (leaks seen; a leak in a
/// diagram the proof accepted is an internal error) and one line per diagram.
fn causal_probe(o: &session::Outcome, axis: &str) -> (usize, Vec<String>) {
    use crate::ir::instance::{self, Bindings};
    let program = &o.checked.program;
    let Some(pos) = program.axes.lookup(axis) else {
        return (0, vec![]);
    };
    let root = crate::source::FileId(0);
    let free: Vec<String> = program
        .axes
        .axes
        .iter()
        .filter(|a| a.size == crate::ir::size::Size::var(&a.name) && a.name != axis)
        .map(|a| a.name.clone())
        .collect();
    // The sizes tried, in order: every free axis at PROBE_OTHERS; then, for axes whose sizes
    // must divide others (`dk = dm / head`, `half = dk / 2`), each free axis in turn at 2 and
    // the others at 2 * PROBE_OTHERS.
    let assign = |small: Option<usize>| -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> = free
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = match small {
                    None => PROBE_OTHERS,
                    Some(k) if k == i => 2,
                    Some(_) => 2 * PROBE_OTHERS,
                };
                (n.clone(), v)
            })
            .collect();
        m.insert(axis.to_string(), PROBE_POSITIONS);
        m
    };
    let tries: Vec<std::collections::BTreeMap<String, u64>> = std::iter::once(assign(None))
        .chain((0..free.len()).map(|k| assign(Some(k))))
        .collect();
    let mut problems = 0;
    let mut lines = Vec::new();
    for d in &program.diagrams {
        if d.span.file != root || !d.inputs.iter().any(|w| d.wire(*w).ty.has(pos)) {
            continue;
        }
        let proved = crate::ir::causal::prove(program, &d.name, pos, &Default::default()).proved();
        let attempt = |sizes: &std::collections::BTreeMap<String, u64>| {
            let b = Bindings {
                sizes: sizes.clone(),
                hypers: Default::default(),
            };
            instance::instantiate(program, &d.name, &b)
        };
        let show = |sizes: &std::collections::BTreeMap<String, u64>| -> String {
            let v: Vec<String> = sizes.iter().map(|(k, v)| format!("{k}={v}")).collect();
            v.join(", ")
        };
        let found = tries
            .iter()
            .find_map(|s| attempt(s).ok().map(|i| (i, show(s))));
        let Some((inst, shown)) = found else {
            let e = attempt(&tries[0])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            lines.push(format!(
                "probe `{}`: not run: it cannot be instantiated at {} ({e}), nor with one \
                 free axis at 2 and the others at {}",
                d.name,
                show(&tries[0]),
                2 * PROBE_OTHERS
            ));
            continue;
        };
        match crate::backend::cpu::harness::causal_probe(&inst, pos, 1) {
            Ok(None) => lines.push(format!(
                "probe `{}`: no earlier output changed when each later position of its inputs \
                 along `{axis}` was redrawn ({}, seed 1, f64 interpreter)",
                d.name, shown
            )),
            Ok(Some(leak)) => {
                problems += 1;
                let input = inst
                    .diagram
                    .input_names
                    .get(leak.input)
                    .cloned()
                    .unwrap_or_default();
                lines.push(format!(
                    "probe `{}`: output {} at {axis} = {} changed by {:.3e} when input `{input}` \
                     at {axis} = {} was redrawn: it is not causal{}",
                    d.name,
                    leak.output + 1,
                    leak.at,
                    leak.change,
                    leak.from,
                    if proved {
                        " (internal error: the static proof accepted it; please report this)"
                    } else {
                        ""
                    }
                ));
            }
            Err(e) => lines.push(format!("probe `{}`: not run: {e}", d.name)),
        }
    }
    (problems, lines)
}

pub(super) fn explain(code: Option<&str>, list: bool) -> i32 {
    if list {
        for c in ALL_CODES {
            outln!("{}", c.title());
        }
        return 0;
    }
    let code = code.unwrap_or_default();
    match Code::parse(code) {
        Some(c) => {
            out!("{}", c.explanation());
            0
        }
        None => fail(Error::Usage(format!(
            "no error code `{code}`; `diagc explain --list` lists them"
        ))),
    }
}
