// A weight matrix compressed by GLQ, and the reference operations on it.
//
// Packed layout, version 1 (kGlqPackVersion). For W of shape (rows, cols) = (out, in), both
// multiples of 8, the matrix is held in the Hadamard domain (see glq/transform/hadamard.hpp):
//   W̃ = T_out · diag(sign_out) · W · diag(sign_in) · T_in^T  ≈  Σ_s diag(scale_s) · C_s
// where stage s has a codebook (E8P16 or E8R8) and a code for every group of 8 consecutive
// columns of every row:
//   stage.codes   (rows, cols/8) codes, row-major, each code_bytes(codebook) bytes little-endian
//                 (uint16 for E8P16, uint8 for E8R8), so one row's codes are contiguous and a
//                 warp or SIMD lane reads consecutive groups with wide coalesced loads.
//   stage.scales  (rows) float32: weight = scale · decoded lattice coordinate.
// Bits per weight: 2 → [E8P16]; 3 → [E8P16, E8R8]; 4 → [E8P16, E8P16].
// y = W x is computed without materialising W:
//   x̃ = T_in (sign_in ∘ x);  ỹ_r = Σ_s scale_s[r] · Σ_g ⟨decode(C_s[r, g]), x̃[8g .. 8g+8)⟩;
//   y = sign_out ∘ (T_out^T ỹ).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "glq/codec/codebook.hpp"
#include "glq/transform/hadamard.hpp"

namespace glq::codec {

inline constexpr int kGlqPackVersion = 1;

struct CodeStage {
  Codebook codebook = Codebook::E8P16;
  std::vector<uint8_t> codes;  // (rows, cols/8) codes of code_bytes(codebook) bytes, row-major
  std::vector<float> scales;   // (rows)

  const uint16_t* codes16() const { return reinterpret_cast<const uint16_t*>(codes.data()); }
  const uint8_t* codes8() const { return codes.data(); }
};

struct QuantizedMatrix {
  int rows = 0;  // out features
  int cols = 0;  // in features
  int bits = 0;  // 2, 3 or 4
  std::vector<CodeStage> stages;
  std::vector<float> sign_in;   // (cols) ±1
  std::vector<float> sign_out;  // (rows) ±1
  transform::HadamardPlan plan_in;   // order cols
  transform::HadamardPlan plan_out;  // order rows
  // false: no randomized Hadamard transform; the stages approximate W itself (sign vectors are
  // all +1 and the plans unused). Only produced by QuantizeOptions::use_rht = false.
  bool rht = true;

  int groups_per_row() const { return cols / 8; }
  // Bytes of every stored bit: codes, scales, sign vectors (bit-packed on disk).
  size_t storage_bytes() const;
};

// The stage codebooks of a bit width; throws InvalidArgument unless bits ∈ {2, 3, 4}.
std::vector<Codebook> stages_for_bits(int bits);

// Scale of each stage relative to the RMS of the row it quantizes: scale_s = factor_s · rms.
// Derived by minimising the MSE on i.i.d. Gaussian data (docs/codec.md, `glq bench codec`).
std::vector<float> stage_scale_factors(int bits);

// One group of 8 values through the stages: stage s encodes (x − Σ_{t<s} scale_t·c_t)/scale_s.
// codes[s] receives stage s's code (uint16 for E8P16, the low 8 bits for E8R8); out (optional)
// the reconstruction Σ_s scale_s·c_s.
void quantize_group(const float x[8], std::span<const Codebook> stages, const float* scales,
                    uint16_t* codes, float* out);

struct QuantizeOptions {
  int bits = 2;
  uint64_t seed = 0x5eed;        // seeds the sign vectors
  bool use_rht = true;           // randomized Hadamard transform (off: plain codec on W)
  bool use_ldlq = true;          // block LDLQ error feedback (off: nearest rounding)
  double damp = 0.01;            // relative diagonal damping of H: H + damp·mean(diag H)·I
  // After rounding, refit each row's stage scales to the codes by least squares in the proxy
  // metric: a = argmin (Σ_s a_s c_s − w)ᵀ H (Σ_s a_s c_s − w) (a 1×1 or 2×2 system per row;
  // kept only where it lowers the row's loss and all scales stay positive). Needs H.
  bool refit_scales = true;
  // Scale search (LDLQ only): one LDLQ pass per multiplier m of the RMS-based stage scales;
  // each row keeps the pass with its least proxy loss (rows are independent under LDLQ).
  // Empty: {1} (one pass).
  std::vector<float> scale_multipliers;
  // List decoding (1: off; at most 64): the K nearest E8P16 codewords of the first stage are
  // each followed by the residual stages, and the group keeps the combination with the least
  // error in the LDLQ objective η·D_k·ηᵀ (plain squared error without LDLQ).
  int list_decode = 1;
};

struct QuantizeReport {
  double proxy_loss = 0;          // tr((W−Q) H (W−Q)^T) / tr(W H W^T)
  double relative_weight_error = 0;  // ‖W−Q‖_F / ‖W‖_F
  double damp_used = 0;           // damping actually applied (raised if H was not PD)
  std::string warnings;           // e.g. "Hessian not positive definite; damping raised to ..."
  double seconds = 0;             // wall time of quantize_matrix
};

// W: (rows, cols) row-major float32. H: (cols, cols) row-major, symmetric, or empty for the
// identity. Throws glq::Error for bad shapes, NaN/Inf in W, or a Hessian that stays unusable.
QuantizedMatrix quantize_matrix(std::span<const float> W, int rows, int cols,
                                std::span<const float> H, const QuantizeOptions& options,
                                QuantizeReport* report = nullptr);

// Asymmetric (GPTAQ-style) target: the W' whose quantization on the quantized model's inputs x_q
// best reproduces W on the unquantized model's inputs x_fp. With H = E[x_q x_qᵀ] and
// Δ = E[(x_fp − x_q) x_qᵀ] (both (cols, cols), row-major, per token), the minimiser of
// E‖W' x_q − W x_fp‖² is W' = W + W Δ H⁻¹; this returns W + alpha · W Δ (H + λI)⁻¹ with
// λ = damp·mean(diag H) (raised ×10 until H + λI factors). Δ = 0 gives W exactly.
// With `residual` R = E[(r_fp − r_q) x_qᵀ] (rows, cols) — r being what the linear's output is
// added to (the residual stream), on the unquantized and the quantized model — the target also
// absorbs the part of the residual stream's error that its inputs predict: it minimises
// E‖W' x_q + r_q − W x_fp − r_fp‖², adding beta · R (H + λI)⁻¹.
std::vector<float> asymmetric_target(std::span<const float> W, int rows, int cols, std::span<const float> H,
                                     std::span<const float> Delta, double damp, double alpha,
                                     std::span<const float> residual = {}, double beta = 0);

// Dense W (rows, cols) row-major, for tests and small layers.
std::vector<float> dequantize(const QuantizedMatrix& q);

// Reference product y (batch, rows) = x (batch, cols) · W^T, never materialising W.
void matvec_reference(const QuantizedMatrix& q, const float* x, float* y, int batch = 1);

// Versioned, bit-exact serialization of the packed layout (used inside checkpoints).
std::vector<uint8_t> pack(const QuantizedMatrix& q);
QuantizedMatrix unpack(std::span<const uint8_t> bytes);

}  // namespace glq::codec
