// Cross-entropy of `rows` contiguous rows of n logits against class ids stored as floats: the
// CPU executor's Kernel::CrossEntropy (src/backend/cpu/exec/kernels.rs), which SUMS over the
// rows (no mean).
//
//   m = max_j l_j,   z = sum_j exp(l_j - m)          (one pass: online max and sum)
//   forward:  loss += m + log(z) - l_t               (per row, in that order, as the CPU)
//   backward: g_j = (gy / z) * exp(l_j - m),  then g_t -= gy   (gy = gy[0], a scalar)
//
// Target check, as the CPU executor: a row is rejected iff !(t >= 0 && (t as usize) < n); a
// fractional target is truncated to its class (so 2.7 is class 2), a negative or NaN one is
// rejected. The forward sets *bad = 1 and adds nothing for a rejected row (the CPU fails the
// whole step); the backward writes zeros to a rejected row.
//
// Launch (both): grid = rows (blockIdx.x is the row; grid-stride, so fewer blocks also work),
// block = a multiple of 32 up to 1024 (256 or 512 for n = 10000), no dynamic shared memory.
// The caller zeroes *loss (a single float) and *bad before the forward; each row adds its loss
// with one atomicAdd (the order of the rows' summation is not the CPU's, which adds them in
// f64).

extern "C" __global__ void diagc_xent_fwd(const float* logits, const float* targets, float* loss, int* bad, int rows, int n) {
    __shared__ float red[64];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long t = diagc_trunc_id(targets[row], n);
        if (t < 0) {  // uniform over the block: every thread reads the same target
            if (threadIdx.x == 0) *bad = 1;
            continue;
        }
        const float* l = logits + (long long)row * n;
        float m = DIAGC_NEG_INF, s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) diagc_online_add(m, s, l[j]);
        diagc_block_online(m, s, red);
        if (threadIdx.x == 0) atomicAdd(loss, m + logf(s) - l[t]);
    }
}

extern "C" __global__ void diagc_xent_bwd(const float* logits, const float* targets, const float* gy, float* glogits, int rows, int n) {
    __shared__ float red[64];
    const float g = gy[0];
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const long long t = diagc_trunc_id(targets[row], n);
        const float* l = logits + (long long)row * n;
        float* out = glogits + (long long)row * n;
        if (t < 0) {
            for (int j = threadIdx.x; j < n; j += blockDim.x) out[j] = 0.0f;
            continue;
        }
        float m = DIAGC_NEG_INF, s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) diagc_online_add(m, s, l[j]);
        diagc_block_online(m, s, red);
        const float k = g / s;
        // glogits may alias logits: each element is read and written by the same thread, and
        // every thread finished reading the row for the sums before the reduction returned.
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float v = k * expf(l[j] - m);
            if (j == t) v -= g;
            out[j] = v;
        }
    }
}
