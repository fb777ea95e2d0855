#include "glq/model/kv_cache.hpp"

#include <fmt/format.h>

#include "glq/error.hpp"

namespace glq::model {

KVCache::KVCache(const ModelConfig& config, int capacity)
    : num_layers_(config.num_layers), kv_dim_(config.kv_dim()), capacity_(capacity) {
  if (capacity <= 0) throw_invalid(fmt::format("KVCache capacity {} must be positive", capacity));
  const size_t n = static_cast<size_t>(num_layers_) * static_cast<size_t>(capacity) * static_cast<size_t>(kv_dim_);
  keys_.assign(n, 0.0f);
  values_.assign(n, 0.0f);
}

void KVCache::truncate(int n) {
  if (n < 0 || n > size_) throw_invalid(fmt::format("KVCache::truncate({}) with {} tokens stored", n, size_));
  size_ = n;
}

void KVCache::advance(int n) {
  if (n < 0 || size_ + n > capacity_)
    throw_invalid(fmt::format("KVCache: {} + {} tokens exceed the capacity of {}", size_, n, capacity_));
  size_ += n;
}

}  // namespace glq::model
