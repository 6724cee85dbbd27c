//! The hand-written CUDA kernels of `kernels/`, run without a GPU. Each module (common.cuh
//! prepended to one `.cu` file, as `kernels::modules()` builds it) is compiled as C++20 by g++
//! with a shim that emulates the CUDA execution model: the blocks of a launch run one after
//! another, and within a block every CUDA thread is an OS thread, so `__shared__` memory
//! (function-local statics, poisoned before every block as the device leaves it
//! uninitialised), `__syncthreads()` (a block barrier), warp shuffles (a per-warp exchange
//! between two per-warp barriers) and atomics (under a lock) behave as on the device. The
//! emulator also reports what is undefined on the device: divergent `__syncthreads`, shuffles
//! with a divergent warp, an exited lane or a mask that leaves out lanes; a deadlock (no
//! barrier released for a minute) aborts the process with a message. Every kernel is checked
//! against a CPU reference (f64 where it matters; bitwise where the kernel claims the CPU's
//! roundings), with sentinels after every buffer so that writes out of bounds and elements
//! never written are caught, on its documented launch configuration and on capped grids.
//!
//! What this does not check: the CUDA compiler (tests/cuda.rs compiles every kernel with
//! NVRTC), the device's `expf`/`logf`/`fmaf` (the host's libm stands in), and schedules the OS
//! does not happen to produce (a race shows up only when two threads do interleave there).

use diagc::backend::cpu::harness::Rng;
use diagc::backend::cpu::{interp, jit};
use diagc::backend::cuda::kernels;
use diagc::train::optim::{Adam, clip_factor};
use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

const SHIM: &str = r#"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
using std::isinf; using std::isnan;

// ---- the CUDA dialect ----
struct diagc_dim3 { unsigned x, y, z; };
static thread_local diagc_dim3 blockIdx, threadIdx, blockDim, gridDim;
struct alignas(16) float4 { float x, y, z, w; };
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
// Blocks run one at a time and the threads of a block share function-local statics: a
// __shared__ array is a static, one per kernel (and per template instance).
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

template <class T> inline float __int_as_float(T i) { unsigned u = (unsigned)i; float f; std::memcpy(&f, &u, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
// The _rn intrinsics are single IEEE operations (compiled with -ffp-contract=off: no FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
template <class T> inline T __ldg(const T* p) { return *p; }
#define EMU_MINMAX(T) \
    inline T min(T a, T b) { return b < a ? b : a; } \
    inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

// ---- errors: the first one of a launch, read by the test after it ----
static std::mutex emu_err_mu;
static std::string emu_err;
static void emu_fail(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::lock_guard<std::mutex> l(emu_err_mu);
    if (emu_err.empty()) emu_err = buf;
}
extern "C" const char* emu_error() { return emu_err.c_str(); }
extern "C" void emu_clear() { std::lock_guard<std::mutex> l(emu_err_mu); emu_err.clear(); }

// ---- a barrier for a changing number of threads (exited threads drop out) ----
// The last thread to arrive runs `done` (a check) under the lock, then releases the others,
// which sleep on the generation counter (a futex), not on the lock. Every release counts as
// progress; a launch that makes none for a minute is a deadlock (see emu_run_grid).
static std::atomic<unsigned long long> emu_progress{0};
struct emu_barrier {
    std::mutex mu;
    unsigned expected = 0, arrived = 0;
    std::atomic<unsigned> gen{0};
    template <class F> void release(std::unique_lock<std::mutex>& l, F& done, unsigned g) {
        done();
        arrived = 0;
        gen.store(g + 1, std::memory_order_release);
        l.unlock();
        emu_progress.fetch_add(1, std::memory_order_relaxed);
        gen.notify_all();
    }
    template <class F> void wait(F done) {
        std::unique_lock<std::mutex> l(mu);
        const unsigned g = gen.load(std::memory_order_relaxed);
        if (++arrived >= expected) { release(l, done, g); return; }
        l.unlock();
        while (gen.load(std::memory_order_acquire) == g) gen.wait(g, std::memory_order_acquire);
    }
    template <class F> void drop(F done) {
        std::unique_lock<std::mutex> l(mu);
        --expected;
        if (arrived > 0 && arrived >= expected) release(l, done, gen.load(std::memory_order_relaxed));
    }
};

struct emu_warp {
    emu_barrier bar;
    unsigned lanes = 0;             // 32, or fewer in the last warp of a small block
    unsigned long long slot[32];    // the values a shuffle exchanges
    int site[32];                   // the source line each lane is at
    bool gone[32];                  // lanes that have returned from the kernel
};
struct emu_block {
    unsigned n = 0;
    emu_barrier bar, fence;
    std::vector<int> site;
    std::vector<char> gone;
    std::unique_ptr<emu_warp[]> warps;
};
struct emu_thread { emu_block* b; emu_warp* w; unsigned tid, lane; };
static thread_local emu_thread* emu_me = nullptr;

// Every live thread of the block must wait at the same __syncthreads.
static void emu_check_block(emu_block& b) {
    int first = -1;
    unsigned at = 0;
    for (unsigned t = 0; t < b.n; ++t) {
        if (b.gone[t]) continue;
        if (first < 0) { first = b.site[t]; at = t; }
        else if (b.site[t] != first) {
            emu_fail("divergent __syncthreads: block %u, thread %u at line %d, thread %u at line %d", blockIdx.x, at, first, t, b.site[t]);
            return;
        }
    }
}

// Every lane of the warp must be in the same shuffle, none returned.
static void emu_check_warp(emu_warp& w, const char* what) {
    int first = -1;
    for (unsigned l = 0; l < w.lanes; ++l) {
        if (w.gone[l]) { emu_fail("%s: lane %u of a warp has returned (block %u)", what, l, blockIdx.x); return; }
        if (first < 0) first = w.site[l];
        else if (w.site[l] != first) {
            emu_fail("%s: divergent warp, lane 0 at line %d, lane %u at line %d (block %u)", what, first, l, w.site[l], blockIdx.x);
            return;
        }
    }
}

static void emu_syncthreads(int line) {
    emu_block& b = *emu_me->b;
    b.site[emu_me->tid] = line;
    b.bar.wait([&b] { emu_check_block(b); });
}
#define __syncthreads() emu_syncthreads(__LINE__)

template <class T> static T emu_shfl(int line, unsigned mask, T v, unsigned src, const char* what) {
    static_assert(sizeof(T) <= 8, "a shuffle of more than 8 bytes");
    emu_thread& me = *emu_me;
    emu_warp& w = *me.w;
    const unsigned need = w.lanes == 32 ? 0xffffffffu : ((1u << w.lanes) - 1u);
    if ((mask & need) != need) emu_fail("%s at line %d: mask %#x leaves out live lanes", what, line, mask);
    std::memcpy(&w.slot[me.lane], &v, sizeof(T));
    w.site[me.lane] = line;
    w.bar.wait([&w, what] { emu_check_warp(w, what); });
    T r = v;
    if (src >= w.lanes) emu_fail("%s at line %d: source lane %u of a warp of %u", what, line, src, w.lanes);
    else std::memcpy(&r, &w.slot[src], sizeof(T));
    w.bar.wait([] {});
    return r;
}
template <class T> static T emu_shfl_idx(int line, unsigned mask, T v, int src, int width = 32) {
    if (width != 32) emu_fail("__shfl_sync with width %d (not emulated)", width);
    return emu_shfl(line, mask, v, (unsigned)src & 31u, "__shfl_sync");
}
template <class T> static T emu_shfl_xor(int line, unsigned mask, T v, int lm, int width = 32) {
    if (width != 32) emu_fail("__shfl_xor_sync with width %d (not emulated)", width);
    return emu_shfl(line, mask, v, emu_me->lane ^ (unsigned)lm, "__shfl_xor_sync");
}
template <class T> static T emu_shfl_down(int line, unsigned mask, T v, unsigned d, int width = 32) {
    if (width != 32) emu_fail("__shfl_down_sync with width %d (not emulated)", width);
    const unsigned s = emu_me->lane + d;
    return emu_shfl(line, mask, v, s < 32u ? s : emu_me->lane, "__shfl_down_sync");
}
template <class T> static T emu_shfl_up(int line, unsigned mask, T v, unsigned d, int width = 32) {
    if (width != 32) emu_fail("__shfl_up_sync with width %d (not emulated)", width);
    const unsigned l = emu_me->lane;
    return emu_shfl(line, mask, v, l >= d ? l - d : l, "__shfl_up_sync");
}
#define __shfl_sync(...) emu_shfl_idx(__LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) emu_shfl_xor(__LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) emu_shfl_down(__LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) emu_shfl_up(__LINE__, __VA_ARGS__)

// ---- atomics: one lock for all ----
static std::mutex emu_atomic_mu;
#define EMU_ATOMIC(T, NAME, EXPR) \
    inline T NAME(T* p, T v) { std::lock_guard<std::mutex> l(emu_atomic_mu); T o = *p; *p = (EXPR); return o; }
EMU_ATOMIC(float, atomicAdd, o + v)
EMU_ATOMIC(double, atomicAdd, o + v)
EMU_ATOMIC(int, atomicAdd, o + v)
EMU_ATOMIC(unsigned, atomicAdd, o + v)
EMU_ATOMIC(unsigned long long, atomicAdd, o + v)
EMU_ATOMIC(int, atomicExch, v)
EMU_ATOMIC(unsigned, atomicExch, v)
EMU_ATOMIC(float, atomicExch, v)
EMU_ATOMIC(int, atomicMax, o < v ? v : o)
EMU_ATOMIC(unsigned, atomicMax, o < v ? v : o)
EMU_ATOMIC(int, atomicMin, v < o ? v : o)
EMU_ATOMIC(unsigned, atomicMin, v < o ? v : o)
#define EMU_CAS(T) \
    inline T atomicCAS(T* p, T c, T v) { std::lock_guard<std::mutex> l(emu_atomic_mu); T o = *p; if (o == c) *p = v; return o; }
EMU_CAS(int)
EMU_CAS(unsigned)
EMU_CAS(unsigned long long)

// ---- shared memory: poisoned (0xff bytes: NaN, -1) before every block, as on the device,
// where a block finds its shared memory uninitialised. The test finds the kernels' __shared__
// statics in the library's symbol table and registers them here.
static std::vector<std::pair<char*, size_t>> emu_shared_mem;
extern "C" void emu_set_shared(const unsigned long long* a, unsigned n) {
    emu_shared_mem.clear();
    for (unsigned i = 0; i < n; ++i) emu_shared_mem.emplace_back((char*)a[2 * i], (size_t)a[2 * i + 1]);
}

// ---- launches ----
inline float emu_f32(unsigned long long w) { return __uint_as_float((unsigned)w); }
inline double emu_f64(unsigned long long w) { double d; std::memcpy(&d, &w, 8); return d; }

// Runs `grid` blocks of `block` threads: `block` OS threads, each running its part of every
// block in turn; no thread starts block b + 1 before every thread has finished block b.
static std::mutex emu_launch_mu;
template <class F> static void emu_run_grid(unsigned grid, unsigned block, F f) {
    std::lock_guard<std::mutex> guard(emu_launch_mu);
    if (grid == 0 || block == 0 || block > 1024) { emu_fail("a launch of %u blocks of %u threads", grid, block); return; }
    emu_block b;
    b.n = block;
    b.site.assign(block, 0);
    b.gone.assign(block, 0);
    const unsigned nw = (block + 31) / 32;
    b.warps.reset(new emu_warp[nw]);
    for (unsigned i = 0; i < nw; ++i) b.warps[i].lanes = std::min(32u, block - 32 * i);
    auto reset = [&b, nw, block] {
        for (auto& r : emu_shared_mem) std::memset(r.first, 0xff, r.second);
        b.bar.expected = block;
        std::fill(b.gone.begin(), b.gone.end(), 0);
        for (unsigned i = 0; i < nw; ++i) {
            b.warps[i].bar.expected = b.warps[i].lanes;
            for (unsigned l = 0; l < 32; ++l) b.warps[i].gone[l] = false;
        }
    };
    reset();
    b.fence.expected = block;
    std::mutex done_mu;
    std::condition_variable done_cv;
    unsigned finished = 0;
    std::vector<std::thread> ts;
    ts.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        ts.emplace_back([&b, &f, &reset, &done_mu, &done_cv, &finished, t, grid, block] {
            emu_thread me{&b, &b.warps[t / 32], t, t % 32};
            emu_me = &me;
            threadIdx = {t, 0, 0};
            blockDim = {block, 1, 1};
            gridDim = {grid, 1, 1};
            for (unsigned bx = 0; bx < grid; ++bx) {
                blockIdx = {bx, 0, 0};
                f();
                b.gone[t] = 1;
                me.w->gone[me.lane] = true;
                b.bar.drop([&b] { emu_check_block(b); });
                me.w->bar.drop([&me] { emu_check_warp(*me.w, "a shuffle"); });
                b.fence.wait(reset);
            }
            emu_me = nullptr;
            std::lock_guard<std::mutex> l(done_mu);
            if (++finished == block) done_cv.notify_all();
        });
    }
    // The watchdog: no barrier released for a minute is a deadlock (every thread waits at a
    // barrier that some thread of its block or warp never reaches).
    {
        std::unique_lock<std::mutex> l(done_mu);
        unsigned long long seen = emu_progress.load();
        int idle = 0;
        while (!done_cv.wait_for(l, std::chrono::seconds(1), [&] { return finished == block; })) {
            const unsigned long long now = emu_progress.load();
            idle = now == seen ? idle + 1 : 0;
            seen = now;
            if (idle >= 60) {
                fprintf(stderr, "cuda emulator: deadlock (no barrier released for 60 s; a thread or lane waits at a barrier the others never reach)\n");
                fflush(stderr);
                abort();
            }
        }
    }
    for (auto& t : ts) t.join();
}
"#;

/// How a kernel parameter travels in the packed 64-bit argument words.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ptr,
    I32,
    U64,
    F32,
    F64,
}

