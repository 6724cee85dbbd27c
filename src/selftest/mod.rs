//! `diagc selftest --device cuda`: the CUDA backend checked against the CPU executor (the
//! oracle) on this machine's GPU.
//!
//! 1. the hand-written kernel modules of `kernels/` compile for the device and load;
//! 2. every primitive (`src/selftest/primitives.diag`, embedded) and every stdlib mechanism,
//!    forward and gradient, in evaluation and training mode, on the same random inputs on both
//!    devices: each output must agree within `|gpu - cpu| <= ATOL + RTOL |cpu|` elementwise;
//!    each diagram runs four ways on the GPU: launch by launch with cuBLAS and the hand-written
//!    kernels where they apply, replayed from a captured CUDA graph, with every product on the
//!    generated GEMM kernel, and with generated kernels only;
//! 3. one training step (forward and backward through the loss) of the 1-layer language model
//!    at the protocol's sizes, M1 and M0: the loss and every parameter's gradient agree within
//!    the looser LM tolerances (sums of 700 x 10,000 terms in another order).
//!
//! 4. 200 training steps (20 with `--quick`) of the 1-layer LM, M1 and M0, on both devices from
//!    the same parameters, batches and dropout seeds: every step's loss agrees within
//!    [`LOSS_RTOL`] (the GPU step is one CUDA graph: plan, clipping, Adam).

use crate::backend::cpu::exec::{Plan, Workspace};
use crate::backend::cpu::harness::{self, Rng};
use crate::backend::cpu::interp::RunOptions;
use crate::backend::cuda::runtime::{Gpu, GpuPlan, LoadOptions, Precision};
use crate::error::Error;
use crate::ir::instance::{Bindings, Instance, instantiate};

/// Elementwise tolerance of diagram outputs: relative, and absolute for values near zero.
pub const RTOL: f64 = 1e-4;
pub const ATOL: f64 = 1e-5;
/// The language model's tolerances (long reductions summed in another order).
pub const LM_RTOL: f64 = 1e-3;
pub const LM_ATOL: f64 = 1e-5;

const PRIMITIVES: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/src/selftest/primitives.diag"
));

/// What one check found.
pub struct Outcome {
    pub what: String,
    /// The largest `|gpu - cpu| / (ATOL + RTOL |cpu|)` (pass: at most 1).
    pub worst: f64,
    pub error: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.worst <= 1.0
    }
}

/// The worst ratio of error to tolerance between two outputs: `|gpu - cpu| / (atol + rtol
/// |cpu|)`, the largest over the elements (two NaNs agree; a length mismatch is infinite).
pub fn worst(gpu: &[f32], cpu: &[f32], rtol: f64, atol: f64) -> f64 {
    if gpu.len() != cpu.len() {
        return f64::INFINITY;
    }
    gpu.iter()
        .zip(cpu)
        .map(|(g, c)| {
            let (g, c) = (*g as f64, *c as f64);
            if g.is_nan() && c.is_nan() {
                0.0
            } else {
                let e = (g - c).abs() / (atol + rtol * c.abs());
                if e.is_nan() { f64::INFINITY } else { e }
            }
        })
        .fold(0.0, f64::max)
}

/// Runs `plan` on both devices with `inputs`; returns the worst ratio over all outputs.
#[allow(clippy::too_many_arguments)]
fn compare(
    gpu: &Gpu,
    plan: &Plan,
    inputs: &[Vec<f32>],
    title: &str,
    opts: RunOptions,
    graph: bool,
    load: LoadOptions,
    tol: (f64, f64),
) -> Result<f64, Error> {
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let cpu = plan
        .run(&mut Workspace::default(), &refs, opts)
        .map_err(|e| Error::Device(format!("CPU: {e}")))?;
    let mut gp = GpuPlan::new(gpu, plan, title, load)?;
    for (k, x) in inputs.iter().enumerate() {
        gp.set_input(gpu, k, x)?;
    }
    if graph {
        // Twice: the capture run and a replay.
        gp.run_graph(gpu, opts.train, opts.seed)?;
        gp.run_graph(gpu, opts.train, opts.seed)?;
    } else {
        gp.run(gpu, opts.train, opts.seed)?;
    }
    let mut w: f64 = 0.0;
    for (k, c) in cpu.iter().enumerate() {
        let g = gp.output(gpu, k)?;
        w = w.max(worst(&g, c, tol.0, tol.1));
    }
    Ok(w)
}

