//! The decoder forward every supported architecture shares: embedding, blocks of attention and
//! FFN, final norm, logits. What differs between architectures (q/k norms, q/k/v biases, RoPE
//! pairing and frequency scaling, dense or expert FFN) is read from the model's description
//! (`model::arch`), never decided here by its name. Each function computes one stage of the
//! stage vocabulary (docs/design.md), over the whole prompt at once, and hands it to
//! [`Pass::emit`]; the expert FFN is in [`moe`].

use super::attention::{self, AttnShape};
use super::moe;
use super::ops::{add, rms_norm, silu_mul};
use super::pass::Pass;
use crate::backend::FaultKind;
use crate::error::{Error, Result};
use crate::model::weights::{FfnWeights, LayerWeights, ModelWeights, QTensor};
use crate::trace::stage::{Key, Stage};

/// The whole forward: embedding, every block, final norm, logits.
pub(super) fn forward(pass: &mut Pass, w: &ModelWeights, tokens: &[u32]) -> Result<()> {
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    pass.emit_i32(None, Stage::Tokens, &ids, &[pass.t]);
    let mut x = embedding(pass, w, tokens)?;
    for (i, lw) in w.layers.iter().enumerate() {
        let input = if i == 0 {
            Key::model(Stage::Embedding)
        } else {
            Key::layer(i - 1, Stage::LayerOut)
        };
        if let Some(forced) = pass.teacher(input)? {
            x = forced;
        }
        x = block(pass, w, i, lw, &x)?;
    }
    if let Some(last) = w.layers.len().checked_sub(1)
        && let Some(forced) = pass.teacher(Key::layer(last, Stage::LayerOut))?
    {
        x = forced;
    }
    let mut h = final_norm(pass, w, &x);
    if let Some(forced) = pass.teacher(Key::model(Stage::FinalNorm))? {
        h = forced;
    }
    logits(pass, w, &h)?;
    Ok(())
}

fn embedding(pass: &mut Pass, w: &ModelWeights, tokens: &[u32]) -> Result<Vec<f32>> {
    let h = pass.cfg.hidden;
    let mut x = vec![0f32; tokens.len() * h];
    for (&tok, row) in tokens.iter().zip(x.chunks_exact_mut(h)) {
        w.token_embd.decode_rows(tok as usize, 1, row)?;
    }
    pass.emit(None, Stage::Embedding, &mut x, &[pass.t, h]);
    Ok(x)
}

/// One transformer block: attention half, then the FFN (dense or MoE).
fn block(
    pass: &mut Pass,
    w: &ModelWeights,
    i: usize,
    lw: &LayerWeights,
    x: &[f32],
) -> Result<Vec<f32>> {
    let r = self_attention(pass, w, i, lw, x)?;
    let h = ffn_norm(pass, i, lw, &r);
    let y = match &lw.ffn {
        FfnWeights::Dense {
            ffn_gate,
            ffn_up,
            ffn_down,
        } => dense_ffn(pass, i, [ffn_gate, ffn_up, ffn_down], &h)?,
        FfnWeights::Moe { .. } => moe::moe_ffn(pass, i, &lw.ffn, &h)?,
    };
    Ok(layer_out(pass, i, &r, &y))
}

