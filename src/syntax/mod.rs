//! Syntax: text to AST. One public entry point, [`parse`]; it never fails, it returns a tree (with
//! error nodes where the text could not be read) and the diagnostics for what went wrong.

pub mod ast;
pub mod lexer;

#[allow(clippy::all, unused_parens, dead_code, unused_imports)]
mod grammar {
    include!(concat!(env!("OUT_DIR"), "/diag.rs"));
}

use crate::diagnostic::{Code, Diagnostic};
use crate::source::{FileId, Span};
use lalrpop_util::ParseError;
use lexer::{LexProblem, Tok};

/// Syntax errors reported per file, at most; past this the rest of a file is noise.
const MAX_SYNTAX_ERRORS: usize = 50;

/// Parses one file. Lexer problems come first, then parse errors, each with its span.
pub fn parse(file: FileId, src: &str) -> (ast::Module, Vec<Diagnostic>) {
    let (tokens, problems) = lexer::lex(src);
    let mut diags = Vec::new();
    for p in &problems {
        match p {
            LexProblem::Invalid(r) => diags.push(
                Diagnostic::new(Code::InvalidToken, "invalid character in source")
                    .primary(Span::new(file, r.clone()), "no token starts here")
                    .help("names are letters, digits and `_`; comments start with `//`"),
            ),
            LexProblem::NonFinite(r) => diags.push(
                Diagnostic::new(
                    Code::InvalidToken,
                    format!("the number `{}` is too large", &src[r.clone()]),
                )
                .primary(
                    Span::new(file, r.clone()),
                    "this is not a finite 64-bit float",
                )
                .help("numbers must be finite: at most about 1.8e308"),
            ),
            LexProblem::TooDeep(r) => {
                diags.push(
                    Diagnostic::new(
                        Code::TooDeep,
                        format!("brackets nested more than {} deep", lexer::MAX_DEPTH),
                    )
                    .primary(Span::new(file, r.clone()), "this bracket is too deep"),
                );
                // The file is not parsed at all: see the lexer's module docs.
                return (ast::Module { items: Vec::new() }, diags);
            }
        }
    }

    // A token right after an invalid character is where the parser trips over it; that parse
    // error only echoes the E0001 already reported.
    let after_invalid: std::collections::HashSet<usize> = tokens
        .windows(2)
        .filter(|w| w[0].1 == Tok::Error)
        .map(|w| w[1].0)
        .collect();
    let mut recovered = Vec::new();
    let result = grammar::ModuleParser::new().parse(
        file,
        &mut recovered,
        tokens.into_iter().map(Ok::<_, ()>),
    );
    let module = match result {
        Ok(m) => m,
        Err(e) => {
            push_parse_error(file, src, e, &mut diags);
            ast::Module { items: Vec::new() }
        }
    };
    // Recovered errors are pushed as found; the fatal one (if any) ends the parse. Sort to keep
    // reports in source order.
    let mut recovered_diags = Vec::new();
    for r in recovered {
        push_parse_error(file, src, r.error, &mut recovered_diags);
    }
    recovered_diags.retain(|d: &Diagnostic| {
        d.anchor()
            .is_none_or(|a| !after_invalid.contains(&(a.start as usize)))
    });
    diags.extend(recovered_diags);
    diags.sort_by_key(|d| d.anchor().map(|s| s.start));
    diags.truncate(MAX_SYNTAX_ERRORS);
    (module, diags)
}

fn push_parse_error(
    file: FileId,
    src: &str,
    e: ParseError<usize, Tok, ()>,
    diags: &mut Vec<Diagnostic>,
) {
    let d = match e {
        ParseError::UnrecognizedToken {
            token: (_, Tok::Error, _),
            ..
        }
        | ParseError::ExtraToken {
            token: (_, Tok::Error, _),
        } => return, // reported as E0001
        ParseError::UnrecognizedToken {
            token: (l, tok, r),
            expected,
        } => Diagnostic::new(Code::UnexpectedToken, format!("unexpected {tok}")).primary(
            Span::new(file, l..r),
            format!("expected {}", expected_list(&expected)),
        ),
        ParseError::ExtraToken { token: (l, tok, r) } => {
            Diagnostic::new(Code::UnexpectedToken, format!("unexpected {tok}"))
                .primary(Span::new(file, l..r), "nothing more was expected here")
        }
        ParseError::UnrecognizedEof { location, expected } => {
            let at = location.min(src.len());
            Diagnostic::new(Code::UnexpectedToken, "unexpected end of file")
                .primary(
                    Span::new(file, at..at),
                    format!("expected {}", expected_list(&expected)),
                )
                .help("an opening bracket may be missing its closing one")
        }
        ParseError::InvalidToken { location } => {
            Diagnostic::new(Code::InvalidToken, "invalid token")
                .primary(Span::new(file, location..location), "here")
        }
        ParseError::User { .. } => return,
    };
    // Recovery can report the same place twice (once per attempt); keep the first.
    if !diags.iter().any(|o| o.anchor() == d.anchor()) {
        diags.push(d);
    }
}

/// "one of `)`, `,` or a name": lalrpop's terminal names, made readable.
fn expected_list(expected: &[String]) -> String {
    let mut items: Vec<String> = expected
        .iter()
        .map(|t| match t.as_str() {
            "Ident" => "a name".to_string(),
            "IntLit" | "FloatLit" => "a number".to_string(),
            "\"invalid\"" => String::new(),
            "\"call(\"" => "`(`".to_string(),
            other => format!("`{}`", other.trim_matches('"')),
        })
        .filter(|s| !s.is_empty())
        .collect();
    items.dedup();
    if items.len() > 8 {
        items.truncate(8);
        items.push("...".into());
    }
    match items.len() {
        0 => "something else".into(),
        1 => items.remove(0),
        _ => format!("one of {}", items.join(", ")),
    }
}
