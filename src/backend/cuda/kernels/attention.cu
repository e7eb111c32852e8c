// Causal attention with grouped-query heads over a step's queries and the layer's keys, in two
// kernels so that a planted fault on attn_probs reaches the context exactly as on the CPU side
// (plus a fused kernel for steps of one query, the decode steps).
//
// The keys are a KV cache: k and v [>= kend, nkv, D] hold the keys of positions 0 .. kend - 1
// (the step's end), as f32 or, for the f16 cache, IEEE half bits (the `_f16` kernels). The
// full forward passes its own k_rope / v_proj, kend = T. The step's queries q [n, nh, D] and
// its context rows ctx [n, nh*D] start at position qbase (the step's start; 0 for the full
// forward). Query head h reads kv head h / (nh / nkv). Query i sees keys kfirst ..= last(i),
// last(i) = min(i + lookahead, kend - 1): lookahead 1 is the planted causal_mask_off_by_one
// (never past the step's last row: later slots are not written yet), kfirst > 0 the planted
// chunk_mask (a prefill chunk that does not see the earlier chunks). probs [nh, QN, T], T the
// prompt length, with masked entries exactly 0; masked keys are skipped, never multiplied by 0.
//
// Every kernel takes a block of queries q0 .. q0 + QN - 1 (absolute positions) and probs
// holds only their rows (row i - q0): when the plan does not keep attn_probs the forward walks
// the queries in such blocks through a bounded buffer instead of allocating [nh, T, T]. A
// score is one FMA chain whatever the block, and a context sums its keys in ascending order,
// so blocked and whole runs agree bit for bit.
// Scores are f32 dot products; the softmax (max-subtracted, so it cannot overflow) runs in f64
// over them, as the reference does, and is rounded once.

#define ATT_THREADS 128
// the shape and visibility arguments every attention kernel takes, in this order
#define ATT_DIMS                                                                             \
    int T, int nh, int nkv, int D, int lookahead, int q0, int QN, int qbase, int kfirst, int kend
#define ATT_PASS T, nh, nkv, D, lookahead, q0, QN, qbase, kfirst, kend

__device__ __forceinline__ int last_key(int i, int kend, int lookahead) {
    return min(i + lookahead, kend - 1);
}

// one K or V value of the cache as f32
__device__ __forceinline__ float kv_ld(const float* p, i64 i) { return p[i]; }
__device__ __forceinline__ float kv_ld(const u16* p, i64 i) { return h2f(p[i]); }
// v as the cache of that type gives it back (kv_ld after kv_put)
__device__ __forceinline__ float kv_round(const float*, float v) { return v; }
__device__ __forceinline__ float kv_round(const u16*, float v) { return h2f(f2h(v)); }

