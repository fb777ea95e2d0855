// Building a Model from files.
//
//   load_model(path)        a GGUF file, or a Hugging Face directory (config.json +
//                           model.safetensors[.index.json] + tokenizer.json)
//   build_model(config, w)  the common step: every tensor is read from a WeightSource under its
//                           Hugging Face name; BuildOptions::linear_provider may supply any
//                           linear itself (e.g. a quantized one from a GLQ checkpoint), in which
//                           case the source need not hold that weight.
//   LoadOptions::mapped     the weights stay in the memory-mapped file: every linear is
//                           deferred (Linear::deferred, converted to float32 only while a caller
//                           holds it materialized), the token embedding is read row by row on
//                           demand, and the head likewise until it is needed. Only norms (and
//                           biases) are in memory, so a model larger than RAM can be opened; the
//                           quantizer materializes one layer at a time (glq/model/quantize.hpp).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "glq/model/config.hpp"
#include "glq/model/linear.hpp"
#include "glq/model/model.hpp"
#include "glq/model/tensor.hpp"

namespace glq::model {

// Returns the linear for (layer, kind) with shape (rows, cols), or nullopt to read the dense
// weight (and bias) from the WeightSource. A returned Linear of another shape is an error.
using LinearProvider =
    std::function<std::optional<Linear>(int layer, LinearKind kind, int rows, int cols)>;

struct BuildOptions {
  LinearProvider linear_provider;  // optional
};

std::unique_ptr<Model> build_model(const ModelConfig& config, const WeightSource& weights,
                                   const BuildOptions& options = {});
// The same model with its weights left in `weights` (see LoadOptions::mapped), which the model's
// deferred linears and embedding keep alive.
std::unique_ptr<Model> build_model_mapped(const ModelConfig& config, std::shared_ptr<const WeightSource> weights,
                                          const BuildOptions& options = {});

struct LoadOptions {
  bool load_tokenizer = true;
  bool mapped = false;  // weights stay in the mapped file (GGUF or safetensors sources)
  BuildOptions build;
};

// Float32 bytes of weights that deferred linears of mapped models have materialized and that are
// still alive (freed when the last Linear holding them goes), and the most alive at once since
// reset_materialized_peak(): what a streaming caller holds of the source model in float32.
struct MaterializedBytes {
  int64_t live = 0;
  int64_t peak = 0;
};
MaterializedBytes materialized_weight_bytes();
void reset_materialized_peak();

// GGUF file or HF directory. Throws Io (missing), Format (broken), Unsupported (architecture).
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});

// The tokenizer of a GGUF file or HF directory alone.
Tokenizer load_tokenizer(const std::string& path);
// The config of a GGUF file or HF directory alone.
ModelConfig load_config(const std::string& path);

}  // namespace glq::model
