//! The decoder forward every supported architecture shares: embedding, blocks of attention and
//! FFN, final norm, logits. What differs between architectures (q/k norms, q/k/v biases, RoPE
//! pairing and frequency scaling, dense or expert FFN) is read from the model's description
//! (`model::arch`), never decided here by its name. Each function computes one stage of the
//! stage vocabulary (docs/design.md) over the rows of one step of the schedule (the whole
//! prompt for the full forward) and hands it to [`Pass::emit`]; the expert FFN is in [`moe`].
//! Row-wise stages do not depend on other rows, and attention sums each query's keys in
//! position order, so every schedule gives the full forward's results bit for bit.

use super::attention::{self, AttnShape};
use super::kv::{CacheUse, KvCache};
use super::moe;
use super::ops::{add, rms_norm, silu_mul};
use super::pass::Pass;
use crate::backend::FaultKind;
use crate::error::{Error, Result};
use crate::model::weights::{FfnWeights, LayerWeights, ModelWeights, QTensor};
use crate::trace::stage::{Key, Stage};

/// The whole forward: the tokens, then every step of the schedule (one for the full forward).
pub(super) fn forward(pass: &mut Pass, w: &ModelWeights, tokens: &[u32]) -> Result<()> {
    // the pass starts on the whole prompt, so the tokens are placed as one step
    let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
    pass.emit_i32(None, Stage::Tokens, &ids, &[pass.t]);
    let mut caches: Vec<KvCache> = w.layers.iter().map(|_| KvCache::default()).collect();
    for st in pass.steps.clone() {
        pass.step = st;
        step(pass, w, &tokens[st.start..st.end], &mut caches)?;
    }
    Ok(())
}

