// Shared by the model commands of the `glq` tool (run, chat, perplexity, info): loading a model
// with a report on stderr, sampling options, timing.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <chrono>
#include <memory>
#include <string>

#include "glq/model/loader.hpp"
#include "glq/model/sampler.hpp"

namespace glq::cli {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Loads a GGUF file or HF directory and says on stderr what was loaded.
inline std::unique_ptr<model::Model> load_model_verbose(const std::string& path) {
  const auto t0 = std::chrono::steady_clock::now();
  auto m = model::load_model(path);
  const auto& c = m->config();
  fmt::print(stderr, "glq: loaded {} in {:.2f} s\n", path, seconds_since(t0));
  int quantized = 0;
  for (int l = 0; l < m->num_layers(); ++l)
    for (model::LinearKind k : model::kAllLinearKinds) quantized += m->layer(l).linear(k).is_quantized();
  const std::string dtype = quantized ? fmt::format("GLQ-quantized ({} of {} linears), output head {}", quantized, 7 * m->num_layers(),
                                                            m->lm_head().is_quantized() ? "GLQ" : m->lm_head().is_dense16() ? "16-bit" : "fp32")
                                      : std::string("fp32");
  fmt::print(stderr, "glq: arch {}, {:.1f}M parameters, dtype {} ({}), context length {}\n", model::arch_name(c.arch),
             m->parameter_count() / 1e6, dtype, m->source_description(), c.max_context);
  fmt::print(stderr, "glq: {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}, vocab {}, rope theta {}{}, tied embeddings {}\n",
             c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size,
             c.rope_theta, c.rope_scaling.type.empty() ? "" : " (" + c.rope_scaling.type + " scaling)",
             c.tie_embeddings ? "yes" : "no");
  if (m->has_tokenizer()) {
    const auto& t = m->tokenizer();
    fmt::print(stderr, "glq: tokenizer {} ({} tokens), chat format {}, threads {}\n",
               t.kind() == model::TokenizerKind::ByteLevelBpe ? "byte-level BPE" : "SentencePiece BPE", t.vocab_size(),
               model::chat_format_name(t.chat_format()), m->pool().size());
  }
  return m;
}

struct SamplingFlags {
  model::SamplingOptions opt;
  void add(CLI::App& app) {
    app.add_option("--temp", opt.temperature, "sampling temperature (0 = greedy)")->capture_default_str();
    app.add_option("--top-k", opt.top_k, "keep the k most likely tokens (0 = off)")->capture_default_str();
    app.add_option("--top-p", opt.top_p, "keep the smallest set with this probability mass (1 = off)")->capture_default_str();
    app.add_option("--repeat-penalty", opt.repetition_penalty, "penalty on recently seen tokens (1 = off)")->capture_default_str();
    app.add_option("--repeat-window", opt.repetition_window, "how many recent tokens are penalised")->capture_default_str();
    app.add_option("--seed", opt.seed, "random seed")->capture_default_str();
  }
};

}  // namespace glq::cli
