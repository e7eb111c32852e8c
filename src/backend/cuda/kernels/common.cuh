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

// FALSIFIER_HOST_CHECK: tools/cuda-host-check compiles the decoders with a host C++ compiler
// (and its own definitions of these few device intrinsics) to prove them bit-exact without a
// GPU.
#ifndef FALSIFIER_HOST_CHECK
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
#endif

#ifdef FALSIFIER_TIMELINE
// FALSIFIER_TIMELINE (the host defines it with FALSIFIER_CUDA_TIMELINE set; timeline.rs):
// where a launch's time goes when its neighbours overlap it. Thread 0 of the first and the last
// TIMELINE_EDGE blocks of a launch (the blocks the scheduler starts first and last; sampled, so
// that the notes do not queue on one line of L2) notes in its launch's slot when it reached
// pdl_wait and when it got past it: the earliest entry and release, the latest release, and how
// many blocks noted. Fire-and-forget atomics. A launch's slot: its %gridid (which a CUDA
// graph's replays share) plus TIMELINE_STRIDE times the epoch in word 0 of the table, which the
// host bumps before each replay; the host sets each module's table pointer after loading it.
#define TIMELINE_SLOTS (1 << 18)
#define TIMELINE_WORDS 8
#define TIMELINE_STRIDE 4096
#define TIMELINE_EDGE 32
__device__ unsigned long long* falsifier_timeline;
__device__ __forceinline__ unsigned long long timeline_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
struct TimelineEntry {
    unsigned long long entered, epoch;
    bool noting;
};
__device__ __forceinline__ TimelineEntry timeline_enter() {
    TimelineEntry e{0, 0, false};
    unsigned long long* tab = falsifier_timeline;
    unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
    unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    e.noting = tab && threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0 &&
               (b < TIMELINE_EDGE || b + TIMELINE_EDGE >= blocks);
    if (e.noting) {
        e.epoch = *(volatile unsigned long long*)tab;  // (the host wrote it before the launch)
        e.entered = timeline_now();
    }
    return e;
}
__device__ __forceinline__ void timeline_note(const TimelineEntry& e) {
    if (!e.noting) return;
    unsigned long long released = timeline_now(), grid;
    asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
    unsigned long long at = (grid + TIMELINE_STRIDE * e.epoch) % (TIMELINE_SLOTS - 1) + 1;
    unsigned long long* slot = falsifier_timeline + at * TIMELINE_WORDS;
    // (the minima as maxima of the complement: the table starts zeroed)
    slot[0] = grid;
    slot[1] = e.epoch;
    atomicMax(slot + 2, ~e.entered);
    atomicMax(slot + 3, ~released);
    atomicMax(slot + 4, released);
    atomicAdd(slot + 5, 1ull);
}
#endif

// Programmatic dependent launch (sm_90 and later; the host sets the launch attribute there
// only). A kernel so launched may start while the kernel before it on the stream still runs:
// every kernel calls pdl_wait() before it reads or writes anything another kernel touches,
// and only prefetches constant weights before that (pdl_prefetch_rows). pdl_wait() also lets the
// next kernel be scheduled: it can then start its own prologue while this one runs, but never
// runs past its own pdl_wait() before this kernel has completed and its writes are visible. On
// older cards and under a plain launch both are no-ops. (tests: every kernel's body starts so,
// device.rs every_kernel_waits_for_the_one_before)
__device__ __forceinline__ void pdl_wait() {
#ifdef FALSIFIER_TIMELINE
    TimelineEntry entry = timeline_enter();
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#ifdef FALSIFIER_TIMELINE
    timeline_note(entry);
#endif
}

// Bytes [p, p + bytes) of constant weights towards L2, one 128-byte line per thread and step:
// what a matvec block will read, requested while the kernel before it still runs.
__device__ __forceinline__ void pdl_prefetch(const void* p, i64 bytes) {
#if defined(__CUDA_ARCH__)
    const char* b = (const char*)p;
    for (i64 o = 128LL * threadIdx.x; o < bytes; o += 128LL * blockDim.x)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(b + o));
