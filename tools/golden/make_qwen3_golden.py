#!/usr/bin/env python3
"""Independent reference oracle for a tiny, randomly-initialised Qwen3 (dense) causal LM.

Derived from make_qwen3moe_golden.py (same weights recipe, GGUF layout and hooks), for
llama.cpp's `qwen3` architecture: every layer has a dense SwiGLU FFN (ffn_gate/ffn_up/ffn_down),
captured as the stages ffn_gate, ffn_up, ffn_act (= silu(gate)*up, the down projection's input)
and ffn_out.

No downloads: weights come from numpy's PCG64 generator (fixed seed, fixed tensor
order, named by their llama.cpp GGUF names), are loaded into Hugging Face
transformers' Qwen3ForCausalLM (eager attention, float32), and a
forward pass over a fixed token sequence is recorded with forward hooks.

Outputs (in --out):
  qwen3-tiny-<q>.gguf            weights in llama.cpp's qwen3 layout, q in F32/Q8_0/Q4_0
  activations-<q>.safetensors    per-layer per-stage activations of the HF model whose weights
                                 are the GGUF's weights *dequantized* (for F32: the originals)
  hf_model/                      save_pretrained() copy (config.json + model.safetensors)
  manifest.json                  config, tokens, stage list/shapes/layout, versions, sha256s

Run:  pip install torch transformers gguf safetensors numpy && python3 make_qwen3_golden.py --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyreq import need  # noqa: E402

need("numpy", "torch", "gguf", "safetensors", "transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import gguf
import gguf.quants
import safetensors
from safetensors.torch import save_file
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3 as M

ARCH = "qwen3"
QT = gguf.GGMLQuantizationType


# --------------------------------------------------------------------------------------------
# configuration and deterministic weights
# --------------------------------------------------------------------------------------------
def make_config(a) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.ffn,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        head_dim=a.head_dim,
        hidden_act="silu",
        max_position_embeddings=a.ctx,
        rms_norm_eps=a.eps,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
        attention_bias=False,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=256 if a.vocab > 256 else None,
        pad_token_id=None,
        attn_implementation="eager",
    )


def canonical_weights(cfg, seed: int) -> "OrderedDict[str, np.ndarray]":
    """float32 weights keyed by GGUF tensor name, numpy (row-major, HF/PyTorch) shapes."""
    rng = np.random.default_rng(seed)
    H, V, L = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    F = cfg.intermediate_size

    def lin(shape, fan_in, gain=1.0):
        return (rng.standard_normal(shape) * (gain / np.sqrt(fan_in))).astype(np.float32)

    def norm(n):  # non-trivial RMSNorm gains so that a missing multiply is caught
        return (1.0 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = OrderedDict()
    w["token_embd.weight"] = rng.standard_normal((V, H)).astype(np.float32)
    for i in range(L):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(H)
        w[p + "attn_q.weight"] = lin((nh * D, H), H)
        w[p + "attn_k.weight"] = lin((nkv * D, H), H)
        w[p + "attn_v.weight"] = lin((nkv * D, H), H)
        w[p + "attn_output.weight"] = lin((H, nh * D), nh * D)
        w[p + "attn_q_norm.weight"] = norm(D)
        w[p + "attn_k_norm.weight"] = norm(D)
        w[p + "ffn_norm.weight"] = norm(H)
        w[p + "ffn_gate.weight"] = lin((F, H), H)
        w[p + "ffn_up.weight"] = lin((F, H), H)
        w[p + "ffn_down.weight"] = lin((H, F), F)
    w["output_norm.weight"] = norm(H)
    w["output.weight"] = lin((V, H), H)
    return w


def load_into_hf(model: Qwen3ForCausalLM, w, cfg):
    """Map GGUF-named weights onto the HF Qwen3 layout."""
    sd = model.state_dict()
    new = {}
    new["model.embed_tokens.weight"] = w["token_embd.weight"]
    new["model.norm.weight"] = w["output_norm.weight"]
    new["lm_head.weight"] = w["output.weight"]
    for i in range(cfg.num_hidden_layers):
        g, h = f"blk.{i}.", f"model.layers.{i}."
        new[h + "input_layernorm.weight"] = w[g + "attn_norm.weight"]
        new[h + "post_attention_layernorm.weight"] = w[g + "ffn_norm.weight"]
        new[h + "self_attn.q_proj.weight"] = w[g + "attn_q.weight"]
        new[h + "self_attn.k_proj.weight"] = w[g + "attn_k.weight"]
        new[h + "self_attn.v_proj.weight"] = w[g + "attn_v.weight"]
        new[h + "self_attn.o_proj.weight"] = w[g + "attn_output.weight"]
        new[h + "self_attn.q_norm.weight"] = w[g + "attn_q_norm.weight"]
        new[h + "self_attn.k_norm.weight"] = w[g + "attn_k_norm.weight"]
        new[h + "mlp.gate_proj.weight"] = w[g + "ffn_gate.weight"]
        new[h + "mlp.up_proj.weight"] = w[g + "ffn_up.weight"]
        new[h + "mlp.down_proj.weight"] = w[g + "ffn_down.weight"]
    missing = set(sd) - set(new)
    extra = set(new) - set(sd)
    assert not missing and not extra, (missing, extra)
    for k in new:
        assert tuple(sd[k].shape) == new[k].shape, (k, sd[k].shape, new[k].shape)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in new.items()}, strict=True)


# --------------------------------------------------------------------------------------------
# activation capture
# --------------------------------------------------------------------------------------------
STAGES = OrderedDict([
    ("in",                "[T,H]      residual stream entering the layer (layer 0: token embeddings)"),
    ("attn_norm",         "[T,H]      input_layernorm(in)                       (llama.cpp cb 'attn_norm')"),
    ("q_proj",            "[T,nh,D]   q_proj(attn_norm), before q_norm"),
    ("k_proj",            "[T,nkv,D]  k_proj(attn_norm), before k_norm"),
    ("v",                 "[T,nkv,D]  v_proj(attn_norm)                         ('Vcur')"),
    ("q_norm",            "[T,nh,D]   per-head RMSNorm(q_proj), before RoPE     ('Qcur_normed')"),
    ("k_norm",            "[T,nkv,D]  per-head RMSNorm(k_proj), before RoPE     ('Kcur_normed')"),
    ("q",                 "[T,nh,D]   q after q_norm and NEOX RoPE               ('Qcur')"),
    ("k",                 "[T,nkv,D]  k after k_norm and NEOX RoPE               ('Kcur')"),
    ("attn_probs",        "[nh,T,T]   softmax(q k^T / sqrt(D) + causal mask)"),
    ("attn_out",          "[T,nh*D]   attention output before o_proj ('kqv_out')"),
    ("o_proj",            "[T,H]      o_proj(attn_out)                          ('attn_out')"),
    ("attn_residual",     "[T,H]      in + o_proj                               ('ffn_inp')"),
    ("ffn_norm",          "[T,H]      post_attention_layernorm(attn_residual)   ('ffn_norm')"),
    ("ffn_gate",          "[T,F]      gate_proj(ffn_norm)                       ('ffn_gate')"),
    ("ffn_up",            "[T,F]      up_proj(ffn_norm)                         ('ffn_up')"),
    ("ffn_act",           "[T,F]      silu(ffn_gate) * ffn_up, down_proj's input ('ffn_gate_par')"),
    ("ffn_out",           "[T,H]      down_proj(ffn_act)                        ('ffn_out')"),
    ("out",               "[T,H]      attn_residual + ffn_out                   ('l_out')"),
])
# oracle stage name -> the project's canonical stage name (None: not exported)
CANONICAL = {"in": None, "attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v": "v_proj",
             "q_norm": "q_norm", "k_norm": "k_norm", "q": "q_rope", "k": "k_rope", "attn_probs": "attn_probs",
             "attn_out": "attn_ctx", "o_proj": "attn_out", "attn_residual": "attn_residual",
             "ffn_norm": "ffn_norm", "ffn_gate": "ffn_gate", "ffn_up": "ffn_up", "ffn_act": "ffn_act",
             "ffn_out": "ffn_out", "out": "layer_out"}


def canonical(cap):
    out = OrderedDict()
    for key, t in cap.items():
        if key.startswith("layer."):
            _, i, stage = key.split(".", 2)
            if CANONICAL[stage] is None:
                continue
            key = f"layer.{i}.{CANONICAL[stage]}"
        out[key] = t
    return out


TOP_LEVEL = OrderedDict([
    ("tokens",     "[T] i32 input token ids"),
    ("embedding",  "[T,H] token embeddings (== layer.0.in)"),
    ("final_norm", "[T,H] model.norm(layer.{L-1}.out)  ('result_norm')"),
    ("logits",     "[T,V] lm_head(final_norm)          ('result_output')"),
])


def run_and_capture(model, cfg, tokens):
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    cap = {}
    handles = []

    def put(key, t):
        assert key not in cap, f"duplicate capture {key}"
        cap[key] = t.detach().clone()

    base = model.model
    handles.append(base.embed_tokens.register_forward_hook(lambda m, i, o: put("embedding", o[0])))
    handles.append(base.norm.register_forward_hook(lambda m, i, o: put("final_norm", o[0])))
    handles.append(model.lm_head.register_forward_hook(lambda m, i, o: put("logits", o[0])))

    for li, layer in enumerate(base.layers):
        P = f"layer.{li}."
        att = layer.self_attn
        mlp = layer.mlp
        handles += [
            layer.register_forward_pre_hook(lambda m, args, P=P: put(P + "in", args[0][0])),
            layer.input_layernorm.register_forward_hook(lambda m, i, o, P=P: put(P + "attn_norm", o[0])),
            att.q_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "q_proj", o[0].view(o.shape[1], nh, D))),
            att.k_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "k_proj", o[0].view(o.shape[1], nkv, D))),
            att.v_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "v", o[0].view(o.shape[1], nkv, D))),
            att.q_norm.register_forward_hook(lambda m, i, o, P=P: put(P + "q_norm", o[0])),   # [T, nh, D]
            att.k_norm.register_forward_hook(lambda m, i, o, P=P: put(P + "k_norm", o[0])),
            att.o_proj.register_forward_pre_hook(lambda m, args, P=P: put(P + "attn_out", args[0][0])),
            att.o_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "o_proj", o[0])),
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, args, P=P: put(P + "attn_residual", args[0][0])),
            layer.post_attention_layernorm.register_forward_hook(lambda m, i, o, P=P: put(P + "ffn_norm", o[0])),
            mlp.gate_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "ffn_gate", o[0])),
            mlp.up_proj.register_forward_hook(lambda m, i, o, P=P: put(P + "ffn_up", o[0])),
            mlp.down_proj.register_forward_pre_hook(lambda m, args, P=P: put(P + "ffn_act", args[0][0])),
            mlp.register_forward_hook(lambda m, i, o, P=P: put(P + "ffn_out", o[0])),
            layer.register_forward_hook(lambda m, i, o, P=P: put(P + "out", (o[0] if isinstance(o, tuple) else o)[0])),
        ]

    # post-RoPE q/k and attention probabilities: wrap the eager attention function (module global,
    # looked up at call time by Qwen3MoeAttention.forward when _attn_implementation == "eager")
    orig_eager = M.eager_attention_forward

    def eager_wrapper(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        P = f"layer.{module.layer_idx}."
        put(P + "q", query[0].transpose(0, 1))   # [B,nh,T,D] -> [T,nh,D]
        put(P + "k", key[0].transpose(0, 1))
        out, probs = orig_eager(module, query, key, value, attention_mask, scaling, dropout=dropout, **kw)
        put(P + "attn_probs", probs[0])
        return out, probs

    M.eager_attention_forward = eager_wrapper
    try:
        with torch.no_grad():
            ids = torch.tensor([tokens], dtype=torch.long)
            out = model(input_ids=ids, use_cache=False)
    finally:
        M.eager_attention_forward = orig_eager
        for hd in handles:
            hd.remove()

    assert torch.equal(out.logits[0], cap["logits"])
    cap["tokens"] = torch.tensor(tokens, dtype=torch.int32)
    # order keys: top-level then layer stages
    ordered = OrderedDict()
    for k in ("tokens", "embedding"):
        ordered[k] = cap[k]
    for li in range(cfg.num_hidden_layers):
        for s in STAGES:
            ordered[f"layer.{li}.{s}"] = cap[f"layer.{li}.{s}"]
    for k in ("final_norm", "logits"):
        ordered[k] = cap[k]
    assert set(ordered) == set(cap), set(cap) ^ set(ordered)
    return ordered


def independent_check(cap, w, cfg):
    """Recompute the whole forward in plain numpy/float64 from the GGUF-named weights (no transformers),
    compare with the captured activations; returns max abs diff per stage family."""
    T = len(cap["tokens"])
    H, nh, nkv, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    theta = cfg.rope_parameters["rope_theta"]
    f = {k: v.astype(np.float64) for k, v in w.items()}

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope_neox(x):  # x [T, h, D]; pairs (j, j+D/2)
        pos = np.arange(T)[:, None]
        inv = theta ** (-np.arange(0, D, 2) / D)
        ang = pos * inv[None, :]                          # [T, D/2]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    silu = lambda z: z / (1 + np.exp(-z))
    diffs = {}

    def cmp(key, ref):
        d = float(np.abs(cap[key].numpy().astype(np.float64) - ref).max())
        fam = key.split(".")[-1]
        diffs[fam] = max(diffs.get(fam, 0.0), d)

    x = f["token_embd.weight"][cap["tokens"].numpy()]
    cmp("embedding", x)
    for i in range(cfg.num_hidden_layers):
        g, P = f"blk.{i}.", f"layer.{i}."
        a = rms(x, f[g + "attn_norm.weight"]); cmp(P + "attn_norm", a)
        q = (a @ f[g + "attn_q.weight"].T).reshape(T, nh, D)
        k = (a @ f[g + "attn_k.weight"].T).reshape(T, nkv, D)
        v = (a @ f[g + "attn_v.weight"].T).reshape(T, nkv, D); cmp(P + "v", v)
        q = rms(q, f[g + "attn_q_norm.weight"]); cmp(P + "q_norm", q)
        k = rms(k, f[g + "attn_k_norm.weight"]); cmp(P + "k_norm", k)
        q, k = rope_neox(q), rope_neox(k); cmp(P + "q", q); cmp(P + "k", k)
        rep = nh // nkv                                    # GQA: q head h uses kv head h // rep
        kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, kk) / np.sqrt(D)
        s = s + np.triu(np.full((T, T), -np.inf), 1)[None]
        p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True); cmp(P + "attn_probs", p)
        o = np.einsum("hts,shd->thd", p, vv).reshape(T, nh * D); cmp(P + "attn_out", o)
        o = o @ f[g + "attn_output.weight"].T; cmp(P + "o_proj", o)
        x = x + o; cmp(P + "attn_residual", x)
        hN = rms(x, f[g + "ffn_norm.weight"]); cmp(P + "ffn_norm", hN)
        gt = hN @ f[g + "ffn_gate.weight"].T; cmp(P + "ffn_gate", gt)
        up = hN @ f[g + "ffn_up.weight"].T; cmp(P + "ffn_up", up)
        act = silu(gt) * up; cmp(P + "ffn_act", act)
        y = act @ f[g + "ffn_down.weight"].T
        cmp(P + "ffn_out", y)
        x = x + y; cmp(P + "out", x)
    xn = rms(x, f["output_norm.weight"]); cmp("final_norm", xn)
    cmp("logits", xn @ f["output.weight"].T)
    return diffs


# --------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    return dict(zip(bs, map(chr, cs)))


def quant_type_for(name: str, arr: np.ndarray, want: QT) -> QT:
    """Same rules as convert_hf_to_gguf.py's prepare_tensors: 1-D / *_norm stay F32."""
    if want == QT.F32 or arr.ndim <= 1 or name.endswith("_norm.weight"):
        return QT.F32
    return want


