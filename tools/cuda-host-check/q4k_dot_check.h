// Run (run.sh builds syntax_check.cpp a third time, with -DFALSIFIER_DOT_MAIN): the Q4_K one-row
// dot on its scaled input (nibbles masked in place as subnormals, matmul.cu's q4k_pos) against
// the same dot on the unscaled input (the subtracting one, `plain`), on random superblocks and
// inputs: every lane's result bit for bit where the inputs are of ordinary size, within the
// subnormal rounding's bound where they are so small that the scaled sums go subnormal; and the range check (q4k_big) that
// sends a block to the unscaled path. Needs IEEE subnormals (no flush to zero): -O1, no
// -ffast-math.
#include <cstdio>
#include <cstring>
#include <vector>

namespace q4k_check {
unsigned long long state = 0x9E3779B97F4A7C15ull;
unsigned next() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return (unsigned)(state >> 11);
}
float uniform() { return (float)(next() & 0xFFFFFF) / 16777216.0f; }  // [0, 1)
unsigned short half_of(float v) {  // a positive normal half near v (v in [2^-14, 2^15))
    int e = 0;
    float m = std::frexp(v, &e);  // v = m 2^e, m in [0.5, 1)
    return (unsigned short)(((e - 1 + 15) << 10) | ((unsigned)((m * 2.0f - 1.0f) * 1024.0f) & 1023));
}

// All 8 lanes' dots of one row of nsb superblocks against x, scaled and plain, each added to
// `acc`; returns the number of lanes that differ by more than `tol` (0: bit for bit).
int compare_row(int nsb, const std::vector<float>& x, float acc, double tol, bool* any_big) {
    int K = 256 * nsb;
    std::vector<unsigned char> row(144 * nsb);
    for (int s = 0; s < nsb; ++s) {
        unsigned char* b = row.data() + 144 * s;
        unsigned short d = half_of(1e-3f + uniform() * 0.1f), dm = half_of(1e-3f + uniform() * 0.05f);
        std::memcpy(b, &d, 2);
        std::memcpy(b + 2, &dm, 2);
        for (int i = 4; i < 144; ++i) b[i] = (unsigned char)next();
    }
    static float xs[MW_XMAX + MW_XMAX / 16], xp[MW_XMAX + MW_XMAX / 16];
    static float sum_s[MW_SUMS_MAX], sum_p[MW_SUMS_MAX];
    bool big = false;
    for (int i = 0; i < K; i += 4) {
        float4 v = {x[i], x[i + 1], x[i + 2], x[i + 3]};
        big |= mw_put4<T_Q4_K>(xs, sum_s, i, v, false);
        mw_put4<T_Q4_K>(xp, sum_p, i, v, true);
    }
    *any_big = big;
    // the run sums as mw_put4's lanes make them (run16_sum's tree; no warps here), of the
    // input as it was: the same for both stagings
    for (int j = 0; j < K / 16; ++j) {
        const float* r = x.data() + 16 * j;
        float q[4];
        for (int m = 0; m < 4; ++m) q[m] = (r[4 * m] + r[4 * m + 1]) + (r[4 * m + 2] + r[4 * m + 3]);
        sum_s[j] = sum_p[j] = (q[0] + q[1]) + (q[2] + q[3]);
    }
    int bad = 0;
    for (int s = 0; s < nsb; ++s)
        for (int p = 0; p < 8; ++p) {
            MwPiece<T_Q4_K> w;
            w.load(row.data(), s, p);
            float a = w.dot(xs, sum_s, s, p, acc, false), b = w.dot(xp, sum_p, s, p, acc, true);
            bool same = tol == 0.0 ? std::memcmp(&a, &b, 4) == 0 : std::fabs((double)a - b) <= tol;
            if (!same && bad++ < 3)
                std::printf("q4k dot: superblock %d lane %d: scaled %.9g, plain %.9g\n", s, p, a, b);
        }
    return bad;
}
// q4k_pair_scales against scale_min_k4_w (ggml's get_scale_min_k4) on random scale bytes:
// every pair of every lane, exactly. Returns the number that differ.
int check_pair_scales() {
    int bad = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        unsigned s0 = next() ^ (next() << 16), s1 = next() ^ (next() << 16), s2 = next() ^ (next() << 16);
        for (int c = 0; c < 4; ++c) {
            float got[4];
            q4k_pair_scales(c, s0, s1, s2, &got[0], &got[1], &got[2], &got[3]);
            unsigned want[4];
            scale_min_k4_w(2 * c, s0, s1, s2, &want[0], &want[1]);
            scale_min_k4_w(2 * c + 1, s0, s1, s2, &want[2], &want[3]);
            for (int i = 0; i < 4; ++i)
                if (got[i] != (float)want[i] && bad++ < 3)
                    std::printf("q4k_pair_scales: c %d value %d: %g, want %u\n", c, i, got[i], want[i]);
        }
    }
    return bad;
}

}  // namespace q4k_check

int main() {
    using namespace q4k_check;
    int bad = check_pair_scales(), rows = 0;
    bool big = false;
    for (int trial = 0; trial < 400; ++trial) {
        int nsb = 1 + (int)(next() % 8);
        std::vector<float> x(256 * nsb);
        // ordinary inputs: magnitudes 1e-6 .. 1e4, both signs, some exact zeros
        for (float& v : x) {
            float m = std::pow(10.0f, -6.0f + 10.0f * uniform());
            v = (next() & 7) == 0 ? 0.0f : ((next() & 1) ? m : -m) * (0.5f + uniform());
        }
        bad += compare_row(nsb, x, 0.25f, 0.0, &big);
        bad += big;  // nothing here is out of the scaled range
        ++rows;
    }
    // inputs so small that the scaled partial sums are subnormal, from a zero accumulator (so
    // that nothing larger hides the difference): each of a lane's 32 FMAs then rounds to 2^-150
    // scaled, 2^-65 of the unscaled sum, which the lane multiplies by d sc (< 0.102 * 63 here):
    // within 32 * 2^-65 * 6.5 < 2^-57
    for (int trial = 0; trial < 50; ++trial) {
        std::vector<float> x(256);
        for (float& v : x) v = ((next() & 1) ? 1e-20f : -1e-20f) * (0.5f + uniform());
        bad += compare_row(1, x, 0.0f, std::ldexp(1.0, -57), &big);
        ++rows;
    }
    // the range check: 2^63 and more (finite) is out of range, infinities and NaN are not
    const float inf = __uint_as_float(0x7f800000u), nan = __uint_as_float(0x7fc00000u);
    bool range_ok = !q4k_big(9.2233715e18f) && q4k_big(9223372036854775808.0f) &&
                    q4k_big(-3.0e38f) && !q4k_big(inf) && !q4k_big(-inf) && !q4k_big(nan) &&
                    !q4k_big(1.0f);
    if (!range_ok) std::printf("q4k_big: wrong range\n");
    if (bad || !range_ok) return 1;
    std::printf("q4k scaled dot == plain dot on %d rows (8 lanes a superblock)\n", rows);
    return 0;
}