#endif
}

// Thread-block clusters (sm_90 and later; the host sets a launch's cluster dimension there
// only, and on older cards, or a launch without it, a block is a cluster of one): the blocks
// of a cluster run at once and may read and write each other's shared memory. Blocks along x.
// The blocks of this block's cluster, and (rank, when set) this block's place among them.
__device__ __forceinline__ unsigned cluster_blocks(unsigned* rank = nullptr) {
    unsigned n = 1, r = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
#endif
    if (rank) *rank = r;
    return n;
}
// The half of the cluster barrier that says "this thread got here" (relaxed: it orders no
// memory), and the half that waits until every thread of the cluster has; each thread
// alternates them. cluster_sync: both, with this thread's writes before it (shared memory of
// any block of the cluster included) visible to every thread of the cluster after it.
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// v into the float at `p` (this block's shared memory) of block `rank` of the cluster.
__device__ __forceinline__ void cluster_store(float* p, unsigned rank, float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned long long s;
    unsigned remote;
    asm volatile("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"((unsigned)s), "r"(rank));
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(remote), "f"(v) : "memory");
#else
    if (rank == 0) *p = v;
#endif
}

// The line holding p towards L2 (a hint: no fault, no result).
__device__ __forceinline__ void prefetch_l2_line(const void* p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

// Bytes [p, p + bytes) of constant weights that every block of a launch reads (a norm's
// gamma) towards L2 before pdl_wait, each 128-byte line requested by one thread of the launch:
// line l by thread l / gridDim.x of block l % gridDim.x (blocks along x).
__device__ __forceinline__ void spread_prefetch(const void* p, i64 bytes) {
#if defined(__CUDA_ARCH__)
    if (!p || bytes <= 0) return;
    unsigned long long a = (unsigned long long)p & ~127ull;
    i64 lines = (i64)(((unsigned long long)p + bytes - 1 - a) >> 7) + 1;
    for (i64 l = blockIdx.x + (i64)gridDim.x * threadIdx.x; l < lines;
         l += (i64)gridDim.x * blockDim.x)
        prefetch_l2_line((const void*)(a + 128 * l));
#endif
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
#define T_IQ2_XXS 16
#define T_IQ2_XS 17
#define T_IQ3_XXS 18
#define T_IQ1_S 19
#define T_IQ4_NL 20
#define T_IQ3_S 21
#define T_IQ2_S 22
#define T_IQ4_XS 23
#define T_IQ1_M 29
#define T_BF16 30
#define T_TQ1_0 34
#define T_TQ2_0 35
#define T_MXFP4 39

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

// ---------------------------------------------------------------------------------------------
// i-quants, ternary and MXFP4 (layouts: ggml-common.h; lattice tables: grids.cuh, generated
// from gguf-py). Same arithmetic, in the same order, as src/model/quant/iq.rs and gguf-py:
// the scale first, e.g. (d * (0.5 + s)) * 0.25, then (scale * grid) * sign. Blocks of 17, 50,
// 54, 66, 74, 82, 98 and 110 bytes leave no useful alignment: every field is read bytewise.

__device__ __forceinline__ u32 ld16(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }

// Coordinate j of a packed grid point (byte j), as float.
__device__ __forceinline__ float gcoord(unsigned long long p, int j) {
    return (float)(u32)((p >> (8 * j)) & 255ull);
}

// +1 or -1 from bit j of a sign byte (set: negative).
__device__ __forceinline__ float sgn(u32 bits, int j) { return ((bits >> j) & 1u) ? -1.0f : 1.0f; }

// The 4-bit scale g of IQ2_XS/IQ2_S/IQ3_S: low nibble for even g, high for odd.
__device__ __forceinline__ u32 nib_scale(const u8* scales, int g) {
    return (scales[g >> 1] >> (4 * (g & 1))) & 15u;
}

// IQ2_XXS: d, then per 32 values 4 grid-index bytes and a word of four 7-bit sign indices with
// the scale on top.
template <> __device__ __forceinline__ float dq<T_IQ2_XXS>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 66;
    int v = k & 255, l = (v >> 3) & 3, j = v & 7;
    const u8* w = b + 2 + 8 * (v >> 5);
    u32 aux1 = ld32(w + 4);
    float db = __fmul_rn(__fmul_rn(ldh(b), __fadd_rn(0.5f, (float)(aux1 >> 28))), 0.25f);
    u32 signs = ksigns_iq2xs[(aux1 >> (7 * l)) & 127u];
    return __fmul_rn(__fmul_rn(db, gcoord(iq2xxs_grid[w[l]], j)), sgn(signs, j));
}

// IQ2_XS: d, qs[32] (u16: 9-bit grid index, 7-bit sign index), scales[8] (a nibble per 16).
template <> __device__ __forceinline__ float dq<T_IQ2_XS>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 74;
    int v = k & 255, j = v & 7;
    u32 q = ld16(b + 2 + 2 * (v >> 3));
    float s = (float)nib_scale(b + 66, v >> 4);
    float db = __fmul_rn(__fmul_rn(ldh(b), __fadd_rn(0.5f, s)), 0.25f);
    return __fmul_rn(__fmul_rn(db, gcoord(iq2xs_grid[q & 511u], j)), sgn(ksigns_iq2xs[q >> 9], j));
}

