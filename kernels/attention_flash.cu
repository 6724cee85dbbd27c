// Fused causal scaled-dot-product attention (the paper's M1, stdlib/attention/m1.diag, per
// head: softmax[src](causal[tok, src](q k^T / sqrt(dk))) v), flash-attention style, fp32.
//
// Layout: lane bh (BH = batch * heads, bh = b * H + h), position i, feature d of a tensor is at
//   (bh / H) * L.b + (bh % H) * L.h + i * L.t + d
// for its layout L (diagc_fa_lay): one layout X for q, k, v, dq, dk, dv, one O for o and dout,
// and one for lse (no feature). Features are contiguous. [BH][T][D] contiguous tensors are
// H = 1, X = O = {T * D, 0, D}, lse {T, 0, 1}; the training LM's q, k, v are [B][T][H][D]
// (X = {T * H * D, D, H * D}), its o [B][H][T][D]. scale is 1 / sqrt(D) as an f32 (the CPU divides the scores by sqrt(dk); multiplying
// by the rounded reciprocal differs by an ulp).
//
//   S = scale * q k^T,  S[i][j] = -inf for j > i (causal),  P = softmax_j(S),  o = P v,
//   lse[i] = log(sum_j exp(S[i][j]))   (max-subtracted: m_i + log(l_i))
// Backward (flash-attention-2), with P recomputed as exp(S - lse):
//   Di = sum_d dout[i][d] * o[i][d],  dP = dout v^T,  dS = P * (dP - Di),
//   dq = scale * dS k,  dk = scale * dS^T q,  dv = P^T dout.
// The backward is two kernels with the same arguments and no atomics (nothing to zero): one
// per key tile for dk and dv, one per query tile for dq. Launch both (in either order).
//
// Entry points, for D in {32, 64, 96, 128} (no other D; D = 128 is the hot case):
//   diagc_flash_fwd_d<D>(q, k, v, o, lse, BH, T, scale, LAYOUT)
//   diagc_flash_bwd_dq_d<D>(q, k, v, o, lse, dout, dq, dk, dv, BH, T, scale, LAYOUT)    writes dq
//   diagc_flash_bwd_dkdv_d<D>(q, k, v, o, lse, dout, dq, dk, dv, BH, T, scale, LAYOUT)  dk, dv
// with LAYOUT = int H, then long long X.b, X.h, X.t, O.b, O.h, O.t, lse.b, lse.h, lse.t.
//
// Launch configuration: block = 128 threads (4 warps) for every kernel, no dynamic shared
// memory (all tiles are static, at most 42 KiB), 1-D grid = BH * ceil(T / TILE) with
//   fwd:   TILE = 16 (query rows per block)            for every D
//   dq:    TILE = 8 for D = 128, 16 for D = 32, 64, 96 (query rows per block)
//   dkdv:  TILE = 8 for D = 128, 16 for D = 64, 96, 32 for D = 32 (keys per block)
// (TILE = 4 warps * R rows per warp; see the instantiations at the end.) Blocks are ordered
// so that the ones with the most causal work start first. Any T >= 1 works (tails are
// zero-filled and masked); BH * ceil(T / TILE) must fit in the grid's x dimension (2^31 - 1).
//
// Work split: in the forward and dq kernels each warp owns R query rows (the block's BR = 4R
// rows) and each lane one key of a 32-key tile of K and V in shared memory; the online
// softmax state (m, l) and the output row (D/32 values per lane: columns lane + 32c) live in
// registers. In the dkdv kernel each warp owns R keys, each lane one query of a 32-query tile
// of q and dout in shared memory, and dk, dv rows accumulate in registers. Tiles of keys
// past the last query of a block (and queries before the first key) are never visited.

#define DIAGC_FA_LANES 32

// Where a tensor's lanes and rows are (see the layout above).
struct diagc_fa_lay {
    long long b, h, t;
};

// The offset of lane bh's row i (feature 0).
static __device__ __forceinline__ long long diagc_fa_at(diagc_fa_lay L, int H, int bh, int i) {
    return (long long)(bh / H) * L.b + (long long)(bh % H) * L.h + (long long)i * L.t;
}

