// y[r, n] = sum_k x[r, k] * W[n, k], with W in its GGUF block format, decoded in the loop.
//
// The same kernels serve the plain projections and the grouped expert matmuls. Block z is an expert
// (z = 0 and counts == NULL for a plain matmul over T rows); its rows are the `counts[z]`
// rows starting at `offsets[z]` of the grouped layout; `in_rows`, when set, maps each grouped
// row to the input row it reads (the token gather of expert dispatch), so all experts of a
// layer run in one launch. Weights are decoded 8 values at a time (Run8, common.cuh), and the
// raw words of the next chunk are loaded before the current chunk is multiplied, so memory
// latency hides behind arithmetic.
//
// Row tiles: block y takes the tiles t0 = BT y, BT (y + gridDim.y), ... below its matrix's row
// count (BT rows a tile). The host sizes grid y for the rows an expert expects (twice the average), not for
// the most it could get (all T rows): an expert past that loops, and the launch carries no
// thousands of blocks that find no rows and exit.
//
// A plain matmul with too few output tiles to fill the card is split along K instead (split-K):
// block z then sums k in [z * kspan, (z + 1) * kspan) into its own slice Y + z * T * N, and
// sum_splits adds the slices in z order. Without atomics, every sum has a fixed order, so runs
// are bitwise repeatable.
//
// matmul_<type>_<BT> (tiled, for many rows per matrix): each block owns BN output features x
// BT rows, BT in {16, 32, 64} chosen by the host from the rows a matrix is expected to get, and
// BN = 4096 / BT so that every block is 256 threads with a 4 x 4 register tile. K is walked in
// chunks of 32: the block decodes the chunk's BN x 32 weights once into shared memory next to
// the chunk's BT x 32 inputs, then each thread multiplies its tile out of shared memory, each
// output accumulated by one thread in k order with FMA.
//
// matmulv_<type> (few rows per matrix: decode-bound, as every expert is at short prompts):
// no shared memory and no barriers. Four adjacent lanes share one output feature, lane p
// decoding values 8p..8p+7 of every 32-chunk of the row straight into registers and
// multiplying them with up to 8 input rows at once (read through L1: all features of a block
// read the same rows); the four partial sums are then added by a fixed butterfly. Needs
// K % 8 == 0 (every block type has it).
//
// matmulw_<type> (one row per matrix: decode steps): the same with a whole warp per output
// feature, lane p decoding values 8p..8p+7 of every 256-chunk. At one row the work per feature
// is one pass over its weights; 32 lanes in flight per feature (instead of 4) put 8 times as
// many loads in flight, which a single row needs to stream the weights at the card's rate.

// The reductions of the norms (rms_norm and the q/k norms in ops.cu and attention.cu, and the
// matvecs here that fold a norm in): here, since every module holds this file.
#define RED_THREADS 128

// Sum of `v` over the block's first RED_THREADS threads, the same order every run: each warp
// by a fixed xor butterfly, then the first RED_THREADS / 32 warps' sums in warp order. All
// threads get the total. A larger block (the matvecs that fold RMSNorm in) passes v = 0 on its
// other threads, whose warps' sums go to red slots past the first RED_THREADS / 32 and are
// never read. `red` is blockDim.x / 32 doubles of shared memory.
__device__ __forceinline__ double block_sum(double v, double* red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double total = red[0];
#pragma unroll
    for (int w = 1; w < RED_THREADS / 32; ++w) total += red[w];
    __syncthreads();
    return total;
}

// block_sum of two values at once (each summed exactly as block_sum sums it), in one pair of
// barriers; `red` is 2 * blockDim.x / 32 doubles.
__device__ __forceinline__ void block_sum2(double* a, double* b, double* red) {
    double u = *a, v = *b;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        u += __shfl_xor_sync(0xffffffffu, u, o);
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    int nw = blockDim.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        red[threadIdx.x >> 5] = u;
        red[nw + (threadIdx.x >> 5)] = v;
    }
    __syncthreads();
    u = red[0];
    v = red[nw];
#pragma unroll
    for (int w = 1; w < RED_THREADS / 32; ++w) {
        u += red[w];
        v += red[nw + w];
    }
    __syncthreads();
    *a = u;
    *b = v;
}

#define MM_BK 32
#define MM_THREADS 256
// Blocks per multiprocessor the compiler must leave registers for (latency hiding needs a few).
#ifndef MM_MIN_BLOCKS
#define MM_MIN_BLOCKS 2
#endif
#ifndef MV_MIN_BLOCKS
#define MV_MIN_BLOCKS 4
#endif

// Shared-memory column of tile row r at chunk position k. The XOR (a multiple of 8, so float4
// groups stay whole) moves the 4 decoding lanes of one row, which write k = 8p.. at the same
// time, onto different banks.
__device__ __forceinline__ int mm_swz(int r, int k, int width) {
    return r ^ ((((k >> 3) & 3) << 3) & (width - 1));
}

// What one block of a matmul launch works on: matrix z (an expert, with counts; or K split z
// of a plain matmul), its rows [off + t0, off + t0 + nt), k in [kbeg, kend), output rows of
// its split's slice of Y.
struct MmBlock {
    int off, nt, kbeg, kend;
    const u8* mat;
    float* Y;
};

// The expert whose weights expert e's tokens go through: the planted expert_swap exchanges
// swap_a and swap_b (-1: none planted).
__device__ __forceinline__ int swapped_expert(int e, int swap_a, int swap_b) {
    return e == swap_a ? swap_b : (e == swap_b ? swap_a : e);
}

// The expert a block of a grouped launch serves: blockIdx.z; or, when the grid runs over the
// grouped slots instead (zmap: the expert of each slot; for launches with fewer slots than
// experts, as a decode step's k slots of 128 experts, where a grid over all experts would be
// mostly blocks that find no rows), the expert whose first slot is z, and -1 for its other
// slots (another block serves it).
__device__ __forceinline__ int mm_expert(const int* __restrict__ offsets,
                                         const int* __restrict__ zmap) {
    if (!zmap) return blockIdx.z;
    int e = zmap[blockIdx.z];
    return offsets[e] == (int)blockIdx.z ? e : -1;
}

// Rows of the block's matrix: T for a plain matmul, the expert's count for a grouped one (0
// for a block that serves no expert).
__device__ __forceinline__ int mm_count(const int* __restrict__ counts,
                                        const int* __restrict__ offsets,
                                        const int* __restrict__ zmap, int T) {
    if (!counts) return T;
    int e = mm_expert(offsets, zmap);
    return e < 0 ? 0 : counts[e];
}

__device__ __forceinline__ MmBlock mm_block(const u8* W, i64 expert_bytes, float* Y, int N, int K,
                                            int T, const int* counts, const int* offsets,
                                            int swap_a, int swap_b, int kspan, int t0, int bt,
                                            const int* zmap) {
    int e = counts ? mm_expert(offsets, zmap) : 0;
    int split = counts ? 0 : blockIdx.z;
    int cnt = counts ? counts[e] : T;
    MmBlock b;
    b.off = offsets ? offsets[e] : 0;
    b.nt = min(bt, cnt - t0);
    b.kbeg = split * kspan;
    b.kend = min(K, b.kbeg + kspan);
    b.Y = Y + (i64)split * T * N;
    // planted expert_swap: tokens routed to a run through b's weights, and the other way round
    int we = swapped_expert(e, swap_a, swap_b);
    b.mat = W + (i64)we * expert_bytes;
    return b;
}

// The input row of tile row r (the token gather of expert dispatch through in_rows), or null
// past the tile's rows.
__device__ __forceinline__ const float* mm_xrow(const float* X, int K, const int* in_rows,
                                                const MmBlock& b, int t0, int r) {
    if (r >= b.nt) return 0;
    int g = b.off + t0 + r;
    return X + (i64)(in_rows ? in_rows[g] : g) * K;
}

// Inputs kp .. kp + 7 of a row (zeros past kend, or for a null row); float4 loads when the
// rows start 16-byte aligned (kvec) and the 8 are whole.
__device__ __forceinline__ void mm_load_x8(const float* __restrict__ xrow, bool kvec, int kp,
                                           int kend, float* __restrict__ xv) {
    if (xrow && kvec && kp + 8 <= kend) {
        float4 a = *(const float4*)(xrow + kp), b = *(const float4*)(xrow + kp + 4);
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) xv[j] = (xrow && kp + j < kend) ? xrow[kp + j] : 0.0f;
    }
}

// Weights kp .. kp + 7 of feature n: the fetched run, or, for a run cut by the end of K or N
// (only float types with K % 8 != 0, and the last features), value by value with zeros past.
template <int TY>
__device__ __forceinline__ void mm_decode_run(const Run8<TY>& run, bool whole, const u8* mat,
                                              i64 row_bytes, int n, int N, int kp, int kend,
                                              float* __restrict__ v) {
    if (whole) {
        run.decode(v);
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j)
            v[j] = (n < N && kp + j < kend) ? dq<TY>(mat + (i64)n * row_bytes, kp + j) : 0.0f;
    }
}

