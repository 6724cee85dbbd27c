//! The one error type of the library: every fallible function after the front end returns
//! [`Error`] (the front end itself never fails; it returns diagnostics).
//!
//! Each variant says which phase failed, so that the CLI maps it to an exit code in one place
//! (`cli::exit_code`) and can print it as a human line or as a JSON object (`--format json`).
//! The messages are the same sentences the phases always printed: `Display` of an error is what
//! follows `diagc: ` on standard error.

use crate::diagnostic::Diagnostic;
use crate::source::{SourceMap, Span};
use std::path::PathBuf;

/// What went wrong, by phase.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or flags: a size that is not a number, an unknown device, an unknown
    /// diagram name.
    #[error("{0}")]
    Usage(String),
    /// A file or directory that could not be read or written.
    #[error("{context}cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
        /// Said first (`cannot resume: `), empty by default.
        context: String,
    },
    /// Source text that does not check: the checker's diagnostics with the files they point
    /// into. `Display` is the plain (uncoloured) report, then `context`.
    #[error("{}{context}", plain_report(sources, diagnostics))]
    Frontend {
        sources: Box<SourceMap>,
        diagnostics: Vec<Diagnostic>,
        context: String,
    },
    /// Instantiation: an unbound or non-dividing size, a missing hyperparameter, a call that
    /// cannot be inlined. `span` is the axis's or hyperparameter's declaration when known.
    #[error("{message}")]
    Instance { message: String, span: Option<Span> },
    /// Differentiation of a diagram (an op without a gradient rule).
    #[error("{0}")]
    Autodiff(String),
    /// Planning an executable form: layouts, buffers, kernels, fused code.
    #[error("{0}")]
    Plan(String),
    /// Running a plan or the interpreter: inputs of the wrong shape, a non-finite value.
    #[error("{0}")]
    Run(String),
    /// The GPU: no device, the driver, NVRTC, cuBLAS, a launch.
    #[error("{0}")]
    Device(String),
    /// Training data: a missing or corrupt split, a vocabulary problem.
    #[error("{0}")]
    Data(String),
    /// Checkpoints and run directories: missing, corrupt or mismatched files.
    #[error("{0}")]
    Checkpoint(String),
    /// Training itself: divergence, a non-finite loss.
    #[error("{0}")]
    Train(String),
    /// The rewrite system: terms, rules, derivations, the optimiser, the enumeration.
    #[error("{0}")]
    Rewrite(String),
    /// The optimiser cannot take a diagram (`compile --emit optimized-ir`): over its limits, or
    /// a form it does not handle.
    #[error("{0}")]
    Optimise(String),
    /// Drawing: a picture too large to lay out, or one that cannot be rasterised.
    #[error("{0}")]
    Render(String),
    /// An external tool the library runs (the PyTorch peer of `diagc bench`).
    #[error("{0}")]
    External(String),
    /// A compiler pass produced IR that breaks an invariant (`ir::verify`): always a bug.
    #[error("internal error: the IR after {pass} is ill-formed: {message}")]
    Internal { pass: &'static str, message: String },
}

/// Every diagnostic rendered without colour, one report after another.
fn plain_report(sources: &SourceMap, diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| crate::report::render(d, sources, false))
        .collect()
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error reading `path`.
    pub fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::io("read", path.into(), source)
    }

    /// An I/O error writing `path`.
    pub fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::io("write", path.into(), source)
    }

    /// An I/O error creating the directory `path`.
    pub fn create(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::io("create", path.into(), source)
    }

    /// An I/O error removing `path`.
    pub fn remove(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::io("remove", path.into(), source)
    }

    fn io(action: &'static str, path: PathBuf, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path,
            source,
            context: String::new(),
        }
    }

    /// An instantiation error without a span.
    pub fn instance(message: impl Into<String>) -> Error {
        Error::Instance {
            message: message.into(),
            span: None,
        }
    }

    /// The same error with `prefix` put before its message (for context such as "cannot
    /// resume: "). Diagnostics keep their own text; the prefix goes into their context.
    pub fn context(self, prefix: &str) -> Error {
        use Error::*;
        match self {
            Usage(m) => Usage(format!("{prefix}{m}")),
            Io {
                action,
                path,
                source,
                context,
            } => Io {
                action,
                path,
                source,
                context: format!("{prefix}{context}"),
            },
            Frontend {
                sources,
                diagnostics,
                context,
            } => Frontend {
                sources,
                diagnostics,
                context: format!("{prefix}{context}"),
            },
            Instance { message, span } => Instance {
                message: format!("{prefix}{message}"),
                span,
            },
            Autodiff(m) => Autodiff(format!("{prefix}{m}")),
            Plan(m) => Plan(format!("{prefix}{m}")),
            Run(m) => Run(format!("{prefix}{m}")),
            Device(m) => Device(format!("{prefix}{m}")),
            Data(m) => Data(format!("{prefix}{m}")),
            Checkpoint(m) => Checkpoint(format!("{prefix}{m}")),
            Train(m) => Train(format!("{prefix}{m}")),
            Rewrite(m) => Rewrite(format!("{prefix}{m}")),
            Optimise(m) => Optimise(format!("{prefix}{m}")),
            Render(m) => Render(format!("{prefix}{m}")),
            External(m) => External(format!("{prefix}{m}")),
            Internal { pass, message } => Internal {
                pass,
                message: format!("{prefix}{message}"),
            },
        }
    }

    /// The phase, as a stable lowercase word (the `kind` of the JSON form).
    pub fn kind(&self) -> &'static str {
        use Error::*;
        match self {
            Usage(_) => "usage",
            Io { .. } => "io",
            Frontend { .. } => "diagnostics",
            Instance { .. } => "instance",
            Autodiff(_) => "autodiff",
            Plan(_) => "plan",
            Run(_) => "run",
            Device(_) => "device",
            Data(_) => "data",
            Checkpoint(_) => "checkpoint",
            Train(_) => "train",
            Rewrite(_) => "rewrite",
            Optimise(_) => "optimise",
            Render(_) => "render",
            External(_) => "external",
            Internal { .. } => "internal",
        }
    }

    /// The error as JSON objects, one per line of `--format json`: the checker's diagnostics
    /// for [`Error::Frontend`] (as `diagc check --format json` prints them), otherwise one
    /// object `{"kind", "message"}` with the span of an instantiation error when it has one.
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        match self {
            Error::Frontend {
                sources,
                diagnostics,
                ..
            } => diagnostics
                .iter()
                .map(|d| crate::report::to_json(d, sources))
                .collect(),
            other => {
                let mut v = serde_json::json!({
                    "kind": other.kind(),
                    "message": other.to_string(),
                });
                if let Error::Instance { span: Some(s), .. } = other {
                    v["span"] =
                        serde_json::json!({"file": s.file.0, "start": s.start, "end": s.end});
                }
                vec![v]
            }
        }
    }
}
