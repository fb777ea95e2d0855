// Pieces of a GLQ checkpoint that come from the source model: a Hugging Face config.json for a
// GGUF source, and tokenizer files equivalent to a GGUF file's embedded tokenizer.
#include <filesystem>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/glq_checkpoint.hpp"

namespace glq::model {

namespace {

namespace fs = std::filesystem;

// The pre-tokenizer regexes of llama.cpp's named vocabularies (tokenizer.ggml.pre), as the
// Hugging Face tokenizer.json files of those models spell them.
constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

void write_text_atomic(const fs::path& p, const std::string& text) {
  format::AtomicFile f(p.string());
  f.write(text.data(), text.size());
  f.commit();
}

nlohmann::ordered_json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

}  // namespace

nlohmann::ordered_json hf_config_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  const char* type = c.arch == Arch::Qwen2 ? "qwen2" : c.arch == Arch::Mistral ? "mistral" : "llama";
  const char* cls = c.arch == Arch::Qwen2 ? "Qwen2ForCausalLM" : c.arch == Arch::Mistral ? "MistralForCausalLM" : "LlamaForCausalLM";
  j["architectures"] = {cls};
  j["model_type"] = type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_context;
  j["rope_theta"] = c.rope_theta;
  if (!c.rope_scaling.freq_factors.empty())
    throw_unsupported("writing a config.json for a model with per-frequency RoPE factors (GGUF rope_freqs); quantize from its Hugging Face directory");
  if (!c.rope_scaling.type.empty()) {
    j["rope_scaling"] = {{"rope_type", c.rope_scaling.type},
                         {"factor", c.rope_scaling.factor},
                         {"low_freq_factor", c.rope_scaling.low_freq_factor},
                         {"high_freq_factor", c.rope_scaling.high_freq_factor},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  }
  j["rms_norm_eps"] = c.norm_eps;
  j["tie_word_embeddings"] = c.tie_embeddings;
  if (c.arch != Arch::Qwen2) j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  j["hidden_act"] = "silu";
  return j;
}

void write_hf_tokenizer_from_gguf(const GgufFile& g, const std::string& dir) {
  const std::string model = g.get_string("tokenizer.ggml.model");
  if (model != "gpt2")
    throw_unsupported(fmt::format("{}: writing tokenizer.json for tokenizer model '{}' (only byte-level BPE, 'gpt2'); "
                                  "quantize from the model's Hugging Face directory instead",
                                  g.path(), model));
  const GgufValue* tokens = g.find_value("tokenizer.ggml.tokens");
  if (!tokens || tokens->strings.empty()) throw_format(g.path(), "missing tokenizer.ggml.tokens");
  const GgufValue* merges = g.find_value("tokenizer.ggml.merges");
  if (!merges) throw_format(g.path(), "missing tokenizer.ggml.merges");
  const size_t n = tokens->strings.size();
  std::vector<int64_t> types(n, 1);
  if (const GgufValue* t = g.find_value("tokenizer.ggml.token_type"); t && t->ints.size() == n) types = t->ints;

  std::string pre = "default";
  if (const GgufValue* p = g.find_value("tokenizer.ggml.pre"); p && p->type == GgufValue::Type::String) pre = p->s;
  nlohmann::ordered_json pre_tok;
  bool ignore_merges = false;
  if (pre == "default" || pre == "gpt-2" || pre == "gpt2") {
    pre_tok = byte_level(true);
  } else if (pre == "smollm" || pre == "starcoder" || pre == "refact") {
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  } else if (pre == "llama-bpe" || pre == "llama3" || pre == "smaug-bpe" || pre == "qwen2" || pre == "deepseek-r1-qwen") {
    const bool llama = pre != "qwen2" && pre != "deepseek-r1-qwen";
    pre_tok = {{"type", "Sequence"},
               {"pretokenizers",
                {{{"type", "Split"}, {"pattern", {{"Regex", llama ? kLlama3Regex : kQwen2Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                 byte_level(false)}}};
    ignore_merges = llama;
  } else {
    throw_unsupported(fmt::format("{}: tokenizer.ggml.pre '{}' has no tokenizer.json equivalent here", g.path(), pre));
  }

  nlohmann::ordered_json added = nlohmann::ordered_json::array();
  for (size_t i = 0; i < n; ++i)
    if (types[i] == 3 || types[i] == 4)  // control, user-defined
      added.push_back({{"id", i}, {"content", tokens->strings[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", types[i] == 3}});
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (size_t i = 0; i < n; ++i) vocab[tokens->strings[i]] = i;
  nlohmann::ordered_json merge_list = nlohmann::ordered_json::array();
  for (const std::string& m : merges->strings) {
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos) throw_format(g.path(), fmt::format("merge '{}' has no space", m));
    merge_list.push_back({m.substr(0, sp), m.substr(sp + 1)});
  }
  nlohmann::ordered_json tj;
  tj["version"] = "1.0";
  tj["truncation"] = nullptr;
  tj["padding"] = nullptr;
  tj["added_tokens"] = added;
  tj["normalizer"] = nullptr;
  tj["pre_tokenizer"] = pre_tok;
  tj["post_processor"] = byte_level(true);
  tj["decoder"] = byte_level(true);
  tj["model"] = {{"type", "BPE"},          {"dropout", nullptr}, {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merge_list}};

  nlohmann::ordered_json cj;
  auto token_of = [&](const char* key) -> std::string {
    auto v = g.get_int_or(key);
    if (!v || *v < 0 || *v >= static_cast<int64_t>(n)) return {};
    return tokens->strings[static_cast<size_t>(*v)];
  };
  if (auto b = token_of("tokenizer.ggml.bos_token_id"); !b.empty()) cj["bos_token"] = b;
  if (auto e = token_of("tokenizer.ggml.eos_token_id"); !e.empty()) cj["eos_token"] = e;
  if (auto u = token_of("tokenizer.ggml.unknown_token_id"); !u.empty()) cj["unk_token"] = u;
  if (auto p = token_of("tokenizer.ggml.padding_token_id"); !p.empty()) cj["pad_token"] = p;
  const auto add_bos = g.get_int_or("tokenizer.ggml.add_bos_token");
  cj["add_bos_token"] = add_bos ? *add_bos != 0 : false;
  if (const GgufValue* t = g.find_value("tokenizer.chat_template"); t && t->type == GgufValue::Type::String) cj["chat_template"] = t->s;

  write_text_atomic(fs::path(dir) / "tokenizer.json", tj.dump());
  write_text_atomic(fs::path(dir) / "tokenizer_config.json", cj.dump(2));
}

}  // namespace glq::model
