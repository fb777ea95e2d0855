// A tiny Llama GGUF file made from random weights (see model_test_util.hpp), in llama.cpp's
// layout: GGUF names, dimensions innermost first, q/k rows permuted to interleaved RoPE pairs,
// and a small byte-level BPE tokenizer in the metadata.
#pragma once

#include "model/half.hpp"
#include "model/unicode.hpp"
#include "model_test_util.hpp"

namespace glq::model::test {

inline std::string gguf_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::pair<const char*, const char*> kMap[] = {
      {"input_layernorm", "attn_norm"}, {"post_attention_layernorm", "ffn_norm"}, {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},   {"self_attn.v_proj", "attn_v"},           {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},                {"mlp.down_proj", "ffn_down"}};
  const size_t a = hf.find('.', 13);
  const std::string layer = hf.substr(13, a - 13);
  const std::string rest = hf.substr(a + 1);
  for (auto& [h, g] : kMap) {
    const std::string hs = h;
    if (rest.compare(0, hs.size(), hs) == 0) return "blk." + layer + "." + g + rest.substr(hs.size());
  }
  return hf;
}

// HF rows (h, j, i) → GGUF rows (h, i, j): llama.cpp's permute() of q_proj / k_proj.
inline std::vector<float> permute_rows(const std::vector<float>& w, int64_t rows, int64_t cols, int heads) {
  const int64_t hd = rows / heads, half = hd / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j)
        std::copy_n(w.data() + (h * hd + j * half + i) * cols, cols, out.data() + (h * hd + i * 2 + j) * cols);
  return out;
}

// The 256 byte tokens plus a few merges and special tokens.
inline void add_tiny_tokenizer(GgufBuilder& g) {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  for (int b = 0; b < 256; ++b) {
    std::string s;
    append_utf8(s, byte_to_code_point()[static_cast<size_t>(b)]);
    tokens.push_back(s);
  }
  const std::vector<std::string> merges = {"h e", "l l", "he ll", "hell o", "\xC4\xA0 w", "o r", "\xC4\xA0w or"};
  for (const auto& m : merges) {
    std::string joined = m;
    joined.erase(joined.find(' '), 1);
    tokens.push_back(joined);
  }
  std::vector<int32_t> types(tokens.size(), 1);
  types[0] = types[1] = types[2] = 3;
  g.kv_string("tokenizer.ggml.model", "gpt2");
  g.kv_string("tokenizer.ggml.pre", "smollm");
  g.kv_strings("tokenizer.ggml.tokens", tokens);
  g.kv_i32s("tokenizer.ggml.token_type", types);
  g.kv_strings("tokenizer.ggml.merges", merges);
  g.kv_u32("tokenizer.ggml.bos_token_id", 1);
  g.kv_u32("tokenizer.ggml.eos_token_id", 2);
  g.kv_bool("tokenizer.ggml.add_bos_token", false);
  g.kv_string("tokenizer.chat_template",
              "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}");
}

// half_norms: norms stored as F16 (their values must then be F16-representable to compare).
inline std::vector<uint8_t> tiny_gguf(const ModelConfig& c, const TensorBag& b, bool with_tokenizer = true) {
  GgufBuilder g;
  g.kv_string("general.architecture", "llama");
  g.kv_u32("llama.block_count", static_cast<uint32_t>(c.num_layers));
  g.kv_u32("llama.context_length", static_cast<uint32_t>(c.max_context));
  g.kv_u32("llama.embedding_length", static_cast<uint32_t>(c.hidden_size));
  g.kv_u32("llama.feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  g.kv_u32("llama.attention.head_count", static_cast<uint32_t>(c.num_heads));
  g.kv_u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  g.kv_f32("llama.rope.freq_base", c.rope_theta);
  g.kv_f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  g.kv_u32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  if (with_tokenizer) add_tiny_tokenizer(g);
  for (size_t i = 0; i < b.names.size(); ++i) {
    const std::string& n = b.names[i];
    std::vector<uint64_t> ne(b.shapes[i].rbegin(), b.shapes[i].rend());
    std::vector<float> v = b.values[i];
    if (n.find("q_proj.weight") != std::string::npos) v = permute_rows(v, b.shapes[i][0], b.shapes[i][1], c.num_heads);
    if (n.find("k_proj.weight") != std::string::npos) v = permute_rows(v, b.shapes[i][0], b.shapes[i][1], c.num_kv_heads);
    g.tensor_f32(gguf_name(n), ne, v);
  }
  return g.build();
}

}  // namespace glq::model::test
