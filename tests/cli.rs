//! The command line contract: exit codes, output formats, and `--help` on every command.

mod common;
use common::diagc;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_of_the_stdlib_is_clean() {
    let o = diagc(&["check", "stdlib"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("no errors"));
}

#[test]
fn check_of_an_ill_typed_file_exits_1_and_points_at_the_wires() {
    let dir = std::env::temp_dir().join(format!("diagc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.diag");
    std::fs::write(
        &f,
        "axis tok, dk\naxis dv = dk\ndiagram f(q: [tok, dk], v: [tok, dv]) -> [tok] {\n    dot[dk](q, v)\n}\n",
    )
    .unwrap();
    let o = diagc(&["check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("E0204"), "{err}");
    assert!(
        err.contains("dot[dk](q, v)"),
        "the report shows the source line: {err}"
    );
    assert!(
        err.contains("rename[dv -> dk]"),
        "the report suggests the fix: {err}"
    );

    let o = diagc(&["check", "--format", "json", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let line = text(&o.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["code"], "E0204");
    let texts: Vec<&str> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert!(texts.contains(&"v") && texts.contains(&"dk"), "{texts:?}");
}

#[test]
fn io_and_usage_errors_exit_2() {
    assert_eq!(
        diagc(&["check", "no/such/file.diag"]).status.code(),
        Some(2)
    );
    assert_eq!(diagc(&["check"]).status.code(), Some(2));
    assert_eq!(diagc(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(diagc(&["explain", "E9999"]).status.code(), Some(2));
    assert_eq!(
        diagc(&[
            "compile",
            "stdlib/attention/m1.diag",
            "--diagram",
            "nope",
            "--emit",
            "ir"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn explain_prints_the_long_explanation() {
    let o = diagc(&["explain", "e0204"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).starts_with("E0204"));
    let list = diagc(&["explain", "--list"]);
    assert_eq!(
        text(&list.stdout).lines().count(),
        diagc::diagnostic::ALL_CODES.len()
    );
}

#[test]
fn compile_emits_the_ir_of_a_diagram() {
    let o = diagc(&[
        "compile",
        "stdlib/attention/m1.diag",
        "--diagram",
        "m1",
        "--emit",
        "ir",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let ir = text(&o.stdout);
    assert!(
        ir.starts_with("diagram m1(x: [tok, dm]) -> [tok, dm]"),
        "{ir}"
    );
    assert!(ir.contains("simd head {"), "{ir}");
    assert!(ir.contains("softmax[src]"), "{ir}");
    let lowered = text(
        &diagc(&[
            "compile",
            "stdlib/attention/m1.diag",
            "--emit",
            "ir-lowered",
        ])
        .stdout,
    );
    assert!(!lowered.contains("simd head"), "{lowered}");
    assert!(
        lowered.contains("[head, tok, src] = softmax[src]"),
        "{lowered}"
    );
}

#[test]
fn every_command_has_help() {
    for cmd in [
        vec!["--help"],
        vec!["check", "--help"],
        vec!["explain", "--help"],
        vec!["compile", "--help"],
    ] {
        let o = diagc(&cmd);
        assert_eq!(o.status.code(), Some(0));
        assert!(text(&o.stdout).contains("Usage"), "{cmd:?}");
    }
}

#[test]
fn run_and_gradcheck_work_and_name_unbound_sizes() {
    let sizes = ["--size", "tok=4", "--size", "dm=8", "--size", "head=2"];
    let mut args = vec!["run", "stdlib/attention/m0.diag"];
    args.extend(sizes);
    let o = diagc(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("output 0 [tok=4, dm=8]"),
        "{}",
        text(&o.stdout)
    );

    let mut args = vec!["gradcheck", "stdlib/attention/m0.diag"];
    args.extend(sizes);
    let o = diagc(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(text(&o.stdout).contains(": ok"), "{}", text(&o.stdout));

    let o = diagc(&["run", "stdlib/attention/m0.diag", "--size", "tok=4"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("`dm`"), "{}", text(&o.stderr));
    let o = diagc(&["run", "stdlib/attention/m0.diag", "--size", "dm=abc"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_refuses_unknown_devices_and_mechanisms() {
    let o = diagc(&["bench", "m1", "--device", "tpu"]);
    assert_eq!(o.status.code(), Some(2));
    // `--device cuda` runs on the CPU with a message: tests/cuda.rs.
    let o = diagc(&["bench", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("m1"), "{}", text(&o.stderr));
}

#[test]
fn bench_rounds_and_top_report_rounds_medians_and_slowest_steps() {
    let small = ["--steps", "2", "--batch-size", "2", "--bptt", "5"];
    let mut args = vec!["bench", "m0", "--rounds", "3"];
    args.extend(small);
    let o = diagc(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("3 rounds"), "{out}");
    for k in 1..=3 {
        assert!(out.contains(&format!("round  {k}: diagc")), "{out}");
    }
    assert!(out.contains("median:"), "{out}");
    // One round (the default) prints no table; `--top 3` lists three steps with their boxes.
    let mut args = vec!["bench", "m0", "--top", "3"];
    args.extend(small);
    let out = text(&diagc(&args).stdout);
    assert!(!out.contains("median:"), "{out}");
    let listed: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("the 3 slowest steps:"))
        .skip(1)
        .collect();
    assert_eq!(listed.len(), 3, "{out}");
    assert!(
        listed
            .iter()
            .all(|l| l.contains(" ms ") && l.contains("box ")),
        "{out}"
    );
    // The machine's ceiling, measured in the same run, and every product against it: as many
    // product lines as the summary counts, their times adding up to its product time, and
    // products plus the rest making the profiled forward+backward.
    assert!(out.contains("the machine's ceiling"), "{out}");
    let summary = out
        .lines()
        .find(|l| l.contains("one forward+backward (profiled"))
        .unwrap_or_else(|| panic!("{out}"));
    let num = |after: &str| -> f64 {
        let rest = &summary[summary.find(after).unwrap() + after.len()..];
        rest.trim_start()
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let total = num("fastest of 3 runs,");
    let count = num("):") as usize;
    let ptime = num("products");
    let outside = num("outside products");
    assert!((ptime + outside - total).abs() <= 0.15, "{summary}");
    let rows: Vec<f64> = out
        .lines()
        .skip_while(|l| !l.contains("every product, slowest first"))
        .skip(1)
        .take_while(|l| l.contains('%') && l.contains("box "))
        .map(|l| {
            // Each row: its time, rate and share, `batch x m x n x k`, the layout of a, b, c.
            let w: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(w[1], "ms", "{l}");
            assert_eq!((w[5], w[7], w[9]), ("x", "x", "x"), "{l}");
            assert!(
                w[11].len() == 3 && w[11].chars().all(|c| "NTS".contains(c)),
                "{l}"
            );
            w[0].parse().unwrap()
        })
        .collect();
    assert_eq!(rows.len(), count, "{out}");
    let sum: f64 = rows.iter().sum();
    assert!(
        (sum - ptime).abs() <= 0.01 * count as f64 + 0.1,
        "{sum} vs {ptime}: {out}"
    );
    // The products' distance from the ceiling and its parts: the time at the ceiling plus the
    // distance is the products' time, and the parts add up to the distance.
    let split = out
        .lines()
        .find(|l| l.contains("at the ceiling the products would take"))
        .unwrap_or_else(|| panic!("{out}"));
    let nums: Vec<f64> = split
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() >= 5, "{split}");
    assert!(
        (nums[0] + nums[1] - ptime).abs() <= 0.2,
        "{split} vs {ptime}"
    );
    let parts: f64 = nums[2..].iter().sum();
    assert!((parts - nums[1]).abs() <= 0.25, "{split}");
    // Zero rounds is refused.
    let mut args = vec!["bench", "m0", "--rounds", "0"];
    args.extend(small);
    assert_eq!(diagc(&args).status.code(), Some(2));
}

#[test]
fn every_command_prints_its_errors_as_json_when_asked() {
    // One JSON object per line on standard output, with the phase as `kind`; nothing on
    // standard error; the exit code of the error's variant.
    let cases: &[(&[&str], &str, i32)] = &[
        (&["run", "no/such/file.diag"], "io", 2),
        (&["gradcheck", "no/such/file.diag"], "io", 2),
        (&["draw", "no/such/file.diag"], "io", 2),
        (&["compile", "no/such/file.diag", "--emit", "ir"], "io", 2),
        (&["compile", "stdlib/attention/m1.diag"], "usage", 2),
        (&["frobnicate"], "usage", 2),
        (&["rewrite", "no/such/file.diag"], "io", 2),
        (&["explain", "E9999"], "usage", 2),
        (&["derive", "no-such-derivation"], "io", 2),
        (
            &["run", "stdlib/attention/m1.diag", "--size", "tok=x"],
            "usage",
            2,
        ),
        (&["bench", "m1", "--device", "tpu"], "usage", 2),
        (&["train", "m1", "--device", "tpu"], "usage", 2),
        (&["selftest", "--device", "tpu"], "usage", 2),
        (
            &[
                "compile",
                "stdlib/attention/m1.diag",
                "--diagram",
                "nope",
                "--emit",
                "ir",
            ],
            "usage",
            2,
        ),
        (
            &["draw", "stdlib/attention/m1.diag", "--highlight", "nope"],
            "usage",
            2,
        ),
        (
            &[
                "bench",
                "m1",
                "--steps",
                "1",
                "--pytorch",
                "--pytorch-script",
                "no/such/peer.py",
            ],
            "external",
            2,
        ),
        (&["eval", "no/such/run"], "usage", 2),
    ];
    for (args, kind, code) in cases {
        let mut a = args.to_vec();
        a.extend(["--message-format", "json"]);
        let o = diagc(&a);
        assert_eq!(o.status.code(), Some(*code), "{a:?}: {}", text(&o.stderr));
        assert!(o.stderr.is_empty(), "{a:?}: {}", text(&o.stderr));
        let line = text(&o.stdout);
        let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{a:?}: not JSON ({e}): {line}"));
        assert_eq!(v["kind"], *kind, "{a:?}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
}

#[test]
fn diagnostics_follow_the_message_format_of_every_command() {
    // An ill-typed file given to `run` and `draw`: with `--message-format json` its diagnostics
    // are JSON lines on standard output, as `check --format json` prints them.
    for cmd in ["run", "draw", "gradcheck"] {
        let o = diagc(&[
            cmd,
            "examples/ill-typed/forgot-rename.diag",
            "--message-format",
            "json",
        ]);
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        assert!(o.stderr.is_empty(), "{cmd}: {}", text(&o.stderr));
        let v: serde_json::Value =
            serde_json::from_str(text(&o.stdout).lines().next().unwrap()).unwrap();
        assert_eq!(v["code"], "E0204", "{cmd}: {v}");
    }
}

#[test]
fn an_unbound_size_points_at_the_axis_declaration() {
    let dir = std::env::temp_dir().join(format!("diagc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("f.diag");
    std::fs::write(
        &f,
        "axis tok, dm\ndiagram f(x: [tok, dm]) -> [tok, dm] { relu(x) }\n",
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let o = diagc(&["run", path, "--size", "tok=3"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("`dm`") && err.contains(":1:11"), "{err}");
    let o = diagc(&["run", path, "--size", "tok=3", "--message-format", "json"]);
    let v: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(v["kind"], "instance");
    assert_eq!(
        (v["line"].as_u64(), v["column"].as_u64()),
        (Some(1), Some(11))
    );
    assert_eq!(v["path"], path);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_causal_proves_probes_and_names_the_leak() {
    // The stdlib: every file's mechanisms proved.
    let o = diagc(&["check", "--causal", "stdlib/anatomy", "stdlib/attention"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("proved causal along `tok`"));

    let o = diagc(&[
        "check",
        "--causal",
        "--causal-probe",
        "tests/pass/causal-mechanisms.diag",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("6 diagram(s) proved causal"), "{err}");
    assert_eq!(err.matches("no earlier output changed").count(), 6, "{err}");

    let leaky = "tests/fail/E0601-attention-without-mask.diag";
    // Without --causal the file is well-typed.
    assert_eq!(diagc(&["check", leaky]).status.code(), Some(0));
    let o = diagc(&["check", "--causal", "--causal-probe", leaky]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("E0601") && err.contains("softmax[src](s)"),
        "{err}"
    );
    assert!(err.contains("was redrawn: it is not causal"), "{err}");
    assert!(!err.contains("internal error"), "{err}");

    // `--causal=AXIS` names another axis; one the file lacks analyses nothing.
    let o = diagc(&["check", "--causal=src", leaky]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = diagc(&["check", "--causal=nope", leaky]);
    assert!(text(&o.stderr).contains("no diagram with an input along `nope`"));
}

#[test]
fn train_refuses_a_mechanism_not_proved_causal() {
    let leaky = "tests/fail/E0601-attention-without-mask.diag";
    let out = std::env::temp_dir().join(format!("diagc-leak-{}", std::process::id()));
    let o = diagc(&[
        "train",
        leaky,
        "--d-model",
        "16",
        "--heads",
        "2",
        "--d-ff",
        "16",
        "--steps",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("E0601") && err.contains("--allow-noncausal"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is created for a refused run");
}
