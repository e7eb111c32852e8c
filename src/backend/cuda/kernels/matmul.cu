// y[r, n] = sum_k x[r, k] * W[n, k], with W in its GGUF block format, decoded in the loop.
//
// One kernel serves the plain projections and the grouped expert matmuls. Block z is an expert
// (z = 0 and counts == NULL for a plain matmul over T rows); its rows are the `counts[z]`
// rows starting at `offsets[z]` of the grouped layout; `in_rows`, when set, maps each grouped
// row to the input row it reads (the token gather of expert dispatch). Each warp owns one output
// feature n and a tile of MM_TT rows: lanes stride over k, decode the weight once per tile and
// multiply it into MM_TT accumulators, then a fixed xor-butterfly sums the lanes. No atomics:
// every output element is written by one lane in a fixed order, so runs are bitwise repeatable.

#define MM_WARPS 4
#define MM_TT 8

template <int TY>
__device__ __forceinline__ void matmul_body(const u8* __restrict__ W, i64 row_bytes,
                                            i64 expert_bytes, const float* __restrict__ X,
                                            float* __restrict__ Y, int N, int K, int T,
                                            const int* __restrict__ counts,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ in_rows, int swap_a,
                                            int swap_b) {
    int e = blockIdx.z;
    int cnt = counts ? counts[e] : T;
    int off = offsets ? offsets[e] : 0;
    int t0 = blockIdx.y * MM_TT;
    if (t0 >= cnt) return;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * MM_WARPS + warp;
    if (n >= N) return;
    // planted expert_swap: tokens routed to a run through b's weights, and the other way round
    int we = e == swap_a ? swap_b : (e == swap_b ? swap_a : e);
    const u8* row = W + (i64)we * expert_bytes + (i64)n * row_bytes;
    int nt = min(MM_TT, cnt - t0);
    const float* xr[MM_TT];
#pragma unroll
    for (int j = 0; j < MM_TT; ++j) {
        int r = off + t0 + min(j, nt - 1);  // rows past the tile's end repeat the last one
        int src = in_rows ? in_rows[r] : r;
        xr[j] = X + (i64)src * K;
    }
    float acc[MM_TT];
#pragma unroll
    for (int j = 0; j < MM_TT; ++j) acc[j] = 0.0f;
    for (int k = lane; k < K; k += 32) {
        float w = dq<TY>(row, k);
#pragma unroll
        for (int j = 0; j < MM_TT; ++j)
            if (j < nt) acc[j] = fmaf(w, xr[j][k], acc[j]);  // experts often get 1-2 rows
    }
#pragma unroll
    for (int j = 0; j < MM_TT; ++j) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
    }
#pragma unroll
    for (int j = 0; j < MM_TT; ++j) {
        if (lane == j && j < nt) Y[(i64)(off + t0 + j) * N + n] = acc[j];
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
    extern "C" __global__ void __launch_bounds__(MM_WARPS * 32)                                 \
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
