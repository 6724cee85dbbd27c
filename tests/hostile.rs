//! Inputs from an adversarial user (issue 16): each test is a case that used to panic, hang,
//! run out of memory, or give a wrong or misleading answer, and now gives a clear error.

mod common;
use common::{bindings, diagc, root};
use diagc::diagnostic::Code;
use diagc::session;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("diagc-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `diagc` with `args`, killing it after `secs` seconds: `None` when it had to be killed.
fn diagc_within(args: &[&str], secs: u64) -> Option<std::process::Output> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The diagnostics of checking `src` in memory, as (code, message, label texts).
fn diagnostics(src: &str) -> Vec<(Code, String, Vec<String>)> {
    let o = session::check_text("<test>", src);
    o.checked
        .diagnostics
        .iter()
        .map(|d| {
            let labels = d
                .labels
                .iter()
                .map(|l| o.sources.slice(l.span).to_string())
                .collect();
            (d.code, d.message.clone(), labels)
        })
        .collect()
}

#[test]
fn recursion_through_a_hyperparameter_default_is_reported_at_the_default() {
    let src = "axis tok, dm\n\
               diagram f[mech: ([tok, dm]) -> [tok, dm] = f](x: [tok, dm]) -> [tok, dm] { relu(mech(x)) }\n";
    let ds = diagnostics(src);
    assert_eq!(ds.len(), 1, "{ds:?}");
    let (code, msg, labels) = &ds[0];
    assert_eq!(*code, Code::Recursive, "{msg}");
    assert_eq!(
        labels[0], "f",
        "the primary label is the default: {labels:?}"
    );
    assert!(labels.iter().any(|l| l == "mech(x)"), "{labels:?}");

    // Through another diagram that is passed the default and calls it.
    let src = "axis tok, dm\n\
               diagram g[m: ([tok, dm]) -> [tok, dm]](x: [tok, dm]) -> [tok, dm] { m(x) }\n\
               diagram f[mech: ([tok, dm]) -> [tok, dm] = f](x: [tok, dm]) -> [tok, dm] { g[mech](x) }\n";
    let ds = diagnostics(src);
    assert!(ds.iter().any(|(c, _, _)| *c == Code::Recursive), "{ds:?}");

    // A default that names another diagram is no loop; the stdlib LM still checks.
    let src = "axis tok, dm\n\
               diagram h(x: [tok, dm]) -> [tok, dm] { relu(x) }\n\
               diagram f[mech: ([tok, dm]) -> [tok, dm] = h](x: [tok, dm]) -> [tok, dm] { mech(x) }\n";
    assert!(diagnostics(src).is_empty());
}

#[test]
fn non_finite_numbers_are_rejected_at_the_literal() {
    let src = "axis tok, dm\ndiagram g(x: [tok, dm]) -> [tok, dm] { x * 1e999 }\n";
    let ds = diagnostics(src);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0].0, Code::InvalidToken);
    assert_eq!(ds[0].2, vec!["1e999".to_string()]);
    let digits = "9".repeat(400);
    let src = format!("axis tok, dm\ndiagram g(x: [tok, dm]) -> [tok, dm] {{ x * {digits} }}\n");
    assert_eq!(diagnostics(&src).len(), 1);
    // Large but finite numbers are fine.
    let src = "axis tok, dm\ndiagram g(x: [tok, dm]) -> [tok, dm] { x * 1e300 }\n";
    assert!(diagnostics(src).is_empty());
}

#[test]
fn did_you_mean_is_bounded_on_very_long_names() {
    // A diagram named with 20,000 letters, called with one letter more: the edit distance of
    // the two would take seconds (quadratic); the suggestion is skipped instead.
    let n = "a".repeat(20_000);
    let src = format!(
        "axis tok, dm\n\
         diagram {n}(x: [tok, dm]) -> [tok, dm] {{ relu(x) }}\n\
         diagram g(x: [tok, dm]) -> [tok, dm] {{ {n}b(x) }}\n\
         diagram h({n}: [tok, dm]) -> [tok, dm] {{ relu({n}c) }}\n"
    );
    let start = Instant::now();
    let ds = diagnostics(&src);
    let took = start.elapsed();
    assert!(
        ds.iter().filter(|d| d.0 == Code::UnknownBox).count() == 1
            && ds.iter().filter(|d| d.0 == Code::UnknownWire).count() == 1,
        "{:?}",
        ds.iter().map(|d| d.0).collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(2), "check took {took:?}");
    // Short typos still get their suggestion.
    let src = "axis tok, dm\ndiagram g(query: [tok, dm]) -> [tok, dm] { relu(quer) }\n";
    let o = session::check_text("<t>", src);
    let d = o
        .checked
        .diagnostics
        .iter()
        .find(|d| d.code == Code::UnknownWire);
    let help = d.and_then(|d| d.help.clone()).unwrap_or_default();
    assert!(help.contains("`query`"), "{help}");
}

