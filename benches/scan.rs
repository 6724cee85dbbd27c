//! The gated scan on the fast CPU executor: position by position against chunked (issue 19).
//!
//! Run with `cargo bench --bench scan`. For `scan[tok](g, x)` over `[lanes, tok]` at a long
//! `tok`, it times the forward pass and the gradient (forward and reverse scans) twice in the
//! same run: with `SCAN_CHUNK = 0` (the default: every lane scanned position by position, one
//! lane after the other) and chunked by 64 and by 1024 positions (local scans in parallel over
//! lanes and chunks, carries, fix-up), and prints the times, the ratios (sequential time over
//! chunked: above 1 the chunks win) and the largest difference between the sequential and
//! the 1024-chunked results (rounding: the chunked scan adds in another order).
//!
//! It prints figures only: there are no assertions on time.

use diagc::autodiff;
use diagc::backend::cpu::exec::{Plan, RunOptions, SCAN_CHUNK};
use diagc::backend::cpu::harness::Rng;
use diagc::ir::instance::instantiate;
use diagc::session;
use std::sync::atomic::Ordering;

mod common;
use common::time;

fn main() {
    let src = "axis lane, tok\n\
               diagram f(g: [lane, tok], x: [lane, tok]) -> [lane, tok] { scan[tok](g, x) }\n";
    let o = session::check_text("<scan>", src);
    assert!(o.checked.is_ok());
    let cores = rayon::current_num_threads();
    println!("gated scan scan[tok](g, x) on the fast CPU executor, {cores} thread(s)");
    for (lanes, tok) in [(1usize, 1usize << 20), (4, 1 << 18), (64, 1 << 14)] {
        let b = diagc::ir::instance::Bindings {
            sizes: [
                ("lane".to_string(), lanes as u64),
                ("tok".to_string(), tok as u64),
            ]
            .into_iter()
            .collect(),
            hypers: Default::default(),
        };
        let inst = instantiate(&o.checked.program, "f", &b).unwrap();
        let grad = autodiff::gradient(&inst.diagram).unwrap();
        let fplan = Plan::new(&inst.diagram, &inst.axes, &inst.sizes).unwrap();
        let gplan = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
        let mut rng = Rng::new(1);
        let n = lanes * tok;
        // Gates in (0.9, 1): a long memory, so that carries matter.
        let g: Vec<f32> = (0..n).map(|_| 0.9 + 0.1 * rng.uniform() as f32).collect();
        let x: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 - 0.5).collect();
        let gy: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 - 0.5).collect();
        let opts = RunOptions {
            train: false,
            seed: 0,
            check_finite: false,
        };
        let (mut fws, mut gws) = (fplan.workspace(), gplan.workspace());
        let mut results = Vec::new();
        for chunk in [0usize, 64, 1024] {
            SCAN_CHUNK.store(chunk, Ordering::Relaxed);
            let fwd = time(9, || {
                fplan.run_views(&mut fws, &[&g, &x], opts).unwrap();
            });
            let back = time(9, || {
                gplan.run_views(&mut gws, &[&g, &x, &gy], opts).unwrap();
            });
            let out = gplan.run(&mut gws, &[&g, &x, &gy], opts).unwrap();
            results.push((fwd, back, out));
        }
        SCAN_CHUNK.store(0, Ordering::Relaxed);
        let diff = results[0]
            .2
            .iter()
            .zip(&results[2].2)
            .flat_map(|(a, b)| a.iter().zip(b))
            .map(|(a, b)| ((a - b).abs() / b.abs().max(1.0)) as f64)
            .fold(0.0, f64::max);
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {lanes:>3} lane(s) x {tok:>7} positions: forward {:.2} ms sequential, {:.2} / {:.2} ms \
             chunked by 64 / 1024 ({:.2}x / {:.2}x); gradient {:.2} ms, {:.2} / {:.2} ms ({:.2}x / {:.2}x); \
             largest relative difference {diff:.1e}",
            ms(results[0].0),
            ms(results[1].0),
            ms(results[2].0),
            results[0].0.as_secs_f64() / results[1].0.as_secs_f64(),
            results[0].0.as_secs_f64() / results[2].0.as_secs_f64(),
            ms(results[0].1),
            ms(results[1].1),
            ms(results[2].1),
            results[0].1.as_secs_f64() / results[1].1.as_secs_f64(),
            results[0].1.as_secs_f64() / results[2].1.as_secs_f64(),
        );
    }
}