// IQ2_S: d, qs[32] (index low bytes), signs[32], qh[8] (index top 2 bits), scales[8].
template <> __device__ __forceinline__ float dq<T_IQ2_S>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 82;
    int v = k & 255, i = v >> 3, j = v & 7;
    u32 idx = (u32)b[2 + i] | (((b[66 + (i >> 2)] >> (2 * (i & 3))) & 3u) << 8);
    float s = (float)nib_scale(b + 74, v >> 4);
    float db = __fmul_rn(__fmul_rn(ldh(b), __fadd_rn(0.5f, s)), 0.25f);
    return __fmul_rn(__fmul_rn(db, gcoord(iq2s_grid[idx], j)), sgn(b[34 + i], j));
}

// IQ3_XXS: d, qs[64] (grid indices, 4 values each), then per 32 values a word of four 7-bit
// sign indices with the scale on top.
template <> __device__ __forceinline__ float dq<T_IQ3_XXS>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 98;
    int v = k & 255, ib = v >> 5, w = v & 31;
    u32 aux = ld32(b + 66 + 4 * ib);
    float db = __fmul_rn(__fmul_rn(ldh(b), __fadd_rn(0.5f, (float)(aux >> 28))), 0.5f);
    u32 signs = ksigns_iq2xs[(aux >> (7 * (w >> 3))) & 127u];
    float g = gcoord(iq3xxs_grid[b[2 + 8 * ib + (w >> 2)]], w & 3);
    return __fmul_rn(__fmul_rn(db, g), sgn(signs, w & 7));
}

// IQ3_S: d, qs[64] (index low bytes), qh[8] (9th bits), signs[32], scales[4] (scale 1 + 2s).
template <> __device__ __forceinline__ float dq<T_IQ3_S>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 110;
    int v = k & 255, ib = v >> 5, w = v & 31, i = 8 * ib + (w >> 2);
    u32 idx = (u32)b[2 + i] | (((b[66 + (i >> 3)] >> (i & 7)) & 1u) << 8);
    float db = __fmul_rn(ldh(b), (float)(1u + 2u * nib_scale(b + 106, ib)));
    float g = gcoord(iq3s_grid[idx], w & 3);
    return __fmul_rn(__fmul_rn(db, g), sgn(b[74 + 4 * ib + (w >> 3)], w & 7));
}

// IQ1 grid coordinate j: an int8 -1, 0 or 1.
__device__ __forceinline__ float g1coord(unsigned long long p, int j) {
    return (float)(signed char)(u8)((p >> (8 * j)) & 255ull);
}

