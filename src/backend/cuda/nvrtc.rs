//! NVRTC: CUDA C source to CUBIN for one GPU architecture, at run time, cached on disk.
//!
//! The library is loaded dynamically (cudarc's `dynamic-loading`), so nothing CUDA is needed to
//! build diagc. [`load`] finds it, in order:
//! 1. `DIAGC_NVRTC`: the path of `libnvrtc.so.*` or of the folder holding it;
//! 2. the loader's own search (`LD_LIBRARY_PATH`, the system's library folders), by the names
//!    cudarc tries;
//! 3. the CUDA toolkit's usual folders (`/usr/local/cuda/lib64`, `/usr/local/cuda-13*/lib64`);
//! 4. the PyPI package `nvidia-cuda-nvrtc` installed with `pip install --target target/nvrtc`
//!    under this crate (what the README's test command does), or in the user's site-packages.
//!
//! A library found by path is opened once and kept open; cudarc's own lookup by name then
//! resolves to it (the loader matches an already loaded library by its soname,
//! `libnvrtc.so.13`). Every call checks [`load`] first, so a machine without NVRTC gets an
//! error, never cudarc's panic.
//!
//! Kernels compile straight to CUBIN for the device's architecture (`sm_90` for an H100):
//! PTX from an NVRTC newer than the driver can be refused by the driver, CUBIN cannot.

use crate::error::Error;
use cudarc::nvrtc::{result, sys};
use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The soname of the NVRTC of CUDA 13, the version diagc is built against.
const SONAME: &str = "libnvrtc.so.13";

/// Where the library was found, or why it was not.
/// Where NVRTC was found, or why it was not (a message for the user).
enum Loaded {
    Found(String),
    Missing(String),
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dir_or_file = |p: PathBuf| {
        if p.is_dir() {
            out.push(p.join(SONAME));
        } else {
            out.push(p);
        }
    };
    if let Some(p) = std::env::var_os("DIAGC_NVRTC") {
        dir_or_file(PathBuf::from(p));
    }
    for dir in ["/usr/local/cuda/lib64", "/usr/local/cuda-13.0/lib64"] {
        dir_or_file(PathBuf::from(dir));
    }
    // The PyPI package under this crate's `target/` (the README's test command puts it there).
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir_or_file(manifest.join("target/nvrtc/nvidia/cu13/lib"));
    if let Some(home) = std::env::var_os("HOME") {
        let home = PathBuf::from(home);
        for py in ["python3.11", "python3.12", "python3.10", "python3.13"] {
            dir_or_file(home.join(format!(".local/lib/{py}/site-packages/nvidia/cu13/lib")));
        }
    }
    out
}

/// Finds and opens NVRTC (once per process). `Ok` gives where it was found.
pub fn load() -> Result<&'static str, Error> {
    let r = LOADED.get_or_init(|| {
        // An explicit path wins over the loader's search.
        let explicit = std::env::var_os("DIAGC_NVRTC").is_some();
        // SAFETY: loading NVRTC runs no initialisation code with preconditions.
        if !explicit && unsafe { sys::is_culib_present() } {
            return Loaded::Found("the system's library path".into());
        }
        for path in candidates() {
            if !path.is_file() {
                continue;
            }
            // SAFETY: as above; the library stays loaded for the life of the process.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    // NVRTC opens its builtins library by name when it first compiles; outside
                    // the loader's path it is found only if it is already loaded.
                    if let Some(dir) = path.parent()
                        && let Ok(entries) = std::fs::read_dir(dir)
                    {
                        for e in entries.flatten() {
                            let n = e.file_name().to_string_lossy().to_string();
                            if n.starts_with("libnvrtc-builtins.so") {
                                // SAFETY: as above.
                                if let Ok(b) = unsafe { libloading::Library::new(e.path()) } {
                                    std::mem::forget(b);
                                }
                            }
                        }
                    }
                    // SAFETY: as above.
                    if unsafe { sys::is_culib_present() } {
                        return Loaded::Found(path.display().to_string());
                    }
                }
                Err(e) => return Loaded::Missing(format!("{}: {e}", path.display())),
            }
        }
        Loaded::Missing(format!(
            "NVRTC ({SONAME}) was not found: set DIAGC_NVRTC to it or its folder, or install \
             it with `python3 -m pip install --target target/nvrtc nvidia-cuda-nvrtc==13.0.88`"
        ))
    });
    match r {
        Loaded::Found(at) => Ok(at.as_str()),
        Loaded::Missing(why) => Err(Error::Device(why.clone())),
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32), Error> {
    load()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is loaded; the out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Device(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// A compilation that failed: NVRTC's log, with the program's name.
#[derive(Debug, Clone)]
pub struct CompileError {
    pub name: String,
    pub log: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NVRTC could not compile {}:\n{}", self.name, self.log)
    }
}

/// The options every diagc kernel is compiled with, for architecture `arch` (`sm_90`).
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        // f32 as IEEE: no flush to zero, correctly rounded division and square roots, so
        // kernels agree with the CPU executor within the tolerances the selftest states.
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
    ]
}

/// Compiles `src` to a CUBIN for `arch` (`sm_90`). `name` labels the program in errors.
/// Warnings are not errors; the log of a failed compilation is.
pub fn compile_cubin(src: &str, name: &str, arch: &str) -> Result<Vec<u8>, CompileError> {
    let fail = |log: String| CompileError {
        name: name.to_string(),
        log,
    };
    load().map_err(|e| fail(e.to_string()))?;
    let csrc = CString::new(src).map_err(|_| fail("the source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("the name contains a NUL byte".into()))?;
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| fail(format!("nvrtcCreateProgram: {e:?}")))?;
    // SAFETY: `prog` was just created and is destroyed once, below; `csrc` and `cname` outlive it.
    let out = unsafe {
        let compiled = result::compile_program(prog, &options(arch));
        let log = result::get_program_log(prog)
            .map(|l| {
                CStr::from_ptr(l.as_ptr())
                    .to_string_lossy()
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(fail(format!("{e:?}\n{log}"))),
            Ok(()) => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e:?}")))
                    .and_then(|()| {
                        let mut bin = vec![0u8; size];
                        sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast())
                            .result()
                            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
                        Ok(bin)
                    })
            }
        }
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// The folder of compiled kernels: `DIAGC_CACHE_DIR`, else `$XDG_CACHE_HOME/diagc/cuda`, else
/// `~/.cache/diagc/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DIAGC_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("diagc/cuda"))
}

/// [`compile_cubin`] through the disk cache: the key hashes the source, the options and NVRTC's
/// version. A cache that cannot be read or written only costs a compilation.
pub fn cached_cubin(src: &str, name: &str, arch: &str) -> Result<Vec<u8>, CompileError> {
    let key = {
        let mut h = Sha256::new();
        h.update(src.as_bytes());
        for o in options(arch) {
            h.update(b"\0");
            h.update(o.as_bytes());
        }
        h.update(format!("{:?}", version().ok()).as_bytes());
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let path = cache_dir().map(|d| d.join(format!("{key}.cubin")));
    if let Some(bin) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
        return Ok(bin);
    }
    let bin = compile_cubin(src, name, arch)?;
    if let Some(p) = path {
        // Written beside and renamed, so a concurrent reader never sees half a file.
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        let ok = p
            .parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && std::fs::write(&tmp, &bin).is_ok()
            && std::fs::rename(&tmp, &p).is_ok();
        if !ok {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(bin)
}
