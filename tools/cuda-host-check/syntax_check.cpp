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
static void __syncwarp() {}
static unsigned __ballot_sync(unsigned, bool b) { return b; }
static int __popc(unsigned v) { return __builtin_popcount(v); }
static int min(int a, int b) { return a < b ? a : b; }
static int max(int a, int b) { return a > b ? a : b; }
static float __shfl_xor_sync(unsigned, float v, int) { return v; }
static double __shfl_xor_sync(unsigned, double v, int) { return v; }
static int __shfl_xor_sync(unsigned, int v, int) { return v; }
static unsigned short f2h(float) { return 0; }
#include "../../src/backend/cuda/kernels/grids.cuh"
#include "../../src/backend/cuda/kernels/common.cuh"
#include "../../src/backend/cuda/kernels/matmul.cu"
#include "../../src/backend/cuda/kernels/ops.cu"
#include "../../src/backend/cuda/kernels/attention.cu"
#include "../../src/backend/cuda/kernels/moe.cu"
