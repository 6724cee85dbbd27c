//! The sweep report (`diagc sweep report`, `diagc compare`): its HTML and figures, checked by
//! parsing them, on a synthetic sweep (`sweep_common`) and on empty and partial inputs.

mod sweep_common;

use diagc::sweep::report::{self, Report};
use diagc::sweep::{
    AggregateRow, Choice, Curve, ModelKey, Quartiles, ReportInput, Stats, TimingRecord, figures,
};
use std::collections::BTreeSet;

fn parse_html(html: &str) -> roxmltree::Document<'_> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, opts)
        .unwrap_or_else(|e| panic!("the page is not well-formed: {e}"))
}

fn has_class(n: &roxmltree::Node, class: &str) -> bool {
    n.attribute("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

fn figure<'r>(r: &'r Report, stem: &str) -> &'r str {
    &r.figures
        .iter()
        .find(|(s, _)| s == stem)
        .unwrap_or_else(|| panic!("no figure {stem}"))
        .1
}

/// The (x, y) of a marker group `translate(x y)`.
fn translate(n: &roxmltree::Node) -> (f64, f64) {
    let t = n.attribute("transform").expect("a marker has a transform");
    let inner = t
        .trim()
        .strip_prefix("translate(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap();
    let v: Vec<f64> = inner
        .split([' ', ','])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (v[0], v[1])
}

fn rendered() -> (ReportInput, Report) {
    let input = sweep_common::input();
    let r = report::render(&input).unwrap();
    (input, r)
}

#[test]
fn every_run_is_in_the_runs_table_and_the_page_is_self_contained() {
    let (input, r) = rendered();
    let doc = parse_html(&r.html);
    let table = doc
        .descendants()
        .find(|n| n.has_tag_name("table") && has_class(n, "runs"))
        .expect("a runs table");
    let names: BTreeSet<String> = table
        .descendants()
        .filter(|n| n.has_tag_name("td") && has_class(n, "name"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    let expected: BTreeSet<String> = input.rows.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, expected);
    // Self-contained: no script, no network reference, no namespace URL in inline SVG.
    let lower = r.html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "a script in the page");
    assert!(!lower.contains("http"), "`http` in the page");
    assert!(!lower.contains("<link"), "a link element in the page");
    assert!(!lower.contains("src="), "an external source in the page");
    // Every figure and the drawn mechanisms are inlined.
    let svgs = doc.descendants().filter(|n| n.has_tag_name("svg")).count();
    assert!(svgs >= 4 + 3, "{svgs} inline SVGs");
    // The sections, in order.
    let ids: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("section"))
        .filter_map(|n| n.attribute("id"))
        .collect();
    assert_eq!(
        ids,
        [
            "flags",
            "fig2",
            "fig4",
            "aggregate",
            "lr",
            "curves",
            "runs",
            "failures",
            "mechanisms",
            "provenance"
        ]
    );
    // Standalone figures keep their namespace (an SVG file needs it).
    for (stem, svg) in &r.figures {
        assert!(
            svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
            "{stem}"
        );
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{stem}: {e}"));
    }
}

