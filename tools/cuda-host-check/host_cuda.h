// Host stand-ins for the few CUDA built-ins the kernel sources use, shared by the host checks
// (dq8_check.cpp runs the decoders; syntax_check.cpp only type-checks every kernel file).
// Build with -ffp-contract=off: each __f*_rn is then one IEEE round-to-nearest operation, as on
// the device.
#pragma once
#include <cmath>
#include <cstring>

#define FALSIFIER_HOST_CHECK
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#undef INFINITY  // common.cuh defines its own (NVRTC has no math.h)

struct uint2 { unsigned x, y; };
static float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
static unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static float __fmul_rn(float a, float b) { return a * b; }
static float __fadd_rn(float a, float b) { return a + b; }
static float __fsub_rn(float a, float b) { return a - b; }
// IEEE half to float, exact (every half is a float)
static float h2f(unsigned short h) {
    unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 31) u = (s << 31) | 0x7f800000u | (m << 13);
    else if (e == 0) {
        if (m == 0) u = s << 31;
        else { float f = std::ldexp((float)m, -24); return s ? -f : f; }
    } else u = (s << 31) | ((e + 112) << 23) | (m << 13);
    return __uint_as_float(u);
}