template <int TY, int bt>
__device__ __forceinline__ void matmul_tile(const u8* __restrict__ W, i64 row_bytes,
                                            i64 expert_bytes, const float* __restrict__ X,
                                            float* __restrict__ Y, int N, int K, int T,
                                            const int* __restrict__ counts,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ in_rows, int swap_a,
                                            int swap_b, int kspan, int t0,
                                            const int* __restrict__ zmap) {
    // the tile shape is a template parameter: every shared-memory offset of the inner loop
    // is then a constant
    extern __shared__ __align__(16) float mm_smem[];
    constexpr int bn = 4096 / bt;
    constexpr int wp = bn + 4, xp = bt + 4;  // +4: float4-aligned rows on shifted banks
    float* Ws = mm_smem;           // [MM_BK][wp], transposed: Ws[k][feature]
    float* Xs = mm_smem + MM_BK * wp;  // [MM_BK][xp], Xs[k][row]
    MmBlock b = mm_block(W, expert_bytes, Y, N, K, T, counts, offsets, swap_a, swap_b, kspan, t0,
                         bt, zmap);
    int nt = b.nt, kbeg = b.kbeg, kend = b.kend, off = b.off;
    const u8* mat = b.mat;
    Y = b.Y;
    int n0 = blockIdx.x * bn;
    int tid = threadIdx.x;
    // loading: lane p = tid % 4 decodes values 8p..8p+7 of the chunk for features
    // lr + 64 i (i < bn / 64), and loads the same values of input row lr = tid / 4 (when < nt)
    int p = tid & 3, lr = tid >> 2;
    constexpr int nr = bn >> 6;
    const float* xrow = mm_xrow(X, K, in_rows, b, t0, lr);
    bool kvec = (K & 3) == 0 && ((unsigned long long)X & 15) == 0;
    // computing: thread (tn, tt) owns features n0 + 4 tn + i and rows t0 + 4 tt + j
    int tn = tid % (bn / 4), tt = tid / (bn / 4);
    bool active = 4 * tt < nt;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    }
    Run8<TY> run[nr];
    bool whole[nr];
    float xv[8];
    // global -> registers: the raw words of chunk k0
    auto fetch = [&](int k0) {
        int kp = k0 + 8 * p;
#pragma unroll
        for (int i = 0; i < nr; ++i) {
            int n = n0 + lr + 64 * i;
            whole[i] = n < N && kp + 8 <= kend;
            if (whole[i]) run[i].load(mat + (i64)n * row_bytes, kp);
        }
        if (lr < bt) mm_load_x8(xrow, kvec, kp, kend, xv);
    };
    // registers -> shared: decoded chunk k0
    auto stash = [&](int k0) {
        int kp = k0 + 8 * p;
#pragma unroll
        for (int i = 0; i < nr; ++i) {
            int r = lr + 64 * i;
            float v[8];
            mm_decode_run<TY>(run[i], whole[i], mat, row_bytes, n0 + r, N, kp, kend, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) Ws[(8 * p + j) * wp + mm_swz(r, 8 * p + j, bn)] = v[j];
        }
        if (lr < bt) {
#pragma unroll
            for (int j = 0; j < 8; ++j) Xs[(8 * p + j) * xp + mm_swz(lr, 8 * p + j, bt)] = xv[j];
        }
    };
    fetch(kbeg);
    stash(kbeg);
    __syncthreads();
    for (int k0 = kbeg; k0 < kend; k0 += MM_BK) {
        bool more = k0 + MM_BK < kend;
        if (more) fetch(k0 + MM_BK);
        if (active) {
#pragma unroll
            for (int kk = 0; kk < MM_BK; ++kk) {
                float4 w4 = *(const float4*)&Ws[kk * wp + mm_swz(4 * tn, kk, bn)];
                float4 x4 = *(const float4*)&Xs[kk * xp + mm_swz(4 * tt, kk, bt)];
                float wv[4] = {w4.x, w4.y, w4.z, w4.w};
                float xq[4] = {x4.x, x4.y, x4.z, x4.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(wv[i], xq[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
        if (more) {
            stash(k0 + MM_BK);
            __syncthreads();
        }
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

// matmult_<type>_<BN> (tall tiles, for full tiles of long prompts and for experts): 64 rows x
// BN features (64 or 128) per block of 2 BN threads, each thread 4 features x 8 rows (two
// groups of 4 rows, 32 apart). Per k step a warp reads three float4 (4 shared-memory
// wavefronts) for 32 FMA, where the 4 x 4 kernels read two (3 wavefronts) for 16 and are bound
// by shared-memory bandwidth (H100: L1/shared pipe 89% busy, FMA 38%). An expert has about 32
// rows at long prompts: in the 4 x 4 kernel's 64-row tile half the warps then wait at the
// barriers; here every warp has rows in the first group, and a warp skips its second group
// when it is past the expert's rows. ~127 registers: 16 warps a multiprocessor either way.
// H200, 30B-A3B shape at T = 512, against the 4 x 4 kernel's 64-row tiles: expert gate 0.73 ms
// a layer (0.85), q_proj 0.28 (0.38), lm_head 9.8 ms (13.1). An 8 x 8 tile a thread (64 x
// 128, no registers left for the prefetch) was slower than both on experts and between them
// on the rest; BN = 128 shares each input tile between twice the outputs, which pays where
// the matrix is wide enough to fill the card with such blocks (the host's choice).
#ifndef MT_MIN_BLOCKS
#define MT_MIN_BLOCKS 4
#endif

template <int TY, int BN>
__device__ __forceinline__ void matmul_tall_tile(const u8* __restrict__ W, i64 row_bytes,
                                                 i64 expert_bytes, const float* __restrict__ X,
                                                 float* __restrict__ Y, int N, int K, int T,
                                                 const int* __restrict__ counts,
                                                 const int* __restrict__ offsets,
                                                 const int* __restrict__ in_rows, int swap_a,
                                                 int swap_b, int kspan, int t0,
                                                 const int* __restrict__ zmap) {
    extern __shared__ __align__(16) float mm_smem[];
    constexpr int bt = 64, bn = BN;
    constexpr int lrows = BN / 2;     // loading rows: threads / 4
    constexpr int xrows = 128 / BN;   // input rows a loading thread stages
    constexpr int wp = bn + 4, xp = bt + 4;
    float* Ws = mm_smem;               // [MM_BK][wp], Ws[k][feature]
    float* Xs = mm_smem + MM_BK * wp;  // [MM_BK][xp], Xs[k][row]
    MmBlock b = mm_block(W, expert_bytes, Y, N, K, T, counts, offsets, swap_a, swap_b, kspan, t0,
                         bt, zmap);
    int nt = b.nt, kbeg = b.kbeg, kend = b.kend, off = b.off;
    const u8* mat = b.mat;
    Y = b.Y;
    int n0 = blockIdx.x * bn;
    int tid = threadIdx.x;
    // loading: lane p = tid % 4 decodes values 8p..8p+7 of the chunk for features lr and
    // lr + lrows, and loads the same values of input rows lr + lrows h (h < xrows, when < nt),
    // lr = tid / 4
    int p = tid & 3, lr = tid >> 2;
    const float* xrow[xrows];
#pragma unroll
    for (int h = 0; h < xrows; ++h) xrow[h] = mm_xrow(X, K, in_rows, b, t0, lr + lrows * h);
    // input rows that start 16-byte aligned take float4 loads
    bool kvec = (K & 3) == 0 && ((unsigned long long)X & 15) == 0;
    // computing: thread (tn, tt) owns features n0 + fo + 4 tn + i and rows 4 tt + j (group 0)
    // and 32 + 4 tt + j (group 1); a warp's two tt cover 8 consecutive rows of each group, the
    // warps past the first four the next 64 features (fo = 64)
    int tn = tid & 15, tt = (tid >> 4) & 7, fo = (tid >> 7) * 64;
    bool act0 = 8 * (tt >> 1) < nt, act1 = 32 + 8 * (tt >> 1) < nt;  // uniform over the warp
    float acc[2][4][4];
#pragma unroll
    for (int g = 0; g < 2; ++g) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[g][i][j] = 0.0f;
        }
    }
    Run8<TY> run[2];
    bool whole[2];
    float xv[xrows][8];
    // global -> registers: the raw words of chunk k0
    auto fetch = [&](int k0) {
        int kp = k0 + 8 * p;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int n = n0 + lr + lrows * i;
            whole[i] = n < N && kp + 8 <= kend;
            if (whole[i]) run[i].load(mat + (i64)n * row_bytes, kp);
        }
#pragma unroll
        for (int h = 0; h < xrows; ++h) mm_load_x8(xrow[h], kvec, kp, kend, xv[h]);
    };
    // registers -> shared: decoded chunk k0
    auto stash = [&](int k0) {
        int kp = k0 + 8 * p;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            int r = lr + lrows * i;
            float v[8];
            mm_decode_run<TY>(run[i], whole[i], mat, row_bytes, n0 + r, N, kp, kend, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) Ws[(8 * p + j) * wp + mm_swz(r, 8 * p + j, bn)] = v[j];
        }
#pragma unroll
        for (int h = 0; h < xrows; ++h) {
#pragma unroll
            for (int j = 0; j < 8; ++j)
                Xs[(8 * p + j) * xp + mm_swz(lr + lrows * h, 8 * p + j, bt)] = xv[h][j];
        }
    };
    fetch(kbeg);
    stash(kbeg);
    __syncthreads();
    for (int k0 = kbeg; k0 < kend; k0 += MM_BK) {
        bool more = k0 + MM_BK < kend;
        if (more) fetch(k0 + MM_BK);
        if (act1) {
#pragma unroll
            for (int kk = 0; kk < MM_BK; ++kk) {
                float4 w4 = *(const float4*)&Ws[kk * wp + mm_swz(fo + 4 * tn, kk, bn)];
                float4 xa = *(const float4*)&Xs[kk * xp + mm_swz(4 * tt, kk, bt)];
                float4 xb = *(const float4*)&Xs[kk * xp + mm_swz(32 + 4 * tt, kk, bt)];
                float wv[4] = {w4.x, w4.y, w4.z, w4.w};
                float xq[2][4] = {{xa.x, xa.y, xa.z, xa.w}, {xb.x, xb.y, xb.z, xb.w}};
#pragma unroll
                for (int g = 0; g < 2; ++g) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
#pragma unroll
                        for (int j = 0; j < 4; ++j)
                            acc[g][i][j] = fmaf(wv[i], xq[g][j], acc[g][i][j]);
                    }
                }
            }
        } else if (act0) {
#pragma unroll
            for (int kk = 0; kk < MM_BK; ++kk) {
                float4 w4 = *(const float4*)&Ws[kk * wp + mm_swz(fo + 4 * tn, kk, bn)];
                float4 xa = *(const float4*)&Xs[kk * xp + mm_swz(4 * tt, kk, bt)];
                float wv[4] = {w4.x, w4.y, w4.z, w4.w};
                float xq[4] = {xa.x, xa.y, xa.z, xa.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[0][i][j] = fmaf(wv[i], xq[j], acc[0][i][j]);
                }
            }
        }
        __syncthreads();
        if (more) {
            stash(k0 + MM_BK);
            __syncthreads();
        }
    }
#pragma unroll
    for (int g = 0; g < 2; ++g) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int t = 32 * g + 4 * tt + j;
            if (t >= nt) break;
            float* y = Y + (i64)(off + t0 + t) * N;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int n = n0 + fo + 4 * tn + i;
                if (n < N) y[n] = acc[g][i][j];
            }
        }
    }
}

// Input rows a matvec pass multiplies at once.
#define MV_ROWS 8

