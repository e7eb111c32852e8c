// Causal attention with grouped-query heads, in two kernels so that a planted fault on
// attn_probs reaches the context exactly as on the CPU side.
//
// q [T, nh, D], k and v [T, nkv, D]; query head h reads kv head h / (nh / nkv). Query i sees
// keys 0 ..= last(i), last(i) = min(i + lookahead, T - 1) (lookahead 1 is the planted
// causal_mask_off_by_one). probs [nh, T, T] with masked entries exactly 0; ctx [T, nh*D].
//
// Every kernel takes a block of queries q0 .. q0 + QN - 1 and probs holds only their rows,
// [nh, QN, T] (row i - q0): when the plan does not keep attn_probs the forward walks the
// queries in such blocks through a bounded buffer instead of allocating [nh, T, T]. q0 is a
// multiple of the 64-query tile, so a query's tiles, and so its every operation, are the same
// whatever the block: blocked and whole runs agree bit for bit.
// Scores are f32 dot products; the softmax (max-subtracted, so it cannot overflow) runs in f64
// over them, as the reference does, and is rounded once.

#define ATT_THREADS 128

__device__ __forceinline__ int last_key(int i, int T, int lookahead) {
    return min(i + lookahead, T - 1);
}

// grid (QN, nh), block ATT_THREADS, dynamic shared: (D + T) floats + ATT_THREADS doubles.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_probs(const float* __restrict__ q, const float* __restrict__ k,
               float* __restrict__ probs, int T, int nh, int nkv, int D, int lookahead,
               int q0, int QN) {
    extern __shared__ double att_sh[];
    double* red = att_sh;
    float* qs = (float*)(att_sh + ATT_THREADS);
    float* sc = qs + D;
    int i = q0 + blockIdx.x, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int end = last_key(i, T, lookahead) + 1;
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) qs[d] = q[((i64)i * nh + h) * D + d];
    __syncthreads();
    float scale = (float)(1.0 / sqrt((double)D));
    // one warp per key: lanes stride over d (coalesced reads of the key row), then a fixed
    // xor-butterfly sums the lanes (every lane ends with the same bits; lane 0 writes)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int j = warp; j < end; j += ATT_THREADS / 32) {
        const float* kr = k + ((i64)j * nkv + kh) * D;
        float s = 0.0f;
        for (int d = lane; d < D; d += 32) s = fmaf(qs[d], kr[d], s);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) sc[j] = s * scale;
    }
    __syncthreads();
    // max over the visible keys (NaN propagates: a NaN score makes the row NaN, as on the CPU)
    float m = -INFINITY;
    for (int j = threadIdx.x; j < end; j += ATT_THREADS) m = fmaxf(m, sc[j]);
    red[threadIdx.x] = (double)m;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    double mx = red[0];
    __syncthreads();
    double part = 0.0;
    for (int j = threadIdx.x; j < end; j += ATT_THREADS) part += exp((double)sc[j] - mx);
    red[threadIdx.x] = part;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double z = red[0];
    float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    for (int j = threadIdx.x; j < T; j += ATT_THREADS)
        pr[j] = j < end ? (float)(exp((double)sc[j] - mx) / z) : 0.0f;
}

// ctx[i, h*D + d] = sum_{j <= last(i)} probs[h, i, j] * v[j, kh, d]. Masked positions are
// skipped, not multiplied by 0, so a NaN there cannot leak backwards. grid (QN, nh).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_ctx(const float* __restrict__ probs, const float* __restrict__ v,
             float* __restrict__ ctx, int T, int nh, int nkv, int D, int lookahead, int q0,
             int QN) {
    int i = q0 + blockIdx.x, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int end = last_key(i, T, lookahead) + 1;
    const float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < end; ++j) acc = fmaf(pr[j], v[((i64)j * nkv + kh) * D + d], acc);
        ctx[(i64)i * nh * D + (i64)h * D + d] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// Tiled attention, for head_dim <= ATT_TILE_MAXD (every Qwen3 shape; larger heads take the