// Scores and softmax of query i = q0 + blockIdx.x, head h = blockIdx.y, into the shared
// row sc (sc[j] for kfirst <= j < end, as the f32 probability) and its global row pr
// (zeros elsewhere). `red` is ATT_THREADS doubles, qs D floats, sc kend floats.
// attn_row's score loop takes ATT_ROW_KEYS keys of a warp at once for heads up to
// ATT_ROW_MAXD values (each lane's values of them in registers); attn_ctx_row loads
// ATT_CTX_KEYS values of a column before it adds them. Neither changes a sum's order.
#define ATT_ROW_KEYS 8
#define ATT_ROW_MAXD 128
#define ATT_CTX_KEYS 16
// With q null, qs holds the query already (after a barrier); with knew set, key jnew is read
// from knew (shared, as the cache gives it back) instead of the cache (attn_decode_qk: the key
// this step writes to the cache in the same launch).
template <typename KV>
__device__ __forceinline__ void attn_row(const float* __restrict__ q, const KV* __restrict__ k,
                                         float* __restrict__ pr, double* red, float* qs,
                                         float* sc, int i, int h, ATT_DIMS,
                                         const float* knew = nullptr, int jnew = -1) {
    int kh = h / max(nh / nkv, 1);
    int end = last_key(i, kend, lookahead) + 1;
    if (q) {
        for (int d = threadIdx.x; d < D; d += ATT_THREADS)
            qs[d] = q[((i64)(i - qbase) * nh + h) * D + d];
        __syncthreads();
    }
    float scale = (float)(1.0 / sqrt((double)D));
    // one warp per key: lanes stride over d (coalesced reads of the key row), then a fixed
    // xor-butterfly sums the lanes (every lane ends with the same bits; lane 0 writes)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    constexpr int nw = ATT_THREADS / 32;
    int j = kfirst + warp;
    if (D <= ATT_ROW_MAXD) {
        // ATT_ROW_KEYS keys of this warp at a time (those before `end`), all their values
        // loaded before any is multiplied (each load waits on memory, the sums on nothing but
        // their own terms)
        for (; j < end; j += ATT_ROW_KEYS * nw) {
            float kv[ATT_ROW_KEYS][ATT_ROW_MAXD / 32];
#pragma unroll
            for (int u = 0; u < ATT_ROW_KEYS; ++u) {
                int ju = j + u * nw;
                i64 kr = ((i64)ju * nkv + kh) * D;
#pragma unroll
                for (int c = 0; c < ATT_ROW_MAXD / 32; ++c)
                    kv[u][c] = ju < end && lane + 32 * c < D
                                   ? (ju == jnew ? knew[lane + 32 * c] : kv_ld(k, kr + lane + 32 * c))
                                   : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < ATT_ROW_KEYS; ++u) {
                float s = 0.0f;
#pragma unroll
                for (int c = 0; c < ATT_ROW_MAXD / 32; ++c)
                    if (lane + 32 * c < D) s = fmaf(qs[lane + 32 * c], kv[u][c], s);
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
                if (lane == 0 && j + u * nw < end) sc[j + u * nw] = s * scale;
            }
        }
    }
    for (; j < end; j += nw) {
        i64 kr = ((i64)j * nkv + kh) * D;
        float s = 0.0f;
        for (int d = lane; d < D; d += 32)
            s = fmaf(qs[d], j == jnew ? knew[d] : kv_ld(k, kr + d), s);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) sc[j] = s * scale;
    }
    __syncthreads();
    // max over the visible keys (NaN propagates: a NaN score makes the row NaN, as on the CPU)
    float m = -INFINITY;
    for (int j = kfirst + threadIdx.x; j < end; j += ATT_THREADS) m = fmaxf(m, sc[j]);
    red[threadIdx.x] = (double)m;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmax(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    double mx = red[0];
    __syncthreads();
    double part = 0.0;
    for (int j = kfirst + threadIdx.x; j < end; j += ATT_THREADS)
        part += exp((double)sc[j] - mx);
    red[threadIdx.x] = part;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    double z = red[0];
    for (int j = threadIdx.x; j < T; j += ATT_THREADS) {
        bool seen = kfirst <= j && j < end;
        float p = seen ? (float)(exp((double)sc[j] - mx) / z) : 0.0f;
        pr[j] = p;
        if (seen) sc[j] = p;
    }
    __syncthreads();
}

// ctx row of query i, head h: sum over its visible keys, ascending, of p[j] * v[j, kh, :].
// (vnew, jnew: as attn_row's knew, for the values)
template <typename KV>
__device__ __forceinline__ void attn_ctx_row(const float* p, const KV* __restrict__ v,
                                             float* __restrict__ ctx, int i, int h, ATT_DIMS,
                                             const float* vnew = nullptr, int jnew = -1) {
    int kh = h / max(nh / nkv, 1);
    int end = last_key(i, kend, lookahead) + 1;
    for (int d = threadIdx.x; d < D; d += ATT_THREADS) {
        float acc = 0.0f;
        // ATT_CTX_KEYS values in flight (those before `end`) before they are added, in key order
        for (int j = kfirst; j < end; j += ATT_CTX_KEYS) {
            float vv[ATT_CTX_KEYS];
#pragma unroll
            for (int u = 0; u < ATT_CTX_KEYS; ++u)
                vv[u] = j + u < end ? (j + u == jnew ? vnew[d]
                                                     : kv_ld(v, ((i64)(j + u) * nkv + kh) * D + d))
                                    : 0.0f;
#pragma unroll
            for (int u = 0; u < ATT_CTX_KEYS; ++u)
                if (j + u < end) acc = fmaf(p[j + u], vv[u], acc);
        }
        ctx[(i64)(i - qbase) * nh * D + (i64)h * D + d] = acc;
    }
}

// probs of the block's queries. grid (QN, nh), block ATT_THREADS, dynamic shared:
// ATT_THREADS doubles + (D + kend) floats.
template <typename KV>
__device__ __forceinline__ void attn_probs_t(const float* __restrict__ q,
                                             const KV* __restrict__ k, float* __restrict__ probs,
                                             ATT_DIMS) {
    extern __shared__ double att_sh[];
    float* qs = (float*)(att_sh + ATT_THREADS);
    int h = blockIdx.y;
    float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    attn_row(q, k, pr, att_sh, qs, qs + D, q0 + blockIdx.x, h, ATT_PASS);
}

