// Key/value cache of one sequence. Kept apart from the Model so that many sequences (the
// server's continuous batching) share one set of weights.
#pragma once

#include <cstdint>
#include <vector>

#include "glq/model/config.hpp"

namespace glq::model {

class KVCache {
 public:
  KVCache() = default;
  // Room for `capacity` tokens (clamped to nothing: the caller chooses, usually max_context).
  KVCache(const ModelConfig& config, int capacity);

  int size() const { return size_; }          // tokens stored (= position of the next token)
  int capacity() const { return capacity_; }
  int num_layers() const { return num_layers_; }
  int kv_dim() const { return kv_dim_; }
  void clear() { size_ = 0; }
  // Forgets tokens from position n on (n <= size()), e.g. to reuse a common prompt prefix.
  void truncate(int n);
  // Bytes of the K and V buffers.
  size_t bytes() const { return (keys_.size() + values_.size()) * sizeof(float); }

  // Rows of layer l: (capacity, kv_dim) row-major; row p holds the key/value of position p,
  // keys already rotated by RoPE.
  float* keys(int layer) { return keys_.data() + static_cast<size_t>(layer) * layer_stride(); }
  float* values(int layer) { return values_.data() + static_cast<size_t>(layer) * layer_stride(); }
  const float* keys(int layer) const { return keys_.data() + static_cast<size_t>(layer) * layer_stride(); }
  const float* values(int layer) const { return values_.data() + static_cast<size_t>(layer) * layer_stride(); }

  // Used by the engine after it wrote `n` new positions to every layer.
  void advance(int n);

 private:
  size_t layer_stride() const { return static_cast<size_t>(capacity_) * kv_dim_; }
  int num_layers_ = 0;
  int kv_dim_ = 0;
  int capacity_ = 0;
  int size_ = 0;
  std::vector<float> keys_;    // (layer, capacity, kv_dim)
  std::vector<float> values_;  // (layer, capacity, kv_dim)
};

}  // namespace glq::model
