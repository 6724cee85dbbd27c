//! Running the front end on files or strings: what the CLI, the tests and the benchmarks share.

use crate::check::{self, Checked};
use crate::diagnostic::{Code, Diagnostic};
use crate::source::SourceMap;
use std::path::Path;

/// Files larger than this are refused as an I/O error rather than read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// The outcome of checking one file.
pub struct Outcome {
    pub sources: SourceMap,
    pub checked: Checked,
}

impl Outcome {
    /// Every diagnostic rendered without colour, one report after another (for errors that
    /// carry the checker's reports as text).
    pub fn plain_report(&self) -> String {
        self.checked
            .diagnostics
            .iter()
            .map(|d| crate::report::render(d, &self.sources, false))
            .collect()
    }
}

/// Checks source text given in memory (`name` is shown in reports).
pub fn check_text(name: &str, text: &str) -> Outcome {
    let mut sources = SourceMap::new();
    let root = sources.add(name, text);
    let checked = check::check_file(&mut sources, root);
    Outcome { sources, checked }
}

/// Reads and checks a file. I/O problems are `Err` (exit code 2 in the CLI); text that is not
/// UTF-8 is a diagnostic (E0004), since it is the file's content that is wrong.
pub fn check_path(path: &Path) -> Result<Outcome, String> {
    check_path_with(path, &[])
}

/// Like [`check_path`], with extra modules loaded as if `use`d by the file.
pub fn check_path_with(path: &Path, extra_uses: &[&str]) -> Result<Outcome, String> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("{shown} is a directory"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown} is {} bytes; diagc reads files up to {MAX_FILE_BYTES} bytes",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut sources = SourceMap::new();
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let d = Diagnostic::new(
                Code::NotUtf8,
                format!("{shown} is not UTF-8 text (first invalid byte at offset {at})"),
            )
            .help(".diag files are UTF-8 text; is this the right file?");
            let checked = Checked {
                program: Default::default(),
                diagnostics: vec![d],
                suppressed: 0,
            };
            return Ok(Outcome { sources, checked });
        }
    };
    let root = sources.add(shown, text);
    let checked = check::check_with(&mut sources, root, extra_uses);
    Ok(Outcome { sources, checked })
}
