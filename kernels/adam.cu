// Adam and the global gradient norm: src/train/optim.rs, Adam::update_scaled and clip_factor.
//
// diagc_adam, per element, in f32 and in exactly this order (the roundings of the CPU loop;
// the explicit __f*_rn intrinsics keep NVRTC from fusing a multiply and an add into an FMA,
// which the CPU does not do):
//   gi = (k == 1) ? g : g * k
//   m  = b1 * m + (1 - b1) * gi
//   v  = b2 * v + (1 - b2) * gi * gi          ((1 - b2) * gi first, then * gi)
//   p -= step_size * m / (sqrt(v) / c2_sqrt + eps)   ((step_size * m) / (...))
// with the host computing, as the CPU does: b1, b2, eps as f32; step_size = (lr / (1 - b1^t))
// as f32; c2_sqrt = sqrt(1 - b2^t) as f32 (t the step after incrementing); k the clipping
// factor (1.0 when not clipping).
//
// diagc_sum_squares: *out += sum of (double)g[i] * (double)g[i] over the buffer (the CPU's
// clip_factor sums the squares of every gradient element in f64; the host adds the buffers,
// takes sqrt and computes k = (max / (norm + 1e-6)) as f32 when norm > max > 0). The caller
// zeroes *out first; call it once per gradient buffer with the same *out to get the global sum.
//
// Launch (both): block = 256 (diagc_sum_squares needs a multiple of 32), grid = ceil(n / 256)
// or fewer (grid-stride; for diagc_sum_squares a capped grid such as min(ceil(n/256), 4 * SMs)
// means fewer double atomics), no dynamic shared memory.

__device__ __forceinline__ void diagc_adam_elem(float* p, const float* g, float* m, float* v, unsigned long long i, float k, float b1, float b2, float ob1, float ob2, float step_size, float c2_sqrt, float eps) {
    const float gi = (k == 1.0f) ? g[i] : __fmul_rn(g[i], k);
    const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(ob1, gi));
    const float vi = __fadd_rn(__fmul_rn(b2, v[i]), __fmul_rn(__fmul_rn(ob2, gi), gi));
    m[i] = mi;
    v[i] = vi;
    const float den = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), c2_sqrt), eps);
    p[i] = __fsub_rn(p[i], __fdiv_rn(__fmul_rn(step_size, mi), den));
}

extern "C" __global__ void diagc_adam(float* p, const float* g, float* m, float* v, unsigned long long n, float k, float b1, float b2, float step_size, float c2_sqrt, float eps) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const float ob1 = __fsub_rn(1.0f, b1), ob2 = __fsub_rn(1.0f, b2);
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        diagc_adam_elem(p, g, m, v, i, k, b1, b2, ob1, ob2, step_size, c2_sqrt, eps);
}

// The forms a captured CUDA graph replays step after step: the step's scalars are read from
// device memory, `hyper = {k, b1, b2, step_size, c2_sqrt, eps}` (the host writes all but k before
// each replay), and diagc_clip_factor writes k from the global sum of squares, as clip_factor
// does: norm = sqrt(sum); k = (max / (norm + 1e-6)) as f32 when max > 0 and norm > max, else 1.
// Launch diagc_clip_factor with one thread; diagc_adam_dev as diagc_adam.
extern "C" __global__ void diagc_clip_factor(const double* sumsq, double max, float* hyper, double* norm_out) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    const double norm = sqrt(*sumsq);
    *norm_out = norm;
    hyper[0] = (max > 0.0 && norm > max) ? (float)(max / (norm + 1e-6)) : 1.0f;
}

extern "C" __global__ void diagc_adam_dev(float* p, const float* g, float* m, float* v, unsigned long long n, const float* hyper) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    const float k = hyper[0], b1 = hyper[1], b2 = hyper[2], step_size = hyper[3], c2_sqrt = hyper[4], eps = hyper[5];
    const float ob1 = __fsub_rn(1.0f, b1), ob2 = __fsub_rn(1.0f, b2);
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        diagc_adam_elem(p, g, m, v, i, k, b1, b2, ob1, ob2, step_size, c2_sqrt, eps);
}

extern "C" __global__ void diagc_sum_squares(const float* g, unsigned long long n, double* out) {
    __shared__ double red[32];
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    double acc = 0.0;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double x = (double)g[i];
        acc += x * x;
    }
    acc = diagc_block_sum_d(acc, red);
    if (threadIdx.x == 0 && acc != 0.0) atomicAdd(out, acc);
}
