#!/usr/bin/env python3
"""GPU check of glq.torch: a Transformers model whose linears are GLQ layers running the CUDA
kernels gives the perplexity of `glq perplexity` on the same checkpoint, and its batch-1 decode
speed is measured beside the dense model's in the same run.

    python3 python/tools/gpu_torch_check.py --source models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --checkpoint models/smollm2-glq4 --text ../shared/data/text/brown-dev.txt

  1. The checkpoint (4 bits unless --bits) is made with glq.quantize from --source and --calib
     when the directory does not exist yet.
  2. Reference: perplexity of the checkpoint on GLQ's own engine (the code of `glq perplexity`,
     the same tokens, windows of --ctx tokens from an empty cache; --glq-ppl skips it by taking
     the figure of an earlier `glq perplexity` run).
  3. glq.torch.load_hf_model(checkpoint) on the GPU: perplexity with the same protocol and the
     same token ids. Passes when it is within --tolerance (0.5 %) of the reference.
  4. Dense baseline: the same Transformers architecture with the source's dense linears (read by
     GLQ's loader: the GGUF dequantized to float32, or a Hugging Face directory) and the
     checkpoint's other tensors; its perplexity is printed for information.
  5. Batch-1 greedy decode, --decode-tokens new tokens after a --prompt-tokens prompt, for the
     dense and the GLQ model: eager, and with the decode step captured in a CUDA graph (static KV
     cache) unless --no-graph. tokens/s of each, and the ratio.
Prints a table on stderr and one JSON object on stdout (also written to --json).
--device cpu runs the same steps on the CPU kernels (a smoke test of the script itself).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

import glq
import glq.torch as glq_torch

LINEAR_KINDS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- perplexity with the protocol of glq/model/perplexity.hpp ----------------------------------

def windows(ids, ctx):
    n = len(ids) // ctx
    if n == 0:
        return [ids] if len(ids) >= 2 else []
    return [ids[i * ctx:(i + 1) * ctx] for i in range(n)]


@torch.no_grad()
def torch_perplexity(model, ids, ctx, device) -> dict:
    nll, scored = 0.0, 0
    t0 = time.perf_counter()
    for w in windows(ids, ctx):
        x = torch.tensor([w], device=device)
        logits = model(input_ids=x, use_cache=False).logits[0].double()
        lp = torch.log_softmax(logits, dim=-1)
        target = x[0, 1:]
        nll -= lp[torch.arange(len(w) - 1, device=device), target].sum().item()
        scored += len(w) - 1
    sync(device)
    return {"ppl": math.exp(nll / scored), "tokens": scored, "seconds": time.perf_counter() - t0}


# ---- models ----------------------------------------------------------------------------------

def dense_model(checkpoint, source, device, dtype):
    """The checkpoint's architecture with the source's dense linears and the checkpoint's other
    tensors (a dense model that differs from the GLQ one only in its linears)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(checkpoint)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    src = glq.load(source)
    with torch.no_grad():
        for i in range(config.num_hidden_layers):
            for kind, block in LINEAR_KINDS.items():
                w = src.linear(i, kind)
                if isinstance(w, glq.QuantizedMatrix):
                    raise SystemExit(f"{source}: layer {i} {kind} is quantized; give the unquantized source")
                lin = model.get_submodule(f"model.layers.{i}.{block}.{kind}")
                lin.weight.copy_(torch.from_numpy(w))
    # Everything but the quantized linears from the checkpoint (embeddings, norms, lm_head).
    from safetensors import safe_open
    params = dict(model.named_parameters(remove_duplicate=False))
    with safe_open(os.path.join(checkpoint, "model.safetensors"), framework="pt") as f, torch.no_grad():
        for key in f.keys():
            if ".glq_" in key:
                continue
            if key in params:
                params[key].copy_(f.get_tensor(key).to(params[key].dtype))
    return model.to(device=device, dtype=dtype).eval()


# ---- decode speed ----------------------------------------------------------------------------

