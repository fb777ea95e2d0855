// The engine against a plain reference forward pass written out below, on tiny random models
// with awkward sizes; the cache, multi-sequence and layer-by-layer paths against each other.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <numbers>

#include "glq/error.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/perplexity.hpp"
#include "model_test_util.hpp"

namespace glq::model {
namespace {

using test::TensorBag;

// Plain reference: logits (n, vocab) of a whole sequence, straight from the tensors.
std::vector<float> reference_logits(const ModelConfig& c, const TensorBag& b, const std::vector<int32_t>& ids) {
  std::map<std::string, const std::vector<float>*> w;
  for (size_t i = 0; i < b.names.size(); ++i) w[b.names[i]] = &b.values[i];
  const int n = static_cast<int>(ids.size()), h = c.hidden_size, hd = c.head_dim;
  auto matvec = [](const std::vector<float>& W, const std::vector<float>* bias, const std::vector<double>& x, int rows) {
    const size_t cols = x.size();
    std::vector<double> y(static_cast<size_t>(rows));
    for (int r = 0; r < rows; ++r) {
      double s = bias ? (*bias)[static_cast<size_t>(r)] : 0.0;
      for (size_t k = 0; k < cols; ++k) s += static_cast<double>(W[r * cols + k]) * x[k];
      y[static_cast<size_t>(r)] = s;
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<double>& x, const std::vector<float>& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / x.size() + c.norm_eps);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  };
  // Inverse frequencies with the configured scaling.
  std::vector<double> inv(static_cast<size_t>(hd / 2));
  for (int i = 0; i < hd / 2; ++i) {
    double f = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / hd);
    const auto& rs = c.rope_scaling;
    if (rs.type == "llama3") {
      const double wl = 2 * std::numbers::pi / f, lo = rs.original_max_position / rs.low_freq_factor,
                   hi = rs.original_max_position / rs.high_freq_factor;
      if (wl > lo) f = f / rs.factor;
      else if (wl >= hi) {
        const double s = (rs.original_max_position / wl - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - s) * f / rs.factor + s * f;
      }
    }
    inv[static_cast<size_t>(i)] = f;
  }
  auto rope = [&](std::vector<double>& v, int heads, int pos) {
    for (int hh = 0; hh < heads; ++hh)
      for (int i = 0; i < hd / 2; ++i) {
        const double a = pos * inv[static_cast<size_t>(i)];
        double& x1 = v[static_cast<size_t>(hh * hd + i)];
        double& x2 = v[static_cast<size_t>(hh * hd + i + hd / 2)];
        const double y1 = x1 * std::cos(a) - x2 * std::sin(a), y2 = x2 * std::cos(a) + x1 * std::sin(a);
        x1 = y1;
        x2 = y2;
      }
  };
  auto get = [&](const std::string& name) -> const std::vector<float>* {
    auto it = w.find(name);
    return it == w.end() ? nullptr : it->second;
  };
  std::vector<std::vector<double>> x(static_cast<size_t>(n), std::vector<double>(static_cast<size_t>(h)));
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < h; ++i) x[t][i] = (*get("model.embed_tokens.weight"))[static_cast<size_t>(ids[t]) * h + i];
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const auto a = rmsnorm(x[t], *get(p + "input_layernorm.weight"));
      q[t] = matvec(*get(p + "self_attn.q_proj.weight"), get(p + "self_attn.q_proj.bias"), a, c.q_dim());
      k[t] = matvec(*get(p + "self_attn.k_proj.weight"), get(p + "self_attn.k_proj.bias"), a, c.kv_dim());
      v[t] = matvec(*get(p + "self_attn.v_proj.weight"), get(p + "self_attn.v_proj.bias"), a, c.kv_dim());
      rope(q[t], c.num_heads, t);
      rope(k[t], c.num_kv_heads, t);
    }
    const int group = c.num_heads / c.num_kv_heads;
    for (int t = 0; t < n; ++t) {
      std::vector<double> att(static_cast<size_t>(c.q_dim()), 0.0);
      for (int hh = 0; hh < c.num_heads; ++hh) {
        const int g = hh / group;
        std::vector<double> s(static_cast<size_t>(t + 1));
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double d = 0;
          for (int i = 0; i < hd; ++i) d += q[t][hh * hd + i] * k[j][g * hd + i];
          s[j] = d / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (auto& e : s) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int i = 0; i < hd; ++i) att[hh * hd + i] += s[j] / sum * v[j][g * hd + i];
      }
      const auto o = matvec(*get(p + "self_attn.o_proj.weight"), get(p + "self_attn.o_proj.bias"), att, h);
      for (int i = 0; i < h; ++i) x[t][i] += o[i];
      const auto m = rmsnorm(x[t], *get(p + "post_attention_layernorm.weight"));
      auto gt = matvec(*get(p + "mlp.gate_proj.weight"), nullptr, m, c.intermediate_size);
      const auto up = matvec(*get(p + "mlp.up_proj.weight"), nullptr, m, c.intermediate_size);
      for (size_t i = 0; i < gt.size(); ++i) gt[i] = gt[i] / (1 + std::exp(-gt[i])) * up[i];
      const auto d = matvec(*get(p + "mlp.down_proj.weight"), nullptr, gt, h);
      for (int i = 0; i < h; ++i) x[t][i] += d[i];
    }
  }
  const auto* head = get("lm_head.weight") ? get("lm_head.weight") : get("model.embed_tokens.weight");
  std::vector<float> out;
  for (int t = 0; t < n; ++t) {
    const auto y = matvec(*head, nullptr, rmsnorm(x[t], *get("model.norm.weight")), c.vocab_size);
    out.insert(out.end(), y.begin(), y.end());
  }
  return out;
}

