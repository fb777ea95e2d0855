// Building Models from weight sources; load_model() for GGUF files and HF directories.
#include "glq/model/loader.hpp"

#include <filesystem>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/model/gguf.hpp"
#include "glq/model/glq_checkpoint.hpp"
#include "glq/model/safetensors.hpp"

namespace glq::model {

namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw_io(p.string(), "cannot open");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool is_gguf_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::string(magic, 4) == "GGUF";
}

// The dtype that most weights had in the file ("Q4_1", "BF16").
std::string main_dtype(const WeightSource& w) {
  std::map<std::string, int64_t> counts;
  for (const auto& n : w.names())
    if (const TensorInfo* t = w.find(n)) counts[dtype_name(t->dtype)] += t->numel();
  std::string best;
  int64_t most = -1;
  for (auto& [k, v] : counts)
    if (v > most) {
      most = v;
      best = k;
    }
  return best;
}

}  // namespace

std::unique_ptr<Model> build_model(const ModelConfig& config, const WeightSource& w, const BuildOptions& options) {
  config.validate();
  const ModelConfig& c = config;
  const int64_t h = c.hidden_size, f = c.intermediate_size, vocab = c.vocab_size;
  auto vec = [&](const std::string& name, int64_t n) {
    const int64_t shape[] = {n};
    return w.load_f32(name, shape);
  };
  auto linear = [&](int layer, LinearKind kind, int64_t rows, int64_t cols, bool has_bias) {
    if (options.linear_provider) {
      if (std::optional<Linear> l = options.linear_provider(layer, kind, static_cast<int>(rows), static_cast<int>(cols))) {
        if (l->rows() != rows || l->cols() != cols)
          throw_mismatch(linear_tensor_prefix(layer, kind) + " (from the linear provider)", fmt::format("{}x{}", rows, cols),
                         fmt::format("{}x{}", l->rows(), l->cols()));
        return std::move(*l);
      }
    }
    const std::string prefix = linear_tensor_prefix(layer, kind);
    const int64_t shape[] = {rows, cols};
    std::vector<float> weight = w.load_f32(prefix + ".weight", shape);
    std::vector<float> bias;
    if (has_bias) bias = vec(prefix + ".bias", rows);
    return Linear::dense(std::move(weight), static_cast<int>(rows), static_cast<int>(cols), std::move(bias));
  };
  const int64_t emb_shape[] = {vocab, h};
  auto embedding = std::make_shared<const std::vector<float>>(w.load_f32("model.embed_tokens.weight", emb_shape));
  std::vector<DecoderLayer> layers(static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    DecoderLayer& L = layers[static_cast<size_t>(i)];
    const std::string p = fmt::format("model.layers.{}.", i);
    L.attn_norm = vec(p + "input_layernorm.weight", h);
    L.mlp_norm = vec(p + "post_attention_layernorm.weight", h);
    L.q = linear(i, LinearKind::Q, c.q_dim(), h, c.attention_bias);
    L.k = linear(i, LinearKind::K, c.kv_dim(), h, c.attention_bias);
    L.v = linear(i, LinearKind::V, c.kv_dim(), h, c.attention_bias);
    L.o = linear(i, LinearKind::O, h, c.q_dim(), c.o_bias);
    L.gate = linear(i, LinearKind::Gate, f, h, c.mlp_bias);
    L.up = linear(i, LinearKind::Up, f, h, c.mlp_bias);
    L.down = linear(i, LinearKind::Down, h, f, c.mlp_bias);
  }
  std::vector<float> final_norm = vec("model.norm.weight", h);
  Linear head;
  if (c.tie_embeddings || !w.contains("lm_head.weight")) {
    head = Linear::dense_shared(embedding, static_cast<int>(vocab), static_cast<int>(h));
  } else {
    const int64_t shape[] = {vocab, h};
    head = Linear::dense(w.load_f32("lm_head.weight", shape), static_cast<int>(vocab), static_cast<int>(h));
  }
  auto model = std::make_unique<Model>(c, std::move(embedding), std::move(layers), std::move(final_norm), std::move(head));
  model->set_source_description(fmt::format("from {} {}", main_dtype(w), w.description()));
  return model;
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    if (!fs::exists(dir / "config.json")) throw_io(path, "directory has no config.json");
    if (is_glq_checkpoint(path)) return load_glq_checkpoint(path, options);  // quantization_config.quant_method "glq"
    ModelConfig config = parse_hf_config(read_text(dir / "config.json"), (dir / "config.json").string());
    auto weights = open_safetensors_dir(path);
    auto model = build_model(config, *weights, options.build);
    model->set_source_description(fmt::format("from {} safetensors in {}", main_dtype(*weights), path));
    if (options.load_tokenizer) model->set_tokenizer(load_tokenizer(path));
    return model;
  }
  if (!fs::exists(path)) throw_io(path, "no such file or directory");
  if (!is_gguf_file(path)) throw Error(ErrorKind::Format, fmt::format("{}: neither a GGUF file nor a checkpoint directory", path));
  auto gguf = std::make_shared<const GgufFile>(path);
  ModelConfig config = gguf_model_config(*gguf);
  auto weights = gguf_hf_weights(gguf, config);
  auto model = build_model(config, *weights, options.build);
  model->set_source_description(fmt::format("from {} GGUF {}", main_dtype(*weights), path));
  if (options.load_tokenizer) model->set_tokenizer(Tokenizer::from_gguf(*gguf));
  return model;
}

Tokenizer load_tokenizer(const std::string& path) {
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    if (!fs::exists(dir / "tokenizer.json")) throw_io(path, "directory has no tokenizer.json");
    const fs::path cfg = dir / "tokenizer_config.json";
    return Tokenizer::from_hf_files((dir / "tokenizer.json").string(), fs::exists(cfg) ? cfg.string() : std::string());
  }
  return Tokenizer::from_gguf(GgufFile(path));
}

ModelConfig load_config(const std::string& path) {
  if (fs::is_directory(path)) {
    const fs::path p = fs::path(path) / "config.json";
    return parse_hf_config(read_text(p), p.string());
  }
  return gguf_model_config(GgufFile(path));
}

}  // namespace glq::model
