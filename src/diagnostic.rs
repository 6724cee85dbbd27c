//! Diagnostics as data.
//!
//! Phases never print: they return [`Diagnostic`] values that carry a stable [`Code`], a message,
//! and labelled spans (every span involved, so a mismatch labels both sides). Only `report`
//! knows how to render them (ariadne for people, JSON lines for tools).

use crate::source::Span;

/// The stable error codes. A code never changes meaning once published; `diagc explain CODE`
/// prints the long explanation from [`Code::explanation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    // Syntax: E00xx.
    InvalidToken,
    UnexpectedToken,
    TooDeep,
    NotUtf8,
    // Names: E01xx.
    UnknownWire,
    UnknownBox,
    UnknownAxis,
    Duplicate,
    UnknownModule,
    UnknownOption,
    UnknownRuleClass,
    // Types and shapes: E02xx.
    TypeMismatch,
    AxesDiffer,
    SizeMismatch,
    MissingAxis,
    ReshapeSize,
    AxisPresent,
    Arity,
    BadIndexArgs,
    IndexWire,
    BadAxisSize,
    // SIMD regions: E03xx.
    SimdAxisInside,
    SimdLeaves,
    SimdScope,
    SimdPerLane,
    // Wiring: E04xx.
    Dangling,
    Cycle,
    DiscardUsed,
    Recursive,
    // Hyperparameters: E05xx.
    HyperMismatch,
    HyperMissing,
    // Properties: E06xx.
    NotCausal,
}

/// Every code, in order (for `diagc explain --list` and for tests that need one example of each).
pub const ALL_CODES: &[Code] = &[
    Code::InvalidToken,
    Code::UnexpectedToken,
    Code::TooDeep,
    Code::NotUtf8,
    Code::UnknownWire,
    Code::UnknownBox,
    Code::UnknownAxis,
    Code::Duplicate,
    Code::UnknownModule,
    Code::UnknownOption,
    Code::UnknownRuleClass,
    Code::TypeMismatch,
    Code::AxesDiffer,
    Code::SizeMismatch,
    Code::MissingAxis,
    Code::ReshapeSize,
    Code::AxisPresent,
    Code::Arity,
    Code::BadIndexArgs,
    Code::IndexWire,
    Code::BadAxisSize,
    Code::SimdAxisInside,
    Code::SimdLeaves,
    Code::SimdScope,
    Code::SimdPerLane,
    Code::Dangling,
    Code::Cycle,
    Code::DiscardUsed,
    Code::Recursive,
    Code::HyperMismatch,
    Code::HyperMissing,
    Code::NotCausal,
];

