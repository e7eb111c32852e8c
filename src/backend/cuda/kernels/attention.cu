// Causal attention with grouped-query heads, in two kernels so that a planted fault on
// attn_probs reaches the context exactly as on the CPU side.
//
// q [T, nh, D], k and v [T, nkv, D]; query head h reads kv head h / (nh / nkv). Query i sees
// keys 0 ..= last(i), last(i) = min(i + lookahead, T - 1) (lookahead 1 is the planted
// causal_mask_off_by_one). probs [nh, T, T] with masked entries exactly 0; ctx [T, nh*D].
// Scores are f32 dot products; the softmax (max-subtracted, so it cannot overflow) runs in f64
// over them, as the reference does, and is rounded once.

#define ATT_THREADS 128

__device__ __forceinline__ int last_key(int i, int T, int lookahead) {
    return min(i + lookahead, T - 1);
}

// grid (T, nh), block ATT_THREADS, dynamic shared: (D + T) floats + ATT_THREADS doubles.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_probs(const float* __restrict__ q, const float* __restrict__ k,
               float* __restrict__ probs, int T, int nh, int nkv, int D, int lookahead) {
    extern __shared__ double att_sh[];
    double* red = att_sh;
    float* qs = (float*)(att_sh + ATT_THREADS);
    float* sc = qs + D;
    int i = blockIdx.x, h = blockIdx.y;
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
    float* pr = probs + ((i64)h * T + i) * T;
    for (int j = threadIdx.x; j < T; j += ATT_THREADS)
        pr[j] = j < end ? (float)(exp((double)sc[j] - mx) / z) : 0.0f;
}

// ctx[i, h*D + d] = sum_{j <= last(i)} probs[h, i, j] * v[j, kh, d]. Masked positions are
// skipped, not multiplied by 0, so a NaN there cannot leak backwards. grid (T, nh).
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_ctx(const float* __restrict__ probs, const float* __restrict__ v,
             float* __restrict__ ctx, int T, int nh, int nkv, int D, int lookahead) {
    int i = blockIdx.x, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int end = last_key(i, T, lookahead) + 1;
    const float* pr = probs + ((i64)h * T + i) * T;
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        for (int j = 0; j < end; ++j) acc = fmaf(pr[j], v[((i64)j * nkv + kh) * D + d], acc);
        ctx[(i64)i * nh * D + (i64)h * D + d] = acc;
    }
}

// ---------------------------------------------------------------------------------------------
// Tiled attention, for head_dim <= ATT_TILE_MAXD (every Qwen3 shape; larger heads take the
// kernels above, whose shared memory does not grow with the head): the
// kernels above read every key row once per query, which at long prompts is gigabytes of cache
// traffic a layer. Here a block takes 32 queries of one head and walks the keys 32 at a time
// through shared memory. Same results rule: attn_tile_scores + attn_softmax_rows give the
// probabilities (scores are f32 FMA chains in d order, softmax in f64 as above), and attn_ctx
// _tiled sums p * v over the visible keys in ascending key order with the same FMA chain as
// attn_ctx, so its output equals attn_ctx's bit for bit.

#define ATT_TILE 32
#define ATT_TILE_THREADS 256
#define ATT_TILE_MAXD 128

// probs[h, i, j] = (q_i . k_j) * scale for the visible keys of query tile blockIdx.x (the
// masked entries are written by attn_softmax_rows). grid (ceil(T / 32), nh), block 256,
// dynamic shared: 2 * 32 * (D + 1) floats.
extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS)
    attn_tile_scores(const float* __restrict__ q, const float* __restrict__ k,
                     float* __restrict__ probs, int T, int nh, int nkv, int D, int lookahead) {
    extern __shared__ float att_tile_sh[];
    int dp = D + 1;  // padded rows: lanes reading different rows hit different banks
    float* Qs = att_tile_sh;
    float* Ks = att_tile_sh + ATT_TILE * dp;
    int i0 = blockIdx.x * ATT_TILE, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int tid = threadIdx.x;
    int qn = min(ATT_TILE, T - i0);
    for (int x = tid; x < ATT_TILE * D; x += ATT_TILE_THREADS) {
        int r = x / D, d = x % D;
        Qs[r * dp + d] = r < qn ? q[((i64)(i0 + r) * nh + h) * D + d] : 0.0f;
    }
    float scale = (float)(1.0 / sqrt((double)D));
    // thread (qi, jg) scores query i0 + qi against keys j0 + jg + 8 m, m < 4
    int qi = tid >> 3, jg = tid & 7;
    int i = i0 + qi;
    int last = last_key(min(i0 + ATT_TILE - 1, T - 1), T, lookahead);
    int my_last = i < T ? last_key(i, T, lookahead) : -1;
    float* pr = probs + ((i64)h * T + (i < T ? i : 0)) * T;
    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        __syncthreads();  // the previous key tile is used up (and Qs is written, first time)
        int kn = min(ATT_TILE, T - j0);
        for (int x = tid; x < ATT_TILE * D; x += ATT_TILE_THREADS) {
            int r = x / D, d = x % D;
            Ks[r * dp + d] = r < kn ? k[((i64)(j0 + r) * nkv + kh) * D + d] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            int jj = jg + 8 * m, j = j0 + jj;
            if (j > my_last) continue;
            const float* qr = Qs + qi * dp;
            const float* kr = Ks + jj * dp;
            float s = 0.0f;
            for (int d = 0; d < D; ++d) s = fmaf(qr[d], kr[d], s);
            pr[j] = s * scale;
        }
    }
}

