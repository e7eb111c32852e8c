"""Shared pieces of the golden-data scripts for the Llama and Qwen2 families.

What is shared is bookkeeping, never the numerics under test: writing a GGUF the way llama.cpp's
converter does (tensor types, a byte-level tokenizer), reading it back with gguf-py, capturing
activations with forward hooks, and writing the activations and the manifest. Each family's
script keeps its own configuration, weight mapping (with the converter's tensor transformations)
and its own float64 numpy recompute of the forward, so each oracle is checked independently.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyreq import need  # noqa: E402

need("numpy", "torch", "gguf", "safetensors", "transformers")

import gguf  # noqa: E402
import gguf.quants  # noqa: E402
import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

QT = gguf.GGMLQuantizationType

FILE_TYPE = {QT.F32: gguf.LlamaFileType.ALL_F32, QT.F16: gguf.LlamaFileType.MOSTLY_F16,
             QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
             QT.BF16: gguf.LlamaFileType.MOSTLY_BF16}

# The stages a trace holds, per layer, in forward order (the project's stage vocabulary).
LAYER_STAGES = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope",
                "attn_probs", "attn_ctx", "attn_out", "attn_residual", "ffn_norm", "router_logits",
                "router_probs", "topk_ids", "topk_weights", "ffn_gate", "ffn_up", "ffn_act",
                "ffn_shared_gate", "ffn_shared_out", "ffn_out", "layer_out"]


def versions():
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
            "safetensors": safetensors.__version__, "numpy": np.__version__}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def deterministic(seed):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bitwise-reproducible reductions


class Weights:
    """Deterministic float32 weights (numpy, HF row-major shapes) from one generator."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def lin(self, shape, fan_in, gain=1.0):
        return (self.rng.standard_normal(shape) * (gain / np.sqrt(fan_in))).astype(np.float32)

    def norm(self, n):  # non-trivial RMSNorm gains, so that a missing multiply is caught
        return (1.0 + 0.2 * self.rng.standard_normal(n)).astype(np.float32)

    def bias(self, n, scale=0.5):  # biases large enough that a dropped bias is not noise
        return (scale * self.rng.standard_normal(n)).astype(np.float32)

    def embed(self, shape):
        return self.rng.standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------
# GGUF
# --------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def add_byte_tokenizer(wr, vocab, pre):
    """Byte-level BPE: token id b is byte b (GPT-2 spelling), 256.. are control tokens, and id 259
    is the merged token "ĠĠ" (llama.cpp needs at least one merge for a "gpt2" tokenizer)."""
    assert vocab >= 260, "the byte-level tokenizer needs a vocabulary of at least 260"
    b2u = bytes_to_unicode()
    toks = [b2u[b] for b in range(256)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "ĠĠ"]
    toks += [f"<|extra_{j}|>" for j in range(vocab - 260)]
    types = ([gguf.TokenType.NORMAL] * 256 + [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
             + [gguf.TokenType.CONTROL] * (vocab - 260))
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre(pre)
    wr.add_token_list(toks)
    wr.add_token_types(types)
    wr.add_token_merges(["Ġ Ġ"])
    wr.add_eos_token_id(256)
    wr.add_pad_token_id(256)
    wr.add_add_bos_token(False)


def quant_type_for(name, arr, want):
    """convert_hf_to_gguf.py's rule: 1-D tensors (norms, biases, rope_freqs), *_norm and the
    routers (ffn_gate_inp, ffn_gate_inp_shexp) stay F32."""
    if want == QT.F32 or arr.ndim <= 1 or name.endswith("_norm.weight") or ".ffn_gate_inp" in name \
            or name == "rope_freqs.weight":
        return QT.F32
    return want


def write_gguf(path, arch, name, w, qtype, kv):
    """Write `w` (GGUF name -> numpy array in HF/numpy shape) with metadata `kv` (a function of the
    writer that adds the architecture's keys). Returns {name: the float32 values stored}."""
    wr = gguf.GGUFWriter(path, arch)
    wr.add_type(gguf.GGUFType.MODEL)
    wr.add_name(name)
    kv(wr)
    wr.add_file_type(FILE_TYPE[qtype])
    wr.add_quantization_version(gguf.GGML_QUANT_VERSION)
    stored = {}
    for tname, arr in w.items():
        qt = quant_type_for(tname, arr, qtype)
        if qt == QT.F32:
            data = np.ascontiguousarray(arr, dtype=np.float32)
            wr.add_tensor(tname, data)
            stored[tname] = data
        else:
            data = gguf.quants.quantize(arr, qt)
            wr.add_tensor(tname, data, raw_dtype=qt)
            stored[tname] = gguf.quants.dequantize(data, qt).reshape(arr.shape).astype(np.float32)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return stored


def verify_gguf(path, arch, w, stored, expect_kv):
    """Read the file back with gguf-py: keys, tensor order, ggml dims, and stored values."""
    rd = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in rd.fields.values()}
    assert kv["general.architecture"] == arch
    for key, val in expect_kv.items():
        got = kv[f"{arch}.{key}"]
        assert (abs(got - val) <= 1e-6 * abs(val)) if isinstance(val, float) else got == val, (key, got, val)
    assert [t.name for t in rd.tensors] == list(w), "tensor set/order mismatch"
    rows = []
    for t in rd.tensors:
        src = w[t.name]
        ne = [int(x) for x in t.shape]
        assert ne == list(reversed(src.shape)), (t.name, ne, src.shape)
        raw = np.asarray(t.data)
        back = raw.reshape(src.shape) if t.tensor_type == QT.F32 else \
            gguf.quants.dequantize(raw, t.tensor_type).reshape(src.shape)
        assert np.array_equal(back, stored[t.name]), t.name
        rows.append({"name": t.name, "type": t.tensor_type.name, "ggml_ne": ne,
                     "max_abs_quant_err": float(np.abs(back - src).max())})
    return rows


