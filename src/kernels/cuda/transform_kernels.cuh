// Parameters of the per-vector transform kernels (hadamard.cu), shared with the engine.
//
// prepare: out (batch, n) = T (sign ∘ pre(x)), written as fp16 (quantized linears) or bf16
//          (dense linears, where T is the identity: a = 1, b = 1, no sign). pre() is one of
//            Plain    x
//            RmsNorm  x · rsqrt(mean(x²) + eps) ∘ norm_w               (fused pre-norm)
//            SwiGlu   silu(x[0..n)) ∘ x[n..2n)   (x = [gate | up] row)  (fused MLP activation)
// finish:  y (batch, n) (+)= sign ∘ (T^T ỹ)    (accumulate: fused residual add)
#pragma once

#include <cstdint>

namespace glq::cuda::detail {

enum class PreOp : int { Plain = 0, RmsNorm = 1, SwiGlu = 2 };
enum class OutType : int { Half = 0, BFloat16 = 1 };

struct TransformShape {
  int n = 0;                  // vector length
  int a = 1;                  // mixing order (1: none)
  int log2b = 0;              // FWHT length 2^log2b (0: none)
  const float* q = nullptr;   // (a, a) row-major
  // Q is the Sylvester Hadamard matrix H_a / √a instead (q unused; a a power of two): the row
  // kernels' view of a = 1, b = a'·b' as Q = H_a' / √a' ⊗ H_b' / √b' (H_a'b' = H_a' ⊗ H_b').
  int sylvester = 0;
  const float* sign = nullptr;  // (n) or null (no sign)
  // The same signs as bits (bit k of word j: element 32j + k is negated), or null; read where a
  // kernel takes them (the tensor-core input transform) instead of 4 bytes per element.
  const uint32_t* sign_bits = nullptr;
  float inv_sqrt_b = 1.0f;
};

struct PrepareParams {
  TransformShape t;
  PreOp pre = PreOp::Plain;
  const float* x = nullptr;   // (batch, ld_x)
  int ld_x = 0;
  const float* norm_w = nullptr;  // RmsNorm: (n)
  float eps = 1e-5f;
  OutType out_type = OutType::Half;
  void* out = nullptr;        // (batch, ld_out)
  int ld_out = 0;
  float* zero_ptr = nullptr;  // (batch, zero_count) zeroed for an accumulating product, or null
  int zero_count = 0;
  // x̃ in the order of the register kernels' A fragments (qgemm_rs_kernel): within every block of
  // 32 columns, pair q (columns 2q, 2q+1) of group c (8 columns) at chunk q, pair slot c. Only the
  // tensor-core transform writes it (prepare_permutes).
  int permute = 0;
};

struct FinishParams {
  TransformShape t;
  const float* yt = nullptr;  // (batch, ld_in)
  // ỹ as fp16 instead (the dequantize + GEMM path's output), with parts = 1; yt is then unused.
  const uint16_t* yt_half = nullptr;
  int ld_in = 0;
  float* y = nullptr;         // (batch, ld_out)
  int ld_out = 0;
  int accumulate = 0;         // y += result
  // ỹ in `parts` slices to be summed (the column ranges of the tensor-core decode kernel):
  // slice k at yt + k·part_stride.
  int parts = 1;
  size_t part_stride = 0;
  // The caller accepts fp16 intermediates (relative error ~5e-4) for fp32 ỹ: the products, whose
  // ỹ already carries an error of that size, but not the public fp32 transform.
  int half_ok = 0;
};

}  // namespace glq::cuda::detail
