// Loading and summarising GLQ checkpoints.
#include "glq/model/glq_checkpoint.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/format/quantized_tensors.hpp"
#include "glq/format/safetensors_io.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/model/tokenizer.hpp"

namespace glq::model {

namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_io(p.string(), "cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

nlohmann::json read_json(const fs::path& p) {
  try {
    return nlohmann::json::parse(read_text(p));
  } catch (const nlohmann::json::exception& e) {
    throw_format(p.string(), fmt::format("invalid JSON: {}", e.what()));
  }
}

// The 16-bit (and F32) tensors of a GLQ checkpoint as a WeightSource, so build_model() reads
// embeddings, norms and an unquantized head exactly as from any safetensors checkpoint. The
// GLQ code tensors (U8/U16) are not shown to it.
class CheckpointWeights final : public WeightSource {
 public:
  explicit CheckpointWeights(const format::SafetensorsReader& file) : file_(file) {
    for (const auto& t : file.tensors()) {
      DType d;
      switch (t.dtype) {
        case format::StDType::F32: d = DType::F32; break;
        case format::StDType::F16: d = DType::F16; break;
        case format::StDType::BF16: d = DType::BF16; break;
        default: continue;  // codes and signs: read by the linear provider
      }
      if (t.name.find(".glq_") != std::string::npos) continue;  // scales
      TensorInfo info;
      info.name = t.name;
      info.dtype = d;
      info.shape = t.shape;
      info.data = t.data;
      info.file = file.path();
      index_[t.name] = infos_.size();
      infos_.push_back(std::move(info));
    }
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& t : infos_) out.push_back(t.name);
    return out;
  }
  const TensorInfo* find(const std::string& name) const override {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &infos_[it->second];
  }
  std::string description() const override { return fmt::format("GLQ checkpoint {}", file_.path()); }

 private:
  const format::SafetensorsReader& file_;
  std::vector<TensorInfo> infos_;
  std::map<std::string, size_t> index_;
};

std::vector<float> optional_bias(const format::SafetensorsReader& file, const std::string& prefix, int rows) {
  const format::StTensorView* b = file.find(prefix + ".bias");
  if (!b) return {};
  const int64_t shape[] = {rows};
  return format::copy_f32(file.get(prefix + ".bias", format::StDType::F32, shape));
}

// A weight the checkpoint stores in 16 bits (F16 or BF16) as a 16-bit Linear: it stays 16-bit in
// memory (half the bytes of float32) and is widened inside the kernel (glq::cpu::hmatmul).
// nullopt when the tensor is absent or float32 (build_model then reads it as usual).
std::optional<Linear> linear16(const format::SafetensorsReader& file, const WeightSource& weights,
                               const std::string& prefix, int rows, int cols) {
  const format::StTensorView* t = file.find(prefix + ".weight");
  if (!t || (t->dtype != format::StDType::F16 && t->dtype != format::StDType::BF16)) return std::nullopt;
  if (t->shape != std::vector<int64_t>{rows, cols})
    throw_mismatch(fmt::format("{}: {}.weight shape", file.path(), prefix), fmt::format("[{}, {}]", rows, cols),
                   t->shape_string());
  auto w = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(rows) * cols);
  if (t->data.size() != w->size() * sizeof(uint16_t))
    throw_mismatch(fmt::format("{}: {}.weight bytes", file.path(), prefix), std::to_string(w->size() * 2),
                   std::to_string(t->data.size()));
  std::memcpy(w->data(), t->data.data(), t->data.size());  // little-endian, as safetensors stores it
  std::vector<float> bias;
  if (weights.contains(prefix + ".bias")) {
    const int64_t shape[] = {rows};
    bias = weights.load_f32(prefix + ".bias", shape);
  }
  return Linear::dense16(std::move(w), t->dtype == format::StDType::BF16 ? cpu::Half::BF16 : cpu::Half::F16, rows, cols,
                         std::move(bias));
}

}  // namespace

bool is_glq_checkpoint(const std::string& dir) {
  std::error_code ec;
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::is_directory(dir, ec) || !fs::exists(cfg, ec)) return false;
  try {
    return format::is_glq_config(nlohmann::json::parse(read_text(cfg)));
  } catch (const std::exception&) {
    return false;
  }
}