template <int TY, int LPF>
__device__ __forceinline__ void matvec_body(const u8* __restrict__ W, i64 row_bytes,
                                            i64 expert_bytes, const float* __restrict__ X,
                                            float* __restrict__ Y, int N, int K, int T,
                                            const int* __restrict__ counts,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ in_rows, int swap_a,
                                            int swap_b, int kspan,
                                            const int* __restrict__ zmap) {
    int cnt = mm_count(counts, offsets, zmap, T);
    if (cnt == 0) return;  // uniform over the block
    int e = counts ? mm_expert(offsets, zmap) : 0;
    int split = counts ? 0 : blockIdx.z;
    int off = offsets ? offsets[e] : 0;
    int we = swapped_expert(e, swap_a, swap_b);
    int kbeg = split * kspan, kend = min(K, kbeg + kspan);
    Y += (i64)split * T * N;
    // LPF lanes (4 or 32) per output feature
    int p = threadIdx.x & (LPF - 1);
    int n = blockIdx.x * (MM_THREADS / LPF) + threadIdx.x / LPF;
    // lanes past N keep going (decoding nothing) so that the shuffles see full warps
    bool valid = n < N;
    const u8* row = W + (i64)we * expert_bytes + (i64)(valid ? n : 0) * row_bytes;
    for (int t0 = 0; t0 < cnt; t0 += MV_ROWS) {
        int nt = min(MV_ROWS, cnt - t0);
        const float* xr[MV_ROWS];
#pragma unroll
        for (int j = 0; j < MV_ROWS; ++j) {
            int g = off + t0 + min(j, nt - 1);
            xr[j] = X + (i64)(in_rows ? in_rows[g] : g) * K;
        }
        float acc[MV_ROWS];
#pragma unroll
        for (int j = 0; j < MV_ROWS; ++j) acc[j] = 0.0f;
        // PF runs of 8 weights in flight per lane (4 for a warp per feature: one row gives a
        // lane nothing else to hide the load latency behind), consumed in k order
        constexpr int STEP = 8 * LPF, PF = LPF == 32 ? 4 : 1;
        int k0 = kbeg + 8 * p;
        Run8<TY> runs[PF];
#pragma unroll
        for (int i = 0; i < PF; ++i)
            if (valid && k0 + i * STEP < kend) runs[i].load(row, k0 + i * STEP);
        for (; k0 < kend; k0 += PF * STEP) {
#pragma unroll
            for (int i = 0; i < PF; ++i) {
                int kk = k0 + i * STEP;
                if (kk < kend) {
                    float w[8];
                    if (valid) {
                        runs[i].decode(w);
                    } else {
#pragma unroll
                        for (int q = 0; q < 8; ++q) w[q] = 0.0f;
                    }
                    // the run PF steps on is on its way while this one is multiplied
                    if (valid && kk + PF * STEP < kend) runs[i].load(row, kk + PF * STEP);
#pragma unroll
                    for (int j = 0; j < MV_ROWS; ++j) {
                        if (j < nt) {
                            float4 a = *(const float4*)(xr[j] + kk);
                            float4 b = *(const float4*)(xr[j] + kk + 4);
                            float s = acc[j];
                            s = fmaf(w[0], a.x, s);
                            s = fmaf(w[1], a.y, s);
                            s = fmaf(w[2], a.z, s);
                            s = fmaf(w[3], a.w, s);
                            s = fmaf(w[4], b.x, s);
                            s = fmaf(w[5], b.y, s);
                            s = fmaf(w[6], b.z, s);
                            s = fmaf(w[7], b.w, s);
                            acc[j] = s;
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int j = 0; j < MV_ROWS; ++j) {
            // a fixed butterfly over the feature's lanes ((a0 + a1) + (a2 + a3) for four): the
            // same bits on every lane
#pragma unroll
            for (int o = 1; o < LPF; o <<= 1) acc[j] += __shfl_xor_sync(0xffffffffu, acc[j], o);
        }
        if (valid && p == 0) {
#pragma unroll
            for (int j = 0; j < MV_ROWS; ++j)
                if (j < nt) Y[(i64)(off + t0 + j) * N + n] = acc[j];
        }
    }
}

// ---- matmulw: one row per matrix (decode steps) ----
//
// A warp per output feature, each lane streaming whole 16-byte pieces of the row: a decode
// step reads every weight once, so the kernel is a race to keep enough bytes in flight and to
// spend few instructions per weight. For Q4_K and Q6_K a group of 8 lanes takes one 256-value
// superblock (lane group g: superblocks g, g + 4, ... of the row), every lane 32 of its values;
// the rows' scales are applied once per group of values sharing them rather than per weight:
//   Q4_K: sum over a sub-block of (ds q - ms) x = ds * sum(q x) - ms * sum(x),
//   Q6_K: sum over a 16-value scale group of d sc (q - 32) x = d sc * sum((q - 32) x),
// with Q6_K's q - 32 made exactly from the bits of 2^23 + q (one byte permute, one add), and
// Q4_K's q as the subnormal its nibble is when masked in place, against an input staged scaled
// to match (q4k_pos: one mask a weight, no add). The
// results differ from matmulv's decode-then-FMA by that factoring's rounding alone (well
// within f32 accumulation error; the GPU tests hold every kernel to the same bound). The input
// row is staged in shared memory by the whole block while each lane's first weights are on
// their way (one DRAM round trip, not one per superblock; H200, 30B-A3B shape, event-timed: a
// decode step's expert gate and up took ~40 us each through matvec_body, which spilled at the
// 64-register cap, and take ~15 us together through gate_up below). F32 rows are read as
// float4. Other types, rows longer than MW_XMAX, and rows or inputs not aligned for these
// loads take the lane-per-8-values body (matvec_body<TY, 32>).

// 2^23 + byte i of w, as a float: the byte's value is then f - 2^23, exactly.
__device__ __forceinline__ float mw_byte_f(u32 w, int i) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7540u + i));
}

// Inputs staged in shared memory for the Q4_K and Q6_K paths: up to MW_XMAX values, with 4
// floats of padding after every 2^shift (64 for Q4_K, 128 for Q6_K), which puts the 16-byte
// reads of a group's 8 lanes on distinct banks.
#define MW_XMAX 4096
__device__ __forceinline__ int mw_pad(int i, int shift) { return i + ((i >> shift) << 2); }
template <int TY> struct MwShift {
    static constexpr int value = TY == T_Q6_K ? 7 : 6;
};

// Q4_K's staged input is scaled so that its dot needs no subtract. A nibble masked in place in
// its quant word, bits p .. p + 3 with p <= 16, read as a float is the subnormal q 2^(p - 149),
// exactly; x_j staged as x_j 2^(Q4K_SHIFT - p_j), p_j the bit position at which the dot finds
// the nibble that multiplies x_j (q4k_pos), makes each FMA's product q x_j 2^-85 exactly. Every
// partial sum is then the subtracting dot's times 2^-85 (the same bits while the sums stay
// normal, |sum| >= 2^-41; below that each FMA rounds to 2^-65 absolute), and the lane scales
// its sums back once: two instructions a weight (a mask, an FMA) instead of three. An input of
// 2^63 or more would overflow the scale: a block that stages one stages its input unscaled
// instead and takes the subtracting dot (`plain`, uniform over the block).
#define Q4K_SHIFT 64
// the bit position, in its masked word, of the nibble that multiplies input j of a row: low
// nibbles (j % 64 < 32) of bytes 0..3 at bits 0, 8, 16 of the word and 12 of the word >> 12; high
// nibbles at 4, 12 of the word and 8, 16 of the word >> 12 (MwPiece<T_Q4_K>::dot)
__device__ __forceinline__ int q4k_pos(int j) {
    return (((j & 32) ? 0x10080C04u : 0x0C100800u) >> (8 * (j & 3))) & 0xFF;
}
__device__ __forceinline__ float q4k_scale(int j) {
    return __int_as_float((127 + Q4K_SHIFT - q4k_pos(j)) << 23);
}
// finite and 2^63 or more in magnitude (infinities and NaN scale to themselves)
__device__ __forceinline__ bool q4k_big(float v) {
    float a = fabsf(v);
    return a >= 9223372036854775808.0f && a < INFINITY;
}

// Inputs i .. i + 3 of a row (i % 4 == 0) into the staging (below, with the sums of Q4_K).
template <int TY>
__device__ __forceinline__ bool mw_put4(float* xs, float* xsum, int i, float4 v, bool plain);

// The (scale, min) pairs j = 2c and 2c + 1 of a Q4_K superblock (scale_min_k4_w's values, as
// floats, exactly) from its 12 scale bytes as three words, without scale_min_k4_w's branches
// and per-value shifts: the 6-bit values of four sub-blocks at once as the bytes of one word
// (j < 4: bytes 0-3 and 4-7 masked; j >= 4: the low or high nibbles of bytes 8-11 with the top
// two bits of bytes 0-3 or 4-7 above them), then each pair's bytes as floats by one byte
// permute and an exact subtract (mw_byte_f's 2^23 + byte).
__device__ __forceinline__ void q4k_pair_scales(int c, u32 s0, u32 s1, u32 s2, float* sc0,
                                                float* m0, float* sc1, float* m1) {
    u32 scw = c < 2 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u));
    u32 mw = c < 2 ? (s1 & 0x3F3F3F3Fu) : (((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u));
    int i = (2 * c) & 3;  // byte 2c % 4 of the words (2c + 1: the next)
    *sc0 = __fsub_rn(mw_byte_f(scw, i), 8388608.0f);
    *m0 = __fsub_rn(mw_byte_f(mw, i), 8388608.0f);
    *sc1 = __fsub_rn(mw_byte_f(scw, i + 1), 8388608.0f);
    *m1 = __fsub_rn(mw_byte_f(mw, i + 1), 8388608.0f);
}

// One lane's raw bytes of one superblock, loaded ahead of its arithmetic.
template <int TY> struct MwPiece;
template <> struct MwPiece<T_Q4_K> {
    uint4 hd, qs;  // d, dmin and the 12 scale bytes; quant bytes 16p .. 16p + 15
    __device__ __forceinline__ void load(const u8* __restrict__ row, int s, int p) {
        const u8* b = row + (i64)s * 144;
        hd = __ldg((const uint4*)b);
        qs = __ldg((const uint4*)(b + 16 + 16 * p));
    }
    // lane p = 2c + h of the group: values 64c + 16h + i of sub-block 2c (low nibbles) and
    // 64c + 32 + 16h + i of sub-block 2c + 1 (high nibbles), i < 16
    // xsum: the staged input's sums over runs of 16 values (mw_put4), this lane's two of them
    // instead of 32 adds of its own
    __device__ __forceinline__ float dot(const float* __restrict__ xs,
                                         const float* __restrict__ xsum, int s, int p, float acc,
                                         bool plain) const {
        int c = p >> 1, i0 = 256 * s + 64 * c + 16 * (p & 1);
        const float* x0 = xs + mw_pad(i0, 6);
        const float* x1 = x0 + 32;
        float s0 = 0.0f, s1 = 0.0f, xs0 = xsum[i0 >> 4], xs1 = xsum[(i0 >> 4) + 2];
        u32 words[4] = {qs.x, qs.y, qs.z, qs.w};
        if (!plain) {
            // the scaled input (q4k_pos): each nibble masked in place is its own subnormal
#pragma unroll
            for (int wi = 0; wi < 4; ++wi) {
                float4 a = *(const float4*)(x0 + 4 * wi);
                float4 bb = *(const float4*)(x1 + 4 * wi);
                u32 w = words[wi], v = w >> 12;
                s0 = fmaf(__uint_as_float(w & 0xFu), a.x, s0);
                s1 = fmaf(__uint_as_float(w & 0xF0u), bb.x, s1);
                s0 = fmaf(__uint_as_float(w & 0xF00u), a.y, s0);
                s1 = fmaf(__uint_as_float(w & 0xF000u), bb.y, s1);
                s0 = fmaf(__uint_as_float(w & 0xF0000u), a.z, s0);
                s1 = fmaf(__uint_as_float(v & 0xF00u), bb.z, s1);
                s0 = fmaf(__uint_as_float(v & 0xF000u), a.w, s0);
                s1 = fmaf(__uint_as_float(v & 0xF0000u), bb.w, s1);
            }
            const float back = __int_as_float((127 + 149 - Q4K_SHIFT) << 23);  // 2^85
            s0 = __fmul_rn(s0, back);
            s1 = __fmul_rn(s1, back);
        } else {
#pragma unroll
            for (int wi = 0; wi < 4; ++wi) {
                float4 a = *(const float4*)(x0 + 4 * wi);
                float4 bb = *(const float4*)(x1 + 4 * wi);
                u32 lo = words[wi] & 0x0F0F0F0Fu, hi = (words[wi] >> 4) & 0x0F0F0F0Fu;
                float xa[4] = {a.x, a.y, a.z, a.w}, xb[4] = {bb.x, bb.y, bb.z, bb.w};
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    s0 = fmaf(mw_byte_f(lo, i) - 8388608.0f, xa[i], s0);
                    s1 = fmaf(mw_byte_f(hi, i) - 8388608.0f, xb[i], s1);
                }
            }
        }
        float sc0, m0, sc1, m1;
        q4k_pair_scales(c, hd.y, hd.z, hd.w, &sc0, &m0, &sc1, &m1);
        float d = h2f((u16)(hd.x & 0xffffu)), dm = h2f((u16)(hd.x >> 16));
        acc = fmaf(__fmul_rn(d, sc0), s0, acc);
        acc = fmaf(-__fmul_rn(dm, m0), xs0, acc);
        acc = fmaf(__fmul_rn(d, sc1), s1, acc);
        acc = fmaf(-__fmul_rn(dm, m1), xs1, acc);
        return acc;
    }
};
template <> struct MwPiece<T_Q6_K> {
    // lane p of the group, in its superblock's half hh = p / 4: positions j = 8 (p % 4) .. + 7
    // of all four 32-value quarters (one 8-byte run of each ql half and of qh)
    u32 la0, la1, lb0, lb1, h0, h1, c0, c1;
    u16 d;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int s, int p) {
        const u8* b = row + (i64)s * 210;
        int hh = p >> 2, q = p & 3;
        ld8(b + 64 * hh + 8 * q, &la0, &la1);       // quarters 0 (low) and 2 (high nibbles)
        ld8(b + 64 * hh + 32 + 8 * q, &lb0, &lb1);  // quarters 1 and 3
        ld8(b + 128 + 32 * hh + 8 * q, &h0, &h1);   // 2 bits of each quarter
        ld8(b + 192 + 8 * hh, &c0, &c1);            // this half's 8 scales
        d = *(const u16*)(b + 208);
    }
    __device__ __forceinline__ float dot(const float* __restrict__ xs, const float*, int s, int p,
                                         float acc, bool) const {
        int hh = p >> 2, q = p & 3;
        float df = h2f(d);
#pragma unroll
        for (int qq = 0; qq < 4; ++qq) {
            u32 l0 = qq & 1 ? lb0 : la0, l1 = qq & 1 ? lb1 : la1;
            int lsh = 4 * (qq >> 1), hsh = 2 * qq;
            u32 v0 = ((l0 >> lsh) & 0x0F0F0F0Fu) | (((h0 >> hsh) & 0x03030303u) << 4);
            u32 v1 = ((l1 >> lsh) & 0x0F0F0F0Fu) | (((h1 >> hsh) & 0x03030303u) << 4);
            const float* xb = xs + mw_pad(256 * s + 128 * hh + 32 * qq + 8 * q, 7);
            float4 a = *(const float4*)xb, bb = *(const float4*)(xb + 4);
            // (2^23 + q) - (2^23 + 32) = q - 32, exactly
            float t = 0.0f;
            t = fmaf(mw_byte_f(v0, 0) - 8388640.0f, a.x, t);
            t = fmaf(mw_byte_f(v0, 1) - 8388640.0f, a.y, t);
            t = fmaf(mw_byte_f(v0, 2) - 8388640.0f, a.z, t);
            t = fmaf(mw_byte_f(v0, 3) - 8388640.0f, a.w, t);
            t = fmaf(mw_byte_f(v1, 0) - 8388640.0f, bb.x, t);
            t = fmaf(mw_byte_f(v1, 1) - 8388640.0f, bb.y, t);
            t = fmaf(mw_byte_f(v1, 2) - 8388640.0f, bb.z, t);
            t = fmaf(mw_byte_f(v1, 3) - 8388640.0f, bb.w, t);
            // scale 8 hh + 2 qq + j / 16: byte (q >> 1) + 2 qq of this half's eight
            float sc = (float)(signed char)byte8(c0, c1, (q >> 1) + 2 * qq);
            acc = fmaf(__fmul_rn(df, sc), t, acc);
        }
        return acc;
    }
};

