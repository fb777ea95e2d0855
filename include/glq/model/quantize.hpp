// The GLQ quantization pipeline: a model and some text in, a GLQ checkpoint directory out.
//
//  1. Calibration set: the text is tokenized and N windows of L tokens are drawn (seeded) from
//     the token stream.
//  2. Bit allocation (only for a fractional target such as 2.5): every linear is quantized at
//     the two neighbouring widths on the unquantized model's activations, and widths are raised
//     greedily where the measured output error drops most per extra stored bit, until the
//     average over all linear weights reaches the target.
//  3. Layer by layer (GPTQ-style): the layer's inputs are those of the already quantized layers
//     before it; a hook accumulates H = Σ x xᵀ for each distinct linear input (q/k/v share one,
//     gate/up share one, o_proj, down_proj) in float64; each linear is quantized with
//     codec::quantize_matrix (RHT + block LDLQ + E8 codebooks); the layer's outputs are then
//     recomputed with the quantized weights and fed to the next layer. By default the Hessians
//     are collected true-sequentially (q/k/v, then o_proj on the quantized attention, gate/up,
//     then down_proj), the unquantized model's hidden states run alongside so that each linear
//     is quantized toward the asymmetric target of codec::asymmetric_target (it also corrects
//     the error in its inputs, and o_proj/down_proj that of the residual stream), and the stage
//     scales are refit by least squares after rounding (see docs/quantize.md).
//  4. Each finished layer is written to OUT.partial/ (a run that is stopped resumes there); the
//     checkpoint is assembled in a temporary directory and renamed to OUT when complete.
//
// Memory: quantize_model_files() opens the source with LoadOptions::mapped, so its weights stay
// in the memory-mapped file; one layer is converted to float32 when the pipeline reaches it and
// released when its quantized matrices replace it (the finished part of the model costs its
// compressed size). Beyond that, the working set is one layer's Hessians, the calibration
// activations (N·L·hidden floats) and one linear's codes at a time (docs/quantize.md, "Memory").
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "glq/model/model.hpp"