// In place over probs: row (i, h) holds the scores of keys 0 ..= last(i); it becomes their
// softmax (max-subtracted, f64, rounded once) and exact zeros after. grid (T, nh), block 128.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_softmax_rows(float* __restrict__ probs, int T, int lookahead) {
    __shared__ double red[ATT_THREADS];
    int i = blockIdx.x, h = blockIdx.y;
    int end = last_key(i, T, lookahead) + 1;
    float* pr = probs + ((i64)h * T + i) * T;
    // max over the visible keys (NaN propagates: a NaN score makes the row NaN, as on the CPU)
    float m = -INFINITY;
    for (int j = threadIdx.x; j < end; j += ATT_THREADS) m = fmaxf(m, pr[j]);
    red[threadIdx.x] = (double)m;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    double mx = red[0];
    __syncthreads();
    double part = 0.0;
    for (int j = threadIdx.x; j < end; j += ATT_THREADS) part += exp((double)pr[j] - mx);
    red[threadIdx.x] = part;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double z = red[0];
    for (int j = threadIdx.x; j < T; j += ATT_THREADS)
        pr[j] = j < end ? (float)(exp((double)pr[j] - mx) / z) : 0.0f;
}

// ctx[i, h*D + d] = sum_{j <= last(i)} probs[h, i, j] * v[j, kh, d], keys ascending, for the
// 32 queries of tile blockIdx.x. grid (ceil(T / 32), nh), block 256, dynamic shared:
// 32 * D + 32 * 33 floats.
extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS)
    attn_ctx_tiled(const float* __restrict__ probs, const float* __restrict__ v,
                   float* __restrict__ ctx, int T, int nh, int nkv, int D, int lookahead) {
    extern __shared__ float att_tile_sh[];
    float* Vs = att_tile_sh;              // [32][D]
    float* Ps = att_tile_sh + ATT_TILE * D;  // [32][33]
    int i0 = blockIdx.x * ATT_TILE, h = blockIdx.y;
    int kh = h / max(nh / nkv, 1);
    int tid = threadIdx.x;
    // thread (qi, dg) owns outputs d = dg + 8 m of query i0 + qi
    int qi = tid >> 3, dg = tid & 7;
    int i = i0 + qi;
    int my_last = i < T ? last_key(i, T, lookahead) : -1;
    int last = last_key(min(i0 + ATT_TILE - 1, T - 1), T, lookahead);
    int nd = (D - dg + 7) / 8;  // my outputs: d = dg + 8 m < D
    float acc[ATT_TILE_MAXD / 8];
#pragma unroll
    for (int m = 0; m < ATT_TILE_MAXD / 8; ++m) acc[m] = 0.0f;
    for (int j0 = 0; j0 <= last; j0 += ATT_TILE) {
        __syncthreads();
        int kn = min(ATT_TILE, T - j0);
        for (int x = tid; x < ATT_TILE * D; x += ATT_TILE_THREADS) {
            int r = x / D, d = x % D;
            Vs[r * D + d] = r < kn ? v[((i64)(j0 + r) * nkv + kh) * D + d] : 0.0f;
        }
        for (int x = tid; x < ATT_TILE * ATT_TILE; x += ATT_TILE_THREADS) {
            int r = x / ATT_TILE, c = x % ATT_TILE;
            int qq = i0 + r, j = j0 + c;
            Ps[r * 33 + c] = (qq < T && j < T) ? probs[((i64)h * T + qq) * T + j] : 0.0f;
        }
        __syncthreads();
        int jn = min(ATT_TILE, my_last - j0 + 1);  // visible keys of this tile for my query
        for (int jj = 0; jj < jn; ++jj) {
            float p = Ps[qi * 33 + jj];
            const float* vr = Vs + jj * D + dg;
#pragma unroll
            for (int m = 0; m < ATT_TILE_MAXD / 8; ++m)
                if (m < nd) acc[m] = fmaf(p, vr[8 * m], acc[m]);
        }
    }
    if (i >= T) return;
    float* out = ctx + (i64)i * nh * D + (i64)h * D;
#pragma unroll
    for (int m = 0; m < ATT_TILE_MAXD / 8; ++m)
        if (m < nd) out[dg + 8 * m] = acc[m];
}
