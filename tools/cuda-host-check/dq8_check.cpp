// Host check of the device decoders: compiles kernels/common.cuh with a host C++ compiler and
// proves that every dq8<TYPE> (8 values at a time, used by the matmul kernels) gives exactly
// the bits of dq<TYPE> (one value at a time, checked against gguf-py by the GPU tests), on
// random blocks, at every run of 8 in the row and at 4- and 2-byte-aligned row starts (and odd
// ones for MXFP4's 17-byte blocks); and that dq<TYPE> of the i-quant, ternary and MXFP4 types
// gives exactly gguf-py's values on fixtures/iq-vectors.safetensors (argv[1]).
// No GPU needed: `bash tools/cuda-host-check/run.sh`.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "host_cuda.h"

#include "../../src/backend/cuda/kernels/grids.cuh"
#include "../../src/backend/cuda/kernels/common.cuh"

struct Type { const char* name; int id; int block_bytes; int block_values; };

template <int TY>
static long check(const Type& t, std::mt19937_64& rng) {
    const int blocks = 16, K = blocks * t.block_values;
    long bad = 0;
    for (int rep = 0; rep < 200; ++rep) {
        for (int misalign : {0, 2, 1, 3}) {
            if (misalign % 2 && t.block_bytes % 2 == 0) continue;  // even blocks: even rows
            std::vector<uint8_t> buf(blocks * t.block_bytes + 32);
            for (auto& b : buf) b = (uint8_t)rng();
            if (rep % 2 == 0) {
                // realistic scales too: small finite f16 fields where the type has them
                for (int b = 0; b < blocks; ++b) {
                    uint8_t* p = buf.data() + misalign + b * t.block_bytes;
                    int at = t.id == T_Q6_K ? 208 : t.id == T_TQ1_0 ? 52 : t.id == T_TQ2_0 ? 64 : 0;
                    if (t.id != T_F32 && t.id != T_F16 && t.id != T_BF16 && t.id != T_MXFP4 &&
                        t.id != T_IQ1_M) {
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
    std::printf("%-7s %s\n", t.name, bad ? "MISMATCH" : "dq8 == dq bit for bit");
    return bad;
}

// A safetensors file, read without a JSON library: an 8-byte header length, the JSON header
// (each tensor's dtype, shape and byte range), then the data.
struct SafeTensors {
    std::vector<uint8_t> bytes;
    std::string head;
    size_t base = 0;
    bool load(const char* path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) return false;
        bytes.assign(std::istreambuf_iterator<char>(f), {});
        if (bytes.size() < 8) return false;
        uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        if (8 + n > bytes.size()) return false;
        head.assign((const char*)bytes.data() + 8, n);
        base = 8 + n;
        return true;
    }
    // The bytes of tensor `key`, or nullptr.
    const uint8_t* tensor(const std::string& key, size_t* len) const {
        size_t at = head.find("\"" + key + "\"");
        if (at == std::string::npos) return nullptr;
        size_t off = head.find("\"data_offsets\":[", at);
        if (off == std::string::npos) return nullptr;
        char* end;
        unsigned long long a = std::strtoull(head.c_str() + off + 16, &end, 10);
        unsigned long long b = std::strtoull(end + 1, nullptr, 10);
        if (b < a || base + b > bytes.size()) return nullptr;
        *len = b - a;
        return bytes.data() + base + a;
    }
};

// dq<TY> over every fixture block (the blocks back to back, as one row) against gguf-py's
// values, bit for bit; and dq8 over the same row against dq.
template <int TY>
static long check_vectors(const Type& t, const SafeTensors& st) {
    size_t nraw = 0, nf = 0;
    const uint8_t* raw = st.tensor(std::string(t.name) + ".raw", &nraw);
    const uint8_t* f32 = st.tensor(std::string(t.name) + ".f32", &nf);
    if (!raw || !f32 || nraw % t.block_bytes || nf != nraw / t.block_bytes * t.block_values * 4) {
        std::printf("%-7s fixture keys missing or of the wrong size\n", t.name);
        return 1;
    }
    std::vector<uint8_t> row(raw, raw + nraw);
    row.resize(nraw + 16);  // the device pads weights too (ld8 may read 2 bytes past)
    long n = (long)(nraw / t.block_bytes * t.block_values), bad = 0;
    for (long k = 0; k < n; ++k) {
        float want;
        std::memcpy(&want, f32 + 4 * k, 4);
        float got = dq<TY>(row.data(), (int)k);
        if (__float_as_uint(got) != __float_as_uint(want) && bad++ < 5)
            std::printf("%s value %ld (block %ld): dq %a, gguf-py %a\n", t.name, k,
                        k / t.block_values, got, want);
    }
    for (long k0 = 0; k0 < n; k0 += 8) {
        float o[8];
        dq8<TY>(row.data(), (int)k0, o);
        for (int i = 0; i < 8; ++i)
            if (__float_as_uint(o[i]) != __float_as_uint(dq<TY>(row.data(), (int)k0 + i)) && bad++ < 5)
                std::printf("%s value %ld: dq8 differs from dq\n", t.name, k0 + i);
    }
    std::printf("%-7s %s (%ld values)\n", t.name, bad ? "MISMATCH" : "dq == gguf-py bit for bit", n);
    return bad;
}

int main(int argc, char** argv) {
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
    const Type iq[] = {
        {"IQ2_XXS", T_IQ2_XXS, 66, 256}, {"IQ2_XS", T_IQ2_XS, 74, 256}, {"IQ2_S", T_IQ2_S, 82, 256},
        {"IQ3_XXS", T_IQ3_XXS, 98, 256}, {"IQ3_S", T_IQ3_S, 110, 256}, {"IQ1_S", T_IQ1_S, 50, 256},
        {"IQ1_M", T_IQ1_M, 56, 256},     {"IQ4_NL", T_IQ4_NL, 18, 32},  {"IQ4_XS", T_IQ4_XS, 136, 256},
        {"TQ1_0", T_TQ1_0, 54, 256},     {"TQ2_0", T_TQ2_0, 66, 256},   {"MXFP4", T_MXFP4, 17, 32},
    };
    bad += check<T_IQ2_XXS>(iq[0], rng);
    bad += check<T_IQ2_XS>(iq[1], rng);
    bad += check<T_IQ2_S>(iq[2], rng);
    bad += check<T_IQ3_XXS>(iq[3], rng);
    bad += check<T_IQ3_S>(iq[4], rng);
    bad += check<T_IQ1_S>(iq[5], rng);
    bad += check<T_IQ1_M>(iq[6], rng);
    bad += check<T_IQ4_NL>(iq[7], rng);
    bad += check<T_IQ4_XS>(iq[8], rng);
    bad += check<T_TQ1_0>(iq[9], rng);
    bad += check<T_TQ2_0>(iq[10], rng);
    bad += check<T_MXFP4>(iq[11], rng);
    SafeTensors st;
    if (argc < 2 || !st.load(argv[1])) {
        std::printf("usage: dq8_check fixtures/iq-vectors.safetensors (could not read it)\n");
        return 1;
    }
    bad += check_vectors<T_IQ2_XXS>(iq[0], st);
    bad += check_vectors<T_IQ2_XS>(iq[1], st);
    bad += check_vectors<T_IQ2_S>(iq[2], st);
    bad += check_vectors<T_IQ3_XXS>(iq[3], st);
    bad += check_vectors<T_IQ3_S>(iq[4], st);
    bad += check_vectors<T_IQ1_S>(iq[5], st);
    bad += check_vectors<T_IQ1_M>(iq[6], st);
    bad += check_vectors<T_IQ4_NL>(iq[7], st);
    bad += check_vectors<T_IQ4_XS>(iq[8], st);
    bad += check_vectors<T_TQ1_0>(iq[9], st);
    bad += check_vectors<T_TQ2_0>(iq[10], st);
    bad += check_vectors<T_MXFP4>(iq[11], st);
    return bad ? 1 : 0;
}
