// GLQ checkpoints (layout: docs/format.md and glq/format/quantization_config.hpp): loading one
// into a Model whose linears run from their codes, summarising one, and the pieces that the
// quantizer uses to write one (config.json from a ModelConfig, tokenizer files from a GGUF).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "glq/format/quantization_config.hpp"
#include "glq/model/config.hpp"
#include "glq/model/loader.hpp"
#include "glq/model/model.hpp"

namespace glq::model {

class GgufFile;

// True when `dir` is a directory whose config.json carries quantization_config.quant_method
// "glq". Never throws for a missing or unreadable config (returns false).
bool is_glq_checkpoint(const std::string& dir);

// Builds the Model: the 16-bit tensors through build_model(), every linear listed in
// quantization_config as Linear::quantized (its codes are never expanded to dense weights), and
// the tokenizer from tokenizer.json. Throws Format for an unknown format version or codebook,
// a missing or mis-shaped tensor; Io for missing files.
std::unique_ptr<Model> load_glq_checkpoint(const std::string& dir, const LoadOptions& options = {});

// What `glq inspect` prints.
struct CheckpointSummary {
  std::string dir;
  nlohmann::json config;              // config.json
  format::QuantizationConfig quant;   // its quantization_config
  ModelConfig model;
  uint64_t file_bytes = 0;            // model.safetensors
  uint64_t linear_bytes = 0;          // codes + scales + signs (+ biases) of quantized linears
  uint64_t code_bytes = 0, scale_bytes = 0, sign_bytes = 0;
  uint64_t other_bytes = 0;           // 16-bit tensors and the safetensors header
  int64_t linear_weights = 0;         // rows·cols summed over quantized linears
  int64_t total_weights = 0;          // parameters of the model (tied embedding once)
  double linear_bpw() const { return linear_weights ? 8.0 * static_cast<double>(linear_bytes) / static_cast<double>(linear_weights) : 0; }
  double file_bpw() const { return total_weights ? 8.0 * static_cast<double>(file_bytes) / static_cast<double>(total_weights) : 0; }
  std::vector<std::string> tokenizer_files;
};
CheckpointSummary summarize_glq_checkpoint(const std::string& dir);

// A Hugging Face config.json for `config` (used when the source is a GGUF file, which has none).
nlohmann::ordered_json hf_config_json(const ModelConfig& config);

// Writes tokenizer.json and tokenizer_config.json equivalent to Tokenizer::from_gguf(gguf)
// (checked by tests: both encode alike). Byte-level BPE vocabularies only; a SentencePiece
// GGUF throws Unsupported (quantize from its Hugging Face directory instead).
void write_hf_tokenizer_from_gguf(const GgufFile& gguf, const std::string& dir);

}  // namespace glq::model
