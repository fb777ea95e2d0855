// Models whose weights stay in the memory-mapped file (LoadOptions::mapped): every linear
// deferred, the embedding read row by row, and once materialized the same float32 values and the
// same outputs as the model loaded whole, for GGUF (q/k rows permuted) and for sharded 16-bit
// safetensors.
#include <gtest/gtest.h>

#include <cstring>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/safetensors.hpp"
#include "tiny_gguf.hpp"

namespace glq::model {
namespace {

using test::TempDir;

LoadOptions mapped_options(bool mapped) {
  LoadOptions o;
  o.load_tokenizer = false;
  o.mapped = mapped;
  return o;
}

// The model's tensors as two safetensors shards: linears of even layers in bfloat16, the rest in
// float16 (values rounded accordingly), so every 16-bit path and the index are exercised.
void write_sharded_16bit(const std::string& dir, const ModelConfig& c, const test::TensorBag& bag) {
  std::vector<std::vector<uint8_t>> bytes(bag.names.size());
  std::vector<TensorInfo> first, second;
  std::string weight_map;
  for (size_t i = 0; i < bag.names.size(); ++i) {
    const bool bf16 = bag.names[i].find("layers.0.") != std::string::npos || bag.names[i].find("embed") != std::string::npos;
    bytes[i].resize(bag.values[i].size() * 2);
    for (size_t j = 0; j < bag.values[i].size(); ++j) {
      const uint16_t h = bf16 ? f32_to_bf16(bag.values[i][j]) : f32_to_f16(bag.values[i][j]);
      std::memcpy(bytes[i].data() + 2 * j, &h, 2);
    }
    TensorInfo t{bag.names[i], bf16 ? DType::BF16 : DType::F16, bag.shapes[i], bytes[i], ""};
    const bool in_first = i % 2 == 0;
    (in_first ? first : second).push_back(t);
    weight_map += fmt::format("{}\"{}\": \"model-0000{}-of-00002.safetensors\"", weight_map.empty() ? "" : ", ", bag.names[i],
                              in_first ? 1 : 2);
  }
  write_safetensors(dir + "/model-00001-of-00002.safetensors", first);
  write_safetensors(dir + "/model-00002-of-00002.safetensors", second);
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"weight_map\": {" << weight_map << "}}";
  std::ofstream(dir + "/config.json") << test::config_json(c);
}

void expect_mapped_equals_eager(const std::string& path, const ModelConfig& c) {
  auto eager = load_model(path, mapped_options(false));
  auto mapped = load_model(path, mapped_options(true));
  EXPECT_FALSE(mapped->has_embedding_table());
  EXPECT_THROW(mapped->embedding(), Error);
  for (int i = 0; i < c.num_layers; ++i)
    for (LinearKind k : kAllLinearKinds) {
      const Linear& l = mapped->layer(i).linear(k);
      ASSERT_TRUE(l.is_deferred()) << linear_tensor_prefix(i, k);
      EXPECT_EQ(l.origin(), linear_tensor_prefix(i, k) + ".weight");
      EXPECT_EQ(l.weight_bytes(), l.bias().size() * sizeof(float)) << "nothing of the weight is in memory";
    }
  EXPECT_TRUE(mapped->lm_head().is_deferred());
  EXPECT_NE(mapped->describe().find("in the mapped file"), std::string::npos) << mapped->describe();

  // A deferred linear cannot run; the error names its tensor.
  const std::vector<int32_t> ids = {3, 101, 7, 19, 42, 0, 88, 110, 5, 61, 2};
  KVCache cache = mapped->make_cache(16);
  std::vector<float> logits(ids.size() * static_cast<size_t>(c.vocab_size));
  try {
    mapped->forward(ids, cache, logits.data(), true);
    FAIL() << "a deferred linear ran";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("model.layers.0.self_attn.q_proj.weight"), std::string::npos) << e.what();
  }

