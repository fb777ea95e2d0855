// The self-description of a GLQ checkpoint: the "quantization_config" object of its
// config.json, and the names of the tensors that hold each quantized linear.
//
// A GLQ checkpoint is a directory (docs/format.md):
//   config.json             the model's Hugging Face config + "quantization_config" (below)
//   model.safetensors       quantized linears (codes U16/U8, scales F32, signs bit-packed U8)
//                           and the 16-bit tensors (embeddings, norms, head) as F16 or BF16
//   tokenizer.json, tokenizer_config.json (+ chat_template.jinja, generation_config.json)
//
// Tensors of the quantized linear with Hugging Face prefix P ("model.layers.3.mlp.down_proj"),
// shape (rows, cols), stages s = 0, 1 (see glq/codec/quantized_matrix.hpp):
//   P.glq_codes.s     U16 (E8P16) or U8 (E8R8), shape (rows, cols/8)
//   P.glq_scales.s    F32, shape (rows)
//   P.glq_sign_in     U8, shape (ceil(cols/8)): bit j%8 of byte j/8 is 1 when sign_in[j] = -1
//   P.glq_sign_out    U8, shape (ceil(rows/8)): likewise for sign_out
//   P.bias            F32, shape (rows), only for models whose linears have biases
// The Hadamard plans are not stored: make_hadamard_plan(n) is a pure function of n (the rule is
// part of transform "rht-v1"); a linear quantized without the transform ("none") has no sign
// tensors and identity plans.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace glq::format {

// Version of the checkpoint layout above. A reader rejects any other version.
inline constexpr int kGlqFormatVersion = 1;
inline constexpr const char* kGlqQuantMethod = "glq";
// Identifier of the transform of glq/transform/hadamard.hpp (plans by that rule, splitmix64 signs).
inline constexpr const char* kRhtTransformId = "rht-v1";

struct LinearQuantEntry {
  std::string name;          // Hugging Face prefix, "model.layers.0.self_attn.q_proj"
  int bits = 0;              // 2, 3 or 4
  int rows = 0, cols = 0;    // (out, in)
  bool rht = true;           // stored in the Hadamard domain with sign vectors
  uint64_t seed = 0;         // seed of its sign vectors
  double proxy_loss = 0;             // tr((W-Q) H (W-Q)^T) / tr(W H W^T) on the calibration data
  double relative_weight_error = 0;  // ||W-Q||_F / ||W||_F
};

struct CalibrationInfo {
  std::string file;   // file name (no directories)
  int sequences = 0;
  int seq_len = 0;
  uint64_t seed = 0;
};

struct QuantizationConfig {
  int format_version = kGlqFormatVersion;
  int pack_version = 1;         // codec::kGlqPackVersion of the codes
  double target_bits = 0;       // requested average bits per linear weight (e.g. 2.5)
  bool ldlq = true;             // block LDLQ (false: nearest rounding)
  bool rht = true;              // randomized Hadamard transform
  double damp = 0.01;           // relative Hessian damping
  uint64_t seed = 0;            // base seed; each linear's is in its entry
  std::string dtype_16bit = "float16";  // "float16" | "bfloat16" | "float32" for kept tensors
  bool head_quantized = false;  // lm_head is a quantized linear (else kept in 16 bits)
  CalibrationInfo calibration;
  std::vector<LinearQuantEntry> linears;  // every quantized linear, in model order

  const LinearQuantEntry* find(const std::string& name) const;
};

// The codebook ids of the stages of a width: {"e8p16-v1"} for 2 bits, ... (codec's registry).
std::vector<std::string> codebook_ids_for_bits(int bits);

// Keys in a fixed, readable order.
nlohmann::ordered_json to_json(const QuantizationConfig& qc);
// Checks quant_method == "glq" and format_version == kGlqFormatVersion (Format error naming
// `origin`, the version found and the one this build reads), and every field's type.
QuantizationConfig parse_quantization_config(const nlohmann::json& qc, const std::string& origin);
// True when a config.json object carries quantization_config.quant_method == "glq".
bool is_glq_config(const nlohmann::json& config);

// Tensor names of a quantized linear (see the table above).
std::string glq_codes_name(const std::string& prefix, int stage);
std::string glq_scales_name(const std::string& prefix, int stage);
std::string glq_sign_in_name(const std::string& prefix);
std::string glq_sign_out_name(const std::string& prefix);

}  // namespace glq::format
