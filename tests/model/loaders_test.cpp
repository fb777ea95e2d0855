// GGUF and safetensors readers: round trips, sharding, and clear errors for broken files.
#include <gtest/gtest.h>

#include <cstring>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/safetensors.hpp"
#include "tiny_gguf.hpp"

namespace glq::model {
namespace {

using test::TempDir;

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Gguf, TinyModelEqualsSafetensorsCheckpoint) {
  const ModelConfig c = test::tiny_config();
  const auto bag = test::random_weights(c, 21);
  TempDir dir;
  test::write_bytes(dir.file("tiny.gguf"), test::tiny_gguf(c, bag));
  test::write_checkpoint(dir.path.string(), c, bag);
  LoadOptions o;
  o.load_tokenizer = false;
  auto from_gguf = load_model(dir.file("tiny.gguf"));
  auto from_st = load_model(dir.path.string(), o);
  EXPECT_EQ(from_gguf->config().num_kv_heads, 2);
  EXPECT_FALSE(from_gguf->config().tie_embeddings);
  std::vector<int32_t> ids = {3, 101, 7, 19, 42, 0, 88};
  const int V = c.vocab_size;
  std::vector<float> a(ids.size() * V), b(a.size());
  KVCache ca = from_gguf->make_cache(8), cb = from_st->make_cache(8);
  from_gguf->forward(ids, ca, a.data(), true);
  from_st->forward(ids, cb, b.data(), true);
  EXPECT_EQ(a, b);  // same float32 weights, same arithmetic
  // The embedded tokenizer: merges apply, specials split, bytes round-trip.
  const Tokenizer& tok = from_gguf->tokenizer();
  const auto hello = tok.encode("hello world", false, true);
  // h e → he, l l → ll, he ll → hell, hell o → hello; Ġ w → Ġw, o r → or, Ġw or → Ġwor; l; d.
  ASSERT_EQ(hello.size(), 4u);
  EXPECT_EQ(tok.token_string(hello[0]), "hello");
  EXPECT_EQ(tok.token_string(hello[1]), "\xC4\xA0wor");
  EXPECT_EQ(tok.decode(hello), "hello world");
  const auto chat = tok.encode("<|im_start|>x<|im_end|>", false, true);
  EXPECT_EQ(chat.front(), 1);
  EXPECT_EQ(chat.back(), 2);
  EXPECT_EQ(tok.encode("<|im_start|>", false, false).size(), 12u);  // not special: bytes
  EXPECT_EQ(tok.decode(tok.encode("ünï 😀 123", false, true)), "ünï 😀 123");
}

TEST(Gguf, MetadataAndDescription) {
  test::GgufBuilder g;
  g.kv_string("general.architecture", "llama");
  g.kv_u32("x.count", 989);
  g.kv_f32("x.eps", 0.5f);
  g.kv_bool("x.flag", true);
  g.kv_strings("x.names", {"a", "bc", ""});
  g.tensor_f32("t", {3, 2}, {1, 2, 3, 4, 5, 6});
  TempDir dir;
  test::write_bytes(dir.file("m.gguf"), g.build());
  GgufFile f(dir.file("m.gguf"));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_int("x.count"), 989);
  EXPECT_EQ(f.get_float("x.eps"), 0.5);
  EXPECT_EQ(f.get_int("x.flag"), 1);
  EXPECT_EQ(f.find_value("x.names")->strings, (std::vector<std::string>{"a", "bc", ""}));
  EXPECT_THROW(f.get_string("x.count"), Error);
  EXPECT_THROW(f.get_int("missing"), Error);
  const TensorInfo& t = f.get("t");
  EXPECT_EQ(t.shape, (std::vector<int64_t>{2, 3}));
  const int64_t shape[] = {2, 3};
  EXPECT_EQ(f.load_f32("t", shape), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  const int64_t wrong[] = {3, 2};
  EXPECT_NE(error_of([&] { f.load_f32("t", wrong); }).find("expected shape [3, 2], got shape [2, 3]"), std::string::npos)
      << error_of([&] { f.load_f32("t", wrong); });
}

TEST(Gguf, BrokenFilesGiveClearErrors) {
  const ModelConfig c = test::tiny_config();
  const auto good = test::tiny_gguf(c, test::random_weights(c, 22));
  TempDir dir;
  const std::string path = dir.file("b.gguf");
  auto expect_error = [&](std::vector<uint8_t> bytes, const std::string& needle) {
    test::write_bytes(path, bytes);
    const std::string msg = error_of([&] { load_model(path); });
    EXPECT_NE(msg.find(needle), std::string::npos) << "expected '" << needle << "' in: " << msg;
  };
  auto bytes = good;
  bytes[0] = 'X';
  expect_error(bytes, "neither a GGUF file");
  bytes = good;
  bytes[4] = 1;
  expect_error(bytes, "GGUF version 1");
  expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 100), "more than the file holds");
  expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 1500), "exceeds the file");
  expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 20), "truncated");
  expect_error(std::vector<uint8_t>(good.begin(), good.end() - 1000), "runs past the end");
  bytes = good;
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(bytes.data() + 8, &huge, 8);  // tensor count
  expect_error(bytes, "more than the file holds");
  // Unknown architecture.
  test::GgufBuilder g;
  g.kv_string("general.architecture", "gpt_neox");
  test::write_bytes(path, g.build());
  const std::string msg = error_of([&] { load_model(path); });
  EXPECT_NE(msg.find("gpt_neox"), std::string::npos) << msg;
  // Missing tensor.
  auto bag = test::random_weights(c, 23);
  for (size_t i = 0; i < bag.names.size(); ++i)
    if (bag.names[i] == "model.layers.1.mlp.up_proj.weight") bag.names[i] = "model.layers.1.mlp.upx_proj.weight";
  expect_error(test::tiny_gguf(c, bag), "model.layers.1.mlp.up_proj.weight");
  // Unknown ggml type.
  test::GgufBuilder g2;
  g2.tensor("t", {32}, 6 /* Q5_0 */, std::vector<uint8_t>(22));
  test::write_bytes(path, g2.build());
  const std::string msg2 = error_of([&] { GgufFile f(path); });
  EXPECT_NE(msg2.find("ggml type 6"), std::string::npos) << msg2;
}

