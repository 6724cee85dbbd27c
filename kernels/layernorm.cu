// Layer normalisation over the last axis of `rows` contiguous rows of length n: the CPU
// executor's Kernel::LayerNorm / Kernel::LayerNormBack with `dense: true`
// (src/backend/cpu/exec/kernels.rs), the interpreter's normalise_layer (LN_EPS = 1e-5).
//
//   mean = sum(x) / n,   var = sum((x - mean)^2) / n  (biased, two passes, as the CPU)
//   inv  = 1 / sqrt(var + 1e-5)
//   forward:  out_j = (x_j - mean) * inv * gain_j + bias_j
//   backward: xhat_j = (x_j - mean) * inv
//             m1 = sum_j(gy_j * gain_j) / n,   m2 = sum_j(gy_j * gain_j * xhat_j) / n
//             gx_j = inv * (gy_j * gain_j - m1 - xhat_j * m2)
//             ggain_j += sum over rows of gy_j * xhat_j,   gbias_j += sum over rows of gy_j
//
// Launch (both kernels): block = any multiple of 32 up to 1024 (128 for n = 512, 256 for
// n >= 1024), grid = any number of blocks >= 1 (blocks stride over the rows; the forward is
// simplest with grid = rows, the backward is best with fewer, e.g. min(rows, 2 * SMs), since
// each block adds its partial ggain/gbias to global memory once), no dynamic shared memory.
// n is arbitrary (loops); the backward keeps its partial ggain/gbias in shared memory for
// n <= 4096 and falls back to one atomicAdd per element beyond that.
//
// The caller zeroes ggain and gbias before diagc_layernorm_bwd (the CPU kernel zeroes them
// first too); gx may alias x or gy (every element is read by the thread that writes it, after
// the row's sums are done), but not gain, ggain or gbias.

#define DIAGC_LN_EPS 1e-5f
#define DIAGC_LN_SMEM_COLS 4096

extern "C" __global__ void diagc_layernorm_fwd(const float* x, const float* gain, const float* bias, float* out, int rows, int n) {
    __shared__ float red[32];
    const float cnt = (float)n;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* px = x + (long long)row * n;
        float* po = out + (long long)row * n;
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += px[j];
        const float mean = diagc_block_sum(s, red) / cnt;
        float q = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float c = px[j] - mean;
            q += c * c;
        }
        const float var = diagc_block_sum(q, red) / cnt;
        const float inv = 1.0f / sqrtf(var + DIAGC_LN_EPS);
        // out may alias x: every x_j below is read by the thread that writes out_j, and all
        // threads are past the last reduction (its __syncthreads) before any write.
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            po[j] = (px[j] - mean) * inv * gain[j] + bias[j];
        }
        // The next row's first reduction starts with __syncthreads, so `red` is safe.
    }
}

extern "C" __global__ void diagc_layernorm_bwd(const float* x, const float* gain, const float* gy, float* gx, float* ggain, float* gbias, int rows, int n) {
    __shared__ float red[64];
    __shared__ float sgain[DIAGC_LN_SMEM_COLS];
    __shared__ float sbias[DIAGC_LN_SMEM_COLS];
    const bool local = n <= DIAGC_LN_SMEM_COLS;
    if (local) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            sgain[j] = 0.0f;
            sbias[j] = 0.0f;
        }
    }
    // Column j of sgain/sbias is only ever touched by thread j % blockDim.x, so the partial
    // sums need no synchronisation until they are flushed.
    const float cnt = (float)n;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        const float* px = x + (long long)row * n;
        const float* pgy = gy + (long long)row * n;
        float* pgx = gx + (long long)row * n;
        float s = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) s += px[j];
        const float mean = diagc_block_sum(s, red) / cnt;
        float q = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float c = px[j] - mean;
            q += c * c;
        }
        const float var = diagc_block_sum(q, red) / cnt;
        const float inv = 1.0f / sqrtf(var + DIAGC_LN_EPS);
        float a = 0.0f, b = 0.0f;
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float gg = pgy[j] * gain[j];
            float xhat = (px[j] - mean) * inv;
            a += gg;
            b += gg * xhat;
            if (local) {
                sgain[j] += pgy[j] * xhat;
                sbias[j] += pgy[j];
            } else {
                atomicAdd(ggain + j, pgy[j] * xhat);
                atomicAdd(gbias + j, pgy[j]);
            }
        }
        diagc_block_sum2(a, b, red);
        const float m1 = a / cnt, m2 = b / cnt;
        // Every read of this row of x and gy by other threads is done (the reduction above
        // synchronised the block); each thread reads its own x_j, gy_j before writing gx_j.
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float xhat = (px[j] - mean) * inv;
            pgx[j] = inv * (pgy[j] * gain[j] - m1 - xhat * m2);
        }
    }
    if (local) {
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            atomicAdd(ggain + j, sgain[j]);
            atomicAdd(gbias + j, sbias[j]);
        }
    }
}