def _cache_call(model, cache):
    """model(ids, positions) with the KV cache passed under the name this Transformers version
    uses ("cache" from 5.2x, "past_key_values" before), and cache_position where it exists."""
    import inspect
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    with_cache_position = "cache_position" in params

    def call(ids, pos):
        kw = {cache_kw: cache, "use_cache": True, "position_ids": pos.view(1, -1)}
        if with_cache_position:
            kw["cache_position"] = pos
        return model(input_ids=ids, **kw)

    return call


@torch.no_grad()
def decode_eager(model, prompt, n_new, device) -> dict:
    from transformers import DynamicCache
    call = _cache_call(model, DynamicCache())
    out = call(torch.tensor([prompt], device=device), torch.arange(len(prompt), device=device))
    tok = out.logits[:, -1:].argmax(-1)
    toks = []
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_new):
        out = call(tok, torch.tensor([len(prompt) + i], device=device))
        tok = out.logits[:, -1:].argmax(-1)
        toks.append(tok)
    sync(device)
    dt = time.perf_counter() - t0
    return {"tok_s": n_new / dt, "seconds": dt, "tokens": [int(t) for t in torch.cat(toks, 1)[0].tolist()]}


@torch.no_grad()
def decode_static(model, prompt, n_new, device, capture: bool) -> dict:
    """Decode over a static KV cache; with capture, the one-token step is captured once in a
    CUDA graph and replayed for every new token (without, the same steps run eagerly: a check of
    this function on any device)."""
    from transformers import StaticCache
    max_len = len(prompt) + n_new + 1
    try:
        cache = StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:  # older signature
        cache = StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len,
                            device=device, dtype=next(model.parameters()).dtype)
    call = _cache_call(model, cache)
    x = torch.tensor([prompt], device=device)
    static_tok = torch.zeros((1, 1), dtype=torch.long, device=device)
    static_pos = torch.tensor([len(prompt)], device=device)

    def prefill():
        out = call(x, torch.arange(len(prompt), device=device))
        static_tok.copy_(out.logits[:, -1:].argmax(-1))
        static_pos.fill_(len(prompt))

    def step():
        return call(static_tok, static_pos).logits[:, -1:].argmax(-1)

    prefill()
    if capture:
        s = torch.cuda.Stream(device)
        s.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(s):  # warm-up: allocations, kernel selection, GLQ scratch
            for _ in range(2):
                step()
        torch.cuda.current_stream(device).wait_stream(s)
        cache.reset()  # forget the warm-up's positions (a cache that counts them itself too)
        prefill()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_next = step()
    toks = []
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_new):
        static_pos.fill_(len(prompt) + i)
        if capture:
            graph.replay()
            nxt = static_next
        else:
            nxt = step()
        static_tok.copy_(nxt)
        toks.append(nxt.clone())
    sync(device)
    dt = time.perf_counter() - t0
    return {"tok_s": n_new / dt, "seconds": dt, "tokens": [int(t) for t in torch.cat(toks, 1)[0].tolist()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", required=True, help="unquantized model: GGUF file or Hugging Face directory")
    ap.add_argument("--checkpoint", required=True, help="GLQ checkpoint directory (made when absent)")
    ap.add_argument("--text", required=True, help="evaluation text (UTF-8)")
    ap.add_argument("--calib", help="calibration text, to make the checkpoint")
    ap.add_argument("--bits", type=float, default=4)
    ap.add_argument("--calib-seqs", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--glq-ppl", type=float, help="reference perplexity from `glq perplexity` (skips step 2)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--no-graph", action="store_true", help="eager decode only")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="dtype of the Transformers models (GLQ layers compute in float32 either way)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="also write the JSON result here")
    a = ap.parse_args()

    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device visible to PyTorch")
        if not glq.has_cuda:
            raise SystemExit("this glq build has no CUDA backend: build it with GLQ_CUDA=1 (docs/python.md)")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({glq.cpu_isa()})"
    log(f"glq {glq.__version__}, torch {torch.__version__}, device {card}")

    if not os.path.isdir(a.checkpoint):
        if not a.calib:
            raise SystemExit(f"{a.checkpoint} does not exist: pass --calib to make it")
        log(f"== quantizing {a.source} to {a.bits:g} bits -> {a.checkpoint}")
        glq.quantize(a.source, bits=a.bits, calib=a.calib, out=a.checkpoint, calib_seqs=a.calib_seqs,
                     seq_len=a.seq_len, progress=True)

    engine = glq.load(a.checkpoint)
    with open(a.text, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    ids = engine.tokenize(text, None, False)[: a.max_tokens]  # as `glq perplexity`
    result = {"device": card, "checkpoint": a.checkpoint, "source": a.source, "text": a.text, "ctx": a.ctx,
              "tokens_used": len(ids), "dtype": a.dtype}

    if a.glq_ppl:
        ref = {"ppl": a.glq_ppl, "from": "--glq-ppl"}
    else:
        log("== reference: GLQ engine perplexity (CPU, the code of `glq perplexity`)")
        ref = engine.perplexity(text, ctx=a.ctx, max_tokens=a.max_tokens, progress=True)
    result["glq_engine"] = ref
    log(f"   ppl {ref['ppl']:.4f}")

    log("== Transformers with GLQ linears (glq.torch.load_hf_model)")
    qmodel = glq_torch.load_hf_model(a.checkpoint, dtype=dtype, device=device)
    n_glq = sum(isinstance(m, glq_torch.QuantizedLinear) for m in qmodel.modules())
    q = torch_perplexity(qmodel, ids, a.ctx, device)
    rel = abs(q["ppl"] - ref["ppl"]) / ref["ppl"]
    q.update({"glq_linears": n_glq, "relative_difference": rel, "pass": rel <= a.tolerance})
    result["torch_glq"] = q
    log(f"   {n_glq} GLQ linears; ppl {q['ppl']:.4f} ({100 * rel:.3f} % from the engine's, "
        f"{'PASS' if q['pass'] else 'FAIL'} at {100 * a.tolerance:g} %), {q['seconds']:.1f} s")

    log("== dense baseline (same architecture, the source's dense linears)")
    dmodel = dense_model(a.checkpoint, a.source, device, dtype)
    d = torch_perplexity(dmodel, ids, a.ctx, device)
    result["torch_dense"] = d
    log(f"   ppl {d['ppl']:.4f}")

    log(f"== batch-1 greedy decode: {a.prompt_tokens}-token prompt, {a.decode_tokens} new tokens")
    prompt = ids[: a.prompt_tokens]
    speed = {}
    modes = ["eager"] + ([] if a.no_graph else ["cuda_graph" if device.type == "cuda" else "static_cache"])
    for mode in modes:
        for name, model in (("dense", dmodel), ("glq", qmodel)):
            try:
                if mode == "eager":
                    r = decode_eager(model, prompt, a.decode_tokens, device)
                else:
                    r = decode_static(model, prompt, a.decode_tokens, device, capture=mode == "cuda_graph")
                speed[f"{name}_{mode}"] = r
                log(f"   {name:5} {mode:10} {r['tok_s']:8.1f} tokens/s")
            except Exception as e:  # report and go on: the other figures still stand
                speed[f"{name}_{mode}"] = {"error": f"{type(e).__name__}: {e}"}
                log(f"   {name:5} {mode:10} failed: {type(e).__name__}: {e}")
        g, dn = speed.get(f"glq_{mode}", {}), speed.get(f"dense_{mode}", {})
        if "tok_s" in g and "tok_s" in dn:
            speed[f"ratio_{mode}"] = g["tok_s"] / dn["tok_s"]
            log(f"   glq/dense {mode}: {g['tok_s'] / dn['tok_s']:.2f}x")
    for name in ("dense", "glq"):  # the static-cache (graph) decode must give the eager tokens
        e, g = speed.get(f"{name}_eager", {}), speed.get(f"{name}_{modes[-1]}", {})
        if len(modes) > 1 and "tokens" in e and "tokens" in g:
            speed[f"{name}_{modes[-1]}_matches_eager"] = e["tokens"] == g["tokens"]
            log(f"   {name} {modes[-1]} tokens {'match' if e['tokens'] == g['tokens'] else 'DIFFER from'} eager")
    for v in speed.values():
        if isinstance(v, dict):
            v.pop("tokens", None)
    result["decode"] = speed
    result["pass"] = bool(q["pass"])

    line = json.dumps(result)
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