// The sum of the 16-value run of an input row that lanes 4q .. 4q + 3 of a warp hold one
// float4 each, in order: ((v0 + v1) + (v2 + v3)) on each lane, then butterflies over lane
// pairs and pairs of pairs. One fixed tree, whichever lanes hold the run (an f32 add is
// commutative bit for bit, so all four lanes get the same sum). Called by all 32 lanes.
__device__ __forceinline__ float run16_sum(float4 v) {
    float s = __fadd_rn(__fadd_rn(v.x, v.y), __fadd_rn(v.z, v.w));
    s = __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 1));
    return __fadd_rn(s, __shfl_xor_sync(0xffffffffu, s, 2));
}

#define MW_SUMS_MAX (MW_XMAX / 16)
// float4 of a row a staging thread loads before it stores any, for Q4_K (one round trip for
// rows of up to 2048 values; more would spill at the one-row kernels' 64 registers). The other
// types' stagings have no shuffles to hold loads back, and more registers would spill there.
#define MW_AHEAD 2
template <int TY> struct MwAhead {
    static constexpr int value = TY == T_Q4_K ? MW_AHEAD : 1;
};

// Stage inputs i .. i + 3 of a row (i % 4 == 0) into row `xs` of the staging, scaled for Q4_K
// unless `plain`; returns whether one is out of the scaled range. For Q4_K also the input's
// sum over its run of 16 (its dmin term needs them: made once per block, as the staging goes,
// instead of once per row by each lane) into xsum[i / 16], of the input as it was, by
// run16_sum: every lane of the warp calls this at once, lane 4q + m with run q's m-th float4.
template <int TY>
__device__ __forceinline__ bool mw_put4(float* xs, float* xsum, int i, float4 v, bool plain) {
    bool big = false;
    if constexpr (TY == T_Q4_K) {
        float t = run16_sum(v);
        if ((i & 15) == 0) xsum[i >> 4] = t;
        if (!plain) {
            big = q4k_big(v.x) | q4k_big(v.y) | q4k_big(v.z) | q4k_big(v.w);
            v.x = __fmul_rn(v.x, q4k_scale(i));
            v.y = __fmul_rn(v.y, q4k_scale(i + 1));
            v.z = __fmul_rn(v.z, q4k_scale(i + 2));
            v.w = __fmul_rn(v.w, q4k_scale(i + 3));
        }
    }
    *(float4*)(xs + mw_pad(i, MwShift<TY>::value)) = v;
    return big;
}

// Lane `lane`'s part of the dot product of a Q4_K/Q6_K row of `nsb` superblocks with the
// staged input xs: lane group g = lane / 8 takes superblocks g, g + 4, ..., two at a time, the
// raw bytes of both loaded before either is multiplied. `first` holds the first two, loaded
// by the caller before it staged the input (rows of up to 2048 values need no more), in `w`,
// which then takes the next ones.
template <int TY>
__device__ __forceinline__ float mw_dot_staged(const u8* __restrict__ row,
                                               const float* __restrict__ xs,
                                               const float* __restrict__ xsum, int nsb, int lane,
                                               MwPiece<TY>* w, bool plain) {
    int g = lane >> 3, p = lane & 7;
    float acc = 0.0f;
    for (int s = g; s < nsb; s += 8) {
        if (s != g) {
            w[0].load(row, s, p);
            if (s + 4 < nsb) w[1].load(row, s + 4, p);
        }
        acc = w[0].dot(xs, xsum, s, p, acc, plain);
        if (s + 4 < nsb) acc = w[1].dot(xs, xsum, s + 4, p, acc, plain);
    }
    return acc;
}

// Lane `lane`'s part of the dot product of an f32 row of k values (k % 4 == 0, 16-byte
// aligned) with x.
__device__ __forceinline__ float mw_dot_f32(const float* __restrict__ row,
                                            const float* __restrict__ x, int k, int lane) {
    float acc = 0.0f;
#pragma unroll 4
    for (int i = 4 * lane; i < k; i += 128) {
        float4 w = __ldg((const float4*)(row + i)), a = __ldg((const float4*)(x + i));
        acc = fmaf(w.x, a.x, acc);
        acc = fmaf(w.y, a.y, acc);
        acc = fmaf(w.z, a.z, acc);
        acc = fmaf(w.w, a.w, acc);
    }
    return acc;
}

// Whether the whole-piece path serves a launch: its type, K whole in its superblocks (and
// within the staged input's MW_XMAX), and the loads aligned (weights where the type needs it,
// inputs always).
template <int TY>
__device__ __forceinline__ bool mw_fast(const u8* W, i64 row_bytes, i64 expert_bytes,
                                        const float* X, int K, int kbeg, int kend) {
    bool xal = ((unsigned long long)X & 15) == 0 && (K & 3) == 0 && kbeg == 0 && kend == K;
    unsigned long long wa = (unsigned long long)W | (unsigned long long)row_bytes |
                            (unsigned long long)expert_bytes;
    if (TY == T_Q4_K) return xal && (K & 255) == 0 && K <= MW_XMAX && (wa & 15) == 0;
    if (TY == T_Q6_K) return xal && (K & 255) == 0 && K <= MW_XMAX && (wa & 1) == 0;
    if (TY == T_F32) return xal && (wa & 15) == 0;
    return false;
}


// The lane-per-8-values body as a call of its own, so that its registers do not count against
// the fast path's.
template <int TY>
__device__ __noinline__ void matvec_warp_general(const u8* W, i64 row_bytes, i64 expert_bytes,
                                                 const float* X, float* Y, int N, int K, int T,
                                                 const int* counts, const int* offsets,
                                                 const int* in_rows, int swap_a, int swap_b,
                                                 int kspan, const int* zmap) {
    matvec_body<TY, 32>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets, in_rows,
                        swap_a, swap_b, kspan, zmap);
}

// The types whose one-row dots go in whole 16-byte pieces from a staged input (MwPiece).
template <int TY> struct MwStaged {
    static constexpr bool value = TY == T_Q4_K || TY == T_Q6_K;
};

// The input row x [K] into xs (padded, scaled for Q4_K) and, for Q4_K, its run sums into xsum
// (mw_put4), by the whole block; barriers on both sides. Returns `plain`: whether the block
// staged it unscaled (an input out of the scaled range). NT: the block's threads.
template <int TY, int NT = MM_THREADS>
__device__ __forceinline__ bool mw_stage(float* __restrict__ xs, float* __restrict__ xsum,
                                         const float* __restrict__ x, int K) {
    // MwAhead float4 a thread loaded before any is stored: the run sums' shuffles would
    // otherwise hold the next load back, one memory round trip per float4
    constexpr int A = MwAhead<TY>::value;
    auto put = [&](bool plain) {
        bool big = false;
        for (int i0 = 4 * threadIdx.x; i0 < K; i0 += 4 * NT * A) {
            float4 v[A];
#pragma unroll
            for (int u = 0; u < A; ++u) {
                int i = i0 + 4 * NT * u;
                if (i < K) v[u] = __ldg((const float4*)(x + i));
            }
#pragma unroll
            for (int u = 0; u < A; ++u) {
                int i = i0 + 4 * NT * u;
                if (i < K) big |= mw_put4<TY>(xs, xsum, i, v[u], plain);
            }
        }
        return big;
    };
    __syncthreads();
    if (!__syncthreads_or(put(false))) return false;
    put(true);
    __syncthreads();
    return true;
}

__device__ __forceinline__ float warp_sum_fixed(float acc) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

// matmulws_<type>: matmulw over a grid smaller than its rows, for one input row and one matrix
// (the output head, whose 152k rows would otherwise be 19k blocks each staging the same input):
// the block stages x once, and each warp takes rows n, n + stride, ... with the next row's first
// weights on their way while the current one is multiplied. Each row's dot is matvec_warp's,
// bit for bit. Staged types only, with what matvec_warp's fast path needs (the host checks).
template <int TY>
__device__ __forceinline__ void matvec_warp_stream(const u8* __restrict__ W, i64 row_bytes,
                                                   const float* __restrict__ x,
                                                   float* __restrict__ Y, int N, int K) {
    int lane = threadIdx.x & 31, stride = gridDim.x * (MM_THREADS / 32);
    int n = blockIdx.x * (MM_THREADS / 32) + (threadIdx.x >> 5);
    if constexpr (MwStaged<TY>::value) {
        __shared__ __align__(16) float xs[MW_XMAX + MW_XMAX / 16];
        int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
        MwPiece<TY> cur[2], nxt[2];
        const u8* row = W + (i64)min(n, N - 1) * row_bytes;
        if (gi < nsb) cur[0].load(row, gi, p);
        if (gi + 4 < nsb) cur[1].load(row, gi + 4, p);
        __shared__ float xsum[MW_SUMS_MAX];
        bool plain = mw_stage<TY>(xs, xsum, x, K);
        for (; n < N; n += stride) {
            const u8* next = W + (i64)min(n + stride, N - 1) * row_bytes;
            if (n + stride < N) {
                if (gi < nsb) nxt[0].load(next, gi, p);
                if (gi + 4 < nsb) nxt[1].load(next, gi + 4, p);
            }
            float acc = warp_sum_fixed(mw_dot_staged<TY>(row, xs, xsum, nsb, lane, cur, plain));
            if (lane == 0) Y[n] = acc;
            cur[0] = nxt[0];
            cur[1] = nxt[1];
            row = next;
        }
    } else {
        __trap();  // the host launches this for the staged types only
    }
}

