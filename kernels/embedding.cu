// Embedding lookup with ids stored as floats: the CPU executor's Kernel::Embed and
// Kernel::EmbedBack (src/backend/cpu/exec/kernels.rs), for a contiguous [count] ids array,
// a contiguous [vocab][dim] table and a contiguous [count][dim] output / gradient.
//
//   forward:  out[i][c] = table[ids[i]][c]
//   backward: gtable[ids[i]][c] += gy[i][c]   (atomicAdd: repeated ids accumulate)
//
// An id is valid iff it is an integer in [0, vocab) (the CPU's check_ids, NaN rejected). The
// forward writes zeros for an invalid id's row and sets *bad = 1 (the CPU fails the whole
// step); the backward skips it.
//
// Launch (both): one thread per element of [count][dim]: block = 256 (any size works), grid =
// ceil(count * dim / 256) (grid-stride, so a capped grid also works), no shared memory.
// The caller zeroes *bad before the forward and zeroes gtable (vocab * dim floats) before the
// backward.

extern "C" __global__ void diagc_embed_fwd(const float* ids, const float* table, float* out, int* bad, int count, int dim, int vocab) {
    const unsigned long long total = (unsigned long long)count * (unsigned long long)dim;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const unsigned long long i = e / (unsigned long long)dim;
        const unsigned long long c = e - i * (unsigned long long)dim;
        const long long id = diagc_exact_id(ids[i], vocab);
        if (id < 0) {
            out[e] = 0.0f;
            if (c == 0) *bad = 1;
        } else {
            out[e] = table[(unsigned long long)id * (unsigned long long)dim + c];
        }
    }
}

extern "C" __global__ void diagc_embed_bwd(const float* ids, const float* gy, float* gtable, int count, int dim, int vocab) {
    const unsigned long long total = (unsigned long long)count * (unsigned long long)dim;
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        const unsigned long long i = e / (unsigned long long)dim;
        const unsigned long long c = e - i * (unsigned long long)dim;
        const long long id = diagc_exact_id(ids[i], vocab);
        if (id >= 0) atomicAdd(gtable + (unsigned long long)id * (unsigned long long)dim + c, gy[e]);
    }
}