// ctx of the block's queries from probs as attn_probs (or attn_softmax_rows) wrote them.
// grid (QN, nh), block ATT_THREADS.
template <typename KV>
__device__ __forceinline__ void attn_ctx_t(const float* __restrict__ probs,
                                           const KV* __restrict__ v, float* __restrict__ ctx,
                                           ATT_DIMS) {
    int h = blockIdx.y;
    const float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    attn_ctx_row(pr, v, ctx, q0 + blockIdx.x, h, ATT_PASS);
}

// attn_probs and attn_ctx in one launch, the probabilities handed over in shared memory (the
// same f32 values attn_ctx would read back): for steps of few queries (decode steps), where
// the launches, not the work, are the cost. Same grid and shared memory as attn_probs.
// With posp set (a decode step replayed from a CUDA graph), the one query's position p comes
// from *posp: q0 = qbase = p, kend = p + 1 (the shared memory is sized for the longest).
template <typename KV>
__device__ __forceinline__ void attn_fused_t(const float* __restrict__ q,
                                             const KV* __restrict__ k, const KV* __restrict__ v,
                                             float* __restrict__ probs, float* __restrict__ ctx,
                                             const int* __restrict__ posp, ATT_DIMS) {
    if (posp) {
        q0 = qbase = *posp;
        kend = q0 + 1;
    }
    extern __shared__ double att_sh[];
    float* qs = (float*)(att_sh + ATT_THREADS);
    float* sc = qs + D;
    int i = q0 + blockIdx.x, h = blockIdx.y;
    float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    attn_row(q, k, pr, att_sh, qs, sc, i, h, ATT_PASS);
    attn_ctx_row(sc, v, ctx, i, h, ATT_PASS);
}

// One value into the cache: as it is for an f32 cache, rounded to the nearest half (ties to
// even) for an f16 one.
__device__ __forceinline__ void kv_put(float* p, i64 i, float v) { p[i] = v; }
__device__ __forceinline__ void kv_put(u16* p, i64 i, float v) { p[i] = f2h(v); }

// The step's K and V rows [rows, row] into the cache at slots slot0 .. (slot0 < 0 under the
// planted kv_slot_off_by_one at position 0: that row is dropped; slot0 read from *slotp when
// set, for a decode step replayed from a CUDA graph).
template <typename KV>
__device__ __forceinline__ void kv_store_t(const float* __restrict__ k,
                                           const float* __restrict__ v, KV* __restrict__ kc,
                                           KV* __restrict__ vc, int rows, int row, int slot0,
                                           const int* __restrict__ slotp) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * row) return;
    i64 slot = (slotp ? *slotp : slot0) + i / row;
    if (slot < 0) return;
    i64 at = slot * row + i % row;
    kv_put(kc, at, k[i]);
    kv_put(vc, at, v[i]);
}

// q_norm, k_norm, q_rope, k_rope and the cache write of a step in one launch (what a decode
// step otherwise does in five, each a few microseconds of launch for a few kilobytes of work).
// Block (h, r): head h of row r, q heads first (h < nh), then k heads; RED_THREADS threads.
// Each part is the separate kernel's arithmetic on the same values in the same order
// (rms_norm's block_sum tree over RED_THREADS threads; rope's f64 rotation of the rounded
// normalized values; kv_store's slots), so the outputs equal theirs bit for bit: qn/kn (when
// the norm weights qg/kg are set; else the heads go to RoPE as they are), qr/kr, and, when kc is
// set, the k head's rotated values and its v_proj row in cache slot (slotp ? *slotp : slot0) +
// r (nothing below slot 0). Heads up to QK_MAXD values.
#define QK_MAXD 512
static_assert(RED_THREADS == ATT_THREADS, "attn_decode_qk norms its heads with its own threads");

