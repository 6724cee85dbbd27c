//! The fast CPU executor on the language model at the protocol's sizes (issue 3).
//!
//! Run with `cargo bench --bench cpu_exec` (`-- m0` or `-- m1` for one mechanism; `-- --quick`
//! for fewer repetitions; `-- --batch 20` to add a batched run). For the one-layer LM (tok 35,
//! dm 512, head 4, dff 2048, vocab 10000) it times one forward pass and one forward + backward
//! pass of the gradient diagram on one sequence of 35 tokens, in training mode (dropout on), and
//! prints:
//! - tokens per second, `35 / (median time of forward + backward)`;
//! - a GEMM-only lower bound: the contractions' floating-point operations divided by the
//!   GFLOP/s the `gemm` crate (the executor's GEMM) itself reaches on a large square product on this machine,
//!   i.e. the time the step would take if every GEMM ran at that rate and nothing else cost
//!   anything;
//! - where the time goes, per kind of kernel (one profiled run);
//! - memory: the planned workspace (peak) against a plan without buffer reuse, besides the
//!   parameters (the caller's inputs).
//!
//! With `--batch B`, the same again for the instance lifted by a batch axis of `B` sequences
//! (`ir::instance::lift_batch`: parameters shared), counting `35 B` tokens per step: the
//! measure `bench/pytorch_lm_step.py` reports for PyTorch (batch 20 there).
//!
//! It prints figures only: there are no assertions on time.

use diagc::autodiff;
use diagc::backend::cpu::exec::{Plan, RunOptions};
use diagc::backend::cpu::harness::{self, Rng};
use diagc::ir::instance::{Bindings, HyperValue, Instance, instantiate};
use diagc::session;
use std::path::Path;
use std::time::{Duration, Instant};

const SIZES: &[(&str, u64)] = &[
    ("tok", 35),
    ("dm", 512),
    ("head", 4),
    ("dff", 2048),
    ("vocab", 10000),
];

mod common;
use common::time;

fn lm(mech: &str, batch: Option<usize>) -> Instance {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = session::check_path_with(&root.join("stdlib/lm.diag"), &["attention.m0"]).unwrap();
    assert!(o.checked.is_ok(), "{:?}", o.checked.diagnostics.first());
    let b = Bindings {
        sizes: SIZES.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        hypers: [
            ("layers".to_string(), HyperValue::Num(1.0)),
            ("mech".to_string(), HyperValue::Diagram(mech.into())),
        ]
        .into_iter()
        .collect(),
    };
    let inst = instantiate(&o.checked.program, "lm", &b).unwrap();
    match batch {
        Some(n) => diagc::ir::instance::lift_batch(&inst, "batch", n).unwrap(),
        None => inst,
    }
}

