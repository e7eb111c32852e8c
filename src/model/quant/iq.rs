//! Decoders for ggml's i-quants (IQ1_S…IQ4_XS), ternary (TQ1_0, TQ2_0) and MXFP4 blocks.
//!
//! Layouts follow ggml-common.h. Each decoder computes what gguf-py's numpy dequantizer
//! computes, in the same f32 operations in the same order (the scale first, e.g.
//! `(d * (0.5 + s)) * 0.25`, then `(scale * grid) * sign`), so results agree bit for bit: a
//! change of order would round differently. The lattice tables come from gguf-py through
//! [`super::grids`].

use super::dequant::f16_at;
use super::grids::{
    IQ1S_DELTA, IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID,
    KSIGNS_IQ2XS, KVALUES_IQ4NL, KVALUES_MXFP4,
};

/// Coordinate `j` of a packed grid point (ggml: byte `j` of the word).
#[inline]
fn coord(point: u64, j: usize) -> u8 {
    (point >> (8 * j)) as u8
}

/// `+1` or `-1` from bit `j` of a sign byte (set means negative).
#[inline]
fn sign(bits: u8, j: usize) -> f32 {
    if (bits >> j) & 1 == 0 { 1.0 } else { -1.0 }
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 4-bit scale `g` of IQ2_XS/IQ2_S/IQ3_S: low nibble for even `g`, high for odd.
#[inline]
fn nibble_scale(scales: &[u8], g: usize) -> u32 {
    ((scales[g / 2] >> (4 * (g % 2))) & 0xF) as u32
}

/// block_iq2_xxs: d, then per 32 values two words: four grid indices (bytes), and four 7-bit
/// sign indices with the 4-bit scale on top.
pub(super) fn iq2_xxs(b: &[u8; 66], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let groups = b[2..].as_chunks::<8>().0;
    for (w, o) in groups.iter().zip(o.as_chunks_mut::<32>().0) {
        let aux1 = u32_at(w, 4);
        let db = d * (0.5 + (aux1 >> 28) as f32) * 0.25;
        for (l, o) in o.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            let point = IQ2XXS_GRID[w[l] as usize];
            let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
            for (j, o) in o.iter_mut().enumerate() {
                *o = db * coord(point, j) as f32 * sign(signs, j);
            }
        }
    }
}

/// block_iq2_xs: d, qs[32] (u16: 9-bit grid index, 7-bit sign index), scales[8] (one nibble
/// per 16 values).
pub(super) fn iq2_xs(b: &[u8; 74], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for (g, o) in o.as_chunks_mut::<16>().0.iter_mut().enumerate() {
        let db = d * (0.5 + nibble_scale(scales, g) as f32) * 0.25;
        for (k, o) in o.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            let q = u16_at(b, 2 + 2 * (2 * g + k));
            let point = IQ2XS_GRID[(q & 511) as usize];
            let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
            for (j, o) in o.iter_mut().enumerate() {
                *o = db * coord(point, j) as f32 * sign(signs, j);
            }
        }
    }
}

/// block_iq2_s: d, qs[32] (low 8 bits of the grid index), signs[32] (one bit per value),
/// qh[8] (the index's top 2 bits, four per byte), scales[8] (one nibble per 16 values).
pub(super) fn iq2_s(b: &[u8; 82], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let (qs, signs, qh, scales) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
    for (g, o) in o.as_chunks_mut::<16>().0.iter_mut().enumerate() {
        let db = d * (0.5 + nibble_scale(scales, g) as f32) * 0.25;
        for (k, o) in o.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            let i = 2 * g + k;
            let idx = qs[i] as usize | ((((qh[i / 4] >> (2 * (i % 4))) & 3) as usize) << 8);
            let point = IQ2S_GRID[idx];
            for (j, o) in o.iter_mut().enumerate() {
                *o = db * coord(point, j) as f32 * sign(signs[i], j);
            }
        }
    }
}

