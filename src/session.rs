//! The one entry to the front end, shared by the CLI, the library's later phases, the tests and
//! the benchmarks: it reads `.diag` files (the only module that reads source files; the checker
//! gets this module's [`DiskFiles`] to read the modules a file `use`s), checks them, and turns
//! a failed check into [`Error::Frontend`] for callers that need a program.

use crate::check::{self, Checked, ModuleFiles, NoFiles};
use crate::diagnostic::{Code, Diagnostic};
use crate::error::{Error, Result};
use crate::source::SourceMap;
use std::path::Path;

/// Source files (`.diag`, rule and derivation files, modules they `use`) larger than this
/// (16 MiB) are refused before they are read. Only regular files are read: a device
/// (`/dev/zero`), a FIFO or a directory is refused by its kind, since its length says nothing
/// about what reading it would return.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

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

    /// The outcome when it has no diagnostics; otherwise [`Error::Frontend`] with them, its
    /// message followed by `context`.
    pub fn ok_or_error(self, context: impl Into<String>) -> Result<Outcome> {
        if self.checked.is_ok() {
            Ok(self)
        } else {
            Err(Error::Frontend {
                sources: Box::new(self.sources),
                diagnostics: self.checked.diagnostics,
                context: context.into(),
            })
        }
    }
}

/// Reads modules from the disk for the checker (a module `use`d by a file on disk is looked
/// for beside it).
pub struct DiskFiles;

impl ModuleFiles for DiskFiles {
    fn key(&self, path: &Path) -> String {
        let key = std::fs::canonicalize(path).unwrap_or(path.to_path_buf());
        key.to_string_lossy().to_string()
    }

    fn read(&self, path: &Path) -> Option<(String, String)> {
        if !path.is_file() {
            return None;
        }
        let bytes = read_bytes(path).ok()?;
        Some((self.key(path), String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// Checks source text given in memory (`name` is shown in reports); its `use`s resolve in the
/// stdlib only.
pub fn check_text(name: &str, text: &str) -> Outcome {
    let mut sources = SourceMap::new();
    let root = sources.add(name, text);
    let checked = check::check_file(&mut sources, root, &NoFiles);
    Outcome { sources, checked }
}

/// Checks the stdlib module `dotted` (`lm`, `attention.m1`) with `extra_uses` loaded beside it.
pub fn check_stdlib(dotted: &str, extra_uses: &[&str]) -> Result<Outcome> {
    let (path, text) = crate::stdlib::module(dotted)
        .ok_or_else(|| Error::Usage(format!("the stdlib has no module `{dotted}`")))?;
    let mut sources = SourceMap::new();
    let root = sources.add(format!("<stdlib>/{path}"), text);
    let checked = check::check_with(&mut sources, root, extra_uses, &NoFiles);
    Ok(Outcome { sources, checked })
}

/// Reads and checks a file. I/O problems are `Err` (exit code 2 in the CLI); text that is not
/// UTF-8 is a diagnostic (E0004), since it is the file's content that is wrong.
pub fn check_path(path: &Path) -> Result<Outcome> {
    check_path_with(path, &[])
}

/// The directory that holds the source file `path`, canonical (links and `..` resolved), so
/// that two paths can be compared for being side by side; an error when the file is missing.
pub fn directory_of(path: &Path) -> Result<std::path::PathBuf> {
    let file = std::fs::canonicalize(path).map_err(|e| Error::read(path, e))?;
    Ok(file.parent().map(Path::to_path_buf).unwrap_or(file))
}

/// Reads a text file (a rule file, a derivation) with the same limits as a `.diag` file.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = read_bytes(path)?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Usage(format!("{} is not UTF-8 text", path.display())))
}

/// The bytes of a regular file of at most [`MAX_FILE_BYTES`]. Anything else (a directory, a
/// device, a FIFO, a socket) is refused before it is opened for reading, and the read itself
/// stops one byte past the limit, so a file that grows while it is read is refused too.
fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::read(path, e))?;
    if meta.is_dir() {
        return Err(Error::Usage(format!("{shown} is a directory")));
    }
    if !meta.is_file() {
        return Err(Error::Usage(format!(
            "{shown} is not a regular file (a device, a FIFO or a socket); diagc reads source \
             files only"
        )));
    }
    let too_large = |size: String| {
        Error::Usage(format!(
            "{shown} is {size} bytes; diagc reads source files of at most {MAX_FILE_BYTES} bytes \
             (16 MiB)"
        ))
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len().to_string()));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::read(path, e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::read(path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(format!("more than {MAX_FILE_BYTES}")));
    }
    Ok(bytes)
}