#[test]
fn devices_fifos_and_huge_files_are_refused_before_reading() {
    // /dev/zero is endless: reading it would never finish.
    let o = diagc_within(&["check", "/dev/zero"], 20).expect("check /dev/zero must end");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("not a regular file"),
        "{}",
        text(&o.stderr)
    );

    // A FIFO without a writer would block forever.
    let dir = scratch("fifo");
    let fifo = dir.join("f.diag");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let o =
            diagc_within(&["check", fifo.to_str().unwrap()], 20).expect("a FIFO must not block");
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("not a regular file"),
            "{}",
            text(&o.stderr)
        );
    }

    // Over the documented limit (16 MiB): refused by its length, unread.
    let big = dir.join("big.diag");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(session::MAX_FILE_BYTES + 1).unwrap();
    assert_eq!(session::MAX_FILE_BYTES, 16 << 20);
    let o = diagc(&["check", big.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("16 MiB"), "{}", text(&o.stderr));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sizes_that_do_not_divide_or_are_zero_say_so() {
    let o = diagc(&[
        "run",
        "stdlib/attention/m1.diag",
        "--size",
        "tok=4",
        "--size",
        "dm=7",
        "--size",
        "head=2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("does not divide") && err.contains("dm=7") && err.contains("head=2"),
        "{err}"
    );
    assert!(!err.contains("unbound"), "{err}");

    // Zero through the library (the CLI refuses it while parsing flags).
    let o = session::check_path(&root().join("stdlib/attention/m1.diag")).unwrap();
    let b = bindings(&[("tok", 4), ("dm", 0), ("head", 2)], &[]);
    let e = diagc::ir::instance::instantiate(&o.checked.program, "m1", &b).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("`dm` must be positive"), "{msg}");
}

#[test]
fn a_use_cycle_is_reported_as_a_cycle_naming_the_files() {
    let dir = scratch("cycle");
    std::fs::write(
        dir.join("a.diag"),
        "use b\naxis tok, dm\ndiagram fa(x: [tok, dm]) -> [tok, dm] { fb(x) }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.diag"),
        "use a\ndiagram fb(x: [tok, dm]) -> [tok, dm] { relu(x) }\n",
    )
    .unwrap();
    let o = session::check_path(&dir.join("a.diag")).unwrap();
    let ds = &o.checked.diagnostics;
    assert_eq!(ds.len(), 1, "{}", o.plain_report());
    assert!(ds[0].message.contains("cycle"), "{}", o.plain_report());
    assert!(
        ds[0].message.contains("a.diag") && ds[0].message.contains("b.diag"),
        "{}",
        o.plain_report()
    );
    assert_eq!(o.sources.slice(ds[0].labels[0].span), "a");
    // A file that uses itself.
    std::fs::write(dir.join("c.diag"), "use c\naxis tok\n").unwrap();
    let o = session::check_path(&dir.join("c.diag")).unwrap();
    assert_eq!(o.checked.diagnostics.len(), 1, "{}", o.plain_report());
    assert!(o.checked.diagnostics[0].message.contains("cycle"));
    // A diamond (a uses b and c, both use d) is no cycle.
    for (f, t) in [
        ("top.diag", "use l\nuse r\n"),
        ("l.diag", "use d\n"),
        ("r.diag", "use d\n"),
        ("d.diag", "axis tok\n"),
    ] {
        std::fs::write(dir.join(f), t).unwrap();
    }
    let o = session::check_path(&dir.join("top.diag")).unwrap();
    assert!(o.checked.is_ok(), "{}", o.plain_report());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_leading_byte_order_mark_is_skipped_and_spans_stay_right() {
    let src = "\u{feff}axis tok, dm\ndiagram g(x: [tok, dm]) -> [tok, dm] { relu(y) }\n";
    let ds = diagnostics(src);
    assert!(
        ds.iter()
            .any(|d| d.0 == Code::UnknownWire && d.2 == vec!["y".to_string()]),
        "{ds:?}"
    );
    assert!(ds.iter().all(|d| d.0 != Code::InvalidToken), "{ds:?}");
    let clean = "\u{feff}axis tok\n";
    assert!(diagnostics(clean).is_empty());
}

/// `compile --emit optimized-ir` of `src` (written to a scratch file), checked again.
fn optimised(name: &str, src: &str, diagram: &str) -> String {
    let dir = scratch(name);
    let f = dir.join("f.diag");
    std::fs::write(&f, src).unwrap();
    let o = diagc(&[
        "compile",
        f.to_str().unwrap(),
        "--diagram",
        diagram,
        "--emit",
        "optimized-ir",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let again = session::check_text("<optimised>", &out);
    assert!(again.checked.is_ok(), "{out}\n{}", again.plain_report());
    out
}

#[test]
fn optimized_ir_of_posenc_reads_back() {
    // The embedding of the stdlib LM (`stdlib/lm.diag`), without its `repeat` and mechanism.
    let src = "axis tok, dm, vocab\n\
               diagram emb(ids: [tok] of vocab) -> [tok, dm] {\n\
                   embed[vocab -> dm](ids) * sqrt(dm) + posenc[tok, dm]()\n\
               }\n";
    let out = optimised("posenc", src, "emb");
    assert!(out.contains("posenc[tok, dm]()"), "{out}");
}

#[test]
fn optimized_ir_binds_a_callees_defaulted_float_hyperparameter() {
    let src = "axis tok, dm\n\
               diagram scaler[s: float = 0.5](x: [tok, dm]) -> [tok, dm] { x * s }\n\
               diagram whole[t: float = 2](x: [tok, dm]) -> [tok, dm] {\n\
                   relu(scaler(x)) + scaler[s = t](x)\n\
               }\n";
    let out = optimised("float-default", src, "whole");
    assert!(out.contains("0.5") && out.contains("x * t"), "{out}");
    assert!(!out.contains("* s"), "{out}");
}

#[test]
fn sizes_whose_products_overflow_are_errors_not_panics() {
    let dir = scratch("overflow");
    let two = dir.join("two.diag");
    std::fs::write(
        &two,
        "axis a, b\ndiagram g(x: [a, b]) -> [a, b] { relu(x) }\n",
    )
    .unwrap();
    let axes: Vec<String> = (0..64).map(|k| format!("a{k}")).collect();
    let many = dir.join("many.diag");
    std::fs::write(
        &many,
        format!(
            "axis {}\ndiagram g(x: [{}]) -> [{}] {{ relu(x) }}\n",
            axes.join(", "),
            axes.join(", "),
            axes.join(", ")
        ),
    )
    .unwrap();
    let big = ["--size", "a=4294967296", "--size", "b=4294967296"];
    let twos: Vec<String> = axes.iter().map(|a| format!("{a}=2")).collect();
    let mut cases: Vec<Vec<&str>> = Vec::new();
    for cmd in ["run", "gradcheck"] {
        let mut v = vec![cmd, two.to_str().unwrap()];
        v.extend(big);
        cases.push(v);
        let mut v = vec![cmd, many.to_str().unwrap()];
        for t in &twos {
            v.extend(["--size", t.as_str()]);
        }
        cases.push(v);
    }
    let out = dir.join("ws");
    let mut v = vec![
        "compile",
        two.to_str().unwrap(),
        "--emit",
        "cuda",
        "-o",
        out.to_str().unwrap(),
    ];
    v.extend(big);
    cases.push(v);
    for args in &cases {
        let o = diagc(args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("overflows"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn runs_that_cannot_fit_in_memory_are_refused_before_allocating() {
    let avail = session::available_memory();
    if cfg!(target_os = "linux") {
        assert!(avail.is_some_and(|b| b > 0), "{avail:?}");
    }
    if avail.is_none() {
        return;
    }
    // 2^31 x 2^20 values: 16 PiB in f64, no overflow, no machine.
    let dir = scratch("memory");
    let f = dir.join("f.diag");
    std::fs::write(
        &f,
        "axis tok, dm
diagram g(x: [tok, dm]) -> [tok, dm] { relu(x) }
",
    )
    .unwrap();
    for cmd in ["run", "gradcheck"] {
        let o = diagc_within(
            &[
                cmd,
                f.to_str().unwrap(),
                "--size",
                "tok=2147483648",
                "--size",
                "dm=1048576",
            ],
            60,
        )
        .expect("refused at once");
        let err = text(&o.stderr);
        // A run error (exit code 1), not a panic (101) or an abort.
        assert_eq!(o.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("available") && err.contains("GiB"),
            "{cmd}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