/// block_iq3_xxs: d, qs[64] (grid indices, 4 values each), then per 32 values a word of four
/// 7-bit sign indices with the 4-bit scale on top.
pub(super) fn iq3_xxs(b: &[u8; 98], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for (ib, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        // one grid point per 4 values, one sign byte per 8: looked up once each
        for (g, o) in o.as_chunks_mut::<4>().0.iter_mut().enumerate() {
            let point = IQ3XXS_GRID[qs[8 * ib + g] as usize] as u64;
            let signs = KSIGNS_IQ2XS[((aux >> (7 * (g / 2))) & 127) as usize];
            for (j, o) in o.iter_mut().enumerate() {
                *o = db * coord(point, j) as f32 * sign(signs, 4 * (g % 2) + j);
            }
        }
    }
}

/// block_iq3_s: d, qs[64] (low 8 bits of the grid index), qh[8] (the 9th bits), signs[32] (one
/// bit per value), scales[4] (one nibble per 32 values; scale `1 + 2s`).
pub(super) fn iq3_s(b: &[u8; 110], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let (qs, qh, signs, scales) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
    for (ib, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let db = d * (1 + 2 * nibble_scale(scales, ib)) as f32;
        // one grid point per 4 values: looked up once
        for (g, o) in o.as_chunks_mut::<4>().0.iter_mut().enumerate() {
            let i = 8 * ib + g;
            let idx = qs[i] as usize | ((((qh[i / 8] >> (i % 8)) & 1) as usize) << 8);
            let point = IQ3S_GRID[idx] as u64;
            let bits = signs[4 * ib + g / 2];
            for (j, o) in o.iter_mut().enumerate() {
                *o = db * coord(point, j) as f32 * sign(bits, 4 * (g % 2) + j);
            }
        }
    }
}

/// block_iq1_s: d, qs[32] (low 8 bits of the grid index), qh[8] (u16 per 32 values: four 3-bit
/// index tops, a 3-bit scale, the delta's sign in bit 15). Value `dl * (grid + delta)`.
pub(super) fn iq1_s(b: &[u8; 50], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for (ib, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let h = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * ((h >> 12) & 7) + 1) as f32;
        let delta = if h & 0x8000 == 0 {
            IQ1S_DELTA
        } else {
            -IQ1S_DELTA
        };
        for (l, o) in o.as_chunks_mut::<8>().0.iter_mut().enumerate() {
            let idx = qs[4 * ib + l] as usize | ((((h >> (3 * l)) & 7) as usize) << 8);
            let point = IQ1S_GRID[idx];
            for (j, o) in o.iter_mut().enumerate() {
                *o = dl * (coord(point, j) as i8 as f32 + delta);
            }
        }
    }
}