double max_rel_diff(const float* a, const float* b, size_t n) {
  double worst = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
  return worst / scale;
}

std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return ids;
}

struct Tiny {
  ModelConfig config;
  TensorBag bag;
  test::TempDir dir;
  std::unique_ptr<Model> model;
  explicit Tiny(ModelConfig c, uint32_t seed = 1) : config(std::move(c)), bag(test::random_weights(config, seed)) {
    test::write_checkpoint(dir.path.string(), config, bag);
    LoadOptions o;
    o.load_tokenizer = false;
    model = load_model(dir.path.string(), o);
  }
};

class EngineArch : public ::testing::TestWithParam<int> {};

ModelConfig config_for(int variant) {
  ModelConfig c = test::tiny_config(variant == 1 ? Arch::Qwen2 : variant == 3 ? Arch::Mistral : Arch::Llama);
  if (variant == 2) {  // Llama 3 RoPE scaling, tied embeddings, no GQA
    c.rope_scaling.type = "llama3";
    c.rope_scaling.factor = 8.0f;
    c.rope_scaling.low_freq_factor = 1.0f;
    c.rope_scaling.high_freq_factor = 4.0f;
    c.rope_scaling.original_max_position = 16;
    c.rope_theta = 500000.0f;
    c.tie_embeddings = true;
    c.num_kv_heads = c.num_heads;
  }
  return c;
}

TEST_P(EngineArch, PrefillMatchesReference) {
  Tiny t(config_for(GetParam()));
  const auto ids = random_ids(19, t.config.vocab_size, 3);
  const auto want = reference_logits(t.config, t.bag, ids);
  KVCache cache = t.model->make_cache(32);
  std::vector<float> got(want.size());
  t.model->forward(ids, cache, got.data(), true);
  EXPECT_EQ(cache.size(), 19);
  EXPECT_LT(max_rel_diff(got.data(), want.data(), want.size()), 1e-4);
}

TEST_P(EngineArch, TokenByTokenDecodeMatchesReference) {
  Tiny t(config_for(GetParam()));
  const auto ids = random_ids(13, t.config.vocab_size, 4);
  const auto want = reference_logits(t.config, t.bag, ids);
  KVCache cache = t.model->make_cache(13);
  const int V = t.config.vocab_size;
  std::vector<float> got(static_cast<size_t>(V));
  // A prefix of 3 tokens (dot-product path), then one token at a time.
  t.model->forward(std::span<const int32_t>(ids).subspan(0, 3), cache, got.data());
  EXPECT_LT(max_rel_diff(got.data(), want.data() + 2 * V, static_cast<size_t>(V)), 1e-4);
  for (size_t i = 3; i < ids.size(); ++i) {
    t.model->forward(std::span<const int32_t>(ids).subspan(i, 1), cache, got.data());
    EXPECT_LT(max_rel_diff(got.data(), want.data() + i * V, static_cast<size_t>(V)), 1e-4) << "position " << i;
  }
  const int32_t one = 5;
  EXPECT_THROW(t.model->forward(std::span<const int32_t>(&one, 1), cache, got.data()), Error);  // cache full
}

std::string variant_name(const ::testing::TestParamInfo<int>& info) {
  static const char* const kNames[] = {"llama_gqa", "qwen2_bias", "llama3_rope_tied", "mistral"};
  return kNames[info.param];
}
INSTANTIATE_TEST_SUITE_P(Variants, EngineArch, ::testing::Values(0, 1, 2, 3), variant_name);

