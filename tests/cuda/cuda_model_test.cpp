// The GPU engine built from a glq::model::Model (glq/model/cuda_model.hpp) against the CPU
// engine on the same weights: a small random model of awkward shape (hidden 152 = 19 groups of
// 8, 3 heads of 24 with one KV head, SwiGLU 200, vocabulary 389, tied embedding), its linears
// GLQ-quantized at 2/3/4 bits with their own transforms, with and without Qwen2-style q/k/v
// biases, and a mixed variant (o_proj and gate dense float32, the head a 16-bit copy of the
// embedding, as GLQ checkpoints keep it). Checks one-pass and one-at-a-time logits, and several sequences stepped together in
// their own KV-cache slots (prefill chunks, graph-replayed decode passes, a slot reused).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/kernels/cuda.hpp"
#include "glq/model/cuda_model.hpp"
#include "glq/model/model.hpp"
#include "glq/transform/hadamard.hpp"
#include "cuda_test_util.hpp"

namespace {

using glq::model::Linear;

enum class Variant { Quantized, QkvBiases, Mixed };

std::vector<float> dense_weights(int rows, int cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f / std::sqrt(float(cols)));
  std::vector<float> w(size_t(rows) * cols);
  for (auto& x : w) x = nd(rng);
  return w;
}

std::unique_ptr<glq::model::Model> random_model(Variant variant, uint64_t seed) {
  const bool biases = variant == Variant::QkvBiases, mixed = variant == Variant::Mixed;
  glq::model::ModelConfig c;
  c.arch = biases ? glq::model::Arch::Qwen2 : glq::model::Arch::Llama;
  c.vocab_size = 389;
  c.hidden_size = 152;
  c.intermediate_size = 200;
  c.num_layers = 2;
  c.num_heads = 3;
  c.num_kv_heads = 1;
  c.head_dim = 24;
  c.max_context = 256;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.tie_embeddings = true;
  c.attention_bias = biases;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.8f, 1.2f);
  auto vec = [&](size_t n, float scale) {
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng) * scale;
    return v;
  };
  auto emb = std::make_shared<std::vector<float>>(vec(size_t(c.vocab_size) * c.hidden_size, 1.0f));
  std::vector<glq::model::DecoderLayer> layers;
  uint64_t s = seed * 100;
  for (int l = 0; l < c.num_layers; ++l) {
    glq::model::DecoderLayer L;
    L.attn_norm.resize(c.hidden_size);
    L.mlp_norm.resize(c.hidden_size);
    for (auto& v : L.attn_norm) v = ud(rng);
    for (auto& v : L.mlp_norm) v = ud(rng);
    const int h = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim(), f = c.intermediate_size;
    L.q = Linear::quantized(glq::test::random_quantized(qd, h, 2, s++), biases ? vec(qd, 0.3f) : std::vector<float>{});
    L.k = Linear::quantized(glq::test::random_quantized(kvd, h, 3, s++), biases ? vec(kvd, 0.3f) : std::vector<float>{});
    L.v = Linear::quantized(glq::test::random_quantized(kvd, h, 4, s++), biases ? vec(kvd, 0.3f) : std::vector<float>{});
    L.o = mixed ? Linear::dense(dense_weights(h, qd, s++), h, qd) : Linear::quantized(glq::test::random_quantized(h, qd, 2, s++));
    L.gate = mixed ? Linear::dense(dense_weights(f, h, s++), f, h) : Linear::quantized(glq::test::random_quantized(f, h, 3, s++));
    L.up = Linear::quantized(glq::test::random_quantized(f, h, 2, s++));
    L.down = Linear::quantized(glq::test::random_quantized(h, f, 4, s++));
    layers.push_back(std::move(L));
  }
  std::vector<float> final_norm(c.hidden_size);
  for (auto& v : final_norm) v = ud(rng);
  // A tied head, scaled down through the final norm's weights so that logits stay O(1).
  for (auto& v : final_norm) v *= 1.0f / std::sqrt(float(c.hidden_size));
  Linear head = mixed ? Linear::dense16_from(*emb, c.vocab_size, c.hidden_size)
                      : Linear::dense_shared(emb, c.vocab_size, c.hidden_size);
  return std::make_unique<glq::model::Model>(c, emb, std::move(layers), std::move(final_norm), std::move(head));
}

