//! `diagc draw`: golden pictures of the stdlib (byte for byte), valid XML, a layout without
//! overlaps, highlights, PNG output, and the command line.
//!
//! The golden SVGs are in `tests/golden/draw/`, and the gallery's in `docs/gallery/`; after an
//! intended change to the pictures, look at them and rewrite both with
//! `DIAGC_BLESS=1 cargo test --release --test draw`.

use diagc::ir::Diagram;
use diagc::render::{self, DrawError, DrawOptions, Flow, Geometry, Highlight, PageRect, Scene};
use diagc::session::{self, Outcome};
use std::path::PathBuf;

mod common;
use common::{diagc, golden_check, root};

fn checked(rel: &str) -> Outcome {
    let o = session::check_path(&root().join(rel)).expect("the file is readable");
    assert!(
        o.checked.is_ok(),
        "{rel}: {:?}",
        o.checked.diagnostics.first()
    );
    o
}

fn diagram<'a>(o: &'a Outcome, name: &str) -> &'a Diagram {
    o.checked
        .program
        .diagram(name)
        .unwrap_or_else(|| panic!("no diagram {name}"))
}

fn opts(expand: usize, flow: Flow) -> DrawOptions {
    DrawOptions {
        expand,
        flow,
        highlight: Highlight::default(),
    }
}

/// A picture under test: a diagram of a file, drawn one way.
struct Case {
    golden: String,
    file: String,
    diagram: String,
    expand: usize,
    flow: Flow,
    highlight: Vec<&'static str>,
}

fn case(golden: &str, file: &str, diagram: &str, expand: usize) -> Case {
    Case {
        golden: golden.into(),
        file: file.into(),
        diagram: diagram.into(),
        expand,
        flow: Flow::BottomToTop,
        highlight: Vec::new(),
    }
}

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = diagc::stdlib::mechanisms()
        .map(|m| {
            case(
                &format!("tests/golden/draw/{m}.svg"),
                &format!("stdlib/attention/{m}.diag"),
                &m,
                0,
            )
        })
        .collect();
    for e in 0..=2 {
        v.push(case(
            &format!("tests/golden/draw/lm-expand-{e}.svg"),
            "stdlib/lm.diag",
            "lm",
            e,
        ));
    }
    v.push(Case {
        flow: Flow::LeftToRight,
        ..case(
            "tests/golden/draw/m1-left-to-right.svg",
            "stdlib/attention/m1.diag",
            "m1",
            0,
        )
    });
    v.push(Case {
        highlight: vec!["s", "a"],
        ..case(
            "tests/golden/draw/m1-highlight.svg",
            "stdlib/attention/m1.diag",
            "m1",
            0,
        )
    });
    // The gallery (docs/gallery.md shows these).
    for m in ["m0", "m1", "bahdanau"] {
        v.push(case(
            &format!("docs/gallery/{m}.svg"),
            &format!("stdlib/attention/{m}.diag"),
            m,
            0,
        ));
    }
    v.push(case("docs/gallery/lm.svg", "stdlib/lm.diag", "lm", 2));
    v
}

fn draw(c: &Case) -> String {
    let o = checked(&c.file);
    let d = diagram(&o, &c.diagram);
    let names: Vec<String> = c.highlight.iter().map(|s| s.to_string()).collect();
    let options = DrawOptions {
        highlight: Highlight::by_wire_names(d, &names).expect("the wires exist"),
        ..opts(c.expand, c.flow)
    };
    render::draw(&o.checked.program, d, &options).expect("drawable")
}

