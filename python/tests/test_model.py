"""glq.load / Model / glq.quantize against the C++ engine's own results (and the `glq` tool's)."""
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import glq
from conftest import ROOT, TINY, make_text


def log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def test_load_and_describe(tiny_model_dir):
    m = glq.load(tiny_model_dir)
    c = m.config
    assert c["arch"] == "llama"
    assert (c["vocab_size"], c["hidden_size"], c["num_layers"]) == (TINY["vocab_size"], 48, 2)
    assert (c["num_heads"], c["num_kv_heads"], c["head_dim"]) == (6, 2, 8)
    assert "2 layers" in m.describe()
    assert m.path == str(tiny_model_dir)
    w = m.linear(1, "down_proj")
    assert isinstance(w, np.ndarray) and w.shape == (48, 72)


def test_tokenize_round_trip(tiny_model_dir):
    m = glq.load(tiny_model_dir)
    text = "the man said: what time is it? Ünïcode ✓"
    ids = m.tokenize(text)
    assert all(isinstance(i, int) for i in ids)
    assert m.detokenize(ids) == text
    assert len(m.tokenize("the the the")) < len("the the the")  # merges applied


def test_logits_of_last_token_equal_last_row(tiny_model_dir):
    m = glq.load(tiny_model_dir)
    ids = m.tokenize(make_text(20, seed=2))[:33]
    all_logits = m.logits(ids, all=True)
    assert all_logits.shape == (33, TINY["vocab_size"])
    np.testing.assert_allclose(m.logits(ids), all_logits[-1], rtol=0, atol=1e-4)


def test_greedy_generation_follows_argmax(tiny_model_dir):
    m = glq.load(tiny_model_dir)
    prompt = m.tokenize("the man and the")
    new = m.generate_tokens(prompt, max_tokens=8, stop_at_eos=False)
    assert len(new) == 8
    ids = list(prompt)
    for t in new:  # each token is the argmax after everything before it, recomputed from scratch
        assert t == int(np.argmax(m.logits(ids)))
        ids.append(t)


def test_generate_text_and_stream(tiny_model_dir):
    m = glq.load(tiny_model_dir)
    pieces = []
    text = m.generate("the man and the", max_tokens=12, stream=pieces.append, stop_at_eos=False)
    assert isinstance(text, str) and "".join(pieces) == text
    ids = m.generate_tokens(m.tokenize("the man and the"), max_tokens=12, stop_at_eos=False)
    known = [i for i in ids if i < 269]  # ids of the padded vocabulary beyond the tokenizer have no text
    assert text == m.detokenize(known, skip_special=True)
    # Sampling is reproducible from the seed.
    a = m.generate("the", max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=3, stop_at_eos=False)
    b = m.generate("the", max_tokens=10, temperature=0.9, top_k=40, top_p=0.95, seed=3, stop_at_eos=False)
    assert a == b