// IQ1_S: d, qs[32], qh[8] (u16 per 32 values: four 3-bit index tops, 3-bit scale, delta sign).
template <> __device__ __forceinline__ float dq<T_IQ1_S>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 50;
    int v = k & 255, ib = v >> 5, l = (v >> 3) & 3;
    u32 h = ld16(b + 34 + 2 * ib);
    float dl = __fmul_rn(ldh(b), (float)(2u * ((h >> 12) & 7u) + 1u));
    float delta = (h & 0x8000u) ? -IQ1S_DELTA : IQ1S_DELTA;
    u32 idx = (u32)b[2 + 4 * ib + l] | (((h >> (3 * l)) & 7u) << 8);
    return __fmul_rn(dl, __fadd_rn(g1coord(iq1s_grid[idx], v & 7), delta));
}

// IQ1_M: qs[32], qh[16] (a nibble per 8 values: 3 index bits, delta sign), scales[8] (sixteen
// 3-bit scales; the f16 d in the top nibbles of the four u16 words).
template <> __device__ __forceinline__ float dq<T_IQ1_M>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 56;
    int v = k & 255, i = v >> 3, t = i >> 1;
    u32 s0 = ld16(b + 48), s1 = ld16(b + 50), s2 = ld16(b + 52), s3 = ld16(b + 54);
    u32 dbits = (s0 >> 12) | ((s1 >> 8) & 0x00F0u) | ((s2 >> 4) & 0x0F00u) | (s3 & 0xF000u);
    u32 sw = ld16(b + 48 + 2 * (t >> 2));
    float dl = __fmul_rn(h2f((u16)dbits), (float)(2u * ((sw >> (3 * (t & 3))) & 7u) + 1u));
    u32 nib = (b[32 + (i >> 1)] >> (4 * (i & 1))) & 15u;
    float delta = (nib & 8u) ? -IQ1S_DELTA : IQ1S_DELTA;
    u32 idx = (u32)b[i] | ((nib & 7u) << 8);
    return __fmul_rn(dl, __fadd_rn(g1coord(iq1s_grid[idx], v & 7), delta));
}

// TQ1_0: qs[48] (5 trits per byte), qh[4] (4 per byte), d. Trit n of a byte: the byte times
// 3^n, wrapped to 8 bits, then (q * 3) >> 8, minus 1.
template <> __device__ __forceinline__ float dq<T_TQ1_0>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 54;
    int v = k & 255, n, at;
    if (v < 160) { n = v >> 5; at = v & 31; }
    else if (v < 240) { n = (v - 160) >> 4; at = 32 + ((v - 160) & 15); }
    else { n = (v - 240) >> 2; at = 48 + ((v - 240) & 3); }
    const u32 pow3[5] = {1, 3, 9, 27, 81};
    u32 q = (b[at] * pow3[n]) & 255u;
    return __fmul_rn(ldh(b + 52), (float)((int)((q * 3u) >> 8) - 1));
}

// TQ2_0: qs[64] (value 128h + 32l + m in bits 2l of qs[32h + m], level - 1), d.
template <> __device__ __forceinline__ float dq<T_TQ2_0>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 66;
    int v = k & 255;
    u32 q = (b[32 * (v >> 7) + (v & 31)] >> (2 * ((v >> 5) & 3))) & 3u;
    return __fmul_rn(ldh(b + 64), (float)((int)q - 1));
}

// ggml's GGML_E8M0_TO_FP32_HALF: 2^(e-128) exactly (e = 0, 1: subnormals).
__device__ __forceinline__ float e8m0_half(u32 e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
}

// MXFP4: e (e8m0), qs[16]; value 2^(e-128) * doubled e2m1 level.
template <> __device__ __forceinline__ float dq<T_MXFP4>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 17;
    return __fmul_rn(e8m0_half(b[0]), (float)kvalues_mxfp4[nibble32(b + 1, k & 31)]);
}

// IQ4_NL: d, qs[16]; value d * kvalues_iq4nl[code].
template <> __device__ __forceinline__ float dq<T_IQ4_NL>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 5) * 18;
    return __fmul_rn(ldh(b), (float)kvalues_iq4nl[nibble32(b + 2, k & 31)]);
}