/// A launch argument.
#[derive(Clone, Copy, Debug)]
enum A {
    P(u64),
    I(i32),
    U(u64),
    F(f32),
    D(f64),
}

impl A {
    fn kind(self) -> Kind {
        match self {
            A::P(_) => Kind::Ptr,
            A::I(_) => Kind::I32,
            A::U(_) => Kind::U64,
            A::F(_) => Kind::F32,
            A::D(_) => Kind::F64,
        }
    }

    fn word(self) -> u64 {
        match self {
            A::P(p) | A::U(p) => p,
            A::I(i) => i as i64 as u64,
            A::F(f) => f.to_bits() as u64,
            A::D(d) => d.to_bits(),
        }
    }
}

/// An input buffer (the kernel only reads it).
fn inp<T>(v: &[T]) -> A {
    A::P(v.as_ptr() as u64)
}

/// An output buffer.
fn out<T>(v: &mut [T]) -> A {
    A::P(v.as_mut_ptr() as u64)
}

/// The parameters of kernel `name` in `src`: `(C type, kind)` each.
fn params(src: &str, name: &str) -> Vec<(String, Kind)> {
    let head = format!("void {name}(");
    let at = src
        .find(&head)
        .unwrap_or_else(|| panic!("no definition of {name}"));
    let rest = &src[at + head.len()..];
    let list = &rest[..rest.find(')').unwrap()];
    list.split(',')
        .map(|p| {
            let p = p.trim();
            let cut = p
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or_else(|| panic!("{name}: parameter `{p}` has no type"));
            let ty = p[..=cut].trim().to_string();
            let kind = if ty.contains('*') {
                Kind::Ptr
            } else {
                match ty.as_str() {
                    "int" => Kind::I32,
                    "unsigned long long" | "long long" => Kind::U64,
                    "float" => Kind::F32,
                    "double" => Kind::F64,
                    _ => panic!("{name}: parameter type `{ty}` is not emulated"),
                }
            };
            (ty, kind)
        })
        .collect()
}

/// `extern "C" void launch_NAME(const unsigned long long* a, unsigned grid, unsigned block)`.
fn wrapper(name: &str, ps: &[(String, Kind)]) -> String {
    let args: Vec<String> = ps
        .iter()
        .enumerate()
        .map(|(i, (ty, k))| match k {
            Kind::Ptr => format!("({ty})a[{i}]"),
            Kind::I32 => format!("(int)(long long)a[{i}]"),
            Kind::U64 => format!("(unsigned long long)a[{i}]"),
            Kind::F32 => format!("emu_f32(a[{i}])"),
            Kind::F64 => format!("emu_f64(a[{i}])"),
        })
        .collect();
    format!(
        "extern \"C\" void launch_{name}(const unsigned long long* a, unsigned grid, unsigned block) {{\n  \
         emu_run_grid(grid, block, [a] {{ {name}({}); }});\n}}\n",
        args.join(", ")
    )
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

const GXX_FLAGS: &[&str] = &[
    "-O1",
    "-std=c++20",
    "-shared",
    "-fPIC",
    "-pthread",
    "-w",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
];

/// One compiled module: its library and the signatures of its kernels.
struct Module {
    lib: libloading::Library,
    sigs: BTreeMap<String, Vec<Kind>>,
}

/// The emulated modules, compiled once per process (and cached on disk by source hash).
fn module(file: &str) -> &'static Module {
    static CELLS: OnceLock<BTreeMap<String, OnceLock<Module>>> = OnceLock::new();
    let cells = CELLS.get_or_init(|| {
        kernels::modules()
            .into_iter()
            .map(|(n, _)| (n.to_string(), OnceLock::new()))
            .collect()
    });
    cells
        .get(file)
        .unwrap_or_else(|| panic!("no kernel file {file}"))
        .get_or_init(|| {
            let src = kernels::modules()
                .into_iter()
                .find(|(n, _)| *n == file)
                .unwrap()
                .1;
            build(file, &src)
        })
}

/// Compiles `src` (its `extern "C"` kernels get launchers) with the shim.
fn build(file: &str, src: &str) -> Module {
    let mut full = src.to_string();
    let mut sigs = BTreeMap::new();
    for name in kernels::entry_points(src) {
        let ps = params(src, &name);
        full.push_str(&wrapper(&name, &ps));
        sigs.insert(name, ps.into_iter().map(|p| p.1).collect());
    }
    let key = fxhash(&format!("{SHIM}{full}{GXX_FLAGS:?}"));
    let dir = std::env::temp_dir().join(format!("diagc-cuda-kernels-{key:016x}"));
    let so = dir.join("k.so");
    if !so.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let tag = format!("{}-{:?}", std::process::id(), std::thread::current().id())
            .replace(|c: char| !c.is_alphanumeric(), "_");
        let (h, c, tmp) = (
            dir.join(format!("shim-{tag}.h")),
            dir.join(format!("{file}-{tag}.cpp")),
            dir.join(format!("k-{tag}.so")),
        );
        std::fs::write(&h, SHIM).unwrap();
        std::fs::write(&c, &full).unwrap();
        let res = std::process::Command::new("g++")
            .args(GXX_FLAGS)
            .arg("-include")
            .arg(&h)
            .arg(&c)
            .arg("-o")
            .arg(&tmp)
            .output()
            .expect("g++ runs");
        assert!(
            res.status.success(),
            "g++ failed on {}:\n{}",
            c.display(),
            String::from_utf8_lossy(&res.stderr)
        );
        // Atomic: a concurrent test process sees the whole library or none.
        std::fs::rename(&tmp, &so).unwrap();
    }
    // SAFETY: a library built from the kernels and the shim above; its initialisers only set
    // statics.
    let lib = unsafe { libloading::Library::new(&so) }.unwrap();
    let ranges = shared_statics(&so, src, &lib);
    // Every declaration (one per line) has at least one static (templates have one per
    // instance).
    let decls = src
        .lines()
        .filter(|l| l.trim_start().starts_with("__shared__"))
        .count();
    assert!(
        ranges.len() / 2 >= decls,
        "{file}: {decls} __shared__ declarations, {} in the library's symbols",
        ranges.len() / 2
    );
    // SAFETY: `emu_set_shared(const unsigned long long*, unsigned)` reads `n` (address, size)
    // pairs, each a static of the library.
    unsafe {
        let set: libloading::Symbol<unsafe extern "C" fn(*const u64, u32)> =
            lib.get(b"emu_set_shared").unwrap();
        set(ranges.as_ptr(), (ranges.len() / 2) as u32);
    }
    Module { lib, sigs }
}