/// attn_norm → q/k/v projections (with their biases) → q/k norms (where the architecture has
/// them) → RoPE → probabilities → context → output projection → residual. Returns
/// attn_residual.
fn self_attention(
    pass: &mut Pass,
    w: &ModelWeights,
    i: usize,
    lw: &LayerWeights,
    x: &[f32],
) -> Result<Vec<f32>> {
    let (nh, nkv) = (pass.cfg.n_heads, pass.cfg.n_kv_heads);
    let a = attn_norm(pass, i, lw, x);
    let q = proj(pass, i, Stage::QProj, &lw.attn_q, &lw.attn_q_bias, &a, nh)?;
    let k = proj(pass, i, Stage::KProj, &lw.attn_k, &lw.attn_k_bias, &a, nkv)?;
    let v = proj(pass, i, Stage::VProj, &lw.attn_v, &lw.attn_v_bias, &a, nkv)?;
    let q = match &lw.attn_q_norm {
        Some(g) => head_norm(pass, i, Stage::QNorm, g, &q, nh),
        None => q,
    };
    let k = match &lw.attn_k_norm {
        Some(g) => head_norm(pass, i, Stage::KNorm, g, &k, nkv),
        None => k,
    };
    let freqs = w.rope_freqs.as_deref();
    let q = rope(pass, i, Stage::QRope, &q, nh, freqs);
    let k = rope(pass, i, Stage::KRope, &k, nkv, freqs);
    // the [nh, T, T] probabilities exist only when the plan keeps them or a fault is planted
    // on them; otherwise the fused kernel computes the same context without them
    let ctx =
        if pass.keeps(Some(i), Stage::AttnProbs) || pass.has(Some(i), Stage::AttnProbs, |_| true) {
            let probs = attn_probs(pass, i, &q, &k);
            attn_ctx(pass, i, &probs, &v)
        } else {
            attn_ctx_fused(pass, i, &q, &k, &v)
        };
    let o = attn_out(pass, i, lw, &ctx)?;
    Ok(attn_residual(pass, i, x, &o))
}

fn attn_norm(pass: &mut Pass, i: usize, lw: &LayerWeights, x: &[f32]) -> Vec<f32> {
    let mut y = rms_norm(x, &lw.attn_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(Some(i), Stage::AttnNorm, &mut y, &[pass.t, pass.cfg.hidden]);
    y
}

/// q_proj / k_proj / v_proj: `[T, heads, D]`, the bias (qwen2) included.
fn proj(
    pass: &mut Pass,
    i: usize,
    stage: Stage,
    wt: &QTensor,
    bias: &Option<Vec<f32>>,
    a: &[f32],
    heads: usize,
) -> Result<Vec<f32>> {
    let mut y = pass.matmul(Some(i), stage, a, wt)?;
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv);
        }
    }
    pass.emit(Some(i), stage, &mut y, &[pass.t, heads, pass.cfg.head_dim]);
    Ok(y)
}

/// q_norm / k_norm: the per-head RMSNorm over D before RoPE (qwen3, qwen3moe).
fn head_norm(
    pass: &mut Pass,
    i: usize,
    stage: Stage,
    g: &[f32],
    x: &[f32],
    heads: usize,
) -> Vec<f32> {
    let mut y = rms_norm(x, g, pass.cfg.rms_eps, pass.p);
    pass.emit(Some(i), stage, &mut y, &[pass.t, heads, pass.cfg.head_dim]);
    y
}

/// q_rope / k_rope: the architecture's pairing (the other one under the planted
/// `rope_pair_swap`), frequencies divided by `rope_freqs` where the model has them.
fn rope(
    pass: &mut Pass,
    i: usize,
    stage: Stage,
    x: &[f32],
    heads: usize,
    freqs: Option<&[f32]>,
) -> Vec<f32> {
    let mut pairing = pass.cfg.desc().rope;
    if pass.has(Some(i), stage, |k| *k == FaultKind::RopePairSwap) {
        pairing = pairing.swapped();
    }
    let d = pass.cfg.head_dim;
    let mut y = attention::rope(x, pass.t, d, pass.cfg.rope_theta, freqs, pairing, pass.p);
    pass.emit(Some(i), stage, &mut y, &[pass.t, heads, d]);
    y
}

fn attn_shape(pass: &Pass) -> AttnShape {
    AttnShape {
        t: pass.t,
        nh: pass.cfg.n_heads,
        nkv: pass.cfg.n_kv_heads,
        d: pass.cfg.head_dim,
    }
}

/// How far past the diagonal the causal mask lets a query see (1 with the planted off-by-one).
fn lookahead(pass: &Pass, i: usize) -> usize {
    usize::from(pass.has(Some(i), Stage::AttnProbs, |k| {
        *k == FaultKind::CausalMaskOffByOne
    }))
}

fn attn_probs(pass: &mut Pass, i: usize, q: &[f32], k: &[f32]) -> Vec<f32> {
    let s = attn_shape(pass);
    let mut p = attention::attn_probs(q, k, s, lookahead(pass, i), pass.p);
    pass.emit(Some(i), Stage::AttnProbs, &mut p, &[s.nh, s.t, s.t]);
    p
}