std::unique_ptr<Model> load_glq_checkpoint(const std::string& dir, const LoadOptions& options) {
  const fs::path root(dir);
  const fs::path cfg_path = root / "config.json";
  const nlohmann::json cfg = read_json(cfg_path);
  if (!format::is_glq_config(cfg)) throw_format(cfg_path.string(), "quantization_config.quant_method is not \"glq\"");
  const format::QuantizationConfig qc = format::parse_quantization_config(cfg["quantization_config"], cfg_path.string());
  const ModelConfig config = parse_hf_config(cfg.dump(), cfg_path.string());
  const fs::path st_path = root / "model.safetensors";
  if (!fs::exists(st_path)) throw_io(dir, "GLQ checkpoint has no model.safetensors");
  const format::SafetensorsReader file(st_path.string());
  CheckpointWeights weights(file);

  int quantized = 0;
  BuildOptions build;
  build.linear_provider = [&](int layer, LinearKind kind, int rows, int cols) -> std::optional<Linear> {
    const std::string prefix = linear_tensor_prefix(layer, kind);
    const format::LinearQuantEntry* e = qc.find(prefix);
    if (!e) return linear16(file, weights, prefix, rows, cols);  // kept unquantized (16-bit, or fp32 via build_model)
    if (e->rows != rows || e->cols != cols)
      throw_mismatch(fmt::format("{}: quantization_config.linears.{}.shape", cfg_path.string(), prefix),
                     fmt::format("[{}, {}] (from the model config)", rows, cols), fmt::format("[{}, {}]", e->rows, e->cols));
    ++quantized;
    return Linear::quantized(format::quantized_matrix_from_tensors(file, *e), optional_bias(file, prefix, rows));
  };
  auto model = build_model(config, weights, build);
  if (qc.head_quantized) {
    const format::LinearQuantEntry* e = qc.find("lm_head");
    if (!e) throw_format(cfg_path.string(), "head_quantized is true but quantization_config.linears has no lm_head");
    if (e->rows != config.vocab_size || e->cols != config.hidden_size)
      throw_mismatch(cfg_path.string() + ": lm_head", fmt::format("[{}, {}]", config.vocab_size, config.hidden_size),
                     fmt::format("[{}, {}]", e->rows, e->cols));
    model->lm_head() = Linear::quantized(format::quantized_matrix_from_tensors(file, *e));
    ++quantized;
  } else {
    // The head kept in 16 bits stays so (a tied head reads the embedding's 16-bit tensor).
    const bool tied = config.tie_embeddings || !file.find("lm_head.weight");
    if (std::optional<Linear> head = linear16(file, weights, tied ? "model.embed_tokens" : "lm_head", config.vocab_size,
                                              config.hidden_size))
      model->lm_head() = std::move(*head);
  }
  if (quantized != static_cast<int>(qc.linears.size()))
    throw_format(cfg_path.string(), fmt::format("quantization_config lists {} linears but the model has {} of them",
                                                qc.linears.size(), quantized));
  model->set_source_description(fmt::format("GLQ {:g} bpw checkpoint {}", qc.target_bits, dir));
  if (options.load_tokenizer) model->set_tokenizer(load_tokenizer(dir));
  return model;
}

CheckpointSummary summarize_glq_checkpoint(const std::string& dir) {
  CheckpointSummary s;
  s.dir = dir;
  const fs::path root(dir);
  const fs::path cfg_path = root / "config.json";
  s.config = read_json(cfg_path);
  if (!format::is_glq_config(s.config)) throw_format(cfg_path.string(), "not a GLQ checkpoint (no quantization_config.quant_method \"glq\")");
  s.quant = format::parse_quantization_config(s.config["quantization_config"], cfg_path.string());
  s.model = parse_hf_config(s.config.dump(), cfg_path.string());
  const format::SafetensorsReader file((root / "model.safetensors").string());
  s.file_bytes = file.file_bytes();
  uint64_t tensor_bytes = 0;
  std::map<std::string, bool> linear_prefix;
  for (const auto& e : s.quant.linears) {
    linear_prefix[e.name] = true;
    s.linear_weights += static_cast<int64_t>(e.rows) * e.cols;
  }
  for (const auto& t : file.tensors()) {
    tensor_bytes += t.data.size();
    const size_t g = t.name.find(".glq_");
    if (g != std::string::npos) {
      const std::string kind = t.name.substr(g + 5);
      if (kind.rfind("codes", 0) == 0) s.code_bytes += t.data.size();
      else if (kind.rfind("scales", 0) == 0) s.scale_bytes += t.data.size();
      else s.sign_bytes += t.data.size();
      s.linear_bytes += t.data.size();
    } else if (t.name.size() > 5 && t.name.compare(t.name.size() - 5, 5, ".bias") == 0 &&
               linear_prefix.count(t.name.substr(0, t.name.size() - 5))) {
      s.linear_bytes += t.data.size();
    }
  }
  s.other_bytes = s.file_bytes - s.linear_bytes;
  s.total_weights = s.model.parameter_count();
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"})
    if (fs::exists(root / f)) s.tokenizer_files.emplace_back(f);
  (void)tensor_bytes;
  return s;
}

}  // namespace glq::model
