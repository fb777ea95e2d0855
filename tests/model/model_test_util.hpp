// Helpers of the model tests: paths, a small GGUF writer, tiny random checkpoints.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "glq/model/config.hpp"
#include "glq/model/safetensors.hpp"

namespace glq::model::test {

inline std::string source_dir() {
  const char* env = std::getenv("GLQ_SOURCE_DIR");
  return env ? env : GLQ_SOURCE_DIR;
}
inline std::string smollm2_gguf() { return source_dir() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }
inline std::string smollm2_hf_dir() { return source_dir() + "/models/SmolLM2-135M-Instruct-hf"; }
inline std::string data_path(const std::string& name) { return source_dir() + "/tests/data/" + name; }

#define GLQ_REQUIRE_FILE(path)                                                             \
  do {                                                                                     \
    if (!std::filesystem::exists(path))                                                    \
      GTEST_SKIP() << (path) << " is absent (tools/fetch_model.sh fetches the model)";     \
  } while (0)

// A fresh temporary directory removed at destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("glq_model_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Builds GGUF v3 files in memory.
class GgufBuilder {
 public:
  void kv_string(const std::string& key, const std::string& v) {
    key_(key);
    u32(8);
    str(v);
    ++n_kv_;
  }
  void kv_u32(const std::string& key, uint32_t v) {
    key_(key);
    u32(4);
    u32(v);
    ++n_kv_;
  }
  void kv_f32(const std::string& key, float v) {
    key_(key);
    u32(6);
    pod(v);
    ++n_kv_;
  }
  void kv_bool(const std::string& key, bool v) {
    key_(key);
    u32(7);
    kv_.push_back(v ? 1 : 0);
    ++n_kv_;
  }
  void kv_strings(const std::string& key, const std::vector<std::string>& v) {
    key_(key);
    u32(9);
    u32(8);
    pod<uint64_t>(v.size());
    for (const auto& s : v) str(s);
    ++n_kv_;
  }
  void kv_i32s(const std::string& key, const std::vector<int32_t>& v) {
    key_(key);
    u32(9);
    u32(5);
    pod<uint64_t>(v.size());
    for (int32_t x : v) pod(x);
    ++n_kv_;
  }
  void kv_f32s(const std::string& key, const std::vector<float>& v) {
    key_(key);
    u32(9);
    u32(6);
    pod<uint64_t>(v.size());
    for (float x : v) pod(x);
    ++n_kv_;
  }
  // ne: GGUF order (innermost first). ggml_type 0 = F32, 1 = F16, 8 = Q8_0...
  void tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t ggml_type, const std::vector<uint8_t>& data) {
    Tensor t{name, std::move(ne), ggml_type, data};
    tensors_.push_back(std::move(t));
  }
  void tensor_f32(const std::string& name, std::vector<uint64_t> ne, const std::vector<float>& v) {
    std::vector<uint8_t> d(v.size() * 4);
    std::memcpy(d.data(), v.data(), d.size());
    tensor(name, std::move(ne), 0, d);
  }

  std::vector<uint8_t> build() const {
    std::vector<uint8_t> out;
    auto put = [&](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      out.insert(out.end(), b, b + n);
    };
    const uint32_t magic = 0x46554747, version = 3;
    const uint64_t nt = tensors_.size();
    put(&magic, 4);
    put(&version, 4);
    put(&nt, 8);
    put(&n_kv_, 8);
    out.insert(out.end(), kv_.begin(), kv_.end());
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors_) {
      const uint64_t len = t.name.size();
      put(&len, 8);
      put(t.name.data(), t.name.size());
      const uint32_t nd = static_cast<uint32_t>(t.ne.size());
      put(&nd, 4);
      for (uint64_t d : t.ne) put(&d, 8);
      put(&t.type, 4);
      put(&offset, 8);
      offsets.push_back(offset);
      offset += (t.data.size() + 31) / 32 * 32;
    }
    while (out.size() % 32) out.push_back(0);
    for (const auto& t : tensors_) {
      out.insert(out.end(), t.data.begin(), t.data.end());
      while (out.size() % 32) out.push_back(0);
    }
    return out;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  template <typename T>
  void pod(T v) {
    const auto* b = reinterpret_cast<const uint8_t*>(&v);
    kv_.insert(kv_.end(), b, b + sizeof(T));
  }
  void u32(uint32_t v) { pod(v); }
  void str(const std::string& s) {
    pod<uint64_t>(s.size());
    kv_.insert(kv_.end(), s.begin(), s.end());
  }
  void key_(const std::string& k) { str(k); }
  std::vector<uint8_t> kv_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// A tiny Llama-family config with awkward sizes.
inline ModelConfig tiny_config(Arch arch = Arch::Llama) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 111;
  c.hidden_size = 48;
  c.intermediate_size = 72;
  c.num_layers = 2;
  c.num_heads = 6;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_context = 64;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-5f;
  c.tie_embeddings = false;
  c.attention_bias = arch == Arch::Qwen2;
  return c;
}