fn attn_ctx(pass: &mut Pass, i: usize, probs: &[f32], v: &[f32]) -> Vec<f32> {
    let s = attn_shape(pass);
    let mut c = attention::attn_ctx(probs, v, s, lookahead(pass, i), pass.p);
    pass.emit(Some(i), Stage::AttnCtx, &mut c, &[s.t, s.nh * s.d]);
    c
}

/// attn_ctx straight from q, k, v, when no one looks at attn_probs (see
/// [`attention::attn_ctx_fused`]).
fn attn_ctx_fused(pass: &mut Pass, i: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
    let s = attn_shape(pass);
    let mut c = attention::attn_ctx_fused(q, k, v, s, lookahead(pass, i), pass.p);
    pass.emit(Some(i), Stage::AttnCtx, &mut c, &[s.t, s.nh * s.d]);
    c
}

fn attn_out(pass: &mut Pass, i: usize, lw: &LayerWeights, ctx: &[f32]) -> Result<Vec<f32>> {
    let mut o = pass.matmul(Some(i), Stage::AttnOut, ctx, &lw.attn_output)?;
    pass.emit(Some(i), Stage::AttnOut, &mut o, &[pass.t, pass.cfg.hidden]);
    Ok(o)
}

fn attn_residual(pass: &mut Pass, i: usize, x: &[f32], o: &[f32]) -> Vec<f32> {
    let mut r = add(x, o);
    pass.emit(
        Some(i),
        Stage::AttnResidual,
        &mut r,
        &[pass.t, pass.cfg.hidden],
    );
    r
}

fn ffn_norm(pass: &mut Pass, i: usize, lw: &LayerWeights, r: &[f32]) -> Vec<f32> {
    let mut h = rms_norm(r, &lw.ffn_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(Some(i), Stage::FfnNorm, &mut h, &[pass.t, pass.cfg.hidden]);
    h
}

/// Dense SwiGLU FFN: ffn_gate, ffn_up, ffn_act = silu(gate)·up, ffn_out = down(act).
fn dense_ffn(
    pass: &mut Pass,
    i: usize,
    [gate, up, down]: [&QTensor; 3],
    h: &[f32],
) -> Result<Vec<f32>> {
    let (t, f) = (pass.t, pass.cfg.ffn_dim);
    let mut g = pass.matmul(Some(i), Stage::FfnGate, h, gate)?;
    pass.emit(Some(i), Stage::FfnGate, &mut g, &[t, f]);
    let mut u = pass.matmul(Some(i), Stage::FfnUp, h, up)?;
    pass.emit(Some(i), Stage::FfnUp, &mut u, &[t, f]);
    let mut a = silu_mul(&g, &u, pass.p);
    pass.emit(Some(i), Stage::FfnAct, &mut a, &[t, f]);
    let mut y = pass.matmul(Some(i), Stage::FfnOut, &a, down)?;
    pass.emit(Some(i), Stage::FfnOut, &mut y, &[t, pass.cfg.hidden]);
    Ok(y)
}

fn layer_out(pass: &mut Pass, i: usize, r: &[f32], y: &[f32]) -> Vec<f32> {
    let mut x = add(r, y);
    pass.emit(Some(i), Stage::LayerOut, &mut x, &[pass.t, pass.cfg.hidden]);
    x
}

fn final_norm(pass: &mut Pass, w: &ModelWeights, x: &[f32]) -> Vec<f32> {
    let mut h = rms_norm(x, &w.output_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(None, Stage::FinalNorm, &mut h, &[pass.t, pass.cfg.hidden]);
    h
}

fn logits(pass: &mut Pass, w: &ModelWeights, h: &[f32]) -> Result<()> {
    let mut l = pass.matmul(None, Stage::Logits, h, &w.output)?;
    if l.len() != pass.t * pass.cfg.vocab {
        return Err(Error::internal(
            "logits: output size does not match T x vocab",
        ));
    }
    pass.emit(None, Stage::Logits, &mut l, &[pass.t, pass.cfg.vocab]);
    Ok(())
}
