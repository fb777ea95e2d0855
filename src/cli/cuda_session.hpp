// Shared by the model commands that take --device cuda (run, chat, perplexity, logits, serve):
// the check that this glq was built with CUDA, and the upload of a loaded model to the GPU with
// a report on stderr.
#pragma once

#include <fmt/core.h>

#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "glq/error.hpp"
#include "glq/model/model.hpp"
#ifdef GLQ_HAVE_CUDA
#include "glq/model/cuda_model.hpp"
#endif

namespace glq::cli {

// Throws Unsupported for --device cuda in a build without CUDA, InvalidArgument for another name.
inline void check_device(const std::string& device) {
  if (device == "cpu") return;
  if (device != "cuda") throw_invalid(fmt::format("--device {}: expected cpu or cuda", device));
#ifndef GLQ_HAVE_CUDA
  throw Error(ErrorKind::Unsupported, "--device cuda: this glq was built without CUDA; rebuild with GLQ_CUDA=1");
#endif
}

#ifdef GLQ_HAVE_CUDA
// Uploads the model's weights to GPU 0 with a KV cache of `slots` × `ctx` tokens; says on stderr
// what went where.
inline std::unique_ptr<model::CudaModel> to_gpu_verbose(const model::Model& m, int ctx, int slots = 1) {
  const auto t0 = std::chrono::steady_clock::now();
  auto g = std::make_unique<model::CudaModel>(m, ctx, slots);
  const auto& info = g->context().info();
  int quantized = 0;
  for (int l = 0; l < m.num_layers(); ++l)
    for (model::LinearKind k : model::kAllLinearKinds) quantized += m.layer(l).linear(k).is_quantized();
  fmt::print(stderr, "glq: on {} (sm_{}{}): {} of {} linears GLQ-quantized, the rest bf16; {:.1f} MB of weights, "
                     "KV cache {} x {} tokens; uploaded in {:.2f} s\n",
             info.name, info.cc_major, info.cc_minor, quantized, 7 * m.num_layers(), g->engine().weight_bytes() / 1e6,
             slots, ctx, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return g;
}
#endif

// One sequence stepped on the CPU model (with its KV cache) or on the GPU engine, for the
// commands that generate one sequence (run, chat): append tokens, read the last token's logits.
class SequenceEngine {
 public:
  SequenceEngine(const model::Model& m, const std::string& device, int capacity)
      : m_(m), capacity_(capacity), logits_(static_cast<size_t>(m.vocab_size())) {
    check_device(device);  // a build without CUDA refuses "cuda" here
    if (device == "cuda") {
#ifdef GLQ_HAVE_CUDA
      gpu_ = to_gpu_verbose(m, capacity);
#endif
    } else {
      cache_ = m.make_cache(capacity);
    }
  }
  // Appends tokens; logits() then holds the last one's.
  void forward(std::span<const int32_t> tokens) {
#ifdef GLQ_HAVE_CUDA
    if (gpu_) {
      gpu_->engine().forward(tokens.data(), static_cast<int>(tokens.size()));
      logits_ = gpu_->engine().logits_host(1);
      return;
    }
#endif
    m_.forward(tokens, cache_, logits_.data());
  }
  std::span<const float> logits() const { return logits_; }
  int position() const {  // tokens in the cache
#ifdef GLQ_HAVE_CUDA
    if (gpu_) return gpu_->engine().position();
#endif
    return cache_.size();
  }
  bool full() const { return position() >= capacity_; }
  void truncate(int n) {  // forgets tokens from position n on
#ifdef GLQ_HAVE_CUDA
    if (gpu_) return gpu_->engine().truncate(n);
#endif
    cache_.truncate(n);
  }

 private:
  const model::Model& m_;
  int capacity_;
  std::vector<float> logits_;
  model::KVCache cache_;
#ifdef GLQ_HAVE_CUDA
  std::unique_ptr<model::CudaModel> gpu_;
#endif
};

}  // namespace glq::cli