// s += a . b over four elements.
static __device__ __forceinline__ float diagc_fa_dot4(float s, float4 a, float4 b) {
    s = fmaf(a.x, b.x, s);
    s = fmaf(a.y, b.y, s);
    s = fmaf(a.z, b.z, s);
    s = fmaf(a.w, b.w, s);
    return s;
}

// ---- forward: one block per (bh, tile of BR = W * R query rows) ----
template <int D, int W, int R>
static __device__ __forceinline__ void diagc_fa_fwd(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, float* __restrict__ o, float* __restrict__ lse, int BH, int T, float scale, diagc_fa_lay X, diagc_fa_lay O, diagc_fa_lay LS, int H) {
    constexpr int BR = W * R;
    constexpr int BC = DIAGC_FA_LANES;
    constexpr int KS = D + 4;  // padded stride: lane j's float4 reads of row j hit distinct banks
    constexpr int C = D / 32;
    __shared__ __align__(16) float Qs[BR * D];
    __shared__ __align__(16) float Ks[BC * KS];
    __shared__ __align__(16) float Vs[BC * KS];

    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int ntiles = (T + BR - 1) / BR;
    const int bh = (int)(blockIdx.x / (unsigned)ntiles);
    if (bh >= BH) return;
    const int q0 = (ntiles - 1 - (int)(blockIdx.x % (unsigned)ntiles)) * BR;

    for (int idx = tid; idx < BR * D; idx += W * 32) {
        const int r = idx / D, d = idx - r * D, qi = q0 + r;
        Qs[idx] = qi < T ? q[diagc_fa_at(X, H, bh, qi) + d] : 0.0f;
    }

    float m[R], l[R], acc[R][C];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = DIAGC_NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
    }

    const int qlast = min(q0 + BR, T) - 1;  // the block's last query row
    const int nkt = qlast / BC + 1;          // key tiles 0 .. nkt-1 cover keys 0 .. qlast
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * BC;
        __syncthreads();  // the previous tile is consumed (and, the first time, Qs is written)
        for (int idx = tid; idx < BC * D; idx += W * 32) {
            const int j = idx / D, d = idx - j * D, kj = k0 + j;
            const bool in = kj < T;
            const long long at = in ? diagc_fa_at(X, H, bh, kj) + d : 0;
            Ks[j * KS + d] = in ? k[at] : 0.0f;
            Vs[j * KS + d] = in ? v[at] : 0.0f;
        }
        __syncthreads();

        // s[r] = q_row . k_lane
        float s[R];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r] = 0.0f;
        const float4* krow = reinterpret_cast<const float4*>(Ks + lane * KS);
#pragma unroll 8
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 kv = krow[d4];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 qv = reinterpret_cast<const float4*>(Qs + (w * R + r) * D)[d4];
                s[r] = diagc_fa_dot4(s[r], qv, kv);
            }
        }

#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int qi = q0 + w * R + r;
            if (qi >= T || qi < k0) continue;  // uniform over the warp
            const int kj = k0 + lane;
            const bool valid = kj <= qi;  // and so kj < T
            const float sv = valid ? s[r] * scale : DIAGC_NEG_INF;
            // Finite: key k0 <= qi is valid, so the tile's maximum is finite.
            const float mn = fmaxf(m[r], diagc_warp_max(sv));
            const float p = valid ? expf(sv - mn) : 0.0f;
            const float alpha = expf(m[r] - mn);  // 0 on the first tile (m = -inf)
            l[r] = l[r] * alpha + diagc_warp_sum(p);
            m[r] = mn;
#pragma unroll
            for (int c = 0; c < C; ++c) acc[r][c] *= alpha;
            const int jn = min(BC, qi - k0 + 1);  // keys k0 .. k0+jn-1 are visible (all < T)
            for (int j = 0; j < jn; ++j) {
                const float pj = __shfl_sync(DIAGC_FULL_MASK, p, j);
                const float* vrow = Vs + j * KS + lane;
#pragma unroll
                for (int c = 0; c < C; ++c) acc[r][c] = fmaf(pj, vrow[32 * c], acc[r][c]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int qi = q0 + w * R + r;
        if (qi >= T) continue;
        const float inv = 1.0f / l[r];
        float* orow = o + diagc_fa_at(O, H, bh, qi) + lane;
#pragma unroll
        for (int c = 0; c < C; ++c) orow[32 * c] = acc[r][c] * inv;
        if (lane == 0) lse[diagc_fa_at(LS, H, bh, qi)] = m[r] + logf(l[r]);
    }
}

