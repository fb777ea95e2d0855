// Building Models from weight sources; load_model() for GGUF files and HF directories.
#include "glq/model/loader.hpp"

#include <atomic>
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

namespace {

std::atomic<int64_t> g_materialized_live{0};
std::atomic<int64_t> g_materialized_peak{0};

// A weight read from the mapped file into float32, counted while it is alive.
std::shared_ptr<const std::vector<float>> counted_weight(std::vector<float> w) {
  const int64_t bytes = static_cast<int64_t>(w.size() * sizeof(float));
  const int64_t now = g_materialized_live.fetch_add(bytes) + bytes;
  int64_t peak = g_materialized_peak.load();
  while (now > peak && !g_materialized_peak.compare_exchange_weak(peak, now)) {
  }
  return std::shared_ptr<const std::vector<float>>(new std::vector<float>(std::move(w)), [bytes](const std::vector<float>* p) {
    g_materialized_live.fetch_sub(bytes);
    delete p;
  });
}

// Builds the model from `w`; with `mapped` set, the linears are deferred loads from it (kept alive
// by `mapped`), the embedding is read row by row and the head is deferred too.
std::unique_ptr<Model> build(const ModelConfig& config, const WeightSource& w, std::shared_ptr<const WeightSource> mapped,
                             const BuildOptions& options) {
  config.validate();
  const ModelConfig& c = config;
  const int64_t h = c.hidden_size, f = c.intermediate_size, vocab = c.vocab_size;
  auto vec = [&](const std::string& name, int64_t n) {
    const int64_t shape[] = {n};
    return w.load_f32(name, shape);
  };
  // A linear (rows, cols) read from `name`, deferred when mapped.
  auto dense_or_deferred = [&](const std::string& name, int64_t rows, int64_t cols, std::vector<float> bias) {
    const int64_t shape[] = {rows, cols};
    if (!mapped) return Linear::dense(w.load_f32(name, shape), static_cast<int>(rows), static_cast<int>(cols), std::move(bias));
    w.checked_float_tensor(name, shape);  // a missing or misshapen tensor is reported now, not mid-run
    Linear::WeightLoader load = [mapped, name, rows, cols] {
      const int64_t sh[] = {rows, cols};
      return counted_weight(mapped->load_f32(name, sh));
    };
    return Linear::deferred(static_cast<int>(rows), static_cast<int>(cols), std::move(load), name, std::move(bias));
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
    std::vector<float> bias;
    if (has_bias) bias = vec(prefix + ".bias", rows);
    return dense_or_deferred(prefix + ".weight", rows, cols, std::move(bias));
  };
  const int64_t emb_shape[] = {vocab, h};
  std::shared_ptr<const std::vector<float>> embedding;
  if (!mapped) embedding = std::make_shared<const std::vector<float>>(w.load_f32("model.embed_tokens.weight", emb_shape));
  else w.checked_float_tensor("model.embed_tokens.weight", emb_shape);
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
  const bool tied = c.tie_embeddings || !w.contains("lm_head.weight");
  if (tied && !mapped) {
    head = Linear::dense_shared(embedding, static_cast<int>(vocab), static_cast<int>(h));
  } else {
    head = dense_or_deferred(tied ? "model.embed_tokens.weight" : "lm_head.weight", vocab, h, {});
  }
  std::unique_ptr<Model> model;
  if (!mapped) {
    model = std::make_unique<Model>(c, std::move(embedding), std::move(layers), std::move(final_norm), std::move(head));
  } else {
    Model::EmbeddingRows rows = [mapped, vocab, h](int64_t first, int64_t count, float* out) {
      const int64_t shape[] = {vocab, h};
      mapped->load_rows_f32("model.embed_tokens.weight", shape, first, count, out);
    };
    model = std::make_unique<Model>(c, std::move(rows), std::move(layers), std::move(final_norm), std::move(head));
  }
  model->set_source_description(fmt::format("from {} {}", main_dtype(w), w.description()));
  return model;
}

}  // namespace

MaterializedBytes materialized_weight_bytes() { return {g_materialized_live.load(), g_materialized_peak.load()}; }
void reset_materialized_peak() { g_materialized_peak.store(g_materialized_live.load()); }

std::unique_ptr<Model> build_model(const ModelConfig& config, const WeightSource& w, const BuildOptions& options) {
  return build(config, w, nullptr, options);
}

std::unique_ptr<Model> build_model_mapped(const ModelConfig& config, std::shared_ptr<const WeightSource> weights,
                                          const BuildOptions& options) {
  if (!weights) throw_invalid("build_model_mapped: no weight source");
  const WeightSource& w = *weights;
  return build(config, w, std::move(weights), options);
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  if (fs::is_directory(path)) {
    const fs::path dir(path);
    if (!fs::exists(dir / "config.json")) throw_io(path, "directory has no config.json");
    if (is_glq_checkpoint(path)) return load_glq_checkpoint(path, options);  // quantization_config.quant_method "glq"
    ModelConfig config = parse_hf_config(read_text(dir / "config.json"), (dir / "config.json").string());
    std::shared_ptr<const WeightSource> weights = open_safetensors_dir(path);
    auto model = options.mapped ? build_model_mapped(config, weights, options.build) : build_model(config, *weights, options.build);
    model->set_source_description(fmt::format("from {} safetensors in {}", main_dtype(*weights), path));
    if (options.load_tokenizer) model->set_tokenizer(load_tokenizer(path));
    return model;
  }
  if (!fs::exists(path)) throw_io(path, "no such file or directory");
  if (!is_gguf_file(path)) throw Error(ErrorKind::Format, fmt::format("{}: neither a GGUF file nor a checkpoint directory", path));
  auto gguf = std::make_shared<const GgufFile>(path);
  ModelConfig config = gguf_model_config(*gguf);
  std::shared_ptr<const WeightSource> weights = gguf_hf_weights(gguf, config);
  auto model = options.mapped ? build_model_mapped(config, weights, options.build) : build_model(config, *weights, options.build);
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
