#!/usr/bin/env python3
"""Makes a Hugging Face checkpoint directory from the SmolLM2 GGUF with Transformers' own GGUF
loader (it dequantizes Q4_1/Q8_0 to float32) and save_pretrained, so that GLQ's safetensors
loader can be checked against a directory written by an outside tool.

Run with the reference venv:  /opt/refenv/bin/python tools/make_hf_dir.py
Writes models/SmolLM2-135M-Instruct-hf/ (git-ignored): config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, ...
"""
import argparse
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct-hf"))
    ap.add_argument("--shard-size", default="", help="e.g. 200MB to write a sharded checkpoint")
    args = ap.parse_args()
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    # The weights are plain float32 tensors now; Transformers only refuses to save because it
    # remembers the GGUF origin. Forget it so that save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    kw = {"max_shard_size": args.shard_size} if args.shard_size else {}
    model.save_pretrained(args.out, safe_serialization=True, **kw)
    tok.save_pretrained(args.out)
    print(f"wrote {args.out} with transformers {transformers.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
