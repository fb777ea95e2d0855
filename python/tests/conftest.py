"""Fixtures of the Python tests: a tiny random Llama checkpoint written from scratch (config.json,
model.safetensors, a byte-level BPE tokenizer.json), and the real SmolLM2 GGUF when it is there."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Awkward sizes, multiples of 8 where GLQ needs them (rows and cols of every linear).
TINY = dict(vocab_size=300, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)

WORDS = ("the of and to in is was he for it with as his on be at by had are but from or have an "
         "they which one you were her all she there would their we him been has when who will "
         "more no if out so said what up its about into than them can only other new some could "
         "time these two may then do first any my now such like our over man me even most made").split()


def bytes_to_unicode() -> dict:
    """GPT-2's printable stand-ins for the 256 byte values (the ByteLevel pre-tokenizer's map)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def tokenizer_json() -> dict:
    byte_map = bytes_to_unicode()
    vocab = {byte_map[b]: b for b in range(256)}
    merges = []
    # A few merges so that BPE has work to do: "Ġt", "he", "Ġthe", "in", "an", "Ġa", "er"...
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n"), ("Ġ", "a"),
                 ("e", "r"), ("o", "n"), ("Ġ", "w"), ("r", "e"), ("Ġ", "s"), ("a", "t")]:
        merges.append(f"{a} {b}")
        vocab[a + b] = len(vocab)
    eos = len(vocab)
    return {
        "version": "1.0",
        "added_tokens": [{"id": eos, "content": "<|endoftext|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def write_safetensors(path: Path, tensors: dict) -> None:
    """The safetensors layout: u64 header length, JSON header, then the raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def make_tiny_llama(d: Path, seed: int = 7, bias: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    c = TINY
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    q_dim = c["num_attention_heads"] * c["head_dim"]
    kv_dim = c["num_key_value_heads"] * c["head_dim"]
    d.mkdir(parents=True, exist_ok=True)
    tok = tokenizer_json()
    eos = tok["added_tokens"][0]["id"]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "attention_bias": bias, "mlp_bias": False, "bos_token_id": eos, "eos_token_id": eos,
              "torch_dtype": "float32", **c}
    (d / "config.json").write_text(json.dumps(config, indent=1))
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": None,
                                                          "add_bos_token": False}))

    def w(rows, cols):
        return rng.standard_normal((rows, cols)).astype(np.float32) / np.sqrt(cols)

    t = {"model.embed_tokens.weight": rng.standard_normal((V, H)).astype(np.float32),
         "model.norm.weight": (1 + 0.1 * rng.standard_normal(H)).astype(np.float32),
         "lm_head.weight": w(V, H)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        t[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        for name, shape in [("self_attn.q_proj", (q_dim, H)), ("self_attn.k_proj", (kv_dim, H)),
                            ("self_attn.v_proj", (kv_dim, H)), ("self_attn.o_proj", (H, q_dim)),
                            ("mlp.gate_proj", (I, H)), ("mlp.up_proj", (I, H)), ("mlp.down_proj", (H, I))]:
            t[p + name + ".weight"] = w(*shape)
            if bias and name.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                t[p + name + ".bias"] = (0.1 * rng.standard_normal(shape[0])).astype(np.float32)
    write_safetensors(d / "model.safetensors", t)
    return d


def make_text(n_words: int, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=n_words)
    lines = [" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def calib_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(make_text(1500, seed=3))
    return p


@pytest.fixture(scope="session")
def tiny_quantize_run(tiny_model_dir, calib_file, tmp_path_factory) -> dict:
    """The tiny model quantized to 4 bits by the pipeline: out, report, progress events."""
    import glq
    out = tmp_path_factory.mktemp("ckpt") / "tiny-glq4"
    events = []
    report = glq.quantize(tiny_model_dir, bits=4, calib=calib_file, out=out, calib_seqs=4, seq_len=48,
                          progress=events.append)
    return {"out": out, "report": report, "events": events}


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_quantize_run) -> Path:
    return tiny_quantize_run["out"]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    if not SMOLLM2_GGUF.exists():
        pytest.skip(f"{SMOLLM2_GGUF} is absent (tools/fetch_model.sh fetches it)")
    return SMOLLM2_GGUF