/// Forward and gradient of an instance, eval and train, three GPU paths each.
fn check_instance(gpu: &Gpu, name: &str, inst: &Instance, seed: u64) -> Vec<Outcome> {
    let mut out = Vec::new();
    let fail = |what: String, e: Error| Outcome {
        what,
        worst: f64::INFINITY,
        error: Some(e.to_string()),
    };
    let forward = match Plan::for_instance(inst) {
        Ok(p) => p,
        Err(e) => return vec![fail(name.to_string(), e)],
    };
    let grad = match crate::autodiff::gradient(&inst.diagram)
        .and_then(|g| Plan::new(&g.diagram, &inst.axes, &inst.sizes))
    {
        Ok(p) => p,
        Err(e) => return vec![fail(name.to_string(), e)],
    };
    let (inputs, gin) = harness::plan_inputs(inst, seed);
    for train in [false, true] {
        let opts = RunOptions {
            train,
            seed: seed.wrapping_mul(31).wrapping_add(7),
            check_finite: false,
        };
        for (kind, plan, ins) in [("forward", &forward, &inputs), ("gradient", &grad, &gin)] {
            let fast = LoadOptions::default();
            let paths = [
                ("", false, fast),
                (" graph", true, fast),
                (
                    " gemm-kernel",
                    false,
                    LoadOptions {
                        gemm_kernel: true,
                        ..fast
                    },
                ),
                (
                    " generated-only",
                    false,
                    LoadOptions {
                        hand: false,
                        ..fast
                    },
                ),
            ];
            for (path, graph, load) in paths {
                let what = format!(
                    "{name} {kind} {}{path}",
                    if train { "train" } else { "eval" }
                );
                out.push(
                    match compare(gpu, plan, ins, &what, opts, graph, load, (RTOL, ATOL)) {
                        Ok(w) => Outcome {
                            what,
                            worst: w,
                            error: None,
                        },
                        Err(e) => fail(what, e),
                    },
                );
            }
        }
    }
    out
}

fn bindings(sizes: &[(&str, u64)]) -> Bindings {
    Bindings {
        sizes: sizes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        hypers: Default::default(),
    }
}