// kernels above): the kernels above read every key row once per query and do one or two
// shared-memory loads per FMA. These are register-tiled like the 4 x 4 matmuls (matmul.cu):
// operands staged through shared memory in chunks of 32 along the sum, transposed so that a
// thread reads four rows as one float4, each thread owning 4 x 4 (scores) or 4 x 8 (context)
// outputs, the next chunk on its way into registers while the current one is multiplied
// (H200, 30B-A3B shape at T = 512: scores 1.12 -> 0.24 ms and context 0.85 -> 0.37 ms per 4
// layers against 32 x 32 tiles with scalar loads). Same results rule as above: a score is one f32 FMA chain in d order, the softmax
// runs in f64 (attn_softmax_rows), and attn_ctx_tiled sums p * v over the visible keys in
// ascending key order with the same FMA chain as attn_ctx, so its output equals attn_ctx's bit
// for bit.

#define ATT_TILE 64
#define ATT_CHUNK 32
#define ATT_TILE_THREADS 256
#define ATT_TILE_MAXD 128
#define ATT_SM_KEEP 8

// Column of tile row r at chunk position c in a transposed [chunk][64 + 4] stage: the XOR
// (a multiple of 8, so float4 groups stay whole) spreads the four lanes that stage c = 8 p ..
// of one row at the same time over different banks (as mm_swz in matmul.cu).
__device__ __forceinline__ int att_swz(int r, int c) { return r ^ (((c >> 3) & 3) << 3); }

// Staging rows [0, 64) x columns [c0, c0 + 32) of a row-major source into S[c][row]
// (transposed, padded to 68), zeros outside rows < nr and columns < nc, in two steps so that a
// kernel loads the next chunk into registers while it multiplies the current one: thread
// (r, p) loads the 8 columns 8p.. of row r (a warp reads 8 rows x 128 contiguous bytes), then
// stores them.
__device__ __forceinline__ void att_load_t(float* __restrict__ v, const float* __restrict__ src,
                                           i64 row_stride, int nr, int c0, int nc) {
    int r = threadIdx.x >> 2, p = threadIdx.x & 3;
    const float* row = src + (i64)r * row_stride;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        int c = 8 * p + j;
        v[j] = (r < nr && c0 + c < nc) ? row[c0 + c] : 0.0f;
    }
}

__device__ __forceinline__ void att_store_t(float* __restrict__ S, const float* __restrict__ v) {
    int r = threadIdx.x >> 2, p = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < 8; ++j) S[(8 * p + j) * (ATT_TILE + 4) + att_swz(r, 8 * p + j)] = v[j];
}

// probs[h, i, j] = (q_i . k_j) * scale for the visible keys of query tile blockIdx.x and key
// tile blockIdx.y (the masked entries are written by attn_softmax_rows). grid (ceil(QN / 64),
// ceil(T / 64), nh), block 256; tiles wholly past the causal edge exit at once.
extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS)
    attn_tile_scores(const float* __restrict__ q, const float* __restrict__ k,
                     float* __restrict__ probs, int T, int nh, int nkv, int D, int lookahead,
                     int q0, int QN) {
    __shared__ __align__(16) float Qs[ATT_CHUNK * (ATT_TILE + 4)];
    __shared__ __align__(16) float Ks[ATT_CHUNK * (ATT_TILE + 4)];
    int i0 = q0 + blockIdx.x * ATT_TILE, j0 = blockIdx.y * ATT_TILE, h = blockIdx.z;
    int qend = q0 + QN;
    int qn = min(ATT_TILE, qend - i0);
    if (j0 > last_key(i0 + qn - 1, T, lookahead)) return;  // uniform, before any barrier
    int kn = min(ATT_TILE, T - j0);
    int kh = h / max(nh / nkv, 1);
    const float* qsrc = q + ((i64)i0 * nh + h) * D;
    const float* ksrc = k + ((i64)j0 * nkv + kh) * D;
    // thread (tq, tk) owns queries i0 + 4 tq + a and keys j0 + 4 tk + b
    int tk = threadIdx.x & 15, tq = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = 0.0f;
    }
    float qv[8], kv[8];  // the next chunk, on its way from memory
    att_load_t(qv, qsrc, (i64)nh * D, qn, 0, D);
    att_load_t(kv, ksrc, (i64)nkv * D, kn, 0, D);
    for (int d0 = 0; d0 < D; d0 += ATT_CHUNK) {
        __syncthreads();  // the previous chunk is used up
        att_store_t(Qs, qv);
        att_store_t(Ks, kv);
        __syncthreads();
        if (d0 + ATT_CHUNK < D) {
            att_load_t(qv, qsrc, (i64)nh * D, qn, d0 + ATT_CHUNK, D);
            att_load_t(kv, ksrc, (i64)nkv * D, kn, d0 + ATT_CHUNK, D);
        }
        auto step = [&](int dd) {
            float4 q4 = *(const float4*)&Qs[dd * (ATT_TILE + 4) + att_swz(4 * tq, dd)];
            float4 k4 = *(const float4*)&Ks[dd * (ATT_TILE + 4) + att_swz(4 * tk, dd)];
            float qa[4] = {q4.x, q4.y, q4.z, q4.w};
            float kb[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
            for (int a = 0; a < 4; ++a) {
#pragma unroll
                for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(qa[a], kb[b], acc[a][b]);
            }
        };
        // the chunk's padding columns are never multiplied: every chain is exactly d < D
        int dn = min(ATT_CHUNK, D - d0);
        if (dn == ATT_CHUNK) {
#pragma unroll
            for (int dd = 0; dd < ATT_CHUNK; ++dd) step(dd);
        } else {
            for (int dd = 0; dd < dn; ++dd) step(dd);
        }
    }
    float scale = (float)(1.0 / sqrt((double)D));
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int i = i0 + 4 * tq + a;
        if (i >= qend) break;
        int last = last_key(i, T, lookahead);
        float* pr = probs + ((i64)h * QN + (i - q0)) * T;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            int j = j0 + 4 * tk + b;
            if (j <= last) pr[j] = acc[a][b] * scale;
        }
    }
}

