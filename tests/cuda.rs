//! The CUDA backend without a GPU: every hand-written kernel of `kernels/` and the generated
//! CUDA of every primitive, every stdlib mechanism and the training language model compile with
//! NVRTC to CUBIN for the GPU machines' architecture (sm_90, H100/H200), and a machine without
//! a GPU says so. NVRTC comes from the PyPI package `nvidia-cuda-nvrtc` (the README's test
//! command installs it under `target/nvrtc`); if it is missing these tests fail, they do not
//! skip. What needs a GPU (running the kernels against the CPU executor) is `diagc selftest
//! --device cuda`, on the GPU machine.

mod common;

use common::{bindings, instance_of};
use diagc::backend::cuda::{codegen, kernels, nvrtc};
use diagc::ir::instance::instantiate;
use diagc::lir::Plan;
use std::process::Command;

const ARCH: &str = "sm_90";

fn compile(src: &str, name: &str) -> usize {
    if let Err(e) = nvrtc::load() {
        panic!("{e}");
    }
    match nvrtc::compile_cubin(src, name, ARCH) {
        Ok(bin) => {
            // A CUBIN is an ELF file.
            assert_eq!(&bin[..4], b"\x7fELF", "{name}: not an ELF image");
            bin.len()
        }
        Err(e) => {
            let _ = std::fs::write(format!("/tmp/diagc-failed-{name}.cu"), src);
            panic!("{e}\n(source written to /tmp/diagc-failed-{name}.cu)");
        }
    }
}

#[test]
fn nvrtc_is_found_and_is_cuda_13() {
    let at = nvrtc::load().unwrap_or_else(|e| panic!("{e}"));
    let (major, _) = nvrtc::version().unwrap();
    assert_eq!(major, 13, "NVRTC at {at}");
}

#[test]
fn every_hand_written_kernel_compiles() {
    let modules = kernels::modules();
    assert!(
        kernels::common().contains("diagc_keep"),
        "kernels/common.cuh lacks the dropout hash"
    );
    assert!(modules.len() >= 6, "{} kernel files", modules.len());
    let mut names = std::collections::BTreeSet::new();
    for (file, src) in &modules {
        let entries = kernels::entry_points(src);
        assert!(!entries.is_empty(), "{file} defines no extern \"C\" kernel");
        for e in entries {
            assert!(names.insert(e.clone()), "kernel {e} is defined twice");
        }
        compile(src, file);
    }
}

#[test]
fn a_compile_error_is_reported_with_the_log() {
    nvrtc::load().unwrap_or_else(|e| panic!("{e}"));
    let e = nvrtc::compile_cubin(
        "extern \"C\" __global__ void k(float* p) { p[0] = undefined_name; }",
        "broken.cu",
        ARCH,
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("broken.cu"), "{text}");
    assert!(text.contains("undefined_name"), "{text}");
}

fn plans_of(inst: &diagc::ir::instance::Instance) -> (Plan, Plan) {
    let forward = Plan::for_instance(inst).unwrap();
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    let backward = Plan::new(&grad.diagram, &inst.axes, &inst.sizes).unwrap();
    (forward, backward)
}

/// Generates one module for all `(name, instance)` (forward and gradient each) and compiles
/// it; checks that every kernel a launch names is defined in the source.
/// Returns how many launches are of hand-written kernels.
fn compile_all(what: &str, insts: &[(String, diagc::ir::instance::Instance)]) -> usize {
    let plans: Vec<(String, Plan, Plan)> = insts
        .iter()
        .map(|(n, i)| {
            let (f, b) = plans_of(i);
            (n.clone(), f, b)
        })
        .collect();
    let mut parts = Vec::new();
    for (k, (n, f, b)) in plans.iter().enumerate() {
        parts.push((format!("m{k}f_"), f, format!("{n} forward")));
        parts.push((format!("m{k}g_"), b, format!("{n} gradient")));
    }
    let refs: Vec<(&str, &Plan, &str)> = parts
        .iter()
        .map(|(p, plan, t)| (p.as_str(), *plan, t.as_str()))
        .collect();
    let (src, parts) = codegen::generate_module(&refs);
    let defined: std::collections::HashSet<String> =
        kernels::entry_points(&src).into_iter().collect();
    let mut launches = 0;
    let mut hand = 0;
    for part in &parts {
        for step in &part.steps {
            for op in &step.ops {
                let l = match op {
                    codegen::Op::Launch(l) => l,
                    codegen::Op::Gemm { fallback, .. } => fallback,
                    codegen::Op::Hand(h) => {
                        // Hand-written kernels are appended to the module they are used in.
                        assert!(
                            defined.contains(h.kernel),
                            "{}: kernels/{}'s {} is not in the module",
                            part.title,
                            h.file,
                            h.kernel
                        );
                        hand += 1;
                        launches += 1;
                        continue;
                    }
                };
                assert!(
                    defined.contains(&l.kernel),
                    "{}: launches {}, which the source does not define",
                    part.title,
                    l.kernel
                );
                launches += 1;
            }
        }
    }
    assert!(launches > insts.len(), "{what}: {launches} launches");
    compile(&src, what);
    hand
}