inline std::vector<float> random_vec(size_t n, std::mt19937& rng, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Random float32 tensors of a model with config c under Hugging Face names.
struct TensorBag {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<std::vector<float>> values;
  void add(const std::string& n, std::vector<int64_t> shape, std::vector<float> v) {
    names.push_back(n);
    shapes.push_back(std::move(shape));
    values.push_back(std::move(v));
  }
};

inline TensorBag random_weights(const ModelConfig& c, uint32_t seed) {
  std::mt19937 rng(seed);
  TensorBag b;
  const int64_t h = c.hidden_size, f = c.intermediate_size;
  b.add("model.embed_tokens.weight", {c.vocab_size, h}, random_vec(static_cast<size_t>(c.vocab_size * h), rng, 1.0f));
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    auto norm = random_vec(static_cast<size_t>(h), rng, 0.1f);
    for (auto& x : norm) x += 1.0f;
    b.add(p + "input_layernorm.weight", {h}, norm);
    b.add(p + "post_attention_layernorm.weight", {h}, norm);
    const float s = 1.0f / std::sqrt(static_cast<float>(h));
    b.add(p + "self_attn.q_proj.weight", {c.q_dim(), h}, random_vec(static_cast<size_t>(c.q_dim() * h), rng, s));
    b.add(p + "self_attn.k_proj.weight", {c.kv_dim(), h}, random_vec(static_cast<size_t>(c.kv_dim() * h), rng, s));
    b.add(p + "self_attn.v_proj.weight", {c.kv_dim(), h}, random_vec(static_cast<size_t>(c.kv_dim() * h), rng, s));
    if (c.attention_bias) {
      b.add(p + "self_attn.q_proj.bias", {c.q_dim()}, random_vec(static_cast<size_t>(c.q_dim()), rng, 0.1f));
      b.add(p + "self_attn.k_proj.bias", {c.kv_dim()}, random_vec(static_cast<size_t>(c.kv_dim()), rng, 0.1f));
      b.add(p + "self_attn.v_proj.bias", {c.kv_dim()}, random_vec(static_cast<size_t>(c.kv_dim()), rng, 0.1f));
    }
    b.add(p + "self_attn.o_proj.weight", {h, c.q_dim()}, random_vec(static_cast<size_t>(c.q_dim() * h), rng, s));
    b.add(p + "mlp.gate_proj.weight", {f, h}, random_vec(static_cast<size_t>(f * h), rng, s));
    b.add(p + "mlp.up_proj.weight", {f, h}, random_vec(static_cast<size_t>(f * h), rng, s));
    b.add(p + "mlp.down_proj.weight", {h, f}, random_vec(static_cast<size_t>(f * h), rng, 1.0f / std::sqrt(static_cast<float>(f))));
  }
  auto norm = random_vec(static_cast<size_t>(h), rng, 0.1f);
  for (auto& x : norm) x += 1.0f;
  b.add("model.norm.weight", {h}, norm);
  if (!c.tie_embeddings)
    b.add("lm_head.weight", {c.vocab_size, h}, random_vec(static_cast<size_t>(c.vocab_size * h), rng, 1.0f / std::sqrt(static_cast<float>(h))));
  return b;
}

inline std::string config_json(const ModelConfig& c) {
  const char* type = c.arch == Arch::Qwen2 ? "qwen2" : c.arch == Arch::Mistral ? "mistral" : "llama";
  std::string rope;
  if (c.rope_scaling.type == "llama3")
    rope = ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": " + std::to_string(c.rope_scaling.factor) +
           ", \"low_freq_factor\": " + std::to_string(c.rope_scaling.low_freq_factor) +
           ", \"high_freq_factor\": " + std::to_string(c.rope_scaling.high_freq_factor) +
           ", \"original_max_position_embeddings\": " + std::to_string(c.rope_scaling.original_max_position) + "}";
  return std::string("{\"model_type\": \"") + type + "\", \"vocab_size\": " + std::to_string(c.vocab_size) +
         ", \"hidden_size\": " + std::to_string(c.hidden_size) + ", \"intermediate_size\": " + std::to_string(c.intermediate_size) +
         ", \"num_hidden_layers\": " + std::to_string(c.num_layers) + ", \"num_attention_heads\": " + std::to_string(c.num_heads) +
         ", \"num_key_value_heads\": " + std::to_string(c.num_kv_heads) + ", \"head_dim\": " + std::to_string(c.head_dim) +
         ", \"max_position_embeddings\": " + std::to_string(c.max_context) + ", \"rope_theta\": " + std::to_string(c.rope_theta) +
         ", \"rms_norm_eps\": 1e-05, \"tie_word_embeddings\": " + (c.tie_embeddings ? "true" : "false") + rope + "}";
}

// Writes config.json + model.safetensors (float32) into dir.
inline void write_checkpoint(const std::string& dir, const ModelConfig& c, const TensorBag& b) {
  std::vector<TensorInfo> ts;
  for (size_t i = 0; i < b.names.size(); ++i) {
    TensorInfo t;
    t.name = b.names[i];
    t.dtype = DType::F32;
    t.shape = b.shapes[i];
    t.data = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.values[i].data()), b.values[i].size() * 4);
    ts.push_back(t);
  }
  write_safetensors(dir + "/model.safetensors", ts);
  std::ofstream(dir + "/config.json") << config_json(c);
}

}  // namespace glq::model::test
