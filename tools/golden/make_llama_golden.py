#!/usr/bin/env python3
"""Golden data for the `llama` GGUF architecture: Llama 2, Llama 3.x (with the llama3 RoPE frequency
scaling), Mistral and Mixtral, from Hugging Face transformers with forward hooks on every stage.

For each variant it builds a tiny model with deterministic weights, writes GGUF files the way
llama.cpp's convert_hf_to_gguf.py does (the same tensor transformations: Q and K rows permuted per
head so that adjacent-pair RoPE applies, `rope_freqs.weight` for llama3 scaling, experts stacked),
runs the transformers forward in float32 with the GGUF's (dequantized) weights, and writes every
stage of the project's vocabulary to activations-<quant>.safetensors.

Layout rule: q_proj, k_proj, q_rope and k_rope are written in the model file's (permuted) head
layout, as a GGUF-based engine computes them; attention probabilities and everything after do not
depend on it. A float64 numpy recompute in that layout, with adjacent-pair RoPE as llama.cpp runs
it, must agree with transformers' rotate-half RoPE on the original layout: it checks the
permutation itself.

Run:  pip install torch transformers gguf safetensors numpy
      python3 make_llama_golden.py --variant llama3 --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle as O  # noqa: E402  (checks the packages first)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

ARCH = "llama"

# variant -> (HF class name, modeling module, defaults)
VARIANTS = {
    "llama2": ("LlamaForCausalLM", "llama",
               dict(heads=4, kv_heads=4, hidden=64, ffn=128, rope_theta=10000.0, eps=1e-5, text="Llama 2 tiny!")),
    "llama3": ("LlamaForCausalLM", "llama",
               dict(heads=4, kv_heads=2, hidden=64, ffn=128, rope_theta=500000.0, eps=1e-5, text="Llama 3.1, tiny",
                    llama3=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=64))),
    "mistral": ("MistralForCausalLM", "mistral",
                dict(heads=4, kv_heads=1, hidden=64, ffn=128, rope_theta=1000000.0, eps=1e-5, text="Mistral tiny")),
    "mixtral": ("MixtralForCausalLM", "mixtral",
                dict(heads=4, kv_heads=2, hidden=64, ffn=32, rope_theta=1000000.0, eps=1e-5, text="Mixtral 8x tiny",
                     experts=8, top_k=2)),
}


def permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: per head, rows (j, D/2 + j) become (2j, 2j + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_file_layout(x):
    """A [T, heads, D] activation of the HF layout in the GGUF (permuted) layout."""
    D = x.shape[-1]
    idx = torch.arange(D).reshape(2, D // 2).t().reshape(D)  # new position 2j+h holds old h*D/2 + j
    return x[..., idx]


def llama3_rope_factors(a, D):
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors: rope_freqs.weight [D/2]."""
    s = a.llama3
    base = a.rope_theta
    freqs = 1.0 / (base ** (np.arange(0, D, 2, dtype=np.float32) / D))
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def make_config(a, cls_name):
    rope = {"rope_type": "default", "rope_theta": a.rope_theta}
    if a.llama3:
        rope = {"rope_type": "llama3", "rope_theta": a.rope_theta, **a.llama3}
    kw = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
              num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, hidden_act="silu",
              max_position_embeddings=a.ctx, rms_norm_eps=a.eps, tie_word_embeddings=False,
              rope_parameters=rope, bos_token_id=None, eos_token_id=256, pad_token_id=None,
              attn_implementation="eager")
    if cls_name == "LlamaForCausalLM":
        kw.update(attention_bias=False, mlp_bias=False)
    if cls_name == "MistralForCausalLM":
        kw.update(sliding_window=None)
    if cls_name == "MixtralForCausalLM":
        kw.update(sliding_window=None, num_local_experts=a.experts, num_experts_per_tok=a.top_k,
                  router_jitter_noise=0.0, output_router_logits=False, experts_implementation="eager")
    return getattr(transformers, cls_name.replace("ForCausalLM", "Config"))(**kw)


