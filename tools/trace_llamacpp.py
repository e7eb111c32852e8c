#!/usr/bin/env python3
"""Trace llama.cpp (through llama-cpp-python) into a falsifier trace.

    pip install llama-cpp-python numpy safetensors     # builds llama.cpp: ~20 min on 2 cores
    python3 tools/trace_llamacpp.py --model M.gguf --tokens 1,2,3 --out TRACE.safetensors
    python3 tools/trace_llamacpp.py --model M.gguf --tokens 1,2,3 --out DIR     # DIR/{key}.npy
    falsifier trace M.gguf --backend cpu --tokens 1,2,3 --stages all --out ref.safetensors
    falsifier diff ref.safetensors TRACE.safetensors --report-dir reports/llamacpp

One prompt evaluation (one llama_decode over all tokens, every position's logits requested) with
llama.cpp's graph evaluation callback (`cb_eval` in llama_context_params) copying out every named
tensor, then mapped to falsifier's stage vocabulary. ggml lays tensors out reversed
(ne0 = features, ne1 = tokens), i.e. a row-major [T, features] array; heads are reshaped to
[T, heads, D] where the vocabulary wants them.

llama.cpp name (qwen3, qwen3moe, llama, qwen2, qwen2moe graphs) -> falsifier stage
    inp_embd                                  embedding
    attn_norm-N                               layer.N.attn_norm
    Qcur-N, Kcur-N (the last 2-D one: the     q_proj, k_proj
      matmul output, after its bias in qwen2)
    Qcur_normed-N, Kcur_normed-N              q_norm, k_norm (qwen3 only)
    Qcur-N, Kcur-N (the last 3-D one: RoPE'd) q_rope, k_rope
    Vcur-N (the last 2-D one)                 v_proj
    kq_soft_max-N (flash attention off)       attn_probs   (KV-cache columns cut to T)
    kqv_out-N                                 attn_ctx
    attn_out-N (where the version names it)   attn_out
    ffn_inp-N                                 attn_residual
    ffn_norm-N                                ffn_norm
    ffn_moe_logits-N / ffn_moe_probs-N        router_logits / router_probs
    ffn_moe_topk-N / ffn_moe_weights_norm-N   topk_ids / topk_weights (rows sorted by weight, desc.;
      (ffn_moe_weights-N where not renormalised)  qwen2moe's router does not renormalise)
    ffn_shexp_gate-N / ffn_shexp_out-N        ffn_shared_gate / ffn_shared_out (qwen2moe)
    ffn_moe_out-N                             ffn_out (qwen3moe, Mixtral)
    ffn_out-N after ffn_shexp_out-N           ffn_out (qwen2moe: routed + shared)
    ffn_gate-N / ffn_up-N / ffn_swiglu-N      ffn_gate / ffn_up / ffn_act (dense FFNs)
    ffn_out-N                                 ffn_out (dense FFNs)
    l_out-N                                   layer_out
    result_norm / result_output               final_norm / logits

The script prints the stages it could not provide (for example attn_out on llama.cpp versions
that do not name the output projection, or attn_probs when flash attention is on); falsifier
diff reports those as Missing, never as a pass.

Numerics to expect. The KV cache is made f32 here (llama.cpp's default is f16, which would round
K and V). On an F32 GGUF every stage matches the CPU reference. On quantized GGUFs (Q8_0, Q4_K,
...) llama.cpp's CPU matmuls first round the activations to 8-bit blocks (Q8_0 / Q8_K, the
weight type's vec_dot_type), while falsifier's reference keeps them f32: the report shows Diverge
at the matmul stages (q_proj, k_proj, v_proj, attn_out, router_logits, ffn_out, logits) by about
the amount the `act_q8_rounding` fault predicts (`falsifier trace ... --fault act_q8_rounding@...`
reproduces it on our side), and everything downstream of them. That is a real numerical
difference of llama.cpp, made visible on purpose.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pyreq import need  # noqa: E402

need("numpy")

import numpy as np  # noqa: E402

llama_cpp = None  # imported in run(), so that the name mapping can be used without it

GGML_TYPE_F32, GGML_TYPE_I32 = 0, 26


class TensorHead(ctypes.Structure):
    """The leading fields of ggml's struct ggml_tensor (stable across versions): type, buffer,
    ne[4], nb[4]. Everything else is read through ggml functions."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4)]