FILE_TYPE = {QT.F32: gguf.LlamaFileType.ALL_F32, QT.F16: gguf.LlamaFileType.MOSTLY_F16,
             QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
             QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1, QT.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0,
             QT.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1, QT.BF16: gguf.LlamaFileType.MOSTLY_BF16}


def write_gguf(path, w, cfg, qtype: QT, tokenizer: str):
    """Returns {name: dequantized float32 numpy array (numpy/HF shape)} actually stored."""
    wr = gguf.GGUFWriter(path, ARCH)                # writes general.architecture
    wr.add_type(gguf.GGUFType.MODEL)
    wr.add_name(f"qwen3-tiny-oracle-{qtype.name}")
    wr.add_block_count(cfg.num_hidden_layers)
    wr.add_context_length(cfg.max_position_embeddings)
    wr.add_embedding_length(cfg.hidden_size)
    wr.add_feed_forward_length(cfg.intermediate_size)
    wr.add_head_count(cfg.num_attention_heads)
    wr.add_head_count_kv(cfg.num_key_value_heads)
    wr.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    wr.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    wr.add_key_length(cfg.head_dim)
    wr.add_value_length(cfg.head_dim)
    wr.add_file_type(FILE_TYPE[qtype])
    wr.add_quantization_version(gguf.GGML_QUANT_VERSION)

    V = cfg.vocab_size
    if tokenizer == "gpt2":
        # byte-level BPE with no merges: token id b == byte b (GPT-2 bytes_to_unicode spelling),
        # ids >= 256 are control tokens.  Qwen's own pre-tokenizer regex ("qwen2").
        # llama.cpp requires tokenizer.ggml.merges for "gpt2" and gguf-py silently drops empty arrays, so
        # id 259 is the merged token "ĠĠ" (two spaces; also Qwen2's first merge) with the single merge "Ġ Ġ".
        assert V >= 260, "--tokenizer gpt2 needs --vocab >= 260 (use --tokenizer none otherwise)"
        b2u = bytes_to_unicode()
        toks = [b2u[b] for b in range(256)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "ĠĠ"]
        toks += [f"<|extra_{j}|>" for j in range(V - 260)]
        types = ([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
                 + [gguf.TokenType.CONTROL] * (V - 260))
        wr.add_tokenizer_model("gpt2")
        wr.add_tokenizer_pre("qwen2")
        wr.add_token_list(toks)
        wr.add_token_types(types)
        wr.add_token_merges(["Ġ Ġ"])
        wr.add_eos_token_id(256)                 # <|endoftext|>
        wr.add_pad_token_id(256)
        wr.add_add_bos_token(False)
    else:
        wr.add_tokenizer_model("none")
        wr.add_vocab_size(V)

    stored = {}
    for name, arr in w.items():
        qt = quant_type_for(name, arr, qtype)
        if qt == QT.F32:
            data = np.ascontiguousarray(arr, dtype=np.float32)
            wr.add_tensor(name, data)
            stored[name] = data
        else:
            data = gguf.quants.quantize(arr, qt)        # uint8, byte shape
            wr.add_tensor(name, data, raw_dtype=qt)
            stored[name] = gguf.quants.dequantize(data, qt).reshape(arr.shape).astype(np.float32)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return stored


def verify_gguf(path, w, stored, cfg, qtype):
    rd = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in rd.fields.values()}
    assert kv["general.architecture"] == ARCH
    for key, val in [("block_count", cfg.num_hidden_layers), ("embedding_length", cfg.hidden_size),
                     ("attention.head_count", cfg.num_attention_heads),
                     ("attention.head_count_kv", cfg.num_key_value_heads),
                     ("feed_forward_length", cfg.intermediate_size),
                     ("attention.key_length", cfg.head_dim), ("attention.value_length", cfg.head_dim)]:
        assert kv[f"{ARCH}.{key}"] == val, (key, kv[f"{ARCH}.{key}"], val)
    names = [t.name for t in rd.tensors]
    assert names == list(w), "tensor set/order mismatch"
    rows = []
    for t in rd.tensors:
        src = w[t.name]
        ne = [int(x) for x in t.shape]                  # GGUFReader: ggml order ne[0..n)
        assert ne == list(reversed(src.shape)), (t.name, ne, src.shape)
        if t.tensor_type == QT.F32:
            back = np.asarray(t.data).reshape(src.shape)
        else:
            back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(src.shape)
        assert np.array_equal(back, stored[t.name]), t.name
        rows.append((t.name, t.tensor_type.name, ne, list(np.asarray(t.data).shape),
                     float(np.abs(back - src).max())))
    return kv, rows


