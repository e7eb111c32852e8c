#!/usr/bin/env python3
"""What a decode step would cost if its quantized dots cost less (a diagnostic, not a model).

Copies the kernel sources from SRC to DST with the one-row dot of each Q4_K and Q6_K piece
(MwPiece<T_Q4_K>::dot, MwPiece<T_Q6_K>::dot in matmul.cu: every one-token matvec, expert and
output-head launch reads its weights through them) cut down, everything else unchanged: the
same launches, loads of every weight byte, input staging, norms, routing, attention, handoffs.

    python3 tools/gpu/free-dots.py MODE src/backend/cuda/kernels /tmp/kernels-MODE

MODE onefma: one f32 FMA a weight against the staged input, no decoding (a quant word,
    masked once, multiplies each of its weights' inputs): the floor of any exact f32 dot,
    whatever the dequantization.
MODE loads: no arithmetic a weight; the piece's loaded words are folded into the sum once, so
    the loads stay: the floor of any dot arithmetic at all (tensor cores, integer dots of
    quantized activations included).

Benched through FALSIFIER_CUDA_KERNELS=DST (tools/gpu/merged.sh VARIANTS, setup.sh's variant);
the routing then sees garbage logits, but a token still reads k experts' rows, so the bytes a
step reads are the same. Its outputs are garbage.
"""
import pathlib
import sys

# the dot's opening line in each piece, and what each mode returns in its place
PIECES = {
    "template <> struct MwPiece<T_Q4_K> {": {
        "open": "bool plain) const {",
        "loads": """
        return acc + __uint_as_float((qs.x ^ qs.y ^ qs.z ^ qs.w ^ hd.x ^ hd.y ^ hd.z ^ hd.w)
                                     & 0x007fffffu) * xs[(256 * s + 16 * p) & 15];
""",
        "onefma": """
        {
            int i0 = 256 * s + 64 * (p >> 1) + 16 * (p & 1);
            const float* x0 = xs + mw_pad(i0, 6);
            const float* x1 = x0 + 32;
            float s0 = 0.0f, s1 = 0.0f;
            u32 words[4] = {qs.x, qs.y, qs.z, qs.w};
#pragma unroll
            for (int wi = 0; wi < 4; ++wi) {
                float4 a = *(const float4*)(x0 + 4 * wi);
                float4 bb = *(const float4*)(x1 + 4 * wi);
                float w = __uint_as_float(words[wi] & 0x007fffffu);
                s0 = fmaf(w, a.x, s0);
                s1 = fmaf(w, bb.x, s1);
                s0 = fmaf(w, a.y, s0);
                s1 = fmaf(w, bb.y, s1);
                s0 = fmaf(w, a.z, s0);
                s1 = fmaf(w, bb.z, s1);
                s0 = fmaf(w, a.w, s0);
                s1 = fmaf(w, bb.w, s1);
            }
            return acc + __uint_as_float(hd.x & 0x007fffffu) * (s0 + s1);
        }
""",
    },
    "template <> struct MwPiece<T_Q6_K> {": {
        "open": "float acc, bool) const {",
        "loads": """
        return acc + __uint_as_float((la0 ^ la1 ^ lb0 ^ lb1 ^ h0 ^ h1 ^ c0 ^ c1 ^ (u32)d)
                                     & 0x007fffffu) * xs[(256 * s + 8 * p) & 15];
""",
        "onefma": """
        {
            int hh = p >> 2, q = p & 3;
            u32 words[4] = {la0 ^ h0, lb0 ^ h1, la1 ^ c0, lb1 ^ c1};
#pragma unroll
            for (int qq = 0; qq < 4; ++qq) {
                const float* xb = xs + mw_pad(256 * s + 128 * hh + 32 * qq + 8 * q, 7);
                float4 a = *(const float4*)xb, bb = *(const float4*)(xb + 4);
                float w = __uint_as_float(words[qq] & 0x007fffffu), t = 0.0f;
                t = fmaf(w, a.x, t);
                t = fmaf(w, a.y, t);
                t = fmaf(w, a.z, t);
                t = fmaf(w, a.w, t);
                t = fmaf(w, bb.x, t);
                t = fmaf(w, bb.y, t);
                t = fmaf(w, bb.z, t);
                t = fmaf(w, bb.w, t);
                acc += t;
            }
            return acc + __uint_as_float((u32)d);
        }
""",
    },
}


def cut(text, mode, path):
    for struct, piece in PIECES.items():
        at = text.find(struct)
        if at < 0:
            sys.exit(f"{path}: no `{struct}`")
        open_at = text.find(piece["open"], at)
        if open_at < 0:
            sys.exit(f"{path}: no dot `{piece['open']}` after `{struct}`")
        end = open_at + len(piece["open"])
        text = text[:end] + piece[mode] + text[end:]
    return text


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("onefma", "loads"):
        print(__doc__)
        return 2
    mode, src, dst = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    dst.mkdir(parents=True, exist_ok=True)
    found = False
    for f in sorted(src.iterdir()):
        text = f.read_text()
        if "struct MwPiece<T_Q4_K>" in text:
            text = cut(text, mode, f)
            found = True
        (dst / f.name).write_text(text)
    if not found:
        sys.exit(f"{src}: no file defines the Q4_K/Q6_K pieces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