def ggml_lib():
    """The shared library that exports ggml's tensor functions (libggml-base, or libllama when
    llama.cpp was linked statically)."""
    libllama = llama_cpp.llama_cpp._lib
    if hasattr(libllama, "ggml_backend_tensor_get"):
        lib = libllama
    else:
        here = os.path.dirname(libllama._name)
        cands = sorted(glob.glob(os.path.join(here, "libggml-base*")) + glob.glob(os.path.join(here, "ggml-base*")))
        if not cands:
            sys.exit(f"cannot find libggml-base next to {libllama._name}")
        lib = ctypes.CDLL(cands[0])
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


def set_if(params, field, value):
    if any(f[0] == field for f in type(params)._fields_):
        setattr(params, field, value)
        return True
    return False


def run(model_path, tokens, threads):
    """Evaluate the prompt once; returns [(name, numpy array in ggml order reversed)] in graph order."""
    global llama_cpp
    need(("llama_cpp", "llama-cpp-python"))
    import llama_cpp
    lib = ggml_lib()
    seen = []

    def cb(t, ask, _user):
        if ask:
            return True  # observe every node
        head = TensorHead.from_address(t)
        name = lib.ggml_get_name(t).decode(errors="replace")
        if head.type not in (GGML_TYPE_F32, GGML_TYPE_I32) or not lib.ggml_is_contiguous(t):
            seen.append((name, None))
            return True
        n = lib.ggml_nbytes(t)
        buf = (ctypes.c_uint8 * n)()
        lib.ggml_backend_tensor_get(t, buf, 0, n)
        dt = np.float32 if head.type == GGML_TYPE_F32 else np.int32
        shape = [int(x) for x in head.ne][::-1]  # ggml ne0 is the fastest axis
        seen.append((name, np.frombuffer(bytes(buf), dtype=dt).reshape(shape).copy()))
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(cb)  # kept alive until decode returns
    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    load = getattr(llama_cpp, "llama_model_load_from_file", None) or llama_cpp.llama_load_model_from_file
    model = load(model_path.encode(), mp)
    if not model:
        sys.exit(f"{model_path}: llama.cpp could not load the model")
    cp = llama_cpp.llama_context_default_params()
    T = len(tokens)
    cp.n_ctx = max(256, T)
    cp.n_batch = cp.n_ubatch = max(T, 1)  # one graph over the whole prompt
    cp.n_threads = cp.n_threads_batch = threads
    cp.cb_eval = callback
    cp.cb_eval_user_data = None
    cp.type_k = cp.type_v = GGML_TYPE_F32  # default f16 KV cache would round K and V
    set_if(cp, "flash_attn_type", 0) or set_if(cp, "flash_attn", False)  # 0 = disabled: keeps kq_soft_max
    new_ctx = getattr(llama_cpp, "llama_init_from_model", None) or llama_cpp.llama_new_context_with_model
    ctx = new_ctx(model, cp)
    if not ctx:
        sys.exit("llama.cpp could not create a context")
    batch = llama_cpp.llama_batch_init(T, 0, 1)
    for i, tok in enumerate(tokens):
        batch.token[i] = tok
        batch.pos[i] = i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1  # every position's output, so result_norm/result_output hold all T rows
    batch.n_tokens = T
    rc = llama_cpp.llama_decode(ctx, batch)
    if rc != 0:
        sys.exit(f"llama_decode returned {rc}")
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    (getattr(llama_cpp, "llama_model_free", None) or llama_cpp.llama_free_model)(model)
    return seen