/// The `__shared__` arrays of `src` in the loaded `lib`, as (address, size) pairs: the
/// function-local statics (`_ZZ<len><function>...`) of the functions `src` defines, read
/// from the symbol table with `nm` and moved by the library's load address.
fn shared_statics(so: &std::path::Path, src: &str, lib: &libloading::Library) -> Vec<u64> {
    let res = std::process::Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(so)
        .output()
        .expect("nm runs");
    assert!(res.status.success(), "nm failed on {}", so.display());
    let text = String::from_utf8_lossy(&res.stdout);
    let syms: Vec<(u64, u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [a, n, _, name] => Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(n, 16).ok()?,
                    name,
                )),
                [a, _, name] => Some((u64::from_str_radix(a, 16).ok()?, 0, name)),
                _ => None,
            }
        })
        .collect();
    let probe = syms
        .iter()
        .find(|s| s.2 == "emu_error")
        .expect("emu_error in the symbol table")
        .0;
    // SAFETY: only the address of the function is taken.
    let at = unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn()> = lib.get(b"emu_error").unwrap();
        *f as usize as u64
    };
    let base = at - probe;
    let mut out = Vec::new();
    for (addr, size, name) in syms {
        let Some(rest) = name.strip_prefix("_ZZ") else {
            continue;
        };
        let rest = rest.strip_prefix('L').unwrap_or(rest);
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        let Ok(len) = rest[..digits].parse::<usize>() else {
            continue;
        };
        let Some(func) = rest.get(digits..digits + len) else {
            continue;
        };
        if size > 0 && src.contains(&format!(" {func}(")) {
            out.extend([base + addr, size]);
        }
    }
    out
}

impl Module {
    /// Launches kernel `name` on `grid` blocks of `block` threads; panics on an argument that
    /// does not match its signature or on an error the emulator reported.
    fn launch(&self, name: &str, grid: u32, block: u32, args: &[A]) {
        let err = self.try_launch(name, grid, block, args);
        assert!(err.is_empty(), "{name} (grid {grid}, block {block}): {err}");
    }

    /// [`Module::launch`], returning the emulator's error (empty if none).
    fn try_launch(&self, name: &str, grid: u32, block: u32, args: &[A]) -> String {
        // One launch at a time in the process: each spawns `block` threads.
        static RUN: Mutex<()> = Mutex::new(());
        let sig = self
            .sigs
            .get(name)
            .unwrap_or_else(|| panic!("no kernel {name}"));
        let kinds: Vec<Kind> = args.iter().map(|a| a.kind()).collect();
        assert_eq!(
            &kinds, sig,
            "{name}: the arguments do not match the signature"
        );
        let words: Vec<u64> = args.iter().map(|a| a.word()).collect();
        let _run = RUN.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the launcher's signature is the one `wrapper` generated; the arguments match
        // the kernel's parameters (checked above) and the buffers are as long as each test's
        // launch requires.
        unsafe {
            let f: libloading::Symbol<unsafe extern "C" fn(*const u64, u32, u32)> =
                self.lib.get(format!("launch_{name}").as_bytes()).unwrap();
            f(words.as_ptr(), grid, block);
            let e: libloading::Symbol<unsafe extern "C" fn() -> *const std::ffi::c_char> =
                self.lib.get(b"emu_error").unwrap();
            let msg = std::ffi::CStr::from_ptr(e()).to_string_lossy().into_owned();
            let clear: libloading::Symbol<unsafe extern "C" fn()> =
                self.lib.get(b"emu_clear").unwrap();
            clear();
            msg
        }
    }
}

// ---- buffers with sentinels ----

/// Elements after every buffer, and their bit pattern (a NaN, so that a read past the end
/// poisons the result).
const GUARD: usize = 64;
const SENTINEL: u32 = 0x7fc0_dead;

/// `v` followed by the sentinels.
fn guarded(mut v: Vec<f32>) -> Vec<f32> {
    v.extend(std::iter::repeat_n(f32::from_bits(SENTINEL), GUARD));
    v
}

/// `n` elements that read as "never written" (the sentinel), then the sentinels.
fn unwritten(n: usize) -> Vec<f32> {
    vec![f32::from_bits(SENTINEL); n + GUARD]
}

/// The buffer without its sentinels, after checking that none was overwritten.
/// [`check`] of the guarded buffer `got` (output `name` of case `what`) against `want`, with
/// the kernels' usual tolerance: 1e-4 relative plus 1e-5 of the largest expected magnitude.
fn check_rel(what: &str, name: &str, got: &[f32], want: &[f64]) {
    let atol = 1e-5 * max_abs(want).max(1.0);
    check(
        &format!("{what}: {name}"),
        body(name, got),
        want,
        1e-4,
        atol,
    );
}

fn body<'a>(what: &str, v: &'a [f32]) -> &'a [f32] {
    let n = v.len() - GUARD;
    if let Some(i) = v[n..].iter().position(|x| x.to_bits() != SENTINEL) {
        panic!("{what}: written past its end (element {})", n + i);
    }
    &v[..n]
}

fn rand_vec(rng: &mut Rng, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    (0..n)
        .map(|_| (lo + (hi - lo) * rng.uniform()) as f32)
        .collect()
}

