// Causal linear attention, the paper's M0 (stdlib/attention/m0.diag), per head after the
// feature map (qf = elu1(q), kf = elu1(k) are inputs here):
//
//   S_i = sum_{j <= i} kf_j v_j^T   (D x E),   z_i = sum_{j <= i} kf_j   (D)
//   num_i = qf_i^T S_i  (E),   den_i = qf_i . z_i + 1e-6,   out_i = num_i / den_i
//
// Layout: lane bh (BH = batch * heads, bh = b * H + h), position t, feature c of a tensor is at
//   (bh / H) * L.b + (bh % H) * L.h + t * L.t + c
// for its layout L: one layout X for qf, kf, dqf, dkf, one V for v and dv, one O for out and
// dout, one for den (no feature). Features are contiguous; D <= 128 and E <= 128 (any values
// up to that, not only multiples of 32). Contiguous [BH][T][D] and [BH][T][E] tensors are
// H = 1, X = {T * D, 0, D}, V = O = {T * E, 0, E}, den {T, 0, 1}; the training LM's are
// X = V = {T * H * D, D, H * D}, O = {H * T * E, T * E, E}, den {H * T, T, 1}.
//
// Method: chunks of C = 16 tokens. Within a chunk the causal part is a small masked product
// (A = qf kf^T, lower triangle with the diagonal); across chunks it goes through a running
// fp32 state in shared memory. The CPU computes the same sums in another order (a cumulative
// sum of the outer products, then the dot products), so results agree to rounding only.
//
// Backward. With g_i = dout_i:
//   dn_i   = g_i / den_i                         (E)   (gradient of num_i)
//   dden_i = -(g_i . num_i) / den_i^2 = -(g_i . out_i) / den_i
//   dqf_i  = S_i dn_i + dden_i z_i          = sum_{j <= i} (v_j . dn_i + dden_i) kf_j
//   dkf_j  = sum_{i >= j} (S_i and z_i terms) = sum_{i >= j} (v_j . dn_i + dden_i) qf_i
//   dv_j   = sum_{i >= j} (qf_i . kf_j) dn_i
// so with B[i][j] = v_j . dn_i + dden_i and A[i][j] = qf_i . kf_j (both for j <= i):
//   dqf_i = sum_{j <= i} B[i][j] kf_j    (a causal scan: inter-chunk through S = sum kf v^T
//                                          and z = sum kf over earlier chunks:
//                                          S dn_i + dden_i z)
//   dkf_j = sum_{i >= j} B[i][j] qf_i    (an anti-causal scan, chunks last to first, through
//                                          U = sum qf dn^T and w = sum dden qf over later
//                                          chunks: U v_j + w)
//   dv_j  = sum_{i >= j} A[i][j] dn_i    (anti-causal, through the same U: U^T kf_j)
// den_i comes from the forward (its `den` output), out_i is the forward's output.
//
// Entry points and launch (block = 128 threads for both, no dynamic shared memory, static
// shared memory about 36 KiB):
//   diagc_linattn_fwd(qf, kf, v, out, den, BH, T, D, E, LAYOUT)
//       grid = BH * ceil(E / 32): one block per (bh, slice of 32 value columns); writes out
//       and den (den by the first slice's block).
//   diagc_linattn_bwd(qf, kf, v, out, den, dout, dqf, dkf, dv, BH, T, D, E, LAYOUT)
//   with LAYOUT = int H, then long long X.b, X.h, X.t, V.b, V.h, V.t, O.b, O.h, O.t,
//   den.b, den.h, den.t
//       grid = BH * (2 * ceil(D / 32) + ceil(E / 32)): per bh, ceil(D/32) blocks computing a
//       32-column slice of dqf, as many for dkf, and ceil(E/32) for dv. Writes every element
//       of dqf, dkf, dv (nothing to zero), no atomics.
// Kernels with D > 128 or E > 128 return at once without writing (the host must not use them).

#define DIAGC_LA_C 16      // tokens per chunk
#define DIAGC_LA_W 32      // columns per slice
#define DIAGC_LA_MAX 128   // largest D and E
#define DIAGC_LA_LD 129    // padded row stride of full-width rows (distinct banks per row)
#define DIAGC_LA_SMEM 9216 // floats of shared memory per block (>= every layout below)