// ---- backward, dq: one block per (bh, tile of BR = W * R query rows) ----
template <int D, int W, int R>
static __device__ __forceinline__ void diagc_fa_bwd_dq(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ o, const float* __restrict__ lse, const float* __restrict__ dout, float* __restrict__ dq, int BH, int T, float scale, diagc_fa_lay X, diagc_fa_lay O, diagc_fa_lay LS, int H) {
    constexpr int BR = W * R;
    constexpr int BC = DIAGC_FA_LANES;
    constexpr int KS = D + 4;
    constexpr int C = D / 32;
    __shared__ __align__(16) float Qs[BR * D];
    __shared__ __align__(16) float dOs[BR * D];
    __shared__ __align__(16) float Ks[BC * KS];
    __shared__ __align__(16) float Vs[BC * KS];

    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int ntiles = (T + BR - 1) / BR;
    const int bh = (int)(blockIdx.x / (unsigned)ntiles);
    if (bh >= BH) return;
    const int q0 = (ntiles - 1 - (int)(blockIdx.x % (unsigned)ntiles)) * BR;

    for (int idx = tid; idx < BR * D; idx += W * 32) {
        const int r = idx / D, d = idx - r * D, qi = q0 + r;
        const bool in = qi < T;
        Qs[idx] = in ? q[diagc_fa_at(X, H, bh, qi) + d] : 0.0f;
        dOs[idx] = in ? dout[diagc_fa_at(O, H, bh, qi) + d] : 0.0f;
    }

    // Per row: Di = dout_i . o_i and lse_i (read straight from global memory, coalesced).
    float Di[R], L[R], acc[R][C];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int qi = q0 + w * R + r;
        float part = 0.0f;
        L[r] = 0.0f;
        if (qi < T) {
            const long long at = diagc_fa_at(O, H, bh, qi) + lane;
#pragma unroll
            for (int c = 0; c < C; ++c) part = fmaf(dout[at + 32 * c], o[at + 32 * c], part);
            L[r] = lse[diagc_fa_at(LS, H, bh, qi)];
        }
        Di[r] = diagc_warp_sum(part);
#pragma unroll
        for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
    }

    const int qlast = min(q0 + BR, T) - 1;
    const int nkt = qlast / BC + 1;
    for (int kt = 0; kt < nkt; ++kt) {
        const int k0 = kt * BC;
        __syncthreads();
        for (int idx = tid; idx < BC * D; idx += W * 32) {
            const int j = idx / D, d = idx - j * D, kj = k0 + j;
            const bool in = kj < T;
            const long long at = in ? diagc_fa_at(X, H, bh, kj) + d : 0;
            Ks[j * KS + d] = in ? k[at] : 0.0f;
            Vs[j * KS + d] = in ? v[at] : 0.0f;
        }
        __syncthreads();

        float s[R], dp[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            s[r] = 0.0f;
            dp[r] = 0.0f;
        }
        const float4* krow = reinterpret_cast<const float4*>(Ks + lane * KS);
        const float4* vrow4 = reinterpret_cast<const float4*>(Vs + lane * KS);
#pragma unroll 4
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 kv = krow[d4];
            const float4 vv = vrow4[d4];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 qv = reinterpret_cast<const float4*>(Qs + (w * R + r) * D)[d4];
                const float4 gv = reinterpret_cast<const float4*>(dOs + (w * R + r) * D)[d4];
                s[r] = diagc_fa_dot4(s[r], qv, kv);
                dp[r] = diagc_fa_dot4(dp[r], gv, vv);
            }
        }