def to_trace(seen, T):
    """Map llama.cpp tensor names to canonical keys. Returns (tensors, notes)."""
    out, notes, skipped, argsort = {}, [], [], {}

    def put(key, arr):
        if key not in out:
            out[key] = np.ascontiguousarray(arr)

    for name, a in seen:
        if a is None:
            skipped.append(name)
            continue
        base, _, il = name.rpartition("-")
        if not base or not il.isdigit():
            base, il = name, None
        P = f"layer.{il}." if il is not None else ""
        if base in ("inp_embd", "embd"):
            put("embedding", a.reshape(T, -1))
        elif base == "result_norm":
            put("final_norm", a.reshape(T, -1))
        elif base == "result_output":
            put("logits", a.reshape(T, -1))
        elif il is None:
            continue
        elif base in ("Qcur", "Kcur", "Vcur"):
            # the graph names several nodes Qcur-N, in graph order: the projection (2-D), again
            # after its bias (qwen2), its reshape to heads (3-D; qwen3 then has Qcur_normed-N),
            # and the RoPE'd heads (3-D). The last 2-D one is q_proj, the last 3-D one q_rope.
            s = base[0].lower()
            if a.shape[-3] == 1:
                out[P + f"{s}_proj"] = np.ascontiguousarray(a.reshape(T, -1))
            elif s != "v":
                out[P + f"{s}_rope"] = np.ascontiguousarray(a.reshape(T, a.shape[-2], a.shape[-1]))
        elif base in ("Qcur_normed", "Kcur_normed"):
            put(P + ("q_norm" if base == "Qcur_normed" else "k_norm"), a.reshape(T, a.shape[-2], a.shape[-1]))
        elif base == "ffn_moe_argsort":
            # ffn_moe_topk-N is a strided view of this (its first k columns): take them from here
            argsort[P] = a.reshape(T, -1)
        elif base in ("kq_soft_max", "kq_soft_max_ext"):   # [heads, T, n_kv]: cut the padded cache
            put(P + "attn_probs", a.reshape(-1, T, a.shape[-1])[:, :, :T])
        else:
            simple = {"attn_norm": "attn_norm", "kqv_out": "attn_ctx", "attn_out": "attn_out",
                      "ffn_inp": "attn_residual", "ffn_norm": "ffn_norm", "ffn_moe_logits": "router_logits",
                      "ffn_moe_probs": "router_probs", "ffn_moe_out": "ffn_out", "ffn_gate": "ffn_gate",
                      "ffn_up": "ffn_up", "ffn_swiglu": "ffn_act", "ffn_out": "ffn_out", "l_out": "layer_out",
                      "ffn_moe_topk": "topk_ids", "ffn_moe_weights": "topk_weights",
                      "ffn_shexp_gate": "ffn_shared_gate", "ffn_shexp_out": "ffn_shared_out"}
            if base == "ffn_moe_out":                  # the MoE output wins over any ffn_out
                out[P + "ffn_out"] = np.ascontiguousarray(a.reshape(T, -1))
            elif base == "ffn_out" and P + "ffn_shared_out" in out:
                # qwen2moe: ffn_out-N is the routed experts plus the gated shared expert
                out[P + "ffn_out"] = np.ascontiguousarray(a.reshape(T, -1))
            elif base == "ffn_moe_weights_norm":       # renormalised weights win over the raw ones
                out[P + "topk_weights"] = np.ascontiguousarray(a.reshape(T, -1))
            elif base in simple:
                put(P + simple[base], a.reshape(T, -1))
    # an expert layer has no dense FFN stages: qwen2moe's shared expert is built by the same
    # helper as a dense FFN and names its nodes ffn_gate-N/ffn_up-N/ffn_swiglu-N
    for key in [k for k in out if k.endswith(".router_logits")]:
        P = key[: -len("router_logits")]
        for s in ("ffn_gate", "ffn_up", "ffn_act"):
            if out.pop(P + s, None) is not None:
                notes.append("the shared expert's inner ffn_gate/ffn_up/ffn_swiglu nodes left out (no stages of an expert layer)")
    for P, order in argsort.items():
        w = out.get(P + "topk_weights")
        if w is not None and P + "topk_ids" not in out:
            out[P + "topk_ids"] = order[:, : w.shape[-1]]
    # heads: q_proj/k_proj/v_proj as [T, heads, D] (D from the RoPE'd tensors)
    for key in list(out):
        for s in ("q", "k", "v"):
            if key.endswith(f".{s}_proj"):
                rope = out.get(key.replace(f"{s}_proj", f"{'k' if s == 'v' else s}_rope"))
                if rope is not None:
                    out[key] = out[key].reshape(T, -1, rope.shape[-1])
    # top-k in descending weight order (ggml's top-k does not promise an order), ids int32
    for key in [k for k in out if k.endswith(".topk_ids")]:
        wkey = key.replace("topk_ids", "topk_weights")
        ids = out[key].astype(np.int32)
        if wkey in out:
            w = out[wkey]
            order = np.lexsort((ids, -w), axis=-1)
            out[key] = np.take_along_axis(ids, order, -1)
            out[wkey] = np.take_along_axis(w, order, -1).astype(np.float32)
            notes.append("topk rows sorted by weight (descending, ties to the lower id)")
        else:
            out[key] = ids
    if skipped:
        notes.append(f"{len(skipped)} non-f32/i32 or non-contiguous tensors skipped")
    return out, sorted(set(notes))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a GGUF file")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("--out", required=True, help="TRACE.safetensors, or a directory for {key}.npy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dump-names", action="store_true", help="print every tensor the callback saw")
    a = ap.parse_args()
    tokens = [int(t) for t in a.tokens.split(",") if t.strip()]
    T = len(tokens)
    seen = run(a.model, tokens, a.threads)
    if a.dump_names:
        for name, arr in seen:
            print(f"  {name:32s} {None if arr is None else (arr.dtype, arr.shape)}")
    out, notes = to_trace(seen, T)
    out["tokens"] = np.array(tokens, dtype=np.int32)

    layers = sorted({int(k.split(".")[1]) for k in out if k.startswith("layer.")})
    moe = any(k.endswith(".router_logits") for k in out)
    # the architecture's stage set, as its graph shows it: q/k norms (qwen3) and a shared
    # expert (qwen2moe) only where the graph has those nodes; falsifier diff, which knows the
    # architecture, still reports any stage the reference has and this trace lacks as Missing
    names = {name.rpartition("-")[0] for name, _ in seen}
    stages = ["attn_norm", "q_proj", "k_proj", "v_proj"]
    stages += ["q_norm", "k_norm"] if "Qcur_normed" in names else []
    stages += ["q_rope", "k_rope", "attn_probs", "attn_ctx", "attn_out", "attn_residual", "ffn_norm"]
    stages += (["router_logits", "router_probs", "topk_ids", "topk_weights"] if moe
               else ["ffn_gate", "ffn_up", "ffn_act"])
    stages += ["ffn_shared_gate", "ffn_shared_out"] if "ffn_shexp_out" in names else []
    stages += ["ffn_out", "layer_out"]
    missing = [s for s in stages if any(f"layer.{i}.{s}" not in out for i in layers)]
    missing += [k for k in ("embedding", "final_norm", "logits") if k not in out]
    print(f"llama.cpp: {len(seen)} tensors seen, {len(out)} mapped, {len(layers)} layers, T={T}")
    print("stages llama.cpp did not provide: " + (", ".join(missing) if missing else "none"))
    for n in notes:
        print("note: " + n)

    version = getattr(llama_cpp, "__version__", "?")
    meta = {"format": "falsifier-trace/1", "backend": "llama.cpp", "model": a.model, "model_sha256": "",
            "tokens": ",".join(map(str, tokens)), "plan": "stages=all layers=all",
            "dtype": "llama.cpp CPU, f32 KV cache, flash attention off; quantized matmuls round activations to 8-bit blocks",
            "versions": json.dumps({"llama_cpp_python": version}), "missing_stages": ",".join(missing)}
    if a.out.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file(out, a.out, metadata=meta)
    else:
        os.makedirs(a.out, exist_ok=True)
        for k, v in out.items():
            np.save(os.path.join(a.out, f"{k}.npy"), v)
        with open(os.path.join(a.out, "metadata.json"), "w") as fh:
            json.dump(meta, fh, indent=1)
    print(f"wrote {a.out} (llama-cpp-python {version})")


if __name__ == "__main__":
    main()
