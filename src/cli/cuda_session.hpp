// Shared by the model commands that take --device cuda (run, chat, perplexity, logits, serve):
// the check that this glq was built with CUDA, and the upload of a loaded model to the GPU with
// a report on stderr.
#pragma once

#include <fmt/core.h>

#include <chrono>
#include <memory>
#include <string>

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

}  // namespace glq::cli
