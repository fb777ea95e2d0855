// A linear layer y = x W^T + b whose weight W (out_features, in_features) is EITHER a dense
// float32 matrix (computed with OpenBLAS sgemm/sgemv), a dense 16-bit matrix (glq::cpu::hmatmul)
// OR a GLQ-compressed QuantizedMatrix (computed with glq::cpu::qmatmul, never materialising W).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
#include "glq/kernels/cpu.hpp"
#include "glq/util/thread_pool.hpp"

namespace glq::model {

class Linear {
 public:
  Linear() = default;

  // W (rows, cols) row-major; bias empty or (rows). Throws InvalidArgument on size mismatch.
  static Linear dense(std::vector<float> weight, int rows, int cols, std::vector<float> bias = {});
  // Shares a weight buffer (e.g. lm_head tied to the token embedding).
  static Linear dense_shared(std::shared_ptr<const std::vector<float>> weight, int rows, int cols,
                             std::vector<float> bias = {});
  static Linear quantized(codec::QuantizedMatrix q, std::vector<float> bias = {});
  // W (rows, cols) row-major in 16-bit floats (IEEE half or bfloat16), kept so in memory and
  // widened to float32 inside the kernel (glq::cpu::hmatmul): half the bytes of a dense linear,
  // e.g. the output head a GLQ checkpoint keeps in 16 bits.
  static Linear dense16(std::shared_ptr<const std::vector<uint16_t>> weight, cpu::Half type, int rows, int cols,
                        std::vector<float> bias = {});
  // W (rows, cols) float32 rounded to 16 bits: IEEE half when every value fits its range (10
  // mantissa bits), else bfloat16.
  static Linear dense16_from(std::span<const float> weight, int rows, int cols, std::vector<float> bias = {});
  // A linear whose weight stays in its (memory-mapped) file until it is needed: `load` returns W
  // (rows, cols) as float32 each time it is called. It cannot run (forward() throws); a caller
  // replaces it by materialized() for as long as it needs the weights, then by the deferred one
  // again or by a quantized one (the quantizer streams models larger than memory so). `origin`
  // names the tensor, for messages.
  using WeightLoader = std::function<std::shared_ptr<const std::vector<float>>()>;
  static Linear deferred(int rows, int cols, WeightLoader load, std::string origin, std::vector<float> bias = {});

  int rows() const { return rows_; }  // out_features
  int cols() const { return cols_; }  // in_features
  bool empty() const { return rows_ == 0; }
  bool is_quantized() const { return quantized_ != nullptr; }
  bool is_dense16() const { return dense16_ != nullptr; }
  // (rows, cols) row-major 16-bit weights and their format, or nullptr when not dense16.
  const uint16_t* dense16_weight() const { return dense16_ ? dense16_->data() : nullptr; }
  cpu::Half dense16_type() const { return half_; }
  bool is_deferred() const { return static_cast<bool>(load_); }
  // The tensor a deferred linear loads from ("model.layers.3.mlp.up_proj.weight"), else empty.
  const std::string& origin() const { return origin_; }
  // A deferred linear as a dense one with its weight loaded (same bias); any other as a copy.
  Linear materialized() const;
  // (rows, cols) row-major, or nullptr when quantized.
  const float* dense_weight() const { return dense_ ? dense_->data() : nullptr; }
  const codec::QuantizedMatrix* quantized_weight() const { return quantized_.get(); }
  std::span<const float> bias() const { return bias_; }

  // y (batch, rows) = x (batch, cols) · W^T + b. x and y must not overlap.
  void forward(const float* x, float* y, int batch, ThreadPool& pool) const;
  void forward(const float* x, float* y, int batch) const { forward(x, y, batch, ThreadPool::global()); }

  // W as a dense (rows, cols) matrix (dequantized when quantized, loaded when deferred).
  std::vector<float> to_dense() const;
  // Bytes held by the weight (dense: 4·rows·cols; dense16: 2·rows·cols; quantized:
  // storage_bytes()) plus the bias.
  size_t weight_bytes() const;
  // "fp32 576x192", "fp16 576x192" or "glq-2bit 576x192".
  std::string describe() const;

 private:
  int rows_ = 0;
  int cols_ = 0;
  std::shared_ptr<const std::vector<float>> dense_;
  std::shared_ptr<const codec::QuantizedMatrix> quantized_;
  std::shared_ptr<const std::vector<uint16_t>> dense16_;
  cpu::Half half_ = cpu::Half::F16;
  std::vector<float> bias_;
  WeightLoader load_;   // set for a deferred linear only
  std::string origin_;  // deferred: the tensor it loads
};

}  // namespace glq::model