// One lane's rows of a tensor: row t starts at base + t * rs.
struct diagc_la_rows {
    long long base, rs;
};

// Lane bh's rows in the layout {b, h, t} (see the layout above).
static __device__ __forceinline__ diagc_la_rows diagc_la_lane(int H, int bh, long long b, long long h, long long t) {
    diagc_la_rows r;
    r.base = (long long)(bh / H) * b + (long long)(bh % H) * h;
    r.rs = t;
    return r;
}

// Rows t0 .. t0+C-1 of `src` (columns col0 .. col0+width-1) into dst[i * ld + c], zero
// beyond T.
static __device__ __forceinline__ void diagc_la_load(float* dst, int ld, const float* src, diagc_la_rows R, int col0, int width, int t0, int T) {
    for (int idx = threadIdx.x; idx < DIAGC_LA_C * width; idx += blockDim.x) {
        const int i = idx / width, c = idx - i * width, t = t0 + i;
        dst[i * ld + c] = t < T ? src[R.base + (long long)t * R.rs + col0 + c] : 0.0f;
    }
}

// dn_i = g_i / den_i over columns e0 .. e0+ew-1 into DN[i * ld + e - e0], and (when dden is
// not null) dden_i = -(g_i . out_i) / den_i; zero rows beyond T. One warp per token.
static __device__ __forceinline__ void diagc_la_load_dn(float* DN, int ld, float* dden, const float* dout, const float* out, const float* den, diagc_la_rows O, diagc_la_rows L, int T, int E, int e0, int ew, int t0) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int i = threadIdx.x >> 5; i < DIAGC_LA_C; i += nw) {
        const int t = t0 + i;
        if (t < T) {  // uniform over the warp
            const float dt = den[L.base + (long long)t * L.rs];
            const float* g = dout + O.base + (long long)t * O.rs;
            const float* o = out + O.base + (long long)t * O.rs;
            float part = 0.0f;
            for (int e = lane; e < E; e += 32) {
                const float ge = g[e];
                if (dden) part = fmaf(ge, o[e], part);
                if (e >= e0 && e < e0 + ew) DN[i * ld + e - e0] = ge / dt;
            }
            if (dden) {
                part = diagc_warp_sum(part);
                if (lane == 0) dden[i] = -part / dt;
            }
        } else {
            for (int e = lane; e < ew; e += 32) DN[i * ld + e] = 0.0f;
            if (dden && lane == 0) dden[i] = 0.0f;
        }
    }
}