/// Every element within `atol + rtol * |want|` (a NaN or a sentinel fails).
fn check(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        let lim = atol + rtol * w.abs();
        // A NaN error (a NaN or a sentinel read back) fails too.
        if err.is_nan() || err > lim {
            bad.push(i);
        }
        if err.is_finite() {
            worst = worst.max(err / lim);
        } else {
            worst = f64::INFINITY;
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} elements off (worst {worst:.3} x the tolerance); first at {}: got {} want {}",
        bad.len(),
        got.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

/// Bitwise equality.
fn check_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: element {i} is {} (bits {:#x}), want {} (bits {:#x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

// ---- the emulator itself ----

const SELFTEST: &str = r#"
#define FULL 0xffffffffu
// Per thread i (lane l): xor 5, lane 31 - l, down 3, up 2, and a double butterfly sum.
extern "C" __global__ void emu_shuffles(const float* x, float* out, double* sums) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x, l = threadIdx.x & 31;
    const float v = x[i];
    out[4 * i + 0] = __shfl_xor_sync(FULL, v, 5);
    out[4 * i + 1] = __shfl_sync(FULL, v, 31 - l);
    out[4 * i + 2] = __shfl_down_sync(FULL, v, 3);
    out[4 * i + 3] = __shfl_up_sync(FULL, v, 2);
    double d = (double)v;
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(FULL, d, o);
    sums[i] = d;
}
// Shared memory through barriers: out = x reversed within the block, then each element plus
// its block's sum (one thread sums after a barrier; the others read it after another).
extern "C" __global__ void emu_shared(const float* x, float* out) {
    __shared__ float buf[1024];
    __shared__ float total;
    const unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    buf[t] = x[i];
    __syncthreads();
    const float r = buf[blockDim.x - 1 - t];
    __syncthreads();
    buf[t] = r;
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (unsigned j = 0; j < blockDim.x; ++j) s += buf[j];
        total = s;
    }
    __syncthreads();
    out[i] = buf[t] + total;
}
extern "C" __global__ void emu_atomics(float* f, double* d, int* c, int* m, int loops) {
    for (int k = 0; k < loops; ++k) {
        atomicAdd(f, 1.0f);
        atomicAdd(d, 0.5);
        atomicAdd(c, 1);
        atomicMax(m, (int)(blockIdx.x * blockDim.x + threadIdx.x));
    }
}
// Block 0 writes its shared array, block 1 does not: it must find it uninitialised.
extern "C" __global__ void emu_uninit(float* out) {
    __shared__ float s[64];
    if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void emu_divergent_sync(int* out) {
    if (threadIdx.x < 32) __syncthreads();
    else __syncthreads();
    out[0] = 1;
}
extern "C" __global__ void emu_divergent_warp(float* out) {
    const unsigned l = threadIdx.x & 31;
    if (l < 16) out[threadIdx.x] = __shfl_xor_sync(FULL, 1.0f, 1);
    else out[threadIdx.x] = __shfl_xor_sync(FULL, 2.0f, 1);
}
extern "C" __global__ void emu_exited_lane(float* out) {
    if ((threadIdx.x & 31) == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(FULL, 1.0f, 1);
}
extern "C" __global__ void emu_partial_mask(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffu, 1.0f, 1);
}
"#;

#[test]
fn the_emulator_runs_shuffles_barriers_and_atomics_as_cuda_does() {
    let m = build("selftest.cu", SELFTEST);
    let (grid, block) = (3usize, 128usize);
    let n = grid * block;
    let x: Vec<f32> = (0..n).map(|i| (i * 7 % 101) as f32).collect();
    let mut o = vec![0.0f32; 4 * n];
    let mut sums = vec![0.0f64; n];
    m.launch(
        "emu_shuffles",
        grid as u32,
        block as u32,
        &[inp(&x), out(&mut o), out(&mut sums)],
    );
    for i in 0..n {
        let (w, l) = (i - i % 32, i % 32);
        let down = if l + 3 < 32 { x[i + 3] } else { x[i] };
        let up = if l >= 2 { x[i - 2] } else { x[i] };
        let want = [x[w + (l ^ 5)], x[w + 31 - l], down, up];
        assert_eq!(o[4 * i..4 * i + 4], want, "shuffles of thread {i}");
        let sum: f64 = x[w..w + 32].iter().map(|v| *v as f64).sum();
        assert_eq!(sums[i], sum, "butterfly sum of thread {i}");
    }

    let mut o = vec![0.0f32; n];
    m.launch(
        "emu_shared",
        grid as u32,
        block as u32,
        &[inp(&x), out(&mut o)],
    );
    for b in 0..grid {
        let total: f32 = x[b * block..(b + 1) * block].iter().sum();
        for t in 0..block {
            let i = b * block + t;
            assert_eq!(o[i], x[b * block + block - 1 - t] + total, "thread {i}");
        }
    }

    let (mut f, mut d, mut c, mut mx) = (vec![0.0f32], vec![0.0f64], vec![0i32], vec![-1i32]);
    m.launch(
        "emu_atomics",
        2,
        256,
        &[
            out(&mut f),
            out(&mut d),
            out(&mut c),
            out(&mut mx),
            A::I(100),
        ],
    );
    assert_eq!((f[0], d[0], c[0], mx[0]), (51200.0, 25600.0, 51200, 511));

    // Shared memory is uninitialised at the start of every block (here: NaN).
    let mut o = vec![0.0f32; 128];
    m.launch("emu_uninit", 2, 64, &[out(&mut o)]);
    assert!(
        o[..64].iter().all(|v| *v == 1.0),
        "block 0 reads what it wrote"
    );
    assert!(o[64..].iter().all(|v| v.is_nan()), "block 1 reads poison");

    // What is undefined on the device is reported.
    let mut flag = vec![0i32];
    let err = m.try_launch("emu_divergent_sync", 1, 64, &[out(&mut flag)]);
    assert!(err.contains("divergent __syncthreads"), "{err}");
    let mut o = vec![0.0f32; 64];
    let err = m.try_launch("emu_divergent_warp", 1, 64, &[out(&mut o)]);
    assert!(err.contains("divergent warp"), "{err}");
    let err = m.try_launch("emu_exited_lane", 1, 64, &[out(&mut o)]);
    assert!(err.contains("has returned"), "{err}");
    let err = m.try_launch("emu_partial_mask", 1, 32, &[out(&mut o)]);
    assert!(err.contains("leaves out"), "{err}");
}

// ---- layer normalisation ----

const LN_EPS: f64 = 1e-5;

/// `(out, gx, ggain, gbias)` in f64, the formulas of Kernel::LayerNorm / LayerNormBack.
fn layernorm_ref(
    x: &[f32],
    gain: &[f32],
    bias: &[f32],
    gy: &[f32],
    n: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / n;
    let (mut o, mut gx) = (vec![0.0; rows * n], vec![0.0; rows * n]);
    let (mut gg, mut gb) = (vec![0.0; n], vec![0.0; n]);
    for r in 0..rows {
        let xs: Vec<f64> = x[r * n..(r + 1) * n].iter().map(|v| *v as f64).collect();
        let gys: Vec<f64> = gy[r * n..(r + 1) * n].iter().map(|v| *v as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        let xhat: Vec<f64> = xs.iter().map(|v| (v - mean) * inv).collect();
        let mut m1 = 0.0;
        let mut m2 = 0.0;
        for j in 0..n {
            o[r * n + j] = xhat[j] * gain[j] as f64 + bias[j] as f64;
            m1 += gys[j] * gain[j] as f64;
            m2 += gys[j] * gain[j] as f64 * xhat[j];
            gg[j] += gys[j] * xhat[j];
            gb[j] += gys[j];
        }
        m1 /= n as f64;
        m2 /= n as f64;
        for j in 0..n {
            gx[r * n + j] = inv * (gys[j] * gain[j] as f64 - m1 - xhat[j] * m2);
        }
    }
    (o, gx, gg, gb)
}

/// Where the layernorm kernels write (the header allows out = x, gx = x and gx = gy).
#[derive(Clone, Copy, PartialEq)]
enum Alias {
    /// Buffers of their own.
    None,
    /// out over x, gx over gy.
    Gy,
    /// out over x, gx over x.
    X,
}

/// Forward and backward of `rows` rows of `n` on `grid` blocks of `block` threads (blocks
/// stride over the rows when `grid < rows`).
fn layernorm_case(seed: u64, rows: usize, n: usize, block: u32, grid: u32, alias: Alias) {
    let in_place = alias != Alias::None;
    let m = module("layernorm.cu");
    let mut rng = Rng::new(seed);
    // Rows with an offset and a spread of their own, so that mean and variance matter.
    let mut x = Vec::with_capacity(rows * n);
    for _ in 0..rows {
        let (c, s) = (4.0 * rng.uniform() - 2.0, 0.1 + 3.0 * rng.uniform());
        x.extend(rand_vec(&mut rng, n, c - s, c + s));
    }
    let gain = rand_vec(&mut rng, n, 0.5, 1.5);
    let bias = rand_vec(&mut rng, n, -1.0, 1.0);
    let gy = rand_vec(&mut rng, rows * n, -1.0, 1.0);
    let (ro, rgx, rgg, rgb) = layernorm_ref(&x, &gain, &bias, &gy, n);
    let what = format!("layernorm rows={rows} n={n} block={block}");
    let (r32, n32) = (rows as i32, n as i32);
    let (gain, bias) = (guarded(gain), guarded(bias));

    let mut xb = guarded(x.clone());
    let mut o = unwritten(rows * n);
    let ob = if in_place { &mut xb } else { &mut o };
    let ob_ptr = out(ob);
    m.launch(
        "diagc_layernorm_fwd",
        grid,
        block,
        &[
            inp(&xb),
            inp(&gain),
            inp(&bias),
            ob_ptr,
            A::I(r32),
            A::I(n32),
        ],
    );
    let o = if in_place { &xb } else { &o };
    check(&format!("{what}: out"), body("out", o), &ro, 1e-4, 1e-5);

    let mut xb = guarded(x);
    let mut gyb = guarded(gy);
    let mut gx = unwritten(rows * n);
    let (mut gg, mut gb) = (guarded(vec![0.0; n]), guarded(vec![0.0; n]));
    let gx_ptr = match alias {
        Alias::None => out(&mut gx),
        Alias::Gy => out(&mut gyb),
        Alias::X => out(&mut xb),
    };
    m.launch(
        "diagc_layernorm_bwd",
        grid,
        block,
        &[
            inp(&xb),
            inp(&gain),
            inp(&gyb),
            gx_ptr,
            out(&mut gg),
            out(&mut gb),
            A::I(r32),
            A::I(n32),
        ],
    );
    let gx = match alias {
        Alias::None => &gx,
        Alias::Gy => &gyb,
        Alias::X => &xb,
    };
    check_rel(&what, "gx", gx, &rgx);
    check_rel(&what, "ggain", &gg, &rgg);
    check_rel(&what, "gbias", &gb, &rgb);
}

#[test]
fn layernorm_forward_and_backward_match_the_cpu_formulas() {
    // n = 512 with the documented block of 128; n = 100 (not a multiple of 32) leaves threads
    // without columns; a grid smaller than the rows makes blocks stride.
    layernorm_case(1, 37, 512, 128, 37, Alias::None);
    layernorm_case(2, 37, 100, 128, 37, Alias::None);
    layernorm_case(3, 37, 100, 128, 5, Alias::Gy);
    layernorm_case(4, 37, 512, 128, 8, Alias::X);
    // Beyond 4096 columns the backward accumulates ggain and gbias with atomics.
    layernorm_case(5, 3, 4100, 256, 2, Alias::None);
    // Fewer columns than a warp.
    layernorm_case(6, 5, 7, 32, 5, Alias::Gy);
}

// ---- cross-entropy ----

/// `(loss, glogits)`: the sum over valid rows of logsumexp - logit[target], and
/// gy * (softmax - onehot) (zero on invalid rows).
fn xent_ref(logits: &[f32], targets: &[f32], gy: f64, n: usize) -> (f64, Vec<f64>) {
    let rows = targets.len();
    let mut loss = 0.0;
    let mut g = vec![0.0; rows * n];
    for r in 0..rows {
        let t = targets[r];
        if !(t >= 0.0 && (t as usize) < n) {
            continue;
        }
        let t = t as usize;
        let l: Vec<f64> = logits[r * n..(r + 1) * n]
            .iter()
            .map(|v| *v as f64)
            .collect();
        let m = l.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b));
        let z: f64 = l.iter().map(|v| (v - m).exp()).sum();
        loss += m + z.ln() - l[t];
        for j in 0..n {
            g[r * n + j] = gy * (l[j] - m).exp() / z - if j == t { gy } else { 0.0 };
        }
    }
    (loss, g)
}

/// Forward and backward on `grid` blocks of `block` threads; `bad_row` gets an invalid target;
/// `in_place` writes glogits over the logits (allowed by the kernel).
fn xent_case(
    seed: u64,
    (rows, n): (usize, usize),
    (block, grid): (u32, u32),
    bad_row: Option<usize>,
    in_place: bool,
) {
    let m = module("cross_entropy.cu");
    let mut rng = Rng::new(seed);
    let logits = rand_vec(&mut rng, rows * n, -4.0, 4.0);
    let mut targets: Vec<f32> = (0..rows).map(|_| rng.below(n) as f32).collect();
    // A fractional target names the class it truncates to.
    targets[rows / 2] += 0.7;
    if let Some(r) = bad_row {
        targets[r] = n as f32;
    }
    let gy = 0.7f32;
    let (rl, rg) = xent_ref(&logits, &targets, gy as f64, n);
    let what = format!("xent rows={rows} n={n} block={block} grid={grid}");
    let (mut logits, targets, gyb) = (guarded(logits), guarded(targets), guarded(vec![gy]));
    let mut loss = guarded(vec![0.0]);
    let mut bad = vec![0i32; 2];
    m.launch(
        "diagc_xent_fwd",
        grid,
        block,
        &[
            inp(&logits),
            inp(&targets),
            out(&mut loss),
            out(&mut bad),
            A::I(rows as i32),
            A::I(n as i32),
        ],
    );
    assert_eq!(bad, [bad_row.is_some() as i32, 0], "{what}: *bad");
    check(
        &format!("{what}: loss"),
        body("loss", &loss),
        &[rl],
        1e-5,
        1e-5,
    );
    let mut g = unwritten(rows * n);
    let gp = if in_place {
        out(&mut logits)
    } else {
        out(&mut g)
    };
    m.launch(
        "diagc_xent_bwd",
        grid,
        block,
        &[
            inp(&logits),
            inp(&targets),
            inp(&gyb),
            gp,
            A::I(rows as i32),
            A::I(n as i32),
        ],
    );
    let g = if in_place { &logits } else { &g };
    check(
        &format!("{what}: glogits"),
        body("glogits", g),
        &rg,
        1e-4,
        1e-8,
    );
}

#[test]
fn cross_entropy_forward_and_backward_match_the_reference() {
    xent_case(11, (13, 10000), (256, 13), None, false);
    xent_case(12, (13, 10000), (512, 4), None, true);
    xent_case(13, (13, 37), (256, 13), None, false);
    xent_case(14, (13, 37), (128, 3), None, true);
}

#[test]
fn cross_entropy_flags_a_target_outside_the_classes() {
    // The rejected row adds nothing to the loss and gets a zero gradient.
    xent_case(15, (13, 37), (256, 13), Some(4), false);
    xent_case(16, (13, 10000), (256, 5), Some(12), true);
    // Negative and NaN targets are rejected too.
    let m = module("cross_entropy.cu");
    for t in [-1.0f32, f32::NAN, -0.5] {
        let logits = guarded(vec![0.5; 2 * 8]);
        let targets = guarded(vec![3.0, t]);
        let mut loss = guarded(vec![0.0]);
        let mut bad = vec![0i32];
        m.launch(
            "diagc_xent_fwd",
            2,
            64,
            &[
                inp(&logits),
                inp(&targets),
                out(&mut loss),
                out(&mut bad),
                A::I(2),
                A::I(8),
            ],
        );
        // -0.5 truncates to 0 in Rust's `as usize` but fails `t >= 0.0` first.
        assert_eq!(bad[0], 1, "target {t}");
        check("loss", body("loss", &loss), &[(8.0f64).ln()], 1e-6, 1e-6);
    }
}

// ---- embedding ----

#[test]
fn embedding_gathers_and_scatter_adds_repeated_ids() {
    let m = module("embedding.cu");
    let mut rng = Rng::new(21);
    let (count, dim, vocab) = (50usize, 24usize, 7usize);
    let table = rand_vec(&mut rng, vocab * dim, -1.0, 1.0);
    let ids: Vec<f32> = (0..count).map(|_| rng.below(vocab) as f32).collect();
    let gy = rand_vec(&mut rng, count * dim, -1.0, 1.0);
    let mut want = vec![0.0f32; count * dim];
    let mut gwant = vec![0.0f64; vocab * dim];
    for i in 0..count {
        let id = ids[i] as usize;
        for c in 0..dim {
            want[i * dim + c] = table[id * dim + c];
            gwant[id * dim + c] += gy[i * dim + c] as f64;
        }
    }
    assert!(
        (0..vocab).all(|v| ids.iter().filter(|x| **x as usize == v).count() > 1),
        "every id repeats"
    );
    let (tb, gyb) = (guarded(table), guarded(gy));
    let args = |ids: &[f32], o: &mut [f32], bad: &mut [i32]| {
        vec![
            inp(ids),
            inp(&tb),
            out(o),
            out(bad),
            A::I(count as i32),
            A::I(dim as i32),
            A::I(vocab as i32),
        ]
    };
    let idb = guarded(ids.clone());
    for grid in [((count * dim).div_ceil(256)) as u32, 2] {
        let mut o = unwritten(count * dim);
        let mut bad = vec![0i32];
        m.launch("diagc_embed_fwd", grid, 256, &args(&idb, &mut o, &mut bad));
        assert_eq!(bad[0], 0, "no bad id");
        check_bits("embedding", body("out", &o), &want);

        let mut g = guarded(vec![0.0; vocab * dim]);
        m.launch(
            "diagc_embed_bwd",
            grid,
            256,
            &[
                inp(&idb),
                inp(&gyb),
                out(&mut g),
                A::I(count as i32),
                A::I(dim as i32),
                A::I(vocab as i32),
            ],
        );
        check("embedding gradient", body("gtable", &g), &gwant, 1e-5, 1e-6);
    }

    // Contention: every thread of a block adds to the same two elements (a plain `+=` instead
    // of atomicAdd loses updates here even on two cores).
    let (count2, dim2) = (8192usize, 2usize);
    let ids2: Vec<f32> = (0..count2).map(|i| (i % 2) as f32).collect();
    let gy2 = vec![1.0f32; count2 * dim2];
    let (idb2, gyb2) = (guarded(ids2), guarded(gy2));
    let mut g = guarded(vec![0.0; 2 * dim2]);
    m.launch(
        "diagc_embed_bwd",
        (count2 * dim2).div_ceil(256) as u32,
        256,
        &[
            inp(&idb2),
            inp(&gyb2),
            out(&mut g),
            A::I(count2 as i32),
            A::I(dim2 as i32),
            A::I(2),
        ],
    );
    check_bits(
        "embedding gradient under contention",
        body("gtable", &g),
        &[(count2 / 2) as f32; 4],
    );

    // Invalid ids (out of range, fractional, negative, NaN): the forward zeroes their rows and
    // sets *bad, the backward skips them.
    for badid in [vocab as f32, 2.5, -1.0, f32::NAN] {
        let mut ids2 = ids.clone();
        ids2[7] = badid;
        let idb = guarded(ids2);
        let mut o = unwritten(count * dim);
        let mut bad = vec![0i32];
        m.launch("diagc_embed_fwd", 5, 256, &args(&idb, &mut o, &mut bad));
        assert_eq!(bad[0], 1, "id {badid} sets *bad");
        let mut w = want.clone();
        w[7 * dim..8 * dim].fill(0.0);
        check_bits("embedding with a bad id", body("out", &o), &w);
        let mut g = guarded(vec![0.0; vocab * dim]);
        m.launch(
            "diagc_embed_bwd",
            5,
            256,
            &[
                inp(&idb),
                inp(&gyb),
                out(&mut g),
                A::I(count as i32),
                A::I(dim as i32),
                A::I(vocab as i32),
            ],
        );
        let mut gw = gwant.clone();
        let id = ids[7] as usize;
        for c in 0..dim {
            gw[id * dim + c] -= body("gy", &gyb)[7 * dim + c] as f64;
        }
        check(
            "embedding gradient, bad id skipped",
            body("gtable", &g),
            &gw,
            1e-5,
            1e-6,
        );
    }
}

// ---- dropout ----

#[test]
fn dropout_is_bitwise_the_cpu_mask_times_the_scale() {
    let m = module("dropout.cu");
    let mut rng = Rng::new(31);
    let n = 10007usize;
    let x = rand_vec(&mut rng, n, -3.0, 3.0);
    for (p, seed, key, grid, in_place) in [
        (
            0.1f64,
            0x1234_5678_9abc_def0u64,
            3u64,
            n.div_ceil(256) as u32,
            false,
        ),
        (0.5, 42, 0xdead_beef, 7, true),
        (0.9, u64::MAX, 0, n.div_ceil(256) as u32, false),
        (1.0 / 3.0, 7, 11, 1, false),
    ] {
        let threshold = jit::keep_threshold(p);
        let scale = (1.0 / (1.0 - p)) as f32;
        let want: Vec<f32> = (0..n)
            .map(|i| {
                if interp::keep(seed, key, i as u64, p) {
                    x[i] * scale
                } else {
                    0.0
                }
            })
            .collect();
        let mut xb = guarded(x.clone());
        let mut o = unwritten(n);
        let op = if in_place { out(&mut xb) } else { out(&mut o) };
        m.launch(
            "diagc_dropout",
            grid,
            256,
            &[
                inp(&xb),
                op,
                A::U(n as u64),
                A::U(seed),
                A::U(key),
                A::U(threshold),
                A::F(scale),
            ],
        );
        let got = if in_place { &xb } else { &o };
        let what = format!("dropout p={p} seed={seed} key={key}");
        check_bits(&what, body("out", got), &want);
        let kept = want.iter().filter(|v| **v != 0.0).count() as f64 / n as f64;
        assert!((kept - (1.0 - p)).abs() < 0.03, "{what}: kept {kept}");
    }
    // Outside training: threshold 0 and scale 1 copy x.
    let xb = guarded(x.clone());
    let mut o = unwritten(n);
    m.launch(
        "diagc_dropout",
        3,
        256,
        &[
            inp(&xb),
            out(&mut o),
            A::U(n as u64),
            A::U(1),
            A::U(2),
            A::U(0),
            A::F(1.0),
        ],
    );
    check_bits("dropout as a copy", body("out", &o), &x);
}

// ---- Adam and the gradient norm ----

/// The step's scalars as `Adam::update_scaled` computes them: `(b1, b2, step_size, c2_sqrt,
/// eps)`.
fn adam_scalars(opt: &Adam, t: i32, lr: f64) -> [f32; 5] {
    let (b1, b2) = (opt.beta1, opt.beta2);
    let c1 = 1.0 - b1.powi(t);
    let c2 = 1.0 - b2.powi(t);
    [
        b1 as f32,
        b2 as f32,
        (lr / c1) as f32,
        c2.sqrt() as f32,
        opt.eps as f32,
    ]
}

/// Adam's CPU state for tensors of `lens` elements, random parameters, and the device's copy of
/// each tensor's parameters and zeroed moments (guarded buffers); the generator goes on.
#[allow(clippy::type_complexity)]
fn adam_setup(seed: u64, lens: &[usize]) -> (Rng, Adam, Vec<Vec<f32>>, Vec<[Vec<f32>; 3]>) {
    let mut rng = Rng::new(seed);
    let cpu = Adam::new(lens);
    let params: Vec<Vec<f32>> = lens
        .iter()
        .map(|n| rand_vec(&mut rng, *n, -1.0, 1.0))
        .collect();
    let dev = params
        .iter()
        .map(|p| {
            [
                guarded(p.clone()),
                guarded(vec![0.0; p.len()]),
                guarded(vec![0.0; p.len()]),
            ]
        })
        .collect();
    (rng, cpu, params, dev)
}

#[test]
fn adam_is_bitwise_the_cpu_update() {
    let m = module("adam.cu");
    let lens = [1000usize, 77];
    let (mut rng, mut cpu, mut params, mut dev) = adam_setup(41, &lens);
    let lr = 3e-3;
    for (step, k) in [1.0f32, 0.37, 1.0, 0.81].into_iter().enumerate() {
        let grads: Vec<Vec<f32>> = lens
            .iter()
            .map(|n| rand_vec(&mut rng, *n, -2.0, 2.0))
            .collect();
        let [b1, b2, step_size, c2_sqrt, eps] = adam_scalars(&cpu, step as i32 + 1, lr);
        let views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        cpu.update_scaled(&mut params, &views, lr, k);
        for (i, g) in grads.iter().enumerate() {
            let gb = guarded(g.clone());
            let [p, mm, v] = &mut dev[i];
            m.launch(
                "diagc_adam",
                if i == 0 { 2 } else { 1 },
                256,
                &[
                    out(p),
                    inp(&gb),
                    out(mm),
                    out(v),
                    A::U(g.len() as u64),
                    A::F(k),
                    A::F(b1),
                    A::F(b2),
                    A::F(step_size),
                    A::F(c2_sqrt),
                    A::F(eps),
                ],
            );
            let what = format!("adam step {} k={k} buffer {i}", step + 1);
            check_bits(&format!("{what}: p"), body("p", p), &params[i]);
            check_bits(&format!("{what}: m"), body("m", mm), &cpu.m[i]);
            check_bits(&format!("{what}: v"), body("v", v), &cpu.v[i]);
        }
    }
}

#[test]
fn sum_of_squares_clip_factor_and_device_adam_match_the_cpu() {
    let m = module("adam.cu");
    let lens = [100_003usize, 300];
    let (mut rng, mut cpu, mut params, mut dev) = adam_setup(51, &lens);
    let lr = 1e-3;
    for step in 0..3 {
        let grads: Vec<Vec<f32>> = lens
            .iter()
            .map(|n| rand_vec(&mut rng, *n, -3.0, 3.0))
            .collect();
        let views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
        let exact: f64 = grads.iter().flatten().map(|x| *x as f64 * *x as f64).sum();
        let (norm, _) = clip_factor(&views, 0.0);
        // Clipping on, off (the norm is within it) and disabled.
        let max = [0.5 * norm, 1e9, 0.0][step];
        let (cnorm, ck) = clip_factor(&views, max);
        let mut sumsq = vec![0.0f64, 0.0];
        for (i, g) in grads.iter().enumerate() {
            let gb = guarded(g.clone());
            // A capped grid (blocks stride) for the big buffer.
            let grid = if i == 0 {
                3
            } else {
                g.len().div_ceil(256) as u32
            };
            m.launch(
                "diagc_sum_squares",
                grid,
                256,
                &[inp(&gb), A::U(g.len() as u64), out(&mut sumsq)],
            );
        }
        assert_eq!(sumsq[1], 0.0, "sum_squares wrote past its output");
        assert!(
            (sumsq[0] - exact).abs() <= 1e-12 * exact,
            "sum of squares {} want {exact}",
            sumsq[0]
        );
        let t = step as i32 + 1;
        let [b1, b2, step_size, c2_sqrt, eps] = adam_scalars(&cpu, t, lr);
        let mut hyper = guarded(vec![f32::NAN, b1, b2, step_size, c2_sqrt, eps]);
        let mut dnorm = vec![0.0f64, 0.0];
        m.launch(
            "diagc_clip_factor",
            1,
            1,
            &[inp(&sumsq), A::D(max), out(&mut hyper), out(&mut dnorm)],
        );
        assert_eq!(dnorm[1], 0.0);
        assert!(
            (dnorm[0] - cnorm).abs() <= 1e-12 * cnorm,
            "norm {} want {cnorm}",
            dnorm[0]
        );
        let k = hyper[0];
        let want_k = if max > 0.0 && dnorm[0] > max {
            (max / (dnorm[0] + 1e-6)) as f32
        } else {
            1.0
        };
        assert_eq!(
            k.to_bits(),
            want_k.to_bits(),
            "clip factor from the device norm"
        );
        // The device's norm may differ from the CPU's in the last bits: k within an ulp.
        assert!(
            (k.to_bits() as i64 - ck.to_bits() as i64).abs() <= 1,
            "clip factor {k} want {ck}"
        );
        if max != 0.5 * norm {
            assert_eq!(k, 1.0, "no clipping");
        } else {
            assert!(k < 0.51 && k > 0.49, "clipping by half: {k}");
        }
        cpu.update_scaled(&mut params, &views, lr, k);
        for (i, g) in grads.iter().enumerate() {
            let gb = guarded(g.clone());
            let [p, mm, v] = &mut dev[i];
            m.launch(
                "diagc_adam_dev",
                g.len().div_ceil(256).min(40) as u32,
                256,
                &[
                    out(p),
                    inp(&gb),
                    out(mm),
                    out(v),
                    A::U(g.len() as u64),
                    inp(&hyper),
                ],
            );
            let what = format!("adam_dev step {t} buffer {i}");
            check_bits(&format!("{what}: p"), body("p", p), &params[i]);
            check_bits(&format!("{what}: m"), body("m", mm), &cpu.m[i]);
            check_bits(&format!("{what}: v"), body("v", v), &cpu.v[i]);
        }
    }
}

// ---- flash attention ----

struct Attn {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// Naive causal softmax attention in f64 and its gradients for the upstream gradient `g`.
fn attention_ref(
    bh: usize,
    t: usize,
    d: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    g: &[f32],
) -> Attn {
    let scale = 1.0 / (d as f64).sqrt();
    let at = |x: &[f32], b: usize, i: usize, c: usize| x[(b * t + i) * d + c] as f64;
    let n = bh * t * d;
    let mut r = Attn {
        o: vec![0.0; n],
        lse: vec![0.0; bh * t],
        dq: vec![0.0; n],
        dk: vec![0.0; n],
        dv: vec![0.0; n],
    };
    for b in 0..bh {
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| scale * (0..d).map(|c| at(q, b, i, c) * at(k, b, j, c)).sum::<f64>())
                .collect();
            let m = s.iter().fold(f64::NEG_INFINITY, |a, x| a.max(*x));
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            r.lse[b * t + i] = m + z.ln();
            for c in 0..d {
                r.o[(b * t + i) * d + c] = (0..=i).map(|j| p[j] * at(v, b, j, c)).sum();
            }
            // dP = g V^T, dS = P (dP - rowsum(dP P)).
            let dp: Vec<f64> = (0..=i)
                .map(|j| (0..d).map(|c| at(g, b, i, c) * at(v, b, j, c)).sum())
                .collect();
            let di: f64 = (0..=i).map(|j| dp[j] * p[j]).sum();
            for j in 0..=i {
                let ds = p[j] * (dp[j] - di);
                for c in 0..d {
                    r.dq[(b * t + i) * d + c] += scale * ds * at(k, b, j, c);
                    r.dk[(b * t + j) * d + c] += scale * ds * at(q, b, i, c);
                    r.dv[(b * t + j) * d + c] += p[j] * at(g, b, i, c);
                }
            }
        }
    }
    r
}

