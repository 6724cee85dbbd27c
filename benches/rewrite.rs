//! Rewriting speed (issue 6): optimising the whole stdlib, enumerating the default spec, and
//! building the taxonomy (which replays every stdlib derivation).
//!
//! Run with `cargo bench --bench rewrite`. Prints medians over repeated runs. Targets: the
//! whole stdlib optimised in under 100 ms, the enumeration in under 1 s. For scale, checking the
//! same stdlib files (the front end alone) is timed in the same run: optimising re-checks every
//! rewrite's result, so its time is best read as a multiple of checking.

use diagc::opt::{self, Options};
use diagc::rewrite::rule::RuleBook;
use diagc::rewrite::term::Term;
use std::time::Duration;

mod common;
use common::time;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let book = RuleBook::stdlib().expect("the stdlib rules load");
    // Every stdlib diagram the optimiser takes (no `repeat`, no diagram-valued hyperparameter).
    let mut programs = Vec::new();
    let mut skipped = Vec::new();
    for m in diagc::stdlib::module_names() {
        let (path, text) = diagc::stdlib::module(&m).expect("listed");
        let o = diagc::session::check_text(path, text);
        if !o.checked.is_ok() {
            continue; // rule files and the like are checked elsewhere
        }
        let p = o.checked.program;
        let root = p
            .diagrams
            .iter()
            .filter(|d| d.span.file == diagc::source::FileId(0));
        for d in root {
            match Term::from_program(&p, &d.name) {
                Ok(t) => programs.push((format!("{m}:{}", d.name), t)),
                Err(_) => skipped.push(format!("{m}:{}", d.name)),
            }
        }
    }
    let check = time(10, || {
        for m in diagc::stdlib::module_names() {
            let (path, text) = diagc::stdlib::module(&m).expect("listed");
            std::hint::black_box(diagc::session::check_text(path, text));
        }
    });
    let mut rewrites = 0;
    for (_, t) in &programs {
        let (_, _, r) = opt::optimise(&book, t, &Options::default()).expect("optimises");
        rewrites += r.changes.len();
    }
    let optimise = time(10, || {
        for (_, t) in &programs {
            std::hint::black_box(opt::optimise(&book, t, &Options::default()).expect("optimises"));
        }
    });
    let enumerate = time(5, || {
        std::hint::black_box(diagc::rewrite::enumerate::enumerate(&book).expect("enumerates"));
    });
    let taxonomy = time(5, || {
        std::hint::black_box(diagc::rewrite::taxonomy::build(&book).expect("holds"));
    });
    println!(
        "optimise the stdlib: {} diagrams ({} changes), {} (target < 100 ms); checking every \
         stdlib file: {} (ratio {:.1}x)",
        programs.len(),
        rewrites,
        ms(optimise),
        ms(check),
        optimise.as_secs_f64() / check.as_secs_f64()
    );
    println!(
        "  not taken by the optimiser (repeat or diagram-valued hyperparameters): {}",
        skipped.join(", ")
    );
    println!(
        "enumerate the default spec (14 mechanisms): {} (target < 1 s)",
        ms(enumerate)
    );
    println!(
        "build the taxonomy (replays every stdlib derivation): {}",
        ms(taxonomy)
    );
}