#[test]
fn golden_pictures_of_the_stdlib_and_the_gallery() {
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|c| golden_check(&c.golden, &draw(c)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn golden_pictures_cover_every_mechanism_and_are_valid_svg() {
    for m in diagc::stdlib::mechanisms() {
        assert!(
            cases()
                .iter()
                .any(|c| c.golden == format!("tests/golden/draw/{m}.svg")),
            "{m} has no golden picture"
        );
    }
    for c in cases() {
        let text = draw(&c);
        let doc = roxmltree::Document::parse(&text)
            .unwrap_or_else(|e| panic!("{}: not XML: {e}", c.golden));
        let svg = doc.root_element();
        assert_eq!(svg.tag_name().name(), "svg", "{}", c.golden);
        assert_eq!(
            svg.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        for attr in ["width", "height", "viewBox"] {
            assert!(svg.attribute(attr).is_some(), "{}: no {attr}", c.golden);
        }
        // One path per wire and a title on each: nothing is dropped silently.
        let wires = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("wire"))
            .count();
        assert!(wires > 0, "{}", c.golden);
    }
}

#[test]
fn drawing_is_deterministic() {
    let c = case("", "stdlib/lm.diag", "lm", 2);
    let first = draw(&c);
    for _ in 0..3 {
        assert_eq!(draw(&c), first);
    }
}

/// Every wire of the diagram is one `wire` path and every box is drawn once.
#[test]
fn every_box_and_wire_is_drawn() {
    for m in diagc::stdlib::mechanisms() {
        let o = checked(&format!("stdlib/attention/{m}.diag"));
        let d = diagram(&o, &m);
        let svg = render::draw(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let wires = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("wire"))
            .count();
        assert_eq!(wires, d.wires.len(), "{m}");
        let scene = Scene::new(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
        let g = scene.geometry();
        assert_eq!(
            g.nodes.len(),
            d.boxes.len() + d.inputs.len() + d.outputs.len(),
            "{m}"
        );
        let regions = g.frames.len() - 1;
        assert_eq!(regions, d.regions.len(), "{m}: one frame per region");
    }
}

fn overlap(a: PageRect, b: PageRect) -> bool {
    const EPS: f64 = 0.01;
    a[0] < b[0] + b[2] - EPS
        && b[0] < a[0] + a[2] - EPS
        && a[1] < b[1] + b[3] - EPS
        && b[1] < a[1] + a[3] - EPS
}

fn inside(p: (f64, f64), r: PageRect) -> bool {
    const EPS: f64 = 0.5;
    p.0 >= r[0] - EPS && p.0 <= r[0] + r[2] + EPS && p.1 >= r[1] - EPS && p.1 <= r[1] + r[3] + EPS
}

fn centre(r: PageRect) -> (f64, f64) {
    (r[0] + r[2] / 2.0, r[1] + r[3] / 2.0)
}

/// The layout's promises: no two nodes overlap; a node lies in its frame and in no other
/// frame; frames nest inside their parents and siblings do not overlap.
fn check_layout(what: &str, g: &Geometry) {
    let n = g.nodes.len();
    for i in 0..n {
        for j in i + 1..n {
            assert!(
                !overlap(g.nodes[i].rect, g.nodes[j].rect),
                "{what}: `{}` ({}) overlaps `{}` ({})",
                g.nodes[i].label,
                g.nodes[i].kind,
                g.nodes[j].label,
                g.nodes[j].kind
            );
        }
    }
    let within = |mut f: usize, ancestor: usize| loop {
        if f == ancestor {
            return true;
        }
        match g.frames[f].parent {
            Some(p) => f = p,
            None => return false,
        }
    };
    for (fi, f) in g.frames.iter().enumerate().skip(1) {
        let parent = f.parent.expect("only the root has no parent");
        if parent != 0 {
            let (p, r) = (g.frames[parent].rect, f.rect);
            assert!(
                inside((r[0], r[1]), p) && inside((r[0] + r[2], r[1] + r[3]), p),
                "{what}: frame `{}` leaves its parent",
                f.caption
            );
        }
        for other in g.frames.iter().skip(fi + 1) {
            if other.parent == f.parent {
                assert!(
                    !overlap(f.rect, other.rect),
                    "{what}: frames `{}` and `{}` overlap",
                    f.caption,
                    other.caption
                );
            }
        }
        for node in &g.nodes {
            if within(node.frame, fi) {
                assert!(
                    inside(centre(node.rect), f.rect),
                    "{what}: `{}` is outside its frame `{}`",
                    node.label,
                    f.caption
                );
            } else {
                assert!(
                    !overlap(node.rect, f.rect),
                    "{what}: `{}` ({}) overlaps the frame `{}`",
                    node.label,
                    node.kind,
                    f.caption
                );
            }
        }
    }
}

/// Every diagram of the stdlib, the passing corpus and the guided example, expanded 0 to 3
/// levels, both ways.
#[test]
fn layouts_have_no_overlaps() {
    let mut files: Vec<String> = diagc::stdlib::FILES
        .iter()
        .map(|(p, _)| format!("stdlib/{p}"))
        .collect();
    let mut pass: Vec<String> = std::fs::read_dir(root().join("tests/pass"))
        .unwrap()
        .map(|e| format!("tests/pass/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".diag"))
        .collect();
    pass.sort();
    files.extend(pass);
    files.push("examples/guided.diag".into());
    let mut drawn = 0;
    for f in &files {
        let o = checked(f);
        for d in &o.checked.program.diagrams {
            for expand in 0..=3 {
                for flow in [Flow::BottomToTop, Flow::LeftToRight] {
                    let what = format!("{f}: {} (expand {expand}, {flow:?})", d.name);
                    let scene = Scene::new(&o.checked.program, d, &opts(expand, flow))
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    check_layout(&what, &scene.geometry());
                    drawn += 1;
                }
            }
        }
    }
    assert!(drawn > 100, "{drawn}");
}

#[test]
fn inputs_are_at_the_bottom_or_on_the_left() {
    let o = checked("stdlib/attention/m1.diag");
    let d = diagram(&o, "m1");
    let at = |flow| {
        let g = Scene::new(&o.checked.program, d, &opts(0, flow))
            .unwrap()
            .geometry();
        let find = |kind| centre(g.nodes.iter().find(|n| n.kind == kind).unwrap().rect);
        (find("input"), find("output"))
    };
    let (i, o_) = at(Flow::BottomToTop);
    assert!(i.1 > o_.1 + 100.0, "input below output: {i:?} {o_:?}");
    let (i, o_) = at(Flow::LeftToRight);
    assert!(i.0 + 100.0 < o_.0, "input left of output: {i:?} {o_:?}");
}

#[test]
fn composites_expand_one_level_at_a_time() {
    let o = checked("stdlib/lm.diag");
    let d = diagram(&o, "lm");
    let look = |expand| {
        let g = Scene::new(&o.checked.program, d, &opts(expand, Flow::BottomToTop))
            .unwrap()
            .geometry();
        let frames: Vec<String> = g.frames.iter().skip(1).map(|f| f.caption.clone()).collect();
        let closed: Vec<String> = g
            .nodes
            .iter()
            .filter(|n| n.kind == "box")
            .map(|n| n.label.clone())
            .collect();
        (frames, closed)
    };
    let (frames, boxes) = look(0);
    assert_eq!(frames, ["repeat layers"]);
    assert!(boxes.contains(&"block[mech, p]".to_string()), "{boxes:?}");
    let (frames, boxes) = look(1);
    assert_eq!(frames, ["repeat layers", "block[mech, p]"]);
    // The diagram-valued hyperparameter is resolved: `mech` is M1 by default.
    assert!(boxes.contains(&"mech (m1)".to_string()), "{boxes:?}");
    assert!(boxes.contains(&"ffn[p]".to_string()), "{boxes:?}");
    let (frames, boxes) = look(2);
    assert_eq!(
        frames,
        [
            "repeat layers",
            "block[mech, p]",
            "mech (m1)",
            "simd head",
            "ffn[p]"
        ]
    );
    assert!(!boxes.iter().any(|b| b.contains("mech")), "{boxes:?}");
    assert_eq!(look(3), look(2), "nothing is left to expand");
}

#[test]
fn highlights_mark_the_chosen_boxes_and_wires() {
    let o = checked("stdlib/attention/m1.diag");
    let d = diagram(&o, "m1");
    let h = Highlight::by_wire_names(d, &["s".into(), "a".into()]).unwrap();
    assert_eq!((h.wires.len(), h.boxes.len()), (2, 2));
    let options = DrawOptions {
        highlight: h.clone(),
        ..opts(0, Flow::BottomToTop)
    };
    let svg = render::draw(&o.checked.program, d, &options).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let marked = |class: &str| {
        doc.descendants()
            .filter(|n| n.attribute("class") == Some(class))
            .count()
    };
    assert_eq!(marked("wire-hl"), 2);
    assert_eq!(marked("box primitive hl"), 2, "softmax and scale");
    let g = Scene::new(&o.checked.program, d, &options)
        .unwrap()
        .geometry();
    let labels: Vec<&str> = g
        .nodes
        .iter()
        .filter(|n| n.highlight)
        .map(|n| n.label.as_str())
        .collect();
    assert_eq!(labels, ["scale[(1 / sqrt(dk))]", "softmax[src]"]);
    assert_eq!(
        Highlight::by_wire_names(d, &["nope".into()]),
        Err(vec!["nope".to_string()])
    );
    // A highlighted composite that is expanded highlights its frame.
    let lm = checked("stdlib/lm.diag");
    let d = diagram(&lm, "block");
    let call = d
        .boxes
        .iter()
        .position(|b| matches!(b.op, diagc::ir::Op::Call { .. }))
        .unwrap();
    let mut h = Highlight::default();
    h.boxes.insert(diagc::ir::BoxId(call as u32));
    let options = DrawOptions {
        highlight: h,
        ..opts(0, Flow::BottomToTop)
    };
    // `block`'s `mech` has no default: it stays closed and is highlighted as a box.
    let g = Scene::new(&lm.checked.program, d, &options)
        .unwrap()
        .geometry();
    assert!(g.nodes.iter().any(|n| n.highlight && n.label == "mech"));
    let d = diagram(&lm, "lm");
    let call = d
        .boxes
        .iter()
        .position(|b| matches!(b.op, diagc::ir::Op::Call { .. }))
        .unwrap();
    let mut h = Highlight::default();
    h.boxes.insert(diagc::ir::BoxId(call as u32));
    let options = DrawOptions {
        highlight: h,
        ..opts(1, Flow::BottomToTop)
    };
    let g = Scene::new(&lm.checked.program, d, &options)
        .unwrap()
        .geometry();
    let hl: Vec<&str> = g
        .frames
        .iter()
        .filter(|f| f.highlight)
        .map(|f| f.caption.as_str())
        .collect();
    assert_eq!(hl, ["block[mech, p]"]);
}

/// The picture a rewrite step will show (issue 6): the matched site before and after, side by
/// side. Here the "step" is M1 to Luong's dot product, which drops the scale.
#[test]
fn a_rewrite_step_draws_before_and_after() {
    let o = session::check_text("step.diag", "use attention.m1\nuse attention.luong_dot\n");
    assert!(o.checked.is_ok());
    let p = &o.checked.program;
    let (m1, dot) = (p.diagram("m1").unwrap(), p.diagram("luong_dot").unwrap());
    let h1 = Highlight::by_wire_names(m1, &["s".into()]).unwrap();
    let h2 = Highlight::by_wire_names(dot, &["s".into()]).unwrap();
    let svg = render::draw_step((p, m1, &h1), (p, dot, &h2), &opts(0, Flow::BottomToTop)).unwrap();
    golden_check("tests/golden/draw/step-m1-to-luong-dot.svg", &svg).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let panels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("panel"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(panels, ["before", "after"]);
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("title"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(
        titles,
        [
            "m1(x: [tok, dm]) -> [tok, dm]",
            "luong_dot(x: [tok, dm]) -> [tok, dm]"
        ]
    );
    let marked = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("wire-hl"))
        .count();
    assert_eq!(marked, 2, "one wire on each side");
    // The panels sit side by side: the width is the sum of both and a gap.
    let one = |d| {
        Scene::new(p, d, &opts(0, Flow::BottomToTop))
            .unwrap()
            .size()
            .0
    };
    let width: f64 = doc
        .root_element()
        .attribute("width")
        .unwrap()
        .parse()
        .unwrap();
    assert!(width > one(m1) + one(dot), "{width}");
}

#[test]
fn png_is_rendered() {
    let c = case("", "stdlib/attention/m1.diag", "m1", 0);
    let svg = draw(&c);
    let png = render::png::render(&svg, 1.0).expect("renders");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: the size follows the SVG's.
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (w, h) = (be(&png[16..20]), be(&png[20..24]));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let attr = |a| -> f64 { doc.root_element().attribute(a).unwrap().parse().unwrap() };
    assert_eq!(w, attr("width").ceil() as u32);
    assert_eq!(h, attr("height").ceil() as u32);
    // Something is drawn: a PNG of a blank page compresses to far less.
    assert!(png.len() > 10_000, "{}", png.len());
    assert!(matches!(
        render::png::render("<svg", 1.0),
        Err(DrawError::Png(_))
    ));
}

/// A long chain and a wide fan draw in reasonable time; a diagram over the limit is refused.
#[test]
fn large_diagrams_draw_or_are_refused() {
    let chain = |n: usize| {
        let mut s = String::from("axis tok, dm\ndiagram big(x: [tok, dm]) -> [tok, dm] {\n");
        s.push_str("    h0 = x\n");
        for i in 1..=n {
            s.push_str(&format!("    h{i} = relu(h{})\n", i - 1));
        }
        s.push_str(&format!("    h{n}\n}}\n"));
        s
    };
    let o = session::check_text("big.diag", &chain(2000));
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let d = diagram(&o, "big");
    let t = std::time::Instant::now();
    let svg = render::draw(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
    assert!(svg.len() > 100_000);
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());

    // Every output of one fork feeds a box that is also fed by the input: many long edges.
    let mut s = String::from("axis tok, dm\ndiagram fan(x: [tok, dm]) -> [tok, dm] {\n");
    s.push_str("    a0 = x\n");
    for i in 1..=300 {
        s.push_str(&format!("    a{i} = relu(a{}) + x\n", i - 1));
    }
    s.push_str("    a300\n}\n");
    let o = session::check_text("fan.diag", &s);
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let t = std::time::Instant::now();
    let d = diagram(&o, "fan");
    let scene = Scene::new(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
    check_layout("fan", &scene.geometry());
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());

    let o = session::check_text("huge.diag", &chain(render::graph::MAX_NODES));
    assert!(o.checked.is_ok());
    let d = diagram(&o, "big");
    assert!(matches!(
        render::draw(&o.checked.program, d, &opts(0, Flow::BottomToTop)),
        Err(DrawError::TooLarge(_))
    ));
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diagc-draw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_draws_svg_and_png() {
    // SVG on standard output by default, the same bytes as the library's.
    let o = diagc(&["draw", "stdlib/attention/m1.diag"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let c = case("", "stdlib/attention/m1.diag", "m1", 0);
    assert_eq!(text(&o.stdout), draw(&c));

    // The diagram of a file with several: the one the others use (`lm`).
    let svg = temp("lm.svg");
    let o = diagc(&[
        "draw",
        "stdlib/lm.diag",
        "--expand",
        "1",
        "-o",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let written = std::fs::read_to_string(&svg).unwrap();
    assert!(written.contains("lm(ids: [tok] of vocab) -&gt; [tok, vocab]"));
    assert!(written.contains(">block[mech, p]<"));

    // PNG by extension or by flag.
    let png = temp("m0.png");
    let o = diagc(&[
        "draw",
        "stdlib/attention/m0.diag",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let out = temp("m0-img");
    let o = diagc(&[
        "draw",
        "stdlib/attention/m0.diag",
        "--format",
        "png",
        "--left-to-right",
        "--highlight",
        "kv,z",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn cli_draw_of_an_ill_typed_file_reports_and_exits_1() {
    for f in std::fs::read_dir(root().join("examples/ill-typed")).unwrap() {
        let f = f.unwrap().path();
        let out = temp("bad.svg");
        let _ = std::fs::remove_file(&out);
        let o = diagc(&["draw", f.to_str().unwrap(), "-o", out.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{}", f.display());
        let err = text(&o.stderr);
        assert!(err.contains("Error"), "{}: {err}", f.display());
        assert!(!out.exists(), "nothing is drawn for {}", f.display());
    }
    // The whole failing corpus: diagnostics and exit 1, never a panic. A file that fails only
    // a property `check` is asked to prove (`// check: --causal`) is well-typed: it draws.
    let (mut fails, mut drawn) = (0, 0);
    for f in std::fs::read_dir(root().join("tests/fail")).unwrap() {
        let f = f.unwrap().path();
        if f.extension().is_some_and(|x| x == "diag") {
            let well_typed = String::from_utf8_lossy(&std::fs::read(&f).unwrap())
                .lines()
                .any(|l| l.trim_start().starts_with("// check: --causal"));
            let o = diagc(&["draw", f.to_str().unwrap()]);
            let want = if well_typed { 0 } else { 1 };
            assert_eq!(o.status.code(), Some(want), "{}", f.display());
            if well_typed {
                drawn += 1;
            } else {
                fails += 1;
            }
        }
    }
    assert!(fails > 10 && drawn >= 1, "{fails} failing, {drawn} drawn");
}

#[test]
fn cli_draw_usage_errors_exit_2() {
    let cases: &[&[&str]] = &[
        &["draw", "no/such/file.diag"],
        &["draw", "stdlib/attention/m1.diag", "--diagram", "nope"],
        &["draw", "stdlib/attention/m1.diag", "--format", "png"],
        &["draw", "stdlib/attention/m1.diag", "--highlight", "nope"],
        &["draw", "stdlib/attention/m1.diag", "--expand", "-1"],
        &[
            "draw",
            "stdlib/attention/m1.diag",
            "-o",
            "/no/such/dir/x.svg",
        ],
    ];
    for args in cases {
        let o = diagc(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(!text(&o.stderr).contains("panicked"), "{args:?}");
    }
    // A file with two diagrams that do not use each other: which one must be said.
    let f = temp("two.diag");
    std::fs::write(
        &f,
        "axis tok\ndiagram a(x: [tok]) -> [tok] { relu(x) }\ndiagram b(x: [tok]) -> [tok] { tanh(x) }\n",
    )
    .unwrap();
    let o = diagc(&["draw", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--diagram: a, b"),
        "{}",
        text(&o.stderr)
    );
    let o = diagc(&["draw", f.to_str().unwrap(), "--diagram", "b"]);
    assert_eq!(o.status.code(), Some(0));
}

/// The last two numbers of an SVG path's data: where it ends.
fn path_end(d: &str) -> (f64, f64) {
    let nums: Vec<f64> = d
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (nums[nums.len() - 2], nums[nums.len() - 1])
}

#[test]
fn the_first_operand_of_sub_and_div_is_marked_and_named_wires_are_labelled() {
    let text = "axis x\ndiagram f(a: [x], b: [x]) -> [x] {\n    d = b - a\n    d / a\n}\n";
    let o = session::check_text("t.diag", text);
    assert!(o.checked.is_ok());
    let d = diagram(&o, "f");
    let svg = render::draw(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let title_of = |n: roxmltree::Node| {
        n.children()
            .find(|c| c.has_tag_name("title"))
            .and_then(|t| t.text())
            .unwrap_or("")
            .to_string()
    };
    let wire_end = |name: &str| {
        let w = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("wire") && title_of(*n) == name)
            .unwrap_or_else(|| panic!("no wire {name}"));
        path_end(w.attribute("d").unwrap())
    };
    let marks: Vec<(String, (f64, f64))> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("first"))
        .map(|n| {
            let d = n.attribute("d").unwrap();
            let nums: Vec<f64> = d[1..]
                .split(['h', ' '])
                .take(2)
                .map(|s| s.parse().unwrap())
                .collect();
            (title_of(n), (nums[0] + 3.0, nums[1] + 3.0))
        })
        .collect();
    assert_eq!(marks.len(), 2, "{marks:?}");
    // Each mark sits where its operand's wire ends: b for the minuend, d for the numerator.
    for (what, wire) in [("minuend", "b: [x]"), ("numerator", "d: [x]")] {
        let (_, at) = marks
            .iter()
            .find(|m| m.0 == what)
            .unwrap_or_else(|| panic!("no {what} mark"));
        let end = wire_end(wire);
        assert!(
            (at.0 - end.0).abs() < 0.05 && (at.1 - end.1).abs() < 0.05,
            "{what} at {at:?}, {wire} ends at {end:?}"
        );
    }
    // The named wire's label carries its name.
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("ty") && n.text() == Some("d: [x]")),
        "no label d: [x]"
    );
}

#[test]
fn the_wire_labels_of_a_box_with_several_outputs_do_not_overlap() {
    // A call returning two tables: each output's label is drawn right of its port, so the box
    // is widened until the first label ends before the second port (they used to be printed
    // over each other).
    let text = "axis tok, dk\n\
                diagram tables(x: [tok, dk]) -> ([tok, dk], [tok, dk]) { (sin(x), cos(x)) }\n\
                diagram f(x: [tok, dk]) -> [tok, dk] {\n    c, s = tables(x)\n    x * c + s\n}\n";
    let o = session::check_text("t.diag", text);
    assert!(o.checked.is_ok());
    let d = diagram(&o, "f");
    let svg = render::draw(&o.checked.program, d, &opts(0, Flow::BottomToTop)).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let label = |t: &str| {
        let n = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("ty") && n.text() == Some(t))
            .unwrap_or_else(|| panic!("no label {t}"));
        let x: f64 = n.attribute("x").unwrap().parse().unwrap();
        let y: f64 = n.attribute("y").unwrap().parse().unwrap();
        (
            x,
            y,
            x + t.chars().count() as f64 * diagc::render::layout::SMALL_CHAR_W,
        )
    };
    let (c, s) = (label("c: [tok, dk]"), label("s: [tok, dk]"));
    assert!((c.1 - s.1).abs() < 0.5, "on one line: {c:?} {s:?}");
    assert!(c.2 <= s.0, "c ends at {} after s starts at {}", c.2, s.0);
}