// IQ4_XS's 6-bit scale of group ib, minus 32: low nibble from scales_l, top 2 bits from
// the u16 scales_h.
__device__ __forceinline__ int iq4xs_scale(u32 scales_h, u32 scales_l_byte, int ib) {
    u32 lo = (scales_l_byte >> (4 * (ib & 1))) & 15u, hi = (scales_h >> (2 * ib)) & 3u;
    return (int)(lo | (hi << 4)) - 32;
}

// IQ4_XS: d, scales_h (u16), scales_l[4], qs[128]; group ib (32 values) has scale d * ls.
template <> __device__ __forceinline__ float dq<T_IQ4_XS>(const u8* __restrict__ row, int k) {
    const u8* b = row + (i64)(k >> 8) * 136;
    int v = k & 255, ib = v >> 5;
    float dl = __fmul_rn(ldh(b), (float)iq4xs_scale(ld16(b + 2), b[4 + (ib >> 1)], ib));
    return __fmul_rn(dl, (float)kvalues_iq4nl[nibble32(b + 8 + 16 * ib, v & 31)]);
}

// ---------------------------------------------------------------------------------------------
// Eight values at a time. The matmul kernels decode weights in runs of 8 consecutive values of
// one row (k0 % 8 == 0, all 8 in one block): the block's scales are read and combined once per
// run instead of once per value, and the quants come in with two or three word loads instead
// of eight byte loads. A run is decoded in two steps so that a kernel can issue the loads of
// its next chunk before it computes the current one: Run8<TY>::load reads the raw words (the
// only global memory access), Run8<TY>::decode turns them into floats. dq8 does both; it gives
// exactly dq<TY>(row, k0 + i) in o[i] (the same roundings in the same order;
// tools/cuda-host-check proves it bit for bit on random blocks).

// 8 bytes at p, which is only 2-byte aligned (every block size and row size is even): aligned
// word loads, shifted into place when p sits mid-word. Only then is a third word read, which
// can reach 2 bytes past the 8: weights are uploaded with 16 bytes of padding for this.
__device__ __forceinline__ void ld8(const u8* p, u32* lo, u32* hi) {
    unsigned long long a = (unsigned long long)p;
    const u32* w = (const u32*)(a & ~3ull);
    u32 w0 = w[0], w1 = w[1];
    if ((a & 2) == 0) {
        *lo = w0;
        *hi = w1;
    } else {
        u32 w2 = w[2];
        *lo = (w0 >> 16) | (w1 << 16);
        *hi = (w1 >> 16) | (w2 << 16);
    }
}

// ld8 with one 64-bit load where p is 8-byte aligned. Q4_K takes it: its 144-byte blocks keep
// rows 16-aligned, so every load of a run is (H200, 30B-A3B at T = 512: expert gate/up 10%
// faster); for types whose loads are aligned only now and then (Q6_K's 210-byte blocks) the
// extra branch costs more than it saves (Q6_K down and lm_head 9-15% slower), so they keep ld8.
__device__ __forceinline__ void ld8w(const u8* p, u32* lo, u32* hi) {
    if (((unsigned long long)p & 7) == 0) {
        uint2 v = *(const uint2*)p;
        *lo = v.x;
        *hi = v.y;
    } else {
        ld8(p, lo, hi);
    }
}

// Byte i (0..7) of the pair (lo, hi).
__device__ __forceinline__ u32 byte8(u32 lo, u32 hi, int i) {
    return ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 255u;
}

// (float)q for 0 <= q < 2^23, exactly, without the int-to-float unit (a quarter-rate path):
// the bits of 2^23 + q minus 2^23.
__device__ __forceinline__ float small_u2f(u32 q) {
    return __fsub_rn(__uint_as_float(0x4B000000u | q), 8388608.0f);
}