// One head x [D] of the step's row at position pos: normalized into yn (when g; else taken as
// it is) and rotated into yr (yr and yn may be null: not written), the rotated values also
// into `rot` (shared, may be null) and, when kc is set, into the cache at kc + at. `hv` is
// QK_MAXD floats and `red` RED_THREADS / 32 doubles of shared memory; called by RED_THREADS
// threads, which it leaves after a barrier.
template <typename KV>
__device__ __forceinline__ void qk_head(const float* __restrict__ x, const float* __restrict__ g,
                                        float* __restrict__ yn, float* __restrict__ yr,
                                        float* hv, float* rot, double* red,
                                        const double2* __restrict__ tab, int pos, int D,
                                        float eps, int adjacent, KV* __restrict__ kc, i64 at) {
    int tid = threadIdx.x;
    if (g) {
        double ss = 0.0;
        for (int i = tid; i < D; i += RED_THREADS) ss += (double)x[i] * (double)x[i];
        ss = block_sum(ss, red);
        double inv = 1.0 / sqrt(ss / (double)D + (double)eps);
        for (int i = tid; i < D; i += RED_THREADS) {
            float y = (float)((double)x[i] * inv * (double)g[i]);
            if (yn) yn[i] = y;
            hv[i] = y;
        }
    } else {
        for (int i = tid; i < D; i += RED_THREADS) hv[i] = x[i];
    }
    __syncthreads();
    int half = D / 2;
    for (int j = tid; j < half; j += RED_THREADS) {
        double2 cs = tab[(i64)pos * half + j];
        double c = cs.x, sn = cs.y;
        int i1 = adjacent ? 2 * j : j, i2 = adjacent ? 2 * j + 1 : j + half;
        double x1 = hv[i1], x2 = hv[i2];
        float y1 = (float)(x1 * c - x2 * sn), y2 = (float)(x2 * c + x1 * sn);
        if (yr) {
            yr[i1] = y1;
            yr[i2] = y2;
        }
        if (rot) {
            rot[i1] = y1;
            rot[i2] = y2;
        }
        if (kc) {
            kv_put(kc, at + i1, y1);
            kv_put(kc, at + i2, y2);
        }
    }
    __syncthreads();
}

template <typename KV>
__device__ __forceinline__ void qk_rope_store_t(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ qg, const float* __restrict__ kg, float* __restrict__ qn,
    float* __restrict__ kn, float* __restrict__ qr, float* __restrict__ kr,
    const double2* __restrict__ tab, int nh, int nkv, int D, float eps, int adjacent, int pos0,
    const int* __restrict__ posp, KV* __restrict__ kc, KV* __restrict__ vc, int slot0) {
    __shared__ double red[RED_THREADS / 32];
    __shared__ float hv[QK_MAXD];
    int hi = blockIdx.x, r = blockIdx.y, tid = threadIdx.x;
    bool isq = hi < nh;
    int h = isq ? hi : hi - nh, heads = isq ? nh : nkv;
    i64 base = ((i64)r * heads + h) * D;
    int pos = (posp ? *posp : pos0) + r;
    i64 slot = (posp ? *posp : slot0) + r;
    bool store = !isq && kc && slot >= 0;
    i64 at = slot * nkv * D + (i64)h * D;
    qk_head<KV>((isq ? q : k) + base, isq ? qg : kg, (isq ? qn : kn) + base, (isq ? qr : kr) + base,
                hv, nullptr, red, tab, pos, D, eps, adjacent, store ? kc : nullptr, at);
    if (store)
        for (int i = tid; i < D; i += RED_THREADS) kv_put(vc, at + i, v[(i64)r * nkv * D + (i64)h * D + i]);
}

