//! The lexer: logos turns text into tokens with byte spans.
//!
//! Why it is shaped this way:
//! - Whitespace, newlines and `//` comments are skipped: statements are separated by where the
//!   grammar says an expression cannot continue (an optional `;` is allowed). The one layout rule
//!   is [`Tok::CallParen`]: only a `(` right after a name or `]` on the same line opens call
//!   arguments.
//! - A character that starts no token becomes [`Tok::Error`] instead of stopping the lexer. The
//!   grammar has no rule that accepts it, so the parser's error recovery resumes after it and
//!   later, independent errors are still reported. The lexer error itself is reported once, with
//!   code E0001, and the parse error it causes is suppressed.
//! - Brackets are counted here. Past [`MAX_DEPTH`] levels of nesting the file is rejected before
//!   parsing (E0003): every later phase walks expressions recursively, and this bound is what keeps
//!   that recursion (and dropping the tree) inside the stack on hostile input.
//! - Identifiers are Unicode letters, digits and `_`; spans are byte offsets (see `report`).

use logos::Logos;

/// Deepest bracket nesting accepted. Real diagrams use under ten.
pub const MAX_DEPTH: usize = 128;

#[derive(Logos, Clone, Debug, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
#[logos(skip(r"//[^\n]*", allow_greedy = true))]
pub enum Tok {
    #[token("use")]
    Use,
    #[token("axis")]
    Axis,
    #[token("diagram")]
    Diagram,
    #[token("simd")]
    Simd,
    #[token("repeat")]
    Repeat,
    #[token("discard")]
    Discard,
    #[token("of")]
    Of,
    #[token("int")]
    Int,
    #[token("float")]
    Float,
    #[token("rule")]
    Rule,

    #[regex(r"[\p{L}_][\p{L}\p{N}_]*", |lex| lex.slice().to_string())]
    Ident(String),
    #[regex(r"[0-9]+", |lex| lex.slice().to_string(), priority = 3)]
    IntLit(String),
    #[regex(r"[0-9]+\.[0-9]+([eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+", |lex| lex.slice().to_string())]
    FloatLit(String),

    #[token("(")]
    LParen,
    /// A `(` right after a name or a `]` on the same line: it opens the arguments of a call
    /// (`f(x)`, `linear[dm -> dk](x)`). Any other `(` opens a group or a tuple. This is what lets
    /// statements go without terminators: in `a = f` followed by a line `(b, c)`, the second line
    /// is the block's result, not a call of `f`.
    CallParen,
    #[token(")")]
    RParen,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token(",")]
    Comma,
    #[token(";")]
    Semi,
    #[token(":")]
    Colon,
    #[token(".")]
    Dot,
    #[token("=")]
    Eq,
    #[token("=>")]
    FatArrow,
    #[token("->")]
    Arrow,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("^")]
    Caret,

    /// A character that starts no token (reported as E0001).
    Error,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Tok::Use => "`use`",
            Tok::Axis => "`axis`",
            Tok::Diagram => "`diagram`",
            Tok::Simd => "`simd`",
            Tok::Repeat => "`repeat`",
            Tok::Discard => "`discard`",
            Tok::Of => "`of`",
            Tok::Int => "`int`",
            Tok::Float => "`float`",
            Tok::Rule => "`rule`",
            Tok::Ident(s) => return write!(f, "name `{s}`"),
            Tok::IntLit(s) | Tok::FloatLit(s) => return write!(f, "number `{s}`"),
            Tok::LParen | Tok::CallParen => "`(`",
            Tok::RParen => "`)`",
            Tok::LBracket => "`[`",
            Tok::RBracket => "`]`",
            Tok::LBrace => "`{`",
            Tok::RBrace => "`}`",
            Tok::Comma => "`,`",
            Tok::Semi => "`;`",
            Tok::Colon => "`:`",
            Tok::Dot => "`.`",
            Tok::Eq => "`=`",
            Tok::FatArrow => "`=>`",
            Tok::Arrow => "`->`",
            Tok::Plus => "`+`",
            Tok::Minus => "`-`",
            Tok::Star => "`*`",
            Tok::Slash => "`/`",
            Tok::Caret => "`^`",
            Tok::Error => "an invalid character",
        };
        f.write_str(s)
    }
}

/// What went wrong while lexing, with byte ranges.
#[derive(Debug, Clone, PartialEq)]
pub enum LexProblem {
    /// Text that starts no token.
    Invalid(std::ops::Range<usize>),
    /// Brackets nested deeper than [`MAX_DEPTH`]; the range is the bracket that crossed it.
    TooDeep(std::ops::Range<usize>),
    /// A number too large for a 64-bit float (`1e999`): it would be infinite. The token is
    /// kept, so parsing goes on.
    NonFinite(std::ops::Range<usize>),
}

/// Lexes a whole file into `(start, token, end)` triples, as lalrpop wants them.
///
/// Runs of invalid characters are merged into one [`Tok::Error`] (and one problem), so a binary
/// file gives a bounded number of reports rather than one per byte.
pub fn lex(src: &str) -> (Vec<(usize, Tok, usize)>, Vec<LexProblem>) {
    let mut toks: Vec<(usize, Tok, usize)> = Vec::new();
    let mut problems = Vec::new();
    let mut depth = 0usize;
    let mut lexer = Tok::lexer(src);
    // A leading byte-order mark is skipped; spans stay byte offsets into `src`.
    if src.starts_with('\u{feff}') {
        lexer.bump('\u{feff}'.len_utf8());
    }
    while let Some(res) = lexer.next() {
        let span = lexer.span();
        match res {
            Ok(tok) => {
                match tok {
                    Tok::LParen | Tok::CallParen | Tok::LBracket | Tok::LBrace => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            problems.push(LexProblem::TooDeep(span));
                            return (toks, problems);
                        }
                    }
                    Tok::RParen | Tok::RBracket | Tok::RBrace => depth = depth.saturating_sub(1),
                    _ => {}
                }
                let tok = match (&tok, toks.last()) {
                    (Tok::LParen, Some((_, Tok::Ident(_) | Tok::RBracket, end)))
                        if !src[*end..span.start].contains('\n') =>
                    {
                        Tok::CallParen
                    }
                    _ => tok,
                };
                if let Tok::IntLit(n) | Tok::FloatLit(n) = &tok
                    && !n.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    problems.push(LexProblem::NonFinite(span.clone()));
                }
                toks.push((span.start, tok, span.end));
            }
            Err(()) => match toks.last_mut() {
                Some((_, Tok::Error, end)) if *end == span.start => {
                    *end = span.end;
                    if let Some(LexProblem::Invalid(r)) = problems.last_mut() {
                        r.end = span.end;
                    }
                }
                _ => {
                    toks.push((span.start, Tok::Error, span.end));
                    problems.push(LexProblem::Invalid(span));
                }
            },
        }
    }
    (toks, problems)
}
