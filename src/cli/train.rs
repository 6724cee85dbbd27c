//! `diagc train` and `diagc eval`.

use super::*;

pub(super) fn train_cmd(
    cfg: crate::train::run::TrainConfig,
    data: Option<&Path>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    device: &str,
    jit: bool,
) -> i32 {
    use crate::train::{data::data_dir, run};
    if let Err(e) = known_device(device) {
        return fail(e);
    }
    let data_dir = data_dir(data);
    let (cfg, out, ck) = match run::start_or_resume(cfg, out, resume.as_deref()) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let mut trainer = match run::Trainer::new(cfg.clone(), &data_dir) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    trainer.plan_options.jit = jit;
    if device == "cuda" {
        match crate::backend::cuda::runtime::Gpu::open(Default::default()) {
            Ok(gpu) => {
                eprintln!(
                    "diagc: training and evaluating on {} ({})",
                    gpu.info.name,
                    gpu.info.arch()
                );
                trainer.use_gpu(gpu);
            }
            Err(why) => eprintln!("diagc: --device cuda: {why}; running on the CPU"),
        }
    }
    if let Some(ck) = &ck
        && let Err(e) = trainer.restore(ck)
    {
        return fail(e.context("cannot resume: "));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    eprintln!(
        "training {} ({} layer(s), {} parameters) on {} into {}",
        cfg.model.mech,
        cfg.model.layers,
        trainer.parameter_count(),
        data_dir.display(),
        out.display()
    );
    let progress = std::io::stderr().is_terminal();
    match trainer.run(&out, &stop, progress) {
        Ok(run::Outcome::Finished {
            valid_ppl,
            test_ppl,
        }) => {
            println!("valid perplexity {:.2}", valid_ppl.unwrap_or(f64::NAN));
            println!("test perplexity {test_ppl:.2}");
            println!("summary: {}", out.join("summary.json").display());
            0
        }
        Ok(run::Outcome::Interrupted) => {
            eprintln!(
                "interrupted at step {}; continue with `diagc train --resume {}`",
                trainer.step,
                out.display()
            );
            130
        }
        Err(e) => fail(e),
    }
}

pub(super) fn eval_cmd(run_dir: &Path, split: &str, data: Option<&Path>) -> i32 {
    use crate::train::{data::data_dir, run};
    let (cfg, ck) = match run::load_run(run_dir, "best") {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let mut t = match run::Trainer::new(cfg, &data_dir(data)) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    if let Err(e) = t.restore(&ck) {
        return fail(e);
    }
    match t.perplexity(split) {
        Ok(p) => {
            println!("{split} perplexity {p:.2}");
            0
        }
        Err(e) => fail(e),
    }
}