// A decode step's q/k norms, RoPE, cache write and attention in one launch: qk_rope_store and
// attn_fused, bit for bit (for one query, with a cache and no cache fault; the host checks).
// Block h (grid (1, nh)) normalizes and rotates its q head (writing qn/qr) straight into the
// query's shared row, and the newest k head of its kv group kh (the group's first q head
// writes kn/kr and the cache slot of k and v, as qk_rope_store's k blocks do); its scores and
// context take that key and v_proj's row, as the cache gives them back, from shared memory
// instead of the slot another block of the group writes in this launch. The heads' arithmetic
// is qk_head's (the same sums of squares per thread, block_sum's tree, quotient, products and
// rotation), but every value the block reads is requested in one round before any is used,
// and the two norms share their barriers: the launch's part before the scores is one memory
// round trip instead of seven (q, q's gamma, the angles, k, k's gamma, the angles, v). Same
// shared memory as attn_fused, plus 3 QK_MAXD floats. Heads up to QK_MAXD values.
#define QK_PER (QK_MAXD / ATT_THREADS)
template <typename KV>
__device__ __forceinline__ void attn_decode_qk_t(
    const float* __restrict__ qp, const float* __restrict__ kp, const float* __restrict__ vp,
    const float* __restrict__ qg, const float* __restrict__ kg, float* __restrict__ qn,
    float* __restrict__ kn, float* __restrict__ qr, float* __restrict__ kr,
    const double2* __restrict__ tab, float eps, int adjacent, KV* __restrict__ kc,
    KV* __restrict__ vc, float* __restrict__ probs, float* __restrict__ ctx,
    const int* __restrict__ posp, ATT_DIMS) {
    if (posp) {
        q0 = qbase = *posp;
        kend = q0 + 1;
    }
    extern __shared__ double att_sh[];
    __shared__ double red[2 * ATT_THREADS / 32];
    __shared__ float qh[QK_MAXD], knew[QK_MAXD], vnew[QK_MAXD];
    float* qs = (float*)(att_sh + ATT_THREADS);
    float* sc = qs + D;
    int tid = threadIdx.x, h = blockIdx.y, pos = q0, group = max(nh / nkv, 1), kh = h / group;
    bool lead = h % group == 0;
    i64 qb = (i64)h * D, kb = (i64)kh * D, at = (i64)pos * nkv * D + kb;
    int half = D / 2;
    // every value this block reads before its scores, in one round
    float xq[QK_PER], xk[QK_PER], gq[QK_PER], gk[QK_PER], xv[QK_PER];
    double2 cs[QK_PER / 2];
#pragma unroll
    for (int m = 0; m < QK_PER; ++m) {
        int i = tid + ATT_THREADS * m;
        bool in = i < D;
        xq[m] = in ? qp[qb + i] : 0.0f;
        xk[m] = in ? kp[kb + i] : 0.0f;
        xv[m] = in ? vp[kb + i] : 0.0f;
        gq[m] = in && qg ? qg[i] : 0.0f;
        gk[m] = in && kg ? kg[i] : 0.0f;
    }
#pragma unroll
    for (int m = 0; m < QK_PER / 2; ++m) {
        int j = tid + ATT_THREADS * m;
        cs[m] = j < half ? tab[(i64)pos * half + j] : make_double2(0.0, 0.0);
    }
    // the norms (qk_head's sums, in its order), both through one pair of barriers
    double sq = 0.0, sk = 0.0;
#pragma unroll
    for (int m = 0; m < QK_PER; ++m) {
        sq += (double)xq[m] * (double)xq[m];
        sk += (double)xk[m] * (double)xk[m];
    }
    if (qg || kg) block_sum2(&sq, &sk, red);
    double iq = qg ? 1.0 / sqrt(sq / (double)D + (double)eps) : 0.0;
    double ik = kg ? 1.0 / sqrt(sk / (double)D + (double)eps) : 0.0;
#pragma unroll
    for (int m = 0; m < QK_PER; ++m) {
        int i = tid + ATT_THREADS * m;
        if (i < D) {
            float yq = qg ? (float)((double)xq[m] * iq * (double)gq[m]) : xq[m];
            float yk = kg ? (float)((double)xk[m] * ik * (double)gk[m]) : xk[m];
            if (qg) qn[qb + i] = yq;
            if (kg && lead) kn[kb + i] = yk;
            qh[i] = yq;
            knew[i] = yk;
            if (lead) kv_put(vc, at + i, xv[m]);
            vnew[i] = kv_round(vc, xv[m]);
        }
    }
    __syncthreads();
    // RoPE of both heads (qk_head's rotation): q into the query's row, k into the cache
    // (the group's first block) and, as the cache gives it back, into knew
    float rk[2 * (QK_PER / 2)];
    int i1s[QK_PER / 2], i2s[QK_PER / 2];
#pragma unroll
    for (int m = 0; m < QK_PER / 2; ++m) {
        int j = tid + ATT_THREADS * m;
        int i1 = adjacent ? 2 * j : j, i2 = adjacent ? 2 * j + 1 : j + half;
        i1s[m] = i1;
        i2s[m] = i2;
        if (j < half) {
            double c = cs[m].x, sn = cs[m].y;
            double a1 = qh[i1], a2 = qh[i2];
            float y1 = (float)(a1 * c - a2 * sn), y2 = (float)(a2 * c + a1 * sn);
            qr[qb + i1] = y1;
            qr[qb + i2] = y2;
            qs[i1] = y1;
            qs[i2] = y2;
            double b1 = knew[i1], b2 = knew[i2];
            float z1 = (float)(b1 * c - b2 * sn), z2 = (float)(b2 * c + b1 * sn);
            if (lead) {
                kr[kb + i1] = z1;
                kr[kb + i2] = z2;
                kv_put(kc, at + i1, z1);
                kv_put(kc, at + i2, z2);
            }
            rk[2 * m] = z1;
            rk[2 * m + 1] = z2;
        }
    }
    __syncthreads();  // every thread has read knew's normalized values
#pragma unroll
    for (int m = 0; m < QK_PER / 2; ++m) {
        if (tid + ATT_THREADS * m < half) {
            knew[i1s[m]] = kv_round(kc, rk[2 * m]);
            knew[i2s[m]] = kv_round(kc, rk[2 * m + 1]);
        }
    }
    __syncthreads();
    float* pr = probs + (i64)h * QN * T;
    attn_row<KV>(nullptr, kc, pr, att_sh, qs, sc, pos, h, ATT_PASS, knew, pos);
    attn_ctx_row<KV>(sc, vc, ctx, pos, h, ATT_PASS, vnew, pos);
}

