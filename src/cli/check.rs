//! `diagc check` and `diagc explain`.

use super::*;

pub(super) fn check(
    files: &[PathBuf],
    format: Format,
    color: ColorChoice,
    verify_rules: bool,
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
            Ok(o) => {
                total += o.checked.diagnostics.len() + o.checked.suppressed;
                let failed = print_diagnostics(&o, format, color);
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