def test_perplexity_matches_logits(tiny_model_dir, tmp_path):
    m = glq.load(tiny_model_dir)
    text = make_text(30, seed=4)
    ids = m.tokenize(text)
    assert 20 < len(ids) < TINY["max_position_embeddings"]
    r = m.perplexity(text, ctx=len(ids))
    lp = log_softmax(m.logits(ids, all=True))
    nll = -np.mean([lp[i, ids[i + 1]] for i in range(len(ids) - 1)])
    assert r["tokens"] == len(ids) - 1 and r["windows"] == 1
    assert r["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    # A file gives the same result as its text; max_tokens keeps the first tokens only.
    p = tmp_path / "t.txt"
    p.write_text(text)
    assert m.perplexity(p, ctx=len(ids))["ppl"] == r["ppl"]
    assert m.perplexity(path=str(p), ctx=len(ids))["ppl"] == r["ppl"]
    cut = m.perplexity(text, ctx=16, max_tokens=16)
    assert cut["tokens_evaluated"] == 16 and cut["tokens"] == 15
    seen = []
    m.perplexity(make_text(200, seed=5), ctx=32, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == list(range(1, len(seen) + 1))


def test_model_errors(tiny_model_dir, tmp_path):
    with pytest.raises(RuntimeError, match="nonexistent"):
        glq.load(tmp_path / "nonexistent")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(RuntimeError):
        glq.load(tmp_path / "broken")
    m = glq.load(tiny_model_dir)
    with pytest.raises(ValueError, match="out of range"):
        m.logits([1, 2, TINY["vocab_size"]])
    with pytest.raises(ValueError, match="context"):
        m.perplexity("the man", ctx=10_000)
    with pytest.raises(ValueError, match="top_p"):
        m.generate("the", top_p=0.0)
    with pytest.raises(ValueError, match="either"):
        m.perplexity("text", path="file")
    with pytest.raises(ValueError, match="layer"):
        m.linear(5, "q_proj")
    with pytest.raises(ValueError, match="unknown linear"):
        m.linear(0, "w_proj")


def test_quantize_pipeline(tiny_quantize_run, tiny_model_dir):
    run = tiny_quantize_run
    r = run["report"]
    assert r["out_dir"] == str(run["out"])
    assert len(r["linears"]) == 2 * 7
    assert all(l["bits"] == 4 and 0 <= l["proxy_loss"] < 0.05 for l in r["linears"])
    assert 4.0 < r["linear_bpw"] < 6.0
    kinds = [e["event"] for e in run["events"]]
    assert "note" in kinds and kinds.count("layer") == 2
    layers = [e for e in run["events"] if e["event"] == "layer"]
    assert [e["layer"] for e in layers] == [0, 1] and layers[0]["total"] == 2

    q = glq.load(run["out"])
    assert "GLQ" in q.describe()
    dense = glq.load(tiny_model_dir)
    ids = dense.tokenize(make_text(40, seed=6))[:48]
    a, b = dense.logits(ids, all=True), q.logits(ids, all=True)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.2

    lin = glq.checkpoint_linears(run["out"])
    names = [n for n, _, _ in lin]
    assert sorted(names) == sorted(f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
    name, mat, bias = lin[names.index("model.layers.0.mlp.down_proj")]
    assert bias is None and (mat.rows, mat.cols, mat.bits) == (48, 72, 4)
    from_model = q.linear(0, "down_proj")
    assert isinstance(from_model, glq.QuantizedMatrix)
    np.testing.assert_array_equal(from_model.dequantize(), mat.dequantize())


def test_quantize_stops_on_callback_error_and_resumes(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "resumed"

    class Stop(Exception):
        pass

    def stop_after_first_layer(e):
        if e["event"] == "layer":
            raise Stop("enough")

    with pytest.raises(Stop):
        glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=out, calib_seqs=4, seq_len=48,
                     progress=stop_after_first_layer)
    assert not out.exists()
    r = glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=out, calib_seqs=4, seq_len=48,
                     progress=False)
    assert r["resumed_layers"] == 1
    assert glq.load(out).linear(1, "q_proj").bits == 2


def test_quantize_finetune(tiny_model_dir, calib_file, tmp_path):
    out = tmp_path / "tuned"
    events = []
    r = glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=out, calib_seqs=4, seq_len=48,
                     finetune_epochs=2, finetune_lr=0.01, progress=events.append)
    ft = r["finetune"]
    assert ft["heldout_kl_before"] > 0 and ft["heldout_kl_after"] <= ft["heldout_kl_before"]
    assert 1 <= ft["epochs_run"] <= 2 and ft["epochs"] == 2 and ft["seconds"] > 0
    assert any(e["event"] == "note" and e["message"].startswith("finetune epoch") for e in events)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["finetune"]["epochs"] == 2
    assert np.isfinite(glq.load(out).logits([1, 2, 3])).all()
    plain = glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=tmp_path / "plain", calib_seqs=4,
                         seq_len=48, progress=False)
    assert "finetune" not in plain
    assert ft["bias"] is False
    biased = glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=tmp_path / "biased", calib_seqs=4,
                          seq_len=48, finetune_epochs=1, finetune_lr=0.002, finetune_bias=True, progress=False)
    assert biased["finetune"]["bias"] is True
    names = [name for name, _, bias in glq.checkpoint_linears(tmp_path / "biased") if bias is not None]
    assert len(names) == len(glq.checkpoint_linears(tmp_path / "biased"))
    staged = glq.quantize(tiny_model_dir, bits=3, calib=calib_file, out=tmp_path / "staged", calib_seqs=4,
                          seq_len=48, finetune_epochs=1, finetune_lr=0.002, finetune_stage_gains=True, progress=False)
    assert staged["finetune"]["stage_gains"] is True and biased["finetune"]["stage_gains"] is False
    assert np.isfinite(glq.load(tmp_path / "staged").logits([1, 2, 3])).all()


def test_quantize_errors(tiny_model_dir, calib_file, tmp_path):
    with pytest.raises(RuntimeError, match="missing.txt"):
        glq.quantize(tiny_model_dir, bits=2, calib=tmp_path / "missing.txt", out=tmp_path / "o", progress=False)
    with pytest.raises(ValueError):
        glq.quantize(tiny_model_dir, bits=2, out=tmp_path / "o", progress=False)
    with pytest.raises((ValueError, RuntimeError)):
        glq.quantize(tiny_model_dir, bits=7, calib=calib_file, out=tmp_path / "o", calib_seqs=4, seq_len=48,
                     progress=False)
    with pytest.raises(ValueError):  # more calibration tokens asked for than the text has
        glq.quantize(tiny_model_dir, bits=2, calib=calib_file, out=tmp_path / "o", calib_seqs=1000,
                     seq_len=512, progress=False)


# ---- the real model, against the `glq` command-line tool ------------------------------------

def glq_tool():
    for c in (os.environ.get("GLQ_BIN"), ROOT / "build" / "release" / "src" / "cli" / "glq", shutil.which("glq")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            probe = subprocess.run([str(c), "--help"], capture_output=True, text=True)
            if "perplexity" in probe.stdout and "run" in probe.stdout:  # a build with these commands
                return str(c)
    pytest.skip("the glq command-line tool is not built (scripts/setup.sh builds it)")


def test_smollm2_perplexity_and_generation_match_the_tool(smollm2_gguf, tmp_path):
    tool = glq_tool()
    text = (ROOT / "README.md").read_text()
    p = tmp_path / "text.txt"
    p.write_text(text)
    m = glq.load(smollm2_gguf)
    r = m.perplexity(text, ctx=128, max_tokens=384)
    out = subprocess.run([tool, "perplexity", str(smollm2_gguf), "--text", str(p), "--ctx", "128",
                          "--max-tokens", "384", "--json"], capture_output=True, text=True, check=True)
    j = json.loads(out.stdout.strip().splitlines()[-1])
    assert j["tokens"] == r["tokens"] and j["windows"] == r["windows"]
    assert r["ppl"] == pytest.approx(j["ppl"], rel=1e-6)
    assert 1 < r["ppl"] < 100

    prompt = "The capital of France is"
    ours = m.generate(prompt, max_tokens=16)
    out = subprocess.run([tool, "run", str(smollm2_gguf), "-p", prompt, "-n", "16"], capture_output=True,
                         text=True, check=True)
    assert out.stdout == prompt + ours + "\n"