// Any type: no split, decode reads the row itself.
template <int TY> struct Run8 {
    const u8* row;
    int k0;
    __device__ __forceinline__ void load(const u8* __restrict__ r, int k) {
        row = r;
        k0 = k;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = dq<TY>(row, k0 + i);
    }
};

template <> struct Run8<T_Q8_0> {
    u32 d, lo, hi;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 5) * 34;
        d = *(const u16*)b;
        ld8(b + 2 + (k0 & 31), &lo, &hi);
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float df = h2f((u16)d);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            // int8 q as (q + 128) - 128, both exact in f32
            float q = __fsub_rn(small_u2f(byte8(lo, hi, i) ^ 128u), 128.0f);
            o[i] = __fmul_rn(q, df);
        }
    }
};

template <> struct Run8<T_Q4_0> {
    u32 d, lo, hi;
    int shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 5) * 18;
        int j0 = k0 & 31;
        d = *(const u16*)b;
        ld8(b + 2 + (j0 & 15), &lo, &hi);
        shift = j0 < 16 ? 0 : 4;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float df = h2f((u16)d);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float q = __fsub_rn(small_u2f((byte8(lo, hi, i) >> shift) & 15u), 8.0f);
            o[i] = __fmul_rn(df, q);
        }
    }
};

template <> struct Run8<T_Q4_1> {
    u32 dm, lo, hi;
    int shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 5) * 20;
        int j0 = k0 & 31;
        u32 q4;
        ld8(b, &dm, &q4);
        ld8(b + 4 + (j0 & 15), &lo, &hi);
        shift = j0 < 16 ? 0 : 4;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float d = h2f((u16)(dm & 0xffffu)), m = h2f((u16)(dm >> 16));
#pragma unroll
        for (int i = 0; i < 8; ++i)
            o[i] = __fadd_rn(__fmul_rn(d, small_u2f((byte8(lo, hi, i) >> shift) & 15u)), m);
    }
};

// The (scale, min) pair j of a Q4_K/Q5_K block from its 12 scale bytes as three words.
__device__ __forceinline__ void scale_min_k4_w(int j, u32 s0, u32 s1, u32 s2, u32* sc,
                                               u32* m) {
    int sh = 8 * (j & 3);
    u32 a = (s0 >> sh) & 255u, b = (s1 >> sh) & 255u, c = (s2 >> sh) & 255u;
    if (j < 4) {
        *sc = a & 63u;
        *m = b & 63u;
    } else {
        *sc = (c & 15u) | ((a >> 6) << 4);
        *m = (c >> 4) | ((b >> 6) << 4);
    }
}

template <> struct Run8<T_Q4_K> {
    u32 dd, s0, s1, s2, lo, up;
    int j, shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 8) * 144;
        int v = k0 & 255, c = v >> 6, hi = (v >> 5) & 1;
        ld8w(b, &dd, &s0);
        ld8w(b + 8, &s1, &s2);
        ld8w(b + 16 + 32 * c + (v & 31), &lo, &up);
        j = 2 * c + hi;
        shift = hi ? 4 : 0;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        u32 sc, m;
        scale_min_k4_w(j, s0, s1, s2, &sc, &m);
        float ds = __fmul_rn(h2f((u16)(dd & 0xffffu)), small_u2f(sc));
        float ms = __fmul_rn(h2f((u16)(dd >> 16)), small_u2f(m));
#pragma unroll
        for (int i = 0; i < 8; ++i)
            o[i] = __fsub_rn(__fmul_rn(ds, small_u2f((byte8(lo, up, i) >> shift) & 15u)), ms);
    }
};

template <> struct Run8<T_Q6_K> {
    u32 ql0, ql1, qh0, qh1, d, sc;
    int lsh, hsh;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 8) * 210;
        int v = k0 & 255, h = v >> 7, s = (v >> 5) & 3, j0 = v & 31;
        ld8(b + 64 * h + 32 * (s & 1) + j0, &ql0, &ql1);
        ld8(b + 128 + 32 * h + j0, &qh0, &qh1);
        d = *(const u16*)(b + 208);
        sc = b[192 + 8 * h + 2 * s + (j0 >> 4)];
        lsh = 4 * (s >> 1);
        hsh = 2 * s;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float scale = __fmul_rn(h2f((u16)d), (float)(signed char)sc);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            u32 q = ((byte8(ql0, ql1, i) >> lsh) & 15u) | (((byte8(qh0, qh1, i) >> hsh) & 3u) << 4);
            o[i] = __fmul_rn(scale, __fsub_rn(small_u2f(q), 32.0f));
        }
    }
};