#[test]
fn flags_failures_and_the_edge_are_shown() {
    let (input, r) = rendered();
    let doc = parse_html(&r.html);
    let flags = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("flags"))
        .unwrap();
    let items: Vec<String> = flags
        .descendants()
        .filter(|n| n.has_tag_name("li"))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect();
    assert_eq!(items, input.flags);
    // The failed run's error in full, in the failures section.
    let failures = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("failures"))
        .unwrap();
    let pre: Vec<&str> = failures
        .descendants()
        .filter(|n| n.has_tag_name("pre"))
        .filter_map(|n| n.text())
        .collect();
    let err = input
        .rows
        .iter()
        .find(|r| r.name == sweep_common::FAILED)
        .and_then(|r| r.error.as_deref())
        .unwrap();
    assert_eq!(pre, [err]);
    // The edge: in the aggregate table, and in the model's LR panel.
    let agg = doc
        .descendants()
        .find(|n| n.has_tag_name("table") && has_class(n, "aggregate"))
        .unwrap();
    let edges = agg
        .descendants()
        .filter(|n| has_class(n, "edge"))
        .map(|n| n.text().unwrap_or(""))
        .collect::<Vec<_>>();
    assert_eq!(edges, ["(edge of grid)"]);
    let lr = figure(&r, figures::LR);
    let svg = roxmltree::Document::parse(lr).unwrap();
    let panels: Vec<roxmltree::Node> = svg
        .descendants()
        .filter(|n| has_class(n, "lr-panel"))
        .collect();
    assert_eq!(panels.len(), input.choices.len());
    for p in &panels {
        let edge = p.attribute("data-at-edge") == Some("true");
        let flagged = p
            .descendants()
            .any(|n| has_class(&n, "edge-flag") && n.text() == Some("chosen at the edge"));
        assert_eq!(edge, flagged, "{:?}", p.attribute("data-model"));
        let model = p.attribute("data-model").unwrap();
        assert_eq!(
            edge,
            model == format!("{} L{}", sweep_common::EDGE.0, sweep_common::EDGE.1)
        );
        // The chosen scale is ringed, once.
        assert_eq!(
            p.descendants().filter(|n| has_class(n, "chosen")).count(),
            1
        );
    }
}

#[test]
fn figure_2_has_error_bars_exactly_where_more_than_one_seed_finished() {
    let (input, r) = rendered();
    let doc = roxmltree::Document::parse(figure(&r, figures::FIG2)).unwrap();
    let points: Vec<roxmltree::Node> = doc
        .descendants()
        .filter(|n| has_class(n, "point"))
        .collect();
    assert_eq!(points.len(), input.aggregate.len());
    let bars: BTreeSet<&str> = doc
        .descendants()
        .filter(|n| has_class(n, "errorbar"))
        .map(|n| n.attribute("data-model").unwrap())
        .collect();
    let mut singles = 0;
    for p in &points {
        let model = p.attribute("data-model").unwrap();
        let n: usize = p.attribute("data-n").unwrap().parse().unwrap();
        assert_eq!(bars.contains(model), n > 1, "{model}: n = {n}");
        singles += usize::from(n == 1);
    }
    assert_eq!(
        singles, 1,
        "the synthetic sweep has one model with one seed"
    );
    // An error bar spans mean ± sd: its length is 2 sd in pixels, the same scale as the points.
    let bar = doc
        .descendants()
        .find(|n| has_class(n, "errorbar"))
        .unwrap();
    let line = bar.descendants().find(|n| has_class(n, "bar")).unwrap();
    let y1: f64 = line.attribute("y1").unwrap().parse().unwrap();
    let y2: f64 = line.attribute("y2").unwrap().parse().unwrap();
    assert!((y1 - y2).abs() > 2.0, "a visible error bar");
    // A legend entry per series.
    let entries = doc
        .descendants()
        .filter(|n| has_class(n, "legend-entry"))
        .count();
    assert_eq!(entries, sweep_common::MECHS.len());
}