/// block_iq1_m: qs[32], qh[16] (per 8 values a nibble: 3 index bits, the delta's sign),
/// scales[8] (sixteen 3-bit scales, one per 16 values; the f16 `d` split over the four top
/// nibbles of its u16 words).
pub(super) fn iq1_m(b: &[u8; 56], o: &mut [f32; 256]) {
    let (qs, qh) = (&b[..32], &b[32..48]);
    let sc = [0, 1, 2, 3].map(|w| u16_at(b, 48 + 2 * w));
    let d_bits =
        (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
    let d = half::f16::from_bits(d_bits).to_f32();
    for (i, o) in o.as_chunks_mut::<8>().0.iter_mut().enumerate() {
        let t = i / 2; // the 16-value group
        let s = (sc[t / 4] >> (3 * (t % 4))) & 7;
        let dl = d * (2 * s + 1) as f32;
        let nib = (qh[i / 2] >> (4 * (i % 2))) & 15;
        let idx = qs[i] as usize | (((nib & 7) as usize) << 8);
        let delta = if nib & 8 == 0 {
            IQ1S_DELTA
        } else {
            -IQ1S_DELTA
        };
        let point = IQ1S_GRID[idx];
        for (j, o) in o.iter_mut().enumerate() {
            *o = dl * (coord(point, j) as i8 as f32 + delta);
        }
    }
}

/// A TQ1_0 trit: the byte multiplied by 3^n (wrapping, as ggml's uint8 arithmetic), then its
/// top trit `(q * 3) >> 8`, as -1, 0 or 1.
#[inline]
fn trit(byte: u8, pow3: u8) -> f32 {
    let q = byte.wrapping_mul(pow3) as u16;
    (((q * 3) >> 8) as i8 - 1) as f32
}

/// block_tq1_0: qs[48] (5 trits per byte), qh[4] (4 trits per byte), d. Values: 5×32 from
/// qs[0..32], 5×16 from qs[32..48], 4×4 from qh.
pub(super) fn tq1_0(b: &[u8; 54], o: &mut [f32; 256]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    let d = f16_at(b, 52);
    let (o0, rest) = o.split_at_mut(160);
    let (o1, o2) = rest.split_at_mut(80);
    for (n, o) in o0.chunks_exact_mut(32).enumerate() {
        for (o, q) in o.iter_mut().zip(&b[..32]) {
            *o = d * trit(*q, POW3[n]);
        }
    }
    for (n, o) in o1.chunks_exact_mut(16).enumerate() {
        for (o, q) in o.iter_mut().zip(&b[32..48]) {
            *o = d * trit(*q, POW3[n]);
        }
    }
    for (n, o) in o2.chunks_exact_mut(4).enumerate() {
        for (o, q) in o.iter_mut().zip(&b[48..52]) {
            *o = d * trit(*q, POW3[n]);
        }
    }
}

/// block_tq2_0: qs[64] (2 bits per value, level - 1), d. Value `128h + 32l + m` in bits `2l`
/// of `qs[32h + m]`.
pub(super) fn tq2_0(b: &[u8; 66], o: &mut [f32; 256]) {
    let d = f16_at(b, 64);
    for (h, o) in o.as_chunks_mut::<128>().0.iter_mut().enumerate() {
        for (l, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            for (o, q) in o.iter_mut().zip(&b[32 * h..32 * h + 32]) {
                *o = d * (((q >> (2 * l)) & 3) as i8 - 1) as f32;
            }
        }
    }
}

/// ggml's `GGML_E8M0_TO_FP32_HALF`: `2^(e-128)`, half the e8m0 scale, as f32 bits (exact for
/// every `e`: 0 and 1 give subnormals).
#[inline]
pub(crate) fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// 32 values from 16 bytes of 4-bit codes: low nibbles give values 0..16, high 16..32.
#[inline]
fn nibbles(o: &mut [f32; 32], qs: &[u8], scale: f32, levels: &[i8; 16]) {
    let (lo, hi) = o.split_at_mut(16);
    for ((l, h), q) in lo.iter_mut().zip(hi).zip(qs) {
        *l = scale * levels[(q & 0xF) as usize] as f32;
        *h = scale * levels[(q >> 4) as usize] as f32;
    }
}

/// block_mxfp4: e (e8m0), qs[16]; value `2^(e-128) * doubled_e2m1`.
pub(super) fn mxfp4(b: &[u8; 17], o: &mut [f32; 32]) {
    nibbles(o, &b[1..], e8m0_to_f32_half(b[0]), &KVALUES_MXFP4);
}

/// block_iq4_nl: d, qs[16]; value `d * kvalues_iq4nl[code]`.
pub(super) fn iq4_nl(b: &[u8; 18], o: &mut [f32; 32]) {
    nibbles(o, &b[2..], f16_at(b, 0), &KVALUES_IQ4NL);
}

/// block_iq4_xs: d, scales_h (u16: the top 2 bits of eight 6-bit scales), scales_l[4] (their
/// low nibbles), qs[128]; 32-value group `ib` has scale `d * (ls - 32)`.
pub(super) fn iq4_xs(b: &[u8; 136], o: &mut [f32; 256]) {
    let d = f16_at(b, 0);
    let scales_h = u16_at(b, 2);
    for (ib, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
        let lo = nibble_scale(&b[4..8], ib) as u8;
        let hi = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i8 - 32) as f32;
        nibbles(o, &b[8 + 16 * ib..24 + 16 * ib], dl, &KVALUES_IQ4NL);
    }
}