#[test]
fn the_generated_cuda_of_every_primitive_compiles() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = diagc::session::check_path(&root.join("src/selftest/primitives.diag")).unwrap();
    assert!(o.checked.is_ok());
    let p = &o.checked.program;
    let sizes = [("a", 3), ("b", 4), ("c", 2), ("v", 5)];
    let insts: Vec<_> = p
        .diagrams
        .iter()
        .map(|d| {
            let inst = instantiate(p, &d.name, &bindings(&sizes, &[])).unwrap();
            (d.name.clone(), inst)
        })
        .collect();
    assert!(insts.len() >= 35);
    compile_all("primitives", &insts);
}

#[test]
fn the_generated_cuda_of_every_stdlib_mechanism_compiles() {
    let mut insts = Vec::new();
    for m in diagc::stdlib::mechanisms() {
        let b = bindings(&[("tok", 35), ("dm", 64), ("head", 4)], &[]);
        insts.push((
            m.clone(),
            instance_of(&format!("stdlib/attention/{m}.diag"), &[], &m, &b),
        ));
    }
    assert!(insts.len() >= 7);
    compile_all("mechanisms", &insts);
}

#[test]
fn the_generated_cuda_of_the_training_model_compiles() {
    // The 1-layer LM with its loss at the protocol's sizes (what `diagc train --device cuda`
    // runs, with attention fused), for M1 and M0, and both unfused.
    for (mech, fused) in [("m1", true), ("m1", false), ("m0", true), ("m0", false)] {
        let cfg = diagc::train::model::ModelConfig {
            mech: mech.into(),
            layers: 1,
            ..Default::default()
        };
        let tg = diagc::train::model::train_graph_with(&cfg, fused).unwrap();
        let f = &tg.forward;
        let plan = Plan::new(&tg.gradient.diagram, &f.axes, &f.sizes).unwrap();
        let g = codegen::generate(&plan, &format!("{mech} LM training step"));
        assert!(
            !g.errors.is_empty(),
            "the embedding and loss check their ids"
        );
        // Fused attention at d = 128 runs on the hand-written kernels: M1's on the flash
        // kernels, M0's on the linear-attention ones.
        let launches = (
            g.source.contains("diagc_flash_bwd_dq_d128<<<"),
            g.source.contains("diagc_linattn_bwd<<<"),
        );
        assert_eq!(
            launches,
            (fused && mech == "m1", fused && mech == "m0"),
            "{mech}: attention launches"
        );
        compile(&g.source, &format!("lm-{mech}-{fused}"));
    }
}

#[test]
fn emit_cuda_prints_a_self_contained_source() {
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args([
            "compile",
            "stdlib/attention/m1.diag",
            "--emit",
            "cuda",
            "--size",
            "tok=8",
            "--size",
            "dm=16",
            "--size",
            "head=2",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = String::from_utf8(out.stdout).unwrap();
    assert!(src.contains("forward (kernels `fwd_s*`)"), "{src}");
    assert!(src.contains("gradient"));
    assert!(src.contains("diagc_keep"), "common.cuh is included");
    compile(&src, "emitted-m1");
    // Attention is fused (head size 8 here: generated kernels, not the flash ones).
    assert!(src.contains("_attention_back_dq"), "{src}");
    assert!(
        !src.contains("_lane("),
        "no softmax lane kernel: the scores are never materialised"
    );

    // Without sizes for the free axes: a message, exit 2, no panic.
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["compile", "stdlib/attention/m1.diag", "--emit", "cuda"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("diagc:"));
}

#[test]
fn selftest_says_plainly_when_there_is_no_gpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["selftest", "--device", "cuda", "--quick"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match diagc::backend::cuda::probe() {
        Err(why) => {
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains(&why.to_string()), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
        // On a GPU machine the selftest runs and every check must pass: exit 0, and the
        // closing line counts no failure.
        Ok(_) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
            assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args(["selftest", "--device", "tpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn asking_for_cuda_falls_back_to_the_cpu_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args([
            "bench",
            "m1",
            "--steps",
            "1",
            "--device",
            "cuda",
            "--batch-size",
            "2",
            "--bptt",
            "5",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--device cuda:"), "{stderr}");
    assert!(stderr.contains("running on the CPU"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tokens/s"));
}

#[test]
fn train_on_cuda_uses_the_gpu_or_says_why_not() {
    let out_dir = std::env::temp_dir().join(format!("diagc-cuda-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(env!("CARGO_BIN_EXE_diagc"))
        .args([
            "train",
            "m1",
            "--layers",
            "1",
            "--epochs",
            "1",
            "--d-model",
            "64",
        ])
        .args([
            "--heads",
            "2",
            "--d-ff",
            "128",
            "--bptt",
            "16",
            "--batch-size",
            "8",
        ])
        .args([
            "--steps",
            "2",
            "--train-tokens",
            "3000",
            "--eval-tokens",
            "500",
        ])
        .args(["--device", "cuda", "--out"])
        .arg(&out_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    let device = summary["device"].as_str().unwrap();
    match diagc::backend::cuda::probe() {
        Err(why) => {
            assert!(stderr.contains(&why.to_string()), "{stderr}");
            assert!(stderr.contains("running on the CPU"), "{stderr}");
            assert_eq!(device, "cpu");
        }
        Ok(info) => {
            assert!(stderr.contains("training and evaluating on"), "{stderr}");
            assert!(device.contains(&info.name), "{device}");
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}
