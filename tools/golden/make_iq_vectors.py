#!/usr/bin/env python3
"""Reference vectors for the i-quant, ternary and MXFP4 block formats, dequantized by gguf-py.

For each type: random blocks (random bytes whose f16 scale, or MXFP4's e8m0 exponent, is
overwritten by a finite value of a realistic size, either sign), then edge cases: a zero scale,
all code bytes 0x00 and 0xFF, sweeps that use every grid point and every sign pattern (the 128
ksigns indices, all 256 sign bytes, both IQ1 delta signs) and every 4-bit scale, and for MXFP4
the extreme exponents (0, 1, 2 and 252 with every code; 253..255 with the codes that keep the
value finite).

Output: iq-vectors.safetensors with, per type T, the keys
  T.raw  uint8  [n_blocks, block_bytes]   the blocks as stored in a GGUF file
  T.f32  float32 [n_blocks, block_values]  gguf.quants.dequantize(T.raw, T)
Run:  pip install gguf numpy safetensors && python3 make_iq_vectors.py [--out DIR]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyreq import need  # noqa: E402

need("numpy", "gguf", "safetensors")

import numpy as np  # noqa: E402
import gguf  # noqa: E402
import gguf.quants  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

QT = gguf.GGMLQuantizationType
# byte offset of the f16 super-block scale (IQ1_M splits it: handled apart; MXFP4 has e8m0)
F16_AT = {"IQ2_XXS": 0, "IQ2_XS": 0, "IQ2_S": 0, "IQ3_XXS": 0, "IQ3_S": 0, "IQ1_S": 0,
          "IQ4_NL": 0, "IQ4_XS": 0, "TQ1_0": 52, "TQ2_0": 64}
TYPES = ["IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M",
         "TQ1_0", "TQ2_0", "MXFP4"]


def scales(rng, n):
    s = rng.uniform(0.5, 2.0, n) * 10.0 ** rng.integers(-4, -1, n) * rng.choice([-1.0, 1.0], n)
    return s.astype(np.float16)


def set_f16(raw, at, vals):
    raw[:, at:at + 2] = vals.astype(np.float16).view(np.uint8).reshape(len(raw), 2)


def set_iq1m_d(raw, vals):
    """IQ1_M keeps its f16 d in the top nibbles of the four u16 scale words (bytes 48..56)."""
    bits = vals.astype(np.float16).view(np.uint16)
    sc = raw[:, 48:56].copy().view(np.uint16)
    for w in range(4):
        sc[:, w] = (sc[:, w] & 0x0FFF) | (((bits >> (4 * w)) & 0xF) << 12)
    raw[:, 48:56] = sc.view(np.uint8)


def set_scale(name, raw, vals):
    if name == "IQ1_M":
        set_iq1m_d(raw, vals)
    else:
        set_f16(raw, F16_AT[name], vals)


def put_u16(raw, at, vals):
    raw[:, at:at + 2 * vals.shape[1]] = vals.astype(np.uint16).view(np.uint8).reshape(len(raw), -1)


def put_u32(raw, at, vals):
    raw[:, at:at + 4 * vals.shape[1]] = vals.astype(np.uint32).view(np.uint8).reshape(len(raw), -1)


def sweeps(name, rng, bb):
    """Blocks that walk every grid point, sign pattern and 4-bit scale of `name`."""
    def blocks(n):
        return rng.integers(0, 256, size=(n, bb), dtype=np.uint8)
    if name == "IQ2_XXS":  # 8 groups x (4 index bytes, u32: 4x7 sign bits, scale nibble)
        n = 8
        raw = blocks(n)
        idx = np.arange(256).reshape(n, 8, 4)
        sgn = np.arange(n * 32).reshape(n, 8, 4) % 128
        aux1 = sum(sgn[..., l].astype(np.uint32) << (7 * l) for l in range(4))
        aux1 |= (np.arange(n * 8).reshape(n, 8) % 16).astype(np.uint32) << 28
        for g in range(8):
            raw[:, 2 + 8 * g:6 + 8 * g] = idx[:, g]
            put_u32(raw, 6 + 8 * g, aux1[:, g:g + 1])
        return raw
    if name == "IQ2_XS":  # 32 u16: 9-bit index | 7-bit sign index; 8 scale bytes
        n = 16
        raw = blocks(n)
        idx = np.arange(512).reshape(n, 32)
        put_u16(raw, 2, idx | ((idx % 128) << 9))
        raw[:, 66:74] = (np.arange(n * 8).reshape(n, 8) * 17) % 256
        return raw
    if name == "IQ2_S":  # qs[32], signs[32], qh[8] (2 bits per index), scales[8]
        n = 32
        raw = blocks(n)
        idx = np.arange(1024).reshape(n, 32)
        raw[:, 2:34] = idx & 255
        hi = (idx >> 8).reshape(n, 8, 4)
        raw[:, 66:74] = sum(hi[..., k] << (2 * k) for k in range(4))
        raw[:, 34:66] = np.arange(n * 32).reshape(n, 32) % 256
        raw[:, 74:82] = (np.arange(n * 8).reshape(n, 8) * 17) % 256
        return raw
    if name == "IQ3_XXS":  # qs[64], 8 u32 (4x7 sign bits, scale nibble)
        n = 4
        raw = blocks(n)
        raw[:, 2:66] = np.arange(256).reshape(n, 64)
        sgn = np.arange(n * 32).reshape(n, 8, 4) % 128
        aux = sum(sgn[..., l].astype(np.uint32) << (7 * l) for l in range(4))
        aux |= (np.arange(n * 8).reshape(n, 8) % 16).astype(np.uint32) << 28
        put_u32(raw, 66, aux)
        return raw
    if name == "IQ3_S":  # qs[64], qh[8] (9th bits), signs[32], scales[4]
        n = 8
        raw = blocks(n)
        idx = np.arange(512).reshape(n, 64)
        raw[:, 2:66] = idx & 255
        hi = (idx >> 8).reshape(n, 8, 8)
        raw[:, 66:74] = sum(hi[..., k] << k for k in range(8))
        raw[:, 74:106] = np.arange(n * 32).reshape(n, 32) % 256
        raw[:, 106:110] = (np.arange(n * 4).reshape(n, 4) * 17) % 256
        return raw
    if name in ("IQ1_S", "IQ1_M"):  # 2048 grid points, 32 indices per block
        n = 64
        raw = blocks(n)
        idx = np.arange(2048).reshape(n, 32)
        if name == "IQ1_S":  # qs[32] at 2, u16 qh[8] at 34: 4x3 index bits, 3-bit scale, sign
            raw[:, 2:34] = idx & 255
            hi = (idx >> 8).reshape(n, 8, 4)
            qh = sum(hi[..., k].astype(np.uint16) << (3 * k) for k in range(4))
            qh |= (np.arange(n * 8).reshape(n, 8) % 8).astype(np.uint16) << 12
            qh |= ((np.arange(n * 8).reshape(n, 8) // 3) % 2).astype(np.uint16) << 15
            put_u16(raw, 34, qh)
        else:  # qs[32] at 0, qh[16] at 32: per index a nibble (3 bits, delta sign)
            raw[:, 0:32] = idx & 255
            nib = ((idx >> 8) | ((np.arange(n * 32).reshape(n, 32) // 3) % 2) << 3).reshape(n, 16, 2)
            raw[:, 32:48] = nib[..., 0] | (nib[..., 1] << 4)
        return raw
    if name == "TQ1_0":  # every byte value in qs and qh
        n = 6
        raw = blocks(n)
        raw[:, 0:52] = (np.arange(n * 52).reshape(n, 52)) % 256
        return raw
    if name == "TQ2_0":
        n = 4
        raw = blocks(n)
        raw[:, 0:64] = np.arange(n * 64).reshape(n, 64) % 256
        return raw
    # IQ4_NL, IQ4_XS, MXFP4: every code in every position via the byte sweep
    n = 8
    raw = blocks(n)
    start = 1 if name == "MXFP4" else (8 if name == "IQ4_XS" else 2)
    raw[:, start:] = np.arange(n * (bb - start)).reshape(n, -1) % 256
    if name == "IQ4_XS":  # every 6-bit scale (scales_h u16 at 2, scales_l[4] at 4)
        ls = np.arange(n * 8).reshape(n, 8) % 64
        put_u16(raw, 2, sum((ls[:, ib] >> 4).astype(np.uint16) << (2 * ib) for ib in range(8)).reshape(n, 1))
        lo = (ls & 15).reshape(n, 4, 2)
        raw[:, 4:8] = lo[..., 0] | (lo[..., 1] << 4)
    return raw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--blocks", type=int, default=64)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    out = {}
    for name in TYPES:
        qt = QT[name]
        bv, bb = gguf.GGML_QUANT_SIZES[qt]
        parts = [rng.integers(0, 256, size=(a.blocks, bb), dtype=np.uint8), sweeps(name, rng, bb)]
        edge = rng.integers(0, 256, size=(3, bb), dtype=np.uint8)
        lo = 1 if name == "MXFP4" else 2
        edge[1, lo:] = 0x00
        edge[2, lo:] = 0xFF
        parts.append(edge)
        raw = np.concatenate(parts)
        if name == "MXFP4":
            raw[:, 0] = rng.integers(110, 136, size=len(raw))
            ext = np.concatenate([sweeps(name, rng, bb)[:2] for _ in range(5)])
            ext[:, 0] = np.repeat([0, 1, 2, 3, 252], 2)
            # 253..255: only codes 0, 1, 8, 9 (|value| <= 1 * 2^(e-128)) keep 2^127 finite
            top = rng.choice(np.array([0, 1, 8, 9], dtype=np.uint8), size=(3, 32))
            top_raw = np.zeros((3, bb), dtype=np.uint8)
            top_raw[:, 0] = [253, 254, 255]
            top_raw[:, 1:] = top[:, :16] | (top[:, 16:] << 4)
            raw = np.concatenate([raw, ext, top_raw])
        else:
            s = scales(rng, len(raw))
            s[len(raw) - 3] = 0.0  # the first edge block: zero scale
            set_scale(name, raw, s)
        f32 = gguf.quants.dequantize(raw, qt).reshape(len(raw), bv).astype(np.float32)
        assert np.isfinite(f32).all(), name
        out[f"{name}.raw"] = raw
        out[f"{name}.f32"] = f32
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "iq-vectors.safetensors")
    # one metadata key: safetensors writes several in a random order, and the file should
    # regenerate byte for byte
    made = f'{__import__("importlib.metadata").metadata.version("gguf")} (numpy {np.__version__})'
    save_file(out, path, metadata={"gguf_py": made})
    print("wrote", path, {k: v.shape for k, v in out.items() if k.endswith(".raw")})


if __name__ == "__main__":
    main()
