// Syntax and type check of all kernel sources with a host C++ compiler (no GPU, no nvcc): the
// CUDA built-ins the kernels use get host stand-ins that are never run. Catches typos before
// a GPU run; NVRTC on the device stays the real compiler.
#include "host_cuda.h"
#define __global__
#define __shared__
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
struct dim3 { unsigned x, y, z; };
static dim3 blockIdx, threadIdx, blockDim, gridDim;
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
struct double2 { double x, y; };
static double2 make_double2(double x, double y) { return {x, y}; }
static void __syncthreads() {}
static int __syncthreads_or(int p) { return p; }
static void __syncwarp() {}
static unsigned __ballot_sync(unsigned, bool b) { return b; }
static int __popc(unsigned v) { return __builtin_popcount(v); }
static int min(int a, int b) { return a < b ? a : b; }
static int max(int a, int b) { return a > b ? a : b; }
static float __shfl_xor_sync(unsigned, float v, int) { return v; }
static double __shfl_xor_sync(unsigned, double v, int) { return v; }
static int __shfl_xor_sync(unsigned, int v, int) { return v; }
static float __shfl_sync(unsigned, float v, int) { return v; }
static int __shfl_sync(unsigned, int v, int) { return v; }
static unsigned short f2h(float) { return 0; }
struct uint4 { unsigned x, y, z, w; };
template <typename T> static T __ldg(const T* p) { return *p; }
template <typename T> static T __ldcg(const T* p) { return *p; }
static void __threadfence() {}
static unsigned atomicAdd(unsigned* p, unsigned v) { unsigned o = *p; *p += v; return o; }
#define __noinline__ __attribute__((noinline))
static void __trap() {}
// byte n of the result is byte (s >> 4n) & 7 of the pair (y:x)
static unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) r |= (unsigned)((v >> (8 * ((s >> (4 * n)) & 7))) & 255) << (8 * n);
    return r;
}
#include "../../src/backend/cuda/kernels/grids.cuh"
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/route.cuh"
// (built as a program, only the routing's file: the others' shared-memory externs would need a
// device to link)
#ifdef FALSIFIER_DOT_MAIN
#include "../../src/backend/cuda/kernels/matmul.cu"
#include "q4k_dot_check.h"
#else
#ifndef FALSIFIER_HOST_MAIN
#include "../../src/backend/cuda/kernels/matmul.cu"
#include "../../src/backend/cuda/kernels/ops.cu"
#include "../../src/backend/cuda/kernels/attention.cu"
#endif
#include "../../src/backend/cuda/kernels/moe.cu"
#ifdef FALSIFIER_HOST_MAIN
double sm_exp[1];  // softmax_rows' dynamic shared memory, never touched here
#else
// every block type's family, as the host instantiates it one module per type (device.rs,
// type_instantiation); tests check that this list names every TYPE_SUFFIXES entry
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
MATMUL_KERNELS(iq2_xxs, T_IQ2_XXS)
MATMUL_KERNELS(iq2_xs, T_IQ2_XS)
MATMUL_KERNELS(iq2_s, T_IQ2_S)
MATMUL_KERNELS(iq3_xxs, T_IQ3_XXS)
MATMUL_KERNELS(iq3_s, T_IQ3_S)
MATMUL_KERNELS(iq1_s, T_IQ1_S)
MATMUL_KERNELS(iq1_m, T_IQ1_M)
MATMUL_KERNELS(iq4_nl, T_IQ4_NL)
MATMUL_KERNELS(iq4_xs, T_IQ4_XS)
MATMUL_KERNELS(tq1_0, T_TQ1_0)
MATMUL_KERNELS(tq2_0, T_TQ2_0)
MATMUL_KERNELS(mxfp4, T_MXFP4)
#endif

#ifdef FALSIFIER_HOST_MAIN
// Run (run.sh builds this file a second time, as a program): moe_route1 ranks the experts by
// topk_key integers where topk and the separate kernels use topk_before; the two orders must
// agree on every pair, NaN, signed zeros, infinities and subnormals included.
#include <cstdio>
int main() {
    const float nan = __uint_as_float(0x7fc00000u), nan2 = __uint_as_float(0xffc00001u);
    const float inf = __uint_as_float(0x7f800000u), sub = __uint_as_float(1u);
    const float vals[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 0.25f, 1e-30f, -1e-30f, sub, -sub,
                          inf, -inf, nan, nan2, 3.0e38f, -3.0e38f, 0.125f, 0.1250001f};
    int bad = 0, n = sizeof(vals) / sizeof(vals[0]);
    for (int a = 0; a < n; ++a)
        for (int b = 0; b < n; ++b)
            for (int ia = 0; ia < 3; ++ia)
                for (int ib = 0; ib < 3; ++ib) {
                    if (a == b && ia == ib) continue;
                    bool want = topk_before(vals[a], ia, vals[b], ib);
                    bool got = topk_key(vals[a], ia) > topk_key(vals[b], ib);
                    if (want != got && bad++ < 10)
                        std::printf("topk_key disagrees: (%g, %d) vs (%g, %d): %d != %d\n",
                                    vals[a], ia, vals[b], ib, got, want);
                }
    if (bad) return 1;
    std::printf("topk_key == topk_before on %d pairs\n", n * n * 9 - n * 3);
    return 0;
}
#endif
#endif  // FALSIFIER_DOT_MAIN
