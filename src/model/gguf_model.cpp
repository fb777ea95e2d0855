// Model config from GGUF metadata, and the Hugging Face view of a GGUF file's tensors.
#include <algorithm>
#include <regex>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"

namespace glq::model {

ModelConfig gguf_model_config(const GgufFile& g) {
  const std::string arch = g.get_string("general.architecture");
  ModelConfig c;
  c.arch = parse_arch(arch);
  auto key = [&](const char* k) { return arch + "." + k; };
  auto to_int = [&](int64_t v, const std::string& k) {
    if (v < 0 || v > (int64_t{1} << 30)) throw Error(ErrorKind::Format, fmt::format("{}: {} = {} is out of range", g.path(), k, v));
    return static_cast<int>(v);
  };
  c.num_layers = to_int(g.get_int(key("block_count")), key("block_count"));
  c.max_context = to_int(g.get_int(key("context_length")), key("context_length"));
  c.hidden_size = to_int(g.get_int(key("embedding_length")), key("embedding_length"));
  c.intermediate_size = to_int(g.get_int(key("feed_forward_length")), key("feed_forward_length"));
  c.num_heads = to_int(g.get_int(key("attention.head_count")), key("attention.head_count"));
  c.num_kv_heads = to_int(g.get_int_or(key("attention.head_count_kv")).value_or(c.num_heads), key("attention.head_count_kv"));
  c.head_dim = c.num_heads ? c.hidden_size / c.num_heads : 0;
  if (auto hd = g.get_int_or(key("attention.key_length"))) c.head_dim = to_int(*hd, key("attention.key_length"));
  c.rope_theta = static_cast<float>(g.get_float_or(key("rope.freq_base")).value_or(10000.0));
  c.norm_eps = static_cast<float>(g.get_float_or(key("attention.layer_norm_rms_epsilon")).value_or(1e-5));
  if (auto v = g.get_int_or(key("vocab_size"))) {
    c.vocab_size = to_int(*v, key("vocab_size"));
  } else if (const GgufValue* t = g.find_value("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int>(t->strings.size());
  } else if (const TensorInfo* e = g.find("token_embd.weight"); e && e->shape.size() == 2) {
    c.vocab_size = to_int(e->shape[0], "token_embd.weight rows");
  }
  if (const GgufValue* s = g.find_value(key("rope.scaling.type")); s && s->type == GgufValue::Type::String && s->s != "none") {
    c.rope_scaling.type = s->s;
    c.rope_scaling.factor = static_cast<float>(g.get_float_or(key("rope.scaling.factor")).value_or(1.0));
    if (auto o = g.get_int_or(key("rope.scaling.original_context_length"))) c.rope_scaling.original_max_position = static_cast<int>(*o);
    if (c.rope_scaling.type == "yarn") throw_unsupported(fmt::format("{}: rope scaling 'yarn'", g.path()));
  }
  if (const TensorInfo* f = g.find("rope_freqs.weight")) {
    if (f->dtype != DType::F32 || f->numel() != c.head_dim / 2)
      throw_mismatch(fmt::format("{}: tensor 'rope_freqs.weight'", g.path()),
                     fmt::format("F32 [{}]", c.head_dim / 2), fmt::format("{} {}", dtype_name(f->dtype), f->shape_string()));
    c.rope_scaling.freq_factors.resize(static_cast<size_t>(f->numel()));
    dequantize(DType::F32, f->data.data(), c.rope_scaling.freq_factors.data(), f->numel());
  }
  c.tie_embeddings = g.find("output.weight") == nullptr;
  c.attention_bias = g.find("blk.0.attn_q.bias") != nullptr;
  c.o_bias = g.find("blk.0.attn_output.bias") != nullptr;
  c.mlp_bias = g.find("blk.0.ffn_up.bias") != nullptr;
  if (auto b = g.get_int_or("tokenizer.ggml.bos_token_id")) c.bos_token_id = static_cast<int>(*b);
  if (auto e = g.get_int_or("tokenizer.ggml.eos_token_id")) c.eos_token_id = static_cast<int>(*e);
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(e.kind(), fmt::format("{}: {}", g.path(), e.what()));
  }
  return c;
}

namespace {

class GgufHfWeights final : public WeightSource {
 public:
  GgufHfWeights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config)
      : gguf_(std::move(gguf)), config_(config) {
    // llama.cpp's converter permutes q/k rows of the llama family to interleaved RoPE pairs;
    // Qwen2 keeps the Hugging Face layout.
    permute_qk_ = config.arch == Arch::Llama || config.arch == Arch::Mistral;
    static const std::regex block(R"(blk\.(\d+)\.(\w+)\.(weight|bias))");
    for (const std::string& gname : gguf_->names()) {
      std::string hf;
      std::smatch m;
      if (gname == "token_embd.weight") hf = "model.embed_tokens.weight";
      else if (gname == "output_norm.weight") hf = "model.norm.weight";
      else if (gname == "output.weight") hf = "lm_head.weight";
      else if (std::regex_match(gname, m, block)) {
        static const std::pair<const char*, const char*> kMap[] = {
            {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
            {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
            {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"},
            {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
            {"ffn_down", "mlp.down_proj"},
        };
        for (auto& [g, h] : kMap)
          if (m[2] == g) hf = fmt::format("model.layers.{}.{}.{}", m[1].str(), h, m[3].str());
      }
      if (hf.empty()) continue;  // e.g. rope_freqs.weight: used by the config, not a weight
      TensorInfo t = *gguf_->find(gname);
      t.name = hf;
      index_[hf] = tensors_.size();
      gguf_names_.push_back(gname);
      tensors_.push_back(std::move(t));
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& t : tensors_) out.push_back(t.name);
    return out;
  }
  const TensorInfo* find(const std::string& name) const override {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  std::string description() const override { return gguf_->description(); }

  std::vector<float> load_f32(const std::string& name, std::span<const int64_t> shape) const override {
    std::vector<float> w;
    try {
      w = WeightSource::load_f32(name, shape);
    } catch (const Error& e) {
      rethrow_with_gguf_name(e, name);
    }
    const int heads = permuted_heads(name);
    if (heads == 0) return w;
    // GGUF row (h, i, j) with i < head_dim/2, j < 2 holds HF row (h, j, i).
    const int64_t rows = shape.empty() ? 0 : shape[0];
    const int64_t cols = shape.size() > 1 ? shape[1] : 1;
    check_permutable(name, rows, heads);
    const int64_t hd = rows / heads, half = hd / 2;
    std::vector<float> out(w.size());
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i)
        for (int64_t j = 0; j < 2; ++j) {
          const float* src = w.data() + (h * hd + i * 2 + j) * cols;
          float* dst = out.data() + (h * hd + j * half + i) * cols;
          std::copy(src, src + cols, dst);
        }
    return out;
  }

  void load_rows_f32(const std::string& name, std::span<const int64_t> shape, int64_t first, int64_t count,
                     float* out) const override {
    try {
      const int heads = permuted_heads(name);
      if (heads == 0) {
        WeightSource::load_rows_f32(name, shape, first, count, out);
        return;
      }
      const int64_t rows = shape.empty() ? 0 : shape[0];
      const int64_t cols = shape.size() > 1 ? shape[1] : 1;
      check_permutable(name, rows, heads);
      if (first < 0 || count < 0 || first > rows - count)
        throw_invalid(fmt::format("{}: tensor '{}': rows [{}, {}) of {} requested", gguf_->path(), name, first, first + count, rows));
      // HF row (h, j, i) is GGUF row (h, i, j): read row by row.
      const int64_t hd = rows / heads, half = hd / 2;
      for (int64_t r = first; r < first + count; ++r) {
        const int64_t h = r / hd, j = (r % hd) / half, i = r % half;
        WeightSource::load_rows_f32(name, shape, h * hd + i * 2 + j, 1, out + (r - first) * cols);
      }
    } catch (const Error& e) {
      rethrow_with_gguf_name(e, name);
    }
  }

 private:
  [[noreturn]] void rethrow_with_gguf_name(const Error& e, const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw e;
    throw Error(e.kind(), fmt::format("{} (GGUF tensor '{}')", e.what(), gguf_names_[it->second]));
  }
  // Heads of a q/k tensor whose rows llama.cpp permuted, else 0.
  int permuted_heads(const std::string& name) const {
    if (!permute_qk_) return 0;
    if (name.find(".self_attn.q_proj.") != std::string::npos) return config_.num_heads;
    if (name.find(".self_attn.k_proj.") != std::string::npos) return config_.num_kv_heads;
    return 0;
  }
  void check_permutable(const std::string& name, int64_t rows, int heads) const {
    if (rows % heads != 0 || (rows / heads) % 2 != 0)
      throw_mismatch(fmt::format("{}: tensor '{}'", gguf_->path(), name), fmt::format("rows divisible into {} heads of even size", heads),
                     fmt::format("{} rows", rows));
  }

  std::shared_ptr<const GgufFile> gguf_;
  ModelConfig config_;
  bool permute_qk_ = false;
  std::vector<TensorInfo> tensors_;
  std::vector<std::string> gguf_names_;
  std::map<std::string, size_t> index_;
};

}  // namespace

std::unique_ptr<WeightSource> gguf_hf_weights(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config) {
  return std::make_unique<GgufHfWeights>(std::move(gguf), config);
}

}  // namespace glq::model