// Before pdl_wait() in attn_decode_qk: the cached keys and values the step's attention reads
// (positions kfirst .. p - 1 of the block's kv head, written by earlier steps), towards L2, a
// share of them per block of the head's group. By the time a decode step's attention starts,
// the weights streamed since the last step have evicted them, and its scores and context would
// otherwise each wait on DRAM after the wait (H200 timeline, the whole 30B-A3B shape: the
// launch's share of a step 8.44 -> 7.95 us a layer; loading them ahead into registers instead
// had cost 5 us). The earlier steps' writes are complete: this
// launch starts only once the kernel before it is past its own pdl_wait, so every kernel
// before that one, every earlier step's included, has finished. p from *posp under a graph
// (the host writes it before the replay), else q0. Also the RoPE angles of p (block 0).
template <typename KV>
__device__ __forceinline__ void attn_cache_prefetch(const KV* kc, const KV* vc,
                                                    const double2* tab, const int* posp, int q0,
                                                    int kfirst, int nh, int nkv, int D) {
#if defined(__CUDA_ARCH__)
    if (!kc || !vc) return;
    int pos = posp ? *posp : q0;
    if (blockIdx.y == 0 && threadIdx.x * 128 < D / 2 * sizeof(double2))
        prefetch_l2_line((const char*)(tab + (i64)pos * (D / 2)) + 128 * threadIdx.x);
    int group = max(nh / nkv, 1), kh = blockIdx.y / group, part = blockIdx.y % group;
    int lines = (int)((D * sizeof(KV) + 127) / 128), per = 2 * lines;
    int first = kfirst + part, n = pos > first ? (pos - first + group - 1) / group : 0;
    for (int t = threadIdx.x; t < n * per; t += blockDim.x) {
        int j = first + group * (t / per), r = t % per;
        const KV* plane = r < lines ? kc : vc;
        const char* row = (const char*)(plane + ((i64)j * nkv + kh) * D);
        prefetch_l2_line(row + 128 * (r % lines));
    }
#endif
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
template <typename S>
__device__ __forceinline__ void att_load_t(float* __restrict__ v, const S* __restrict__ src,
                                           i64 row_stride, int nr, int c0, int nc) {
    int r = threadIdx.x >> 2, p = threadIdx.x & 3;
    const S* row = src + (i64)r * row_stride;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        int c = 8 * p + j;
        v[j] = (r < nr && c0 + c < nc) ? kv_ld(row, c0 + c) : 0.0f;
    }
}

__device__ __forceinline__ void att_store_t(float* __restrict__ S, const float* __restrict__ v) {
    int r = threadIdx.x >> 2, p = threadIdx.x & 3;
#pragma unroll
    for (int j = 0; j < 8; ++j) S[(8 * p + j) * (ATT_TILE + 4) + att_swz(r, 8 * p + j)] = v[j];
}

