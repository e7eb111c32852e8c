//! Decoding GGML block formats to f32.
//!
//! Layouts follow ggml-common.h; every decoder computes in f32 with the same operations, in the
//! same order, as gguf-py's numpy dequantizers (which agree with ggml's `dequantize_row_*`), so
//! the results match them bit for bit: scales first (`d * sc` and `dmin * m` as f32 products),
//! then one product and one subtraction per value. Rust never fuses `a * b - c` into an FMA, so
//! the results do not depend on the machine.
//!
//! The decoders work on whole blocks viewed as fixed-size arrays, so the inner loops carry no
//! bounds checks and vectorise; the CPU reference decodes every weight row on the fly.

use half::f16;

use super::{GgmlType, iq};
use crate::{Error, Result};

/// Values in a K-quant super-block.
const QK_K: usize = 256;

/// Whether [`dequantize`] decodes `ty`.
pub fn is_dequant_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | F64
            | I8
            | I16
            | I32
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
            | IQ2_XXS
            | IQ2_XS
            | IQ2_S
            | IQ3_XXS
            | IQ3_S
            | IQ1_S
            | IQ1_M
            | IQ4_NL
            | IQ4_XS
            | TQ1_0
            | TQ2_0
            | MXFP4
    )
}

/// Decode `out.len()` values stored as `ty` in `bytes`. `bytes.len()` must equal
/// `ty.bytes_for(out.len())`; otherwise `Err(Error::input(..))` naming the type and the sizes.
/// An unsupported type is an error naming the type.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    if !is_dequant_supported(ty) {
        return Err(Error::input(format!(
            "dequantize: block type {ty} (id {}) is not supported",
            ty.id()
        )));
    }
    check_len(ty, bytes.len(), out.len(), "dequantize")?;
    use GgmlType::*;
    match ty {
        F32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*b);
            }
        }
        F16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = f16::from_le_bytes(*b).to_f32();
            }
        }
        BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = bf16_to_f32(u16::from_le_bytes(*b));
            }
        }
        F64 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<8>().0) {
                *o = f64::from_le_bytes(*b) as f32;
            }
        }
        I8 => {
            for (o, b) in out.iter_mut().zip(bytes) {
                *o = *b as i8 as f32;
            }
        }
        I16 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = i16::from_le_bytes(*b) as f32;
            }
        }
        I32 => {
            for (o, b) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = i32::from_le_bytes(*b) as f32;
            }
        }
        Q4_0 => blocks(bytes, out, q4_0),
        Q4_1 => blocks(bytes, out, q4_1),
        Q5_0 => blocks(bytes, out, q5_0),
        Q5_1 => blocks(bytes, out, q5_1),
        Q8_0 => blocks(bytes, out, q8_0),
        Q2_K => blocks(bytes, out, q2_k),
        Q3_K => blocks(bytes, out, q3_k),
        Q4_K => blocks(bytes, out, q4_k),
        Q5_K => blocks(bytes, out, q5_k),
        Q6_K => blocks(bytes, out, q6_k),
        Q8_K => blocks(bytes, out, q8_k),
        IQ2_XXS => blocks(bytes, out, iq::iq2_xxs),
        IQ2_XS => blocks(bytes, out, iq::iq2_xs),
        IQ2_S => blocks(bytes, out, iq::iq2_s),
        IQ3_XXS => blocks(bytes, out, iq::iq3_xxs),
        IQ3_S => blocks(bytes, out, iq::iq3_s),
        IQ1_S => blocks(bytes, out, iq::iq1_s),
        IQ1_M => blocks(bytes, out, iq::iq1_m),
        IQ4_NL => blocks(bytes, out, iq::iq4_nl),
        IQ4_XS => blocks(bytes, out, iq::iq4_xs),
        TQ1_0 => blocks(bytes, out, iq::tq1_0),
        TQ2_0 => blocks(bytes, out, iq::tq2_0),
        MXFP4 => blocks(bytes, out, iq::mxfp4),
        _ => {
            return Err(Error::internal(format!(
                "dequantize: {ty} is listed as supported but has no decoder"
            )));
        }
    }
    Ok(())
}

