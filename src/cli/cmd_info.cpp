// glq info MODEL: what a GGUF file or checkpoint directory holds, without running it.
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/model_session.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/safetensors.hpp"

namespace {

struct InfoArgs {
  std::string model;
  bool tensors = false;
  bool json = false;
};

int info(const InfoArgs& a) {
  using namespace glq::model;
  const ModelConfig c = load_config(a.model);
  std::unique_ptr<WeightSource> w;
  std::shared_ptr<const GgufFile> g;
  if (std::filesystem::is_directory(a.model)) {
    w = open_safetensors_dir(a.model);
  } else {
    g = std::make_shared<const GgufFile>(a.model);
    w = gguf_hf_weights(g, c);
  }
  const Tokenizer tok = load_tokenizer(a.model);
  fmt::print(stderr, "{}\n", w->description());
  fmt::print(stderr, "arch {}, {:.1f}M parameters, {} layers, hidden {}, ffn {}, heads {} (kv {}), head_dim {}, vocab {}, context {}\n",
             arch_name(c.arch), c.parameter_count() / 1e6, c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads,
             c.num_kv_heads, c.head_dim, c.vocab_size, c.max_context);
  fmt::print(stderr, "rope theta {}{}, rms eps {}, tied embeddings {}, qkv bias {}\n", c.rope_theta,
             c.rope_scaling.type.empty() ? "" : " scaling " + c.rope_scaling.type, c.norm_eps, c.tie_embeddings, c.attention_bias);
  fmt::print(stderr, "tokenizer: {} tokens, bos {}, eos {}, add_bos {}, chat format {}\n", tok.vocab_size(), tok.bos_id(),
             tok.eos_id(), tok.add_bos_default(), chat_format_name(tok.chat_format()));
  if (a.tensors)
    for (const auto& n : w->names()) {
      const TensorInfo& t = w->get(n);
      fmt::print(stderr, "  {:<50} {:<5} {}\n", n, dtype_name(t.dtype), t.shape_string());
    }
  if (a.json) {
    nlohmann::json j = {{"arch", arch_name(c.arch)}, {"parameters", c.parameter_count()}, {"layers", c.num_layers},
                        {"hidden", c.hidden_size}, {"intermediate", c.intermediate_size}, {"heads", c.num_heads},
                        {"kv_heads", c.num_kv_heads}, {"head_dim", c.head_dim}, {"vocab", c.vocab_size},
                        {"context", c.max_context}, {"rope_theta", c.rope_theta}, {"tied_embeddings", c.tie_embeddings},
                        {"chat_format", chat_format_name(tok.chat_format())}};
    fmt::print("{}\n", j.dump());
  }
  return 0;
}

}  // namespace

GLQ_COMMAND("info", "describe a GGUF file or checkpoint directory (config, tensors, tokenizer)", [](CLI::App& app) {
  auto a = std::make_shared<InfoArgs>();
  app.add_option("model", a->model, "GGUF file or Hugging Face checkpoint directory")->required();
  app.add_flag("--tensors", a->tensors, "list every tensor");
  app.add_flag("--json", a->json, "print one JSON object on stdout");
  return [a] { return info(*a); };
});