namespace glq::model {

struct QuantizeSettings {
  double bits = 2;               // 2, 3, 4, or a fractional average in (2, 4)
  // N calibration windows. 0 (the default): default_calib_seqs(bits), 64 at 3 bits (3 <= bits < 4)
  // and 32 otherwise.
  int calib_seqs = 0;
  int seq_len = 512;             // L tokens per window
  uint64_t seed = 0x5eed;        // calibration draw and sign vectors
  // Relative Hessian damping, H + damp·mean(diag H)·I. Negative (the default): default_damp(bits),
  // 0.05 below 4 bits (where the asymmetric and residual targets are on) and 0.01 at 4 bits.
  double damp = -1;
  bool rht = true;               // randomized Hadamard transform
  bool ldlq = true;              // block LDLQ (false: nearest rounding)
  // Within a layer, quantize q/k/v first, then collect o_proj's Hessian on the quantized
  // attention, then gate/up, then down_proj's on the quantized MLP path (false: one Hessian
  // pass over the unquantized layer for all seven linears).
  bool true_sequential = true;
  // Strength alpha of the asymmetric target W + alpha·W·Δ·H⁻¹ (codec::asymmetric_target): the
  // unquantized model's hidden states are propagated alongside the quantized ones so that each
  // linear also corrects the error already in its inputs. 0: plain GPTQ target W. Negative
  // (the default): 1 for linears below 4 bits, 0 at 4 bits (measured: it helps at 2 and 3
  // bits and not at 4, docs/quantize.md).
  double asymmetric = -1;
  bool refit_scales = true;      // least-squares refit of the stage scales (QuantizeOptions)
  // Multipliers of the RMS-based stage scales tried by LDLQ, each row keeping its best
  // (QuantizeOptions::scale_multipliers). Empty: the default grid, default_scale_search(bits).
  std::vector<double> scale_search;
  // First-stage candidates of list decoding (QuantizeOptions::list_decode; 1: off). 0 (the
  // default): default_list_decode(bits), 8 from 3 bits up and off below.
  int list_decode = 0;
  // Strength beta with which o_proj and down_proj also absorb the part of the residual stream's
  // error (unquantized minus quantized model) that their inputs predict (asymmetric_target's R).
  // Negative (the default): 1 below 4 bits, 0 at 4 bits, as `asymmetric`.
  double residual_target = -1;
  // End-to-end tuning of the row gains and norm gains after all layers are quantized
  // (glq/model/finetune.hpp): epochs over the calibration windows (0: off) and Adam's step.
  int finetune_epochs = 0;
  double finetune_lr = 1e-3;
  // Windows the tuning trains on besides the calibration windows, drawn from the same text (their
  // unquantized hidden states are carried through the layers as the quantizer goes). Negative
  // (the default): 3 per calibration window, as many as the text holds: 190,656 gains for
  // SmolLM2-135M against 16,384 calibration tokens at 4 bits, where the training KL fell much
  // faster than the KL on other windows (docs/quantize.md).
  int finetune_windows = -1;
  bool finetune_bias = false;  // the tuning also fits an output bias per row of every quantized linear
  bool finetune_stage_gains = false;  // a gain per stage of each row of a two-stage linear (3, 4 bits), not one for both
  // The tuning trains on the extra windows alone, not on the calibration windows: with the
  // asymmetric targets the quantizer fits those windows far better than other text (KL 0.048
  // against 0.22 nats/token at 3 bits, docs/quantize.md), so they teach the gains little.
  bool finetune_extra_only = false;
  bool keep_head_16bit = true;   // false: lm_head is quantized too (at the nearest width)
  std::string dtype_16bit = "float16";  // "float16" | "bfloat16" | "float32" for kept tensors
  bool resume = true;            // reuse OUT.partial/ from an interrupted run with equal settings
  bool overwrite = false;        // replace an existing OUT
};

// The scale multipliers that QuantizeSettings::scale_search means when empty, for linears of
// `bits` bits (2, 3 or 4).
std::vector<double> default_scale_search(int bits);

// What QuantizeSettings::calib_seqs and list_decode mean when 0, for a model of `bits` bits per
// weight (the requested average, so that every linear of a mixed model shares them). Measured
// on SmolLM2-135M (docs/quantize.md): 64 windows instead of 32 lower 3-bit perplexity and not
// 4-bit perplexity; list decoding with 8 candidates lowers the 4-bit proxy loss by 8 %.
int default_calib_seqs(double bits);
int default_list_decode(double bits);
double default_damp(double bits);

// One quantized linear in the report.
struct LinearReport {
  std::string name;  // "model.layers.3.mlp.down_proj"
  int layer = -1;    // -1 for lm_head
  int bits = 0;
  int rows = 0, cols = 0;
  double proxy_loss = 0;             // relative, tr(E H Eᵀ)/tr(W H Wᵀ)
  double relative_weight_error = 0;  // ‖W−Q‖_F/‖W‖_F
  uint64_t stored_bytes = 0;         // codes + scales + signs
  std::string warnings;
};

struct QuantizeResult {
  std::string out_dir;
  std::vector<LinearReport> linears;
  uint64_t file_bytes = 0;        // model.safetensors
  int64_t linear_weights = 0;
  uint64_t linear_bytes = 0;
  int64_t total_weights = 0;
  double linear_bpw = 0;          // 8·linear_bytes / linear_weights
  double file_bpw = 0;            // 8·file_bytes / total_weights
  double seconds = 0;
  int resumed_layers = 0;
  // End-to-end tuning (finetune_epochs > 0; null otherwise): the record written to the
  // checkpoint's quantization_config.finetune (docs/format.md: settings, windows, epochs run, the
  // epoch kept, validation KL before and after in nats per token), and the seconds it took.
  nlohmann::ordered_json finetune;
  double finetune_seconds = 0;
};

// Progress events (all optional). `eta_s` < 0 when unknown.
struct QuantizeProgress {
  std::function<void(const std::string& message)> note;
  std::function<void(int done, int total, const std::string& what, double eta_s)> step;
  std::function<void(int layer, int total, const std::vector<LinearReport>& linears, double layer_s, double eta_s)> layer_done;
};

// The N windows of L tokens, drawn without overlap by `seed` from `tokens`. Throws
// InvalidArgument naming `origin` when there are fewer than N·L tokens.
std::vector<std::vector<int32_t>> make_calibration_set(std::span<const int32_t> tokens, int n, int len, uint64_t seed,
                                                       const std::string& origin);
// Windows v of the same seeded draw after its first n, so disjoint from make_calibration_set(
// tokens, n, ...)'s (the end-to-end tuning's validation and extra training windows); empty when
// the text has fewer than n + v slots.
std::vector<std::vector<int32_t>> make_windows_after(std::span<const int32_t> tokens, int n, int v, int len, uint64_t seed);

// Per-linear widths for a target average (bits fractional); `sensitivity` is (linear, width) →
// absolute proxy loss at widths lo = floor(bits) and hi = lo + 1. Greedy on loss drop per extra
// stored bit. Returns the width of each linear.
struct SensitivityEntry {
  int64_t weights = 0;   // rows·cols
  double loss_lo = 0;    // absolute output error at the lower width
  double loss_hi = 0;    // at the higher width
};
std::vector<int> allocate_bits(const std::vector<SensitivityEntry>& entries, double bits);

// Where the checkpoint's non-weight files come from.
struct CheckpointSource {
  nlohmann::ordered_json hf_config;                       // the source's config.json fields
  std::function<void(const std::string& dir)> write_tokenizer;  // writes tokenizer files into dir
  std::string calib_name;                                 // calibration file name, for the record
  std::string fingerprint;                                // identifies the source (for resume)
};

// Quantizes `model` (its linears are replaced in place by their quantized matrices as the
// pipeline goes; deferred ones are read from their file one layer at a time) and writes the
// checkpoint to out_dir.
// `validation`: windows the end-to-end tuning measures itself on (finetune_epochs > 0); empty: it
// holds out some of the calibration windows instead. `extra`: windows it also trains on.
QuantizeResult quantize_model(Model& model, const std::vector<std::vector<int32_t>>& calibration,
                              const CheckpointSource& source, const std::string& out_dir,
                              const QuantizeSettings& settings, const QuantizeProgress& progress = {},
                              const std::vector<std::vector<int32_t>>& validation = {},
                              const std::vector<std::vector<int32_t>>& extra = {});

// The whole job from files: MODEL (GGUF file or Hugging Face directory) and a UTF-8 text file.
// Checks that a tokenizer is present, that the text is long enough and that out_dir can be
// written before any quantization work.
QuantizeResult quantize_model_files(const std::string& model_path, const std::string& calib_path,
                                    const std::string& out_dir, const QuantizeSettings& settings,
                                    const QuantizeProgress& progress = {});

}  // namespace glq::model