template <int TY>
__device__ __forceinline__ void matvec_warp(const u8* __restrict__ W, i64 row_bytes,
                                            i64 expert_bytes, const float* __restrict__ X,
                                            float* __restrict__ Y, int N, int K, int T,
                                            const int* __restrict__ counts,
                                            const int* __restrict__ offsets,
                                            const int* __restrict__ in_rows, int swap_a,
                                            int swap_b, int kspan,
                                            const int* __restrict__ zmap) {
    int split = counts ? 0 : blockIdx.z;
    int kbeg = split * kspan, kend = min(K, kbeg + kspan);
    if (!mw_fast<TY>(W, row_bytes, expert_bytes, X, K, kbeg, kend)) {
        matvec_warp_general<TY>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets,
                                in_rows, swap_a, swap_b, kspan, zmap);
        return;
    }
    int cnt = mm_count(counts, offsets, zmap, T);
    if (cnt == 0) return;  // uniform over the block
    int n = blockIdx.x * (MM_THREADS / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    bool active = n < N;  // inactive warps still stage inputs and meet the barriers
    int e = counts ? mm_expert(offsets, zmap) : 0;
    int off = offsets ? offsets[e] : 0;
    int we = swapped_expert(e, swap_a, swap_b);
    const u8* row = W + (i64)we * expert_bytes + (i64)(active ? n : 0) * row_bytes;
    Y += (i64)split * T * N;
    constexpr bool staged = TY == T_Q4_K || TY == T_Q6_K;
    __shared__ __align__(16) float xs[staged ? MW_XMAX + MW_XMAX / 16 : 4];
    __shared__ float xsum[staged ? MW_SUMS_MAX : 1];
    for (int t = 0; t < cnt; ++t) {
        int g = off + t;
        const float* x = X + (i64)(in_rows ? in_rows[g] : g) * K;
        float acc;
        if constexpr (staged) {
            int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
            // the row's first weights on their way while the input is staged
            MwPiece<TY> first[2];
            if (gi < nsb) first[0].load(row, gi, p);
            if (gi + 4 < nsb) first[1].load(row, gi + 4, p);
            // (mw_stage's first barrier: the previous row's readers are done with xs)
            bool plain = mw_stage<TY>(xs, xsum, x, K);
            acc = mw_dot_staged<TY>(row, xs, xsum, nsb, lane, first, plain);
        } else {
            acc = mw_dot_f32((const float*)row, x, K, lane);
        }
        // a fixed butterfly: the same bits on every lane
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (active && lane == 0) Y[(i64)g * N + n] = acc;
    }
}

// ---- merged one-row launches (decode steps): the staged warp dot of matmulw with what the
// next separate kernel did folded into its last lane's write, bit for bit that kernel's result:
//
// matmulwr_<type>: Y[n] = x . W[n] and Z[n] = R[n] + Y[n] (a projection and its residual add:
//   attn_out + attn_residual; a dense down projection + layer_out).
// gate_up_<type>: for slot z (expert slot_expert[z], or the one matrix when slot_expert is
//   null) G[z, n] = x . Wg[n], U[z, n] = x . Wu[n] and A[z, n] = silu(G) * U in f64, rounded
//   once (silu_mul's formula): the expert (or dense) gate, up and SwiGLU of a one-token step,
//   both matrices' first weights in flight before either is multiplied.
// Only for the staged types (Q4_K, Q6_K) with K <= MW_XMAX and aligned rows; the host checks
// (merged_matvec_ok) and launches the separate kernels otherwise.
template <int TY>
__device__ __forceinline__ void matvec_res_body(const u8* __restrict__ W, i64 row_bytes,
                                                const float* __restrict__ X,
                                                float* __restrict__ Y, int N, int K,
                                                const float* __restrict__ R,
                                                float* __restrict__ Z) {
    if constexpr (MwStaged<TY>::value) {
        __shared__ __align__(16) float xs[MW_XMAX + MW_XMAX / 16];
        int n = blockIdx.x * (MM_THREADS / 32) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
        bool active = n < N;
        const u8* row = W + (i64)(active ? n : 0) * row_bytes;
        int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
        MwPiece<TY> w[2];
        if (gi < nsb) w[0].load(row, gi, p);
        if (gi + 4 < nsb) w[1].load(row, gi + 4, p);
        // (the residual with the weights, not after the dot)
        float rn = active && lane == 0 ? R[n] : 0.0f;
        __shared__ float xsum[MW_SUMS_MAX];
        bool plain = mw_stage<TY>(xs, xsum, X, K);
        float acc = warp_sum_fixed(mw_dot_staged<TY>(row, xs, xsum, nsb, lane, w, plain));
        if (active && lane == 0) {
            Y[n] = acc;
            Z[n] = rn + acc;
        }
    } else {
        __trap();  // the host launches these for the staged types only
    }
}

// matmulwn_<type>: up to three one-row matvecs of one input in one launch, the input's RMSNorm
// folded in (a decode step's attn_norm + q/k/v projections, or ffn_norm + the router). Blocks
// take W0's rows (8 a block), then W1's, then W2's (an absent matrix has no rows). With G set,
// every block computes x = RMSNorm(X) * G itself (rms_norm's arithmetic: its threads' f64 sums
// of squares by this block's first RED_THREADS threads, block_sum's tree, the same quotient and
// products), stages it, and block 0 writes it to XN (the norm's stage, read by the captures and
// by launches after this one); with G null, X is staged as it is. Each output is matmulw's warp
// dot of the staged row (F32 rows: mw_dot_f32's order from shared memory), bit for bit.
// Staged types and F32, K <= MW_XMAX (the host checks).
// matmulwn_route_<type>: matmulwn of one matrix, the router of a one-token step (ffn_norm +
// router logits), whose last block to finish (last_block_of_launch) then routes: route1_from,
// moe_route1's arithmetic on the logits the launch wrote, bit for bit its outputs, one launch
// fewer a layer (the route's whole cost was its launch and its few microseconds of latency).
// Its few blocks (the router's rows / 8) may take all the registers: F32 rows are loaded whole
// before the norm (F32Ahead).
static_assert(ROUTE1_THREADS == MM_THREADS, "the routing block is a matvec block");
// When the host launches the router's blocks as one thread-block cluster (sm_90 and later, at
// most 16 blocks; `Device::whole_grid_cluster`), the last block's handoff goes through shared
// memory instead: each block's logits into block 0's (distributed shared memory), one cluster
// barrier, and block 0 routes. The last-block handoff costs a fence, an atomic counter in L2
// and the logits' reload from L2, three dependent round trips to L2. The same logits, the
// same route1 arithmetic: bit for bit the same outputs.
__device__ __forceinline__ bool route_cluster() {
    unsigned n = cluster_blocks();
    return n > 1 && n == gridDim.x * gridDim.y * gridDim.z;
}
// Called by every thread of every block of the cluster after the matvec, which put each
// block's outputs at ys[row] of its own shared memory (the block having called
// cluster_arrive_relaxed before it): rows 0 .. N - 1 into block 0's ys. Whether this block is
// block 0, which then holds them all.
__device__ __forceinline__ bool route_gather(float* ys, int N) {
    // this block's outputs are in its ys, and every block of the cluster has started (its
    // shared memory exists)
    __syncthreads();
    cluster_wait();
    unsigned rank;
    cluster_blocks(&rank);
    constexpr int R = MM_THREADS / 32;
    for (int t = threadIdx.x; t < N; t += blockDim.x)
        if (rank != 0 && (unsigned)((t / R) % gridDim.x) == blockIdx.x)
            cluster_store(ys + t, 0, ys[t]);
    cluster_sync();
    return rank == 0;
}
struct MwnPart {
    const u8* W;
    i64 row_bytes;
    int N, nb;  // rows, and the block index within them
    float* Y;
};
// The up to three matrices of a matmulwn launch, as one run of row groups (8 rows a group, the
// groups of W0, then W1's, then W2's): group b's part is at(b). A launch of fewer blocks than
// groups (the host's grid fits the card: one wave, each block staging its input once) has
// block i take groups i, i + gridDim.x, ...
struct MwnParts {
    const u8 *W0, *W1, *W2;
    i64 rb0, rb1, rb2;
    int N0, N1, N2;
    float *Y0, *Y1, *Y2;
    __device__ __forceinline__ int groups() const {
        constexpr int R = MM_THREADS / 32;
        return (N0 + R - 1) / R + (N1 + R - 1) / R + (N2 + R - 1) / R;
    }
    __device__ __forceinline__ MwnPart at(int b) const {
        constexpr int R = MM_THREADS / 32;
        int b0 = (N0 + R - 1) / R, b1 = (N1 + R - 1) / R;
        if (b < b0) return {W0, rb0, N0, b, Y0};
        if (b < b0 + b1) return {W1, rb1, N1, b - b0, Y1};
        return {W2, rb2, N2, b - b0 - b1, Y2};
    }
};

__device__ __forceinline__ float mw_dot_f32_shared(const float* __restrict__ row,
                                                   const float* __restrict__ xs, int k,
                                                   int lane) {
    float acc = 0.0f;
#pragma unroll 4
    for (int i = 4 * lane; i < k; i += 128) {
        float4 w = __ldg((const float4*)(row + i)), a = *(const float4*)(xs + i);
        acc = fmaf(w.x, a.x, acc);
        acc = fmaf(w.y, a.y, acc);
        acc = fmaf(w.z, a.z, acc);
        acc = fmaf(w.w, a.w, acc);
    }
    return acc;
}

// An F32 row's float4 pieces of one lane (mw_dot_f32's: values 4 lane + 128 u), all loaded
// before any is multiplied, for rows of up to 128 AHEAD values: one memory round trip where
// mw_dot_f32_shared's loop of 4 makes K / 512 of them.
template <int AHEAD> struct F32Ahead {
    float4 w[AHEAD];
    __device__ __forceinline__ void load(const float* __restrict__ row, int k, int lane) {
#pragma unroll
        for (int u = 0; u < AHEAD; ++u) {
            int i = 4 * lane + 128 * u;
            if (i < k) w[u] = __ldg((const float4*)(row + i));
        }
    }
    // mw_dot_f32_shared's sum, in its order
    __device__ __forceinline__ float dot(const float* __restrict__ xs, int k, int lane) const {
        float acc = 0.0f;
#pragma unroll
        for (int u = 0; u < AHEAD; ++u) {
            int i = 4 * lane + 128 * u;
            if (i < k) {
                float4 a = *(const float4*)(xs + i);
                acc = fmaf(w[u].x, a.x, acc);
                acc = fmaf(w[u].y, a.y, acc);
                acc = fmaf(w[u].z, a.z, acc);
                acc = fmaf(w[u].w, a.w, acc);
            }
        }
        return acc;
    }
};

// The blocks of a matmulwn launch that take row groups, and the stride between a block's
// groups: with `pair` and more groups than blocks, each block takes its first two groups at
// once (b and b + P, P = ceil(groups / 2) capped at the grid; then b + 2P, b + 3P, ... one at a
// time), so that a block's input staging and norm serve twice the rows and both groups'
// weights are in flight together; the blocks from P on take none. Otherwise block b takes b,
// b + gridDim.x, ... (H200, 30B-A3B shape cut to 8 layers: 0.556 / 0.559 -> 0.546 / 0.551 ms a
// token; each of q/k/v's 528 blocks normalized and staged all 2048 inputs for 8 or 16 rows)
// (g: the blocks of its part of the launch, gridDim.x but in a mixed launch, matmulwn_mix)
__device__ __forceinline__ int mwn_blocks(int groups, bool pair, int g) {
    return pair && groups > g ? min(g, (groups + 1) / 2) : g;
}
// (three blocks a multiprocessor: a pair's registers; the pairs of a q/k/v launch fit one wave)
#define MWN_MIN_BLOCKS 3

