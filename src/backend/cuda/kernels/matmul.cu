// y[r, n] = sum_k x[r, k] * W[n, k], with W in its GGUF block format, decoded in the loop.
//
// One kernel serves the plain projections and the grouped expert matmuls. Block z is an expert
// (z = 0 and counts == NULL for a plain matmul over T rows); its rows are the `counts[z]`
// rows starting at `offsets[z]` of the grouped layout; `in_rows`, when set, maps each grouped
// row to the input row it reads (the token gather of expert dispatch), so all experts of a
// layer run in one launch over (feature tile, row tile, expert).
//
// Each block owns MM_BN output features x MM_BT rows. K is walked in chunks of MM_BK: the block
// decodes the chunk's MM_BN x MM_BK weights once into shared memory (a warp decodes 32
// consecutive values of one row, so loads coalesce and K-quant scales are shared) next to the
// chunk's MM_BT x MM_BK inputs, then each thread multiplies a 4 x 4 register tile (4 features
// x 4 rows) out of shared memory. Every weight is thus decoded once per 64 rows instead of once
// per row. Each output is accumulated by one thread, in k order, with FMA: no atomics, no
// reductions across threads, so runs are bitwise repeatable. Warps whose rows all lie past the
// tile's end (experts often get a few rows) only help decode.

#define MM_BN 64
#define MM_BT 64
#define MM_BK 32
#define MM_THREADS 256
// rows decoded / loaded per thread per chunk: (MM_BN * MM_BK) / MM_THREADS
#define MM_LD 8
// row pitch of the transposed tiles: a multiple of 4 keeps float4 reads aligned, the +4
// spreads the column-wise stores over the banks
#define MM_PITCH (MM_BN + 4)

template <int TY>
__device__ __forceinline__ void matmul_body(const u8* __restrict__ W, i64 row_bytes,
                                            i64 expert_bytes, const float* __restrict__ X,
                                            float* __restrict__ Y, int N, int K, int T,
                                            const int* __restrict__ counts,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ in_rows, int swap_a,
                                            int swap_b) {
    __shared__ __align__(16) float Ws[MM_BK][MM_PITCH];
    __shared__ __align__(16) float Xs[MM_BK][MM_PITCH];
    int e = blockIdx.z;
    int cnt = counts ? counts[e] : T;
    int off = offsets ? offsets[e] : 0;
    int t0 = blockIdx.y * MM_BT;
    if (t0 >= cnt) return;  // uniform over the block, before any barrier
    int n0 = blockIdx.x * MM_BN;
    int nt = min(MM_BT, cnt - t0);
    // planted expert_swap: tokens routed to a run through b's weights, and the other way round
    int we = e == swap_a ? swap_b : (e == swap_b ? swap_a : e);
    const u8* mat = W + (i64)we * expert_bytes;
    int tid = threadIdx.x;
    // loading: thread tid fills column c = tid % 32 of tile rows tid / 32 + 8 i
    int c = tid & 31, r0 = tid >> 5;
    const u8* wrow[MM_LD];
    const float* xrow[MM_LD];
#pragma unroll
    for (int i = 0; i < MM_LD; ++i) {
        int r = r0 + 8 * i;
        int n = n0 + r;
        wrow[i] = n < N ? mat + (i64)n * row_bytes : (const u8*)0;
        int src = 0;
        if (r < nt) src = in_rows ? in_rows[off + t0 + r] : off + t0 + r;
        xrow[i] = r < nt ? X + (i64)src * K : (const float*)0;
    }
    // computing: thread (tn, tt) owns features n0 + 4 tn + i and rows t0 + 4 tt + j
    int tn = tid & 15, tt = tid >> 4;
    bool active = 4 * tt < nt;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    for (int k0 = 0; k0 < K; k0 += MM_BK) {
        int k = k0 + c;
        bool in_k = k < K;
#pragma unroll
        for (int i = 0; i < MM_LD; ++i) {
            int r = r0 + 8 * i;
            Ws[c][r] = (wrow[i] && in_k) ? dq<TY>(wrow[i], k) : 0.0f;
            Xs[c][r] = (xrow[i] && in_k) ? xrow[i][k] : 0.0f;
        }
        __syncthreads();
        if (active) {
#pragma unroll 8
            for (int kk = 0; kk < MM_BK; ++kk) {
                float4 w4 = *(const float4*)&Ws[kk][4 * tn];
                float4 x4 = *(const float4*)&Xs[kk][4 * tt];
                float wv[4] = {w4.x, w4.y, w4.z, w4.w};
                float xv[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(wv[i], xv[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
    if (!active) return;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        int t = 4 * tt + j;
        if (t >= nt) break;
        float* y = Y + (i64)(off + t0 + t) * N;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int n = n0 + 4 * tn + i;
            if (n < N) y[n] = acc[i][j];
        }
    }
}

// Row gather with decode: out[t, h] = W[ids[t], h] (embedding lookup; ids == NULL reads row 0,
// which decodes a 1-D tensor such as a norm weight).
template <int TY>
__device__ __forceinline__ void gather_body(const u8* __restrict__ W, i64 row_bytes,
                                            const int* __restrict__ ids, float* __restrict__ out,
                                            int rows, int H) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)rows * H) return;
    int t = (int)(i / H), h = (int)(i % H);
    int id = ids ? ids[t] : 0;
    out[i] = dq<TY>(W + (i64)id * row_bytes, h);
}

#define MATMUL_KERNELS(NAME, TY)                                                                \
    extern "C" __global__ void __launch_bounds__(MM_THREADS)                                 \
        matmul_##NAME(const u8* W, i64 row_bytes, i64 expert_bytes, const float* X, float* Y,  \
                      int N, int K, int T, const int* counts, const int* offsets,               \
                      const int* in_rows, int swap_a, int swap_b) {                             \
        matmul_body<TY>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets, in_rows,   \
                        swap_a, swap_b);                                                        \
    }                                                                                           \
    extern "C" __global__ void gather_##NAME(const u8* W, i64 row_bytes, const int* ids,        \
                                             float* out, int rows, int H) {                     \
        gather_body<TY>(W, row_bytes, ids, out, rows, H);                                       \
    }

MATMUL_KERNELS(f32, T_F32)
MATMUL_KERNELS(f16, T_F16)
MATMUL_KERNELS(bf16, T_BF16)
MATMUL_KERNELS(q8_0, T_Q8_0)
MATMUL_KERNELS(q4_0, T_Q4_0)
MATMUL_KERNELS(q4_1, T_Q4_1)
MATMUL_KERNELS(q5_0, T_Q5_0)
MATMUL_KERNELS(q5_1, T_Q5_1)
MATMUL_KERNELS(q4_k, T_Q4_K)
MATMUL_KERNELS(q5_k, T_Q5_K)
MATMUL_KERNELS(q6_k, T_Q6_K)
