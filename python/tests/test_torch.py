"""glq.torch: QuantizedLinear against the dense reference, the custom op, and Transformers models
with their linears swapped from a GLQ checkpoint. Skipped when PyTorch is not installed."""
import io
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import glq  # noqa: E402
from glq.torch import QuantizedLinear, load_hf_model, replace_linears  # noqa: E402
from conftest import make_text  # noqa: E402


def quantized(rows, cols, bits=3, seed=0):
    W = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return glq.quantize_matrix(W, bits=bits, seed=seed)


def dense_reference(layer, x):
    y = x.double() @ layer.dequantize_weight().double().T
    if layer.bias is not None:
        y = y + layer.bias.double()
    return y


def test_forward_matches_dense_reference_on_cpu():
    q = quantized(72, 104, bits=3)
    bias = np.random.default_rng(1).standard_normal(72).astype(np.float32)
    layer = QuantizedLinear(q, bias)
    assert (layer.in_features, layer.out_features, layer.bits) == (104, 72, 3)
    for shape in [(1, 104), (19, 104), (2, 5, 104), (104,)]:
        x = torch.randn(*shape)
        y = layer(x)
        assert y.shape == (*shape[:-1], 72) and y.dtype == torch.float32
        ref = dense_reference(layer, x)
        torch.testing.assert_close(y.double(), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)
    # Other dtypes: computed in float32, returned in the input's dtype.
    x = torch.randn(3, 104, dtype=torch.float64)
    assert layer(x).dtype == torch.float64
    xb = torch.randn(3, 104).to(torch.bfloat16)
    yb = layer(xb)
    assert yb.dtype == torch.bfloat16
    ref = dense_reference(layer, xb.float())
    torch.testing.assert_close(yb.double(), ref, atol=2e-2 * ref.abs().max().item(), rtol=0)
    # Non-contiguous input and an empty batch.
    xt = torch.randn(104, 6).T
    torch.testing.assert_close(layer(xt), layer(xt.contiguous()))
    assert layer(torch.empty(0, 104)).shape == (0, 72)


def test_same_numbers_as_numpy_matvec():
    q = quantized(24, 40, bits=2)
    layer = QuantizedLinear(q)
    x = np.random.default_rng(2).standard_normal((7, 40)).astype(np.float32)
    np.testing.assert_array_equal(layer(torch.from_numpy(x)).numpy(), q.matvec(x))


def test_from_linear_is_close_to_the_dense_layer():
    torch.manual_seed(0)
    dense = torch.nn.Linear(104, 72, bias=True)
    layer = QuantizedLinear.from_linear(dense, bits=4)
    x = torch.randn(11, 104)
    with torch.no_grad():
        want = dense(x)
        got = layer(x)
    assert (got - want).norm() / want.norm() < 0.1
    torch.testing.assert_close(layer.bias, dense.bias.detach())


def test_gradient_with_respect_to_the_input():
    layer = QuantizedLinear(quantized(24, 40, bits=4, seed=3))
    x = torch.randn(5, 40, requires_grad=True)
    g = torch.randn(5, 24)
    (layer(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g @ layer.dequantize_weight(), atol=1e-5, rtol=1e-5)


def test_custom_op_registration():
    layer = QuantizedLinear(quantized(24, 40))
    torch.library.opcheck(torch.ops.glq.qmatmul.default, (torch.randn(3, 40), layer._handle, 24))
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 40)
    torch.testing.assert_close(compiled(x), layer(x))


def test_save_and_load_the_module():
    layer = QuantizedLinear(quantized(24, 40), np.arange(24, dtype=np.float32))
    x = torch.randn(2, 40)
    for clone in (pickle.loads(pickle.dumps(layer)), _torch_round_trip(layer)):
        assert clone._handle != layer._handle
        torch.testing.assert_close(clone(x), layer(x))