/// The seed bug, for the planted fault `q6k_as_q4k`: a row stored as Q6_K (210 bytes per 256
/// values) decoded by a Q4_K decoder. The Q4_K decoder walks the row's bytes in 144-byte blocks,
/// so it decodes `out.len()` values from the first `(out.len()/256)*144` bytes of the Q6_K row
/// (and never reads the rest). The row must be a whole Q6_K row for `out.len()` values.
pub fn dequantize_q6k_as_q4k(q6k_row: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(GgmlType::Q6_K, q6k_row.len(), out.len(), "q6k_as_q4k")?;
    let n = out.len() / QK_K * GgmlType::Q4_K.block_bytes();
    match q6k_row.get(..n) {
        Some(prefix) => dequantize(GgmlType::Q4_K, prefix, out),
        None => Err(Error::internal(format!(
            "q6k_as_q4k: a Q6_K row of {} bytes is shorter than its Q4_K prefix of {n}",
            q6k_row.len()
        ))),
    }
}

/// Round activations in place to 8-bit blocks as ggml's `quantize_row_q8_0_ref` followed by
/// `dequantize_row_q8_0` does: per 32 values `d = amax/127`, `q = round(x * (1/d))` (0 when
/// `d == 0`), value `= q * f32(f16(d))`. A trailing partial block is rounded the same way over its
/// own length. This is what llama.cpp's CPU path does to activations before quantized dot
/// products.
pub fn round_activations_q8_0(x: &mut [f32]) {
    for block in x.chunks_mut(32) {
        let (d, id) = q8_0_scale(block);
        let d = f16::from_f32(d).to_f32();
        for v in block.iter_mut() {
            *v = q8_0_level(*v, id) as f32 * d;
        }
    }
}

/// Round activations in place to Q8_K blocks, as ggml's `quantize_row_q8_K_ref` followed by
/// `dequantize_row_q8_K` does: per 256 values, with `max` the value of largest magnitude,
/// `iscale = -127/max`, `q = min(127, nearest_int(iscale * x))`, value `= (1/iscale) * q` (the
/// scale stays f32). An all-zero block stays zero; a trailing partial block is rounded the same
/// way over its own length. This is what llama.cpp's CPU path does to activations before dot
/// products with K-quant weights (Q2_K..Q6_K pair with Q8_K, the 32-value formats with Q8_0).
pub fn round_activations_q8_k(x: &mut [f32]) {
    for block in x.chunks_mut(256) {
        match q8_k_scale(block) {
            Some(iscale) => {
                let d = 1.0 / iscale;
                for v in block.iter_mut() {
                    *v = d * q8_k_level(*v, iscale) as f32;
                }
            }
            None => block.fill(0.0),
        }
    }
}

/// Q8_K's `iscale = -127/max` for one block (`max`: the first value of largest magnitude), or
/// `None` for an all-zero block.
pub(crate) fn q8_k_scale(block: &[f32]) -> Option<f32> {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in block {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax != 0.0).then(|| -127.0 / max)
}