extern "C" __global__ void diagc_linattn_fwd(const float* qf, const float* kf, const float* v, float* out, float* den, int BH, int T, int D, int E, int H, long long xb, long long xh, long long xt, long long vb, long long vh, long long vt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) {
    __shared__ float sm[DIAGC_LA_SMEM];
    constexpr int C = DIAGC_LA_C, W = DIAGC_LA_W, LD = DIAGC_LA_LD;
    if (D > DIAGC_LA_MAX || E > DIAGC_LA_MAX || D < 1 || E < 1 || T < 1 || H < 1) return;
    const int ns = (E + W - 1) / W;
    const int bh = blockIdx.x / ns, slice = blockIdx.x % ns;
    if (bh >= BH) return;
    const int e0 = slice * W, ew = min(W, E - e0);
    const diagc_la_rows X = diagc_la_lane(H, bh, xb, xh, xt), V = diagc_la_lane(H, bh, vb, vh, vt), O = diagc_la_lane(H, bh, ob, oh, ot), L = diagc_la_lane(H, bh, lb, lh, lt);

    float* Qs = sm;                  // [C][LD]   qf rows of the chunk, all D columns
    float* Ks = Qs + C * LD;         // [C][LD]   kf rows
    float* Vs = Ks + C * LD;         // [C][W]    v rows, this slice's columns
    float* S = Vs + C * W;           // [MAX][W]  sum over earlier chunks of kf v^T
    float* z = S + DIAGC_LA_MAX * W; // [MAX]     sum over earlier chunks of kf
    float* A = z + DIAGC_LA_MAX;     // [C][C+1]  masked qf kf^T of the chunk
    float* qz = A + C * (C + 1);     // [C]       qf_i . z (earlier chunks)

    for (int idx = threadIdx.x; idx < D * W; idx += blockDim.x) S[idx] = 0.0f;
    for (int d = threadIdx.x; d < D; d += blockDim.x) z[d] = 0.0f;

    for (int t0 = 0; t0 < T; t0 += C) {
        __syncthreads();  // the previous chunk's state update has read Ks, Vs (first: S, z set)
        diagc_la_load(Qs, LD, qf, X, 0, D, t0, T);
        diagc_la_load(Ks, LD, kf, X, 0, D, t0, T);
        diagc_la_load(Vs, W, v, V, e0, ew, t0, T);
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * C + C; idx += blockDim.x) {
            if (idx < C * C) {
                const int i = idx / C, j = idx - i * C;
                float a = 0.0f;
                if (j <= i) {
                    for (int d = 0; d < D; ++d) a = fmaf(Qs[i * LD + d], Ks[j * LD + d], a);
                }
                A[i * (C + 1) + j] = a;
            } else {
                const int i = idx - C * C;
                float a = 0.0f;
                for (int d = 0; d < D; ++d) a = fmaf(Qs[i * LD + d], z[d], a);
                qz[i] = a;
            }
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * W; idx += blockDim.x) {
            const int i = idx / W, e = idx - i * W, t = t0 + i;
            if (t >= T || e >= ew) continue;
            float num = 0.0f, dsum = 0.0f;
            for (int j = 0; j <= i; ++j) {
                const float a = A[i * (C + 1) + j];
                num = fmaf(a, Vs[j * W + e], num);
                dsum += a;
            }
            for (int d = 0; d < D; ++d) num = fmaf(Qs[i * LD + d], S[d * W + e], num);
            const float dn = (dsum + qz[i]) + 1e-6f;
            out[O.base + (long long)t * O.rs + e0 + e] = num / dn;
            if (slice == 0 && e == 0) den[L.base + (long long)t * L.rs] = dn;
        }
        __syncthreads();  // S, z, qz, A are read; now fold this chunk into the state
        for (int idx = threadIdx.x; idx < D * W; idx += blockDim.x) {
            const int d = idx / W, e = idx - d * W;
            if (e >= ew) continue;
            float a = S[idx];
            for (int j = 0; j < C; ++j) a = fmaf(Ks[j * LD + d], Vs[j * W + e], a);
            S[idx] = a;
        }
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            float a = z[d];
            for (int j = 0; j < C; ++j) a += Ks[j * LD + d];
            z[d] = a;
        }
    }
}

// dqf for columns d0 .. d0+dw-1 (causal scan).
static __device__ __forceinline__ void diagc_la_bwd_dq(float* sm, const float* kf, const float* v, const float* out, const float* den, const float* dout, float* dqf, diagc_la_rows X, diagc_la_rows V, diagc_la_rows O, diagc_la_rows L, int T, int D, int E, int d0) {
    constexpr int C = DIAGC_LA_C, W = DIAGC_LA_W, LD = DIAGC_LA_LD;
    const int dw = min(W, D - d0);
    float* Ks = sm;                  // [C][W]    kf rows, this slice's columns
    float* Vs = Ks + C * W;          // [C][LD]   v rows, all E columns
    float* DN = Vs + C * LD;         // [C][LD]   dn rows, all E columns
    float* dd = DN + C * LD;         // [C]       dden
    float* S = dd + C;               // [W][LD]   sum over earlier chunks of kf v^T (slice rows)
    float* z = S + W * LD;           // [W]       sum over earlier chunks of kf (slice)
    float* B = z + W;                // [C][C+1]

    for (int idx = threadIdx.x; idx < W * LD; idx += blockDim.x) S[idx] = 0.0f;
    for (int c = threadIdx.x; c < W; c += blockDim.x) z[c] = 0.0f;

    for (int t0 = 0; t0 < T; t0 += C) {
        __syncthreads();
        diagc_la_load(Ks, W, kf, X, d0, dw, t0, T);
        diagc_la_load(Vs, LD, v, V, 0, E, t0, T);
        diagc_la_load_dn(DN, LD, dd, dout, out, den, O, L, T, E, 0, E, t0);
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
            const int i = idx / C, j = idx - i * C;
            float b = 0.0f;
            if (j <= i && t0 + i < T) {
                for (int e = 0; e < E; ++e) b = fmaf(Vs[j * LD + e], DN[i * LD + e], b);
                b += dd[i];
            }
            B[i * (C + 1) + j] = b;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * W; idx += blockDim.x) {
            const int i = idx / W, c = idx - i * W, t = t0 + i;
            if (t >= T || c >= dw) continue;
            float a = 0.0f;
            for (int j = 0; j <= i; ++j) a = fmaf(B[i * (C + 1) + j], Ks[j * W + c], a);
            for (int e = 0; e < E; ++e) a = fmaf(S[c * LD + e], DN[i * LD + e], a);
            a = fmaf(dd[i], z[c], a);
            dqf[X.base + (long long)t * X.rs + d0 + c] = a;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < dw * E; idx += blockDim.x) {
            const int c = idx / E, e = idx - c * E;
            float a = S[c * LD + e];
            for (int j = 0; j < C; ++j) a = fmaf(Ks[j * W + c], Vs[j * LD + e], a);
            S[c * LD + e] = a;
        }
        for (int c = threadIdx.x; c < dw; c += blockDim.x) {
            float a = z[c];
            for (int j = 0; j < C; ++j) a += Ks[j * W + c];
            z[c] = a;
        }
    }
}