/// The GFLOP/s of `sgemm` on an `n x n x n` product (both cores, as the executor uses it), the
/// best of `runs`: the bound it gives should be one no run could beat.
fn sgemm_rate(n: usize, runs: usize) -> f64 {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; n * n];
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        // SAFETY: three n x n row-major matrices.
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        best = best.min(t.elapsed());
    }
    2.0 * (n * n * n) as f64 / best.as_secs_f64() / 1e9
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn bench(mech: &str, batch: Option<usize>, runs: usize, rate: f64) {
    let inst = lm(mech, batch);
    let tok = inst.size(inst.axes.lookup("tok").unwrap()) * batch.unwrap_or(1);
    let f = &inst.diagram;
    let t = Instant::now();
    let grad = autodiff::gradient(f).unwrap();
    let plan = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
    let fplan = Plan::for_instance(&inst).unwrap();
    let compile = t.elapsed();

    // Inputs: token ids, parameters by their initialisation rules, and a random seed for the
    // logits' gradient.
    let mut inputs: Vec<Vec<f32>> = harness::random_inputs(&inst, 1)
        .iter()
        .zip(&f.inputs)
        .map(|(t, w)| {
            let t = t.clone().aligned(&f.wire(*w).ty.axes);
            t.data
                .as_standard_layout()
                .iter()
                .map(|x| *x as f32)
                .collect()
        })
        .collect();
    let mut rng = Rng::new(2);
    for k in f.inputs.len()..grad.diagram.inputs.len() {
        inputs.push(
            (0..plan.input_len(k))
                .map(|_| rng.uniform() as f32 - 0.5)
                .collect(),
        );
    }
    let refs: Vec<&[f32]> = inputs.iter().map(|x| x.as_slice()).collect();
    let opts = RunOptions {
        train: true,
        seed: 3,
        check_finite: false,
    };
    let mut ws = plan.workspace();
    let mut fws = fplan.workspace();
    let nf = f.inputs.len();
    let fwd = time(runs, || {
        fplan.run_views(&mut fws, &refs[..nf], opts).unwrap();
    });
    let step = time(runs, || {
        plan.run_views(&mut ws, &refs, opts).unwrap();
    });
    let prof = plan.run_profiled(&mut ws, &refs, opts).unwrap();

    let params = inst.parameter_count();
    let flops = plan.gemm_flops() as f64;
    let bound = flops / (rate * 1e9);
    match batch {
        Some(n) => println!(
            "lm, 1 layer, mech {mech}: {params} parameters, batch {n} x tok 35 = {tok} tokens per step"
        ),
        None => println!("lm, 1 layer, mech {mech}: {params} parameters, tok {tok}"),
    }
    println!(
        "  plan: {} steps, {} GEMMs, {:.1} GFLOP in GEMMs per step, compiled in {:.0} ms",
        plan.step_count(),
        plan.gemm_count(),
        flops / 1e9,
        compile.as_secs_f64() * 1e3
    );
    println!(
        "  forward:             {:8.2} ms  ({:.0} tokens/s)",
        fwd.as_secs_f64() * 1e3,
        tok as f64 / fwd.as_secs_f64()
    );
    println!(
        "  forward + backward:  {:8.2} ms  ({:.0} tokens/s)",
        step.as_secs_f64() * 1e3,
        tok as f64 / step.as_secs_f64()
    );
    println!(
        "  GEMM-only bound:     {:8.2} ms  ({:.0} tokens/s at {:.1} GFLOP/s); reached {:.0}%",
        bound * 1e3,
        tok as f64 / bound,
        rate,
        100.0 * bound / step.as_secs_f64()
    );
    let total: Duration = prof.iter().map(|p| p.1).sum();
    println!("  where the time goes (one profiled run):");
    for (name, spent, count) in &prof {
        println!(
            "    {name:<15} {:8.2} ms  {:5.1}%  ({count} steps)",
            spent.as_secs_f64() * 1e3,
            100.0 * spent.as_secs_f64() / total.as_secs_f64()
        );
    }
    println!(
        "  memory: workspace {:.1} MiB in {} buffers (no reuse: {:.1} MiB); forward only {:.1} MiB; parameters {:.1} MiB",
        mib(plan.peak_bytes()),
        plan.buffer_count(),
        mib(plan.no_reuse_bytes()),
        mib(fplan.peak_bytes()),
        mib(4 * params)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let named = args.iter().any(|a| a == "m0" || a == "m1");
    let mechs: Vec<&str> = ["m1", "m0"]
        .into_iter()
        .filter(|m| !named || args.iter().any(|a| a == m))
        .collect();
    let batch: Option<usize> = args
        .iter()
        .position(|a| a == "--batch")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--batch takes a number"));
    let runs = if quick { 5 } else { 21 };
    let rate = sgemm_rate(1024, if quick { 5 } else { 15 });
    println!(
        "sgemm (gemm crate, every core): {rate:.1} GFLOP/s on 1024 x 1024 x 1024 (best run); {} threads available",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for m in &mechs {
        bench(m, None, runs, rate);
    }
    if let Some(n) = batch {
        for m in &mechs {
            bench(m, Some(n), runs.min(9), rate);
        }
    }
}