#[test]
fn figure_2_has_a_logarithmic_parameter_axis() {
    let (_, r) = rendered();
    let doc = roxmltree::Document::parse(figure(&r, figures::FIG2)).unwrap();
    let pts: Vec<(f64, f64)> = doc
        .descendants()
        .filter(|n| has_class(n, "point"))
        .map(|n| {
            let p: f64 = n.attribute("data-params").unwrap().parse().unwrap();
            // Points of the same size are spread sideways by a few pixels, which they declare.
            let dx: f64 = n.attribute("data-dx").unwrap().parse().unwrap();
            assert!(dx.abs() <= 25.0, "{dx}");
            (p, translate(&n).0 - dx)
        })
        .collect();
    let (lo, hi) = pts.iter().fold((pts[0], pts[0]), |(a, b), p| {
        (
            if p.0 < a.0 { *p } else { a },
            if p.0 > b.0 { *p } else { b },
        )
    });
    assert!(hi.0 > lo.0 * 1.2);
    for p in &pts {
        let by_log = (p.0.log10() - lo.0.log10()) / (hi.0.log10() - lo.0.log10());
        let by_px = (p.1 - lo.1) / (hi.1 - lo.1);
        assert!(
            (by_log - by_px).abs() < 0.01,
            "{} parameters at x = {}: {by_px} of the way, log scale says {by_log}",
            p.0,
            p.1
        );
    }
    // And not linear: the middle of the range in pixels is the geometric mean.
    let mid = pts
        .iter()
        .find(|p| {
            let lin = (p.0 - lo.0) / (hi.0 - lo.0);
            let log = (p.0.log10() - lo.0.log10()) / (hi.0.log10() - lo.0.log10());
            (lin - log).abs() > 0.03
        })
        .expect("a point where log and linear positions differ");
    let by_px = (mid.1 - lo.1) / (hi.1 - lo.1);
    let lin = (mid.0 - lo.0) / (hi.0 - lo.0);
    assert!((by_px - lin).abs() > 0.02);
}

#[test]
fn figure_4_has_iqr_bars_and_the_reference_line() {
    let (input, r) = rendered();
    let doc = roxmltree::Document::parse(figure(&r, figures::FIG4)).unwrap();
    let iqr = doc.descendants().filter(|n| has_class(n, "iqr")).count();
    assert_eq!(iqr, input.timing.len());
    let refs = doc
        .descendants()
        .filter(|n| has_class(n, "reference"))
        .count();
    assert_eq!(refs, 2, "a reference line in each panel");
    let points = doc.descendants().filter(|n| has_class(n, "point")).count();
    assert_eq!(points, 2 * input.timing.len());
}

#[test]
fn curves_end_with_their_markers() {
    let (input, r) = rendered();
    let doc = roxmltree::Document::parse(figure(&r, figures::CURVES)).unwrap();
    let runs: BTreeSet<&str> = doc
        .descendants()
        .filter(|n| has_class(n, "curve-end"))
        .map(|n| n.attribute("data-run").unwrap())
        .collect();
    let expected: BTreeSet<&str> = input.curves.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(runs, expected);
}

#[test]
fn runs_validated_once_draw_their_training_curves_instead() {
    let (mut input, _) = rendered();
    // A short budget: one validation at the end of each run.
    for c in &mut input.curves {
        let last = *c.points.last().unwrap();
        c.points = vec![last];
    }
    let r = report::render(&input).unwrap();
    let svg = figure(&r, figures::CURVES);
    assert!(
        svg.contains("Training curves of the chosen runs"),
        "the title says so"
    );
    let doc = roxmltree::Document::parse(svg).unwrap();
    // A marker per run, on its final validation; a polyline per run with its training points.
    let ends = doc
        .descendants()
        .filter(|n| has_class(n, "curve-end"))
        .count();
    assert_eq!(ends, input.curves.len());
    let page = parse_html(&r.html);
    let caption: String = page
        .descendants()
        .filter(|n| n.has_tag_name("figcaption"))
        .flat_map(|n| n.descendants().filter_map(|d| d.text()))
        .collect();
    assert!(
        caption.contains("validated at most once") && caption.contains("training"),
        "the caption explains the fallback: {caption}"
    );
    // With two validations per run, the validation curves are drawn as before.
    let (input, r) = rendered();
    assert!(input.curves.iter().all(|c| c.points.len() > 1));
    assert!(figure(&r, figures::CURVES).contains("Validation curves of the chosen runs"));
}

