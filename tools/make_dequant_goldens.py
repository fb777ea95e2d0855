#!/usr/bin/env python3
"""Golden float32 values of ggml quantized blocks (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, F16, BF16)
made by the `gguf` Python package's dequantizers (gguf.quants.dequantize), the reference
implementation of llama.cpp's block formats in Python.

Blocks are random bytes whose float16 scale fields are replaced by moderate values, so the
outputs are finite. Run:  /opt/refenv/bin/python tools/make_dequant_goldens.py
Writes tests/data/ggml_dequant_golden.json
"""
import importlib.metadata
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "ggml_dequant_golden.json")

# (type, block bytes, block weights, byte offsets of float16 scale fields)
TYPES = [
    ("Q8_0", T.Q8_0, 34, 32, [0]),
    ("Q4_0", T.Q4_0, 18, 32, [0]),
    ("Q4_1", T.Q4_1, 20, 32, [0, 2]),
    ("Q4_K", T.Q4_K, 144, 256, [0, 2]),
    ("Q5_K", T.Q5_K, 176, 256, [0, 2]),
    ("Q6_K", T.Q6_K, 210, 256, [208]),
]


def main():
    rng = np.random.default_rng(989)
    cases = []
    for name, qt, nbytes, nweights, scale_offsets in TYPES:
        blocks = 3
        raw = rng.integers(0, 256, size=(blocks, nbytes), dtype=np.uint8)
        for b in range(blocks):
            for off in scale_offsets:
                v = np.float16(rng.uniform(-0.05, 0.05))
                raw[b, off:off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
        values = quants.dequantize(raw.reshape(-1), qt).astype(np.float32).reshape(-1)
        assert values.size == blocks * nweights
        cases.append({"dtype": name, "bytes": raw.reshape(-1).tobytes().hex(), "values": [float(x) for x in values]})
    f16 = rng.standard_normal(37).astype(np.float16)
    f16 = np.concatenate([f16, np.array([0.0, -0.0, 65504, 6e-8, 1e-5, np.inf, -np.inf], dtype=np.float16)])
    # JSON has no infinity: infinities are written as the strings "inf" / "-inf".
    f16_values = [float(x) if np.isfinite(x) else ("inf" if x > 0 else "-inf") for x in f16.astype(np.float32)]
    cases.append({"dtype": "F16", "bytes": f16.tobytes().hex(), "values": f16_values})
    bf = rng.standard_normal(23).astype(np.float32)
    bf16 = (bf.view(np.uint32) >> 16).astype(np.uint16)
    cases.append({"dtype": "BF16", "bytes": bf16.tobytes().hex(),
                  "values": [float(x) for x in (bf16.astype(np.uint32) << 16).view(np.float32)]})
    doc = {"reference": f"gguf {importlib.metadata.version('gguf')} (gguf.quants.dequantize), numpy {np.__version__}",
           "script": "tools/make_dequant_goldens.py", "cases": cases}
    with open(OUT, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