def gguf_weights(a, D, rng):
    """float32 weights keyed by GGUF name in the HF (unpermuted) layout, in the converter's order."""
    H, V, L, nh, nkv = a.hidden, a.vocab, a.layers, a.heads, a.kv_heads
    w = {}
    if a.llama3:
        w["rope_freqs.weight"] = llama3_rope_factors(a, D)
    w["token_embd.weight"] = rng.embed((V, H))
    for i in range(L):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = rng.norm(H)
        w[p + "attn_q.weight"] = rng.lin((nh * D, H), H)
        w[p + "attn_k.weight"] = rng.lin((nkv * D, H), H)
        w[p + "attn_v.weight"] = rng.lin((nkv * D, H), H)
        w[p + "attn_output.weight"] = rng.lin((H, nh * D), nh * D)
        w[p + "ffn_norm.weight"] = rng.norm(H)
        if a.experts:
            E, F = a.experts, a.ffn
            w[p + "ffn_gate_inp.weight"] = rng.lin((E, H), H, gain=2.0)  # crisp routing
            w[p + "ffn_gate_exps.weight"] = rng.lin((E, F, H), H)
            w[p + "ffn_down_exps.weight"] = rng.lin((E, H, F), F)
            w[p + "ffn_up_exps.weight"] = rng.lin((E, F, H), H)
        else:
            w[p + "ffn_gate.weight"] = rng.lin((a.ffn, H), H)
            w[p + "ffn_down.weight"] = rng.lin((H, a.ffn), a.ffn)
            w[p + "ffn_up.weight"] = rng.lin((a.ffn, H), H)
    w["output_norm.weight"] = rng.norm(H)
    w["output.weight"] = rng.lin((V, H), H)
    return w


def converted(w, a):
    """The converter's transformation: Q and K rows permuted per head."""
    out = dict(w)
    for name in w:
        if name.endswith("attn_q.weight"):
            out[name] = permute(w[name], a.heads)
        elif name.endswith("attn_k.weight"):
            out[name] = permute(w[name], a.kv_heads)
    return out


def unconverted(stored, a):
    """Back from the file layout to HF's: the inverse permutation of Q and K rows."""
    out = dict(stored)
    for name, n in [(n, a.heads) for n in stored if n.endswith("attn_q.weight")] + \
                   [(n, a.kv_heads) for n in stored if n.endswith("attn_k.weight")]:
        x = stored[name]
        out[name] = x.reshape(n, x.shape[0] // n // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
    return out


def load_into_hf(model, w, a):
    """GGUF-named weights (HF layout) onto the model, whichever expert layout transformers uses."""
    sd = model.state_dict()
    new = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"],
           "lm_head.weight": w["output.weight"]}
    for i in range(a.layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        new[h + "input_layernorm.weight"] = w[g + "attn_norm.weight"]
        new[h + "post_attention_layernorm.weight"] = w[g + "ffn_norm.weight"]
        for gg, hh in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")]:
            new[h + f"self_attn.{hh}.weight"] = w[g + gg + ".weight"]
        if a.experts:
            gate, up, down = w[g + "ffn_gate_exps.weight"], w[g + "ffn_up_exps.weight"], w[g + "ffn_down_exps.weight"]
            moe = next(p for p in ("mlp.", "block_sparse_moe.") if h + p + "gate.weight" in sd)
            new[h + moe + "gate.weight"] = w[g + "ffn_gate_inp.weight"]
            if h + moe + "experts.gate_up_proj" in sd:  # transformers >= 5: fused [E, 2F, H]
                new[h + moe + "experts.gate_up_proj"] = np.concatenate([gate, up], axis=1)
                new[h + moe + "experts.down_proj"] = down
            else:  # transformers 4.x: w1 = gate, w2 = down, w3 = up
                for e in range(a.experts):
                    new[h + moe + f"experts.{e}.w1.weight"] = gate[e]
                    new[h + moe + f"experts.{e}.w2.weight"] = down[e]
                    new[h + moe + f"experts.{e}.w3.weight"] = up[e]
        else:
            new[h + "mlp.gate_proj.weight"] = w[g + "ffn_gate.weight"]
            new[h + "mlp.up_proj.weight"] = w[g + "ffn_up.weight"]
            new[h + "mlp.down_proj.weight"] = w[g + "ffn_down.weight"]
    assert set(sd) == set(new), (set(sd) ^ set(new))
    for k in new:
        assert tuple(sd[k].shape) == new[k].shape, (k, sd[k].shape, new[k].shape)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in new.items()}, strict=True)


def run_and_capture(model, modeling, a, D, tokens):
    c = O.Capture()
    O.hook_model(c, model)
    for li, layer in enumerate(model.model.layers):
        p = f"layer.{li}."
        O.hook_layer(c, layer, p, a.heads, a.kv_heads, D, to_file_layout)
        if a.experts:
            moe = getattr(layer, "mlp", None) or layer.block_sparse_moe
            c.hook(moe.gate, p + "router_logits", O.router_logits)
            c.hook(moe, p + "ffn_out", O.first)
        else:
            O.hook_dense_mlp(c, layer.mlp, p)
    cap = O.run_forward(model, modeling, c, tokens, to_file_layout)
    # Mixtral: softmax over all experts, top-k, renormalised (llama.cpp: norm_w = true)
    margins = [O.add_routes(cap, f"layer.{li}.", a.top_k, renorm=True) for li in range(a.layers if a.experts else 0)]
    return O.ordered_trace(cap, a.layers), margins


