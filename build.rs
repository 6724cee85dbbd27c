//! Builds the lalrpop parser from `grammar/diag.lalrpop` into `$OUT_DIR/diag.rs`, and embeds the
//! stdlib: every `.diag` file under `stdlib/` becomes an entry of `$OUT_DIR/stdlib_files.rs`, so
//! the binary carries its standard library and works from any directory. The CUDA kernel sources
//! of `kernels/` are embedded the same way (`$OUT_DIR/cuda_kernels.rs`).

use std::{env, fs, path::Path};

fn main() {
    git_commit();
    let out = env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    lalrpop::Configuration::new()
        .set_in_dir("grammar")
        .set_out_dir(&out)
        .emit_rerun_directives(true)
        .process()
        .expect("the lalrpop grammar in grammar/ must build");

    let mut files = Vec::new();
    collect(Path::new("stdlib"), &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for f in &files {
        let rel = f
            .strip_prefix("stdlib")
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let abs = fs::canonicalize(f).unwrap();
        table.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            abs.to_string_lossy()
        ));
    }
    table.push_str("]\n");
    fs::write(Path::new(&out).join("stdlib_files.rs"), table).unwrap();

    // Derivations (`stdlib/derivations/*.derive`), replayed by `diagc derive`.
    let mut table = String::from("&[\n");
    let dir = Path::new("stdlib/derivations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut derivs: Vec<_> = fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    derivs.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "derive"));
    derivs.sort();
    for f in &derivs {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let abs = fs::canonicalize(f).unwrap();
        table.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.to_string_lossy()
        ));
    }
    table.push_str("]\n");
    fs::write(Path::new(&out).join("stdlib_derivations.rs"), table).unwrap();
    println!("cargo:rerun-if-changed=stdlib");

    // CUDA kernel sources (`kernels/*.cu`, `kernels/*.cuh`), compiled at run time by NVRTC.
    let mut table = String::from("&[\n");
    let dir = Path::new("kernels");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut kernels: Vec<_> = fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    kernels.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|x| x == "cu" || x == "cuh"));
    kernels.sort();
    for f in &kernels {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let abs = fs::canonicalize(f).unwrap();
        table.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            abs.to_string_lossy()
        ));
    }
    table.push_str("]\n");
    fs::write(Path::new(&out).join("cuda_kernels.rs"), table).unwrap();
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            println!("cargo:rerun-if-changed={}", p.display());
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "diag") {
            println!("cargo:rerun-if-changed={}", p.display());
            out.push(p);
        }
    }
}

/// The commit being built, as `DIAGC_GIT_COMMIT` (sweep results and reports record it); empty
/// outside a git checkout. Rebuilt when HEAD moves.
fn git_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=DIAGC_GIT_COMMIT={commit}");
    // Only files that exist: cargo reruns the script on every build for a missing one.
    let watch = |p: std::path::PathBuf| {
        if p.is_file() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch(Path::new(&dir).join("HEAD"));
    }
    if let (Some(common), Some(r)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        watch(Path::new(&common).join(r));
        watch(Path::new(&common).join("packed-refs"));
    }
}