/// Query rows (forward, dq) or keys (dkdv) per block, as documented in attention_flash.cu.
fn flash_tiles(d: usize) -> (usize, usize, usize) {
    match d {
        128 => (16, 8, 8),
        32 => (16, 16, 32),
        _ => (16, 16, 16),
    }
}

fn flash_case(seed: u64, bh: usize, t: usize, d: usize) {
    flash_case_in(seed, bh, t, d, 1);
}

/// A flash case with `heads` lanes per batch row: q, k, v and their gradients laid out
/// [B][T][H][D] as in the training LM (H = 1: [BH][T][D]), o, dout [B][H][T][D], lse [B][H][T].
fn flash_case_in(seed: u64, bh: usize, t: usize, d: usize, heads: usize) {
    let m = module("attention_flash.cu");
    let mut rng = Rng::new(seed);
    let n = bh * t * d;
    // Larger queries than keys make the softmax peaked, not uniform.
    let q = rand_vec(&mut rng, n, -2.0, 2.0);
    let k = rand_vec(&mut rng, n, -1.0, 1.0);
    let v = rand_vec(&mut rng, n, -1.0, 1.0);
    let g = rand_vec(&mut rng, n, -1.0, 1.0);
    let r = attention_ref(bh, t, d, &q, &k, &v, &g);
    // Element (lane, row, feature) of the contiguous [BH][T][D] order, in the X layout.
    let x_at = |e: usize| {
        let (lane, i, f) = (e / (t * d), e / d % t, e % d);
        (lane / heads) * t * heads * d + i * heads * d + (lane % heads) * d + f
    };
    let to_x = |v: &[f32]| {
        let mut out = vec![0f32; n];
        for (e, x) in v.iter().enumerate() {
            out[x_at(e)] = *x;
        }
        out
    };
    let want_x = |v: &[f64]| {
        let mut out = vec![0f64; n];
        for (e, x) in v.iter().enumerate() {
            out[x_at(e)] = *x;
        }
        out
    };
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    let what = format!("flash BH={bh} T={t} D={d} H={heads}");
    let (tf, tq, tk) = flash_tiles(d);
    let (qb, kb, vb, gb) = (
        guarded(to_x(&q)),
        guarded(to_x(&k)),
        guarded(to_x(&v)),
        guarded(g),
    );
    let (b, h) = (heads, (t * d) as u64);
    let mut dims = vec![
        A::I(bh as i32),
        A::I(t as i32),
        A::F(scale),
        A::I(heads as i32),
    ];
    let lay = |lb: u64, lh: u64, lt: u64| [A::U(lb), A::U(lh), A::U(lt)];
    dims.extend(lay((t * b * d) as u64, d as u64, (b * d) as u64)); // X
    dims.extend(lay(b as u64 * h, h, d as u64)); // O
    dims.extend(lay((b * t) as u64, t as u64, 1)); // lse

    let (mut o, mut lse) = (unwritten(n), unwritten(bh * t));
    let mut args = vec![inp(&qb), inp(&kb), inp(&vb), out(&mut o), out(&mut lse)];
    args.extend(dims.iter().copied());
    m.launch(
        &format!("diagc_flash_fwd_d{d}"),
        (bh * t.div_ceil(tf)) as u32,
        128,
        &args,
    );
    check_rel(&what, "o", &o, &r.o);
    check(
        &format!("{what}: lse"),
        body("lse", &lse),
        &r.lse,
        1e-5,
        1e-5,
    );

    // The backward from the reference's o and lse (rounded to f32), so that it is checked on
    // its own.
    let ob = guarded(r.o.iter().map(|x| *x as f32).collect());
    let lb = guarded(r.lse.iter().map(|x| *x as f32).collect());
    let (mut dq, mut dk, mut dv) = (unwritten(n), unwritten(n), unwritten(n));
    for (kernel, grid) in [("dq", bh * t.div_ceil(tq)), ("dkdv", bh * t.div_ceil(tk))] {
        let mut args = vec![
            inp(&qb),
            inp(&kb),
            inp(&vb),
            inp(&ob),
            inp(&lb),
            inp(&gb),
            out(&mut dq),
            out(&mut dk),
            out(&mut dv),
        ];
        args.extend(dims.iter().copied());
        m.launch(
            &format!("diagc_flash_bwd_{kernel}_d{d}"),
            grid as u32,
            128,
            &args,
        );
    }
    check_rel(&what, "dq", &dq, &want_x(&r.dq));
    check_rel(&what, "dk", &dk, &want_x(&r.dk));
    check_rel(&what, "dv", &dv, &want_x(&r.dv));
}