// In place over probs: row (i, h) holds the scores of keys 0 ..= last(i); it becomes their
// softmax (max-subtracted, f64, rounded once) and exact zeros after. grid (QN, nh), block 128.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_softmax_rows(float* __restrict__ probs, int T, int lookahead, int q0, int QN) {
    __shared__ double red[ATT_THREADS / 32];
    int i = q0 + blockIdx.x, h = blockIdx.y;
    int end = last_key(i, T, lookahead) + 1;
    float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    // max over the visible keys (a NaN score is dropped here but makes the sum, and so the
    // row, NaN, as on the CPU); by warp butterflies, then over the warps
    float m = -INFINITY;
    for (int j = threadIdx.x; j < end; j += ATT_THREADS) m = fmaxf(m, pr[j]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = (double)m;
    __syncthreads();
    double mx = red[0];
#pragma unroll
    for (int w = 1; w < ATT_THREADS / 32; ++w) mx = fmax(mx, red[w]);
    __syncthreads();
    // the first ATT_SM_KEEP exponentials of each thread stay in registers for the division
    // (f64 exp is the costly part; the sum takes them in the same order either way)
    double kept[ATT_SM_KEEP];
    double part = 0.0;
#pragma unroll
    for (int m = 0; m < ATT_SM_KEEP; ++m) {
        int j = threadIdx.x + m * ATT_THREADS;
        kept[m] = j < end ? exp((double)pr[j] - mx) : 0.0;
        if (j < end) part += kept[m];
    }
    for (int j = threadIdx.x + ATT_SM_KEEP * ATT_THREADS; j < end; j += ATT_THREADS)
        part += exp((double)pr[j] - mx);
    double z = block_sum(part, red);  // ops.cu: fixed order
#pragma unroll
    for (int m = 0; m < ATT_SM_KEEP; ++m) {
        int j = threadIdx.x + m * ATT_THREADS;
        if (j < T) pr[j] = j < end ? (float)(kept[m] / z) : 0.0f;
    }
    for (int j = threadIdx.x + ATT_SM_KEEP * ATT_THREADS; j < T; j += ATT_THREADS)
        pr[j] = j < end ? (float)(exp((double)pr[j] - mx) / z) : 0.0f;
}