/// Q8_K's level for one value: ggml's `nearest_int` (ties to even), capped at 127.
#[inline]
pub(crate) fn q8_k_level(x: f32, iscale: f32) -> i8 {
    let v = iscale * x + 12_582_912.0;
    ((v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000).min(127) as i8
}

/// Q8_0's scale for one block, as `quantize_row_q8_0_ref`: `(d, 1/d)` with `d = amax/127`.
/// `amax` follows C's `MAX(a, b)` macro (`a > b ? a : b`), NaN handling included.
pub(crate) fn q8_0_scale(block: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for v in block {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// Q8_0's level for one value: C's `roundf` (half away from zero), stored as an int8.
#[inline]
pub(crate) fn q8_0_level(x: f32, id: f32) -> i8 {
    (x * id).round() as i8
}

pub(crate) fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Check that `n_bytes` holds exactly `n_values` values of `ty`.
fn check_len(ty: GgmlType, n_bytes: usize, n_values: usize, what: &str) -> Result<()> {
    let (bv, bb) = ty.block();
    match ty.bytes_for(n_values as u64) {
        Some(want) if want == n_bytes as u64 => Ok(()),
        Some(want) => Err(Error::input(format!(
            "{what} {ty}: {n_bytes} bytes given for {n_values} values, which take {want} bytes \
             ({bb} bytes per {bv} values)"
        ))),
        None => Err(Error::input(format!(
            "{what} {ty}: {n_values} values is not a whole number of {bv}-value blocks \
             ({n_bytes} bytes given)"
        ))),
    }
}

/// Decode whole blocks of `B` bytes into `V` values each. The caller has checked the lengths.
#[inline]
fn blocks<const B: usize, const V: usize>(
    bytes: &[u8],
    out: &mut [f32],
    decode: impl Fn(&[u8; B], &mut [f32; V]),
) {
    for (b, o) in bytes
        .as_chunks::<B>()
        .0
        .iter()
        .zip(out.as_chunks_mut::<V>().0)
    {
        decode(b, o);
    }
}

#[inline]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[lo, hi]) => f16::from_le_bytes([lo, hi]).to_f32(),
        _ => f32::NAN,
    }
}

fn q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = o.split_at_mut(16);
    for ((q, l), h) in b[2..].iter().zip(lo).zip(hi) {
        *l = d * ((q & 0xF) as i32 - 8) as f32;
        *h = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let (lo, hi) = o.split_at_mut(16);
    for ((q, l), h) in b[4..].iter().zip(lo).zip(hi) {
        *l = d * (q & 0xF) as f32 + m;
        *h = d * (q >> 4) as f32 + m;
    }
}

/// Q5_0/Q5_1 quants: low nibbles from `qs`, the fifth bit of value j is bit j of `qh`.
#[inline]
fn q5_levels(qh: u32, qs: &[u8], levels: &mut [u8; 32]) {
    let (lo, hi) = levels.split_at_mut(16);
    for (j, ((q, l), h)) in qs.iter().zip(lo).zip(hi).enumerate() {
        *l = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        *h = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
}

fn q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let mut levels = [0u8; 32];
    q5_levels(qh, &b[6..], &mut levels);
    for (o, q) in o.iter_mut().zip(levels) {
        *o = d * (q as i32 - 16) as f32;
    }
}

fn q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let mut levels = [0u8; 32];
    q5_levels(qh, &b[8..], &mut levels);
    for (o, q) in o.iter_mut().zip(levels) {
        *o = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (o, q) in o.iter_mut().zip(&b[2..]) {
        *o = (*q as i8) as f32 * d;
    }
}

/// block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
fn q2_k(b: &[u8; 84], o: &mut [f32; 256]) {
    let (scales, rest) = b.split_at(16);
    let (qs, _) = rest.split_at(64);
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    // value v = 128*half + 32*shift + j, stored in bits 2*shift of qs[32*half + j]; group v/16.
    for (v16, (o, sc)) in o.chunks_exact_mut(16).zip(scales).enumerate() {
        let dl = d * (sc & 0xF) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let half = v16 / 8;
        let shift = 2 * ((v16 / 2) % 4);
        let start = 32 * half + 16 * (v16 % 2);
        for (o, q) in o.iter_mut().zip(&qs[start..start + 16]) {
            *o = dl * ((q >> shift) & 3) as f32 - ml;
        }
    }
}

/// block_q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit signed scales), d.
fn q3_k(b: &[u8; 110], o: &mut [f32; 256]) {
    let (hmask, rest) = b.split_at(32);
    let (qs, rest) = rest.split_at(64);
    let sc = &rest[..12];
    let d = f16_at(b, 108);
    for (g, o) in o.chunks_exact_mut(16).enumerate() {
        let low = if g < 8 { sc[g] & 0xF } else { sc[g - 8] >> 4 };
        let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        let scale = ((low | (high << 4)) as i8 - 32) as f32;
        let dl = d * scale;
        // value v = 128*half + 32*shift + j: low 2 bits in qs[32*half + j] >> 2*shift,
        // high bit (inverted: set means no offset) in hmask[j] bit v/32.
        let half = g / 8;
        let shift = 2 * ((g / 2) % 4);
        let bit = g / 2;
        let j0 = 16 * (g % 2);
        let ql = &qs[32 * half + j0..32 * half + j0 + 16];
        let hm = &hmask[j0..j0 + 16];
        for ((o, q), h) in o.iter_mut().zip(ql).zip(hm) {
            let low = ((q >> shift) & 3) as i8;
            let off = ((((h >> bit) & 1) ^ 1) << 2) as i8;
            *o = dl * (low - off) as f32;
        }
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K block (ggml's `get_scale_min_k4`).
#[inline]
fn scale_min_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0xF) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

#[inline]
fn k_scales(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let mut s = [0u8; 12];
    s.copy_from_slice(&b[4..16]);
    let (sc, m) = scale_min_k4(&s);
    (sc.map(|sc| d * sc as f32), m.map(|m| dmin * m as f32))
}

/// block_q4_K: d, dmin, scales[12], qs[128]; value `d*sc * q - dmin*m`.
fn q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let (ds, ms) = k_scales(b);
    let qs = b[16..].as_chunks::<32>().0;
    let out = o.as_chunks_mut::<64>().0;
    for (c, (o, q)) in out.iter_mut().zip(qs).enumerate() {
        let (d1, m1, d2, m2) = (ds[2 * c], ms[2 * c], ds[2 * c + 1], ms[2 * c + 1]);
        let (lo, hi) = o.split_at_mut(32);
        for ((l, h), q) in lo.iter_mut().zip(hi).zip(q) {
            *l = d1 * (q & 0xF) as f32 - m1;
            *h = d2 * (q >> 4) as f32 - m2;
        }
    }
}

/// block_q5_K: d, dmin, scales[12], qh[32], qs[128]; bit `v/32` of qh[v%32] is the fifth bit.
fn q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let (ds, ms) = k_scales(b);
    let mut qh = [0u8; 32];
    qh.copy_from_slice(&b[16..48]);
    let qs = b[48..].as_chunks::<32>().0;
    let out = o.as_chunks_mut::<64>().0;
    for (c, (o, q)) in out.iter_mut().zip(qs).enumerate() {
        let (d1, m1, d2, m2) = (ds[2 * c], ms[2 * c], ds[2 * c + 1], ms[2 * c + 1]);
        let (b1, b2) = (2 * c, 2 * c + 1);
        let (lo, hi) = o.split_at_mut(32);
        for (((l, h), q), qh) in lo.iter_mut().zip(hi).zip(q).zip(&qh) {
            *l = d1 * ((q & 0xF) | (((qh >> b1) & 1) << 4)) as f32 - m1;
            *h = d2 * ((q >> 4) | (((qh >> b2) & 1) << 4)) as f32 - m2;
        }
    }
}

/// block_q6_K: ql[128], qh[64], scales[16] (int8), d; value `(d*sc) * q`.
fn q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16_at(b, 208);
    let mut dsc = [0f32; 16];
    for (ds, s) in dsc.iter_mut().zip(&b[192..208]) {
        *ds = d * (*s as i8) as f32;
    }
    let ql = b[..128].as_chunks::<64>().0;
    let qh = b[128..192].as_chunks::<32>().0;
    let out = o.as_chunks_mut::<128>().0;
    // Within each 128-value half: quarter s (32 values) takes the low (s<2) or high nibble of
    // ql[32*(s%2) + j] and bits 2*s of qh[j]; scales change every 16 values.
    for (h, ((o, ql), qh)) in out.iter_mut().zip(ql).zip(qh).enumerate() {
        for (s, o) in o.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            let lq = &ql[32 * (s % 2)..32 * (s % 2) + 32];
            let nib = 4 * (s / 2);
            let hs = 2 * s;
            for (k, o) in o.as_chunks_mut::<16>().0.iter_mut().enumerate() {
                let scale = dsc[8 * h + 2 * s + k];
                let range = 16 * k..16 * k + 16;
                for ((o, l), hb) in o.iter_mut().zip(&lq[range.clone()]).zip(&qh[range]) {
                    let q = (((l >> nib) & 0xF) | (((hb >> hs) & 3) << 4)) as i8 - 32;
                    *o = scale * q as f32;
                }
            }
        }
    }
}

