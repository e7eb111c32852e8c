#!/usr/bin/env python3
"""Trace a Hugging Face transformers causal LM into a falsifier trace (one safetensors file).

    python3 tools/trace_transformers.py --model HF_DIR --tokens 1,2,3 --out TRACE.safetensors
    falsifier diff TRACE.safetensors OTHER.safetensors --report-dir reports/x

Runs the model in float32 on the CPU (eager attention, eager experts) over the whole prompt once,
records every stage of the stage vocabulary (docs/design.md) with forward hooks, and writes them under the
canonical keys (`tokens`, `embedding`, `layer.{i}.{stage}`, `final_norm`, `logits`), all
positions, batch dimension dropped, heads not flattened. Metadata (one flat string map, as
falsifier writes it): format, backend=transformers, model, model_sha256 (of the weights file(s)),
tokens, plan, dtype, plus versions of torch and transformers.

Architectures: Qwen3 (dense), Qwen3-MoE, Qwen2 (dense), Qwen2-MoE (with the sigmoid-gated shared
expert: ffn_shared_gate, ffn_shared_out), and the Llama family (Llama 2/3, Mistral, Mixtral). Stages
an architecture lacks (q_norm/k_norm outside Qwen3) are simply absent.

Head layout: llama.cpp's converter permutes the Q and K rows of Llama-family models (so that
adjacent-pair RoPE applies), and a GGUF-based trace holds q_proj, k_proj, q_rope and k_rope in
that permuted order. For those models this tool writes the same layout (`--layout gguf`, the
default), so its trace compares directly with falsifier's; `--layout hf` keeps transformers' own.
The module -> stage mapping is the one tools/golden/make_qwen3moe_golden.py uses:

    input_layernorm -> attn_norm        q/k/v_proj -> q_proj/k_proj/v_proj   q/k_norm -> q_norm/k_norm
    eager attention's query/key -> q_rope/k_rope, its probs -> attn_probs
    o_proj input -> attn_ctx, o_proj output -> attn_out
    post_attention_layernorm input/output -> attn_residual/ffn_norm
    MoE: mlp.gate -> router_logits (+ softmax -> router_probs, top-k ids/weights from the router)
    dense: gate_proj/up_proj -> ffn_gate/ffn_up, down_proj input -> ffn_act
    mlp output -> ffn_out, decoder layer output -> layer_out
    model.norm -> final_norm, lm_head -> logits, embed_tokens -> embedding

`--check ACTIVATIONS.safetensors` also compares the trace with a golden activations file (same
keys) and prints the largest |difference| per key; exit 1 if any exceeds --check-tol.

Requires: torch, transformers (>= 4.5x; tested with 5.x), safetensors, numpy.
CUDA is not used: run with CUDA_VISIBLE_DEVICES= on a GPU host to be sure.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import need  # noqa: E402

need("torch", "transformers", "safetensors", "numpy")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM


def sha256_of(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load(model_dir):
    cfg = AutoConfig.from_pretrained(model_dir)
    kw = {"attn_implementation": "eager"}
    if hasattr(cfg, "num_experts") or hasattr(cfg, "num_local_experts"):
        kw["experts_implementation"] = "eager"    # transformers >= 5: per-expert loop, not grouped mm
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    except TypeError:                               # older transformers: no experts_implementation / dtype
        kw.pop("experts_implementation", None)
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, **kw)
    return model.eval().float()


# model types whose Q/K rows convert_hf_to_gguf.py permutes (LlamaModel and its subclasses)
PERMUTED_QK = {"llama", "mistral", "mixtral"}


def gguf_head_layout(x):
    """[T, heads, D] in the converter's permuted layout: per head, position 2j holds j and 2j+1
    holds D/2 + j (LlamaModel.permute applied to the rows that produce x)."""
    D = x.shape[-1]
    return x[..., torch.arange(D).reshape(2, D // 2).t().reshape(D)]


def capture(model, tokens, layout="gguf"):
    """Run the forward with hooks; returns {canonical key: tensor} (batch dimension dropped)."""
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    qk = gguf_head_layout if (layout == "gguf" and cfg.model_type in PERMUTED_QK) else (lambda x: x)
    k_used = getattr(cfg, "num_experts_per_tok", None)
    cap, handles, shared = {}, [], {}

    def put(key, t):
        if key in cap:
            raise RuntimeError(f"duplicate capture {key} (a module ran twice?)")
        cap[key] = t.detach().float().contiguous().clone()

    base = model.model
    handles.append(base.embed_tokens.register_forward_hook(lambda m, i, o: put("embedding", o[0])))
    handles.append(base.norm.register_forward_hook(lambda m, i, o: put("final_norm", o[0])))
    handles.append(model.lm_head.register_forward_hook(lambda m, i, o: put("logits", o[0])))

    def router(P, o):
        # transformers >= 5 (Qwen3MoeTopKRouter): (router_logits, top-k weights, top-k ids);
        # 4.x: mlp.gate is an nn.Linear returning the logits (routing done in the MoE block)
        if isinstance(o, tuple):
            logits, w, ids = o[0], o[1], o[2]
        else:
            logits = o.reshape(-1, o.shape[-1])
            probs = torch.softmax(logits.float(), dim=-1)
            w, ids = torch.topk(probs, k_used, dim=-1)
            if getattr(cfg, "norm_topk_prob", False):
                w = w / w.sum(dim=-1, keepdim=True)
        put(P + "router_logits", logits)
        put(P + "topk_weights", w)
        cap[P + "topk_ids"] = ids.to(torch.int32).contiguous()
        return None  # a non-None return would replace the module's output

    for li, layer in enumerate(base.layers):
        P = f"layer.{li}."
        att, mlp = layer.self_attn, layer.mlp
        hooks = [
            (layer.input_layernorm, "fwd", lambda m, i, o, P=P: put(P + "attn_norm", o[0])),
            (att.q_proj, "fwd", lambda m, i, o, P=P: put(P + "q_proj", qk(o[0].view(o.shape[1], nh, D)))),
            (att.k_proj, "fwd", lambda m, i, o, P=P: put(P + "k_proj", qk(o[0].view(o.shape[1], nkv, D)))),
            (att.v_proj, "fwd", lambda m, i, o, P=P: put(P + "v_proj", o[0].view(o.shape[1], nkv, D))),
            (att.o_proj, "pre", lambda m, a, P=P: put(P + "attn_ctx", a[0][0])),
            (att.o_proj, "fwd", lambda m, i, o, P=P: put(P + "attn_out", o[0])),
            (layer.post_attention_layernorm, "pre", lambda m, a, P=P: put(P + "attn_residual", a[0][0])),
            (layer.post_attention_layernorm, "fwd", lambda m, i, o, P=P: put(P + "ffn_norm", o[0])),
            (mlp, "fwd", lambda m, i, o, P=P: put(P + "ffn_out", (o[0] if isinstance(o, tuple) else o)[0])),
            (layer, "fwd", lambda m, i, o, P=P: put(P + "layer_out", (o[0] if isinstance(o, tuple) else o)[0])),
        ]
        if hasattr(att, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE ([T, nh, D] already)
            hooks += [(att.q_norm, "fwd", lambda m, i, o, P=P: put(P + "q_norm", o[0])),
                      (att.k_norm, "fwd", lambda m, i, o, P=P: put(P + "k_norm", o[0]))]
        if hasattr(mlp, "gate") and hasattr(mlp, "experts"):       # sparse MoE block
            hooks.append((mlp.gate, "fwd", lambda m, i, o, P=P: router(P, o)))
            if hasattr(mlp, "shared_expert_gate"):                 # Qwen2-MoE: sigmoid-gated shared expert
                hooks += [(mlp.shared_expert_gate, "fwd",
                           lambda m, i, o, P=P: shared.__setitem__(P + "gate", o.detach().reshape(-1, 1))),
                          (mlp.shared_expert, "fwd",
                           lambda m, i, o, P=P: shared.__setitem__(P + "out", o.detach().reshape(-1, o.shape[-1])))]
        elif hasattr(mlp, "gate_proj"):                            # dense SwiGLU
            hooks += [(mlp.gate_proj, "fwd", lambda m, i, o, P=P: put(P + "ffn_gate", o[0])),
                      (mlp.up_proj, "fwd", lambda m, i, o, P=P: put(P + "ffn_up", o[0])),
                      (mlp.down_proj, "pre", lambda m, a, P=P: put(P + "ffn_act", a[0][0]))]
        else:
            raise SystemExit(f"layer {li}: unknown MLP type {type(mlp).__name__}")
        for mod, kind, fn in hooks:
            handles.append(mod.register_forward_hook(fn) if kind == "fwd" else mod.register_forward_pre_hook(fn))

    # post-RoPE q/k and attention probabilities: wrap the module-global eager attention function,
    # which the attention module looks up at call time when attn_implementation == "eager"
    M = sys.modules[type(base.layers[0].self_attn).__module__]
    orig = M.eager_attention_forward

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        P = f"layer.{module.layer_idx}."
        put(P + "q_rope", qk(query[0].transpose(0, 1)))   # [B,nh,T,D] -> [T,nh,D]
        put(P + "k_rope", qk(key[0].transpose(0, 1)))     # [B,nkv,T,D] (before GQA repeat)
        out, probs = orig(module, query, key, value, attention_mask, scaling, dropout=dropout, **kw)
        put(P + "attn_probs", probs[0])
        return out, probs

    M.eager_attention_forward = eager
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([tokens], dtype=torch.long), use_cache=False)
    finally:
        M.eager_attention_forward = orig
        for h in handles:
            h.remove()
    if not torch.equal(out.logits[0].float(), cap["logits"]):
        raise RuntimeError("lm_head hook disagrees with the model's logits")
    cap["tokens"] = torch.tensor(tokens, dtype=torch.int32)
    for li in range(len(base.layers)):
        P = f"layer.{li}."
        if P + "router_logits" in cap:  # softmax over all experts, as the router does before top-k
            cap[P + "router_probs"] = torch.softmax(cap[P + "router_logits"], dim=-1)
        if P + "gate" in shared:  # the same product the MoE block computes: sigmoid(gate) * shared expert
            gate = torch.sigmoid(shared[P + "gate"])
            cap[P + "ffn_shared_gate"] = gate.float().contiguous()
            cap[P + "ffn_shared_out"] = (gate * shared[P + "out"]).float().contiguous()
    return cap


def check(cap, golden, tol):
    worst, bad = 0.0, []
    with safe_open(golden, "pt") as g:
        for key in g.keys():
            if key not in cap:
                bad.append(f"{key}: missing from the trace")
                continue
            ref = g.get_tensor(key)
            got = cap[key]
            if tuple(ref.shape) != tuple(got.shape):
                bad.append(f"{key}: shape {tuple(got.shape)} vs golden {tuple(ref.shape)}")
                continue
            d = float((got.double() - ref.double()).abs().max()) if ref.numel() else 0.0
            worst = max(worst, d)
            print(f"  {key:28s} max|diff| {d:.3g}")
            if d > tol:
                bad.append(f"{key}: max|diff| {d:.3g} > {tol}")
    print(f"check against {golden}: worst max|diff| {worst:.3g}, {len(bad)} problem(s)")
    for b in bad:
        print("  " + b)
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a save_pretrained() directory")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="trace file to write (.safetensors)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: bitwise reproducible)")
    ap.add_argument("--check", help="golden activations safetensors to compare with")
    ap.add_argument("--check-tol", type=float, default=1e-5)
    ap.add_argument("--layout", choices=["gguf", "hf"], default="gguf",
                    help="q/k head layout of Llama-family models: the GGUF's permuted rows (default) or HF's")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    model = load(a.model)
    cap = capture(model, tokens, a.layout)

    weights = sorted(os.path.join(a.model, f) for f in os.listdir(a.model) if f.endswith(".safetensors"))
    L = model.config.num_hidden_layers
    order = ["tokens", "embedding"] + [k for i in range(L) for k in cap if k.startswith(f"layer.{i}.")] \
        + ["final_norm", "logits"]
    meta = {
        "format": "falsifier-trace/1",
        "backend": "transformers",
        "model": a.model,
        "model_sha256": sha256_of(weights) if weights else "",
        "tokens": ",".join(map(str, tokens)),
        "plan": f"stages=all layers=all",
        "dtype": "float32 weights and activations, torch CPU, eager attention"
                 + (", eager experts" if any(k.endswith("router_logits") for k in cap) else "")
                 + "; router_probs recomputed as softmax(router_logits)",
        "architecture": type(model).__name__,
        "qk_layout": "gguf (permuted as convert_hf_to_gguf.py does)"
                     if (a.layout == "gguf" and model.config.model_type in PERMUTED_QK) else "hf",
        "versions": json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                                "python": sys.version.split()[0]}, sort_keys=True),
    }
    save_file({k: cap[k] for k in order}, a.out, metadata=meta)
    print(f"wrote {a.out}: {len(order)} tensors, {type(model).__name__}, {L} layers, T={len(tokens)}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    if a.check and not check(cap, a.check, a.check_tol):
        sys.exit(1)


if __name__ == "__main__":
    main()
