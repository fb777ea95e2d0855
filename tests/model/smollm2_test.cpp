// SmolLM2-135M-Instruct against outside references: token ids from Hugging Face `tokenizers`,
// logits and greedy generations from Hugging Face Transformers (float32, CPU). The golden files
// name the reference and its version; tools/make_*_goldens.py made them.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "glq/model/loader.hpp"
#include "glq/model/sampler.hpp"
#include "model_test_util.hpp"

namespace glq::model {
namespace {

using test::data_path;

nlohmann::json load_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

// Loaded once for all tests of this file (loading dequantizes 135M weights).
const Model* smollm2(const std::string& path) {
  static std::map<std::string, std::unique_ptr<Model>> models;
  auto& m = models[path];
  if (!m) m = load_model(path);
  return m.get();
}

void check_tokenizer(const Tokenizer& tok, const char* field) {
  const auto golden = load_json(data_path("smollm2_tokenizer_golden.json"));
  ASSERT_GE(golden["cases"].size(), 200u);
  int failures = 0;
  for (const auto& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c[field].get<std::vector<int32_t>>();
    const auto got = tok.encode(text, false, true);
    if (got != want && ++failures <= 10) ADD_FAILURE() << "text " << nlohmann::json(text).dump() << "\n want " << nlohmann::json(want).dump() << "\n got  " << nlohmann::json(got).dump();
    EXPECT_EQ(tok.decode(want), c["decoded"].get<std::string>()) << nlohmann::json(text).dump();
  }
  EXPECT_EQ(failures, 0);
}

TEST(SmolLM2, GgufTokenizerMatchesTokenizersLibrary) {
  GLQ_REQUIRE_FILE(test::smollm2_gguf());
  const Tokenizer tok = load_tokenizer(test::smollm2_gguf());
  EXPECT_EQ(tok.vocab_size(), 49152);
  EXPECT_EQ(tok.kind(), TokenizerKind::ByteLevelBpe);
  EXPECT_EQ(tok.chat_format(), ChatFormat::ChatML);
  check_tokenizer(tok, "ids");
}

TEST(SmolLM2, HfDirectoryTokenizerMatchesTokenizersLibrary) {
  GLQ_REQUIRE_FILE(test::smollm2_hf_dir());
  check_tokenizer(load_tokenizer(test::smollm2_hf_dir()), "ids_converted");
}

TEST(SmolLM2, ChatTemplateMatchesTransformers) {
  GLQ_REQUIRE_FILE(test::smollm2_gguf());
  const Tokenizer tok = load_tokenizer(test::smollm2_gguf());
  const auto golden = load_json(data_path("smollm2_logits_golden.json"));
  int seen = 0;
  for (const auto& c : golden["cases"]) {
    if (!c.contains("chat")) continue;
    std::vector<ChatMessage> msgs;
    for (const auto& m : c["chat"]) msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    EXPECT_EQ(tok.apply_chat_template(msgs, true), c["text"].get<std::string>());
    ++seen;
  }
  EXPECT_GT(seen, 0);
}

// Relative error of a logits row: max |ours - reference| over the checked entries divided by
// max |reference| of the row.
void check_logits(const Model& m, const char* label) {
  const auto golden = load_json(data_path("smollm2_logits_golden.json"));
  const Tokenizer& tok = m.tokenizer();
  const int vocab = m.vocab_size();
  for (const auto& c : golden["cases"]) {
    const std::string name = c["name"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(c["text"].get<std::string>(), false, true), ids) << label << " " << name;
    KVCache cache = m.make_cache(static_cast<int>(ids.size()) + 40);
    std::vector<float> logits(ids.size() * static_cast<size_t>(vocab));
    m.forward(ids, cache, logits.data(), true);
    for (const auto& row : c["rows"]) {
      const int pos = row["position"].get<int>();
      const float* got = logits.data() + static_cast<size_t>(pos) * vocab;
      const auto top_ids = row["top_ids"].get<std::vector<int>>();
      const auto top = row["top_logits"].get<std::vector<double>>();
      const double scale = row["max_abs"].get<double>();
      double worst = 0;
      for (size_t k = 0; k < top_ids.size(); ++k) worst = std::max(worst, std::abs(got[top_ids[k]] - top[k]) / scale);
      double mx = got[0], mean = 0;
      for (int j = 0; j < vocab; ++j) {
        mx = std::max<double>(mx, got[j]);
        mean += got[j];
      }
      double se = 0;
      for (int j = 0; j < vocab; ++j) se += std::exp(static_cast<double>(got[j]) - mx);
      const double lse = mx + std::log(se);
      worst = std::max(worst, std::abs(lse - row["logsumexp"].get<double>()) / scale);
      worst = std::max(worst, std::abs(mean / vocab - row["mean"].get<double>()) / scale);
      EXPECT_LT(worst, 1e-3) << label << " " << name << " position " << pos;
      EXPECT_EQ(argmax(std::span<const float>(got, static_cast<size_t>(vocab))), top_ids[0]) << label << " " << name << " position " << pos;
    }
    // Greedy continuation of 32 tokens, one token per step through the cache.
    const auto want = c["greedy"].get<std::vector<int32_t>>();
    std::vector<int32_t> gen;
    std::vector<float> last(static_cast<size_t>(vocab));
    std::copy_n(logits.data() + (ids.size() - 1) * static_cast<size_t>(vocab), vocab, last.data());
    for (size_t i = 0; i < want.size(); ++i) {
      const int32_t next = argmax(last);
      gen.push_back(next);
      m.forward(std::span<const int32_t>(&next, 1), cache, last.data());
    }
    EXPECT_EQ(gen, want) << label << " " << name;
  }
}

TEST(SmolLM2, GgufLogitsAndGreedyMatchTransformers) {
  GLQ_REQUIRE_FILE(test::smollm2_gguf());
  const Model* m = smollm2(test::smollm2_gguf());
  EXPECT_EQ(m->config().num_layers, 30);
  EXPECT_EQ(m->config().num_kv_heads, 3);
  EXPECT_TRUE(m->config().tie_embeddings);
  check_logits(*m, "gguf");
}

TEST(SmolLM2, HfDirectoryLogitsAndGreedyMatchTransformers) {
  GLQ_REQUIRE_FILE(test::smollm2_hf_dir());
  check_logits(*smollm2(test::smollm2_hf_dir()), "hf-dir");
}

TEST(SmolLM2, HfDirectoryWeightsEqualGgufWeights) {
  GLQ_REQUIRE_FILE(test::smollm2_gguf());
  GLQ_REQUIRE_FILE(test::smollm2_hf_dir());
  const Model* a = smollm2(test::smollm2_gguf());
  const Model* b = smollm2(test::smollm2_hf_dir());
  for (int l : {0, 17, 29})
    for (LinearKind k : kAllLinearKinds) {
      const float* x = a->layer(l).linear(k).dense_weight();
      const float* y = b->layer(l).linear(k).dense_weight();
      const size_t n = static_cast<size_t>(a->layer(l).linear(k).rows()) * a->layer(l).linear(k).cols();
      size_t diff = 0;
      for (size_t i = 0; i < n; ++i) diff += x[i] != y[i];
      EXPECT_EQ(diff, 0u) << linear_tensor_prefix(l, k);
    }
  EXPECT_EQ(a->embedding(), b->embedding());
}

}  // namespace
}  // namespace glq::model
