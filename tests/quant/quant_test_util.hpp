// Helpers of the quantizer tests: a tiny random Llama checkpoint directory with a byte-level
// tokenizer, and calibration text.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_test_util.hpp"

namespace glq::quant_test {

using model::test::TempDir;

// n i.i.d. N(0, scale²) values.
inline std::vector<float> gaussian(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (float& x : v) x = scale * g(rng);
  return v;
}

// GPT-2's byte → printable code point map, as UTF-8 strings.
inline std::vector<std::string> byte_symbols() {
  std::vector<int> cps(256, -1);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    cps[static_cast<size_t>(b)] = printable ? b : 256 + n++;
  }
  std::vector<std::string> out;
  for (int cp : cps) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

// tokenizer.json of a byte-level BPE with the 256 byte symbols as ids 0..255 and no merges.
inline void write_byte_tokenizer(const std::string& dir) {
  nlohmann::json vocab = nlohmann::json::object();
  const auto syms = byte_symbols();
  for (size_t i = 0; i < syms.size(); ++i) vocab[syms[i]] = i;
  nlohmann::json j = {{"version", "1.0"},
                      {"added_tokens", nlohmann::json::array()},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                      {"post_processor", nullptr},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  std::ofstream(dir + "/tokenizer.json") << j.dump();
  std::ofstream(dir + "/tokenizer_config.json") << R"({"add_bos_token": false})";
}

inline model::ModelConfig tiny_config(int layers = 2) {
  model::ModelConfig c;
  c.arch = model::Arch::Llama;
  c.vocab_size = 256;
  c.hidden_size = 64;
  c.intermediate_size = 192;
  c.num_layers = layers;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_context = 512;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.tie_embeddings = true;
  return c;
}

struct TinyModelOptions {
  int layers = 2;
  bool tokenizer = true;
  bool nan_weight = false;  // puts a NaN into layer 0's down_proj
  uint32_t seed = 7;
};

inline void write_tiny_model(const std::string& dir, const TinyModelOptions& o = {}) {
  std::filesystem::create_directories(dir);
  const auto c = tiny_config(o.layers);
  auto bag = model::test::random_weights(c, o.seed);
  if (o.nan_weight)
    for (size_t i = 0; i < bag.names.size(); ++i)
      if (bag.names[i] == "model.layers.0.mlp.down_proj.weight") bag.values[i][111] = std::nanf("");
  model::test::write_checkpoint(dir, c, bag);
  if (o.tokenizer) write_byte_tokenizer(dir);
}

// English-like text of about `bytes` bytes (random words), deterministic.
inline std::string calibration_text(size_t bytes, uint32_t seed = 3) {
  static const char* words[] = {"the", "model", "weights", "lattice", "of", "a", "quantized", "layer", "runs",
                                "on", "eight", "numbers", "and", "with", "error", "feedback", "calibration", "text"};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < bytes) {
    s += words[rng() % (sizeof(words) / sizeof(words[0]))];
    s += (rng() % 11 == 0) ? ".\n" : " ";
  }
  return s;
}

inline std::string write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

}  // namespace glq::quant_test