TEST(Engine, ForwardBatchEqualsSeparateSequences) {
  Tiny t(test::tiny_config());
  const int V = t.config.vocab_size;
  const auto a = random_ids(11, V, 5), b = random_ids(1, V, 6), c = random_ids(9, V, 7), past = random_ids(4, V, 8);
  // Sequence c already has 4 cached tokens.
  KVCache ca = t.model->make_cache(20), cb = t.model->make_cache(20), cc = t.model->make_cache(20);
  t.model->forward(past, cc, nullptr);
  std::vector<float> la(a.size() * V), lb(static_cast<size_t>(V)), lc(static_cast<size_t>(V));
  const BatchEntry entries[] = {{&ca, a, true, la.data()}, {&cb, b, false, lb.data()}, {&cc, c, false, lc.data()}};
  t.model->forward_batch(entries);
  auto seq_c = past;
  seq_c.insert(seq_c.end(), c.begin(), c.end());
  const auto ra = reference_logits(t.config, t.bag, a);
  const auto rb = reference_logits(t.config, t.bag, b);
  const auto rc = reference_logits(t.config, t.bag, seq_c);
  EXPECT_LT(max_rel_diff(la.data(), ra.data(), ra.size()), 1e-4);
  EXPECT_LT(max_rel_diff(lb.data(), rb.data(), static_cast<size_t>(V)), 1e-4);
  EXPECT_LT(max_rel_diff(lc.data(), rc.data() + (seq_c.size() - 1) * V, static_cast<size_t>(V)), 1e-4);
  EXPECT_EQ(cc.size(), 13);
  const BatchEntry shared[] = {{&ca, b, false, nullptr}, {&ca, b, false, nullptr}};
  EXPECT_THROW(t.model->forward_batch(shared), Error);
}

TEST(Engine, LayerByLayerWithHooksMatchesForward) {
  Tiny t(test::tiny_config(Arch::Qwen2));
  const int V = t.config.vocab_size, H = t.config.hidden_size;
  const auto ids = random_ids(17, V, 9);
  std::vector<float> hidden(ids.size() * H);
  t.model->embed(ids, hidden.data());
  std::map<std::pair<int, LinearKind>, int> calls;
  std::vector<float> q_input, k_input;
  LinearHook hook = [&](int layer, LinearKind kind, const float* x, int tokens, int cols) {
    calls[{layer, kind}]++;
    EXPECT_EQ(tokens, 17);
    EXPECT_EQ(cols, t.model->layer(layer).linear(kind).cols());
    if (layer == 1 && kind == LinearKind::Q) q_input.assign(x, x + tokens * cols);
    if (layer == 1 && kind == LinearKind::K) k_input.assign(x, x + tokens * cols);
  };
  for (int l = 0; l < t.model->num_layers(); ++l) t.model->run_layer(l, hidden.data(), 17, &hook);
  std::vector<float> logits(ids.size() * V);
  t.model->final_logits(hidden.data(), 17, logits.data());
  const auto want = reference_logits(t.config, t.bag, ids);
  EXPECT_LT(max_rel_diff(logits.data(), want.data(), want.size()), 1e-4);
  EXPECT_EQ(calls.size(), 2u * 7u);
  for (auto& [k, n] : calls) EXPECT_EQ(n, 1);
  EXPECT_EQ(q_input, k_input);
}

TEST(Engine, ReplacingALinearChangesTheOutput) {
  Tiny t(test::tiny_config());
  const auto ids = random_ids(7, t.config.vocab_size, 10);
  std::vector<float> before(static_cast<size_t>(t.config.vocab_size)), after(before.size());
  KVCache cache = t.model->make_cache(8);
  t.model->forward(ids, cache, before.data());
  Linear& down = t.model->layer(1).linear(LinearKind::Down);
  std::vector<float> w = down.to_dense();
  for (auto& x : w) x *= 0.5f;
  down = Linear::dense(std::move(w), down.rows(), down.cols());
  cache.clear();
  t.model->forward(ids, cache, after.data());
  EXPECT_GT(max_rel_diff(after.data(), before.data(), before.size()), 1e-3);
  // The change is exactly what the reference gives for the halved weight.
  for (size_t i = 0; i < t.bag.names.size(); ++i)
    if (t.bag.names[i] == "model.layers.1.mlp.down_proj.weight")
      for (auto& x : t.bag.values[i]) x *= 0.5f;
  const auto want = reference_logits(t.config, t.bag, ids);
  EXPECT_LT(max_rel_diff(after.data(), want.data() + 6 * t.config.vocab_size, after.size()), 1e-4);
}

