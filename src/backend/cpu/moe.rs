//! The expert FFN (qwen3moe, Mixtral, qwen2moe); everything else of the block is in
//! [`super::decoder`]. It routes each token to its top-k experts (softmax over all experts,
//! top-k, renormalised where the architecture says so), runs every used expert once over the
//! tokens routed to it (in parallel), and combines per token in top-k rank order, so the result
//! does not depend on thread scheduling. A shared expert (qwen2moe) runs on every token, scaled
//! by its sigmoid gate, and is added to the routed sum.

use rayon::prelude::*;

use super::matmul::matmul;
use super::ops::{Precision, add, silu_mul, softmax_rows, topk_desc};
use super::pass::Pass;
use crate::backend::FaultKind;
use crate::error::{Error, Result};
use crate::model::weights::{FfnWeights, QTensor, SharedExpert};
use crate::trace::stage::Stage;

/// router_logits → router_probs → topk_ids → topk_weights → (ffn_shared_gate →
/// ffn_shared_out) → ffn_out.
pub(super) fn moe_ffn(pass: &mut Pass, i: usize, ffn: &FfnWeights, h: &[f32]) -> Result<Vec<f32>> {
    let FfnWeights::Moe {
        ffn_gate_inp,
        ffn_gate_exps,
        ffn_up_exps,
        ffn_down_exps,
        shared,
    } = ffn
    else {
        return Err(Error::internal("moe_ffn called on a dense layer"));
    };
    let logits = router_logits(pass, i, ffn_gate_inp, h)?;
    let probs = router_probs(pass, i, &logits);
    let ids = topk_ids(pass, i, &probs);
    let weights = topk_weights(pass, i, &probs, &ids);
    let routed = routed_experts(
        pass,
        i,
        [ffn_gate_exps, ffn_up_exps, ffn_down_exps],
        h,
        &ids,
        &weights,
    )?;
    let mut y = match shared {
        Some(s) => {
            let gate = ffn_shared_gate(pass, i, s, h)?;
            let out = ffn_shared_out(pass, i, s, h, &gate)?;
            add(&routed, &out)
        }
        None => routed,
    };
    pass.emit(Some(i), Stage::FfnOut, &mut y, &[pass.n(), pass.cfg.hidden]);
    Ok(y)
}

/// `[T, 1]`: sigmoid of the shared expert's gate logit, per token.
fn ffn_shared_gate(pass: &mut Pass, i: usize, s: &SharedExpert, h: &[f32]) -> Result<Vec<f32>> {
    let logit = pass.matmul(Some(i), Stage::FfnSharedGate, h, &s.ffn_gate_inp_shexp)?;
    let mut g: Vec<f32> = logit
        .iter()
        .map(|&x| match pass.p {
            Precision::F64 => (1.0 / (1.0 + (-(x as f64)).exp())) as f32,
            Precision::F32 => 1.0 / (1.0 + (-x).exp()),
        })
        .collect();
    pass.emit(Some(i), Stage::FfnSharedGate, &mut g, &[pass.n(), 1]);
    Ok(g)
}

/// `[T, H]`: the shared SwiGLU expert over every token, scaled by its gate.
fn ffn_shared_out(
    pass: &mut Pass,
    i: usize,
    s: &SharedExpert,
    h: &[f32],
    gate: &[f32],
) -> Result<Vec<f32>> {
    let g = matmul(h, pass.n(), &s.ffn_gate_shexp, pass.p)?;
    let u = matmul(h, pass.n(), &s.ffn_up_shexp, pass.p)?;
    let act = silu_mul(&g, &u, pass.p);
    let mut y = pass.matmul(Some(i), Stage::FfnSharedOut, &act, &s.ffn_down_shexp)?;
    let hd = pass.cfg.hidden;
    for (row, &gv) in y.chunks_exact_mut(hd).zip(gate) {
        row.iter_mut().for_each(|v| *v *= gv);
    }
    pass.emit(Some(i), Stage::FfnSharedOut, &mut y, &[pass.n(), hd]);
    Ok(y)
}

fn router_logits(pass: &mut Pass, i: usize, gate_inp: &QTensor, h: &[f32]) -> Result<Vec<f32>> {
    let mut l = pass.matmul(Some(i), Stage::RouterLogits, h, gate_inp)?;
    pass.emit(
        Some(i),
        Stage::RouterLogits,
        &mut l,
        &[pass.n(), pass.cfg.n_experts],
    );
    Ok(l)
}

/// Softmax over all experts (before top-k, as every router here does).
fn router_probs(pass: &mut Pass, i: usize, logits: &[f32]) -> Vec<f32> {
    let e = pass.cfg.n_experts;
    let mut p = softmax_rows(logits, e, pass.p);
    pass.emit(Some(i), Stage::RouterProbs, &mut p, &[pass.n(), e]);
    p
}