// AHEAD > 0: F32 rows of up to 128 AHEAD values are loaded whole (F32Ahead) before the norm,
// as the staged types' first pieces are (the router of matmulwn_route, a launch of few
// blocks, whose registers allow it). PAIR (staged types): mwn_blocks' pairs of groups.
// The shared memory of a norm-folding block: the staged input, its run sums (Q4_K) and the
// norm's reduction. The kernel declares it, so that a mixed launch's two bodies share one.
struct MwnShared {
    float xs[MW_XMAX + MW_XMAX / 16];
    float xsum[MW_SUMS_MAX];
    double red[MM_THREADS / 32];
};
// bid, nblk: this block's index among the launch's blocks that take `parts`, and their count
// (blockIdx.x and gridDim.x but in a mixed launch, matmulwn_mix). ys (shared, may be null):
// each output also at ys[its row] (the router launch's cluster handoff; one matrix only).
template <int TY, int AHEAD = 0, bool PAIR = false>
__device__ __forceinline__ void matvec_norm_body(MwnParts parts, const float* __restrict__ X,
                                                 const float* __restrict__ G, float eps,
                                                 float* __restrict__ XN, int K, MwnShared& sh,
                                                 int bid, int nblk, float* ys = nullptr) {
    constexpr bool staged = MwStaged<TY>::value;
    static_assert(staged || !PAIR, "pairs of row groups are for the staged types");
    float* xs = sh.xs;
    double* red = sh.red;
    int b = bid, lane = threadIdx.x & 31, groups = parts.groups();
    int P = mwn_blocks(groups, PAIR, nblk);
    if (b >= P) return;  // (PAIR: uniform over the block; it stages nothing anyone reads)
    MwnPart part = parts.at(b);
    int n = part.nb * (MM_THREADS / 32) + (threadIdx.x >> 5);
    bool active = n < part.N;
    const u8* row = part.W + (i64)(active ? n : 0) * part.row_bytes;
    int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
    // staged rows: the first pieces on their way while the norm is computed
    MwPiece<staged ? TY : T_Q4_K> w[2];  // (unused for F32)
    if constexpr (staged) {
        if (gi < nsb) w[0].load(row, gi, p);
        if (gi + 4 < nsb) w[1].load(row, gi + 4, p);
    }
    // PAIR: the block's second group b + P, when there is one
    bool two = PAIR && b + P < groups;
    MwnPart part2 = parts.at(two ? b + P : b);
    int n2 = part2.nb * (MM_THREADS / 32) + (threadIdx.x >> 5);
    bool active2 = two && n2 < part2.N;
    const u8* row2 = part2.W + (i64)(active2 ? n2 : 0) * part2.row_bytes;
    MwPiece<staged ? TY : T_Q4_K> w2[PAIR ? 2 : 1];  // (loaded after the staging: registers)
    constexpr bool ahead = TY == T_F32 && AHEAD > 0;
    F32Ahead<ahead ? AHEAD : 1> fw;  // (unused unless `ahead`)
    bool whole = ahead && K <= 128 * AHEAD;
    if (whole) fw.load((const float*)row, K, lane);
    double inv = 0.0;
    if (G) {
        double ss = 0.0;
        if (threadIdx.x < RED_THREADS)
            for (int i = threadIdx.x; i < K; i += RED_THREADS) ss += (double)X[i] * (double)X[i];
        ss = block_sum(ss, red);
        inv = 1.0 / sqrt(ss / (double)K + (double)eps);
    }
    // the input (normalized with G), staged scaled for Q4_K; unscaled when out of that range
    // (`plain`; XN gets the norm either way)
    // (four values a thread, so that Q4_K's run sums come from the staging: mw_put4)
    float* xsum = sh.xsum;
    auto stage = [&](bool plain) {
        bool big = false;
        bool out = G && XN && bid == 0 && !plain;
        // (MwAhead float4 of the input and gamma loaded before any is stored, as mw_stage)
        constexpr int A = MwAhead<TY>::value;
        for (int i0 = 4 * threadIdx.x; i0 < K; i0 += 4 * MM_THREADS * A) {
            float4 xv[A], gv[A];
#pragma unroll
            for (int u = 0; u < A; ++u) {
                int i = i0 + 4 * MM_THREADS * u;
                if (i < K) {
                    xv[u] = __ldg((const float4*)(X + i));
                    if (G) gv[u] = {G[i], G[i + 1], G[i + 2], G[i + 3]};
                }
            }
#pragma unroll
            for (int u = 0; u < A; ++u) {
                int i = i0 + 4 * MM_THREADS * u;
                if (i >= K) continue;
                float4 y = xv[u];
                if (G) {
                    y.x = (float)((double)y.x * inv * (double)gv[u].x);
                    y.y = (float)((double)y.y * inv * (double)gv[u].y);
                    y.z = (float)((double)y.z * inv * (double)gv[u].z);
                    y.w = (float)((double)y.w * inv * (double)gv[u].w);
                }
                if (out) {
                    XN[i] = y.x;
                    XN[i + 1] = y.y;
                    XN[i + 2] = y.z;
                    XN[i + 3] = y.w;
                }
                if constexpr (staged)
                    big |= mw_put4<TY>(xs, xsum, i, y, plain);
                else
                    *(float4*)(xs + i) = y;
            }
        }
        return big;
    };
    bool plain = __syncthreads_or(stage(false)) != 0;
    if (plain) {
        stage(true);
        __syncthreads();
    }
    // this block's row groups, the staged input shared by all: the first group's pieces came
    // before the norm; a later group's are loaded when the one before is done (requested
    // towards L2 before pdl_wait, mwn_prefetch)
    if constexpr (PAIR) {
        if (two && gi < nsb) w2[0].load(row2, gi, p);
        if (two && gi + 4 < nsb) w2[1].load(row2, gi + 4, p);
    }
    for (;;) {
        float acc = 0.0f;
        if constexpr (staged) {
            acc = mw_dot_staged<TY>(row, xs, xsum, nsb, lane, w, plain);
        } else if constexpr (TY == T_F32) {
            acc = whole ? fw.dot(xs, K, lane) : mw_dot_f32_shared((const float*)row, xs, K, lane);
        } else {
            __trap();  // the host launches these for the staged types and F32 only
        }
        acc = warp_sum_fixed(acc);
        if (active && lane == 0) {
            part.Y[n] = acc;
            if (ys) ys[n] = acc;
        }
        if constexpr (PAIR) {
            if (two) {
                float acc2 = warp_sum_fixed(mw_dot_staged<TY>(row2, xs, xsum, nsb, lane, w2, plain));
                if (active2 && lane == 0) part2.Y[n2] = acc2;
                b += P;  // (the groups after the first pair: one at a time)
            }
            two = false;
        }
        b += P;
        if (b >= groups) break;
        part = parts.at(b);
        n = part.nb * (MM_THREADS / 32) + (threadIdx.x >> 5);
        active = n < part.N;
        row = part.W + (i64)(active ? n : 0) * part.row_bytes;
        if constexpr (staged) {
            if (gi < nsb) w[0].load(row, gi, p);
            if (gi + 4 < nsb) w[1].load(row, gi + 4, p);
        }
        if (whole) fw.load((const float*)row, K, lane);
    }
}

// gate_up's block: a warp per output (a gate and an up row), GU_THREADS / 32 outputs a block;
// its launch bounds say so to the host, which sizes the grid by them. (Compile-time, not
// blockDim: a run-time stride cost gate_up a spill.) The work is `slots` x row groups units
// (unit v: group v % groups of slot v / groups); a block takes units blockIdx.x + gridDim.x *
// blockIdx.z, then every grid's worth after it: the host launches one wave of the card
// (Device::wave_blocks), so that a block stages its input once for all its units and requests
// its next unit's rows towards L2 while it multiplies the current one's, where a grid of one
// block a unit (768 for the 30B-A3B shape's 8 slots of 96 groups, against 528 resident) ran
// its last 240 blocks as a second wave, each staging the input again after its launch. (H200,
// 30B-A3B shape: blocks of 512, staging the input once for 16 rows, added 11.96 us a layer to
// the step against 11.69-11.80 for 256, and the step was no faster; matmulwr in blocks of 512
// added 5.87 us against 5.08.)
#define GU_THREADS 256
#define GU_MIN_BLOCKS 4
// Whether a block of gate_up_<type> takes more than one unit: Q4_K. Q6_K's bigger pieces
// leave no registers for the loop (124 bytes spilled a thread): its launch keeps a block a
// unit, grid (groups, 1, slots), which the host gives it (merged.rs gate_up_grid).
template <int TY> struct GuStrides {
    static constexpr bool value = TY == T_Q4_K;
};
// A warp's first two superblocks of its gate and up rows (mw_dot_staged loads the rest).
template <int TY>
__device__ __forceinline__ void gate_up_load(MwPiece<TY>* wg, MwPiece<TY>* wu, const u8* g,
                                             const u8* u, int nsb, int gi, int p) {
    if (gi < nsb) {
        wg[0].load(g, gi, p);
        wu[0].load(u, gi, p);
    }
    if (gi + 4 < nsb) {
        wg[1].load(g, gi + 4, p);
        wu[1].load(u, gi + 4, p);
    }
}
// Output o's gate, up and SwiGLU (silu_mul's f64 arithmetic).
__device__ __forceinline__ void gate_up_store(float* G, float* U, float* A, i64 o, float g,
                                              float u) {
    G[o] = g;
    U[o] = u;
    double gd = g;
    A[o] = (float)(gd / (1.0 + exp(-gd)) * (double)u);
}