// dkf for columns d0 .. d0+dw-1 (anti-causal scan).
static __device__ __forceinline__ void diagc_la_bwd_dk(float* sm, const float* qf, const float* v, const float* out, const float* den, const float* dout, float* dkf, diagc_la_rows X, diagc_la_rows V, diagc_la_rows O, diagc_la_rows L, int T, int D, int E, int d0) {
    constexpr int C = DIAGC_LA_C, W = DIAGC_LA_W, LD = DIAGC_LA_LD;
    const int dw = min(W, D - d0);
    float* Qs = sm;                  // [C][W]    qf rows, this slice's columns
    float* Vs = Qs + C * W;          // [C][LD]   v rows, all E columns
    float* DN = Vs + C * LD;         // [C][LD]   dn rows, all E columns
    float* dd = DN + C * LD;         // [C]       dden
    float* U = dd + C;               // [W][LD]   sum over later chunks of qf dn^T (slice rows)
    float* wv = U + W * LD;          // [W]       sum over later chunks of dden qf (slice)
    float* B = wv + W;               // [C][C+1]

    for (int idx = threadIdx.x; idx < W * LD; idx += blockDim.x) U[idx] = 0.0f;
    for (int c = threadIdx.x; c < W; c += blockDim.x) wv[c] = 0.0f;

    const int last = ((T - 1) / C) * C;
    for (int t0 = last; t0 >= 0; t0 -= C) {
        __syncthreads();
        diagc_la_load(Qs, W, qf, X, d0, dw, t0, T);
        diagc_la_load(Vs, LD, v, V, 0, E, t0, T);
        diagc_la_load_dn(DN, LD, dd, dout, out, den, O, L, T, E, 0, E, t0);
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
            const int i = idx / C, j = idx - i * C;  // i: query, j: key
            float b = 0.0f;
            if (j <= i && t0 + i < T) {
                for (int e = 0; e < E; ++e) b = fmaf(Vs[j * LD + e], DN[i * LD + e], b);
                b += dd[i];
            }
            B[i * (C + 1) + j] = b;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * W; idx += blockDim.x) {
            const int j = idx / W, c = idx - j * W, t = t0 + j;
            if (t >= T || c >= dw) continue;
            float a = 0.0f;
            for (int i = j; i < C; ++i) a = fmaf(B[i * (C + 1) + j], Qs[i * W + c], a);
            for (int e = 0; e < E; ++e) a = fmaf(U[c * LD + e], Vs[j * LD + e], a);
            a += wv[c];
            dkf[X.base + (long long)t * X.rs + d0 + c] = a;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < dw * E; idx += blockDim.x) {
            const int c = idx / E, e = idx - c * E;
            float a = U[c * LD + e];
            for (int i = 0; i < C; ++i) a = fmaf(Qs[i * W + c], DN[i * LD + e], a);
            U[c * LD + e] = a;
        }
        for (int c = threadIdx.x; c < dw; c += blockDim.x) {
            float a = wv[c];
            for (int i = 0; i < C; ++i) a = fmaf(dd[i], Qs[i * W + c], a);
            wv[c] = a;
        }
    }
}