#[test]
fn flash_attention_reads_the_training_lms_layout() {
    // Two batch rows of four heads, q, k, v interleaved by head ([B][T][H][D]).
    flash_case_in(70, 8, 35, 128, 4);
    flash_case_in(71, 6, 19, 32, 3);
}

#[test]
fn flash_attention_d32_matches_naive_attention() {
    for (i, t) in [1, 5, 35, 70].into_iter().enumerate() {
        flash_case(60 + i as u64, 3, t, 32);
    }
}

#[test]
fn flash_attention_d64_matches_naive_attention() {
    for (i, t) in [1, 5, 35, 70].into_iter().enumerate() {
        flash_case(70 + i as u64, 3, t, 64);
    }
}

#[test]
fn flash_attention_d96_matches_naive_attention() {
    flash_case(79, 2, 35, 96);
}

#[test]
fn flash_attention_d128_matches_naive_attention() {
    for (i, t) in [1, 5, 35, 70].into_iter().enumerate() {
        flash_case(80 + i as u64, 3, t, 128);
    }
}

// ---- linear attention ----

struct LinAttn {
    out: Vec<f64>,
    den: Vec<f64>,
    dqf: Vec<f64>,
    dkf: Vec<f64>,
    dv: Vec<f64>,
}

/// Causal linear attention in f64 (stdlib/attention/m0.diag after the feature map) and, for
/// the upstream gradient `g`, the gradient of sum(out * g) in the form of the kernel's header.
#[allow(clippy::too_many_arguments)]
fn linattn_ref(
    bh: usize,
    t: usize,
    d: usize,
    e: usize,
    qf: &[f64],
    kf: &[f64],
    v: &[f64],
    g: &[f64],
) -> LinAttn {
    let mut r = LinAttn {
        out: vec![0.0; bh * t * e],
        den: vec![0.0; bh * t],
        dqf: vec![0.0; bh * t * d],
        dkf: vec![0.0; bh * t * d],
        dv: vec![0.0; bh * t * e],
    };
    for b in 0..bh {
        let q = |i: usize, c: usize| qf[(b * t + i) * d + c];
        let k = |i: usize, c: usize| kf[(b * t + i) * d + c];
        let vv = |i: usize, c: usize| v[(b * t + i) * e + c];
        let gg = |i: usize, c: usize| g[(b * t + i) * e + c];
        // S_i = sum_{j <= i} kf_j v_j^T, z_i = sum_{j <= i} kf_j.
        let mut s = vec![0.0; d * e];
        let mut z = vec![0.0; d];
        for i in 0..t {
            for a in 0..d {
                z[a] += k(i, a);
                for c in 0..e {
                    s[a * e + c] += k(i, a) * vv(i, c);
                }
            }
            let den = (0..d).map(|a| q(i, a) * z[a]).sum::<f64>() + 1e-6;
            r.den[b * t + i] = den;
            for c in 0..e {
                let num: f64 = (0..d).map(|a| q(i, a) * s[a * e + c]).sum();
                r.out[(b * t + i) * e + c] = num / den;
            }
        }
        // dn_i = g_i / den_i, dden_i = -(g_i . out_i) / den_i, B[i][j] = v_j . dn_i + dden_i,
        // A[i][j] = qf_i . kf_j (j <= i).
        for i in 0..t {
            let den = r.den[b * t + i];
            let dn: Vec<f64> = (0..e).map(|c| gg(i, c) / den).collect();
            let dden = -(0..e)
                .map(|c| gg(i, c) * r.out[(b * t + i) * e + c])
                .sum::<f64>()
                / den;
            for j in 0..=i {
                let bij = (0..e).map(|c| vv(j, c) * dn[c]).sum::<f64>() + dden;
                let aij: f64 = (0..d).map(|a| q(i, a) * k(j, a)).sum();
                for a in 0..d {
                    r.dqf[(b * t + i) * d + a] += bij * k(j, a);
                    r.dkf[(b * t + j) * d + a] += bij * q(i, a);
                }
                let row = &mut r.dv[(b * t + j) * e..(b * t + j + 1) * e];
                for (x, y) in row.iter_mut().zip(&dn) {
                    *x += aij * y;
                }
            }
        }
    }
    r
}

