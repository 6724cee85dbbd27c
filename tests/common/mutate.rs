//! Mutations of source text for the robustness tests: a small deterministic generator
//! (xorshift, so failures reproduce from the seed) and edits that delete, duplicate, insert
//! tokens, flip bytes and truncate.

/// Xorshift.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens of the language and some that are not, for insertions.
pub const TOKENS: &[&str] = &[
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ";",
    ":",
    ".",
    "=",
    "->",
    "+",
    "-",
    "*",
    "/",
    "axis ",
    "use ",
    "diagram ",
    "simd ",
    "repeat ",
    "discard ",
    " of ",
    "int",
    "float",
    "x",
    "tok",
    "dm",
    "head",
    "src",
    "dk",
    "1",
    "0.5",
    "1e-6",
    "\n",
    " ",
    "q",
    "softmax[src]",
    "dot[dk]",
    "linear[dm -> dm]",
    "é",
    "\u{0}",
    "//",
    "@",
    "$",
    "#",
];

/// One to four random edits of `text`.
pub fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut s: Vec<u8> = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let n = s.len().max(1);
        match rng.below(6) {
            0 => {
                // Delete a range.
                let a = rng.below(n);
                let b = (a + 1 + rng.below(40)).min(s.len());
                if a < b {
                    s.drain(a..b);
                }
            }
            1 => {
                // Duplicate a range somewhere else.
                let a = rng.below(n);
                let b = (a + 1 + rng.below(80)).min(s.len());
                let chunk: Vec<u8> = s.get(a..b).unwrap_or(&[]).to_vec();
                let at = rng.below(s.len() + 1);
                s.splice(at..at, chunk);
            }
            2 | 3 => {
                // Insert a token.
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(s.len() + 1);
                s.splice(at..at, t.iter().copied());
            }
            4 => {
                // Replace a byte with a random one (may break UTF-8; made lossy below).
                if !s.is_empty() {
                    let at = rng.below(s.len());
                    s[at] = (rng.next() & 0xff) as u8;
                }
            }
            _ => {
                // Truncate.
                let at = rng.below(n);
                s.truncate(at);
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}
