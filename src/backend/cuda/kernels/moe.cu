// Mixture-of-experts routing and dispatch: router softmax, top-k with renormalisation, grouping
// of (token, rank) pairs by expert, and the weighted combine. Everything is deterministic: no
// atomics, fixed loop orders, so two runs give bitwise-equal results.

// Softmax over each row of n values, one thread per row, in f64 like the reference:
// p = exp(x - max) / sum, rounded once.
extern "C" __global__ void softmax_rows(const float* __restrict__ x, float* __restrict__ y,
                                        int rows, int n) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float* xr = x + (i64)r * n;
    float* yr = y + (i64)r * n;
    float m = -INFINITY;
    for (int e = 0; e < n; ++e) m = fmaxf(m, xr[e]);
    double s = 0.0;
    for (int e = 0; e < n; ++e) s += exp((double)xr[e] - (double)m);
    for (int e = 0; e < n; ++e) yr[e] = (float)(exp((double)xr[e] - (double)m) / s);
}

// a ranks above b: larger value first, NaN above every number, ties to the lower index (the
// caller scans indices upwards and only replaces on strictly greater).
__device__ __forceinline__ bool ranks_above(float a, float b) {
    if (b != b) return false;
    if (a != a) return true;
    return a > b;
}

// Top-k of each row of probs, descending; weights renormalised to sum 1 (f64 sum in rank
// order) unless `renorm` is 0 (the planted no_topk_renorm). One thread per token.
extern "C" __global__ void topk(const float* __restrict__ probs, int* __restrict__ ids,
                                float* __restrict__ w, int T, int E, int k, int renorm) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* p = probs + (i64)t * E;
    int* id = ids + (i64)t * k;
    for (int r = 0; r < k; ++r) {
        int best = -1;
        float bv = 0.0f;
        for (int e = 0; e < E; ++e) {
            bool taken = false;
            for (int q = 0; q < r; ++q) taken |= id[q] == e;
            if (taken) continue;
            if (best < 0 || ranks_above(p[e], bv)) {
                best = e;
                bv = p[e];
            }
        }
        id[r] = best;
    }
    double s = 0.0;
    for (int r = 0; r < k; ++r) s += (double)p[id[r]];
    for (int r = 0; r < k; ++r)
        w[(i64)t * k + r] = renorm ? (float)((double)p[id[r]] / s) : p[id[r]];
}

// Group the T*k (token, rank) pairs by expert. counts[e]: pairs routed to e; offsets: their
// exclusive prefix sums; slot_token[offsets[e] + c]: token of the c-th pair of e, in token
// order; slot_of[t*k + r]: the grouped slot of pair (t, r). One block; thread e scans all pairs
// for expert e, so the grouping depends on nothing but the ids.
extern "C" __global__ void moe_group(const int* __restrict__ ids, int T, int k, int E,
                                     int* __restrict__ counts, int* __restrict__ offsets,
                                     int* __restrict__ slot_token, int* __restrict__ slot_of) {
    int n = T * k;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int c = 0;
        for (int i = 0; i < n; ++i) c += ids[i] == e;
        counts[e] = c;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int e = 0; e < E; ++e) {
            offsets[e] = acc;
            acc += counts[e];
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int slot = offsets[e];
        for (int i = 0; i < n; ++i) {
            if (ids[i] == e) {
                slot_token[slot] = i / k;
                slot_of[i] = slot;
                ++slot;
            }
        }
    }
}

// out[t, h] = sum_r w[t, r] * down[slot_of[t, r], h], in top-k rank order, in f64, rounded
// once.
extern "C" __global__ void moe_combine(const float* __restrict__ down,
                                       const int* __restrict__ slot_of,
                                       const float* __restrict__ w, float* __restrict__ out,
                                       int T, int k, int H) {
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
