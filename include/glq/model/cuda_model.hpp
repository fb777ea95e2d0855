// A loaded Model on the GPU (glq::cuda::Engine, glq/kernels/cuda_engine.hpp). Only with
// -DGLQ_CUDA=ON (GLQ_HAVE_CUDA).
//
// The weights are uploaded as they are held on the CPU: GLQ-quantized linears keep their codes,
// scales, signs and Hadamard plans (each linear its own transforms) and run through the decode
// kernels; dense linears (GGUF / Hugging Face models, a 16-bit output head) become bf16 matrices
// run by cuBLAS; the embedding is a bf16 table, and a tied output head a bf16 copy of it. Linear
// biases (Qwen2's q/k/v) are added after their product. q/k/v and gate/up stay separate parts.
#pragma once

#ifdef GLQ_HAVE_CUDA

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "glq/kernels/cuda_engine.hpp"
#include "glq/model/model.hpp"
#include "glq/model/perplexity.hpp"

namespace glq::model {

// The engine's configuration for `model`: max_context tokens in each of `slots` KV-cache slots.
// Throws InvalidArgument when max_context is beyond the model's.
cuda::EngineConfig cuda_engine_config(const Model& model, int max_context, int slots = 1);

// Uploads the weights of `model` (see above). Throws Unsupported, naming the tensor, for a
// linear whose shape the GPU kernels cannot take (rows or cols not a multiple of 8).
cuda::EngineWeights cuda_engine_weights(const Model& model);

// A CUDA context and an engine over `model`'s weights. The Model itself is not needed afterwards
// (its tokenizer is, for text).
class CudaModel {
 public:
  CudaModel(const Model& model, int max_context, int slots = 1, int device = 0);
  ~CudaModel();
  cuda::Context& context() { return *ctx_; }
  cuda::Engine& engine() { return *engine_; }

 private:
  std::unique_ptr<cuda::Context> ctx_;
  std::unique_ptr<cuda::Engine> engine_;  // destroyed before the context
};

// evaluate_perplexity() (same protocol, glq/model/perplexity.hpp) on the GPU engine: each window
// from an empty cache (slot 0), the log-likelihoods computed on the device. The engine's
// max_context must be at least ctx.
PerplexityResult evaluate_perplexity_cuda(cuda::Engine& engine, std::span<const int32_t> tokens, int ctx,
                                          const std::function<void(int, int)>& progress = {});

}  // namespace glq::model

#endif  // GLQ_HAVE_CUDA