# --------------------------------------------------------------------------------------------
# capture
# --------------------------------------------------------------------------------------------
class Capture:
    """Activations by trace key, each captured once (a second capture of a key is a bug)."""

    def __init__(self):
        self.cap = {}
        self.handles = []

    def put(self, key, t):
        assert key not in self.cap, f"duplicate capture {key}"
        self.cap[key] = t.detach().clone().float() if t.dtype.is_floating_point else t.detach().clone()

    def hook(self, module, key, fn=lambda o: o[0]):
        """Capture fn(output) of `module` (the batch dimension dropped by the default fn)."""
        self.handles.append(module.register_forward_hook(lambda m, i, o: self.put(key, fn(o))))

    def pre_hook(self, module, key):
        """Capture the first positional input of `module`, batch dimension dropped."""
        self.handles.append(module.register_forward_pre_hook(lambda m, args: self.put(key, args[0][0])))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []


def patch_eager_attention(modeling, cap, reorder_qk=lambda x: x):
    """Wrap the module-global eager attention of a transformers modeling file: capture the
    post-RoPE q and k ([B,h,T,D] -> [T,h,D], through `reorder_qk`) and the probabilities.
    Returns a function that restores the original."""
    orig = modeling.eager_attention_forward

    def wrapper(module, query, key, value, attention_mask, scaling, dropout=0.0, **kw):
        p = f"layer.{module.layer_idx}."
        cap.put(p + "q_rope", reorder_qk(query[0].transpose(0, 1)))
        cap.put(p + "k_rope", reorder_qk(key[0].transpose(0, 1)))
        out, probs = orig(module, query, key, value, attention_mask, scaling, dropout=dropout, **kw)
        cap.put(p + "attn_probs", probs[0])
        return out, probs

    modeling.eager_attention_forward = wrapper
    return lambda: setattr(modeling, "eager_attention_forward", orig)


def ordered_trace(cap, n_layers):
    """tokens, embedding, every layer's stages in forward order, final_norm, logits."""
    out = OrderedDict()
    for k in ("tokens", "embedding"):
        out[k] = cap[k]
    for i in range(n_layers):
        for s in LAYER_STAGES:
            if f"layer.{i}.{s}" in cap:
                out[f"layer.{i}.{s}"] = cap[f"layer.{i}.{s}"]
    for k in ("final_norm", "logits"):
        out[k] = cap[k]
    extra = set(cap) - set(out)
    assert not extra, f"captured keys outside the vocabulary: {sorted(extra)}"
    return out


def save_trace(path, trace, meta):
    # one metadata key: safetensors keeps metadata in a hash map, so several keys would be written
    # in random order and the file would not be bitwise reproducible
    save_file({k: v.contiguous() for k, v in trace.items()}, path,
              metadata={"oracle": json.dumps(meta, default=str, sort_keys=True)})