#[test]
fn the_linear_attention_reference_gradient_matches_finite_differences() {
    let (bh, t, d, e) = (2, 6, 3, 4);
    let mut rng = Rng::new(90);
    let mut rv = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
        (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
    };
    let (qf, kf) = (rv(bh * t * d, 0.1, 1.5), rv(bh * t * d, 0.1, 1.5));
    let (v, g) = (rv(bh * t * e, -1.0, 1.0), rv(bh * t * e, -1.0, 1.0));
    let r = linattn_ref(bh, t, d, e, &qf, &kf, &v, &g);
    let loss = |qf: &[f64], kf: &[f64], v: &[f64]| -> f64 {
        let o = linattn_ref(bh, t, d, e, qf, kf, v, &g).out;
        o.iter().zip(&g).map(|(a, b)| a * b).sum()
    };
    let h = 1e-6;
    let fd = |which: usize, i: usize| -> f64 {
        let mut ins = [qf.clone(), kf.clone(), v.clone()];
        ins[which][i] += h;
        let up = loss(&ins[0], &ins[1], &ins[2]);
        ins[which][i] -= 2.0 * h;
        let down = loss(&ins[0], &ins[1], &ins[2]);
        (up - down) / (2.0 * h)
    };
    for (which, grad) in [(0, &r.dqf), (1, &r.dkf), (2, &r.dv)] {
        for (i, want) in grad.iter().enumerate() {
            let got = fd(which, i);
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "input {which} element {i}: finite difference {got}, analytic {want}"
            );
        }
    }
}

fn linattn_case(seed: u64, bh: usize, t: usize, d: usize, e: usize) {
    linattn_case_in(seed, bh, t, d, e, 1);
}

/// Element `(lane, row, feature)` of a contiguous [BH][T][W] tensor in the [B][T][H][W] layout
/// of `heads` heads per batch row (the identity for one head).
fn interleaved(t: usize, w: usize, heads: usize) -> impl Fn(usize) -> usize {
    move |i| {
        let (lane, row, f) = (i / (t * w), i / w % t, i % w);
        (lane / heads) * t * heads * w + row * heads * w + (lane % heads) * w + f
    }
}

fn permuted<T: Copy + Default>(v: &[T], at: &impl Fn(usize) -> usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for (i, x) in v.iter().enumerate() {
        out[at(i)] = *x;
    }
    out
}

