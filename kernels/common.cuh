// diagc: device helpers shared by every CUDA module.
//
// This file is prepended textually (not #included) to every kernels/*.cu file and to the
// generated step kernels before NVRTC compiles them, exactly once per module, so it has no
// include guard and must itself include nothing (NVRTC has no host headers). Everything here is
// a `__device__ __forceinline__` function or a macro, prefixed `diagc_`/`DIAGC_`, never a kernel.
//
// Conventions of the reductions below: the block size is a multiple of 32 (every warp full, so
// the full-mask shuffles are legal) and at most 1024; `red` is a __shared__ scratch array of at
// least 32 elements (64 for the pair reductions) owned by the caller. Every block reduction
// begins with a __syncthreads(), so the same scratch can be reused by consecutive reductions,
// and returns the total to every thread of the block. They must be called by all threads of the
// block (no divergent calls).

// -inf and +inf without <math.h>/<cfloat>.
#define DIAGC_NEG_INF __int_as_float(0xff800000)
#define DIAGC_POS_INF __int_as_float(0x7f800000)
#define DIAGC_FULL_MASK 0xffffffffu

// ---- warp reductions (all 32 lanes participate; every lane gets the result) ----

__device__ __forceinline__ float diagc_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DIAGC_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double diagc_warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(DIAGC_FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float diagc_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(DIAGC_FULL_MASK, v, o));
    return v;
}

// ---- online softmax state: a running maximum m and sum s of exp(x - m) ----

// Folds x into (m, s). An x of -inf adds nothing (also while m is still -inf, where x - m
// would be NaN); a NaN x makes s NaN, as the CPU's two-pass max-then-sum does.
__device__ __forceinline__ void diagc_online_add(float& m, float& s, float x) {
    if (x > m) {
        s = s * expf(m - x) + 1.0f;  // m = -inf on the first element: s = 0 * 0 + 1
        m = x;
    } else if (x != DIAGC_NEG_INF) {
        s += expf(x - m);
    }
}

// Merges the state (m2, s2) into (m, s). A state with m = -inf has s = 0 and contributes 0.
__device__ __forceinline__ void diagc_online_merge(float& m, float& s, float m2, float s2) {
    float mn = fmaxf(m, m2);
    if (mn == DIAGC_NEG_INF) {
        m = mn;
        s = 0.0f;
        return;
    }
    float a = (m == DIAGC_NEG_INF) ? 0.0f : s * expf(m - mn);
    float b = (m2 == DIAGC_NEG_INF) ? 0.0f : s2 * expf(m2 - mn);
    m = mn;
    s = a + b;
}

__device__ __forceinline__ void diagc_warp_online(float& m, float& s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_xor_sync(DIAGC_FULL_MASK, m, o);
        float s2 = __shfl_xor_sync(DIAGC_FULL_MASK, s, o);
        diagc_online_merge(m, s, m2, s2);
    }
}

// ---- block reductions (see the conventions above) ----

__device__ __forceinline__ float diagc_block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = diagc_warp_sum(v);
    __syncthreads();  // the previous user of `red` has read it
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.0f;
    return diagc_warp_sum(t);
}

__device__ __forceinline__ double diagc_block_sum_d(double v, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = diagc_warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = lane < nw ? red[lane] : 0.0;
    return diagc_warp_sum_d(t);
}

__device__ __forceinline__ float diagc_block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = diagc_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : DIAGC_NEG_INF;
    return diagc_warp_max(t);
}

// Two sums at once; `red` holds at least 64 floats.
__device__ __forceinline__ void diagc_block_sum2(float& a, float& b, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    a = diagc_warp_sum(a);
    b = diagc_warp_sum(b);
    __syncthreads();
    if (lane == 0) {
        red[warp] = a;
        red[32 + warp] = b;
    }
    __syncthreads();
    float ta = lane < nw ? red[lane] : 0.0f;
    float tb = lane < nw ? red[32 + lane] : 0.0f;
    a = diagc_warp_sum(ta);
    b = diagc_warp_sum(tb);
}

// The online-softmax state of the whole block; `red` holds at least 64 floats.
__device__ __forceinline__ void diagc_block_online(float& m, float& s, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    diagc_warp_online(m, s);
    __syncthreads();
    if (lane == 0) {
        red[warp] = m;
        red[32 + warp] = s;
    }
    __syncthreads();
    m = lane < nw ? red[lane] : DIAGC_NEG_INF;
    s = lane < nw ? red[32 + lane] : 0.0f;
    diagc_warp_online(m, s);
}

// ---- dropout ----

// Same as the CPU's interp::keep / jit keep_threshold: splitmix64 of (seed, key, i); keep iff
// (z >> 11) >= threshold, where threshold = ceil(p * 2^53) (jit::keep_threshold) and p is the
// drop probability. Equivalent to interp::keep's `(z >> 11) as f64 / 2^53 >= p`: both sides
// are exact, and the left one is an integer.
__device__ __forceinline__ bool diagc_keep(unsigned long long seed, unsigned long long key,
                                                  unsigned long long i,
                                                  unsigned long long threshold) {
    unsigned long long z = seed ^ (key * 0x9E3779B97F4A7C15ULL) ^ (i * 0xD1B54A32D192ED03ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (z >> 11) >= threshold;
}

// ---- ids stored as floats ----

// The row an id names, or -1 when it is not an integer in [0, limit): the CPU executor's
// check_ids (`id < 0 || id as usize >= vocab || id.fract() != 0`; NaN is rejected).
__device__ __forceinline__ long long diagc_exact_id(float id, long long limit) {
    if (!(id >= 0.0f && id < 9.2e18f) || floorf(id) != id) return -1;
    long long r = (long long)id;
    return r < limit ? r : -1;
}

// The class a cross-entropy target names, or -1 when the CPU executor rejects it: its test is
// `t >= 0.0 && (t as usize) < n`, so a fractional target is truncated, not rejected.
__device__ __forceinline__ long long diagc_trunc_id(float t, long long limit) {
    if (!(t >= 0.0f && t < 9.2e18f)) return -1;
    long long r = (long long)t;
    return r < limit ? r : -1;
}