def _torch_round_trip(module):
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_layer_errors():
    layer = QuantizedLinear(quantized(24, 40))
    with pytest.raises(ValueError, match="40"):
        layer(torch.randn(3, 41))
    with pytest.raises(TypeError):
        QuantizedLinear(np.zeros((24, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="bias"):
        QuantizedLinear(quantized(24, 40), np.zeros(23, dtype=np.float32))
    with pytest.raises(ValueError, match="handle"):
        torch.ops.glq.qmatmul(torch.randn(1, 40), 10 ** 9, 24)
    if not glq.has_cuda and torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            layer(torch.randn(1, 40, device="cuda"))


# ---- Transformers ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def test_replace_linears_matches_the_glq_engine(transformers, tiny_model_dir, tiny_checkpoint):
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    engine = glq.load(tiny_checkpoint)
    ids = engine.tokenize(make_text(30, seed=9))[:40]
    with torch.no_grad():
        dense_logits = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(dense_logits, glq.load(tiny_model_dir).logits(ids, all=True), atol=1e-4, rtol=0)

    r = replace_linears(hf, tiny_checkpoint)
    assert len(r["replaced"]) == 14
    assert "model.embed_tokens.weight" in r["loaded"] and "model.norm.weight" in r["loaded"]
    assert isinstance(hf.model.layers[1].mlp.down_proj, QuantizedLinear)
    with torch.no_grad():
        got = hf(torch.tensor([ids])).logits[0].numpy()
    want = engine.logits(ids, all=True)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max(), rtol=0)
    assert np.abs(got - dense_logits).max() > 1e-3  # the quantized layers are in use


def test_load_hf_model_from_the_checkpoint_alone(transformers, tiny_checkpoint):
    model = load_hf_model(tiny_checkpoint)
    engine = glq.load(tiny_checkpoint)
    ids = engine.tokenize(make_text(25, seed=10))[:30]
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0].numpy()
    want = engine.logits(ids, all=True)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max(), rtol=0)
    # Greedy decoding with the KV cache agrees with the engine's.
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out[0, len(ids):].tolist() == engine.generate_tokens(ids, max_tokens=6, stop_at_eos=False)


def test_replace_linears_rejects_a_model_of_another_shape(transformers, tiny_checkpoint):
    import json
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg.pop("quantization_config")
    cfg["intermediate_size"] = 80
    config = transformers.LlamaConfig(**cfg)
    model = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="mlp"):
        replace_linears(model, tiny_checkpoint)


def test_from_checkpoint(tiny_checkpoint):
    layer = QuantizedLinear.from_checkpoint(tiny_checkpoint, "model.layers.1.self_attn.o_proj")
    assert (layer.out_features, layer.in_features, layer.bits) == (48, 48, 4)
    with pytest.raises(ValueError, match="no quantized linear"):
        QuantizedLinear.from_checkpoint(tiny_checkpoint, "model.layers.9.self_attn.o_proj")


# ---- CUDA (a build with GLQ_CUDA=1 on a machine with a GPU) -----------------------------------

cuda_only = pytest.mark.skipif(not (glq.has_cuda and torch.cuda.is_available()),
                               reason="needs a GLQ_CUDA build and a CUDA device")


@cuda_only
@pytest.mark.parametrize("batch", [1, 5, 19, 40])
def test_cuda_forward_matches_cpu(batch):
    layer = QuantizedLinear(quantized(152, 104, bits=4), np.ones(152, dtype=np.float32))
    x = torch.randn(batch, 104)
    want = layer(x)
    got = layer.to("cuda")(x.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=5e-3 * want.abs().max().item(), rtol=0)


@cuda_only
def test_cuda_graph_capture_and_replay():
    layer = QuantizedLinear(quantized(152, 104, bits=2)).to("cuda").prepare("cuda", max_batch=4)
    static_x = torch.randn(4, 104, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        layer(static_x)  # warm-up on a side stream, as PyTorch recommends
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_y = layer(static_x)
    for _ in range(3):
        x = torch.randn(4, 104)
        static_x.copy_(x.cuda())
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(static_y.cpu(), layer(x), atol=5e-3 * static_y.abs().max().item(), rtol=0)
