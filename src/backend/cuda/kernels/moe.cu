// Mixture-of-experts routing and dispatch: router softmax, top-k with renormalisation, grouping
// of (token, rank) pairs by expert, and the weighted combine. Everything is deterministic: no
// atomics, fixed loop orders, so two runs give bitwise-equal results.

// Softmax over each row of n values, in f64 like the reference: p = exp(x - max) / sum,
// rounded once. One warp per row (block = 32 threads, dynamic shared: n doubles): the lanes
// compute the exponentials, lane 0 adds them in index order (the reference's order, so the
// sum is the same double), and the lanes write the quotients.
extern "C" __global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ y,
                                        int rows, int n) {
    pdl_wait();
    extern __shared__ double sm_exp[];
    __shared__ double sm_sum;
    int r = blockIdx.x, lane = threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * n;
    float* yr = y + (i64)r * n;
    // the max is exact whatever the order (fmaxf skips NaN, as the serial loop did)
    float m = -INFINITY;
    for (int e = lane; e < n; e += 32) m = fmaxf(m, xr[e]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    for (int e = lane; e < n; e += 32) sm_exp[e] = exp((double)xr[e] - (double)m);
    __syncwarp();
    if (lane == 0) {
        double s = 0.0;
        for (int e = 0; e < n; ++e) s += sm_exp[e];
        sm_sum = s;
    }
    __syncwarp();
    double s = sm_sum;
    for (int e = lane; e < n; e += 32) yr[e] = (float)(sm_exp[e] / s);
}

// Top-k of each row of probs, descending; weights renormalised to sum 1 (f64 sum in rank
// order) unless `renorm` is 0 (the planted no_topk_renorm). One warp per token (block = 32
// threads): lane l holds experts l, l + 32, ...; each of the k rounds takes the best untaken
// one by a butterfly over the lanes, whose order rule makes the result independent of the
// tree. Needs E <= 32 * 64 (checked by the host).
// Up to 256 experts and k <= 32 (every MoE model we know): the row in registers (lane l holds
// experts l + 32 j in v[j]), round r's pick kept by lane r (myv, myi), weights summed from
// those registers; the same picks, sums and bits as the general loop in topk below, without
// its global reads per round (a decode step's top-k was ~10 us of reads in series).
__device__ __forceinline__ void topk_regs(const float* v, int E, int k, int lane, float* myv,
                                          int* myi) {
    u32 taken = 0;  // bit j: expert lane + 32 j is chosen
    *myv = 0.0f;
    *myi = -1;
    for (int r = 0; r < k; ++r) {
        float bv = 0.0f;
        int bi = -1;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            int e = lane + 32 * j;
            if (e < E && !((taken >> j) & 1u) && topk_before(v[j], e, bv, bi)) {
                bv = v[j];
                bi = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (bi >= 0 && (bi & 31) == lane) taken |= 1u << (bi >> 5);
        if (lane == r) {
            *myv = bv;
            *myi = bi;
        }
    }
}

// The picks' ids and weights (renormalised by their f64 sum in rank order unless renorm is 0),
// written by lanes r < k.
__device__ __forceinline__ void topk_write(float myv, int myi, int k, int renorm, int lane,
                                           int* __restrict__ id, float* __restrict__ w) {
    double s = 0.0;
    for (int r = 0; r < k; ++r) s += (double)__shfl_sync(0xffffffffu, myv, r);
    if (lane < k) {
        id[lane] = myi;
        w[lane] = renorm ? (float)((double)myv / s) : myv;
    }
}

__device__ __forceinline__ void topk_small(const float* __restrict__ p, int* __restrict__ id,
                                           float* __restrict__ w, int E, int k, int renorm,
                                           int lane) {
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = lane + 32 * j < E ? p[lane + 32 * j] : 0.0f;
    float myv;
    int myi;
    topk_regs(v, E, k, lane, &myv, &myi);
    topk_write(myv, myi, k, renorm, lane, id, w);
}

extern "C" __global__ void topk(const float* __restrict__ probs, int* __restrict__ ids,
                                float* __restrict__ w, int T, int E, int k, int renorm) {
    pdl_wait();
    int t = blockIdx.x, lane = threadIdx.x;
    if (t >= T) return;
    const float* p = probs + (i64)t * E;
    int* id = ids + (i64)t * k;
    if (E <= 256 && k <= 32) {
        topk_small(p, id, w + (i64)t * k, E, k, renorm, lane);
        return;
    }
    unsigned long long taken = 0;  // bit j: expert lane + 32 j is chosen
    for (int r = 0; r < k; ++r) {
        float bv = 0.0f;
        int bi = -1;
        for (int j = 0, e = lane; e < E; ++j, e += 32) {
            if ((taken >> j) & 1ull) continue;
            float v = p[e];
            if (topk_before(v, e, bv, bi)) {
                bv = v;
                bi = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (bi >= 0 && (bi & 31) == lane) taken |= 1ull << (bi >> 5);
        if (lane == 0) id[r] = bi;
    }
    __syncwarp();
    if (lane == 0) {
        double s = 0.0;
        for (int r = 0; r < k; ++r) s += (double)p[id[r]];
        for (int r = 0; r < k; ++r)
            w[(i64)t * k + r] = renorm ? (float)((double)p[id[r]] / s) : p[id[r]];
    }
}

// The router of a one-token step in one launch: route1_from (route.cuh), one block of
// ROUTE1_THREADS threads.
extern "C" __global__ void __launch_bounds__(ROUTE1_THREADS)
    moe_route1(const float* __restrict__ x, float* __restrict__ probs, int* __restrict__ ids,
               float* __restrict__ w, int E, int k, int renorm, int* __restrict__ counts,
               int* __restrict__ offsets, int* __restrict__ slot_token,
               int* __restrict__ slot_of, int* __restrict__ slot_expert) {
    pdl_wait();
    route1_from(route1_logit(x, E), probs, ids, w, E, k, renorm, counts, offsets, slot_token,
                slot_of, slot_expert);
}

// Group the T*k (token, rank) pairs by expert. counts[e]: pairs routed to e; offsets: their
// exclusive prefix sums; slot_token[offsets[e] + c]: token of the c-th pair of e, in pair
// order (token order); slot_of[t*k + r]: the grouped slot of pair (t, r); slot_expert[s]: the
// expert of grouped slot s (for matmuls whose grid runs over the slots). One block of
// GROUP_THREADS per expert: it counts the pairs below and at its expert (integer sums, exact in
// any order), then walks the pairs in order and ranks its own by warp ballots. No atomics: the
// grouping depends on nothing but the ids.
#define GROUP_THREADS 256
extern "C" __global__ void __launch_bounds__(GROUP_THREADS)
    moe_group(const int* __restrict__ ids, int T, int k, int E, int* __restrict__ counts,
              int* __restrict__ offsets, int* __restrict__ slot_token,
              int* __restrict__ slot_of, int* __restrict__ slot_expert) {
    pdl_wait();
    __shared__ int warp_n[GROUP_THREADS / 32];
    __shared__ int red_lt[GROUP_THREADS / 32], red_eq[GROUP_THREADS / 32];
    int e = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int n = T * k;
    int lt = 0, eq = 0;
    for (int i = tid; i < n; i += GROUP_THREADS) {
        int v = ids[i];
        lt += v < e;
        eq += v == e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lt += __shfl_xor_sync(0xffffffffu, lt, o);
        eq += __shfl_xor_sync(0xffffffffu, eq, o);
    }
    if (lane == 0) {
        red_lt[warp] = lt;
        red_eq[warp] = eq;
    }
    __syncthreads();
    int base = 0, cnt = 0;
    for (int w = 0; w < GROUP_THREADS / 32; ++w) {
        base += red_lt[w];
        cnt += red_eq[w];
    }
    if (tid == 0) {
        counts[e] = cnt;
        offsets[e] = base;
    }
    // ranks: chunk by chunk in pair order
    int done = 0;
    for (int c0 = 0; c0 < n; c0 += GROUP_THREADS) {
        int i = c0 + tid;
        bool mine = i < n && ids[i] == e;
        unsigned ball = __ballot_sync(0xffffffffu, mine);
        if (lane == 0) warp_n[warp] = __popc(ball);
        __syncthreads();
        int before = done;
        for (int w = 0; w < warp; ++w) before += warp_n[w];
        if (mine) {
            int slot = base + before + __popc(ball & ((1u << lane) - 1u));
            slot_token[slot] = i / k;
            slot_of[i] = slot;
            slot_expert[slot] = e;
        }
        for (int w = 0; w < GROUP_THREADS / 32; ++w) done += warp_n[w];
        __syncthreads();
    }
}

// out[t, h] = sum_r w[t, r] * down[slot_of[t, r], h], in top-k rank order, in f64, rounded
// once.
extern "C" __global__ void moe_combine(const float* __restrict__ down,
                                       const int* __restrict__ slot_of,
                                       const float* __restrict__ w, float* __restrict__ out,
                                       int T, int k, int H) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)T * H) return;
    int t = (int)(i / H), h = (int)(i % H);
    double acc = 0.0;
    for (int r = 0; r < k; ++r) {
        int s = slot_of[t * k + r];
        acc += (double)w[t * k + r] * (double)down[(i64)s * H + h];
    }
    out[i] = (float)acc;
}
