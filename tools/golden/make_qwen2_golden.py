#!/usr/bin/env python3
"""Golden data for the `qwen2` and `qwen2moe` GGUF architectures, from Hugging Face transformers with
forward hooks on every stage.

- qwen2: dense, q/k/v projections with biases, NeoX (rotate-half) RoPE, output tied to the token
  embedding (the file has no output.weight, as the converter writes tied models).
- qwen2moe: q/k/v biases; routed experts chosen by softmax then top-k, *not* renormalised; a shared
  expert whose output is scaled by a sigmoid gate (ffn_gate_inp_shexp); ffn_out = routed + shared.
  The stages ffn_shared_gate [T,1] and ffn_shared_out [T,H] hold the gate and the gated output.

Tensors are written as llama.cpp's convert_hf_to_gguf.py writes them (no permutation for Qwen2;
experts stacked; 1-D tensors and routers stay F32). A float64 numpy recompute of the whole forward
from the GGUF's weights must agree with transformers.

Run:  pip install torch transformers gguf safetensors numpy
      python3 make_qwen2_golden.py --variant qwen2moe --out DIR
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

VARIANTS = {
    "qwen2": dict(arch="qwen2", cls="Qwen2ForCausalLM", mod="qwen2", heads=4, kv_heads=2, hidden=64, ffn=128,
                  tied=True, text="Qwen2 dense tiny"),
    "qwen2moe": dict(arch="qwen2moe", cls="Qwen2MoeForCausalLM", mod="qwen2_moe", heads=4, kv_heads=2, hidden=64,
                     ffn=128, tied=False, experts=8, top_k=2, moe_ffn=32, shared_ffn=64, text="Qwen2-MoE tiny"),
}


def make_config(a):
    kw = dict(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
              num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, hidden_act="silu",
              max_position_embeddings=a.ctx, rms_norm_eps=a.eps, tie_word_embeddings=a.tied,
              rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta}, use_sliding_window=False,
              bos_token_id=None, eos_token_id=256, pad_token_id=None, attn_implementation="eager")
    if a.experts:
        kw.update(num_experts=a.experts, num_experts_per_tok=a.top_k, moe_intermediate_size=a.moe_ffn,
                  shared_expert_intermediate_size=a.shared_ffn, norm_topk_prob=False, decoder_sparse_step=1,
                  mlp_only_layers=[], output_router_logits=False, experts_implementation="eager")
    return getattr(transformers, a.cls.replace("ForCausalLM", "Config"))(**kw)


def gguf_weights(a, D, rng):
    H, V, nh, nkv = a.hidden, a.vocab, a.heads, a.kv_heads
    w = {"token_embd.weight": rng.embed((V, H))}
    for i in range(a.layers):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = rng.norm(H)
        w[p + "attn_q.weight"] = rng.lin((nh * D, H), H)
        w[p + "attn_q.bias"] = rng.bias(nh * D)
        w[p + "attn_k.weight"] = rng.lin((nkv * D, H), H)
        w[p + "attn_k.bias"] = rng.bias(nkv * D)
        w[p + "attn_v.weight"] = rng.lin((nkv * D, H), H)
        w[p + "attn_v.bias"] = rng.bias(nkv * D)
        w[p + "attn_output.weight"] = rng.lin((H, nh * D), nh * D)
        w[p + "ffn_norm.weight"] = rng.norm(H)
        if a.experts:
            E, F, S = a.experts, a.moe_ffn, a.shared_ffn
            w[p + "ffn_gate_inp.weight"] = rng.lin((E, H), H, gain=2.0)  # crisp routing
            w[p + "ffn_gate_exps.weight"] = rng.lin((E, F, H), H)
            w[p + "ffn_up_exps.weight"] = rng.lin((E, F, H), H)
            w[p + "ffn_down_exps.weight"] = rng.lin((E, H, F), F)
            w[p + "ffn_gate_inp_shexp.weight"] = rng.lin((1, H), H, gain=2.0)  # gates spread over (0, 1)
            w[p + "ffn_gate_shexp.weight"] = rng.lin((S, H), H)
            w[p + "ffn_up_shexp.weight"] = rng.lin((S, H), H)
            w[p + "ffn_down_shexp.weight"] = rng.lin((H, S), S)
        else:
            w[p + "ffn_gate.weight"] = rng.lin((a.ffn, H), H)
            w[p + "ffn_up.weight"] = rng.lin((a.ffn, H), H)
            w[p + "ffn_down.weight"] = rng.lin((H, a.ffn), a.ffn)
    w["output_norm.weight"] = rng.norm(H)
    if not a.tied:
        w["output.weight"] = rng.lin((V, H), H)
    return w


def load_into_hf(model, w, a):
    sd = model.state_dict()
    new = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"]}
    if "lm_head.weight" in sd:
        new["lm_head.weight"] = w.get("output.weight", w["token_embd.weight"])
    for i in range(a.layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        new[h + "input_layernorm.weight"] = w[g + "attn_norm.weight"]
        new[h + "post_attention_layernorm.weight"] = w[g + "ffn_norm.weight"]
        for gg, hh in [("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")]:
            new[h + f"self_attn.{hh}.weight"] = w[g + gg + ".weight"]
            new[h + f"self_attn.{hh}.bias"] = w[g + gg + ".bias"]
        new[h + "self_attn.o_proj.weight"] = w[g + "attn_output.weight"]
        if a.experts:
            m = h + "mlp."
            new[m + "gate.weight"] = w[g + "ffn_gate_inp.weight"]
            gate, up, down = w[g + "ffn_gate_exps.weight"], w[g + "ffn_up_exps.weight"], w[g + "ffn_down_exps.weight"]
            if m + "experts.gate_up_proj" in sd:  # transformers >= 5: fused [E, 2F, H]
                new[m + "experts.gate_up_proj"] = np.concatenate([gate, up], axis=1)
                new[m + "experts.down_proj"] = down
            else:
                for e in range(a.experts):
                    new[m + f"experts.{e}.gate_proj.weight"] = gate[e]
                    new[m + f"experts.{e}.up_proj.weight"] = up[e]
                    new[m + f"experts.{e}.down_proj.weight"] = down[e]
            new[m + "shared_expert_gate.weight"] = w[g + "ffn_gate_inp_shexp.weight"]
            new[m + "shared_expert.gate_proj.weight"] = w[g + "ffn_gate_shexp.weight"]
            new[m + "shared_expert.up_proj.weight"] = w[g + "ffn_up_shexp.weight"]
            new[m + "shared_expert.down_proj.weight"] = w[g + "ffn_down_shexp.weight"]
        else:
            new[h + "mlp.gate_proj.weight"] = w[g + "ffn_gate.weight"]
            new[h + "mlp.up_proj.weight"] = w[g + "ffn_up.weight"]
            new[h + "mlp.down_proj.weight"] = w[g + "ffn_down.weight"]
    assert set(sd) == set(new), (set(sd) ^ set(new))
    for k in new:
        assert tuple(sd[k].shape) == new[k].shape, (k, sd[k].shape, new[k].shape)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in new.items()}, strict=True)


def run_and_capture(model, modeling, a, D, tokens):
    H = a.hidden
    c = O.Capture()
    O.hook_model(c, model)
    shared = {}
    for li, layer in enumerate(model.model.layers):
        p = f"layer.{li}."
        O.hook_layer(c, layer, p, a.heads, a.kv_heads, D)
        if a.experts:
            moe = layer.mlp
            c.hook(moe.gate, p + "router_logits", O.router_logits)
            # the shared expert's input is the flattened [T, H] ffn_norm in every version
            c.handles.append(moe.shared_expert_gate.register_forward_hook(
                lambda m, i, o, li=li: shared.__setitem__((li, "gate"), o.detach().reshape(-1, 1).clone())))
            c.handles.append(moe.shared_expert.register_forward_hook(
                lambda m, i, o, li=li: shared.__setitem__((li, "out"), o.detach().reshape(-1, H).clone())))
            c.hook(moe, p + "ffn_out", O.first)
        else:
            O.hook_dense_mlp(c, layer.mlp, p)
    cap = O.run_forward(model, modeling, c, tokens)
    margins = []
    for li in range(a.layers if a.experts else 0):
        p = f"layer.{li}."
        margins.append(O.add_routes(cap, p, a.top_k, renorm=False))  # norm_topk_prob = False
        gate = torch.sigmoid(shared[(li, "gate")])
        cap[p + "ffn_shared_gate"] = gate
        cap[p + "ffn_shared_out"] = gate * shared[(li, "out")]  # the same product transformers computes
    return O.ordered_trace(cap, a.layers), margins


def independent_check(trace, f32, a, D):
    f = {k: v.astype(np.float64) for k, v in f32.items()}
    T = len(trace["tokens"])
    r = O.Recompute(trace)
    inv = a.rope_theta ** (-np.arange(0, D, 2) / D)
    heads = {"attn_q": a.heads, "attn_k": a.kv_heads, "attn_v": a.kv_heads}
    x = f["token_embd.weight"][trace["tokens"].numpy()]
    r.cmp("embedding", x)
    for i in range(a.layers):
        g, p = f"blk.{i}.", f"layer.{i}."
        proj = lambda n, h: (h @ f[g + n + ".weight"].T + f[g + n + ".bias"]).reshape(T, heads[n], D)  # noqa: E731
        x = O.recompute_attention(r, f, g, p, x, a.eps, proj, lambda y: O.rope_neox(y, inv))
        hn = O.rms(x, f[g + "ffn_norm.weight"], a.eps); r.cmp(p + "ffn_norm", hn)
        if a.experts:
            y = O.recompute_routed(r, f, g, p, hn, a.top_k, renorm=False)
            sg = 1 / (1 + np.exp(-(hn @ f[g + "ffn_gate_inp_shexp.weight"].T))); r.cmp(p + "ffn_shared_gate", sg)
            sh = (O.silu(hn @ f[g + "ffn_gate_shexp.weight"].T) * (hn @ f[g + "ffn_up_shexp.weight"].T)) \
                @ f[g + "ffn_down_shexp.weight"].T
            so = sg * sh; r.cmp(p + "ffn_shared_out", so)
            y = y + so
        else:
            y = O.recompute_dense(r, f, g, p, hn)
        r.cmp(p + "ffn_out", y)
        x = x + y; r.cmp(p + "layer_out", x)
    O.recompute_tail(r, f, x, a.eps)
    return r.diffs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=272)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--rope-theta", type=float, default=1000000.0)
    ap.add_argument("--tokens", default=None, help="comma-separated ids (default: the variant's text as bytes)")
    ap.add_argument("--quants", default="F32,Q8_0")
    a = ap.parse_args()
    shape = {"experts": 0, "top_k": 0, "moe_ffn": 0, "shared_ffn": 0}
    shape.update(VARIANTS[a.variant])
    for k, v in shape.items():
        setattr(a, k, v)
    D = a.hidden // a.heads
    tokens = [int(t) for t in a.tokens.split(",")] if a.tokens else list(a.text.encode("utf-8"))

    O.deterministic(a.seed)
    os.makedirs(a.out, exist_ok=True)
    cfg = make_config(a)
    modeling = __import__(f"transformers.models.{a.mod}.modeling_{a.mod}", fromlist=["x"])
    model = getattr(transformers, a.cls)(cfg).eval().float()
    assert model.config._attn_implementation == "eager"
    w = gguf_weights(a, D, O.Weights(a.seed))
    load_into_hf(model, w, a)
    model.save_pretrained(os.path.join(a.out, "hf_model"))

    def kv(wr):
        wr.add_context_length(a.ctx)
        wr.add_embedding_length(a.hidden)
        wr.add_block_count(a.layers)
        wr.add_feed_forward_length(a.ffn)
        wr.add_head_count(a.heads)
        wr.add_head_count_kv(a.kv_heads)
        wr.add_rope_freq_base(a.rope_theta)
        wr.add_layer_norm_rms_eps(a.eps)
        if a.experts:
            wr.add_expert_count(a.experts)
            wr.add_expert_used_count(a.top_k)
            wr.add_expert_feed_forward_length(a.moe_ffn)
            wr.add_expert_shared_feed_forward_length(a.shared_ffn)
        O.add_byte_tokenizer(wr, a.vocab, "qwen2")

    expect = {"block_count": a.layers, "embedding_length": a.hidden, "attention.head_count": a.heads,
              "attention.head_count_kv": a.kv_heads}
    if a.experts:
        expect.update({"expert_count": a.experts, "expert_used_count": a.top_k,
                       "expert_feed_forward_length": a.moe_ffn, "expert_shared_feed_forward_length": a.shared_ffn})
    manifest = {"variant": a.variant, "hf_class": a.cls, "versions": O.versions(), "seed": a.seed, "tokens": tokens,
                "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}, "files": {}}
    for qname in [s.strip() for s in a.quants.split(",") if s.strip()]:
        stem = f"{a.variant}-tiny-{qname.lower()}"
        gpath = os.path.join(a.out, f"{stem}.gguf")
        stored = O.write_gguf(gpath, a.arch, stem, w, O.QT[qname], kv)
        rows = O.verify_gguf(gpath, a.arch, w, stored, expect)
        load_into_hf(model, stored, a)  # HF runs exactly the weights the file holds
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