// ctx[i, h*D + d] = sum_{j <= last(i)} probs[h, i, j] * v[j, kh, d], keys ascending, for the
// 64 queries of tile blockIdx.x. grid (ceil(QN / 64), nh), block 256. Thread (tq, td) owns
// queries i0 + 4 tq + a and outputs d = 4 td + c and 64 + 4 td + c.
extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS, 2)
    attn_ctx_tiled(const float* __restrict__ probs, const float* __restrict__ v,
                   float* __restrict__ ctx, int T, int nh, int nkv, int D, int lookahead,
                   int q0, int QN) {
    constexpr int vp = ATT_TILE_MAXD + 4;
    __shared__ __align__(16) float Ps[ATT_CHUNK * (ATT_TILE + 4)];  // Ps[key][query]
    __shared__ __align__(16) float Vs[ATT_CHUNK * vp];              // Vs[key][d]
    // the last query tiles see the most keys: they start first
    int i0 = q0 + (gridDim.x - 1 - blockIdx.x) * ATT_TILE, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int qend = q0 + QN;
    int qn = min(ATT_TILE, qend - i0);
    int td = threadIdx.x & 15, tq = threadIdx.x >> 4;
    // the visible keys: all of them up to first_last for every query of the tile, then
    // per query up to its own last
    int first_last = last_key(i0, T, lookahead);
    int tile_last = last_key(i0 + qn - 1, T, lookahead);
    int my_last[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int i = i0 + 4 * tq + a;
        my_last[a] = i < qend ? last_key(i, T, lookahead) : -1;
    }
    float acc[4][8];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[a][c] = 0.0f;
    }
    const float* psrc = probs + ((i64)h * QN + (i0 - q0)) * T;
    // the next chunk, on its way from memory: P as att_load_t; V rows j0 .. j0 + 31, d < 128
    // (zeros past T and D), a warp per 32 values of a row
    constexpr int vn = ATT_CHUNK * ATT_TILE_MAXD / ATT_TILE_THREADS;
    float pv[8], vv[vn];
    auto load = [&](int j0) {
        att_load_t(pv, psrc, T, qn, j0, T);
#pragma unroll
        for (int m = 0; m < vn; ++m) {
            int x = threadIdx.x + m * ATT_TILE_THREADS;
            int r = x / ATT_TILE_MAXD, d = x % ATT_TILE_MAXD;
            vv[m] = (j0 + r < T && d < D) ? v[((i64)(j0 + r) * nkv + kh) * D + d] : 0.0f;
        }
    };
    load(0);
    for (int j0 = 0; j0 <= tile_last; j0 += ATT_CHUNK) {
        __syncthreads();  // the previous chunk is used up
        att_store_t(Ps, pv);
#pragma unroll
        for (int m = 0; m < vn; ++m) {
            int x = threadIdx.x + m * ATT_TILE_THREADS;
            Vs[(x / ATT_TILE_MAXD) * vp + x % ATT_TILE_MAXD] = vv[m];
        }
        __syncthreads();
        if (j0 + ATT_CHUNK <= tile_last) load(j0 + ATT_CHUNK);
        int jn = min(ATT_CHUNK, tile_last - j0 + 1);
        bool open = j0 + jn - 1 <= first_last;  // no key of the chunk is masked for any query
        auto step = [&](int jj) {
            float4 p4 = *(const float4*)&Ps[jj * (ATT_TILE + 4) + att_swz(4 * tq, jj)];
            float4 va = *(const float4*)&Vs[jj * vp + 4 * td];
            float4 vb = *(const float4*)&Vs[jj * vp + 64 + 4 * td];
            float pa[4] = {p4.x, p4.y, p4.z, p4.w};
            float vc[8] = {va.x, va.y, va.z, va.w, vb.x, vb.y, vb.z, vb.w};
            int j = j0 + jj;
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                // masked keys are skipped, not multiplied by 0 (a NaN there must not leak)
                if (open || j <= my_last[a]) {
#pragma unroll
                    for (int c = 0; c < 8; ++c) acc[a][c] = fmaf(pa[a], vc[c], acc[a][c]);
                }
            }
        };
        if (open && jn == ATT_CHUNK) {
#pragma unroll
            for (int jj = 0; jj < ATT_CHUNK; ++jj) step(jj);
        } else {
            for (int jj = 0; jj < jn; ++jj) step(jj);
        }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int i = i0 + 4 * tq + a;
        if (i >= qend) break;
        float* out = ctx + (i64)i * nh * D + (i64)h * D;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            int d = c < 4 ? 4 * td + c : 60 + 4 * td + c;
            if (d < D) out[d] = acc[a][c];
        }
    }
}
