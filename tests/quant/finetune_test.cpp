// End-to-end tuning of row and norm gains (glq/model/finetune.hpp): its forward pass against
// Model's, its gradient against central differences (double precision), and the tuning loop
// recovering row scalings and output offsets that were put into a model on purpose.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <tuple>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/error.hpp"
#include "glq/model/finetune.hpp"
#include "glq/model/loader.hpp"
#include "quant/quant_test_util.hpp"

namespace glq {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<model::Model> tiny_model(const std::string& name, int layers, bool tied, bool bias = false) {
  const std::string dir = (fs::temp_directory_path() / ("glq_ft_" + name)).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  auto c = quant_test::tiny_config(layers);
  c.vocab_size = 97;
  c.hidden_size = 32;
  c.intermediate_size = 40;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.tie_embeddings = tied;
  c.arch = bias ? model::Arch::Qwen2 : model::Arch::Llama;
  c.attention_bias = bias;
  model::test::write_checkpoint(dir, c, model::test::random_weights(c, 11));
  quant_test::write_byte_tokenizer(dir);
  auto m = model::load_model(dir);
  fs::remove_all(dir);
  return m;
}

std::vector<float> final_hidden(const model::Model& m, const std::vector<int32_t>& tokens) {
  std::vector<float> h(tokens.size() * size_t(m.hidden_size()));
  m.embed(tokens, h.data());
  for (int l = 0; l < m.num_layers(); ++l) m.run_layer(l, h.data(), int(tokens.size()));
  return h;
}

// Every linear of m quantized at `bits` (seeded per linear).
void quantize_all(model::Model& m, int bits) {
  for (int l = 0; l < m.num_layers(); ++l)
    for (auto k : model::kAllLinearKinds) {
      auto& lin = m.layer(l).linear(k);
      codec::QuantizeOptions o;
      o.bits = bits;
      o.seed = 100 + 7 * uint64_t(l) + uint64_t(k);
      const std::vector<float> w = lin.to_dense();
      lin = model::Linear::quantized(codec::quantize_matrix(w, lin.rows(), lin.cols(), {}, o));
    }
}

// Scales every row of every linear by a random factor in [1 - amp, 1 + amp] (what row gains can
// undo exactly) and every norm weight likewise.
void perturb(model::Model& m, float amp, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(1.0f - amp, 1.0f + amp);
  for (int l = 0; l < m.num_layers(); ++l) {
    auto& D = m.layer(l);
    for (auto k : model::kAllLinearKinds) {
      auto& lin = D.linear(k);
      std::vector<float> w = lin.to_dense();
      for (int r = 0; r < lin.rows(); ++r) {
        const float f = u(rng);
        for (int c = 0; c < lin.cols(); ++c) w[size_t(r) * lin.cols() + c] *= f;
      }
      const std::vector<float> bias(lin.bias().begin(), lin.bias().end());
      const int rows = lin.rows(), cols = lin.cols();
      lin = model::Linear::dense(std::move(w), rows, cols, bias);
    }
    for (auto& g : D.attn_norm) g *= u(rng);
    for (auto& g : D.mlp_norm) g *= u(rng);
  }
}

std::vector<int32_t> tokens_of(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(rng() % uint32_t(vocab));
  return t;
}

// `n` windows of `len` random tokens with the teacher's final hidden states: the first `train`
// for training, the rest for validation.
struct Windows {
  std::vector<std::vector<int32_t>> train_w, val_w;
  std::vector<std::vector<float>> train_h, val_h;
};
Windows make_windows(const model::Model& teacher, int vocab, int n, int len, int train, uint32_t seed) {
  Windows ws;
  for (int w = 0; w < n; ++w) {
    auto t = tokens_of(len, vocab, seed + uint32_t(w));
    auto h = final_hidden(teacher, t);
    (w < train ? ws.train_w : ws.val_w).push_back(std::move(t));
    (w < train ? ws.train_h : ws.val_h).push_back(std::move(h));
  }
  return ws;
}

TEST(Finetune, ForwardMatchesTheModel) {
  // Teacher = the model itself: the KL of the model against its own final hidden states is zero
  // only if the tuning code's forward pass is Model's (RoPE, attention, SwiGLU, norms, head).
  for (bool tied : {true, false})
    for (bool bias : {false, true}) {
      auto m = tiny_model("fwd", 2, tied, bias);
      const auto tok = tokens_of(23, m->vocab_size(), 5);
      const auto h = final_hidden(*m, tok);
      const double kl = model::finetune_loss_double(*m, tok, h, m->final_norm(), -1, 0, nullptr);
      EXPECT_LT(kl, 1e-9) << "tied " << tied << " bias " << bias;
      // A different teacher gives a clearly positive KL (the check can fail).
      auto h2 = h;
      for (size_t i = 0; i < h2.size(); i += 3) h2[i] += 0.5f;
      EXPECT_GT(model::finetune_loss_double(*m, tok, h2, m->final_norm(), -1, 0, nullptr), 1e-4);
    }
}

// The gradient g (finetune_loss_double's, all factors at their start) against central differences
// of the loss at the parameters `at`.
void expect_central_differences(const model::Model& student, const std::vector<int32_t>& tok, const std::vector<float>& h,
                                const std::vector<float>& teacher_norm, const std::vector<double>& g,
                                const std::vector<int64_t>& at, bool tuned_bias, bool stage_gains) {
  const double eps = 1e-5;
  for (int64_t i : at) {
    const double fp = model::finetune_loss_double(student, tok, h, teacher_norm, i, eps, nullptr, tuned_bias, stage_gains);
    const double fm = model::finetune_loss_double(student, tok, h, teacher_norm, i, -eps, nullptr, tuned_bias, stage_gains);
    const double num = (fp - fm) / (2 * eps);
    EXPECT_LT(std::abs(num - g[size_t(i)]) / (std::abs(num) + 1e-6), 1e-4)
        << "parameter " << i << " of " << g.size() << ": analytic " << g[size_t(i)] << ", numeric " << num
        << " (tuned biases " << tuned_bias << ", stage gains " << stage_gains << ")";
  }
}

// With `tuned` the tuned biases are parameters too (after the gains); `bias`: the model has biases
// of its own.
TEST(Finetune, GradientMatchesCentralDifferences) {
  for (bool tuned : {false, true})
    for (bool bias : {false, true}) {
      SCOPED_TRACE(bias ? "a model with biases of its own" : "a model without biases");
      auto teacher = tiny_model("grad_t", 2, true, bias);
      auto student = tiny_model("grad_s", 2, true, bias);
      perturb(*student, 0.3f, 9);
      const auto tok = tokens_of(19, student->vocab_size(), 8);
      const auto h = final_hidden(*teacher, tok);
      std::vector<double> g;
      const double f0 = model::finetune_loss_double(*student, tok, h, teacher->final_norm(), -1, 0, &g, tuned);
      ASSERT_GT(f0, 1e-3);
      const int64_t n = model::finetune_parameter_count(*student, tuned);
      ASSERT_EQ(int64_t(g.size()), n);
      if (tuned) {
        EXPECT_EQ(n, 2 * model::finetune_parameter_count(*student) - 2 * student->hidden_size() * student->num_layers() -
                         student->hidden_size());
        // The biases start at 0: the loss is the untuned one.
        EXPECT_NEAR(f0, model::finetune_loss_double(*student, tok, h, teacher->final_norm(), -1, 0, nullptr), 1e-12);
      }
      // Every 7th parameter (all kinds of gain and bias are hit: each block is longer than 7) and the last.
      std::vector<int64_t> at;
      for (int64_t i = 0; i < n - 1; i += 7) at.push_back(i);
      at.push_back(n - 1);
      EXPECT_GT(at.size(), tuned ? 100u : 50u);
      expect_central_differences(*student, tok, h, teacher->final_norm(), g, at, tuned, false);
    }
}

// Gains per stage (4 bits: two stages): their gradients too, the later stages' gains after
// everything else.
TEST(Finetune, StageGainsGradientMatchesCentralDifferences) {
  auto teacher = tiny_model("sgrad_t", 2, true);
  auto student = tiny_model("sgrad_s", 2, true);
  quantize_all(*student, 4);
  const auto tok = tokens_of(17, student->vocab_size(), 8);
  const auto h = final_hidden(*teacher, tok);
  for (bool bias : {false, true}) {
    std::vector<double> g;
    const double f0 = model::finetune_loss_double(*student, tok, h, teacher->final_norm(), -1, 0, &g, bias, true);
    const int64_t n = model::finetune_parameter_count(*student, bias, true);
    ASSERT_EQ(int64_t(g.size()), n);
    int64_t rows = 0;
    for (int l = 0; l < student->num_layers(); ++l)
      for (auto k : model::kAllLinearKinds) rows += student->layer(l).linear(k).rows();
    EXPECT_EQ(n, model::finetune_parameter_count(*student, bias) + rows);
    // All gains 1: the model as it is (up to float rounding: the stages are dequantized apart).
    EXPECT_NEAR(f0, model::finetune_loss_double(*student, tok, h, teacher->final_norm(), -1, 0, nullptr), 1e-5 * f0);
    // Every 5th parameter of the later-stage gains (the last rows block) and every 11th before.
    std::vector<int64_t> at;
    int later = 0;
    for (int64_t i = 0; i < n; i += i >= n - rows ? 5 : 11) {
      at.push_back(i);
      later += i >= n - rows;
    }
    EXPECT_GT(later, 20);
    expect_central_differences(*student, tok, h, teacher->final_norm(), g, at, bias, true);
  }
}

TEST(Finetune, RecoversRowAndNormScalings) {
  auto teacher = tiny_model("fit_t", 2, true);
  auto student = tiny_model("fit_s", 2, true);
  perturb(*student, 0.15f, 21);
  std::vector<std::vector<int32_t>> windows;
  std::vector<std::vector<float>> hidden;
  for (int w = 0; w < 42; ++w) {
    windows.push_back(tokens_of(32, student->vocab_size(), 100 + w));
    hidden.push_back(final_hidden(*teacher, windows.back()));
  }
  model::FinetuneSettings s;
  s.epochs = 6;
  s.lr = 0.01;
  // The last two windows as explicit validation windows.
  const std::vector<std::vector<int32_t>> train_w(windows.begin(), windows.begin() + 40), val_w(windows.begin() + 40, windows.end());
  const std::vector<std::vector<float>> train_h(hidden.begin(), hidden.begin() + 40), val_h(hidden.begin() + 40, hidden.end());
  const auto r = model::finetune(*student, train_w, train_h, val_w, val_h, teacher->final_norm(), s);
  EXPECT_GT(r.kl_before, 1e-3);
  EXPECT_LT(r.kl_after, 0.5 * r.kl_before) << "before " << r.kl_before << " after " << r.kl_after;
  EXPECT_GE(r.best_epoch, 1);
  // Applied to the model, the held-out windows' logits move toward the teacher's.
  auto dist = [&](const model::Model& m) {
    double sum = 0;
    for (int w = 40; w < 42; ++w) {
      const auto hs = final_hidden(m, windows[size_t(w)]);
      std::vector<float> ls(hs.size() / size_t(m.hidden_size()) * size_t(m.vocab_size())), lt(ls.size());
      m.final_logits(hs.data(), int(windows[size_t(w)].size()), ls.data());
      teacher->final_logits(hidden[size_t(w)].data(), int(windows[size_t(w)].size()), lt.data());
      for (size_t i = 0; i < ls.size(); ++i) sum += double(ls[i] - lt[i]) * (ls[i] - lt[i]);
    }
    return sum;
  };
  const double before = dist(*student);
  model::apply_finetune(*student, r);
  EXPECT_LT(dist(*student), 0.5 * before);
}

// Quantized linears: the gains act on W̃'s rows (the output's Hadamard domain), where
// apply_finetune folds them into the stage scales; the KL the tuning reports for its kept gains
// is the KL of the model they are folded into.
TEST(Finetune, GainsOfQuantizedLinearsAreTheFoldedScales) {
  // (bits, tuned biases, a gain per stage)
  for (auto [bits, tuned, stages] : {std::tuple{2, false, false}, {2, true, false}, {3, false, true}, {3, true, true}}) {
    auto teacher = tiny_model("q_t", 2, true);
    auto student = tiny_model("q_s", 2, true);
    quantize_all(*student, bits);
    const auto [train_w, val_w, train_h, val_h] = make_windows(*teacher, student->vocab_size(), 44, 24, 40, 300);
    model::FinetuneSettings s;
    s.epochs = 3;
    s.lr = 0.01;
    s.bias = tuned;
    s.stage_gains = stages;
    const double before = model::finetune_kl(*student, val_w, val_h, teacher->final_norm());
    const auto r = model::finetune(*student, train_w, train_h, val_w, val_h, teacher->final_norm(), s);
    EXPECT_NEAR(r.kl_before, before, 1e-4 * before);
    ASSERT_GE(r.best_epoch, 1) << "no epoch improved the validation KL (" << bits << " bits, tuned biases " << tuned << ", stage gains " << stages << "; KL " << r.kl_before << ")";
    EXPECT_LT(r.kl_after, r.kl_before);
    EXPECT_EQ(r.bias.size(), tuned ? size_t(7 * student->num_layers()) : size_t(0));
    ASSERT_EQ(r.stage_gain.size(), stages ? size_t(7 * student->num_layers()) : size_t(0));
    if (stages) {
      // The two stages' gains of a row moved apart somewhere.
      double apart = 0;
      for (size_t i = 0; i < r.stage_gain.size(); ++i) {
        ASSERT_EQ(r.stage_gain[i].size(), r.row_gain[i].size());
        for (size_t j = 0; j < r.stage_gain[i].size(); ++j) apart = std::max(apart, double(std::abs(r.stage_gain[i][j] - r.row_gain[i][j])));
      }
      EXPECT_GT(apart, 1e-3);
    }
    model::apply_finetune(*student, r);
    if (tuned) {
      double moved = 0;
      for (int l = 0; l < student->num_layers(); ++l)
        for (auto k : model::kAllLinearKinds) {
          const auto b = student->layer(l).linear(k).bias();
          ASSERT_EQ(int(b.size()), student->layer(l).linear(k).rows());
          for (float v : b) moved = std::max(moved, double(std::abs(v)));
        }
      EXPECT_GT(moved, 1e-3) << "no bias was tuned";
    }
    const double after = model::finetune_kl(*student, val_w, val_h, teacher->final_norm());
    EXPECT_NEAR(after, r.kl_after, 1e-3 * r.kl_after)
        << "the folded model is not the tuned one (" << bits << " bits, tuned biases " << tuned << ", stage gains " << stages << ")";
  }
}

// Offsets added to every linear's output: the tuned biases take them back out.
TEST(Finetune, RecoversOutputOffsets) {
  auto teacher = tiny_model("off_t", 2, true);
  auto student = tiny_model("off_s", 2, true);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (int l = 0; l < student->num_layers(); ++l)
    for (auto k : model::kAllLinearKinds) {
      auto& lin = student->layer(l).linear(k);
      std::vector<float> b(size_t(lin.rows()));
      for (auto& v : b) v = nd(rng);
      const int rows = lin.rows(), cols = lin.cols();
      lin = model::Linear::dense(lin.to_dense(), rows, cols, b);
    }
  const auto [train_w, val_w, train_h, val_h] = make_windows(*teacher, student->vocab_size(), 42, 32, 40, 500);
  model::FinetuneSettings s;
  s.epochs = 6;
  s.lr = 0.01;
  s.bias = true;
  const auto r = model::finetune(*student, train_w, train_h, val_w, val_h, teacher->final_norm(), s);
  EXPECT_LT(r.kl_after, 0.3 * r.kl_before) << "before " << r.kl_before << " after " << r.kl_after;
  // Without biases the same tuning cannot undo offsets nearly as well.
  s.bias = false;
  const auto g = model::finetune(*student, train_w, train_h, val_w, val_h, teacher->final_norm(), s);
  EXPECT_LT(r.kl_after, 0.7 * g.kl_after) << "gains alone " << g.kl_after << ", with biases " << r.kl_after;
  // Folded into the model's biases, the tuned model is the one whose KL was reported.
  model::apply_finetune(*student, r);
  EXPECT_NEAR(model::finetune_kl(*student, val_w, val_h, teacher->final_norm()), r.kl_after, 1e-3 * r.kl_after);
}

TEST(Finetune, RejectsBadSettings) {
  auto m = tiny_model("bad", 1, true);
  std::vector<std::vector<int32_t>> windows = {tokens_of(8, m->vocab_size(), 1)};
  std::vector<std::vector<float>> hidden = {final_hidden(*m, windows[0])};
  model::FinetuneSettings s;
  s.epochs = 1;
  EXPECT_THROW(model::finetune(*m, windows, hidden, {}, {}, m->final_norm(), s), Error);  // one window
  windows.push_back(windows[0]);
  hidden.push_back(hidden[0]);
  s.lr = -1;
  EXPECT_THROW(model::finetune(*m, windows, hidden, {}, {}, m->final_norm(), s), Error);
  s.lr = 1e-3;
  hidden[1].pop_back();
  EXPECT_THROW(model::finetune(*m, windows, hidden, {}, {}, m->final_norm(), s), Error);
}

}  // namespace
}  // namespace glq