#[test]
fn the_training_curve_is_a_trailing_mean_of_the_loss_thinned() {
    use diagc::sweep::{TRAIN_POINTS, TRAIN_WINDOW, train_curve};
    // A constant loss of ln 100 gives a perplexity of 100 from the first full window on; a
    // diverged (non-finite) record and an evaluation record without a loss are skipped.
    let mut lines: Vec<String> = (1..=TRAIN_WINDOW + 9)
        .map(|s| format!("{{\"step\":{s},\"loss\":{}}}", 100f64.ln()))
        .collect();
    lines.push(format!(
        "{{\"step\":{},\"valid_ppl\":90.0}}",
        TRAIN_WINDOW + 9
    ));
    lines.push("not json".into());
    let c = train_curve(lines.iter().map(String::as_str));
    assert_eq!(c.len(), 10);
    assert_eq!(c[0].0, TRAIN_WINDOW);
    assert_eq!(c.last().unwrap().0, TRAIN_WINDOW + 9);
    assert!(c.iter().all(|p| (p.1 - 100.0).abs() < 1e-9), "{c:?}");
    // A step of the loss: the mean moves by 1/window per step after it.
    let lines: Vec<String> = (1..=TRAIN_WINDOW + 1)
        .map(|s| {
            let l = if s == TRAIN_WINDOW + 1 { 2.0 } else { 1.0 };
            format!("{{\"step\":{s},\"loss\":{l}}}")
        })
        .collect();
    let c = train_curve(lines.iter().map(String::as_str));
    assert_eq!(c.len(), 2);
    assert!((c[0].1 - 1f64.exp()).abs() < 1e-12);
    let expect = (1.0 + 1.0 / TRAIN_WINDOW as f64).exp();
    assert!((c[1].1 - expect).abs() < 1e-12, "{} vs {expect}", c[1].1);
    // A long run is thinned to at most TRAIN_POINTS points, keeping the last step.
    let lines: Vec<String> = (1..=5000)
        .map(|s| format!("{{\"step\":{s},\"loss\":3.0}}"))
        .collect();
    let c = train_curve(lines.iter().map(String::as_str));
    assert!(
        c.len() <= TRAIN_POINTS && c.len() > TRAIN_POINTS / 2,
        "{}",
        c.len()
    );
    assert_eq!(c.last().unwrap().0, 5000);
    // A run shorter than the window: one point, the mean of what there is.
    let c = train_curve(["{\"step\":1,\"loss\":1.0}", "{\"step\":2,\"loss\":3.0}"]);
    assert_eq!(c, vec![(2, 2f64.exp())]);
    assert!(train_curve(Vec::<&str>::new()).is_empty());
}

fn empty() -> ReportInput {
    ReportInput {
        title: "empty".into(),
        description: None,
        rows: vec![],
        aggregate: vec![],
        choices: vec![],
        timing: vec![],
        curves: vec![],
        mechanisms: vec![],
        reference: None,
        provenance: vec![],
        flags: vec![],
    }
}

#[test]
fn an_empty_sweep_says_no_data_yet() {
    let r = report::render(&empty()).unwrap();
    parse_html(&r.html);
    // Figure 2 and the curves always; Figure 4 for a sweep that times against a reference.
    let stems: Vec<&str> = r.figures.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stems, [figures::FIG2, figures::CURVES]);
    let mut timed = empty();
    timed.reference = Some("m1".into());
    let t = report::render(&timed).unwrap();
    assert_eq!(t.figures.len(), 3);
    assert!(t.figures[1].1.contains("no data yet: no timing record"));
    for (stem, svg) in &r.figures {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let nodata = doc
            .descendants()
            .find(|n| has_class(n, "no-data"))
            .unwrap_or_else(|| panic!("{stem} does not say it has no data"));
        let text: String = nodata.descendants().filter_map(|n| n.text()).collect();
        assert!(text.contains("no data yet"), "{stem}: {text}");
    }
    assert!(r.html.contains("no data yet"));
    assert!(!r.html.to_ascii_lowercase().contains("http"));
}

