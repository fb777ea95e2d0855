#!/usr/bin/env python3
"""Perplexity of the SmolLM2 GGUF under GLQ's protocol, computed by Hugging Face Transformers
(float32, CPU), to cross-check `glq perplexity`: the first N tokens of the text cut into
non-overlapping windows of CTX tokens (a shorter tail dropped), each window evaluated alone,
every token of a window but its first scored. Tokens come from the `tokenizers` library with
SmolLM2's pre-tokenizer (see tools/make_tokenizer_goldens.py).

Run:  /opt/refenv/bin/python tools/check_perplexity.py --text ../shared/data/text/brown-dev.txt --ctx 1024 --max-tokens 4096
Prints one JSON object (ppl, tokens, ctx, seconds).
"""
import argparse
import json
import math
import os
import time

import torch
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=4096)
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    with open(args.text, encoding="utf-8") as fh:
        ids = backend.encode(fh.read(), add_special_tokens=False).ids[: args.max_tokens]
    t0 = time.time()
    nll, scored = 0.0, 0
    for w in range(len(ids) // args.ctx):
        window = torch.tensor([ids[w * args.ctx:(w + 1) * args.ctx]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0].double(), -1)
        nll -= float(logp[:-1].gather(1, window[0, 1:, None]).sum())
        scored += args.ctx - 1
    print(json.dumps({"ppl": math.exp(nll / scored), "tokens": scored, "ctx": args.ctx,
                      "seconds": time.time() - t0, "reference": f"transformers {transformers.__version__}"}))


if __name__ == "__main__":
    main()
