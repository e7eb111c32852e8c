// Host check of the device decoders: compiles kernels/common.cuh with a host C++ compiler and
// proves that every dq8<TYPE> (8 values at a time, used by the matmul kernels) gives exactly
// the bits of dq<TYPE> (one value at a time, checked against gguf-py by the GPU tests), on
// random blocks, at every run of 8 in the row and at both 4- and 2-byte-aligned row starts.
// No GPU needed: `bash tools/cuda-host-check/run.sh`.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "host_cuda.h"

#include "../../src/backend/cuda/kernels/common.cuh"

struct Type { const char* name; int id; int block_bytes; int block_values; };

template <int TY>
static long check(const Type& t, std::mt19937_64& rng) {
    const int blocks = 16, K = blocks * t.block_values;
    long bad = 0;
    for (int rep = 0; rep < 200; ++rep) {
        for (int misalign : {0, 2}) {
            std::vector<uint8_t> buf(blocks * t.block_bytes + 32);
            for (auto& b : buf) b = (uint8_t)rng();
            if (rep % 2 == 0) {
                // realistic scales too: small finite f16 fields where the type has them
                for (int b = 0; b < blocks; ++b) {
                    uint8_t* p = buf.data() + misalign + b * t.block_bytes;
                    int at = t.id == T_Q6_K ? 208 : 0;
                    if (t.id != T_F32 && t.id != T_F16 && t.id != T_BF16) {
                        p[at] = (uint8_t)rng(); p[at + 1] = 0x20 | (rng() & 7);
                        if (t.id == T_Q4_K || t.id == T_Q5_K || t.id == T_Q4_1 || t.id == T_Q5_1) {
                            p[at + 2] = (uint8_t)rng(); p[at + 3] = 0x20 | (rng() & 7);
                        }
                    }
                }
            }
            const u8* row = buf.data() + misalign;
            for (int k0 = 0; k0 < K; k0 += 8) {
                float o[8];
                dq8<TY>(row, k0, o);
                for (int i = 0; i < 8; ++i) {
                    float want = dq<TY>(row, k0 + i);
                    bool same = __float_as_uint(o[i]) == __float_as_uint(want) || (std::isnan(o[i]) && std::isnan(want));
                    if (!same && bad++ < 5)
                        std::printf("%s k=%d misalign %d: dq8 %a, dq %a\n", t.name, k0 + i, misalign,
                                    o[i], want);
                }
            }
        }
    }
    std::printf("%-5s %s\n", t.name, bad ? "MISMATCH" : "dq8 == dq bit for bit");
    return bad;
}

int main() {
    std::mt19937_64 rng(42);
    long bad = 0;
    bad += check<T_F16>({"F16", T_F16, 2, 1}, rng);
    bad += check<T_BF16>({"BF16", T_BF16, 2, 1}, rng);
    bad += check<T_Q8_0>({"Q8_0", T_Q8_0, 34, 32}, rng);
    bad += check<T_Q4_0>({"Q4_0", T_Q4_0, 18, 32}, rng);
    bad += check<T_Q4_1>({"Q4_1", T_Q4_1, 20, 32}, rng);
    bad += check<T_Q5_0>({"Q5_0", T_Q5_0, 22, 32}, rng);
    bad += check<T_Q5_1>({"Q5_1", T_Q5_1, 24, 32}, rng);
    bad += check<T_Q4_K>({"Q4_K", T_Q4_K, 144, 256}, rng);
    bad += check<T_Q5_K>({"Q5_K", T_Q5_K, 176, 256}, rng);
    bad += check<T_Q6_K>({"Q6_K", T_Q6_K, 210, 256}, rng);
    return bad ? 1 : 0;
}