impl Code {
    pub fn as_str(self) -> &'static str {
        use Code::*;
        match self {
            InvalidToken => "E0001",
            UnexpectedToken => "E0002",
            TooDeep => "E0003",
            NotUtf8 => "E0004",
            UnknownWire => "E0101",
            UnknownBox => "E0102",
            UnknownAxis => "E0103",
            Duplicate => "E0104",
            UnknownModule => "E0105",
            UnknownOption => "E0106",
            UnknownRuleClass => "E0107",
            TypeMismatch => "E0201",
            AxesDiffer => "E0202",
            SizeMismatch => "E0203",
            MissingAxis => "E0204",
            ReshapeSize => "E0205",
            AxisPresent => "E0206",
            Arity => "E0207",
            BadIndexArgs => "E0208",
            IndexWire => "E0209",
            BadAxisSize => "E0210",
            SimdAxisInside => "E0301",
            SimdLeaves => "E0302",
            SimdScope => "E0303",
            SimdPerLane => "E0304",
            Dangling => "E0401",
            Cycle => "E0402",
            DiscardUsed => "E0403",
            Recursive => "E0404",
            HyperMismatch => "E0501",
            HyperMissing => "E0502",
            NotCausal => "E0601",
        }
    }

    pub fn parse(s: &str) -> Option<Code> {
        let s = s.trim().to_ascii_uppercase();
        ALL_CODES.iter().copied().find(|c| c.as_str() == s)
    }

    /// A one-line title, shown by `diagc explain --list`.
    pub fn title(self) -> &'static str {
        self.explanation().lines().next().unwrap_or("")
    }

    /// The long explanation: a title line, what it means, an example and the usual fix.
    pub fn explanation(self) -> &'static str {
        use Code::*;
        match self {
            InvalidToken => include_str!("../docs/errors/E0001.md"),
            UnexpectedToken => include_str!("../docs/errors/E0002.md"),
            TooDeep => include_str!("../docs/errors/E0003.md"),
            NotUtf8 => include_str!("../docs/errors/E0004.md"),
            UnknownWire => include_str!("../docs/errors/E0101.md"),
            UnknownBox => include_str!("../docs/errors/E0102.md"),
            UnknownAxis => include_str!("../docs/errors/E0103.md"),
            Duplicate => include_str!("../docs/errors/E0104.md"),
            UnknownModule => include_str!("../docs/errors/E0105.md"),
            UnknownOption => include_str!("../docs/errors/E0106.md"),
            UnknownRuleClass => include_str!("../docs/errors/E0107.md"),
            TypeMismatch => include_str!("../docs/errors/E0201.md"),
            AxesDiffer => include_str!("../docs/errors/E0202.md"),
            SizeMismatch => include_str!("../docs/errors/E0203.md"),
            MissingAxis => include_str!("../docs/errors/E0204.md"),
            ReshapeSize => include_str!("../docs/errors/E0205.md"),
            AxisPresent => include_str!("../docs/errors/E0206.md"),
            Arity => include_str!("../docs/errors/E0207.md"),
            BadIndexArgs => include_str!("../docs/errors/E0208.md"),
            IndexWire => include_str!("../docs/errors/E0209.md"),
            BadAxisSize => include_str!("../docs/errors/E0210.md"),
            SimdAxisInside => include_str!("../docs/errors/E0301.md"),
            SimdLeaves => include_str!("../docs/errors/E0302.md"),
            SimdScope => include_str!("../docs/errors/E0303.md"),
            SimdPerLane => include_str!("../docs/errors/E0304.md"),
            Dangling => include_str!("../docs/errors/E0401.md"),
            Cycle => include_str!("../docs/errors/E0402.md"),
            DiscardUsed => include_str!("../docs/errors/E0403.md"),
            Recursive => include_str!("../docs/errors/E0404.md"),
            HyperMismatch => include_str!("../docs/errors/E0501.md"),
            HyperMissing => include_str!("../docs/errors/E0502.md"),
            NotCausal => include_str!("../docs/errors/E0601.md"),
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A labelled span. The primary label is where the report is anchored.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
    pub primary: bool,
}

/// One error, as data.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            notes: Vec::new(),
            help: None,
        }
    }

    /// The primary label: where the problem is.
    pub fn primary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: true,
        });
        self
    }

    /// A secondary label: another span involved (the other side of a mismatch, a definition).
    pub fn secondary(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    /// The span the report is anchored at: the first primary label, else the first label.
    pub fn anchor(&self) -> Option<Span> {
        self.labels
            .iter()
            .find(|l| l.primary)
            .or(self.labels.first())
            .map(|l| l.span)
    }
}

/// Names longer than this (in bytes) get no "did you mean": the edit distance is quadratic in
/// the length, and a hostile 200,000-character name must not stall the checker.
pub const MAX_SUGGEST_LEN: usize = 64;

/// "did you mean" support: the closest candidate within a small edit distance. Bounded work:
/// nothing for a name longer than [`MAX_SUGGEST_LEN`], and a candidate whose length alone
/// puts it out of reach (or that is longer than the limit) is skipped without computing the
/// distance, so one call costs at most `MAX_SUGGEST_LEN²` steps per candidate.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if name.len() > MAX_SUGGEST_LEN {
        return None;
    }
    let limit = (name.chars().count() / 3).max(1) + 1;
    let mut best: Option<(usize, &str)> = None;
    for cand in candidates {
        // Cheap filter first: the length alone already bounds the edit distance.
        if cand.len() > MAX_SUGGEST_LEN || cand.len().abs_diff(name.len()) > limit || cand == name {
            continue;
        }
        let d = strsim::levenshtein(name, cand);
        if d <= limit && best.is_none_or(|(bd, bc)| d < bd || (d == bd && cand < bc)) {
            best = Some((d, cand));
        }
    }
    best.map(|(_, c)| c)
}

/// Adds a "did you mean" help to a diagnostic when a close candidate exists.
pub fn did_you_mean<'a>(
    d: Diagnostic,
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Diagnostic {
    match closest(name, candidates) {
        Some(c) => d.help(format!("did you mean `{c}`?")),
        None => d,
    }
}
