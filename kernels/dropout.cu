// Dropout with the CPU's keyed mask: the CPU executor's Kernel::Dropout
// (src/backend/cpu/exec/kernels.rs) and the interpreter's ExecOp::Dropout
// (src/backend/cpu/interp.rs), over a contiguous array of n elements in the output's row-major
// order (the mask hashes the element's index in the output):
//
//   out[i] = keep(seed, key, i) ? x[i] * scale : 0
//
// with scale = (1.0 / (1.0 - p)) computed in f64 by the host and rounded to f32, and the
// product x[i] * scale in f32: exactly the CPU executor's `v * scale` with
// `let scale = (1.0 / (1.0 - prob)) as f32` (a multiplication, not a division by 1 - p).
// threshold = jit::keep_threshold(p) = ceil(p * 2^53) (see diagc_keep in common.cuh).
// Outside training or with p = 0 the CPU copies x; the host may launch this kernel with
// threshold = 0 and scale = 1.0f for that (x * 1.0f == x), or just copy.
//
// The gradient is the same kernel: autodiff (src/autodiff.rs, ExecOp::Dropout) differentiates
// dropout into another ExecOp::Dropout with the same p and key applied to the gradient, whose
// layout is the forward output's, so gx = diagc_dropout(gy) with the same seed, key,
// threshold and scale. There is no separate backward kernel.
//
// Launch: one thread per element: block = 256, grid = ceil(n / 256) (grid-stride, so a capped
// grid also works), no shared memory. out may alias x.

extern "C" __global__ void diagc_dropout(const float* x, float* out, unsigned long long n, unsigned long long seed, unsigned long long key, unsigned long long threshold, float scale) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = x[i];
        out[i] = diagc_keep(seed, key, i, threshold) ? __fmul_rn(v, scale) : 0.0f;
    }
}
