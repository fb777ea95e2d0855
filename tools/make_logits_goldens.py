#!/usr/bin/env python3
"""Golden logits and greedy generations of SmolLM2-135M-Instruct, made by Hugging Face
Transformers (float32, CPU) from the Q4_1 GGUF, which Transformers dequantizes to float32: that
float32 model is the reference GLQ's engine must match.

For every prompt the file keeps the prompt's token ids, and at a few positions the 40 largest
logits (ids and values), the row's logsumexp, mean and max; and the 32 tokens of a greedy
continuation (argmax at every step, no stopping at end-of-sequence tokens).

Run:  /opt/refenv/bin/python tools/make_logits_goldens.py
Writes tests/data/smollm2_logits_golden.json
"""
import json
import os

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "data", "smollm2_logits_golden.json")
TOP = 40
GEN = 32

PROMPTS = [
    {"name": "plain", "text": "The capital of France is"},
    {"name": "code", "text": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"},
    {"name": "chat", "chat": [{"role": "user", "content": "What is 19 times 111? Answer briefly."}]},
    {"name": "long", "text": ("In 1961 the Brown University Standard Corpus of Present-Day American English "
                              "was compiled from 500 samples of text, each of about 2,000 words, "
                              "drawn from works published in the United States in that year. "
                              "It was the first million-word electronic corpus of English, and "
                              "for decades it served linguists as the standard sample of the "
                              "written language; its categories ranged from press reportage to "
                              "learned prose, fiction and humour. Researchers later tagged every")},
]


def main():
    torch.manual_seed(0)
    d, f = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    cases = []
    for p in PROMPTS:
        if "chat" in p:
            text = tok.apply_chat_template(p["chat"], tokenize=False, add_generation_prompt=True)
        else:
            text = p["text"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        n = len(ids)
        positions = sorted(set([0, n // 2, n - 1]))
        rows = []
        for pos in positions:
            row = logits[pos]
            vals, idx = torch.topk(row, TOP)
            rows.append({
                "position": pos,
                "top_ids": idx.tolist(),
                "top_logits": [float(v) for v in vals],
                "logsumexp": float(torch.logsumexp(row.double(), 0)),
                "mean": float(row.double().mean()),
                "max_abs": float(row.abs().max()),
            })
        gen = list(ids)
        with torch.no_grad():
            out = model(torch.tensor([gen]), use_cache=True)
            past = out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            new = [nxt]
            for _ in range(GEN - 1):
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                new.append(nxt)
        case = {"name": p["name"], "text": text, "ids": ids, "rows": rows, "greedy": new,
                "greedy_text": tok.decode(new)}
        if "chat" in p:
            case["chat"] = p["chat"]
        cases.append(case)
        print(p["name"], n, "tokens; greedy:", repr(tok.decode(new)))
    doc = {
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, float32 CPU, "
                     "model loaded from SmolLM2-135M-Instruct.Q4_1.gguf (dequantized by Transformers)",
        "script": "tools/make_logits_goldens.py",
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, indent=None, separators=(",", ":"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
