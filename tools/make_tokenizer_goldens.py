#!/usr/bin/env python3
"""Golden token ids for the SmolLM2 tokenizer, made by Hugging Face `tokenizers`.

Reference: the tokenizer.json that Transformers writes for the SmolLM2 GGUF
(tools/make_hf_dir.py). Transformers' GGUF converter drops one step of SmolLM2's original
pre-tokenizer (Digits(individual_digits=True) before ByteLevel), which llama.cpp applies for
tokenizer.ggml.pre = "smollm"; the reference restores it, so that `ids` is what the original
SmolLM2 tokenizer gives. `ids_converted` is what the converted tokenizer.json gives as written.

Run:  /opt/refenv/bin/python tools/make_tokenizer_goldens.py
Writes tests/data/smollm2_tokenizer_golden.json
"""
import json
import os
import random

import tokenizers
from tokenizers import Tokenizer, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_DIR = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct-hf")
OUT = os.path.join(ROOT, "tests", "data", "smollm2_tokenizer_golden.json")

FIXED = [
    "", " ", "  ", "\n", "\n\n\n", "\t", " \t \n ", "a", "Hello, world!", "hello world",
    "  leading spaces", "trailing spaces   ", "multiple   spaces   inside", "tabs\tand\ttabs",
    "line\nbreaks\r\nwindows\rmac", "The quick brown fox jumps over the lazy dog.",
    "I'm sure you've heard: we'll see, they'd say, it's done, don't, I'M, YOU'VE",
    "1234567890", "3.14159", "1,000,000", "2026-11-26", "v1.2.3", "0x1F", " 42 ", "12abc34",
    "x = 19 * 111 + 989", "phone: +1 (555) 123-4567",
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { y[i] += a * x[i]; }",
    "#include <cstdio>\nint main() { printf(\"%d\\n\", 42); }", "    indented\n        more",
    "SELECT * FROM t WHERE id = 7;", "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?q=1&r=two#frag", "user@example.org", "C:\\Windows\\System32",
    "naïve café résumé", "Straße", "Ångström", "Ελληνικά γράμματα", "Русский текст",
    "中文字符测试", "日本語のテキスト", "한국어 텍스트", "العربية", "עברית", "हिन्दी",
    "ไทย", "😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "emoji 🎉🎉🎉 party", "✓ ✗ → ← ∞ ≈ ≠",
    "½ ¾ ² ³ ⁴", "٣ ٤ ٥ Arabic-Indic digits", "１２３ fullwidth", "ℕ ℤ ℚ ℝ",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "\u3000ideographic space",
    "<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|>", "text<|im_end|>more", "<|im_start|",
    "!!!???...", "---===+++", "''\"\"``", "a'b'c", "'s 't 're", "(((nested)))",
    "CamelCaseIdentifier snake_case_name kebab-case-name", "ALLCAPS", "MiXeD CaSe",
    "supercalifragilisticexpialidocious", "antidisestablishmentarianism " * 3,
    " " * 17, "\n" * 5 + "x", "x" + " " * 9 + "y", "a\u0301 combining", "Ｆｕｌｌ　ｗｉｄｔｈ",
]


def random_strings(rng, n):
    pools = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789", "  \t\n", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêàçñöüßøåæœ", "αβγδεπσω", "абвгдежз", "中文字日本語", "😀🎉👍🔥💡",
    ]
    out = []
    for _ in range(n):
        length = rng.randint(1, 40)
        s = []
        for _ in range(length):
            pool = rng.choice(pools)
            s.append(rng.choice(pool))
        out.append("".join(s))
    return out


def corpus_lines(n):
    path = os.path.join(ROOT, "..", "shared", "data", "text", "brown-dev.txt")
    if not os.path.exists(path):
        path = "/work/shared/data/text/brown-dev.txt"
    with open(path, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if l.strip()]
    rng = random.Random(7)
    return rng.sample(lines, n)


def main():
    converted = Tokenizer.from_file(os.path.join(HF_DIR, "tokenizer.json"))
    original = Tokenizer.from_file(os.path.join(HF_DIR, "tokenizer.json"))
    original.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    rng = random.Random(19)
    texts = FIXED + random_strings(rng, 150) + corpus_lines(60)
    cases = []
    for t in texts:
        ids = original.encode(t, add_special_tokens=False).ids
        ids_conv = converted.encode(t, add_special_tokens=False).ids
        dec = original.decode(ids, skip_special_tokens=False)
        cases.append({"text": t, "ids": ids, "ids_converted": ids_conv, "decoded": dec})
    doc = {
        "reference": f"tokenizers {tokenizers.__version__} (Hugging Face), tokenizer.json written by "
                     "Transformers from SmolLM2-135M-Instruct.Q4_1.gguf; 'ids' with SmolLM2's "
                     "Digits(individual_digits) + ByteLevel pre-tokenizer, 'ids_converted' as written",
        "script": "tools/make_tokenizer_goldens.py",
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
    diff = sum(c["ids"] != c["ids_converted"] for c in cases)
    print(f"wrote {OUT}: {len(cases)} cases ({diff} differ between original and converted)")


if __name__ == "__main__":
    main()
