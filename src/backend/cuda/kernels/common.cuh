// Shared device helpers: integer types, f16/bf16 conversion without headers (NVRTC builds these
// files with no include path), and one decoder per GGML block type.
//
// dq<TYPE>(row, k) returns value k of a row stored in that type. The arithmetic follows the CPU
// decoders (src/model/quant/dequant.rs) operation for operation, with explicit round-to-nearest
// intrinsics so that the compiler cannot contract a multiply and an add into an FMA: decoded
// weights are then bit-identical to the CPU's, and every difference between the backends comes
// from summation order alone.

// NVRTC compiles without the C library headers: define what math.h would.
#define INFINITY __int_as_float(0x7f800000)

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Block fields sit at even offsets but blocks of 18/22/34/210 bytes break wider alignment:
// assemble them byte by byte.
__device__ __forceinline__ float ldh(const u8* p) { return h2f((u16)p[0] | ((u16)p[1] << 8)); }

// ggml type ids (enum ggml_type).
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14
#define T_BF16 30

template <int TY> __device__ __forceinline__ float dq(const u8* __restrict__ row, int k);

template <> __device__ __forceinline__ float dq<T_F32>(const u8* __restrict__ row, int k) {
    return ((const float*)row)[k];
}

template <> __device__ __forceinline__ float dq<T_F16>(const u8* __restrict__ row, int k) {
    return h2f(((const u16*)row)[k]);
}

template <> __device__ __forceinline__ float dq<T_BF16>(const u8* __restrict__ row, int k) {
    return __uint_as_float(((u32)((const u16*)row)[k]) << 16);
}

template <> __device__ __forceinline__ float dq<T_Q8_0>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 34;
    return __fmul_rn((float)(signed char)b[2 + (k & 31)], ldh(b));
}

// Low nibble for values 0..15 of a 32-block, high nibble for 16..31.
__device__ __forceinline__ int nibble32(const u8* qs, int j) {
    u8 byte = qs[j & 15];
    return j < 16 ? (byte & 15) : (byte >> 4);
}

template <> __device__ __forceinline__ float dq<T_Q4_0>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 18;
    return __fmul_rn(ldh(b), (float)(nibble32(b + 2, k & 31) - 8));
}

template <> __device__ __forceinline__ float dq<T_Q4_1>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 20;
    return __fadd_rn(__fmul_rn(ldh(b), (float)nibble32(b + 4, k & 31)), ldh(b + 2));
}

__device__ __forceinline__ u32 ld32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

template <> __device__ __forceinline__ float dq<T_Q5_0>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 22;
    int j = k & 31;
    int q = nibble32(b + 6, j) | (int)(((ld32(b + 2) >> j) & 1) << 4);
    return __fmul_rn(ldh(b), (float)(q - 16));
}

template <> __device__ __forceinline__ float dq<T_Q5_1>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 24;
    int j = k & 31;
    int q = nibble32(b + 8, j) | (int)(((ld32(b + 4) >> j) & 1) << 4);
    return __fadd_rn(__fmul_rn(ldh(b), (float)q), ldh(b + 2));
}

// ggml's get_scale_min_k4: the 6-bit (scale, min) pair j of a Q4_K/Q5_K block.
__device__ __forceinline__ void scale_min_k4(int j, const u8* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// Q4_K: d, dmin, scales[12], qs[128]. Value v: chunk c = v/64 holds two 32-value groups, the
// low nibbles of qs[32c..32c+32] then their high nibbles; value = (d*sc)*q - dmin*m.
template <> __device__ __forceinline__ float dq<T_Q4_K>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 144;
    int v = k & 255, c = v >> 6, hi = (v >> 5) & 1, l = v & 31;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    u8 byte = b[16 + 32 * c + l];
    int q = hi ? (byte >> 4) : (byte & 15);
    float ds = __fmul_rn(ldh(b), (float)sc);
    float ms = __fmul_rn(ldh(b + 2), (float)m);
    return __fsub_rn(__fmul_rn(ds, (float)q), ms);
}

// Q5_K: d, dmin, scales[12], qh[32], qs[128]; the fifth bit of value v is bit (2c+hi) of qh[l].
template <> __device__ __forceinline__ float dq<T_Q5_K>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 176;
    int v = k & 255, c = v >> 6, hi = (v >> 5) & 1, l = v & 31;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    u8 byte = b[48 + 32 * c + l];
    int q = (hi ? (byte >> 4) : (byte & 15)) | (((b[16 + l] >> (2 * c + hi)) & 1) << 4);
    float ds = __fmul_rn(ldh(b), (float)sc);
    float ms = __fmul_rn(ldh(b + 2), (float)m);
    return __fsub_rn(__fmul_rn(ds, (float)q), ms);
}

// Q6_K: ql[128], qh[64], scales[16] (int8), d. In half h (128 values), quarter s (32 values)
// takes the low (s<2) or high nibble of ql[64h + 32(s%2) + j] and bits 2s of qh[32h + j];
// scales change every 16 values.
template <> __device__ __forceinline__ float dq<T_Q6_K>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 210;
    int v = k & 255, h = v >> 7, s = (v >> 5) & 3, j = v & 31;
    int lq = b[64 * h + 32 * (s & 1) + j];
    int hb = b[128 + 32 * h + j];
    int q = (((lq >> (4 * (s >> 1))) & 15) | (((hb >> (2 * s)) & 3) << 4)) - 32;
    float scale = __fmul_rn(ldh(b + 208), (float)(signed char)b[192 + 8 * h + 2 * s + (j >> 4)]);
    return __fmul_rn(scale, (float)q);
}
