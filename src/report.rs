//! Rendering diagnostics: ariadne reports for people, JSON lines for tools. This is the only
//! module that knows ariadne.

use crate::diagnostic::Diagnostic;
use crate::source::SourceMap;
use ariadne::{Color, Config, IndexType, Label, Report, ReportKind};

/// Renders one diagnostic as text, with the source lines and every labelled span.
pub fn render(d: &Diagnostic, sources: &SourceMap, color: bool) -> String {
    let mut out = Vec::new();
    let header = format!("error[{}]: {}", d.code, d.message);
    let Some(anchor) = d.anchor() else {
        // Nothing to point at (an unreadable file): the header and notes alone.
        let mut s = header;
        for n in &d.notes {
            s.push_str(&format!("\n  = note: {n}"));
        }
        if let Some(h) = &d.help {
            s.push_str(&format!("\n  = help: {h}"));
        }
        s.push('\n');
        return s;
    };
    let name = |f| sources.get(f).name.clone();
    let mut report = Report::build(ReportKind::Error, (name(anchor.file), anchor.range()))
        .with_config(
            Config::new()
                .with_index_type(IndexType::Byte)
                .with_color(color),
        )
        .with_code(d.code)
        .with_message(&d.message);
    for (i, l) in d.labels.iter().enumerate() {
        let colour = if l.primary { Color::Red } else { Color::Blue };
        report = report.with_label(
            Label::new((name(l.span.file), l.span.range()))
                .with_message(&l.message)
                .with_color(colour)
                .with_order(i as i32),
        );
    }
    for n in &d.notes {
        report = report.with_note(n);
    }
    if let Some(h) = &d.help {
        report = report.with_help(h);
    }
    let cache = ariadne::sources(
        sources
            .files()
            .map(|(_, f)| (f.name.clone(), f.text.clone())),
    );
    if report.finish().write(cache, &mut out).is_err() {
        return format!("{header}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One diagnostic as a JSON object (one line), with 1-based lines and columns.
pub fn to_json(d: &Diagnostic, sources: &SourceMap) -> serde_json::Value {
    let labels: Vec<serde_json::Value> = d
        .labels
        .iter()
        .map(|l| {
            let (line, col) = sources.line_col(l.span.file, l.span.start);
            let (end_line, end_col) = sources.line_col(l.span.file, l.span.end);
            serde_json::json!({
                "file": sources.get(l.span.file).name,
                "start": l.span.start,
                "end": l.span.end,
                "line": line,
                "column": col,
                "end_line": end_line,
                "end_column": end_col,
                "text": sources.slice(l.span),
                "message": l.message,
                "primary": l.primary,
            })
        })
        .collect();
    serde_json::json!({
        "code": d.code.as_str(),
        "severity": "error",
        "message": d.message,
        "labels": labels,
        "notes": d.notes,
        "help": d.help,
    })
}