#[test]
fn partial_and_degenerate_inputs_render() {
    let key = |m: &str, l| ModelKey {
        mech: m.into(),
        layers: l,
        swept: vec!["bptt=70".into()],
    };
    let mut input = empty();
    // One point; a model without a parameter count; a NaN mean; an empty and a one-point
    // curve; a choice whose candidates all failed and one with a single candidate; timing with
    // NaN quartiles.
    input.aggregate = vec![
        AggregateRow {
            model: key("m1", 1),
            lr_scale: None,
            lr_at_edge: false,
            parameters: Some(13_400_000),
            n: 1,
            expected: 1,
            test_ppl: Stats::of(&[120.0]),
            valid_ppl: None,
        },
        AggregateRow {
            model: key("m0", 1),
            lr_scale: Some(1.0),
            lr_at_edge: true,
            parameters: None,
            n: 1,
            expected: 3,
            test_ppl: Stats::of(&[150.0]),
            valid_ppl: Stats::of(&[151.0]),
        },
        AggregateRow {
            model: key("m0", 2),
            lr_scale: Some(1.0),
            lr_at_edge: false,
            parameters: Some(16_000_000),
            n: 0,
            expected: 3,
            test_ppl: Some(Stats {
                mean: f64::NAN,
                sd: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            }),
            valid_ppl: None,
        },
    ];
    input.curves = vec![
        Curve {
            name: "a<&>\"b".into(),
            model: key("m1", 1),
            seed: 0,
            points: vec![],
            train: vec![],
        },
        Curve {
            name: "one".into(),
            model: key("m1", 1),
            seed: 1,
            points: vec![(600, 300.0)],
            train: vec![],
        },
    ];
    input.choices = vec![
        Choice {
            model: key("m1", 1),
            lr_scale: 1.0,
            candidates: vec![(0.5, None), (1.0, None)],
            at_edge: false,
        },
        Choice {
            model: key("m0", 1),
            lr_scale: 1.0,
            candidates: vec![(1.0, Some(200.0))],
            at_edge: true,
        },
    ];
    input.timing = vec![TimingRecord {
        model: key("m0", 1),
        reference: "m1".into(),
        rounds: vec![],
        time_ratio: Quartiles {
            median: f64::NAN,
            q1: f64::NAN,
            q3: f64::NAN,
        },
        memory_bytes: (0, 0),
        memory_ratio: 1.2,
        tokens_per_s: f64::NAN,
        device: "cpu".into(),
    }];
    input.flags = vec!["a flag with <markup> & \"quotes\"".into()];
    let r = report::render(&input).unwrap();
    let doc = parse_html(&r.html);
    let flag: String = doc
        .descendants()
        .filter(|n| n.has_tag_name("li"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(
        flag, input.flags[0],
        "user text is escaped, not interpreted"
    );
    for (stem, svg) in &r.figures {
        let d = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert!(!svg.contains("NaN"), "{stem} draws a NaN");
        let _ = d;
    }
    let fig2 = roxmltree::Document::parse(figure(&r, figures::FIG2)).unwrap();
    assert_eq!(
        fig2.descendants().filter(|n| has_class(n, "point")).count(),
        1,
        "only the point with parameters and a finite perplexity"
    );
    assert_eq!(
        fig2.descendants()
            .filter(|n| has_class(n, "errorbar"))
            .count(),
        0
    );
    // An LR panel without a finished candidate says so.
    let lr = figure(&r, figures::LR);
    assert!(lr.contains("no finished candidate yet"));
}

#[test]
fn figures_rasterise_to_pictures_that_are_not_blank() {
    let (_, r) = rendered();
    let png = report::png(figure(&r, figures::FIG2)).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
    assert!(pixmap.width() >= 1000 && pixmap.height() >= 600);
    let colours: BTreeSet<[u8; 4]> = pixmap
        .pixels()
        .iter()
        .map(|p| [p.red(), p.green(), p.blue(), p.alpha()])
        .collect();
    assert!(colours.len() > 20, "{} colours", colours.len());
    let dark = pixmap
        .pixels()
        .iter()
        .filter(|p| u32::from(p.red()) + u32::from(p.green()) + u32::from(p.blue()) < 200)
        .count();
    assert!(dark > 1000, "{dark} dark pixels: text and axes are drawn");
}

/// Writes a run directory as `diagc train` leaves it (without checkpoints).
fn fake_run(dir: &std::path::Path, mech: &str, seed: u64, bptt: u64, finished: Option<f64>) {
    std::fs::create_dir_all(dir.join("source/attention")).unwrap();
    let config = serde_json::json!({
        "model": {"mech": mech, "layers": 1, "d_model": 128, "heads": 4, "d_ff": 512,
                  "vocab": 10000, "bptt": bptt, "batch": 20, "dropout": 0.1},
        "epochs": null, "max_steps": 1200, "warmup": 200, "lr_scale": 1.0, "clip": 1.0,
        "seed": seed, "eval_batch": 10, "valid_every": 600, "train_tokens": null,
        "eval_tokens": null, "divergence": {"margin": 5.0, "steps": 10}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("run.json"),
        r#"{"diagc_version": "0.1.0", "source_root": "lm.diag"}"#,
    )
    .unwrap();
    let (_, text) = diagc::stdlib::module(&format!("attention.{mech}")).unwrap();
    std::fs::write(dir.join(format!("source/attention/{mech}.diag")), text).unwrap();
    let mut metrics = String::new();
    for step in 1..=3 {
        metrics.push_str(&format!(
            "{{\"epoch\":0,\"loss\":9.4,\"lr\":0.0001,\"step\":{step},\"tokens_per_s\":4800.0}}\n"
        ));
    }
    metrics.push_str("{\"step\":600,\"valid_ppl\":300.5}\n");
    if let Some(t) = finished {
        metrics.push_str(&format!("{{\"step\":1200,\"valid_ppl\":{}}}\n", t + 10.0));
        let summary = serde_json::json!({
            "parameters": 2768272, "test_ppl": t, "best_valid_ppl": t + 10.0,
            "last_valid_ppl": t + 10.0, "best": {"step": 1200}, "steps": 1200,
            "train_tokens_per_s": 4811.5, "peak_memory_bytes": 119203396,
            "wall_time_s": 83.2, "device": "cpu"
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    } else {
        // A line being written when the directory was read.
        metrics.push_str("{\"step\":9");
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
}

#[test]
fn compare_reads_run_directories_and_writes_the_page() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sweep_compare");
    let _ = std::fs::remove_dir_all(&root);
    fake_run(&root.join("m1-s0"), "m1", 0, 35, Some(230.0));
    fake_run(&root.join("m1-s1"), "m1", 1, 35, Some(234.0));
    fake_run(&root.join("m0-long"), "m0", 0, 70, None);
    let html = root.join("compare.html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diagc"))
        .arg("compare")
        .args(["m1-s0", "m1-s1", "m0-long"].map(|d| root.join(d)))
        .arg("-o")
        .arg(&html)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table: the two m1 seeds are one model (bptt differs from the m0 run's).
    let m1 = stdout
        .lines()
        .find(|l| l.starts_with("m1 "))
        .expect("an aggregate line for m1");
    assert!(
        m1.contains("bptt=35") && m1.contains("2/2") && m1.contains("232.00 ± 2.83"),
        "{m1}"
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    assert!(
        stdout.contains("warning:") && stdout.contains("not finished"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&html).unwrap();
    let doc = parse_html(&text);
    let names: BTreeSet<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("td") && has_class(n, "name"))
        .filter_map(|n| n.text().map(str::to_string))
        .collect();
    assert_eq!(names.len(), 3);
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&root.display().to_string()))
    );
    // No timing and no tuning in a comparison: neither section.
    for id in ["fig4", "lr"] {
        assert!(
            !doc.descendants().any(|n| n.attribute("id") == Some(id)),
            "a comparison has no {id} section"
        );
    }
    // Both mechanisms drawn, from the runs' copies of their sources.
    let mechs = doc
        .descendants()
        .filter(|n| n.has_tag_name("div") && has_class(n, "mech"))
        .filter(|n| n.descendants().any(|c| c.has_tag_name("svg")))
        .count();
    assert_eq!(mechs, 2);
    assert!(!text.to_ascii_lowercase().contains("http"));

    // A directory that is not a run.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["compare"])
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no config.json"));
}