template <int TY>
__device__ __forceinline__ void gate_up_body(const u8* __restrict__ Wg, const u8* __restrict__ Wu,
                                             i64 row_bytes, i64 expert_bytes,
                                             const float* __restrict__ X, float* __restrict__ G,
                                             float* __restrict__ U, float* __restrict__ A, int N,
                                             int K, const int* __restrict__ slot_expert,
                                             int slots, int swap_a, int swap_b) {
    if constexpr (MwStaged<TY>::value) {
        __shared__ __align__(16) float xs[MW_XMAX + MW_XMAX / 16];
        __shared__ float xsum[MW_SUMS_MAX];
        if (blockDim.x != GU_THREADS) __trap();  // (the host launches what the bounds say)
        constexpr int per = GU_THREADS / 32;
        int groups = (N + per - 1) / per, units = groups * slots;
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
        // this warp's row of unit (z, group): its byte offset in the gate and up matrices
        // (the slot's expert, swapped under expert_swap; row 0 of the group past N)
        auto row_of = [&](int z, int n) {
            int e = slot_expert ? slot_expert[z] : 0;
            int we = swapped_expert(e, swap_a, swap_b);
            return (i64)we * expert_bytes + (i64)(n < N ? n : 0) * row_bytes;
        };
        MwPiece<TY> wg[2], wu[2];
        if constexpr (!GuStrides<TY>::value) {
            // a block a unit: grid (groups, 1, slots), the host's rule (merged.rs
            // gate_up_grid; a check here, even after the dots, cost Q6_K 24 bytes of spill)
            int z = blockIdx.z, n = blockIdx.x * per + warp;
            i64 row = row_of(z, n);
            gate_up_load<TY>(wg, wu, Wg + row, Wu + row, nsb, gi, p);
            bool plain = mw_stage<TY, GU_THREADS>(xs, xsum, X, K);
            float g = warp_sum_fixed(mw_dot_staged<TY>(Wg + row, xs, xsum, nsb, lane, wg, plain));
            float v = warp_sum_fixed(mw_dot_staged<TY>(Wu + row, xs, xsum, nsb, lane, wu, plain));
            if (n < N && lane == 0) gate_up_store(G, U, A, (i64)z * N + n, g, v);
        } else {
            int stride = gridDim.x * gridDim.z, u = blockIdx.x + gridDim.x * blockIdx.z;
            int z = u / groups, n = (u - z * groups) * per + warp;
            i64 row = row_of(z, n);
            gate_up_load<TY>(wg, wu, Wg + row, Wu + row, nsb, gi, p);
            bool plain = mw_stage<TY, GU_THREADS>(xs, xsum, X, K);
            for (;;) {
                // the block's next unit's rows towards L2 while this one's are multiplied
                int next = u + stride;
                if (next < units) {
                    int zn = next / groups, nn = (next - zn * groups) * per;
                    i64 at = row_of(zn, nn), bytes = (i64)min(per, N - nn) * row_bytes;
                    pdl_prefetch(Wg + at, bytes);
                    pdl_prefetch(Wu + at, bytes);
                }
                float g =
                    warp_sum_fixed(mw_dot_staged<TY>(Wg + row, xs, xsum, nsb, lane, wg, plain));
                float v =
                    warp_sum_fixed(mw_dot_staged<TY>(Wu + row, xs, xsum, nsb, lane, wu, plain));
                if (n < N && lane == 0) gate_up_store(G, U, A, (i64)z * N + n, g, v);
                if (next >= units) break;
                u = next;
                z = u / groups;
                n = (u - z * groups) * per + warp;
                row = row_of(z, n);
                gate_up_load<TY>(wg, wu, Wg + row, Wu + row, nsb, gi, p);
            }
        }
    } else {
        __trap();
    }
}

// down_combine_<type>: the down projections of a one-token step's k expert picks, their
// weighted combine and the residual add in one launch. Two warps per output n, 8 outputs a
// block of DC_THREADS, so that the k staged activation rows serve 8 outputs (H200, 30B-A3B
// shape: 4 outputs a block of 256 staged 12.6 MB from L2 a step against 6.3, and the launch
// added 10.51 us a layer against 9.59 for Q4_K): warp half 0 takes picks 0 .. kh - 1, half 1
// picks kh .. k - 1 (kh = ceil(k / 2)), so that a pick's weights wait on memory once: for each
// pick r (expert ids[r], swapped under the planted expert_swap), d_r = act[slot_of[r]] . W_e[n]
// (matmulw's staged dot, the same bits); then out[n] = sum over r of w[r] d_r in f64 in rank
// order, rounded once (moe_combine), and lout[n] = res[n] + out[n] (the layer_out add). All k
// activation rows are staged at once (k * padded K <= DC_XMAX); rows of up to 1024 values (one
// piece per lane). The picks' weights are requested towards L2 first and loaded after the
// staging, four picks' at once; the staging loads a row's values before it stores any (a row per
// warp), so that no step waits on memory more than once (the loop over the picks' rows, each
// reading slot_of and then the row, was a chain of 2k round trips).
#define DC_XMAX 8192
// (its launch bounds: the host sizes the grid by the threads a block may have, so that these
// two lines alone set the block)
#define DC_THREADS 512
#define DC_MIN_BLOCKS 2
// Staging by warps: warp w stages rows w, w + 8, ..., each lane's DC_LANE_LOADS float4 of a row
// (rows of up to 1024 values) loaded before any is stored.
#define DC_LANE_LOADS (1024 / 128)
template <int TY>
__device__ __forceinline__ void down_combine_body(
    const u8* __restrict__ W, i64 row_bytes, i64 expert_bytes, const float* __restrict__ act,
    int N, int K, const int* __restrict__ ids, const int* __restrict__ slot_of,
    const float* __restrict__ wts, int k, int swap_a, int swap_b, const float* __restrict__ res,
    float* __restrict__ out, float* __restrict__ lout) {
    if constexpr (MwStaged<TY>::value) {
        int rows = blockDim.x >> 6;  // (at most DC_THREADS / 64)
        __shared__ __align__(16) float xs[DC_XMAX];
        __shared__ float xsum[DC_XMAX / 16];
        __shared__ float dsh[DC_THREADS / 64][32];
        __shared__ float wsh[32];
        constexpr int sh = MwShift<TY>::value;
        int kp = mw_pad(K, sh);  // a staged row's length (a multiple of 4: K % 256 == 0)
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, half = warp & 1;
        int nr = warp >> 1, n = blockIdx.x * rows + nr;
        bool active = n < N;
        int nsb = K >> 8, gi = lane >> 3, p = lane & 7;
        bool mine = gi < nsb;  // this lane's group has a superblock (K <= 1024: at most one)
        i64 at = (i64)(active ? n : 0) * row_bytes;
        int kh = (k + 1) >> 1, rbeg = half ? kh : 0, rend = half ? k : kh;
        auto rows_of = [&](int r) {  // pick r's expert matrix (swapped under expert_swap)
            int e = ids[r];
            int we = swapped_expert(e, swap_a, swap_b);
            return W + (i64)we * expert_bytes + at;
        };
        // Each step below waits on memory once: the picks' weights went towards L2 before
        // pdl_wait (down_combine_prefetch; they are loaded after the staging, from there, so
        // that no register holds them through it), the combine's weights and residual are
        // read now, and the staging issues every load of its rows before it stores any.
        if ((int)threadIdx.x < k) wsh[threadIdx.x] = wts[threadIdx.x];
        float rn = active && half == 0 && lane == 0 ? res[n] : 0.0f;
        // every pick's activation row, scaled for Q4_K unless one is out of that range
        // (mw_stage's rule)
        auto stage = [&](bool plain) {
            bool big = false;
            for (int r = warp; r < k; r += blockDim.x >> 5) {
                const float* x = act + (i64)slot_of[r] * K;
                float4 v[DC_LANE_LOADS];
#pragma unroll
                for (int u = 0; u < DC_LANE_LOADS; ++u) {
                    int i = 4 * lane + 128 * u;
                    if (i < K) v[u] = __ldg((const float4*)(x + i));
                }
#pragma unroll
                for (int u = 0; u < DC_LANE_LOADS; ++u) {
                    int i = 4 * lane + 128 * u;
                    if (i < K) big |= mw_put4<TY>(xs + r * kp, xsum + r * (K >> 4), i, v[u], plain);
                }
            }
            return big;
        };
        bool plain = __syncthreads_or(stage(false)) != 0;
        if (plain) {
            stage(true);
            __syncthreads();
        }
        for (int r0 = rbeg; r0 < rend; r0 += 4) {
            MwPiece<TY> w[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (r0 + j < rend && mine) w[j].load(rows_of(r0 + j), gi, p);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int r = r0 + j;
                if (r < rend) {
                    float d = mine ? w[j].dot(xs + r * kp, xsum + r * (K >> 4), gi, p, 0.0f, plain)
                                     : 0.0f;
                    d = warp_sum_fixed(d);
                    if (lane == 0) dsh[nr][r] = d;
                }
            }
        }
        __syncthreads();
        if (active && half == 0 && lane == 0) {
            double acc = 0.0;
            for (int r = 0; r < k; ++r) acc += (double)wsh[r] * (double)dsh[nr][r];
            float o = (float)acc;
            out[n] = o;
            lout[n] = rn + o;
        }
    } else {
        __trap();
    }
}

// Before pdl_wait() in down_combine_*: this block's rows of its picks' expert matrices
// towards L2, one 32-byte piece of a superblock per lane, as the body then loads them. The
// picks (ids) come from a launch before the one that wrote the activations (gate_up_*, or the
// separate expert launches), which is at least two launches back: this launch starts only
// once every block of the one before is past its own pdl_wait, so every launch before that
// one has completed and its writes are visible (read through L2: an earlier layer's ids may
// sit in this multiprocessor's L1). The body used to request them after its pdl_wait, a DRAM
// round trip into the launch's share of the step (H200, 30B-A3B shape: the step 2.47 ms
// against 2.49-2.50 in the same calls; the launch 9.80 / 8.80 us a layer for Q6_K / Q4_K
// against 11.10 / 9.61).
template <int TY>
__device__ __forceinline__ void down_combine_prefetch(const u8* W, i64 row_bytes,
                                                      i64 expert_bytes, int N,
                                                      const int* ids, int k, int swap_a,
                                                      int swap_b) {
#if defined(__CUDA_ARCH__)
    constexpr int sb_bytes = TY == T_Q6_K ? 210 : 144;
    int rows = blockDim.x >> 6, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * rows + (warp >> 1), gi = lane >> 3, p = lane & 7;
    int kh = (k + 1) >> 1, rbeg = warp & 1 ? kh : 0, rend = warp & 1 ? k : kh;
    if (n >= N || 32 * p >= sb_bytes || gi >= (int)(row_bytes / sb_bytes)) return;
    for (int r = rbeg; r < rend; ++r) {
        int e = __ldcg(ids + r);
        int we = swapped_expert(e, swap_a, swap_b);
        prefetch_l2_line(W + (i64)we * expert_bytes + (i64)n * row_bytes + (i64)gi * sb_bytes +
                         32 * p);
    }
#endif
}

// y[i] = sum over z of parts[z * n + i], z ascending: the split-K partial sums, added in a
// fixed order.
extern "C" __global__ void sum_splits(const float* __restrict__ parts, float* __restrict__ y,
                                      i64 n, int splits) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = parts[i];
    for (int z = 1; z < splits; ++z) s += parts[(i64)z * n + i];
    y[i] = s;
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

#define TILED_KERNEL(NAME, TY, BT)                                                              \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MM_MIN_BLOCKS)                  \
        matmul_##NAME##_##BT(const u8* W, i64 row_bytes, i64 expert_bytes, const float* X,     \
                             float* Y, int N, int K, int T, const int* counts,                 \
                             const int* offsets, const int* in_rows, int swap_a, int swap_b,   \
                             int kspan, const int* zmap) {                                      \
        pdl_wait();                                                                             \
        int cnt = mm_count(counts, offsets, zmap, T);                                           \
        for (int t0 = blockIdx.y * BT; t0 < cnt; t0 += gridDim.y * BT)                          \
            matmul_tile<TY, BT>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets,    \
                                in_rows, swap_a, swap_b, kspan, t0, zmap);                      \
    }

#define TALL_KERNEL(NAME, TY, BN)                                                               \
    extern "C" __global__ void __launch_bounds__(2 * BN, MT_MIN_BLOCKS * 64 / BN)              \
        matmult_##NAME##_##BN(const u8* W, i64 row_bytes, i64 expert_bytes, const float* X,    \
                              float* Y, int N, int K, int T, const int* counts,                \
                              const int* offsets, const int* in_rows, int swap_a, int swap_b,  \
                              int kspan, const int* zmap) {                                     \
        pdl_wait();                                                                             \
        int cnt = mm_count(counts, offsets, zmap, T);                                           \
        for (int t0 = blockIdx.y * 64; t0 < cnt; t0 += gridDim.y * 64)                          \
            matmul_tall_tile<TY, BN>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts,        \
                                     offsets, in_rows, swap_a, swap_b, kspan, t0, zmap);        \
    }

