// Building a Model from files.
//
//   load_model(path)        a GGUF file, or a Hugging Face directory (config.json +
//                           model.safetensors[.index.json] + tokenizer.json)
//   build_model(config, w)  the common step: every tensor is read from a WeightSource under its
//                           Hugging Face name; BuildOptions::linear_provider may supply any
//                           linear itself (e.g. a quantized one from a GLQ checkpoint), in which
//                           case the source need not hold that weight.
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

struct LoadOptions {
  bool load_tokenizer = true;
  BuildOptions build;
};

// GGUF file or HF directory. Throws Io (missing), Format (broken), Unsupported (architecture).
std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options = {});

// The tokenizer of a GGUF file or HF directory alone.
Tokenizer load_tokenizer(const std::string& path);
// The config of a GGUF file or HF directory alone.
ModelConfig load_config(const std::string& path);

}  // namespace glq::model