// IQ4_NL: Q4_0's layout (18-byte blocks: 2-byte aligned) with the level table for the codes.
template <> struct Run8<T_IQ4_NL> {
    u32 d, lo, hi;
    int shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 5) * 18;
        int j0 = k0 & 31;
        d = *(const u16*)b;
        ld8(b + 2 + (j0 & 15), &lo, &hi);
        shift = j0 < 16 ? 0 : 4;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float df = h2f((u16)d);
#pragma unroll
        for (int i = 0; i < 8; ++i)
            o[i] = __fmul_rn(df, (float)kvalues_iq4nl[(byte8(lo, hi, i) >> shift) & 15u]);
    }
};

// IQ4_XS: 136-byte blocks keep rows 8-aligned, as Q4_K's: word loads throughout.
template <> struct Run8<T_IQ4_XS> {
    u32 dsh, sl, lo, hi;
    int ib, shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 8) * 136;
        int v = k0 & 255, j0 = v & 31;
        ib = v >> 5;
        ld8w(b, &dsh, &sl);
        ld8w(b + 8 + 16 * ib + (j0 & 15), &lo, &hi);
        shift = j0 < 16 ? 0 : 4;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        int ls = iq4xs_scale(dsh >> 16, (sl >> (8 * (ib >> 1))) & 255u, ib);
        float dl = __fmul_rn(h2f((u16)(dsh & 0xffffu)), (float)ls);
#pragma unroll
        for (int i = 0; i < 8; ++i)
            o[i] = __fmul_rn(dl, (float)kvalues_iq4nl[(byte8(lo, hi, i) >> shift) & 15u]);
    }
};

// MXFP4: 17-byte blocks, so a row may start at any byte: bytewise loads, but the scale is
// decoded once per run.
template <> struct Run8<T_MXFP4> {
    u32 e, lo, hi;
    int shift;
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        const u8* b = row + (i64)(k0 >> 5) * 17;
        int j0 = k0 & 31;
        const u8* q = b + 1 + (j0 & 15);
        e = b[0];
        lo = ld32(q);
        hi = ld32(q + 4);
        shift = j0 < 16 ? 0 : 4;
    }
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
        float d = e8m0_half(e);
#pragma unroll
        for (int i = 0; i < 8; ++i)
            o[i] = __fmul_rn(d, (float)kvalues_mxfp4[(byte8(lo, hi, i) >> shift) & 15u]);
    }
};

// F16 and BF16: 16 bytes of 8 halves, loaded alike, widened differently.
struct Halves8 {
    u32 w[4];
    __device__ __forceinline__ void load(const u8* __restrict__ row, int k0) {
        ld8(row + 2 * (i64)k0, &w[0], &w[1]);
        ld8(row + 2 * (i64)k0 + 8, &w[2], &w[3]);
    }
    __device__ __forceinline__ u32 half(int i) const {
        return (w[i >> 1] >> (16 * (i & 1))) & 0xffffu;
    }
};

template <> struct Run8<T_F16> : Halves8 {
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = h2f((u16)half(i));
    }
};

template <> struct Run8<T_BF16> : Halves8 {
    __device__ __forceinline__ void decode(float* __restrict__ o) const {
#pragma unroll
        for (int i = 0; i < 8; ++i) o[i] = __uint_as_float(half(i) << 16);
    }
};

template <int TY>
__device__ __forceinline__ void dq8(const u8* __restrict__ row, int k0, float* __restrict__ o) {
    Run8<TY> r;
    r.load(row, k0);
    r.decode(o);
}