std::vector<uint8_t> as_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(Safetensors, DtypesAndShards) {
  TempDir dir;
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.125f};
  std::vector<uint8_t> f16(12), bf16(12);
  for (size_t i = 0; i < 6; ++i) {
    const uint16_t h = f32_to_f16(f32[i]), b = f32_to_bf16(f32[i]);
    std::memcpy(f16.data() + 2 * i, &h, 2);
    std::memcpy(bf16.data() + 2 * i, &b, 2);
  }
  const auto raw = as_bytes(f32);
  TensorInfo a{"a", DType::F32, {2, 3}, raw, ""};
  TensorInfo b{"b", DType::F16, {3, 2}, f16, ""};
  TensorInfo c{"c", DType::BF16, {6}, bf16, ""};
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), {a, b}, {{"format", "pt"}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"), {c});
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})";
  auto src = open_safetensors_dir(dir.path.string());
  EXPECT_EQ(src->names().size(), 3u);
  const int64_t sa[] = {2, 3}, sb[] = {3, 2}, sc[] = {6};
  EXPECT_EQ(src->load_f32("a", sa), f32);
  EXPECT_EQ(src->load_f32("b", sb), f32);
  EXPECT_EQ(src->load_f32("c", sc), f32);
  SafetensorsFile one(dir.file("model-00001-of-00002.safetensors"));
  EXPECT_EQ(one.metadata().at("format"), "pt");
  // An index naming a tensor its shard lacks.
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors", "zz": "model-00002-of-00002.safetensors"}})";
  EXPECT_NE(error_of([&] { open_safetensors_dir(dir.path.string()); }).find("'zz'"), std::string::npos);
  std::ofstream(dir.file("model.safetensors.index.json")) << R"({"weight_map": {"a": "missing.safetensors"}})";
  EXPECT_NE(error_of([&] { open_safetensors_dir(dir.path.string()); }).find("missing.safetensors"), std::string::npos);
}

TEST(Safetensors, BrokenFilesGiveClearErrors) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  auto header_file = [&](const std::string& json, size_t data_bytes) {
    std::vector<uint8_t> b(8);
    const uint64_t n = json.size();
    std::memcpy(b.data(), &n, 8);
    b.insert(b.end(), json.begin(), json.end());
    b.resize(b.size() + data_bytes);
    test::write_bytes(path, b);
  };
  auto msg = [&] { return error_of([&] { SafetensorsFile f(path); }); };
  header_file(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 24);
  EXPECT_NE(msg().find("expected 24 bytes, got 20 bytes"), std::string::npos) << msg();
  header_file(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})", 20);
  EXPECT_NE(msg().find("outside"), std::string::npos) << msg();
  header_file(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "v": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})", 8);
  EXPECT_NE(msg().find("overlap"), std::string::npos) << msg();
  header_file(R"({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}})", 1);
  EXPECT_NE(msg().find("F8_E4M3"), std::string::npos) << msg();
  header_file(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4);
  EXPECT_NE(msg().find("'w'"), std::string::npos) << msg();
  header_file("{not json", 0);
  EXPECT_NE(msg().find("not valid JSON"), std::string::npos) << msg();
  std::vector<uint8_t> lie(16, 0);
  const uint64_t big = uint64_t{1} << 62;
  std::memcpy(lie.data(), &big, 8);
  test::write_bytes(path, lie);
  EXPECT_NE(msg().find("header length"), std::string::npos) << msg();
  header_file(R"({"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}})", 16);
  SafetensorsFile f(path);
  const int64_t shape[] = {2};
  EXPECT_NE(error_of([&] { f.load_f32("w", shape); }).find("dtype I64"), std::string::npos);
}

}  // namespace
}  // namespace glq::model
