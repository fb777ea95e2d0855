// glq inspect DIR: what a GLQ checkpoint holds (docs/format.md).
#include <map>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "glq/model/glq_checkpoint.hpp"

namespace {

struct InspectArgs {
  std::string dir;
  bool layers = false;
  bool json = false;
};

int run_inspect(const InspectArgs& a) {
  using namespace glq;
  const model::CheckpointSummary s = model::summarize_glq_checkpoint(a.dir);
  const auto& q = s.quant;
  const auto& c = s.model;
  std::map<int, int64_t> by_bits;
  for (const auto& e : q.linears) by_bits[e.bits] += static_cast<int64_t>(e.rows) * e.cols;
  if (a.json) {
    nlohmann::json j = {{"dir", s.dir},
                        {"format_version", q.format_version},
                        {"bits", q.target_bits},
                        {"file_bytes", s.file_bytes},
                        {"linear_bytes", s.linear_bytes},
                        {"linear_weights", s.linear_weights},
                        {"total_weights", s.total_weights},
                        {"linear_bpw", s.linear_bpw()},
                        {"file_bpw", s.file_bpw()},
                        {"quantization_config", s.config["quantization_config"]}};
    fmt::print("{}\n", j.dump());
    return 0;
  }
  fmt::print("GLQ checkpoint {}\n", s.dir);
  fmt::print("  format version {}, pack version {}, codebooks 2: e8p16-v1; 3: e8p16-v1 + e8r8-v1; 4: e8p16-v1 x 2\n",
             q.format_version, q.pack_version);
  fmt::print("  model: {}, {} layers, hidden {}, ffn {}, heads {} (kv {}), vocab {}, {:.1f}M parameters\n", model::arch_name(c.arch),
             c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.vocab_size, s.total_weights / 1e6);
  fmt::print("  target {:g} bits; transform {}; rounding {}; damp {:g}; seed {:#x}\n", q.target_bits,
             q.rht ? format::kRhtTransformId : "none", q.ldlq ? "block LDLQ" : "nearest", q.damp, q.seed);
  fmt::print("  calibration: {} x {} tokens of {}\n", q.calibration.sequences, q.calibration.seq_len,
             q.calibration.file.empty() ? "?" : q.calibration.file);
  std::string mix;
  for (auto& [b, n] : by_bits)
    mix += fmt::format("{}{} bits {:.1f}%", mix.empty() ? "" : ", ", b, 100.0 * static_cast<double>(n) / static_cast<double>(s.linear_weights));
  fmt::print("  {} quantized linears, {:.2f}M weights ({})\n", q.linears.size(), s.linear_weights / 1e6, mix);
  fmt::print("  kept tensors: {} (embeddings, norms{})\n", q.dtype_16bit, q.head_quantized ? "" : ", head");
  fmt::print("  linear layers: {:.2f} MiB (codes {:.2f}, scales {:.2f}, signs {:.3f}) = {:.3f} bits per weight\n",
             s.linear_bytes / 1048576.0, s.code_bytes / 1048576.0, s.scale_bytes / 1048576.0, s.sign_bytes / 1048576.0, s.linear_bpw());
  fmt::print("  model.safetensors: {:.2f} MiB = {:.3f} bits per parameter overall\n", s.file_bytes / 1048576.0, s.file_bpw());
  std::string tf;
  for (const auto& f : s.tokenizer_files) tf += (tf.empty() ? "" : ", ") + f;
  fmt::print("  tokenizer files: {}\n", tf.empty() ? "none" : tf);
  if (a.layers) {
    fmt::print("\n  {:<40} {:>4} {:>12} {:>11} {:>11}\n", "linear", "bits", "shape", "proxy loss", "rel. error");
    for (const auto& e : q.linears)
      fmt::print("  {:<40} {:>4} {:>12} {:>11.5f} {:>11.5f}\n", e.name, e.bits, fmt::format("{}x{}", e.rows, e.cols), e.proxy_loss,
                 e.relative_weight_error);
  }
  return 0;
}

}  // namespace

GLQ_COMMAND("inspect", "summarise a GLQ checkpoint directory", [](CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  app.add_option("dir", a->dir, "GLQ checkpoint directory")->required();
  app.add_flag("--layers", a->layers, "list every quantized linear");
  app.add_flag("--json", a->json, "print one JSON object on stdout");
  return [a] { return run_inspect(*a); };
});
