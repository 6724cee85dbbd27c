//! `diagc bench`: the training step timed on the CPU or the GPU, beside PyTorch.

use super::*;

/// The arguments of `diagc bench`.
#[derive(clap::Args)]
pub(super) struct BenchArgs {
    /// The mechanism (a stdlib name: m1, m0, bahdanau, ...).
    pub mech: String,
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    #[arg(long, default_value_t = 20)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 35)]
    pub bptt: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Also run the PyTorch peer (`bench/pytorch_lm_step.py`) with the same configuration and
    /// print the ratio.
    #[arg(long)]
    pub pytorch: bool,
    /// The PyTorch peer's path (default: `DIAGC_PYTORCH_SCRIPT`, else
    /// `bench/pytorch_lm_step.py` of the source tree diagc was built from).
    #[arg(long, value_name = "PATH")]
    pub pytorch_script: Option<PathBuf>,
    /// Repeat the measurement this many times, alternating diagc and PyTorch (with
    /// `--pytorch`), and report every round and the median ratio: on a shared machine the
    /// load changes within a minute, and alternating exposes both sides to it alike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Also list the N slowest steps of one forward+backward on the CPU, each with the
    /// boxes it computes (and the GFLOP/s of a product): where a mechanism's time goes.
    #[arg(long, default_value_t = 0)]
    pub top: usize,
    /// Run every step on the precompiled kernels (the interpreter path), without the
    /// cranelift-fused elementwise kernels.
    #[arg(long)]
    pub no_jit: bool,
    /// Fuse causal softmax and linear attention into one box per layer (flash and linear
    /// attention kernels on the GPU). `auto`: on the GPU, not on the CPU, as `diagc train`.
    #[arg(long, value_enum, default_value = "auto")]
    pub fuse_attention: FuseArg,
    /// cpu, cuda or auto (auto means cpu). `cuda` times the step on the GPU (one CUDA graph
    /// per step, attention fused); without a GPU it says why and runs on the CPU.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Products on the GPU: fp32, or tf32 (tensor cores, 10-bit mantissa inputs).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
}

pub(super) fn bench_cmd(a: &BenchArgs) -> i32 {
    let (steps, jit, fuse, rounds, top) = (
        a.steps,
        !a.no_jit,
        a.fuse_attention,
        a.rounds as usize,
        a.top,
    );
    let (mech, layers, batch, bptt) = (a.mech.as_str(), a.layers, a.batch_size, a.bptt);
    let (pytorch, device, precision) = (a.pytorch, a.device.as_str(), a.precision);
    let script = crate::train::bench::pytorch_script(a.pytorch_script.as_deref());
    if pytorch && let Err(e) = crate::train::bench::require_script(&script) {
        return fail(e);
    }
    let cfg = crate::train::model::ModelConfig {
        mech: mech.to_string(),
        layers,
        batch,
        bptt,
        ..Default::default()
    };
    if let Err(e) = known_device(device) {
        return fail(e);
    }
    if device == "cuda" {
        use crate::backend::cuda::runtime::{Gpu, Precision};
        let p = match precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Tf32 => Precision::Tf32,
        };
        match Gpu::open(p) {
            Ok(gpu) => {
                let fuse = fuse != FuseArg::No;
                return bench_cuda(
                    &gpu,
                    &cfg,
                    (steps.max(1), fuse),
                    pytorch.then_some(script.as_path()),
                    precision,
                );
            }
            Err(why) => errln!("diagc: --device cuda: {why}; running on the CPU"),
        }
    }
    let fuse = fuse == FuseArg::Yes;
    let mut rows: Vec<crate::train::bench::Round> = Vec::new();
    for round in 0..rounds {
        let r = match crate::train::bench::bench(&cfg, steps.max(1), 0, jit, fuse) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        if round == 0 {
            out!(
                "{}",
                crate::train::bench::cpu_report(&r, &cfg, (jit, fuse), top)
            );
        }
        let mut theirs = None;
        if pytorch {
            // PyTorch gets as many threads as diagc's pool.
            let threads = crate::backend::cpu::exec::kernels::cores().to_string();
            match crate::train::bench::run_pytorch(
                &script,
                &cfg,
                steps.max(1),
                &["--threads", &threads],
            ) {
                Ok(v) => {
                    if round == 0 {
                        out!(
                            "{}",
                            crate::train::bench::pytorch_report(
                                &v,
                                "",
                                8,
                                (r.fwd_bwd_tokens_per_s(), r.step_tokens_per_s()),
                                ("peak RSS", "peak_rss_mib"),
                            )
                        );
                    }
                    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
                    theirs = Some((f("fwd_bwd_tokens_per_s"), f("step_tokens_per_s")));
                }
                Err(e) => return fail(e),
            }
        }
        rows.push((r.fwd_bwd_tokens_per_s(), r.step_tokens_per_s(), theirs));
    }
    if rounds > 1 {
        out!("{}", crate::train::bench::rounds_table(&rows));
    }
    0
}

/// `diagc bench --device cuda`: the training step on the GPU, and PyTorch's (eager and
/// torch.compile) in the same run with the peer script `pytorch`.
fn bench_cuda(
    gpu: &crate::backend::cuda::runtime::Gpu,
    cfg: &crate::train::model::ModelConfig,
    (steps, fuse): (usize, bool),
    pytorch: Option<&Path>,
    precision: PrecisionArg,
) -> i32 {
    let (step, fb, bytes) = match crate::train::gpu::bench(gpu, cfg, steps, 0, fuse) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let tokens = (cfg.batch * cfg.bptt) as f64;
    let tf32 = matches!(precision, PrecisionArg::Tf32);
    outln!(
        "diagc (CUDA, {}, {}, one CUDA graph per step) {}, {} layer(s), batch {} x {}, on {} ({})",
        if tf32 { "TF32 products" } else { "fp32" },
        if fuse {
            "attention fused"
        } else {
            "attention not fused"
        },
        cfg.mech,
        cfg.layers,
        cfg.batch,
        cfg.bptt,
        gpu.info.name,
        gpu.info.arch()
    );
    outln!("  forward+backward:         {:10.0} tokens/s", tokens / fb);
    outln!(
        "  whole step (+clip, Adam): {:10.0} tokens/s",
        tokens / step
    );
    outln!(
        "  device memory held (plan buffers, parameters, gradients, Adam moments): {:.0} MiB",
        bytes as f64 / (1u64 << 20) as f64
    );
    if let Some(script) = pytorch {
        for (label, extra) in [
            ("eager", vec!["--device", "cuda"]),
            ("torch.compile", vec!["--device", "cuda", "--compile"]),
        ] {
            let mut extra = extra;
            if tf32 {
                extra.push("--tf32");
            }
            match crate::train::bench::run_pytorch(script, cfg, steps, &extra) {
                Ok(v) => out!(
                    "{}",
                    crate::train::bench::pytorch_report(
                        &v,
                        &format!(" {label}"),
                        10,
                        (tokens / fb, tokens / step),
                        ("peak GPU memory (allocator)", "peak_gpu_mib"),
                    )
                ),
                Err(e) => errln!("diagc: {e}"),
            }
        }
    }
    0
}
