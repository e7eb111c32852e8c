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
