// Linear layers: dense through OpenBLAS, 16-bit dense and quantized through the GLQ CPU kernels.
#include "glq/model/linear.hpp"

#include <cblas.h>

#include <fmt/format.h>

#include "glq/error.hpp"
#include "glq/kernels/cpu.hpp"

namespace glq::model {

Linear Linear::dense(std::vector<float> weight, int rows, int cols, std::vector<float> bias) {
  return dense_shared(std::make_shared<const std::vector<float>>(std::move(weight)), rows, cols, std::move(bias));
}

Linear Linear::dense_shared(std::shared_ptr<const std::vector<float>> weight, int rows, int cols,
                            std::vector<float> bias) {
  if (rows <= 0 || cols <= 0) throw_invalid(fmt::format("Linear::dense: shape {}x{}", rows, cols));
  if (!weight || weight->size() != static_cast<size_t>(rows) * static_cast<size_t>(cols))
    throw_mismatch("Linear::dense weight", fmt::format("{} values ({}x{})", static_cast<size_t>(rows) * cols, rows, cols),
                   fmt::format("{} values", weight ? weight->size() : 0));
  if (!bias.empty() && bias.size() != static_cast<size_t>(rows))
    throw_mismatch("Linear::dense bias", fmt::format("{} values", rows), fmt::format("{} values", bias.size()));
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.dense_ = std::move(weight);
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::quantized(codec::QuantizedMatrix q, std::vector<float> bias) {
  if (q.rows <= 0 || q.cols <= 0) throw_invalid(fmt::format("Linear::quantized: shape {}x{}", q.rows, q.cols));
  if (!bias.empty() && bias.size() != static_cast<size_t>(q.rows))
    throw_mismatch("Linear::quantized bias", fmt::format("{} values", q.rows), fmt::format("{} values", bias.size()));
  Linear l;
  l.rows_ = q.rows;
  l.cols_ = q.cols;
  l.quantized_ = std::make_shared<const codec::QuantizedMatrix>(std::move(q));
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::deferred(int rows, int cols, WeightLoader load, std::string origin, std::vector<float> bias) {
  if (rows <= 0 || cols <= 0) throw_invalid(fmt::format("Linear::deferred {}: shape {}x{}", origin, rows, cols));
  if (!load) throw_invalid(fmt::format("Linear::deferred {}: no loader", origin));
  if (!bias.empty() && bias.size() != static_cast<size_t>(rows))
    throw_mismatch("Linear::deferred bias of " + origin, fmt::format("{} values", rows), fmt::format("{} values", bias.size()));
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.load_ = std::move(load);
  l.origin_ = std::move(origin);
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::materialized() const {
  if (!load_) return *this;
  std::shared_ptr<const std::vector<float>> w = load_();
  return dense_shared(std::move(w), rows_, cols_, bias_);
}

Linear Linear::dense16(std::shared_ptr<const std::vector<uint16_t>> weight, cpu::Half type, int rows, int cols,
                       std::vector<float> bias) {
  if (rows <= 0 || cols <= 0) throw_invalid(fmt::format("Linear::dense16: shape {}x{}", rows, cols));
  if (!weight || weight->size() != static_cast<size_t>(rows) * static_cast<size_t>(cols))
    throw_mismatch("Linear::dense16 weight", fmt::format("{} values ({}x{})", static_cast<size_t>(rows) * cols, rows, cols),
                   fmt::format("{} values", weight ? weight->size() : 0));
  if (!bias.empty() && bias.size() != static_cast<size_t>(rows))
    throw_mismatch("Linear::dense16 bias", fmt::format("{} values", rows), fmt::format("{} values", bias.size()));
  Linear l;
  l.rows_ = rows;
  l.cols_ = cols;
  l.dense16_ = std::move(weight);
  l.half_ = type;
  l.bias_ = std::move(bias);
  return l;
}

Linear Linear::dense16_from(std::span<const float> weight, int rows, int cols, std::vector<float> bias) {
  bool fits = true;  // |w| < 65519 rounds to a finite half
  for (float v : weight) fits &= v > -65519.0f && v < 65519.0f;
  const cpu::Half type = fits ? cpu::Half::F16 : cpu::Half::BF16;
  auto w = std::make_shared<std::vector<uint16_t>>(weight.size());
  for (size_t i = 0; i < weight.size(); ++i) (*w)[i] = cpu::float_to_half(weight[i], type);
  return dense16(std::move(w), type, rows, cols, std::move(bias));
}

void Linear::forward(const float* x, float* y, int batch, ThreadPool& pool) const {
  if (empty()) throw_invalid("Linear::forward on an empty linear");
  if (load_) throw_invalid(fmt::format("Linear::forward: {} is still in its file (deferred); materialize it first", origin_));
  if (batch <= 0) return;
  if (quantized_) {
    cpu::qmatmul(*quantized_, x, y, batch, pool);
  } else if (dense16_) {
    cpu::hmatmul(dense16_->data(), half_, rows_, cols_, x, y, batch, pool);
  } else if (batch == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, rows_, cols_, 1.0f, dense_->data(), cols_, x, 1, 0.0f, y, 1);
  } else {
    // y (batch, rows) = x (batch, cols) · W^T, W (rows, cols)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, rows_, cols_, 1.0f, x, cols_, dense_->data(), cols_,
                0.0f, y, rows_);
  }
  if (!bias_.empty())
    for (int b = 0; b < batch; ++b) {
      float* row = y + static_cast<size_t>(b) * rows_;
      for (int r = 0; r < rows_; ++r) row[r] += bias_[r];
    }
}

std::vector<float> Linear::to_dense() const {
  if (load_) return *load_();
  if (dense_) return *dense_;
  if (dense16_) {
    std::vector<float> w(dense16_->size());
    for (size_t i = 0; i < w.size(); ++i) w[i] = cpu::half_to_float((*dense16_)[i], half_);
    return w;
  }
  if (quantized_) return codec::dequantize(*quantized_);
  return {};
}

size_t Linear::weight_bytes() const {
  size_t n = bias_.size() * sizeof(float);
  if (dense_) n += dense_->size() * sizeof(float);
  if (dense16_) n += dense16_->size() * sizeof(uint16_t);
  if (quantized_) n += quantized_->storage_bytes();
  return n;
}

std::string Linear::describe() const {
  if (quantized_) return fmt::format("glq-{}bit {}x{}", quantized_->bits, rows_, cols_);
  if (dense_) return fmt::format("fp32 {}x{}", rows_, cols_);
  if (dense16_) return fmt::format("{} {}x{}", cpu::half_name(half_), rows_, cols_);
  if (load_) return fmt::format("deferred {}x{}", rows_, cols_);
  return "empty";
}

}  // namespace glq::model