// probs[h, i, j] = (q_i . k_j) * scale for the visible keys of query tile blockIdx.x and key
// tile blockIdx.y (the masked entries are written by attn_softmax_rows). grid (ceil(QN / 64),
// ceil(kend / 64), nh), block 256; tiles wholly outside the visible keys exit at once.
template <typename KV>
__device__ __forceinline__ void attn_tile_scores_t(const float* __restrict__ q,
                                                   const KV* __restrict__ k,
                                                   float* __restrict__ probs, ATT_DIMS) {
    __shared__ __align__(16) float Qs[ATT_CHUNK * (ATT_TILE + 4)];
    __shared__ __align__(16) float Ks[ATT_CHUNK * (ATT_TILE + 4)];
    int i0 = q0 + blockIdx.x * ATT_TILE, j0 = blockIdx.y * ATT_TILE, h = blockIdx.z;
    int qend = q0 + QN;
    int qn = min(ATT_TILE, qend - i0);
    // uniform, before any barrier
    if (j0 > last_key(i0 + qn - 1, kend, lookahead) || j0 + ATT_TILE <= kfirst) return;
    int kn = min(ATT_TILE, kend - j0);
    int kh = h / max(nh / nkv, 1);
    const float* qsrc = q + ((i64)(i0 - qbase) * nh + h) * D;
    const KV* ksrc = k + ((i64)j0 * nkv + kh) * D;
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
        int last = last_key(i, kend, lookahead);
        float* pr = probs + ((i64)h * QN + (i - q0)) * T;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            int j = j0 + 4 * tk + b;
            if (kfirst <= j && j <= last) pr[j] = acc[a][b] * scale;
        }
    }
}

// In place over probs: row (i, h) holds the scores of keys kfirst ..= last(i); it becomes
// their softmax (max-subtracted, f64, rounded once) and exact zeros elsewhere. grid (QN, nh),
// block 128.
extern "C" __global__ void __launch_bounds__(ATT_THREADS)
    attn_softmax_rows(float* __restrict__ probs, int T, int lookahead, int q0, int QN,
                      int kfirst, int kend) {
    pdl_wait();
    __shared__ double red[ATT_THREADS / 32];
    int i = q0 + blockIdx.x, h = blockIdx.y;
    int end = last_key(i, kend, lookahead) + 1;
    float* pr = probs + ((i64)h * QN + blockIdx.x) * T;
    // max over the visible keys (a NaN score is dropped here but makes the sum, and so the
    // row, NaN, as on the CPU); by warp butterflies, then over the warps
    float m = -INFINITY;
    for (int j = kfirst + threadIdx.x; j < end; j += ATT_THREADS) m = fmaxf(m, pr[j]);
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
        int j = kfirst + threadIdx.x + m * ATT_THREADS;
        kept[m] = j < end ? exp((double)pr[j] - mx) : 0.0;
        if (j < end) part += kept[m];
    }
    for (int j = kfirst + threadIdx.x + ATT_SM_KEEP * ATT_THREADS; j < end; j += ATT_THREADS)
        part += exp((double)pr[j] - mx);
    double z = block_sum(part, red);  // ops.cu: fixed order
#pragma unroll
    for (int m = 0; m < ATT_SM_KEEP; ++m) {
        int j = kfirst + threadIdx.x + m * ATT_THREADS;
        if (j < end) pr[j] = (float)(kept[m] / z);
    }
    for (int j = kfirst + threadIdx.x + ATT_SM_KEEP * ATT_THREADS; j < end; j += ATT_THREADS)
        pr[j] = (float)(exp((double)pr[j] - mx) / z);
    // the masked entries: before the first visible key and past the last
    for (int j = threadIdx.x; j < T; j += ATT_THREADS) {
        if (j < kfirst || j >= end) pr[j] = 0.0f;
    }
}

// ctx[i, h*D + d] = sum_{kfirst <= j <= last(i)} probs[h, i, j] * v[j, kh, d], keys ascending, for the
// 64 queries of tile blockIdx.x. grid (ceil(QN / 64), nh), block 256. Thread (tq, td) owns
// queries i0 + 4 tq + a and outputs d = 4 td + c and 64 + 4 td + c.
template <typename KV>
__device__ __forceinline__ void attn_ctx_tiled_t(const float* __restrict__ probs,
                                                 const KV* __restrict__ v,
                                                 float* __restrict__ ctx, ATT_DIMS) {
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
    int first_last = last_key(i0, kend, lookahead);
    int tile_last = last_key(i0 + qn - 1, kend, lookahead);
    int my_last[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        int i = i0 + 4 * tq + a;
        my_last[a] = i < qend ? last_key(i, kend, lookahead) : -1;
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
            vv[m] = (j0 + r < kend && d < D) ? kv_ld(v, ((i64)(j0 + r) * nkv + kh) * D + d) : 0.0f;
        }
    };
    // keys from the first visible one (chunks of 32 from there; the sum is in key order
    // whatever the chunking)
    load(kfirst);
    for (int j0 = kfirst; j0 <= tile_last; j0 += ATT_CHUNK) {
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
        float* out = ctx + (i64)(i - qbase) * nh * D + (i64)h * D;
#pragma unroll
        for (int c = 0; c < 8; ++c) {
            int d = c < 4 ? 4 * td + c : 60 + 4 * td + c;
            if (d < D) out[d] = acc[a][c];
        }
    }
}

