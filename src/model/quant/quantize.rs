//! Encoding f32 values into GGML block formats, as ggml's reference quantizers do.
//!
//! Each encoder mirrors ggml-quants.c's `quantize_row_*_ref` (no importance matrix): the same
//! searches (`make_qkx2_quants` for Q2_K/Q4_K/Q5_K, `make_qx_quants` for Q6_K, `make_q3_quants`
//! for Q3_K), the same `nearest_int` rounding trick, and the same f32 operations in the same
//! order. Rust never contracts `a * b + c` into an FMA, and f16 conversion rounds to nearest
//! even whether `half` uses F16C or software, so a given input encodes to the same bytes on
//! every machine; this is what lets the synthetic model generator write reproducible files.
//! IQ4_NL and IQ4_XS follow `quantize_iq4_nl`/`quantize_iq4_xs` without an importance matrix
//! (the search llama-quantize runs, 15 extra scale tries; recent ggml's `quantize_row_iq4_nl_ref`
//! skips them), MXFP4 `quantize_row_mxfp4_ref`.
//! (A C build of ggml with FMA contraction, e.g. `-march=native`, differs from its own
//! reference in a few K-quant blocks; ours matches the uncontracted reference.)

use half::f16;

use super::GgmlType;
use super::dequant::{q8_0_level, q8_0_scale, q8_k_level, q8_k_scale};
use super::grids::{KVALUES_IQ4NL, KVALUES_MXFP4};
use super::iq::e8m0_to_f32_half;
use crate::{Error, Result};

/// ggml's GROUP_MAX_EPS: below this a group counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Whether [`quantize`] encodes `ty`.
pub fn is_quantize_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q8_0
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | Q8_K
            | IQ4_NL
            | IQ4_XS
            | MXFP4
    )
}

/// Append the encoding of `src` (its length a multiple of `ty`'s block values) to `out`.
pub fn quantize(ty: GgmlType, src: &[f32], out: &mut Vec<u8>) -> Result<()> {
    if !is_quantize_supported(ty) {
        return Err(Error::input(format!(
            "quantize: block type {ty} (id {}) is not supported",
            ty.id()
        )));
    }
    let bv = ty.block_values();
    let n_bytes = ty
        .bytes_for(src.len() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            Error::input(format!(
                "quantize {ty}: {} values is not a whole number of {bv}-value blocks",
                src.len()
            ))
        })?;
    let start = out.len();
    out.resize(start + n_bytes, 0);
    let dst = &mut out[start..];
    use GgmlType::*;
    match ty {
        F32 => {
            for (d, v) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
                *d = v.to_le_bytes();
            }
        }
        F16 => {
            for (d, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *d = f16::from_f32(*v).to_le_bytes();
            }
        }
        BF16 => {
            for (d, v) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *d = f32_to_bf16(*v).to_le_bytes();
            }
        }
        Q8_0 => blocks(src, dst, q8_0),
        Q4_0 => blocks(src, dst, q4_0),
        Q4_1 => blocks(src, dst, q4_1),
        Q5_0 => blocks(src, dst, q5_0),
        Q5_1 => blocks(src, dst, q5_1),
        Q2_K => blocks(src, dst, q2_k),
        Q3_K => blocks(src, dst, q3_k),
        Q4_K => blocks(src, dst, q4_k),
        Q5_K => blocks(src, dst, q5_k),
        Q6_K => blocks(src, dst, q6_k),
        Q8_K => blocks(src, dst, q8_k),
        IQ4_NL => blocks(src, dst, iq4_nl),
        IQ4_XS => blocks(src, dst, iq4_xs),
        MXFP4 => blocks(src, dst, mxfp4),
        _ => {
            out.truncate(start);
            return Err(Error::internal(format!(
                "quantize: {ty} is listed as supported but has no encoder"
            )));
        }
    }
    Ok(())
}

/// ggml's `ggml_compute_fp32_to_bf16`: NaN forced quiet (keeping sign and top payload), every
/// other value rounded to nearest even.
pub fn f32_to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Encode whole blocks of `V` values into `B` bytes each. The caller has checked the lengths.
fn blocks<const V: usize, const B: usize>(
    src: &[f32],
    dst: &mut [u8],
    encode: impl Fn(&[f32; V], &mut [u8; B]),
) {
    for (x, y) in src
        .as_chunks::<V>()
        .0
        .iter()
        .zip(dst.as_chunks_mut::<B>().0)
    {
        encode(x, y);
    }
}