  // Embedding rows read on demand equal the table.
  const int h = c.hidden_size;
  std::vector<float> xe(ids.size() * static_cast<size_t>(h)), xm(xe.size());
  eager->embed(ids, xe.data());
  mapped->embed(ids, xm.data());
  ASSERT_EQ(xe, xm);
  std::vector<float> rows(static_cast<size_t>(19) * h);
  mapped->embedding_rows(73, 19, rows.data());
  EXPECT_TRUE(std::equal(rows.begin(), rows.end(), eager->embedding().begin() + 73 * h));

  // Layer by layer: materialized weights are the eager ones, outputs are identical, and the
  // float32 bytes are counted only while they are held.
  const int64_t live0 = materialized_weight_bytes().live;
  for (int i = 0; i < c.num_layers; ++i) {
    int64_t layer_bytes = 0;
    std::vector<Linear> saved;
    for (LinearKind k : kAllLinearKinds) {
      Linear& l = mapped->layer(i).linear(k);
      saved.push_back(l);
      l = l.materialized();
      layer_bytes += int64_t{4} * l.rows() * l.cols();
      const Linear& e = eager->layer(i).linear(k);
      ASSERT_TRUE(std::equal(l.dense_weight(), l.dense_weight() + static_cast<size_t>(l.rows()) * l.cols(), e.dense_weight()))
          << linear_tensor_prefix(i, k);
    }
    EXPECT_EQ(materialized_weight_bytes().live - live0, layer_bytes);
    eager->run_layer(i, xe.data(), static_cast<int>(ids.size()));
    mapped->run_layer(i, xm.data(), static_cast<int>(ids.size()));
    ASSERT_EQ(xe, xm) << "layer " << i;
    for (LinearKind k : kAllLinearKinds) mapped->layer(i).linear(k) = saved[static_cast<size_t>(k)];
    EXPECT_EQ(materialized_weight_bytes().live, live0) << "released with the last Linear holding them";
  }
  mapped->lm_head() = mapped->lm_head().materialized();
  std::vector<float> le(ids.size() * static_cast<size_t>(c.vocab_size)), lm(le.size());
  eager->final_logits(xe.data(), static_cast<int>(ids.size()), le.data());
  mapped->final_logits(xm.data(), static_cast<int>(ids.size()), lm.data());
  EXPECT_EQ(le, lm);
}

TEST(MappedModel, GgufEqualsTheEagerModel) {
  const ModelConfig c = test::tiny_config();
  const auto bag = test::random_weights(c, 33);
  TempDir dir;
  test::write_bytes(dir.file("tiny.gguf"), test::tiny_gguf(c, bag));
  expect_mapped_equals_eager(dir.file("tiny.gguf"), c);
}

TEST(MappedModel, Sharded16BitSafetensorsEqualTheEagerModel) {
  ModelConfig c = test::tiny_config();
  c.tie_embeddings = true;  // the head is the embedding, read from the file too
  const auto bag = test::random_weights(c, 34);
  TempDir dir;
  write_sharded_16bit(dir.path.string(), c, bag);
  expect_mapped_equals_eager(dir.path.string(), c);
}

TEST(MappedModel, RowsOfPermutedGgufTensors) {
  // q/k rows are stored permuted in GGUF; rows read a range at a time are the Hugging Face rows.
  const ModelConfig c = test::tiny_config();
  const auto bag = test::random_weights(c, 35);
  TempDir dir;
  test::write_bytes(dir.file("tiny.gguf"), test::tiny_gguf(c, bag));
  auto gguf = std::make_shared<const GgufFile>(dir.file("tiny.gguf"));
  auto w = gguf_hf_weights(gguf, gguf_model_config(*gguf));
  for (const char* name : {"model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.1.mlp.down_proj.weight"}) {
    const TensorInfo& t = w->get(name);
    const std::vector<float> all = w->load_f32(name, t.shape);
    const int64_t cols = t.shape[1], first = 3, count = t.shape[0] - 5;
    std::vector<float> part(static_cast<size_t>(count * cols));
    w->load_rows_f32(name, t.shape, first, count, part.data());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin() + first * cols)) << name;
    EXPECT_THROW(w->load_rows_f32(name, t.shape, t.shape[0] - 2, 3, part.data()), Error) << "rows past the end";
  }
}

}  // namespace
}  // namespace glq::model
