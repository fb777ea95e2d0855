// A linear layer y = x W^T + b whose weight W (out_features, in_features) is EITHER a dense
// float32 matrix (computed with OpenBLAS sgemm/sgemv) OR a GLQ-compressed QuantizedMatrix
// (computed with glq::cpu::qmatmul, never materialising W).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "glq/codec/quantized_matrix.hpp"
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

  int rows() const { return rows_; }  // out_features
  int cols() const { return cols_; }  // in_features
  bool empty() const { return rows_ == 0; }
  bool is_quantized() const { return quantized_ != nullptr; }
  // (rows, cols) row-major, or nullptr when quantized.
  const float* dense_weight() const { return dense_ ? dense_->data() : nullptr; }
  const codec::QuantizedMatrix* quantized_weight() const { return quantized_.get(); }
  std::span<const float> bias() const { return bias_; }

  // y (batch, rows) = x (batch, cols) · W^T + b. x and y must not overlap.
  void forward(const float* x, float* y, int batch, ThreadPool& pool) const;
  void forward(const float* x, float* y, int batch) const { forward(x, y, batch, ThreadPool::global()); }

  // W as a dense (rows, cols) matrix (dequantized when quantized).
  std::vector<float> to_dense() const;
  // Bytes held by the weight (dense: 4·rows·cols; quantized: storage_bytes()) plus the bias.
  size_t weight_bytes() const;
  // "fp32 576x192" or "glq-2bit 576x192".
  std::string describe() const;

 private:
  int rows_ = 0;
  int cols_ = 0;
  std::shared_ptr<const std::vector<float>> dense_;
  std::shared_ptr<const codec::QuantizedMatrix> quantized_;
  std::vector<float> bias_;
};

}  // namespace glq::model