/// A linear attention case with `heads` lanes per batch row: qf, kf, v and their gradients
/// laid out [B][T][H][.] as in the training LM, out, dout, den contiguous by lane.
fn linattn_case_in(seed: u64, bh: usize, t: usize, d: usize, e: usize, heads: usize) {
    let m = module("linear_attention.cu");
    let mut rng = Rng::new(seed);
    // qf and kf are outputs of elu + 1: positive.
    let qf = rand_vec(&mut rng, bh * t * d, 0.05, 1.5);
    let kf = rand_vec(&mut rng, bh * t * d, 0.05, 1.5);
    let v = rand_vec(&mut rng, bh * t * e, -1.0, 1.0);
    let g = rand_vec(&mut rng, bh * t * e, -1.0, 1.0);
    let f64s = |x: &[f32]| -> Vec<f64> { x.iter().map(|v| *v as f64).collect() };
    let r = linattn_ref(bh, t, d, e, &f64s(&qf), &f64s(&kf), &f64s(&v), &f64s(&g));
    let what = format!("linattn BH={bh} T={t} D={d} E={e} H={heads}");
    let (xd, xe) = (interleaved(t, d, heads), interleaved(t, e, heads));
    let (qb, kb, vb, gb) = (
        guarded(permuted(&qf, &xd)),
        guarded(permuted(&kf, &xd)),
        guarded(permuted(&v, &xe)),
        guarded(g),
    );
    let (h, u) = (heads, |x: usize| A::U(x as u64));
    let mut dims = vec![
        A::I(bh as i32),
        A::I(t as i32),
        A::I(d as i32),
        A::I(e as i32),
        A::I(h as i32),
    ];
    dims.extend([u(t * h * d), u(d), u(h * d)]); // X
    dims.extend([u(t * h * e), u(e), u(h * e)]); // V
    dims.extend([u(h * t * e), u(t * e), u(e)]); // O
    dims.extend([u(h * t), u(t), u(1)]); // den
    let (mut o, mut den) = (unwritten(bh * t * e), unwritten(bh * t));
    let mut args = vec![inp(&qb), inp(&kb), inp(&vb), out(&mut o), out(&mut den)];
    args.extend(dims.iter().copied());
    m.launch(
        "diagc_linattn_fwd",
        (bh * e.div_ceil(32)) as u32,
        128,
        &args,
    );
    check_rel(&what, "out", &o, &r.out);
    check(
        &format!("{what}: den"),
        body("den", &den),
        &r.den,
        1e-5,
        0.0,
    );

    // The backward from the reference's out and den (rounded to f32).
    let ob = guarded(r.out.iter().map(|x| *x as f32).collect());
    let db = guarded(r.den.iter().map(|x| *x as f32).collect());
    let (mut dq, mut dk, mut dv) = (
        unwritten(bh * t * d),
        unwritten(bh * t * d),
        unwritten(bh * t * e),
    );
    let mut args = vec![
        inp(&qb),
        inp(&kb),
        inp(&vb),
        inp(&ob),
        inp(&db),
        inp(&gb),
        out(&mut dq),
        out(&mut dk),
        out(&mut dv),
    ];
    args.extend(dims.iter().copied());
    m.launch(
        "diagc_linattn_bwd",
        (bh * (2 * d.div_ceil(32) + e.div_ceil(32))) as u32,
        128,
        &args,
    );
    check_rel(&what, "dqf", &dq, &permuted(&r.dqf, &xd));
    check_rel(&what, "dkf", &dk, &permuted(&r.dkf, &xd));
    check_rel(&what, "dv", &dv, &permuted(&r.dv, &xe));
}

#[test]
fn linear_attention_reads_the_training_lms_layout() {
    linattn_case_in(140, 8, 35, 128, 128, 4);
    linattn_case_in(141, 6, 19, 40, 24, 3);
}

#[test]
fn linear_attention_matches_the_m0_formula() {
    let mut seed = 100;
    for (d, e) in [(32, 32), (64, 64)] {
        for t in [1, 17, 35] {
            linattn_case(seed, 2, t, d, e);
            seed += 1;
        }
    }
    // Widths that are not multiples of 32, and several slices with a partial last one.
    linattn_case(seed, 2, 35, 20, 24);
    linattn_case(seed + 1, 2, 17, 40, 72);
    // The largest widths the kernels take.
    linattn_case(seed + 2, 1, 20, 128, 128);
    // Beyond them the kernels return without writing.
    let m = module("linear_attention.cu");
    for (d, e) in [(129, 8), (8, 129)] {
        let (t, bh) = (2usize, 1usize);
        let (qf, kf) = (guarded(vec![0.5; t * d]), guarded(vec![0.5; t * d]));
        let (v, g) = (guarded(vec![0.5; t * e]), guarded(vec![0.5; t * e]));
        let u = |x: usize| A::U(x as u64);
        let dims = [
            A::I(bh as i32),
            A::I(t as i32),
            A::I(d as i32),
            A::I(e as i32),
            A::I(1),
            u(t * d),
            u(0),
            u(d),
            u(t * e),
            u(0),
            u(e),
            u(t * e),
            u(0),
            u(e),
            u(t),
            u(0),
            u(1),
        ];
        let (mut o, mut den) = (unwritten(t * e), unwritten(t));
        let mut args = vec![inp(&qf), inp(&kf), inp(&v), out(&mut o), out(&mut den)];
        args.extend(dims);
        m.launch("diagc_linattn_fwd", e.div_ceil(32) as u32, 128, &args);
        let (mut dq, mut dk, mut dv) = (unwritten(t * d), unwritten(t * d), unwritten(t * e));
        let mut args = vec![
            inp(&qf),
            inp(&kf),
            inp(&v),
            inp(&o),
            inp(&den),
            inp(&g),
            out(&mut dq),
            out(&mut dk),
            out(&mut dv),
        ];
        args.extend(dims);
        m.launch(
            "diagc_linattn_bwd",
            (2 * d.div_ceil(32) + e.div_ceil(32)) as u32,
            128,
            &args,
        );
        for (what, buf) in [
            ("out", &o),
            ("den", &den),
            ("dqf", &dq),
            ("dkf", &dk),
            ("dv", &dv),
        ] {
            assert!(
                buf.iter().all(|x| x.to_bits() == SENTINEL),
                "D={d} E={e}: {what} written"
            );
        }
    }
}

/// The fused attention box of the batched, fused mechanism `mech` (M1 or M0; d = 32, two
/// heads, three batch rows) alone: inputs q, k, v in the layouts the LM gives them, output o
/// (lse or den discarded).
fn attention_alone(mech: &str) -> diagc::ir::instance::Instance {
    use diagc::ir::instance::lift_batch;
    use diagc::ir::{ExecOp, Op};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o =
        diagc::session::check_path(&root.join(format!("stdlib/attention/{mech}.diag"))).unwrap();
    let b = diagc::ir::instance::Bindings {
        sizes: [("tok", 19u64), ("dm", 64), ("head", 2)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        hypers: Default::default(),
    };
    let inst = diagc::ir::instance::instantiate(&o.checked.program, mech, &b).unwrap();
    let inst = diagc::ir::fuse::fuse_attention(&lift_batch(&inst, "batch", 3).unwrap())
        .unwrap()
        .0;
    let d = &inst.diagram;
    let bx = d
        .boxes
        .iter()
        .find(|b| {
            matches!(
                b.op,
                Op::Exec(ExecOp::Attention(_) | ExecOp::LinearAttention(_))
            )
        })
        .expect("a fused box");
    let mut g = diagc::ir::build::Graph::default();
    let ins: Vec<_> = ["q", "k", "v"]
        .iter()
        .zip(&bx.inputs)
        .map(|(n, w)| g.input(d.wire(*w).ty.clone(), n.to_string(), bx.span))
        .collect();
    let outs = g.add(
        bx.op.clone(),
        ins,
        bx.outputs.iter().map(|w| d.wire(*w).ty.clone()).collect(),
        bx.span,
    );
    diagc::ir::instance::Instance {
        diagram: diagc::ir::verify::Flat::new(
            g.finish("attention".into(), vec![outs[0]], bx.span),
            "a test",
        )
        .unwrap(),
        data_inputs: 3,
        params: vec![],
        ..inst
    }
}

#[test]
fn the_plans_attention_launches_compute_what_the_cpu_executor_does() {
    // The code generator maps a fused attention step of the LM's layout (q, k, v [B][T][H][D],
    // o [B][H][T][D]) to the flash kernels (M1) or the linear-attention kernels (M0), with the
    // step's strides as their layout arguments. Run those launches, exactly as generated, on
    // the emulator against the CPU plan: forward (o) and gradient (o, gq, gk, gv).
    for (mech, launches) in [("m1", [1, 3]), ("m0", [1, 2])] {
        attention_launches(mech, launches);
    }
}

/// Runs the generated launches of `mech`'s fused attention alone, forward then gradient,
/// expecting `launches` hand-written launches for each, against the CPU plan.
fn attention_launches(mech: &str, launches: [usize; 2]) {
    use diagc::backend::cpu::exec::{Loc, Plan, RunOptions, Workspace};
    use diagc::backend::cuda::codegen::{self, Arg, Op};
    let inst = attention_alone(mech);
    let grad = diagc::autodiff::gradient(&inst.diagram).unwrap();
    for (n, (what, d)) in [("forward", &inst.diagram), ("gradient", &grad.diagram)]
        .into_iter()
        .enumerate()
    {
        let what = format!("{mech} {what}");
        let plan = Plan::new(d, &inst.axes, &inst.sizes).unwrap();
        let mut rng = Rng::new(5);
        let inputs: Vec<Vec<f32>> = d
            .inputs
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let n: usize = inst.shape(&d.wire(*w).ty).iter().product();
                // M0's qf and kf are elu + 1 of something: positive.
                let lo = if mech == "m0" && k < 2 { 0.05 } else { -1.5 };
                rand_vec(&mut rng, n, lo, 1.5)
            })
            .collect();
        let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let opts = RunOptions::default();
        let cpu = plan.run(&mut Workspace::default(), &refs, opts).unwrap();

        let g = codegen::generate(&plan, &what);
        let mut ins: Vec<Vec<f32>> = inputs.iter().map(|v| guarded(v.clone())).collect();
        let mut work: Vec<Vec<f32>> = plan.buffer_lens().iter().map(|n| unwritten(*n)).collect();
        let mut launched = 0;
        for op in g.steps.iter().flat_map(|s| &s.ops) {
            let Op::Hand(h) = op else {
                panic!("{what}: a launch other than the flash kernels: {op:?}");
            };
            let args: Vec<A> = h
                .args
                .iter()
                .map(|a| match a {
                    Arg::Buf(Loc::Input(k)) => A::P(ins[*k].as_mut_ptr() as u64),
                    Arg::Buf(Loc::Work(k)) => A::P(work[*k].as_mut_ptr() as u64),
                    Arg::I32(v) => A::I(*v),
                    Arg::F32(v) => A::F(*v),
                    Arg::U64(v) => A::U(*v),
                    other => panic!("{what}: argument {other:?}"),
                })
                .collect();
            module(h.file).launch(h.kernel, h.grid, h.block, &args);
            launched += 1;
        }
        assert_eq!(launched, launches[n], "{what}");
        for (k, ((loc, n), want)) in plan.output_locs().iter().zip(&cpu).enumerate() {
            let buf = match loc {
                Loc::Work(b) => body("output", &work[*b]),
                other => panic!("{what}: output {k} at {other:?}"),
            };
            let want: Vec<f64> = want.iter().map(|x| *x as f64).collect();
            check(&format!("{what} output {k}"), &buf[..*n], &want, 1e-4, 1e-5);
        }
    }
}