/// Like [`check_path`], with extra modules loaded as if `use`d by the file.
pub fn check_path_with(path: &Path, extra_uses: &[&str]) -> Result<Outcome> {
    let shown = path.display().to_string();
    let bytes = read_bytes(path)?;
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
    let checked = check::check_with(&mut sources, root, extra_uses, &DiskFiles);
    Ok(Outcome { sources, checked })
}

/// The files a command names: each directory replaced by the `.diag` files under it, sorted.
pub fn diag_files(paths: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "diag") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for f in paths {
        if f.is_dir() {
            let mut found = Vec::new();
            walk(f, &mut found).map_err(|e| Error::read(f, e))?;
            found.sort();
            out.extend(found);
        } else {
            out.push(f.clone());
        }
    }
    Ok(out)
}

/// The memory this machine has available for a run, in bytes: `MemAvailable` of
/// `/proc/meminfo` (else `MemTotal`); `None` where that file cannot be read (not Linux). Lives
/// here, in a low layer that may touch the file system, so that every phase can ask.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    };
    field("MemAvailable:").or_else(|| field("MemTotal:"))
}

/// Refuses (a usage error: the sizes asked for are too big for this machine), before anything
/// is allocated, a run whose estimated memory (`bytes`, `None` when
/// it overflows 64 bits) exceeds what [`available_memory`] reports; `what` says whose estimate
/// it is. Passes when the machine's memory is unknown.
pub fn check_memory(bytes: Option<u64>, what: &str) -> Result<()> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let Some(bytes) = bytes else {
        return Err(Error::Usage(format!(
            "{what} needs more bytes than 64 bits can count; use smaller sizes"
        )));
    };
    match available_memory() {
        Some(avail) if bytes > avail => Err(Error::Usage(format!(
            "{what} needs about {bytes} bytes ({:.2} GiB), more than the {avail} bytes \
             ({:.2} GiB) this machine has available; use smaller sizes",
            gib(bytes),
            gib(avail)
        ))),
        _ => Ok(()),
    }
}

/// `diagc check --causal AXIS`: proves causal along `axis` ([`crate::ir::causal`]) every diagram
/// of the checked file itself (not of the modules it `use`s) that has an input carrying the
/// axis, with diagram-valued hyperparameters at their defaults, and adds a diagnostic (E0601)
/// for each place where a proof fails. Returns how many diagrams were analysed. Nothing is
/// analysed when the check itself failed; a file that does not declare the axis analyses none.
pub fn prove_causal(o: &mut Outcome, axis: &str) -> usize {
    if !o.checked.is_ok() {
        return 0;
    }
    let program = &o.checked.program;
    let Some(pos) = program.axes.lookup(axis) else {
        return 0;
    };
    let root = crate::source::FileId(0);
    let mut found = Vec::new();
    let mut analysed = 0;
    for d in &program.diagrams {
        if d.span.file != root || !d.inputs.iter().any(|w| d.wire(*w).ty.has(pos)) {
            continue;
        }
        analysed += 1;
        let verdict = crate::ir::causal::prove(program, &d.name, pos, &Default::default());
        found.extend(verdict.diagnostics);
    }
    // A leak inside a helper is reported once, by the diagram that shows the most of the way
    // to it (the caller's report also labels the call).
    found.sort_by_key(|d| {
        (
            d.anchor().map(|s| (s.file.0, s.start, s.end)),
            std::cmp::Reverse(d.labels.len()),
        )
    });
    found.dedup_by_key(|d| d.anchor().map(|s| (s.file.0, s.start, s.end)));
    o.checked.diagnostics.extend(found);
    analysed
}