class Recompute:
    """Compare a float64 numpy recompute with the captured trace, stage by stage (max |diff|
    per stage name over layers)."""

    def __init__(self, trace):
        self.trace = trace
        self.diffs = {}

    def cmp(self, key, ref):
        got = self.trace[key].numpy().astype(np.float64)
        assert got.shape == ref.shape, (key, got.shape, ref.shape)
        d = float(np.abs(got - ref).max())
        stage = key.split(".")[-1]
        self.diffs[stage] = max(self.diffs.get(stage, 0.0), d)


def rms(x, g, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def silu(z):
    return z / (1 + np.exp(-z))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def causal_attention(q, k, v):
    """q [T,nh,D], k/v [T,nkv,D] (GQA: q head h uses kv head h // (nh/nkv)) -> probs, ctx."""
    T, nh, D = q.shape
    rep = nh // k.shape[1]
    kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("thd,shd->hts", q, kk) / np.sqrt(D) + np.triu(np.full((T, T), -np.inf), 1)[None]
    p = softmax(s)
    return p, np.einsum("hts,shd->thd", p, vv).reshape(T, nh * D)


def rope_angles(T, inv_freq):
    ang = np.arange(T)[:, None] * inv_freq[None, :]  # [T, D/2]
    return np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]


def rope_neox(x, inv_freq):
    """Half-split pairs (j, j + D/2): llama.cpp's NEOX mode, HF's rotate_half."""
    c, s = rope_angles(x.shape[0], inv_freq)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def rope_adjacent(x, inv_freq):
    """Adjacent pairs (2j, 2j+1): llama.cpp's NORM mode, used on the converter-permuted rows."""
    c, s = rope_angles(x.shape[0], inv_freq)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x1 * c + x0 * s
    return out


def topk_route(logits, k, renorm):
    """softmax over all experts, the k most probable (stable order), weights (renormalised or not)."""
    pr = softmax(logits)
    ids = np.argsort(-pr, axis=-1, kind="stable")[:, :k]
    wk = np.take_along_axis(pr, ids, -1)
    if renorm:
        wk = wk / wk.sum(-1, keepdims=True)
    return pr, ids, wk


def write_outputs(out_dir, stem, qname, gpath, trace, meta, rows, diffs, manifest):
    apath = os.path.join(out_dir, f"activations-{qname.lower()}.safetensors")
    save_trace(apath, trace, meta)
    manifest["files"][qname] = {
        "gguf": os.path.basename(gpath), "gguf_sha256": sha256(gpath), "gguf_bytes": os.path.getsize(gpath),
        "activations": os.path.basename(apath), "activations_sha256": sha256(apath),
        "tensors": rows, "numpy_float64_recompute_max_abs_diff": diffs,
    }
    worst = max(diffs.values())
    print(f"[{stem} {qname}] {os.path.basename(gpath)} ({os.path.getsize(gpath)} B), {len(rows)} tensors "
          f"verified; numpy float64 recompute max |diff| {worst:.3g} over {len(diffs)} stages")
    assert worst < 1e-3, f"the float64 recompute disagrees with transformers: {diffs}"


# --------------------------------------------------------------------------------------------
# the parts of a Llama-style decoder both families share (hooks, routing, recompute blocks)
# --------------------------------------------------------------------------------------------
def first(o):
    """A module output without its batch dimension, whether it came alone or first in a tuple."""
    return (o[0] if isinstance(o, tuple) else o)[0]


def router_logits(o):
    """[T, E] from a router: a Linear (transformers 4.x) or a top-k router returning
    (logits, weights, ids) (5.x)."""
    return o[0] if isinstance(o, tuple) else o


def hook_model(c, model):
    c.hook(model.model.embed_tokens, "embedding")
    c.hook(model.model.norm, "final_norm")
    c.hook(model.lm_head, "logits")


def hook_layer(c, layer, p, nh, nkv, D, qk=lambda x: x):
    """Norms, projections (q/k through `qk`, the head layout), attention output, residual and
    layer output of one decoder layer."""
    att = layer.self_attn
    c.hook(layer.input_layernorm, p + "attn_norm")
    c.hook(att.q_proj, p + "q_proj", lambda o: qk(o[0].view(o.shape[1], nh, D)))
    c.hook(att.k_proj, p + "k_proj", lambda o: qk(o[0].view(o.shape[1], nkv, D)))
    c.hook(att.v_proj, p + "v_proj", lambda o: o[0].view(o.shape[1], nkv, D))
    c.pre_hook(att.o_proj, p + "attn_ctx")
    c.hook(att.o_proj, p + "attn_out")
    c.pre_hook(layer.post_attention_layernorm, p + "attn_residual")
    c.hook(layer.post_attention_layernorm, p + "ffn_norm")
    c.hook(layer, p + "layer_out", first)