double rel_err(const float* got, const float* ref, int n) { return glq::test::rel_err(got, ref, size_t(n)); }

std::vector<int32_t> tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(rng() % uint64_t(vocab));
  return t;
}

constexpr double kTol = 2e-2;

class CudaModelTest : public ::testing::TestWithParam<Variant> {};

TEST_P(CudaModelTest, LogitsMatchTheCpuEngine) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const auto m = random_model(GetParam(), 7);
  const int V = m->vocab_size();
  glq::model::CudaModel gpu(*m, 96);
  auto& e = gpu.engine();
  const auto ids = tokens(37, V, 11);
  const int prefill = 29;
  // CPU: the prefill in one pass, then one token at a time.
  glq::model::KVCache cache = m->make_cache(96);
  std::vector<float> cpu(size_t(ids.size()) * V);
  m->forward(std::span<const int32_t>(ids.data(), prefill), cache, cpu.data(), true);
  for (size_t t = prefill; t < ids.size(); ++t) m->forward(std::span<const int32_t>(&ids[t], 1), cache, cpu.data() + t * V);
  // GPU: the same (the third single-token step on replays the captured graph).
  e.forward(ids.data(), prefill, true);
  const auto pre = e.logits_host(prefill);
  for (int t = 0; t < prefill; ++t)
    EXPECT_LT(rel_err(pre.data() + size_t(t) * V, cpu.data() + size_t(t) * V, V), kTol) << "one pass, token " << t;
  for (size_t t = prefill; t < ids.size(); ++t) {
    e.forward(&ids[t], 1);
    const auto l = e.logits_host(1);
    EXPECT_LT(rel_err(l.data(), cpu.data() + t * V, V), kTol) << "one at a time, token " << t;
  }
  EXPECT_EQ(e.position(), int(ids.size()));
  // truncate() and continue: the logits of the truncated position again.
  e.truncate(prefill - 1);
  e.forward(&ids[prefill - 1], 1);
  EXPECT_LT(rel_err(e.logits_host(1).data(), cpu.data() + size_t(prefill - 1) * V, V), kTol) << "after truncate";

  // Perplexity on the device against the CPU's log-likelihoods of the same logits.
  const auto win = tokens(64, V, 12);
  glq::model::KVCache c2 = m->make_cache(64);
  std::vector<float> l2(size_t(64) * V);
  m->forward(win, c2, l2.data(), true);
  double nll = 0;
  for (int t = 0; t + 1 < 64; ++t) {
    const float* row = l2.data() + size_t(t) * V;
    double mx = row[0], s = 0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, double(row[j]));
    for (int j = 0; j < V; ++j) s += std::exp(row[j] - mx);
    nll += std::log(s) + mx - row[win[t + 1]];
  }
  const auto r = glq::model::evaluate_perplexity_cuda(e, win, 32);  // two windows of 32
  const auto r_cpu = glq::model::evaluate_perplexity(*m, win, 32);
  EXPECT_EQ(r.tokens_scored, r_cpu.tokens_scored);
  EXPECT_NEAR(r.ppl / r_cpu.ppl, 1.0, 5e-3);
  EXPECT_GT(nll, 0.0);
}

