// The hyper-parameters of a Llama-family decoder, read from a Hugging Face config.json or from
// GGUF metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace glq::model {

enum class Arch {
  Llama,    // Llama 2/3, SmolLM, TinyLlama...: no biases
  Mistral,  // as Llama (sliding window ignored: contexts we run are within it)
  Qwen2,    // q/k/v projections carry a bias
};
const char* arch_name(Arch arch);
// "llama" | "mistral" | "qwen2" (GGUF general.architecture or HF model_type); throws Unsupported
// naming the architecture otherwise.
Arch parse_arch(const std::string& name);

// RoPE frequency scaling. type "" (none), "linear" (positions divided by factor) or "llama3"
// (Llama 3.1's per-frequency rescaling with low/high frequency factors).
struct RopeScaling {
  std::string type;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position = 8192;
  // Per-frequency divisors of the inverse frequencies (head_dim/2 values), as GGUF files store
  // Llama 3 scaling (tensor rope_freqs.weight). Applied instead of `type` when non-empty.
  std::vector<float> freq_factors;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  int vocab_size = 0;
  int hidden_size = 0;         // d_model
  int intermediate_size = 0;   // SwiGLU hidden width
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;        // grouped-query attention: num_heads % num_kv_heads == 0
  int head_dim = 0;            // usually hidden_size / num_heads
  int max_context = 0;         // max_position_embeddings / context_length
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  float norm_eps = 1e-5f;      // RMSNorm epsilon
  bool tie_embeddings = false; // lm_head shares the token embedding
  bool attention_bias = false; // q/k/v projections have a bias (Qwen2)
  bool o_bias = false;         // o_proj has a bias
  bool mlp_bias = false;       // gate/up/down have biases
  int bos_token_id = -1;       // -1: unknown
  int eos_token_id = -1;

  int q_dim() const { return num_heads * head_dim; }
  int kv_dim() const { return num_kv_heads * head_dim; }
  // Throws InvalidArgument (naming the field and value) when the numbers are inconsistent.
  void validate() const;
  // Number of weights of the decoder (embedding counted once when tied).
  int64_t parameter_count() const;
};

// Parses config.json text; `origin` names the file in messages.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& origin);

}  // namespace glq::model