TEST(Engine, BuildWithLinearProvider) {
  Tiny t(test::tiny_config());
  test::TempDir dir;
  ModelConfig c = t.config;
  // A source without any q_proj: the provider supplies them.
  TensorBag partial;
  std::map<int, std::vector<float>> q;
  for (size_t i = 0; i < t.bag.names.size(); ++i) {
    const auto& n = t.bag.names[i];
    if (n.find("q_proj") != std::string::npos) q[n[13] - '0'] = t.bag.values[i];
    else partial.add(n, t.bag.shapes[i], t.bag.values[i]);
  }
  test::write_checkpoint(dir.path.string(), c, partial);
  LoadOptions o;
  o.load_tokenizer = false;
  EXPECT_THROW(load_model(dir.path.string(), o), Error);  // missing q_proj
  int provided = 0;
  o.build.linear_provider = [&](int layer, LinearKind kind, int rows, int cols) -> std::optional<Linear> {
    if (kind != LinearKind::Q) return std::nullopt;
    ++provided;
    return Linear::dense(q.at(layer), rows, cols);
  };
  auto m = load_model(dir.path.string(), o);
  EXPECT_EQ(provided, c.num_layers);
  const auto ids = random_ids(5, c.vocab_size, 11);
  KVCache cache = m->make_cache(5);
  std::vector<float> got(static_cast<size_t>(c.vocab_size));
  m->forward(ids, cache, got.data());
  const auto want = reference_logits(c, t.bag, ids);
  EXPECT_LT(max_rel_diff(got.data(), want.data() + 4 * c.vocab_size, got.size()), 1e-4);
  o.build.linear_provider = [&](int, LinearKind, int rows, int cols) -> std::optional<Linear> {
    return Linear::dense(std::vector<float>(static_cast<size_t>(rows) * (cols + 8)), rows, cols + 8);
  };
  EXPECT_THROW(load_model(dir.path.string(), o), Error);  // wrong shape from the provider
}

TEST(Engine, PerplexityFollowsTheStatedProtocol) {
  Tiny t(test::tiny_config());
  const auto ids = random_ids(45, t.config.vocab_size, 12);
  const int ctx = 19;  // two windows of 19, the tail of 7 dropped
  const auto r = evaluate_perplexity(*t.model, ids, ctx);
  EXPECT_EQ(r.windows, 2);
  EXPECT_EQ(r.tokens_scored, 2 * 18);
  double nll = 0;
  for (int w = 0; w < 2; ++w) {
    std::vector<int32_t> win(ids.begin() + w * ctx, ids.begin() + (w + 1) * ctx);
    const auto lg = reference_logits(t.config, t.bag, win);
    const int V = t.config.vocab_size;
    for (int p = 0; p + 1 < ctx; ++p) {
      const float* row = lg.data() + static_cast<size_t>(p) * V;
      double mx = row[0], s = 0;
      for (int j = 0; j < V; ++j) mx = std::max<double>(mx, row[j]);
      for (int j = 0; j < V; ++j) s += std::exp(row[j] - mx);
      nll += mx + std::log(s) - row[win[static_cast<size_t>(p) + 1]];
    }
  }
  EXPECT_NEAR(r.ppl, std::exp(nll / 36), 1e-3 * r.ppl);
}

TEST(Engine, ClearErrors) {
  Tiny t(test::tiny_config());
  KVCache cache = t.model->make_cache(8);
  const int32_t bad = t.config.vocab_size;
  std::vector<float> out(static_cast<size_t>(t.config.vocab_size));
  try {
    t.model->forward(std::span<const int32_t>(&bad, 1), cache, out.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("111"), std::string::npos) << e.what();
  }
  // Unknown architecture, missing and mis-shaped tensors name what is wrong.
  test::TempDir dir;
  std::ofstream(dir.file("config.json")) << "{\"model_type\": \"gpt_neox\", \"vocab_size\": 10}";
  try {
    load_config(dir.path.string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Unsupported);
    EXPECT_NE(std::string(e.what()).find("gpt_neox"), std::string::npos) << e.what();
  }
  TensorBag bag = t.bag;
  for (size_t i = 0; i < bag.names.size(); ++i)
    if (bag.names[i] == "model.layers.1.self_attn.v_proj.weight") {
      bag.shapes[i] = {t.config.kv_dim() / 2, t.config.hidden_size * 2};
    }
  test::TempDir d2;
  test::write_checkpoint(d2.path.string(), t.config, bag);
  LoadOptions o;
  o.load_tokenizer = false;
  try {
    load_model(d2.path.string(), o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.self_attn.v_proj.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[16, 48]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace glq::model
