// ModelConfig: validation, parameter count, Hugging Face config.json parsing.
#include "glq/model/config.hpp"

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

const char* arch_name(Arch arch) {
  switch (arch) {
    case Arch::Llama: return "llama";
    case Arch::Mistral: return "mistral";
    case Arch::Qwen2: return "qwen2";
  }
  return "?";
}

Arch parse_arch(const std::string& name) {
  if (name == "llama" || name == "LlamaForCausalLM") return Arch::Llama;
  if (name == "mistral" || name == "MistralForCausalLM") return Arch::Mistral;
  if (name == "qwen2" || name == "Qwen2ForCausalLM") return Arch::Qwen2;
  throw_unsupported(fmt::format("architecture '{}' (supported: llama, mistral, qwen2)", name));
}

void ModelConfig::validate() const {
  auto positive = [](const char* field, int v) {
    if (v <= 0) throw_invalid(fmt::format("model config: {} = {} must be positive", field, v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_layers", num_layers);
  positive("num_heads", num_heads);
  positive("num_kv_heads", num_kv_heads);
  positive("head_dim", head_dim);
  positive("max_context", max_context);
  // Caps far above any Llama-family model; they keep a lying file from asking for terabytes.
  if (vocab_size > (1 << 22) || hidden_size > (1 << 16) || intermediate_size > (1 << 18) ||
      num_layers > 1024 || num_heads > 1024 || head_dim > 1024 || max_context > (1 << 22))
    throw_invalid(fmt::format("model config: implausible sizes (vocab {}, hidden {}, ffn {}, layers {}, heads {}, head_dim {}, context {})",
                              vocab_size, hidden_size, intermediate_size, num_layers, num_heads, head_dim, max_context));
  if (num_heads % num_kv_heads != 0)
    throw_invalid(fmt::format("model config: num_heads {} is not a multiple of num_kv_heads {}", num_heads, num_kv_heads));
  if (head_dim % 2 != 0) throw_invalid(fmt::format("model config: head_dim {} must be even (RoPE)", head_dim));
  if (!(rope_theta > 0)) throw_invalid(fmt::format("model config: rope_theta {} must be positive", rope_theta));
  if (!(norm_eps >= 0)) throw_invalid(fmt::format("model config: norm_eps {} must be >= 0", norm_eps));
  const auto& rs = rope_scaling;
  if (!rs.type.empty() && rs.type != "linear" && rs.type != "llama3" && rs.type != "default")
    throw_unsupported(fmt::format("rope scaling type '{}' (supported: linear, llama3)", rs.type));
  if (!rs.type.empty() && rs.type != "default" && !(rs.factor > 0))
    throw_invalid(fmt::format("model config: rope scaling factor {} must be positive", rs.factor));
  if (rs.type == "llama3" && (!(rs.high_freq_factor > rs.low_freq_factor) || rs.original_max_position <= 0))
    throw_invalid("model config: llama3 rope scaling needs high_freq_factor > low_freq_factor and original_max_position > 0");
  if (!rs.freq_factors.empty() && static_cast<int>(rs.freq_factors.size()) != head_dim / 2)
    throw_mismatch("model config: rope freq_factors", fmt::format("{} values", head_dim / 2),
                   fmt::format("{} values", rs.freq_factors.size()));
}

int64_t ModelConfig::parameter_count() const {
  const int64_t h = hidden_size, f = intermediate_size;
  int64_t per_layer = h * q_dim() + 2 * h * kv_dim() + q_dim() * h + 3 * h * f + 2 * h;
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim();
  if (o_bias) per_layer += h;
  if (mlp_bias) per_layer += 2 * f + h;
  int64_t total = per_layer * num_layers + static_cast<int64_t>(vocab_size) * h + h;
  if (!tie_embeddings) total += static_cast<int64_t>(vocab_size) * h;
  return total;
}

namespace {

int get_int(const nlohmann::json& j, const char* key, const std::string& origin) {
  if (!j.contains(key)) throw Error(ErrorKind::Format, fmt::format("{}: missing '{}'", origin, key));
  const auto& v = j.at(key);
  if (!v.is_number_integer()) throw Error(ErrorKind::Format, fmt::format("{}: '{}' is not an integer", origin, key));
  const auto x = v.get<int64_t>();
  if (x < 0 || x > (int64_t{1} << 30)) throw Error(ErrorKind::Format, fmt::format("{}: '{}' = {} is out of range", origin, key, x));
  return static_cast<int>(x);
}

int first_token_id(const nlohmann::json& j, const char* key) {
  if (!j.contains(key)) return -1;
  const auto& v = j.at(key);
  if (v.is_number_integer()) return v.get<int>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int>();
  return -1;
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, fmt::format("{}: invalid JSON: {}", origin, e.what()));
  }
  if (!j.is_object()) throw Error(ErrorKind::Format, fmt::format("{}: not a JSON object", origin));
  try {
    ModelConfig c;
    std::string type = j.value("model_type", std::string());
    if (type.empty() && j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty())
      type = j["architectures"][0].get<std::string>();
    if (type.empty()) throw Error(ErrorKind::Format, fmt::format("{}: missing 'model_type'", origin));
    c.arch = parse_arch(type);
    c.vocab_size = get_int(j, "vocab_size", origin);
    c.hidden_size = get_int(j, "hidden_size", origin);
    c.intermediate_size = get_int(j, "intermediate_size", origin);
    c.num_layers = get_int(j, "num_hidden_layers", origin);
    c.num_heads = get_int(j, "num_attention_heads", origin);
    c.num_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                         ? get_int(j, "num_key_value_heads", origin) : c.num_heads;
    c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? get_int(j, "head_dim", origin)
                                                                     : (c.num_heads ? c.hidden_size / c.num_heads : 0);
    c.max_context = get_int(j, "max_position_embeddings", origin);
    c.norm_eps = j.value("rms_norm_eps", 1e-6f);
    c.tie_embeddings = j.value("tie_word_embeddings", false);
    c.attention_bias = c.arch == Arch::Qwen2 ? true : j.value("attention_bias", false);
    c.o_bias = c.arch == Arch::Qwen2 ? false : j.value("attention_bias", false);
    c.mlp_bias = j.value("mlp_bias", false);
    c.bos_token_id = first_token_id(j, "bos_token_id");
    c.eos_token_id = first_token_id(j, "eos_token_id");
    // Transformers 4 writes rope_theta and rope_scaling at the top level; Transformers 5 puts
    // both in rope_parameters.
    nlohmann::json rope = nlohmann::json::object();
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rope = j["rope_scaling"];
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rope = j["rope_parameters"];
    if (j.contains("rope_theta") && j["rope_theta"].is_number()) c.rope_theta = j["rope_theta"].get<float>();
    else if (rope.contains("rope_theta") && rope["rope_theta"].is_number()) c.rope_theta = rope["rope_theta"].get<float>();
    std::string rtype = rope.value("rope_type", rope.value("type", std::string()));
    if (rtype == "default") rtype.clear();
    c.rope_scaling.type = rtype;
    if (!rtype.empty()) {
      c.rope_scaling.factor = rope.value("factor", 1.0f);
      c.rope_scaling.low_freq_factor = rope.value("low_freq_factor", 1.0f);
      c.rope_scaling.high_freq_factor = rope.value("high_freq_factor", 4.0f);
      c.rope_scaling.original_max_position = rope.value("original_max_position_embeddings", 8192);
    }
    c.validate();
    return c;
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::Format, fmt::format("{}: {}", origin, e.what()));
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::Unsupported) throw;
    throw Error(e.kind(), fmt::format("{}: {}", origin, e.what()));
  }
}

}  // namespace glq::model