// dv for columns e0 .. e0+ew-1 (anti-causal scan).
static __device__ __forceinline__ void diagc_la_bwd_dv(float* sm, const float* qf, const float* kf, const float* out, const float* den, const float* dout, float* dv, diagc_la_rows X, diagc_la_rows V, diagc_la_rows O, diagc_la_rows L, int T, int D, int E, int e0) {
    constexpr int C = DIAGC_LA_C, W = DIAGC_LA_W, LD = DIAGC_LA_LD;
    const int ew = min(W, E - e0);
    float* Qs = sm;                  // [C][LD]   qf rows, all D columns
    float* Ks = Qs + C * LD;         // [C][LD]   kf rows, all D columns
    float* DN = Ks + C * LD;         // [C][W]    dn rows, this slice's columns
    float* A = DN + C * W;           // [C][C+1]  masked qf kf^T
    float* U = A + C * (C + 1);      // [MAX][W]  sum over later chunks of qf dn^T (slice cols)

    for (int idx = threadIdx.x; idx < D * W; idx += blockDim.x) U[idx] = 0.0f;

    const int last = ((T - 1) / C) * C;
    for (int t0 = last; t0 >= 0; t0 -= C) {
        __syncthreads();
        diagc_la_load(Qs, LD, qf, X, 0, D, t0, T);
        diagc_la_load(Ks, LD, kf, X, 0, D, t0, T);
        diagc_la_load_dn(DN, W, (float*)0, dout, out, den, O, L, T, E, e0, ew, t0);
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * C; idx += blockDim.x) {
            const int i = idx / C, j = idx - i * C;
            float a = 0.0f;
            if (j <= i && t0 + i < T) {
                for (int d = 0; d < D; ++d) a = fmaf(Qs[i * LD + d], Ks[j * LD + d], a);
            }
            A[i * (C + 1) + j] = a;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < C * W; idx += blockDim.x) {
            const int j = idx / W, e = idx - j * W, t = t0 + j;
            if (t >= T || e >= ew) continue;
            float a = 0.0f;
            for (int i = j; i < C; ++i) a = fmaf(A[i * (C + 1) + j], DN[i * W + e], a);
            for (int d = 0; d < D; ++d) a = fmaf(U[d * W + e], Ks[j * LD + d], a);
            dv[V.base + (long long)t * V.rs + e0 + e] = a;
        }
        __syncthreads();
        for (int idx = threadIdx.x; idx < D * W; idx += blockDim.x) {
            const int d = idx / W, e = idx - d * W;
            if (e >= ew) continue;
            float a = U[idx];
            for (int i = 0; i < C; ++i) a = fmaf(Qs[i * LD + d], DN[i * W + e], a);
            U[idx] = a;
        }
    }
}

extern "C" __global__ void diagc_linattn_bwd(const float* qf, const float* kf, const float* v, const float* out, const float* den, const float* dout, float* dqf, float* dkf, float* dv, int BH, int T, int D, int E, int H, long long xb, long long xh, long long xt, long long vb, long long vh, long long vt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) {
    __shared__ float sm[DIAGC_LA_SMEM];
    constexpr int W = DIAGC_LA_W;
    if (D > DIAGC_LA_MAX || E > DIAGC_LA_MAX || D < 1 || E < 1 || T < 1 || H < 1) return;
    const int nd = (D + W - 1) / W, ne = (E + W - 1) / W, roles = 2 * nd + ne;
    const int bh = blockIdx.x / roles, role = blockIdx.x % roles;
    if (bh >= BH) return;
    const diagc_la_rows X = diagc_la_lane(H, bh, xb, xh, xt), V = diagc_la_lane(H, bh, vb, vh, vt), O = diagc_la_lane(H, bh, ob, oh, ot), L = diagc_la_lane(H, bh, lb, lh, lt);
    if (role < nd) {
        diagc_la_bwd_dq(sm, kf, v, out, den, dout, dqf, X, V, O, L, T, D, E, role * W);
    } else if (role < 2 * nd) {
        diagc_la_bwd_dk(sm, qf, v, out, den, dout, dkf, X, V, O, L, T, D, E, (role - nd) * W);
    } else {
        diagc_la_bwd_dv(sm, qf, kf, out, den, dout, dv, X, V, O, L, T, D, E, (role - 2 * nd) * W);
    }
}