fn put_f16(y: &mut [u8], at: usize, v: f32) {
    y[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// ggml's `nearest_int`: round half to even through the 1.5*2^23 trick (exact for |x| < 2^22).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// The value of largest magnitude (first one wins), and its magnitude.
fn signed_amax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

fn q8_0(x: &[f32; 32], y: &mut [u8; 34]) {
    let (d, id) = q8_0_scale(x);
    put_f16(y, 0, d);
    for (q, v) in y[2..].iter_mut().zip(x) {
        *q = q8_0_level(*v, id) as u8;
    }
}

fn q4_0(x: &[f32; 32], y: &mut [u8; 18]) {
    let (_, max) = signed_amax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let (lo, hi) = x.split_at(16);
    for ((q, a), b) in y[2..].iter_mut().zip(lo).zip(hi) {
        let xi0 = ((a * id + 8.5) as i8).min(15) as u8;
        let xi1 = ((b * id + 8.5) as i8).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

fn q4_1(x: &[f32; 32], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let (lo, hi) = x.split_at(16);
    for ((q, a), b) in y[4..].iter_mut().zip(lo).zip(hi) {
        let xi0 = (((a - min) * id + 0.5) as i8).min(15) as u8;
        let xi1 = (((b - min) * id + 0.5) as i8).min(15) as u8;
        *q = xi0 | (xi1 << 4);
    }
}

/// Pack 32 five-bit levels: low nibbles pairwise in `qs`, fifth bits in the u32 `qh`.
fn pack_q5(levels: &[u8; 32], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for (j, q) in qs.iter_mut().enumerate().take(16) {
        let (a, b) = (levels[j], levels[j + 16]);
        *q = (a & 0xF) | ((b & 0xF) << 4);
        h |= (((a & 0x10) >> 4) as u32) << j;
        h |= (((b & 0x10) >> 4) as u32) << (j + 16);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

fn q5_0(x: &[f32; 32], y: &mut [u8; 22]) {
    let (_, max) = signed_amax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    let levels = x.map(|v| ((v * id + 16.5) as i8).min(31) as u8);
    let (qh, qs) = y[2..].split_at_mut(4);
    pack_q5(&levels, qh, qs);
}

fn q5_1(x: &[f32; 32], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    put_f16(y, 0, d);
    put_f16(y, 2, min);
    let levels = x.map(|v| ((v - min) * id + 0.5) as u8);
    let (qh, qs) = y[4..].split_at_mut(4);
    pack_q5(&levels, qh, qs);
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x²`), the
/// form `quantize_row_q6_K_ref` uses: a symmetric scale searched over 19 candidates. Writes
/// levels `0..2*nmax` to `l` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let fmax = nmax as f32;
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -fmax / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = level(iscale, v);
        *li = (q + nmax) as i8;
        let w = v * v;
        let qf = q as f32;
        sumlx += w * v * qf;
        suml2 += w * qf * qf;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(fmax + 0.1 * is as f32) / max;
        let (mut slx, mut sl2) = (0f32, 0f32);
        for &v in x {
            let qf = level(iscale, v) as f32;
            let w = v * v;
            slx += w * v * qf;
            sl2 += w * qf * qf;
        }
        if sl2 > 0.0 && slx * slx > best * sl2 {
            for (li, &v) in l.iter_mut().zip(x) {
                *li = (nmax + level(iscale, v)) as i8;
            }
            scale = slx / sl2;
            best = scale * slx;
        }
    }
    scale
}

/// ggml's `make_q3_quants` with `do_rmse = true` (as `quantize_row_q3_K_ref` calls it): start
/// from the max-based scale, then up to five rounds of coordinate descent on the levels.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let (amax, max) = signed_amax(x);
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (li, &v) in l.iter_mut().zip(x) {
        let q = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *li = q as i8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (li, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let cur = *li as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li as i32 {
                    let nf = new_l as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for li in l.iter_mut() {
        *li += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// ggml's `make_qkx2_quants`: an asymmetric (scale, min) fit of `x` to levels `0..=nmax`
/// under `weights`, searched over `nstep + 1` candidate scales. Returns `(scale, -min)`.
///
/// The sums run in ggml's order (one serial accumulation per sum); only the per-value work
/// that feeds them is split into separate loops, which vectorise without changing any result.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    l: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let fmax = nmax as f32;
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    // x - min, recomputed whenever a better candidate moves `min` (ggml reads the current
    // min in every later candidate).
    let mut xm = x.map(|v| v - min);
    let mut iscale = fmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let q = nearest_int(iscale * xm[i]).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; N];
    let mut wl = [0f32; N];
    let mut terms = [0f32; N];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + fmax) / (max - min);
        for i in 0..N {
            let q = nearest_int(iscale * xm[i]).clamp(0, nmax);
            laux[i] = q as u8;
            wl[i] = weights[i] * q as f32;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..N {
            let q = laux[i] as f32;
            sum_l += wl[i];
            sum_l2 += wl[i] * q;
            sum_xl += wl[i] * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            for i in 0..N {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                terms[i] = weights[i] * err(diff);
            }
            let mut cur_error = 0f32;
            for t in terms {
                cur_error += t;
            }
            if cur_error < best_error {
                *l = laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
                xm = x.map(|v| v - min);
            }
        }
    }
    (scale, -min)
}

/// Pack 2-bit levels as Q2_K/Q3_K store them: value `128*h + 32*s + j` in bits `2*s` of
/// `qs[32*h + j]`.
fn pack_2bit(levels: &[u8; 256], qs: &mut [u8]) {
    for (h, qs) in qs.chunks_exact_mut(32).enumerate() {
        let lv = &levels[128 * h..128 * h + 128];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = lv[j] | (lv[j + 32] << 2) | (lv[j + 64] << 4) | (lv[j + 96] << 6);
        }
    }
}

/// block_q2_K: scales[16], qs[64], d, dmin (`quantize_row_q2_K_ref`).
fn q2_k(x: &[f32; 256], y: &mut [u8; 84]) {
    const Q4SCALE: f32 = 15.0;
    let mut levels = [0u8; 256];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let groups = x.as_chunks::<16>().0;
    let lgroups = levels.as_chunks_mut::<16>().0;
    for (j, (xs, lv)) in groups.iter().zip(lgroups).enumerate() {
        let weights = xs.map(f32::abs);
        (scales[j], mins[j]) = make_qkx2_quants(3, xs, &weights, lv, -0.5, 0.1, 15, true);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let (sc, rest) = y.split_at_mut(16);
    let (qs, dd) = rest.split_at_mut(64);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (s, v) in sc.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * v) as u8;
        }
        put_f16(dd, 0, max_scale / Q4SCALE);
    } else {
        sc.fill(0);
        put_f16(dd, 0, 0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (s, v) in sc.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * v) << 4) as u8;
        }
        put_f16(dd, 2, max_min / Q4SCALE);
    } else {
        put_f16(dd, 2, 0.0);
    }
    let d_all = f16::from_le_bytes([dd[0], dd[1]]).to_f32();
    let m_all = f16::from_le_bytes([dd[2], dd[3]]).to_f32();
    for j in 0..16 {
        let d = d_all * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            levels[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, qs);
}

/// The 6-bit scale of group `j` of a Q3_K block, unpacked (`-32..=31`).
fn q3_k_scale(sc: &[u8], j: usize) -> i8 {
    let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
    let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// block_q3_K: hmask[32], qs[64], scales[12], d (`quantize_row_q3_K_ref`).
fn q3_k(x: &[f32; 256], y: &mut [u8; 110]) {
    let mut l = [0i8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let (hmask, rest) = y.split_at_mut(32);
    let (qs, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(12);
    sc.fill(0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, v) in scales.iter().enumerate() {
            let q = (nearest_int(iscale * v) as i8).clamp(-32, 31) + 32;
            let q = q as u8;
            if j < 8 {
                sc[j] = q & 0xF;
            } else {
                sc[j - 8] |= (q & 0xF) << 4;
            }
            sc[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
        }
        put_f16(dd, 0, 1.0 / iscale);
    } else {
        put_f16(dd, 0, 0.0);
    }
    let d_all = f16::from_le_bytes([dd[0], dd[1]]).to_f32();
    for j in 0..16 {
        let d = d_all * q3_k_scale(sc, j) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int(x[16 * j + ii] / d).clamp(-4, 3) as i8 + 4;
        }
    }
    hmask.fill(0);
    let mut levels = [0u8; 256];
    for (j, (lv, li)) in levels.iter_mut().zip(l).enumerate() {
        let mut li = li as u8;
        if li > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            li -= 4;
        }
        *lv = li;
    }
    pack_2bit(&levels, qs);
}

/// Pack the eight 6-bit (scale, min) pairs of a Q4_K/Q5_K block (the inverse of ggml's
/// `get_scale_min_k4`).
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8], s: &mut [u8]) {
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
}

fn get_scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The shared part of `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`: per 32-value group
/// an asymmetric fit, 6-bit scales and mins against the block's largest, then the levels
/// recomputed against the stored (f16-rounded) scales. Writes d, dmin and scales to `head`
/// (16 bytes) and returns the levels `0..=nmax`.
fn k_quant_levels(x: &[f32; 256], nmax: i32, rmin: f32, nstep: i32, head: &mut [u8]) -> [u8; 256] {
    let mut levels = [0u8; 256];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    let groups = x.as_chunks::<32>().0;
    let lgroups = levels.as_chunks_mut::<32>().0;
    for (j, (xs, lv)) in groups.iter().zip(lgroups).enumerate() {
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = xs.map(|v| av_x + v.abs());
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, lv, rmin, 0.1, nstep, false);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let ls = scales.map(|v| (nearest_int(inv_scale * v) as u8).min(63));
    let lm = mins.map(|v| (nearest_int(inv_min * v) as u8).min(63));
    let (dd, sc) = head.split_at_mut(4);
    pack_scale_min_k4(&ls, &lm, sc);
    put_f16(dd, 0, max_scale / 63.0);
    put_f16(dd, 2, max_min / 63.0);
    let d_all = f16::from_le_bytes([dd[0], dd[1]]).to_f32();
    let m_all = f16::from_le_bytes([dd[2], dd[3]]).to_f32();
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, sc);
        let d = d_all * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = m_all * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    levels
}

/// block_q4_K: d, dmin, scales[12], qs[128] (`quantize_row_q4_K_ref`).
fn q4_k(x: &[f32; 256], y: &mut [u8; 144]) {
    let (head, qs) = y.split_at_mut(16);
    let levels = k_quant_levels(x, 15, -1.0, 20, head);
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        let lv = &levels[64 * c..64 * c + 64];
        for (j, q) in q.iter_mut().enumerate() {
            *q = lv[j] | (lv[j + 32] << 4);
        }
    }
}

/// block_q5_K: d, dmin, scales[12], qh[32], qs[128] (`quantize_row_q5_K_ref`).
fn q5_k(x: &[f32; 256], y: &mut [u8; 176]) {
    let (head, rest) = y.split_at_mut(16);
    let levels = k_quant_levels(x, 31, -0.5, 15, head);
    let (qh, qs) = rest.split_at_mut(32);
    qh.fill(0);
    for (c, q) in qs.chunks_exact_mut(32).enumerate() {
        let lv = &levels[64 * c..64 * c + 64];
        let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
        for (j, q) in q.iter_mut().enumerate() {
            let (mut l1, mut l2) = (lv[j], lv[j + 32]);
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            *q = l1 | (l2 << 4);
        }
    }
}

/// block_q6_K: ql[128], qh[64], scales[16] (int8), d (`quantize_row_q6_K_ref`).
fn q6_k(x: &[f32; 256], y: &mut [u8; 210]) {
    let mut l = [0i8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for ib in 0..16 {
        let scale = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16]);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let (ql, rest) = y.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    let (sc, dd) = rest.split_at_mut(16);
    let iscale = -128.0 / max_scale;
    put_f16(dd, 0, 1.0 / iscale);
    for (s, v) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    let d_all = f16::from_le_bytes([dd[0], dd[1]]).to_f32();
    for j in 0..16 {
        let d = d_all * (sc[j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int(x[16 * j + ii] / d).clamp(-32, 31) as i8 + 32;
        }
    }
    let levels = l.map(|v| v as u8);
    for (h, (ql, qh)) in ql
        .chunks_exact_mut(64)
        .zip(qh.chunks_exact_mut(32))
        .enumerate()
    {
        let lv = &levels[128 * h..128 * h + 128];
        for j in 0..32 {
            let (q1, q2, q3, q4) = (lv[j], lv[j + 32], lv[j + 64], lv[j + 96]);
            ql[j] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[j + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[j] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

/// block_q8_K: d (f32), qs[256], bsums[16] (`quantize_row_q8_K_ref`; an all-zero block is all
/// zero bytes).
fn q8_k(x: &[f32; 256], y: &mut [u8; 292]) {
    let Some(iscale) = q8_k_scale(x) else {
        y.fill(0);
        return;
    };
    let (d, rest) = y.split_at_mut(4);
    let (qs, bsums) = rest.split_at_mut(256);
    for (q, v) in qs.iter_mut().zip(x) {
        *q = q8_k_level(*v, iscale) as u8;
    }
    for (s, q) in bsums.chunks_exact_mut(2).zip(qs.chunks_exact(16)) {
        let sum: i32 = q.iter().map(|q| *q as i8 as i32).sum();
        s.copy_from_slice(&(sum as i16).to_le_bytes());
    }
    d.copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// ggml's `best_index_int8` for the 16 sorted IQ4 levels: the level `x` is nearest to, found
/// as ggml finds it (a branchless binary search on midpoints, compared at twice the scale so
/// that both sides are exact; a tie goes to the upper level).
fn best_index_iq4(x: f32) -> usize {
    let v = &KVALUES_IQ4NL;
    let x2 = x + x;
    let mut idx = 0;
    let mut step = 8;
    while step > 0 {
        let j = idx + step;
        if x2 >= (v[j - 1] as i32 + v[j] as i32) as f32 {
            idx = j;
        }
        step >>= 1;
    }
    idx
}

/// `Σ w·q·x` and `Σ w·q²` over a 32-value group for levels picked at inverse scale `id`
/// (weights `x²`, as ggml without an importance matrix), in ggml's order.
fn iq4_sums(xb: &[f32; 32], id: f32, l: Option<&mut [u8; 32]>) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    let mut levels = [0u8; 32];
    for (j, &x) in xb.iter().enumerate() {
        let li = best_index_iq4(id * x);
        levels[j] = li as u8;
        let q = KVALUES_IQ4NL[li] as f32;
        let w = x * x;
        sumqx += w * q * x;
        sumq2 += w * q * q;
    }
    if let Some(l) = l {
        *l = levels;
    }
    (sumqx, sumq2)
}

/// The scale search of ggml's `quantize_row_iq4_nl_impl` for one 32-value group, with
/// `ntry = 7` (what `quantize_iq4_nl`/`quantize_iq4_xs` use without an importance matrix):
/// the least-squares scale for the levels at `-max/-127`, then the best of 15 more starting
/// points `(itry - 127)/max`. Returns the scale (0 for an all-zero group).
fn iq4_group_scale(xb: &[f32; 32]) -> f32 {
    const NTRY: i32 = 7;
    let mut amax = 0f32;
    let mut max = 0f32;
    for &x in xb {
        if x.abs() > amax {
            amax = x.abs();
            max = x;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = KVALUES_IQ4NL[0] as i32;
    let d = -max / v0 as f32;
    let (sumqx, sumq2) = iq4_sums(xb, 1.0 / d, None);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let id = (itry + v0) as f32 / max;
        let (sumqx, sumq2) = iq4_sums(xb, id, None);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Pack 32 4-bit codes as IQ4_NL/IQ4_XS/MXFP4 store them: value j in the low nibble of byte
/// j, value 16 + j in its high nibble.
fn pack_nibbles(l: &[u8; 32], q: &mut [u8]) {
    for (j, q) in q.iter_mut().enumerate().take(16) {
        *q = l[j] | (l[j + 16] << 4);
    }
}

/// block_iq4_nl: d, qs[16] (`quantize_iq4_nl` without an importance matrix).
fn iq4_nl(x: &[f32; 32], y: &mut [u8; 18]) {
    let d = iq4_group_scale(x);
    put_f16(y, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut l = [0u8; 32];
    for (l, &v) in l.iter_mut().zip(x) {
        *l = best_index_iq4(id * v) as u8;
    }
    pack_nibbles(&l, &mut y[2..]);
}

/// block_iq4_xs: d, scales_h (u16), scales_l[4], qs[128] (`quantize_iq4_xs` without an
/// importance matrix): eight group scales searched as IQ4_NL's, stored as 6-bit multiples of
/// `d = -max_scale/32`, then every value re-picked at its group's stored scale.
fn iq4_xs(x: &[f32; 256], y: &mut [u8; 136]) {
    let groups = x.as_chunks::<32>().0;
    let mut scales = [0f32; 8];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for (s, xb) in scales.iter_mut().zip(groups) {
        *s = iq4_group_scale(xb);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    let d = -max_scale / 32.0;
    put_f16(y, 0, d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let (head, qs) = y.split_at_mut(8);
    let scales_l = &mut head[4..8];
    scales_l.fill(0);
    for (ib, (xb, q)) in groups.iter().zip(qs.chunks_exact_mut(16)).enumerate() {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let mut l = [0u8; 32];
        for (l, &v) in l.iter_mut().zip(xb) {
            *l = best_index_iq4(idl * v) as u8;
        }
        pack_nibbles(&l, q);
        let ls = (ls + 32) as u8;
        scales_l[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
        scales_h |= ((ls >> 4) as u16) << (2 * ib);
    }
    head[2..4].copy_from_slice(&scales_h.to_le_bytes());
}

/// The MXFP4 code nearest `x` at half-scale `d`: the first of the 16 (doubled) e2m1 values
/// with the smallest `|k*d - x|` (ggml's `best_index_mxfp4`).
fn best_index_mxfp4(x: f32, d: f32) -> u8 {
    let mut best = 0;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// block_mxfp4: e (e8m0), qs[16] (`quantize_row_mxfp4_ref`): `e = floor(log2(amax)) - 2 + 127`
/// so the largest value lands near the top e2m1 level 6, then the nearest code per value.
///
/// ggml takes `log2f` from the C library; this takes the f64 logarithm rounded to f32, which is
/// the correctly rounded `log2f` (glibc's agrees) and does not depend on the platform's libm.
/// It matters only just below a power of two, where the rounded logarithm reaches the integer.
fn mxfp4(x: &[f32; 32], y: &mut [u8; 17]) {
    let mut amax = 0f32;
    for v in x {
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    // C's float-to-uint8 cast goes through int on x86; `as i32 as u8` wraps the same way.
    let e = if amax > 0.0 {
        (((amax as f64).log2() as f32).floor() - 2.0 + 127.0) as i32 as u8
    } else {
        0
    };
    let d = e8m0_to_f32_half(e);
    y[0] = e;
    let (lo, hi) = x.split_at(16);
    for ((q, a), b) in y[1..].iter_mut().zip(lo).zip(hi) {
        *q = best_index_mxfp4(*a, d) | (best_index_mxfp4(*b, d) << 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quant::dequant::{
        dequantize, round_activations_q8_0, round_activations_q8_k,
    };

    /// splitmix64, for seeded test data without extra crates.
    struct SplitMix(u64);
    impl SplitMix {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        /// Standard normal (Box-Muller).
        fn gauss(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        }
    }

    /// Weight-like data: gaussian rows of 256 values with row scales spread over 1e-3..1.
    fn weights(seed: u64, rows: usize) -> Vec<f32> {
        let mut rng = SplitMix(seed);
        let mut x = Vec::with_capacity(rows * 256);
        for r in 0..rows {
            let scale = 10f32.powf(-3.0 * (r % 7) as f32 / 6.0);
            x.extend((0..256).map(|_| rng.gauss() * scale));
        }
        x
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        quantize(ty, x, &mut bytes).unwrap();
        assert_eq!(Some(bytes.len() as u64), ty.bytes_for(x.len() as u64));
        let mut y = vec![f32::NAN; x.len()];
        dequantize(ty, &bytes, &mut y).unwrap();
        y
    }

    /// sqrt(Σ(y-x)²/Σx²), per 256-value row and averaged, so rows of every scale count alike.
    fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
        let rows = x.len() / 256;
        let mut total = 0f64;
        for (xr, yr) in x.chunks(256).zip(y.chunks(256)) {
            let num: f64 = xr
                .iter()
                .zip(yr)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
            let den: f64 = xr.iter().map(|a| (*a as f64).powi(2)).sum();
            total += (num / den).sqrt();
        }
        total / rows as f64
    }

    #[test]
    fn round_trip_error_within_format_bounds() {
        // Measured on this data (70 rows, seed 5; mean of per-row rel RMS): F16 2.10e-4,
        // BF16 1.65e-3, Q8_0 5.38e-3, Q8_K 6.93e-3, Q6_K 1.84e-2, Q5_1 3.76e-2, Q5_K 3.62e-2, Q5_0 4.25e-2,
        // Q4_1 7.81e-2, Q4_K 7.12e-2, Q4_0 8.59e-2, Q3_K 0.150, Q2_K 0.296, IQ4_NL 7.57e-2,
        // IQ4_XS 7.67e-2, MXFP4 0.117 (a power-of-two scale, no search), in line with a
        // uniform rounding error of step/sqrt(12) per format. Bounds are about 1.2x those.
        let bounds = [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 2.6e-4),
            (GgmlType::BF16, 2.0e-3),
            (GgmlType::Q8_0, 6.5e-3),
            (GgmlType::Q8_K, 8e-3),
            (GgmlType::Q6_K, 2.2e-2),
            (GgmlType::Q5_1, 4.5e-2),
            (GgmlType::Q5_K, 4.4e-2),
            (GgmlType::Q5_0, 5.1e-2),
            (GgmlType::Q4_1, 9.4e-2),
            (GgmlType::Q4_K, 8.6e-2),
            (GgmlType::Q4_0, 0.103),
            (GgmlType::Q3_K, 0.18),
            (GgmlType::Q2_K, 0.355),
            (GgmlType::IQ4_NL, 9.1e-2),
            (GgmlType::IQ4_XS, 9.2e-2),
            (GgmlType::MXFP4, 0.14),
        ];
        let x = weights(5, 70);
        let mut errs = std::collections::HashMap::new();
        for (ty, bound) in bounds {
            let y = round_trip(ty, &x);
            let err = rel_rms(&x, &y);
            println!("{ty}: rel RMS {err:.3e} (bound {bound:.1e})");
            assert!(err <= bound, "{ty}: rel RMS {err:.3e} > {bound:.1e}");
            errs.insert(ty, err);
        }
        // The searched K-quant scales must beat the plain max-based formats of the same width,
        // and every extra bit must help.
        use GgmlType::*;
        for (better, worse) in [
            (Q8_0, Q6_K),
            (Q6_K, Q5_K),
            (Q5_K, Q4_K),
            (Q4_K, Q3_K),
            (Q3_K, Q2_K),
            (Q5_K, Q5_0),
            (Q4_K, Q4_0),
            (Q5_1, Q5_0),
            (Q4_1, Q4_0),
            (IQ4_NL, Q4_0),
            (IQ4_XS, Q4_0),
            (Q4_0, MXFP4),
        ] {
            assert!(errs[&better] < errs[&worse], "{better} should beat {worse}");
        }
    }

    /// The bytes of fixtures/`name` (a safetensors file of ggml's encodings).
    fn encode_fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The 48 rows of 256 values the encodings were made from (key `input`).
    fn encode_input(st: &safetensors::SafeTensors<'_>) -> Vec<f32> {
        let input = st.tensor("input").unwrap();
        assert_eq!(input.shape(), [48, 256]);
        input
            .data()
            .as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect()
    }

    /// fixtures/quant-encode-ggml.safetensors holds 48 rows of 256 values (gaussian-like,
    /// one-signed, outliers, exact ties, zeros, constant; scales 1 to 1e-5) and their encodings
    /// by ggml's own `quantize_row_*_ref` (C, built without FMA contraction). The round-trip
    /// bounds cannot see a search that picks a slightly worse scale; this can.
    #[test]
    fn bit_exact_against_ggml_reference_quantizers() {
        let bytes = encode_fixture("quant-encode-ggml.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let x = encode_input(&st);
        use GgmlType::*;
        for ty in [
            Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K,
        ] {
            let want = st.tensor(ty.name()).unwrap().data();
            let mut got = Vec::new();
            quantize(ty, &x, &mut got).unwrap();
            assert_eq!(got.len(), want.len(), "{ty}: size");
            let bb = ty.block_bytes();
            let bad: Vec<usize> = (0..got.len() / bb)
                .filter(|&b| got[b * bb..(b + 1) * bb] != want[b * bb..(b + 1) * bb])
                .collect();
            assert!(
                bad.is_empty(),
                "{ty}: {} of {} blocks differ from ggml, first block {} (values from {})",
                bad.len(),
                got.len() / bb,
                bad[0],
                bad[0] * ty.block_values()
            );
        }
    }

    /// fixtures/quant-encode-ggml-iq.safetensors: the same 48 rows encoded by ggml itself
    /// (`ggml_quantize_chunk` of the libggml that llama-cpp-python 0.3.36 ships, ggml 0.25.3;
    /// tools/golden/make_iq_encode.py).
    #[test]
    fn iq4_and_mxfp4_bit_exact_against_ggml() {
        let bytes = encode_fixture("quant-encode-ggml-iq.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let x = encode_input(&st);
        for ty in [GgmlType::IQ4_NL, GgmlType::IQ4_XS, GgmlType::MXFP4] {
            let want = st.tensor(ty.name()).unwrap().data();
            let mut got = Vec::new();
            quantize(ty, &x, &mut got).unwrap();
            assert_eq!(got.len(), want.len(), "{ty}: size");
            let bb = ty.block_bytes();
            let bad: Vec<usize> = (0..got.len() / bb)
                .filter(|&b| got[b * bb..(b + 1) * bb] != want[b * bb..(b + 1) * bb])
                .collect();
            assert!(
                bad.is_empty(),
                "{ty}: {} of {} blocks differ from ggml, first block {} (values from {}): \
                 got {:?} want {:?}",
                bad.len(),
                got.len() / bb,
                bad[0],
                bad[0] * ty.block_values(),
                &got[bad[0] * bb..(bad[0] + 1) * bb],
                &want[bad[0] * bb..(bad[0] + 1) * bb]
            );
        }
    }

    #[test]
    fn every_supported_type_round_trips_zeros_and_is_deterministic() {
        let x = weights(11, 4);
        for ty in GgmlType::ALL
            .into_iter()
            .filter(|t| is_quantize_supported(*t))
        {
            let y = round_trip(ty, &[0.0; 256]);
            assert!(y.iter().all(|v| *v == 0.0), "{ty}: zeros");
            let (mut a, mut b) = (vec![1, 2, 3], Vec::new());
            quantize(ty, &x, &mut a).unwrap();
            quantize(ty, &x, &mut b).unwrap();
            assert_eq!(&a[..3], &[1, 2, 3], "{ty}: appends");
            assert_eq!(&a[3..], &b[..], "{ty}: deterministic");
        }
    }

    #[test]
    fn q8_0_is_idempotent() {
        let x = weights(3, 16);
        let mut q1 = Vec::new();
        quantize(GgmlType::Q8_0, &x, &mut q1).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q8_0, &q1, &mut y).unwrap();
        let mut q2 = Vec::new();
        quantize(GgmlType::Q8_0, &y, &mut q2).unwrap();
        assert_eq!(q1, q2);
    }

    #[test]
    fn round_activations_equals_q8_0_round_trip() {
        let mut x = weights(8, 3);
        x[17] = 0.0;
        x[40..72].fill(0.0); // an all-zero block
        let want = round_trip(GgmlType::Q8_0, &x);
        round_activations_q8_0(&mut x);
        assert!(x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn round_activations_equals_q8_k_round_trip() {
        let mut x = weights(12, 3);
        x[300..512].fill(0.0); // max in the block's first values
        x[512..768].fill(0.0); // an all-zero block
        let want = round_trip(GgmlType::Q8_K, &x);
        let orig = x.clone();
        round_activations_q8_k(&mut x);
        assert!(x.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(x.iter().zip(&orig).any(|(a, b)| a != b));
        // A trailing partial block rounds over its own values only.
        let mut tail = orig[..300].to_vec();
        round_activations_q8_k(&mut tail);
        let mut padded = orig[256..512].to_vec();
        padded[44..].fill(0.0);
        round_activations_q8_k(&mut padded);
        assert_eq!(&tail[256..], &padded[..44]);
    }

    #[test]
    fn half_types_re_encode_the_fixture_bit_patterns() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/quant-vectors.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for ty in [GgmlType::F16, GgmlType::BF16] {
            let raw = st.tensor(&format!("{ty}.raw")).unwrap().data().to_vec();
            let mut vals = vec![0f32; raw.len() / 2];
            dequantize(ty, &raw, &mut vals).unwrap();
            let mut again = Vec::new();
            quantize(ty, &vals, &mut again).unwrap();
            assert_eq!(raw, again, "{ty}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // Exactly halfway: ties go to the even mantissa.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFF7F_FFFF)), 0xFF80); // rounds to -inf
        // A signalling NaN whose payload sits below bit 16 stays a NaN, made quiet.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xFF80_0001)), 0xFFC0);
    }

    #[test]
    fn bad_lengths_and_unsupported_types_are_errors() {
        let mut out = vec![7u8];
        let err = quantize(GgmlType::Q4_K, &[0.0; 255], &mut out).unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Input);
        assert!(err.message().contains("Q4_K") && err.message().contains("255"));
        let err = quantize(GgmlType::IQ3_S, &[0.0; 256], &mut out).unwrap_err();
        assert!(err.message().contains("IQ3_S"), "{}", err.message());
        let err = quantize(GgmlType::IQ4_XS, &[0.0; 32], &mut out).unwrap_err();
        assert!(err.message().contains("IQ4_XS") && err.message().contains("32"));
        assert!(quantize(GgmlType::IQ2_XXS, &[0.0; 256], &mut out).is_err());
        assert_eq!(out, [7]);
        quantize(GgmlType::Q6_K, &[], &mut out).unwrap();
        assert_eq!(out, [7]);
    }

    #[test]
    fn non_finite_input_does_not_panic() {
        let mut x = weights(2, 1);
        x[3] = f32::NAN;
        x[100] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        for ty in GgmlType::ALL
            .into_iter()
            .filter(|t| is_quantize_supported(*t))
        {
            let mut out = Vec::new();
            quantize(ty, &x, &mut out).unwrap();
            let mut y = vec![0f32; 256];
            dequantize(ty, &out, &mut y).unwrap();
        }
    }

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(31.49), 31);
    }

    /// Encoder speed (run with
    /// `cargo test --release --lib quantize::tests::throughput -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn throughput() {
        let x = weights(4, 4096);
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let mut out = Vec::with_capacity(x.len());
            let t = std::time::Instant::now();
            quantize(ty, std::hint::black_box(&x), &mut out).unwrap();
            let s = t.elapsed().as_secs_f64();
            println!("{ty}: {:.1} M values/s", x.len() as f64 / s / 1e6);
        }
    }
}