#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int qi = q0 + w * R + r;
            if (qi >= T || qi < k0) continue;  // uniform over the warp
            const int kj = k0 + lane;
            const bool valid = kj <= qi;
            const float p = valid ? expf(s[r] * scale - L[r]) : 0.0f;
            const float ds = p * (dp[r] - Di[r]);
            const int jn = min(BC, qi - k0 + 1);
            for (int j = 0; j < jn; ++j) {
                const float dsj = __shfl_sync(DIAGC_FULL_MASK, ds, j);
                const float* krowj = Ks + j * KS + lane;
#pragma unroll
                for (int c = 0; c < C; ++c) acc[r][c] = fmaf(dsj, krowj[32 * c], acc[r][c]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int qi = q0 + w * R + r;
        if (qi >= T) continue;
        float* row = dq + diagc_fa_at(X, H, bh, qi) + lane;
#pragma unroll
        for (int c = 0; c < C; ++c) row[32 * c] = scale * acc[r][c];
    }
}

// ---- backward, dk and dv: one block per (bh, tile of BC = W * R keys) ----
template <int D, int W, int R>
static __device__ __forceinline__ void diagc_fa_bwd_dkdv(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v, const float* __restrict__ o, const float* __restrict__ lse, const float* __restrict__ dout, float* __restrict__ dk, float* __restrict__ dv, int BH, int T, float scale, diagc_fa_lay X, diagc_fa_lay O, diagc_fa_lay LS, int H) {
    constexpr int BC = W * R;              // keys per block
    constexpr int BQ = DIAGC_FA_LANES;     // queries per tile, one per lane
    constexpr int QS = D + 4;
    constexpr int C = D / 32;
    __shared__ __align__(16) float Ks[BC * D];
    __shared__ __align__(16) float Vs[BC * D];
    __shared__ __align__(16) float Qs[BQ * QS];
    __shared__ __align__(16) float dOs[BQ * QS];
    __shared__ float Ls[BQ];
    __shared__ float Ds[BQ];

    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const int ntiles = (T + BC - 1) / BC;
    const int bh = (int)(blockIdx.x / (unsigned)ntiles);
    if (bh >= BH) return;
    // Key tile 0 sees every query: the lowest tiles (most work) come first.
    const int k0 = (int)(blockIdx.x % (unsigned)ntiles) * BC;

    for (int idx = tid; idx < BC * D; idx += W * 32) {
        const int j = idx / D, d = idx - j * D, kj = k0 + j;
        const bool in = kj < T;
        const long long at = in ? diagc_fa_at(X, H, bh, kj) + d : 0;
        Ks[idx] = in ? k[at] : 0.0f;
        Vs[idx] = in ? v[at] : 0.0f;
    }

    float gk[R][C], gv[R][C];
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int c = 0; c < C; ++c) {
            gk[r][c] = 0.0f;
            gv[r][c] = 0.0f;
        }
    }

    // Query tiles from the one holding key k0 (earlier queries see none of these keys).
    for (int i0 = (k0 / BQ) * BQ; i0 < T; i0 += BQ) {
        __syncthreads();  // the previous query tile is consumed (first time: Ks, Vs written)
        // Warp w loads query rows w, w + W, ...: q, dout, and Di = dout_i . o_i, lse_i.
        for (int ii = w; ii < BQ; ii += W) {
            const int qi = i0 + ii;
            if (qi < T) {  // uniform over the warp
                const long long at = diagc_fa_at(O, H, bh, qi) + lane;
                const long long xq = diagc_fa_at(X, H, bh, qi) + lane;
                float part = 0.0f;
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    const float g = dout[at + 32 * c];
                    Qs[ii * QS + lane + 32 * c] = q[xq + 32 * c];
                    dOs[ii * QS + lane + 32 * c] = g;
                    part = fmaf(g, o[at + 32 * c], part);
                }
                part = diagc_warp_sum(part);
                if (lane == 0) {
                    Ds[ii] = part;
                    Ls[ii] = lse[diagc_fa_at(LS, H, bh, qi)];
                }
            } else {
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    Qs[ii * QS + lane + 32 * c] = 0.0f;
                    dOs[ii * QS + lane + 32 * c] = 0.0f;
                }
                if (lane == 0) {
                    Ds[ii] = 0.0f;
                    Ls[ii] = 0.0f;
                }
            }
        }
        __syncthreads();

        // s[r] = q_lane . k_(w R + r),  dp[r] = dout_lane . v_(w R + r)
        float s[R], dp[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            s[r] = 0.0f;
            dp[r] = 0.0f;
        }
        const float4* qrow = reinterpret_cast<const float4*>(Qs + lane * QS);
        const float4* grow = reinterpret_cast<const float4*>(dOs + lane * QS);