def hook_dense_mlp(c, mlp, p):
    c.hook(mlp.gate_proj, p + "ffn_gate")
    c.hook(mlp.up_proj, p + "ffn_up")
    c.pre_hook(mlp.down_proj, p + "ffn_act")
    c.hook(mlp, p + "ffn_out")


def run_forward(model, modeling, c, tokens, qk=lambda x: x):
    """The forward with every hook of `c` and the eager attention wrapped; returns the capture
    with `tokens` added."""
    restore = patch_eager_attention(modeling, c, qk)
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([tokens], dtype=torch.long), use_cache=False)
    finally:
        restore()
        c.remove()
    cap = c.cap
    assert torch.equal(out.logits[0], cap["logits"])
    cap["tokens"] = torch.tensor(tokens, dtype=torch.int32)
    return cap


def add_routes(cap, p, k, renorm):
    """router_probs, topk_ids and topk_weights from the captured router_logits, as the MoE block
    computes them (softmax over all experts, top-k, renormalised or not); returns the smallest
    margin between the k-th and (k+1)-th logit."""
    probs = torch.softmax(cap[p + "router_logits"].float(), dim=-1)
    w, ids = torch.topk(probs, k, dim=-1)
    cap[p + "router_probs"] = probs
    cap[p + "topk_ids"] = ids.to(torch.int32)
    cap[p + "topk_weights"] = w / w.sum(-1, keepdim=True) if renorm else w
    srt = cap[p + "router_logits"].sort(dim=-1, descending=True).values
    return float((srt[:, k - 1] - srt[:, k]).min())


def recompute_attention(r, f, g, p, x, eps, proj, rope):
    """float64 attention block of one layer from `x`; `proj(name, h, heads)` makes q/k/v (with
    or without biases), `rope` rotates q and k. Returns the residual stream after attention."""
    h = rms(x, f[g + "attn_norm.weight"], eps); r.cmp(p + "attn_norm", h)
    q, k, v = proj("attn_q", h), proj("attn_k", h), proj("attn_v", h)
    r.cmp(p + "q_proj", q); r.cmp(p + "k_proj", k); r.cmp(p + "v_proj", v)
    q, k = rope(q), rope(k); r.cmp(p + "q_rope", q); r.cmp(p + "k_rope", k)
    pr, ctx = causal_attention(q, k, v); r.cmp(p + "attn_probs", pr); r.cmp(p + "attn_ctx", ctx)
    o = ctx @ f[g + "attn_output.weight"].T; r.cmp(p + "attn_out", o)
    x = x + o; r.cmp(p + "attn_residual", x)
    return x


def recompute_routed(r, f, g, p, hn, k, renorm):
    """float64 routed experts of one layer (the ids must equal the captured ones)."""
    lg = hn @ f[g + "ffn_gate_inp.weight"].T; r.cmp(p + "router_logits", lg)
    pr, ids, wk = topk_route(lg, k, renorm)
    r.cmp(p + "router_probs", pr)
    assert np.array_equal(ids, r.trace[p + "topk_ids"].numpy()), "top-k ids disagree"
    r.cmp(p + "topk_weights", wk)
    y = np.zeros_like(hn)
    for t in range(hn.shape[0]):
        for j, e in enumerate(ids[t]):
            act = silu(f[g + "ffn_gate_exps.weight"][e] @ hn[t]) * (f[g + "ffn_up_exps.weight"][e] @ hn[t])
            y[t] += wk[t, j] * (f[g + "ffn_down_exps.weight"][e] @ act)
    return y


def recompute_dense(r, f, g, p, hn):
    gt = hn @ f[g + "ffn_gate.weight"].T; r.cmp(p + "ffn_gate", gt)
    up = hn @ f[g + "ffn_up.weight"].T; r.cmp(p + "ffn_up", up)
    act = silu(gt) * up; r.cmp(p + "ffn_act", act)
    return act @ f[g + "ffn_down.weight"].T


def recompute_tail(r, f, x, eps):
    xn = rms(x, f["output_norm.weight"], eps); r.cmp("final_norm", xn)
    r.cmp("logits", xn @ f.get("output.weight", f["token_embd.weight"]).T)
