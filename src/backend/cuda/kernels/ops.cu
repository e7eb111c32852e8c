// Row-wise and element-wise stages: RMSNorm, NeoX RoPE, residual add, SwiGLU, and the planted
// faults that act on a stage's output (NaN at one element, scale drift) or on a matmul's input
// (Q8_0 activation rounding).
//
// Reductions that the CPU reference does in f64 are done in f64 here too (RMSNorm's sum of
// squares, RoPE's angles and rotation, SiLU), each with a fixed tree order: the f32 results then
// sit within one or two f32 roundings of the reference, and repeat bitwise from run to run.

// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * g. One block per row.
extern "C" __global__ void __launch_bounds__(RED_THREADS)
    rms_norm(const float* __restrict__ x, const float* __restrict__ g, float* __restrict__ y,
             int n, float eps) {
    pdl_wait();
    __shared__ double red[RED_THREADS / 32];
    const float* xr = x + (i64)blockIdx.x * n;
    float* yr = y + (i64)blockIdx.x * n;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += RED_THREADS) ss += (double)xr[i] * (double)xr[i];
    ss = block_sum(ss, red);
    double inv = 1.0 / sqrt(ss / (double)n + (double)eps);
    for (int i = threadIdx.x; i < n; i += RED_THREADS)
        yr[i] = (float)((double)xr[i] * inv * (double)g[i]);
}

// RoPE angles, once per forward for every layer's q and k: tab[pos, j] = (cos a, sin a) with
// a = pos * inv_freq_j, inv_freq_j = theta^(-2j/D) / factors[j] (the divisors of llama 3's
// rope_freqs; factors NULL for none), all in f64 (the costly part of RoPE).
extern "C" __global__ void rope_table(double2* __restrict__ tab, int T, int D, float theta,
                                      const float* __restrict__ factors) {
    pdl_wait();
    int half = D / 2;
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)T * half) return;
    int j = (int)(i % half), pos = (int)(i / half);
    double inv = pow((double)theta, -(double)(2 * j) / (double)D);
    if (factors) inv = inv / (double)factors[j];
    double a = (double)pos * inv;
    tab[i] = make_double2(cos(a), sin(a));
}

// RoPE over the n rows of x [n, heads, D] at positions pos0 .. pos0 + n - 1 (a step's
// positions; pos0 = 0 in every step under the planted rope_pos_reset; read from *posp instead
// when posp is set, for a decode step replayed from a CUDA graph), out of place, with the
// angles of rope_table. NeoX pairs (j, j + D/2) (qwen2, qwen3); adjacent pairs (2j, 2j+1) with
// the same angle index j (llama, on the converter's permuted rows). The planted rope_pair_swap
// runs the other pairing.
extern "C" __global__ void rope(const float* __restrict__ x, float* __restrict__ y,
                                const double2* __restrict__ tab, int n, int heads, int D,
                                int adjacent, int pos0, const int* __restrict__ posp) {
    pdl_wait();
    int half = D / 2;
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (i64)n * heads * half) return;
    int j = (int)(i % half);
    i64 th = i / half;
    int pos = (posp ? *posp : pos0) + (int)(th / heads);
    double2 cs = tab[(i64)pos * half + j];
    double c = cs.x, s = cs.y;
    i64 base = th * D;
    i64 i1 = adjacent ? base + 2 * j : base + j;
    i64 i2 = adjacent ? base + 2 * j + 1 : base + j + half;
    double x1 = x[i1], x2 = x[i2];
    y[i1] = (float)(x1 * c - x2 * s);
    y[i2] = (float)(x2 * c + x1 * s);
}

// y[r, c] += b[c] for the rows of y [rows, n]: a projection's bias (qwen2), one f32 rounding.
extern "C" __global__ void add_bias_rows(float* __restrict__ y, const float* __restrict__ b,
                                         i64 rows, int n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n) y[i] = y[i] + b[i % n];
}

// y[i] = sigmoid(x[i]) in f64, rounded once: the shared expert's gate (qwen2moe).
extern "C" __global__ void sigmoid(const float* __restrict__ x, float* __restrict__ y, i64 n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = (float)(1.0 / (1.0 + exp(-(double)x[i])));
}

// x[r, c] *= g[r] for x [rows, n]: the shared expert's output scaled by its gate.
extern "C" __global__ void scale_rows(float* __restrict__ x, const float* __restrict__ g,
                                      i64 rows, int n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < rows * n) x[i] = x[i] * g[i / n];
}

// y[i] += b[i] in place (the shared expert added to the routed experts' sum).
extern "C" __global__ void accumulate(float* __restrict__ y, const float* __restrict__ b, i64 n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = y[i] + b[i];
}

// Residual add, one f32 rounding per element.
extern "C" __global__ void add(const float* __restrict__ a, const float* __restrict__ b,
                               float* __restrict__ y, i64 n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

// SwiGLU: silu(gate) * up, in f64, rounded once.
extern "C" __global__ void silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                    float* __restrict__ y, i64 n) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double g = gate[i];
    y[i] = (float)(g / (1.0 + exp(-g)) * (double)up[i]);
}

// Planted scale_drift: x *= f (f = 1 + eps, rounded to f32 on the host).
extern "C" __global__ void scale_inplace(float* __restrict__ x, i64 n, float f) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = x[i] * f;
}

// One row of len values into row (*posp - row0) of dst: a decode step replayed from a CUDA
// graph keeps its logits row where the host copies all decode rows from at the end.
extern "C" __global__ void store_row_at(const float* __restrict__ src, float* __restrict__ dst,
                                        i64 len, const int* __restrict__ posp, int row0) {
    pdl_wait();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) dst[(i64)(*posp - row0) * len + i] = src[i];
}

// Planted nan: one element becomes NaN.
extern "C" __global__ void set_nan(float* __restrict__ x, i64 idx) {
    pdl_wait();
    if (blockIdx.x == 0 && threadIdx.x == 0) x[idx] = __int_as_float(0x7fc00000);
}

// Planted act_q8_rounding: each row of K values is rounded in blocks of 32 (a trailing partial
// block over its own length), as ggml's quantize_row_q8_0_ref followed by dequantize_row_q8_0:
// d = amax/127, q = roundf(x * (1/d)) (0 when d == 0), value = q * f16(d). amax follows C's
// MAX macro (NaN handling included); the int8 conversion saturates and maps NaN to 0, as
// Rust's `as i8` does on the CPU side. One thread per (row, block).
extern "C" __global__ void round_q8_0(const float* __restrict__ x, float* __restrict__ y,
                                      int rows, int K) {
    pdl_wait();
    int per_row = (K + 31) / 32;
    i64 blk = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (blk >= (i64)rows * per_row) return;
    i64 row = blk / per_row;
    int b = (int)(blk % per_row);
    i64 i0 = row * K + (i64)b * 32;
    int len = min(32, K - b * 32);
    float amax = 0.0f;
    for (int j = 0; j < len; ++j) {
        float a = fabsf(x[i0 + j]);
        amax = amax > a ? amax : a;
    }
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    float dh = h2f(f2h(d));
    for (int j = 0; j < len; ++j) {
        float r = roundf(__fmul_rn(x[i0 + j], id));
        // an int8 level has no sign of zero: -0.5 rounds to level 0, which decodes to +0
        int q = r != r ? 0 : (int)fminf(fmaxf(r, -128.0f), 127.0f);
        y[i0 + j] = __fmul_rn((float)q, dh);
    }
}