#pragma unroll 4
        for (int d4 = 0; d4 < D / 4; ++d4) {
            const float4 qv = qrow[d4];
            const float4 gv4 = grow[d4];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float4 kv = reinterpret_cast<const float4*>(Ks + (w * R + r) * D)[d4];
                const float4 vv = reinterpret_cast<const float4*>(Vs + (w * R + r) * D)[d4];
                s[r] = diagc_fa_dot4(s[r], qv, kv);
                dp[r] = diagc_fa_dot4(dp[r], gv4, vv);
            }
        }

        const int qi = i0 + lane;
        const float Li = Ls[lane], Dl = Ds[lane];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int kj = k0 + w * R + r;
            if (kj >= T) continue;  // uniform over the warp
            const bool valid = qi < T && qi >= kj;
            const float p = valid ? expf(s[r] * scale - Li) : 0.0f;
            const float ds = p * (dp[r] - Dl);
            // Queries i0 + ii with kj <= i0 + ii < T see key kj.
            const int ilo = max(0, kj - i0), ihi = min(BQ, T - i0);
            for (int ii = ilo; ii < ihi; ++ii) {
                const float pi = __shfl_sync(DIAGC_FULL_MASK, p, ii);
                const float dsi = __shfl_sync(DIAGC_FULL_MASK, ds, ii);
                const float* grow_ii = dOs + ii * QS + lane;
                const float* qrow_ii = Qs + ii * QS + lane;
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    gv[r][c] = fmaf(pi, grow_ii[32 * c], gv[r][c]);
                    gk[r][c] = fmaf(dsi, qrow_ii[32 * c], gk[r][c]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int kj = k0 + w * R + r;
        if (kj >= T) continue;
        const long long at = diagc_fa_at(X, H, bh, kj) + lane;
#pragma unroll
        for (int c = 0; c < C; ++c) {
            dk[at + 32 * c] = scale * gk[r][c];
            dv[at + 32 * c] = gv[r][c];
        }
    }
}

// ---- entry points: 128 threads (W = 4 warps) each; R rows (or keys) per warp ----

extern "C" __global__ void diagc_flash_fwd_d32(const float* q, const float* k, const float* v, float* o, float* lse, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_fwd<32, 4, 4>(q, k, v, o, lse, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_fwd_d64(const float* q, const float* k, const float* v, float* o, float* lse, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_fwd<64, 4, 4>(q, k, v, o, lse, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_fwd_d96(const float* q, const float* k, const float* v, float* o, float* lse, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_fwd<96, 4, 4>(q, k, v, o, lse, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_fwd_d128(const float* q, const float* k, const float* v, float* o, float* lse, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_fwd<128, 4, 4>(q, k, v, o, lse, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }

extern "C" __global__ void diagc_flash_bwd_dq_d32(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dq<32, 4, 4>(q, k, v, o, lse, dout, dq, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dq_d64(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dq<64, 4, 4>(q, k, v, o, lse, dout, dq, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dq_d96(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dq<96, 4, 4>(q, k, v, o, lse, dout, dq, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dq_d128(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dq<128, 4, 2>(q, k, v, o, lse, dout, dq, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }

extern "C" __global__ void diagc_flash_bwd_dkdv_d32(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dkdv<32, 4, 8>(q, k, v, o, lse, dout, dk, dv, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dkdv_d64(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dkdv<64, 4, 4>(q, k, v, o, lse, dout, dk, dv, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dkdv_d96(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dkdv<96, 4, 4>(q, k, v, o, lse, dout, dk, dv, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
extern "C" __global__ void diagc_flash_bwd_dkdv_d128(const float* q, const float* k, const float* v, const float* o, const float* lse, const float* dout, float* dq, float* dk, float* dv, int BH, int T, float scale, int H, long long xb, long long xh, long long xt, long long ob, long long oh, long long ot, long long lb, long long lh, long long lt) { diagc_fa_bwd_dkdv<128, 4, 2>(q, k, v, o, lse, dout, dk, dv, BH, T, scale, diagc_fa_lay{xb, xh, xt}, diagc_fa_lay{ob, oh, ot}, diagc_fa_lay{lb, lh, lt}, H); }