def independent_check(trace, f32, a, D):
    """float64 numpy forward in the file layout (permuted Q/K, adjacent-pair RoPE as llama.cpp)."""
    f = {k: v.astype(np.float64) for k, v in f32.items()}
    T = len(trace["tokens"])
    r = O.Recompute(trace)
    inv = a.rope_theta ** (-np.arange(0, D, 2) / D)
    if "rope_freqs.weight" in f:
        inv = inv / f["rope_freqs.weight"]
    heads = {"attn_q": a.heads, "attn_k": a.kv_heads, "attn_v": a.kv_heads}
    x = f["token_embd.weight"][trace["tokens"].numpy()]
    r.cmp("embedding", x)
    for i in range(a.layers):
        g, p = f"blk.{i}.", f"layer.{i}."
        proj = lambda n, h: (h @ f[g + n + ".weight"].T).reshape(T, heads[n], D)  # noqa: E731
        x = O.recompute_attention(r, f, g, p, x, a.eps, proj, lambda y: O.rope_adjacent(y, inv))
        hn = O.rms(x, f[g + "ffn_norm.weight"], a.eps); r.cmp(p + "ffn_norm", hn)
        y = O.recompute_routed(r, f, g, p, hn, a.top_k, renorm=True) if a.experts else O.recompute_dense(r, f, g, p, hn)
        r.cmp(p + "ffn_out", y)
        x = x + y; r.cmp(p + "layer_out", x)
    O.recompute_tail(r, f, x, a.eps)
    return r.diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=272)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--tokens", default=None, help="comma-separated ids (default: the variant's text as bytes)")
    ap.add_argument("--quants", default="F32,Q8_0")
    a = ap.parse_args()
    cls_name, mod_name, defaults = VARIANTS[a.variant]
    shape = {"llama3": None, "experts": 0, "top_k": 0}
    shape.update(defaults)
    for k, v in shape.items():
        setattr(a, k, v)
    D = a.hidden // a.heads
    tokens = [int(t) for t in a.tokens.split(",")] if a.tokens else list(a.text.encode("utf-8"))

    O.deterministic(a.seed)
    os.makedirs(a.out, exist_ok=True)
    cfg = make_config(a, cls_name)
    modeling = __import__(f"transformers.models.{mod_name}.modeling_{mod_name}", fromlist=["x"])
    model = getattr(transformers, cls_name)(cfg).eval().float()
    assert model.config._attn_implementation == "eager"
    w = gguf_weights(a, D, O.Weights(a.seed))
    file_w = converted(w, a)
    load_into_hf(model, w, a)
    model.save_pretrained(os.path.join(a.out, "hf_model"))

    def kv(wr):
        wr.add_vocab_size(a.vocab)
        wr.add_context_length(a.ctx)
        wr.add_embedding_length(a.hidden)
        wr.add_block_count(a.layers)
        wr.add_feed_forward_length(a.ffn)
        wr.add_rope_dimension_count(D)
        wr.add_head_count(a.heads)
        wr.add_head_count_kv(a.kv_heads)
        wr.add_rope_freq_base(a.rope_theta)
        wr.add_layer_norm_rms_eps(a.eps)
        if a.experts:
            wr.add_expert_count(a.experts)
            wr.add_expert_used_count(a.top_k)
        O.add_byte_tokenizer(wr, a.vocab, "llama-bpe")

    expect = {"block_count": a.layers, "embedding_length": a.hidden, "attention.head_count": a.heads,
              "attention.head_count_kv": a.kv_heads, "feed_forward_length": a.ffn, "rope.dimension_count": D}
    manifest = {"variant": a.variant, "hf_class": cls_name, "versions": O.versions(), "seed": a.seed,
                "tokens": tokens, "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")},
                "layout": "q_proj/k_proj/q_rope/k_rope in the GGUF's permuted head layout (adjacent-pair RoPE)",
                "files": {}}
    for qname in [s.strip() for s in a.quants.split(",") if s.strip()]:
        stem = f"{a.variant}-tiny-{qname.lower()}"
        gpath = os.path.join(a.out, f"{stem}.gguf")
        stored = O.write_gguf(gpath, ARCH, stem, file_w, O.QT[qname], kv)
        rows = O.verify_gguf(gpath, ARCH, file_w, stored, expect)
        load_into_hf(model, unconverted(stored, a), a)  # HF runs exactly the weights the file holds
        trace, margins = run_and_capture(model, modeling, a, D, tokens)
        diffs = independent_check(trace, stored, a, D)
        meta = {"gguf": os.path.basename(gpath), "tokens": tokens, "variant": a.variant}
        O.write_outputs(a.out, a.variant, qname, gpath, trace, meta, rows, diffs, manifest)
        if margins:
            manifest["files"][qname]["min_topk_margin"] = min(margins)
            print(f"  min top-k router margin {min(margins):.3g}")
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, default=str)
    print("tokens:", tokens)


if __name__ == "__main__":
    main()