// Before pdl_wait(): the weight rows of one one-row matvec block (a row per warp: rows
// blockIdx.x * warps .. of the matrix that expert 0 maps to, as matvec_warp maps it; the 8 rows
// from 8 nb with nb given) towards L2. Only where the rows do not depend on the kernel before:
// never an expert's (the routing picks it), and not split.
__device__ __forceinline__ void mw_prefetch(const u8* W, i64 row_bytes, i64 expert_bytes, int N,
                                            int swap_a, int swap_b, int nb = -1) {
    int per = nb < 0 ? (int)(blockDim.x >> 5) : MM_THREADS / 32;  // a warp per row
    if (nb < 0) nb = blockIdx.x;
    int n0 = nb * per, rows = min(per, N - n0);
    int we = swapped_expert(0, swap_a, swap_b);
    if (rows > 0)
        pdl_prefetch(W + (i64)we * expert_bytes + (i64)n0 * row_bytes, (i64)rows * row_bytes);
}

// matmulwn's rows of this block (every row group it takes, mwn_blocks), as mw_prefetch; bid
// and nblk as matvec_norm_body's.
__device__ __forceinline__ void mwn_prefetch(const MwnParts& parts, bool pair, int bid,
                                             int nblk) {
    int groups = parts.groups(), P = mwn_blocks(groups, pair, nblk);
    for (int b = bid; b < groups && bid < P; b += P) {
        MwnPart part = parts.at(b);
        mw_prefetch(part.W, part.row_bytes, 0, part.N, -1, -1, part.nb);
    }
}

// matmulwn_mix_<type>: one norm-folding launch for the projections of one input that come in
// two staged block types (a Q4_K_M model's q/k in Q4_K with its v in Q6_K in half the layers):
// blocks 0 .. na - 1 take the first part's rows (this module's type, up to three matrices,
// XN written by its block 0), the others the second part's (the other staged type,
// MwnOther), the first part as its own matmulwn launch of that many blocks would take them
// (pairs of row groups included), the second's blocks striding over its groups one at a time
// (fewer registers), each block normalizing the input itself: one launch, where the second used to wait for the first
// only to read the norm it wrote (H200, 30B-A3B shape: v_proj's launch added 4.2 us to the
// step in each of 24 layers). Every output is matmulwn's, bit for bit.
template <int TY> struct MwnOther {
    static constexpr int value = TY == T_Q4_K ? T_Q6_K : T_Q4_K;
};
__device__ __forceinline__ void mwn_mix_prefetch(const MwnParts& a, const MwnParts& b, int na) {
    int bid = blockIdx.x;
    if (bid < na)
        mwn_prefetch(a, true, bid, na);
    else
        mwn_prefetch(b, false, bid - na, gridDim.x - na);
}
template <int TY>
__device__ __forceinline__ void matvec_norm_mix(MwnParts a, MwnParts b, int na,
                                                const float* __restrict__ X,
                                                const float* __restrict__ G, float eps,
                                                float* __restrict__ XN, int K) {
    if constexpr (MwStaged<TY>::value) {
        __shared__ __align__(16) MwnShared sh;
        int bid = blockIdx.x;
        if (bid < na)
            matvec_norm_body<TY, 0, true>(a, X, G, eps, XN, K, sh, bid, na);
        else
            matvec_norm_body<MwnOther<TY>::value>(b, X, G, eps, nullptr, K, sh, bid - na,
                                                  gridDim.x - na);
    } else {
        __trap();  // the host mixes the staged types only
    }
}

// A block type's family: every matmul variant and the gather. Not instantiated here: the host
// compiles one module per block type a model uses, instantiating only that type
// (device.rs, module_source), so that loading never compiles the families of unused types.
#define MATMUL_KERNELS(NAME, TY)                                                                \
    TILED_KERNEL(NAME, TY, 16)                                                                  \
    TILED_KERNEL(NAME, TY, 32)                                                                  \
    TILED_KERNEL(NAME, TY, 64)                                                                  \
    TALL_KERNEL(NAME, TY, 64)                                                                   \
    TALL_KERNEL(NAME, TY, 128)                                                                  \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MV_MIN_BLOCKS)                  \
        matmulv_##NAME(const u8* W, i64 row_bytes, i64 expert_bytes, const float* X, float* Y, \
                       int N, int K, int T, const int* counts, const int* offsets,              \
                       const int* in_rows, int swap_a, int swap_b, int kspan,                   \
                       const int* zmap) {                                                       \
        pdl_wait();                                                                             \
        matvec_body<TY, 4>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets,         \
                           in_rows, swap_a, swap_b, kspan, zmap);                               \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MV_MIN_BLOCKS)                  \
        matmulw_##NAME(const u8* W, i64 row_bytes, i64 expert_bytes, const float* X, float* Y, \
                       int N, int K, int T, const int* counts, const int* offsets,              \
                       const int* in_rows, int swap_a, int swap_b, int kspan,                   \
                       const int* zmap) {                                                       \
        if (!counts && gridDim.z == 1)                                                          \
            mw_prefetch(W, row_bytes, expert_bytes, N, swap_a, swap_b);                         \
        pdl_wait();                                                                             \
        matvec_warp<TY>(W, row_bytes, expert_bytes, X, Y, N, K, T, counts, offsets, in_rows,   \
                        swap_a, swap_b, kspan, zmap);                                           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MV_MIN_BLOCKS)                     \
        matmulws_##NAME(const u8* W, i64 row_bytes, const float* X, float* Y, int N, int K) {   \
        mw_prefetch(W, row_bytes, 0, N, -1, -1);                                                \
        pdl_wait();                                                                             \
        matvec_warp_stream<TY>(W, row_bytes, X, Y, N, K);                                       \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MV_MIN_BLOCKS)                  \
        matmulwr_##NAME(const u8* W, i64 row_bytes, const float* X, float* Y, int N, int K,     \
                        const float* R, float* Z) {                                             \
        mw_prefetch(W, row_bytes, 0, N, -1, -1);                                                \
        pdl_wait();                                                                             \
        matvec_res_body<TY>(W, row_bytes, X, Y, N, K, R, Z);                                    \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MWN_MIN_BLOCKS)                     \
        matmulwn_##NAME(const u8* W0, const u8* W1, const u8* W2, i64 rb0, i64 rb1, i64 rb2,    \
                        int N0, int N1, int N2, const float* X, const float* G, float eps,      \
                        float* XN, float* Y0, float* Y1, float* Y2, int K) {                    \
        mwn_prefetch(MwnParts{W0, W1, W2, rb0, rb1, rb2, N0, N1, N2, Y0, Y1, Y2},               \
                     MwStaged<TY>::value, blockIdx.x, gridDim.x);                               \
        spread_prefetch(G, 4LL * K);                                                            \
        pdl_wait();                                                                             \
        __shared__ __align__(16) MwnShared sh;                                                  \
        matvec_norm_body<TY, 0, MwStaged<TY>::value>(                                           \
            MwnParts{W0, W1, W2, rb0, rb1, rb2, N0, N1, N2, Y0, Y1, Y2}, X, G, eps, XN, K, sh,  \
            blockIdx.x, gridDim.x);                                                             \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, MWN_MIN_BLOCKS)                     \
        matmulwn_mix_##NAME(const u8* W0, const u8* W1, const u8* W2, i64 rb0, i64 rb1,         \
                            i64 rb2, int N0, int N1, int N2, float* Y0, float* Y1, float* Y2,  \
                            const u8* V0, const u8* V1, const u8* V2, i64 rv0, i64 rv1,         \
                            i64 rv2, int M0, int M1, int M2, float* Z0, float* Z1, float* Z2,  \
                            int na, const float* X, const float* G, float eps, float* XN,      \
                            int K) {                                                            \
        mwn_mix_prefetch(MwnParts{W0, W1, W2, rb0, rb1, rb2, N0, N1, N2, Y0, Y1, Y2},           \
                         MwnParts{V0, V1, V2, rv0, rv1, rv2, M0, M1, M2, Z0, Z1, Z2}, na);      \
        spread_prefetch(G, 4LL * K);                                                            \
        pdl_wait();                                                                             \
        matvec_norm_mix<TY>(MwnParts{W0, W1, W2, rb0, rb1, rb2, N0, N1, N2, Y0, Y1, Y2},        \
                            MwnParts{V0, V1, V2, rv0, rv1, rv2, M0, M1, M2, Z0, Z1, Z2}, na, X, \
                            G, eps, XN, K);                                                     \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MM_THREADS, 1)                                 \
        matmulwn_route_##NAME(const u8* W, i64 rb, int N, const float* X, const float* G,       \
                              float eps, float* XN, float* Y, int K, float* probs, int* ids,    \
                              float* wts, int E, int k, int renorm, int* counts, int* offsets,  \
                              int* slot_token, int* slot_of, int* slot_expert,                 \
                              unsigned* done) {                                                 \
        mwn_prefetch(MwnParts{W, 0, 0, rb, 0, 0, N, 0, 0, Y, 0, 0}, false, blockIdx.x,          \
                     gridDim.x);                                                                \
        spread_prefetch(G, 4LL * K);                                                            \
        pdl_wait();                                                                             \
        __shared__ __align__(16) MwnShared sh;                                                  \
        __shared__ float ys[ROUTE1_THREADS];                                                    \
        bool cl = route_cluster();                                                              \
        if (cl) cluster_arrive_relaxed();                                                       \
        matvec_norm_body<TY, MW_XMAX / 128>(MwnParts{W, 0, 0, rb, 0, 0, N, 0, 0, Y, 0, 0}, X, G, \
                                            eps, XN, K, sh, blockIdx.x, gridDim.x,             \
                                            cl ? ys : nullptr);                                 \
        if (cl) {                                                                               \
            if (route_gather(ys, N))                                                            \
                route1_from(threadIdx.x < E ? ys[threadIdx.x] : -INFINITY, probs, ids, wts, E, \
                            k, renorm, counts, offsets, slot_token, slot_of, slot_expert);      \
        } else if (last_block_of_launch(done)) {                                                \
            route1_from(route1_logit(Y, E), probs, ids, wts, E, k, renorm, counts, offsets,    \
                        slot_token, slot_of, slot_expert);                                      \
        }                                                                                       \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(GU_THREADS, GU_MIN_BLOCKS)                  \
        gate_up_##NAME(const u8* Wg, const u8* Wu, i64 row_bytes, i64 expert_bytes,             \
                       const float* X, float* G, float* U, float* A, int N, int K,              \
                       const int* slot_expert, int swap_a, int swap_b, int slots) {             \
        if (!slot_expert) {                                                                     \
            mw_prefetch(Wg, row_bytes, expert_bytes, N, swap_a, swap_b);                        \
            mw_prefetch(Wu, row_bytes, expert_bytes, N, swap_a, swap_b);                        \
        }                                                                                       \
        pdl_wait();                                                                             \
        gate_up_body<TY>(Wg, Wu, row_bytes, expert_bytes, X, G, U, A, N, K, slot_expert, slots, \
                         swap_a, swap_b);                                                       \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(DC_THREADS, DC_MIN_BLOCKS)                  \
        down_combine_##NAME(const u8* W, i64 row_bytes, i64 expert_bytes, const float* act,     \
                            int N, int K, const int* ids, const int* slot_of, const float* wts, \
                            int k, int swap_a, int swap_b, const float* res, float* out,        \
                            float* lout) {                                                      \
        down_combine_prefetch<TY>(W, row_bytes, expert_bytes, N, ids, k, swap_a, swap_b);       \
        pdl_wait();                                                                             \
        down_combine_body<TY>(W, row_bytes, expert_bytes, act, N, K, ids, slot_of, wts, k,      \
                              swap_a, swap_b, res, out, lout);                                  \
    }                                                                                           \
    extern "C" __global__ void gather_##NAME(const u8* W, i64 row_bytes, const int* ids,        \
                                             float* out, int rows, int H) {                     \
        pdl_wait();                                                                             \
        gather_body<TY>(W, row_bytes, ids, out, rows, H);                                       \
    }