/// One step over its rows: embedding, every block (through its layer's KV cache), final norm,
/// logits. Teacher forcing replaces each layer's input rows with the teacher's rows.
fn step(pass: &mut Pass, w: &ModelWeights, tokens: &[u32], caches: &mut [KvCache]) -> Result<()> {
    let one_step = pass.steps.len() == 1;
    let mut x = embedding(pass, w, tokens)?;
    for (i, (lw, cache)) in w.layers.iter().zip(caches.iter_mut()).enumerate() {
        let input = if i == 0 {
            Key::model(Stage::Embedding)
        } else {
            Key::layer(i - 1, Stage::LayerOut)
        };
        if let Some(forced) = pass.teacher(input)? {
            x = forced;
        }
        x = block(pass, w, i, lw, &x, cache)?;
        if one_step {
            // no later step reads it: the full forward holds one layer's K/V at a time
            *cache = KvCache::default();
        }
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
    pass.emit(None, Stage::Embedding, &mut x, &[pass.n(), h]);
    Ok(x)
}

/// One transformer block: attention half, then the FFN (dense or MoE).
fn block(
    pass: &mut Pass,
    w: &ModelWeights,
    i: usize,
    lw: &LayerWeights,
    x: &[f32],
    cache: &mut KvCache,
) -> Result<Vec<f32>> {
    let r = self_attention(pass, w, i, lw, x, cache)?;
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
/// them) → RoPE → K/V into the cache → probabilities over the cache → context → output
/// projection → residual. Returns attn_residual.
fn self_attention(
    pass: &mut Pass,
    w: &ModelWeights,
    i: usize,
    lw: &LayerWeights,
    x: &[f32],
    cache: &mut KvCache,
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
    let ctx = attend(pass, i, &q, k, v, cache);
    let o = attn_out(pass, i, lw, &ctx)?;
    Ok(attn_residual(pass, i, x, &o))
}

fn attn_norm(pass: &mut Pass, i: usize, lw: &LayerWeights, x: &[f32]) -> Vec<f32> {
    let mut y = rms_norm(x, &lw.attn_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(
        Some(i),
        Stage::AttnNorm,
        &mut y,
        &[pass.n(), pass.cfg.hidden],
    );
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
    pass.emit(
        Some(i),
        stage,
        &mut y,
        &[pass.n(), heads, pass.cfg.head_dim],
    );
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
    pass.emit(
        Some(i),
        stage,
        &mut y,
        &[pass.n(), heads, pass.cfg.head_dim],
    );
    y
}

/// q_rope / k_rope: the architecture's pairing (the other one under the planted
/// `rope_pair_swap`), frequencies divided by `rope_freqs` where the model has them, at the
/// step's absolute positions (from 0 in every step under the planted `rope_pos_reset`).
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
    let pos0 = if pass.has(Some(i), stage, |k| *k == FaultKind::RopePosReset) {
        0
    } else {
        pass.step.start
    };
    let d = pass.cfg.head_dim;
    let (theta, p) = (pass.cfg.rope_theta, pass.p);
    let mut y = attention::rope_at(x, pos0, pass.n(), d, theta, freqs, pairing, p);
    pass.emit(Some(i), stage, &mut y, &[pass.n(), heads, d]);
    y
}

fn attn_shape(pass: &Pass) -> AttnShape {
    AttnShape {
        t: pass.n(),
        nh: pass.cfg.n_heads,
        nkv: pass.cfg.n_kv_heads,
        d: pass.cfg.head_dim,
    }
}

/// The step's K/V into the layer's cache, then its queries over the cache: attn_probs (the
/// step's rows of the causal `[nh, T, T]` matrix) and attn_ctx. The probabilities exist only
/// when the plan keeps them or a fault is planted on them; otherwise the fused kernel computes
/// the same context without them. Under `kv_stale` the step attends before its K/V are written.
/// An f16 cache stores K/V rounded to f16 (the stages k_rope and v_proj, already emitted, keep
/// the unrounded values), under every schedule: the full forward's one step rounds them too.
fn attend(
    pass: &mut Pass,
    i: usize,
    q: &[f32],
    mut k: Vec<f32>,
    mut v: Vec<f32>,
    cache: &mut KvCache,
) -> Vec<f32> {
    pass.kv.round_all(&mut k);
    pass.kv.round_all(&mut v);
    let s = attn_shape(pass);
    let (row, t, p) = (s.nkv * s.d, pass.t, pass.p);
    let at = CacheUse::at(pass, i);
    let pending = if at.stale {
        cache.grow(at.end * row);
        Some((k, v))
    } else {
        cache.write(at.start, k, v, row, at.shift);
        None
    };
    let keys = |qi: usize| at.keys(qi);
    let mut ctx =
        if pass.keeps(Some(i), Stage::AttnProbs) || pass.has(Some(i), Stage::AttnProbs, |_| true) {
            let mut probs = attention::probs_rows(q, &cache.k, s, t, &keys, p);
            pass.emit(Some(i), Stage::AttnProbs, &mut probs, &[s.nh, s.t, t]);
            attention::ctx_rows(&probs, t, &cache.v, s, &keys, p)
        } else {
            attention::ctx_rows_fused(q, &cache.k, &cache.v, s, &keys, p)
        };
    pass.emit(Some(i), Stage::AttnCtx, &mut ctx, &[s.t, s.nh * s.d]);
    if let Some((k, v)) = pending {
        cache.write(at.start, k, v, row, at.shift);
    }
    ctx
}

fn attn_out(pass: &mut Pass, i: usize, lw: &LayerWeights, ctx: &[f32]) -> Result<Vec<f32>> {
    let mut o = pass.matmul(Some(i), Stage::AttnOut, ctx, &lw.attn_output)?;
    pass.emit(
        Some(i),
        Stage::AttnOut,
        &mut o,
        &[pass.n(), pass.cfg.hidden],
    );
    Ok(o)
}

fn attn_residual(pass: &mut Pass, i: usize, x: &[f32], o: &[f32]) -> Vec<f32> {
    let mut r = add(x, o);
    pass.emit(
        Some(i),
        Stage::AttnResidual,
        &mut r,
        &[pass.n(), pass.cfg.hidden],
    );
    r
}

fn ffn_norm(pass: &mut Pass, i: usize, lw: &LayerWeights, r: &[f32]) -> Vec<f32> {
    let mut h = rms_norm(r, &lw.ffn_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(
        Some(i),
        Stage::FfnNorm,
        &mut h,
        &[pass.n(), pass.cfg.hidden],
    );
    h
}

/// Dense SwiGLU FFN: ffn_gate, ffn_up, ffn_act = silu(gate)·up, ffn_out = down(act).
fn dense_ffn(
    pass: &mut Pass,
    i: usize,
    [gate, up, down]: [&QTensor; 3],
    h: &[f32],
) -> Result<Vec<f32>> {
    let (t, f) = (pass.n(), pass.cfg.ffn_dim);
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
    pass.emit(
        Some(i),
        Stage::LayerOut,
        &mut x,
        &[pass.n(), pass.cfg.hidden],
    );
    x
}

fn final_norm(pass: &mut Pass, w: &ModelWeights, x: &[f32]) -> Vec<f32> {
    let mut h = rms_norm(x, &w.output_norm, pass.cfg.rms_eps, pass.p);
    pass.emit(None, Stage::FinalNorm, &mut h, &[pass.n(), pass.cfg.hidden]);
    h
}

fn logits(pass: &mut Pass, w: &ModelWeights, h: &[f32]) -> Result<()> {
    let mut l = pass.matmul(None, Stage::Logits, h, &w.output)?;
    if l.len() != pass.n() * pass.cfg.vocab {
        return Err(Error::internal(
            "logits: output size does not match T x vocab",
        ));
    }
    pass.emit(None, Stage::Logits, &mut l, &[pass.n(), pass.cfg.vocab]);
    Ok(())
}
