// The router's order and its one-token routing, shared by moe.cu (the separate kernels and
// moe_route1) and matmul.cu (matmulwn_route_*, the router matvec whose last block routes): a
// block-type module holds the files up to matmul.cu, so what both call lives here.

// a ranks above b: larger value first, NaN above every number, ties to the lower index (the
// serial scan goes up the indices and only replaces on strictly greater).
__device__ __forceinline__ bool ranks_above(float a, float b) {
    if (b != b) return false;
    if (a != a) return true;
    return a > b;
}

// topk_before's order as one integer (for candidates, index >= 0): a before b exactly when
// topk_key(a, ia) > topk_key(b, ib). High word: the value's rank (every NaN alike, above +inf;
// -0 as +0, since neither is greater than the other; numbers by the usual monotone map of
// their bits); low word: the index, reversed (ties to the lower index).
__device__ __forceinline__ unsigned long long topk_key(float v, int i) {
    u32 b = __float_as_uint(v == 0.0f ? 0.0f : v);
    u32 r = v != v ? 0xffffffffu : (b & 0x80000000u ? ~b : b | 0x80000000u);
    return ((unsigned long long)r << 32) | (u32)~i;
}

// (a, ia) before (b, ib) in the top-k order; an index < 0 is no candidate.
__device__ __forceinline__ bool topk_before(float a, int ia, float b, int ib) {
    if (ib < 0) return ia >= 0;
    if (ia < 0) return false;
    if (ranks_above(a, b)) return true;
    if (ranks_above(b, a)) return false;
    return ia < ib;
}

// The router of a one-token step in one launch (ROUTE1_THREADS threads, one per expert):
// softmax_rows, topk and moe_group for T = 1, the outputs equal to theirs bit for bit (probs,
// ids, w, and the grouping: the k distinct experts one slot each, slots in expert order).
// - softmax: the max is exact in any order; each thread its expert's f64 exponential; thread 0
//   adds them in index order (softmax_rows' order, the same double); each thread its quotient.
// - top-k: topk_before is a strict total order (NaN above numbers, ties to the lower index), so
//   the pick of round r of topk's rounds is the expert with exactly r experts before it: each
//   thread counts the experts before its own, in parallel, instead of k rounds in series, by
//   comparing topk_key integers (the same order, without topk_before's branches).
// - weights: the picks' f64 sum in rank order, as topk_write; grouping as moe_group.
// E <= 256, k <= 32 (the host checks).
// Called by all ROUTE1_THREADS threads of one block (every one meets its barriers), thread t
// with logit t in xv (t < E; the others -inf).
#define ROUTE1_THREADS 256
__device__ __forceinline__ void route1_from(float xv, float* __restrict__ probs,
                                            int* __restrict__ ids, float* __restrict__ w, int E,
                                            int k, int renorm, int* __restrict__ counts,
                                            int* __restrict__ offsets,
                                            int* __restrict__ slot_token,
                                            int* __restrict__ slot_of,
                                            int* __restrict__ slot_expert) {
    __shared__ double ex[ROUTE1_THREADS];
    __shared__ unsigned long long key[ROUTE1_THREADS];
    __shared__ float wmax[ROUTE1_THREADS / 32];
    __shared__ double sum;
    __shared__ float pick_v[32];
    __shared__ int pick_id[32];
    int t = threadIdx.x, lane = t & 31;
    bool mine = t < E;
    // the max (fmaxf skips NaN, as softmax_rows' does: from -inf, so all NaN gives -inf too)
    float m = fmaxf(-INFINITY, xv);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) wmax[t >> 5] = m;
    __syncthreads();
#pragma unroll
    for (int i = 0; i < ROUTE1_THREADS / 32; ++i) m = fmaxf(m, wmax[i]);
    if (mine) ex[t] = exp((double)xv - (double)m);
    __syncthreads();
    if (t == 0) {
        // (unrolled so that the loads go ahead of the adds, which stay in index order)
        double s = 0.0;
#pragma unroll 16
        for (int e = 0; e < E; ++e) s += ex[e];
        sum = s;
    }
    __syncthreads();
    float v = 0.0f;
    if (mine) {
        v = (float)(ex[t] / sum);
        probs[t] = v;
        key[t] = topk_key(v, t);
    }
    __syncthreads();
    if (mine) {
        int before = 0;
        unsigned long long mk = key[t];
#pragma unroll 8
        for (int j = 0; j < E; ++j) before += key[j] > mk;
        if (before < k) {
            pick_id[before] = t;
            pick_v[before] = v;
        }
    }
    __syncthreads();
    if (t < k) {
        double s = 0.0;
        for (int r = 0; r < k; ++r) s += (double)pick_v[r];
        float myv = pick_v[t];
        int myi = pick_id[t], slot = 0;
        ids[t] = myi;
        w[t] = renorm ? (float)((double)myv / s) : myv;
        for (int r = 0; r < k; ++r) slot += pick_id[r] < myi;
        slot_of[t] = slot;
        slot_token[slot] = 0;
        slot_expert[slot] = myi;
    }
    if (mine) {
        int below = 0, hit = 0;
        for (int r = 0; r < k; ++r) {
            below += pick_id[r] < t;
            hit += pick_id[r] == t;
        }
        counts[t] = hit;
        offsets[t] = below;
    }
}

// Logit t of x for route1_from (an L2 load: in matmulwn_route the logits are other blocks'
// writes).
__device__ __forceinline__ float route1_logit(const float* __restrict__ x, int E) {
    int t = threadIdx.x;
    return t < E ? __ldcg(x + t) : -INFINITY;
}

// Whether this block is the last of its launch to get here: each block's writes before it are
// then visible to that last block (the fence before the count; the block's own threads' writes
// by the barrier), and the last block resets the counter for the next launch that uses it
// (launches on one stream run in order: the next one waits for this one to complete). Called
// by every thread of the block.
__device__ __forceinline__ bool last_block_of_launch(unsigned* __restrict__ done) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
        last = atomicAdd(done, 1u) == blocks - 1;
        if (last) *done = 0u;
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}
