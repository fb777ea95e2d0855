// End-to-end tuning of a quantized model's continuous parameters (after `glq quantize` has fixed
// its codes): every quantized linear's per-row gain (one factor on all stage scales of a row, or
// with `stage_gains` one per stage) and every RMSNorm gain, fitted to the unquantized model's
// next-token distributions on the calibration windows.
//
//   loss = mean over tokens of KL(p_fp ‖ p_q),   p = softmax(logits)
//
// p_fp comes from the unquantized model's final hidden states (computed by the quantizer as it
// goes) through its own final norm and head; p_q from the quantized model run here in float32
// with each quantized linear dequantized once and each norm gain g ← g₀ ∘ β. A row gain γ_r
// scales row r of the stored W̃ = T_out S_out W (T_in S_in)ᵀ (all its stage scales), so it acts
// on the linear's output in the Hadamard domain: y = (T_out S_out)ᵀ (γ ∘ (T_out S_out W x)). Gradients come from a hand-written backward pass of the Llama layer
// (RMSNorm, RoPE, causal grouped-query attention, SwiGLU, residuals) with one layer's
// activations recomputed at a time (only each layer's input is kept per window), and Adam
// updates all factors (initialised to 1) once per window, its step decaying linearly to a tenth.
// A share of the windows is held out: the held-out KL is measured before tuning and after every
// epoch, the factors of the best epoch are kept (none if no epoch lowers it, so tuning never
// makes the held-out fit worse), and tuning stops after two epochs in a row without a better one.
//
// With `bias`, every linear also gets an output bias b (one per row, in the output's own domain,
// starting at 0): y = W(γ) x + b₀ + b. It is stored as the linear's `.bias` tensor (32 bits per
// row, counted in the linear's bytes), which the engines already apply.
//
// The codes are not changed, nor the format: the gains are folded into the stored stage scales
// and norm weights.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "glq/model/model.hpp"

namespace glq::model {

struct FinetuneSettings {
  int epochs = 0;          // passes over the training windows (0: off)
  double lr = 1e-3;        // Adam step size on the factors (which start at 1)
  int holdout = 0;         // held-out training windows without validation ones (0: max(1, windows / 8))
  uint64_t seed = 0x5eed;  // order of the windows in each epoch
  bool bias = false;       // also tune an output bias per row of every linear
  // Two gains per row of a linear with two stages (3 and 4 bits): one on the first stage's scale,
  // one on the second's, instead of one on both (no bits more: each stage has its scales).
  bool stage_gains = false;
};

// The tuned factors, in the model's order: row_gain[7·layer + kind] (rows of that linear;
// empty for a linear that is not quantized), attn_norm / mlp_norm / final_norm the new gains.
struct FinetuneResult {
  std::vector<std::vector<float>> row_gain;
  std::vector<std::vector<float>> attn_norm, mlp_norm;
  std::vector<float> final_norm;
  std::vector<std::vector<float>> bias;  // bias[7·layer + kind]: the linear's whole new bias; empty: not tuned
  // stage_gain[7·layer + kind]: the gains of its later stages' scales (row_gain then scales the
  // first stage's only); empty (all, or a linear's): row_gain scales every stage.
  std::vector<std::vector<float>> stage_gain;
  double kl_before = 0;       // held-out KL (nats per token) before tuning
  double kl_after = 0;        // held-out KL of the kept factors
  double train_kl_first = 0;  // mean training KL of the first epoch
  int epochs_run = 0;         // epochs run (early stop when the held-out KL rises)
  int best_epoch = 0;         // epoch whose factors are kept (0: none, the model is unchanged)
  double seconds = 0;
};

struct FinetuneProgress {
  std::function<void(const std::string& message)> note;
  std::function<void(int done, int total, const std::string& what, double eta_s)> step;
};

// Tunes `model` (its linears quantized, or dense: dense ones keep their weights and get no gain)
// on the windows `tokens` (each of the same length), against the unquantized final hidden
// states `teacher_hidden` (one (length, hidden) block per window) and the unquantized final norm
// weight. The output head (dense, or 16-bit) is shared by both and not tuned. Does not modify
// the model; apply_finetune() does.
// `val_tokens` / `val_hidden`: the windows the held-out KL is measured on; empty: `holdout` of
// the training windows are held out instead.
FinetuneResult finetune(const Model& model, const std::vector<std::vector<int32_t>>& tokens,
                        const std::vector<std::vector<float>>& teacher_hidden,
                        const std::vector<std::vector<int32_t>>& val_tokens, const std::vector<std::vector<float>>& val_hidden,
                        const std::vector<float>& teacher_final_norm, const FinetuneSettings& settings,
                        const FinetuneProgress& progress = {});

// Folds the result into the model: row gains into the stage scales of its quantized linears,
// the norm gains in place of the old ones, the tuned biases in place of the linears' biases.
void apply_finetune(Model& model, const FinetuneResult& r);

// The mean KL above over `tokens` with the model as it is (all factors 1), in float.
double finetune_kl(const Model& model, const std::vector<std::vector<int32_t>>& tokens,
                   const std::vector<std::vector<float>>& teacher_hidden, const std::vector<float>& teacher_final_norm);

// ---- for tests -----------------------------------------------------------------------------
// The loss above for one window with all factors 1 plus `delta` at flat parameter index `index`
// (the order of finetune_parameter_count: row gains and norm gains, then the biases when `bias`,
// then the later-stage gains when `stage_gains`; gains start at 1, biases at 0), in double
// precision, and its gradient (all parameters) when `grad` is not null.
double finetune_loss_double(const Model& model, std::span<const int32_t> tokens, std::span<const float> teacher_hidden,
                            const std::vector<float>& teacher_final_norm, int64_t index, double delta,
                            std::vector<double>* grad, bool bias = false, bool stage_gains = false);
int64_t finetune_parameter_count(const Model& model, bool bias = false, bool stage_gains = false);

}  // namespace glq::model