/// block_q8_K: d (f32), qs[256] (int8), bsums[16] (int16, unused when decoding).
fn q8_k(b: &[u8; 292], o: &mut [f32; 256]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (o, q) in o.iter_mut().zip(&b[4..260]) {
        *o = d * (*q as i8) as f32;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use safetensors::SafeTensors;

    const TYPES: [GgmlType; 12] = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The types fixtures/iq-vectors.safetensors covers.
    pub(crate) const IQ_TYPES: [GgmlType; 12] = [
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    fn fixture() -> Vec<u8> {
        read_fixture("quant-vectors.safetensors")
    }

    fn read_fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }

    /// Every fixture block of each type in `types` decodes to gguf-py's values, bit for bit.
    fn check_bit_exact(st: &SafeTensors, types: &[GgmlType]) {
        for &ty in types {
            let (raw, want) = vectors(st, ty);
            assert!(want.len() >= 64, "{ty}: too few fixture values");
            let mut got = vec![f32::NAN; want.len()];
            dequantize(ty, &raw, &mut got).unwrap();
            let bad: Vec<usize> = (0..want.len())
                .filter(|&i| got[i].to_bits() != want[i].to_bits())
                .collect();
            assert!(
                bad.is_empty(),
                "{ty}: {} of {} values differ; first at {} (block {}): got {:e} want {:e}",
                bad.len(),
                want.len(),
                bad[0],
                bad[0] / ty.block_values(),
                got[bad[0]],
                want[bad[0]]
            );
        }
    }

    /// (raw bytes, expected values) of the fixture's blocks of `ty`.
    fn vectors(st: &SafeTensors, ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
        let raw = st.tensor(&format!("{ty}.raw")).expect("raw key");
        let f32s = st.tensor(&format!("{ty}.f32")).expect("f32 key");
        assert_eq!(raw.dtype(), safetensors::Dtype::U8);
        assert_eq!(f32s.dtype(), safetensors::Dtype::F32);
        assert_eq!(raw.shape()[0], f32s.shape()[0], "{ty}: block counts");
        assert_eq!(raw.shape()[1], ty.block_bytes(), "{ty}: block bytes");
        assert_eq!(f32s.shape()[1], ty.block_values(), "{ty}: block values");
        let want = f32s
            .data()
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect();
        (raw.data().to_vec(), want)
    }

    #[test]
    fn bit_exact_against_gguf_py() {
        let bytes = fixture();
        let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
        check_bit_exact(&st, &TYPES);
    }

    /// fixtures/iq-vectors.safetensors (tools/golden/make_iq_vectors.py): random blocks, every
    /// grid point, sign pattern and scale code, zero scales, all-0x00/0xFF codes, MXFP4's
    /// extreme exponents.
    #[test]
    fn iq_ternary_mxfp4_bit_exact_against_gguf_py() {
        let bytes = read_fixture("iq-vectors.safetensors");
        let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
        check_bit_exact(&st, &IQ_TYPES);
        // the extreme exponents reach subnormal values
        let (_, want) = vectors(&st, GgmlType::MXFP4);
        assert!(want.iter().any(|v| v.is_subnormal()));
    }

    #[test]
    fn plain_types_decode() {
        let src = [1.5f32, -2.25, 0.0, 1e-3];
        let bytes: Vec<u8> = src.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = [0f32; 4];
        dequantize(GgmlType::F32, &bytes, &mut out).unwrap();
        assert_eq!(out, src);
        let bytes: Vec<u8> = src.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect();
        dequantize(GgmlType::F64, &bytes, &mut out).unwrap();
        assert_eq!(out, src);
        dequantize(GgmlType::I8, &[1, 255, 128, 0], &mut out).unwrap();
        assert_eq!(out, [1.0, -1.0, -128.0, 0.0]);
        let bytes: Vec<u8> = [7i16, -300, 0, i16::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        dequantize(GgmlType::I16, &bytes, &mut out).unwrap();
        assert_eq!(out, [7.0, -300.0, 0.0, 32767.0]);
        let bytes: Vec<u8> = [7i32, -300, 0, 1 << 20]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        dequantize(GgmlType::I32, &bytes, &mut out).unwrap();
        assert_eq!(out, [7.0, -300.0, 0.0, 1048576.0]);
    }

    #[test]
    fn wrong_lengths_and_unsupported_types_are_errors() {
        let mut out = vec![0f32; 256];
        let err = dequantize(GgmlType::Q4_K, &[0u8; 143], &mut out).unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Input);
        assert!(err.message().contains("Q4_K") && err.message().contains("143"));
        assert!(err.message().contains("144"), "{}", err.message());
        let err = dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out[..31]).unwrap_err();
        assert!(err.message().contains("Q8_0") && err.message().contains("31"));
        assert!(dequantize(GgmlType::F32, &[0u8; 3], &mut out[..1]).is_err());
        let err = dequantize(GgmlType::Q8_1, &[0u8; 36], &mut out[..32]).unwrap_err();
        assert!(err.message().contains("Q8_1"), "{}", err.message());
        assert!(!is_dequant_supported(GgmlType::I64));
        let err = dequantize(GgmlType::MXFP4, &[0u8; 16], &mut out[..32]).unwrap_err();
        assert!(err.message().contains("MXFP4") && err.message().contains("17"));
        let err = dequantize(GgmlType::IQ1_M, &[0u8; 56], &mut out[..128]).unwrap_err();
        assert!(err.message().contains("IQ1_M") && err.message().contains("128"));
        assert!(dequantize_q6k_as_q4k(&[0u8; 209], &mut out).is_err());
        assert!(dequantize_q6k_as_q4k(&[0u8; 210], &mut out[..100]).is_err());
        // Empty input is a valid, empty tensor.
        dequantize(GgmlType::Q6_K, &[], &mut []).unwrap();
    }

    /// splitmix64: a tiny deterministic generator for test data.
    pub(crate) struct SplitMix(pub u64);
    impl SplitMix {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    #[test]
    fn q6k_as_q4k_never_panics_and_differs() {
        let mut rng = SplitMix(42);
        for blocks in [1usize, 2, 5] {
            let mut row: Vec<u8> = (0..blocks * 210).map(|_| rng.next_u64() as u8).collect();
            // Keep the Q6_K scale finite and sized like a real one, so the true decode is finite.
            for b in 0..blocks {
                let d = f16::from_f32(1e-3).to_le_bytes();
                row[b * 210 + 208..b * 210 + 210].copy_from_slice(&d);
            }
            let mut truth = vec![0f32; blocks * 256];
            dequantize(GgmlType::Q6_K, &row, &mut truth).unwrap();
            let mut wrong = vec![0f32; blocks * 256];
            dequantize_q6k_as_q4k(&row, &mut wrong).unwrap();
            let same = truth
                .iter()
                .zip(&wrong)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            assert!(same < truth.len() / 4, "{same} of {} equal", truth.len());
            // It is exactly Q4_K over the row's first 144-byte blocks.
            let mut q4 = vec![0f32; blocks * 256];
            dequantize(GgmlType::Q4_K, &row[..blocks * 144], &mut q4).unwrap();
            assert!(
                q4.iter()
                    .zip(&wrong)
                    .all(|(a, b)| a.to_bits() == b.to_bits())
            );
        }
        // Arbitrary bytes (f16 fields may be Inf/NaN): no panic.
        for _ in 0..50 {
            let row: Vec<u8> = (0..420).map(|_| rng.next_u64() as u8).collect();
            let mut out = vec![0f32; 512];
            dequantize_q6k_as_q4k(&row, &mut out).unwrap();
        }
    }

    #[test]
    fn round_activations_partial_block_rounds_over_its_length() {
        let mut rng = SplitMix(9);
        let mut x: Vec<f32> = (0..45)
            .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        // The tail block's amax is its own, not the previous block's.
        x[3] = 40.0;
        let mut padded = [0f32; 32];
        padded[..13].copy_from_slice(&x[32..]);
        round_activations_q8_0(&mut x);
        round_activations_q8_0(&mut padded);
        assert_eq!(&x[32..], &padded[..13]);
        assert!(x[32..].iter().any(|v| *v != 0.0));
        // An all-zero block stays zero (d == 0 -> id = 0).
        let mut z = [0f32; 32];
        round_activations_q8_0(&mut z);
        assert!(z.iter().all(|v| *v == 0.0));
    }

    /// Decoding throughput of one thread, for BENCHMARKS.md (run with
    /// `cargo test --release --lib dequant::tests::throughput -- --ignored --nocapture`). The
    /// blocks are gguf-py's vectors (fixtures/quant-vectors and iq-vectors) repeated to 4 M
    /// values, so every scale is finite and every grid index real.
    #[test]
    #[ignore]
    fn throughput() {
        let n = 1 << 22;
        let types = [
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q8_0,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
            GgmlType::MXFP4,
            GgmlType::IQ3_S,
            GgmlType::IQ3_XXS,
            GgmlType::IQ2_S,
            GgmlType::IQ2_XS,
            GgmlType::IQ2_XXS,
            GgmlType::IQ1_M,
            GgmlType::IQ1_S,
            GgmlType::TQ2_0,
            GgmlType::TQ1_0,
        ];
        for ty in types {
            let file = if ty == GgmlType::Q8_0 || ty.name().starts_with("Q") {
                "quant-vectors.safetensors"
            } else {
                "iq-vectors.safetensors"
            };
            let path = format!("{}/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
            let data = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&data).unwrap();
            let raw = st
                .tensor(&format!("{}.raw", ty.name()))
                .unwrap()
                .data()
                .to_vec();
            let nbytes = ty.bytes_for(n as u64).unwrap() as usize;
            let bytes: Vec<u8> = raw.iter().copied().cycle().take(nbytes).collect();
            let mut out = vec![0f32; n];
            dequantize(ty, &bytes, &mut out).unwrap();
            let reps = 20;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                dequantize(ty, std::hint::black_box(&bytes), &mut out).unwrap();
                std::hint::black_box(&out);
            }
            let s = t.elapsed().as_secs_f64();
            let values = (reps * n) as f64 / s;
            println!(
                "{ty}: {:.0} M values/s, {:.2} GB/s of f32 output, {:.2} GB/s of blocks",
                values / 1e6,
                values * 4.0 / 1e9,
                values * nbytes as f64 / n as f64 / 1e9
            );
        }
    }
}