TEST_P(CudaModelTest, SlotsSteppedTogetherMatchSeparateSequences) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const auto m = random_model(GetParam(), 8);
  const int V = m->vocab_size();
  const int S = 3, ctx = 80;
  glq::model::CudaModel gpu(*m, ctx, S);
  auto& e = gpu.engine();
  // Three sequences of different lengths; decode steps feed each its own continuation.
  const std::vector<std::vector<int32_t>> prompts = {tokens(11, V, 21), tokens(5, V, 22), tokens(23, V, 23)};
  const int steps = 6;
  std::vector<std::vector<int32_t>> cont;
  for (int i = 0; i < S; ++i) cont.push_back(tokens(steps, V, 31 + i));
  std::vector<glq::model::KVCache> caches;
  for (int i = 0; i < S; ++i) caches.push_back(m->make_cache(ctx));
  std::vector<std::vector<float>> got(S, std::vector<float>(V)), want(S, std::vector<float>(V));
  // Prefill: slot order 2, 0, 1 (slots need not be in order); all in one call.
  std::vector<glq::cuda::SlotStep> st;
  for (int i : {2, 0, 1}) st.push_back({i, 0, prompts[i].data(), int(prompts[i].size()), got[i].data()});
  e.forward_slots(st.data(), int(st.size()));
  for (int i = 0; i < S; ++i) {
    m->forward(prompts[i], caches[i], want[i].data());
    EXPECT_LT(rel_err(got[i].data(), want[i].data(), V), kTol) << "prefill of slot " << i;
  }
  // Decode passes of all three (graph from the second on), and one pass with slot 1 alone.
  for (int k = 0; k < steps; ++k) {
    st.clear();
    for (int i = 0; i < S; ++i)
      if (k != 3 || i == 1) st.push_back({i, caches[i].size(), &cont[i][k], 1, got[i].data()});
    e.forward_slots(st.data(), int(st.size()));
    for (const auto& x : st) {
      m->forward(std::span<const int32_t>(&cont[x.slot][k], 1), caches[x.slot], want[x.slot].data());
      EXPECT_LT(rel_err(got[x.slot].data(), want[x.slot].data(), V), kTol) << "decode step " << k << " slot " << x.slot;
    }
  }
  // Slot 0 starts a new sequence while slot 2 goes on: a prefill and a decode token in one pass.
  const auto fresh = tokens(9, V, 41);
  const int32_t next = 5;
  glq::model::KVCache c0 = m->make_cache(ctx);
  st = {{0, 0, fresh.data(), int(fresh.size()), got[0].data()}, {2, caches[2].size(), &next, 1, got[2].data()}};
  e.forward_slots(st.data(), int(st.size()));
  m->forward(fresh, c0, want[0].data());
  m->forward(std::span<const int32_t>(&next, 1), caches[2], want[2].data());
  EXPECT_LT(rel_err(got[0].data(), want[0].data(), V), kTol) << "reused slot";
  EXPECT_LT(rel_err(got[2].data(), want[2].data(), V), kTol) << "slot beside a prefill";
  // Errors: a slot twice, a slot out of range, positions beyond the capacity.
  st = {{1, 0, fresh.data(), 2, nullptr}, {1, 0, fresh.data(), 2, nullptr}};
  EXPECT_THROW(e.forward_slots(st.data(), 2), glq::Error);
  st = {{S, 0, fresh.data(), 2, nullptr}};
  EXPECT_THROW(e.forward_slots(st.data(), 1), glq::Error);
  st = {{0, ctx - 1, fresh.data(), 2, nullptr}};
  EXPECT_THROW(e.forward_slots(st.data(), 1), glq::Error);
}

TEST_P(CudaModelTest, LongPromptsAreCutIntoSeveralPasses) {
  if (glq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  const auto m = random_model(GetParam(), 9);
  const int V = m->vocab_size();
  // max_context 200 gives a step of 200 tokens: 150 + 120 prompt tokens take two passes.
  glq::model::CudaModel gpu(*m, 200, 2);
  auto& e = gpu.engine();
  ASSERT_EQ(e.max_step_tokens(), 200);
  const auto a = tokens(150, V, 51), b = tokens(120, V, 52);
  std::vector<float> ga(V), gb(V), wa(V), wb(V);
  std::vector<glq::cuda::SlotStep> st = {{0, 0, a.data(), 150, ga.data()}, {1, 0, b.data(), 120, gb.data()}};
  e.forward_slots(st.data(), 2);
  glq::model::KVCache ca = m->make_cache(200), cb = m->make_cache(200);
  m->forward(a, ca, wa.data());
  m->forward(b, cb, wb.data());
  EXPECT_LT(rel_err(ga.data(), wa.data(), V), kTol);
  EXPECT_LT(rel_err(gb.data(), wb.data(), V), kTol);
}

INSTANTIATE_TEST_SUITE_P(Variants, CudaModelTest, ::testing::Values(Variant::Quantized, Variant::QkvBiases, Variant::Mixed),
                         [](const auto& info) {
                           return info.param == Variant::Quantized ? "Quantized"
                                  : info.param == Variant::QkvBiases ? "QkvBiases" : "Mixed";
                         });

}  // namespace
