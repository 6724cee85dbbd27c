//! Front-end speed: `diagc check` on the whole stdlib, and on a generated 10,000-line file.
//!
//! Run with `cargo bench --bench frontend`. Prints medians over repeated runs, both in-process
//! (the library) and end to end (spawning the release binary, as a user runs it). For scale,
//! the lexer alone on the same generated file is timed in the same run: the ratio says how much
//! of the time parsing and checking add on top of reading the tokens.
//! Targets (issue 2): stdlib under 50 ms, 10,000 lines under 200 ms. Also: the IR verifier
//! on the 5-layer training LM's gradient, beside the time to build that graph.

use std::path::Path;
use std::process::Command;

mod common;
use common::time;

/// A realistic file: `copies` renamed copies of M1 and M0 sharing one set of axes.
fn generated(lines_wanted: usize) -> String {
    let m1 = include_str!("../stdlib/attention/m1.diag");
    let m0 = include_str!("../stdlib/attention/m0.diag");
    let body = |src: &str, name: &str, k: usize| -> String {
        let start = src.find("diagram").expect("a diagram");
        src[start..].replacen(
            &format!("diagram {name}("),
            &format!("diagram {name}_{k}("),
            1,
        )
    };
    let mut text =
        String::from("axis tok, dm, head\naxis dk = dm / head\naxis src = tok\naxis dv = dk\n");
    let mut k = 0;
    while text.lines().count() < lines_wanted {
        text.push_str(&body(m1, "m1", k));
        text.push_str(&body(m0, "m0", k));
        k += 1;
    }
    text
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = env!("CARGO_BIN_EXE_diagc");
    let stdlib: Vec<std::path::PathBuf> = diagc::stdlib::FILES
        .iter()
        .map(|(p, _)| root.join("stdlib").join(p))
        .collect();

    let lib_stdlib = time(30, || {
        for f in &stdlib {
            let o = diagc::session::check_path(f).unwrap();
            assert!(o.checked.is_ok());
        }
    });
    let cli_stdlib = time(20, || {
        let s = Command::new(exe)
            .args(["check", "stdlib"])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(s.status.success());
    });

    let text = generated(10_000);
    let lines = text.lines().count();
    let file = std::env::temp_dir().join("diagc-bench-10k.diag");
    std::fs::write(&file, &text).unwrap();
    let lib_big = time(20, || {
        let o = diagc::session::check_text("<bench>", &text);
        assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    });
    let lex_big = time(20, || {
        let (toks, problems) = diagc::syntax::lexer::lex(&text);
        assert!(problems.is_empty() && !toks.is_empty());
    });
    let cli_big = time(10, || {
        let s = Command::new(exe)
            .args(["check", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(s.status.success());
    });

    // The IR verifier (run after every pass that makes IR) on the largest IR the project
    // builds, the 5-layer training LM's gradient, beside building that graph.
    let cfg = diagc::train::model::ModelConfig {
        layers: 5,
        ..Default::default()
    };
    let build = time(3, || {
        diagc::train::model::train_graph(&cfg).unwrap();
    });
    let tg = diagc::train::model::train_graph(&cfg).unwrap();
    let verify = time(20, || {
        diagc::ir::verify::verify(&tg.gradient.diagram, diagc::ir::verify::Form::Flat, "bench")
            .unwrap();
    });

    println!("diagc front-end benchmark (medians; release build)");
    println!(
        "  stdlib ({} files), library:        {:>8.2} ms   (target < 50 ms)",
        stdlib.len(),
        lib_stdlib.as_secs_f64() * 1e3
    );
    println!(
        "  stdlib, `diagc check stdlib`:      {:>8.2} ms   (process start included)",
        cli_stdlib.as_secs_f64() * 1e3
    );
    println!(
        "  {lines}-line file, library:        {:>8.2} ms   (target < 200 ms)",
        lib_big.as_secs_f64() * 1e3
    );
    println!(
        "  {lines}-line file, `diagc check`:  {:>8.2} ms",
        cli_big.as_secs_f64() * 1e3
    );
    println!(
        "  {lines}-line file, lexer alone:    {:>8.2} ms   (check / lex = {:.1}x)",
        lex_big.as_secs_f64() * 1e3,
        lib_big.as_secs_f64() / lex_big.as_secs_f64()
    );
    println!(
        "  verifier, 5-layer LM gradient ({} boxes): {:>8.2} ms   (building the training graph, its four verifications included: {:.1} ms)",
        tg.gradient.diagram.boxes.len(),
        verify.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3
    );
}