/// `[T, k]` expert ids, descending probability, ties to the lower id.
fn topk_ids(pass: &mut Pass, i: usize, probs: &[f32]) -> Vec<usize> {
    let (e, k) = (pass.cfg.n_experts, pass.cfg.n_experts_used);
    let ids: Vec<usize> = probs
        .chunks_exact(e)
        .flat_map(|row| topk_desc(row, k))
        .collect();
    let as_i32: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    pass.emit_i32(Some(i), Stage::TopkIds, &as_i32, &[pass.n(), k]);
    ids
}

/// The chosen probabilities, renormalised to sum 1 when the architecture says so (qwen3moe and
/// Mixtral do, qwen2moe does not), unless the fault `no_topk_renorm` is planted here.
fn topk_weights(pass: &mut Pass, i: usize, probs: &[f32], ids: &[usize]) -> Vec<f32> {
    let (e, k) = (pass.cfg.n_experts, pass.cfg.n_experts_used);
    let renorm = pass.cfg.norm_topk_prob
        && !pass.has(Some(i), Stage::TopkWeights, |f| {
            *f == FaultKind::NoTopkRenorm
        });
    let mut w = Vec::with_capacity(ids.len());
    for (row, chosen) in probs.chunks_exact(e).zip(ids.chunks_exact(k)) {
        let picked: Vec<f32> = chosen.iter().map(|&x| row[x]).collect();
        if !renorm {
            w.extend_from_slice(&picked);
            continue;
        }
        match pass.p {
            Precision::F64 => {
                let s: f64 = picked.iter().map(|&v| v as f64).sum();
                w.extend(picked.iter().map(|&v| (v as f64 / s) as f32));
            }
            Precision::F32 => {
                let s: f32 = picked.iter().sum();
                w.extend(picked.iter().map(|&v| v / s));
            }
        }
    }
    pass.emit(Some(i), Stage::TopkWeights, &mut w, &[pass.n(), k]);
    w
}

/// Run each used expert over its tokens, then `y[t] = Σ_rank w[t, rank] · expert_out[t, rank]`
/// (ffn_out without a shared expert).
fn routed_experts(
    pass: &mut Pass,
    i: usize,
    [gate, up, down]: [&QTensor; 3],
    h: &[f32],
    ids: &[usize],
    weights: &[f32],
) -> Result<Vec<f32>> {
    let (t, hd, k, n_exp) = (
        pass.n(),
        pass.cfg.hidden,
        pass.cfg.n_experts_used,
        pass.cfg.n_experts,
    );
    // slots[e] = the (token, rank) pairs routed to expert e, in token order
    let mut slots: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n_exp];
    for (j, &e) in ids.iter().enumerate() {
        slots
            .get_mut(e)
            .ok_or_else(|| Error::internal(format!("layer {i}: expert id {e} out of range")))?
            .push((j / k, j % k));
    }
    let swap = pass.expert_swap(i);
    let runs: Vec<(usize, Vec<f32>)> = {
        let pass: &Pass = pass;
        slots
            .par_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(e, toks)| -> Result<(usize, Vec<f32>)> {
                // the planted expert swap runs tokens routed to a through b's weights and back
                let we = match swap {
                    Some((a, b)) if e == a => b,
                    Some((a, b)) if e == b => a,
                    _ => e,
                };
                let x: Vec<f32> = toks
                    .iter()
                    .flat_map(|&(tok, _)| &h[tok * hd..(tok + 1) * hd])
                    .copied()
                    .collect();
                let g = matmul(&x, toks.len(), &gate.expert(we)?, pass.p)?;
                let u = matmul(&x, toks.len(), &up.expert(we)?, pass.p)?;
                let act = silu_mul(&g, &u, pass.p);
                Ok((
                    e,
                    pass.matmul(Some(i), Stage::FfnOut, &act, &down.expert(we)?)?,
                ))
            })
            .collect::<Result<_>>()?
    };
    // per (token, rank): that expert's output row
    let mut rows: Vec<&[f32]> = vec![&[]; t * k];
    for (e, out) in &runs {
        for (&(tok, rank), row) in slots[*e].iter().zip(out.chunks_exact(hd)) {
            rows[tok * k + rank] = row;
        }
    }
    let mut y = vec![0f32; t * hd];
    for (tok, yr) in y.chunks_exact_mut(hd).enumerate() {
        let (ws, rs) = (
            &weights[tok * k..(tok + 1) * k],
            &rows[tok * k..(tok + 1) * k],
        );
        for (c, o) in yr.iter_mut().enumerate() {
            *o = match pass.p {
                Precision::F64 => ws
                    .iter()
                    .zip(rs)
                    .map(|(&w, r)| w as f64 * r[c] as f64)
                    .sum::<f64>() as f32,
                Precision::F32 => ws.iter().zip(rs).map(|(&w, r)| w * r[c]).sum::<f32>(),
            };
        }
    }
    Ok(y)
}