/// Runs every check, printing a line per check through `say`; returns the outcomes.
pub fn run(gpu: &Gpu, quick: bool, say: &mut dyn FnMut(&Outcome)) -> Vec<Outcome> {
    let mut all = Vec::new();
    let mut push = |o: Outcome, all: &mut Vec<Outcome>| {
        say(&o);
        all.push(o);
    };
    // 1. The hand-written modules.
    for (file, src) in crate::backend::cuda::kernels::modules() {
        let r = crate::backend::cuda::nvrtc::cached_cubin(&src, file, &gpu.info.arch())
            .map_err(|e| Error::Device(e.to_string()))
            .and_then(|bin| gpu.load_cubin(bin));
        push(
            Outcome {
                what: format!("kernels/{file} compiles and loads"),
                worst: 0.0,
                error: r.err().map(|e| e.to_string()),
            },
            &mut all,
        );
    }
    // 2. Primitives and mechanisms.
    let prims = crate::session::check_text("primitives.diag", PRIMITIVES);
    match prims {
        o if o.checked.is_ok() => {
            let p = &o.checked.program;
            for d in &p.diagrams {
                match instantiate(
                    p,
                    &d.name,
                    &bindings(&[("a", 3), ("b", 4), ("c", 2), ("v", 5)]),
                ) {
                    Ok(inst) => {
                        for o in check_instance(gpu, &format!("primitive {}", d.name), &inst, 5) {
                            push(o, &mut all);
                        }
                    }
                    Err(e) => push(
                        Outcome {
                            what: format!("primitive {}", d.name),
                            worst: f64::INFINITY,
                            error: Some(e.to_string()),
                        },
                        &mut all,
                    ),
                }
            }
        }
        _ => push(
            Outcome {
                what: "primitives.diag".into(),
                worst: f64::INFINITY,
                error: Some("the embedded primitives do not check".into()),
            },
            &mut all,
        ),
    }
    let sizes: &[(&str, u64)] = if quick {
        &[("tok", 8), ("dm", 16), ("head", 2)]
    } else {
        &[("tok", 35), ("dm", 64), ("head", 4)]
    };
    for m in crate::stdlib::mechanisms() {
        let inst = crate::stdlib::module(&format!("attention.{m}"))
            .ok_or_else(|| Error::Device(format!("no stdlib module attention.{m}")))
            .and_then(|(path, text)| {
                let o = crate::session::check_text(path, text);
                if o.checked.is_ok() {
                    instantiate(&o.checked.program, &m, &bindings(sizes))
                } else {
                    Err(Error::Usage("does not check".into()))
                }
            });
        match inst {
            Ok(inst) => {
                for o in check_instance(gpu, &format!("mechanism {m}"), &inst, 3) {
                    push(o, &mut all);
                }
                // Its causal attention fused into one box (what the GPU trains), if any.
                let what = format!("mechanism {m}, attention fused");
                match crate::ir::fuse::fuse_attention(&inst) {
                    Ok((fused, n)) if n > 0 => {
                        for o in check_instance(gpu, &what, &fused, 3) {
                            push(o, &mut all);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => push(
                        Outcome {
                            what,
                            worst: f64::INFINITY,
                            error: Some(e.to_string()),
                        },
                        &mut all,
                    ),
                }
            }
            Err(e) => push(
                Outcome {
                    what: format!("mechanism {m}"),
                    worst: f64::INFINITY,
                    error: Some(e.to_string()),
                },
                &mut all,
            ),
        }
    }
    // 3. The LM: one step's loss and gradients, then training on both devices.
    for (mech, fused) in [("m1", false), ("m1", true), ("m0", false)] {
        let cfg = crate::train::model::ModelConfig {
            mech: mech.into(),
            layers: 1,
            ..Default::default()
        };
        let what = format!(
            "LM {mech}{} 1 layer, one training step (loss and every gradient)",
            if fused { " (attention fused)" } else { "" }
        );
        let r = crate::train::model::train_graph_with(&cfg, fused).and_then(|tg| {
            let f = &tg.forward;
            let plan = Plan::new(&tg.gradient.diagram, &f.axes, &f.sizes)?;
            let mut inputs = harness::to_f32(&harness::random_inputs(f, 11));
            inputs.push(vec![1.0]); // the loss seed
            let opts = RunOptions {
                train: true,
                seed: 11,
                check_finite: false,
            };
            compare(
                gpu,
                &plan,
                &inputs,
                &what,
                opts,
                true,
                LoadOptions::default(),
                (LM_RTOL, LM_ATOL),
            )
        });
        push(
            match r {
                Ok(w) => Outcome {
                    what,
                    worst: w,
                    error: None,
                },
                Err(e) => Outcome {
                    what,
                    worst: f64::INFINITY,
                    error: Some(e.to_string()),
                },
            },
            &mut all,
        );
    }
    for mech in ["m1", "m0"] {
        push(
            training_matches(gpu, mech, if quick { 20 } else { 200 }),
            &mut all,
        );
    }
    all
}

/// Opens the GPU for the selftest (fp32: the comparisons' tolerances assume it).
pub fn open() -> Result<Gpu, Error> {
    Gpu::open(Precision::Fp32)
}

/// `steps` training steps of the 1-layer LM (`mech`) at the protocol's sizes on both devices
/// (the GPU with attention fused, as `diagc train --device cuda` runs it; the CPU without),
/// from the same initial parameters, on the same random batches with the same dropout seeds and
/// the protocol's schedule (Noam, warmup 4000, clipping at 1): the worst relative difference
/// of the per-step losses, as an outcome against `LOSS_RTOL`.
pub fn training_matches(gpu: &Gpu, mech: &str, steps: usize) -> Outcome {
    let what = format!("LM {mech} 1 layer, {steps} training steps on both devices: losses agree");
    match train_both(gpu, mech, steps) {
        Ok(w) => Outcome {
            what,
            worst: w / LOSS_RTOL,
            error: None,
        },
        Err(e) => Outcome {
            what,
            worst: f64::INFINITY,
            error: Some(e.to_string()),
        },
    }
}

/// The relative tolerance of a training step's loss between the devices.
pub const LOSS_RTOL: f64 = 1e-3;

fn train_both(gpu: &Gpu, mech: &str, steps: usize) -> Result<f64, Error> {
    use crate::train::optim::{Adam, noam};
    let cfg = crate::train::model::ModelConfig {
        mech: mech.into(),
        layers: 1,
        ..Default::default()
    };
    let tg = crate::train::model::train_graph(&cfg)?;
    let f = &tg.forward;
    let plan = Plan::new(&tg.gradient.diagram, &f.axes, &f.sizes)?;
    let mut ws = plan.workspace();
    let init = harness::to_f32(&harness::random_inputs(f, 21));
    let np = f.params.len();
    let grad_of: Vec<usize> = (0..np)
        .map(|k| tg.gradient.grad_of[2 + k])
        .collect::<Option<_>>()
        .ok_or_else(|| Error::Device("a parameter has no gradient".into()))?;
    let mut params: Vec<Vec<f32>> = init[2..2 + np].to_vec();
    // Fusion keeps the inputs and parameters in order.
    let fused = crate::train::model::train_graph_with(&cfg, true)?;
    let mut gstep = crate::train::gpu::GpuStep::new(gpu, &fused, &params, 1.0)?;
    let mut adam = Adam::new(&params.iter().map(Vec::len).collect::<Vec<_>>());
    let (n_ids, vocab) = (init[0].len(), cfg.vocab as u64);
    let mut rng = Rng::new(99);
    let mut worst: f64 = 0.0;
    for s in 0..steps {
        let mut batch = || -> Vec<f32> {
            (0..n_ids)
                .map(|_| ((rng.uniform() * vocab as f64) as u64).min(vocab - 1) as f32)
                .collect()
        };
        let (ids, targets) = (batch(), batch());
        let seed = 1000 + s as u64;
        let lr = noam(adam.step + 1, cfg.d_model, 4000, 1.0);
        // CPU: the trainer's step.
        let (cpu_loss, _) = crate::train::run::cpu_step(
            (&plan, &mut ws, &grad_of),
            [&ids, &targets],
            (&mut params, &mut adam),
            (seed, lr, 1.0),
        )
        .map_err(|e| Error::Device(format!("CPU step {s}: {e}")))?;
        // GPU.
        gstep.set_batch(gpu, &ids, &targets)?;
        gstep
            .step(gpu, lr, seed)
            .map_err(|e| Error::Device(format!("GPU step {s}: {e}")))?;
        let gpu_loss = gstep.loss(gpu)?;
        let c = cpu_loss as f64;
        let d = ((gpu_loss as f64 - c) / c.abs().max(1e-12)).abs();
        worst = worst.max(if d.is_nan() { f64::INFINITY } else { d });
    }
    Ok(worst)
}
