//! Rendering: byte spans with non-ASCII text, and JSON positions.

use diagc::{report, session};

#[test]
fn labels_land_on_the_right_characters_after_non_ascii_text() {
    // `é` and `тok` are multi-byte: a character-indexed renderer would shift the underline.
    let src = "axis тok, dé\n// ééé\ndiagram f(x: [тok, dé]) -> [тok] {\n    sum[nope](x)\n}\n";
    let o = session::check_text("<utf8>", src);
    let d = &o.checked.diagnostics[0];
    assert_eq!(d.code.as_str(), "E0103");
    assert_eq!(o.sources.slice(d.labels[0].span), "nope");
    let text = report::render(d, &o.sources, false);
    // The underline starts under `nope`: find the source line and the caret line below it.
    let lines: Vec<&str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.contains("sum[nope](x)"))
        .expect("the source line is shown");
    let col = |s: &str, pat: &str| s.find(pat).map(|b| s[..b].chars().count());
    let start = col(lines[i], "nope").unwrap();
    let marker = lines[i + 1]
        .chars()
        .position(|c| c != ' ' && c != '│' && c != '·')
        .unwrap();
    assert_eq!(marker, start, "{text}");
    let json = report::to_json(d, &o.sources);
    assert_eq!(json["labels"][0]["line"], 4);
    assert_eq!(json["labels"][0]["column"], 9);
    assert_eq!(json["labels"][0]["text"], "nope");
}