# --------------------------------------------------------------------------------------------
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--vocab", type=int, default=260)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=32, help="Qwen3 has nh*head_dim != hidden; keep it so")
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--rope-theta", type=float, default=1_000_000.0)
    ap.add_argument("--text", default="Qwen3 dense", help="tokens = its UTF-8 bytes (byte-level vocab)")
    ap.add_argument("--tokens", default=None, help="comma-separated ids; overrides --text")
    ap.add_argument("--quants", default="F32,Q8_0,Q4_0")
    ap.add_argument("--tokenizer", choices=["gpt2", "none"], default="gpt2")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)                       # bitwise-reproducible reductions
    os.makedirs(a.out, exist_ok=True)
    tokens = [int(x) for x in a.tokens.split(",")] if a.tokens else list(a.text.encode("utf-8"))
    cfg = make_config(a)
    assert cfg.head_dim == a.head_dim

    w = canonical_weights(cfg, a.seed)
    model = Qwen3ForCausalLM(cfg).eval().float()
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    load_into_hf(model, w, cfg)
    model.save_pretrained(os.path.join(a.out, "hf_model"))

    manifest = {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "gguf": getattr(gguf, "__version__", None)
                     or __import__("importlib.metadata").metadata.version("gguf"),
                     "safetensors": safetensors.__version__, "numpy": np.__version__},
        "seed": a.seed, "tokens": tokens,
        "config": {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")},
        "stages_per_layer": {CANONICAL[k]: v for k, v in STAGES.items() if CANONICAL[k]}, "top_level": TOP_LEVEL,
        "key_format": "layer.{i}.{stage}; all float32 except tokens (int32); batch dim dropped",
        "files": {},
    }
    ref_logits = None
    for qname in [s.strip() for s in a.quants.split(",") if s.strip()]:
        qt = QT[qname]
        gpath = os.path.join(a.out, f"qwen3-tiny-{qname.lower()}.gguf")
        stored = write_gguf(gpath, w, cfg, qt, a.tokenizer)
        kv, rows = verify_gguf(gpath, w, stored, cfg, qt)
        # HF forward with exactly the (dequantized) weights the GGUF holds
        if qt != QT.F32:
            load_into_hf(model, stored, cfg)
        cap = run_and_capture(model, cfg, tokens)
        diffs = independent_check(cap, stored, cfg)
        if qt != QT.F32:
            load_into_hf(model, w, cfg)
        apath = os.path.join(a.out, f"activations-{qname.lower()}.safetensors")
        save_file({k: v.contiguous() for k, v in canonical(cap).items()}, apath,
                  # one metadata key only: safetensors keeps metadata in a hash map, so several keys
                  # would be serialised in random order and the file would not be bitwise reproducible
                  metadata={"oracle": json.dumps({"gguf": os.path.basename(gpath), "tokens": tokens,
                                                  "config": manifest["config"]}, default=str, sort_keys=True)})
        if ref_logits is None:
            ref_logits = cap["logits"]
        manifest["files"][qname] = {
            "gguf": os.path.basename(gpath), "gguf_sha256": sha256(gpath), "gguf_bytes": os.path.getsize(gpath),
            "activations": os.path.basename(apath), "activations_sha256": sha256(apath),
            "tensors": [{"name": n, "type": t, "ggml_ne": ne, "numpy_storage_shape": ss, "max_abs_quant_err": e}
                        for n, t, ne, ss, e in rows],
            "numpy_float64_recompute_max_abs_diff": diffs,
            "logits_max_abs_diff_vs_F32": float((cap["logits"] - ref_logits).abs().max()),
        }
        print(f"[{qname}] {os.path.basename(gpath)} ({os.path.getsize(gpath)} B), {len(rows)} tensors verified; "
              f"numpy recompute max diff {max(diffs.values()):.3g}; "
              f"logits vs F32 {manifest['files'][qname]['logits_max_abs_diff_vs_F32']:.3g}")
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, default=str)
    print("tokens:", tokens)
    print("wrote", os.path.join(a.out, "manifest.json"))


if __name__ == "__main__":
    main()
