// A Model's weights on the GPU engine, and perplexity there (glq/model/cuda_model.hpp).
#ifdef GLQ_HAVE_CUDA

#include "glq/model/cuda_model.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "glq/error.hpp"

namespace glq::model {

namespace {

uint16_t to_bf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0x7F800000u) return static_cast<uint16_t>(u >> 16 | ((u & 0xFFFF) ? 0x40 : 0));
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

cuda::EngineLinear upload_linear(const Linear& l, const std::string& name) {
  if (l.empty()) throw_invalid(fmt::format("{}: the linear has no weight", name));
  cuda::EngineLinear out;
  if (const codec::QuantizedMatrix* q = l.quantized_weight()) {
    if (l.rows() % 8 || l.cols() % 8)
      throw_unsupported(fmt::format("{}: the GPU decode kernels need rows and cols that are multiples of 8, got {}x{}",
                                    name, l.rows(), l.cols()));
    out = cuda::EngineLinear::from(cuda::upload(*q));
  } else if (const float* w = l.dense_weight()) {
    out = cuda::EngineLinear::from(cuda::upload_dense_bf16(w, l.rows(), l.cols()));
  } else {  // 16-bit weights, or weights still in a mapped file: widened for the upload only
    const std::vector<float> dense = l.to_dense();
    out = cuda::EngineLinear::from(cuda::upload_dense_bf16(dense.data(), l.rows(), l.cols()));
  }
  if (!l.bias().empty()) {
    if (static_cast<int>(l.bias().size()) != l.rows())
      throw_mismatch(name + ".bias", std::to_string(l.rows()), std::to_string(l.bias().size()));
    out.bias = cuda::DeviceMemory(l.bias().size() * sizeof(float));
    out.bias.upload(l.bias().data(), l.bias().size() * sizeof(float));
  }
  return out;
}

}  // namespace

cuda::EngineConfig cuda_engine_config(const Model& model, int max_context, int slots) {
  const ModelConfig& m = model.config();
  if (max_context < 1 || max_context > m.max_context)
    throw_invalid(fmt::format("GPU context {} must be from 1 to the model's {}", max_context, m.max_context));
  if (slots < 1) throw_invalid(fmt::format("GPU KV-cache slots {} must be at least 1", slots));
  cuda::EngineConfig c;
  c.vocab = m.vocab_size;
  c.hidden = m.hidden_size;
  c.intermediate = m.intermediate_size;
  c.layers = m.num_layers;
  c.heads = m.num_heads;
  c.kv_heads = m.num_kv_heads;
  c.head_dim = m.head_dim;
  c.max_context = max_context;
  c.slots = slots;
  c.norm_eps = m.norm_eps;
  c.rope_inv_freq = model.rope_inv_freq();
  return c;
}

cuda::EngineWeights cuda_engine_weights(const Model& model) {
  const ModelConfig& c = model.config();
  cuda::EngineWeights w;
  // bf16 embedding table (vocab, hidden), converted a block of rows at a time (the embedding may
  // be read from a mapped file).
  {
    const int64_t V = c.vocab_size, H = c.hidden_size, block = 4096;
    w.embedding = cuda::DeviceMemory(static_cast<size_t>(V * H) * 2);
    std::vector<float> rows(static_cast<size_t>(std::min(V, block) * H));
    std::vector<uint16_t> half(rows.size());
    for (int64_t r = 0; r < V; r += block) {
      const int64_t n = std::min(block, V - r);
      model.embedding_rows(r, n, rows.data());
      for (size_t i = 0; i < static_cast<size_t>(n * H); ++i) half[i] = to_bf16(rows[i]);
      w.embedding.upload(half.data(), static_cast<size_t>(n * H) * 2, static_cast<size_t>(r * H) * 2);
    }
  }
  auto norm = [](const std::vector<float>& v) { return cuda::to_device(v); };
  for (int i = 0; i < model.num_layers(); ++i) {
    const DecoderLayer& L = model.layer(i);
    cuda::EngineLayer G;
    G.attn_norm = norm(L.attn_norm);
    G.mlp_norm = norm(L.mlp_norm);
    G.qkv.push_back(upload_linear(L.q, linear_tensor_prefix(i, LinearKind::Q)));
    G.qkv.push_back(upload_linear(L.k, linear_tensor_prefix(i, LinearKind::K)));
    G.qkv.push_back(upload_linear(L.v, linear_tensor_prefix(i, LinearKind::V)));
    G.o = upload_linear(L.o, linear_tensor_prefix(i, LinearKind::O));
    G.gate_up.push_back(upload_linear(L.gate, linear_tensor_prefix(i, LinearKind::Gate)));
    G.gate_up.push_back(upload_linear(L.up, linear_tensor_prefix(i, LinearKind::Up)));
    G.down = upload_linear(L.down, linear_tensor_prefix(i, LinearKind::Down));
    w.layers.push_back(std::move(G));
  }
  w.final_norm = norm(model.final_norm());
  w.lm_head = upload_linear(model.lm_head(), "lm_head");  // a tied head is a dense copy of the embedding
  return w;
}

CudaModel::CudaModel(const Model& model, int max_context, int slots, int device)
    : ctx_(std::make_unique<cuda::Context>(device)) {
  engine_ = std::make_unique<cuda::Engine>(*ctx_, cuda_engine_config(model, max_context, slots), cuda_engine_weights(model));
}

CudaModel::~CudaModel() = default;

PerplexityResult evaluate_perplexity_cuda(cuda::Engine& engine, std::span<const int32_t> tokens, int ctx,
                                          const std::function<void(int, int)>& progress) {
  if (ctx < 2) throw_invalid(fmt::format("perplexity context {} must be at least 2", ctx));
  if (tokens.size() < 2) throw_invalid(fmt::format("perplexity needs at least 2 tokens, got {}", tokens.size()));
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(tokens.size());
  int windows = static_cast<int>(n / ctx);
  const bool single_short = windows == 0;
  if (single_short) windows = 1;
  const int len = single_short ? static_cast<int>(n) : ctx;
  if (len > engine.config().max_context)
    throw_invalid(fmt::format("perplexity window of {} tokens exceeds the GPU context of {}", len, engine.config().max_context));
  const int piece = engine.max_step_tokens();
  PerplexityResult r;
  r.ctx = ctx;
  for (int w = 0; w < windows; ++w) {
    const int64_t begin = static_cast<int64_t>(w) * ctx;
    engine.reset();
    // Pieces of at most the engine's step size, each with the logits of all its tokens; the
    // token after each position is its target (the window's last token has none).
    for (int p = 0; p < len; p += piece) {
      const int m = std::min(piece, len - p);
      const int32_t* at = tokens.data() + begin + p;
      engine.forward(at, m, /*all_logits=*/true);
      const int rows = std::min(m, len - 1 - p);
      if (rows <= 0) continue;
      const std::vector<double> nll = engine.token_nll(at + 1, rows);
      for (double v : nll) r.nll_sum += v;
      r.tokens_scored += rows;
    }
    r.tokens_used += len;
    ++r.windows;
    if (progress) progress(w + 1, windows);
  }
  r.ppl = std::exp(r.nll_sum / static_cast<double>(r.tokens_scored));
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace glq::model

#endif  // GLQ_HAVE_CUDA