// The kernels, for an f32 cache (and the full forward's own K/V) and for an f16 cache.
#define ATTENTION_KERNELS(SUF, KV)                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                   \
        attn_probs##SUF(const float* __restrict__ q, const KV* __restrict__ k,                  \
                        float* __restrict__ probs, ATT_DIMS) {                                  \
        pdl_wait();                                                                             \
        attn_probs_t<KV>(q, k, probs, ATT_PASS);                                                \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                   \
        attn_ctx##SUF(const float* __restrict__ probs, const KV* __restrict__ v,                \
                      float* __restrict__ ctx, ATT_DIMS) {                                      \
        pdl_wait();                                                                             \
        attn_ctx_t<KV>(probs, v, ctx, ATT_PASS);                                                \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                   \
        attn_fused##SUF(const float* __restrict__ q, const KV* __restrict__ k,                  \
                        const KV* __restrict__ v, float* __restrict__ probs,                    \
                        float* __restrict__ ctx, const int* __restrict__ posp, ATT_DIMS) {      \
        pdl_wait();                                                                             \
        attn_fused_t<KV>(q, k, v, probs, ctx, posp, ATT_PASS);                                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS)                              \
        attn_tile_scores##SUF(const float* __restrict__ q, const KV* __restrict__ k,            \
                              float* __restrict__ probs, ATT_DIMS) {                            \
        pdl_wait();                                                                             \
        attn_tile_scores_t<KV>(q, k, probs, ATT_PASS);                                          \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_TILE_THREADS, 2)                           \
        attn_ctx_tiled##SUF(const float* __restrict__ probs, const KV* __restrict__ v,          \
                            float* __restrict__ ctx, ATT_DIMS) {                                \
        pdl_wait();                                                                             \
        attn_ctx_tiled_t<KV>(probs, v, ctx, ATT_PASS);                                          \
    }                                                                                           \
    extern "C" __global__ void kv_store##SUF(const float* __restrict__ k,                       \
                                             const float* __restrict__ v, KV* __restrict__ kc,  \
                                             KV* __restrict__ vc, int rows, int row,            \
                                             int slot0, const int* __restrict__ slotp) {        \
        pdl_wait();                                                                             \
        kv_store_t<KV>(k, v, kc, vc, rows, row, slot0, slotp);                                  \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attn_decode_qk##SUF(              \
        const float* q, const float* k, const float* v, const float* qg, const float* kg,       \
        float* qn, float* kn, float* qr, float* kr, const double2* tab, float eps, int adjacent, \
        KV* kc, KV* vc, float* probs, float* ctx, const int* posp, ATT_DIMS) {                  \
        spread_prefetch(qg, 4LL * D);                                                           \
        spread_prefetch(kg, 4LL * D);                                                           \
        attn_cache_prefetch(kc, vc, tab, posp, q0, kfirst, nh, nkv, D);                         \
        pdl_wait();                                                                             \
        attn_decode_qk_t<KV>(q, k, v, qg, kg, qn, kn, qr, kr, tab, eps, adjacent, kc, vc, probs, \
                             ctx, posp, ATT_PASS);                                              \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(RED_THREADS) qk_rope_store##SUF(               \
        const float* q, const float* k, const float* v, const float* qg, const float* kg,       \
        float* qn, float* kn, float* qr, float* kr, const double2* tab, int nh, int nkv, int D,  \
        float eps, int adjacent, int pos0, const int* posp, KV* kc, KV* vc, int slot0) {        \
        pdl_wait();                                                                             \
        qk_rope_store_t<KV>(q, k, v, qg, kg, qn, kn, qr, kr, tab, nh, nkv, D, eps, adjacent,    \
                            pos0, posp, kc, vc, slot0);                                         \
    }

ATTENTION_KERNELS(, float)
ATTENTION_KERNELS(_f16, u16)
